"""``mdsens.calculator.MdsensCalculator``: agrees with ASE's own Lennard-Jones (same
switch) to 1e-10, reuses its model and neighbour list across calls, relaxes with ASE FIRE +
``FrechetCellFilter`` to mdsens's own relaxed state, and refuses float32 unless asked."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.calculator import PropertyNotImplementedError
from ase.calculators.lj import LennardJones

from mdsens.calculator import MdsensCalculator
from mdsens.md import System, potentials, relax

SIGMA, EPSILON = 3.4, 0.0104
ROOT = Path(__file__).resolve().parents[1]


def _lj() -> object:
    return potentials.get("lj", sigma=SIGMA, epsilon=EPSILON)


def _ase_lj() -> LennardJones:
    return LennardJones(sigma=SIGMA, epsilon=EPSILON, rc=2.5 * SIGMA, ro=2.0 * SIGMA,
                        smooth=True)


def _argon(repeat: int = 2, seed: int = 0, shear: float = 0.01) -> Atoms:
    """Disordered fcc argon in a slightly triclinic cell."""
    atoms = bulk("Ar", "fcc", a=5.3, cubic=True).repeat(repeat)
    rng = np.random.default_rng(seed)
    atoms.positions += 0.05 * rng.standard_normal(atoms.positions.shape)
    atoms.set_cell(atoms.cell.array @ (np.eye(3) + shear * rng.standard_normal((3, 3))),
                   scale_atoms=True)
    return atoms


def _assert_same_as_ase(atoms: Atoms, calc: MdsensCalculator, stress: bool = True) -> None:
    ref = atoms.copy()
    ref.calc = _ase_lj()
    atoms.calc = calc
    assert atoms.get_potential_energy() == pytest.approx(ref.get_potential_energy(),
                                                         abs=1e-10)
    np.testing.assert_allclose(atoms.get_forces(), ref.get_forces(), atol=1e-10)
    if stress:
        np.testing.assert_allclose(atoms.get_stress(), ref.get_stress(), atol=1e-10)


@pytest.mark.parametrize("neighbor_list", [False, True])
def test_matches_ase_lennard_jones(neighbor_list: bool) -> None:
    _assert_same_as_ase(_argon(), MdsensCalculator(_lj(), neighbor_list=neighbor_list))


def test_free_cluster_has_no_stress() -> None:
    atoms = _argon(repeat=1)
    atoms.pbc = False
    calc = MdsensCalculator(_lj())
    _assert_same_as_ase(atoms, calc, stress=False)
    assert "stress" in MdsensCalculator.implemented_properties
    with pytest.raises(PropertyNotImplementedError):
        atoms.get_stress()


def test_reuses_model_and_neighbour_list() -> None:
    atoms = _argon()
    calc = MdsensCalculator(_lj(), neighbor_list=True)
    atoms.calc = calc
    atoms.get_forces()
    model = calc.model
    assert calc.n_allocations == 1
    for _ in range(5):  # small moves: the list is updated, never reallocated
        atoms.positions += 0.02
        atoms.get_forces()
    assert calc.model is model and calc.n_allocations == 1
    # a compressed cell: still exact (the list is rebuilt or reallocated as needed)
    atoms.set_cell(atoms.cell.array * 0.93, scale_atoms=True)
    _assert_same_as_ase(atoms, calc)
    # another atom count: a new model
    bigger = _argon(repeat=3, seed=1)
    _assert_same_as_ase(bigger, calc)
    assert calc.model is not model and calc.model.n_atoms == len(bigger)


def test_shares_models_with_relax() -> None:
    atoms = _argon()
    calc = MdsensCalculator(_lj())
    atoms.calc = calc
    atoms.get_potential_energy()
    from mdsens.md._models import model_for

    assert model_for(System.from_ase(atoms), _lj()) is calc.model


def test_ase_fire_frechet_cell_filter_matches_relax() -> None:
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE

    start = bulk("Ar", "fcc", a=5.4, cubic=True).repeat(2)
    start.positions += 0.03 * np.random.default_rng(0).standard_normal(start.positions.shape)
    ours = relax(System.from_ase(start), _lj(), relax_cell=True, fmax=1e-9)
    volume = abs(np.linalg.det(np.asarray(ours.system.cell)))

    atoms = start.copy()
    atoms.calc = MdsensCalculator(_lj())
    opt = FIRE(FrechetCellFilter(atoms), logfile=None)
    assert opt.run(fmax=1e-8, steps=3000)
    assert atoms.get_potential_energy() == pytest.approx(float(ours.energy), rel=1e-10)
    assert atoms.get_volume() == pytest.approx(volume, rel=1e-8)


_NO_X64 = """
import jax
from mdsens.calculator import MdsensCalculator, x64_enabled
from mdsens.md import potentials
pot = potentials.get("lj", sigma=3.4, epsilon=0.0104)
try:
    MdsensCalculator(pot)
except RuntimeError as exc:
    print("REFUSED", "jax_enable_x64" in str(exc), x64_enabled())
calc = MdsensCalculator(pot, enable_x64=True)
print("ENABLED", x64_enabled())
"""


def test_float32_refused_unless_enabled() -> None:
    env = {k: v for k, v in os.environ.items() if k != "JAX_ENABLE_X64"}
    out = subprocess.run([sys.executable, "-c", _NO_X64], capture_output=True, text=True,
                         cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["REFUSED", "True", "False", "ENABLED", "True"]
