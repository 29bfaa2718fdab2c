"""Pair potentials and EnergyModel vs independent references (ASE, numpy lattice sums).

Float64 is enabled by tests/conftest.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.lj import LennardJones as AseLJ
from ase.cluster import Icosahedron
from ase.neighborlist import neighbor_list as ase_neighbor_list
from helpers import binary_lj_crystal

from mdsens.md import System, build, potentials
from mdsens.md.potentials.base import Potential


# ----------------------------------------------------------------------------- helpers
def _efs(model, R, cell, params, nbrs):
    """Energy, forces and (periodic) stress in one jitted call."""

    def f(R, cell, params, nbrs):
        e, g = jax.value_and_grad(model.energy)(R, cell, params, nbrs)
        s = model.stress(R, cell, params, nbrs) if model.periodic else jnp.zeros((3, 3))
        return e, -g, s

    e, F, s = jax.jit(f)(R, cell, params, nbrs)
    return float(e), np.asarray(F), np.asarray(s)


def _model_efs(system, pot, **kw):
    model = build(system, pot, **kw)
    nbrs = model.allocate(system.positions, system.cell)
    return model, _efs(model, system.positions, system.cell, pot.params, nbrs)


def _switch(r, ro, rc):
    r2, ro2, rc2 = r**2, ro**2, rc**2
    inner = (rc2 - r2) ** 2 * (rc2 + 2 * r2 - 3 * ro2) / (rc2 - ro2) ** 3
    return np.where(r < ro, 1.0, np.where(r < rc, inner, 0.0))


def _pair_reference(atoms, phi, dphi, rc):
    """E, F, stress of E = 1/2 sum_ij phi(r_ij) from ASE's neighbour list (numpy)."""
    i, j, d, D = ase_neighbor_list("ijdD", atoms, rc)
    e = 0.5 * np.sum(phi(d, i, j))
    g = (dphi(d, i, j) / d)[:, None] * D  # dE/dD for the ordered pair, doubled below
    F = np.zeros((len(atoms), 3))
    np.add.at(F, i, g)
    stress = None
    if atoms.pbc.all():
        stress = 0.5 * (D.T @ g) / atoms.get_volume()
    return e, F, stress


def _ase_lj(atoms, sigma, epsilon):
    a = atoms.copy()
    a.calc = AseLJ(sigma=sigma, epsilon=epsilon, rc=2.5 * sigma, ro=2.0 * sigma, smooth=True)
    stress = a.get_stress(voigt=False) if a.pbc.all() else None
    return a.get_potential_energy(), a.get_forces(), stress


def _perturbed(atoms, scale, seed=0):
    atoms = atoms.copy()
    rng = np.random.default_rng(seed)
    atoms.positions += scale * rng.standard_normal(atoms.positions.shape)
    return atoms


def _rotation(seed=1):
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((3, 3)))
    return q * np.sign(np.linalg.det(q))


def _fcc(a, reps, sigma=1.0, seed=0, scale=0.03):
    atoms = bulk("Ar", "fcc", a=a * sigma, cubic=True).repeat(reps)
    return _perturbed(atoms, scale * sigma, seed)


def _triclinic(sigma=1.0):
    """125 atoms on a perturbed grid in a skewed, rotated cell (cell not lower-triangular)."""
    cell = np.array([[6.6, 0.0, 0.0], [1.6, 6.4, 0.0], [0.9, -1.2, 6.5]]) @ _rotation()
    s = np.stack(np.meshgrid(*[np.arange(5) / 5] * 3, indexing="ij"), -1).reshape(-1, 3)
    atoms = Atoms("Ar125", scaled_positions=s, cell=cell * sigma, pbc=True)
    return _perturbed(atoms, 0.04 * sigma, seed=3)


def _cluster(sigma=1.0, shells=3):
    atoms = Icosahedron("Ar", shells, latticeconstant=1.55 * sigma)  # 55 atoms for 3 shells
    atoms.pbc = False
    return _perturbed(atoms, 0.03 * sigma, seed=4)


SIGMA, EPS = 3.405, 0.0104  # argon, Å and eV: checks that lengths scale with sigma


# ----------------------------------------------------------------------------- LJ vs ASE
@pytest.mark.parametrize(
    "case, neighbor_list, replicas, uses_list",
    [
        ("fcc256", "auto", (1, 1, 1), False),  # "auto": all pairs up to 300 atoms
        ("fcc256", True, (1, 1, 1), True),
        ("triclinic", False, (1, 1, 1), False),
        ("triclinic", True, (1, 1, 1), True),
        ("fcc4", "auto", (4, 4, 4), False),
        ("fcc4", True, (4, 4, 4), True),
        ("cluster", False, (1, 1, 1), False),
        ("cluster", True, (1, 1, 1), True),
    ],
)
def test_lennard_jones_matches_ase(case, neighbor_list, replicas, uses_list):
    atoms = {
        "fcc256": lambda: _fcc(1.55, (4, 4, 4), SIGMA),
        "fcc4": lambda: _fcc(1.55, (1, 1, 1), SIGMA),
        "triclinic": lambda: _triclinic(SIGMA),
        "cluster": lambda: _cluster(SIGMA),
    }[case]()
    system = System.from_ase(atoms)
    pot = potentials.get("lj", sigma=SIGMA, epsilon=EPS)
    model, (e, F, s) = _model_efs(system, pot, neighbor_list=neighbor_list)
    assert model.replicas == replicas and model.uses_neighbor_list is uses_list
    e_ref, F_ref, s_ref = _ase_lj(atoms, SIGMA, EPS)
    np.testing.assert_allclose(e, e_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(F, F_ref, rtol=0, atol=1e-10 * np.abs(F_ref).max())
    if s_ref is not None:
        np.testing.assert_allclose(s, s_ref, rtol=0, atol=1e-10 * np.abs(s_ref).max())


# ----------------------------------------------------------------------------- Morse, soft sphere
def test_morse_and_soft_sphere_match_numpy_lattice_sum():
    # 1-atom primitive fcc (nearest neighbour 1.05 sigma): heavy replication, triclinic.
    atoms = _perturbed(bulk("Cu", "fcc", a=1.05 * np.sqrt(2.0)), 0.0)
    atoms.cell = atoms.cell.array @ _rotation(5)
    atoms = atoms.repeat((2, 1, 1))
    atoms.positions[1] += [0.02, -0.03, 0.01]
    system = System.from_ase(atoms)

    sig, eps, alpha = 1.0, 0.7, 3.0
    pot = potentials.morse(sigma=sig, epsilon=eps, alpha=alpha)
    model, (e, F, s) = _model_efs(system, pot)
    assert model.n_copies > 1

    def phi_m(r, *_):
        x = np.exp(-alpha * (r - sig))
        return eps * (x * x - 2 * x) * _switch(r, 2.0 * sig, 2.5 * sig)

    def dphi_m(r, *_):
        h = 1e-6
        return (phi_m(r + h) - phi_m(r - h)) / (2 * h)

    e_ref, F_ref, s_ref = _pair_reference(atoms, phi_m, dphi_m, 2.5 * sig)
    np.testing.assert_allclose(e, e_ref, rtol=1e-10)
    np.testing.assert_allclose(F, F_ref, atol=1e-7)
    np.testing.assert_allclose(s, s_ref, atol=1e-7)

    ss = potentials.soft_sphere(sigma=1.2, epsilon=2.0, alpha=2.5)
    _, (e2, F2, s2) = _model_efs(system, ss, neighbor_list=False)

    def phi_s(r, *_):
        return np.where(r < 1.2, 2.0 / 2.5 * np.clip(1 - r / 1.2, 0, None) ** 2.5, 0.0)

    def dphi_s(r, *_):
        return np.where(r < 1.2, -2.0 / 1.2 * np.clip(1 - r / 1.2, 0, None) ** 1.5, 0.0)

    e_ref, F_ref, s_ref = _pair_reference(atoms, phi_s, dphi_s, 1.2)
    np.testing.assert_allclose(e2, e_ref, rtol=1e-10)
    np.testing.assert_allclose(F2, F_ref, atol=1e-10)
    np.testing.assert_allclose(s2, s_ref, atol=1e-10)


# ----------------------------------------------------------------------------- neighbour lists
@pytest.fixture(scope="module")
def fcc256():
    """256-atom fcc LJ with and without a list, and jitted functions shared by the tests."""
    system = System.from_ase(_fcc(1.55, (4, 4, 4)))
    pot = potentials.lennard_jones()
    nl, dense = build(system, pot, neighbor_list=True), build(system, pot, False)
    return {
        "system": system, "params": pot.params, "nl": nl,
        "energy_nl": jax.jit(nl.energy), "energy_all": jax.jit(dense.energy),
        "update": jax.jit(nl.update),
    }


def test_neighbor_list_update_new_positions_and_cell_matches_all_pairs(fcc256):
    system, params, nl = fcc256["system"], fcc256["params"], fcc256["nl"]
    nbrs = nl.allocate(system.positions, system.cell)
    # a pure affine shear leaves fractional coordinates unchanged: the list must notice
    # the cell change itself (pairs beyond cutoff + skin come within the cutoff)
    shear = np.eye(3) + 0.25 * np.eye(3)[[1]].T @ np.eye(3)[[0]]
    R, C = system.positions @ shear, system.cell @ shear
    nbrs = fcc256["update"](R, C, nbrs)
    assert not nl.overflowed(nbrs)
    np.testing.assert_allclose(
        fcc256["energy_nl"](R, C, params, nbrs), fcc256["energy_all"](R, C, params, None),
        rtol=1e-12,
    )
    rng = np.random.default_rng(7)
    for step in range(3):
        strain = np.eye(3) + 0.01 * rng.standard_normal((3, 3))
        C = C @ strain
        R = R @ strain + 0.03 * rng.standard_normal(R.shape)
        nbrs = fcc256["update"](R, C, nbrs)
        assert not nl.overflowed(nbrs), step
        np.testing.assert_allclose(
            fcc256["energy_nl"](R, C, params, nbrs), fcc256["energy_all"](R, C, params, None),
            rtol=1e-12,
        )
    F_nl = jax.grad(fcc256["energy_nl"])(R, C, params, nbrs)
    F_all = jax.grad(fcc256["energy_all"])(R, C, params, None)
    np.testing.assert_allclose(F_nl, F_all, atol=1e-10)


def test_neighbor_list_lazy_rebuild_keeps_energy_exact(fcc256):
    """Moves below skin/2 at a fixed cell keep the old list (same reference), still exact."""
    system, params, nl = fcc256["system"], fcc256["params"], fcc256["nl"]
    nbrs = nl.allocate(system.positions, system.cell)
    R = system.positions + 0.2 * nl.skin * np.ones(3) / np.sqrt(3)
    new = fcc256["update"](R, system.cell, nbrs)
    np.testing.assert_array_equal(new.nlist.reference_position, nbrs.nlist.reference_position)
    np.testing.assert_allclose(
        fcc256["energy_nl"](R, system.cell, params, new),
        fcc256["energy_all"](R, system.cell, params, None),
        rtol=1e-12,
    )
    moved = fcc256["update"](R + 0.4 * nl.skin, system.cell, nbrs)  # beyond skin/2: rebuilt
    assert not np.array_equal(moved.nlist.reference_position, nbrs.nlist.reference_position)


def test_overflow_detected_after_compression(fcc256):
    system, params, nl = fcc256["system"], fcc256["params"], fcc256["nl"]
    nbrs = nl.allocate(system.positions, system.cell)
    assert not nl.overflowed(nbrs)
    R, C = 0.85 * system.positions, 0.85 * system.cell
    squeezed = fcc256["update"](R, C, nbrs)
    assert bool(jax.jit(nl.overflowed)(squeezed))
    fresh = nl.allocate(R, C)
    assert not nl.overflowed(fresh)
    np.testing.assert_allclose(
        nl.energy(R, C, params, fresh), fcc256["energy_all"](R, C, params, None), rtol=1e-12
    )


def test_free_cluster_overflow_and_update():
    system = System.from_ase(_cluster(shells=4))  # 147 atoms
    pot = potentials.lj()
    model = build(system, pot, neighbor_list=True)
    nbrs = model.allocate(system.positions, None)
    assert nbrs.nlist.idx.shape[1] < system.n_atoms - 1  # the list can overflow
    R = 0.8 * system.positions + 5.0  # compressed and far outside the allocation box
    assert bool(model.overflowed(jax.jit(model.update)(R, None, nbrs)))
    nbrs = model.allocate(R, None)
    ref = jax.jit(build(system, pot, neighbor_list=False).energy)(R, None, pot.params)
    np.testing.assert_allclose(jax.jit(model.energy)(R, None, pot.params, nbrs), ref, rtol=1e-12)


# ----------------------------------------------------------------------------- parameters
def _binary(n_cells=(4, 4, 4), seed=0):
    atoms = _fcc(1.55, n_cells, seed=seed)
    symbols = np.array(["Ar"] * len(atoms))
    symbols[np.random.default_rng(seed).permutation(len(atoms))[: len(atoms) // 3]] = "Kr"
    atoms.set_chemical_symbols(symbols)
    return atoms


def test_param_gradient_matches_central_differences_with_neighbor_list():
    atoms = _binary()
    system = System.from_ase(atoms)
    sigma = {("Ar", "Ar"): 1.0, ("Ar", "Kr"): 1.04, ("Kr", "Kr"): 1.09}
    pot = potentials.lj(sigma=sigma, epsilon=0.8, r_onset=1.8)
    model = build(system, pot, neighbor_list=True)
    assert model.uses_neighbor_list
    nbrs = model.allocate(system.positions, system.cell)
    capacity = nbrs.nlist.idx.shape[1]
    assert bool(jnp.any(nbrs.nlist.idx == system.n_atoms))  # padded slots exist
    R, C = system.positions, system.cell

    energy = jax.jit(model.energy)
    grad = jax.grad(model.energy, argnums=2)(R, C, pot.params, nbrs)
    assert grad["sigma"].shape == (2, 2) and grad["epsilon"].shape == ()
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grad))
    np.testing.assert_allclose(grad["sigma"], grad["sigma"].T, rtol=1e-12)
    h = 1e-6
    for name, index in [("epsilon", ()), ("sigma", (0, 0)), ("sigma", (0, 1)), ("sigma", (1, 1))]:
        def e_at(x, name=name, index=index):
            p = dict(pot.params)
            p[name] = p[name].at[index].add(x)
            return float(energy(R, C, p, nbrs))

        fd = (e_at(h) - e_at(-h)) / (2 * h)
        np.testing.assert_allclose(grad[name][index], fd, rtol=1e-6, atol=1e-9)
    assert nbrs.nlist.idx.shape[1] == capacity


def _lj_reference(positions, cell, symbols, sigma, epsilon):
    """Hand-built binary LJ: explicit double loop with minimum image (cell > 2 cutoff)."""
    e = 0.0
    inv = np.linalg.inv(cell)
    for i in range(len(positions)):
        for j in range(i + 1, len(positions)):
            d = (positions[j] - positions[i]) @ inv
            d = (d - np.round(d)) @ cell
            r = np.linalg.norm(d)
            s, ep = sigma[(symbols[i], symbols[j])], epsilon[(symbols[i], symbols[j])]
            e += 4 * ep * ((s / r) ** 12 - (s / r) ** 6) * _switch(r, 2.0 * s, 2.5 * s)
    return e


def test_per_pair_parameters_match_hand_built_reference():
    rng = np.random.default_rng(11)
    n = 40
    cell = np.diag([7.4, 7.5, 8.0])
    positions = np.stack(np.meshgrid(*[np.arange(4)] * 3, indexing="ij"), -1).reshape(-1, 3)
    positions = (positions[:n] + 0.5 + 0.08 * rng.standard_normal((n, 3))) * 1.8
    symbols = rng.choice(["Ne", "Ar"], size=n)
    sig = {("Ne", "Ne"): 1.0, ("Ar", "Ar"): 1.3, ("Ne", "Ar"): 1.12}
    eps = {("Ne", "Ne"): 0.3, ("Ar", "Ar"): 1.0, ("Ne", "Ar"): 0.55}
    full = lambda d: {**d, **{(b, a): v for (a, b), v in d.items()}}  # noqa: E731
    e_ref = _lj_reference(positions, cell, symbols, full(sig), full(eps))

    pot = potentials.lj(sigma=sig, epsilon={"Ar-Ar": 1.0, "Ne-Ar": 0.55, "Ne-Ne": 0.3})
    assert pot.species == ("Ne", "Ar")  # by atomic number
    # the system lists species in another order: mapping is by symbol
    system = System.create(positions, cell, symbols, species_names=("Ar", "Ne"))
    model = build(system, pot)
    assert model.replicas == (1, 1, 1)
    np.testing.assert_allclose(model.energy(system.positions, system.cell), e_ref, rtol=1e-12)
    # explicit matrix + species list gives the same potential
    mat = potentials.lj(
        sigma=[[1.3, 1.12], [1.12, 1.0]], epsilon=[[1.0, 0.55], [0.55, 0.3]], species=("Ar", "Ne")
    )
    e_mat = build(system, mat).energy(system.positions, system.cell)
    np.testing.assert_allclose(e_mat, e_ref, rtol=1e-12)


def test_lj_scaling_law_small_cell():
    """E(sigma R, sigma cell; sigma) == E(R, cell; 1) and F scales as 1/sigma."""
    system = System.from_ase(_fcc(1.55, (1, 1, 1), scale=0.05))
    s = 3.4
    scaled = system.replace(positions=s * system.positions, cell=s * system.cell)
    m1 = build(system, potentials.lj(sigma=1.0, epsilon=1.0), neighbor_list=False)
    ms = build(scaled, potentials.lj(sigma=s, epsilon=1.0), neighbor_list=False)
    assert m1.replicas == ms.replicas == (4, 4, 4)
    e1, F1, S1 = _efs(m1, system.positions, system.cell, m1.params, None)
    es, Fs, Ss = _efs(ms, scaled.positions, scaled.cell, ms.params, None)
    np.testing.assert_allclose(es, e1, rtol=1e-12)
    np.testing.assert_allclose(Fs * s, F1, atol=1e-11)
    np.testing.assert_allclose(Ss * s**3, S1, atol=1e-11)


# ----------------------------------------------------------------------------- custom
def test_custom_energy_matches_builtin_on_replicated_small_cell():
    atoms = _fcc(1.55, (1, 1, 1), scale=0.05, seed=9)
    system = System.from_ase(atoms)

    def lj_all_pairs(R, params, displacement):
        dR = displacement(R[:, None, :], R[None, :, :])
        n = R.shape[0]
        off = ~np.eye(n, dtype=bool)
        r = jnp.sqrt(jnp.where(off, jnp.sum(dR**2, -1), 1.0))
        lj = potentials.lj(sigma=1.0)  # reuse the switched pair function
        e = lj.pair_energy(r, sigma=params["sigma"], epsilon=params["epsilon"])
        return 0.5 * jnp.sum(jnp.where(off, e, 0.0))

    pot = potentials.custom(lj_all_pairs, {"sigma": 1.0, "epsilon": 1.0}, cutoff=2.5)
    model = build(system, pot)
    assert not model.uses_neighbor_list and model.replicas == (4, 4, 4)
    e, F, s = _efs(model, system.positions, system.cell, pot.params, None)
    e_ref, F_ref, s_ref = _ase_lj(atoms, 1.0, 1.0)
    np.testing.assert_allclose(e, e_ref, rtol=1e-10)
    np.testing.assert_allclose(F, F_ref, atol=1e-10)
    np.testing.assert_allclose(s, s_ref, atol=1e-10)
    with pytest.raises(ValueError, match="neighbour list"):
        build(system, pot, neighbor_list=True)


def test_custom_receives_documented_keywords():
    seen = {}

    def energy_fn(R, params, **kw):
        seen.update(kw)
        return params["k"] * jnp.sum(R**2)

    system = System.create(np.zeros((2, 3)) + [[0, 0, 0], [1, 0, 0]], species=["H", "O"])
    model = build(system, potentials.custom(energy_fn, {"k": 2.0}))
    np.testing.assert_allclose(model.energy(system.positions, None), 2.0)
    assert set(seen) == {"cell", "displacement", "species"} and seen["cell"] is None
    np.testing.assert_array_equal(seen["species"], [0, 1])


# ----------------------------------------------------------------------------- registry
def test_registry_and_parameter_validation():
    assert {"lennard_jones", "lj", "morse", "soft_sphere", "custom"} <= set(
        potentials.names(aliases=True)
    )
    lj = potentials.get("lj", sigma=2.0)
    assert isinstance(lj, Potential) and lj.name == "lennard_jones"
    assert lj.settings == {"r_onset": 2.0, "r_cutoff": 2.5} and lj.cutoff() == 5.0
    assert lj.params["sigma"].dtype == jnp.float64
    assert potentials.lj(sigma=np.float32(1.0)).params["sigma"].dtype == jnp.float32
    lj2 = lj.with_params(epsilon=3.0)
    assert float(lj2.params["epsilon"]) == 3.0 and float(lj.params["epsilon"]) == 1.0
    with pytest.raises(ValueError, match="unknown potential"):
        potentials.get("nope")
    with pytest.raises(ValueError, match="already registered"):
        potentials.register("lj", potentials.lennard_jones)
    with pytest.raises(ValueError, match="species"):
        potentials.lj(sigma=np.ones((2, 2)))
    with pytest.raises(ValueError, match="symmetric"):
        potentials.lj(sigma=[[1.0, 2.0], [1.5, 1.0]], species=("A", "B"))
    with pytest.raises(ValueError, match="missing species pairs"):
        potentials.lj(sigma={("Ar", "Ar"): 1.0, ("Kr", "Kr"): 1.1})
    with pytest.raises(ValueError, match="r_onset"):
        potentials.morse(r_onset=3.0, r_cutoff=2.5)
    system = System.create(np.zeros((1, 3)), np.eye(3) * 10, ["Xe"])
    with pytest.raises(ValueError, match="Xe"):
        build(system, potentials.lj(sigma={("Ar", "Ar"): 1.0}))


def _rule_and_plain_energies():
    """Binary LJ (per-pair σ) in a replicated small cell with a neighbour list: the energy
    through the model (the custom_jvp rule) and plain autodiff of the same energy."""
    from mdsens.md.potentials.pair import _plain_total_energy

    system, pot = binary_lj_crystal(a=5.26, repeat=2, rattle=0.1, seed=0)
    model = build(system, pot, neighbor_list=True)
    assert model.n_copies > 1
    R, C = jnp.asarray(system.positions), jnp.asarray(system.cell)
    nbrs = model.allocate(R, C)

    def custom(R, C, P):
        return model.energy(R, C, P, nbrs)

    def plain(R, C, P):
        R_s, C_s = model.supercell(R, C)
        return _plain_total_energy(pot, model.pad_distance, P, R_s, C_s,
                                   jnp.asarray(model.supercell_species()), nbrs.nlist.idx) / \
            model.n_copies

    return R, C, dict(pot.params), custom, plain


def test_blocked_energy_and_force_matches_plain_autodiff(monkeypatch):
    """The blocked, per-component form used above CHUNKED_ABOVE atoms (forced here on 256
    internal atoms, blocks of 100: the last block partly repeats rows) gives the same
    energy, forces, Hessian-vector products, cell gradient (from the virial) and its
    second derivatives as plain differentiation."""
    from mdsens.md.potentials import pair

    monkeypatch.setattr(pair, "CHUNKED_ABOVE", 0)
    monkeypatch.setattr(pair, "ROW_CHUNK", 100)
    monkeypatch.setattr(pair, "ROW_CHUNK_THREADED", 100)
    R, C, P, custom, plain = _rule_and_plain_energies()
    v = jax.random.normal(jax.random.PRNGKey(1), R.shape)
    w = jax.random.normal(jax.random.PRNGKey(2), C.shape)

    def checks(E):
        value, grad = jax.value_and_grad(E)(R, C, P)
        hvp = jax.jvp(lambda x: jax.grad(E)(x, C, P), (R,), (v,))[1]
        # the cell gradient (virial rule) and its derivatives along a cell direction
        grad_C = jax.grad(E, 1)(R, C, P)
        cell_cell = jax.jvp(lambda c: jax.grad(E, 1)(R, c, P), (C,), (w,))[1]
        cell_pos = jax.jvp(lambda c: jax.grad(E)(R, c, P), (C,), (w,))[1]
        return [value, grad, hvp, grad_C, cell_cell, cell_pos]

    got, ref = jax.jit(lambda: checks(custom))(), jax.jit(lambda: checks(plain))()
    assert got[1].shape == R.shape
    for g, r in zip(got, ref, strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-10, atol=1e-13 * float(jnp.abs(r).max()))


def test_image_slots_give_the_minimum_image_energy_and_forces(monkeypatch):
    """Blocked forces read from the list's periodic images (forced on 256 atoms) equal the
    minimum-image ones: rattled, with atoms re-wrapped by lattice vectors, after a
    rebuild at moved positions and in a strained cell; so do the cell gradients. A cell
    narrower than 2 reach gets no images (and a rebuild into one flags the list for
    reallocation)."""
    import dataclasses

    from mdsens.md.potentials import pair

    monkeypatch.setattr(pair, "CHUNKED_ABOVE", 0)
    monkeypatch.setattr(pair, "ROW_CHUNK", 100)
    monkeypatch.setattr(pair, "ROW_CHUNK_THREADED", 100)
    base = np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
    g = np.stack(np.meshgrid(*[np.arange(4)] * 3, indexing="ij"), -1).reshape(-1, 3)
    a = 1.55
    rng = np.random.default_rng(7)
    R = jnp.asarray(((g[:, None] + base[None]).reshape(-1, 3)) * a
                    + 0.05 * rng.standard_normal((256, 3)))
    C = jnp.asarray(np.eye(3) * 4 * a)
    model = build(System.create(np.asarray(R), np.asarray(C)), potentials.lj(),
                  neighbor_list=True)
    assert model.n_copies == 1
    nbrs = model.allocate(R, C)
    assert nbrs.images is not None
    vg = jax.jit(jax.value_and_grad(model.energy), static_argnums=())

    grad_C = jax.jit(jax.grad(model.energy, 1))

    def check(R, C, nb):
        e, gr = vg(R, C, None, nb)
        e0, g0 = vg(R, C, None, dataclasses.replace(nb, images=None))
        np.testing.assert_allclose(float(e), float(e0), rtol=1e-13)
        np.testing.assert_allclose(np.asarray(gr), np.asarray(g0), atol=1e-12)
        np.testing.assert_allclose(np.asarray(grad_C(R, C, None, nb)),
                                   np.asarray(grad_C(R, C, None,
                                                     dataclasses.replace(nb, images=None))),
                                   atol=1e-10)

    check(R, C, nbrs)
    check(R.at[::3].add(C[0]).at[1::5].add(-C[2] + C[1]), C, nbrs)  # re-wrapped atoms
    moved = R + 0.2 * jnp.asarray(rng.standard_normal((256, 3)))
    rebuilt = model.update(moved, C, nbrs)
    assert not np.array_equal(np.asarray(rebuilt.images), np.asarray(nbrs.images))
    check(moved, C, rebuilt)
    strain = jnp.eye(3) + jnp.asarray([[0.02, 0.01, 0.0], [0.01, -0.01, 0.0], [0, 0, 0.01]])
    strained = model.update(R @ strain, C @ strain, nbrs)
    check(R @ strain, C @ strain, strained)
    # 0.85: widths 5.27, above 2 cutoff (5.0) but below 2 reach (5.5)
    narrow = model.update(0.85 * R, 0.85 * C, nbrs)
    assert bool(model.overflowed(narrow))
    assert model.allocate(0.85 * R, 0.85 * C).images is None


def test_lj_r2_form_is_jax_md_lj():
    """The r²-form LJ of the force loop equals jax-md's switched LJ in r, with the
    derivative relation 2 dφ/d(r²) = φ'(r)/r, below, inside and beyond the switch."""
    from mdsens.md.potentials import pair

    pot = pair.lennard_jones(sigma=1.3, epsilon=0.7)
    r = jnp.linspace(0.9, 3.6, 2001)  # σ: onset 2.6, cutoff 3.25
    p = dict(pot.params)  # strong float64 (jax-md computes weakly typed input in float32)
    e_r, de_r = jax.jvp(lambda x: pot.pair_energy(x, **p), (r,), (jnp.ones_like(r),))
    c = pot.r2_coefficients(**p)
    e_2, de_2 = jax.jvp(lambda x: pot.pair_energy_r2(x, **c), (r * r,), (jnp.ones_like(r),))
    np.testing.assert_allclose(e_2, e_r, rtol=1e-13, atol=1e-16)
    np.testing.assert_allclose(2.0 * de_2, de_r / r, rtol=1e-12, atol=1e-16)
    assert float(jnp.abs(e_2[r > 3.25]).max()) == 0.0 and float(e_2[0]) > 0


def test_pair_energy_gradient_rule_matches_plain_autodiff():
    """The scatter-free position gradient of pair potentials (a custom_jvp) gives the same
    forces, stress, parameter gradient, Hessian-vector products (forward over reverse),
    mixed position-parameter derivatives, reverse-over-reverse products, the cell Hessian
    and the cell-parameter derivatives as plain
    differentiation of the same energy (binary LJ, per-pair σ, replicated small cell)."""
    R, C, P, custom, plain = _rule_and_plain_energies()
    v = jax.random.normal(jax.random.PRNGKey(0), R.shape)

    def checks(E):
        hvp = jax.jvp(lambda x: jax.grad(E)(x, C, P), (R,), (v,))[1]
        # a non-symmetric direction: the energy depends on the symmetric part only
        mixed = jax.jvp(lambda s: jax.grad(E)(R, C, {**P, "sigma": s}), (P["sigma"],),
                        (jnp.asarray([[0.0, 1.0], [0.0, 0.0]]),))[1]
        rev_rev = jax.grad(lambda x: jnp.sum(jax.grad(E)(x, C, P) * v))(R)
        cell_cell = jax.hessian(E, 1)(R, C, P)
        cell_param = jax.jacfwd(jax.grad(E, 1), 2)(R, C, P)["sigma"]
        return [E(R, C, P), jax.grad(E)(R, C, P), jax.grad(E, 1)(R, C, P),
                jax.grad(E, 2)(R, C, P)["sigma"], hvp, mixed, rev_rev, cell_cell, cell_param]

    got, ref = jax.jit(lambda: checks(custom))(), jax.jit(lambda: checks(plain))()
    grad_sigma = got[3]
    np.testing.assert_allclose(grad_sigma, grad_sigma.T, rtol=1e-12)
    for g, r in zip(got, ref, strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-10, atol=1e-13 * float(jnp.abs(r).max()))


def test_pair_forms_equal_closed_forms_and_jax_md():
    """The pair forms written out in potentials/pair.py: Lennard-Jones, Morse and the
    switch against NumPy closed forms in float64 (jax-md's own Lennard-Jones and switch
    round 4ε and the squared radii to float32: relative errors up to 1e-7), soft sphere
    against jax-md."""
    import jax.numpy as jnp
    from jax_md import energy as jmd

    from mdsens.md.potentials import pair

    r_np = np.linspace(0.05, 3.2, 500)
    r = jnp.asarray(r_np)
    s, e, a = 1.1, 0.7, 2.5
    S, E, A = jnp.asarray(s), jnp.asarray(e), jnp.asarray(a)
    lj = 4 * e * ((s / r_np) ** 12 - (s / r_np) ** 6)
    morse = e * (1 - np.exp(-a * (r_np - s))) ** 2 - e
    ro, rc = 2.0 * s, 2.5 * s
    switch = np.where(r_np < ro, 1.0, np.where(
        r_np < rc, (rc**2 - r_np**2) ** 2 * (rc**2 + 2 * r_np**2 - 3 * ro**2)
        / (rc**2 - ro**2) ** 3, 0.0))
    cases = [
        (pair._lennard_jones_form(r, S, E), lj),
        (pair._morse_form(r, S, E, A), morse),
        (pair._switched(pair._morse_form(r, S, E, A), r, 2.0 * S, 2.5 * S), morse * switch),
        (pair._soft_sphere_form(r, S, E, A), jmd.soft_sphere(r, S, E, A)),
    ]
    for ours, reference in cases:
        np.testing.assert_allclose(np.asarray(ours), np.asarray(reference), rtol=1e-12,
                                   atol=1e-15)


def test_numerics_import_only_the_jax_md_modules_used():
    """jax-md's package __init__ (rigid_body, nn, flax: seconds) is not run by mdsens, and
    a later ``import jax_md`` still sees every submodule."""
    import subprocess
    import sys

    code = ("import sys, mdsens.md.sensitivity, mdsens.md.minimize\n"
            "print(sorted(m for m in sys.modules if m.startswith('jax_md')))\n"
            "import jax_md\n"
            "from jax_md import rigid_body\n"
            "print(callable(jax_md.energy.lennard_jones), callable(jax_md.simulate.nve))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    loaded = eval(out[0])  # noqa: S307 - our own printout
    assert "jax_md.rigid_body" not in loaded and "jax_md.energy" not in loaded, loaded
    assert "jax_md.partition" in loaded
    assert out[1] == "True True"
