"""``mdsens scan``: a parameter sweep over structures, streamed into one resumable HDF5 file."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from ..md import catalog
from . import _common as c


@click.command("scan")
@click.argument("structures", nargs=-1, required=True, type=click.Path(path_type=Path))
@c.format_option
@click.option("--index", default=None, metavar="INDEX",
              help="Frames of each STRUCTURE, ASE syntax: 0, -1, 2:5, : (several frames "
                   "become several structures, labelled FILE@K; default: the last "
                   "frame).")
@c.potential_option
@c.param_option
@c.potential_file_option
@c.relax_cell_option
@c.pressure_option
@c.fmax_option
@c.max_steps_option
@c.method_option
@click.option("--sweep", "sweeps", multiple=True, required=True, metavar="NAME=SPEC",
              help="Swept parameter; repeatable (grid = cartesian product). SPEC is "
                   "START:STOP:COUNT (evenly spaced, ends included) or V1,V2,...; NAME may "
                   "be 'sigma[Ar,Kr]'.")
@click.option("--wrt", multiple=True, required=True, metavar="NAME",
              help="Parameter to differentiate with respect to; repeatable.")
@click.option("--observable", "observables", multiple=True, required=True, metavar="NAME",
              help="Observable to differentiate; repeatable (energy, volume, ...).")
@click.option("--mode", type=click.Choice(["auto", "forward", "reverse"]), default="auto",
              show_default=True, help="Forward (JVP) or reverse (VJP) differentiation.")
@c.output_option
@click.option("--resume", is_flag=True,
              help="Continue OUTPUT (same study definition): compute only unfinished points.")
@c.overwrite_option
@click.option("--workers", type=int, default=None, metavar="N",
              help="Compute on a local Dask cluster of N processes (needs "
                   "pip install 'mdsens[dask]').")
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="Compute on the running Dask cluster at ADDRESS (tcp://host:8786).")
@click.option("--scheduler-file", default=None, type=click.Path(path_type=Path),
              metavar="FILE",
              help="Compute on the running Dask cluster whose scheduler wrote FILE "
                   "(dask scheduler --scheduler-file FILE, dask-mpi).")
@click.option("--cluster", "cluster_spec", default=None, type=click.Path(path_type=Path),
              metavar="SPEC.yaml",
              help="Start the Dask cluster of SPEC.yaml for this run (dask-jobqueue: "
                   "class: slurm, pbs, ...; or class: local) and close it after; see "
                   "docs/studies.md. --workers, --scheduler, --scheduler-file and --cluster "
                   "exclude each other.")
@click.option("--batch", type=int, default=1, show_default=True, metavar="K",
              help="Relax K consecutive points of a structure at once (vmap); each point's "
                   "sensitivities still run one after another. Ignored with Dask.")
@c.quiet_option
def scan_cmd(structures, fmt, index, potential, params, potential_file, relax_cell, pressure, fmax,
             max_steps, method, sweeps, wrt, observables, mode, output: Path, resume: bool,
             overwrite: bool, workers: int | None, scheduler: str | None,
             scheduler_file: Path | None, cluster_spec: Path | None, batch: int,
             quiet: bool) -> None:
    """Relax and differentiate STRUCTURE... at every point of a parameter grid; write one
    study file OUTPUT (HDF5, leading point axis, resumable after a crash).

    Exit code 1 when some point failed (OUTPUT is complete; failed points are marked
    converged = false with their problems). With --workers, --scheduler,
    --scheduler-file or --cluster each point is one Dask task and this process alone
    writes OUTPUT, each point as it finishes. One process writes OUTPUT at a time: a second
    one is refused (exit 2) with the pid, host and command of the first. See
    docs/studies.md.

    \b
    Examples:
      mdsens scan data/ar_fcc_32.extxyz -p lj --param epsilon=0.0104 \\
          --sweep sigma=3.3:3.5:5 --wrt sigma --observable volume --relax-cell -o study.h5
      mdsens scan data/ar_fcc_32.extxyz -p lj --param epsilon=0.0104 \\
          --sweep sigma=3.3:3.5:5 --wrt sigma --observable volume --relax-cell \\
          -o study.h5 --resume
      mdsens scan data/ar_fcc_32.extxyz -p lj --param epsilon=0.0104 \\
          --sweep sigma=3.3:3.5:21 --wrt sigma --observable volume --relax-cell \\
          -o study.h5 --workers 4
    """
    cluster = _check_backend(workers, scheduler, scheduler_file, cluster_spec)
    if batch < 1:
        raise c.BadInput(f"--batch must be at least 1, got {batch}")
    from ..studies import parse_sweep

    sweep: dict[str, list[float]] = {}
    for text in sweeps:
        try:
            name, points = parse_sweep(text)
        except ValueError as exc:
            raise c.BadInput(str(exc)) from None
        if name in sweep:
            raise c.BadInput(f"--sweep {name!r} given twice")
        sweep[name] = points
    if resume and overwrite:
        raise c.BadInput("--resume and --overwrite exclude each other")
    options = c.relax_options(fmax, max_steps, pressure, relax_cell)
    if method != c.DEFAULT_METHOD:
        options["method"] = method
    if resume:
        if not output.is_file():
            raise c.BadInput(f"{output}: no study file to resume")
    else:
        c.check_output(output, overwrite, kind="hdf5")
    _check_not_in_use(output)
    values = c.parse_params(params)
    info = c.check_potential(potential, values, potential_file)
    c.check_observables(observables)
    c.check_wrt(wrt, info, values, relax_cell)
    _check_sweep(sweep, info, values)
    c.check_index(index)
    for s in structures:
        c.check_structure_exists(s)
    frames = [(s, label, a) for s in structures for label, a in c.load_frames(s, fmt, index)]
    for s, _, a in frames:
        c.check_structure(a, s, info, values, observables, wrt)
    c.enable_x64()
    pot = c.make_potential(potential, values, potential_file)
    systems = [c.make_system(a, pot, s) for s, _, a in frames]
    from .sensitivity import _check_names

    for system in systems:
        _check_names(system, pot, wrt, observables, relax_cell)
    from ..studies import scan, validate_sweep

    try:
        validate_sweep(sweep, pot)
    except ValueError as exc:
        raise c.BadInput(str(exc)) from None
    n_points = len(systems) * _grid_size(sweep)
    from ..studies import StudyInUse

    with _points_progress(not quiet, n_points) as (progress, notify):
        try:
            result = scan(systems, pot, sweep, list(wrt), list(observables), output,
                          relax_cell=relax_cell, pressure=options.pop("pressure", 0.0),
                          relax_options=options or None,
                          sensitivity_options={"mode": mode} if mode != "auto" else None,
                          resume=resume, overwrite=overwrite,
                          labels=[label for _, label, _ in frames], progress=progress,
                          command_line=c.command_line(), workers=workers,
                          scheduler=scheduler, scheduler_file=scheduler_file,
                          cluster=cluster, batch=batch, notify=notify)
        except (ValueError, ConnectionError, StudyInUse) as exc:
            raise c.BadInput(str(exc)) from None
    failed = int((~result.converged).sum())
    problems = [f"point {p}: {result.problems[p] or 'not converged'}"
                for p in range(len(result.converged)) if not result.converged[p]]
    if not quiet and not failed:
        click.echo(f"{n_points} points")
    c.finish(failed == 0, problems, output, quiet)


def _check_backend(workers: int | None, scheduler: str | None, scheduler_file: Path | None,
                   cluster_spec: Path | None) -> Any:
    """--workers / --scheduler / --scheduler-file / --cluster: valid, at most one, and Dask
    installed (else BadInput). Returns the loaded ClusterSpec of --cluster, or None."""
    given = [name for name, value in (("--workers", workers), ("--scheduler", scheduler),
                                      ("--scheduler-file", scheduler_file),
                                      ("--cluster", cluster_spec)) if value is not None]
    if len(given) > 1:
        raise c.BadInput(f"{' and '.join(given)} exclude each other")
    if workers is not None and workers < 1:
        raise c.BadInput(f"--workers must be at least 1, got {workers}")
    if scheduler is not None and not scheduler.strip():
        raise c.BadInput("--scheduler needs an address such as tcp://host:8786")
    for option, path in (("--scheduler-file", scheduler_file), ("--cluster", cluster_spec)):
        if path is not None and not path.is_file():
            raise c.BadInput(f"{option} {path}: no such file")
    if not given:
        return None
    import importlib.util

    if importlib.util.find_spec("distributed") is None:
        raise c.BadInput(f"{given[0]} needs dask.distributed: pip install 'mdsens[dask]'")
    if cluster_spec is None:
        return None
    from ..studies import ClusterSpec

    try:
        spec = ClusterSpec.load(cluster_spec)
    except ValueError as exc:
        raise c.BadInput(f"--cluster {exc}") from None
    try:
        spec.resolve()
    except ValueError as exc:
        reason = str(exc).removeprefix("cluster spec: ")
        raise c.BadInput(f"--cluster {cluster_spec}: {reason}") from None
    return spec


def _check_not_in_use(output: Path) -> None:
    """Refuse, before any work, an OUTPUT that another process is writing."""
    from ..studies import StudyInUse, lock_owner

    owner = lock_owner(output)
    if owner is not None:
        raise c.BadInput(str(StudyInUse(output, owner)))


def _check_sweep(sweep: dict[str, list[float]], info: catalog.PotentialInfo,
                 values: dict[str, Any]) -> None:
    """Without JAX: each swept name is a differentiable parameter of the potential (or one
    pair of a per-pair table), with finite, distinct values, and no parameter is swept
    both whole and per pair (``validate_sweep`` checks the built potential again)."""
    whole: set[str] = set()
    paired: set[str] = set()
    for name, points in sweep.items():
        c.check_parameter_name(name, info, values, "--sweep")
        base, pair, _ = name.partition("[")
        (paired if pair else whole).add(base)
        if not all(math.isfinite(v) for v in points):
            raise c.BadInput(f"--sweep {name!r} has non-finite values")
        if len(set(points)) != len(points):
            raise c.BadInput(f"--sweep {name!r} repeats a value")
    both = whole & paired
    if both:
        raise c.BadInput(f"--sweep {sorted(both)} swept both whole and per species pair")


def _grid_size(sweep: dict) -> int:
    n = 1
    for v in sweep.values():
        n *= len(v)
    return n


@contextlib.contextmanager
def _points_progress(enabled: bool, total: int) -> Iterator:
    """``(progress, notify)``: ``progress(n_done, total, point, converged)`` drawing a rich
    bar with ETA on a terminal (stderr), else None; ``notify(message)`` printing a line on
    stderr (above the bar), or None when not ``enabled``."""
    if not enabled:
        yield None, None
        return
    from rich.console import Console

    console = Console(stderr=True)
    if not console.is_terminal:
        yield None, lambda message: click.echo(message, err=True)
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(TextColumn("points"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[failed]}"), TimeElapsedColumn(),
                   TimeRemainingColumn(), console=console, transient=True)
    task = bar.add_task("scan", total=total, failed="")
    failed = 0

    def progress(n_done: int, n_total: int, point: int, converged: bool) -> None:
        nonlocal failed
        failed += not converged
        bar.update(task, completed=n_done, failed=f"{failed} failed" if failed else "")

    def notify(message: str) -> None:
        console.print(message, markup=False, highlight=False, soft_wrap=True)

    with bar:
        yield progress, notify


def plot_study(path: Path, param: str | None, output: Path, quiet: bool) -> None:
    """``mdsens plot STUDY.h5`` (the figure is :func:`mdsens.cli._figures.study_figure`)."""
    from .plot import plot_study as plot

    plot(path, param, output, quiet)
