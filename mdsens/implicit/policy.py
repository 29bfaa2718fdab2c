"""The failure policy every mdsens result obeys: ``on_failure`` in ``"raise"``, ``"warn"``,
``"nan"``, ``"ignore"``.

A failed linear solve, root solve, relaxation or sensitivity is surfaced by one rule
(:func:`surface`); the status is kept in the result under every policy:

- ``"raise"``: the caller's error type is raised with the message;
- ``"warn"``: the caller's warning type is issued, the result is returned unchanged;
- ``"nan"``: the result with its numbers replaced by NaN (the caller says which);
- ``"ignore"``: the result unchanged.

Traced solves apply the same rule from inside ``jit`` (``mdsens.implicit._solution``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Literal, TypeVar

__all__ = ["POLICIES", "Policy", "check_policy", "surface"]

Policy = Literal["raise", "warn", "nan", "ignore"]
POLICIES: tuple[str, ...] = ("raise", "warn", "nan", "ignore")

T = TypeVar("T")


def check_policy(on_failure: str) -> None:
    """``ValueError`` unless ``on_failure`` is one of :data:`POLICIES`."""
    if on_failure not in POLICIES:
        raise ValueError(f"on_failure must be one of {POLICIES}, got {on_failure!r}")


def surface(result: T, message: str | None, on_failure: str, *,
            error: Callable[[str], BaseException], warning: type[Warning],
            nan: Callable[[T], T] | None = None, stacklevel: int = 3) -> T:
    """Apply ``on_failure`` to ``result`` when ``message`` (the failure) is not None.

    Args:
      result: what the computation produced (returned as is when it did not fail).
      message: one line saying what failed and what to do, or None for success.
      error: builds the exception ``"raise"`` raises (e.g. ``SensitivityError``).
      warning: the warning category ``"warn"`` issues.
      nan: ``result -> result`` with its numbers made NaN, for ``"nan"`` (None: as
        ``"ignore"``).
    """
    check_policy(on_failure)
    if message is None or on_failure == "ignore":
        return result
    if on_failure == "raise":
        raise error(message)
    if on_failure == "warn":
        warnings.warn(message, warning, stacklevel=stacklevel)
        return result
    return result if nan is None else nan(result)
