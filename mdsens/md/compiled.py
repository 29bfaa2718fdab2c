"""Compiled code of mdsens: count compilations, and free what mdsens keeps.

mdsens compiles a relaxation loop, derivative stages and neighbour-list searches once per
model layout (:mod:`mdsens.md._models` shares models between calls of the same layout) and
keeps them for the life of the process, as JAX keeps any jitted function's programs. A
long-running program that walks through many layouts (a study over many structures) can
release them with :func:`free`; the caller's own jitted functions are not touched (the
library never calls ``jax.clear_caches()``).

:func:`compilations` counts XLA compilations in a block, through JAX's public monitoring
events: a check that a second call reuses compiled code::

    with compilations() as count:
        relax(system, potential)
    assert count.value == 0
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import threading
from collections.abc import Iterator

import jax

__all__ = ["CompileCount", "compilations", "free", "total"]

_EVENT = "/jax/core/compile/backend_compile_duration"
_lock = threading.Lock()
_total = 0


def _listen(event: str, duration: float, **kwargs) -> None:
    global _total
    if event == _EVENT:
        with _lock:
            _total += 1


jax.monitoring.register_event_duration_secs_listener(_listen)


def total() -> int:
    """XLA compilations of this process since mdsens.md.compiled was imported."""
    return _total


@dataclasses.dataclass
class CompileCount:
    """XLA compilations since the block started (``value``; updated live)."""

    start: int
    end: int | None = None

    @property
    def value(self) -> int:
        return (_total if self.end is None else self.end) - self.start


@contextlib.contextmanager
def compilations() -> Iterator[CompileCount]:
    """Count the XLA compilations (any code of the process, cache hits of JAX's persistent
    cache included) made inside the ``with`` block."""
    count = CompileCount(_total)
    try:
        yield count
    finally:
        count.end = _total


def free() -> int:
    """Forget the models mdsens keeps and empty the compile caches of mdsens's own jitted
    functions (relaxation loops, derivative stages, neighbour-list searches, ...), so their
    programs are freed once nothing else refers to them. Returns how many functions were
    emptied. Programs are compiled again on next use."""
    from . import _models

    _models.clear()
    emptied = 0
    for name, module in list(sys.modules.items()):
        if not name.startswith("mdsens.") or module is None:
            continue
        for value in list(vars(module).values()):
            for fn in (value.values() if isinstance(value, dict) else (value,)):
                if hasattr(fn, "lower") and callable(getattr(fn, "clear_cache", None)):
                    fn.clear_cache()
                    emptied += 1
    return emptied
