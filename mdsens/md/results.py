"""The result of :func:`mdsens.md.sensitivity.sensitivity` and its failure types.

Plain data (numpy only): files are read back into a :class:`Sensitivity` without importing
JAX (``mdsens inspect``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

__all__ = ["Sensitivity", "SensitivityError", "SensitivityWarning"]


class SensitivityError(RuntimeError):
    """The relaxation or a derivative solve failed, or the state is not a minimum."""


class SensitivityWarning(RuntimeWarning):
    pass


@dataclasses.dataclass(frozen=True)
class Sensitivity:
    """Result of :func:`sensitivity`.

    Attributes:
      values: observable name -> value at the relaxed state (numpy arrays).
      derivatives: observable name -> parameter name -> derivative of shape
        ``observable.shape + parameter.shape``.
      units: observable name -> unit string.
      wrt: the parameter names, in request order, with ``parameter_shapes``.
      diagnostics: relaxation and solve diagnostics (see :func:`sensitivity`).
      relaxation: the :class:`~mdsens.md.minimize.Relaxation` the derivatives were taken at.
      converged: relaxation converged, every solve converged, no negative curvature.
    """

    values: dict[str, np.ndarray]
    derivatives: dict[str, dict[str, np.ndarray]]
    units: dict[str, str]
    wrt: tuple[str, ...]
    parameter_shapes: dict[str, tuple[int, ...]]
    diagnostics: dict[str, Any]
    relaxation: Any
    converged: bool
    problems: tuple[str, ...] = ()
