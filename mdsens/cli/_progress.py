"""A progress bar (rich) for long relaxations, fed by ``relax(callback=...)``.

The bar goes to stderr, only when stderr is a terminal and ``-q`` is not given, and only
once a relaxation has run for ``delay`` seconds (short runs print nothing). It is transient:
it disappears when the relaxation ends, and the command's own summary line follows.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["CHUNK", "relax_progress"]

CHUNK = 100
"""Relaxation steps per compiled call while a bar may be shown (the callback runs between
chunks). The steps and the result do not depend on the chunk size."""

Callback = Callable[[int, float, float], None]


@contextlib.contextmanager
def relax_progress(enabled: bool, max_steps: int, *, delay: float = 1.0,
                   console: Any = None) -> Iterator[Callback | None]:
    """Yield ``callback(step, energy, fmax)`` for :func:`mdsens.md.relax`, or None when no
    bar can be shown (disabled, or stderr not a terminal).

    Args:
      enabled: False for ``-q``.
      max_steps: the relaxation's step cap (the bar's total).
      delay: seconds before the bar appears.
      console: a ``rich.console.Console`` (default: stderr).
    """
    if not enabled:
        yield None
        return
    from rich.console import Console

    console = console if console is not None else Console(stderr=True)
    if not console.is_terminal:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn("relaxing"), BarColumn(bar_width=12), MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
        console=console, transient=True,
    )
    task = progress.add_task("relax", total=max_steps, status="")
    start = time.monotonic()
    started = False

    def callback(step: int, energy: float, fmax_now: float) -> None:
        nonlocal started
        progress.update(task, completed=step,
                        status=f"fmax {fmax_now:.1e} eV/Å  E {energy:.9g} eV")
        if not started and time.monotonic() - start >= delay:
            progress.start()
            started = True
        if started:
            progress.refresh()

    try:
        yield callback
    finally:
        if started:
            progress.stop()
