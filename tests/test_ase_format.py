"""The ``mdsens-h5`` ASE io plugin: ``ase.io.read`` of result and study files returns the
relaxed structures with their values and derivatives (the entry point must be installed:
``pip install -e .``)."""

from __future__ import annotations

from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase.build import bulk
from ase.io.formats import filetype, ioformats

from mdsens.io import InputError, write_result
from mdsens.md import System, potentials, relax, sensitivity

pytestmark = pytest.mark.skipif("mdsens-h5" not in ioformats,
                                reason="entry point not installed (pip install -e .)")


@pytest.fixture(scope="module")
def start() -> System:
    atoms = bulk("Ar", "fcc", a=5.3, cubic=True)
    atoms.positions[0] += 0.1
    return System.from_ase(atoms)


def _lj(sigma: float = 3.4):
    return potentials.get("lj", sigma=sigma, epsilon=0.0104)


def test_relaxation_file(start: System, tmp_path: Path) -> None:
    r = relax(start, _lj(), relax_cell=True)
    path = tmp_path / "relaxed.h5"
    write_result(path, r, start, _lj(), {}, "test")
    assert filetype(str(path)) == "mdsens-h5"
    atoms = ase.io.read(path)
    np.testing.assert_allclose(atoms.positions, np.asarray(r.system.positions), atol=1e-12)
    np.testing.assert_allclose(atoms.cell.array, np.asarray(r.system.cell), atol=1e-12)
    assert atoms.get_potential_energy() == pytest.approx(float(r.energy), abs=1e-12)
    frames = ase.io.read(path, index=":")
    assert len(frames) == 1


def test_sensitivity_file(start: System, tmp_path: Path) -> None:
    s = sensitivity(start, _lj(), ["sigma"], ["energy", "positions", "volume"])
    path = tmp_path / "sens.h5"
    write_result(path, s, start, _lj(), {}, "test")
    atoms = ase.io.read(str(path))
    np.testing.assert_allclose(atoms.arrays["dpositions_dsigma"],
                               s.derivatives["positions"]["sigma"], atol=1e-12)
    assert atoms.info["dvolume_dsigma"] == pytest.approx(float(s.derivatives["volume"]["sigma"]))
    assert atoms.info["converged"] is True


def test_study_file(start: System, tmp_path: Path) -> None:
    from mdsens.studies import scan

    path = tmp_path / "study.h5"
    scan([start], _lj(), {"sigma": [3.3, 3.4, 3.5]}, ["sigma"], ["energy", "volume"], path,
         relax_cell=True)
    frames = ase.io.read(path, index=":")
    assert [a.info["point"] for a in frames] == [0, 1, 2]
    assert [a.info["sigma"] for a in frames] == [3.3, 3.4, 3.5]
    volumes = [a.get_volume() for a in frames]
    assert volumes == sorted(volumes)  # larger sigma, larger relaxed cell
    for a in frames:
        assert a.info["volume"] == pytest.approx(a.get_volume(), rel=1e-10)
        assert "dvolume_dsigma" in a.info
    last = ase.io.read(path)
    assert last.info["point"] == 2
    assert [a.info["point"] for a in ase.io.read(path, index="0:2")] == [0, 1]
    assert ase.io.read(path, index=1).info["sigma"] == 3.4


def test_not_an_mdsens_file(tmp_path: Path) -> None:
    import h5py

    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f["x"] = 1
    with pytest.raises(InputError, match="not an mdsens"):
        ase.io.read(path)
