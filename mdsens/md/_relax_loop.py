"""The compiled part of ``relax``: objective (fixed or variable cell) and the chunk loop.

Degrees of freedom
------------------
Fixed cell: ``q = R``, the Cartesian positions ``(N, d)``; ``H(q) = E(R, cell)``.

Variable cell (a strain filter in the spirit of ASE's ``UnitCellFilter``, with exact
gradients): ``q = (X, s)`` with ``X`` ``(N, d)`` positions in the frame of the reference cell
``C0`` and ``s`` ``(d, d)`` a scaled strain. With ``U = I + sym(s) / c`` (row convention)

    R = X U,    cell = C0 U,    H(X, s) = E(R, cell) + p det(cell).

With the virial ``W = ∂E/∂ε`` at ``ε = 0`` for ``R (I + ε)``, ``cell (I + ε)`` (so
``σ = sym(W) / V``) the exact generalised forces are

    -∂H/∂X = F Uᵀ,      -∂H/∂s = -sym(U⁻ᵀ V (σ + p I)) / c,      F = -∂E/∂R.

``H`` is stationary iff ``F = 0`` and ``σ = -p I`` (``X ↦ U⁻¹X + XU⁻¹`` is invertible for SPD
``U``). The strain is scaled by ``c = sqrt(N) (V0/N)^(1/d)`` (a length) so that ``s`` is a
length and its stiffness ``N v B / c² = B v^(1-2/d)`` matches that of one atom (``B`` the
bulk modulus, ``v`` the volume per atom): one time step suits both kinds of coordinate.

Error bits (an ``int32`` bitfield, set inside the loop). A trial point that is
non-finite (``NONFINITE``), raises the objective absurdly (``ABSURD``: by more than
``|H| + N ε``, ε the energy unit) or turns the cell inside out (``BAD_CELL``) is *rejected*:
the loop keeps the last good point, the minimiser's ``reject`` restarts it at rest with a
smaller step, the next evaluation rebuilds the neighbour list, and the loop goes on; only
after ``MAX_REJECTS`` rejections in a row does the bit stop the loop. The other bits stop
the loop at once and keep the last good state: ``OVERFLOW`` (the neighbour list overflowed
at a trial point; the host reallocates it), ``SMALL_CELL`` (the cell shrank so that the
model's replicated cell is narrower than twice the cutoff: the minimum image would miss
neighbours; the host rebuilds the model), ``DIVERGED`` (the cell volume left
``[V0 / r, r V0]``, ``r = max_volume_ratio``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_batching import custom_vmap
from jax.tree_util import tree_leaves, tree_map

from ._cell_search import perpendicular_widths
from ._fire import Minimizer, fire, fire2, gd

OVERFLOW = 1
NONFINITE = 2
BAD_CELL = 4
SMALL_CELL = 8
DIVERGED = 16
ABSURD = 32
RETRY = NONFINITE | BAD_CELL | ABSURD  # a trial with only these bits is retried smaller
MAX_REJECTS = 40  # rejections in a row before the loop gives up (step scale 0.5^40)

class Context(NamedTuple):
    """Traced per-relaxation data (changing it does not recompile)."""

    params: Any
    cell0: Any  # (d, d) reference cell, or None for a free system
    cell_factor: jax.Array  # c (length); unused at fixed cell
    pressure: jax.Array
    fmax: jax.Array
    stress_tol: jax.Array
    time_unit: jax.Array  # τ = ℓ √(m/ε): scales the minimiser's time steps
    length_unit: jax.Array  # ℓ: scales the step cap
    energy_scale: jax.Array  # N ε: the objective rise beyond |H| + N ε is absurd
    dt: jax.Array  # the options' dt, dt_max, max_step (units of τ and ℓ), max_strain_step
    dt_max: jax.Array
    max_step: jax.Array
    max_strain_step: jax.Array
    max_volume_ratio: jax.Array


class Aux(NamedTuple):
    """What is carried with every point: its neighbour list, Cartesian forces, stress."""

    nbrs: Any
    energy: jax.Array  # E, without the p V term
    forces: jax.Array  # (N, d) Cartesian, -∂E/∂R
    stress: Any  # (d, d) σ = sym(∂E/∂ε)/V, or None at fixed cell


class Carry(NamedTuple):
    state: Any
    step: jax.Array  # accepted steps
    stop: jax.Array
    flags: jax.Array
    rejects: jax.Array  # trials rejected in a row (the state's list is the last trial's);
    # a chunk only ends on an accepted step or a stopping bit, so it never ends mid-series


@dataclasses.dataclass(frozen=True)
class LoopSpec:
    """Static description of one compiled loop: the model, the method and whether the cell
    relaxes (the caller jits on a hashable key and rebuilds the minimiser from the traced
    :class:`Context` inside the traced function)."""

    model: Any
    method: str
    relax_cell: bool
    batched: bool = False  # members of a vmapped batch: neighbour lists via batched_update

    def minimizer(self, ctx: Context) -> Minimizer:
        """The minimiser with the context's settings: time steps ``dt τ``, ``dt_max τ``;
        a displacement cap ``max_step ℓ`` per atom and, for the scaled strain ``s``,
        ``min(max_step ℓ, max_strain_step c)`` per row (so no strain component changes by
        more than ``max_strain_step`` in a step)."""
        tau, ell = ctx.time_unit, ctx.length_unit
        cap = ctx.max_step * ell
        if self.relax_cell:
            cap = (cap, jnp.minimum(cap, ctx.max_strain_step * ctx.cell_factor))
        if self.method == "fire":
            return fire(ctx.dt * tau, ctx.dt_max * tau, max_step=cap)
        if self.method == "fire2":
            return fire2(ctx.dt * tau, ctx.dt_max * tau, max_step=cap)
        return gd((ctx.dt * tau) ** 2, max_step=cap)


def strain_matrix(s: jax.Array, c: jax.Array) -> jax.Array:
    """``U = I + sym(s) / c``."""
    d = s.shape[0]
    return jnp.eye(d, dtype=s.dtype) + 0.5 * (s + s.T) / c


def to_cartesian(q: Any, ctx: Context, relax_cell: bool) -> tuple[jax.Array, Any]:
    """Generalised coordinates -> (positions R, cell)."""
    if not relax_cell:
        return q, ctx.cell0
    X, s = q
    U = strain_matrix(s, ctx.cell_factor)
    return X @ U, ctx.cell0 @ U


def batched_update(model: Any):
    """``model.update`` whose ``vmap`` rebuilds only when some member may need it.

    Under ``vmap`` the ``lax.cond`` inside ``model.update`` becomes a ``select`` that
    rebuilds every member's list at every call. This version's batching rule evaluates the
    rebuild test (``EnergyModel.needs_rebuild``) for every member and, only when it holds for
    one, runs ``vmap(model.update)`` (each member then keeps or rebuilds its list by the
    model's own rule); otherwise the lists are returned as they are. Each member's list
    is therefore exactly what ``model.update`` alone gives. Built afresh inside each
    traced function (jit caches on the loop's static key).
    """

    @custom_vmap
    def update(R, cell, nbrs, force):
        return model.update(R, cell, nbrs, force=force)

    @update.def_vmap
    def _rule(axis_size, in_batched, R, cell, nbrs, force):
        def full(x, batched):
            return x if batched else jnp.broadcast_to(x, (axis_size, *jnp.shape(x)))

        args = tree_map(full, (R, cell, nbrs, force), tuple(in_batched))
        need = jax.vmap(model.needs_rebuild)(*args[:3]) | args[3]
        out = lax.cond(jnp.any(need), lambda a: jax.vmap(
            lambda R_, c_, n_, f_: model.update(R_, c_, n_, force=f_))(*a),
            lambda a: a[2], args)
        return out, tree_map(lambda _: True, out)

    return update


def make_force_fn(spec: LoopSpec, ctx: Context, nbrs: Any, rebuild: Any = False):
    """``force_fn(q) -> (H, -∇H, Aux)`` for the minimiser, updating ``nbrs`` at ``q``
    (rebuilding it whatever its reference when ``rebuild``: after a rejected trial the list
    is the trial's)."""
    model = spec.model

    def force_fn(q):
        R, cell = to_cartesian(q, ctx, spec.relax_cell)
        if nbrs is None:
            new_nbrs = None
        elif spec.batched:
            new_nbrs = batched_update(model)(R, cell, nbrs, jnp.asarray(rebuild))
        else:
            new_nbrs = model.update(R, cell, nbrs, force=rebuild)
        if not spec.relax_cell:
            e, g = jax.value_and_grad(model.energy)(R, cell, ctx.params, new_nbrs)
            return e, -g, Aux(new_nbrs, e, -g, None)

        def strained(R_, eps):
            eye = jnp.eye(eps.shape[0], dtype=eps.dtype)
            return model.energy(R_ @ (eye + eps), cell @ (eye + eps), ctx.params, new_nbrs)

        eps0 = jnp.zeros_like(cell)
        e, (gR, W) = jax.value_and_grad(strained, argnums=(0, 1))(R, eps0)
        X, s = q
        U = strain_matrix(s, ctx.cell_factor)
        vol = jnp.abs(jnp.linalg.det(cell))
        eye = jnp.eye(cell.shape[0], dtype=cell.dtype)
        stress = 0.5 * (W + W.T) / vol
        dH_deps = jnp.linalg.solve(U.T, vol * (stress + ctx.pressure * eye))
        f_s = -0.5 * (dH_deps + dH_deps.T) / ctx.cell_factor
        f_X = -gR @ U.T
        return e + ctx.pressure * vol, (f_X, f_s), Aux(new_nbrs, e, -gR, stress)

    return force_fn


def residuals(aux: Aux, ctx: Context) -> tuple[jax.Array, jax.Array]:
    """``(max_i |F_i|, max_ij |σ + p I|_ij)`` (the second is 0 at fixed cell)."""
    fmax = jnp.sqrt(jnp.max(jnp.sum(aux.forces**2, axis=-1), initial=0.0))
    if aux.stress is None:
        return fmax, jnp.zeros_like(fmax)
    eye = jnp.eye(aux.stress.shape[0], dtype=aux.stress.dtype)
    return fmax, jnp.max(jnp.abs(aux.stress + ctx.pressure * eye))


def is_converged(aux: Aux, ctx: Context) -> jax.Array:
    fmax, sres = residuals(aux, ctx)
    return (fmax <= ctx.fmax) & (sres <= ctx.stress_tol)


def interactions_vanished(energy: jax.Array, ctx: Context) -> jax.Array:
    """``|E| ≤ 1e-12 N ε``: nothing interacts any more. At the end of a cell relaxation that
    started with interactions this is a runaway cell, not a minimum (zero forces and zero
    stress look stationary); at fixed cell an energy of 0 can be a real minimum (an
    unjammed packing)."""
    return jnp.abs(energy) <= 1e-12 * ctx.energy_scale


def _finite(tree: Any) -> jax.Array:
    leaves = [x for x in tree_leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def trial_flags(spec: LoopSpec, ctx: Context, q: Any, trial: tuple,
                energy_before: Any = None) -> jax.Array:
    """The error bits of a trial point ``q`` with ``trial = (H, -∇H, Aux)``; ``ABSURD``
    needs ``energy_before``, the objective at the point the step left."""
    e, f, aux = trial
    flags = jnp.zeros((), jnp.int32)
    if aux.nbrs is not None:
        flags = flags | jnp.where(spec.model.overflowed(aux.nbrs), OVERFLOW, 0)
    flags = flags | jnp.where(_finite((q, e, f, aux.forces, aux.stress)), 0, NONFINITE)
    if energy_before is not None:
        rise = e - energy_before
        flags = flags | jnp.where(rise > jnp.abs(energy_before) + ctx.energy_scale, ABSURD, 0)
    if spec.relax_cell:
        U = strain_matrix(q[1], ctx.cell_factor)
        det = jnp.linalg.det(U)
        flags = flags | jnp.where(det > 0, 0, BAD_CELL)
        bound = ctx.max_volume_ratio
        flags = flags | jnp.where((det > bound) | (det < 1 / bound), DIVERGED, 0)
        model = spec.model
        if model.cutoff is not None and model.periodic:
            cell = ctx.cell0 @ U
            widths = perpendicular_widths(cell)
            reps = jnp.asarray(model.replicas, widths.dtype)
            flags = flags | jnp.where(jnp.all(reps * widths >= 2 * model.cutoff), 0, SMALL_CELL)
    return flags.astype(jnp.int32)


def init_state(spec: LoopSpec, ctx: Context, q: Any, nbrs: Any):
    """Minimiser state at ``q`` and its error bits (``OVERFLOW`` / ``NONFINITE``)."""
    state = spec.minimizer(ctx).init(q, make_force_fn(spec, ctx, nbrs))
    trial = (state.energy, state.force, state.aux)
    return state, trial_flags(spec, ctx, q, trial)


def active(ctx: Context, c: Carry) -> jax.Array:
    """Whether the loop goes on: steps left, no stopping bit, not converged."""
    return (c.step < c.stop) & (c.flags == 0) & ~is_converged(c.state.aux, ctx)


def step_once(spec: LoopSpec, ctx: Context, c: Carry) -> Carry:
    """One minimiser step with the trial checks of the module docstring.

    An accepted trial becomes the state. A rejected one (any ``RETRY`` bit: the trial is
    garbage, whatever else it flags) leaves the state at its point, restarted by the
    minimiser's ``reject``; after ``MAX_REJECTS`` in a row its bits stop the loop. A finite
    trial with another bit is not taken and stops the loop.
    The neighbour list is not selected (that would copy it every step): it is always the
    trial's. After a rejected trial the next evaluation rebuilds it; after a stop the
    caller reallocates it for the kept state (see ``minimize``).
    """
    minimizer = spec.minimizer(ctx)
    force_fn = make_force_fn(spec, ctx, c.state.aux.nbrs, rebuild=c.rejects > 0)
    new, trial = minimizer.step(c.state, force_fn)
    bits = trial_flags(spec, ctx, new.position, trial, c.state.energy)
    ok = bits == 0
    retry = (bits & RETRY) != 0  # a garbage trial: its other bits mean nothing
    rejects = jnp.where(ok, 0, jnp.where(retry, c.rejects + 1, c.rejects))
    kept = _without_list(c.state)
    kept = tree_map(lambda a, b: jnp.where(retry, a, b), _without_list(minimizer.reject(c.state)),
                    kept)
    state = tree_map(lambda a, b: jnp.where(ok, a, b), _without_list(new), kept)
    state = state._replace(aux=state.aux._replace(nbrs=new.aux.nbrs))
    given_up = jnp.where(rejects > MAX_REJECTS, bits & RETRY, 0)
    stop = jnp.where(ok, 0, jnp.where(retry, given_up, bits))
    return Carry(state, c.step + ok.astype(c.step.dtype), c.stop, c.flags | stop, rejects)


def run_chunk(spec: LoopSpec, ctx: Context, carry: Carry) -> Carry:
    """``lax.while_loop`` of :func:`step_once` from ``carry.step`` until ``carry.stop``,
    convergence or a stopping bit."""
    return lax.while_loop(lambda c: active(ctx, c), lambda c: step_once(spec, ctx, c), carry)


def _without_list(state: Any) -> Any:
    return state._replace(aux=state.aux._replace(nbrs=None))


def select(mask: jax.Array, new: Any, old: Any) -> Any:
    """Per member: ``new`` where ``mask`` (shape ``(K,)``) else ``old``."""
    return tree_map(lambda a, b: jnp.where(mask.reshape(mask.shape + (1,) * (a.ndim - 1)),
                                           a, b), new, old)


def run_chunk_batched(spec: LoopSpec, ctx: Context, carry: Carry) -> Carry:
    """:func:`run_chunk` for K members at once (every leaf of ``ctx`` and ``carry`` has a
    leading axis K; ``spec.batched``).

    One ``lax.while_loop`` runs while some member is active; every iteration steps all
    members (``vmap`` of :func:`step_once`) and keeps the new state only for the active
    ones. A member that is done is frozen (state, step and flags stay as they were), so each
    member follows exactly the steps ``run_chunk`` would take.
    """

    def cond(c: Carry) -> jax.Array:
        return jnp.any(jax.vmap(active)(ctx, c))

    def body(c: Carry) -> Carry:
        mask = jax.vmap(active)(ctx, c)
        return select(mask, jax.vmap(lambda x, y: step_once(spec, x, y))(ctx, c), c)

    return lax.while_loop(cond, body, carry)
