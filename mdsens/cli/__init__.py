"""The ``mdsens`` command line (click). Console script: ``mdsens = mdsens.cli:run``.

Commands live in small modules; this package imports only click, so ``mdsens --help`` does
not import jax (jax is imported inside command bodies).
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from typing import Any

import click

from .. import __version__
from ._common import BadInput
from ._common import ExitCode as ExitCode
from .inspect import inspect_cmd
from .plot import plot_cmd
from .potentials import potentials_cmd
from .relax import relax_cmd
from .scan import scan_cmd
from .sensitivity import sensitivity_cmd

__all__ = ["INTERRUPTED", "ExitCode", "main", "run"]

INTERRUPTED = 130
"""Exit status after Ctrl-C (128 + SIGINT, as a shell reports a process killed by it)."""


class _Group(click.Group):
    """The ``mdsens`` group: Ctrl-C (SIGINT, KeyboardInterrupt) during a command ends it
    with one line, ``interrupted``, and exit status 130 (click's default is ``Aborted!``
    and 1, which the commands use for "not converged"); outputs are written atomically
    (a temporary file renamed at the end), so an interrupted command leaves none. A usage
    error of a command (a bad choice, a missing option) is one line too, ``Error: ...
    (see 'mdsens CMD --help')``, exit status 2, like every other bad input."""

    def invoke(self, ctx: click.Context):
        interrupt = _Interrupt.install()
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(INTERRUPTED)
        except click.UsageError as exc:
            path = exc.ctx.command_path if exc.ctx is not None else ctx.command_path
            raise BadInput(f"{exc.format_message()} (see '{path} --help')") from None
        finally:
            interrupt.restore()


class _Interrupt:
    """Ctrl-C that always ends the command. Python raises KeyboardInterrupt at the next
    bytecode boundary of the main thread; when that boundary is inside a garbage-collector
    callback (JAX registers one), the exception cannot propagate: Python hands it to
    ``sys.unraisablehook``, which would print a traceback and let the command run on. While
    a command runs, this hook takes such a KeyboardInterrupt instead and raises it again in
    the main thread a moment later (``_thread.interrupt_main``), silently."""

    def __init__(self) -> None:
        self._previous = sys.unraisablehook

    @classmethod
    def install(cls) -> _Interrupt:
        interrupt = cls()
        sys.unraisablehook = interrupt._hook
        return interrupt

    def _hook(self, unraisable: Any) -> None:
        if issubclass(unraisable.exc_type, KeyboardInterrupt):
            # from another thread, once this hook has returned: raised inside the hook, it
            # would be dropped again
            threading.Timer(0.05, _interrupt_main).start()
            return
        self._previous(unraisable)

    def restore(self) -> None:
        """The command ended: the previous hook again."""
        if sys.unraisablehook == self._hook:
            sys.unraisablehook = self._previous


def _interrupt_main() -> None:
    import _thread

    _thread.interrupt_main()


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="mdsens")
def main() -> None:
    """Sensitivities of relaxed atomic structures by implicit differentiation.

    \b
    A first session:
      mdsens potentials
      mdsens relax data/ar_fcc_32.extxyz -p lj --param sigma=3.4 \\
          --param epsilon=0.0104 -o relaxed.h5
      mdsens sensitivity data/ar_fcc_32.extxyz -p lj --param sigma=3.4 \\
          --param epsilon=0.0104 --wrt sigma --observable energy -o out.h5
      mdsens inspect out.h5
      mdsens plot out.h5 -o out.png

    Exit codes: 0 success, 1 not converged (file written with converged=false,
    unless --no-partial), 2 bad usage or bad input (no file written).
    Options can also come from a TOML file: --config run.toml (see docs/cli.md).
    Compiled code is kept in ~/.cache/mdsens (MDSENS_CACHE_DIR=off to opt out).
    """
    # XLA's C++ log lines (a spurious loader error for every cached program, "slow
    # compile" alarms) are not for a command's user; set before any command imports jax.
    # "1" is jax's own default, inherited from a parent Python process that imported jax.
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL", "1") == "1":
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"


main.add_command(relax_cmd)
main.add_command(sensitivity_cmd)
main.add_command(inspect_cmd)
main.add_command(plot_cmd)
main.add_command(potentials_cmd)
main.add_command(scan_cmd)


def run() -> None:
    """The console script (and ``python -m mdsens.cli``): :data:`main`, then a quick exit.

    Non-daemon threads are joined, the exit handlers run (``atexit``: logging, jax's own
    clean-up, ...) and the output streams are flushed, but the interpreter's teardown of
    jax and of every loaded module (0.3-0.6 s, more than many commands' own work) is
    skipped: every file a command
    writes is complete and closed before it returns. ``main`` itself (click's test runner,
    a Python caller) keeps the normal exit.
    """
    try:
        main(prog_name="mdsens")
        status = 0
    except SystemExit as exc:  # click's standalone mode always ends here
        code = exc.code
        if code is None or isinstance(code, int):
            status = code or 0
        else:  # sys.exit("message"): printed, status 1, as the interpreter does
            print(code, file=sys.stderr)
            status = 1
    for thread in threading.enumerate():  # what the interpreter's shutdown would wait for
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (``mdsens ... | head``)
            pass
    os._exit(status)
