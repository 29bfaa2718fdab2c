r"""Energy minimisation of a :class:`~mdsens.md.System`: ``relax`` -> ``Relaxation``.

``relax`` finds a local minimum of the potential energy :math:`E(R)` at fixed cell, or of the
enthalpy :math:`H = E + pV` over positions and cell (``relax_cell=True``), with FIRE 2.0
(default), the original FIRE or adaptive gradient descent. Convergence (ASE convention):

.. math:: \max_i |F_i| \le \text{fmax}
   \quad\text{and, with relax\_cell,}\quad \max_{ij} |\sigma + pI|_{ij} \le \text{stress\_tol},

:math:`F = -\partial E/\partial R` (eV/Å), :math:`\sigma = V^{-1}\partial E/\partial
\varepsilon` (eV/Å^d, ASE sign: positive = tensile). The default ``stress_tol`` is
``fmax / v^((d-1)/d)`` (``v = V/N`` the volume per atom of the start cell): the stress whose
force on one atom's share of a face is ``fmax``.

How it runs
-----------
The steps run inside a jitted ``lax.while_loop`` in *chunks* of at most ``chunk`` steps.
Between chunks (on the host) the loop reports through ``callback(step, energy, fmax)`` and
repairs what cannot be repaired inside ``jit``: when a trial step overflowed the neighbour
list, the step is not taken, the list is reallocated for the last good state
(``model.allocate``) and the relaxation resumes (FIRE's velocity and time step are kept).
With ``relax_cell``, a cell that shrank below the model's small-cell replication is rebuilt
the same way (``Potential.build`` on the current structure). The chunk function is compiled
once per (model, settings, array shapes); a new neighbour capacity or model recompiles it.
Pass a prebuilt ``EnergyModel`` (``mdsens.md.build``) as ``potential`` to reuse the compiled
code across calls.

Units and defaults
------------------
Time steps are given in units of :math:`\tau = \ell\sqrt{m/\varepsilon}` with unit mass
(every degree of freedom has mass 1): :math:`\ell` and :math:`\varepsilon` are the
potential's ``sigma`` and ``epsilon`` parameters when it has them (their largest entries:
LJ, Morse, soft sphere, Stillinger–Weber), else 1 Å and 1 eV (ASE units). ``max_step`` is in
units of :math:`\ell`. The defaults ``dt=0.005``, ``dt_max=0.03``, ``max_step=0.1`` were
measured on LJ in reduced units with this code (fmax 1e-8, steps to convergence):

========================================  ============  =============  ============  ===========
system                                    0.005 / 0.03  0.005 / 0.02   0.01 / 0.05   0.02 / 0.1
========================================  ============  =============  ============  ===========
Kob–Andersen 80:20, N=500, ρ=1.2, random  1588 1373     1978 2115      1586 4925     2683 9849
start (3 starts)                          1328          1624           1472          4173
LJ fcc N=256, a=1.55σ, 0.05σ noise (2)    267 243       270 270        --            238 240
========================================  ============  =============  ============  ===========

(τ there is σ·sqrt(1/ε_max), ε_max = 1.5 for KA.) Larger steps lose more to FIRE's
restarts on the glass. Without the ``max_step`` cap (measured with this FIRE on jax-md's LJ,
cutoff 2.5σ_max) 0.1 / 0.4 (jax-md's defaults) wandered without converging on fcc N = 256,
and 0.005 / 0.02 did not converge in 20000 steps from a random KA start. The variable-cell
loop rebuilds the neighbour list at every step (the cell moves), so its steps cost more than
fixed-cell ones.

Exports: :func:`relax`, :func:`relax_batch` (K parameter sets at once, ``vmap``; see
``_batch``), :class:`Relaxation`, :class:`Status`, :class:`RelaxationError`,
:class:`RelaxationWarning`, and the pieces :func:`fire`, :func:`gd` (``init / step``
minimisers over pytrees).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from . import _relax_loop as _loop
from ._fire import Fire2State, FireState, GDState, Minimizer, fire, fire2, gd
from ._relaxation import (
    POLICIES,
    Policy,
    Relaxation,
    RelaxationError,
    RelaxationWarning,
    Status,
    apply_policy,
)
from .model import EnergyModel, build
from .system import System

__all__ = [
    "Fire2State",
    "FireState",
    "GDState",
    "Minimizer",
    "Policy",
    "Relaxation",
    "RelaxationError",
    "RelaxationWarning",
    "Status",
    "fire",
    "fire2",
    "gd",
    "relax",
    "relax_batch",
]

Method = Literal["fire", "fire2", "gd"]
METHODS = ("fire", "fire2", "gd")
_MAX_STALLED_REPAIRS = 3


@dataclasses.dataclass(frozen=True)
class _MinimizerConfig:
    """Hashable minimiser settings in units of τ and ℓ; part of the compile-cache key.

    The units themselves are traced (``Context.time_unit``, ``length_unit``), so a new σ or
    ε does not recompile the loop.
    """

    method: str
    dt: float
    dt_max: float
    max_step: float

    def make(self, ctx: _loop.Context) -> Minimizer:
        tau, ell = ctx.time_unit, ctx.length_unit
        if self.method == "fire":
            return fire(self.dt * tau, self.dt_max * tau, max_step=self.max_step * ell)
        if self.method == "fire2":
            return fire2(self.dt * tau, self.dt_max * tau, max_step=self.max_step * ell)
        return gd((self.dt * tau) ** 2, max_step=self.max_step * ell)


def _make_spec(model: EnergyModel, config: _MinimizerConfig, relax_cell: bool, ctx):
    return _loop.LoopSpec(model, config.make(ctx), relax_cell)


# Compiled entry points, cached on (model identity, settings, shapes). The spec's minimiser
# closures are rebuilt from `config` inside the traced function, so hashing the spec by
# (model, config, relax_cell) is exact.
def _init_impl(key, ctx, q, nbrs):
    return _loop.init_state(_make_spec(*key, ctx), ctx, q, nbrs)


def _chunk_impl(key, ctx, carry):
    return _loop.run_chunk(_make_spec(*key, ctx), ctx, carry)


def _refresh_impl(key, ctx, state, nbrs):
    """Re-evaluate the state's point with a new neighbour list (optimiser memory kept)."""
    spec = _make_spec(*key, ctx)
    e, f, aux = _loop.make_force_fn(spec, ctx, nbrs)(state.position)
    state = state._replace(energy=e, force=f, aux=aux)
    return state, _loop.trial_flags(spec, ctx, state.position, (e, f, aux))


_init_jit = jax.jit(_init_impl, static_argnums=0)
_chunk_jit = jax.jit(_chunk_impl, static_argnums=0)
_refresh_jit = jax.jit(_refresh_impl, static_argnums=0)


def _natural_scales(params: dict) -> tuple[float, float]:
    """(ℓ, ε): largest ``sigma`` and ``|epsilon|`` of the params, else (1 Å, 1 eV)."""

    def biggest(name: str) -> float:
        if name not in params:
            return 1.0
        values = np.abs(np.asarray(params[name], np.float64)).ravel()
        values = values[np.isfinite(values) & (values > 0)]
        return float(values.max()) if values.size else 1.0

    return biggest("sigma"), biggest("epsilon")


def _context(system: System, params: dict, pressure: float, fmax: float,
             stress_tol: float | None) -> _loop.Context:
    """The traced data of one relaxation of ``system`` at ``params`` (module docstring:
    τ and ℓ from the parameters; the default ``stress_tol`` from the start cell's volume
    per atom; the strain scale ``c = sqrt(N) v^(1/d)``)."""
    R0 = jnp.asarray(system.positions)
    cell0 = jnp.asarray(system.cell)
    n, d = R0.shape
    dtype = R0.dtype
    ell, eps = _natural_scales(params)
    tau = ell / math.sqrt(eps)
    vol = abs(float(np.linalg.det(np.asarray(cell0, np.float64)))) if system.is_periodic else 1.0
    v_atom = vol / max(n, 1)
    if stress_tol is None:
        stress_tol = fmax / v_atom ** ((d - 1) / d)
    return _loop.Context(
        params=params,
        cell0=cell0,
        cell_factor=jnp.asarray(math.sqrt(n) * v_atom ** (1 / d), dtype),
        pressure=jnp.asarray(pressure, dtype),
        fmax=jnp.asarray(fmax, dtype),
        stress_tol=jnp.asarray(stress_tol, dtype),
        time_unit=jnp.asarray(tau, dtype),
        length_unit=jnp.asarray(ell, dtype),
    )


def _check_args(method, on_failure, fmax, max_steps, chunk, stress_tol) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if on_failure not in POLICIES:
        raise ValueError(f"on_failure must be one of {POLICIES}, got {on_failure!r}")
    if not fmax > 0:
        raise ValueError(f"fmax must be > 0, got {fmax}")
    if int(max_steps) != max_steps or max_steps < 0:
        raise ValueError(f"max_steps must be an integer >= 0, got {max_steps}")
    if int(chunk) != chunk or chunk < 1:
        raise ValueError(f"chunk must be an integer >= 1, got {chunk}")
    if stress_tol is not None and not stress_tol > 0:
        raise ValueError(f"stress_tol must be > 0, got {stress_tol}")


def _resolve_model(system: System, potential: Any, neighbor_list: Any
                   ) -> tuple[EnergyModel, Any]:
    """``(model, neighbor_list)``: ``potential`` itself when it is an ``EnergyModel`` built
    for ``system``'s layout (its list setting then wins), else ``build(system, ...)``."""
    if isinstance(potential, EnergyModel):
        if potential.n_atoms != system.n_atoms or potential.dim != system.dim:
            raise ValueError("the EnergyModel was built for another system layout")
        return potential, potential.uses_neighbor_list
    return build(system, potential, neighbor_list=neighbor_list), neighbor_list


def _params_finite(params: Any) -> bool:
    """All parameter entries finite. Non-finite parameters are caught on the host, not left
    to the energy: some potentials (jax-md's Lennard-Jones) map non-finite pair energies to
    zero."""
    return all(bool(np.all(np.isfinite(np.asarray(v)))) for v in jax.tree.leaves(params))


def _terminal_status(flags: int, converged: bool, step: int, max_steps: int
                     ) -> Status | None:
    """Why a relaxation without a pending list repair stops now (None: it goes on)."""
    if flags & _loop.NONFINITE:
        return Status.NONFINITE
    if flags & _loop.BAD_CELL:
        return Status.INVALID_CELL
    if converged:
        return Status.CONVERGED
    if step >= max_steps:
        return Status.MAX_STEPS
    return None


def _relaxation(system: System, state: Any, ctx: _loop.Context, relax_cell: bool,
                steps: int, status: Status, model: EnergyModel) -> Relaxation:
    """The :class:`Relaxation` of one loop state (``system`` gives the layout)."""
    R, cell = _loop.to_cartesian(state.position, ctx, relax_cell)
    fmax_now, sres = _loop.residuals(state.aux, ctx)
    return Relaxation(
        system=system.replace(positions=R, cell=cell),
        energy=state.aux.energy,
        forces=state.aux.forces,
        fmax=fmax_now,
        stress=state.aux.stress,
        stress_residual=sres if relax_cell else None,
        nbrs=state.aux.nbrs,
        steps=steps,
        converged=status is Status.CONVERGED,
        status=status,
        model=model,
    )


def relax(
    system: System,
    potential: Any,
    *,
    method: Method = "fire2",
    fmax: float = 1e-6,
    max_steps: int = 10000,
    relax_cell: bool = False,
    pressure: float = 0.0,
    stress_tol: float | None = None,
    neighbor_list: Literal["auto"] | bool = "auto",
    dt: float = 0.005,
    dt_max: float = 0.03,
    max_step: float = 0.1,
    chunk: int = 1000,
    callback: Callable[[int, float, float], None] | None = None,
    on_failure: Policy = "raise",
    params: dict | None = None,
    nbrs: Any = None,
) -> Relaxation:
    r"""Relax ``system`` to a local minimum of ``potential`` (see the module docstring).

    Fixed cell: minimise :math:`E(R)`. ``relax_cell=True``: minimise
    :math:`H = E(R, C) + p\,\det C` over positions and cell through a symmetric strain of
    the start cell (``_relax_loop`` states the coordinates and generalised forces); the
    result has :math:`\sigma = -pI` within ``stress_tol``.

    ``relax`` drives compiled chunks from Python, so it is not itself traceable (no ``jit``,
    ``vmap`` or ``grad`` around it); derivatives of the relaxed state come from implicit
    differentiation at the returned minimum, not from differentiating the loop.

    Args:
      system: start structure (periodic or free; ``relax_cell`` needs periodic).
      potential: a :class:`~mdsens.md.Potential`, or an ``EnergyModel`` already built for
        this system layout (reuses compiled code across calls).
      method: ``"fire2"`` (default: FIRE 2.0 as in LAMMPS, see :func:`fire2`),
        ``"fire"`` (Bitzek et al. 2006, see :func:`fire`) or ``"gd"`` (adaptive gradient
        descent, see :func:`gd`; initial step size ``(dt τ)²``).
      fmax: force tolerance, eV/Å: converged when :math:`\max_i |F_i| \le` fmax.
      max_steps: most minimiser steps (each one energy + force evaluation).
      relax_cell: also relax the cell (all six strain components in 3-D).
      pressure: external pressure :math:`p`, eV/Å^d (1 GPa = 6.2415e-3 eV/Å³).
      stress_tol: tolerance on :math:`\max_{ij}|\sigma + pI|_{ij}`, eV/Å^d; default
        ``fmax / (V/N)^((d-1)/d)``.
      neighbor_list: ``"auto"``, True or False, for ``Potential.build`` (ignored when
        ``potential`` is an ``EnergyModel``).
      dt, dt_max: FIRE's initial and largest time step in units of τ (module docstring).
      max_step: largest displacement of any atom (or of the scaled strain) in one step, in
        units of ℓ.
      chunk: most steps per compiled call (between callbacks / neighbour-list repairs).
      callback: called as ``callback(step, energy, fmax)`` after every chunk.
      on_failure: ``"raise"`` (:class:`RelaxationError`), ``"warn"``, ``"nan"`` (results
        become NaN) or ``"ignore"``; the status is always in the result.
      params: potential parameters (default: the potential's own).
      nbrs: a start neighbour list for this model (e.g. a previous ``Relaxation.nbrs``);
        reallocated if it overflows.
    Returns:
      :class:`Relaxation`.
    Raises:
      ValueError: invalid arguments, or ``relax_cell`` for a free system.
      RelaxationError: with ``on_failure="raise"`` when not converged.
    """
    _check_args(method, on_failure, fmax, max_steps, chunk, stress_tol)
    if not isinstance(system, System):
        raise TypeError("relax: system must be an mdsens.md.System (see System.from_ase)")
    if relax_cell and not system.is_periodic:
        raise ValueError("relax_cell=True needs a periodic system")
    model, neighbor_list = _resolve_model(system, potential, neighbor_list)
    params = model.params if params is None else params
    model.check_params(params)

    R0 = jnp.asarray(system.positions)
    cell0 = jnp.asarray(system.cell)
    d = R0.shape[1]
    dtype = R0.dtype
    config = _MinimizerConfig(method, float(dt), float(dt_max), float(max_step))
    ctx = _context(system, params, pressure, fmax, stress_tol)
    q0 = (R0, jnp.zeros((d, d), dtype)) if relax_cell else R0
    if nbrs is None:
        nbrs = model.allocate(R0, cell0)

    key = (model, config, relax_cell)
    state, flags = _init_jit(key, ctx, q0, nbrs)
    step, stalled, status = 0, 0, None
    finite_params = _params_finite(params)
    while True:
        flags = int(flags) | (0 if finite_params else _loop.NONFINITE)
        if flags & (_loop.OVERFLOW | _loop.SMALL_CELL):
            stalled += 1
            if stalled > _MAX_STALLED_REPAIRS:
                status = Status.NEIGHBOR_LIST
                break
            R, cell = _loop.to_cartesian(state.position, ctx, relax_cell)
            if flags & _loop.SMALL_CELL:
                current = system.replace(positions=R, cell=cell)
                model = build(
                    current, model.potential, neighbor_list=neighbor_list, skin=model.skin,
                    capacity_multiplier=model.capacity_multiplier,
                )
                key = (model, config, relax_cell)
            # Each failed repair adds a quarter of the current capacity: a trial step that
            # overflows a fresh list means the density jumps faster than jax-md's margin.
            capacity = 0 if state.aux.nbrs is None else state.aux.nbrs.nlist.idx.shape[-1]
            extra = (stalled - 1) * max(capacity // 4, 1)
            state, flags = _refresh_jit(key, ctx, state, model.allocate(R, cell, extra))
            continue
        status = _terminal_status(flags, bool(_loop.is_converged(state.aux, ctx)), step,
                                  max_steps)
        if status is not None:
            if flags and state.aux.nbrs is not None:
                # a rejected trial step left its own list in the state: one for the kept
                # positions instead
                R, cell = _loop.to_cartesian(state.position, ctx, relax_cell)
                aux = state.aux._replace(nbrs=model.allocate(R, cell))
                state = state._replace(aux=aux)
            break
        carry = _loop.Carry(
            state, jnp.int32(step), jnp.int32(min(step + chunk, max_steps)), jnp.int32(0)
        )
        carry = _chunk_jit(key, ctx, carry)
        state, flags = carry.state, carry.flags
        new_step = int(carry.step)
        stalled = 0 if new_step > step else stalled
        step = new_step
        if callback is not None:
            fmax_now, _ = _loop.residuals(state.aux, ctx)
            callback(step, float(state.aux.energy), float(fmax_now))

    return apply_policy(_relaxation(system, state, ctx, relax_cell, step, status, model),
                         on_failure)


from ._batch import relax_batch as relax_batch  # noqa: E402 (uses this module's pieces)
