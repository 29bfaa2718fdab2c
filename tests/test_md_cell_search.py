"""The in-loop neighbour search (mdsens.md._cell_search) and the model's rebuild rule:
neighbour sets vs brute force (ASE's neighbour list) in a skewed cell, overflow flags, and
energies after strain and moves vs the all-pairs energy on a system large enough to use the
cell grid."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.neighborlist import neighbor_list as ase_neighbor_list

from mdsens.md import System, build, potentials
from mdsens.md import neighbors as neighbors_module
from mdsens.md._cell_search import dense_search
from mdsens.md.geometry import image_shifts

jax.config.update("jax_enable_x64", True)

CELL = np.array([[9.0, 0.0, 0.0], [2.1, 8.6, 0.0], [-1.3, 1.7, 9.4]])


def _random_atoms(n=300, seed=0):
    rng = np.random.default_rng(seed)
    return Atoms(f"Ar{n}", scaled_positions=rng.random((n, 3)), cell=CELL, pbc=True)


def _widths(cell):
    return 1.0 / np.linalg.norm(np.linalg.inv(cell), axis=0)


def test_dense_search_matches_brute_force_in_a_skewed_cell():
    atoms = _random_atoms()
    reach = 2.0
    grid = tuple(int(w // reach) for w in _widths(CELL))
    assert min(grid) >= 3
    X = jnp.asarray(atoms.get_scaled_positions(wrap=True))
    idx, list_over, cell_over, too_small = jax.jit(
        dense_search, static_argnums=(2, 3, 4, 5))(X, jnp.asarray(CELL), grid, 40, 40, reach)
    assert not (bool(list_over) or bool(cell_over) or bool(too_small))
    i, j = ase_neighbor_list("ij", atoms, reach)
    expected = [set(j[i == k]) for k in range(len(atoms))]
    idx = np.asarray(idx)
    got = [set(row[row < len(atoms)]) for row in idx]
    assert got == expected
    assert sum(map(len, got)) > 5 * len(atoms)  # a real test: many pairs
    # rows hold no duplicates and are padded with N at the end
    for row in idx:
        listed = row[row < len(atoms)]
        assert len(set(listed)) == len(listed)
        assert np.all(row[len(listed):] == len(atoms))


def test_dense_search_image_slots_give_the_minimum_image_vectors():
    """With ``images=True`` the same list comes back, and slot ``j + N t`` (image shift
    ``image_shifts(3)[t]``) reproduces ASE's pair vector R_j + n·C − R_i for every pair."""
    atoms = _random_atoms(seed=4)
    n, reach = len(atoms), 2.0
    grid = tuple(int(w // reach) for w in _widths(CELL))
    X = jnp.asarray(atoms.get_scaled_positions(wrap=True))
    search = jax.jit(dense_search, static_argnums=(2, 3, 4, 5, 6))
    plain = search(X, jnp.asarray(CELL), grid, 40, 40, reach)
    idx, *flags, slots = search(X, jnp.asarray(CELL), grid, 40, 40, reach, True)
    np.testing.assert_array_equal(idx, plain[0])
    assert not any(bool(f) for f in flags)
    idx, slots = np.asarray(idx), np.asarray(slots)
    assert np.all((slots == n * 27) == (idx == n))
    shifts = image_shifts(3) @ CELL
    R = np.asarray(X) @ CELL
    i, j, D = ase_neighbor_list("ijD", atoms, reach)
    expected = {(a, b, *np.round(v, 9)) for a, b, v in zip(i, j, D, strict=True)}
    rows, cols = np.nonzero(idx < n)
    jj, t = slots[rows, cols] % n, slots[rows, cols] // n
    np.testing.assert_array_equal(jj, idx[rows, cols])
    vectors = R[jj] + shifts[t] - R[rows]
    got = {(a, b, *np.round(v, 9)) for a, b, v in zip(rows, jj, vectors, strict=True)}
    assert got == expected and len(got) > 5 * n


def test_dense_search_flags_overflow_and_too_small_cells():
    X = jnp.asarray(_random_atoms().get_scaled_positions(wrap=True))
    C = jnp.asarray(CELL)
    search = jax.jit(dense_search, static_argnums=(2, 3, 4, 5))
    _, list_over, cell_over, too_small = search(X, C, (3, 3, 3), 40, 5, 2.0)
    assert bool(list_over) and not bool(too_small)
    _, list_over, cell_over, _ = search(X, C, (3, 3, 3), 4, 40, 2.0)
    assert bool(cell_over)
    _, _, _, too_small = search(X, C, (4, 4, 4), 40, 40, 2.5)  # cells ≈ 2.1 wide
    assert bool(too_small)


def test_rebuilds_through_strain_and_moves_keep_energies_exact():
    """864-atom LJ fcc (cutoff 2σ: a cell grid of 4 per side): after shears, strains and moves —
    some below the rebuild threshold, some above — the list energy equals the all-pairs
    energy; a small strain within the skin keeps the old list."""
    atoms = bulk("Ar", "fcc", a=1.55, cubic=True).repeat((6, 6, 6))
    atoms.positions += 0.03 * np.random.default_rng(1).standard_normal(atoms.positions.shape)
    system = System.from_ase(atoms)
    pot = potentials.lennard_jones(r_onset=1.5, r_cutoff=2.0)
    nl, dense = build(system, pot, neighbor_list=True), build(system, pot, False)
    nbrs = nl.allocate(system.positions, system.cell)
    assert nbrs.nlist.cell_list_fn is not None  # the grid path is the one under test
    update, e_nl, e_all = jax.jit(nl.update), jax.jit(nl.energy), jax.jit(dense.energy)
    params = pot.params

    # a strain well inside the skin budget: no rebuild, still exact
    small = np.eye(3) + 0.2 * nl.skin / (nl.cutoff + nl.skin) * np.eye(3)[[0]].T @ np.eye(3)[[1]]
    R, C = system.positions @ small, system.cell @ small
    kept = update(R, C, nbrs)
    np.testing.assert_array_equal(kept.nlist.idx, nbrs.nlist.idx)
    np.testing.assert_allclose(e_nl(R, C, params, kept), e_all(R, C, params, None), rtol=1e-12)

    rng = np.random.default_rng(7)
    R, C = system.positions, system.cell
    rebuilt = 0
    for step in range(4):
        strain = np.eye(3) + 0.02 * rng.standard_normal((3, 3))
        C = C @ strain
        R = R @ strain + 0.02 * rng.standard_normal(R.shape)
        new = update(R, C, nbrs)
        rebuilt += not np.array_equal(new.nlist.reference_position,
                                      nbrs.nlist.reference_position)
        nbrs = new
        assert not nl.overflowed(nbrs), step
        np.testing.assert_allclose(e_nl(R, C, params, nbrs), e_all(R, C, params, None),
                                   rtol=1e-12)
    assert rebuilt >= 2
    F_nl = jax.grad(e_nl)(R, C, params, nbrs)
    F_all = jax.grad(e_all)(R, C, params, None)
    np.testing.assert_allclose(F_nl, F_all, atol=1e-10)


def test_allocations_by_search_equal_jax_md(monkeypatch):
    """``allocate`` lists by the jitted search from the first allocation on (its layout
    set up by jax-md's rules, without jax-md's allocation): same neighbour sets, list
    width, cell size and (first) cell capacity as jax-md's allocation of the same state."""
    atoms = bulk("Ar", "fcc", a=1.55, cubic=True).repeat((6, 6, 6))
    system = System.from_ase(atoms)
    pot = potentials.lennard_jones(r_onset=1.5, r_cutoff=2.0)
    model = build(system, pot, neighbor_list=True)
    calls = []
    search = neighbors_module._dense_search
    monkeypatch.setattr(neighbors_module, "_dense_search",
                        lambda *a, **k: calls.append(1) or search(*a, **k))
    first = model.allocate(system.positions, system.cell)
    assert calls == [1]  # the first allocation ran the search
    R = system.positions + 0.05 * np.random.default_rng(3).standard_normal((len(atoms), 3))
    C = system.cell * 1.02
    searched = model.allocate(R, C, extra_capacity=2)
    assert calls == [1, 1]
    # references: jax-md's own allocation (new models, the template set-up switched off)
    monkeypatch.setattr(neighbors_module.NeighborListManager, "_new_search_template",
                        lambda self, *args: False)
    n = len(atoms)
    for (pos, cell, extra), got in (((system.positions, system.cell, 0), first),
                                    ((R, C, 2), searched)):
        reference = build(system, pot, neighbor_list=True).allocate(pos, cell,
                                                                    extra_capacity=extra)
        assert calls == [1, 1]
        assert got.nlist.idx.shape == reference.nlist.idx.shape
        for a, b in zip(np.asarray(got.nlist.idx), np.asarray(reference.nlist.idx),
                        strict=True):
            assert set(a[a < n]) == set(b[b < n])
        assert got.nlist.max_occupancy == reference.nlist.max_occupancy
        assert got.nlist.cell_size == reference.nlist.cell_size
        assert not model.overflowed(got)
    reference = build(system, pot, neighbor_list=True).allocate(system.positions, system.cell)
    assert first.nlist.cell_list_capacity == reference.nlist.cell_list_capacity


def test_dense_search_in_two_dimensions_matches_brute_force():
    """A skewed 2-D cell: every (i, j, image) within reach, by all pairs and all 9 images."""
    rng = np.random.default_rng(5)
    cell = np.array([[12.0, 0.0], [3.0, 10.5]])
    n, reach = 300, 2.2
    X = rng.random((n, 2))
    grid = tuple(int(w // reach) for w in _widths(cell))
    search = jax.jit(dense_search, static_argnums=(2, 3, 4, 5, 6))
    idx, *flags, slots = search(jnp.asarray(X), jnp.asarray(cell), grid, 40, 80, reach, True)
    assert not any(bool(f) for f in flags)
    R = X @ cell
    d = (R[None, :, None, :] + (image_shifts(2) @ cell)[None, None] - R[:, None, None, :])
    i, j, t = np.nonzero((np.linalg.norm(d, axis=-1) < reach)
                         & ~np.eye(n, dtype=bool)[..., None])
    idx, slots = np.asarray(idx), np.asarray(slots)
    rows, cols = np.nonzero(idx < n)
    got = set(zip(rows, slots[rows, cols] % n, slots[rows, cols] // n, strict=True))
    assert got == set(zip(i, j, t, strict=True)) and len(got) > 5 * n


class _RecordingSplit:
    """A ``split`` for ``dense_search`` without processes: ``gather`` records this rank's
    part and returns the parts given (or zeros while recording)."""

    def __init__(self, rank, size, parts=None):
        self.rank, self.size, self.parts, self.part = rank, size, parts, None

    def fits(self, shape, dtype):
        return True

    def gather(self, part):
        self.part = part
        if self.parts is None:
            return jnp.zeros((self.size * part.shape[0], *part.shape[1:]), part.dtype)
        return jnp.concatenate(self.parts)


def test_split_search_gives_every_sharer_the_whole_list():
    atoms = _random_atoms(n=400, seed=4)
    reach = 2.0
    grid = tuple(int(w // reach) for w in _widths(CELL))
    X, C = jnp.asarray(atoms.get_scaled_positions(wrap=True)), jnp.asarray(CELL)
    whole = dense_search(X, C, grid, 40, 60, reach, images=True)
    for size in (2, 3):  # 3 does not divide the cell count: the last range repeats a cell
        parts = []
        for rank in range(size):
            rec = _RecordingSplit(rank, size)
            dense_search(X, C, grid, 40, 60, reach, images=True, split=rec)
            parts.append(rec.part)
        # each sharer tested a size-th of the cells (the in-range work is split) ...
        assert all(p.shape[0] == parts[0].shape[0] for p in parts)
        assert parts[0].shape[0] * size < 1.5 * np.prod(grid) * 40
        for rank in range(size):
            # ... and, given the others' parts, finds exactly the unsplit list
            got = dense_search(X, C, grid, 40, 60, reach, images=True,
                               split=_RecordingSplit(rank, size, parts))
            for a, b in zip(got, whole):
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
            # a sharer with a row range lists those rows only, the others padded; the
            # overflow flags still hold for all rows
            rows = _RowsSplit(rank, size, parts)
            lo, hi = rows.row_range(len(atoms))
            got = dense_search(X, C, grid, 40, 60, reach, images=True, split=rows)
            for k in (0, 4):
                a, b = np.asarray(got[k]), np.asarray(whole[k])
                np.testing.assert_array_equal(a[lo:hi], b[lo:hi])
                assert np.all(np.delete(a, np.s_[lo:hi], axis=0) == b.max())
            narrow = dense_search(X, C, grid, 40, 12, reach, split=_RowsSplit(rank, size,
                                                                              parts))
            assert bool(narrow[1])  # some row, maybe another sharer's, needs more slots


class _RowsSplit(_RecordingSplit):
    def row_range(self, n):
        per = -(-n // self.size)
        return min(self.rank * per, n), min((self.rank + 1) * per, n)


def test_sharer_overflow_counts_atoms_not_padded_cell_slots():
    """A padded cell slot is tested at the origin. In a lattice with an atom there it finds
    that atom too: one more than any atom's 54 neighbours. A sharer's overflow flag counts
    atoms only, as the unsplit search does."""
    atoms = bulk("Ar", "fcc", a=1.55, cubic=True).repeat((6, 6, 6))
    X, C = jnp.asarray(atoms.get_scaled_positions(wrap=True)), jnp.asarray(atoms.cell[:])
    reach, grid = 2.2, (4, 4, 4)
    idx, over, *_ = dense_search(X, C, grid, 20, 54, reach)
    assert not bool(over) and int(np.max(np.sum(np.asarray(idx) < len(atoms), axis=1))) == 54
    parts = []
    for rank in range(2):
        rec = _RecordingSplit(rank, 2)
        dense_search(X, C, grid, 20, 54, reach, split=rec)
        parts.append(rec.part)
    counts = np.asarray(jax.lax.population_count(jnp.concatenate(parts))).sum(axis=1)
    assert counts.max() == 55  # the padded slots' count, which the flag must not take
    for rank in range(2):
        got = dense_search(X, C, grid, 20, 54, reach, split=_RowsSplit(rank, 2, parts))
        assert not bool(got[1])
