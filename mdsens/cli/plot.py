"""``mdsens plot``: per-atom sensitivity arrows and a bar chart of scalar derivatives."""

from __future__ import annotations

from pathlib import Path

import click

from . import _common as c


@click.command("plot")
@click.argument("result", type=click.Path(path_type=Path))
@click.option("--wrt", "param", default=None, metavar="NAME",
              help="Parameter for the arrows (default: the first one).")
@click.option("--scale", type=float, default=None,
              help="Arrow length per unit derivative (default: automatic).")
@c.output_options
def plot_cmd(result: Path, param, scale, output: Path, overwrite: bool, quiet: bool) -> None:
    """Plot RESULT to OUTPUT (PNG): arrows of d positions / d parameter on the relaxed
    structure (xy projection for 3D), and a bar chart of the scalar derivatives. For a
    study file (mdsens scan): each scalar observable against the swept parameter (--wrt),
    with the derivative at each point as a short tangent.

    \b
    Example:
      mdsens plot out.h5 -o out.png
    """
    import numpy as np

    from ..io.errors import InputError
    from ..io.hdf5 import read_result

    c.check_output(output, overwrite, kind="png")
    from ..studies import is_study

    if is_study(result):  # a parameter study (mdsens scan): values vs the swept parameter
        from .scan import plot_study

        return plot_study(result, param, output, quiet)
    try:
        stored = read_result(result)
    except InputError as exc:
        raise c.BadInput(str(exc)) from None
    s = stored.sensitivity
    if param is not None and param not in s.wrt:
        raise c.BadInput(f"--wrt {param!r} not in the file; it has {list(s.wrt)}")
    per_atom = next((k for k in ("positions", "displacements") if k in s.derivatives), None)
    scalars = [(o, p, float(np.asarray(v))) for o, per in s.derivatives.items()
               for p, v in per.items() if np.ndim(v) == 0]
    if per_atom is None and not scalars:
        raise c.BadInput(f"{result}: nothing to plot (no positions or scalar derivatives)")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = int(per_atom is not None) + int(bool(scalars))
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 5), squeeze=False)
    ax_iter = iter(axes[0])
    if per_atom is not None:
        p = param or s.wrt[0]
        d = np.asarray(s.derivatives[per_atom][p])
        if d.ndim != 2:  # a per-pair/array parameter: show the first component
            d = d.reshape(d.shape[0], d.shape[1], -1)[..., 0]
        R = np.asarray(stored.positions)
        ax = next(ax_iter)
        ax.scatter(R[:, 0], R[:, 1], s=40, c="lightgray", edgecolors="k", zorder=1)
        norm = np.abs(d[:, :2]).max() or 1.0
        span = np.ptp(R[:, :2], axis=0).max() or 1.0
        k = scale if scale is not None else 0.08 * span / norm
        ax.quiver(R[:, 0], R[:, 1], k * d[:, 0], k * d[:, 1], angles="xy", scale_units="xy",
                  scale=1.0, color="tab:red", zorder=2)
        tips = R[:, :2] + k * d[:, :2]  # keep arrows inside the axes
        lo = np.minimum(R[:, :2].min(0), tips.min(0)) - 0.05 * span
        hi = np.maximum(R[:, :2].max(0), tips.max(0)) + 0.05 * span
        ax.set_xlim(lo[0], hi[0])
        ax.set_ylim(lo[1], hi[1])
        ax.set_aspect("equal")
        ax.set_xlabel("x (Å)")
        ax.set_ylabel("y (Å)")
        proj = " (xy projection)" if R.shape[1] == 3 else ""
        ax.set_title(f"d {per_atom} / d {p}{proj}")
    if scalars:
        ax = next(ax_iter)
        labels = [f"d {o}/d {p}" for o, p, _ in scalars]
        ax.barh(range(len(scalars)), [v for *_, v in scalars], color="tab:blue")
        ax.set_yticks(range(len(scalars)), labels)
        ax.axvline(0, color="k", lw=0.5)
        ax.set_title("scalar derivatives")
    fig.suptitle(f"{stored.potential['name']}: {len(stored.symbols)} atoms, "
                 f"converged={s.converged}")
    fig.tight_layout()
    c.save_png(fig, output, quiet)
