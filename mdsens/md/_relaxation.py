"""The result of :func:`mdsens.md.minimize.relax`: ``Relaxation``, its status codes and the
failure policy (``on_failure``)."""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

import jax
import jax.numpy as jnp

from .diagnostics import RelaxationSummary
from .system import System

__all__ = [
    "POLICIES",
    "Policy",
    "Relaxation",
    "RelaxationError",
    "RelaxationWarning",
    "Status",
    "apply_policy",
]

from ..implicit.policy import POLICIES as POLICIES
from ..implicit.policy import Policy as Policy
from ..implicit.policy import surface


class RelaxationError(RuntimeError):
    """A relaxation did not reach its tolerance. ``.relaxation`` holds the result."""

    def __init__(self, message: str, relaxation: Relaxation | None = None):
        super().__init__(message)
        self.relaxation = relaxation


class RelaxationWarning(RuntimeWarning):
    """Issued by ``on_failure="warn"``."""


class Status(enum.IntEnum):
    """Outcome of a relaxation; ``Status.X.message`` says what to do about it."""

    CONVERGED = 0
    MAX_STEPS = 1
    NONFINITE = 2
    NEIGHBOR_LIST = 3
    INVALID_CELL = 4
    CELL_DIVERGED = 5

    @property
    def message(self) -> str:
        return _MESSAGES[self]


_MESSAGES = {
    Status.CONVERGED: "converged",
    Status.MAX_STEPS: (
        "maximum steps reached before max|F| <= fmax (and max|sigma + p I| <= stress_tol): "
        "raise max_steps, loosen fmax/stress_tol, or start closer to a minimum"
    ),
    Status.NONFINITE: (
        "non-finite energy, forces or stress (NaN/inf) at the start, or no finite step that "
        "does not raise the energy absurdly even after shrinking the step 40 times: atoms "
        "may overlap exactly or the parameters are invalid; check the start structure and "
        "params (the result holds the last finite state)"
    ),
    Status.NEIGHBOR_LIST: (
        "the neighbour list kept overflowing after reallocation: the density changes too "
        "fast; start closer to the minimum, lower max_step, or build the model with a larger "
        "capacity_multiplier"
    ),
    Status.INVALID_CELL: (
        "the cell collapsed (non-positive volume) during the cell relaxation: check the sign "
        "and units of `pressure` (eV/Å^d) and that the potential has a minimum at it"
    ),
    Status.CELL_DIVERGED: (
        "the cell diverged, not converged: its volume changed by more than max_volume_ratio "
        "from the start, or the atoms ended up not interacting (zero energy) where the start "
        "had interactions; check the sign and units of `pressure`, start from a denser or "
        "less disordered structure, or raise max_volume_ratio if the change is meant"
    ),
}


@dataclasses.dataclass(frozen=True)
class Relaxation:
    r"""A relaxed structure and how it was reached (a registered pytree).

    Attributes:
      system: the relaxed :class:`System` (Cartesian positions, not wrapped; new cell when
        the cell relaxed).
      energy: potential energy :math:`E` (eV; without the :math:`pV` term).
      forces: ``(N, d)`` :math:`F = -\partial E/\partial R` (eV/Å).
      fmax: :math:`\max_i |F_i|` (eV/Å).
      stress: ``(d, d)`` :math:`\sigma = V^{-1}\partial E/\partial\varepsilon` (eV/Å^d, ASE
        sign) when the cell relaxed, else None.
      stress_residual: :math:`\max_{ij}|\sigma + pI|_{ij}` when the cell relaxed, else None.
      nbrs: the neighbour list valid at ``system`` (None when the model uses none, and
        for a relaxation run on worker processes, :mod:`mdsens.md.processes`:
        ``model.allocate(system.positions, system.cell)`` gives one).
      steps: minimiser steps taken (static).
      converged: whether the tolerances were met (static).
      status: a :class:`Status` (static); ``.message`` says what to do.
      model: the :class:`~mdsens.md.model.EnergyModel` the energies came from (static;
        ``nbrs`` belongs to it).
    """

    system: System
    energy: jax.Array
    forces: jax.Array
    fmax: jax.Array
    stress: jax.Array | None
    stress_residual: jax.Array | None
    nbrs: Any
    steps: int
    converged: bool
    status: Status
    model: Any = None

    @property
    def message(self) -> str:
        """A sentence describing the outcome (with the residuals and step count)."""
        text = (
            f"relaxation: {self.status.message} after {self.steps} steps, "
            f"fmax={float(self.fmax):.3g}"
        )
        if self.stress_residual is not None:
            text += f", max|sigma + p I|={float(self.stress_residual):.3g}"
        return text

    def summary(self) -> RelaxationSummary:
        """:func:`summary` of this relaxation."""
        return summary(self)

    def to_ase(self) -> Any:
        r"""The relaxed structure as ``ase.Atoms`` with its results attached.

        A ``SinglePointCalculator`` holds ``energy`` (= ``free_energy``, eV), ``forces``
        ``(N, 3)`` (eV/Å) and, when the cell relaxed, ``stress`` as ASE's Voigt 6-vector
        (xx, yy, zz, yz, xz, xy; eV/Å³); ``atoms.info`` holds ``converged``, ``steps``,
        ``fmax`` (eV/Å) and ``status`` (the :class:`Status` name). ``ase.io.write(...,
        format="extxyz")`` keeps all of them.
        """
        import numpy as np
        from ase.calculators.singlepoint import SinglePointCalculator
        from ase.stress import full_3x3_to_voigt_6_stress

        atoms = self.system.to_ase()
        energy = float(self.energy)
        results: dict[str, Any] = {"energy": energy, "free_energy": energy,
                                   "forces": np.asarray(self.forces, np.float64)}
        if self.stress is not None and np.shape(self.stress) == (3, 3):
            results["stress"] = full_3x3_to_voigt_6_stress(np.asarray(self.stress, np.float64))
        atoms.calc = SinglePointCalculator(atoms, **results)
        atoms.info.update(converged=bool(self.converged), steps=int(self.steps),
                          fmax=float(self.fmax), status=self.status.name)
        return atoms


jax.tree_util.register_dataclass(
    Relaxation,
    data_fields=["system", "energy", "forces", "fmax", "stress", "stress_residual", "nbrs"],
    meta_fields=["steps", "converged", "status", "model"],
)


def summary(relaxation: Any) -> RelaxationSummary:
    """A relaxation's outcome as a :class:`~mdsens.md.diagnostics.RelaxationSummary` (the
    ``relaxation`` entry of the diagnostics a sensitivity reports and a result file
    stores): steps, fmax (eV/Å), converged, status (its ``message``), energy (eV) and, with
    a relaxing cell, the stress residual. Any object with those attributes will do."""
    return RelaxationSummary.of(relaxation)


def _nan_like(x: Any) -> Any:
    return None if x is None else jnp.full_like(x, jnp.nan)


def apply_policy(result: Relaxation, on_failure: str) -> Relaxation:
    """Surface a failed relaxation as ``on_failure`` says.

    ``"raise"``: :class:`RelaxationError` (with ``.relaxation``); ``"warn"``: a
    :class:`RelaxationWarning`, result unchanged; ``"nan"``: positions, cell, energy,
    forces, fmax and stress become NaN (status kept); ``"ignore"``: unchanged.
    """
    message = None if result.converged else result.message
    return surface(result, message, on_failure,
                   error=lambda m: RelaxationError(m, result), warning=RelaxationWarning,
                   nan=_nan_result, stacklevel=4)


def _nan_result(result: Relaxation) -> Relaxation:
    """``result`` with positions, cell, energy, forces, fmax and stress NaN (status kept)."""
    system = result.system.replace(
        positions=_nan_like(result.system.positions), cell=_nan_like(result.system.cell)
    )
    return dataclasses.replace(
        result,
        system=system,
        energy=_nan_like(result.energy),
        forces=_nan_like(result.forces),
        fmax=_nan_like(result.fmax),
        stress=_nan_like(result.stress),
        stress_residual=_nan_like(result.stress_residual),
    )
