r"""One relaxation on several CPU cores: a pool of pinned worker processes.

XLA on CPU spreads a program's large loops over its own thread pool, which on this workload
reaches about 70 % parallel efficiency on two cores (a relaxation step is many small
loops, each split and joined again). A :class:`ProcessPool` instead runs K worker
processes, each pinned to one core with one XLA thread:

* every worker holds the whole system and runs the same :func:`mdsens.md.relax` (the
  minimiser, neighbour-list checks and rebuilds, convergence tests and safeguards are
  replicated: they are O(N) and cheap next to the forces);
* each energy-and-force evaluation of a pair potential is split by rows of the full
  neighbour list: worker k evaluates block k and the blocks meet in shared memory
  (:mod:`mdsens.md._exchange`); the energies and virials are summed in rank order, so every
  worker holds bitwise the same numbers and all take the same steps;
* rank 0's result comes back to this process as a :class:`~mdsens.md.Relaxation` whose
  ``model`` is this process's. Its ``nbrs`` is None: the workers' lists stay with them,
  and a list for the relaxed point costs an allocation (0.15 s at N = 32000, about 4 % of
  a two-core relaxation) that a caller who wants only the structure should not pay;
  ``result.model.allocate(R, cell)`` gives one, and :func:`mdsens.md.sensitivity` and
  the other consumers of a :class:`~mdsens.md.Relaxation` allocate it themselves.

The workers start once (import and compile cost is paid by the first relaxation of a
layout) and serve every later call of the pool: keep one pool for a parameter study::

    with ProcessPool(2) as pool:
        for sigma in sigmas:
            res = pool.relax(system, lennard_jones(sigma=sigma), fmax=1e-6)

``relax(..., processes=K)`` starts a pool for one call and closes it afterwards.

Scope: pair potentials (``PairPotential``: Lennard-Jones, Morse, soft spheres) on systems
with a neighbour list, fixed or relaxing cell, one system per call; a progress callback is
called in the calling process after every chunk. Many-body potentials (EAM, Tersoff,
Stillinger–Weber) are refused. POSIX only (pipes passed to the workers, shared memory). A
pool is for a machine whose cores are free: the workers wait for each other once per force
evaluation, so a core taken by another job slows every worker down; use one process
(``relax``) on a busy machine. The relaxation differs from a one-process run only in the
rounding of the energy sums (different block sizes and order), which can change the
step count slightly.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import struct
import subprocess
import sys
from collections.abc import Sequence
from typing import Any, BinaryIO

import numpy as np

__all__ = ["ProcessPool", "ProcessPoolError", "cannot_split"]

SINGLE_THREAD_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
ROWS_MARGIN = 1024  # padding rows a worker's blocks may add (the largest row block)


class ProcessPoolError(RuntimeError):
    """A worker process failed or stopped answering (the pool is closed)."""


# ------------------------------------------------------------------ framing
def send(stream: BinaryIO, obj: Any) -> None:
    """Write ``obj`` as an 8-byte length and a pickle."""
    blob = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(struct.pack("<Q", len(blob)) + blob)
    stream.flush()


def receive(stream: BinaryIO) -> Any:
    """Read one object written by :func:`send` (``EOFError`` when the stream ends)."""
    head = _read_exactly(stream, 8)
    return pickle.loads(_read_exactly(stream, struct.unpack("<Q", head)[0]))


def _read_exactly(stream: BinaryIO, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = stream.read(left)
        if not chunk:
            raise EOFError("the worker's pipe closed")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


# ------------------------------------------------------------------ the pool
@dataclasses.dataclass
class _Worker:
    process: subprocess.Popen
    to_worker: BinaryIO
    from_worker: BinaryIO


class ProcessPool:
    """K worker processes, one per core, that relax one system together (module docstring).

    Args:
      processes: number of worker processes (≥ 1).
      cores: the CPU cores to pin them to, one each (default: the first ``processes`` cores
        this process may run on).
      timeout: seconds a worker waits for a peer's rows before the call fails.
    Raises:
      ValueError: ``processes`` < 1, or more processes than cores.
    """

    def __init__(self, processes: int = 2, *, cores: Sequence[int] | None = None,
                 timeout: float = 300.0):
        if not isinstance(processes, int) or isinstance(processes, bool) or processes < 1:
            raise ValueError(f"processes must be an integer >= 1, got {processes!r}")
        available = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
            else list(range(os.cpu_count() or 1))
        cores = list(available[:processes] if cores is None else cores)
        if len(cores) < processes:
            raise ValueError(f"processes={processes}: this process may run on "
                             f"{len(available)} core(s); use processes <= {len(available)}")
        self.processes = processes
        self.cores = cores[:processes]
        self.timeout = float(timeout)
        self._segment: Any = None
        self._workers: list[_Worker] = []
        self.last_seconds: list[dict[str, float]] = []
        """Per worker, of the last call: ``relax`` (its whole relaxation), ``exchange``
        (time in the exchanges) and ``wait`` (of it, waiting for peers), seconds."""
        self._start()

    # -------------------------------------------------------------- life cycle
    def _start(self) -> None:
        env = dict(os.environ)
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {SINGLE_THREAD_FLAGS}".strip()
        env["OMP_NUM_THREADS"] = "1"
        env["JAX_PLATFORMS"] = "cpu"
        env["JAX_ENABLE_X64"] = "1" if _x64() else "0"
        for rank, core in enumerate(self.cores):
            down_r, down_w = os.pipe()
            up_r, up_w = os.pipe()
            process = subprocess.Popen(
                [sys.executable, "-m", "mdsens.md._process_worker", str(rank),
                 str(self.processes), str(down_r), str(up_w), str(core)],
                pass_fds=(down_r, up_w), env=env, stdin=subprocess.DEVNULL)
            os.close(down_r)
            os.close(up_w)
            self._workers.append(_Worker(process, os.fdopen(down_w, "wb", buffering=0),
                                         os.fdopen(up_r, "rb", buffering=0)))

    def close(self) -> None:
        """Stop the workers and free the shared memory (idempotent)."""
        for worker in self._workers:
            try:
                send(worker.to_worker, None)
            except OSError:
                pass
        for worker in self._workers:
            try:
                worker.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait()
            worker.to_worker.close()
            worker.from_worker.close()
        self._workers = []
        if self._segment is not None:
            self._segment.close()
            self._segment.unlink()
            self._segment = None

    def __enter__(self) -> ProcessPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    # -------------------------------------------------------------- relax
    def relax(self, system: Any, potential: Any, options: Any = None, *,
              callback: Any = None, on_failure: str = "raise", params: dict | None = None,
              **settings: Any) -> Any:
        """:func:`mdsens.md.relax` of ``system`` on the pool's processes (same arguments
        and result, without ``nbrs``, and the result's ``nbrs`` is None (module
        docstring); ``options.processes`` is ignored; ``callback`` is called here with
        the first worker's progress after every chunk).

        Raises:
          ValueError: as ``relax``, and for a potential or system the pool cannot split
            (not a pair potential, or no neighbour list).
          ProcessPoolError: a worker failed or stopped answering (the pool is then
            closed).
        """
        import jax

        from ..implicit.policy import check_policy
        from ._relaxation import Relaxation, Status, apply_policy
        from .minimize import prepare
        from .model import EnergyModel
        from .options import RelaxOptions

        if not self._workers:
            raise ProcessPoolError("the pool is closed")
        options = RelaxOptions.of(options, **settings)
        check_policy(on_failure)
        system, model, params = prepare(system, potential, options, params,
                                        "ProcessPool.relax")
        reason = cannot_split(model)
        if reason is not None:
            raise ValueError(f"processes > 1: {reason}: use processes=1")
        if isinstance(potential, EnergyModel):  # its list settings win, as in relax
            options = dataclasses.replace(options, neighbor_list=True, skin=model.skin,
                                          capacity_multiplier=model.capacity_multiplier)
            potential = model.potential
        options = dataclasses.replace(options, devices=None, processes=1)
        n_rows = model.n_atoms * model.n_copies + self.processes * ROWS_MARGIN
        request = {
            "system": _numpy_system(system), "potential": potential, "options": options,
            "params": jax.tree.map(np.asarray, params), "segment": self._shared(n_rows,
                                                                                 system.dim),
            "n_rows": n_rows, "timeout": self.timeout,
            "x64": _x64(), "progress": callback is not None,
        }
        out = self._call(request, callback)[0]

        def device(x: Any) -> Any:
            return None if x is None else jax.device_put(x)

        R, cell = device(out["positions"]), device(out["cell"])
        status = Status[out["status"]]
        result = Relaxation(
            system=system.replace(positions=R, cell=cell),
            energy=device(out["energy"]), forces=device(out["forces"]),
            fmax=device(out["fmax"]), stress=device(out["stress"]),
            stress_residual=device(out["stress_residual"]),
            nbrs=None, steps=out["steps"],
            converged=status is Status.CONVERGED, status=status, model=model)
        return apply_policy(result, on_failure)

    def _shared(self, n_rows: int, dim: int) -> str:
        """Name of a segment for ``n_rows`` × ``dim`` rows, its header zeroed."""
        from multiprocessing import shared_memory

        from ._exchange import HEADER_WORDS, part_bytes_for, segment_bytes

        need = segment_bytes(self.processes, n_rows, dim, part_bytes_for(n_rows))
        if self._segment is None or self._segment.size < need:
            if self._segment is not None:
                self._segment.close()
                self._segment.unlink()
            self._segment = shared_memory.SharedMemory(create=True, size=need)
        np.ndarray((HEADER_WORDS,), np.int64, self._segment.buf)[:] = 0
        return self._segment.name

    def _call(self, request: dict, callback: Any = None) -> list[dict]:
        """Send ``request`` to every worker and collect the replies in rank order
        (progress messages go to ``callback``)."""
        try:
            for worker in self._workers:
                send(worker.to_worker, request)
            replies = self._collect(callback)
        except KeyboardInterrupt:
            self._abort()
            raise
        except (OSError, EOFError) as err:
            self._abort()
            raise ProcessPoolError(f"a worker process stopped ({err}); the pool is "
                                   f"closed") from None
        errors = [r for r in replies if r[0] == "error"]
        if errors:
            # the first failure is the cause; the others were aborted by it
            first = next((r for r in errors if r[1] != "ExchangeAborted"), errors[0])
            if first[1] in ("ValueError", "TypeError"):
                raise ValueError(first[2].split(": ", 1)[-1])
            raise ProcessPoolError(f"a worker failed: {first[2]}")
        out = [r[1] for r in replies]
        self.last_seconds = [r["seconds"] for r in out]
        counts = {(r["steps"], r["evaluations"]) for r in out}
        if len(counts) != 1:
            self.close()
            raise ProcessPoolError(f"the workers took different (steps, evaluations) "
                                   f"{sorted(counts)}; the pool is closed")
        return out

    def _collect(self, callback: Any = None) -> list[tuple]:
        """Every worker's reply. A worker that exits without one raises ``EOFError``
        after the others were told to stop waiting for it (the segment's abort word).
        Workers whose evaluation counts stop moving for ``timeout`` seconds are stuck:
        they are killed and :class:`ProcessPoolError` is raised."""
        import select
        import time

        from ._exchange import HEADER_WORDS

        pending = {w.from_worker.fileno(): k for k, w in enumerate(self._workers)}
        replies: list[Any] = [None] * len(self._workers)
        header = np.ndarray((HEADER_WORDS,), np.int64, self._segment.buf)
        seen, moved = header[1:1 + self.processes].copy(), time.monotonic()
        while pending:
            ready, _, _ = select.select(list(pending), [], [], 1.0)
            now = time.monotonic()
            counts = header[1:1 + self.processes].copy()
            if ready or np.any(counts != seen):
                seen, moved = counts, now
            elif now - moved > self.timeout:
                self._abort()
                raise ProcessPoolError(f"the workers made no progress for "
                                       f"{self.timeout:g} s; the pool is closed")
            for fd in ready:
                k = pending.pop(fd)
                try:
                    reply = receive(self._workers[k].from_worker)
                except EOFError:
                    self._abort_exchange()
                    raise
                if reply[0] == "progress":  # not the answer yet
                    pending[fd] = k
                    if callback is not None:
                        callback(*reply[1:])
                    continue
                replies[k] = reply
            for fd, k in list(pending.items()):
                if self._workers[k].process.poll() is not None and fd not in ready:
                    self._abort_exchange()
                    raise EOFError(f"worker {k} exited with status "
                                   f"{self._workers[k].process.returncode}")
        return replies

    def _abort_exchange(self) -> None:
        if self._segment is not None:
            np.ndarray((1,), np.int64, self._segment.buf)[0] = 1

    def _abort(self) -> None:
        """Kill the workers (a call that cannot finish) and close the pool."""
        for worker in self._workers:
            worker.process.kill()
        self.close()


def cannot_split(model: Any) -> str | None:
    """Why a :class:`ProcessPool` cannot split relaxations of ``model`` (an
    ``EnergyModel``), or None when it can: it splits pair potentials on systems with a
    neighbour list."""
    from .potentials.pair import PairPotential

    if not isinstance(model.potential, PairPotential):
        return f"only pair potentials are split, not {model.potential.name}"
    if not model.uses_neighbor_list:
        return f"{model.n_atoms} atoms are too few to split (no neighbour list)"
    return None


def _x64() -> bool:
    import jax

    return bool(jax.config.jax_enable_x64)


def _numpy_system(system: Any) -> Any:
    return system.replace(positions=np.asarray(system.positions),
                          cell=np.asarray(system.cell), species=np.asarray(system.species))
