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

Error bits (an ``int32`` bitfield, set inside the loop; the loop stops when one is set and
keeps the last good state): ``OVERFLOW`` (the neighbour list overflowed at a trial point),
``NONFINITE`` (non-finite energy or forces at a trial point, or at the start),
``BAD_CELL`` (the strained cell lost positive volume), ``SMALL_CELL`` (the cell shrank so
that the model's replicated cell is narrower than twice the cutoff: the minimum image would
miss neighbours; the host rebuilds the model).
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
from ._fire import Minimizer

OVERFLOW = 1
NONFINITE = 2
BAD_CELL = 4
SMALL_CELL = 8

# Incremented each time a chunk or init function is traced (tests check it is not per chunk).
TRACE_COUNT = {"chunk": 0, "init": 0, "chunk_batched": 0}


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


class Aux(NamedTuple):
    """What is carried with every point: its neighbour list, Cartesian forces, stress."""

    nbrs: Any
    energy: jax.Array  # E, without the p V term
    forces: jax.Array  # (N, d) Cartesian, -∂E/∂R
    stress: Any  # (d, d) σ = sym(∂E/∂ε)/V, or None at fixed cell


class Carry(NamedTuple):
    state: Any
    step: jax.Array
    stop: jax.Array
    flags: jax.Array


@dataclasses.dataclass(frozen=True)
class LoopSpec:
    """Static description of one compiled loop (the caller jits on a hashable key and
    rebuilds this inside the traced function)."""

    model: Any
    minimizer: Minimizer
    relax_cell: bool
    batched: bool = False  # members of a vmapped batch: neighbour lists via batched_update


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
    def update(R, cell, nbrs):
        return model.update(R, cell, nbrs)

    @update.def_vmap
    def _rule(axis_size, in_batched, R, cell, nbrs):
        def full(x, batched):
            return x if batched else jnp.broadcast_to(x, (axis_size, *jnp.shape(x)))

        args = tree_map(full, (R, cell, nbrs), tuple(in_batched))
        need = jax.vmap(model.needs_rebuild)(*args)
        out = lax.cond(jnp.any(need), lambda a: jax.vmap(model.update)(*a),
                       lambda a: a[2], args)
        return out, tree_map(lambda _: True, out)

    return update


def make_force_fn(spec: LoopSpec, ctx: Context, nbrs: Any):
    """``force_fn(q) -> (H, -∇H, Aux)`` for the minimiser, updating ``nbrs`` at ``q``."""
    model = spec.model

    def force_fn(q):
        R, cell = to_cartesian(q, ctx, spec.relax_cell)
        update = batched_update(model) if spec.batched else model.update
        new_nbrs = update(R, cell, nbrs) if nbrs is not None else None
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


def _finite(tree: Any) -> jax.Array:
    leaves = [x for x in tree_leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def trial_flags(spec: LoopSpec, ctx: Context, q: Any, trial: tuple) -> jax.Array:
    e, f, aux = trial
    flags = jnp.zeros((), jnp.int32)
    if aux.nbrs is not None:
        flags = flags | jnp.where(spec.model.overflowed(aux.nbrs), OVERFLOW, 0)
    flags = flags | jnp.where(_finite((e, f, aux.forces, aux.stress)), 0, NONFINITE)
    if spec.relax_cell:
        U = strain_matrix(q[1], ctx.cell_factor)
        flags = flags | jnp.where(jnp.linalg.det(U) > 0, 0, BAD_CELL)
        model = spec.model
        if model.cutoff is not None and model.periodic:
            cell = ctx.cell0 @ U
            widths = perpendicular_widths(cell)
            reps = jnp.asarray(model.replicas, widths.dtype)
            flags = flags | jnp.where(jnp.all(reps * widths >= 2 * model.cutoff), 0, SMALL_CELL)
    return flags.astype(jnp.int32)


def init_state(spec: LoopSpec, ctx: Context, q: Any, nbrs: Any):
    """Minimiser state at ``q`` and its error bits (``OVERFLOW`` / ``NONFINITE``)."""
    TRACE_COUNT["init"] += 1
    state = spec.minimizer.init(q, make_force_fn(spec, ctx, nbrs))
    trial = (state.energy, state.force, state.aux)
    return state, trial_flags(spec, ctx, q, trial)


def run_chunk(spec: LoopSpec, ctx: Context, carry: Carry) -> Carry:
    """``lax.while_loop`` from ``carry.step`` until ``carry.stop``, convergence or an error.

    A step whose trial point overflowed the neighbour list, is non-finite or has a collapsed
    cell is not taken: the state stays the last good one and the bit is raised, except for
    its neighbour list, which is the trial's (valid for the kept positions only when no
    bit is set; ``relax`` reallocates it).
    """
    TRACE_COUNT["chunk"] += 1
    minimizer = spec.minimizer

    def cond(c: Carry) -> jax.Array:
        return (c.step < c.stop) & (c.flags == 0) & ~is_converged(c.state.aux, ctx)

    def body(c: Carry) -> Carry:
        force_fn = make_force_fn(spec, ctx, c.state.aux.nbrs)
        new, trial = minimizer.step(c.state, force_fn)
        bits = trial_flags(spec, ctx, new.position, trial)
        ok = bits == 0
        state = tree_map(lambda a, b: jnp.where(ok, a, b), _without_list(new),
                         _without_list(c.state))
        # The list is not selected (a copy of it per step): it is the trial's. After a
        # rejected step the loop stops, and the caller reallocates the list for the kept
        # state (see ``minimize.relax``).
        state = state._replace(aux=state.aux._replace(nbrs=new.aux.nbrs))
        return Carry(state, c.step + ok.astype(c.step.dtype), c.stop, c.flags | bits)

    return lax.while_loop(cond, body, carry)


def _without_list(state: Any) -> Any:
    return state._replace(aux=state.aux._replace(nbrs=None))


def _select(mask: jax.Array, new: Any, old: Any) -> Any:
    """Per member: ``new`` where ``mask`` (shape ``(K,)``) else ``old``."""
    return tree_map(lambda a, b: jnp.where(mask.reshape(mask.shape + (1,) * (a.ndim - 1)),
                                           a, b), new, old)


def run_chunk_batched(make_spec: Any, ctx: Context, carry: Carry) -> Carry:
    """:func:`run_chunk` for K members at once (every leaf of ``ctx`` and ``carry`` has a
    leading axis K; ``make_spec(ctx_k)`` gives member k's :class:`LoopSpec`).

    One ``lax.while_loop`` runs while some member is active (``step < stop``, no error bit,
    not converged); every iteration steps all members (``vmap``) and keeps the new state
    only for the active ones. A member that is done is frozen (state, step and flags stay
    as they were), so each member follows exactly the steps ``run_chunk`` would take.
    """
    TRACE_COUNT["chunk_batched"] += 1

    def active(ctx_k: Context, c: Carry) -> jax.Array:
        return (c.step < c.stop) & (c.flags == 0) & ~is_converged(c.state.aux, ctx_k)

    def member_body(ctx_k: Context, c: Carry) -> Carry:
        spec = make_spec(ctx_k)
        force_fn = make_force_fn(spec, ctx_k, c.state.aux.nbrs)
        new, trial = spec.minimizer.step(c.state, force_fn)
        bits = trial_flags(spec, ctx_k, new.position, trial)
        ok = bits == 0
        state = tree_map(lambda a, b: jnp.where(ok, a, b), new, c.state)
        return Carry(state, c.step + ok.astype(c.step.dtype), c.stop, c.flags | bits)

    def cond(c: Carry) -> jax.Array:
        return jnp.any(jax.vmap(active)(ctx, c))

    def body(c: Carry) -> Carry:
        mask = jax.vmap(active)(ctx, c)
        return _select(mask, jax.vmap(member_body)(ctx, c), c)

    return lax.while_loop(cond, body, carry)
