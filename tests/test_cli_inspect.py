"""``mdsens inspect`` on every kind of file mdsens writes, and ``mdsens potentials``.

The files are written by the library's own writers (``io.hdf5.write_result``, the study
file's ``create``/``write_point``) from hand-made values with known answers, so the tests
need no relaxation: elastic constants in GPa against the defining constant (1 eV/Å³ =
160.2176634 GPa, exact since the 2019 SI), derivatives at round-off and within tolerance
against their definitions, a study whose energy does not change with sigma.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner

from mdsens.cli import inspect as insp
from mdsens.cli import main

ROOT = Path(__file__).resolve().parents[1]
GPA = 160.2176634  # GPa per eV/Å^3: e = 1.602176634e-19 C exactly, 1 Å^3 = 1e-30 m^3
A, SIGMA, EPS = 5.26, 3.4, 0.0104
C_VOIGT = np.array([[0.0238, 0.0145, 0.0145, 0, 0, 0], [0.0145, 0.0238, 0.0145, 0, 0, 0],
                    [0.0145, 0.0145, 0.0238, 0, 0, 0], [0, 0, 0, 0.0145, 0, 0],
                    [0, 0, 0, 0, 0.0145, 0], [0, 0, 0, 0, 0, 0.0145]])  # eV/Å^3


def fcc(n: int = 2, a: float = A) -> tuple[np.ndarray, np.ndarray]:
    """Positions (4 n³, 3) and cell (3, 3) of an fcc crystal, Å."""
    basis = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    cells = np.array(list(np.ndindex(n, n, n)), float)
    R = ((cells[:, None, :] + basis[None]) * a).reshape(-1, 3)
    return R, np.eye(3) * a * n


def system(R: np.ndarray, cell: np.ndarray | None, symbols: list[str] | None = None) -> object:
    from mdsens.md.system import System

    symbols = symbols or ["Ar"] * len(R)
    return System.create(R, cell, symbols, pbc=cell is not None)


def write_sensitivity(path: Path, R: np.ndarray, cell: np.ndarray | None,
                      values: dict, derivatives: dict, units: dict, wrt: list[str],
                      config: dict | None = None, symbols: list[str] | None = None,
                      potential: object = None, energy: float = -2.6) -> Path:
    """A sensitivity result file holding exactly the given values and derivatives."""
    from mdsens.io.hdf5 import write_result
    from mdsens.md import potentials
    from mdsens.md.results import Sensitivity

    sys_ = system(R, cell, symbols)
    relaxation = SimpleNamespace(system=sys_, energy=energy, steps=10, fmax=1e-9,
                                 converged=True, message="converged")
    shapes = {}
    for p in wrt:  # parameter shape = derivative shape after the observable's
        obs = next(o for o in derivatives if p in derivatives[o])
        shapes[p] = tuple(np.shape(derivatives[obs][p]))[np.ndim(values[obs]):]
    result = Sensitivity(
        values=values, derivatives=derivatives, units=units, wrt=tuple(wrt),
        parameter_shapes=shapes,
        diagnostics={"relaxation": {"steps": 10, "fmax": 1e-9, "converged": True,
                                    "status": "converged", "energy": energy},
                     "mode": "forward", "n_solves": len(wrt)},
        relaxation=relaxation, converged=True, problems=())
    pot = potential or potentials.get("lj", sigma=SIGMA, epsilon=EPS)
    write_result(path, result, sys_, pot, config or {"relax_cell": True}, "test")
    return path


def write_relaxation(path: Path) -> Path:
    from mdsens.io.hdf5 import write_result
    from mdsens.md import potentials

    R, cell = fcc(1)
    sys_ = system(R, cell)
    relaxation = SimpleNamespace(system=sys_, energy=-0.32, steps=7, fmax=5e-7,
                                 converged=True, message="converged after 7 steps")
    write_result(path, relaxation, sys_, potentials.get("lj", sigma=SIGMA, epsilon=EPS),
                 {"command": "relax"}, "test")
    return path


def crystal_file(path: Path) -> Path:
    """A 32-atom fcc result: E ∝ ε (dE/dσ at round-off), V ∝ σ³ (dV/dε within tolerance),
    pressure zero to the relaxation, elastic constants ∝ ε/σ³."""
    R, cell = fcc(2)
    E, V = -2.6, float(np.linalg.det(cell))
    values = {"energy": np.float64(E), "volume": np.float64(V),
              "pressure": np.float64(-7e-12), "elastic_constants": C_VOIGT,
              "positions": R}
    derivatives = {
        "energy": {"sigma": np.float64(2e-16), "epsilon": np.float64(E / EPS)},
        "volume": {"sigma": np.float64(3 * V / SIGMA), "epsilon": np.float64(V * 1e-9 / EPS)},
        "pressure": {"sigma": np.float64(3e-17), "epsilon": np.float64(1e-18)},
        "elastic_constants": {"sigma": -3 * C_VOIGT / SIGMA, "epsilon": C_VOIGT / EPS},
        "positions": {"sigma": R / SIGMA, "epsilon": np.zeros_like(R)},
    }
    units = {"energy": "eV", "volume": "Å^3", "pressure": "eV/Å^3",
             "elastic_constants": "eV/Å^3", "positions": "Å"}
    return write_sensitivity(path, R, cell, values, derivatives, units, ["sigma", "epsilon"])


def study_file(path: Path, sigmas=(3.3, 3.4, 3.5)) -> Path:
    """A study over sigma: energy constant (d/dsigma round-off), volume ∝ σ³; the last point
    failed."""
    from mdsens.io.hdf5 import provenance
    from mdsens.md import potentials
    from mdsens.studies import _file

    R, cell = fcc(1)
    sys_ = system(R, cell)
    pot = potentials.get("lj", sigma=SIGMA, epsilon=EPS)
    definition = {"version": 1, "sweep": [["sigma", list(sigmas)]],
                  "structures": [{"label": "argon.extxyz", "digest": "0", "n_atoms": 4}],
                  "wrt": ["sigma"], "observables": ["energy", "volume"],
                  "potential": {"name": pot.name, "class": type(pot).__name__,
                                "params": {"sigma": SIGMA, "epsilon": EPS}, "species": None,
                                "settings": pot.settings},
                  "relax_cell": True, "pressure": 0.0, "relax_options": {},
                  "sensitivity_options": {}}
    n = len(sigmas)
    _file.create(path, json.dumps(definition), {"sigma": np.array(sigmas)}, np.zeros(n, int),
                 [("argon.extxyz", sys_)], {"energy": (), "volume": ()},
                 {"energy": "eV", "volume": "Å^3"}, {"sigma": ()}, provenance("test"))
    import h5py

    with h5py.File(path, "r+") as f:
        for p, s in enumerate(sigmas):
            V = (A * s / SIGMA) ** 3
            _file.write_point(f, p, n, 0, {
                "values": {"energy": -0.32, "volume": V},
                "derivatives": {"energy": {"sigma": 1e-17 * (p - 1)},
                                "volume": {"sigma": 3 * V / s}},
                "diagnostics": {"energy": -0.32, "relax_steps": 5},
                "position": R * s / SIGMA, "edges": cell * s / SIGMA,
                "converged": p < n - 1, "problems": [] if p < n - 1 else ["not converged"],
                "status": "ok"})
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("inspect")
    plain = d / "plain.h5"
    import h5py

    with h5py.File(plain, "w") as f:
        f["x"] = 1.0
    return {"relax": write_relaxation(d / "relax.h5"), "crystal": crystal_file(d / "sens.h5"),
            "study": study_file(d / "study.h5"), "plain": plain}


def _inspect(*args: str):
    return CliRunner().invoke(main, ["inspect", *map(str, args)])


# ----------------------------------------------------------------------------- units, rules
@pytest.mark.parametrize("h5md, human", [
    ("eV Angstrom-3", "eV/Å³"), ("Angstrom3 eV-1", "Å³/eV"), ("Angstrom-3", "1/Å³"),
    ("eV Angstrom-1", "eV/Å"), ("Angstrom2", "Å²"), ("1", "1"), ("Angstrom, deg", "Å, deg"),
    ("", ""), ("unknown", "unknown")])
def test_human_unit(h5md, human):
    assert insp.human_unit(h5md) == human


def test_judge_round_off_tolerance_and_relative():
    s = insp.Scales(energy=0.1, length=3.0)
    j = insp.judge(2e-16, "eV Angstrom-1", -2.6, "eV", 3.4, "Angstrom", s)
    assert j.zero == "round-off" and j.relative == 0.0
    j = insp.judge(1000 * 1e-9 / 0.01, "Angstrom3 eV-1", 1000.0, "Angstrom3", 0.01, "eV", s)
    assert j.zero == "tolerance"
    j = insp.judge(3 * 1000 / 3.4, "Angstrom2", 1000.0, "Angstrom3", 3.4, "Angstrom", s)
    assert j.zero is None and j.relative == pytest.approx(3.0, rel=1e-14)
    # an observable at zero (pressure after a cell relaxation): no relative sensitivity
    j = insp.judge(0.01, "eV Angstrom-4", 1e-12, "eV Angstrom-3", 3.4, "Angstrom", s)
    assert j.zero is None and j.relative is None
    assert insp.gpa_per_ev_per_a3() == pytest.approx(GPA, rel=1e-12)


# ----------------------------------------------------------------------------- results
def test_inspect_sensitivity_text(files):
    res = _inspect(files["crystal"])
    assert res.exit_code == 0, res.output
    out = res.output
    assert "mdsens sensitivity result" in out and "32 atoms Ar, periodic" in out
    assert "elastic_constants (6×6) in GPa [in eV/Å³]" in out
    first_row = next(ln for ln in out.splitlines() if "3.8132" in ln)
    assert "0.023800" in first_row  # the same row in eV/Å^3 beside it
    lines = {ln.split("  ")[1].strip(): ln for ln in out.splitlines()
             if ln.startswith("  d ")}
    assert "≈0 (round-off)" in lines["d energy / d sigma"]
    assert "≈0 (within tolerance)" in lines["d volume / d epsilon"]
    assert "relative 3" in lines["d volume / d sigma"] and "Å²" in lines["d volume / d sigma"]
    assert "eV/eV" in lines["d energy / d epsilon"] and "relative 1" in lines[
        "d energy / d epsilon"]
    assert "relative" not in lines["d pressure / d sigma"]  # the pressure is zero
    assert "GPa/eV" in out and "≈0 (round-off): |dO/dp|·|p| ≤ 1e-11" in out


def test_inspect_sensitivity_json(files):
    res = _inspect(files["crystal"], "--json")
    info = json.loads(res.stdout)
    C = info["observables"]["elastic_constants"]
    np.testing.assert_allclose(C["value_GPa"], C_VOIGT * GPA, rtol=1e-12)
    assert C["unit"] == "eV Angstrom-3" and C["unit_text"] == "eV/Å³"
    d = info["derivatives"]
    assert d["energy"]["sigma"]["zero"] == "round-off"
    assert d["energy"]["sigma"]["value"] == 2e-16  # the raw value is kept
    assert d["volume"]["epsilon"]["zero"] == "tolerance"
    assert d["volume"]["sigma"]["zero"] is None
    np.testing.assert_allclose(d["elastic_constants"]["epsilon"]["value_GPa"],
                               C_VOIGT / EPS * GPA, rtol=1e-12)
    assert d["elastic_constants"]["epsilon"]["unit_GPa"] == "GPa/eV"
    assert info["scalar_derivatives"]["energy"]["epsilon"] == pytest.approx(-2.6 / EPS)
    assert "NaN" not in res.stdout and '"None"' not in res.stdout


def test_inspect_relaxation(files):
    res = _inspect(files["relax"])
    assert res.exit_code == 0, res.output
    assert "mdsens relaxation result" in res.output and "7 steps" in res.output
    info = json.loads(_inspect(files["relax"], "--json").stdout)
    assert info["kind"] == "relaxation" and info["derivatives"] == {}
    assert info["observables"]["energy"]["value"] == -0.32


def test_inspect_study(files):
    res = _inspect(files["study"])
    assert res.exit_code == 0, res.output
    out = res.output
    assert "points: 3 of 3 done, 2 converged, 1 failed" in out
    assert "energy does not change with sigma" in out
    assert "FAILED: not converged" in out and "d/d sigma (Å²)" in out
    info = json.loads(_inspect(files["study"], "--json").stdout)
    assert info["unchanged"] == [["energy", "sigma"]]
    rows = info["point_table"]
    assert [r["parameters"]["sigma"] for r in rows] == [3.3, 3.4, 3.5]
    V = (A * 3.5 / SIGMA) ** 3
    assert rows[2]["values"]["volume"] == pytest.approx(V, rel=1e-14)
    assert rows[2]["derivatives"]["volume"]["sigma"] == pytest.approx(3 * V / 3.5, rel=1e-14)
    assert rows[0]["zero"]["energy"]["sigma"] == "round-off"


def test_inspect_refuses_other_files(files, tmp_path):
    for path, message in ((files["plain"], "not a file written by mdsens"),
                          (tmp_path / "none.h5", "no such file")):
        res = _inspect(path)
        assert res.exit_code == 2 and message in res.output, res.output
    (tmp_path / "text.h5").write_text("not hdf5")
    res = _inspect(tmp_path / "text.h5")
    assert res.exit_code == 2 and "not an HDF5 file" in res.output


def test_inspect_imports_no_jax(files):
    """One fresh interpreter inspects all three kinds without importing JAX."""
    code = ("import sys\nfrom mdsens.cli import main\n"
            "for path in sys.argv[1:]:\n"
            "    try:\n        main(['inspect', path])\n"
            "    except SystemExit as e:\n        assert not e.code, e.code\n"
            "print('JAX-IMPORTED' if 'jax' in sys.modules else 'JAX-FREE')")
    proc = subprocess.run([sys.executable, "-c", code, *(str(files[k]) for k in
                                                         ("relax", "crystal", "study"))],
                          capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout.strip().endswith("JAX-FREE"), proc.stdout + proc.stderr


# ----------------------------------------------------------------------------- potentials
def test_potentials_text_plain_with_units():
    out = CliRunner().invoke(main, ["potentials"]).output
    assert "None" not in out and ":math:" not in out and "``" not in out
    sw = out[out.index("stillinger_weber"):out.index("tersoff:")]
    assert "epsilon = 2.1683 eV" in sw and "sigma = 2.0951 Å" in sw
    assert "F = (from the file)" in out  # EAM tables: no default, said so
    assert "sigma = 1.0 Å" in out  # Lennard-Jones default with its unit


def test_potentials_json_has_no_none_strings():
    table = json.loads(CliRunner().invoke(main, ["potentials", "--json"]).stdout)

    def walk(x):
        if isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)
        else:
            assert x != "None"

    walk(table)
    sw = next(r for r in table if r["name"] == "stillinger_weber")
    assert {p["name"]: p["default"] for p in sw["parameters"]}["epsilon"] == 2.1683
    eam = next(r for r in table if r["name"] == "eam")
    assert all(p["default"] is None and not p["settable"] for p in eam["parameters"])


# ----------------------------------------------------------------------------- doc samples
def _samples_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("cli_samples", ROOT / "docs" / "cli_samples.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_doc_samples_are_all_used():
    """Every sample of docs/cli_samples.py is shown in README.md or docs/cli.md, and every
    block there names a known sample."""
    samples = _samples_module()
    used = [n for names in samples.blocks().values() for n in names]
    assert set(used) == {s.name for s in samples.SAMPLES}


def test_doc_samples_without_jax_are_current():
    """The samples that need no relaxation match what the commands print now (the script
    with --check; the full check runs the relaxations: python docs/cli_samples.py --check)."""
    proc = subprocess.run([sys.executable, str(ROOT / "docs" / "cli_samples.py"), "--check",
                           "--only", "commands,potentials,potentials-short"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
