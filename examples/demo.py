"""Demo: the command line on 32-atom argon (run with `make demo`, about a minute).

1. ``mdsens sensitivity``: relax the cell and positions of perturbed fcc argon (Lennard-Jones)
   and differentiate positions, energy and volume with respect to sigma and epsilon;
2. ``mdsens plot``: per-atom arrows of d positions / d sigma and the scalar derivatives;
3. ``mdsens inspect``: the summary. Output goes to ``demo_output/``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = Path("demo_output")


def mdsens(*args: str) -> None:
    """Run ``mdsens ARGS`` (``python -m mdsens.cli``), echo it, stop on a non-zero exit."""
    print("$ mdsens " + " ".join(args), flush=True)
    code = subprocess.call([sys.executable, "-m", "mdsens.cli", *args], cwd=ROOT)
    if code != 0:
        sys.exit(code)


def main() -> None:
    (ROOT / OUT).mkdir(exist_ok=True)
    mdsens("sensitivity", "data/ar_fcc_32.extxyz", "-p", "lj", "--param", "sigma=3.4",
           "--param", "epsilon=0.0104", "--wrt", "sigma", "--wrt", "epsilon",
           "--observable", "positions", "--observable", "energy", "--observable", "volume",
           "--relax-cell", "-o", str(OUT / "argon.h5"), "--overwrite")
    mdsens("plot", str(OUT / "argon.h5"), "-o", str(OUT / "argon.png"), "--overwrite")
    mdsens("inspect", str(OUT / "argon.h5"))


if __name__ == "__main__":
    main()
