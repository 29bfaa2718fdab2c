"""Points of a parameter study: one structure relaxed and differentiated at many parameter
values, with the reuse that makes consecutive points cheap.

A :class:`PointRunner` belongs to one structure and one potential form. It owns

* the :class:`~mdsens.md.model.EnergyModel`, built once for the potential with the largest
  cutoff the points will use (so every point runs the same compiled programs; models of
  the same layout are shared with other calls through :mod:`mdsens.md._models`);
* the neighbour list the last relaxation ended on, handed to the next relaxation as its
  start (rebuilt there where atoms or the cell moved, keeping its capacity, so consecutive
  points share array shapes instead of recompiling for a new capacity);
* the warm-start rule: a point starts from the relaxed positions and cell it is given
  (typically the previous point's) when they are finite, else from the input structure.

:meth:`PointRunner.compute` is one point: relax, then
:func:`~mdsens.md.sensitivity.sensitivity` at that relaxation; it never raises on a failed
point (a relaxation that did not converge, a failed solve, a saddle, a non-finite state):
the failure is in the returned :class:`PointResult`. A study (:func:`mdsens.studies.scan`)
in-process or on Dask workers calls nothing else of ``md``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .diagnostics import Diagnostics, RelaxationSummary
from .options import DERIVATIVE_DEFAULTS, RelaxOptions
from .system import System

__all__ = ["PointOptions", "PointResult", "PointRunner", "largest_cutoff"]


@dataclasses.dataclass(frozen=True)
class PointOptions:
    """What every point computes.

    Attributes:
      wrt, observables: parameter and observable names, as for
        :func:`~mdsens.md.sensitivity.sensitivity`.
      relax_cell: relax the cell too; pressure: external pressure, eV/Å^d.
      relax: the :class:`~mdsens.md.RelaxOptions` of every relaxation (default
        ``DERIVATIVE_DEFAULTS``: fmax 1e-8 eV/Å); its ``relax_cell`` and ``pressure`` are
        replaced by this object's.
      sensitivity: further keyword arguments of :func:`~mdsens.md.sensitivity.sensitivity`
        (mode, solver, tol, ...; not ``relaxation``, ``on_failure``, ``relax_cell`` or
        ``pressure``, which are this object's).
    """

    wrt: tuple[str, ...]
    observables: tuple[str, ...]
    relax_cell: bool = False
    pressure: float = 0.0
    relax: RelaxOptions = DERIVATIVE_DEFAULTS
    sensitivity: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        # the relaxation relaxes the cell, at the pressure, as this object says
        relax = RelaxOptions.resolve(self.relax, DERIVATIVE_DEFAULTS)
        object.__setattr__(self, "relax", relax.replace(relax_cell=bool(self.relax_cell),
                                                        pressure=float(self.pressure)))


@dataclasses.dataclass(frozen=True)
class PointResult:
    """One point's outcome (numpy data).

    Attributes:
      values: observable name -> value (empty when the derivatives failed outright).
      derivatives: observable name -> parameter name -> derivative.
      converged: the relaxation and every derivative solve converged at a minimum.
      problems: what went wrong, one sentence each.
      status: the relaxation's message.
      positions: relaxed positions, shape (N, d), Å (non-finite where the relaxation was).
      edges: relaxed cell, shape (d, d), Å.
      relaxation: :class:`~mdsens.md.diagnostics.RelaxationSummary` of the relaxation.
      diagnostics: the sensitivity's :class:`~mdsens.md.diagnostics.Diagnostics`, or None
        when it could not run.
      warm_started: the relaxation started from the given relaxed structure (not the
        input one).
      seconds: wall time of the point (its share of a batch relaxation plus its own
        derivatives).
    """

    values: dict[str, np.ndarray]
    derivatives: dict[str, dict[str, np.ndarray]]
    converged: bool
    problems: tuple[str, ...]
    status: str
    positions: np.ndarray
    edges: np.ndarray
    relaxation: RelaxationSummary
    diagnostics: Diagnostics | None
    warm_started: bool
    seconds: float


class PointRunner:
    """Relaxes and differentiates one structure at many parameter values (module docstring).

    Args:
      system: the input structure (:class:`~mdsens.md.System` or ``ase.Atoms``).
      potential: a potential whose cutoff covers every point's (the largest); its form
        (class, species, settings) is that of every point's potential.
      devices: as for :func:`~mdsens.md.model.build` (None: one device, e.g. one Dask
        worker per core).
    """

    def __init__(self, system: System | Any, potential: Any, *, devices: Any = "auto"):
        from ._models import model_for

        if not isinstance(system, System):
            system = System.from_ase(system)
        self.system = system
        self.model = model_for(system, potential, devices=devices)
        self._nbrs: Any = None  # the list the last relaxation ended on (None: none yet)

    @classmethod
    def covering(cls, system: System | Any, potentials: Sequence[Any], *,
                 devices: Any = "auto") -> PointRunner:
        """The runner for points at ``potentials``: its model is built for the one with
        the largest cutoff (:func:`largest_cutoff`)."""
        return cls(system, potentials[largest_cutoff(potentials)], devices=devices)

    def start(self, start: tuple[Any, Any] | None) -> tuple[System, bool]:
        """The structure a point starts from: the input structure at the relaxed
        ``start = (positions (N, d) Å, edges (d, d) Å)`` when given and finite, else the
        input structure; and whether ``start`` was used."""
        if start is None:
            return self.system, False
        pos, cell = (np.asarray(a, np.float64) for a in start)
        if not (np.all(np.isfinite(pos)) and np.all(np.isfinite(cell))):
            return self.system, False
        return self.system.replace(positions=pos, cell=cell), True

    def compute(self, potential: Any, options: PointOptions,
                start: tuple[Any, Any] | None = None) -> PointResult:
        """One point at ``potential`` (the form of the runner's, any parameter values its
        model's cutoff covers), from ``start`` (:meth:`start`). Never raises on a failed
        point."""
        from .minimize import relax

        begin, warm = self.start(start)
        t0 = time.perf_counter()
        relaxation = relax(begin, self.model, options.relax, params=dict(potential.params),
                           nbrs=self._nbrs, on_failure="ignore")
        self._keep(relaxation)
        return _differentiate(relaxation, potential, options, warm,
                              time.perf_counter() - t0)

    def compute_batch(self, potentials: Sequence[Any], options: PointOptions,
                      batch: int | None = None,
                      start: tuple[Any, Any] | None = None) -> list[PointResult]:
        """The points at ``potentials`` relaxed together
        (:func:`~mdsens.md.minimize.relax_batch`, a ``vmap`` over their parameters) from
        the same ``start``, then differentiated one by one. The batch is padded to
        ``batch`` members with copies of the last point, so batches of any length share
        one compiled loop. A point's ``seconds`` is its share of the batch relaxation plus
        its own derivatives."""
        from .minimize import relax_batch

        size = len(potentials) if batch is None else int(batch)
        if not 1 <= len(potentials) <= size:
            raise ValueError(f"compute_batch: {len(potentials)} points for a batch of {size}")
        begin, warm = self.start(start)
        t0 = time.perf_counter()
        params = [dict(p.params) for p in potentials]
        params += [params[-1]] * (size - len(params))
        relaxations = relax_batch(begin, self.model, params, options.relax, nbrs=self._nbrs,
                                  on_failure="ignore")[:len(potentials)]
        self._keep(relaxations[-1])
        share = (time.perf_counter() - t0) / len(potentials)
        return [_differentiate(r, pot, options, warm, share)
                for r, pot in zip(relaxations, potentials)]

    def _keep(self, relaxation: Any) -> None:
        """Keep the relaxation's neighbour list as the next relaxation's start (when it
        belongs to the model and did not overflow)."""
        if (relaxation.model is self.model and relaxation.nbrs is not None
                and not bool(self.model.overflowed(relaxation.nbrs))):
            self._nbrs = relaxation.nbrs


def largest_cutoff(potentials: Sequence[Any]) -> int:
    """Index of the potential with the largest cutoff (the first such; a potential with no
    cutoff counts as the smallest)."""
    def cutoff(p: Any) -> float:
        c = p.cutoff()
        return -np.inf if c is None else float(c)

    return max(range(len(potentials)), key=lambda g: cutoff(potentials[g]))


def _differentiate(relaxation: Any, potential: Any, options: PointOptions, warm: bool,
                   seconds: float) -> PointResult:
    """The sensitivities at ``relaxation`` as a :class:`PointResult`; ``seconds`` is the
    time spent before."""
    from .sensitivity import SensitivityError, sensitivity

    t0 = time.perf_counter()
    values: dict[str, np.ndarray] = {}
    derivatives: dict[str, dict[str, np.ndarray]] = {}
    converged, diagnostics = False, None
    try:
        res = sensitivity(relaxation.system, potential, list(options.wrt),
                          list(options.observables), relax_cell=options.relax_cell,
                          pressure=options.pressure, relaxation=relaxation,
                          on_failure="ignore", **dict(options.sensitivity))
    except SensitivityError as exc:
        problems: tuple[str, ...] = (str(exc),)
    else:
        values = {k: np.asarray(v) for k, v in res.values.items()}
        derivatives = {k: {p: np.asarray(v) for p, v in d.items()}
                       for k, d in res.derivatives.items()}
        converged, problems, diagnostics = bool(res.converged), tuple(res.problems), \
            res.diagnostics
    return PointResult(
        values=values, derivatives=derivatives, converged=converged, problems=problems,
        status=relaxation.message,
        positions=np.asarray(relaxation.system.positions, np.float64),
        edges=np.asarray(relaxation.system.cell, np.float64),
        relaxation=RelaxationSummary.of(relaxation), diagnostics=diagnostics,
        warm_started=warm, seconds=seconds + time.perf_counter() - t0)
