"""Progress of a command: named stages, a relaxation bar on a log scale of the force, a
spinner that keeps moving while nothing reports, nothing at all in pipes or with -q, stage
timings with -v, and XLA's own log lines kept off stderr unless -v."""

from __future__ import annotations

import io
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from click.testing import CliRunner
from rich.console import Console

from mdsens.cli import ExitCode, main
from mdsens.cli._progress import Progress, log_fraction

ROOT = Path(__file__).resolve().parents[1]
ARGON = str(ROOT / "data" / "ar_fcc_32.extxyz")
LJ = ["-p", "lj", "--param", "sigma=3.4", "--param", "epsilon=0.0104"]
XLA_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d")  # absl/glog prefix of XLA's C++ logs
CONTROL = re.compile(r"\x1b\[|\r")  # cursor movement or carriage returns: a live display


def _terminal() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, force_terminal=True, width=140), buf


def test_log_fraction():
    assert log_fraction(1.0, 1e-4, 1e-8) == 0.5
    assert math.isclose(log_fraction(1e-2, 1e-5, 1e-8), 0.5)
    assert log_fraction(1.0, 1e-9, 1e-8) == 1.0  # converged
    assert log_fraction(1.0, 2.0, 1e-8) == 0.0  # worse than the start
    assert log_fraction(1.0, math.nan, 1e-8) == 0.0
    assert log_fraction(math.nan, 1e-3, 1e-8) == 0.0  # no start known yet


def test_stages_and_the_relaxation_bar():
    console, buf = _terminal()
    with Progress(True, console=console) as progress:
        progress.stage("reading", "ar.xyz")
        progress._progress.refresh()
        progress.stage("building the model")
        progress._progress.refresh()
        callback = progress.relax(1e-8)
        progress._progress.refresh()
        assert "compiling" in buf.getvalue()  # until the first steps report
        callback(100, -2.5, 1e-2)
        callback(300, -2.6, 1e-5)
        progress._progress.refresh()
        task = progress._progress.tasks[-1]
        assert task.description == "relaxing" and math.isclose(task.completed, 500)
        progress.stage("derivatives")
    text = buf.getvalue()
    for name in ("reading", "building the model", "relaxing", "derivatives"):
        assert name in text
    assert "fmax 1.0e-05 → 1e-08 eV/Å" in text and "step 300" in text
    assert "/100000" not in text and "max-steps" not in text  # no step fraction


def test_spinner_moves_while_nothing_reports():
    """A stage with no news (XLA compiling) is redrawn from rich's thread: the line keeps
    changing through a silent second."""
    console, buf = _terminal()
    with Progress(True, console=console) as progress:
        progress.stage("relaxing", "compiling")
        time.sleep(0.3)
        before = len(buf.getvalue())
        time.sleep(1.0)  # the main thread is busy elsewhere
        after = len(buf.getvalue())
    assert after - before > 100, (before, after)


def test_nothing_drawn_in_pipes_or_with_quiet():
    console = Console(file=io.StringIO())  # not a terminal
    with Progress(True, console=console) as progress:
        assert not progress.drawing and progress.relax(1e-8) is None
    console, buf = _terminal()
    with Progress(False, console=console) as progress:
        progress.stage("reading")
        assert progress.relax(1e-8) is None
    assert buf.getvalue() == ""


def test_command_output_in_a_pipe(tmp_path):
    """A real run with stderr not a terminal: no bar and no control characters; the summary
    on stdout; -q: nothing at all; -v: one line per stage with its time."""
    out = tmp_path / "r.xyz"
    result = CliRunner().invoke(main, ["relax", ARGON, *LJ, "-o", str(out)])
    assert result.exit_code == ExitCode.SUCCESS, result.output
    assert result.stderr == "" and not CONTROL.search(result.stdout)
    lines = result.stdout.splitlines()
    assert lines[0].startswith("relaxation: converged after") and lines[1] == f"wrote {out}"
    result = CliRunner().invoke(main, ["relax", ARGON, *LJ, "-o", str(out), "--overwrite",
                                       "-q"])
    assert result.exit_code == ExitCode.SUCCESS and result.output == ""
    result = CliRunner().invoke(main, ["relax", ARGON, *LJ, "-o", str(out), "--overwrite",
                                       "-v"])
    stages = [ln.split(":")[0] for ln in result.stderr.splitlines()]
    assert stages == ["[mdsens] reading", "[mdsens] building the model", "[mdsens] relaxing",
                      "[mdsens] writing"], result.stderr
    assert not CONTROL.search(result.stderr)


def test_xla_log_lines_only_with_verbose(tmp_path):
    """Real runs in fresh processes sharing a compilation cache: the second loads the
    programs the first compiled, which makes XLA:CPU log error lines at JAX's default log
    level (jax-ml/jax#38445); the command keeps them off stderr. With -v the stages are
    logged (and XLA's lines would pass)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("JAX_COMPILATION_CACHE_DIR", "TF_CPP_MIN_LOG_LEVEL")}
    env.update(PYTHONPATH=str(ROOT), MDSENS_CACHE_DIR=str(tmp_path / "cache"))

    def run(*extra: str) -> str:
        out = tmp_path / "r.xyz"
        proc = subprocess.run([sys.executable, "-m", "mdsens.cli", "relax", ARGON, *LJ,
                               "--max-steps", "5", "--overwrite", "-o", str(out), *extra],
                              capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == ExitCode.NOT_CONVERGED, proc.stderr
        return proc.stderr

    verbose = run("-v")  # compiles and fills the cache
    assert "[mdsens] relaxing: " in verbose
    quiet = run()  # loads from it
    assert [ln for ln in quiet.splitlines() if ln.strip()] == [
        ln for ln in quiet.splitlines() if ln.startswith(("warning: ", "not converged"))]
    assert not [ln for ln in quiet.splitlines() if XLA_LINE.match(ln)], quiet
    assert list((tmp_path / "cache").rglob("*"))  # the second run had programs to load
