"""Dask backend of :func:`mdsens.studies.scan` (``workers=N`` or ``scheduler=ADDRESS``).

Imported only when one of the two is given (``dask.distributed`` is an optional dependency:
``pip install 'mdsens[dask]'``).

One writer: the client process alone opens and writes the study file, each point as the
task that computed it completes (:func:`distributed.as_completed`), with the same
write-then-mark-done protocol as the serial loop, so a client killed at any moment leaves a
resumable file.

Work units: the not-yet-done grid points of each structure form contiguous runs; the runs
are cut into contiguous chunks, about :data:`CHUNKS_PER_WORKER` per worker thread in all
(one chunk per point when there are fewer points), and each chunk is one task that computes
its points in order with the serial warm-start rule: a point starts from the relaxed
structure of the previous point of its chunk; the first point of a chunk starts from the
stored relaxed structure of the previous grid point when that point is already done in the
file, else from the input structure. Results therefore equal the serial run's to the
relaxation tolerance (bit for bit where a chunk starts like the serial loop).

Tasks receive only plain data: the input structure, the potential (its parameters as numpy
arrays) and the options, pickled in the client (cloudpickle, so a potential defined in a
script or holding a lambda travels too; a potential that does not pickle is sent as its
registry name, parameters, species and settings and rebuilt with
:func:`mdsens.md.potentials.get`). A task enables float64 (``jax_enable_x64``) before it
unpickles anything, so every jax array on a worker is float64; it builds the
:class:`~mdsens.md.model.EnergyModel` itself (models hold jax-md closures and do not
pickle) and keeps it in a per-process cache keyed by (structure digest, study definition),
so consecutive chunks on the same worker reuse its compiled code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import inspect
import pickle
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import cloudpickle
import distributed
import numpy as np

from . import _file, _scan, _spec

__all__ = ["CHUNKS_PER_WORKER", "Job", "connect", "plan_chunks", "run"]

CHUNKS_PER_WORKER = 2
CONNECT_TIMEOUT = 30.0
"""Seconds to wait for a scheduler given by address."""
_MAX_MODELS = 8


# ----------------------------------------------------------------------------- client side
@contextlib.contextmanager
def connect(workers: int | None, scheduler: str | None) -> Iterator[distributed.Client]:
    """A client: of a local cluster of ``workers`` processes (one thread each) that lives
    as long as the context, or of the running scheduler at ``scheduler``.

    Every worker starts importing jax and the model code at once (in the background), so
    that this happens while the client evaluates shapes and writes the empty file.

    Raises:
      ConnectionError: no scheduler answers at ``scheduler`` (or the address is malformed).
    """
    if workers is not None:
        with distributed.LocalCluster(n_workers=int(workers), threads_per_worker=1,
                                      processes=True) as cluster:
            with distributed.Client(cluster) as client:
                warming = _warm_up_workers(client)  # noqa: F841 (held until the end)
                yield client
        return
    try:
        client = distributed.Client(scheduler, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError, ValueError, TypeError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ConnectionError(f"scan: cannot connect to the Dask scheduler at {scheduler!r}: "
                              f"{reason}") from None
    with client:
        warming = _warm_up_workers(client)  # noqa: F841 (held until the end)
        yield client


def _warm_up_workers(client: distributed.Client) -> list[distributed.Future]:
    """One small task per connected worker: import jax and mdsens there now. The futures
    must be held (not fire-and-forget: a task pinned to a worker that leaves would stay
    on a shared scheduler); closing the client releases them."""
    return [client.submit(_warm_up, pure=False, workers=[worker], allow_other_workers=True)
            for worker in client.nthreads()]


def plan_chunks(done: np.ndarray, n_grid: int, n_structures: int,
                n_slots: int) -> list[tuple[int, list[int]]]:
    """Cut the points not done into contiguous chunks: ``[(k, [g, g+1, ...]), ...]``.

    The not-done grid points of each structure form maximal contiguous runs; the runs get
    about ``CHUNKS_PER_WORKER * n_slots`` chunks in all (at least one per run, at most one
    per point), in proportion to their lengths, and each run is cut into nearly equal
    contiguous pieces. Chunks come in point order.
    """
    done = np.asarray(done, bool)
    runs: list[tuple[int, list[int]]] = []
    for k in range(n_structures):
        run: list[int] = []
        for g in range(n_grid):
            if done[k * n_grid + g]:
                if run:
                    runs.append((k, run))
                run = []
            else:
                run.append(g)
        if run:
            runs.append((k, run))
    if not runs:
        return []
    n_todo = sum(len(r) for _, r in runs)
    target = max(len(runs), min(n_todo, CHUNKS_PER_WORKER * max(int(n_slots), 1)))
    counts = [1] * len(runs)
    for _ in range(target - len(runs)):  # one more chunk to the run with the longest chunks
        i = max((i for i in range(len(runs)) if counts[i] < len(runs[i][1])),
                key=lambda i: len(runs[i][1]) / counts[i])
        counts[i] += 1
    chunks = []
    for (k, run), n in zip(runs, counts):
        for piece in np.array_split(np.asarray(run), n):
            chunks.append((k, [int(g) for g in piece]))
    return chunks


@dataclasses.dataclass(frozen=True)
class Job:
    """A study's data for the workers, pickled in the client (:meth:`prepare`)."""

    shared: tuple[bytes, ...]  # per structure: a pickled _Shared
    points: tuple[dict[str, float], ...]  # swept values of each grid point

    @classmethod
    def prepare(cls, systems: Sequence[Any], potential: Any,
                points: Sequence[dict[str, float]], model_point: int, compute: dict[str, Any],
                definition_json: str) -> Job:
        """Pickle what the tasks need; ``compute`` holds the keyword arguments of
        ``_scan._compute`` other than the start, model and potential.

        Raises:
          ValueError: the potential or a structure cannot be sent to the workers.
        """
        definition_key = hashlib.sha256(definition_json.encode()).hexdigest()
        pot = _potential_payload(potential)
        shared = tuple(
            _dumps(_Shared(_spec.structure_digest(s), definition_key, _numpy_system(s), pot,
                           dict(points[model_point]), compute), f"structure {k}")
            for k, s in enumerate(systems))
        return cls(shared, tuple(dict(p) for p in points))


def run(client: distributed.Client, f: Any, done: np.ndarray, job: Job, *,
        progress: Callable[[int, int, int, bool], None] | None = None) -> None:
    """Compute the points not done on the cluster; write each into the open study file
    ``f`` (and set ``done``) as its task completes, in completion order.

    Raises:
      RuntimeError: some task raised (not a failed point: those are results); raised
        after every other task has been written, so a resume computes only what is left.
    """
    n_points = int(done.size)
    n_grid = len(job.points)
    n_done = int(done.sum())
    plan = plan_chunks(done, n_grid, len(job.shared), _slots(client))
    token = uuid.uuid4().hex[:8]
    futures = {}
    for k, gs in plan:
        g0 = gs[0]
        start = None
        if g0 > 0 and done[k * n_grid + g0 - 1]:
            stored = f["structures"][str(k)]
            start = (stored["position"][g0 - 1], stored["edges"][g0 - 1])
        chunk = ([(k * n_grid + g, job.points[g]) for g in gs], start)
        future = client.submit(_run_chunk, job.shared[k], chunk, pure=False,
                               key=f"mdsens-scan-{token}-{k}-{g0}")
        futures[future] = (k, gs)
    errors: list[BaseException] = []
    for future in distributed.as_completed(list(futures)):
        k, gs = futures.pop(future)
        try:
            result = future.result()
        except Exception as exc:  # a crashed task, not a failed point: raised below
            errors.append(exc)
            continue
        finally:
            future.release()
        expected = [k * n_grid + g for g in gs]
        if [p for p, _ in result] != expected:
            raise RuntimeError(f"scan: a task returned points {[p for p, _ in result]}, "
                               f"expected {expected}")
        for p, point in result:
            _file.write_point(f, p, n_grid, k, point)
            done[p] = True
            n_done += 1
            if progress is not None:
                progress(n_done, n_points, p, bool(point["converged"]))
    if errors:
        exc = errors[0]
        raise RuntimeError(f"scan: {len(errors)} of {len(plan)} Dask tasks failed; the other "
                           f"points are written (resume to retry). First error: "
                           f"{type(exc).__name__}: {exc}") from exc


def _slots(client: distributed.Client) -> int:
    """Worker threads of the cluster (waits for the first worker to join)."""
    slots = sum(client.nthreads().values())
    if slots == 0:
        client.wait_for_workers(1)
        slots = sum(client.nthreads().values())
    return max(slots, 1)


def _dumps(obj: Any, what: str) -> bytes:
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
    """What every chunk of one structure needs (pickled once in the client)."""

    structure_key: str  # the structure's digest
    definition_key: str  # SHA-256 of the study definition
    system: Any  # the input structure, numpy leaves
    potential: Any  # the base potential (numpy parameters) or a _PotentialSpec
    model_point: dict[str, float]  # swept values of the model's (largest-cutoff) potential
    compute: dict[str, Any]


# ----------------------------------------------------------------------------- worker side
_MODELS: dict[tuple[str, str], Any] = {}
_MODELS_LOCK = threading.Lock()


def _run_chunk(shared: bytes, chunk: tuple) -> list[tuple[int, dict[str, Any]]]:
    """One task: the points of ``chunk`` in order, warm-starting each from the previous.

    ``chunk`` is ``([(p, swept values), ...], start)`` with ``start`` the stored relaxed
    ``(positions, edges)`` of the grid point before the first, or None.
    """
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)  # before any jax array exists in this task
    job: _Shared = pickle.loads(shared)
    system = job.system.replace(positions=jnp.asarray(job.system.positions),
                                cell=jnp.asarray(job.system.cell),
                                species=jnp.asarray(job.system.species))
    base = job.potential.build() if isinstance(job.potential, _PotentialSpec) else \
        job.potential
    base = dataclasses.replace(base, params=jax.tree.map(jnp.asarray, base.params))
    model = _model(job, system, base)
    points, prev = chunk
    out = []
    for p, values in points:
        start, warm = system, -1
        if prev is not None:
            warmed = _scan._start_from(system, *prev)
            if warmed is not None:
                start, warm = warmed, p - 1
        point = _scan._compute(start, model, _spec.potential_at(base, values), **job.compute)
        point["diagnostics"]["warm_start"] = warm
        out.append((p, point))
        prev = (point["position"], point["edges"])
    return out


def _warm_up() -> None:
    """Import jax (float64) and the relaxation and sensitivity code in this worker."""
    import jax

    jax.config.update("jax_enable_x64", True)
    from ..md import minimize, model, sensitivity  # noqa: F401


def _model(job: _Shared, system: Any, base: Any) -> Any:
    """This process's EnergyModel for the structure and study (built once, then reused)."""
    from ..md.model import build

    key = (job.structure_key, job.definition_key)
    with _MODELS_LOCK:
        model = _MODELS.get(key)
        if model is None:
            # one device per worker: the workers already share the machine's cores
            model = build(system, _spec.potential_at(base, job.model_point), devices=None)
            while len(_MODELS) >= _MAX_MODELS:
                _MODELS.pop(next(iter(_MODELS)))
            _MODELS[key] = model
    return model
