r"""Force rows shared between worker processes through POSIX shared memory.

K worker processes (:mod:`mdsens.md.processes`) relax one system together: each evaluates
the energy terms and position gradients of its own contiguous block of neighbour-list rows
(``rank`` of ``size``), then every process needs the whole gradient. :func:`exchange` does
that from inside the compiled loop (a host callback on the program's buffers):

1. write my rows of :math:`\partial E/\partial R` (or, ``summed``, my whole partial
   gradient: pairs listed once scatter forces onto other processes' atoms) into my
   ``(n_rows, d)`` slab of the segment, my partial energy and virial into my slot;
2. publish my evaluation count (a counter in the segment's header);
3. wait until every process has published this evaluation;
4. read every rank's rows (or add every rank's slab), and sum the energies and virials
   **in rank order**, so every process holds bitwise the same numbers (the replicas then
   take identical steps).

Two copies of the data area alternate by evaluation parity: a process can be at most one
evaluation ahead of the slowest (it waits for everyone's count), so it never overwrites
rows a peer is still reading.

Neighbour-list rebuilds are shared the same way (:class:`CellShare`): each process tests
the pairs of its own range of grid cells and :func:`gather_parts` hands every process all
ranges' packed bits, through a third area of the segment (one copy: between two rebuilds
lies at least one force exchange, which every process reaches only after reading).
Exchanges of both kinds count in the same sequence.

Segment layout (float64 / int64, 8-byte words): ``[abort, count_0 .. count_{K-1}]`` padded
to 64 words, then per parity ``K * 11`` scalars (energy, a checksum of the positions,
virial 3×3) and ``K * n_rows * d`` gradient entries (one slab per rank), then
``part_bytes`` for the rebuilds' shared bits.

Waiting spins for a short while, then sleeps in growing steps (≤ 1 ms), so a process whose
peer is descheduled does not keep its core busy. A peer that fails sets ``abort``; a peer
that stops answering fails the exchange after ``timeout`` seconds, and so do replicas
whose positions differ (a checksum travels with the rows).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

import numpy as np

__all__ = ["CellShare", "ExchangeAborted", "ExchangeTimeout", "ProcessRows", "RowChannel",
           "abort_all", "attach", "exchange", "gather_parts", "part_bytes_for",
           "segment_bytes"]

HEADER_WORDS = 64
MAX_VIRIAL = 9
SCALARS = 2 + MAX_VIRIAL  # energy, position checksum, virial


class ExchangeTimeout(RuntimeError):
    """A peer process did not publish its rows in time."""


class ExchangeAborted(RuntimeError):
    """A peer process failed (it set the segment's abort word)."""


@dataclasses.dataclass(frozen=True)
class ProcessRows:
    """This process's share of every energy-and-force evaluation (hashable: it is part of
    the compiled program's identity).

    Attributes:
      rank: this process's index, 0 ≤ rank < size; it evaluates row block ``rank``.
      size: processes sharing the evaluation.
      channel: name of the shared-memory segment (:func:`attach` opens it).
    """

    rank: int
    size: int
    channel: str

    def row_range(self, n: int) -> tuple[int, int]:
        """``(lo, hi)``: the rows (atoms) this process evaluates and lists, ``[r p, (r + 1)
        p)`` with ``p = ceil(n / size)``, clipped to ``n``."""
        per = -(-n // self.size)
        lo = min(self.rank * per, n)
        return lo, min(lo + per, n)

    def cells(self) -> CellShare:
        """The sharer of neighbour-list rebuilds among the same processes."""
        return CellShare(self)


@dataclasses.dataclass(frozen=True)
class CellShare:
    """The ``split`` of :func:`mdsens.md._cell_search.dense_search` among the processes of
    ``rows``: ``rank``, ``size`` and ``gather(part)`` (:func:`gather_parts`)."""

    rows: ProcessRows

    @property
    def rank(self) -> int:
        return self.rows.rank

    @property
    def size(self) -> int:
        return self.rows.size

    def fits(self, shape: tuple[int, ...], dtype: Any) -> bool:
        """Whether the segment holds every process's part of ``shape`` and ``dtype``
        (read when a program is traced; False without an attached segment)."""
        entry = _CHANNELS.get(self.rows.channel)
        need = self.size * int(np.prod(shape)) * np.dtype(dtype).itemsize
        return entry is not None and need <= entry[1].part_bytes

    def row_range(self, n: int) -> tuple[int, int]:
        """The rows whose neighbours this process lists (:meth:`ProcessRows.row_range`)."""
        return self.rows.row_range(n)

    def gather(self, part: Any) -> Any:
        """Traced: every process's ``part`` concatenated along axis 0 in rank order."""
        return gather_parts(self.rows, part)

    def most(self, values: Any) -> Any:
        """Traced: the elementwise largest of every process's ``values`` (int32 ``(k,)``)."""
        import jax.numpy as jnp

        return jnp.max(gather_parts(self.rows, jnp.asarray(values, jnp.int32)[None]), axis=0)


def part_bytes_for(n_rows: int) -> int:
    """Room for the rebuilds' shared bits of a system of ``n_rows`` atoms: 512 bytes an
    atom (cell slots × 32-bit words: ≈ 375 bytes an atom for a Kob–Andersen liquid, 225
    for LJ fcc; a larger need falls back to searching alone)."""
    return 512 * n_rows


def segment_bytes(size: int, n_rows: int, dim: int, part_bytes: int = 0) -> int:
    """Bytes of a segment for ``size`` processes, up to ``n_rows`` rows of ``dim`` and
    ``part_bytes`` of shared rebuild bits."""
    return 8 * (HEADER_WORDS + 2 * size * (SCALARS + n_rows * dim)) + part_bytes


class RowChannel:
    """One process's view of a segment (see the module docstring).

    A failure (a peer's abort, a timeout, replicas whose positions differ) does not raise
    inside the compiled program (XLA cannot unwind a host callback): the exchange then
    returns NaN at once, which ends the relaxation (non-finite trials), and
    :attr:`failure` says why; the worker reports it.
    """

    def __init__(self, buffer: Any, size: int, n_rows: int, dim: int, timeout: float,
                 part_bytes: int = 0):
        self.size, self.n_rows, self.dim, self.timeout = size, n_rows, dim, timeout
        self.header = np.ndarray((HEADER_WORDS,), np.int64, buffer, 0)
        offset = 8 * HEADER_WORDS
        self.scalars, self.rows = [], []
        for _ in range(2):
            self.scalars.append(np.ndarray((size, SCALARS), np.float64, buffer, offset))
            offset += 8 * size * SCALARS
            self.rows.append(np.ndarray((size, n_rows, dim), np.float64, buffer, offset))
            offset += 8 * size * n_rows * dim
        self.part_bytes = part_bytes
        self.parts = np.ndarray((part_bytes,), np.uint8, buffer, offset)
        self.count = 0
        self.failure: str | None = None
        self.seconds = {"exchange": 0.0, "wait": 0.0}

    def reset(self) -> None:
        """Start counting evaluations (and the time spent exchanging and waiting for
        peers, :attr:`seconds`) from zero (every process, before a new job)."""
        self.count = 0
        self.failure = None
        self.seconds = {"exchange": 0.0, "wait": 0.0}

    def abort(self) -> None:
        self.header[0] = 1

    def exchange(self, rank: int, energy: np.ndarray, grad: np.ndarray, virial: np.ndarray,
                 checksum: np.ndarray, summed: bool = False
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Publish this rank's ``energy`` (scalar), ``grad`` ``(rows_per_rank, d)`` (with
        ``summed``: ``(n, d)``, a partial gradient of every atom), ``virial`` (≤ 9
        entries) and ``checksum`` (of the positions: every replica must send the same);
        return the totals and the whole gradient (the ranks' rows one after another, or
        with ``summed`` their sum in rank order), identical in every process (NaN after a
        failure)."""
        self.count += 1
        per = grad.shape[0]
        if self.failure is None:
            start = time.perf_counter()
            try:
                return self._exchange(rank, energy, grad, virial, checksum, per, summed)
            except (ExchangeAborted, ExchangeTimeout) as err:
                self.failure = str(err)
                self.abort()
            finally:
                self.seconds["exchange"] += time.perf_counter() - start
        nan = np.full((), np.nan)
        return (nan, np.full((per if summed else per * self.size, grad.shape[1]), np.nan),
                np.full(virial.shape, np.nan))

    def _exchange(self, rank, energy, grad, virial, checksum, per, summed):
        parity = self.count % 2
        rows, scalars = self.rows[parity], self.scalars[parity]
        if summed:
            rows[rank, :per] = grad
        else:
            rows[rank, rank * per:(rank + 1) * per] = grad
        scalars[rank, 0] = energy
        scalars[rank, 1] = checksum
        scalars[rank, 2:2 + virial.size] = virial.ravel()
        self.header[1 + rank] = self.count
        start = time.perf_counter()
        self._wait()
        self.seconds["wait"] += time.perf_counter() - start
        if np.any(scalars[:, 1] != scalars[rank, 1]):
            raise ExchangeAborted(f"the worker processes' positions differ at evaluation "
                                  f"{self.count} (their states drifted apart)")
        total = scalars[0].copy()
        for r in range(1, self.size):  # rank order: the same rounding everywhere
            total = total + scalars[r]
        if summed:
            whole = rows[0, :per].copy()
            for r in range(1, self.size):
                whole += rows[r, :per]
        else:
            whole = np.concatenate([rows[r, r * per:(r + 1) * per] for r in range(self.size)])
        return (np.asarray(total[0]), whole, total[2:2 + virial.size].reshape(virial.shape))

    def gather(self, rank: int, part: np.ndarray) -> np.ndarray:
        """Publish this rank's ``part`` and return all ranks' parts concatenated along
        axis 0 in rank order (zeros after a failure)."""
        self.count += 1
        whole = (self.size * part.shape[0], *part.shape[1:])
        if self.failure is None:
            start = time.perf_counter()
            try:
                area = self.parts[:self.size * part.nbytes].view(part.dtype).reshape(
                    (self.size, *part.shape))
                area[rank] = part
                self.header[1 + rank] = self.count
                wait = time.perf_counter()
                self._wait()
                self.seconds["wait"] += time.perf_counter() - wait
                return area.reshape(whole).copy()
            except (ExchangeAborted, ExchangeTimeout) as err:
                self.failure = str(err)
                self.abort()
            finally:
                self.seconds["exchange"] += time.perf_counter() - start
        return np.zeros(whole, part.dtype)

    def _wait(self) -> None:
        counts = self.header[1:1 + self.size]
        spins, start, pause = 0, None, 2e-6
        while True:
            if self.header[0]:
                raise ExchangeAborted("a peer process failed")
            if int(counts.min()) >= self.count:
                return
            spins += 1
            if spins < 20000:
                continue
            now = time.monotonic()
            if start is None:
                start = now
            elif now - start > self.timeout:
                raise ExchangeTimeout(
                    f"a peer process did not answer within {self.timeout:g} s")
            time.sleep(pause)
            pause = min(2 * pause, 1e-3)


_CHANNELS: dict[str, tuple[Any, RowChannel]] = {}


def attach(name: str, size: int, n_rows: int, dim: int, timeout: float = 300.0,
           part_bytes: int = 0) -> RowChannel:
    """This process's channel on segment ``name`` (opened once, kept while the process
    lives; the creating process owns and unlinks the segment)."""
    entry = _CHANNELS.get(name)
    if entry is not None and (entry[1].size, entry[1].n_rows, entry[1].dim,
                              entry[1].part_bytes) == (size, n_rows, dim, part_bytes):
        entry[1].timeout = timeout
        return entry[1]
    from multiprocessing import resource_tracker, shared_memory

    segment = shared_memory.SharedMemory(name=name)
    try:  # the parent owns the segment: this process must not unlink it when it exits
        resource_tracker.unregister(segment._name, "shared_memory")  # noqa: SLF001
    except Exception:  # noqa: BLE001 - tracker internals differ between Python versions
        pass
    channel = RowChannel(segment.buf, size, n_rows, dim, timeout, part_bytes)
    _CHANNELS[name] = (segment, channel)
    return channel


def abort_all() -> None:
    """Set the abort word of every segment this process opened (it failed: its peers stop
    waiting for it)."""
    for _, chan in _CHANNELS.values():
        chan.abort()


def channel(name: str) -> RowChannel:
    """The channel :func:`attach` opened for ``name`` in this process."""
    return _CHANNELS[name][1]


def exchange(rows: ProcessRows, energy: Any, grad: Any, virial: Any, positions: Any,
             summed: bool = False) -> tuple:
    """Traced: every process's rows and summed energy and virial (a host callback, see
    the module docstring). ``grad`` ``(rows_per_rank, d)``, or with ``summed`` this
    process's partial gradient of every atom ``(n, d)``; ``positions`` are checked to be
    the same in every process. Returns ``(energy, grad of all ranks (size *
    rows_per_rank, d), or the sum of all ranks' (n, d), virial)``. Not differentiable
    (relaxations only need values)."""
    import jax.numpy as jnp

    checksum = jnp.sum(positions * jnp.arange(1, positions.size + 1, dtype=positions.dtype
                                             ).reshape(positions.shape))
    return tuple(_primitive().bind(energy, grad, virial, checksum, rows=rows,
                                   summed=bool(summed)))


def _callback_primitive(name: str, host: Any, abstract: Any, multiple_results: bool
                        ) -> Any:
    """A primitive whose CPU lowering calls ``host(**params)`` (a function of numpy arrays
    returning a tuple of arrays) on the program's own buffers. (``jax.experimental.
    io_callback`` first copies its arguments to a device, a copy that can queue behind the
    running program and wait for ever, and costs about a millisecond a step at
    N = 32000.)"""
    from jax.extend.core import Primitive
    from jax.interpreters import mlir

    prim = Primitive(name)
    prim.multiple_results = multiple_results

    def impl(*args, **params):
        import jax

        out = [jax.device_put(np.asarray(x))
               for x in host(**params)(*(np.asarray(x) for x in args))]
        return out if multiple_results else out[0]

    def lowering(ctx, *args, **params):
        results, _, _ = mlir.emit_python_callback(
            ctx, host(**params), None, list(args), ctx.avals_in, ctx.avals_out,
            has_side_effect=True, returns_token=False)
        return results

    prim.def_abstract_eval(abstract)
    prim.def_impl(impl)
    mlir.register_lowering(prim, lowering, platform="cpu")
    return prim


@functools.lru_cache(maxsize=1)
def _primitive() -> Any:
    """The exchange as a primitive calling :meth:`RowChannel.exchange`."""

    def host(rows: ProcessRows, summed: bool) -> Any:
        def call(e, g, w, c):
            return channel(rows.channel).exchange(rows.rank, e, g, w, c, summed)
        return call

    def abstract(e, g, w, c, *, rows, summed):
        from jax.core import ShapedArray

        n = g.shape[0] if summed else rows.size * g.shape[0]
        return (ShapedArray((), e.dtype), ShapedArray((n, g.shape[1]), g.dtype),
                ShapedArray(w.shape, w.dtype))

    return _callback_primitive("mdsens_row_exchange", host, abstract, True)


def gather_parts(rows: ProcessRows, part: Any) -> Any:
    """Traced: every process's ``part`` (same shape and dtype in each) concatenated along
    axis 0 in rank order, through the segment's part area (a host callback like
    :func:`exchange`). Not differentiable (integer data)."""
    return _gather_primitive().bind(part, rows=rows)


@functools.lru_cache(maxsize=1)
def _gather_primitive() -> Any:
    """:func:`gather_parts` as a primitive calling :meth:`RowChannel.gather`."""

    def host(rows: ProcessRows) -> Any:
        def call(part):
            return (channel(rows.channel).gather(rows.rank, part),)
        return call

    def abstract(part, *, rows):
        from jax.core import ShapedArray

        return ShapedArray((rows.size * part.shape[0], *part.shape[1:]), part.dtype)

    return _callback_primitive("mdsens_part_gather", host, abstract, False)
