"""The neighbour-list manager (mdsens.md.neighbors) through its public API, against an
O(N^2) brute-force neighbour search in numpy: allocation, update with and without a
rebuild (the two largest moves within or beyond the skin, a strained cell), overflow detection and
reallocation, free clusters, and the model delegating to it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdsens.md import System, build, potentials
from mdsens.md.neighbors import NeighborCache, NeighborListManager

jax.config.update("jax_enable_x64", True)

CUTOFF, SKIN = 2.0, 0.2
REACH = CUTOFF + SKIN
# triclinic, every perpendicular width about 4.5 reach: a 4x4x4 cell grid (jax-md uses
# one from 4 cells per direction), images allowed
CELL = 1.25 * np.array([[8.2, 0.0, 0.0], [1.1, 8.0, 0.0], [-0.7, 0.9, 8.1]])
N = 400


def _brute_periodic(R, C, radius):
    """Neighbour sets {j : |R_j - R_i| < radius} by the minimum image (exact here: every
    width exceeds 2 radius)."""
    S = np.asarray(R) @ np.linalg.inv(C)
    dS = S[None, :, :] - S[:, None, :]
    dS -= np.round(dS)
    r = np.linalg.norm(dS @ C, axis=-1)
    np.fill_diagonal(r, np.inf)
    return [set(np.flatnonzero(row < radius)) for row in r]


def _brute_free(R, radius):
    R = np.asarray(R)
    r = np.linalg.norm(R[None, :, :] - R[:, None, :], axis=-1)
    np.fill_diagonal(r, np.inf)
    return [set(np.flatnonzero(row < radius)) for row in r]


def _sets(nbrs):
    idx = np.asarray(nbrs.nlist.idx)
    n = idx.shape[0]
    return [set(row[row < n]) for row in idx]


@pytest.fixture(scope="module")
def periodic():
    rng = np.random.default_rng(0)
    R = rng.random((N, 3)) @ CELL
    manager = NeighborListManager.create(R, CELL, CUTOFF, SKIN)
    update = jax.jit(manager.update)
    return manager, update, jnp.asarray(R), jnp.asarray(CELL)


def test_allocate_lists_every_pair_within_reach(periodic):
    manager, _, R, C = periodic
    assert manager.periodic and manager.reach == REACH
    assert isinstance(manager.cache, NeighborCache)
    nbrs = manager.allocate(R, C)
    assert _sets(nbrs) == _brute_periodic(R, CELL, REACH)
    counts = max(len(s) for s in _sets(nbrs))
    assert nbrs.nlist.idx.shape[1] >= counts
    assert not bool(manager.overflowed(nbrs))
    assert nbrs.images is not None  # widths >= 2 reach
    # the second allocation reuses the first one's grid (cached) and lists the same pairs
    assert manager.cache.search_template is not None
    again = manager.allocate(R, C)
    assert _sets(again) == _sets(nbrs)
    assert again.nlist.idx.shape == nbrs.nlist.idx.shape


def _min_image_distances(R, C):
    S = np.asarray(R) @ np.linalg.inv(C)
    dS = S[None, :, :] - S[:, None, :]
    dS -= np.round(dS)
    return dS @ C  # (N, N, 3): row i, column j is R_j - R_i by the minimum image


def test_update_keeps_list_while_the_two_largest_moves_fit_in_the_skin(periodic):
    manager, update, R, C = periodic
    nbrs = manager.allocate(R, C)
    rng = np.random.default_rng(1)
    step = rng.standard_normal((N, 3))
    step *= 0.45 * SKIN / np.linalg.norm(step, axis=1).max()  # largest move 0.45 skin
    small = R + step
    assert not bool(manager.needs_rebuild(small, C, nbrs))
    kept = update(small, C, nbrs)
    np.testing.assert_array_equal(kept.nlist.reference_position, nbrs.nlist.reference_position)
    np.testing.assert_array_equal(kept.nlist.idx, nbrs.nlist.idx)
    # the guarantee that makes keeping it safe: every pair now within the cutoff is listed
    for listed, near in zip(_sets(kept), _brute_periodic(small, CELL, CUTOFF), strict=True):
        assert near <= listed

    # one atom alone may move almost a whole skin (every other atom stays): the pairs it
    # now has within the cutoff were within reach at the build
    d = _min_image_distances(R, CELL)
    r = np.linalg.norm(d, axis=-1)
    np.fill_diagonal(r, np.inf)
    i, j = np.unravel_index(np.argmin(np.where(r > REACH, r, np.inf)), r.shape)
    assert REACH < r[i, j] < REACH + 0.05 * SKIN  # the closest unlisted pair
    toward = d[i, j] / r[i, j]  # unit vector from i to j
    lone = R.at[i].add(0.9 * SKIN * toward)
    assert not bool(manager.needs_rebuild(lone, C, nbrs))
    for listed, near in zip(_sets(update(lone, C, nbrs)), _brute_periodic(lone, CELL, CUTOFF),
                            strict=True):
        assert near <= listed

    # that pair moving 0.55 skin each toward the other comes within the cutoff: rebuilt
    both = R.at[i].add(0.55 * SKIN * toward).at[j].add(-0.55 * SKIN * toward)
    assert j in _brute_periodic(both, CELL, CUTOFF)[i] and j not in _sets(nbrs)[i]
    assert bool(manager.needs_rebuild(both, C, nbrs))
    rebuilt = update(both, C, nbrs)
    assert _sets(rebuilt) == _brute_periodic(both, CELL, REACH)
    np.testing.assert_allclose(rebuilt.nlist.reference_position,
                               manager.list_positions(both, C), atol=1e-14)
    assert not bool(manager.overflowed(rebuilt))

    forced = update(R, C, nbrs, True)  # force: rebuilt although nothing moved
    assert _sets(forced) == _sets(nbrs)


def test_two_atoms_tied_at_the_largest_move_count_twice():
    """Bitwise-equal largest moves (dyadic positions, cell and moves: exact arithmetic),
    as copies of one atom in a replicated cell give: the second largest move is the tie,
    not the next smaller one, so 2 × 0.75 skin rebuilds."""
    cell, skin = 16.0 * np.eye(3), 0.25
    R = np.round(np.random.default_rng(5).random((300, 3)) * 16 * 64) / 64 % 16
    manager = NeighborListManager.create(R, cell, CUTOFF, skin)
    nbrs = manager.allocate(jnp.asarray(R), jnp.asarray(cell))
    move = np.zeros_like(R)
    move[[3, 200], 0] = 0.1875  # 0.75 skin each, exactly
    move[50, 1] = 0.0625  # a smaller move
    moved = jnp.asarray(R + move)
    dX = manager.list_positions(moved, jnp.asarray(cell)) - nbrs.nlist.reference_position
    u2 = np.sum(np.asarray((dX - jnp.round(dX)) @ cell) ** 2, axis=-1)
    assert u2[3] == u2[200] == 0.1875**2  # a true tie
    assert bool(manager.needs_rebuild(moved, jnp.asarray(cell), nbrs))
    one = jnp.asarray(R + np.where(np.arange(300)[:, None] == 200, 0.0, move))
    assert not bool(manager.needs_rebuild(one, jnp.asarray(cell), nbrs))  # 0.75 + 0.25


def test_strained_cell_triggers_rebuild(periodic):
    manager, update, R, C = periodic
    nbrs = manager.allocate(R, C)
    for eps, expect in ((0.2 * SKIN / REACH, False), (1.5 * SKIN / REACH, True)):
        F = np.eye(3) + eps * np.array([[0, 1, 0], [0, 0, 0], [0, 0, 0]])
        Rs, Cs = R @ F, C @ F
        assert bool(manager.needs_rebuild(Rs, Cs, nbrs)) == expect
        new = update(Rs, Cs, nbrs)
        pairs = _brute_periodic(Rs, np.asarray(Cs), REACH if expect else CUTOFF)
        if expect:
            assert _sets(new) == pairs
            np.testing.assert_allclose(new.reference_cell, Cs)
        else:
            assert all(p <= s for p, s in zip(pairs, _sets(new), strict=True))


def test_overflow_is_detected_and_reallocation_fixes_it(periodic):
    manager, update, R, C = periodic
    nbrs = manager.allocate(R, C)
    width = nbrs.nlist.idx.shape[1]
    # gather width + 10 atoms into a ball of radius 0.5 at the cell centre
    centre = 0.5 * jnp.sum(C, axis=0)
    rng = np.random.default_rng(2)
    ball = rng.standard_normal((width + 10, 3))
    ball *= 0.5 * rng.random((width + 10, 1)) / np.linalg.norm(ball, axis=1, keepdims=True)
    dense = R.at[: width + 10].set(centre + ball)
    crowded = update(dense, C, nbrs)
    assert bool(manager.overflowed(crowded))
    assert bool(jax.jit(manager.overflowed)(crowded))
    fresh = manager.allocate(dense, C)
    assert not bool(manager.overflowed(fresh))
    assert fresh.nlist.idx.shape[1] > width
    assert _sets(fresh) == _brute_periodic(dense, CELL, REACH)


def test_free_cluster_allocate_update_and_escape():
    rng = np.random.default_rng(3)
    R = jnp.asarray(rng.random((150, 3)) * 9.0)
    manager = NeighborListManager.create(R, None, CUTOFF, SKIN)
    assert not manager.periodic and manager.origin is not None
    nbrs = manager.allocate(R, None)
    assert _sets(nbrs) == _brute_free(R, REACH)
    update = jax.jit(manager.update)
    # an atom well outside the box seen at creation, next to another one that left too
    moved = R.at[0].set(jnp.array([-6.0, 4.0, 4.0])).at[1].set(jnp.array([-5.0, 4.0, 4.0]))
    assert bool(manager.needs_rebuild(moved, None, nbrs))
    new = update(moved, None, nbrs)
    assert not bool(manager.overflowed(new))
    assert _sets(new) == _brute_free(moved, REACH)


def test_create_rejects_bad_settings():
    with pytest.raises(ValueError, match="cutoff"):
        NeighborListManager.create(np.zeros((2, 3)), None, 0.0, SKIN)
    with pytest.raises(ValueError, match="skin"):
        NeighborListManager.create(np.zeros((2, 3)), None, CUTOFF, -0.1)


def test_model_delegates_to_its_manager():
    """The model's list is the manager's list of the replicated (super)cell, and models
    and managers stay hashed by identity (static jit arguments)."""
    rng = np.random.default_rng(4)
    cell = 0.4 * CELL  # too small: replicated 2x2x2
    R = rng.random((40, 3)) @ cell
    system = System.create(R, cell)
    model = build(system, potentials.lennard_jones(r_onset=1.5, r_cutoff=CUTOFF),
                  neighbor_list=True, skin=SKIN)
    assert model.uses_neighbor_list and model.replicas == (2, 2, 2)
    manager = model.neighbor_lists
    assert {model: 1}[model] == 1 and {manager: 1}[manager] == 1
    assert model != build(system, model.potential, neighbor_list=True, skin=SKIN)
    assert manager != NeighborListManager.create(R, cell, CUTOFF, SKIN)
    nbrs = model.allocate(R, cell)
    R_s, C_s = model.supercell(jnp.asarray(R), jnp.asarray(cell))
    assert _sets(nbrs) == _brute_periodic(R_s, np.asarray(C_s), REACH)
    assert model.overflowed(None) == False  # noqa: E712 (a bool scalar array)


def test_a_list_with_no_pair_within_reach_allocates_and_grows():
    """A dilute periodic system (nearest neighbours 1.5 reach apart) has empty rows: the
    list is one padded slot wide (was: an index error in the owned-pair compaction), the
    energy and forces are zero, and once the atoms are brought together the list grows by
    reallocation to what a brute-force search lists."""
    k, spacing = 8, 1.5 * REACH
    grid = np.stack(np.meshgrid(*[np.arange(k)] * 3, indexing="ij"), -1).reshape(-1, 3)
    cell = np.eye(3) * k * spacing
    R = jnp.asarray(grid * spacing)
    model = build(System.create(R, cell), potentials.lennard_jones(r_onset=1.5,
                                                                    r_cutoff=CUTOFF),
                  neighbor_list=True, skin=SKIN)
    nbrs = model.allocate(R, jnp.asarray(cell))
    assert nbrs.nlist.idx.shape == (k**3, 1) and not bool(model.overflowed(nbrs))
    assert nbrs.owned is None or nbrs.owned.shape == (k**3, 1)
    e, g = jax.value_and_grad(model.energy)(R, jnp.asarray(cell), None, nbrs)
    assert float(e) == 0.0 and not np.any(np.asarray(g))
    dense, dense_cell = R * 0.5, jnp.asarray(cell * 0.5)  # neighbours 0.75 reach apart
    grown = model.update(dense, dense_cell, nbrs)
    assert bool(model.overflowed(grown))
    fresh = model.allocate(dense, dense_cell)
    assert not bool(model.overflowed(fresh))
    assert _sets(fresh) == _brute_periodic(dense, 0.5 * cell, REACH)
