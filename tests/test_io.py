"""mdsens.io: structure reading and the HDF5 round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mdsens.io import InputError, read, read_result, write_result
from mdsens.md import System, potentials
from mdsens.md.diagnostics import Diagnostics, RelaxationSummary, SolveTable, ZeroModes
from mdsens.md.sensitivity import Sensitivity

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.mark.parametrize("name, n", [("ar_fcc_32.extxyz", 32), ("ar_fcc.poscar", 32),
                                     ("ar_fcc.lmp", 32), ("si_diamond.cif", 8)])
def test_read_data_files(name, n):
    atoms = read(DATA / name)
    assert len(atoms) == n and all(atoms.pbc)


def test_read_errors(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read(tmp_path / "missing.xyz")
    (tmp_path / "e.xyz").write_text("")
    with pytest.raises(InputError, match="empty"):
        read(tmp_path / "e.xyz")
    with pytest.raises(InputError, match="unknown structure format"):
        read(DATA / "ar_fcc_32.extxyz", format="nope")


class _FakeRelaxation:
    """Just what write_result reads from a Relaxation."""

    def __init__(self, system):
        self.system = system


def test_round_trip(tmp_path):
    atoms = read(DATA / "ar_fcc_32.extxyz")
    system = System.from_ase(atoms)
    pot = potentials.get("lj", sigma=3.4, epsilon=0.0104)
    rng = np.random.default_rng(0)
    result = Sensitivity(
        values={"energy": np.array(-2.5), "positions": np.asarray(system.positions)},
        derivatives={"energy": {"sigma": np.array(0.1), "epsilon": np.array(-250.0)},
                     "positions": {"sigma": rng.normal(size=(32, 3)),
                                   "epsilon": rng.normal(size=(32, 3))}},
        units={"energy": "eV", "positions": "Å"},
        wrt=("sigma", "epsilon"),
        parameter_shapes={"sigma": (), "epsilon": ()},
        diagnostics=Diagnostics(
            mode="forward", n_solves=2, preconditioner=None,
            zero_modes=ZeroModes(count=3, rattlers=[]),
            relaxation=RelaxationSummary(steps=10, fmax=1e-9, converged=True,
                                         status="converged", energy=-2.5),
            solves=SolveTable(status=np.zeros(2, int), iterations=np.array([5, 6]),
                              residual_norm=np.array([1e-9, 2e-9]), rhs_norm=np.ones(2),
                              nullspace_component=np.zeros(2),
                              min_curvature=np.array([0.5, 0.4]),
                              converged=np.ones(2, bool))),
        relaxation=_FakeRelaxation(system),
        converged=False,
        problems=("a problem",),
    )
    out = tmp_path / "r.h5"
    write_result(out, result, system, pot, {"wrt": ["sigma", "epsilon"]}, "mdsens test")
    back = read_result(out)
    s = back.sensitivity
    assert s.wrt == result.wrt
    assert s.units == {"energy": "eV", "positions": "Angstrom"}  # the H5MD units grammar
    assert s.converged is False and s.problems == ("a problem",)
    assert s.parameter_shapes == result.parameter_shapes
    for obs, per in result.derivatives.items():
        np.testing.assert_array_equal(s.values[obs], result.values[obs])
        for p, v in per.items():
            np.testing.assert_array_equal(s.derivatives[obs][p], v)
    assert s.diagnostics["mode"] == "forward" and s.diagnostics["preconditioner"] is None
    np.testing.assert_array_equal(s.diagnostics["solves"]["iterations"], [5, 6])
    # read back as the same typed record
    assert isinstance(s.diagnostics, Diagnostics)
    assert s.diagnostics.relaxation.steps == 10 and s.diagnostics.zero_modes.count == 3
    np.testing.assert_array_equal(s.diagnostics.solves.min_curvature, [0.5, 0.4])
    assert s.diagnostics.max_solve_iterations == 6 and s.diagnostics.jacobian_error is None
    np.testing.assert_array_equal(back.positions, np.asarray(system.positions))
    assert back.symbols == ("Ar",) * 32 and back.pbc == (True, True, True)
    assert back.config == {"wrt": ["sigma", "epsilon"]}
    assert back.provenance["command_line"] == "mdsens test"
    assert len(back.to_ase()) == 32
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left
