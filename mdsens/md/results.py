"""The result of :func:`mdsens.md.sensitivity.sensitivity` and its failure types.

Plain data (numpy only): files are read back into a :class:`Sensitivity` without importing
JAX (``mdsens inspect``).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import numpy as np

from .diagnostics import Diagnostics

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
      diagnostics: relaxation and solve diagnostics, a
        :class:`~mdsens.md.diagnostics.Diagnostics` record (see :func:`sensitivity`).
      relaxation: the :class:`~mdsens.md.minimize.Relaxation` the derivatives were taken at.
      converged: relaxation converged, every solve converged, no negative curvature.
    """

    values: dict[str, np.ndarray]
    derivatives: dict[str, dict[str, np.ndarray]]
    units: dict[str, str]
    wrt: tuple[str, ...]
    parameter_shapes: dict[str, tuple[int, ...]]
    diagnostics: Diagnostics
    relaxation: Any
    converged: bool
    problems: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.diagnostics, Diagnostics):  # a plain mapping of its fields
            object.__setattr__(self, "diagnostics", Diagnostics.from_dict(self.diagnostics or {}))

    def to_ase(self, atoms: Any = None) -> Any:
        r"""The relaxed structure as ``ase.Atoms`` carrying the values and derivatives, for
        ``ase.io.write(..., format="extxyz")`` (OVITO draws the per-atom arrays as arrows).

        * Structure and ``SinglePointCalculator``: :meth:`Relaxation.to_ase` of
          :attr:`relaxation` (energy, forces, and the stress observable when computed, as
          ASE's Voigt 6-vector in eV/Å³); for a result read from a file (no relaxation)
          pass the relaxed ``atoms`` (e.g. ``StoredResult.to_ase()``): energy and stress
          then come from the observables.
        * Derivatives: ``d<observable>_d<parameter>``, one entry per component of an array
          parameter, suffixed ``_i_j`` (its index; ``_xx`` ... ``_xy`` for the Voigt
          ``strain``); ``sigma[Ar,Kr]`` becomes ``sigma_Ar_Kr``. Per-atom observables
          (shape ``(N, 3)``: ``positions``, ``displacements``) give ``(N, 3)`` arrays in
          ``atoms.arrays`` (e.g. ``dpositions_dsigma``, Å/Å); other observables give
          ``atoms.info`` entries (floats, or arrays raveled in C order).
        * Values of observables other than energy, positions and stress: ``atoms.info``
          (per-atom ones in ``atoms.arrays``); ``atoms.info["converged"]`` is this
          result's.

        Units are those of :attr:`units` (derivative unit = observable unit / parameter
        unit). ``ase`` is imported here only.

        Raises:
          ValueError: no relaxation and no ``atoms``, or ``atoms`` of another size.
        """
        import numpy as np
        from ase.calculators.singlepoint import SinglePointCalculator

        if atoms is None:
            if self.relaxation is None:
                raise ValueError("this result holds no relaxation (read from a file?): pass "
                                 "the relaxed structure, to_ase(atoms=stored.to_ase())")
            out = self.relaxation.to_ase()
            results = dict(out.calc.results)
        else:
            out = atoms.copy()
            results = {}
        n = len(out)
        if "energy" in self.values:
            results["energy"] = results["free_energy"] = float(self.values["energy"])
        if "stress" in self.values and np.shape(self.values["stress"]) == (6,):
            results["stress"] = np.asarray(self.values["stress"], np.float64)
        out.calc = SinglePointCalculator(out, **results)
        for name, value in self.values.items():
            if name not in ("energy", "positions", "stress"):
                _put_field(out, name, np.asarray(value), name in _PER_ATOM)
        for obs, per_param in self.derivatives.items():
            obs_ndim = np.ndim(self.values.get(obs, np.zeros(())))
            for param, d in per_param.items():
                for suffix, comp in _components(param, np.asarray(d), obs_ndim):
                    _put_field(out, f"d{obs}_d{_clean(param)}{suffix}", comp,
                               obs in _PER_ATOM and comp.shape == (n, 3))
        out.info["converged"] = bool(self.converged)
        return out


_VOIGT = ("xx", "yy", "zz", "yz", "xz", "xy")
_PER_ATOM = ("positions", "displacements")
"""Observables with one row per atom (shape ``(N, 3)``)."""


def _clean(name: str) -> str:
    """A field-name form of a parameter name: ``sigma[Ar,Kr]`` -> ``sigma_Ar_Kr``."""
    return re.sub(r"[^A-Za-z0-9_]+", "_", name).strip("_")


def _components(param: str, d: np.ndarray, obs_ndim: int) -> list[tuple[str, np.ndarray]]:
    """Split ``d`` (shape ``observable.shape + parameter.shape``) into ``(suffix, d_k)``
    per parameter component; a scalar parameter gives one entry with suffix ``""``."""
    p_shape = d.shape[obs_ndim:]
    if not p_shape:
        return [("", d)]
    if param == "strain" and p_shape == (6,):
        return [(f"_{_VOIGT[k]}", d[..., k]) for k in range(6)]
    return [("_" + "_".join(map(str, idx)), d[(Ellipsis, *idx)]) for idx in np.ndindex(*p_shape)]


def _put_field(atoms: Any, key: str, value: np.ndarray, per_atom: bool) -> None:
    """A per-atom ``(N, 3)`` array into ``atoms.arrays``, anything else into ``atoms.info``
    (a float for a scalar, a C-order 1-D array otherwise)."""
    if per_atom:
        atoms.arrays[key] = np.asarray(value, np.float64)
    elif value.ndim == 0:
        atoms.info[key] = float(value)
    else:
        atoms.info[key] = np.ravel(value).astype(np.float64)
