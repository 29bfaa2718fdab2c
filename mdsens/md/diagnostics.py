"""Typed diagnostics records: how a relaxation ended, how each derivative solve went, the
zero modes, the curvature and the error estimates of a sensitivity, and its timings.

Plain data (numpy only, no JAX): :func:`mdsens.md.sensitivity.sensitivity` builds them,
:mod:`mdsens.io.hdf5` stores them as nested groups (:meth:`Record.as_dict`) and reads them
back (:meth:`Diagnostics.from_dict`), studies take their per-point table from them, and the
command line reads them without importing JAX.

Every record is a frozen dataclass whose fields are also readable by name as a read-only
mapping (``d.relaxation.status == d["relaxation"]["status"]``), the form a result file
stores.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import numpy as np

__all__ = [
    "Diagnostics",
    "ElasticSolves",
    "JacobianErrorSummary",
    "Record",
    "RelaxationSummary",
    "SolveTable",
    "ZeroModes",
]


class Record(Mapping):
    """Base of the records: a frozen dataclass whose fields read as a mapping too."""

    __slots__ = ()
    _nested: ClassVar[dict[str, type]] = {}
    """Field name -> record type, for the fields that hold a record (see :meth:`from_dict`)."""

    def __getitem__(self, key: str) -> Any:
        if key in self._names():
            return getattr(self, key)
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    @classmethod
    def _names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    def as_dict(self) -> dict[str, Any]:
        """Nested plain dicts (records and their dict fields), arrays and scalars as they
        are: the layout a result file stores."""
        return {k: _plain(v) for k, v in zip(self._names(), (getattr(self, n) for n in
                                                              self._names()))}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Any:
        """The record from a mapping of its fields (a file's nested groups); fields the
        mapping lacks take their defaults, names the record does not know are ignored
        (files of other versions). None gives None."""
        if data is None:
            return None
        if isinstance(data, cls):
            return data
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name not in data:
                continue
            value = data[f.name]
            nested = cls._nested.get(f.name)
            kwargs[f.name] = nested.from_dict(value) if nested is not None else value
        return cls(**kwargs)


def _plain(value: Any) -> Any:
    if isinstance(value, Record):
        return value.as_dict()
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


@dataclasses.dataclass(frozen=True, eq=False)
class RelaxationSummary(Record):
    """How a relaxation ended.

    Attributes:
      steps: minimiser steps taken.
      fmax: largest force component at the end, eV/Å.
      converged: a minimum was found (forces, and stress with a relaxing cell, within tolerance).
      status: the relaxation's message (why it stopped).
      energy: energy at the end, eV.
      stress_residual: with a relaxing cell, the largest |stress − target| at the end in
        eV/Å^d; else None.
    """

    steps: int = 0
    fmax: float = float("nan")
    converged: bool = False
    status: str = ""
    energy: float = float("nan")
    stress_residual: float | None = None

    @classmethod
    def of(cls, relaxation: Any) -> RelaxationSummary:
        """The summary of a relaxation (any object with ``steps``, ``fmax``, ``converged``,
        ``message``, ``energy`` and, optionally, ``stress_residual``)."""
        residual = getattr(relaxation, "stress_residual", None)
        return cls(steps=int(relaxation.steps), fmax=float(relaxation.fmax),
                   converged=bool(relaxation.converged), status=str(relaxation.message),
                   energy=float(relaxation.energy),
                   stress_residual=None if residual is None else float(residual))


@dataclasses.dataclass(frozen=True, eq=False)
class SolveTable(Record):
    """One row per derivative solve (arrays of shape ``(S,)``).

    Attributes:
      status: :class:`mdsens.implicit.Status` codes (0 = success).
      iterations: Krylov iterations.
      residual_norm, rhs_norm: ‖b − Ax‖ and ‖b‖ at the end.
      nullspace_component: norm of the right-hand side's part in the zero modes (removed).
      min_curvature: CG's smallest curvature ``pᵀHp / pᵀp`` met (negative: not a minimum).
      converged: ``status == 0``.
    """

    status: np.ndarray
    iterations: np.ndarray
    residual_norm: np.ndarray
    rhs_norm: np.ndarray
    nullspace_component: np.ndarray
    min_curvature: np.ndarray
    converged: np.ndarray

    @classmethod
    def of(cls, info: Any) -> SolveTable | None:
        """The table of a (batched) :class:`mdsens.implicit.SolveInfo`; None gives None."""
        if info is None:
            return None
        rows = {name: np.atleast_1d(np.asarray(getattr(info, name))) for name in
                ("status", "iterations", "residual_norm", "rhs_norm",
                 "nullspace_component", "min_curvature")}
        return cls(**rows, converged=rows["status"] == 0)

    @property
    def count(self) -> int:
        """Number of solves S."""
        return int(np.size(self.status))


@dataclasses.dataclass(frozen=True, eq=False)
class ElasticSolves(Record):
    """The solves of the elastic constants, one row per Voigt component pair or parameter
    pull-back (arrays of shape ``(S,)``, their worst status, iterations and residual).

    Attributes:
      status, iterations, residual_norm, converged: as in :class:`SolveTable`.
      labels: Voigt labels of the components (``"xx"``, ...).
      mode: ``"forward"`` or ``"reverse"`` differentiation of the stiffness.
    """

    status: np.ndarray
    iterations: np.ndarray
    residual_norm: np.ndarray
    converged: np.ndarray
    labels: Any = ()
    mode: str = ""


@dataclasses.dataclass(frozen=True, eq=False)
class ZeroModes(Record):
    """The zero modes removed from every solve.

    Attributes:
      count: number of modes (translations, plus three per rattler atom).
      rattlers: indices of atoms with no interacting neighbour.
    """

    count: int = 0
    rattlers: Any = ()


@dataclasses.dataclass(frozen=True, eq=False)
class JacobianErrorSummary(Record):
    """The a-posteriori error estimate of the derivative of the unknowns (floats; see
    :class:`mdsens.implicit.bounds.JacobianErrorEstimate` for the formulas).

    Attributes:
      estimate, root_term: ``C ‖F(x̂)‖ / α``, the error from the relaxation being
        approximate.
      residual_norm: ‖F(x̂, θ)‖.
      sigma_min, sigma_max: α and the largest singular value of ∂₁F(x̂).
      norm_B: R = ‖∂₂F(x̂)‖.
      lipschitz_A, lipschitz_B: γ and β.
      constant: C = β/α + γR/α².
      solve_residual, solve_term: the derivative solves' residual and its error term.
      bound: ``root_term + solve_term``.
    """

    estimate: float = float("nan")
    residual_norm: float = float("nan")
    sigma_min: float = float("nan")
    sigma_max: float = float("nan")
    norm_B: float = float("nan")
    lipschitz_A: float = float("nan")
    lipschitz_B: float = float("nan")
    constant: float = float("nan")
    root_term: float = float("nan")
    solve_residual: float = float("nan")
    solve_term: float = float("nan")
    bound: float = float("nan")

    @classmethod
    def of(cls, estimate: Any) -> JacobianErrorSummary:
        """From a :class:`~mdsens.implicit.bounds.JacobianErrorEstimate` (arrays -> floats)."""
        return cls(**{f.name: float(getattr(estimate, f.name))
                      for f in dataclasses.fields(cls)})


@dataclasses.dataclass(frozen=True, eq=False)
class Diagnostics(Record):
    """Everything a sensitivity reports besides its values and derivatives.

    Attributes:
      relaxation: how the relaxation ended (:class:`RelaxationSummary`).
      mode: ``"forward"`` or ``"reverse"``, the differentiation mode used.
      n_solves: number of derivative solves.
      solves: their :class:`SolveTable` (None when no solve was needed).
      elastic_solves: :class:`ElasticSolves` of the elastic constants, or None.
      zero_modes: :class:`ZeroModes`.
      min_curvature_estimate: smallest Hessian eigenvalue on the complement of the zero
        modes (Lanczos), eV/Å² (NaN when not computed).
      root_residual: ‖F‖ at the relaxed state on the complement of the zero modes.
      root_error_estimate: ``root_residual / min_curvature_estimate``, a first-order bound
        on the distance to the exact root (Å; inf when the curvature is not positive).
      jacobian_error: :class:`JacobianErrorSummary` (with ``jacobian_error=True``), or None.
      solver, hessian, preconditioner: the linear solver, Hessian-product form and
        preconditioner used.
      timings: stage name -> wall seconds.
    """

    relaxation: RelaxationSummary | None = None
    mode: str = ""
    n_solves: int = 0
    solves: SolveTable | None = None
    elastic_solves: ElasticSolves | None = None
    zero_modes: ZeroModes | None = None
    min_curvature_estimate: float = float("nan")
    root_residual: float = float("nan")
    root_error_estimate: float = float("nan")
    jacobian_error: JacobianErrorSummary | None = None
    solver: str = ""
    hessian: str = ""
    preconditioner: str | None = None
    timings: Mapping[str, float] = dataclasses.field(default_factory=dict)

    _nested: ClassVar[dict[str, type]] = {
        "relaxation": RelaxationSummary, "solves": SolveTable,
        "elastic_solves": ElasticSolves, "zero_modes": ZeroModes,
        "jacobian_error": JacobianErrorSummary,
    }

    @property
    def max_solve_iterations(self) -> int:
        """Most Krylov iterations of one derivative solve (0 without solves)."""
        if self.solves is None or not self.solves.count:
            return 0
        return int(np.max(self.solves.iterations))
