"""``relaxed_state``: relaxed structures as JAX functions under grad / jit / vmap / hessian,
checked against scaling laws, central differences of re-relaxed structures and
``sensitivity``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import bulk

from mdsens.md import System, potentials, relaxed_state
from mdsens.md.minimize import RelaxationError, relax
from mdsens.md.sensitivity import sensitivity

SIGMA, EPS = 3.4, 0.0104


@pytest.fixture(scope="module")
def lj_cell():
    """Solid argon (LJ, 4-atom cubic cell), cell relaxing: a(σ) = a₀ σ/σ₀ exactly."""
    atoms = bulk("Ar", "fcc", a=5.26, cubic=True)
    pot = potentials.get("lj", sigma=SIGMA, epsilon=EPS)
    return relaxed_state(atoms, pot, relax_cell=True)


def test_lattice_constant_and_energy_follow_scaling_laws(lj_cell):
    state = lj_cell({"sigma": SIGMA})
    assert int(state.status) == 0 and bool(state.converged)
    a, E = float(state.cell[0, 0]), float(state.energy)
    # LJ at the relaxed cell: a(σ) = a₀ σ/σ₀ and E(σ, ε) = ε e: da/dσ = a/σ, dE/dε = E/ε,
    # dE/dσ = 0, da/dε = 0 -- one forward-mode program for all four
    jac = jax.jit(jax.jacfwd(lambda th: (lj_cell(th).cell[0, 0], lj_cell(th).energy)))(
        {"sigma": SIGMA, "epsilon": EPS})
    (da, dE) = jac
    np.testing.assert_allclose(float(da["sigma"]), a / SIGMA, rtol=1e-7)
    assert abs(float(da["epsilon"])) < 1e-8 * a / EPS
    np.testing.assert_allclose(float(dE["epsilon"]), E / EPS, rtol=1e-8)
    assert abs(float(dE["sigma"])) < 1e-9 * abs(E) / SIGMA


@pytest.mark.slow
def test_second_derivative_and_reverse_mode(lj_cell):
    E = float(lj_cell({"sigma": SIGMA}).energy)
    g = jax.grad(lambda th: lj_cell(th).energy)({"sigma": SIGMA, "epsilon": EPS})
    np.testing.assert_allclose(float(g["epsilon"]), E / EPS, rtol=1e-8)
    h = jax.hessian(lambda s: lj_cell({"sigma": s}).cell[0, 0])(SIGMA)
    assert abs(float(h)) < 1e-6  # a is linear in σ


def test_vmap_agrees_with_single_calls(lj_cell):
    sigmas = jnp.array([3.3, 3.4, 3.5])
    a = jax.vmap(lambda s: lj_cell({"sigma": s}).cell[0, 0])(sigmas)
    single = [float(lj_cell({"sigma": s}).cell[0, 0]) for s in np.asarray(sigmas)]
    np.testing.assert_allclose(np.asarray(a), single, rtol=1e-10)
    np.testing.assert_allclose(np.asarray(a) / np.asarray(sigmas), single[1] / 3.4, rtol=1e-7)


@pytest.fixture(scope="module")
def binary_2d():
    """A disordered 2D binary LJ solid (24 atoms, fixed cell) and the diameter map
    σ_AA = D, σ_AB = (D + σ_BB)/2 of a user's parameterisation."""
    rng = np.random.default_rng(3)
    n, side = 24, 6.2
    grid = np.stack(np.meshgrid(np.arange(6), np.arange(4), indexing="ij"), -1).reshape(-1, 2)
    R = (grid + 0.5) * np.array([side / 6, side / 4]) + rng.normal(scale=0.08, size=(n, 2))
    species = ["A", "B"] * (n // 2)
    system = System.create(R, cell=np.diag([side, side]), species=species)
    pot = potentials.get("lj", sigma={("A", "A"): 1.0, ("A", "B"): 1.1, ("B", "B"): 1.2},
                         epsilon=1.0)

    a, b = pot.species.index("A"), pot.species.index("B")  # rows of the σ matrix

    def params_fn(D):
        s_bb = 1.2
        s_ab = 0.5 * (D + s_bb)
        sigma = jnp.zeros((2, 2)).at[a, a].set(D).at[b, b].set(s_bb)
        return {"sigma": sigma.at[a, b].set(s_ab).at[b, a].set(s_ab)}

    fn = relaxed_state(system, pot, params_fn=params_fn)
    return system, pot, fn, params_fn


def test_params_fn_derivative_matches_central_differences(binary_2d):
    system, pot, fn, params_fn = binary_2d
    D = 1.0
    dR = np.asarray(jax.jacfwd(lambda d: fn(d).positions)(D))
    start = fn.reference.system

    def relaxed_positions(d):
        r = relax(start, pot, fmax=1e-11, max_steps=100000,
                  params={**pot.params, **params_fn(d)})
        return np.asarray(r.system.positions)

    h = 1e-4
    fd = (relaxed_positions(D + h) - relaxed_positions(D - h)) / (2 * h)
    assert np.abs(dR).max() > 1e-2  # a real response
    # central differences carry O(h²) truncation: agreement to ~5e-6 of the largest entry
    np.testing.assert_allclose(dR, fd, atol=2e-5 * np.abs(dR).max())


def test_params_fn_matches_sensitivity_chain_rule(binary_2d):
    system, pot, fn, _ = binary_2d
    dR = np.asarray(jax.jacrev(lambda d: fn(d).positions)(1.0))
    res = sensitivity(fn.reference.system, pot, wrt=["sigma[A,A]", "sigma[A,B]"],
                      observables=["positions"])
    d = res.derivatives["positions"]
    np.testing.assert_allclose(dR, d["sigma[A,A]"] + 0.5 * d["sigma[A,B]"], atol=1e-7)


def test_failed_relaxation_obeys_the_policy():
    atoms = bulk("Ar", "fcc", a=5.26, cubic=True)
    atoms.rattle(0.05, seed=1)
    pot = potentials.get("lj", sigma=SIGMA, epsilon=EPS)
    for policy in ("raise", "nan"):
        fn = relaxed_state(atoms, pot, options={"max_steps": 3}, on_failure=policy,
                           reference_params={"sigma": SIGMA})
        far = {"sigma": SIGMA * 1.05}
        if policy == "raise":
            with pytest.raises(RelaxationError, match="maximum steps"):
                fn(far)
            with pytest.raises(Exception, match="maximum steps"):
                jax.block_until_ready(jax.jit(jax.grad(lambda th, f=fn: f(th).energy))(far))
        else:
            state = fn(far)
            assert int(state.status) == 1 and np.isnan(float(state.energy))
            assert np.all(np.isnan(np.asarray(fn(far).positions)))
            ok = fn({"sigma": SIGMA})  # the reference itself: converged, finite
            assert int(ok.status) == 0 and np.isfinite(float(ok.energy))


def test_bad_arguments_are_refused_before_work():
    atoms = bulk("Ar", "fcc", a=5.26, cubic=True)
    pot = potentials.get("lj", sigma=SIGMA, epsilon=EPS)
    with pytest.raises(ValueError, match="on_failure"):
        relaxed_state(atoms, pot, on_failure="maybe")
    free = atoms.copy()
    free.pbc = False
    with pytest.raises(ValueError, match="periodic"):
        relaxed_state(free, pot, relax_cell=True)
    fn = relaxed_state(atoms, pot)
    with pytest.raises(ValueError, match="unknown parameters"):
        fn({"sigmaa": 3.4})


def test_free_cluster_response_is_a_dilation_without_rigid_motion():
    """Ar13 (free boundaries): R*(σ) − c = (R*(σ₀) − c) σ/σ₀, so dR/dσ = (R − c)/σ; reverse
    mode through the internally jitted function (rotations traced as zero modes)."""
    from ase.cluster import Icosahedron

    atoms = Icosahedron("Ar", noshells=2, latticeconstant=5.26)
    atoms.rattle(0.02, seed=0)
    pot = potentials.get("lj", sigma=SIGMA, epsilon=EPS)
    fn = relaxed_state(atoms, pot)
    R = np.asarray(fn({"sigma": SIGMA}).positions)
    J = np.asarray(jax.jacrev(lambda s: fn({"sigma": s}).positions)(SIGMA))
    np.testing.assert_allclose(J, (R - R.mean(0)) / SIGMA, atol=1e-7)


def test_sensitivity_takes_the_same_user_parameterisation(binary_2d):
    """``sensitivity(params_fn=..., wrt={"D": 1.0})`` reads dR/dD directly and agrees with
    the traced function's derivative."""
    system, pot, fn, params_fn = binary_2d
    res = sensitivity(fn.reference.system, pot, wrt={"D": 1.0},
                      params_fn=lambda t: params_fn(t["D"]), observables=["positions"])
    dR = np.asarray(jax.jacfwd(lambda d: fn(d).positions)(1.0))
    np.testing.assert_allclose(res.derivatives["positions"]["D"], dR, atol=1e-8)


def test_neighbor_list_inside_the_trace_gives_the_same_derivatives(binary_2d):
    """The traced loop with a neighbour list (fixed capacity, rebuilt inside the trace) and
    reverse mode through the internally jitted function agree with the all-pairs model."""
    system, pot, fn, params_fn = binary_2d
    listed = relaxed_state(system, pot, params_fn=params_fn,
                           options={"neighbor_list": True, "skin": 0.3})
    assert listed.model.uses_neighbor_list and not fn.model.uses_neighbor_list
    loss = lambda f: (lambda d: jnp.sum(f(d).positions ** 2) + f(d).energy)  # noqa: E731
    g_list = jax.grad(jax.jit(loss(listed)))(1.02)
    g_all = jax.grad(loss(fn))(1.02)
    np.testing.assert_allclose(float(g_list), float(g_all), rtol=1e-7)
