"""Owned pairs (``Neighbors.owned``): every pair of the full list once, in the row of the
atom that owns it, and the pair-potential force loop that evaluates each pair once and
scatters its force. Checked against the full list (the ownership rule, the sets) and
against the full-row force loop (energy, forces, stress, Hessian-vector products) to
rounding, with and without image slots, after list updates, and on worker processes."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdsens.md import System, build, lennard_jones
from mdsens.md.neighbors import _image_slots, half_space_keys, owned_counts, owned_slots, owns
from mdsens.md.potentials.pair import PairPotential

jax.config.update("jax_enable_x64", True)

KA = dict(sigma=np.array([[1.0, 0.8], [0.8, 0.88]]), epsilon=np.array([[1.0, 1.5], [1.5, 0.5]]),
          species=("A", "B"))


def ka_liquid(n: int = 1600, seed: int = 0) -> System:
    """A Kob–Andersen liquid at density 1.2 from a jittered lattice (no overlaps)."""
    rng = np.random.default_rng(seed)
    L = (n / 1.2) ** (1 / 3)
    k = int(np.ceil(n ** (1 / 3)))
    g = np.stack(np.meshgrid(*[np.arange(k)] * 3, indexing="ij"), -1).reshape(-1, 3)[:n]
    R = (g + 0.5 + 0.15 * rng.standard_normal((n, 3))) * (L / k)
    species = ["A"] * int(0.8 * n) + ["B"] * (n - int(0.8 * n))
    rng.shuffle(species)
    return System.create(R, np.eye(3) * L, species=species)


@pytest.fixture(scope="module")
def liquid():
    system = ka_liquid()
    pot = lennard_jones(**KA)
    model = build(system, pot)
    R, C = jnp.asarray(system.positions), jnp.asarray(system.cell)
    return model, R, C, model.allocate(R, C)


def test_ownership_rule_picks_exactly_one_atom_of_every_pair():
    i, j = np.meshgrid(np.arange(60), np.arange(60), indexing="ij")
    o = np.asarray(owns(jnp.asarray(i), jnp.asarray(j)))
    off = i != j
    assert np.all((o ^ o.T)[off])  # exactly one of (i, j) and (j, i)
    counts = o[off].reshape(60, 59).sum(axis=1)
    assert counts.min() >= 29 - 1 and counts.max() <= 30 + 1  # about half for every atom


def test_half_space_rule_picks_exactly_one_atom_of_every_pair():
    """Every pair of every atom (all n - 1 entries per row, at the minimum image) of points
    in a triclinic cell, with ties on purpose: atoms sharing a coordinate, and two on the
    same point (key 0: parity decides)."""
    rng = np.random.default_rng(3)
    X = rng.random((48, 3))
    X[1:8, 0] = X[0, 0]
    X[9] = X[8]
    n = len(X)
    C = jnp.asarray([[5.0, 0.0, 0.0], [1.0, 5.0, 0.0], [0.5, -1.0, 5.0]])
    idx = np.array([[j for j in range(n) if j != i] for i in range(n)])
    idx = jnp.asarray(np.concatenate([idx, np.full((n, 2), n)], axis=1))  # padding slots
    Xj = jnp.asarray(X)
    slots = _image_slots(Xj, C, Xj @ C, idx)
    key = np.asarray(half_space_keys(Xj, idx, slots))
    assert np.all(key[:, -2:] == 0) and key[9, 8] == 0 and key[8, 8] == 0  # 9 -> 8, 8 -> 9
    o = np.asarray(owns(jnp.arange(n)[:, None], idx, jnp.asarray(key)))[:, :-2]
    full = np.zeros((n, n), bool)
    full[np.arange(n)[:, None], np.asarray(idx)[:, :-2]] = o
    off = ~np.eye(n, dtype=bool)
    assert np.all((full ^ full.T)[off])  # exactly one of (i, j) and (j, i)
    keys = np.zeros((n, n))
    keys[np.arange(n)[:, None], np.asarray(idx)[:, :-2]] = key[:, :-2]
    assert np.array_equal(keys, -keys.T)  # exactly antisymmetric
    # owned_counts with slots and positions: this split or the parity one, the narrower
    counts = np.asarray(owned_counts(idx, slots, Xj))
    parity = np.asarray(owned_counts(idx))
    half = full.sum(axis=1)
    assert np.array_equal(counts, half if half.max() <= parity.max() else parity)


def test_lists_split_by_the_rule_with_the_smaller_largest_row(liquid):
    """Half-space wins in a homogeneous liquid; parity where the system has a gap (this
    jittered lattice misses its last planes: atoms facing the gap have all their
    neighbours on one side)."""
    model, R, C, nbrs = liquid
    X = jnp.asarray(np.mod(np.asarray(R) @ np.linalg.inv(np.asarray(C)), 1.0))
    idx = nbrs.nlist.idx
    n = idx.shape[0]
    i = jnp.arange(n)[:, None]
    real = np.asarray(idx < n)
    half = (real & np.asarray(owns(i, idx, half_space_keys(X, idx, nbrs.images)))).sum(1)
    parity = (real & np.asarray(owns(i, idx))).sum(1)
    assert half.sum() == parity.sum()  # the same pairs, split otherwise
    assert parity.max() < half.max()  # the gap
    assert np.array_equal(np.asarray(owned_counts(idx, nbrs.images, X)), parity)
    # a crystal in shuffled order: parity splits rows binomially, half-space in halves
    rng = np.random.default_rng(4)
    cells = np.stack(np.meshgrid(*[np.arange(7)] * 3, indexing="ij"), -1).reshape(-1, 1, 3)
    basis = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    R2 = ((cells + basis).reshape(-1, 3) * 1.55 + 0.02 * rng.standard_normal((1372, 3)))
    crystal = System.create(rng.permutation(R2), np.eye(3) * 7 * 1.55)
    m2 = build(crystal, lennard_jones())
    R2, C2 = jnp.asarray(crystal.positions), jnp.asarray(crystal.cell)
    nb2 = m2.allocate(R2, C2)
    X2 = jnp.asarray(np.mod(np.asarray(R2) @ np.linalg.inv(np.asarray(C2)), 1.0))
    idx2 = nb2.nlist.idx
    real2 = np.asarray(idx2 < idx2.shape[0])
    half2 = (real2 & np.asarray(owns(jnp.arange(idx2.shape[0])[:, None], idx2,
                                     half_space_keys(X2, idx2, nb2.images)))).sum(1)
    parity2 = np.asarray(owned_counts(idx2))
    assert half2.max() < parity2.max() and half2.std() < 0.5 * parity2.std()
    assert np.array_equal(np.asarray(owned_counts(idx2, nb2.images, X2)), half2)
    assert nb2.owned.shape[-1] == int(half2.max() * m2.capacity_multiplier)


def test_model_lists_owned_pairs_only_in_its_size_range(liquid):
    model, R, C, nbrs = liquid
    assert model.neighbor_lists.owned_pairs and nbrs.owned is not None
    lo, hi = PairPotential.owned_pairs
    assert lo < model.n_atoms <= hi
    small = ka_liquid(500)
    assert build(small, lennard_jones(**KA)).allocate(
        jnp.asarray(small.positions), jnp.asarray(small.cell)).owned is None


def test_owned_slots_are_the_owned_half_of_the_full_list(liquid):
    model, R, C, nbrs = liquid
    n = model.n_atoms
    idx = np.asarray(nbrs.nlist.idx)
    assert nbrs.images is not None
    owned = np.asarray(nbrs.owned)
    pad = n * 27
    atoms = np.where(owned < pad, owned % n, n)
    pairs_owned = {(i, j) for i in range(n) for j in atoms[i] if j < n}
    pairs_full = {(i, j) for i in range(n) for j in idx[i] if j < n}
    X = np.mod(np.asarray(R) @ np.linalg.inv(np.asarray(C)), 1.0)
    d = np.asarray(half_space_keys(jnp.asarray(X), nbrs.nlist.idx, nbrs.images))
    rule = np.asarray(owns(jnp.arange(n)[:, None], nbrs.nlist.idx))  # parity wins here
    by_half = (nbrs.nlist.idx < n) & owns(jnp.arange(n)[:, None], nbrs.nlist.idx,
                                          jnp.asarray(d))
    chosen = owned_counts(nbrs.nlist.idx, nbrs.images, jnp.asarray(X))
    assert int(chosen.max()) < int(by_half.sum(1).max())
    assert {(i, j) for i in range(n) for j, o in zip(idx[i], rule[i]) if j < n and o} \
        == pairs_owned
    assert {(min(p), max(p)) for p in pairs_owned} == {(min(p), max(p)) for p in pairs_full}
    assert len(pairs_owned) == len(pairs_full) // 2
    # the image slot of an owned entry is the full list's slot for that pair
    full_slot = {(i, j): s for i in range(n) for j, s in zip(idx[i], np.asarray(nbrs.images)[i])
                 if j < n}
    assert all(full_slot[(i, a)] == s for i in range(n) for a, s in zip(atoms[i], owned[i])
               if a < n)
    # counts, and the overflow flag when the width is too small
    counts = np.asarray(owned_counts(nbrs.nlist.idx, nbrs.images, jnp.asarray(X)))
    assert counts.sum() == len(pairs_owned)
    _, over = owned_slots(nbrs.nlist.idx, nbrs.images, int(counts.max()), 3, jnp.asarray(X))
    _, over_small = owned_slots(nbrs.nlist.idx, nbrs.images, int(counts.max()) - 1, 3,
                                jnp.asarray(X))
    assert not bool(over) and bool(over_small)


def _full(nbrs):
    return dataclasses.replace(nbrs, owned=None)


@pytest.mark.parametrize("with_images", [True, False])
def test_owned_force_loop_matches_full_rows(liquid, with_images):
    model, R, C, nbrs = liquid
    if not with_images:
        owned, over = owned_slots(nbrs.nlist.idx, None, nbrs.nlist.idx.shape[-1], 3)
        assert not bool(over)  # by parity, as wide as the full list
        nbrs = dataclasses.replace(nbrs, images=None, owned=owned)
    value_and_grad = jax.jit(jax.value_and_grad(model.energy))
    e1, g1 = value_and_grad(R, C, None, nbrs)
    e0, g0 = value_and_grad(R, C, None, _full(nbrs))
    assert abs(float(e1 - e0)) <= 1e-12 * abs(float(e0))
    assert float(jnp.max(jnp.abs(g1 - g0))) <= 1e-11 * float(jnp.max(jnp.abs(g0)))
    s1, s0 = model.stress(R, C, None, nbrs), model.stress(R, C, None, _full(nbrs))
    assert float(jnp.max(jnp.abs(s1 - s0))) <= 1e-11 * float(jnp.max(jnp.abs(s0)))
    v = jnp.asarray(np.random.default_rng(1).standard_normal(R.shape))

    def hvp(nb):
        return jax.jvp(lambda x: jax.grad(model.energy)(x, C, None, nb), (R,), (v,))[1]

    h1, h0 = hvp(nbrs), hvp(_full(nbrs))
    assert float(jnp.max(jnp.abs(h1 - h0))) <= 1e-10 * float(jnp.max(jnp.abs(h0)))


def test_updated_owned_list_matches_a_fresh_full_list(liquid):
    model, R, C, nbrs = liquid
    R2 = R + 0.3 * jnp.asarray(np.random.default_rng(2).standard_normal(R.shape))  # rebuilds
    new = jax.jit(model.update)(R2, C, nbrs)
    assert not bool(model.overflowed(new))
    fresh = model.allocate(R2, C)
    e1, g1 = jax.value_and_grad(model.energy)(R2, C, None, new)
    e0, g0 = jax.value_and_grad(model.energy)(R2, C, None, _full(fresh))
    assert abs(float(e1 - e0)) <= 1e-12 * abs(float(e0))
    assert float(jnp.max(jnp.abs(g1 - g0))) <= 1e-11 * float(jnp.max(jnp.abs(g0)))


def test_owned_width_overflow_is_reported_as_list_overflow(liquid):
    model, R, C, nbrs = liquid
    narrow = dataclasses.replace(nbrs, owned=nbrs.owned[:, :4])
    new = model.update(R, C, narrow, force=True)
    assert bool(model.overflowed(new))


class _Rows:
    """A ``split`` for ``owned_slots`` without processes: rank ``rank`` of ``size`` with
    its ``row_range``; ``most`` records this rank's values and returns the elementwise
    largest of the values ``seen`` from every rank (its own while recording)."""

    def __init__(self, rank, size, seen=None):
        self.rank, self.size, self.seen, self.values = rank, size, seen, None

    def fits(self, shape, dtype):
        return True

    def row_range(self, n):
        per = -(-n // self.size)
        return min(self.rank * per, n), min((self.rank + 1) * per, n)

    def most(self, values):
        self.values = values
        return values if self.seen is None else jnp.max(jnp.stack(self.seen), axis=0)


def test_sharers_derive_their_own_owned_rows_by_one_rule():
    """Each process derives the owned rows it evaluates: its rows equal the whole list's,
    the others are padding, and an overflow anywhere is reported to every rank. The rule
    is agreed: with the liquid's atoms ordered by distance from its gap (the atoms facing
    it last), half-space wins overall while the last of three ranks alone would pick
    parity."""
    liquid = ka_liquid()
    R0, L = np.asarray(liquid.positions), float(np.asarray(liquid.cell)[0, 0])
    gap = 11.5 / 12 * L  # ka_liquid's last lattice plane is almost empty
    order = np.argsort(-np.abs((R0[:, 0] - gap + L / 2) % L - L / 2), kind="stable")
    system = System.create(R0[order], np.asarray(liquid.cell),
                           species=np.asarray(liquid.species)[order],
                           species_names=liquid.species_names)
    model = build(system, lennard_jones(**KA))
    R, C = jnp.asarray(system.positions), jnp.asarray(system.cell)
    nbrs = model.allocate(R, C)
    n = model.n_atoms
    idx, images = nbrs.nlist.idx, nbrs.images
    X = jnp.asarray(np.mod(np.asarray(R) @ np.linalg.inv(np.asarray(C)), 1.0))
    widest = int(np.asarray(owned_counts(idx, images, X)).max())
    for width in (widest, widest - 1):
        whole, over = owned_slots(idx, images, width, 3, X)
        assert bool(over) == (width < widest)
        for size in (2, 3):
            seen = []
            for rank in range(size):
                rec = _Rows(rank, size)
                owned_slots(idx, images, width, 3, X, rec)
                seen.append(np.asarray(rec.values))
            half_wins = np.max(seen, axis=0)
            assert half_wins[0] <= half_wins[1]
            if size == 3:
                assert seen[2][0] > seen[2][1]  # alone, the last rank would pick parity
            for rank in range(size):
                rows = _Rows(rank, size, [jnp.asarray(v) for v in seen])
                got, got_over = owned_slots(idx, images, width, 3, X, rows)
                lo, hi = rows.row_range(n)
                np.testing.assert_array_equal(np.asarray(got[lo:hi]), np.asarray(whole[lo:hi]))
                assert np.all(np.delete(np.asarray(got), np.s_[lo:hi], axis=0) == n * 27)
                assert bool(got_over) == bool(over)
