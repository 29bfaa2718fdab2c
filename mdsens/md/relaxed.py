r"""Relaxed states as differentiable JAX functions of the parameters.

:func:`relaxed_state` turns "relax this structure with this potential" into a function
``θ ↦ RelaxedState`` that composes with ``jax.jit``, ``jax.grad``, ``jax.jacfwd``,
``jax.jacrev``, ``jax.hessian`` and ``jax.vmap``::

    from mdsens.md import potentials, relaxed_state
    state = relaxed_state(system, potentials.get("lj", sigma=3.4, epsilon=0.0104),
                          relax_cell=True)
    a_of_sigma = lambda th: state(th).cell[0, 0]
    jax.grad(a_of_sigma)({"sigma": 3.4})            # da/dσ through the relaxation

How it works
------------
*Forward* (inside the trace): the compiled minimiser of :func:`mdsens.md.relax` (the same
FIRE / FIRE 2.0 / gradient-descent step, trial checks and cell filter) runs as one
``lax.while_loop`` from the *reference state* — the structure relaxed once on the host at
the reference parameters when the function is built — with the neighbour list of that
state, whose capacity is fixed inside a trace. The parameters enter the loop through
``lax.stop_gradient``: the loop itself is never differentiated.

*Derivatives*: the loop's end point ``x*`` is a root of the optimality condition
``F(x, θ) = ∇ₓ G(x, θ)`` of :class:`~mdsens.md.root_problem.RootProblem` (``x`` the positions,
with the cell strain when the cell relaxes, ``G`` the energy plus ``p V``); it is wrapped by
:func:`~mdsens.md.root_problem.implicit_root`, so every derivative solves
``∂ₓF ẋ = −∂_θF θ̇`` (forward mode) or its transpose (reverse mode) by CG with the rigid
zero modes projected out — the same root problem, zero-mode handling and solvers as
:func:`mdsens.md.sensitivity` and the relaxed elastic constants.

Parameters
----------
``θ`` is any pytree. Without ``params_fn`` it is a dict of potential parameters that replace
the potential's own (a subset is fine: ``{"sigma": 3.4}``). With ``params_fn(θ) -> dict``
(any JAX function) the user chooses the parameterisation: one θ driving several species
pairs (a particle diameter ``D`` in ``σ_AA = D``, ``σ_AB = (D + D_B)/2``), a scaling of EAM
tables, a physical quantity.

Failures
--------
``state.status`` (``int32``, :class:`~mdsens.md.minimize.Status` codes; 0 = converged) and
``state.steps`` travel with every result. ``on_failure`` applies to a relaxation that did not
converge (steps exhausted, non-finite values, a neighbour list that overflowed its fixed
capacity, a collapsed or runaway cell) and to failed derivative solves, from inside the
trace: ``"raise"`` raises (a :class:`~mdsens.md.minimize.RelaxationError` when called
outside a transformation, a ``JaxRuntimeError`` carrying the same message under ``jit`` /
``grad``), ``"warn"`` warns, ``"nan"`` makes every number of a failed member NaN,
``"ignore"`` leaves the status to the caller. A relaxation is never reported as converged
when the cell ran away (zero energy where the reference interacted).

Limits: the neighbour-list capacity is that of the reference state times
``options.capacity_multiplier`` — parameters far from the reference (a much denser
structure) overflow it, which is reported, never silently truncated; pass a larger
``capacity_multiplier`` for wide sweeps. Rattlers are not detected inside a trace (a solve
that excites one fails and is reported); use :func:`mdsens.md.sensitivity` for jammed
packings.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ..implicit.policy import Policy, check_policy
from . import _relax_loop as _loop
from . import zero_modes
from ._driver import context, default_params, resolve_model
from ._relaxation import RelaxationError, RelaxationWarning, Status
from .elastic import relaxed_stiffness
from .minimize import relax
from .model import EnergyModel
from .options import DERIVATIVE_DEFAULTS, RelaxOptions
from .potentials.base import LJ_BOND_STIFFNESS
from .root_problem import ParamSpec, RootProblem, implicit_root, make_solver
from .strain import n_voigt, stress_to_voigt
from .system import System

__all__ = ["DerivativeOptions", "RelaxedState", "RelaxedStateFunction", "relaxed_state"]

Array = jax.Array

_USER = ParamSpec("theta", "user")


# ----------------------------------------------------------------------------- results


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class RelaxedState:
    """A relaxed structure as JAX arrays (a pytree: it passes through ``jit`` and ``vmap``).

    Attributes:
      positions: (N, d) Cartesian positions, Å (the frame of the reference state: the
        derivatives have no rigid translation or, for a free system, rotation).
      cell: (d, d) lattice vectors as rows, Å; None for a free system.
      energy: () potential energy E, eV (without the ``p V`` term).
      stress: (d(d+1)/2,) Cauchy stress, Voigt (xx yy zz yz xz xy), eV/Å^d; None for a
        free system.
      elastic_constants: (d(d+1)/2, d(d+1)/2) relaxed elastic constants ``dσ/dη`` at the
        relaxed cell, eV/Å^d (only with ``elastic_constants=True``, else None).
      status: () int32 :class:`~mdsens.md.minimize.Status` of the relaxation, 0 when it
        converged (no derivative).
      steps: () int32 minimiser steps taken from the reference state.
      fmax: () largest force at the end, eV/Å (no derivative).
    """

    positions: Array
    cell: Array | None
    energy: Array
    stress: Array | None
    elastic_constants: Array | None
    status: Array
    steps: Array
    fmax: Array

    @property
    def n_atoms(self) -> int:
        return self.positions.shape[-2]

    @property
    def converged(self) -> Array:
        """``status == 0`` (a boolean array)."""
        return self.status == Status.CONVERGED

    @property
    def energy_per_atom(self) -> Array:
        """E / N, eV."""
        return self.energy / self.n_atoms

    @property
    def volume(self) -> Array:
        """``|det cell|``, Å^d (periodic systems)."""
        if self.cell is None:
            raise ValueError("a free system has no volume")
        return jnp.abs(jnp.linalg.det(self.cell))

    @property
    def pressure(self) -> Array:
        """``−tr σ / d``, eV/Å^d (periodic systems)."""
        if self.stress is None:
            raise ValueError("a free system has no pressure")
        d = self.positions.shape[-1]
        return -jnp.sum(self.stress[..., :d], axis=-1) / d


@dataclasses.dataclass(frozen=True)
class DerivativeOptions:
    """How derivative solves run: the linear ``solver`` (``"cg"``, ``"minres"``, ``"gmres"``,
    ...; see :mod:`mdsens.implicit.linsolve`), its relative residual ``tol`` and iteration cap
    ``maxiter`` (None: the solver's default)."""

    solver: str = "cg"
    tol: float = 1e-10
    maxiter: int | None = None

    def __post_init__(self):
        from ..implicit import linsolve

        linsolve.get_solver(self.solver)
        if not (np.isfinite(self.tol) and self.tol > 0):
            raise ValueError(f"tol must be a finite number > 0, got {self.tol}")


# ----------------------------------------------------------------------------- the function


def relaxed_state(
    system: System | Any,
    potential: Any,
    *,
    params_fn: Callable[[Any], dict] | None = None,
    relax_cell: bool = False,
    pressure: float = 0.0,
    elastic_constants: bool = False,
    options: RelaxOptions | dict | None = None,
    derivative: DerivativeOptions | None = None,
    reference_params: dict | None = None,
    on_failure: Policy = "raise",
) -> RelaxedStateFunction:
    r"""A differentiable function ``θ ↦ RelaxedState`` of the relaxed ``system`` (module doc).

    Args:
      system: the start structure (:class:`~mdsens.md.System` or ``ase.Atoms``).
      potential: a :class:`~mdsens.md.Potential` or an :class:`~mdsens.md.EnergyModel`.
      params_fn: ``θ -> {name: value}``, the potential parameters as a JAX function of the
        user's θ (replacing the named parameters; the others keep the potential's values).
        None: θ is itself such a dict.
      relax_cell: also relax the cell (periodic systems) at ``pressure`` (eV/Å^d).
      elastic_constants: also compute the relaxed elastic constants (a derivative through
        a second, fixed-cell root; differentiable again).
      options: :class:`~mdsens.md.RelaxOptions` of the relaxations (or a dict of fields
        replacing ``DERIVATIVE_DEFAULTS``: fmax 1e-8 eV/Å — derivatives are only as good as
        the root; ``max_steps`` bounds every traced relaxation).
      derivative: :class:`DerivativeOptions` of the derivative solves.
      reference_params: parameters of the reference relaxation (default: the potential's),
        done once on the host now (with at least ``DERIVATIVE_DEFAULTS.max_steps`` steps);
        every call starts from its relaxed structure and sizes its neighbour list from it.
      on_failure: ``"raise"``, ``"warn"``, ``"nan"`` or ``"ignore"`` (module doc).

    Returns:
      A :class:`RelaxedStateFunction`; call it with θ.
    """
    check_policy(on_failure)
    if not isinstance(system, System):
        system = System.from_ase(system)
    defaults = DERIVATIVE_DEFAULTS.replace(relax_cell=relax_cell, pressure=pressure)
    options = RelaxOptions.resolve(options, defaults)
    if options.relax_cell != relax_cell:
        raise ValueError("relaxed_state: options.relax_cell differs from relax_cell")
    if relax_cell and not system.is_periodic:
        raise ValueError("relax_cell=True needs a periodic system")
    if elastic_constants and not system.is_periodic:
        raise ValueError("elastic_constants=True needs a periodic system")
    if params_fn is not None and not callable(params_fn):
        raise TypeError("params_fn must be a function theta -> {name: value}")
    return RelaxedStateFunction(system, potential, params_fn, options,
                                derivative or DerivativeOptions(), reference_params,
                                elastic_constants, on_failure)


class RelaxedStateFunction:
    """``θ ↦ RelaxedState`` (built by :func:`relaxed_state`; see the module doc).

    Attributes:
      reference: the host :class:`~mdsens.md.minimize.Relaxation` at the reference
        parameters (start and neighbour-list sizing of every call).
      model: the :class:`~mdsens.md.EnergyModel` (shared with ``relax``/``sensitivity``
        calls on the same layout).
      params: the potential's full parameter dict (what θ modifies).
    """

    def __init__(self, system: System, potential: Any, params_fn, options: RelaxOptions,
                 derivative: DerivativeOptions, reference_params, elastic: bool,
                 on_failure: str):
        model = resolve_model(system, potential, options)
        pot = model.potential
        base = default_params(potential, model, None)
        ref = {**base, **(reference_params or {})}
        self.options = options
        # the reference runs on the host, where steps are cheap: max_steps bounds the
        # traced relaxations, not this one
        reference = relax(system, model, options.replace(
            max_steps=max(options.max_steps, DERIVATIVE_DEFAULTS.max_steps)),
            params=ref, on_failure="ignore")
        if not reference.converged:
            raise RelaxationError(f"the reference relaxation did not converge: "
                                  f"{reference.message}", reference)
        self.model: EnergyModel = model
        self.reference = reference
        self.params = {k: jnp.asarray(v) for k, v in base.items()}
        self.derivative = derivative
        self.on_failure = on_failure
        self._params_fn = params_fn
        self._elastic = elastic
        relaxed = reference.system
        self._periodic = relaxed.is_periodic
        self._R0 = jnp.asarray(relaxed.positions, jnp.float64)
        self._cell0 = jnp.asarray(relaxed.cell, jnp.float64) if self._periodic else None
        self._nbrs0 = (model.allocate(self._R0, self._cell0)
                       if model.uses_neighbor_list else None)
        stiffness = getattr(pot, "bond_stiffness", LJ_BOND_STIFFNESS)
        self._ctx = context(relaxed, ref, options, stiffness)
        self._start_energy = float(reference.energy)
        self._spec = _loop.LoopSpec(model, options.method, options.relax_cell)
        self._jitted = jax.jit(self._evaluate, static_argnums=1)

    # -- parameters ------------------------------------------------------------------
    def potential_params(self, theta: Any) -> dict:
        """The full potential parameters at θ (``params_fn(θ)`` or θ over the defaults)."""
        return {**self.params, **self._user_params(theta)}

    def _user_params(self, theta: Any) -> dict:
        out = theta if self._params_fn is None else self._params_fn(theta)
        if not isinstance(out, dict):
            raise TypeError("theta (or params_fn(theta)) must be a dict of potential "
                            f"parameters, got {type(out).__name__}")
        unknown = set(out) - set(self.params)
        if unknown:
            raise ValueError(f"unknown parameters {sorted(unknown)}; known: "
                             f"{sorted(self.params)}")
        return {k: jnp.asarray(v, jnp.result_type(float)) for k, v in out.items()}

    def _params_of_spec(self, user: dict) -> dict:
        return self._user_params(user[_USER.name])

    # -- evaluation ------------------------------------------------------------------
    def __call__(self, theta: Any) -> RelaxedState:
        traced = _traced(theta)
        state = self._jitted(theta, traced)
        if not traced and self.on_failure == "raise":
            # outside a transformation: the caller's error type, not a runtime error
            status = np.asarray(state.status)
            if np.any(status != Status.CONVERGED):
                raise RelaxationError(_message(status, state.steps, state.fmax))
        return state

    def _evaluate(self, theta: Any, traced: bool) -> RelaxedState:
        """The state at θ; ``traced``: θ comes from an outer transformation, so failures
        are reported from inside the program (else by ``__call__`` on the host)."""
        params = self.potential_params(theta)
        R, cell, nbrs, status, steps, fmax = self._forward(lax.stop_gradient(params))
        if self.on_failure == "warn" or (self.on_failure == "raise" and traced):
            jax.debug.callback(_report(self.on_failure), status, steps, fmax)
        state = self._differentiable(theta, R, cell, nbrs, status, steps, fmax)
        if self.on_failure == "nan":
            ok = status == Status.CONVERGED
            state = _nan_unless(ok, state)
        return state

    def _forward(self, params: dict):
        """The minimiser loop from the reference state at ``params`` (no derivatives)."""
        spec, relax_cell = self._spec, self.options.relax_cell
        ctx = self._ctx._replace(params=params)
        q0 = (self._R0, jnp.zeros((self._R0.shape[1],) * 2, self._R0.dtype)) \
            if relax_cell else self._R0
        state, flags = _loop.init_state(spec, ctx, q0, self._nbrs0)
        carry = _loop.Carry(state, jnp.int32(0), jnp.int32(self.options.max_steps),
                            flags, jnp.int32(0))
        carry = _loop.run_chunk(spec, ctx, carry)
        state = carry.state
        R, cell = _loop.to_cartesian(state.position, ctx, relax_cell)
        nbrs = state.aux.nbrs
        flags = carry.flags
        if nbrs is not None:  # the loop's last list may be a rejected trial's
            nbrs = self.model.update(R, cell, nbrs, force=True)
            flags = flags | jnp.where(self.model.overflowed(nbrs), _loop.OVERFLOW, 0)
        fmax, _ = _loop.residuals(state.aux, ctx)
        converged = _loop.is_converged(state.aux, ctx)
        runaway = (relax_cell and self._start_energy != 0.0) & \
            _loop.interactions_vanished(state.aux.energy, ctx)
        status = _status(flags, converged, runaway)
        return R, cell, nbrs, status, carry.step, fmax

    def _differentiable(self, theta, R, cell, nbrs, status, steps, fmax) -> RelaxedState:
        """The loop's end point as a root of F, differentiable in θ (implicit_root)."""
        model, relax_cell, dim = self.model, self.options.relax_cell, self._R0.shape[1]
        R, cell, nbrs = lax.stop_gradient((R, cell, nbrs))
        problem = RootProblem(model, nbrs, (_USER,), self.params, cell, dim, relax_cell,
                              jnp.asarray(self.options.pressure, jnp.float64),
                              params_fn=self._params_of_spec)
        th = {_USER.name: theta}
        # Translations are constants of the program; a free system's rotations depend on
        # the relaxed positions (custom_root passes them to the rule as arguments).
        with jax.ensure_compile_time_eval():
            if self._periodic:
                modes = np.asarray(zero_modes.rigid_modes(self._R0, True))
                nullspace = jax.tree.map(np.asarray, problem.embed(modes))
        if not self._periodic:
            modes = zero_modes.rigid_modes(R, False)
            nullspace = modes
        d = self.derivative
        solve = make_solver(d.solver, d.tol, d.maxiter, nullspace, None)
        x_star = {"R": R, "eps": jnp.zeros((n_voigt(dim),), R.dtype)} if relax_cell else R
        policy = "ignore" if self.on_failure == "nan" else self.on_failure
        x = implicit_root(problem, x_star, th, solve, on_failure=policy)
        Rx, C, params = problem.configuration(x, th)
        energy = model.energy(Rx, C, params, nbrs)
        stress = elastic = None
        if self._periodic:
            stress = stress_to_voigt(model.stress(Rx, C, params, nbrs))
        if self._elastic:
            fixed = make_solver(d.solver, d.tol, d.maxiter, modes, None)

            elastic = relaxed_stiffness(problem, th, Rx, C, fixed, policy)
        return RelaxedState(Rx, C, energy, stress, elastic, status, steps, fmax)

    def __repr__(self) -> str:
        kind = "relax_cell" if self.options.relax_cell else "fixed cell"
        return (f"RelaxedStateFunction({self.reference.system.n_atoms} atoms, "
                f"{type(self.model.potential).__name__}, {kind})")


# ----------------------------------------------------------------------------- helpers


def _traced(tree: Any) -> bool:
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(tree))


def _status(flags: Array, converged: Array, runaway: Array) -> Array:
    """The :class:`Status` code of the loop's end (the host driver's rules, traced)."""
    code = jnp.where(converged, Status.CONVERGED, Status.MAX_STEPS)
    code = jnp.where(converged & runaway, Status.CELL_DIVERGED, code)
    for bits, value in ((_loop.OVERFLOW | _loop.SMALL_CELL, Status.NEIGHBOR_LIST),
                        (_loop.DIVERGED, Status.CELL_DIVERGED),
                        (_loop.BAD_CELL, Status.INVALID_CELL),
                        (_loop.NONFINITE | _loop.ABSURD, Status.NONFINITE)):
        code = jnp.where((flags & bits) != 0, value, code)
    return code.astype(jnp.int32)


def _message(status, steps, fmax) -> str:
    status, steps, fmax = np.asarray(status), np.asarray(steps), np.asarray(fmax)
    bad = status != Status.CONVERGED
    worst = Status(int(status[bad].max()))
    count = f" ({int(bad.sum())} of {bad.size} relaxations)" if status.ndim else ""
    return (f"relaxation failed{count}: {worst.message} [steps={int(np.max(steps))}, "
            f"fmax={float(np.max(fmax)):.3e} eV/Å]")


def _report(on_failure: str):
    def report(status, steps, fmax):
        if np.all(np.asarray(status) == Status.CONVERGED):
            return
        message = _message(status, steps, fmax)
        if on_failure == "raise":
            raise RelaxationError(message)
        warnings.warn(message, RelaxationWarning, stacklevel=2)

    return report


def _nan_unless(ok: Array, state: RelaxedState) -> RelaxedState:
    def nan(leaf):
        if leaf is None or not jnp.issubdtype(leaf.dtype, jnp.inexact):
            return leaf
        return jnp.where(ok, leaf, jnp.nan)

    return RelaxedState(
        positions=nan(state.positions), cell=nan(state.cell), energy=nan(state.energy),
        stress=nan(state.stress), elastic_constants=nan(state.elastic_constants),
        status=state.status, steps=state.steps, fmax=state.fmax)

