"""mdsens's HDF5 files open in the H5MD readers people use: MDAnalysis's H5MDReader and
pyh5md. Relaxation, sensitivity and study files; positions, box and observables compared
with what mdsens wrote."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mdsens.io import read, read_result, write_result
from mdsens.md import System, potentials
from mdsens.md.sensitivity import Sensitivity
from mdsens.studies import _file

mda = pytest.importorskip("MDAnalysis")
pyh5md = pytest.importorskip("pyh5md")

DATA = Path(__file__).resolve().parents[1] / "data"
N = 32


class _Relaxation:
    """What write_result reads from a Relaxation."""

    def __init__(self, system):
        self.system = system
        self.energy, self.steps, self.fmax = -2.5, 12, 1e-9
        self.converged, self.message = True, "converged"


def _system() -> System:
    atoms = read(DATA / "ar_fcc_32.extxyz")
    atoms.rattle(0.01, seed=1)
    return System.from_ase(atoms)


def _sensitivity(system: System) -> Sensitivity:
    rng = np.random.default_rng(0)
    cell = np.asarray(system.cell)
    return Sensitivity(
        values={"energy": np.array(-2.5), "volume": np.array(abs(np.linalg.det(cell))),
                "lattice_parameters": np.array([5.3, 5.3, 5.3, 90.0, 90.0, 90.0]),
                "stress": rng.normal(size=6)},
        derivatives={"energy": {"sigma": np.array(0.1), "pressure": np.array(2.0)},
                     "volume": {"sigma": np.array(3.0), "pressure": np.array(-4.0)},
                     "lattice_parameters": {"sigma": rng.normal(size=6),
                                            "pressure": rng.normal(size=6)},
                     "stress": {"sigma": rng.normal(size=6),
                                "pressure": rng.normal(size=6)}},
        units={"energy": "eV", "volume": "Å^3", "lattice_parameters": "Å, degrees",
               "stress": "eV/Å^3"},
        wrt=("sigma", "pressure"), parameter_shapes={"sigma": (), "pressure": ()},
        diagnostics={"mode": "forward"}, relaxation=_Relaxation(system), converged=True,
        problems=())


def _study(path: Path, system: System) -> dict:
    """A two-point study written point by point; returns what was written."""
    obs_shapes = {"energy": (), "lattice_parameters": (6,)}
    definition = {"version": 1, "sweep": [["sigma", [3.3, 3.4]]],
                  "structures": [{"label": "ar", "n_atoms": N}],
                  "potential": {"name": "lennard_jones", "class": "LennardJones",
                                "settings": {}}}
    _file.create(path, json.dumps(definition), {"sigma": np.array([3.3, 3.4])},
                 np.zeros(2, np.int64), [("ar", system)], obs_shapes,
                 {"energy": "eV", "lattice_parameters": "Å, degrees"}, {"sigma": ()},
                 {"mdsens": "test"})
    rng = np.random.default_rng(1)
    written = {"position": [], "edges": [], "energy": [], "lattice_parameters": []}
    import h5py

    with h5py.File(path, "r+") as f:
        for p in range(2):
            pos = np.asarray(system.positions) + rng.normal(scale=0.01, size=(N, 3))
            edges = np.asarray(system.cell) * (1 + 0.01 * p)
            point = {"values": {"energy": -2.0 - p, "lattice_parameters": np.full(6, 5.0 + p)},
                     "derivatives": {"energy": {"sigma": 0.5},
                                     "lattice_parameters": {"sigma": np.ones(6)}},
                     "diagnostics": {"energy": -2.0 - p}, "position": pos, "edges": edges,
                     "converged": True, "problems": [], "status": "converged"}
            _file.write_point(f, p, 2, 0, point)
            for key, v in (("position", pos), ("edges", edges),
                           ("energy", point["values"]["energy"]),
                           ("lattice_parameters", point["values"]["lattice_parameters"])):
                written[key].append(np.asarray(v))
    return {k: np.asarray(v) for k, v in written.items()}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("h5md")
    system = _system()
    pot = potentials.get("lj", sigma=3.4, epsilon=0.0104)
    sens = _sensitivity(system)
    write_result(tmp / "sens.h5", sens, system, pot, {}, "test")
    write_result(tmp / "relax.h5", sens.relaxation, system, pot, {}, "test")
    study = _study(tmp / "study.h5", system)
    return {"system": system, "sens": (tmp / "sens.h5", sens), "relax": tmp / "relax.h5",
            "study": (tmp / "study.h5", study)}


def _universe(path: Path):
    u = mda.Universe.empty(N, trajectory=True)
    u.load_new(str(path), format="H5MD")
    return u


def _box(cell: np.ndarray) -> np.ndarray:
    from MDAnalysis.lib.mdamath import triclinic_box

    return triclinic_box(*cell)


@pytest.mark.parametrize("kind", ["relax", "sens"])
def test_mdanalysis_reads_results(files, kind):
    path = files[kind] if kind == "relax" else files[kind][0]
    system = files["system"]
    u = _universe(path)
    assert len(u.trajectory) == 1 and u.atoms.n_atoms == N
    ts = u.trajectory[0]
    np.testing.assert_allclose(ts.positions, np.asarray(system.positions), atol=1e-5)
    np.testing.assert_allclose(ts.dimensions, _box(np.asarray(system.cell)), atol=1e-4)
    assert ts.data["energy"] == pytest.approx(-2.5)
    if kind == "sens":
        sens = files["sens"][1]
        for name, value in sens.values.items():
            np.testing.assert_allclose(ts.data[name], value)
    assert u.trajectory.units["length"] == "Angstrom"


@pytest.mark.parametrize("kind", ["relax", "sens"])
def test_pyh5md_reads_results(files, kind):
    path = files[kind] if kind == "relax" else files[kind][0]
    system = files["system"]
    with pyh5md.File(str(path), "r") as f:
        part = f.particles_group("all")
        pos = pyh5md.element(part, "position")
        np.testing.assert_array_equal(pos.value[0], np.asarray(system.positions))
        np.testing.assert_array_equal(pos.step[()], [0])
        edges = pyh5md.element(part["box"], "edges")
        np.testing.assert_array_equal(edges.value[0], np.asarray(system.cell))
        energy = pyh5md.element(f["observables"], "energy")
        assert energy.value[0] == -2.5
        assert pos.value.attrs["unit"] == "Angstrom"


def test_mdanalysis_reads_study(files):
    path, written = files["study"]
    u = _universe(path)
    assert len(u.trajectory) == 2
    for p, ts in enumerate(u.trajectory):
        np.testing.assert_allclose(ts.positions, written["position"][p], atol=1e-5)
        np.testing.assert_allclose(ts.dimensions, _box(written["edges"][p]), atol=1e-4)
        assert ts.data["energy"] == pytest.approx(written["energy"][p])
        np.testing.assert_allclose(ts.data["lattice_parameters"],
                                   written["lattice_parameters"][p])
        assert ts.data["step"] == p


def test_pyh5md_reads_study(files):
    path, written = files["study"]
    with pyh5md.File(str(path), "r") as f:
        part = f.particles_group(_file.particles_name(0))
        pos = pyh5md.element(part, "position")
        np.testing.assert_array_equal(pos.value[()], written["position"])
        np.testing.assert_array_equal(pos.step[()], [0, 1])
        edges = pyh5md.element(part["box"], "edges")
        np.testing.assert_array_equal(edges.value[()], written["edges"])
        energy = pyh5md.element(f["observables"], "energy")
        np.testing.assert_array_equal(energy.value[()], written["energy"])
        np.testing.assert_array_equal(energy.step[()], [0, 1])


def test_mdsens_reads_its_files_back(files):
    """The library's readers still read the new layout."""
    from mdsens.studies import read as read_study

    path, sens = files["sens"]
    back = read_result(path)
    np.testing.assert_array_equal(back.positions, np.asarray(files["system"].positions))
    assert back.sensitivity.units["stress"] == "eV Angstrom-3"
    assert back.sensitivity.units["lattice_parameters"] == "Angstrom, deg"
    for name, value in sens.values.items():
        np.testing.assert_array_equal(back.sensitivity.values[name], value)
    relax = read_result(files["relax"])
    assert relax.kind == "relaxation" and relax.sensitivity.values["energy"] == -2.5
    study_path, written = files["study"]
    study = read_study(study_path)
    assert study.complete
    np.testing.assert_array_equal(study.values["energy"], written["energy"])
    assert study.units == {"energy": "eV", "lattice_parameters": "Angstrom, deg"}
