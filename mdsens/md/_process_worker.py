"""Main loop of one worker process of :class:`mdsens.md.processes.ProcessPool`.

Started by the pool as ``python -m mdsens.md._process_worker RANK SIZE READ_FD WRITE_FD
CORE`` with one XLA thread (``XLA_FLAGS``); it pins itself to ``CORE`` before importing JAX,
then answers requests read from ``READ_FD`` (length-prefixed pickles, see
:func:`mdsens.md.processes.send`) until it reads ``None`` or the pipe closes.

A ``relax`` request carries the start system, the potential, the options and parameters,
and the shared-memory segment's name and size. Every worker runs the same
:func:`mdsens.md.relax` on a model whose energy evaluations cover only its own block of
neighbour-list rows (:class:`~mdsens.md._exchange.ProcessRows`); the exchange makes every
worker's numbers identical, so all take the same steps. Rank 0 answers with the result as
numpy arrays (after ``("progress", step, energy, fmax)`` messages after every chunk
when the request asks for them); the others answer with their step and evaluation counts
(the pool checks they agree). A failure is answered with its type and message.
"""

from __future__ import annotations

import os
import sys
import time
import traceback


def main(argv: list[str]) -> int:
    rank, size, read_fd, write_fd, core = (int(a) for a in argv[:5])
    if core >= 0 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {core})
    import jax  # before the first request: it is unpickled with the pool's precision

    jax.config.update("jax_enable_x64", os.environ.get("JAX_ENABLE_X64") == "1")
    # Programs run inline, nothing queued behind the one whose host callback is waiting
    # for a peer (with io_callback's argument copies that queue deadlocked; the exchange
    # no longer copies, and inline dispatch costs nothing in a loop of long programs)
    jax.config.update("jax_cpu_enable_async_dispatch", False)
    from . import minimize  # noqa: F401 - imported while the pool's caller goes on
    from .processes import receive, send

    reader = os.fdopen(read_fd, "rb", buffering=0)
    writer = os.fdopen(write_fd, "wb", buffering=0)
    models: dict = {}
    while True:
        try:
            request = receive(reader)
        except EOFError:
            return 0
        if request is None:
            return 0
        try:
            if bool(request["x64"]) != bool(jax.config.jax_enable_x64):
                raise ValueError("jax_enable_x64 changed since the pool started: start a "
                                 "new ProcessPool")
            progress = None
            if rank == 0 and request.get("progress"):
                def progress(step, energy, fmax):
                    send(writer, ("progress", step, energy, fmax))
            send(writer, ("ok", _relax(rank, size, request, models, progress)))
        except BaseException as err:  # noqa: BLE001 - every failure goes back to the pool
            from ._exchange import abort_all

            abort_all()
            detail = "".join(traceback.format_exception_only(type(err), err)).strip()
            send(writer, ("error", type(err).__name__, detail, traceback.format_exc()))
            if isinstance(err, KeyboardInterrupt):
                return 130


def _relax(rank: int, size: int, request: dict, models: dict, progress=None) -> dict:
    import dataclasses

    import numpy as np

    from . import _exchange
    from ._models import model_for, program_key
    from .minimize import relax

    system, potential, options = request["system"], request["potential"], request["options"]
    rows = _exchange.ProcessRows(rank, size, request["segment"])
    base = model_for(system, potential, neighbor_list=options.neighbor_list,
                     skin=options.skin, capacity_multiplier=options.capacity_multiplier,
                     devices=None)
    key = (program_key(base), rows)
    model = models.get(key) if key[0] is not None else None
    if model is None:
        model = dataclasses.replace(base, mesh=rows)
        if key[0] is not None:
            models[key] = model
    channel = _exchange.attach(request["segment"], size, request["n_rows"], system.dim,
                               timeout=request["timeout"],
                               part_bytes=_exchange.part_bytes_for(request["n_rows"]))
    channel.reset()
    start = time.perf_counter()
    result = relax(system, model, options, params=request["params"], on_failure="ignore",
                   callback=progress)
    if channel.failure is not None:
        raise _exchange.ExchangeAborted(channel.failure)
    counts = {"steps": int(result.steps), "evaluations": channel.count,
              "seconds": dict(channel.seconds, relax=time.perf_counter() - start)}
    if rank != 0:
        return counts

    def host(x):
        return None if x is None else np.asarray(x)

    return {
        "positions": host(result.system.positions), "cell": host(result.system.cell),
        "energy": host(result.energy), "forces": host(result.forces),
        "fmax": host(result.fmax), "stress": host(result.stress),
        "stress_residual": host(result.stress_residual), "status": result.status.name,
        **counts,
    }


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
