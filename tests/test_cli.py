"""The ``mdsens`` command line: bad input (exit 2, one line, no file), a happy path whose
H5MD file is checked with h5py and whose derivatives equal the Python API's bit for bit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from mdsens.cli import ExitCode, main

DATA = Path(__file__).resolve().parents[1] / "data"
ARGON = DATA / "ar_fcc_32.extxyz"
LJ = ["-p", "lj", "--param", "sigma=3.4", "--param", "epsilon=0.0104"]
SENS = ["--wrt", "sigma", "--wrt", "epsilon", "--observable", "positions",
        "--observable", "energy", "--observable", "volume"]


def _stderr(result) -> str:
    try:
        return result.stderr
    except ValueError:  # click < 8.2 mixes the streams
        return result.output


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad")
    (d / "empty.xyz").write_text("")
    (d / "garbage.xyz").write_text("hello\nworld\n")
    (d / "thing.unknownext").write_text("some words\n")
    lines = ARGON.read_text().splitlines()
    lines[2] = " ".join(["Ar", "nan", "0.0", "0.0"])
    (d / "nan.extxyz").write_text("\n".join(lines) + "\n")
    lines = ARGON.read_text().splitlines()
    lines[3] = lines[2]  # two atoms on top of each other
    (d / "overlap.extxyz").write_text("\n".join(lines) + "\n")
    (d / "exists.h5").write_text("keep me")
    (d / "not_hdf5.h5").write_text("not hdf5")
    (d / "adir").mkdir()
    (d / "invalid.toml").write_text('potential = "lj"\nfmax = \n')
    (d / "unknown_key.toml").write_text('potential = "lj"\ncolour = "red"\n')
    (d / "wrong_type.toml").write_text('potential = "lj"\nmax_steps = "many"\n')
    (d / "bad_params.toml").write_text('potential = "lj"\n[params]\nsigma = "big"\n')
    (d / "garbage.tersoff").write_text("Si Si Si 3.0 1.0 not a tersoff file\n")
    return {p.name: p for p in d.iterdir()}


def _sens(structure, out, *extra) -> list[str]:
    return ["sensitivity", str(structure), *LJ, *SENS, "-o", str(out), *extra]


BAD = {
    "missing file": lambda f, o: _sens(f["adir"] / "nope.xyz", o),
    "empty file": lambda f, o: _sens(f["empty.xyz"], o),
    "malformed file": lambda f, o: _sens(f["garbage.xyz"], o),
    "unknown suffix": lambda f, o: _sens(f["thing.unknownext"], o),
    "unknown --format": lambda f, o: _sens(ARGON, o, "--format", "nosuchformat"),
    "directory as structure": lambda f, o: _sens(f["adir"], o),
    "non-finite positions": lambda f, o: _sens(f["nan.extxyz"], o),
    "unknown potential": lambda f, o: ["sensitivity", str(ARGON), "-p", "nosuchpot",
                                       *SENS, "-o", str(o)],
    "unknown parameter": lambda f, o: _sens(ARGON, o, "--param", "zeta=1"),
    "malformed --param": lambda f, o: _sens(ARGON, o, "--param", "sigma"),
    "non-numeric --param": lambda f, o: _sens(ARGON, o, "--param", "alpha=abc"),
    "unknown observable": lambda f, o: _sens(ARGON, o, "--observable", "colour"),
    "unknown wrt": lambda f, o: _sens(ARGON, o, "--wrt", "kappa"),
    "strain with relax-cell": lambda f, o: _sens(ARGON, o, "--wrt", "strain", "--relax-cell"),
    "species the potential lacks": lambda f, o: [
        "sensitivity", str(DATA / "si_diamond.cif"), "-p", "lj", "--param",
        "sigma[Ar,Ar]=3.4", "--param", "epsilon=0.0104", *SENS, "-o", str(o)],
    "negative --fmax": lambda f, o: _sens(ARGON, o, "--fmax", "-1"),
    "missing output directory": lambda f, o: _sens(ARGON, o.parent / "nodir" / "x.h5"),
    "relax: unknown parameter": lambda f, o: ["relax", str(ARGON), "-p", "lj", "--param",
                                              "zeta=2", "-o", str(o)],
    "inspect: not HDF5": lambda f, o: ["inspect", str(f["not_hdf5.h5"])],
    "config: invalid TOML": lambda f, o: ["sensitivity", "--config", str(f["invalid.toml"]),
                                          "-o", str(o)],
    "config: unknown key": lambda f, o: _sens(ARGON, o, "--config", str(f["unknown_key.toml"])),
    "config: wrong type": lambda f, o: ["relax", "--config", str(f["wrong_type.toml"]),
                                        str(ARGON), "-o", str(o)],
    "config: bad params": lambda f, o: _sens(ARGON, o, "--config", str(f["bad_params.toml"])),
    "config: missing file": lambda f, o: _sens(ARGON, o, "--config", str(f["adir"] / "r.toml")),
    "config: sensitivity key for relax": lambda f, o: ["relax", "--config", str(
        _toml(f["adir"], "wrt.toml", 'wrt = ["sigma"]')), str(ARGON), *LJ, "-o", str(o)],
    "--pressure without --relax-cell": lambda f, o: _sens(ARGON, o, "--pressure", "0.001"),
    "potential file: malformed": lambda f, o: [
        "relax", str(DATA / "si_diamond.cif"), "-p", "tersoff", "--potential-file",
        str(f["garbage.tersoff"]), "-o", str(o)],
    "potential file: missing": lambda f, o: [
        "relax", str(DATA / "si_diamond.cif"), "-p", "tersoff", "--potential-file",
        str(f["adir"] / "Si.tersoff"), "-o", str(o)],
    "plot: missing result": lambda f, o: ["plot", str(f["adir"] / "none.h5"), "-o", str(o)],
}


def _toml(directory: Path, name: str, text: str) -> Path:
    (directory / name).write_text(text)
    return directory / name


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_exit_2(case, bad_files, tmp_path):
    out = tmp_path / "out.h5"
    args = BAD[case](bad_files, out)
    result = CliRunner().invoke(main, args)
    assert result.exit_code == ExitCode.BAD_INPUT, (case, result.output, result.exception)
    err = _stderr(result).strip()
    assert err.startswith("Error: ") and "\n" not in err, err
    assert "Traceback" not in result.output
    assert not out.exists() and not list(tmp_path.iterdir())


def test_existing_output_needs_overwrite(bad_files):
    target = bad_files["exists.h5"]
    result = CliRunner().invoke(main, _sens(ARGON, target))
    assert result.exit_code == ExitCode.BAD_INPUT
    assert "--overwrite" in _stderr(result)
    assert target.read_text() == "keep me"


def test_overlapping_atoms(bad_files, tmp_path):
    out = tmp_path / "o.h5"
    result = CliRunner().invoke(main, _sens(bad_files["overlap.extxyz"], out))
    assert result.exit_code == ExitCode.BAD_INPUT and not out.exists()


def test_help_is_light():
    """`mdsens --help` must not import jax (heavy imports live inside command bodies)."""
    code = ("import sys; from mdsens.cli import main; print(sorted(main.commands)); "
            "print('JAX-IMPORTED' if 'jax' in sys.modules else 'JAX-FREE')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(DATA.parent)}, check=True)
    for name in ("relax", "sensitivity", "inspect", "plot", "potentials"):
        assert name in out.stdout
    assert "JAX-FREE" in out.stdout


def test_version_and_potentials():
    runner = CliRunner()
    assert runner.invoke(main, ["--version"]).exit_code == 0
    result = runner.invoke(main, ["potentials"])
    assert result.exit_code == 0 and "lennard_jones" in result.output


# ----------------------------------------------------------------------------- happy path


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One real CLI sensitivity run (subprocess) shared by the tests below."""
    d = tmp_path_factory.mktemp("run")
    out = d / "argon.h5"
    args = [sys.executable, "-m", "mdsens.cli", *_sens(ARGON, out), "--fmax", "1e-8"]
    proc = subprocess.run(args, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(DATA.parent)})
    return proc, out


def test_cli_happy_path(run):
    proc, out = run
    assert proc.returncode == ExitCode.SUCCESS, proc.stderr
    with h5py.File(out, "r") as f:
        assert list(f["h5md"].attrs["version"]) == [1, 1]
        assert f["h5md/creator"].attrs["name"] == b"mdsens"
        assert "mdsens" in f["h5md/modules"]
        assert f["particles/all/position/value"].shape == (1, 32, 3)
        assert f["particles/all/species"].shape == (32,)
        box = f["particles/all/box"]
        assert box.attrs["dimension"] == 3
        assert list(box.attrs["boundary"]) == [b"periodic"] * 3  # fixed-length strings
        assert box["edges/value"].shape == (1, 3, 3)
        assert set(f["observables"]) == {"positions", "energy", "volume"}
        assert f["sensitivity/positions/sigma"].shape == (32, 3)
        assert f["sensitivity/energy/epsilon"].shape == ()
        assert f["sensitivity/energy/sigma"].attrs["unit"] == "eV Angstrom-1"
        assert bool(f["parameters"].attrs["converged"])
        prov = f["provenance"].attrs
        for key in ("mdsens", "jax", "jax_md", "command_line", "timestamp"):
            assert key in prov


def test_inspect_is_light(run):
    """`mdsens inspect` reads a result without importing jax (a result is plain data)."""
    _, out = run
    code = ("import sys; from mdsens.cli import main\n"
            "try:\n    main(['inspect', sys.argv[1]])\nexcept SystemExit as e:\n"
            "    assert not e.code, e.code\n"
            "print('JAX-IMPORTED' if 'jax' in sys.modules else 'JAX-FREE')")
    proc = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(DATA.parent)},
                          check=True)
    assert "energy" in proc.stdout and "JAX-FREE" in proc.stdout, proc.stdout


def test_cli_equals_api_bit_for_bit(run):
    import jax

    from mdsens.io import read, read_result
    from mdsens.md import potentials
    from mdsens.md.sensitivity import sensitivity

    jax.config.update("jax_enable_x64", True)
    _, out = run
    api = sensitivity(read(ARGON), potentials.get("lj", sigma=3.4, epsilon=0.0104),
                      ["sigma", "epsilon"], ["positions", "energy", "volume"],
                      relax_options={"fmax": 1e-8}, on_failure="ignore")
    stored = read_result(out).sensitivity
    for obs, per in api.derivatives.items():
        for p, v in per.items():
            np.testing.assert_array_equal(stored.derivatives[obs][p], v)
        np.testing.assert_array_equal(stored.values[obs], api.values[obs])


def test_inspect_and_plot(run, tmp_path):
    import json

    _, out = run
    runner = CliRunner()
    text = runner.invoke(main, ["inspect", str(out)])
    assert text.exit_code == 0 and "scalar derivatives" in text.output
    js = runner.invoke(main, ["inspect", str(out), "--json"])
    info = json.loads(js.stdout)
    assert info["converged"] and info["wrt"] == ["sigma", "epsilon"]
    png = tmp_path / "fig.png"
    res = runner.invoke(main, ["plot", str(out), "-o", str(png)])
    assert res.exit_code == 0, res.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- config, exit 1


def _config(f) -> dict:
    import json

    return json.loads(f["parameters/config"][()])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run directory with a copy of the argon file and a run.toml that names it."""
    d = tmp_path_factory.mktemp("toml")
    (d / "argon.extxyz").write_text(ARGON.read_text())
    (d / "run.toml").write_text(
        'structure = "argon.extxyz"   # relative to this file\n'
        'potential = "lj"\nfmax = 1e-4\nmax_steps = 3\noutput = "relaxed.h5"\n'
        '[params]\nsigma = 3.0\nepsilon = 0.0104\n')
    return d


def test_config_not_converged_writes_partial_file(run_dir):
    """The file's settings, the command line's overrides (params merged by name); three
    steps do not converge: exit 1, the file is written with converged = false."""
    result = CliRunner().invoke(main, ["relax", "--config", str(run_dir / "run.toml"),
                                       "--param", "sigma=3.4"])
    assert result.exit_code == ExitCode.NOT_CONVERGED, (result.output, result.exception)
    assert "converged=false" in _stderr(result)
    with h5py.File(run_dir / "relaxed.h5", "r") as f:
        assert not bool(f["parameters"].attrs["converged"])
        assert int(f["diagnostics/relaxation/steps"][()]) == 3
        config = _config(f)
    assert config["params"] == {"sigma": 3.4, "epsilon": 0.0104}
    assert config["relax_options"] == {"fmax": 1e-4, "max_steps": 3}
    assert config["config_file"] == str(run_dir / "run.toml")


def test_no_partial_writes_nothing(run_dir):
    out = run_dir / "none.h5"
    result = CliRunner().invoke(main, ["relax", "--config", str(run_dir / "run.toml"),
                                       "--param", "sigma=3.4", "-o", str(out), "--no-partial"])
    assert result.exit_code == ExitCode.NOT_CONVERGED
    assert "not written" in _stderr(result) and not out.exists()


def test_merge_params():
    from mdsens.cli._common import merge_params

    base = {"sigma": {("Ar", "Ar"): 3.4, ("Ar", "Kr"): 3.6}, "epsilon": 0.01}
    out = merge_params(base, {"sigma": {("Kr", "Ar"): 3.7}})
    assert out == {"sigma": {("Ar", "Ar"): 3.4, ("Kr", "Ar"): 3.7}, "epsilon": 0.01}
    assert merge_params(base, {"sigma": 3.5})["sigma"] == 3.5


def test_config_per_pair_params_and_lists(tmp_path, monkeypatch):
    """Per-pair tables and lists reach the command as if typed (stub sensitivity)."""
    calls = _stub_sensitivity(monkeypatch)
    cfg = _toml(tmp_path, "run.toml", f'structure = "{ARGON}"\npotential = "lj"\n'
                'wrt = ["sigma", "epsilon"]\nobservables = "energy"\noutput = "o.h5"\n'
                '[params]\nepsilon = 0.0104\nsigma = {"Ar-Ar" = 3.4}\n')
    result = CliRunner().invoke(main, ["sensitivity", "--config", str(cfg)])
    assert result.exit_code == ExitCode.SUCCESS, (result.output, result.exception)
    (args, kwargs), = calls
    assert args[2:] == (["sigma", "epsilon"], ["energy"])
    assert np.asarray(args[1].params["sigma"]).tolist() == [[3.4]]
    with h5py.File(tmp_path / "o.h5", "r") as f:
        assert _config(f)["params"] == {"epsilon": 0.0104, "sigma": {"Ar-Ar": 3.4}}


# ----------------------------------------------------------------------------- --pressure


def _stub_sensitivity(monkeypatch, converged: bool = True) -> list:
    """Replace the library's relax and sensitivity by stubs; the sensitivity stub records
    its arguments."""
    import importlib

    from mdsens.md import minimize
    from mdsens.md.sensitivity import Sensitivity

    sens_mod = importlib.import_module("mdsens.md.sensitivity")  # the module, not the function

    calls = []

    class Relaxed:
        def __init__(self, system):
            self.system = system

    def fake(system, potential, wrt, observables, **kwargs):
        calls.append(((system, potential, wrt, observables), kwargs))
        status = "converged" if converged else "maximum steps reached"
        return Sensitivity(
            values={"energy": np.array(-1.0)},
            derivatives={"energy": {w: np.array(0.5) for w in wrt}},
            units={"energy": "eV"}, wrt=tuple(wrt), parameter_shapes={w: () for w in wrt},
            diagnostics={"relaxation": {"steps": 3, "fmax": 0.1, "converged": converged,
                                        "status": status, "energy": -1.0}},
            relaxation=Relaxed(system), converged=converged,
            problems=() if converged else (f"relaxation did not converge: {status}",))

    monkeypatch.setattr(sens_mod, "sensitivity", fake)
    monkeypatch.setattr(minimize, "relax", lambda system, *args, **kwargs: Relaxed(system))
    return calls


def test_sensitivity_pressure_and_exit_1(tmp_path, monkeypatch):
    """--pressure reaches the library (argument and relax options); a failed result gives
    exit 1 with the file marked converged = false, or no file with --no-partial."""
    calls = _stub_sensitivity(monkeypatch, converged=False)
    out = tmp_path / "p.h5"
    args = ["sensitivity", str(ARGON), *LJ, "--relax-cell", "--pressure", "0.002", "--wrt",
            "pressure", "--observable", "volume", "--max-steps", "7", "-o", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == ExitCode.NOT_CONVERGED, (result.output, result.exception)
    (_, kwargs), = calls
    assert kwargs["pressure"] == 0.002 and kwargs["relax_cell"] is True
    options = kwargs["relax_options"]
    assert (options.pressure, options.max_steps, options.relax_cell) == (0.002, 7, True)
    assert options.fmax == 1e-8  # the derivative default
    with h5py.File(out, "r") as f:
        assert not bool(f["parameters"].attrs["converged"])
        assert _config(f)["relax_options"]["pressure"] == 0.002
    out.unlink()
    result = CliRunner().invoke(main, [*args, "--no-partial"])
    assert result.exit_code == ExitCode.NOT_CONVERGED and not out.exists()


def test_relax_under_pressure_equals_api(tmp_path):
    """A real relaxation at 1.6e-3 eV/Å^3 (~260 MPa): the cell equals the library's."""
    from mdsens.io import read
    from mdsens.md import System, potentials
    from mdsens.md.minimize import relax

    out = tmp_path / "p.h5"
    result = CliRunner().invoke(main, ["relax", str(ARGON), *LJ, "--relax-cell", "--pressure",
                                       "1.6e-3", "--fmax", "1e-4", "-o", str(out)])
    assert result.exit_code == ExitCode.SUCCESS, (result.output, result.exception)
    api = relax(System.from_ase(read(ARGON)), potentials.get("lj", sigma=3.4, epsilon=0.0104),
                relax_cell=True, pressure=1.6e-3, fmax=1e-4)
    with h5py.File(out, "r") as f:
        np.testing.assert_array_equal(f["particles/all/box/edges/value"][0], api.system.cell)
        np.testing.assert_array_equal(f["particles/all/position/value"][0],
                                      api.system.positions)
    assert abs(np.linalg.det(api.system.cell)) < abs(np.linalg.det(read(ARGON).cell)) * 0.97


# ----------------------------------------------------------------------------- potential files


def test_potential_file_tersoff(tmp_path):
    """Tersoff Si(B) from the LAMMPS file on 8-atom diamond Si (fixed cell)."""
    import hashlib

    out = tmp_path / "si.h5"
    tersoff = DATA / "potentials" / "Si.tersoff"
    result = CliRunner().invoke(main, ["relax", str(DATA / "si_diamond.cif"), "-p", "tersoff",
                                       "--potential-file", str(tersoff), "-o", str(out)])
    assert result.exit_code == ExitCode.SUCCESS, (result.output, result.exception)
    with h5py.File(out, "r") as f:
        assert f["parameters/potential"].attrs["name"] == "tersoff"
        # LAMMPS (data/reference): -37.04329 eV at a = 5.432 Å; the file has a = 5.431 Å
        assert abs(f["observables/energy/value"][0] - (-37.04329)) < 1e-3
        config = _config(f)
    assert config["potential_file_sha256"] == hashlib.sha256(tersoff.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- progress bar


def test_progress_bar():
    import io

    from rich.console import Console

    from mdsens.cli._progress import Progress

    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=120)
    with Progress(True, console=console) as progress:
        callback = progress.relax(1e-8)
        callback(100, -2.5, 3e-3)
        progress._progress.refresh()
    text = buf.getvalue()
    assert "relaxing" in text and "fmax 3.0e-03 → 1e-08 eV/Å" in text and "step 100" in text
    with Progress(False) as progress:
        assert progress.relax(1e-8) is None
    with Progress(True, console=Console(file=io.StringIO())) as progress:
        assert progress.relax(1e-8) is None  # not a terminal


def test_cli_output_opens_in_mdanalysis_pyh5md_and_ase(run):
    """The file of a real command run, read by the field's readers: the relaxed positions,
    box and observables are the ones mdsens stores."""
    import warnings

    import ase.io
    import MDAnalysis as mda
    import pyh5md

    from mdsens.io import read_result

    _, out = run
    stored = read_result(out)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        u = mda.Universe.empty(len(stored.positions), trajectory=False)
        u.load_new(str(out), format="H5MD")
    np.testing.assert_allclose(u.atoms.positions, stored.positions, atol=1e-5)  # float32
    np.testing.assert_allclose(u.dimensions[:3], np.linalg.norm(stored.cell, axis=1),
                               rtol=1e-6)
    energy = stored.sensitivity.values["energy"]
    assert u.trajectory.ts.data["energy"] == pytest.approx(float(energy), rel=1e-12)
    with pyh5md.File(str(out), "r") as f:
        np.testing.assert_array_equal(f["particles/all/position/value"][0], stored.positions)
    atoms = ase.io.read(out)
    np.testing.assert_allclose(atoms.positions, stored.positions, atol=1e-12)
