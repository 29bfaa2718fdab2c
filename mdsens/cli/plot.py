"""``mdsens plot``: figures of a sensitivity result or a study file (see ``_figures``)."""

from __future__ import annotations

from pathlib import Path

import click

from . import _common as c


@click.command("plot")
@click.argument("path", metavar="FILE", type=click.Path(path_type=Path))
@click.option("--wrt", "param", default=None, metavar="NAME",
              help="Parameter of the arrows (default: the first); for a study, the swept "
                   "parameter on the x axis.")
@click.option("--component", default=None, metavar="C",
              help="Component of an array parameter for the arrows: a label (strain: xx, "
                   "yz, ...; per-pair table: Ar-Kr) or an index (default: the component "
                   "with the largest non-affine response).")
@click.option("--projection", type=click.Choice(["auto", "xy", "xz", "yz"]), default="auto",
              show_default=True,
              help="Plane of the arrows; auto: the two axes of largest non-affine motion.")
@click.option("--layer", default="auto", show_default=True, metavar="auto|all|K",
              help="Atoms drawn: one atomic layer along the projected-out axis when atoms "
                   "overlap in projection (auto), all, or layer K (0 = lowest).")
@click.option("--arrows", type=click.Choice(["nonaffine", "total"]), default="nonaffine",
              show_default=True,
              help="Draw d positions / d NAME minus its homogeneous (affine) part, or all "
                   "of it.")
@click.option("--scale", type=float, default=None,
              help="Arrow length in Å per unit of the derivative (default: automatic; the "
                   "key in the corner gives the scale).")
@c.output_options
def plot_cmd(path: Path, param: str | None, component: str | None, projection: str,
             layer: str, arrows: str, scale: float | None, output: Path, overwrite: bool,
             quiet: bool, verbose: bool = False) -> None:
    """Plot a result or study FILE to OUTPUT (.png, .pdf or .svg).

    The format follows OUTPUT's name. A sensitivity result: arrows of the non-affine
    response d positions / d NAME (the homogeneous deformation of the cell, of the
    applied strain or a least-squares fit removed) in a projection, atoms coloured by
    the out-of-plane component, with a scale key; the relative sensitivities (p/O) dO/dp
    of the scalar derivatives with their values and units; matrices (elastic constants
    and their derivatives, in GPa) as heatmaps.

    A study file (mdsens scan): each scalar observable against the swept parameter
    (--wrt), the derivative at each point as a short tangent.

    \b
    Examples:
      mdsens plot out.h5 -o out.png
      mdsens plot slab.h5 --projection xz -o slab.pdf
      mdsens plot study.h5 --wrt sigma -o study.svg
    """
    from ._figures import FigureError, check_name

    try:
        check_name(output)
    except FigureError as exc:
        raise c.BadInput(str(exc)) from None
    c.check_output(output, overwrite)
    if scale is not None and not scale > 0:
        raise c.BadInput(f"--scale must be positive, got {scale}")
    if layer not in ("auto", "all") and not layer.lstrip("-").isdigit():
        raise c.BadInput(f"--layer {layer!r}: 'auto', 'all' or a layer index")
    from .inspect import _kind

    kind = _kind(path)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise c.BadInput("mdsens plot needs matplotlib: pip install 'mdsens[plot]'") from None
    from . import _figures as figures
    from .inspect import derivative_units

    try:
        if kind == "study":
            fig = _study(path, param)
        else:
            from ..io.errors import InputError
            from ..io.hdf5 import read_result

            try:
                stored = read_result(path)
            except InputError as exc:
                raise c.BadInput(str(exc)) from None
            options = figures.ArrowOptions(param=param, component=component,
                                           projection=projection, layer=layer,
                                           arrows=arrows, scale=scale)
            fig = figures.result_figure(stored, derivative_units(path), options)
    except FigureError as exc:
        raise c.BadInput(str(exc)) from None
    figures.save(fig, output)
    if not quiet:
        click.echo(f"wrote {output}")


def _study(path: Path, param: str | None) -> object:
    """The figure of study file ``path`` (x axis: swept parameter ``param``)."""
    from ..studies import read
    from ._figures import study_figure
    from .inspect import _study_scales, derivative_units

    study = read(path)
    return study_figure(study, derivative_units(path), param, _study_scales(path, study))


def plot_study(path: Path, param: str | None, output: Path, quiet: bool) -> None:
    """Write the figure of study file ``path`` to ``output`` (``mdsens plot STUDY.h5``)."""
    from ._figures import FigureError, save

    try:
        fig = _study(path, param)
    except FigureError as exc:
        raise c.BadInput(str(exc)) from None
    save(fig, output)
    if not quiet:
        click.echo(f"wrote {output}")
