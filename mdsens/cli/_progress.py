r"""What a command is doing, on stderr: named stages with a spinner, and a relaxation
bar that measures the force against its target on a log scale.

A command runs in stages (``reading``, ``building the model`` (JAX starts and the energy
is compiled), ``relaxing`` (``compiling`` until the first chunk of steps returns),
``derivatives``, ``writing``). :class:`Progress` shows the current one on one transient
line of stderr with a spinner and the time spent in it, so nothing is silent for more
than a moment (rich redraws it from its own thread, also while XLA compiles), and the
line disappears when the command ends; its own summary follows on stdout.

The relaxation's line shows how far the largest force :math:`f` has come from the first
one reported, :math:`f_0`, towards the target :math:`f_t` (``--fmax``), on a log scale:

.. math:: \text{done} = \frac{\log(f_0 / f)}{\log(f_0 / f_t)} \in [0, 1]

(FIRE's force falls roughly exponentially near a minimum, so equal lengths of the bar take
roughly equal times), with the step count beside it, not a fraction of ``--max-steps``.

Nothing is drawn with ``-q``, nor when stderr is not a terminal (pipes and log files stay
clean). With ``-v`` each finished stage is also logged as one line ``[mdsens] stage: 1.2
s`` (terminal or not).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import click

__all__ = ["CHUNK", "Progress", "log_fraction"]

CHUNK = 100
"""Relaxation steps per compiled call while a bar is shown (the callback runs between
chunks). The steps and the result do not depend on the chunk size."""

Callback = Callable[[int, float, float], None]


def log_fraction(f0: float, f: float, target: float) -> float:
    r"""How far a force ``f`` has come from ``f0`` towards ``target`` on a log scale:
    :math:`\log(f_0/f) / \log(f_0/f_t)`, clipped to [0, 1]; 1 when ``f <= target``, 0
    when ``f`` is not finite."""
    if not math.isfinite(f):
        return 0.0
    if f <= target:
        return 1.0
    if not (math.isfinite(f0) and f0 > target > 0):
        return 0.0
    return min(1.0, max(0.0, math.log(f0 / f) / math.log(f0 / target)))


class Progress:
    """The stages of one command on stderr (a context manager; see the module docstring).

    Args:
      enabled: False for ``-q`` (nothing drawn).
      verbose: ``-v``: log each finished stage with its duration.
      console: a ``rich.console.Console`` (default: one on stderr); drawing only when it
        is a terminal.
    """

    def __init__(self, enabled: bool = True, verbose: bool = False, console: Any = None):
        self.verbose = verbose
        self._progress = None
        self._task = None
        self._stage: str | None = None
        self._started = 0.0
        if not enabled:
            return
        from rich.console import Console

        console = console if console is not None else Console(stderr=True)
        if not console.is_terminal:
            return
        from rich import progress as rp

        self._progress = rp.Progress(
            rp.SpinnerColumn(), rp.TextColumn("{task.description}"),
            rp.BarColumn(bar_width=20), rp.TextColumn("{task.fields[status]}"),
            rp.TimeElapsedColumn(), console=console, transient=True)

    @property
    def drawing(self) -> bool:
        """Whether a line is drawn (a terminal, no ``-q``)."""
        return self._progress is not None

    def __enter__(self) -> Progress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self._finish_stage(logged=exc_type is None)  # an unfinished stage is not logged
        if self._progress is not None:
            self._progress.stop()

    def stage(self, name: str, status: str = "") -> None:
        """Start stage ``name`` (the previous one ends); ``status``: text beside it."""
        self._finish_stage()
        self._stage, self._started = name, time.monotonic()
        if self._progress is not None:
            self._task = self._progress.add_task(name, total=None, status=status)

    def update(self, status: str) -> None:
        """Replace the text beside the current stage."""
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, status=status)

    def _finish_stage(self, logged: bool = True) -> None:
        if self._stage is None:
            return
        if self._progress is not None and self._task is not None:
            self._progress.remove_task(self._task)
            self._task = None
        if self.verbose and logged:
            click.echo(f"[mdsens] {self._stage}: {time.monotonic() - self._started:.2f} s",
                       err=True)
        self._stage = None

    def relax(self, fmax_target: float) -> Callback | None:
        """Start the ``relaxing`` stage; return ``callback(step, energy, fmax)`` for
        :func:`mdsens.md.relax`, or None when nothing is drawn (the library then runs its
        default chunks)."""
        self.stage("relaxing", "compiling")
        if self._progress is None:
            return None
        progress, task = self._progress, self._task
        progress.update(task, total=1000, completed=0)
        first: list[float] = []
        done = [0.0]

        def callback(step: int, energy: float, fmax_now: float) -> None:
            if not first and math.isfinite(fmax_now):
                first.append(fmax_now)
            f0 = first[0] if first else math.nan
            done[0] = max(done[0], log_fraction(f0, fmax_now, fmax_target))
            progress.update(task, completed=1000 * done[0],
                            status=f"fmax {fmax_now:.1e} → {fmax_target:.0e} eV/Å  "
                                   f"step {step}  E {energy:.9g} eV")

        return callback
