"""Shared test helpers: tree comparison and problems with known answers."""

from __future__ import annotations

import jax
import numpy as np


def tree_allclose(a, b, rtol: float = 1e-8, atol: float = 1e-10) -> bool:
    """True when two pytrees have the same structure and allclose leaves."""
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    if ta != tb:
        return False
    return all(
        np.allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol) for x, y in zip(la, lb)
    )


def assert_tree_allclose(a, b, rtol: float = 1e-8, atol: float = 1e-10) -> None:
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb, f"tree structures differ: {ta} vs {tb}"
    for x, y in zip(la, lb):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def central_difference(f, x: float, h: float = 1e-6):
    """Central finite difference (f(x + h) − f(x − h)) / 2h of a scalar-argument function."""
    return jax.tree.map(lambda p, m: (np.asarray(p) - np.asarray(m)) / (2 * h), f(x + h), f(x - h))


def random_systems(rng, n: int = 12):
    """Dense test matrices: SPD, symmetric indefinite, nonsymmetric, singular-consistent."""
    B = rng.normal(size=(n, n))
    spd = B @ B.T + n * np.eye(n)
    eigvals = np.concatenate([-np.linspace(1, 3, n // 2), np.linspace(1, 3, n - n // 2)])
    Q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    sym_indef = Q @ np.diag(eigvals) @ Q.T
    nonsym = B + n * np.eye(n) * 0.5
    # Singular symmetric PSD: null space spanned by the constant vector (like a periodic
    # Hessian's rigid translation).
    ones = np.ones(n) / np.sqrt(n)
    P = np.eye(n) - np.outer(ones, ones)
    singular = P @ spd @ P
    return {"spd": spd, "sym_indef": sym_indef, "nonsym": nonsym, "singular": singular,
            "null_vector": ones}


def binary_lj_crystal(a: float, repeat: int, rattle: float, seed: int):
    """Disordered binary Ar/Kr fcc crystal (species alternating by index) with per-pair LJ σ:
    ``(System, potential)``."""
    from ase.build import bulk

    from mdsens.md import System, potentials

    atoms = bulk("Ar", "fcc", a=a, cubic=True).repeat((repeat,) * 3)
    atoms.rattle(rattle, seed=seed)
    atoms.set_chemical_symbols(np.array(["Ar", "Kr"])[np.arange(len(atoms)) % 2])
    pot = potentials.get("lj", sigma={("Ar", "Ar"): 3.4, ("Ar", "Kr"): 3.5,
                                      ("Kr", "Kr"): 3.6}, epsilon=0.0104)
    return System.from_ase(atoms), pot
