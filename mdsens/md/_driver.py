r"""The one host loop behind ``relax`` (K = 1) and ``relax_batch`` (K members at once).

The steps run inside compiled chunks (:mod:`mdsens.md._relax_loop`): one member alone
(``run_chunk``), or K members of one layout stepped together under ``vmap``
(``run_chunk_batched``: members that are done are frozen, so each takes exactly the steps
it would take alone). Between chunks this loop, on the host, reads each member's error bits
and decides, member by member:

1. ``SMALL_CELL`` (the cell shrank below the model's replication): the member needs a model
   of its own. Alone, the model is rebuilt on the current structure and the relaxation
   goes on; in a batch the member is relaxed again, alone, from its start.
2. ``OVERFLOW`` (a trial overflowed the neighbour list): a new list for the last good
   state, with a quarter of the capacity more at each repeated failure; a member whose
   list overflows again right after ``MAX_STALLED_REPAIRS`` repairs stops with
   ``NEIGHBOR_LIST``. In a batch the other members' lists are padded to the new common
   capacity (same neighbours, more empty slots).
3. otherwise the status ladder: non-finite, collapsed cell, cell diverged, converged (then
   checked: a cell relaxation whose atoms stopped interacting, energy 0 where the start
   had some, is ``CELL_DIVERGED``), out of steps, or on.

A member that stopped on a bit carries the trial's neighbour list; its result gets a list
allocated for its kept point.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import _relax_loop as _loop
from ._models import model_for
from ._relaxation import Relaxation, Status
from .model import EnergyModel, Neighbors
from .neighbors import ImageTable, spare_ghost
from .options import RelaxOptions
from .potentials.base import LJ_BOND_STIFFNESS
from .stage_store import stage as persistent_stage
from .system import System

__all__ = ["MAX_STALLED_REPAIRS", "context", "default_params", "drive", "params_finite",
           "resolve_model"]

MAX_STALLED_REPAIRS = 3


# ------------------------------------------------------------------ compiled entry points
def _init_one(spec, ctx, q, nbrs):
    return _loop.init_state(spec, ctx, q, nbrs)


def _init_many(spec, ctx, q, nbrs):
    return jax.vmap(lambda c, q_, n: _loop.init_state(spec, c, q_, n))(ctx, q, nbrs)


def _refresh(spec, ctx, state, nbrs):
    """Re-evaluate the state's point with a new neighbour list (optimiser memory kept)."""
    e, f, aux = _loop.make_force_fn(spec, ctx, nbrs)(state.position)
    state = state._replace(energy=e, force=f, aux=aux)
    return state, _loop.trial_flags(spec, ctx, state.position, (e, f, aux))


def _refresh_many(spec, ctx, state, nbrs):
    return jax.vmap(lambda c, s, n: _refresh(spec, c, s, n))(ctx, state, nbrs)


def _converged_many(ctx, aux):
    return jax.vmap(_loop.is_converged)(aux, ctx)


_jit = {
    "init": persistent_stage(_init_one, static_argnums=(0,)),
    "init_many": jax.jit(_init_many, static_argnums=0),
    "chunk": persistent_stage(_loop.run_chunk, static_argnums=(0,)),
    "chunk_many": jax.jit(_loop.run_chunk_batched, static_argnums=0),
    "refresh": jax.jit(_refresh, static_argnums=0),
    "refresh_many": jax.jit(_refresh_many, static_argnums=0),
    "converged": jax.jit(lambda ctx, aux: _loop.is_converged(aux, ctx)),
    "converged_many": jax.jit(_converged_many),
}


# ------------------------------------------------------------------ set-up helpers
def natural_scales(params: dict) -> tuple[float, float]:
    """(ℓ, ε): largest ``sigma`` and ``|epsilon|`` of the params, else (1 Å, 1 eV)."""

    def biggest(name: str) -> float:
        if name not in params:
            return 1.0
        values = np.abs(np.asarray(params[name], np.float64)).ravel()
        values = values[np.isfinite(values) & (values > 0)]
        return float(values.max()) if values.size else 1.0

    return biggest("sigma"), biggest("epsilon")


def _on_device(x: Any) -> Any:
    """``x`` as a jax array: as it is when it is one, else ``device_put`` (``jnp.asarray``
    of a numpy array compiles a small program per shape). None stays None."""
    if x is None or isinstance(x, jax.Array):
        return x
    return jax.device_put(np.asarray(x))


def context(system: System, params: dict, options: RelaxOptions,
            stiffness: float = LJ_BOND_STIFFNESS) -> _loop.Context:
    """The traced data of one relaxation of ``system`` at ``params`` (``minimize``'s
    docstring: ℓ and ε from the parameters, τ = ℓ sqrt(m/ε) sqrt(κ_LJ/κ) with κ the
    potential's ``bond_stiffness``; the default ``stress_tol`` from the start cell's volume
    per atom; the strain scale ``c = sqrt(N) v^(1/d)``)."""
    R0 = _on_device(system.positions)
    n, d = R0.shape
    dtype = R0.dtype
    ell, eps = natural_scales(params)
    tau = ell / math.sqrt(eps) * math.sqrt(LJ_BOND_STIFFNESS / stiffness)
    vol = abs(float(np.linalg.det(np.asarray(system.cell, np.float64)))) \
        if system.is_periodic else 1.0
    v_atom = vol / max(n, 1)
    stress_tol = options.stress_tol
    if stress_tol is None:
        stress_tol = options.fmax / v_atom ** ((d - 1) / d)

    def scalar(x: float) -> jax.Array:
        return jax.device_put(np.asarray(x, dtype))  # no eager program

    return _loop.Context(
        params=params,
        cell0=_on_device(system.cell),
        cell_factor=scalar(math.sqrt(n) * v_atom ** (1 / d)),
        pressure=scalar(options.pressure),
        fmax=scalar(options.fmax),
        stress_tol=scalar(stress_tol),
        time_unit=scalar(tau),
        length_unit=scalar(ell),
        energy_scale=scalar(max(n, 1) * eps),
        dt=scalar(options.dt),
        dt_max=scalar(options.dt_max),
        max_step=scalar(options.max_step),
        max_strain_step=scalar(options.max_strain_step),
        max_volume_ratio=scalar(options.max_volume_ratio),
    )


def resolve_model(system: System, potential: Any, options: RelaxOptions) -> EnergyModel:
    """``potential`` itself when it is an ``EnergyModel`` built for ``system``'s layout (its
    own list settings then win), else the model for ``system`` and ``potential`` with the
    options' neighbour-list settings -- one an earlier call built for the same program
    when there is one (:func:`mdsens.md._models.model_for`), so its compiled code is
    reused."""
    if isinstance(potential, EnergyModel):
        if potential.n_atoms != system.n_atoms or potential.dim != system.dim:
            raise ValueError("the EnergyModel was built for another system layout")
        return potential
    return model_for(system, potential, neighbor_list=options.neighbor_list,
                     skin=options.skin, capacity_multiplier=options.capacity_multiplier,
                     devices=options.devices)


def default_params(potential: Any, model: EnergyModel, params: dict | None) -> dict:
    """The parameters to relax at: ``params``, else the potential's own (a shared model's
    potential may be another caller's, with other values)."""
    if params is not None:
        return params
    return model.params if isinstance(potential, EnergyModel) else potential.params


def params_finite(params: Any) -> bool:
    """All parameter entries finite. Non-finite parameters are caught on the host, not left
    to the energy: some potentials (jax-md's Lennard-Jones) map non-finite pair energies to
    zero."""
    return all(bool(np.all(np.isfinite(np.asarray(v)))) for v in jax.tree.leaves(params))


def stack(trees: Sequence[Any]) -> Any:
    return jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *trees)


def member(tree: Any, k: int) -> Any:
    return jax.tree.map(lambda x: x[k], tree)


class Incompatible(Exception):
    """Member neighbour lists that cannot share one array layout."""


def common_lists(model: EnergyModel, lists: Sequence[Neighbors]) -> Neighbors:
    """Stack per-member lists, each padded to the largest neighbour (and cell-list)
    capacity: the padded slots hold the empty index (the number of internal atoms; ``N
    3^d`` in the image slots), so a padded list has the same neighbours as before. Image
    slots (and image tables) are kept only if every member has them.

    Raises:
      Incompatible: the lists were built with different cell-list cell sizes.
    """
    nls = [n.nlist for n in lists]
    sizes = {None if nl.cell_size is None else np.asarray(nl.cell_size).tobytes()
             for nl in nls}
    if len(sizes) > 1:
        raise Incompatible("neighbour lists with different cell sizes")
    width = max(nl.max_occupancy for nl in nls)
    caps = [nl.cell_list_capacity for nl in nls if nl.cell_list_capacity is not None]
    cell_cap = max(caps) if caps else None
    fn = next((nl.cell_list_fn for nl in nls if nl.cell_list_fn is not None), None)
    with_images = all(n.images is not None for n in lists)  # else all take minimum images
    # owned pairs (image slots or indices, as the lists' images) when all lists have them
    with_owned = with_images and all(n.owned is not None for n in lists)
    owned_width = max(n.owned.shape[-1] for n in lists) if with_owned else 0
    with_table = with_images and all(n.table is not None for n in lists)
    ghosts = max(n.table.ghosts.shape[0] for n in lists) if with_table else 0
    padded = []
    for n, nl in zip(lists, nls):
        idx = nl.idx
        empty = idx.shape[0]
        extra = ((0, 0), (0, width - idx.shape[-1]))
        images = None
        if with_images:
            images = jnp.pad(n.images, extra, constant_values=empty * 3**model.dim)
        owned = None
        if with_owned:
            owned = jnp.pad(n.owned, ((0, 0), (0, owned_width - n.owned.shape[-1])),
                            constant_values=empty * 3**model.dim)
        table = None
        if with_table:  # padding slot N; spare ghosts name atom 0's own image
            table = ImageTable(
                jnp.pad(n.table.slots, extra, constant_values=empty),
                jnp.pad(n.table.ghosts, (0, ghosts - n.table.ghosts.shape[0]),
                        constant_values=spare_ghost(empty, model.dim)))
        idx = jnp.pad(idx, extra, constant_values=empty)
        nl = nl.set(idx=idx, max_occupancy=width, cell_list_capacity=cell_cap,
                    cell_list_fn=fn)
        padded.append(Neighbors(nl, n.reference_cell, images, owned, table))
    return stack(padded)


# ------------------------------------------------------------------ the loop
class _Members:
    """The compiled functions and array layout of one loop: K = 1 (unbatched arrays) or
    K > 1 (a leading member axis on every leaf)."""

    def __init__(self, model: EnergyModel, options: RelaxOptions, k: int):
        self.model = model
        self.k = k
        self.batched = k > 1
        self.spec = _loop.LoopSpec(model, options.method, options.relax_cell, self.batched)
        self.relax_cell = options.relax_cell

    def call(self, name: str, *args: Any) -> Any:
        return _jit[name + ("_many" if self.batched else "")](*args)

    def init(self, ctx, q, nbrs):
        return self.call("init", self.spec, ctx, q, nbrs)

    def chunk(self, ctx, carry):
        return self.call("chunk", self.spec, ctx, carry)

    def converged(self, ctx, aux) -> np.ndarray:
        return np.asarray(self.call("converged", ctx, aux)).reshape(self.k)

    def take(self, tree: Any, k: int) -> Any:
        return member(tree, k) if self.batched else tree

    def vector(self, x: Any) -> np.ndarray:
        return np.asarray(x).astype(np.int64).reshape(self.k)

    def carry(self, state, step, stop) -> _loop.Carry:
        shape = (self.k,) if self.batched else ()
        def host(x):  # device_put: no eager program per call site
            return jax.device_put(np.asarray(x, np.int32).reshape(shape))

        zero = np.zeros(shape, np.int32)
        return _loop.Carry(state, host(step), host(stop), host(zero), host(zero))

    def repair(self, ctx, state, repair: list[int], stalled: np.ndarray
               ) -> tuple[Any, np.ndarray]:
        """New lists for the members in ``repair`` at their last good states (each failed
        repair adds a quarter of the capacity), every list padded to the common capacity,
        and the repaired members' states re-evaluated on their new lists (optimiser memory
        kept). Returns the state and the re-evaluation's flags (0 for the others).

        Raises:
          Incompatible: the lists cannot share one layout.
        """
        lists = [self.take(state.aux.nbrs, k) for k in range(self.k)]
        for k in repair:
            R, cell = _loop.to_cartesian(self.take(state.position, k), self.take(ctx, k),
                                         self.relax_cell)
            capacity = 0 if lists[k] is None else lists[k].nlist.idx.shape[-1]
            extra = int(stalled[k] - 1) * max(capacity // 4, 1)
            lists[k] = self.model.allocate(R, cell, extra)
        if lists[0] is None:  # a model without neighbour lists
            new = None
        else:
            new = common_lists(self.model, lists) if self.batched else lists[0]
        state = state._replace(aux=state.aux._replace(nbrs=new))
        refreshed, flags = self.call("refresh", self.spec, ctx, state, new)
        if not self.batched:
            return refreshed, self.vector(flags)
        mask = np.zeros(self.k, bool)
        mask[repair] = True
        state = _loop.select(jnp.asarray(mask), refreshed, state)
        return state, np.where(mask, self.vector(flags), 0)


def terminal_status(flags: int, converged: bool, step: int, max_steps: int
                    ) -> Status | None:
    """Why a member without a pending repair stops now (None: it goes on)."""
    if flags & (_loop.NONFINITE | _loop.ABSURD):
        return Status.NONFINITE
    if flags & _loop.BAD_CELL:
        return Status.INVALID_CELL
    if flags & _loop.DIVERGED:
        return Status.CELL_DIVERGED
    if converged:
        return Status.CONVERGED
    if step >= max_steps:
        return Status.MAX_STEPS
    return None


@functools.partial(jax.jit, static_argnums=3)
def _final(position: Any, aux: _loop.Aux, ctx: _loop.Context, relax_cell: bool) -> tuple:
    """``(R, cell, fmax, stress residual, interactions vanished)`` of a loop state, as one
    program (op by op, these are a dozen small programs to compile or load)."""
    R, cell = _loop.to_cartesian(position, ctx, relax_cell)
    fmax_now, sres = _loop.residuals(aux, ctx)
    return R, cell, fmax_now, sres, _loop.interactions_vanished(aux.energy, ctx)


@jax.jit
def _fmax(aux: _loop.Aux, ctx: _loop.Context) -> jax.Array:
    """Largest force norm of a loop state, eV/Å (one program, for the progress callback)."""
    return _loop.residuals(aux, ctx)[0]


def _relaxation(system: System, state: Any, ctx: _loop.Context, options: RelaxOptions,
                steps: int, status: Status, model: EnergyModel, fresh_list: bool,
                start_energy: float) -> Relaxation:
    """The :class:`Relaxation` of one member's loop state (``system`` gives the layout);
    ``fresh_list``: allocate a list for the kept point (the state's is a trial's)."""
    relax_cell = options.relax_cell
    R, cell, fmax_now, sres, vanished = _final(state.position, state.aux, ctx, relax_cell)
    nbrs = state.aux.nbrs
    if fresh_list and nbrs is not None:
        nbrs = model.allocate(R, cell)
    energy = state.aux.energy
    if relax_cell and status is Status.CONVERGED and start_energy != 0 and bool(vanished):
        status = Status.CELL_DIVERGED  # a "minimum" where nothing interacts: a runaway cell
    return Relaxation(
        system=system.replace(positions=R, cell=cell),
        energy=energy,
        forces=state.aux.forces,
        fmax=fmax_now,
        stress=state.aux.stress,
        stress_residual=sres if relax_cell else None,
        nbrs=nbrs,
        steps=steps,
        converged=status is Status.CONVERGED,
        status=status,
        model=model,
    )


def drive(model: EnergyModel, systems: Sequence[System], params: Sequence[dict],
          options: RelaxOptions, nbrs: Any = None,
          callback: Callable[[int, float, float], None] | None = None) -> list[Relaxation]:
    """Relax member k from ``systems[k]`` at ``params[k]`` with ``model`` (all members share
    its layout); the module docstring says how. ``nbrs``: a start list for every member
    (default: each its own). ``callback(step, energy, fmax)`` after every chunk (K = 1
    only). Returns the K relaxations, no failure policy applied."""
    k_members = len(params)
    members = _Members(model, options, k_members)
    relax_cell = options.relax_cell
    stiffness = getattr(model.potential, "bond_stiffness", LJ_BOND_STIFFNESS)
    ctxs = [context(s, p, options, stiffness) for s, p in zip(systems, params)]
    d = systems[0].dim
    q0 = []
    for s in systems:
        R = _on_device(s.positions)
        q0.append((R, jax.device_put(np.zeros((d, d), R.dtype))) if relax_cell else R)

    alone: set[int] = set()  # members relaxed again on their own
    lists = None
    if model.uses_neighbor_list:
        if nbrs is not None:
            lists = [nbrs] * k_members
        else:
            lists = [model.allocate(_on_device(s.positions), s.cell) for s in systems]
    if members.batched:
        ctx, q = stack(ctxs), stack(q0)
        if lists is not None:
            try:
                lists = common_lists(model, lists)
            except Incompatible:  # (different start cells) every member on its own
                alone = set(range(k_members))
                lists = stack([lists[0]] * k_members)
    else:
        ctx, q = ctxs[0], q0[0]
        lists = None if lists is None else lists[0]

    finite = np.array([params_finite(p) for p in params])
    status: list[Status | None] = [Status.NEIGHBOR_LIST if k in alone else None
                                   for k in range(k_members)]
    step = np.zeros(k_members, np.int64)
    stalled = np.zeros(k_members, np.int64)
    fresh_list = np.zeros(k_members, bool)
    state, flags = members.init(ctx, q, lists)
    start_energy = np.asarray(state.aux.energy, np.float64).reshape(k_members)
    flags = members.vector(flags)
    while True:
        flags = flags | np.where(finite, 0, _loop.NONFINITE)
        converged = members.converged(ctx, state.aux)
        repair: list[int] = []
        for k in range(k_members):
            if status[k] is not None:
                continue
            f = int(flags[k])
            if f & _loop.SMALL_CELL and members.batched:
                alone.add(k)  # needs its own model: relaxed again alone (below)
                status[k] = Status.NEIGHBOR_LIST
            elif f & (_loop.OVERFLOW | _loop.SMALL_CELL):
                stalled[k] += 1
                if stalled[k] > MAX_STALLED_REPAIRS:
                    status[k] = Status.NEIGHBOR_LIST
                else:
                    repair.append(k)
            else:
                status[k] = terminal_status(f, bool(converged[k]), int(step[k]),
                                            options.max_steps)
                fresh_list[k] |= f != 0
        if repair:
            if not members.batched and flags[0] & _loop.SMALL_CELL:
                R, cell = _loop.to_cartesian(state.position, ctx, relax_cell)
                model = model_for(systems[0].replace(positions=R, cell=cell),
                                  model.potential, neighbor_list=model.uses_neighbor_list,
                                  skin=model.skin,
                                  capacity_multiplier=model.capacity_multiplier,
                                  devices=options.devices)
                members = _Members(model, options, 1)
            try:
                state, flags = members.repair(ctx, state, repair, stalled)
            except Incompatible:  # new lists that cannot share a layout: those alone
                alone.update(repair)
                for k in repair:
                    status[k] = Status.NEIGHBOR_LIST
                flags = np.zeros(k_members, np.int64)
            continue
        active = np.array([s is None for s in status])
        if not active.any():
            break
        stop = np.where(active, np.minimum(step + options.chunk, options.max_steps), step)
        carry = members.chunk(ctx, members.carry(state, step, stop))
        state = carry.state
        flags = members.vector(carry.flags)
        new_step = members.vector(carry.step)
        stalled[new_step > step] = 0
        step = new_step
        if callback is not None and not members.batched:
            callback(int(step[0]), float(state.aux.energy), float(_fmax(state.aux, ctx)))

    results = []
    for k in range(k_members):
        if k in alone:
            results.extend(drive(model, [systems[k]], [params[k]], options))
            continue
        results.append(_relaxation(systems[k], members.take(state, k), ctxs[k], options,
                                   int(step[k]), status[k], model, bool(fresh_list[k]),
                                   float(start_energy[k])))
    return results
