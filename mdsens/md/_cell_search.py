r"""Dense neighbour search on a fixed cell grid, in fractional coordinates (jit-able).

The search that rebuilds a neighbour list inside a relaxation loop. For atoms at fractional
positions :math:`X \in [0, 1)^{N \times d}` in the cell :math:`C` (rows are lattice vectors)
it returns, for every atom i, the indices of all atoms j ≠ i with minimum-image distance
:math:`|(\Delta X_{ij} - \mathrm{round}(\Delta X_{ij}))\,C| < r_\mathrm{reach}`, padded with
N to a fixed width ``max_neighbors``.

Method. The unit cube is cut into a fixed grid of ``g_1 × … × g_d`` cells, each at least
``reach`` wide in the current cell (checked; otherwise the ``too_small`` flag is set and the
caller reallocates). Atoms are sorted by cell (an argsort of N keys) and each cell's members
are read into a ``(n_cells, cell_capacity)`` table by gathers. Atom i's candidates are the
members of its own and the 3^d − 1 adjacent cells, ``M = 3^d · cell_capacity`` of them.
Distances are computed one Cartesian component at a time (1-D gathers, scalar multiply-adds,
fused by XLA). The in-range candidates of a row are compacted to the front *without a
scatter or a cumulative sum over M*: the in-range mask is packed into 32-bit words, their
popcounts give per-word counts, and the k-th neighbour is found by a binary search over the
(short) prefix sums of word counts followed by a rank-select inside one word (popcounts of
masked words). Everything is gathers and elementwise integer work, the kind of program
XLA:CPU runs fast; jax-md's own rebuild (scatter-based compaction) was ≈ 5× slower at
N = 4000 on one core.

Neighbours come out ordered by (cell, atom index) rather than by index; the set is exactly
jax-md's (tested).
"""

from __future__ import annotations

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["grid_shape", "dense_search", "max_neighbors"]

Array = jax.Array


def grid_shape(fractional_cell_size, dim: int) -> tuple[int, ...]:
    """Cells per lattice direction for a jax-md fractional cell size (scalar or per axis)."""
    size = np.broadcast_to(np.asarray(fractional_cell_size, np.float64), (dim,))
    return tuple(max(1, int(math.floor(1.0 / s + 1e-12))) for s in size)


@functools.lru_cache(maxsize=32)
def _adjacent_cells(grid: tuple[int, ...]) -> np.ndarray:
    """``(n_cells, 3^d)`` linear ids of each cell's neighbourhood (periodic; grid ≥ 3)."""
    g = np.array(grid)
    cells = np.array(list(itertools.product(*(range(n) for n in grid))))
    shifts = np.array(list(itertools.product(*([(-1, 0, 1)] * len(grid)))))
    nb = (cells[:, None, :] + shifts[None]) % g
    return np.ravel_multi_index(tuple(nb[..., k] for k in range(len(grid))), grid).astype(
        np.int32)


def _rank_select(mask: Array, cand: Array, k_max: int, fill: int) -> tuple[Array, Array]:
    """First ``k_max`` entries of ``cand`` where ``mask`` holds, per row, padded with ``fill``.

    Returns ``(selected (n, k_max), count (n,))``.
    """
    n, m = mask.shape
    n_words = -(-m // 32)
    pad = n_words * 32 - m
    bits = jnp.pad(mask, ((0, 0), (0, pad))).reshape(n, n_words, 32).astype(jnp.uint32)
    words = jnp.sum(bits << jnp.arange(32, dtype=jnp.uint32), axis=-1, dtype=jnp.uint32)
    counts = jax.lax.population_count(words).astype(jnp.int32)  # (n, n_words)
    ends = jnp.cumsum(counts, axis=1)  # inclusive prefix sums, short rows
    total = ends[:, -1]
    k = jnp.arange(k_max, dtype=jnp.int32)[None, :]
    # word holding the k-th set bit: the number of words whose inclusive end is <= k
    w = jnp.zeros((n, k_max), jnp.int32)
    step = 1 << max(0, math.ceil(math.log2(n_words)))
    while step >= 1:
        t = w + step
        end_t = jnp.take_along_axis(ends, jnp.clip(t - 1, 0, n_words - 1), axis=1)
        w = jnp.where((t <= n_words) & (end_t <= k), t, w)
        step //= 2
    w = jnp.clip(w, 0, n_words - 1)
    before = jnp.take_along_axis(ends, w, axis=1) - jnp.take_along_axis(counts, w, axis=1)
    rank = (k - before).astype(jnp.uint32)
    word = jnp.take_along_axis(words, w, axis=1)
    bit = jnp.zeros((n, k_max), jnp.uint32)  # position of the rank-th set bit of word
    for s in (16, 8, 4, 2, 1):
        t = bit + jnp.uint32(s)
        below = jax.lax.population_count(word & ((jnp.uint32(1) << t) - jnp.uint32(1)))
        bit = jnp.where(below <= rank, t, bit)
    pos = jnp.clip(w * 32 + bit.astype(jnp.int32), 0, m - 1)
    picked = jnp.take_along_axis(cand, pos, axis=1)
    return jnp.where(k < total[:, None], picked, fill), total


def _candidates(X: Array, cell: Array, grid: tuple[int, ...], cell_capacity: int,
                reach: float) -> tuple[Array, Array, Array]:
    """``(cand (N, M), in_range (N, M), cell occupancy (n_cells,))`` on the grid."""
    n, d = X.shape
    g = np.array(grid)
    n_cells = int(np.prod(g))
    c = jnp.clip(jnp.floor(X * g).astype(jnp.int32), 0, jnp.asarray(g, jnp.int32) - 1)
    cid = functools.reduce(lambda a, k: a * int(g[k]) + c[:, k], range(1, d), c[:, 0])
    order = jnp.argsort(cid, stable=True).astype(jnp.int32)
    sorted_cid = cid[order]
    ids = jnp.arange(n_cells, dtype=jnp.int32)
    start = jnp.searchsorted(sorted_cid, ids, side="left").astype(jnp.int32)
    count = jnp.searchsorted(sorted_cid, ids, side="right").astype(jnp.int32) - start
    slot = jnp.arange(cell_capacity, dtype=jnp.int32)
    members = jnp.where(slot < count[:, None],
                        order[jnp.clip(start[:, None] + slot, 0, n - 1)], n)
    cand = members[jnp.asarray(_adjacent_cells(tuple(grid)))[cid]].reshape(n, -1)
    # distances, one component at a time (the padded index n reads a dummy 0)
    ds = []
    for k in range(d):
        xk = jnp.concatenate([X[:, k], jnp.zeros((1,), X.dtype)])
        s = xk[cand] - X[:, k][:, None]
        ds.append(s - jnp.round(s))
    r2 = functools.reduce(jnp.add, [
        functools.reduce(jnp.add, [ds[k] * cell[k, m] for k in range(d)]) ** 2
        for m in range(d)])
    self_ = jnp.arange(n, dtype=jnp.int32)[:, None]
    return cand, (r2 < reach * reach) & (cand < n) & (cand != self_), count


def max_neighbors(X: Array, cell: Array, grid: tuple[int, ...], cell_capacity: int,
                  reach: float) -> Array:
    """Largest number of neighbours within ``reach`` of any atom (for sizing a list)."""
    _, in_range, _ = _candidates(X, cell, grid, cell_capacity, reach)
    return jnp.max(jnp.sum(in_range, axis=1))


def dense_search(
    X: Array, cell: Array, grid: tuple[int, ...], cell_capacity: int, max_neighbors: int,
    reach: float,
) -> tuple[Array, Array, Array, Array]:
    """All neighbours within ``reach`` of each atom (periodic, minimum image).

    Args:
      X: ``(N, d)`` fractional positions in [0, 1).
      cell: ``(d, d)`` cell, rows are lattice vectors.
      grid: cells per direction (static; every entry ≥ 3).
      cell_capacity: most atoms per grid cell (static).
      max_neighbors: width of the returned list (static).
      reach: search radius (cutoff + skin), in the units of ``cell``.
    Returns:
      ``(idx, list_overflow, cell_overflow, too_small)``: ``idx`` is ``(N, max_neighbors)``
      int32 padded with N; the flags are scalar booleans (a row needed more than
      ``max_neighbors`` slots; a grid cell held more than ``cell_capacity`` atoms; a grid
      cell is narrower than ``reach`` in ``cell``, so the search could miss pairs).
    """
    n = X.shape[0]
    cand, in_range, count = _candidates(X, cell, grid, cell_capacity, reach)
    idx, total = _rank_select(in_range, cand, max_neighbors, n)
    widths = 1.0 / jnp.linalg.norm(jnp.linalg.inv(cell), axis=0)
    too_small = jnp.any(widths / np.array(grid) < reach)
    return idx, jnp.max(total) > max_neighbors, jnp.max(count) > cell_capacity, too_small
