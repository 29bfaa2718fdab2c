"""Regenerate (or check) the sample outputs of the ``mdsens`` command line shown in
``README.md`` and ``docs/cli.md``, so that they are what the commands print.

Each sample is one command run in a fresh directory holding copies of the files of
``data/`` it needs; its output (stdout, then stderr, as a terminal shows them without the
progress bars) replaces the block between the markers::

    <!-- sample: relax, sensitivity -->
    ```console
    $ mdsens relax ...
    ...
    ```
    <!-- end sample -->

Usage (from the repository root)::

    python docs/cli_samples.py                 # run every sample, rewrite the blocks
    python docs/cli_samples.py --check         # exit 1 when a block differs (a diff)
    python docs/cli_samples.py --only help,potentials --check   # JAX-free ones, ~1 s

Timestamps and library versions in the output are replaced by placeholders (they change
from run to run); everything else is shown as printed. A full run takes about a minute
(relaxations, derivatives, a 3-point study, figures).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = (ROOT / "README.md", ROOT / "docs" / "cli.md")
DATA = ("ar_fcc_32.extxyz", "si_diamond.cif")
BLOCK = re.compile(r"(<!-- sample: (?P<names>[^>]*?) -->\n)```console\n.*?```\n"
                   r"(<!-- end sample -->)", re.S)
WIDTH = 92
"""Commands longer than this are shown broken over lines with ``\\``."""


@dataclasses.dataclass(frozen=True)
class Sample:
    """One command and how much of its output to show.

    Attributes:
      name: the name a block refers to.
      command: as typed in a shell (``mdsens ...``), run in the sample directory.
      lines: show only these lines of the output (a slice, after ``start``), with ``...``
        where lines are left out; None: all.
      start: show the output from its first line that starts with this (None: from the
        top).
      exit_code: the exit status the command must have.
      figure: copy the file the command writes (its last argument) to
        ``docs/figures/<figure>`` (not with ``--check``).
    """

    name: str
    command: str
    lines: slice | None = None
    start: str | None = None
    exit_code: int = 0
    figure: str | None = None


LJ = "-p lj --param sigma=3.4 --param epsilon=0.0104"
SAMPLES = (
    Sample("commands", "mdsens --help", start="Commands:"),
    Sample("potentials", "mdsens potentials"),
    Sample("potentials-short", "mdsens potentials", slice(7, 12)),
    Sample("relax", f"mdsens relax data/ar_fcc_32.extxyz {LJ} --relax-cell -o relaxed.h5"),
    Sample("relax-again", f"mdsens relax data/ar_fcc_32.extxyz {LJ} --relax-cell "
                          "-o relaxed.h5", exit_code=2),
    Sample("relax-short", f"mdsens relax data/ar_fcc_32.extxyz {LJ} --max-steps 3 "
                          "-o short.h5", exit_code=1),
    Sample("inspect-relax", "mdsens inspect relaxed.h5"),
    Sample("sensitivity", f"mdsens sensitivity data/ar_fcc_32.extxyz {LJ} --relax-cell "
                          "--wrt sigma --wrt epsilon --observable energy --observable volume "
                          "--observable positions -o sens.h5"),
    Sample("inspect-sens", "mdsens inspect sens.h5"),
    Sample("inspect-sens-short", "mdsens inspect sens.h5", slice(0, 10), start="derivatives"),
    Sample("sensitivity-elastic", f"mdsens sensitivity data/ar_fcc_32.extxyz {LJ} "
                                  "--relax-cell --wrt sigma --observable elastic_constants "
                                  "-o elastic.h5"),
    Sample("inspect-elastic", "mdsens inspect elastic.h5", slice(0, 16),
           start="observables:"),
    Sample("plot-sens", "mdsens plot sens.h5 -o sens.png"),
    Sample("scan", "mdsens scan data/ar_fcc_32.extxyz -p lj --param epsilon=0.0104 "
                   "--sweep sigma=3.3:3.5:3 --wrt sigma --wrt epsilon --observable energy "
                   "--observable volume --relax-cell -o study.h5"),
    Sample("inspect-study", "mdsens inspect study.h5"),
    Sample("plot-study", "mdsens plot study.h5 --wrt sigma -o study.pdf"),
    Sample("plot-bad", "mdsens plot sens.h5 -o sens.jpg", exit_code=2),
    Sample("sensitivity-si", "mdsens sensitivity data/si_diamond.cif -p sw --wrt strain "
                             "--observable positions --observable stress -o si.h5"),
    Sample("plot-si", "mdsens plot si.h5 -o si.png", figure="cli_plot_strain.png"),
)
"""Every sample, in the order they run (later ones read files earlier ones write)."""

_VOLATILE = (
    (re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d"), "YYYY-MM-DDThh:mm:ss+00:00"),
    (re.compile(r"by mdsens \S+ \(jax \S+, jax-md \S+\)"),
     "by mdsens VERSION (jax VERSION, jax-md VERSION)"),
    (re.compile(r"(mdsens, version )\S+"), r"\1VERSION"),
)


def _shown(command: str) -> str:
    """``$ command``, broken before options so that no line exceeds WIDTH."""
    words = shlex.split(command)
    lines, line = [], "$"
    for w in words:
        part = shlex.quote(w)
        if len(line) + 1 + len(part) > WIDTH - 2 and w.startswith("-") and line != "$":
            lines.append(line + " \\")
            line = "   "
        line += " " + part
    return "\n".join([*lines, line])


def run(sample: Sample, cwd: Path) -> str:
    """Run one sample in ``cwd``; its block text (command and output)."""
    argv = shlex.split(sample.command)
    assert argv[0] == "mdsens", sample
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p), "COLUMNS": "92"}
    proc = subprocess.run([sys.executable, "-m", "mdsens.cli", *argv[1:]], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)
    if proc.returncode != sample.exit_code:
        raise SystemExit(f"{sample.name}: exit {proc.returncode}, expected "
                         f"{sample.exit_code}\n{proc.stdout}{proc.stderr}")
    out = (proc.stdout + proc.stderr).replace(str(cwd) + os.sep, "")
    for pattern, text in _VOLATILE:
        out = pattern.sub(text, out)
    lines = out.rstrip("\n").split("\n") if out.strip() else []
    if sample.start is not None:
        first = next(k for k, ln in enumerate(lines) if ln.startswith(sample.start))
        lines = (["..."] if first > 0 else []) + lines[first:]
    if sample.lines is not None:
        kept = lines[sample.lines]
        start, stop, _ = sample.lines.indices(len(lines))
        lines = (["..."] if start > 0 else []) + kept + (["..."] if stop < len(lines) else [])
    if sample.exit_code:
        lines.append(f"(exit status {sample.exit_code})")
    return "\n".join([_shown(sample.command), *lines]) + "\n"


def run_all(names: set[str] | None, figures: bool) -> dict[str, str]:
    """The block text of each sample (of ``names``, all when None), run in order in one
    temporary directory; with ``figures``, the figures samples name are copied into
    ``docs/figures``."""
    with tempfile.TemporaryDirectory(prefix="mdsens-samples-") as tmp:
        cwd = Path(tmp)
        (cwd / "data").mkdir()
        for name in DATA:
            shutil.copy(ROOT / "data" / name, cwd / "data" / name)
        outputs = {}
        for s in SAMPLES:
            if names is not None and s.name not in names:
                continue
            outputs[s.name] = run(s, cwd)
            if figures and s.figure is not None:
                shutil.copy(cwd / shlex.split(s.command)[-1], ROOT / "docs" / "figures" /
                            s.figure)
                print(f"updated docs/figures/{s.figure}")
        return outputs


def render(text: str, outputs: dict[str, str]) -> str:
    """``text`` with every block whose samples are all in ``outputs`` regenerated."""
    known = {s.name for s in SAMPLES}

    def block(m: re.Match) -> str:
        names = [n.strip() for n in m.group("names").split(",")]
        unknown = [n for n in names if n not in known]
        if unknown:
            raise SystemExit(f"unknown sample(s) {unknown} in a block; known: {sorted(known)}")
        if not all(n in outputs for n in names):
            return m.group(0)
        return m.group(1) + "```console\n" + "".join(outputs[n] for n in names) + "```\n" + \
            m.group(3)

    return BLOCK.sub(block, text)


def blocks() -> dict[Path, list[str]]:
    """The sample names each document refers to."""
    return {p: [n.strip() for m in BLOCK.finditer(p.read_text(encoding="utf-8"))
                for n in m.group("names").split(",")] for p in DOCS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="do not write; exit 1 when a block differs")
    parser.add_argument("--only", default=None, metavar="NAMES",
                        help="comma-separated sample names (default: all)")
    args = parser.parse_args(argv)
    names = None if args.only is None else {n.strip() for n in args.only.split(",")}
    unknown = sorted((names or set()) - {s.name for s in SAMPLES})
    if unknown:
        parser.error(f"unknown sample(s) {unknown}")
    outputs = run_all(names, figures=not args.check)
    differ = False
    for path in DOCS:
        old = path.read_text(encoding="utf-8")
        new = render(old, outputs)
        if new == old:
            continue
        if args.check:
            differ = True
            sys.stdout.writelines(difflib.unified_diff(
                old.splitlines(True), new.splitlines(True), str(path.relative_to(ROOT)),
                f"{path.relative_to(ROOT)} (regenerated)"))
        else:
            path.write_text(new, encoding="utf-8")
            print(f"updated {path.relative_to(ROOT)}")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
