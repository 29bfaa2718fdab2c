"""``Relaxation.to_ase`` and ``Sensitivity.to_ase``: energy, forces and stress on a
``SinglePointCalculator``, derivatives in ``atoms.arrays``/``atoms.info``, all surviving an
extxyz round trip (ASE writes per-atom columns with 8 decimals: ``COLUMN_ATOL``)."""

from __future__ import annotations

from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase.build import bulk

from mdsens.md import System, potentials, relax, sensitivity

COLUMN_ATOL = 5.1e-9  # ASE's extxyz per-atom format is %16.8f


@pytest.fixture(scope="module")
def start() -> System:
    atoms = bulk("Ar", "fcc", a=5.3, cubic=True)
    atoms.positions[0] += 0.1
    return System.from_ase(atoms)


def _lj():
    return potentials.get("lj", sigma=3.4, epsilon=0.0104)


def _round_trip(atoms, path: Path):
    ase.io.write(path, atoms, format="extxyz")
    return ase.io.read(path, format="extxyz")


def test_relaxation_to_ase(start: System, tmp_path: Path) -> None:
    r = relax(start, _lj(), relax_cell=True)
    atoms = r.to_ase()
    back = _round_trip(atoms, tmp_path / "r.xyz")
    for a, atol in ((atoms, 1e-14), (back, COLUMN_ATOL)):
        assert a.get_potential_energy() == pytest.approx(float(r.energy), abs=1e-12)
        np.testing.assert_allclose(a.get_forces(), np.asarray(r.forces), atol=atol)
        assert a.get_stress().shape == (6,)
        np.testing.assert_allclose(a.positions, np.asarray(r.system.positions), atol=atol)
        assert a.info["converged"] is True and a.info["status"] == "CONVERGED"
        assert a.info["steps"] == r.steps


def test_sensitivity_to_ase_round_trips(start: System, tmp_path: Path) -> None:
    s = sensitivity(start, _lj(), ["sigma", "strain"], ["energy", "positions", "volume",
                                                       "stress"])
    atoms = s.to_ase()
    back = _round_trip(atoms, tmp_path / "s.xyz")
    n = len(start.positions)
    for a, atol in ((atoms, 1e-14), (back, COLUMN_ATOL)):
        np.testing.assert_allclose(a.arrays["dpositions_dsigma"],
                                   s.derivatives["positions"]["sigma"], atol=atol)
        assert a.arrays["dpositions_dsigma"].shape == (n, 3)
        np.testing.assert_allclose(a.arrays["dpositions_dstrain_yz"],
                                   s.derivatives["positions"]["strain"][..., 3], atol=atol)
        assert a.info["denergy_dsigma"] == pytest.approx(
            float(s.derivatives["energy"]["sigma"]), abs=1e-12)
        assert a.info["dvolume_dstrain_xx"] == pytest.approx(
            float(s.derivatives["volume"]["strain"][0]), abs=1e-9)
        np.testing.assert_allclose(np.ravel(a.info["dstress_dsigma"]),
                                   s.derivatives["stress"]["sigma"], atol=1e-12)
        assert a.info["volume"] == pytest.approx(float(s.values["volume"]))
        assert a.get_potential_energy() == pytest.approx(float(s.values["energy"]))
        np.testing.assert_allclose(a.get_stress(), s.values["stress"], atol=1e-14)


def test_sensitivity_without_relaxation_needs_atoms(start: System) -> None:
    import dataclasses

    s = sensitivity(start, _lj(), ["sigma"], ["positions"])
    stored = dataclasses.replace(s, relaxation=None)
    with pytest.raises(ValueError, match="to_ase"):
        stored.to_ase()
    atoms = stored.to_ase(s.relaxation.system.to_ase())
    np.testing.assert_allclose(atoms.arrays["dpositions_dsigma"],
                               s.derivatives["positions"]["sigma"])


def test_pair_parameter_names() -> None:
    from mdsens.md.results import _clean, _components

    assert _clean("sigma[Ar,Kr]") == "sigma_Ar_Kr"
    d = np.arange(2 * 3 * 2 * 2.0).reshape(2, 3, 2, 2)
    parts = dict(_components("sigma", d, 2))
    assert sorted(parts) == ["_0_0", "_0_1", "_1_0", "_1_1"]
    np.testing.assert_array_equal(parts["_1_0"], d[..., 1, 0])
