r"""Figures of mdsens files for ``mdsens plot``: matplotlib :class:`~matplotlib.figure.Figure`
objects built without pyplot (no global state), one quantity per panel, units on every axis.

* :func:`result_figure` (a sensitivity result):

  - arrows of the **non-affine** response of the positions to one parameter component,
    ``D_na = dR/dp − (R G + b)`` (R: relaxed positions (N, d), Å; G (d, d): the homogeneous
    deformation per unit p, row-vector convention ``R → R (I + G δp)``; b: a translation).
    G is the applied strain's (``--wrt strain``), the cell's (``G = h⁻¹ dh/dp``, h the cell
    rows, when the file holds ``d cell / d p``), zero for a periodic system or slab in a
    fixed cell, and otherwise the least-squares fit of ``dR/dp ≈ R G + b``
    (:func:`split_affine`).
    Drawn in a projection (``xy``, ``xz``, ``yz``; ``auto``: the plane of the two
    largest components of ``D_na``), coloured by the out-of-plane component, with a scale
    key; atoms that would overlap in projection are thinned to one atomic layer;
  - the relative sensitivities ``(p/O) dO/dp`` of all scalar derivatives in one panel
    (dimensionless), each labelled with its absolute value and unit; values that are zero
    to the precision computed (:func:`mdsens.cli.inspect.judge`) listed as ``≈0``;
  - one panel per other derivative: a scalar whose relative value is undefined (p or O
    zero), a vector (Voigt components), a matrix (heatmap with values; eV/Å³ in GPa), and
    the elastic constants themselves (GPa).

* :func:`study_figure` (a study file): each scalar observable against a swept parameter,
  one series per structure and combination of the other swept values, the derivative at
  each point as a short tangent; a series constant to ``FLAT`` of its scale is drawn flat
  on a range of ±5 % of its value (no offset or scientific notation on the axes).

* :func:`save`: the format from the file name (``.png``, ``.pdf``, ``.svg``), written
  atomically.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from . import inspect as q

FORMATS = (".png", ".pdf", ".svg")
"""File name suffixes :func:`save` writes (the format follows the suffix)."""

NEGLIGIBLE = 1e-6
"""A non-affine response at most this fraction of the total (or of the natural scale
ℓ/|p|) is reported as zero instead of drawn."""

FLAT = 1e-6
"""A study series whose spread is at most this fraction of its scale is drawn flat."""

PANEL = (5.2, 4.2)
MIN_LAYERED = 50
"""Fewest atoms for which ``--layer auto`` may thin the arrow panel to one layer."""
"""Size of one panel, inches."""


class FigureError(ValueError):
    """The file has nothing that can be plotted with the options given."""


# ----------------------------------------------------------------------------- affine part
@dataclasses.dataclass(frozen=True)
class AffineSplit:
    """``dR/dp = R G + b + nonaffine``.

    Attributes:
      G: (d, d) homogeneous deformation per unit parameter (row-vector convention).
      b: (d,) translation per unit parameter.
      nonaffine: (N, d) the rest.
      method: ``"strain"``, ``"cell"``, ``"fixed cell"``, ``"fit"`` or ``"none"``.
    """

    G: np.ndarray
    b: np.ndarray
    nonaffine: np.ndarray
    method: str


def affine_fit(R: np.ndarray, D: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares ``(G, b)`` of ``D ≈ R G + b`` over the atoms (R, D: (N, d))."""
    A = np.hstack([R, np.ones((R.shape[0], 1))])
    coef, *_ = np.linalg.lstsq(A, D, rcond=None)
    return coef[:-1], coef[-1]


def split_affine(R: np.ndarray, D: np.ndarray, G: np.ndarray | None = None,
                 method: str = "fit") -> AffineSplit:
    """Split ``D = dR/dp`` (N, d) into ``R G + b`` and the non-affine rest.

    ``G`` given: only the translation ``b = mean(D − R G)`` is fitted; None: ``G`` and
    ``b`` by least squares (:func:`affine_fit`)."""
    R = np.asarray(R, float)
    D = np.asarray(D, float)
    if G is None:
        G, b = affine_fit(R, D)
    else:
        G = np.asarray(G, float)
        b = (D - R @ G).mean(axis=0)
    return AffineSplit(G, b, D - R @ G - b, method)


def voigt_strain(k: int, dim: int) -> np.ndarray:
    """``dη/dη_k``: the (d, d) strain of unit Voigt component ``k`` (engineering shears:
    off-diagonal entries 1/2), as :mod:`mdsens.md.strain`."""
    pairs = {2: ((0, 0), (1, 1), (0, 1)),
             3: ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))}[dim]
    i, j = pairs[k]
    E = np.zeros((dim, dim))
    if i == j:
        E[i, i] = 1.0
    else:
        E[i, j] = E[j, i] = 0.5
    return E


VOIGT = {2: ("xx", "yy", "xy"), 3: ("xx", "yy", "zz", "yz", "xz", "xy")}


# ----------------------------------------------------------------------------- options
@dataclasses.dataclass(frozen=True)
class ArrowOptions:
    """What the arrow panel shows.

    Attributes:
      param: ``--wrt`` parameter of the arrows (None: the first in the file).
      component: one component of an array parameter: a flat index or a label (``yz``
        for the strain, ``Ar-Kr`` for a per-pair table); None: the component with the
        largest non-affine response.
      projection: ``"auto"``, ``"xy"``, ``"xz"`` or ``"yz"``.
      layer: ``"auto"`` (one atomic layer along the projection axis when atoms overlap
        in projection), ``"all"``, or the layer's index (0 = lowest coordinate).
      arrows: ``"nonaffine"`` or ``"total"`` (dR/dp as it is).
      scale: arrow length in Å per unit of the derivative (None: automatic).
    """

    param: str | None = None
    component: str | None = None
    projection: str = "auto"
    layer: str = "auto"
    arrows: str = "nonaffine"
    scale: float | None = None


# ----------------------------------------------------------------------------- results
def result_figure(stored: Any, units: dict[str, dict[str, dict[str, str]]],
                  options: ArrowOptions = ArrowOptions(), title: str | None = None) -> Any:
    """The figure of a sensitivity result (:func:`mdsens.io.hdf5.read_result`; ``units``:
    :func:`mdsens.cli.inspect.derivative_units` of its file). Raises FigureError."""
    s = stored.sensitivity
    if stored.kind != "sensitivity" or not s.derivatives:
        raise FigureError("a relaxation result holds no derivatives; plot a sensitivity "
                          "result (mdsens sensitivity) or a study (mdsens scan)")
    if options.param is not None and options.param not in s.wrt:
        raise FigureError(f"--wrt {options.param!r} is not in the file; it has {list(s.wrt)}")
    info = q.summary(stored, units=units)
    rule = info["zero_rule"]
    scales = q.Scales(rule["energy_scale_eV"], rule["length_scale_A"])
    arrow = None
    per_atom = next((k for k in ("positions", "displacements") if k in s.derivatives), None)
    if per_atom is not None:
        arrow = _arrow_panel(stored, per_atom, units, options, scales)
    panels = [*_scalar_panels(stored, info, units), *_array_panels(stored, units)]
    if arrow is None and not panels:
        raise FigureError("nothing to plot: no per-atom, scalar or matrix derivatives")
    fig = _layout(arrow, panels)
    relax = info["relaxation"]
    fig.suptitle(title or (
        f"{stored.potential['name']}: {len(stored.symbols)} atoms, "
        f"{'converged' if s.converged else 'NOT converged'}"
        + (f", E = {relax['energy']:.6g} eV" if relax.get("energy") is not None else "")))
    return fig


def _layout(arrow: Any, panels: list[Any]) -> Any:
    """A figure with the arrow panel (if any) as a 2 × 2 block on the left and the other
    panels in two rows beside it (in rows of three without arrows); draws them all."""
    from matplotlib.figure import Figure

    w, h = PANEL
    if arrow is None:
        ncols = min(3, len(panels))
        nrows = math.ceil(len(panels) / ncols)
        fig = Figure(figsize=(w * ncols, h * nrows + 0.5), layout="constrained")
        for k, draw in enumerate(panels):
            draw(fig, fig.add_subplot(nrows, ncols, k + 1))
        return fig
    right = math.ceil(len(panels) / 2)
    fig = Figure(figsize=(w * (2 + right) * 0.8, 2 * h * 0.8 + 0.6), layout="constrained")
    grid = fig.add_gridspec(2, 2 + right)
    arrow(fig, fig.add_subplot(grid[:, :2]))
    for k, draw in enumerate(panels):
        cell = grid[:, 2] if len(panels) == 1 else grid[k % 2, 2 + k // 2]
        draw(fig, fig.add_subplot(cell))
    return fig


def _components(name: str, shape: tuple[int, ...], species: tuple[str, ...],
                dim: int) -> list[str]:
    """Labels of the components of a parameter of ``shape``."""
    if not shape:
        return [""]
    if name == "strain" and len(shape) == 1 and shape[0] == len(VOIGT.get(dim, ())):
        return list(VOIGT[dim])
    if len(shape) == 2 and len(species) == shape[0] == shape[1]:
        return [f"{a}-{b}" for a in species for b in species]
    return [",".join(map(str, idx)) for idx in np.ndindex(*shape)]


def _affine_for(stored: Any, param: str, k: int, R: np.ndarray, D: np.ndarray,
                arrows: str) -> AffineSplit:
    """The affine split of component ``k`` of ``dR/d param`` (see the module docstring)."""
    dim = R.shape[1]
    if arrows == "total":
        return AffineSplit(np.zeros((dim, dim)), np.zeros(dim), D, "none")
    s = stored.sensitivity
    periodic = all(stored.pbc)
    if param == "strain" and periodic:
        return split_affine(R, D, voigt_strain(k, dim), "strain")
    dcell = s.derivatives.get("cell", {}).get(param)
    if periodic and dcell is not None:
        dC = np.asarray(dcell, float).reshape(dim, dim, -1)[..., k]
        return split_affine(R, D, np.linalg.solve(np.asarray(stored.cell, float), dC), "cell")
    if any(stored.pbc) and stored.config.get("relax_cell") is False:
        # a fixed cell (also of a slab: its free direction's response stays in view)
        return split_affine(R, D, np.zeros((dim, dim)), "fixed cell")
    return split_affine(R, D, None, "fit")


_METHOD_TEXT = {
    "strain": "applied strain removed",
    "cell": "cell deformation removed",
    "fixed cell": "fixed cell",
    "fit": "fitted homogeneous deformation removed",
    "none": "total response",
}


def _arrow_panel(stored: Any, per_atom: str, units: dict, options: ArrowOptions,
                 scales: Any) -> Any:
    """The arrow panel's drawing function (validates the options first)."""
    s = stored.sensitivity
    param = options.param or next(p for p in s.wrt if p in s.derivatives[per_atom])
    R = np.asarray(stored.positions, float)
    n, dim = R.shape
    full = np.asarray(s.derivatives[per_atom][param], float)
    pshape = tuple(full.shape[2:])
    Ds = full.reshape(n, dim, -1)
    labels = _components(param, pshape, tuple(stored.potential.get("species") or ()), dim)
    splits = [_affine_for(stored, param, k, R, Ds[..., k], options.arrows)
              for k in range(Ds.shape[-1])]
    k = _component_index(options.component, labels, splits, param)
    split, D = splits[k], Ds[..., k]
    unit_info = units.get(per_atom, {}).get(param, {})
    unit = q.derivative_unit_text(unit_info) if unit_info else ""
    p_value = q.parameter_value(stored.potential, stored.config, param)
    p_scale = abs(p_value) if p_value else scales.of(unit_info.get("parameter_unit", ""))
    reference = max(float(np.abs(D).max()), scales.length / p_scale)
    V = split.nonaffine
    negligible = float(np.abs(V).max()) <= NEGLIGIBLE * reference
    i, j, normal = _projection(R, V, options.projection, negligible)
    layer = "all" if negligible and options.layer == "auto" else options.layer
    mask, layer_text = _layer(R, V, i, j, normal, layer, scales.length)
    label = param + (f"[{labels[k]}]" if pshape else "")
    what = "non-affine " if options.arrows == "nonaffine" else ""

    def draw(fig: Any, ax: Any) -> None:
        P = R[mask][:, [i, j]]
        if any(stored.pbc) and dim == 3:
            _cell_outline(ax, np.asarray(stored.cell, float), i, j)
        out = None if negligible or normal is None else V[mask][:, normal]
        if out is not None and np.abs(out).max() <= NEGLIGIBLE * np.abs(V).max():
            out = None  # no out-of-plane motion in this view: grey atoms
        _atoms(fig, ax, P, np.asarray(stored.symbols)[mask], out,
               f"out of plane: d{'xyz'[normal or 0]}/d {label}" + (f" ({unit})" if unit
                                                                  else ""))
        ax.set_aspect("equal")
        ax.set_xlabel(f"{'xyz'[i]} (Å)")
        ax.set_ylabel(f"{'xyz'[j]} (Å)")
        ax.set_title(f"{what}d {per_atom} / d {label}\n({_METHOD_TEXT[split.method]})"
                     + (f"\n{layer_text}" if layer_text else ""), fontsize="medium")
        tips = P
        if negligible:
            ax.text(0.5, 0.5, f"non-affine response ≈ 0\n(max {np.abs(V).max():.2g} {unit}, "
                    f"≤ {NEGLIGIBLE:g} of the response)", transform=ax.transAxes,
                    ha="center", va="center", fontsize="small",
                    bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "0.6"})
        else:
            tips = _arrows(ax, P, V[mask][:, [i, j]], options.scale, scales.length, unit)
        if split.method in ("cell", "fit", "strain") and options.arrows == "nonaffine":
            ax.text(0.0, -0.08, _g_text(split.G, unit_info), transform=ax.transAxes,
                    fontsize="x-small", family="monospace", va="top")
        _set_limits(ax, np.vstack([P, tips]))

    return draw


def _component_index(component: str | None, labels: list[str], splits: list[AffineSplit],
                     param: str) -> int:
    if component is None:
        return int(np.argmax([np.linalg.norm(sp.nonaffine) for sp in splits]))
    if component in labels:
        return labels.index(component)
    try:
        k = int(component)
    except ValueError:
        k = -1
    if not 0 <= k < len(labels):
        raise FigureError(f"--component {component!r}: {param} has components "
                          f"{', '.join(labels) if len(labels) <= 12 else len(labels)}"
                          " (a label or an index from 0)")
    return k


def _projection(R: np.ndarray, V: np.ndarray, requested: str, negligible: bool
                ) -> tuple[int, int, int | None]:
    """``(i, j, normal)``: the axes drawn and the one projected out (None in 2D)."""
    dim = R.shape[1]
    if dim == 2:
        return 0, 1, None
    if requested != "auto":
        i, j = ("xyz".index(requested[0]), "xyz".index(requested[1]))
        return i, j, 3 - i - j
    rms = np.sqrt(np.mean(V ** 2, axis=0))
    spread = np.ptp(R, axis=0)
    if negligible or not rms.max() > 0:
        normal = int(np.argmin(spread))
    else:  # drop the axis with the least non-affine motion (ties: the thinnest axis)
        normal = int(np.lexsort((spread, np.round(rms / rms.max(), 3)))[0])
    i, j = [a for a in range(3) if a != normal]
    return i, j, normal


def _layer(R: np.ndarray, V: np.ndarray, i: int, j: int, normal: int | None, layer: str,
           length: float) -> tuple[np.ndarray, str]:
    """Atoms shown: all, or one atomic layer along ``normal`` (``layer``: ``"all"``, an
    index, or ``"auto"``: one layer when more than 10 % of the atoms would overlap in
    projection, the layer with the largest in-plane non-affine motion)."""
    n = R.shape[0]
    everything = np.ones(n, bool)
    if normal is None or layer == "all":
        return everything, ""
    z = R[:, normal]
    order = np.argsort(z)
    breaks = np.flatnonzero(np.diff(z[order]) > 0.35 * length)
    groups = np.split(order, breaks + 1)
    if len(groups) < 2:
        if layer not in ("auto", "0"):
            raise FigureError(f"--layer {layer}: there is one layer along "
                              f"{'xyz'[normal]}")
        return everything, ""
    if layer == "auto":
        if n < MIN_LAYERED or not _overlapping(R[:, [i, j]], 0.3 * length):
            return everything, ""
        motion = [float(np.linalg.norm(V[g][:, [i, j]], axis=1).max()) for g in groups]
        index = int(np.argmax(motion))
    else:
        try:
            index = int(layer)
        except ValueError:
            raise FigureError(f"--layer {layer!r}: 'auto', 'all' or an index") from None
        if not 0 <= index < len(groups):
            raise FigureError(f"--layer {layer}: there are {len(groups)} layers along "
                              f"{'xyz'[normal]} (0 to {len(groups) - 1})")
    g = groups[index]
    mask = np.zeros(n, bool)
    mask[g] = True
    axis = "xyz"[normal]
    lo, hi = f"{z[g].min():.3g}", f"{z[g].max():.3g}"
    where = lo if lo == hi else f"{lo}–{hi}"
    return mask, f"layer {index} of {len(groups)}: {axis} = {where} Å, {len(g)} of {n} atoms"


def _overlapping(P: np.ndarray, radius: float) -> bool:
    """More than 10 % of the projected points have another within ``radius``."""
    from scipy.spatial import cKDTree

    if len(P) < 2:
        return False
    dist, _ = cKDTree(P).query(P, k=2)
    return bool(np.mean(dist[:, 1] < radius) > 0.1)


def _nice(x: float) -> float:
    """The largest 1, 2 or 5 × 10^k not above ``x`` (> 0)."""
    e = math.floor(math.log10(x))
    for m in (5, 2, 1):
        if m * 10.0 ** e <= x:
            return m * 10.0 ** e
    return 10.0 ** e


MARKERS = ("o", "s", "^", "D", "v", "p", "h", "*")
"""Marker of each species (in sorted order) in the arrow panel."""


def _atoms(fig: Any, ax: Any, P: np.ndarray, symbols: np.ndarray, out: np.ndarray | None,
           out_label: str) -> None:
    """The atoms, one marker per species, filled by the out-of-plane component ``out``
    (a diverging colour scale with its colour bar) when it is not negligible, else grey."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    lim = float(np.abs(out).max()) if out is not None and out.size else 0.0
    coloured = out is not None and lim > 0
    norm = Normalize(-lim, lim) if coloured else None
    size = float(np.clip(3000.0 / max(len(P), 1) ** 0.9, 8.0, 250.0))
    species = sorted(set(symbols.tolist()))
    for k, sp in enumerate(species):
        sel = symbols == sp
        colour = out[sel] if coloured else "0.85"
        ax.scatter(P[sel, 0], P[sel, 1], s=size, marker=MARKERS[k % len(MARKERS)],
                   c=colour, cmap="coolwarm" if coloured else None, norm=norm,
                   edgecolors="0.3", linewidths=0.5, zorder=1, label=sp)
    if coloured:
        bar = fig.colorbar(ScalarMappable(norm, "coolwarm"), ax=ax, shrink=0.7, pad=0.02)
        bar.set_label(out_label, fontsize="small")
        bar.formatter.set_useOffset(False)
    if len(species) > 1:
        ax.legend(loc="upper left", fontsize="small", framealpha=0.85)


def _arrows(ax: Any, P: np.ndarray, inplane: np.ndarray, scale: float | None, length: float,
            unit: str) -> np.ndarray:
    """Black arrows of the in-plane components and a scale key below the panel (the key's
    length is a round value near the longest arrow); returns the arrow tips."""
    m = float(np.linalg.norm(inplane, axis=1).max()) if len(inplane) else 0.0
    k = scale if scale is not None else (0.6 * length / m if m > 0 else 1.0)
    shown = np.linalg.norm(inplane, axis=1) > 0.01 * m  # shorter ones would be dots
    qv = ax.quiver(P[shown, 0], P[shown, 1], inplane[shown, 0], inplane[shown, 1],
                   angles="xy",
                   scale_units="xy", scale=1.0 / k, width=0.004, color="k", zorder=3)
    if m > 0:
        key = _nice(m)
        ax.quiverkey(qv, 0.97, -0.12, key, f"arrow: {key:g} {unit}".strip(), labelpos="W",
                     coordinates="axes", fontproperties={"size": "small"})
    return P + k * inplane


def _set_limits(ax: Any, points: np.ndarray) -> None:
    """Axis limits around ``points`` (M, 2) with a 6 % margin."""
    lo, hi = points.min(axis=0), points.max(axis=0)
    pad = 0.06 * max(float((hi - lo).max()), 1.0)
    ax.set_xlim(lo[0] - pad, hi[0] + pad)
    ax.set_ylim(lo[1] - pad, hi[1] + pad)


def _cell_outline(ax: Any, cell: np.ndarray, i: int, j: int) -> None:
    """The 12 edges of the cell, projected."""
    corners = {c: np.array(c, float) @ cell for c in np.ndindex(2, 2, 2)}
    for c, x in corners.items():
        for axis in range(3):
            if c[axis] == 0:
                other = tuple(1 if a == axis else c[a] for a in range(3))
                y = corners[other]
                ax.plot([x[i], y[i]], [x[j], y[j]], color="0.75", lw=0.6, ls="--",
                        zorder=0)


def _g_text(G: np.ndarray, unit_info: dict[str, str]) -> str:
    """The homogeneous deformation removed, per unit parameter."""
    p = q.human_unit(unit_info.get("parameter_unit", "")) if unit_info else ""
    unit = "" if p in ("", "1") else f" (1/{p})"
    cells = q.fixed(G)
    w = max(len(c) for c in cells)
    d = G.shape[0]
    rows = [" ".join(f"{c:>{w}}" for c in cells[r * d:(r + 1) * d]) for r in range(d)]
    return f"G removed{unit}:\n" + "\n".join(f"[{r}]" for r in rows)


# ----------------------------------------------------------------------------- scalars
def _scalar_panels(stored: Any, info: dict[str, Any], units: dict) -> list[Any]:
    """The relative-sensitivity panel and one panel per scalar derivative without one."""
    rel, absolute, zero = [], [], []
    for obs, per in info["derivatives"].items():
        for p, e in per.items():
            if e["shape"]:
                continue
            if e["zero"]:
                zero.append((f"d {obs} / d {p}\n{q.ZERO_TEXT[e['zero']]}", 0.0, True))
            elif e["relative"] is not None:
                rel.append((f"d {obs} / d {p}\n= {e['value']:.6g} {e['unit_text']}",
                            e["relative"], False))
            else:
                absolute.append((obs, p, e))
    panels: list[Any] = []
    if rel:
        panels.append(_relative_panel(rel + zero))
    elif zero:
        panels.append(lambda fig, ax: _note(ax, "\n".join(r[0].replace("\n", " ")
                                                          for r in zero)))
    for obs, p, e in absolute:
        panels.append(_single_panel(obs, p, e))
    return panels


def _relative_panel(rows: list[tuple[str, float, bool]]) -> Any:
    """Bars of ``(label, relative sensitivity, zero)``; a zero row has no bar."""
    from matplotlib.ticker import MaxNLocator

    def draw(fig: Any, ax: Any) -> None:
        y = np.arange(len(rows))[::-1]
        values = np.array([r[1] for r in rows])
        ax.barh(y, values, color="tab:blue", height=0.6)
        ax.set_yticks(y, [r[0] for r in rows], fontsize="small")
        ax.axvline(0, color="k", lw=0.6)
        top = float(np.abs(values).max()) or 1.0
        ax.set_xlim(-1.25 * top if values.min() < 0 else -0.05 * top,
                    1.25 * top if values.max() > 0 else 0.05 * top)
        for yy, v, r in zip(y, values, rows):
            ax.text(v, yy, " ≈0" if r[2] else f" {v:.4g} ", va="center",
                    ha="left" if v >= 0 else "right", fontsize="small")
        ax.set_ylim(len(rows) - max(len(rows), 4) - 0.2, len(rows) - 0.4)  # thin bars
        ax.xaxis.set_major_locator(MaxNLocator(5))
        ax.set_xlabel("(p / O) dO/dp  (dimensionless)")
        ax.set_title("relative sensitivity d ln O / d ln p", fontsize="medium")
        ax.xaxis.get_major_formatter().set_useOffset(False)

    return draw


def _single_panel(obs: str, p: str, e: dict[str, Any]) -> Any:
    """One scalar derivative (its relative value undefined): a bar with its value."""
    from matplotlib.ticker import MaxNLocator

    def draw(fig: Any, ax: Any) -> None:
        v = e["value"]
        ax.barh([0], [v], color="tab:blue", height=0.5)
        ax.axvline(0, color="k", lw=0.6)
        ax.set_yticks([0], [f"d {obs}\n/ d {p}"])
        top = abs(v) or 1.0
        ax.set_xlim(-1.4 * top if v < 0 else -0.1 * top, 1.4 * top if v > 0 else 0.1 * top)
        extra = (f"\n= {e['value_GPa']:.4g} {e['unit_GPa']}" if "value_GPa" in e else "")
        ax.text(v, 0, f" {v:.4g} {e['unit_text']}{extra} ", va="center",
                ha="left" if v >= 0 else "right", fontsize="small")
        ax.set_ylim(-1.5, 1.5)
        ax.xaxis.set_major_locator(MaxNLocator(5))
        ax.set_xlabel(f"d {obs} / d {p} ({e['unit_text']})")
        ax.set_title(f"d {obs} / d {p}", fontsize="medium")
        ax.ticklabel_format(axis="x", useOffset=False)

    return draw


def _note(ax: Any, text: str) -> None:
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes,
            fontsize="small")


# ----------------------------------------------------------------------------- arrays
def _array_panels(stored: Any, units: dict) -> list[Any]:
    """Heatmaps (matrices) and bars (vectors) of the values and derivatives that are
    neither per atom nor scalar; eV/Å³ shown in GPa."""
    s = stored.sensitivity
    n = len(stored.symbols)
    dim = np.shape(stored.positions)[1]
    panels: list[Any] = []
    C = s.values.get("elastic_constants")
    if C is not None and np.ndim(C) == 2:
        panels.append(_matrix_panel(np.asarray(C, float), "elastic constants C",
                                    s.units.get("elastic_constants", ""),
                                    (VOIGT.get(dim), VOIGT.get(dim))))
    for obs, per in s.derivatives.items():
        for p, d in per.items():
            d = np.asarray(d, float)
            if d.ndim == 0 or (obs in ("positions", "displacements") and d.shape[0] == n):
                continue
            u = units.get(obs, {}).get(p, {})
            unit = u.get("unit", "")
            labels = VOIGT.get(dim) if d.shape[0] == len(VOIGT.get(dim, ())) and obs in (
                "stress", "elastic_constants") or p == "strain" else None
            title = f"d {obs} / d {p}"
            if d.ndim == 1 and "," not in unit:
                panels.append(_vector_panel(d, title, unit, u, labels))
            elif d.ndim == 2 and "," not in unit:
                axes = (("a", "b", "c")[:dim], ("x", "y", "z")[:dim]) if obs == "cell" else (
                    labels, labels)
                panels.append(_matrix_panel(d, title, unit, axes, u))
    return panels


def _in_gpa(values: np.ndarray, unit: str, u: dict[str, str] | None
            ) -> tuple[np.ndarray, str]:
    """Values in eV/Å³ (or a derivative of such) in GPa, else as they are, with the unit
    for people."""
    obs_unit = (u or {}).get("observable_unit", unit)
    if q.is_pressure(obs_unit):
        gpa = q.gpa_per_ev_per_a3()
        if u:
            return values * gpa, q._gpa_unit(u.get("parameter_unit", ""))
        return values * gpa, "GPa"
    return values, (q.derivative_unit_text(u) if u else q.human_unit(unit))


def _vector_panel(d: np.ndarray, title: str, unit: str, u: dict[str, str],
                  labels: tuple[str, ...] | None) -> Any:
    def draw(fig: Any, ax: Any) -> None:
        values, shown = _in_gpa(d, unit, u)
        x = np.arange(len(values))
        ax.bar(x, values, color="tab:blue")
        ax.axhline(0, color="k", lw=0.6)
        ax.set_xticks(x, list(labels) if labels and len(labels) == len(x) else
                      [str(k) for k in x])
        for xx, v, t in zip(x, values, q.fixed(values, 4)):
            ax.text(xx, v, t, ha="center", va="bottom" if v >= 0 else "top",
                    fontsize="x-small")
        ax.set_ylabel(f"{title} ({shown})")
        ax.set_title(title, fontsize="medium")
        ax.ticklabel_format(axis="y", useOffset=False)

    return draw


def _matrix_panel(m: np.ndarray, title: str, unit: str, labels: tuple[Any, Any],
                  u: dict[str, str] | None = None) -> Any:
    """A heatmap with the values written in (``labels``: of rows and columns, or None)."""
    def draw(fig: Any, ax: Any) -> None:
        values, shown = _in_gpa(m, unit, u)
        lim = float(np.abs(values).max()) or 1.0
        im = ax.imshow(values, cmap="coolwarm", vmin=-lim, vmax=lim)
        texts = q.fixed(values, 4)
        rows, cols = values.shape
        for a in range(rows):
            for b in range(cols):
                ax.text(b, a, texts[a * cols + b], ha="center", va="center",
                        fontsize="xx-small" if cols > 4 else "small")
        ticks_r = labels[0] if labels[0] and len(labels[0]) == rows else [
            str(k + 1) for k in range(rows)]
        ticks_c = labels[1] if labels[1] and len(labels[1]) == cols else [
            str(k + 1) for k in range(cols)]
        ax.set_xticks(range(cols), ticks_c)
        ax.set_yticks(range(rows), ticks_r)
        bar = fig.colorbar(im, ax=ax, shrink=0.8)
        bar.set_label(shown, fontsize="small")
        bar.formatter.set_useOffset(False)
        ax.set_title(f"{title} ({shown})", fontsize="medium")

    return draw


# ----------------------------------------------------------------------------- studies
def study_figure(study: Any, units: dict[str, dict[str, dict[str, str]]],
                 x_name: str | None = None, scales: Any = None) -> Any:
    """The figure of a study file (:func:`mdsens.studies.read`): each scalar observable
    against swept parameter ``x_name`` (default the first swept). ``units``:
    :func:`mdsens.cli.inspect.derivative_units` of the file; ``scales``: its
    :class:`~mdsens.cli.inspect.Scales` (natural magnitudes for flat series)."""
    from matplotlib.figure import Figure

    names = list(study.parameters)
    x_name = x_name or names[0]
    if x_name not in study.parameters:
        raise FigureError(f"--wrt {x_name!r} is not swept in {study.path}; swept: {names}")
    scalars = [k for k, v in study.values.items() if v.ndim == 1]
    if not scalars:
        raise FigureError(f"{study.path}: no scalar observable to plot")
    scales = scales or q.Scales()
    pot_name = study.definition.get("potential", {}).get("name", "")
    x_unit = q._param_unit(pot_name, x_name)
    x = study.parameters[x_name]
    others = [n for n in names if n != x_name]
    keys = [(int(study.structure_index[p]), *(float(study.parameters[n][p]) for n in others))
            for p in range(x.size)]
    series = sorted(set(keys))
    xs = np.unique(x)
    half = 0.3 * (np.diff(xs).min() if xs.size > 1 else max(abs(xs[0]) * 0.05, 1.0))
    fig = Figure(figsize=(PANEL[0] * len(scalars), PANEL[1] + 0.4), layout="constrained")
    for k, name in enumerate(scalars):
        ax = fig.add_subplot(1, len(scalars), k + 1)
        unit = study.units.get(name, "")
        deriv = study.derivatives.get(name, {}).get(x_name)
        y_all = study.values[name][study.done & np.isfinite(study.values[name])]
        for c, key in enumerate(series):
            sel = np.array([kk == key for kk in keys]) & study.done
            label = study.structures[key[0]] if len(study.structures) > 1 else ""
            label += "".join(f" {n}={v:g}" for n, v in zip(others, key[1:]))
            order = np.argsort(x[sel])
            ax.plot(x[sel][order], study.values[name][sel][order], "o-", color=f"C{c}",
                    lw=0.8, ms=5, label=label.strip() or None)
            bad = sel & ~study.converged
            ax.plot(x[bad], study.values[name][bad], "x", color="k", ms=9)
            if deriv is not None and deriv.ndim == 1:
                for s_, y, d in zip(x[sel], study.values[name][sel], deriv[sel]):
                    ax.plot([s_ - half, s_ + half], [y - d * half, y + d * half],
                            color=f"C{c}", lw=2.0, alpha=0.45)
        _y_range(ax, y_all, max(scales.of(unit), 0.0), q.human_unit(unit))
        ax.set_xlabel(f"{x_name} ({x_unit})" if x_unit not in ("", "1") else x_name)
        ax.set_ylabel(f"{name} ({q.human_unit(unit)})" if unit not in ("", "1") else name)
        ax.set_title(f"{name} vs {x_name}" + (", tangent: d/d " + x_name
                                              if deriv is not None else ""),
                     fontsize="medium")
        ax.ticklabel_format(useOffset=False)
        if q.is_pressure(unit):
            gpa = q.gpa_per_ev_per_a3()
            sec = ax.secondary_yaxis("right", functions=(lambda v, f=gpa: v * f,
                                                         lambda v, f=gpa: v / f))
            sec.set_ylabel("GPa")
            sec.ticklabel_format(useOffset=False)
    if len(series) > 1:  # the same series in every panel: one legend below them
        handles, labels = fig.axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", fontsize="small",
                   ncols=min(len(labels), 6))
    fig.suptitle(f"{study.path.name}: {int(study.done.sum())}/{study.done.size} points done, "
                 f"{int((study.done & ~study.converged).sum())} failed (x)")
    return fig


def _y_range(ax: Any, y: np.ndarray, natural: float, unit: str) -> None:
    """A series constant to ``FLAT`` of its scale (max of its magnitude and ``natural``)
    is shown flat on ±5 % of that scale around its mean, with a note of its spread."""
    if not y.size:
        return
    top = float(np.abs(y).max())
    scale = max(top, natural)
    spread = float(np.ptp(y))
    if scale == 0 or spread > FLAT * scale:
        return
    centre = float(y.mean())
    half = 0.05 * (abs(centre) if abs(centre) > FLAT * scale else scale)
    ax.set_ylim(centre - half, centre + half)
    ax.text(0.02, 0.97, f"constant: spread {spread:.2g} {unit} ≤ {FLAT:g} × its scale",
            transform=ax.transAxes, fontsize="x-small", va="top")


# ----------------------------------------------------------------------------- saving
def check_name(path: Path) -> None:
    """Raise FigureError unless ``path`` ends in a suffix of :data:`FORMATS`."""
    if path.suffix.lower() not in FORMATS:
        raise FigureError(f"{path}: the figure format comes from the name; use -o *.png, "
                          "*.pdf or *.svg")


def save(fig: Any, path: Path, dpi: int = 110) -> None:
    """Write ``fig`` in the format of ``path``'s suffix (:data:`FORMATS`), atomically: a
    temporary file next to it, then renamed (a failed write leaves nothing)."""
    check_name(path)
    fmt = path.suffix.lower()[1:]
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")
    try:
        fig.savefig(tmp, dpi=dpi, format=fmt)
        tmp.replace(path)
    finally:
        if tmp.exists():
            tmp.unlink()
