r"""``relax_batch``: K relaxations of one system layout at once (``vmap`` over members).

Members share the model (structure layout, species, boundary conditions, potential form)
and the minimiser settings; each has its own parameters and start structure. The compiled
FIRE / gradient-descent loop of :func:`~mdsens.md.minimize.relax` runs over a leading
member axis (:func:`mdsens.md._relax_loop.run_chunk_batched`): one ``lax.while_loop`` steps
every member while some member is active and freezes the members that are done, so each
member takes exactly the steps a serial ``relax`` from the same start with the same start
neighbour list takes, and reports its own status, step count and residuals.

The host loop between chunks repeats ``relax``'s, member by member: a member whose trial
step overflowed its neighbour list gets a new list for its last good state (with the
serial rule for repeated repairs); the other members' lists are padded to the new common
capacity (same neighbours, more empty slots; jax-md's arrays must share one shape across
the batch), so they continue on the same neighbours (rounding of the longer padded sums
aside). A member whose cell shrank below the model's small-cell replication needs a model
of its own: it is relaxed again, alone, by ``relax`` from its start.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from . import _relax_loop as _loop
from . import minimize as _min
from ._relaxation import Policy, Relaxation, Status, apply_policy
from .model import EnergyModel, Neighbors
from .system import System

__all__ = ["relax_batch"]


def _make_spec(model: EnergyModel, config: Any, relax_cell: bool, ctx: _loop.Context):
    return _loop.LoopSpec(model, config.make(ctx), relax_cell, batched=True)


def _init_impl(key, ctx, q, nbrs):
    return jax.vmap(lambda c, q_, n: _loop.init_state(_make_spec(*key, c), c, q_, n))(
        ctx, q, nbrs)


def _chunk_impl(key, ctx, carry):
    return _loop.run_chunk_batched(lambda c: _make_spec(*key, c), ctx, carry)


def _refresh_impl(key, ctx, state, nbrs):
    def one(c, s, n):
        spec = _make_spec(*key, c)
        e, f, aux = _loop.make_force_fn(spec, c, n)(s.position)
        s = s._replace(energy=e, force=f, aux=aux)
        return s, _loop.trial_flags(spec, c, s.position, (e, f, aux))

    return jax.vmap(one)(ctx, state, nbrs)


def _converged_impl(ctx, aux):
    return jax.vmap(_loop.is_converged)(aux, ctx)


_init_jit = jax.jit(_init_impl, static_argnums=0)
_chunk_jit = jax.jit(_chunk_impl, static_argnums=0)
_refresh_jit = jax.jit(_refresh_impl, static_argnums=0)
_converged_jit = jax.jit(_converged_impl)


def _stack(trees: Sequence[Any]) -> Any:
    return jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *trees)


def _member(tree: Any, k: int) -> Any:
    return jax.tree.map(lambda x: x[k], tree)


class _Incompatible(Exception):
    """Member neighbour lists that cannot share one array layout."""


def _common_lists(model: EnergyModel, lists: Sequence[Neighbors]) -> Neighbors:
    """Stack per-member lists, each padded to the largest neighbour (and cell-list)
    capacity: the padded slots hold the empty index (the number of internal atoms; ``N
    3^d`` in the image slots), so a padded list has the same neighbours as before. Image
    slots are kept only if every member has them.

    Raises:
      _Incompatible: the lists were built with different cell-list cell sizes.
    """
    nls = [n.nlist for n in lists]
    sizes = {None if nl.cell_size is None else np.asarray(nl.cell_size).tobytes()
             for nl in nls}
    if len(sizes) > 1:
        raise _Incompatible("neighbour lists with different cell sizes")
    width = max(nl.max_occupancy for nl in nls)
    caps = [nl.cell_list_capacity for nl in nls if nl.cell_list_capacity is not None]
    cell_cap = max(caps) if caps else None
    fn = next((nl.cell_list_fn for nl in nls if nl.cell_list_fn is not None), None)
    with_images = all(n.images is not None for n in lists)  # else all take minimum images
    padded = []
    for n, nl in zip(lists, nls):
        idx = nl.idx
        empty = idx.shape[0]
        extra = ((0, 0), (0, width - idx.shape[-1]))
        images = None
        if with_images:
            images = jnp.pad(n.images, extra, constant_values=empty * 3**model.dim)
        idx = jnp.pad(idx, extra, constant_values=empty)
        nl = nl.set(idx=idx, max_occupancy=width, cell_list_capacity=cell_cap,
                    cell_list_fn=fn)
        padded.append(Neighbors(nl, n.reference_cell, images))
    return _stack(padded)


def _repair(key, model: EnergyModel, ctx: _loop.Context, state: Any, repair: list[int],
            stalled: np.ndarray, relax_cell: bool) -> tuple[Any, np.ndarray]:
    """New lists for the members in ``repair`` at their last good states (``relax``'s
    rule: each failed repair adds a quarter of the capacity), every list padded to the
    common capacity, and the repaired members' states re-evaluated on their new lists
    (optimiser memory kept). Returns the state and the flags of that re-evaluation
    (zero for the members not repaired).

    Raises:
      _Incompatible: the lists cannot share one layout.
    """
    n = len(stalled)
    lists = [_member(state.aux.nbrs, k) for k in range(n)]
    for k in repair:
        ctx_k = _member(ctx, k)
        R, cell = _loop.to_cartesian(_member(state.position, k), ctx_k, relax_cell)
        capacity = lists[k].nlist.idx.shape[-1]
        extra = int(stalled[k] - 1) * max(capacity // 4, 1)
        lists[k] = model.allocate(R, cell, extra)
    common = _common_lists(model, lists)
    padded = state._replace(aux=state.aux._replace(nbrs=common))
    refreshed, flags = _refresh_jit(key, ctx, padded, common)
    mask = np.zeros(n, bool)
    mask[repair] = True
    state = _loop._select(jnp.asarray(mask), refreshed, padded)
    return state, np.where(mask, np.asarray(flags), 0).astype(np.int64)


def relax_batch(
    systems: System | Sequence[System],
    potential: Any,
    params: Sequence[dict],
    *,
    method: _min.Method = "fire2",
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
    on_failure: Policy = "raise",
    nbrs: Any = None,
) -> list[Relaxation]:
    r"""Relax K parameter sets at once: ``[relax(system_k, potential, params=params[k])]``.

    Member k minimises :math:`E(R; \theta_k)` (or the enthalpy with ``relax_cell``) from
    ``systems[k]`` (or the one ``systems`` shared by all) exactly as :func:`relax` does
    (same time and length units from :math:`\theta_k`, same ``stress_tol`` rule, same
    steps); the module docstring says how the K loops run together and what happens when a
    neighbour list overflows. Every member reports its own ``converged``, ``status``,
    ``steps`` and ``fmax``; ``on_failure`` applies to each (``"raise"``: the first failed
    member's :class:`RelaxationError`).

    A batch costs about as much per step as its slowest member takes steps: it pays when
    members converge in similar step counts and one member alone does not fill the
    machine (an accelerator, or small systems).

    Args:
      systems: one start :class:`System` for every member, or K of them with one layout
        (atom count, dimension, boundary conditions, species).
      potential: a :class:`~mdsens.md.Potential` or an ``EnergyModel`` built for the
        layout (reuses compiled code across calls).
      params: K parameter pytrees of one structure and shapes (e.g. swept values of the
        potential's ``params``).
      nbrs: a start neighbour list for the model, given to every member (default: each
        member's own, allocated at its start).
      method, fmax, max_steps, relax_cell, pressure, stress_tol, neighbor_list, dt, dt_max,
        max_step, chunk, on_failure: as for :func:`relax`.
    Returns:
      K :class:`Relaxation`\ s, in the order of ``params``; the neighbour lists of all
      members have one capacity.
    Raises:
      ValueError: invalid arguments, members of different layouts or parameter shapes.
      RelaxationError: with ``on_failure="raise"`` when a member did not converge.
    """
    _min._check_args(method, on_failure, fmax, max_steps, chunk, stress_tol)
    params = list(params)
    n_members = len(params)
    if n_members == 0:
        raise ValueError("relax_batch: no parameter sets")
    if isinstance(systems, System):
        systems = [systems] * n_members
    systems = list(systems)
    if len(systems) != n_members:
        raise ValueError(f"relax_batch: {len(systems)} systems for {n_members} parameter sets")
    first = systems[0]
    for s in systems:
        if not isinstance(s, System):
            raise TypeError("relax_batch: systems must be mdsens.md.System (System.from_ase)")
        if (s.n_atoms != first.n_atoms or s.dim != first.dim
                or tuple(np.asarray(s.pbc)) != tuple(np.asarray(first.pbc))
                or not np.array_equal(np.asarray(s.species), np.asarray(first.species))):
            raise ValueError("relax_batch: the systems differ in layout (atoms, dimension, "
                             "boundary conditions or species)")
    if relax_cell and not first.is_periodic:
        raise ValueError("relax_cell=True needs a periodic system")
    model, neighbor_list = _min._resolve_model(first, potential, neighbor_list)
    tree0 = jax.tree.structure(params[0])
    shapes0 = [np.shape(x) for x in jax.tree.leaves(params[0])]
    for p in params:
        if (jax.tree.structure(p) != tree0
                or [np.shape(x) for x in jax.tree.leaves(p)] != shapes0):
            raise ValueError("relax_batch: the parameter sets differ in structure or shapes")
        model.check_params(p)

    serial_options = dict(method=method, fmax=fmax, max_steps=max_steps,
                          relax_cell=relax_cell, pressure=pressure, stress_tol=stress_tol,
                          dt=dt, dt_max=dt_max, max_step=max_step, chunk=chunk,
                          on_failure="ignore")
    config = _min._MinimizerConfig(method, float(dt), float(dt_max), float(max_step))
    ctxs = [_min._context(s, p, pressure, fmax, stress_tol) for s, p in zip(systems, params)]
    ctx = _stack(ctxs)
    R0 = [jnp.asarray(s.positions) for s in systems]
    d = first.dim
    dtype = R0[0].dtype
    q0 = _stack([(R, jnp.zeros((d, d), dtype)) if relax_cell else R for R in R0])
    key = (model, config, relax_cell)

    alone: set[int] = set()  # members handed to the serial relax
    if model.uses_neighbor_list:
        if nbrs is not None:
            lists = _stack([nbrs] * n_members)
        else:
            allocated = [model.allocate(R, s.cell) for R, s in zip(R0, systems)]
            try:
                lists = _common_lists(model, allocated)
            except _Incompatible:  # (different start cells) every member on its own
                alone = set(range(n_members))
                lists = _stack([allocated[0]] * n_members)
    else:
        lists = None

    finite = np.array([_min._params_finite(p) for p in params])
    status: list[Status | None] = [None] * n_members
    for k in alone:
        status[k] = Status.NEIGHBOR_LIST  # placeholder; replaced by the serial result
    step = np.zeros(n_members, np.int64)
    stalled = np.zeros(n_members, np.int64)
    state, flags = _init_jit(key, ctx, q0, lists)
    while True:
        flags = np.asarray(flags).astype(np.int64) | np.where(finite, 0, _loop.NONFINITE)
        converged = np.asarray(_converged_jit(ctx, state.aux))
        repair: list[int] = []
        for k in range(n_members):
            if status[k] is not None:
                continue
            f = int(flags[k])
            if f & _loop.SMALL_CELL:
                alone.add(k)  # needs its own model: relaxed again by relax (below)
                status[k] = Status.NEIGHBOR_LIST
            elif f & _loop.OVERFLOW:
                stalled[k] += 1
                if stalled[k] > _min._MAX_STALLED_REPAIRS:
                    status[k] = Status.NEIGHBOR_LIST
                else:
                    repair.append(k)
            else:
                status[k] = _min._terminal_status(f, bool(converged[k]), int(step[k]),
                                                  max_steps)
        if repair:
            try:
                state, flags = _repair(key, model, ctx, state, repair, stalled, relax_cell)
            except _Incompatible:  # new lists that cannot share a layout: those alone
                alone.update(repair)
                for k in repair:
                    status[k] = Status.NEIGHBOR_LIST
                flags = np.zeros(n_members, np.int64)
            continue
        active = np.array([s is None for s in status])
        if not active.any():
            break
        stop = np.where(active, np.minimum(step + chunk, max_steps), step)
        carry = _loop.Carry(state, jnp.asarray(step, jnp.int32), jnp.asarray(stop, jnp.int32),
                            jnp.zeros(n_members, jnp.int32))
        carry = _chunk_jit(key, ctx, carry)
        state, flags = carry.state, carry.flags
        new_step = np.asarray(carry.step).astype(np.int64)
        stalled[new_step > step] = 0
        step = new_step

    results = []
    for k in range(n_members):
        if k in alone:
            results.append(_min.relax(systems[k], model, params=params[k], **serial_options))
            continue
        results.append(_min._relaxation(systems[k], _member(state, k), ctxs[k], relax_cell,
                                        int(step[k]), status[k], model))
    return [apply_policy(r, on_failure) for r in results]
