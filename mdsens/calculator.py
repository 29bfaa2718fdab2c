r"""An ASE calculator for any mdsens potential: ``atoms.calc = MdsensCalculator(potential)``.

Drives ``ase.optimize``, ``ase.md``, ``ase.filters.FrechetCellFilter``, ``ase.vibrations``
and phonopy with mdsens's energies::

    import jax
    jax.config.update("jax_enable_x64", True)          # the application's choice
    from mdsens.calculator import MdsensCalculator
    from mdsens.md import potentials

    atoms.calc = MdsensCalculator(potentials.get("lj", sigma=3.4, epsilon=0.0104))
    atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()

Properties (ASE units and conventions)
--------------------------------------
* ``energy`` (= ``free_energy``): :math:`E` in eV.
* ``forces``: ``(N, 3)`` :math:`F = -\partial E/\partial R` in eV/Å.
* ``stress``: Voigt ``(6,)`` (xx, yy, zz, yz, xz, xy) of
  :math:`\sigma = V^{-1}\partial E(R(I+\varepsilon), C(I+\varepsilon))/\partial
  \varepsilon|_0` in eV/Å³ (ASE sign: positive under tension); periodic systems only.

Energy, forces and stress come from one compiled program (a value-and-gradient over the
positions and a strain), so asking for all three costs one evaluation.

Reuse across calls
------------------
* The :class:`~mdsens.md.model.EnergyModel` comes from :func:`mdsens.md._models.model_for`,
  which hands out one model per program layout, so two calculators (or a calculator and
  :func:`mdsens.md.relax`) on the same layout share compiled code. Evaluation and
  neighbour-list update are jitted once per model (the model is a static argument).
* The model is rebuilt (and the neighbour list allocated afresh) only when the layout
  changes: the atoms' species in order, the boundary conditions, or the small-cell
  replication the cell needs (:func:`mdsens.md.model.build`'s rule: copies along lattice
  vector k while its perpendicular width is below :math:`2(r_c + \text{skin})`).
* Otherwise the neighbour list is kept and updated at every call
  (:meth:`EnergyModel.update`: rebuilt when the two atoms that moved most moved more than
  skin together, or the cell changed); it is reallocated when it overflows.

Floating point
--------------
Energies are computed in float64, which needs JAX's x64 mode. The library does not change
JAX's process-wide configuration on its own: a calculator created while x64 is off raises
``RuntimeError`` telling how to enable it, unless it is created with ``enable_x64=True``,
which calls ``jax.config.update("jax_enable_x64", True)`` explicitly on the caller's
behalf (it affects the whole process).
"""

from __future__ import annotations

import functools
from collections.abc import Hashable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from .md._models import model_for
from .md.model import DEFAULT_SKIN_FRACTION, EnergyModel, _replicas
from .md.system import System

__all__ = ["MdsensCalculator", "x64_enabled"]


def x64_enabled() -> bool:
    """Whether JAX computes in float64 here (``jax_enable_x64``, including contexts)."""
    return jax.dtypes.canonicalize_dtype(np.float64) == np.dtype(np.float64)


def _require_x64(enable: bool) -> None:
    """Raise unless float64 is on; with ``enable``, turn it on (process-wide) first."""
    if x64_enabled():
        return
    if enable:
        jax.config.update("jax_enable_x64", True)
        return
    raise RuntimeError(
        "MdsensCalculator computes in float64, but JAX's x64 mode is off: call "
        "jax.config.update('jax_enable_x64', True) before using JAX, or create the "
        "calculator with enable_x64=True (which does that for the whole process)"
    )


@functools.partial(jax.jit, static_argnums=(0, 4))
def _evaluate(model: EnergyModel, R: jax.Array, cell: jax.Array | None, params: Any,
              with_stress: bool, nbrs: Any) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    r"""Energy (eV), forces ``(N, d)`` (eV/Å) and, with ``with_stress``, the stress
    ``(d, d)`` (eV/Å^d) in one program.

    With :math:`\tilde E(R, \varepsilon) = E(R(I+\varepsilon), C(I+\varepsilon))`:
    :math:`F = -\partial\tilde E/\partial R|_{\varepsilon=0}` and
    :math:`\sigma = \partial\tilde E/\partial\varepsilon|_0 / |\det C|`.
    """
    if not with_stress:
        e, g = jax.value_and_grad(model.energy)(R, cell, params, nbrs)
        return e, -g, None
    eye = jnp.eye(R.shape[-1], dtype=R.dtype)

    def strained(R_: jax.Array, eps: jax.Array) -> jax.Array:
        F = eye + eps
        return model.energy(R_ @ F, cell @ F, params, nbrs)

    e, (gR, geps) = jax.value_and_grad(strained, argnums=(0, 1))(R, jnp.zeros_like(eye))
    return e, -gR, geps / jnp.abs(jnp.linalg.det(cell))


@functools.partial(jax.jit, static_argnums=0)
def _update(model: EnergyModel, R: jax.Array, cell: jax.Array | None,
            nbrs: Any) -> tuple[Any, jax.Array]:
    """The neighbour list updated to ``R``, ``cell`` and whether it overflowed."""
    new = model.update(R, cell, nbrs)
    return new, model.overflowed(new)


class MdsensCalculator(Calculator):
    """ASE calculator for an mdsens :class:`~mdsens.md.Potential` (module docstring).

    Args:
      potential: any mdsens potential (``mdsens.md.potentials.get(...)``, EAM, Tersoff,
        custom); its ``params`` are the ones evaluated.
      neighbor_list, skin, capacity_multiplier, devices: as in
        :func:`mdsens.md.build` (``"auto"``: a list above the potential's threshold).
      enable_x64: turn on JAX's x64 mode if it is off (process-wide) instead of raising.
      **kwargs: passed to ``ase.calculators.calculator.Calculator`` (label, directory...).
    Raises:
      RuntimeError: JAX's x64 mode is off and ``enable_x64`` is False.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]
    default_parameters: dict[str, Any] = {}
    name = "mdsens"

    def __init__(self, potential: Any, *, neighbor_list: Any = "auto",
                 skin: float | None = None, capacity_multiplier: float = 1.25,
                 devices: Any = "auto", enable_x64: bool = False, **kwargs: Any):
        _require_x64(enable_x64)
        super().__init__(**kwargs)
        self.potential = potential
        self._build_options = {"neighbor_list": neighbor_list, "skin": skin,
                               "capacity_multiplier": capacity_multiplier,
                               "devices": devices}
        self.model: EnergyModel | None = None
        self.nbrs: Any = None
        self._layout: Hashable | None = None
        self.n_allocations = 0
        """How many times a neighbour list was allocated (diagnostic)."""

    # ------------------------------------------------------------------ layout
    def _layout_key(self, system: System) -> Hashable:
        """What fixes the model: species in order, boundary conditions, replication."""
        reach = None
        cutoff = self.potential.cutoff()
        if cutoff is not None:
            skin = self._build_options["skin"]
            reach = float(cutoff) + (DEFAULT_SKIN_FRACTION * float(cutoff) if skin is None
                                     else float(skin))
        return (np.asarray(system.species).tobytes(), system.species_names, system.pbc,
                _replicas(system, reach))

    def _neighbors(self, system: System, R: jax.Array, cell: jax.Array | None) -> Any:
        """A model for ``system``'s layout and a neighbour list valid at ``R``, ``cell``:
        the kept list updated, or a new allocation (new layout, or overflow)."""
        key = self._layout_key(system)
        if key != self._layout or self.model is None:
            self.model = model_for(system, self.potential, **self._build_options)
            self._layout = key
            return self._allocate(R, cell)
        if self.nbrs is None:
            return None
        nbrs, overflowed = _update(self.model, R, cell, self.nbrs)
        return self._allocate(R, cell) if bool(overflowed) else nbrs

    def _allocate(self, R: jax.Array, cell: jax.Array | None) -> Any:
        self.n_allocations += self.model.uses_neighbor_list
        return self.model.allocate(R, cell)

    # ------------------------------------------------------------------ ASE interface
    def calculate(self, atoms: Any = None, properties: Sequence[str] = ("energy",),
                  system_changes: Sequence[str] = all_changes) -> None:
        """Fill ``self.results`` with energy, free_energy, forces and (periodic) stress."""
        super().calculate(atoms, properties, system_changes)
        _require_x64(False)
        system = System.from_ase(self.atoms)
        if "stress" in properties and not system.is_periodic:
            raise PropertyNotImplementedError("stress needs a periodic system (pbc all True)")
        R = jnp.asarray(system.positions, jnp.float64)
        cell = jnp.asarray(system.cell, jnp.float64) if system.is_periodic else None
        self.nbrs = self._neighbors(system, R, cell)
        self.model.check_params(self.potential.params)
        e, f, s = _evaluate(self.model, R, cell, self.potential.params, system.is_periodic,
                            self.nbrs)
        self.results = {"energy": float(e), "free_energy": float(e),
                        "forces": np.asarray(f, np.float64)}
        if s is not None:
            self.results["stress"] = full_3x3_to_voigt_6_stress(np.asarray(s, np.float64))
