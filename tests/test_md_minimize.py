"""relax(): FIRE / GD, fixed and variable cell, against an independent numpy lattice sum.

Reference: the energy per atom of an fcc LJ crystal, E(a) = 1/2 sum_j phi(|r_j|) over
lattice vectors within the cutoff, with the smooth-switched LJ pair energy written out
here in numpy (HOOMD/jax-md switch, r_o = 2.0 sigma, r_c = 2.5 sigma), minimised over a
with scipy. Reduced units (sigma = epsilon = 1).
"""

from __future__ import annotations

import warnings

import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import brentq, minimize_scalar

from mdsens.md import RelaxOptions, System, _driver, _relax_loop, build, potentials
from mdsens.md.compiled import compilations
from mdsens.md.minimize import (
    Relaxation,
    RelaxationError,
    RelaxationWarning,
    Status,
    fire,
    fire2,
    gd,
    relax,
)

RO, RC = 2.0, 2.5
FMAX = 1e-8


# ----------------------------------------------------------------------------- references
def _phi(r: np.ndarray) -> np.ndarray:
    """Smooth-switched LJ (sigma = epsilon = 1)."""
    lj = 4.0 * (r**-12 - r**-6)
    switch = (RC**2 - r**2) ** 2 * (RC**2 + 2 * r**2 - 3 * RO**2) / (RC**2 - RO**2) ** 3
    s = np.where(r < RO, 1.0, np.where(r < RC, switch, 0.0))
    return lj * s


_N = np.arange(-4, 5)
_G = np.stack(np.meshgrid(_N, _N, _N, indexing="ij"), -1).reshape(-1, 3)
_G = _G[np.any(_G != 0, axis=1)]
_PRIM = 0.5 * np.array([[0.0, 1.0, 1.0], [1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])


def fcc_energy(a: float) -> float:
    """Lattice-sum energy per atom of fcc with cubic lattice constant a."""
    r = np.linalg.norm(_G @ (a * _PRIM), axis=1)
    return 0.5 * float(np.sum(_phi(r[r < RC])))


def fcc_pressure(a: float, h: float = 1e-6) -> float:
    """p = -dE/dV per atom, V = a^3 / 4 (central difference in a)."""
    dE = (fcc_energy(a + h) - fcc_energy(a - h)) / (2 * h)
    return -dE / (3 * a**2 / 4)


@pytest.fixture(scope="module")
def fcc_min() -> tuple[float, float]:
    res = minimize_scalar(fcc_energy, bracket=(1.50, 1.55, 1.60), tol=1e-12)
    return float(res.x), float(res.fun)


def fcc_system(n: int, a: float, rng=None, noise: float = 0.0, cell=None) -> System:
    base = np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
    g = np.stack(np.meshgrid(*[np.arange(n)] * 3, indexing="ij"), -1).reshape(-1, 3)
    R = ((g[:, None, :] + base[None]).reshape(-1, 3)) * a
    if noise:
        R = R + noise * rng.standard_normal(R.shape)
    return System.create(R, np.eye(3) * n * a if cell is None else cell)


LJ = potentials.get("lj")


@pytest.fixture(scope="module")
def cubic32(fcc_min):
    """One model (and start list capacity) for the 2x2x2 cubic cell, shared so that the
    tests below reuse one compilation."""
    perfect = fcc_system(2, fcc_min[0])
    model = build(perfect, LJ)
    return model, model.allocate(perfect.positions, perfect.cell)


def _assert_fcc(result: Relaxation, a0: float, e0: float, cell_relaxed: bool) -> None:
    n = result.system.n_atoms
    assert result.converged and result.status is Status.CONVERGED, result.message
    assert float(result.fmax) <= FMAX
    np.testing.assert_allclose(float(result.energy) / n, e0, rtol=1e-10)
    if cell_relaxed:
        np.testing.assert_allclose(float(result.system.volume) / n, a0**3 / 4, rtol=1e-7)
        assert float(result.stress_residual) <= 1e-6
    # independent check of the returned forces
    F = result.model.forces(result.system.positions, result.system.cell, None, result.nbrs)
    np.testing.assert_allclose(np.asarray(F), np.asarray(result.forces), atol=1e-12)


# ----------------------------------------------------------------------------- tests
@pytest.mark.parametrize("method", ["fire", "fire2", "gd"])
def test_fcc_fixed_cell_matches_lattice_sum(method, fcc_min, cubic32, rng):
    a0, e0 = fcc_min
    system = fcc_system(2, a0, rng, noise=0.05)
    model, nbrs = cubic32
    result = relax(system, model, method=method, fmax=FMAX, nbrs=nbrs)
    _assert_fcc(result, a0, e0, cell_relaxed=False)
    assert result.stress is None and result.stress_residual is None
    # atoms back on the lattice up to a common translation
    d = np.array(result.system.positions - fcc_system(2, a0).positions)
    d -= d.mean(axis=0)
    assert np.max(np.abs(d)) < 1e-6


@pytest.mark.parametrize("method", ["fire", "fire2", "gd"])
def test_fcc_cell_relaxation_matches_lattice_sum(method, fcc_min, rng):
    a0, e0 = fcc_min
    system = fcc_system(2, 1.04 * a0, rng, noise=0.05)  # strained and perturbed start
    result = relax(system, LJ, method=method, fmax=FMAX, relax_cell=True)
    _assert_fcc(result, a0, e0, cell_relaxed=True)
    cell = np.asarray(result.system.cell)
    np.testing.assert_allclose(cell, np.eye(3) * 2 * a0, atol=2e-6)  # stays cubic


def test_fcc_under_pressure_matches_lattice_sum(fcc_min, rng):
    p = 0.5  # reduced units, epsilon / sigma^3
    a_p = brentq(lambda a: fcc_pressure(a) - p, 1.40, fcc_min[0])
    system = fcc_system(2, fcc_min[0], rng, noise=0.05)
    result = relax(system, LJ, fmax=FMAX, relax_cell=True, pressure=p)
    assert result.converged, result.message
    a = (4 * float(result.system.volume) / result.system.n_atoms) ** (1 / 3)
    np.testing.assert_allclose(a, a_p, rtol=1e-7)
    np.testing.assert_allclose(fcc_pressure(a), p, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(result.stress), -p * np.eye(3), atol=1e-6)
    np.testing.assert_allclose(float(result.energy) / 32, fcc_energy(a_p), rtol=1e-10)


def test_variable_cell_forces_are_the_enthalpy_gradient(fcc_min, cubic32, rng):
    """The generalised forces of the strain filter equal -dH/d(X, s) by central differences,
    H = E(X U, C0 U) + p det(C0 U), at a strained, perturbed point."""
    import jax

    model, nbrs = cubic32
    system = fcc_system(2, fcc_min[0], rng, noise=0.05)
    n = system.n_atoms
    options = RelaxOptions(relax_cell=True, pressure=0.3)
    ctx = _driver.context(system, model.params, options)._replace(
        cell_factor=jnp.asarray(np.sqrt(n) * 0.9))
    spec = _relax_loop.LoopSpec(model, options.method, True)
    q = (system.positions, jnp.asarray(0.05 * rng.standard_normal((3, 3))))

    @jax.jit
    def evaluate(q):
        return _relax_loop.make_force_fn(spec, ctx, model.update(*_relax_loop.to_cartesian(
            q, ctx, True), nbrs))(q)[:2]

    _, (f_X, f_s) = evaluate(q)
    h = 1e-5
    for i, j in [(0, 0), (0, 1), (2, 1), (2, 2)]:
        e = jnp.zeros((3, 3)).at[i, j].set(h)
        dH = (evaluate((q[0], q[1] + e))[0] - evaluate((q[0], q[1] - e))[0]) / (2 * h)
        np.testing.assert_allclose(-float(f_s[i, j]), float(dH), rtol=1e-6, atol=1e-8)
    e = jnp.zeros((n, 3)).at[5, 1].set(h)
    dH = (evaluate((q[0] + e, q[1]))[0] - evaluate((q[0] - e, q[1]))[0]) / (2 * h)
    np.testing.assert_allclose(-float(f_X[5, 1]), float(dH), rtol=1e-6, atol=1e-8)


def test_triclinic_cell_same_as_cubic(fcc_min, rng):
    """A sheared (triclinic) description of the 2x2x2 cubic crystal: same minimum."""
    a0, e0 = fcc_min
    L = 2 * 1.03 * a0
    cell = np.array([[L, 0, 0], [L, L, 0], [0, 0, L]])  # same lattice as the cube of side L
    system = fcc_system(2, 1.03 * a0, rng, noise=0.05, cell=cell)
    fixed = relax(system, LJ, fmax=FMAX)  # the cubic cell's energy is the lattice sum
    assert fixed.converged
    np.testing.assert_allclose(float(fixed.energy) / 32, fcc_energy(1.03 * a0), rtol=1e-10)
    relaxed = relax(system, LJ, fmax=FMAX, relax_cell=True)
    _assert_fcc(relaxed, a0, e0, cell_relaxed=True)


def test_neighbor_list_overflow_in_loop_is_recovered(fcc_min, rng):
    """A compressing cell relaxation outgrows its list in the middle of a chunk."""
    a0, e0 = fcc_min
    start = fcc_system(2, 1.13 * a0, rng, noise=0.02)
    model = build(start, LJ, neighbor_list=True)
    n0 = model.allocate(start.positions, start.cell).nlist.idx.shape[1]
    result = relax(start, model, fmax=FMAX, relax_cell=True)
    _assert_fcc(result, a0, e0, cell_relaxed=True)
    assert result.nbrs.nlist.idx.shape[1] > n0  # it was reallocated
    assert not bool(result.model.overflowed(result.nbrs))


@pytest.mark.slow
def test_cell_shrinking_below_replication_rebuilds_model(fcc_min, rng):
    """108 atoms at 1.19 a0 need no replicas; relaxed (a0) they need 2 per axis: the loop
    flags the too-narrow cell, the model is rebuilt and the relaxation still ends at a0."""
    a0, e0 = fcc_min
    start = fcc_system(3, 1.19 * a0, rng, noise=0.01)
    assert build(start, LJ).replicas == (1, 1, 1)
    result = relax(start, LJ, fmax=FMAX, relax_cell=True)
    assert result.model.replicas == (2, 2, 2)
    _assert_fcc(result, a0, e0, cell_relaxed=True)


def test_too_small_start_list_is_reallocated(fcc_min, rng):
    a0, e0 = fcc_min
    system = fcc_system(2, a0, rng, noise=0.05)
    model = build(system, LJ, neighbor_list=True)
    dilute = model.allocate(system.positions * 1.3, system.cell * 1.3)
    result = relax(system, model, fmax=FMAX, nbrs=dilute)
    _assert_fcc(result, a0, e0, cell_relaxed=False)
    assert result.nbrs.nlist.idx.shape[1] > dilute.nlist.idx.shape[1]


def test_free_cluster_triangle():
    """Three free atoms relax to an equilateral triangle with r = 2^(1/6): E = -3."""
    R = np.array([[0.0, 0.0, 0.0], [1.2, 0.1, 0.0], [0.5, 1.0, 0.05]])
    result = relax(System.create(R), LJ, fmax=FMAX)
    assert result.converged
    np.testing.assert_allclose(float(result.energy), -3.0, rtol=1e-12)
    R = np.asarray(result.system.positions)
    r = np.linalg.norm(R[:, None] - R[None], axis=-1)[np.triu_indices(3, 1)]
    np.testing.assert_allclose(r, 2 ** (1 / 6), rtol=1e-8)
    with pytest.raises(ValueError, match="periodic"):
        relax(System.create(R), LJ, relax_cell=True)


def test_non_convergence_under_each_policy(fcc_min, cubic32, rng):
    system = fcc_system(2, fcc_min[0], rng, noise=0.05)
    model, nbrs = cubic32
    kw = dict(fmax=FMAX, max_steps=5, nbrs=nbrs)
    with pytest.raises(RelaxationError, match="max_steps") as info:
        relax(system, model, **kw)
    assert info.value.relaxation.status is Status.MAX_STEPS
    assert isinstance(info.value, RuntimeError)
    with pytest.warns(RelaxationWarning, match="maximum steps"):
        warned = relax(system, model, on_failure="warn", **kw)
    assert warned.status is Status.MAX_STEPS and warned.steps == 5
    assert np.isfinite(float(warned.energy))
    nan = relax(system, model, on_failure="nan", **kw)
    assert not nan.converged and nan.status is Status.MAX_STEPS
    assert np.isnan(float(nan.energy)) and np.all(np.isnan(np.asarray(nan.system.positions)))
    assert np.all(np.isnan(np.asarray(nan.forces)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ignored = relax(system, model, on_failure="ignore", **kw)
    assert ignored.status is Status.MAX_STEPS and not ignored.converged
    assert float(ignored.fmax) > FMAX
    assert "max_steps" in ignored.message


def test_nonfinite_is_reported(fcc_min, cubic32):
    system = fcc_system(2, fcc_min[0])
    model, nbrs = cubic32
    bad = {"sigma": jnp.asarray(1.0), "epsilon": jnp.asarray(np.nan)}
    result = relax(system, model, params=bad, on_failure="ignore", nbrs=nbrs)
    assert result.status is Status.NONFINITE and not result.converged
    with pytest.raises(RelaxationError, match="non-finite"):
        relax(system, model, params=bad, nbrs=nbrs)


def test_list_after_a_rejected_step_is_the_kept_states(fcc_min):
    """A trial step that turns the energy non-finite is never taken (it is retried smaller,
    so a minimum beyond the non-finite region is never reached: not converged); the
    returned list must belong to the kept positions (the loop carries the trial's list,
    ``relax`` then reallocates it)."""
    import dataclasses

    @dataclasses.dataclass(frozen=True, eq=False)
    class NanPast(potentials.pair.LennardJones):
        x_bad: float = 0.0

        def total_energy(self, params, geometry):
            e = super().total_energy(params, geometry)
            return e + jnp.where(geometry.positions[2, 0] > self.x_bad, jnp.nan, 0.0)

    a0 = fcc_min[0]
    system = fcc_system(2, a0)
    R = np.asarray(system.positions).copy()
    R[2, 0] -= 0.05  # atom 2 sits at x = a0/2: it moves back towards it and crosses x_bad
    system = system.replace(positions=R)
    pot = NanPast(LJ.params, LJ.species, 2.0, 2.5, x_bad=0.5 * a0 - 0.02)
    model = build(system, pot, neighbor_list=True)
    result = relax(system, model, fmax=FMAX, max_steps=500, on_failure="ignore")
    assert result.status in (Status.NONFINITE, Status.MAX_STEPS) and result.steps > 0
    assert np.isfinite(float(result.energy))
    kept = np.asarray(result.system.positions)
    assert 0.5 * a0 - 0.05 < kept[2, 0] <= 0.5 * a0 - 0.02
    X = model.neighbor_lists.list_positions(
        *model.supercell(result.system.positions, result.system.cell))
    np.testing.assert_allclose(np.asarray(result.nbrs.nlist.reference_position),
                               np.asarray(X), atol=1e-12)
    fresh = model.allocate(result.system.positions, result.system.cell)
    np.testing.assert_allclose(
        float(model.energy(result.system.positions, result.system.cell, None, result.nbrs)),
        float(model.energy(result.system.positions, result.system.cell, None, fresh)),
        rtol=1e-13)


def test_chunks_compile_once_and_report_progress(fcc_min, cubic32, rng):
    system = fcc_system(2, fcc_min[0], rng, noise=0.05)
    model, nbrs = cubic32
    seen = []
    # compiled (maybe already), with the progress program
    relax(system, model, fmax=FMAX, chunk=1000, nbrs=nbrs, callback=lambda *a: None)
    with compilations() as count:
        result = relax(
            system, model, fmax=FMAX, chunk=40, callback=lambda *a: seen.append(a), nbrs=nbrs
        )
    assert result.converged
    assert count.value == 0  # neither per chunk nor per call
    steps = [s for s, _, _ in seen]
    assert len(seen) >= 3 and steps == sorted(steps) and steps[-1] == result.steps
    assert all(s % 40 == 0 for s in steps[:-1])
    assert seen[-1][2] <= FMAX and seen[-1][1] == pytest.approx(float(result.energy))


def test_new_parameters_do_not_recompile(fcc_min, cubic32, rng):
    """σ and ε set the minimiser's time and length units; they are traced, so a parameter
    sweep on one model reuses the compiled loop."""
    system = fcc_system(2, fcc_min[0], rng, noise=0.05)
    model, nbrs = cubic32
    relax(system, model, fmax=FMAX, nbrs=nbrs)
    params = {**model.params, "sigma": model.params["sigma"] * 0.99,
              "epsilon": model.params["epsilon"] * 0.9}
    with compilations() as count:
        result = relax(system, model, fmax=FMAX, nbrs=nbrs, params=params)
    assert result.converged
    assert count.value == 0


def test_result_is_a_pytree(fcc_min, cubic32):
    import jax

    model, nbrs = cubic32
    result = relax(fcc_system(2, fcc_min[0]), model, max_steps=0, on_failure="ignore", nbrs=nbrs)
    leaves, tree = jax.tree_util.tree_flatten(result)
    again = jax.tree_util.tree_unflatten(tree, leaves)
    assert again.status is result.status and again.steps == 0


def test_fire_and_gd_pieces_on_a_quadratic():
    """The init/step pieces minimise H = 1/2 q^T A q on their own."""
    A = jnp.diag(jnp.array([1.0, 5.0, 20.0]))

    def force_fn(q):
        return 0.5 * q @ A @ q, -(A @ q), None

    for minimizer in (fire(0.02, 0.1), fire2(0.02, 0.1), gd(1e-3)):
        state = minimizer.init(jnp.array([1.0, -1.0, 0.5]), force_fn)
        for _ in range(400):
            state, _ = minimizer.step(state, force_fn)
        assert float(jnp.max(jnp.abs(state.position))) < 1e-6


def _fire2_reference(A, q, n_steps, dt, dt_max, max_step, delay=20, f_inc=1.1, f_dec=0.5,
                     alpha0=0.25, f_alpha=0.99):
    """FIRE 2.0 as LAMMPS's min_style fire iterates it (semi-implicit Euler, half step
    back, initial delay, dt_min = 0.02 dt), written out in numpy for H = 1/2 q.A q over
    the rows of q (Euclidean per-row cap), with two deliberate differences: the half step
    back and the final move are capped at max_step per row like every other move (LAMMPS
    caps neither)."""
    q = np.array(q, float)
    v = np.zeros_like(q)
    f = -(A @ q.ravel()).reshape(q.shape)
    alpha, last_negative, dt_min, path = alpha0, 0, 0.02 * dt, []
    events = {"reset": 0, "cap": 0, "grow": 0}
    for step in range(1, n_steps + 1):
        P = float(np.sum(v * f))
        if P > 0:
            a = 1 - alpha
            b = alpha * np.sqrt(np.sum(v * v) / np.sum(f * f)) if np.sum(f * f) > 1e-20 else 0.0
            if step - last_negative > delay:
                dt, alpha = min(dt * f_inc, dt_max), alpha * f_alpha
                events["grow"] += 1
        else:
            last_negative = step
            if step >= delay:
                events["reset"] += 1
                alpha = alpha0
                if dt * f_dec >= dt_min:
                    dt *= f_dec
            back = 0.5 * dt * v
            longest = np.max(np.linalg.norm(back, axis=1))
            if longest > max_step:
                back = back * (max_step / longest)
                events["capped_back"] = events.get("capped_back", 0) + 1
            q = q - back
            v = np.zeros_like(v)
        probe = v if P > 0 else dt * f
        fastest = np.max(np.linalg.norm(probe, axis=1))
        h = max_step / fastest if dt * fastest > max_step else dt
        events["cap"] += h < dt
        v = v + h * f
        if P > 0:
            v = a * v + b * f
        move = h * v
        longest = np.max(np.linalg.norm(move, axis=1))
        if longest > max_step:  # (mdsens caps the final move too; LAMMPS does not)
            move = move * (max_step / longest)
            events["capped_move"] = events.get("capped_move", 0) + 1
        q = q + move
        f = -(A @ q.ravel()).reshape(q.shape)
        path.append(q.copy())
    return np.array(path), events


def test_fire2_follows_the_lammps_iteration():
    """fire2's steps equal a plain numpy transcription of LAMMPS's FIRE 2.0 iteration on a
    stiff quadratic, through time-step growth, resets (half step back) and the step cap."""
    rng = np.random.default_rng(3)
    B = rng.standard_normal((8, 8))
    A = B @ B.T + np.diag(np.linspace(0.5, 60.0, 8))
    q0 = rng.standard_normal((4, 2))
    ref, events = _fire2_reference(A, q0, 150, 0.01, 0.2, 0.05)
    assert min(events.values()) > 0 and "capped_back" in events, events
    Aj = jnp.asarray(A)

    def force_fn(q):
        g = (Aj @ q.ravel()).reshape(q.shape)
        return 0.5 * jnp.sum(q * g), -g, None

    minimizer = fire2(0.01, 0.2, max_step=0.05)
    state = minimizer.init(jnp.asarray(q0), force_fn)
    path = []
    for _ in range(150):
        state, _ = minimizer.step(state, force_fn)
        path.append(np.asarray(state.position))
    np.testing.assert_allclose(np.array(path), ref, rtol=1e-12, atol=1e-14)
    assert np.abs(ref[-1]).max() < 1e-3 * np.abs(q0).max()


def test_bad_arguments(fcc_min):
    system = fcc_system(2, fcc_min[0])
    with pytest.raises(ValueError, match="method"):
        relax(system, LJ, method="bfgs")
    with pytest.raises(ValueError, match="on_failure"):
        relax(system, LJ, on_failure="explode")
    with pytest.raises(ValueError, match="fmax"):
        relax(system, LJ, fmax=0.0)
