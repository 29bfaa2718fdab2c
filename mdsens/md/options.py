r"""``RelaxOptions``: every setting of a relaxation in one frozen, validated object.

``relax``, ``relax_batch``, ``sensitivity``, ``scan``, the Dask worker and the command line
all take a :class:`RelaxOptions` (``relax(system, potential, RelaxOptions(fmax=1e-8))``);
keyword settings given beside it replace its fields (``relax(system, pot, fmax=1e-8)``).

Units: ``fmax`` eV/Å, ``pressure`` and ``stress_tol`` eV/Å^d; ``dt``, ``dt_max`` in units
of :math:`\tau = \ell\sqrt{m/\varepsilon}` and ``max_step`` in units of :math:`\ell`, the
potential's own length and energy (``mdsens.md.minimize`` says which); ``max_strain_step``
and ``max_volume_ratio`` are dimensionless; ``skin`` Å.

Only ``method`` and ``relax_cell`` decide the compiled program (with the model and the
array shapes): every other number is traced, so changing it never recompiles.
:meth:`RelaxOptions.compile_key` is the options object with the traced settings put back
to their defaults.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

__all__ = ["DERIVATIVE_DEFAULTS", "METHODS", "Method", "RelaxOptions"]

Method = Literal["fire", "fire2", "gd"]
METHODS: tuple[str, ...] = ("fire", "fire2", "gd")
NeighborListChoice = Literal["auto"] | bool


def _positive(name: str, value: Any) -> float:
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return value


def _count(name: str, value: Any, least: int) -> int:
    if isinstance(value, bool) or int(value) != value or value < least:
        raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
    return int(value)


@dataclasses.dataclass(frozen=True)
class RelaxOptions:
    r"""How to relax: minimiser, tolerances, limits, safeguards, neighbour-list settings.

    Attributes:
      method: ``"fire"`` (default: FIRE of Bitzek et al. 2006), ``"fire2"`` (FIRE 2.0 as
        in LAMMPS) or ``"gd"`` (adaptive gradient descent); ``mdsens.md.minimize`` gives
        the measurements behind the default.
      fmax: force tolerance, eV/Å: converged when :math:`\max_i |F_i| \le` fmax.
      max_steps: most accepted minimiser steps.
      relax_cell: also relax the cell (periodic systems; all strain components).
      pressure: external pressure :math:`p`, eV/Å^d (1 GPa = 6.2415e-3 eV/Å³).
      stress_tol: tolerance on :math:`\max_{ij}|\sigma + pI|_{ij}`, eV/Å^d; None: ``fmax
        / (V/N)^((d-1)/d)`` of the start cell.
      dt, dt_max: the minimiser's first and largest time step, units of τ.
      max_step: largest displacement of any atom in one step, units of ℓ.
      max_strain_step: largest change of any strain component in one step (relax_cell).
      max_volume_ratio: a cell relaxation whose volume grows or shrinks by more than this
        factor from the start is stopped as ``CELL_DIVERGED``.
      chunk: most steps per compiled call (between progress callbacks and repairs).
      neighbor_list: ``"auto"``, True or False (see ``mdsens.md.build``).
      skin: neighbour-list skin, Å (None: 0.1 × cutoff).
      capacity_multiplier: spare neighbour-list capacity at allocation.
      devices: devices that share each energy evaluation (``mdsens.md.sharding``):
        ``"auto"`` (all of them for large systems), a count, or None (one device).
      processes: CPU worker processes that share one relaxation, one pinned core each
        (:class:`mdsens.md.processes.ProcessPool`, started for the call; keep a pool
        for many calls); 1: this process. Pair potentials with a neighbour list.
    """

    method: Method = "fire"
    fmax: float = 1e-6
    max_steps: int = 10000
    relax_cell: bool = False
    pressure: float = 0.0
    stress_tol: float | None = None
    dt: float = 0.005
    dt_max: float = 0.03
    max_step: float = 0.1
    max_strain_step: float = 0.02
    max_volume_ratio: float = 8.0
    chunk: int = 1000
    neighbor_list: NeighborListChoice = "auto"
    skin: float | None = None
    capacity_multiplier: float = 1.25
    devices: str | int | None = "auto"
    processes: int = 1

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        for name in ("fmax", "dt", "dt_max", "max_step", "max_strain_step"):
            put(name, _positive(name, getattr(self, name)))
        if self.dt_max < self.dt:
            raise ValueError(f"dt_max must be >= dt, got dt={self.dt}, dt_max={self.dt_max}")
        ratio = float(self.max_volume_ratio)
        if not ratio > 1:
            raise ValueError(f"max_volume_ratio must be > 1, got {self.max_volume_ratio}")
        put("max_volume_ratio", ratio)
        put("max_steps", _count("max_steps", self.max_steps, 0))
        put("chunk", _count("chunk", self.chunk, 1))
        if not isinstance(self.relax_cell, bool):
            raise ValueError(f"relax_cell must be True or False, got {self.relax_cell!r}")
        pressure = float(self.pressure)
        if not math.isfinite(pressure):
            raise ValueError(f"pressure must be finite, got {self.pressure}")
        put("pressure", pressure)
        if self.stress_tol is not None:
            put("stress_tol", _positive("stress_tol", self.stress_tol))
        if self.neighbor_list not in ("auto", True, False):
            raise ValueError(
                f"neighbor_list must be 'auto', True or False, got {self.neighbor_list!r}")
        if self.skin is not None:
            skin = float(self.skin)
            if not (math.isfinite(skin) and skin >= 0):
                raise ValueError(f"skin must be a finite number >= 0, got {self.skin}")
            put("skin", skin)
        mult = float(self.capacity_multiplier)
        if not (math.isfinite(mult) and mult >= 1):
            raise ValueError(f"capacity_multiplier must be >= 1, got {self.capacity_multiplier}")
        put("capacity_multiplier", mult)
        if not (self.devices in ("auto", None) or (isinstance(self.devices, int)
                                                   and self.devices >= 1)):
            raise ValueError(f"devices must be 'auto', None or a count >= 1, "
                             f"got {self.devices!r}")
        put("processes", _count("processes", self.processes, 1))

    @classmethod
    def of(cls, options: RelaxOptions | dict | None = None, **settings: Any) -> RelaxOptions:
        """``options`` (a :class:`RelaxOptions`, a dict of its fields, or None for the
        defaults) with ``settings`` replacing fields.

        Raises:
          TypeError: a name that is not a field.
        """
        if options is None:
            base = cls()
        elif isinstance(options, RelaxOptions):
            base = options
        elif isinstance(options, dict):
            base = cls(**_known(options))
        else:
            raise TypeError(f"options must be RelaxOptions, a dict or None, got "
                            f"{type(options).__name__}")
        return dataclasses.replace(base, **_known(settings)) if settings else base

    @classmethod
    def resolve(cls, options: RelaxOptions | dict | None, defaults: RelaxOptions
                ) -> RelaxOptions:
        """``options`` as given when it is a :class:`RelaxOptions`; a dict replaces fields
        of ``defaults``; None is ``defaults``."""
        if isinstance(options, dict):
            return defaults.replace(**options)
        return defaults if options is None else cls.of(options)

    def changed(self) -> dict[str, Any]:
        """The fields that differ from ``RelaxOptions()`` (for run records)."""
        default = RelaxOptions()
        return {k: v for k, v in self.as_dict().items() if getattr(default, k) != v}

    def replace(self, **settings: Any) -> RelaxOptions:
        """A copy with ``settings`` changed (validated again)."""
        return dataclasses.replace(self, **_known(settings))

    def compile_key(self) -> RelaxOptions:
        """What decides the compiled relaxation loop: ``method`` and ``relax_cell`` (the
        other settings are traced), as a hashable options object."""
        return RelaxOptions(method=self.method, relax_cell=self.relax_cell)

    def as_dict(self) -> dict[str, Any]:
        """Every field by name (for files and provenance)."""
        return dataclasses.asdict(self)


def _known(settings: dict) -> dict:
    fields = {f.name for f in dataclasses.fields(RelaxOptions)}
    unknown = sorted(set(settings) - fields)
    if unknown:
        raise TypeError(f"unknown relaxation setting(s) {unknown}; the settings are "
                        f"{sorted(fields)}")
    return settings


DERIVATIVE_DEFAULTS = RelaxOptions(fmax=1e-8, max_steps=100000)
"""The relaxation defaults of ``sensitivity`` and ``scan``: derivatives are only as good as
the root they are taken at."""
