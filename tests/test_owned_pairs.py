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
from mdsens.md.neighbors import owned_counts, owned_slots, owns
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
    assert all(owns(i, j) for i, j in pairs_owned)
    assert {(min(p), max(p)) for p in pairs_owned} == {(min(p), max(p)) for p in pairs_full}
    assert len(pairs_owned) == len(pairs_full) // 2
    # the image slot of an owned entry is the full list's slot for that pair
    full_slot = {(i, j): s for i in range(n) for j, s in zip(idx[i], np.asarray(nbrs.images)[i])
                 if j < n}
    assert all(full_slot[(i, a)] == s for i in range(n) for a, s in zip(atoms[i], owned[i])
               if a < n)
    # counts, and the overflow flag when the width is too small
    counts = np.asarray(owned_counts(nbrs.nlist.idx))
    assert counts.sum() == len(pairs_owned)
    _, over = owned_slots(nbrs.nlist.idx, nbrs.images, int(counts.max()), 3)
    _, over_small = owned_slots(nbrs.nlist.idx, nbrs.images, int(counts.max()) - 1, 3)
    assert not bool(over) and bool(over_small)


def _full(nbrs):
    return dataclasses.replace(nbrs, owned=None)


@pytest.mark.parametrize("with_images", [True, False])
def test_owned_force_loop_matches_full_rows(liquid, with_images):
    model, R, C, nbrs = liquid
    if not with_images:
        owned, _ = owned_slots(nbrs.nlist.idx, None, nbrs.owned.shape[-1], 3)
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
