"""Bad input is refused before JAX is imported, and ``mdsens potentials`` needs no JAX.

Each bad command line runs in a fresh interpreter: exit code 2, one ``Error:`` line, no
file written, and ``jax`` never imported. The JAX-free catalog the CLI checks names with
(:mod:`mdsens.md.catalog`) is compared with the live registry and observables, so that
the two cannot drift apart. Wall times are not asserted (they depend on the machine).
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from mdsens.md import catalog

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
ARGON = str(DATA / "ar_fcc_32.extxyz")
SILICON = str(DATA / "si_diamond.cif")
TERSOFF = str(DATA / "potentials" / "Si.tersoff")
EAM = str(DATA / "potentials" / "Cu_u3.eam")

_SCRIPT = """
import sys
from mdsens.cli import main
try:
    main(sys.argv[1:])
    code = 0
except SystemExit as exc:
    code = exc.code or 0
print('JAX-IMPORTED' if 'jax' in sys.modules else 'JAX-FREE')
print('EXIT', code)
"""


def _cli(args: list[str], cwd: Path) -> tuple[int, str, str, bool]:
    """Run ``mdsens ARGS`` in a fresh interpreter: exit code, stdout (without the two
    marker lines), stderr, whether jax was imported."""
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, *args], capture_output=True,
                          text=True, cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          timeout=120)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0 and lines[-1].startswith("EXIT "), proc.stdout + proc.stderr
    jax_imported = lines[-2] == "JAX-IMPORTED"
    return int(lines[-1].split()[1]), "\n".join(lines[:-2]), proc.stderr, jax_imported


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    """Input files in a fresh directory that is also the working directory of the run."""
    (tmp_path / "exists.h5").write_text("keep me")
    (tmp_path / "free.xyz").write_text("2\n\nAr 0.0 0.0 0.0\nAr 3.8 0.0 0.0\n")
    lines = Path(ARGON).read_text().splitlines()
    lines[3] = lines[2]  # two atoms on top of each other
    (tmp_path / "overlap.extxyz").write_text("\n".join(lines) + "\n")
    (tmp_path / "bogus.toml").write_text('potential = "lj"\n[params]\nbogus = 1.0\n')
    return {p.name: str(p) for p in tmp_path.iterdir()}


SENS = ["--wrt", "sigma", "--observable", "energy"]
LJ = ["-p", "lj", "--param", "sigma=3.4"]
SWEEP = ["--sweep", "sigma=3.3:3.5:3"]


def _sens(structure: str = ARGON, *extra: str, pot: tuple[str, ...] = tuple(LJ),
          sens: tuple[str, ...] = tuple(SENS)) -> list[str]:
    return ["sensitivity", structure, *pot, *sens, *extra]


def _relax(structure: str = ARGON, *extra: str, pot: tuple[str, ...] = tuple(LJ)) -> list[str]:
    return ["relax", structure, *pot, *extra]


def _scan(structure: str = ARGON, *extra: str, pot: tuple[str, ...] = ("-p", "lj"),
          sweep: tuple[str, ...] = tuple(SWEEP), sens: tuple[str, ...] = tuple(SENS)
          ) -> list[str]:
    return ["scan", structure, *pot, *sweep, *sens, *extra]


Case = Callable[[dict[str, str]], list[str]]

BAD: dict[str, tuple[Case, str]] = {
    # sensitivity
    "missing structure": (lambda f: _sens("nope.xyz"), "no such file"),
    "unknown potential": (lambda f: _sens(pot=("-p", "nolj")), "unknown potential 'nolj'"),
    "unknown --wrt": (lambda f: _sens(sens=("--wrt", "sigmax", "--observable", "energy")),
                      "'sigmax'"),
    "unknown --observable": (lambda f: _sens(sens=("--wrt", "sigma", "--observable",
                                                   "nonsense")), "unknown observable"),
    "unknown --param": (lambda f: _sens(ARGON, "--param", "bogus=1"), "unknown parameter"),
    "unknown param in --config": (lambda f: _sens(ARGON, "--config", f["bogus.toml"]),
                                  "unknown parameter 'bogus'"),
    "missing --potential-file": (lambda f: _sens(SILICON, pot=(
        "-p", "tersoff", "--potential-file", "nope.tersoff"), sens=(
        "--wrt", "A", "--observable", "energy")), "no such potential file"),
    "eam without --potential-file": (lambda f: _sens(pot=("-p", "eam"), sens=(
        "--wrt", "F", "--observable", "energy")), "needs --potential-file"),
    "--potential-file for lj": (lambda f: _sens(ARGON, "--potential-file", TERSOFF),
                                "takes no --potential-file"),
    "--param for eam tables": (lambda f: _sens(pot=("-p", "eam", "--potential-file", EAM,
                                                    "--param", "F=1")), "unknown parameter"),
    "custom potential": (lambda f: _sens(pot=("-p", "custom")), "Python API"),
    "per-pair value of a setting": (lambda f: _sens(ARGON, "--param", "r_cutoff[Ar,Ar]=3"),
                                    "per-species-pair"),
    "tersoff m not 1 or 3": (lambda f: _sens(SILICON, pot=("-p", "tersoff", "--param", "m=2"),
                                             sens=("--wrt", "A", "--observable", "energy")),
                             "one of 1, 3"),
    "missing species pair": (lambda f: _sens(ARGON, pot=(
        "-p", "lj", "--param", "sigma[Ar,Ar]=3.4", "--param", "sigma[Kr,Kr]=3.6")),
        "missing species pairs Ar-Kr"),
    "--wrt pair of a scalar": (lambda f: _sens(sens=("--wrt", "sigma[Ar,Ar]", "--observable",
                                                     "energy")), "not a per-pair parameter"),
    "--wrt pressure without --relax-cell": (lambda f: _sens(sens=(
        "--wrt", "pressure", "--observable", "energy")), "--relax-cell"),
    "--wrt strain with --relax-cell": (lambda f: _sens(ARGON, "--relax-cell", sens=(
        "--wrt", "strain", "--observable", "energy")), "fixed cell"),
    "--wrt twice": (lambda f: _sens(ARGON, "--wrt", "sigma"), "given twice"),
    "--observable distances": (lambda f: _sens(sens=("--wrt", "sigma", "--observable",
                                                     "distances")), "atom pairs"),
    "--observable twice": (lambda f: _sens(ARGON, "--observable", "energy"), "twice"),
    "species the potential lacks": (lambda f: _sens(SILICON, pot=(
        "-p", "lj", "--param", "sigma[Ar,Ar]=3.4")), "species ['Si']"),
    "volume of a free system": (lambda f: _sens(f["free.xyz"], sens=(
        "--wrt", "sigma", "--observable", "volume")), "periodic"),
    "strain of a free system": (lambda f: _sens(f["free.xyz"], sens=(
        "--wrt", "strain", "--observable", "energy")), "periodic"),
    "overlapping atoms": (lambda f: _sens(f["overlap.extxyz"]), "overlap"),
    "existing output": (lambda f: _sens(ARGON, "-o", f["exists.h5"]), "--overwrite"),
    # relax
    "relax: missing structure": (lambda f: _relax("nope.xyz"), "no such file"),
    "relax: unknown potential": (lambda f: _relax(pot=("-p", "nolj")), "unknown potential"),
    "relax: unknown --param": (lambda f: _relax(ARGON, "--param", "bogus=1"),
                               "unknown parameter"),
    "relax: eam without --potential-file": (lambda f: _relax(pot=("-p", "eam")),
                                            "needs --potential-file"),
    "relax: missing --potential-file": (lambda f: _relax(SILICON, pot=(
        "-p", "tersoff", "--potential-file", "nope.tersoff")), "no such potential file"),
    "relax: overlapping atoms": (lambda f: _relax(f["overlap.extxyz"]), "overlap"),
    "relax: existing output": (lambda f: _relax(ARGON, "-o", f["exists.h5"]), "--overwrite"),
    # scan
    "scan: missing structure": (lambda f: _scan("nope.xyz"), "no such file"),
    "scan: unknown potential": (lambda f: _scan(pot=("-p", "nolj")), "unknown potential"),
    "scan: unknown --param": (lambda f: _scan(ARGON, "--param", "bogus=1"),
                              "unknown parameter"),
    "scan: unknown --wrt": (lambda f: _scan(sens=("--wrt", "sigmax", "--observable",
                                                  "energy")), "'sigmax'"),
    "scan: unknown --observable": (lambda f: _scan(sens=("--wrt", "sigma", "--observable",
                                                         "nonsense")), "unknown observable"),
    "scan: unknown --sweep name": (lambda f: _scan(sweep=("--sweep", "sigmax=3.3:3.5:3")),
                                   "'sigmax'"),
    "scan: --sweep repeats a value": (lambda f: _scan(sweep=("--sweep", "sigma=3.3,3.3")),
                                      "repeats"),
    "scan: --sweep pair of a scalar": (lambda f: _scan(sweep=("--sweep", "sigma[Ar,Ar]=3,4")),
                                       "not a per-pair parameter"),
    "scan: missing --potential-file": (lambda f: _scan(SILICON, pot=(
        "-p", "tersoff", "--potential-file", "nope.tersoff"), sweep=("--sweep", "A=3000,3100"),
        sens=("--wrt", "A", "--observable", "energy")), "no such potential file"),
    "scan: existing output": (lambda f: _scan(ARGON, "-o", f["exists.h5"]), "--overwrite"),
    # outputs that could only fail at the end (after the relaxation)
    "output under a file": (lambda f: _sens(ARGON, "-o", f["exists.h5"] + "/x.h5"),
                            "not a directory"),
    "output where nothing can be written": (lambda f: _sens(ARGON, "-o", "/proc/x.h5"),
                                            "cannot write there"),
    "sensitivity output not HDF5": (lambda f: _sens(ARGON, "-o", "out.xyz"), "*.h5"),
    "scan output not HDF5": (lambda f: _scan(ARGON, "-o", "out.xyz"), "*.h5"),
    "relax output ASE cannot write": (lambda f: _relax(ARGON, "-o", "out.zzz"),
                                      "no structure format"),
    "relax: output under a file": (lambda f: _relax(ARGON, "-o", f["exists.h5"] + "/x.xyz"),
                                   "not a directory"),
    "plot: not a PNG name": (lambda f: ["plot", f["exists.h5"], "-o", "fig.pdfx"], "*.png"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_refused_without_jax(case: str, files: dict[str, str], tmp_path: Path):
    make, expected = BAD[case]
    args = make(files)
    if "-o" not in args:
        args += ["-o", "out.h5"]
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    code, out, err, jax_imported = _cli(args, tmp_path)
    assert code == 2, (case, out, err)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), err
    assert expected in lines[0], lines[0]
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # nothing written
    assert not jax_imported, f"{case}: jax imported before the input was refused"


def test_potentials_without_jax(tmp_path: Path):
    code, out, err, jax_imported = _cli(["potentials"], tmp_path)
    assert code == 0 and not jax_imported, err
    for info in catalog.POTENTIALS:
        assert info.name in out
    assert ":class:" not in out and "``" not in out


def test_potentials_json_types(tmp_path: Path):
    """One JSON type per field: defaults are numbers or null (never the string "None")."""
    code, out, err, jax_imported = _cli(["potentials", "--json"], tmp_path)
    assert code == 0 and not jax_imported, err
    table = json.loads(out)
    assert [row["name"] for row in table] == list(catalog.names())
    for row in table:
        assert isinstance(row["aliases"], list) and isinstance(row["python_only"], bool)
        assert row["potential_file"] in ("required", "optional", "none")
        assert isinstance(row["summary"], str) and ":class:" not in row["summary"]
        assert "``" not in row["summary"]
        for p in row["parameters"]:
            assert p["default"] is None or isinstance(p["default"], float), p
            assert isinstance(p["unit"], str) and isinstance(p["keywords"], list)
            assert all(isinstance(p[k], bool)
                       for k in ("differentiable", "settable", "per_pair"))


def test_catalog_imports_neither_jax_nor_numpy():
    code = ("import sys; import mdsens.md.catalog; "
            "print(sorted(m for m in ('jax', 'numpy') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True)
    assert proc.stdout.strip() == "[]", proc.stdout + proc.stderr


# ----------------------------------------------------------------------------- catalog = live


def test_catalog_names_match_registry():
    from mdsens.md.potentials import factories, names

    assert catalog.names() == names()
    assert catalog.names(aliases=True) == names(aliases=True)
    live = factories()
    for info in catalog.POTENTIALS:
        for alias in info.aliases:
            assert live[alias] is live[info.name]
        assert catalog.potential(info.name) is info


def _file_kwargs(info: catalog.PotentialInfo) -> dict[str, str]:
    return {"file": EAM} if info.potential_file == "required" else {}


@pytest.mark.parametrize("info", [i for i in catalog.POTENTIALS if not i.python_only],
                         ids=lambda i: i.name)
def test_catalog_parameters_match_registry(info: catalog.PotentialInfo):
    """Parameter names, defaults, keywords, per-pair tables and the potential file of the
    catalog are those of the factory and of the potential it builds."""
    from mdsens.md.potentials import factories, get

    pot = get(info.name, **_file_kwargs(info))
    assert set(pot.params) == set(info.differentiable)
    assert set(type(pot).param_units) == set(pot.params), info.name  # every unit declared
    for p in info.parameters:
        if p.differentiable:
            assert pot.parameter_unit(p.name) == p.unit, (info.name, p.name)
    for p in info.parameters:
        if p.default is None:
            continue
        live = pot.params[p.name] if p.differentiable else pot.settings[p.name]
        assert float(live) == p.default, (info.name, p.name)
    for p in info.parameters:
        if not p.settable:
            with pytest.raises(TypeError):
                get(info.name, **_file_kwargs(info), **{p.name: 1.0})
            continue
        for keyword in (p.name, *p.keywords):
            get(info.name, **_file_kwargs(info), **{keyword: p.default})
        if p.per_pair:
            table = get(info.name, **{p.name: {("Ar", "Ar"): p.default}})
            assert table.params[p.name].ndim == 2 and table.species == ("Ar",)
        elif p.differentiable:
            with pytest.raises((TypeError, ValueError)):
                get(info.name, **_file_kwargs(info), **{p.name: {("Si", "Si"): p.default}})
        for bad in ({2.0} if p.choices else set()):
            with pytest.raises(ValueError):
                get(info.name, **_file_kwargs(info), **{p.name: bad})

    sig = inspect.signature(factories()[info.name])
    named = {k for k, v in sig.parameters.items() if v.kind is not v.VAR_KEYWORD}
    settable = {k for p in info.parameters if p.settable for k in (p.name, *p.keywords)}
    assert named - {"file", "species", "fmt"} <= settable
    file = sig.parameters.get("file")
    expected = ("none" if file is None else
                "required" if file.default is inspect.Parameter.empty else "optional")
    assert info.potential_file == expected


def test_catalog_custom_is_python_only():
    from mdsens.md.potentials import get

    assert catalog.potential("custom").python_only
    with pytest.raises(TypeError):
        get("custom")


def test_catalog_observables_match_library():
    from mdsens.md import observables

    assert catalog.OBSERVABLE_NAMES == observables.NAMES
    for info in catalog.OBSERVABLES:
        if info.name in observables.BUILTIN:
            assert observables.BUILTIN[info.name].periodic_only == info.periodic_only
        elif info.periodic_only:
            with pytest.raises(ValueError, match="periodic"):
                observables.resolve([info.name], periodic=False)
        else:
            observables.resolve([info.name], periodic=False)
    assert catalog.observable("distances").needs


def test_quick_exit_keeps_output_and_status(tmp_path):
    """``python -m mdsens.cli`` ends with ``os._exit`` after the exit handlers: the whole
    output is flushed (also into a pipe) and the status is the command's."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ok = subprocess.run([sys.executable, "-m", "mdsens.cli", "potentials"], cwd=tmp_path,
                        capture_output=True, text=True, env=env)
    assert ok.returncode == 0 and "lennard_jones" in ok.stdout and ok.stdout.endswith("\n")
    bad = subprocess.run([sys.executable, "-m", "mdsens.cli", "relax", "missing.xyz", "-p",
                          "lj", "-o", "x.h5"], cwd=tmp_path, capture_output=True, text=True,
                         env=env)
    assert bad.returncode == 2 and bad.stderr.startswith("Error")
    script = ("import atexit, sys; atexit.register(lambda: print('handler ran')); "
              "sys.argv = ['mdsens', 'potentials']; from mdsens.cli import run; run()")
    ran = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                         text=True, env=env)
    assert ran.returncode == 0 and ran.stdout.rstrip().endswith("handler ran")
