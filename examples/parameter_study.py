"""A parameter study: Ar fcc (32 atoms) under pressure, Lennard-Jones σ swept over 4 values.

Every point relaxes positions and cell at p = 2e-3 eV/Å³ (≈ 0.32 GPa) and computes exact
derivatives of the volume and the energy with respect to σ and ε. The results stream into
``parameter_study.h5`` (rerun: the finished study is resumed, nothing is recomputed). The
plot shows each observable against σ with the derivative at each point as a short tangent:
the tangents must follow the curve through the points.

Run: ``python examples/parameter_study.py [output.png]`` (about a minute on a laptop CPU).
"""

import sys
from pathlib import Path

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mdsens.md.potentials import get  # noqa: E402
from mdsens.studies import scan  # noqa: E402

jax.config.update("jax_enable_x64", True)

ROOT = Path(__file__).resolve().parents[1]
STUDY = Path("parameter_study.h5")


def main(png: str = "parameter_study.png") -> None:
    result = scan(
        ROOT / "data" / "ar_fcc_32.extxyz",
        get("lj", sigma=3.4, epsilon=0.0104),
        sweep={"sigma": np.linspace(3.3, 3.5, 4)},
        wrt=["sigma", "epsilon"],
        observables=["volume", "energy"],
        output=STUDY,
        relax_cell=True,
        pressure=2e-3,
        resume=STUDY.exists(),
        progress=lambda n, total, p, ok: print(f"point {p}: {'ok' if ok else 'FAILED'} "
                                               f"({n}/{total})"),
    )
    for p in np.flatnonzero(~result.converged):
        print(f"point {p} failed: {result.problems[p]}")

    sigma = result.parameters["sigma"]
    half = 0.3 * (sigma[1] - sigma[0])
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), layout="constrained")
    for ax, name in zip(axes, ["volume", "energy"]):
        v, d = result.values[name], result.derivatives[name]["sigma"]
        ax.plot(sigma, v, "o", color="C0", label="relaxed value")
        for s, y, slope in zip(sigma, v, d):
            ax.plot([s - half, s + half], [y - slope * half, y + slope * half], color="C3",
                    lw=2)
        ax.plot([], [], color="C3", lw=2, label="exact derivative")
        ax.set(xlabel="σ (Å)", ylabel=f"{name} ({result.units[name]})")
        ax.legend()
    fig.suptitle(f"LJ Ar fcc, N = 32, p = 2e-3 eV/Å³; wrote {STUDY}")
    fig.savefig(png, dpi=120)
    print(f"wrote {png}")


if __name__ == "__main__":
    main(*sys.argv[1:])
