"""System pytree: construction, ASE round trips, boundary conditions, dtypes.

Float64 is enabled by tests/conftest.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, fcc111, molecule

from mdsens.md import System


def _assert_same_atoms(a, b):
    assert a.get_chemical_symbols() == b.get_chemical_symbols()
    np.testing.assert_allclose(a.positions, b.positions, rtol=0, atol=1e-14)
    np.testing.assert_allclose(a.cell.array, b.cell.array, rtol=0, atol=1e-14)
    assert tuple(a.pbc) == tuple(b.pbc)


def test_round_trip_triclinic():
    atoms = bulk("NaCl", "rocksalt", a=5.64).repeat((2, 1, 1))  # fcc primitive: triclinic
    atoms.cell = atoms.cell.array @ np.array([[1, 0.1, 0], [0, 1, 0.05], [0, 0, 1]])
    atoms.rattle(0.05, seed=1)
    system = System.from_ase(atoms)
    assert system.n_atoms == 4 and system.dim == 3 and system.is_periodic
    assert system.species_names == ("Na", "Cl")  # by atomic number
    np.testing.assert_array_equal(system.species, [0, 1, 0, 1])
    assert system.positions.dtype == jnp.float64 and system.species.dtype == jnp.int32
    np.testing.assert_allclose(system.volume, atoms.get_volume(), rtol=1e-13)
    _assert_same_atoms(system.to_ase(), atoms)


def test_round_trip_free_molecule():
    atoms = molecule("CH3CH2OH")
    system = System.from_ase(atoms)
    assert not system.is_periodic and system.pbc == (False, False, False)
    assert system.species_names == ("H", "C", "O")
    _assert_same_atoms(system.to_ase(), atoms)


def test_mixed_pbc_refused_or_padded():
    slab = fcc111("Cu", size=(2, 2, 3), vacuum=None)  # pbc (True, True, False), c = 0
    slab.pbc = (True, True, False)
    with pytest.raises(ValueError, match="mixed periodic boundary conditions"):
        System.from_ase(slab)
    with pytest.raises(ValueError, match="mixed"):
        System.create(slab.positions, slab.cell.array, pbc=(True, True, False))
    padded = System.from_ase(slab, vacuum=6.0)
    assert padded.is_periodic and padded.n_atoms == 12
    cell = np.asarray(padded.cell)
    np.testing.assert_allclose(cell[:2], slab.cell.array[:2], atol=1e-12)
    z = np.asarray(padded.positions)[:, 2]
    height = cell[2] @ np.cross(cell[0], cell[1]) / np.linalg.norm(np.cross(cell[0], cell[1]))
    np.testing.assert_allclose(height - (z.max() - z.min()), 12.0, atol=1e-10)
    assert z.min() > 5.99  # atoms centred: 6 Å vacuum on each side
    assert slab.pbc.tolist() == [True, True, False]  # the input is not modified


def test_create_species_and_cell_forms():
    R = np.array([[0.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0]])
    s = System.create(R, cell=[5.0, 6.0, 7.0], species=["Kr", "Ar", "Kr"])
    np.testing.assert_allclose(s.cell, np.diag([5.0, 6.0, 7.0]))
    assert s.species_names == ("Ar", "Kr") and s.species.tolist() == [1, 0, 1]
    s2 = System.create(R, np.eye(3) * 5, species=[1, 0, 1], species_names=("A", "B"))
    assert s2.species_names == ("A", "B") and s2.pbc == (True, True, True)
    with pytest.raises(ValueError, match="not chemical symbols"):
        s2.to_ase()
    free = System.create(R)
    assert not free.is_periodic and free.species_names == ("X",)
    with pytest.raises(ValueError, match="shape"):
        System.create(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="non-singular"):
        System.create(R, np.zeros((3, 3)), pbc=True)
    with pytest.raises(ValueError, match="species_names"):
        System.create(R, species=[0, 1, 0])


def test_dtypes_float64_default_float32_respected():
    R64 = System.create([[0, 0, 0], [1, 1, 1]], np.eye(3) * 4)
    assert R64.positions.dtype == jnp.float64 and R64.cell.dtype == jnp.float64
    R32 = System.create(np.zeros((2, 3), np.float32), np.eye(3, dtype=np.float32) * 4)
    assert R32.positions.dtype == jnp.float32 and R32.cell.dtype == jnp.float32


def test_is_a_pytree_with_static_metadata():
    system = System.from_ase(Atoms("ArKr", positions=[[0, 0, 0], [2, 0, 0]], cell=[6, 6, 6],
                                   pbc=True))
    leaves, treedef = jax.tree.flatten(system)
    assert len(leaves) == 3

    @jax.jit
    def centred(s: System) -> System:
        return s.replace(positions=s.positions - s.positions.mean(0))

    out = centred(system)
    assert isinstance(out, System) and out.species_names == ("Ar", "Kr") and out.pbc == system.pbc
    np.testing.assert_allclose(out.positions[:, 0], [-1.0, 1.0])
    # species is an int leaf: differentiate a System with allow_int=True
    grads = jax.grad(lambda s: jnp.sum(s.positions**2) + jnp.sum(s.cell), allow_int=True)(system)
    np.testing.assert_allclose(grads.positions, 2 * system.positions)
    np.testing.assert_allclose(grads.cell, np.ones((3, 3)))
