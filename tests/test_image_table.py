"""Image tables (``Neighbors.table``): the image slots of a list renumbered into a short
table of the atoms, a padding entry and the ghosts (the images near the cell's faces).
Checked against the image slots themselves (every slot decodes to the same atom and
image, every image a list names is a ghost), against the force loop without the table
(energy, forces, stress and Hessian-vector products bit for bit), after rebuilds, in
stacked lists, for ghost overflow, and through a whole relaxation."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdsens.md import System, build, lennard_jones, relax
from mdsens.md._driver import common_lists
from mdsens.md.neighbors import NeighborListManager, _ghost_mask, _image_table_host, image_table
from mdsens.md.potentials.pair import PairPotential

jax.config.update("jax_enable_x64", True)

CENTRE = 13  # the centre image of 3^3


def fcc(k: int = 8, a: float = 1.5496, noise: float = 0.05, seed: int = 0,
        tilt: float = 0.0) -> System:
    """LJ fcc of 4 k³ atoms (2048 for k = 8), rattled, in a cell sheared by ``tilt``."""
    rng = np.random.default_rng(seed)
    base = np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
    g = np.stack(np.meshgrid(*[np.arange(k)] * 3, indexing="ij"), -1).reshape(-1, 3)
    S = ((g[:, None, :] + base[None]).reshape(-1, 3)) / k
    cell = np.eye(3) * k * a
    cell[1, 0] = tilt * k * a
    R = S @ cell + noise * rng.standard_normal(S.shape)
    return System.create(R, cell)


def with_table(system: System, **kw):
    """A model of ``system`` whose lists carry image tables and no owned pairs (at 2048
    atoms the library's rule would list owned pairs instead)."""
    model = build(system, lennard_jones(), **kw)
    lists = NeighborListManager.create(system.positions, system.cell, model.cutoff,
                                       model.skin, model.capacity_multiplier,
                                       image_table=True)
    return dataclasses.replace(model, neighbor_lists=lists)


def decode(table, n: int) -> np.ndarray:
    """The image slots (``j + N t``, padding ``27 N``) a table's slots stand for."""
    slots, ghosts = np.asarray(table.slots), np.asarray(table.ghosts)
    out = np.where(slots < n, CENTRE * n + slots, 27 * n)
    ghost = slots > n
    out[ghost] = ghosts[slots[ghost] - n - 1]
    return out


@pytest.fixture(scope="module", params=[0.0, 0.3], ids=["cubic", "triclinic"])
def crystal(request):
    system = fcc(tilt=request.param)
    model = with_table(system)
    R, C = jnp.asarray(system.positions), jnp.asarray(system.cell)
    return model, R, C, model.allocate(R, C)


def test_table_stands_for_the_image_slots(crystal):
    model, R, C, nbrs = crystal
    n = model.n_atoms
    assert nbrs.table is not None and nbrs.owned is None
    images = np.asarray(nbrs.images)
    assert np.array_equal(decode(nbrs.table, n), images)
    # every image the list names (other than the atoms' own) is a ghost, and the ghosts
    # are far fewer than the 26 N other images
    named = set(np.unique(images[(images < 27 * n) & (images // n != CENTRE)]).tolist())
    ghosts = np.asarray(nbrs.table.ghosts)
    count = int(np.sum(_ghost_mask(np.asarray(model.neighbor_lists.list_positions(R, C)),
                                   np.asarray(C), model.neighbor_lists.reach)))
    assert named <= set(ghosts[:count].tolist())
    assert len(named) < count < 4 * n
    assert np.all(np.diff(ghosts[:count]) > 0)  # increasing slot order
    assert np.all(ghosts[count:] == CENTRE * n)  # spare entries: atom 0's own image
    # the allocation's table (numpy) is the one a rebuild computes (jax)
    lists = model.neighbor_lists
    traced, over = jax.jit(image_table, static_argnums=(3, 4))(
        nbrs.images, lists.list_positions(R, C), C, lists.reach, ghosts.shape[0])
    assert not bool(over)
    assert np.array_equal(np.asarray(traced.slots), np.asarray(nbrs.table.slots))
    assert np.array_equal(np.asarray(traced.ghosts), ghosts)


def test_forces_with_the_table_equal_those_without_bit_for_bit(crystal):
    model, R, C, nbrs = crystal
    plain = dataclasses.replace(nbrs, table=None)
    R = R + 0.01 * jnp.asarray(np.random.default_rng(1).standard_normal(R.shape))
    value_and_grad = jax.jit(jax.value_and_grad(model.energy))
    e1, g1 = value_and_grad(R, C, None, nbrs)
    e0, g0 = value_and_grad(R, C, None, plain)
    assert float(e1) == float(e0)
    assert np.array_equal(np.asarray(g1), np.asarray(g0))
    s1, s0 = model.stress(R, C, None, nbrs), model.stress(R, C, None, plain)
    assert np.array_equal(np.asarray(s1), np.asarray(s0))
    v = jnp.asarray(np.random.default_rng(2).standard_normal(R.shape))

    def hvp(nb):
        return jax.jvp(lambda x: jax.grad(model.energy)(x, C, None, nb), (R,), (v,))[1]

    assert np.array_equal(np.asarray(hvp(nbrs)), np.asarray(hvp(plain)))


def test_rebuilt_table_is_the_fresh_allocations(crystal):
    model, R, C, nbrs = crystal
    R2 = R + 0.2 * jnp.asarray(np.random.default_rng(3).standard_normal(R.shape))
    new = jax.jit(model.update)(R2, C, nbrs)  # atoms moved > skin / 2: a rebuild
    assert not bool(model.overflowed(new))
    assert np.array_equal(decode(new.table, model.n_atoms), np.asarray(new.images))
    fresh = model.allocate(R2, C)
    e1, g1 = jax.value_and_grad(model.energy)(R2, C, None, new)
    e0, g0 = jax.value_and_grad(model.energy)(R2, C, None, dataclasses.replace(fresh,
                                                                                table=None))
    assert abs(float(e1 - e0)) <= 1e-12 * abs(float(e0))
    assert float(jnp.max(jnp.abs(g1 - g0))) <= 1e-12 * float(jnp.max(jnp.abs(g0)))


def test_too_many_ghosts_are_reported_as_list_overflow(crystal):
    model, R, C, nbrs = crystal
    lists = model.neighbor_lists
    X = lists.list_positions(R, C)
    _, over = image_table(nbrs.images, X, C, lists.reach, 8)
    assert bool(over)
    # a slot outside the ghosts (here: ghosts of a shorter reach) fails the table too
    capacity = nbrs.table.ghosts.shape[0]
    assert not bool(image_table(nbrs.images, X, C, lists.reach, capacity)[1])
    assert bool(image_table(nbrs.images, X, C, 0.5 * lists.reach, capacity)[1])
    assert _image_table_host(nbrs.images, X, C, 0.5 * lists.reach, 1.25) is None
    assert _image_table_host(nbrs.images, X, C, lists.reach, 1.25) is not None
    small = dataclasses.replace(nbrs, table=dataclasses.replace(
        nbrs.table, ghosts=nbrs.table.ghosts[:8]))
    assert not bool(model.overflowed(small))
    assert bool(model.overflowed(model.update(R, C, small, force=True)))


def test_stacked_lists_pad_their_tables(crystal):
    model, R, C, nbrs = crystal
    n = model.n_atoms
    R2 = R + 0.05 * jnp.asarray(np.random.default_rng(4).standard_normal(R.shape))
    other = model.allocate(R2, C, extra_capacity=3)  # a wider list, another table
    small = dataclasses.replace(nbrs, table=dataclasses.replace(
        nbrs.table, ghosts=nbrs.table.ghosts[:int(nbrs.table.ghosts.shape[0]) - 5]))
    small = model.update(R, C, small)  # (no rebuild: same table, shorter capacity)
    stacked = common_lists(model, [small, other])
    assert stacked.table.slots.shape[1:] == stacked.images.shape[1:]
    for k, member in enumerate([small, other]):
        mine = jax.tree.map(lambda x, k=k: x[k], stacked)
        assert np.array_equal(decode(mine.table, n), np.asarray(stacked.images[k]))
        e = model.energy(R, C, None, mine)
        e0 = model.energy(R, C, None, member)  # (wider rows: another summation order)
        assert abs(float(e - e0)) <= 1e-13 * abs(float(e0))


def test_library_lists_carry_tables_only_above_the_owned_range():
    lo, hi = PairPotential.owned_pairs
    assert PairPotential.image_table_above == lo
    owned = build(fcc(k=8), lennard_jones())  # 2048 atoms: owned pairs, no table
    assert owned.neighbor_lists.owned_pairs and not owned.neighbor_lists.image_table
    large = fcc(k=15, noise=0.0)  # 13500 atoms
    assert large.n_atoms > hi
    assert build(large, lennard_jones()).neighbor_lists.image_table


def test_relaxation_with_the_table_takes_the_same_steps():
    system = fcc(k=8, noise=0.08, seed=5)
    plain = build(system, lennard_jones(), neighbor_list=True)
    plain = dataclasses.replace(plain, neighbor_lists=NeighborListManager.create(
        system.positions, system.cell, plain.cutoff, plain.skin, plain.capacity_multiplier))
    tabled = with_table(system)
    a = relax(system, plain, fmax=1e-6)
    b = relax(system, tabled, fmax=1e-6)
    assert a.converged and b.converged and a.steps == b.steps
    assert float(a.energy) == float(b.energy)
    assert np.array_equal(np.asarray(a.system.positions), np.asarray(b.system.positions))
