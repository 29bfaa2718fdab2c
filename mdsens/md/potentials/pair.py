r"""Pair potentials: Lennard-Jones, soft sphere, Morse (the forms of jax-md's ``energy``).

Every pair potential has the energy

.. math::  E = \tfrac12 \sum_i \sum_{j \ne i} \phi(r_{ij};\, p_{s_i s_j}),

over all periodic images within the cutoff, where a parameter :math:`p` is either one
scalar for every pair or an ``(S, S)`` symmetric matrix indexed by the species of the two
atoms. Species are addressed by chemical symbol::

    lennard_jones(sigma=3.4, epsilon=0.0104)                         # one species / all pairs
    lennard_jones(sigma={("Ar", "Ar"): 3.40, ("Ar", "Kr"): 3.52, ("Kr", "Kr"): 3.65},
                  epsilon=0.0104)                                     # per pair, by symbol
    lennard_jones(sigma=[[3.40, 3.52], [3.52, 3.65]], species=("Ar", "Kr"))  # explicit matrix

A dict becomes an ``(S, S)`` matrix whose rows follow ``species`` (default: the symbols of
the dict keys sorted by atomic number); a scalar stays a scalar. See
:func:`mdsens.md.potentials.base.resolve_pair_params`.

Units: ASE (lengths Å, energies eV); any consistent units work (e.g. reduced LJ units).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jax import shard_map
from jax.custom_derivatives import SymbolicZero
from jax.sharding import PartitionSpec as P

from .._exchange import ProcessRows, exchange
from ..geometry import Geometry, Neighborhood
from ..sharding import AXIS, usable_cores
from ._fusion import materialize
from .base import (
    Array,
    Params,
    Potential,
    pair_param,
    register,
    resolve_pair_params,
)

__all__ = [
    "LennardJones",
    "Morse",
    "PairPotential",
    "SoftSphere",
    "lennard_jones",
    "morse",
    "soft_sphere",
]


# ----------------------------------------------------------------------------- forms
# The elementary pair forms of jax-md's ``energy`` module, written out here: importing that
# module costs seconds (it pulls in flax and jax-md's neural networks). Same formulas, same
# treatment of non-finite values (tests compare them with jax-md's).
def _lennard_jones_form(r: Array, sigma: Array, epsilon: Array) -> Array:
    r"""Unswitched :math:`4\epsilon[(\sigma/r)^{12} - (\sigma/r)^6]`, non-finite values
    mapped to finite ones (``nan_to_num``) as jax-md does."""
    x = sigma / r
    x2 = x * x
    x6 = x2 * x2 * x2
    return jnp.nan_to_num(4.0 * epsilon * (x6 * x6 - x6))


def _morse_form(r: Array, sigma: Array, epsilon: Array, alpha: Array) -> Array:
    r"""Unswitched :math:`\epsilon[(1 - e^{-\alpha(r - \sigma)})^2 - 1]` (``nan_to_num``)."""
    return jnp.nan_to_num(epsilon * (1.0 - jnp.exp(-alpha * (r - sigma))) ** 2 - epsilon)


def _soft_sphere_form(r: Array, sigma: Array, epsilon: Array, alpha: Array) -> Array:
    r""":math:`(\epsilon/\alpha)(1 - r/\sigma)^\alpha` for :math:`r < \sigma`, else 0; the
    power is evaluated only inside the range (a double ``where``), so gradients stay
    finite at and beyond contact."""
    x = r / sigma
    inside = x < 1.0
    safe = jnp.where(inside, x, 0.0)
    return jnp.where(inside, epsilon / alpha * (1.0 - safe) ** alpha, 0.0)


def _switched(value: Array, r: Array, r_onset: Array, r_cutoff: Array) -> Array:
    r"""``value`` times the C¹ switch of HOOMD-blue (jax-md's
    ``multiplicative_isotropic_cutoff``): :math:`S = 1` for :math:`r < r_o`,
    :math:`S = (r_c^2 - r^2)^2 (r_c^2 + 2r^2 - 3r_o^2) / (r_c^2 - r_o^2)^3` up to
    :math:`r_c`, 0 beyond."""
    rc2, ro2, r2 = r_cutoff**2, r_onset**2, r**2
    inner = jnp.where(r < r_cutoff, (rc2 - r2) ** 2 * (rc2 + 2 * r2 - 3 * ro2)
                      / (rc2 - ro2) ** 3, 0.0)
    return jnp.where(r < r_onset, 1.0, inner) * value


def _max(value: Any) -> float:
    return float(np.max(np.asarray(value)))


@dataclasses.dataclass(frozen=True, eq=False)
class PairPotential(Potential):
    r"""A potential :math:`E = \frac12 \sum_i \sum_{j\neq i} \phi(r_{ij}; p_{s_i s_j})`.

    Subclasses implement ``pair_energy(r, **p)`` (elementwise in ``r``, parameters already
    broadcast per pair) and ``cutoff``.
    """

    hessian_range_factor: ClassVar[float] = 1.0
    image_table_above: ClassVar[int | None] = 1024
    """Blocked force loops (above ``CHUNKED_ABOVE`` = 1024 atoms) read displacements
    from periodic images; lists without owned pairs give them a short table of ghosts
    (``ImageTable``) instead of every image of every atom: LJ fcc N = 32000, one core,
    force evaluation 13.9–14.6 against 15.2–16.4 ms (three runs), a rebuild 14–17 ms
    dearer (about 6 rebuilds in a 433-step relaxation)."""
    owned_pairs: ClassVar[tuple[int, int] | None] = (1024, 12000)
    """Where the force loop runs over owned pairs (one core, relaxations to 1e-8, warm):
    Kob–Andersen N = 4000 18 % faster (19.4 against 23.7 s), force evaluations of LJ fcc
    and Kob–Andersen 5–13 % faster from 4000 to 8000 atoms; from 16000 atoms on the
    scatter into arrays that no longer stay in cache costs what the halved pair terms
    save (LJ fcc N = 32000: 2–4 % slower). Below 1024 atoms the loop is not blocked."""
    has_r2_form: ClassVar[bool] = False
    """Whether :meth:`pair_energy_r2` is implemented (then the force loop uses it)."""

    def pair_energy(self, r: Array, **p: Array) -> Array:
        raise NotImplementedError

    def r2_coefficients(self, **p: Array) -> dict[str, Array]:
        """Per-pair-type constants of :meth:`pair_energy_r2`, from the parameters (scalars
        or ``(S, S)`` tables): computed once per pair type, then looked up per pair."""
        raise NotImplementedError

    def pair_energy_r2(self, r2: Array, **c: Array) -> Array:
        r"""The same :math:`\phi`, as a function of :math:`r^2` and the constants of
        :meth:`r2_coefficients` (for potentials that are rational functions of
        :math:`r^2`). The energy-and-force loop then needs neither :math:`\sqrt{\cdot}`
        nor :math:`1/r` per pair: :math:`\partial\phi/\partial R_i = 2\,(\mathrm d\phi/
        \mathrm d r^2)\,(R_i - R_j)`."""
        raise NotImplementedError

    def energy(self, params: Params, nb: Neighborhood) -> Array:
        p = _per_pair(params, nb)
        e = self.pair_energy(nb.r, **p)
        return 0.5 * jnp.sum(jnp.where(nb.mask, e, 0.0))

    def total_energy(self, params: Params, geometry: Geometry) -> Array:
        r"""Energy with a scatter-free position derivative.

        Differentiating the gather of neighbour positions in reverse mode scatters every
        pair's force back onto its neighbour. On a full (symmetric) neighbour list that is
        unnecessary: :math:`\partial E/\partial R_i = -\sum_m \phi'(r_{im})\,\hat
        d_{im}` from atom i's own row (the mirrored entry of each pair carries the other
        half). This rule supplies that gradient through a ``custom_jvp``, so forces,
        Hessian-vector products (forward over reverse) and higher derivatives all use it.
        The cell derivative comes from the virial of the same pass; derivatives with
        respect to the parameters are plain forward mode. Large systems whose list also
        names each pair once (``geometry.owned``) evaluate every pair term once instead
        and scatter its force onto the other atom (see
        :func:`_energy_and_position_gradient`).
        """
        return _pair_total_energy(self, geometry.pad_distance, geometry.mesh, params,
                                  geometry.positions, geometry.cell, geometry.species,
                                  geometry.idx, geometry.images, geometry.owned)


def symmetrized(params: Params) -> Params:
    r"""Per-pair matrices replaced by their symmetric part :math:`\tfrac12(P + P^\top)`.

    A pair energy depends on a per-pair parameter through its symmetric part only, so its
    derivative with respect to a matrix is symmetric (``G[a, b] = G[b, a]``) to every order,
    and every atom's row of the full neighbour list sees the same value for its pair — which
    the scatter-free force rule below relies on. Symmetric input is unchanged.
    """
    return {k: 0.5 * (v + jnp.swapaxes(v, -1, -2)) if jnp.ndim(v) == 2 else v
            for k, v in params.items()}


def _per_pair(params: Params, nb: Neighborhood) -> dict[str, Array]:
    return {k: pair_param(v, nb.species, nb.neighbor_species)
            for k, v in symmetrized(params).items()}


def _plain_total_energy(pot, pad, params, R, cell, species, idx):
    return pot.energy(params, Geometry(R, cell, species, idx, pad).neighborhood())


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1, 2))
def _pair_total_energy(pot, pad, mesh, params, R, cell, species, idx, images, owned):
    return _plain_total_energy(pot, pad, params, R, cell, species, idx)


def _is_zero(t) -> bool:
    return all(isinstance(leaf, SymbolicZero) for leaf in jax.tree.leaves(
        t, is_leaf=lambda x: isinstance(x, SymbolicZero)))


def _instantiate(t):
    return jax.tree.map(
        lambda leaf: jnp.zeros(leaf.shape, leaf.dtype) if isinstance(leaf, SymbolicZero)
        else leaf, t, is_leaf=lambda x: isinstance(x, SymbolicZero))


ROW_CHUNK = 128
"""Centre atoms per block in the energy-and-force evaluation of systems above
``CHUNKED_ABOVE`` atoms on one CPU core: a block's ``(128, M)`` intermediates stay in cache
(≈ 25 % faster than one pass over all N rows at N = 4000), and its displacements are
gathered one component at a time (``Geometry.neighborhood(by_component=True)``). Smaller
systems take one pass of the plain form: a smaller program, which keeps nested derivatives
(elastic constants and their parameter derivatives) quick to compile."""
ROW_CHUNK_THREADED = 1024
"""Block size when the process may run on several cores: XLA's CPU backend splits each
large loop over the threads of its pool, and a block of 1024 rows is large enough to be
split. Measured on 2 cores (LJ fcc, FIRE, per step): N = 32000: 21.1 ms with 128-row blocks
(XLA's threads mostly wait), 17.5 ms (512), 15.9 ms (1024), 16.6 ms (2048), 19.6 ms
(4096), 26.7 ms (one pass), against 23.1 ms with 128-row blocks on one core; N = 4000:
4.7 ms (1024) against 5.8 ms (128) and 7.4 ms on one core."""


def row_chunk() -> int:
    """:data:`ROW_CHUNK_THREADED` when this process may use more than one core, else
    :data:`ROW_CHUNK` (read when a program is traced)."""
    return ROW_CHUNK_THREADED if usable_cores() > 1 else ROW_CHUNK


CHUNKED_ABOVE = 1024


def _energy_and_position_gradient(pot, pad, params, R, cell, species, idx, images=None,
                                  virial=False, mesh=None, owned=None):
    r"""Energy and :math:`\partial E/\partial R_i = -\sum_m \phi'(r_{im})\,\hat d_{im}`
    from each atom's own row of the full list, evaluated :func:`row_chunk` rows at a time, and
    with ``virial`` (static) also :math:`W = \tfrac12 \sum_{i,m} \phi'(r_{im})\,
    d_{im} \otimes d_{im} / r_{im}` (``(d, d)``; :math:`\partial E/\partial\epsilon` of a
    homogeneous strain :math:`R \to R(I + \epsilon)`, :math:`C \to C(I + \epsilon)`).
    Blocked evaluations of periodic lists with image slots read the displacements from
    the images (``Geometry.image_neighborhood_fn``), the others take the minimum image.

    With ``owned`` (``(N, H)``, each pair once: ``Geometry.owned``) a blocked evaluation
    runs over the owned pairs instead, :math:`E = \sum_i \sum_{m \in O(i)} \phi(r_{im})`,
    :math:`W = \sum_i \sum_{m \in O(i)} \phi'(r_{im})\, d_{im} \otimes d_{im} / r_{im}`,
    and each pair's term :math:`c\,d_{im}` (:math:`c = \phi'/r`) enters
    :math:`\partial E/\partial R` twice: :math:`-c\,d_{im}` on atom i, :math:`+c\,d_{im}`
    on its neighbour (a scatter-add): half the pair terms for one scatter, which pays
    where the scattered arrays stay in cache (:attr:`PairPotential.owned_pairs`).

    With a ``mesh`` (:mod:`mdsens.md.sharding`) the blocks are split evenly over its
    devices, each of which sees every position and returns its own rows; with a
    :class:`~mdsens.md._exchange.ProcessRows` this process evaluates its own block and
    receives the others' rows (full list) or adds the others' scattered gradients (owned
    pairs) from its peer processes (:mod:`mdsens.md.processes`)."""
    n, d = R.shape
    blocked = n > CHUNKED_ABOVE
    chunk = min(row_chunk(), n) if blocked else n
    n_chunks = -(-n // chunk)
    processes = mesh if isinstance(mesh, ProcessRows) else None
    shards = mesh.size if (mesh is not None and blocked) else 1
    n_chunks = -(-n_chunks // shards) * shards
    rows = jnp.minimum(jnp.arange(n_chunks * chunk), n - 1).reshape(n_chunks, chunk)
    sym = symmetrized(params)
    pairs = [(k, m) for k in range(d) for m in range(k, d)]  # the virial's upper triangle
    if pot.has_r2_form:
        sym = pot.r2_coefficients(**sym)
    real = (np.arange(n_chunks * chunk) < n).reshape(n_chunks, chunk)  # repeated rows

    def neighborhood_fn(R, cell, species, idx, images):
        geometry = Geometry(R, cell, species, idx, pad, images)
        if blocked and images is not None and cell is not None:
            return geometry.image_neighborhood_fn()
        return geometry.neighborhood_fn(by_component=blocked)

    def terms(nb, sym):
        """Pair energies φ and coefficients φ'(r)/r of a neighbourhood, zero in padded
        slots."""
        p = {k: pair_param(v, nb.species, nb.neighbor_species) for k, v in sym.items()}
        if pot.has_r2_form:
            # coef = 2 dφ/d(r²) = φ'(r)/r, without a square root; padded slots sit at
            # pad_distance, beyond the cutoff, where an r²-form φ and dφ are exactly 0
            r2 = functools.reduce(jnp.add, [nb.dR[..., k] ** 2 for k in range(d)])
            e_pair, dphi = jax.jvp(lambda x: pot.pair_energy_r2(x, **p), (r2,),
                                   (jnp.ones_like(r2),))
            coef = 2.0 * dphi
        else:
            e_pair, dphi = jax.jvp(lambda r: pot.pair_energy(r, **p), (nb.r,),
                                   (jnp.ones_like(nb.r),))
            e_pair = jnp.where(nb.mask, e_pair, 0.0)
            coef = jnp.where(nb.mask, dphi / nb.r, 0.0)
        # one buffer for φ'(r)/r: fused into each of the d component sums, XLA would
        # evaluate the pair function d times (≈ 25 % of a Kob–Andersen step)
        return e_pair, materialize(coef, nb.idx[0, 0])

    def blocks(R, cell, species, idx, images, sym, rows):
        """The per-block energies, gradients (and virials) of ``rows`` ``(b, chunk)``."""
        neighborhood = neighborhood_fn(R, cell, species, idx, images)

        def block(rows_b):
            nb = neighborhood(rows_b)
            e_pair, coef = terms(nb, sym)
            e_rows = 0.5 * jnp.sum(e_pair, axis=1)
            grad = -jnp.stack([jnp.sum(coef * nb.dR[..., k], axis=1) for k in range(d)], -1)
            if not virial:
                return e_rows, grad
            w_rows = jnp.stack([0.5 * jnp.sum(coef * nb.dR[..., k] * nb.dR[..., m], axis=1)
                                for k, m in pairs], -1)
            return e_rows, grad, w_rows

        if rows is None:
            return block(None)
        return jax.lax.map(block, rows)

    def owned_blocks(rows, real, first=0):
        """Energy, the whole gradient ``(N, d)`` and the virial entries of the owned pairs
        of ``rows`` ``(b, chunk)``, consecutive rows from row ``first`` on (``real``: which
        rows are not repeats)."""
        slots = owned if images is None else None
        neighborhood = neighborhood_fn(R, cell, species, slots,
                                       None if images is None else (owned, images[1]))
        n_slots = n if images is None else n * 3**d  # the padding slot

        def block(carry, xs):
            grad, e, w = carry
            rows_b, real_b = xs
            nb = neighborhood(rows_b)
            e_pair, coef = terms(nb, sym)
            coef = jnp.where(real_b[:, None], coef, 0.0)
            e = e + jnp.sum(jnp.where(real_b[:, None], e_pair, 0.0))
            # the neighbour atom of each slot (n, dropped by the scatter, for padding)
            j = (nb.idx if images is None
                 else jnp.where(nb.idx < n_slots, nb.idx % n, n)).reshape(-1)
            parts = [coef * nb.dR[..., k] for k in range(d)]
            # the neighbours' share is scattered into the carry; the row's own share is a
            # block output (a scatter of 128 rows into the carry would cost as much)
            grad = tuple(g.at[j].add(c.reshape(-1), mode="drop")
                         for g, c in zip(grad, parts))
            if virial:
                w = w + jnp.stack([jnp.sum(parts[k] * nb.dR[..., m]) for k, m in pairs])
            return (grad, e, w), jnp.stack([jnp.sum(c, axis=1) for c in parts], -1)

        zero = jnp.zeros((), R.dtype)
        init = (tuple(jnp.zeros((n,), R.dtype) for _ in range(d)), zero,
                jnp.zeros((len(pairs) if virial else 1,), R.dtype))
        (grad, e, w), own = jax.lax.scan(block, init, (rows, jnp.asarray(real)))
        own = own.reshape(-1, d)
        if (first, own.shape[0]) != (0, n_chunks * chunk):  # some rows: zeros elsewhere
            own = jnp.zeros((first + own.shape[0], d), R.dtype).at[first:].set(own)
            own = jnp.pad(own, ((0, max(0, n - own.shape[0])), (0, 0)))
        return e, jnp.stack(grad, -1) - own[:n], w

    args = (R, cell, species, idx, images, sym)

    def totals(out, real):
        """Energy and virial entries summed over the real rows (virial: zeros((1,))
        when not asked for)."""
        e = jnp.sum(jnp.where(real, out[0], 0.0))
        if not virial:
            return e, jnp.zeros((1,), R.dtype)
        return e, jnp.sum(jnp.where(real[..., None], out[2], 0.0).reshape(-1, len(pairs)),
                          axis=0)

    by_owned = owned is not None and blocked and (mesh is None or processes is not None)
    if processes is not None and shards > 1:
        # this process's rows, the ones its neighbour list holds (ProcessRows.row_range),
        # in blocks; every process sends as many rows, ceil(n / size)
        lo, hi = processes.row_range(n)
        per = -(-n // processes.size)
        mine = np.arange(lo, lo + -(-per // chunk) * chunk)
        rows_mine = jnp.asarray(np.minimum(mine, n - 1).reshape(-1, chunk))
        real_mine = (mine < hi).reshape(-1, chunk)
    if by_owned:
        if processes is not None and shards > 1:
            # the others' scattered gradients are added through shared memory
            e_mine, grad_mine, w_mine = owned_blocks(rows_mine, real_mine, lo)
            energy, grad, w = exchange(processes, e_mine, grad_mine, w_mine, R, summed=True)
        else:
            energy, grad, w = owned_blocks(rows, real)
    elif processes is not None and shards > 1:
        # the others' rows come through shared memory
        out = blocks(*args, rows_mine)
        e_mine, w_mine = totals(out, real_mine)
        energy, grad, w = exchange(processes, e_mine, out[1].reshape(-1, d)[:per], w_mine, R)
        grad = grad[:n]
    else:
        if n_chunks == 1:
            out = blocks(*args, None)
            real = np.ones((n,), bool)
        elif shards > 1:
            split = shard_map(blocks, mesh=mesh, in_specs=(P(),) * len(args) + (P(AXIS),),
                              out_specs=P(AXIS), check_vma=False)
            out = split(*args, rows)
        else:
            out = blocks(*args, rows)
        energy, w = totals(out, real)
        grad = out[1].reshape(-1, d)[:n]
    if not virial:
        return energy, grad
    W = jnp.zeros((d, d), R.dtype)
    for q, (k, m) in enumerate(pairs):
        W = W.at[k, m].set(w[q]).at[m, k].set(w[q])
    return energy, grad, W


def _pair_total_energy_jvp(pot, pad, mesh, primals, tangents):
    r"""Tangent of the energy from the row-wise gradient.

    Positions: :math:`\sum_i \partial E/\partial R_i \cdot \dot R_i`. Cell, at fixed
    Cartesian positions (pair vectors :math:`d = R_j - R_i + n C`, n integer):
    :math:`\partial E/\partial C = C^{-\top} W - (R C^{-1})^\top \partial E/\partial R`
    with W the virial, so a stress or a cell step costs one pass over the list instead of
    forward mode through all of it. Parameters: forward mode through the plain energy.
    """
    params, R, cell, species, idx, images, owned = primals
    params_dot, R_dot, cell_dot = tangents[:3]
    with_cell = cell is not None and not _is_zero(cell_dot)
    if isinstance(R_dot, SymbolicZero) and not with_cell:
        energy = _plain_total_energy(pot, pad, params, R, cell, species, idx)
        tangent = jnp.zeros_like(energy)
    else:
        energy, grad_R, *virial = _energy_and_position_gradient(
            pot, pad, params, R, cell, species, idx, images, virial=with_cell, mesh=mesh,
            owned=owned)
        tangent = jnp.zeros_like(energy)
        if not isinstance(R_dot, SymbolicZero):
            tangent = tangent + jnp.sum(grad_R * R_dot)
        if with_cell:
            inv = jnp.linalg.inv(cell)
            grad_C = inv.T @ virial[0] - (R @ inv).T @ grad_R
            tangent = tangent + jnp.sum(grad_C * cell_dot)
    if not _is_zero(params_dot):
        _, t = jax.jvp(lambda pr: _plain_total_energy(pot, pad, pr, R, cell, species, idx),
                       (params,), (_instantiate(params_dot),))
        tangent = tangent + t
    return energy, tangent


_pair_total_energy.defjvp(_pair_total_energy_jvp, symbolic_zeros=True)


def _check_switch(r_onset: float, r_cutoff: float) -> None:
    if not 0.0 < r_onset < r_cutoff:
        raise ValueError(f"need 0 < r_onset < r_cutoff, got {r_onset}, {r_cutoff}")


# ----------------------------------------------------------------------------- LJ
@dataclasses.dataclass(frozen=True, eq=False)
class LennardJones(PairPotential):
    r"""Lennard-Jones with jax-md's C¹ switch; every length scales with :math:`\sigma`.

    .. math::
       \phi(r) = 4\epsilon\left[(\sigma/r)^{12} - (\sigma/r)^6\right] S(r),\qquad
       S(r) = \begin{cases} 1 & r < r_o \\
       \frac{(r_c^2 - r^2)^2 (r_c^2 + 2r^2 - 3r_o^2)}{(r_c^2 - r_o^2)^3} & r_o \le r < r_c\\
       0 & r \ge r_c\end{cases}

    with :math:`r_o = \text{r\_onset}\,\sigma_{ij}` and :math:`r_c = \text{r\_cutoff}\,
    \sigma_{ij}` per pair (identical to ASE ``LennardJones(rc=2.5σ, ro=2.0σ, smooth=True)``).

    Params: ``sigma`` (Å, default 1), ``epsilon`` (eV, default 1).
    Settings: ``r_onset`` = 2.0, ``r_cutoff`` = 2.5, in units of sigma.
    """

    name = "lennard_jones"
    param_units: ClassVar[Mapping[str, str]] = {"sigma": "Å", "epsilon": "eV"}
    has_r2_form = True
    r_onset: float = 2.0
    r_cutoff: float = 2.5

    def pair_energy(self, r: Array, sigma: Array, epsilon: Array) -> Array:
        return _switched(_lennard_jones_form(r, sigma, epsilon), r,
                         self.r_onset * sigma, self.r_cutoff * sigma)

    def r2_coefficients(self, sigma: Array, epsilon: Array) -> dict[str, Array]:
        s2 = sigma * sigma
        width = self.r_cutoff**2 - self.r_onset**2
        return {"s2": s2, "eps4": 4.0 * epsilon, "inv_den": 1.0 / (width * s2) ** 3}

    def pair_energy_r2(self, r2: Array, s2: Array, eps4: Array, inv_den: Array) -> Array:
        x = s2 / r2
        x6 = x * x * x
        lj = eps4 * (x6 * x6 - x6)
        ro2, rc2 = self.r_onset**2 * s2, self.r_cutoff**2 * s2
        inner = (rc2 - r2) ** 2 * (rc2 + 2.0 * r2 - 3.0 * ro2) * inv_den
        return lj * jnp.where(r2 < ro2, 1.0, jnp.where(r2 < rc2, inner, 0.0))

    def cutoff(self, params: Params | None = None) -> float:
        params = self.params if params is None else params
        return self.r_cutoff * _max(params["sigma"])


@register("lennard_jones", aliases=("lj",))
def lennard_jones(
    sigma: Any = 1.0,
    epsilon: Any = 1.0,
    *,
    species: Sequence[str] | None = None,
    r_onset: float = 2.0,
    r_cutoff: float = 2.5,
) -> LennardJones:
    """Lennard-Jones potential (see :class:`LennardJones`; parameters as in the module doc)."""
    _check_switch(r_onset, r_cutoff)
    params, sp = resolve_pair_params({"sigma": sigma, "epsilon": epsilon}, species)
    return LennardJones(params, sp, float(r_onset), float(r_cutoff))


# ----------------------------------------------------------------------------- soft sphere
@dataclasses.dataclass(frozen=True, eq=False)
class SoftSphere(PairPotential):
    r"""Soft-sphere overlap potential (jax-md ``energy.soft_sphere``).

    .. math:: \phi(r) = \frac{\epsilon}{\alpha}\,(1 - r/\sigma)^\alpha \ (r < \sigma),
              \quad 0 \ (r \ge \sigma).

    Params: ``sigma`` (diameter, Å, default 1), ``epsilon`` (eV, default 1), ``alpha``
    (dimensionless stiffness exponent, default 2). The cutoff is ``max(sigma)``.
    """

    name = "soft_sphere"
    param_units: ClassVar[Mapping[str, str]] = {"sigma": "Å", "epsilon": "eV", "alpha": "1"}
    bond_stiffness = 1.0  # σ² φ''/ε at contact for α = 2 (harmonic), the common choice

    def pair_energy(self, r: Array, sigma: Array, epsilon: Array, alpha: Array) -> Array:
        return _soft_sphere_form(r, sigma, epsilon, alpha)

    def cutoff(self, params: Params | None = None) -> float:
        params = self.params if params is None else params
        return _max(params["sigma"])


@register("soft_sphere")
def soft_sphere(
    sigma: Any = 1.0,
    epsilon: Any = 1.0,
    alpha: Any = 2.0,
    *,
    species: Sequence[str] | None = None,
) -> SoftSphere:
    """Soft-sphere potential (see :class:`SoftSphere`)."""
    params, sp = resolve_pair_params(
        {"sigma": sigma, "epsilon": epsilon, "alpha": alpha}, species
    )
    return SoftSphere(params, sp)


# ----------------------------------------------------------------------------- Morse
@dataclasses.dataclass(frozen=True, eq=False)
class Morse(PairPotential):
    r"""Morse potential (jax-md ``energy.morse``) with jax-md's C¹ switch.

    .. math:: \phi(r) = \epsilon\left[(1 - e^{-\alpha (r - \sigma)})^2 - 1\right] S(r)
              = \epsilon\left[e^{-2\alpha(r-\sigma)} - 2e^{-\alpha(r-\sigma)}\right] S(r)

    with the switch :math:`S` of :class:`LennardJones`, :math:`r_o = \text{r\_onset}\,
    \sigma_{ij}`, :math:`r_c = \text{r\_cutoff}\,\sigma_{ij}`. ASE's ``MorsePotential``
    has the same unswitched form with ``r0 = sigma``, ``rho0 = alpha * sigma`` (but a
    different switch).

    Params: ``sigma`` (equilibrium distance, Å, default 1), ``epsilon`` (well depth, eV,
    default 5), ``alpha`` (inverse width, 1/Å, default 5) -- jax-md's defaults.
    Settings: ``r_onset`` = 2.0, ``r_cutoff`` = 2.5, in units of sigma.
    """

    name = "morse"
    param_units: ClassVar[Mapping[str, str]] = {"sigma": "Å", "epsilon": "eV", "alpha": "1/Å"}
    r_onset: float = 2.0
    r_cutoff: float = 2.5

    def pair_energy(self, r: Array, sigma: Array, epsilon: Array, alpha: Array) -> Array:
        return _switched(_morse_form(r, sigma, epsilon, alpha), r,
                         self.r_onset * sigma, self.r_cutoff * sigma)

    def cutoff(self, params: Params | None = None) -> float:
        params = self.params if params is None else params
        return self.r_cutoff * _max(params["sigma"])


@register("morse")
def morse(
    sigma: Any = 1.0,
    epsilon: Any = 5.0,
    alpha: Any = 5.0,
    *,
    species: Sequence[str] | None = None,
    r_onset: float = 2.0,
    r_cutoff: float = 2.5,
) -> Morse:
    """Morse potential (see :class:`Morse`)."""
    _check_switch(r_onset, r_cutoff)
    params, sp = resolve_pair_params(
        {"sigma": sigma, "epsilon": epsilon, "alpha": alpha}, species
    )
    return Morse(params, sp, float(r_onset), float(r_cutoff))
