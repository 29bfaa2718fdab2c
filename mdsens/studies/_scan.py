"""``scan``: a parameter sweep over one or more structures, streamed into one HDF5 file."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _file, _spec

if TYPE_CHECKING:
    from ..md.options import RelaxOptions
    from ..md.point import PointOptions

__all__ = ["scan"]

_NOT_IN_DEFINITION = ("chunk", "relax_cell", "pressure")

Progress = Callable[[int, int, int, bool], None]


def scan(
    structures: Any,
    potential: Any,
    sweep: Mapping[str, Sequence[float]],
    wrt: Sequence[str] | str,
    observables: Sequence[str] | str,
    output: str | os.PathLike,
    *,
    relax_cell: bool = False,
    pressure: float = 0.0,
    relax_options: RelaxOptions | dict | None = None,
    sensitivity_options: dict | None = None,
    resume: bool = False,
    overwrite: bool = False,
    labels: Sequence[str] | None = None,
    progress: Progress | None = None,
    command_line: str = "",
    workers: int | None = None,
    scheduler: str | None = None,
    scheduler_file: str | os.PathLike | None = None,
    cluster: Any = None,
    batch: int = 1,
    notify: Callable[[str], None] | None = None,
) -> _file.StudyResult:
    r"""Relax and differentiate every point of a parameter grid × structures; stream to HDF5.

    The grid is the cartesian product of ``sweep`` (last name fastest; ``G`` points). Point
    ``p = k G + g`` is structure ``k`` at grid point ``g``: ``relax`` (warm-started from the
    relaxed structure of point ``p - 1`` of the same structure when that point is done and
    finite, else from the input structure) and then :func:`mdsens.md.sensitivity` at that
    relaxation (``on_failure="ignore"``), both by :class:`mdsens.md.point.PointRunner`.
    Each point is checked by its own derivatives: along a swept parameter :math:`\theta`,
    :math:`(v_{g+1} - v_{g-1}) / (\theta_{g+1} - \theta_{g-1}) = dv/d\theta + O(h^2)`.

    A failed point (relaxation or solve not converged, saddle, non-finite state) is recorded
    as done with ``converged = False``, its ``problems`` and diagnostics; values of a
    non-finite state stay NaN.

    One writer: the call holds the lock of ``output`` (:class:`~mdsens.studies.WriterLock`
    on ``<output>.lock``) from before it looks at the file until it returns; a second
    process (or call) writing the same file is refused with :class:`StudyInUse`.

    Args:
      structures: one or a sequence of :class:`~mdsens.md.System`, ``ase.Atoms`` or paths
        (read with :func:`mdsens.io.structures.read`). Observables must have the same shape
        for every structure.
      potential: the :class:`~mdsens.md.Potential`; swept parameters override its values.
      sweep: ``{name: values}``; names are potential parameters (``"sigma"``) or one pair
        of a per-pair parameter (``"sigma[Ar,Kr]"``). See :func:`parse_sweep` for the
        command-line form.
      wrt, observables: as for :func:`~mdsens.md.sensitivity` (observable names only).
      output: the study file (``.h5``).
      relax_cell, pressure: relax the cell too, at external pressure (eV/Å^d).
      relax_options: the :class:`~mdsens.md.RelaxOptions` of every relaxation, or a dict
        of fields replacing those of ``DERIVATIVE_DEFAULTS`` (fmax 1e-8, max_steps 100000);
        ``relax_cell`` and ``pressure`` are this call's.
      sensitivity_options: further keyword arguments of :func:`~mdsens.md.sensitivity`
        (mode, solver, tol, curvature_check, ...).
      resume: continue an existing ``output``: its study definition must match this call
        exactly (else ValueError); only points not marked done are computed.
      overwrite: replace an existing ``output`` (without ``resume``).
      labels: names of the structures (default: file names, else ``structure<k>``).
      progress: called as ``progress(n_done, n_points, point, converged)`` after each point
        is written.
      command_line: stored in the provenance and in the lock (default: ``sys.argv``).
      workers: compute on a local Dask cluster of this many processes (one thread each),
        started for the duration of the call. Needs ``pip install 'mdsens[dask]'``.
      scheduler: compute on the running Dask cluster whose scheduler is at this address
        (``"tcp://host:8786"``).
      scheduler_file: the same, the address read from a Dask scheduler file (``dask
        scheduler --scheduler-file FILE``, dask-mpi).
      cluster: start this Dask cluster for the call and close it after: a
        :class:`~mdsens.studies.ClusterSpec` or the path of its YAML file (dask-jobqueue's
        ``SLURMCluster``, ``PBSCluster``, ..., or ``distributed.LocalCluster``).
        ``workers``, ``scheduler``, ``scheduler_file`` and ``cluster`` exclude each other;
        with any of them each point is one Dask task, submitted as workers free up and
        written by this process (the only writer) as it completes (see
        ``docs/studies.md``). Default: the serial in-process loop.
      batch: relax up to this many consecutive points of one structure at once
        (:func:`mdsens.md.minimize.relax_batch`, a ``vmap`` over the points' parameters):
        every point of a batch starts from the relaxed structure of the point before the
        batch (when done and finite, else from the input structure), and each point's
        sensitivities then run one after another. Results equal the serial loop's to the
        relaxation tolerance (the warm starts differ). A batch shorter than ``batch`` (the
        end of a structure, or points already done) is padded with copies of its last
        point, so one compiled loop serves the study. Default 1: one point at a time.
        The Dask backend ignores it (its tasks compute one point each).
      notify: called with one-line messages about the run (the Dask dashboard's address,
        waiting for Dask workers); default: none.

    Returns:
      :class:`StudyResult` read back from ``output``.

    Raises:
      ValueError: bad sweep, wrt, observables, batch, backend or cluster spec; mismatched
        study on resume.
      FileExistsError: ``output`` exists and neither ``resume`` nor ``overwrite``.
      FileNotFoundError: ``resume`` without an existing ``output``.
      StudyInUse: another process is writing ``output``.
      ImportError: a Dask backend without ``dask.distributed`` installed.
      ConnectionError: no Dask scheduler answers at ``scheduler`` / ``scheduler_file``.
    """
    backend = _backend(workers, scheduler, scheduler_file, cluster)
    _check_batch(batch)
    import h5py

    from ..io.hdf5 import provenance
    from ..md.point import largest_cutoff

    output = Path(output)
    systems, labels = _load_structures(structures, labels)
    sweep = _spec.validate_sweep(sweep, potential)
    options = _point_options(wrt, observables, relax_cell, pressure, relax_options,
                             sensitivity_options)
    grid = _spec.grid(sweep)
    n_grid = next(iter(grid.values())).size
    points = [{n: float(v[g]) for n, v in grid.items()} for g in range(n_grid)]
    pots = [_spec.potential_at(potential, pt) for pt in points]
    definition_json = _definition(sweep, systems, labels, potential, options)

    with _file.WriterLock(output, command_line):
        _check_output(output, resume, overwrite)
        if resume:
            _check_definition(output, definition_json)
        connection: Any = contextlib.nullcontext()
        if backend is not None:
            # started before the shapes are evaluated: workers import jax meanwhile
            from . import _dask

            connection = _dask.connect(backend, notify)
        with connection as client:
            obs_shapes, units, param_shapes = _layout(systems, potential, options)
            if client is not None:  # everything is checked before the file is made
                job = _dask.Job.prepare(systems, potential, points, largest_cutoff(pots),
                                        options, definition_json)
            if not resume:
                structure_index = np.repeat(np.arange(len(systems)), n_grid)
                parameters = {n: np.tile(v, len(systems)) for n, v in grid.items()}
                _file.create(output, definition_json, parameters, structure_index,
                             list(zip(labels, systems)), obs_shapes, units, param_shapes,
                             provenance(command_line))
            with h5py.File(output, "r+") as f:
                if client is not None:  # Dask: this process stays the only writer
                    _dask.run(client, f, job, progress=progress, notify=notify)
                else:
                    _serial(f, systems, pots, n_grid, int(batch), options, progress)
        return _file.read(output)


def _point_options(wrt, observables, relax_cell, pressure, relax_options,
                   sensitivity_options) -> PointOptions:
    """The checked :class:`~mdsens.md.point.PointOptions` of every point of a scan."""
    from ..md.options import DERIVATIVE_DEFAULTS, RelaxOptions
    from ..md.point import PointOptions

    wrt = (wrt,) if isinstance(wrt, str) else tuple(wrt)
    observables = (observables,) if isinstance(observables, str) else tuple(observables)
    if not all(isinstance(o, str) for o in observables):
        raise ValueError("scan: observables must be names (callables cannot be stored)")
    relax_opts = RelaxOptions.resolve(relax_options, DERIVATIVE_DEFAULTS).replace(
        relax_cell=bool(relax_cell), pressure=float(pressure))
    sens_opts = dict(sensitivity_options or {})
    for bad in ("relaxation", "relax_options", "on_failure", "relax_cell", "pressure"):
        if bad in sens_opts:
            raise ValueError(f"scan: sensitivity_options may not set {bad!r}")
    return PointOptions(wrt, observables, bool(relax_cell), float(pressure), relax_opts,
                        sens_opts)


def _definition(sweep, systems, labels, potential, options: PointOptions) -> str:
    """The study definition (canonical JSON): what a resume must match exactly."""
    return _spec.canonical_json({
        "version": 1,
        "sweep": [[n, v] for n, v in sweep.items()],
        "structures": [{"label": lab, "digest": _spec.structure_digest(s),
                        "n_atoms": int(s.n_atoms)} for lab, s in zip(labels, systems)],
        "wrt": list(options.wrt),
        "observables": list(options.observables),
        "potential": {"name": potential.name, "class": type(potential).__name__,
                      "params": dict(potential.params), "species": potential.species,
                      "settings": potential.settings},
        "relax_cell": options.relax_cell,
        "pressure": options.pressure,
        "relax_options": {k: v for k, v in options.relax.changed().items()
                          if k not in _NOT_IN_DEFINITION},
        "sensitivity_options": dict(options.sensitivity),
    })


def _layout(systems, potential, options: PointOptions):
    """Observable shapes, their units and the parameter shapes of the study file, from the
    input structures (which also checks ``wrt`` and ``observables`` against each).

    Raises:
      ValueError: an unknown name, or observables of different shapes across structures.
    """
    from ..md import observables as obs_mod
    from ..md.root_problem import initial_theta, parse_wrt

    obs_shapes: dict[str, tuple] | None = None
    for system in systems:
        resolved = obs_mod.resolve(list(options.observables), system.is_periodic, system.dim)
        specs = parse_wrt(list(options.wrt), potential, system.dim, system.is_periodic,
                          options.relax_cell)
        shapes = _observable_shapes(system, potential, resolved)
        if obs_shapes is not None and shapes != obs_shapes:
            raise ValueError(f"scan: observables have different shapes across structures "
                             f"({obs_shapes} vs {shapes}); run one study per structure")
        obs_shapes = shapes
    units = {k: o.unit for k, o in resolved.items()}
    theta0 = initial_theta(specs, potential, systems[0].dim, options.pressure)
    param_shapes = {k: tuple(np.shape(v)) for k, v in theta0.items()}
    return obs_shapes, units, param_shapes


def _serial(f: Any, systems: Sequence[Any], pots: Sequence[Any], n_grid: int, batch: int,
            options: PointOptions, progress: Progress | None) -> None:
    """The in-process loop: structure by structure, the points not done in order (or in
    batches of ``batch``), each written as soon as it is computed."""
    from ..md.compiled import free
    from ..md.point import PointRunner

    done = f["done"][()]
    n_points = int(done.size)
    n_done = int(done.sum())
    for k, system in enumerate(systems):
        runner = PointRunner.covering(system, pots)
        for group in _groups(done[k * n_grid:(k + 1) * n_grid], batch):
            g0 = group[0]
            start, warm = None, -1
            if g0 > 0 and done[k * n_grid + g0 - 1]:
                start, warm = _file.relaxed_structure(f, k, g0 - 1), k * n_grid + g0 - 1
            if batch == 1:
                computed = [runner.compute(pots[g0], options, start)]
            else:
                computed = runner.compute_batch([pots[g] for g in group], options, batch,
                                                start)
            for g, result in zip(group, computed):
                p = k * n_grid + g
                _file.write_point(f, p, n_grid, k,
                                  _file.point_record(result, warm if result.warm_started
                                                     else -1))
                done[p] = True
                n_done += 1
                if progress is not None:
                    progress(n_done, n_points, p, bool(result.converged))
        if k + 1 < len(systems):
            # The next structure gets its own model: free mdsens's compiled programs (they
            # are kept per model and would otherwise accumulate over a study of many
            # structures); the caller's own jitted code is kept.
            del runner
            free()


# ----------------------------------------------------------------------------- helpers


def _load_structures(structures, labels):
    from ..md.system import System

    if isinstance(structures, (str, os.PathLike, System)) or hasattr(structures, "get_positions"):
        structures = [structures]
    systems, names = [], []
    for k, s in enumerate(structures):
        name = f"structure{k}"
        if isinstance(s, (str, os.PathLike)):
            from ..io.structures import read

            name = str(s)
            s = read(s)
        if not isinstance(s, System):
            s = System.from_ase(s)
        systems.append(s)
        names.append(name)
    if not systems:
        raise ValueError("scan: no structures")
    if labels is not None:
        if len(labels) != len(systems):
            raise ValueError(f"scan: {len(labels)} labels for {len(systems)} structures")
        names = [str(x) for x in labels]
    return systems, names


def _observable_shapes(system, potential, resolved) -> dict[str, tuple]:
    """Observable shapes, evaluated at the input structure (elastic constants: (v, v))."""
    import jax.numpy as jnp

    from ..md import observables as obs_mod
    from ..md.model import build
    from ..md.strain import n_voigt

    model = build(system, potential)
    R = jnp.asarray(system.positions, jnp.float64)
    cell = jnp.asarray(system.cell, jnp.float64) if system.is_periodic else None
    ctx = obs_mod.Context(model, model.allocate(R, cell), R, None)
    out = {}
    for name, o in resolved.items():
        if name == obs_mod.ELASTIC:
            out[name] = (n_voigt(system.dim),) * 2
        else:
            out[name] = tuple(np.shape(o.fn(ctx, R, cell, dict(potential.params))))
    return out


def _backend(workers, scheduler, scheduler_file, cluster) -> Any:
    """The Dask backend asked for (:class:`mdsens.studies._dask.Backend`), or None for the
    in-process loop (ValueError for bad or conflicting values, ImportError without
    ``dask.distributed``)."""
    if workers is None and scheduler is None and scheduler_file is None and cluster is None:
        return None
    from . import _dask

    return _dask.Backend.of(workers=workers, scheduler=scheduler,
                            scheduler_file=scheduler_file, cluster=cluster)


def _check_batch(batch) -> None:
    """``batch`` is a positive integer."""
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
        raise ValueError(f"scan: batch must be a positive integer, got {batch!r}")


def _groups(done: np.ndarray, batch: int) -> list[list[int]]:
    """The grid points not done, in order, cut into runs of at most ``batch`` consecutive
    points (a done point ends a run)."""
    groups: list[list[int]] = []
    for g in range(done.size):
        if done[g]:
            continue
        if groups and groups[-1][-1] == g - 1 and len(groups[-1]) < batch:
            groups[-1].append(g)
        else:
            groups.append([g])
    return groups


def _check_output(output: Path, resume: bool, overwrite: bool) -> None:
    if resume and not output.exists():
        raise FileNotFoundError(f"{output}: nothing to resume")
    if not resume and output.exists() and not overwrite:
        raise FileExistsError(f"{output} exists; pass resume=True or overwrite=True")


def _check_definition(output: Path, definition_json: str) -> None:
    import json

    if not _file.is_study(output):
        raise ValueError(f"{output}: not an mdsens study file; cannot resume")
    import h5py

    with h5py.File(output, "r") as f:
        stored = f["study"].attrs["definition"]
    if stored != definition_json:
        old, new = json.loads(stored), json.loads(definition_json)
        keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise ValueError(f"{output}: the study definition differs from the file's "
                         f"({', '.join(keys)}); cannot resume")
