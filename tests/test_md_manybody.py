"""Many-body potentials (Stillinger-Weber, Tersoff, EAM) against independent references.

References, each able to fail on its own:
- LAMMPS 2025-07-22 numbers recorded in data/reference/lammps_manybody.json by
  data/reference/make_reference.py (energies, forces, stresses; small cells that need
  replication, a free cluster, two-species SW / Tersoff / EAM, SW and Tersoff parameter
  values no distributed file has (q != 0, m = 1, gamma != 1), EAM densities beyond the
  table);
- ASE's Tersoff calculator (live) and ASE's EAM calculator (live; its SciPy splines differ
  from LAMMPS' interpolation, so only the parts that do not depend on it are compared
  tightly);
- literature cohesive energies and lattice constants;
- closed forms for dimers and a trimer;
- central finite differences of the energy for forces, stress and parameter derivatives;
- neighbour-list results against all-pairs results.
"""

from __future__ import annotations

import functools
import importlib
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.units import Bohr, Hartree

from mdsens.md import System, build
from mdsens.md import potentials as P

_lammps_files = importlib.import_module("mdsens.md.potentials._lammps_files")
_eam_module = importlib.import_module("mdsens.md.potentials.eam")

DATA = Path(__file__).resolve().parents[1] / "data"
POT = DATA / "potentials"
REFERENCE = json.loads((DATA / "reference" / "lammps_manybody.json").read_text())
CASES = {c["name"]: c for c in REFERENCE["cases"]}


# ----------------------------------------------------------------------------- helpers
def _atoms(case: dict) -> Atoms:
    return Atoms(case["symbols"], positions=case["positions"], cell=case["cell"], pbc=case["pbc"])


def _potential(case: dict):
    path, overrides = POT / case["file"], case["overrides"]  # overrides: sw / tersoff only
    if case["pair_style"] == "sw":
        return P.get("sw", file=path, species=case["elements"], **overrides)
    if case["pair_style"] == "tersoff":
        if "m" in overrides:
            overrides = {**overrides, "m": int(overrides["m"])}
        return P.get("tersoff", file=path, species=case["elements"], **overrides)
    return P.get("eam", file=path, species=case["elements"])


def _efs(model, system: System):
    """Energy, forces and stress from one gradient of E(R(I+e), C(I+e)) w.r.t. (R, e)."""
    R, C = system.positions, system.cell
    nbrs = model.allocate(R, C)

    @jax.jit
    def run(R, C, nbrs):
        def e_of(R, eps):
            F = jnp.eye(3) + eps
            return model.energy(R @ F, C @ F, None, nbrs)

        e, (gR, geps) = jax.value_and_grad(e_of, argnums=(0, 1))(R, jnp.zeros((3, 3)))
        return e, -gR, geps / jnp.abs(jnp.linalg.det(C))

    e, f, s = run(R, C, nbrs)
    return float(e), np.asarray(f), np.asarray(s)


@functools.cache
def _model(name: str, neighbor_list: str | bool = "auto"):
    case = CASES[name]
    system = System.from_ase(_atoms(case))
    return build(system, _potential(case), neighbor_list=neighbor_list), system


# ----------------------------------------------------------------------------- LAMMPS
@pytest.mark.parametrize("name", list(CASES))
def test_matches_lammps(name: str) -> None:
    case = CASES[name]
    model, system = _model(name)
    if name.endswith(("_8", "_4", "_16")):
        assert model.n_copies > 1, "small cell should have been replicated"
    if system.is_periodic:
        e, f, s = _efs(model, system)
        np.testing.assert_allclose(s, case["stress"], rtol=1e-11, atol=1e-12)
    else:
        R = system.positions
        e = float(model.energy(R, None))
        f = np.asarray(model.forces(R, None))
    assert abs(e - case["energy"]) < 1e-9 * max(1.0, abs(case["energy"]))
    np.testing.assert_allclose(f, case["forces"], rtol=0, atol=1e-9)


# ----------------------------------------------------------------------------- literature
@pytest.mark.parametrize(
    ("kind", "a0", "e_coh", "e_tol"),
    [
        ("sw", 5.431, -4.3366, 1e-4),  # Stillinger & Weber 1985
        ("tersoff", 5.432, -4.63, 5e-3),  # Tersoff 1988, Si(B)
        ("eam", 3.615, -3.54, 1e-4),  # Foiles et al. 1986, Cu (u3)
    ],
)
def test_literature_lattice_constant_and_cohesive_energy(kind, a0, e_coh, e_tol) -> None:
    if kind == "eam":
        atoms, pot = bulk("Cu", "fcc", a=a0, cubic=True), P.get("eam", file=POT / "Cu_u3.eam")
    else:
        atoms = bulk("Si", "diamond", a=a0, cubic=True)
        pot = P.get(kind)  # built-in defaults
    system = System.from_ase(atoms)
    model = build(system, pot)
    R, C = system.positions, system.cell
    nbrs = model.allocate(R, C)  # None without a list; valid for +-0.05 % strains

    @jax.jit
    def energy_and_stress(scale):
        Rs, Cs = R * scale, C * scale
        return model.energy(Rs, Cs, None, nbrs), model.stress(Rs, Cs, None, nbrs)

    e, _ = energy_and_stress(1.0)
    assert abs(float(e) / len(atoms) - e_coh) < e_tol
    # Equilibrium lattice constant within 0.002 Å of the literature value: the
    # (isotropic) stress changes sign from compressive to tensile across a0 +- 0.002.
    lo, hi = energy_and_stress(1 - 0.002 / a0)[1], energy_and_stress(1 + 0.002 / a0)[1]
    assert float(lo[0, 0]) < 0 < float(hi[0, 0])
    np.testing.assert_allclose(np.diag(np.asarray(lo)), float(lo[0, 0]), rtol=1e-10)


# ----------------------------------------------------------------------------- ASE
@pytest.mark.parametrize("name", ["tersoff_si_rattled_8", "tersoff_sic_rattled_64"])
def test_tersoff_matches_ase(name: str) -> None:
    from ase.calculators.tersoff import Tersoff

    case = CASES[name]
    atoms = _atoms(case)
    atoms.calc = Tersoff.from_lammps(POT / case["file"])
    model, system = _model(name)
    e, f, s = _efs(model, system)
    assert abs(e - atoms.get_potential_energy()) < 1e-9
    np.testing.assert_allclose(f, atoms.get_forces(), rtol=0, atol=1e-9)
    np.testing.assert_allclose(s, atoms.get_stress(voigt=False), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["eam_alcu_rattled_108", "eam_cu_rattled_108"])
def test_eam_matches_ase(name: str) -> None:
    """ASE interpolates with SciPy splines (and phi = rphi/r instead of rphi), LAMMPS and
    mdsens with LAMMPS' cubic Hermite rule. The density and pair tables are smooth on their
    fine r grid, so the summed density (1e-7: the two rules differ by ~1e-9 absolute on
    Cu_u3's density table) and the pair energy must agree tightly; the embedding energy
    only to the interpolation difference on the coarse rho grid. funcfl: ASE converts Z^2
    to r*phi with Hartree*Bohr, LAMMPS with 27.2*0.529."""
    from ase.calculators.eam import EAM

    case = CASES[name]
    atoms = _atoms(case)
    atoms.calc = EAM(potential=str(POT / case["file"]))
    e_ase = atoms.get_potential_energy()
    ase_pair = atoms.calc.results["energy_components"]["pair"]
    ase_density = atoms.calc.total_density

    model, system = _model(name)
    R, C = system.positions, system.cell
    nbrs = model.allocate(R, C)
    params = model.params
    zeros_f = jnp.zeros_like(params["F"])
    nrho = params["F"].shape[-1]
    linear_f = jnp.broadcast_to(jnp.arange(nrho) * model.potential.drho, params["F"].shape)
    no_pair = jnp.zeros_like(params["z2r"])
    energy = jax.jit(lambda p: model.energy(R, C, p, nbrs))
    pair = float(energy({**params, "F": zeros_f}))
    # F(rho) = rho is reproduced exactly by the Hermite rule: E = sum_i rho_i.
    density = float(energy({**params, "F": linear_f, "z2r": no_pair}))
    e = float(energy(params))

    funcfl = case["file"].endswith(".eam")
    ratio = 27.2 * 0.529 / (Hartree * Bohr) if funcfl else 1.0
    np.testing.assert_allclose(pair, ase_pair * ratio, rtol=1e-9)
    np.testing.assert_allclose(density, ase_density.sum(), rtol=1e-7)
    n = len(atoms)
    e_ase_embedding = e_ase - ase_pair
    assert abs((e - pair) - e_ase_embedding) / n < 2e-3  # coarse-grid interpolation only


# ----------------------------------------------------------------------------- closed forms
def _free(symbols: str, positions) -> System:
    return System.from_ase(Atoms(symbols, positions=positions, pbc=False))


def test_sw_dimer_and_trimer_closed_form() -> None:
    p = {k: float(v) for k, v in P.get("sw").params.items()}
    eps, sig, a = p["epsilon"], p["sigma"], p["a"]

    def phi2(r):
        x = sig / r
        return p["A"] * eps * (p["B"] * x ** p["p"] - x ** p["q"]) * np.exp(sig / (r - a * sig))

    def h(r):
        return np.exp(p["gamma"] * sig / (r - a * sig))

    r1, r2, theta = 2.3, 2.5, np.deg2rad(100.0)
    pos = [[0, 0, 0], [r1, 0, 0], [r2 * np.cos(theta), r2 * np.sin(theta), 0]]
    r12 = np.linalg.norm(np.subtract(pos[1], pos[2]))
    assert r12 < a * sig  # all three pairs and all three angles contribute
    expected = phi2(r1) + phi2(r2) + phi2(r12)
    for i, j, k in [(0, 1, 2), (1, 0, 2), (2, 0, 1)]:
        u, v = np.subtract(pos[j], pos[i]), np.subtract(pos[k], pos[i])
        ru, rv = np.linalg.norm(u), np.linalg.norm(v)
        cos = u @ v / (ru * rv)
        expected += p["lambda"] * eps * (cos - p["cos_theta0"]) ** 2 * h(ru) * h(rv)
    system = _free("Si3", pos)
    model = build(system, P.get("sw"))
    assert abs(float(jax.jit(model.energy)(system.positions, None)) - expected) < 1e-12
    # Dimer: force on atom 1 is -phi2'(r) (central difference of the closed form).
    dimer = _free("Si2", [[0, 0, 0], [r1, 0, 0]])
    d_model = build(dimer, P.get("sw"))

    @jax.jit
    def run(R):
        e, g = jax.value_and_grad(d_model.energy, argnums=2)(R, None, d_model.params)
        return e, d_model.forces(R, None), g

    e, f, _ = run(dimer.positions)
    h = 1e-5
    assert abs(float(e) - phi2(r1)) < 1e-12
    np.testing.assert_allclose(float(f[1, 0]), -(phi2(r1 + h) - phi2(r1 - h)) / (2 * h), rtol=1e-8)
    np.testing.assert_allclose(np.asarray(f[:, 1:]), 0.0, atol=1e-14)
    # Just beyond the cutoff exp(sigma / (r - a sigma)) overflows: nothing may leak.
    e, f, g = run(jnp.asarray([[0.0, 0.0, 0.0], [a * sig + 1e-5, 0.0, 0.0]]))
    assert float(e) == 0.0 and not np.asarray(f).any()
    assert all(float(v) == 0.0 for v in g.values())


def test_tersoff_dimer_closed_form_and_finite_gradients() -> None:
    """A dimer has zeta = 0, so b = 1: E = A exp(-l1 r) - B exp(-l2 r) for r < R - D.
    With n < 1 (Si of SiC.tersoff: n = 0.787) (beta zeta)^n has an infinite slope at
    zeta = 0; gradients must stay finite."""
    pot = P.get("tersoff", file=POT / "SiC.tersoff", species=("Si",))
    p = {k: float(v) for k, v in pot.params.items()}
    assert p["n"] < 1
    r = 2.35
    system = _free("Si2", [[0, 0, 0], [r, 0, 0]])
    model = build(system, pot)

    @jax.jit
    def run(R, params):
        e, g = jax.value_and_grad(model.energy, argnums=2)(R, None, params)
        return e, g, model.forces(R, None, params)

    e, g_params, f = run(system.positions, model.params)
    rep, att = p["A"] * np.exp(-p["lambda1"] * r), p["B"] * np.exp(-p["lambda2"] * r)
    assert abs(float(e) - (rep - att)) < 1e-12
    assert all(np.isfinite(np.asarray(v)).all() for v in g_params.values())
    # dE/dr = -l1 A exp(-l1 r) + l2 B exp(-l2 r); the force on atom 1 is -dE/dr.
    np.testing.assert_allclose(float(f[1, 0]), p["lambda1"] * rep - p["lambda2"] * att, rtol=1e-12)
    np.testing.assert_allclose(float(g_params["A"]), rep / p["A"], rtol=1e-12)
    assert float(g_params["beta"]) == 0.0 and float(g_params["n"]) == 0.0


# ----------------------------------------------------------------------------- derivatives
_DERIV_CASES = {
    "sw": ("sw_si_rattled_64", ("sigma", "lambda", "cos_theta0", "p")),
    "tersoff": ("tersoff_sic_rattled_64", ("beta", "n", "R", "h", "c")),  # n < 1
    "eam": ("eam_cu_rattled_108", ("F", "rho", "z2r")),
}


@pytest.mark.parametrize("kind", list(_DERIV_CASES))
def test_neighbor_list_matches_all_pairs_and_derivatives(kind: str) -> None:
    """With a neighbour list (padded slots present): energy and forces equal the all-pairs
    ones; parameter gradients, forces' parameter derivatives and Hessian-vector products
    are finite and match central differences."""
    name, keys = _DERIV_CASES[kind]
    model, system = _model(name, True)
    dense, _ = _model(name, False)
    assert model.uses_neighbor_list and not dense.uses_neighbor_list
    R, C = system.positions, system.cell
    nbrs = model.allocate(R, C)
    assert bool((nbrs.nlist.idx == nbrs.nlist.idx.shape[0]).any()), "expected padded slots"
    params = model.params

    e_nl, f_nl = jax.jit(
        lambda R: (model.energy(R, C, None, nbrs), model.forces(R, C, None, nbrs))
    )(R)
    e_ap, f_ap = jax.jit(lambda R: (dense.energy(R, C), dense.forces(R, C)))(R)
    assert abs(float(e_nl - e_ap)) < 1e-10
    np.testing.assert_allclose(np.asarray(f_nl), np.asarray(f_ap), rtol=0, atol=1e-10)

    rng = np.random.default_rng(0)
    # Direction in parameter space: relative 1% changes of the chosen parameters.
    direction = {k: jnp.zeros_like(v) for k, v in params.items()}
    for k in keys:
        direction[k] = params[k] * 0.01 * (1.0 + rng.random(np.shape(params[k])))
    v_R = jnp.asarray(rng.standard_normal(R.shape))

    def energy(p, R):
        return model.energy(R, C, p, nbrs)

    def shifted(t):
        return jax.tree.map(lambda p, d: p + t * d, params, direction)

    @jax.jit
    def derivatives(params):
        g = jax.grad(energy)(params, R)
        force_fn = lambda p: -jax.grad(energy, argnums=1)(p, R)  # noqa: E731
        _, dforce = jax.jvp(force_fn, (params,), (direction,))
        hvp = jax.jvp(lambda R: jax.grad(energy, argnums=1)(params, R), (R,), (v_R,))[1]
        return g, dforce, hvp

    g, dforce, hvp = derivatives(params)
    for leaf in (*jax.tree.leaves(g), dforce, hvp):
        assert np.isfinite(np.asarray(leaf)).all()

    h = 1e-4
    e_fn = jax.jit(lambda p: energy(p, R))
    f_fn = jax.jit(lambda p: -jax.grad(energy, argnums=1)(p, R))
    fd_e = (float(e_fn(shifted(h))) - float(e_fn(shifted(-h)))) / (2 * h)
    ad_e = sum(float(jnp.vdot(g[k], direction[k])) for k in keys)
    assert abs(fd_e - ad_e) < 1e-6 * max(1.0, abs(ad_e))
    fd_f = (np.asarray(f_fn(shifted(h))) - np.asarray(f_fn(shifted(-h)))) / (2 * h)
    np.testing.assert_allclose(np.asarray(dforce), fd_f, rtol=1e-6, atol=1e-6)

    # Forces, HVP and stress against finite differences in positions / strain.
    g_R = jax.jit(lambda R: jax.grad(energy, argnums=1)(params, R))
    eps = 1e-5
    fd_hvp = (np.asarray(g_R(R + eps * v_R)) - np.asarray(g_R(R - eps * v_R))) / (2 * eps)
    np.testing.assert_allclose(np.asarray(hvp), fd_hvp, rtol=1e-6, atol=1e-5)
    e_R = jax.jit(lambda R: energy(params, R))
    fd_dir = (float(e_R(R + eps * v_R)) - float(e_R(R - eps * v_R))) / (2 * eps)
    assert abs(fd_dir + float(jnp.vdot(f_nl, v_R))) < 1e-6


# ----------------------------------------------------------------------------- species
@pytest.mark.parametrize("kind", ["sw", "tersoff"])
def test_triplet_tables_equal_scalars_on_two_species(kind: str) -> None:
    """(S, S, S) tables that repeat the scalar values give the scalar energy on a
    two-species system, and the table gradients sum to the scalar gradient (every
    species combination is one entry of the table)."""
    atoms = bulk("Si", "diamond", a=5.431, cubic=True)
    atoms.rattle(0.05, seed=1)
    atoms.symbols[[0, 5]] = "Ge"
    system = System.from_ase(atoms)
    scalar = P.get(kind)
    tables = {k: jnp.full((2, 2, 2), v) for k, v in scalar.params.items()}
    if kind == "sw":
        tables["lambda_"] = tables.pop("lambda")
    tabled = P.get(kind, **tables, species=("Si", "Ge"))
    R, C = system.positions, system.cell
    m_scalar, m_table = build(system, scalar), build(system, tabled)
    e_s, g_s = jax.value_and_grad(m_scalar.energy, argnums=2)(R, C, m_scalar.params)
    e_t, g_t = jax.value_and_grad(m_table.energy, argnums=2)(R, C, m_table.params)
    assert abs(float(e_s - e_t)) < 1e-12
    for k in g_s:
        assert g_t[k].shape == (2, 2, 2)
        np.testing.assert_allclose(float(jnp.sum(g_t[k])), float(g_s[k]), rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------- API / errors
def test_registry_and_validation(tmp_path: Path) -> None:
    assert {"stillinger_weber", "sw", "tersoff", "eam"} <= set(P.names(aliases=True))
    sw = P.get("sw", **{"lambda": 23.0})
    assert float(sw.params["lambda"]) == 23.0
    assert sw.params["sigma"].dtype == jnp.float64
    assert float(sw.with_params(sigma=2.2).params["sigma"]) == 2.2
    assert abs(sw.cutoff() - 1.8 * 2.0951) < 1e-12
    with pytest.raises(ValueError, match="unknown parameters"):
        sw.with_params(sigmaa=1.0)
    with pytest.raises(ValueError, match="triplet table"):
        P.get("sw", sigma=[[1.0, 2.0], [2.0, 1.0]], species=("Ga", "N"))
    gan = P.get("sw", file=POT / "GaN.sw")
    assert gan.species == ("Ga", "N") and gan.params["sigma"].shape == (2, 2, 2)
    ters = P.get("tersoff", file=POT / "Si.tersoff")
    default = P.get("tersoff")
    for k in default.params:
        assert float(ters.params[k]) == float(default.params[k]), k
    assert ters.m == 3 and abs(ters.cutoff() - 3.2) < 1e-12
    with pytest.raises(ValueError, match="m must be 1 or 3"):
        P.get("tersoff", m=2)
    with pytest.raises(TypeError, match="unknown parameters"):
        P.get("tersoff", lam3=1.0)
    bad = tmp_path / "bad.tersoff"
    bad.write_text("Si Si Si 3.0 1.0 1.3258  # too short\n")
    with pytest.raises(ValueError, match="multiple of the entry size"):
        P.get("tersoff", file=bad)
    with pytest.raises(ValueError, match="no entry for"):
        P.get("tersoff", file=POT / "Si.tersoff", species=("Si", "C"))
    alcu = P.get("eam", file=POT / "AlCu.eam.alloy")
    assert alcu.species == ("Al", "Cu") and alcu.params["z2r"].shape == (2, 2, 3000)
    assert P.get("eam", file=POT / "AlCu.eam.alloy", species=("Cu",)).params["F"].shape == (1, 1000)
    with pytest.raises(ValueError, match="no element"):
        P.get("eam", file=POT / "AlCu.eam.alloy", species=("Ni",))
    with pytest.raises(ValueError, match="cannot tell the EAM format"):
        P.get("eam", file=tmp_path / "x.table")
    with pytest.raises(ValueError, match="expected"):
        alcu.with_params(F=jnp.zeros(3))
    cu = _lammps_files.read_eam_funcfl(POT / "Cu_u3.eam")
    assert cu.elements == ("Cu",) and cu.nrho == 500 and cu.nr == 500
    # The Hermite rule reproduces cubic polynomials away from the table ends.
    x = np.arange(20.0)
    c = _eam_module._coefficients(jnp.asarray(x**3 - 2 * x))
    m, t = _eam_module._locate(jnp.asarray(7.3), 1.0, 20)
    value, _ = _eam_module._horner(c[m], t)
    assert abs(float(value) - (7.3**3 - 2 * 7.3)) < 1e-12
