"""Bad input to ``mdsens relax`` / ``sensitivity``: one line on stderr that names the option
(or the file) to change, exit status 2, no traceback, no output file, and no expensive work
(the table's cases marked ``before JAX`` never reach JAX; the others never reach a neighbour
list). Ctrl-C: one line, exit 130, no file. Outcomes that are not bad input (a relaxation
stopped at --max-steps, a failed solve) are worded with the command line's options."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mdsens.cli import INTERRUPTED, ExitCode, main

ROOT = Path(__file__).resolve().parents[1]
ARGON = str(ROOT / "data" / "ar_fcc_32.extxyz")
EPS = ["--param", "epsilon=0.0104"]
LJ = ["-p", "lj", "--param", "sigma=3.4", *EPS]
SENS = ["--wrt", "sigma", "--observable", "energy"]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """A cluster without a cell, a slab (pbc T T F), a singular cell, an existing file."""
    from ase.build import fcc111
    from ase.cluster import Icosahedron

    d = tmp_path_factory.mktemp("inputs")
    cluster = Icosahedron("Ar", 2, latticeconstant=5.26)
    cluster.write(d / "ar13.xyz")
    slab = fcc111("Ar", (2, 2, 3), a=5.26, vacuum=6.0)
    slab.info.clear()
    slab.write(d / "slab.extxyz")
    lines = Path(ARGON).read_text().splitlines()
    lines[1] = lines[1].replace('Lattice="10.52 0.0 0.0 0.0 10.52 0.0',
                                'Lattice="10.52 0.0 0.0 10.52 0.0 0.0')
    assert "10.52 0.0 0.0 10.52 0.0 0.0" in lines[1]
    (d / "singular.extxyz").write_text("\n".join(lines) + "\n")
    return {p.name: str(p) for p in d.iterdir()}


def _relax(structure: str, *extra: str, pot: tuple[str, ...] = tuple(LJ)) -> list[str]:
    return ["relax", structure, *pot, *extra]


def _sens(structure: str, *extra: str, pot: tuple[str, ...] = tuple(LJ),
          sens: tuple[str, ...] = tuple(SENS)) -> list[str]:
    return ["sensitivity", structure, *pot, *sens, *extra]


Case = tuple[Callable[[dict[str, str]], list[str]], str, bool]
# name: (arguments, what the line must name, refused before JAX is imported)
BAD: dict[str, Case] = {
    "negative sigma": (lambda f: _relax(ARGON, pot=("-p", "lj", "--param", "sigma=-3.4",
                                                    *EPS)), "--param sigma=-3.4", True),
    "NaN sigma": (lambda f: _relax(ARGON, pot=("-p", "lj", "--param", "sigma=nan", *EPS)),
                  "--param sigma=nan", True),
    "infinite epsilon": (lambda f: _sens(ARGON, pot=("-p", "lj", "--param", "sigma=3.4",
                                                     "--param", "epsilon=inf")),
                         "--param epsilon", True),
    "zero epsilon": (lambda f: _relax(ARGON, pot=("-p", "lj", "--param", "sigma=3.4",
                                                  "--param", "epsilon=0")),
                     "--param epsilon=0", True),
    "negative per-pair sigma": (lambda f: _relax(ARGON, pot=(
        "-p", "lj", "--param", "sigma[Ar,Ar]=-1", *EPS)), "--param sigma[Ar,Ar]", True),
    "negative Morse alpha": (lambda f: _relax(ARGON, pot=(
        "-p", "morse", "--param", "sigma=3.8", "--param", "alpha=-1")), "--param alpha",
        True),
    "r_onset beyond r_cutoff": (lambda f: _relax(ARGON, "--param", "r_onset=3"),
                                "--param r_onset", True),
    "sigma 50: a cutoff of 125 Å": (lambda f: _relax(ARGON, pot=(
        "-p", "lj", "--param", "sigma=50", *EPS)), "--param sigma=50", False),
    "lower-case species": (lambda f: _relax(ARGON, pot=(
        "-p", "lj", "--param", "sigma[ar,kr]=3.6", *EPS)), "--param sigma[ar,kr]", True),
    "one pair of a table": (lambda f: _relax(ARGON, pot=(
        "-p", "lj", "--param", "sigma[Ar,Kr]=3.6", *EPS)), "--param 'sigma[A,B]", True),
    "--wrt a pair the structure lacks": (lambda f: _sens(ARGON, pot=(
        "-p", "lj", "--param", "sigma[Ar,Ar]=3.4", "--param", "sigma[Ar,Kr]=3.5",
        "--param", "sigma[Kr,Kr]=3.6", *EPS), sens=("--wrt", "sigma[Ar,Kr]",
                                                    "--observable", "energy")),
        "--wrt sigma[Ar,Kr]", True),
    "singular cell": (lambda f: _relax(f["singular.extxyz"]), "singular cell", True),
    "cluster --relax-cell": (lambda f: _relax(f["ar13.xyz"], "--relax-cell"),
                             "--relax-cell", True),
    "slab --relax-cell": (lambda f: _sens(f["slab.extxyz"], "--relax-cell", sens=(
        "--wrt", "sigma", "--observable", "energy")), "--relax-cell", True),
    "cluster volume": (lambda f: _sens(f["ar13.xyz"], sens=("--wrt", "sigma",
                                                            "--observable", "volume")),
                       "--observable volume", True),
    "slab stress": (lambda f: _sens(f["slab.extxyz"], sens=("--wrt", "sigma",
                                                            "--observable", "stress")),
                    "--observable stress", True),
    "cluster --wrt strain": (lambda f: _sens(f["ar13.xyz"], sens=(
        "--wrt", "strain", "--observable", "energy")), "--wrt strain", True),
    "--wrt pressure at fixed cell": (lambda f: _sens(ARGON, sens=(
        "--wrt", "pressure", "--observable", "energy")), "--relax-cell", True),
    "--stress-tol at fixed cell": (lambda f: _relax(ARGON, "--stress-tol", "1e-4"),
                                   "--stress-tol", True),
    "negative --stress-tol": (lambda f: _relax(ARGON, "--relax-cell", "--stress-tol", "-1"),
                              "--stress-tol", True),
    "NaN --fmax": (lambda f: _relax(ARGON, "--fmax", "nan"), "--fmax", True),
    "infinite --fmax": (lambda f: _sens(ARGON, "--fmax", "inf"), "--fmax", True),
    "--max-steps 0": (lambda f: _relax(ARGON, "--max-steps", "0"), "--max-steps", True),
    "NaN --pressure": (lambda f: _relax(ARGON, "--relax-cell", "--pressure", "nan"),
                       "--pressure", True),
    "eam without a file": (lambda f: _relax(ARGON, pot=("-p", "eam")), "--potential-file",
                           True),
    "unknown --solver": (lambda f: _sens(ARGON, "--solver", "qr"), "--solver", True),
    "unknown --preconditioner": (lambda f: _sens(ARGON, "--preconditioner", "ilu"),
                                 "--preconditioner", True),
    "missing -p": (lambda f: ["relax", ARGON], "--potential", True),
    "--processes 0": (lambda f: _relax(ARGON, "--processes", "0"), "--processes", True),
    "--processes beyond the cores": (lambda f: _relax(ARGON, "--processes", "4096"),
                                     "--processes", True),
    "POSCAR of a cluster without a cell": (lambda f: _relax(f["ar13.xyz"], "-o", "POSCAR"),
                                           "-o", True),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input(case: str, files: dict[str, str], tmp_path: Path, monkeypatch):
    from mdsens.cli import _common

    make, expected, before_jax = BAD[case]

    def reached(stage: str):
        def fail(*args, **kwargs):
            raise AssertionError(f"{case}: reached {stage} before refusing the input")
        return fail

    monkeypatch.setattr(_common, "check_energy", reached("the neighbour list"))
    if before_jax:
        monkeypatch.setattr(_common, "enable_x64", reached("JAX"))
    monkeypatch.chdir(tmp_path)
    args = make(files)
    if "-o" not in args:
        args += ["-o", "out.h5"]
    result = CliRunner().invoke(main, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        case, result.exception)
    assert result.exit_code == ExitCode.BAD_INPUT, (case, result.output)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), (case, result.stderr)
    assert expected in lines[0], (case, lines[0])
    assert "Traceback" not in result.output and result.stdout == ""
    assert list(tmp_path.iterdir()) == []  # no output, no temporary file


# ----------------------------------------------------------------------------- outcomes


def test_max_steps_names_the_options(tmp_path):
    """A relaxation stopped by --max-steps (exit 1, file written) is told in the options'
    names; --stress-tol only where the cell relaxes."""
    out = tmp_path / "r.xyz"
    result = CliRunner().invoke(main, _relax(ARGON, "--max-steps", "2", "-o", str(out)))
    assert result.exit_code == ExitCode.NOT_CONVERGED, result.output
    warning = [ln for ln in result.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warning) == 1 and "--max-steps 2" in warning[0] and "--fmax 1e-06" in warning[0]
    assert "stress" not in warning[0] and "max_steps" not in warning[0]
    assert out.exists()


def test_cell_relaxation_outcomes_name_the_options():
    from types import SimpleNamespace

    from mdsens.cli._common import relaxation_outcome
    from mdsens.md.minimize import RelaxOptions, Status

    options = RelaxOptions(relax_cell=True, fmax=1e-6, stress_tol=1e-7, max_steps=5)
    relaxation = SimpleNamespace(status=Status.MAX_STEPS, steps=5, fmax=1e-3,
                                 stress_residual=2e-4)
    text = relaxation_outcome(relaxation, options)
    assert "--max-steps 5" in text and "--stress-tol 1e-07" in text and "--fmax 1e-06" in text
    assert "max|σ + pI|=0.0002 eV/Å^3" in text
    for status in (Status.INVALID_CELL, Status.CELL_DIVERGED):
        text = relaxation_outcome(SimpleNamespace(status=status, steps=9, fmax=1.0,
                                                  stress_residual=1.0), options)
        assert "--pressure" in text and "pressure`" not in text


def test_solve_failures_name_the_options():
    """Failed derivative solves are reported with --solver / --preconditioner, not the
    library's argument names (minres/gmres, maxiter)."""
    from types import SimpleNamespace

    from mdsens.cli._common import sensitivity_problems
    from mdsens.implicit import Status

    for status, option in [(Status.NEGATIVE_CURVATURE, "--solver minres"),
                           (Status.MAX_ITERATIONS, "--preconditioner block_jacobi"),
                           (Status.SINGULAR, "--solver lstsq")]:
        result = SimpleNamespace(
            problems=(f"1 of 2 derivative solves failed: {status.message}",
                      "the relaxed state is not a minimum: a saddle"),
            diagnostics={"solves": {"status": np.array([0, int(status)])}},
            relaxation=None)
        lines = sensitivity_problems(result, None)
        assert lines[0].startswith("1 of 2 derivative solves failed: ") and option in lines[0]
        assert "minres/gmres" not in lines[0] and "maxiter" not in lines[0]
        assert lines[1] == result.problems[1]  # other problems as the library words them


def test_solver_choices_are_the_library_solvers():
    from mdsens.cli._common import SOLVERS
    from mdsens.implicit import linsolve

    assert sorted(SOLVERS) == sorted(linsolve.SOLVERS)


# ----------------------------------------------------------------------------- Ctrl-C


def _sigint_as_at_a_terminal() -> None:
    """In the child before exec: SIGINT delivered and handled by default, as in a shell. A
    test worker process may ignore or block SIGINT, and a child inherits both (then Python
    never raises KeyboardInterrupt and the command runs on)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def test_ctrl_c_exits_130_without_a_file(tmp_path):
    """SIGINT during the relaxation: the line ``interrupted``, exit 130, no output file (a
    relaxation that would run for hours: --fmax 1e-30)."""
    out = tmp_path / "out.h5"
    args = [sys.executable, "-m", "mdsens.cli", *_sens(ARGON), "--fmax", "1e-30",
            "--max-steps", "100000000", "-v", "-o", str(out)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            preexec_fn=_sigint_as_at_a_terminal)
    lines = []
    try:
        for line in proc.stderr:  # -v logs each stage when it ends
            lines.append(line)
            if line.startswith("[mdsens] building the model"):
                break
        time.sleep(0.3)  # in the relaxation now
        proc.send_signal(signal.SIGINT)
        # generous: a signal waits for the compiler to return to Python (slow on a busy machine)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == INTERRUPTED, "".join(lines) + stderr
    own = [ln for ln in stderr.splitlines()
           if not ln.startswith("[mdsens]") and not re.match(r"[EWIF]\d{4} ", ln)]
    assert own == ["interrupted"], stderr
    assert "Traceback" not in stderr and "Aborted" not in stderr and stdout == ""
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_inside_a_garbage_collector_callback_still_ends_the_command(tmp_path):
    """A KeyboardInterrupt that Python raises inside a GC callback (JAX registers one) cannot
    propagate and would be dropped, the command running on: the group raises it again in
    the command, which ends with ``interrupted`` and 130, no traceback. Simulated by a GC
    callback that raises KeyboardInterrupt once, during a command that would else exit 0."""
    script = tmp_path / "cmd.py"
    script.write_text(
        "import gc, time, click\n"
        "from mdsens.cli import _Group\n"
        "calls = []\n"
        "def cb(phase, info):\n"
        "    if phase == 'start' and not calls:\n"
        "        calls.append(1)\n"
        "        raise KeyboardInterrupt\n"
        "@click.group(cls=_Group)\n"
        "def g():\n"
        "    pass\n"
        "@g.command()\n"
        "def work():\n"
        "    gc.callbacks.append(cb)\n"
        "    gc.collect()\n"
        "    for _ in range(100):\n"
        "        time.sleep(0.01)\n"
        "    click.echo('finished')\n"
        "g()\n")
    proc = subprocess.run([sys.executable, str(script), "work"], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(ROOT)},
                          preexec_fn=_sigint_as_at_a_terminal)
    assert proc.returncode == INTERRUPTED, proc.stdout + proc.stderr
    assert proc.stderr.strip() == "interrupted" and "finished" not in proc.stdout
