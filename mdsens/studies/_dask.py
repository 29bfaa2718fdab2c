"""Dask backend of :func:`mdsens.studies.scan`: one task per point, streamed.

Imported when ``workers``, ``scheduler``, ``scheduler_file`` or ``cluster`` is given;
``dask.distributed`` (an optional dependency: ``pip install 'mdsens[dask]'``) is imported
only when a cluster is used, so :class:`ClusterSpec` and :class:`Backend` load without it.

Streaming (:func:`stream`): each point is one task. As many tasks are in flight as the
cluster has worker threads (read again while points run, so workers that join later get
work); when a task completes, the client writes its point into the study file (the same
write-then-mark-done protocol as the serial loop: a client killed at any moment leaves a
resumable file), reports progress, and submits the next point :class:`Planner` picks.

Warm starts (the serial rule): a point starts from the relaxed structure of the previous
grid point of its structure when that point is done (read back from the file), else from
the input structure. :class:`Planner` keeps that rule useful in parallel: a point whose
predecessor is done comes first (it continues a chain of warm starts); otherwise a new
chain starts cold where it leaves the most points to itself: at the start of a
structure's grid, or in the middle of the longest run of points that a running chain
would otherwise reach alone. Results therefore equal the serial run's to the relaxation
tolerance (a cold start relaxes to the same minimum as a warm one, within ``fmax``).

Tasks receive only plain data: the input structure, the potential (its parameters as numpy
arrays) and the options, pickled in the client (cloudpickle, so a potential defined in a
script or holding a lambda travels too; a potential that does not pickle is sent as its
registry name, parameters, species and settings and rebuilt with
:func:`mdsens.md.potentials.get`). A task enables float64 (``jax_enable_x64``) before it
unpickles anything, so every jax array on a worker is float64; it builds the
:class:`~mdsens.md.model.EnergyModel` itself (models hold jax-md closures and do not
pickle) and keeps it in a per-process cache keyed by (structure digest, study definition),
so later points on the same worker reuse its compiled code and neighbour list.

Shutdown: the client is closed before the cluster it started; worker processes of a local
cluster are closed with a generous timeout after a complete run (no "still alive ...
killing" on a loaded machine) and stopped at once after an error or an interrupt (their
running points are abandoned; nothing of theirs is written).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import importlib.util
import inspect
import os
import pickle
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from . import _file, _spec

if TYPE_CHECKING:
    from ..md.point import PointOptions

__all__ = ["CLUSTER_CLASSES", "Backend", "ClusterSpec", "Job", "Planner", "connect", "run",
           "stream"]

CONNECT_TIMEOUT = 30.0
"""Seconds to wait for a scheduler given by address or scheduler file."""
CLOSE_TIMEOUT = 30.0
"""Seconds a worker process of a local cluster gets to exit cleanly after a complete run."""
POLL = 1.0
"""Seconds between looks at the cluster's size while points run."""
DASHBOARD = "127.0.0.1:0"
"""Where the dashboard of a cluster started here listens: this host only, a free port."""
_MAX_MODELS = 8

CLUSTER_CLASSES = {
    "local": "distributed.LocalCluster",
    "slurm": "dask_jobqueue.SLURMCluster",
    "pbs": "dask_jobqueue.PBSCluster",
    "sge": "dask_jobqueue.SGECluster",
    "lsf": "dask_jobqueue.LSFCluster",
    "htcondor": "dask_jobqueue.HTCondorCluster",
    "moab": "dask_jobqueue.MoabCluster",
    "oar": "dask_jobqueue.OARCluster",
    "jobqueue-local": "dask_jobqueue.local.LocalCluster",
}
"""Short names of :attr:`ClusterSpec.cls` (any ``package.module.Class`` deriving from
``distributed.deploy.Cluster`` is accepted too)."""


# ----------------------------------------------------------------------------- backends


@dataclasses.dataclass(frozen=True)
class ClusterSpec:
    """A Dask cluster that :func:`~mdsens.studies.scan` starts, scales and closes.

    The YAML form (``mdsens scan --cluster slurm.yaml``, ``scan(..., cluster="slurm.yaml")``)
    has the same keys::

        class: slurm                  # a name of CLUSTER_CLASSES or package.module.Class
        options:                      # keyword arguments of the class
          cores: 8                    # dask-jobqueue: threads per job ...
          processes: 8                # ... in this many single-threaded workers
          memory: 16GB
          walltime: "02:00:00"
          job_extra_directives: ["--partition=compute"]
        scale: {jobs: 4}              # cluster.scale(...): a worker count or keywords
        # adapt: {minimum_jobs: 1, maximum_jobs: 10}   # or cluster.adapt(...)

    Defaults added where the options do not say: a ``distributed.LocalCluster`` gets
    one thread per worker process and its dashboard on ``127.0.0.1`` at a free port; a
    dask-jobqueue cluster gets its scheduler's dashboard there too (its
    ``scheduler_options`` otherwise as in the dask configuration).

    Attributes:
      cls: the cluster class, a short name (:data:`CLUSTER_CLASSES`) or a dotted path.
      options: keyword arguments of the class.
      scale: ``cluster.scale(n)`` (an int) or ``cluster.scale(**scale)`` (a mapping).
      adapt: ``cluster.adapt(**adapt)``; excludes ``scale``.
    """

    cls: str
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    scale: int | Mapping[str, Any] | None = None
    adapt: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.cls, str) or not self.cls.strip():
            raise ValueError(f"cluster spec: 'class' must be a class name such as 'slurm' or "
                             f"'dask_jobqueue.SLURMCluster', got {self.cls!r}")
        if not isinstance(self.options, Mapping) or \
                not all(isinstance(k, str) for k in self.options):
            raise ValueError("cluster spec: 'options' must be a mapping of keyword arguments")
        if self.scale is not None and self.adapt is not None:
            raise ValueError("cluster spec: 'scale' and 'adapt' exclude each other")
        if self.scale is not None:
            if isinstance(self.scale, Mapping):
                if not all(isinstance(k, str) for k in self.scale):
                    raise ValueError("cluster spec: 'scale' keywords must be names")
            elif isinstance(self.scale, bool) or not isinstance(self.scale, int) or \
                    self.scale < 1:
                raise ValueError(f"cluster spec: 'scale' must be a positive worker count or "
                                 f"a mapping such as {{jobs: 4}}, got {self.scale!r}")
        if self.adapt is not None and not isinstance(self.adapt, Mapping):
            raise ValueError("cluster spec: 'adapt' must be a mapping such as "
                             "{minimum_jobs: 1, maximum_jobs: 10}")

    @classmethod
    def load(cls, path: str | os.PathLike) -> ClusterSpec:
        """Read a spec from a YAML file (ValueError naming the file for a bad one)."""
        import yaml

        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise ValueError(f"{path}: cannot read the cluster spec ({exc.strerror})") from None
        except yaml.YAMLError as exc:
            reason = " ".join(str(exc).split())
            raise ValueError(f"{path}: not a YAML cluster spec ({reason})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a cluster spec is a mapping with keys class, options, "
                             f"scale, adapt")
        unknown = sorted(set(data) - {"class", "options", "scale", "adapt"})
        if unknown:
            raise ValueError(f"{path}: unknown cluster spec keys {unknown}; expected class, "
                             f"options, scale, adapt")
        if "class" not in data:
            raise ValueError(f"{path}: the cluster spec needs 'class' (e.g. slurm, pbs, "
                             f"local, or package.module.Class)")
        try:
            return cls(data["class"], data.get("options") or {}, data.get("scale"),
                       data.get("adapt"))
        except ValueError as exc:
            raise ValueError(f"{path}: {str(exc).removeprefix('cluster spec: ')}") from None

    def resolve(self) -> type:
        """The cluster class (imported). Raises ValueError for a name that does not import,
        is not a ``distributed.deploy.Cluster``, is a dask-jobqueue class whose job
        submission command (``sbatch``, ``qsub``, ...) is not on this machine's PATH, or
        does not take one of the options."""
        import distributed.deploy

        dotted = CLUSTER_CLASSES.get(self.cls, self.cls)
        module_name, _, name = dotted.rpartition(".")
        try:
            found = getattr(importlib.import_module(module_name), name) if module_name \
                else None
        except ImportError as exc:
            hint = " (pip install dask-jobqueue)" if module_name == "dask_jobqueue" else ""
            raise ValueError(f"cluster spec: cannot import {dotted!r}: {exc}{hint}") from None
        except AttributeError:
            found = None
        if not (isinstance(found, type) and issubclass(found, distributed.deploy.Cluster)):
            raise ValueError(f"cluster spec: {dotted!r} is not a Dask cluster class; use one "
                             f"of {sorted(CLUSTER_CLASSES)} or package.module.Class")
        submit = getattr(getattr(found, "job_cls", None), "submit_command", None)
        if isinstance(submit, str) and submit.split() and \
                shutil.which(submit.split()[0]) is None:
            raise ValueError(f"cluster spec: {dotted} submits jobs with {submit.split()[0]!r}, "
                             f"which is not on PATH here; run on a login node of that "
                             f"batch system")
        _check_options(found, self.options)
        return found

    def start(self) -> tuple[Any, str | None]:
        """Start the cluster with the defaults above and scale or adapt it. Returns the
        cluster and the address its dashboard was asked to listen on (None: not set)."""
        import dask.config
        import distributed

        klass = self.resolve()
        options = dict(self.options)
        dashboard = None
        if issubclass(klass, distributed.LocalCluster):
            options.setdefault("threads_per_worker", 1)
            options.setdefault("processes", True)
            dashboard = options.setdefault("dashboard_address", DASHBOARD)
            if options["processes"]:
                preload = options.get("preload") or []
                preload = [preload] if isinstance(preload, str) else list(preload)
                options["preload"] = [*preload, __name__]
        job_cls = getattr(klass, "job_cls", None)
        if job_cls is not None and hasattr(job_cls, "config_name"):  # dask-jobqueue
            scheduler_options = options.get("scheduler_options")
            if scheduler_options is None:
                scheduler_options = dask.config.get(
                    f"jobqueue.{job_cls.config_name}.scheduler-options", {}) or {}
            scheduler_options = dict(scheduler_options)
            dashboard = scheduler_options.setdefault("dashboard_address", DASHBOARD)
            options["scheduler_options"] = scheduler_options
        try:
            cluster = klass(**options)
        except Exception as exc:  # bad options surface in many types, some wrapped
            cause = exc.__cause__ or exc
            reason = " ".join(f"{type(cause).__name__}: {cause}".split())
            raise ValueError(f"cluster spec: {klass.__module__}.{klass.__name__} did not "
                             f"start with these options ({reason})") from None
        try:
            if isinstance(self.scale, Mapping):
                cluster.scale(**self.scale)
            elif self.scale is not None:
                cluster.scale(self.scale)
            if self.adapt is not None:
                cluster.adapt(**self.adapt)
        except Exception:
            cluster.close()
            raise
        return cluster, None if dashboard is None else str(dashboard)


def _check_options(klass: type, options: Mapping[str, Any]) -> None:
    """Refuse option names the cluster class cannot take (ValueError), before it starts
    worker processes that would fail one by one (a LocalCluster passes unknown names on
    to its workers: those of Nanny and Worker count too)."""
    import distributed

    def names(f: Any) -> tuple[set[str], bool]:
        params = inspect.signature(f).parameters.values()
        return ({p.name for p in params if p.kind is not p.VAR_KEYWORD},
                any(p.kind is p.VAR_KEYWORD for p in params))

    accepted, open_ended = names(klass)
    if issubclass(klass, distributed.LocalCluster):
        for part in (distributed.Nanny, distributed.Worker):
            more, _ = names(part)
            accepted |= more
        open_ended = False
    unknown = sorted(set(options) - accepted)
    if unknown and not open_ended:
        raise ValueError(f"cluster spec: {klass.__name__} takes no option "
                         f"{', '.join(map(repr, unknown))}")


@dataclasses.dataclass(frozen=True)
class Backend:
    """Where a study's points run: exactly one of a local cluster of ``workers`` processes,
    the scheduler at ``scheduler`` (an address), the scheduler of ``scheduler_file``, or a
    ``cluster`` started from a :class:`ClusterSpec`."""

    workers: int | None = None
    scheduler: str | None = None
    scheduler_file: Path | None = None
    cluster: ClusterSpec | None = None

    @classmethod
    def of(cls, workers: Any = None, scheduler: Any = None, scheduler_file: Any = None,
           cluster: Any = None) -> Backend:
        """Validate (ValueError) and check that ``dask.distributed`` is installed
        (ImportError). ``cluster`` may be a :class:`ClusterSpec` or a YAML path."""
        given = [n for n, v in (("workers", workers), ("scheduler", scheduler),
                                ("scheduler_file", scheduler_file), ("cluster", cluster))
                 if v is not None]
        if len(given) > 1:
            raise ValueError(f"scan: {' and '.join(given)} exclude each other")
        if workers is not None and (isinstance(workers, bool) or
                                    not isinstance(workers, (int, np.integer)) or
                                    workers < 1):
            raise ValueError(f"scan: workers must be a positive integer, got {workers!r}")
        if scheduler is not None and (not isinstance(scheduler, str) or not scheduler.strip()):
            raise ValueError(f"scan: scheduler must be an address such as "
                             f"'tcp://host:8786', got {scheduler!r}")
        if scheduler_file is not None:
            if not isinstance(scheduler_file, (str, os.PathLike)) or \
                    not Path(scheduler_file).is_file():
                raise ValueError(f"scan: scheduler_file {scheduler_file!r} is not a file")
            scheduler_file = Path(scheduler_file)
        if importlib.util.find_spec("distributed") is None:
            raise ImportError("scan: a Dask backend needs dask.distributed: "
                              "pip install 'mdsens[dask]'")
        if cluster is not None and not isinstance(cluster, ClusterSpec):
            if not isinstance(cluster, (str, os.PathLike)):
                raise ValueError(f"scan: cluster must be a ClusterSpec or the path of its "
                                 f"YAML file, got {cluster!r}")
            cluster = ClusterSpec.load(cluster)
        if cluster is not None:
            cluster.resolve()
        return cls(None if workers is None else int(workers), scheduler, scheduler_file,
                   cluster)


@contextlib.contextmanager
def connect(backend: Backend, notify: Callable[[str], None] | None = None) -> Iterator[Any]:
    """A ``distributed.Client`` of the backend's cluster for the duration of the context;
    a cluster started here (``workers``, ``cluster``) is closed at its end.

    Announces the dashboard's address through ``notify``. Every connected worker starts
    importing jax and the model code at once (in the background), so that this happens
    while the client evaluates shapes and writes the empty file.

    Raises:
      ConnectionError: no scheduler answers at the address or scheduler file.
    """
    import distributed

    cluster, dashboard = None, None
    if backend.workers is not None:
        cluster = distributed.LocalCluster(n_workers=backend.workers, threads_per_worker=1,
                                           processes=True, dashboard_address=DASHBOARD,
                                           preload=[__name__])
        dashboard = DASHBOARD
    elif backend.cluster is not None:
        cluster, dashboard = backend.cluster.start()
    try:
        if cluster is not None:
            client = distributed.Client(cluster)
        else:
            client = _remote_client(backend)
    except BaseException:
        if cluster is not None:
            _stop_workers(cluster)
            cluster.close()
        raise
    clean = False
    try:
        _announce(client, cluster, dashboard, notify)
        warming = _warm_up_workers(client)  # noqa: F841 (held until the end)
        yield client
        clean = True
    finally:
        if cluster is not None and not clean:
            _stop_workers(cluster)  # abandon running points at once, silently
        with contextlib.suppress(Exception):
            client.close(timeout=CLOSE_TIMEOUT)
        if cluster is not None:
            if clean:
                _close_workers(cluster)
            cluster.close(timeout=CLOSE_TIMEOUT)


def _remote_client(backend: Backend) -> Any:
    import distributed

    where = backend.scheduler if backend.scheduler is not None else \
        f"the scheduler file {str(backend.scheduler_file)!r}"
    try:
        if backend.scheduler is not None:
            return distributed.Client(backend.scheduler, timeout=CONNECT_TIMEOUT)
        return distributed.Client(scheduler_file=str(backend.scheduler_file),
                                  timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError, ValueError, TypeError, KeyError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ConnectionError(f"scan: cannot connect to the Dask scheduler at {where}: "
                              f"{reason}") from None


def _announce(client: Any, cluster: Any, dashboard: str | None,
              notify: Callable[[str], None] | None) -> None:
    """Tell ``notify`` where the dashboard is. For a cluster started here, the host is the
    one its dashboard listens on (``dashboard``, e.g. 127.0.0.1), which Dask's own link
    replaces by the scheduler's host; without bokeh its page asks for bokeh."""
    if notify is None:
        return
    link = client.dashboard_link
    host = None if dashboard is None else dashboard.rpartition(":")[0].strip("[]")
    if cluster is not None and host and host not in ("0.0.0.0", "::"):
        with contextlib.suppress(Exception):
            port = client.scheduler_info()["services"]["dashboard"]
            link = f"http://{host}:{port}/status"
    if cluster is not None and importlib.util.find_spec("bokeh") is None:
        notify(f"Dask dashboard: {link} (its plots need bokeh: pip install 'mdsens[dask]')")
    else:
        notify(f"Dask dashboard: {link}")


def _local_nannies(cluster: Any) -> list[Any]:
    import distributed

    if not isinstance(cluster, distributed.LocalCluster):
        return []
    return [w for w in cluster.workers.values() if isinstance(w, distributed.Nanny)]


def _close_workers(cluster: Any) -> None:
    """Close the worker processes of a local cluster with :data:`CLOSE_TIMEOUT` each
    (the cluster's own close allows 4 s, which a worker that loaded jax can exceed)."""
    import asyncio

    nannies = _local_nannies(cluster)
    if not nannies:
        return

    async def close_all() -> None:
        await asyncio.gather(*(n.close(timeout=CLOSE_TIMEOUT) for n in nannies),
                             return_exceptions=True)

    with contextlib.suppress(Exception):
        cluster.sync(close_all)


def _stop_workers(cluster: Any) -> None:
    """Stop the worker processes of a local cluster now (after an error or interrupt):
    each nanny is told not to restart its worker, then the worker process is killed, so
    no running task delays the exit or logs its cancellation."""
    for nanny in _local_nannies(cluster):
        with contextlib.suppress(Exception):
            nanny.close_gracefully()
            process = getattr(getattr(nanny, "process", None), "process", None)
            if process is not None:
                cluster.sync(process.kill)


def _warm_up_workers(client: Any) -> list[Any]:
    """One small task per connected worker: import jax and mdsens there now. The futures
    must be held (not fire-and-forget: a task pinned to a worker that leaves would stay
    on a shared scheduler); closing the client releases them."""
    return [client.submit(_warm_up, pure=False, workers=[worker], allow_other_workers=True)
            for worker in client.nthreads()]


# ----------------------------------------------------------------------------- streaming


class Planner:
    """Which point to compute next, and from which warm start (no Dask in here).

    Points are ``p = k G + g`` (structure ``k``, grid point ``g``). A point is *done*,
    *running*, *lost* (its task failed: not retried in this run) or *free*. :meth:`next`
    returns ``(p, warm)``:

    1. the first free point whose predecessor ``p - 1`` (same structure) is done, with
       ``warm = p - 1``: it continues a chain of warm starts;
    2. else a cold start (``warm = -1``) in the run of free points where a new chain gets
       the most points: a run that starts a structure's grid or follows a lost point is
       taken from its first point (the whole run); a run that follows a running point is
       split, the new chain taking its second half from ``first + len // 2`` (the running
       chain will reach the first half warm). Ties go to the lowest point.

    Args:
      done: (P,) bool, the points already done (copied).
      n_grid: G, points per structure.
    """

    def __init__(self, done: np.ndarray, n_grid: int):
        self.done = np.array(done, bool)
        self.running = np.zeros_like(self.done)
        self.lost = np.zeros_like(self.done)
        self.n_grid = int(n_grid)
        g = np.arange(self.done.size) % self.n_grid
        self._first = g == 0  # a structure's first grid point

    def next(self) -> tuple[int, int] | None:
        """The next point and its warm start, or None when no point is free."""
        free = ~(self.done | self.running | self.lost)
        if not free.any():
            return None
        prev_done = np.zeros_like(free)
        prev_done[1:] = self.done[:-1]
        warm = np.flatnonzero(free & prev_done & ~self._first)
        if warm.size:
            return int(warm[0]), int(warm[0]) - 1
        # maximal runs of free points within one structure: [starts[i], ends[i]]
        first = self._first
        prev_free = np.zeros_like(free)
        prev_free[1:] = free[:-1]
        next_free = np.zeros_like(free)
        next_free[:-1] = free[1:] & ~first[1:]
        starts = np.flatnonzero(free & (first | ~prev_free))
        ends = np.flatnonzero(free & ~next_free)
        length = ends - starts + 1
        behind_running = ~first[starts] & self.running[np.maximum(starts - 1, 0)]
        point = np.where(behind_running, starts + length // 2, starts)
        gets = np.where(behind_running, length - length // 2, length)
        return int(point[np.argmax(gets)]), -1

    def start(self, p: int) -> None:
        self.running[p] = True

    def finish(self, p: int) -> None:
        self.running[p] = False
        self.done[p] = True

    def lose(self, p: int) -> None:
        self.running[p] = False
        self.lost[p] = True


class Pool(Protocol):
    """What :func:`stream` needs of a cluster (:class:`_DaskPool`; tests use others)."""

    def slots(self) -> int:
        """Points that may be in flight now (the worker threads; 0 before any joined)."""

    def wait_for_slots(self) -> None:
        """Block until some worker has joined."""

    def submit(self, p: int, start: tuple[np.ndarray, np.ndarray] | None, warm: int) -> Any:
        """Start computing point ``p`` (from ``start``, the relaxed structure of ``warm``)."""

    def wait(self, futures: list[Any]) -> list[Any]:
        """Those of ``futures`` that have completed (may return none after a while)."""

    def result(self, future: Any) -> dict[str, Any]:
        """The point record of a completed future (raises what its task raised)."""

    def cancel(self, futures: list[Any]) -> None:
        """Give up ``futures`` (after an error or interrupt)."""


def stream(pool: Pool, f: Any, *, progress: Callable[[int, int, int, bool], None] | None
           = None) -> None:
    """Compute the points of the open study file ``f`` that are not done on ``pool``,
    writing each (``_file.write_point``: data, flush, done flag, flush) as it completes.

    Raises:
      RuntimeError: some task raised (not a failed point: those are results); raised
        after every other point has been written, so a resume computes only what is left.
    """
    n_grid = int(f["study"].attrs["n_grid"])
    planner = Planner(f["done"][()], n_grid)
    n_points = int(planner.done.size)
    n_done = int(planner.done.sum())
    running: dict[Any, int] = {}
    errors: list[tuple[int, BaseException]] = []
    try:
        while True:
            slots = pool.slots()
            while len(running) < slots:
                chosen = planner.next()
                if chosen is None:
                    break
                p, warm = chosen
                start = _file.relaxed_structure(f, p // n_grid, warm % n_grid) if warm >= 0 \
                    else None
                running[pool.submit(p, start, warm)] = p
                planner.start(p)
            if not running:
                if planner.next() is None:
                    break
                pool.wait_for_slots()
                continue
            for future in pool.wait(list(running)):
                p = running.pop(future)
                try:
                    point = pool.result(future)
                except Exception as exc:  # a crashed task, not a failed point
                    errors.append((p, exc))
                    planner.lose(p)
                    continue
                _file.write_point(f, p, n_grid, p // n_grid, point)
                planner.finish(p)
                n_done += 1
                if progress is not None:
                    progress(n_done, n_points, p, bool(point["converged"]))
    finally:
        if running:
            pool.cancel(list(running))
    if errors:
        p, exc = errors[0]
        raise RuntimeError(f"scan: the Dask tasks of {len(errors)} points failed; the other "
                           f"points are written (resume to retry). First, point {p}: "
                           f"{type(exc).__name__}: {exc}") from exc


def run(client: Any, f: Any, job: Job, *,
        progress: Callable[[int, int, int, bool], None] | None = None,
        notify: Callable[[str], None] | None = None) -> None:
    """:func:`stream` the points of ``f`` not done on the cluster of ``client``."""
    stream(_DaskPool(client, job, notify), f, progress=progress)


class _DaskPool:
    """:class:`Pool` on a ``distributed.Client``: one task per point."""

    def __init__(self, client: Any, job: Job, notify: Callable[[str], None] | None):
        self.client = client
        self.job = job
        self.notify = notify
        self.token = uuid.uuid4().hex[:8]

    def slots(self) -> int:
        return int(sum(self.client.nthreads().values()))

    def wait_for_slots(self) -> None:
        if self.notify is not None:
            self.notify("waiting for Dask workers to join the cluster")
        self.client.wait_for_workers(1)

    def submit(self, p: int, start: Any, warm: int) -> Any:
        n_grid = len(self.job.points)
        k, g = divmod(p, n_grid)
        start = None if start is None else (np.asarray(start[0]), np.asarray(start[1]))
        return self.client.submit(_run_point, self.job.keys[k], self.job.shared[k],
                                  self.job.points[g], start, warm, pure=False,
                                  key=f"mdsens-point-{self.token}-{p}")

    def wait(self, futures: list[Any]) -> list[Any]:
        import distributed

        try:
            result = distributed.wait(futures, timeout=POLL, return_when="FIRST_COMPLETED")
        except TimeoutError:
            return []
        return [fut for fut in futures if fut in result.done]

    def result(self, future: Any) -> dict[str, Any]:
        try:
            return future.result()
        finally:
            future.release()

    def cancel(self, futures: list[Any]) -> None:
        with contextlib.suppress(Exception):
            self.client.cancel(futures)


# ----------------------------------------------------------------------------- job data


@dataclasses.dataclass(frozen=True)
class Job:
    """A study's data for the workers, pickled in the client (:meth:`prepare`)."""

    keys: tuple[tuple[str, str], ...]  # per structure: (structure digest, definition hash)
    shared: tuple[bytes, ...]  # per structure: a pickled _Shared
    points: tuple[dict[str, float], ...]  # swept values of each grid point

    @classmethod
    def prepare(cls, systems: Sequence[Any], potential: Any,
                points: Sequence[dict[str, float]], model_point: int,
                options: PointOptions, definition_json: str) -> Job:
        """Pickle what the tasks need.

        Raises:
          ValueError: the potential or a structure cannot be sent to the workers.
        """
        definition_key = hashlib.sha256(definition_json.encode()).hexdigest()
        pot = _potential_payload(potential)
        cache = _compile_cache_in_use()
        keys = tuple((_spec.structure_digest(s), definition_key) for s in systems)
        shared = tuple(
            _dumps(_Shared(_numpy_system(s), pot, dict(points[model_point]), options, cache),
                   f"structure {k}")
            for k, s in enumerate(systems))
        return cls(keys, shared, tuple(dict(p) for p in points))


def _compile_cache_in_use() -> bool:
    """Whether this process uses mdsens's default persistent compilation cache (then the
    workers use theirs: :func:`mdsens.compile_cache.enable`)."""
    import jax

    from ..compile_cache import default_directory

    configured = jax.config.jax_compilation_cache_dir
    default = default_directory()
    return bool(configured) and default is not None and Path(configured) == default


def _dumps(obj: Any, what: str) -> bytes:
    import cloudpickle

    try:
        return cloudpickle.dumps(obj)
    except Exception as exc:
        raise ValueError(f"scan: cannot send {what} to Dask workers: it does not pickle "
                         f"({type(exc).__name__}: {exc})") from None


def _numpy_tree(tree: Any) -> Any:
    import jax

    return jax.tree.map(np.asarray, tree)


def _numpy_system(system: Any) -> Any:
    """The System with numpy leaves (unpickling needs no jax device and no x64 flag)."""
    return system.replace(positions=np.asarray(system.positions),
                          cell=np.asarray(system.cell), species=np.asarray(system.species))


@dataclasses.dataclass(frozen=True)
class _PotentialSpec:
    """A potential that does not pickle, as its registry name, parameters and settings."""

    name: str
    params: dict[str, Any]
    species: tuple[str, ...] | None
    settings: dict[str, Any]

    def build(self) -> Any:
        from ..md.potentials.base import factories

        factory = factories()[self.name]
        accepted = inspect.signature(factory).parameters
        kwargs = {k: v for k, v in self.settings.items() if k in accepted}
        if "species" in accepted and self.species is not None:
            kwargs["species"] = self.species
        pot = factory(**kwargs)
        return dataclasses.replace(pot, params=self.params, species=self.species,
                                   **self.settings)


def _potential_payload(potential: Any) -> Any:
    """The potential (numpy parameters) if it pickles, else a :class:`_PotentialSpec`."""
    import cloudpickle

    sendable = dataclasses.replace(potential, params=_numpy_tree(potential.params))
    try:
        cloudpickle.loads(cloudpickle.dumps(sendable))
        return sendable
    except Exception as exc:
        first = f"{type(exc).__name__}: {exc}"
    spec = _PotentialSpec(potential.name, _numpy_tree(dict(potential.params)),
                          potential.species, dict(potential.settings))
    try:
        cloudpickle.dumps(spec)
        rebuilt = spec.build()
        same = type(rebuilt) is type(potential) and _same_settings(rebuilt, potential)
    except Exception:
        same = False
    if not same:
        raise ValueError(f"scan: potential {potential.name!r} cannot be sent to Dask workers: "
                         f"it does not pickle ({first}) and cannot be rebuilt from the "
                         "registry") from None
    return spec


def _same_settings(a: Any, b: Any) -> bool:
    sa, sb = a.settings, b.settings
    if sa.keys() != sb.keys():
        return False
    for key in sa:
        x, y = sa[key], sb[key]
        if x is y:
            continue
        try:
            if not bool(np.all(x == y)):
                return False
        except Exception:
            return False
    return True


@dataclasses.dataclass(frozen=True)
class _Shared:
    """What every point of one structure needs (pickled once in the client)."""

    system: Any  # the input structure, numpy leaves
    potential: Any  # the base potential (numpy parameters) or a _PotentialSpec
    model_point: dict[str, float]  # swept values of the model's (largest-cutoff) potential
    options: PointOptions
    compile_cache: bool  # use mdsens's persistent compilation cache on the worker


# ----------------------------------------------------------------------------- worker side
_STATES: dict[tuple[str, str], tuple[Any, Any, Any]] = {}
_STATES_LOCK = threading.Lock()


def _run_point(key: tuple[str, str], shared: bytes, values: dict[str, float],
               start: tuple[np.ndarray, np.ndarray] | None, warm: int) -> dict[str, Any]:
    """One task: the point at swept ``values`` of the structure ``key``, from the relaxed
    ``start`` of point ``warm`` (or the input structure), by the structure's
    :class:`~mdsens.md.point.PointRunner`; returns the record the client writes."""
    import jax

    jax.config.update("jax_enable_x64", True)  # before any jax array exists in this task
    base, runner, options = _state(key, shared)
    result = runner.compute(_spec.potential_at(base, values), options, start)
    return _file.point_record(result, warm if result.warm_started else -1)


def _state(key: tuple[str, str], shared: bytes) -> tuple[Any, Any, Any]:
    """This process's (base potential, PointRunner, options) of the structure and study
    ``key``: unpickled and built once, then reused by every later point (the runner keeps
    the model and the last neighbour list)."""
    with _STATES_LOCK:
        state = _STATES.get(key)
        if state is None:
            import jax
            import jax.numpy as jnp

            from ..md.point import PointRunner

            job: _Shared = pickle.loads(shared)
            if job.compile_cache:
                from ..compile_cache import enable

                enable()
            system = job.system.replace(positions=jnp.asarray(job.system.positions),
                                        cell=jnp.asarray(job.system.cell),
                                        species=jnp.asarray(job.system.species))
            base = job.potential.build() if isinstance(job.potential, _PotentialSpec) \
                else job.potential
            base = dataclasses.replace(base, params=jax.tree.map(jnp.asarray, base.params))
            # one device per worker: the workers already share the machine's cores
            runner = PointRunner(system, _spec.potential_at(base, job.model_point),
                                 devices=None)
            while len(_STATES) >= _MAX_MODELS:
                _STATES.pop(next(iter(_STATES)))
            state = _STATES[key] = (base, runner, job.options)
    return state


def _warm_up() -> None:
    """Import jax (float64) and the relaxation and sensitivity code in this worker."""
    import jax

    jax.config.update("jax_enable_x64", True)
    from ..md import minimize, model, sensitivity  # noqa: F401


def dask_setup(worker: Any) -> None:
    """Preload of the worker processes of a local cluster started by ``scan`` (Dask calls
    it in each worker's main thread as it starts): ignore SIGINT. Ctrl-C at a terminal
    reaches the whole process group; the client handles it and stops these workers at
    once, which would otherwise each log the cancellation of their running task."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
