r"""Zero modes of the Hessian of a relaxed structure.

The energy is invariant under rigid translations (periodic and free systems) and rotations
(free systems), so the Hessian :math:`H = \partial^2 E / \partial R^2` is singular along them.
Rattlers — atoms, or directions of an atom, with no stiffness — add exact zero modes: for a
positive semi-definite :math:`H`, a zero eigenvalue of an atom's diagonal block
:math:`H_{ii}` (d × d) means the whole row and column vanish in that direction.

Modes are returned as a basis ``(k, N, d)`` (not yet orthonormal; the linear solvers
orthonormalise). Derivatives are then reported as minimum-norm solutions: no component along
the zero modes (centre of mass fixed, no rigid rotation, rattlers do not move).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

RATTLER_THRESHOLD = 1e-10
"""A direction of an atom is floppy when its diagonal-block eigenvalue is below this
fraction of the largest diagonal-block eigenvalue."""

MAX_ATOMS_FOR_RATTLER_SCAN = 4000
"""Rattler detection needs N·d Hessian-vector products; above this size it is skipped
(a solve whose right-hand side excites a missed rattler then fails to converge and says so)."""


def rigid_modes(positions: Array, periodic: bool) -> Array:
    """Translations (d modes) and, for free systems, rotations about the centre of mass
    (1 in 2D, 3 in 3D), as a ``(k, N, d)`` array."""
    n, d = positions.shape
    modes = [jnp.zeros((n, d), positions.dtype).at[:, a].set(1.0) for a in range(d)]
    if not periodic:
        x = positions - positions.mean(axis=0)
        if d == 2:
            modes.append(jnp.stack([-x[:, 1], x[:, 0]], axis=1))
        else:
            for axis in range(3):
                omega = jnp.zeros(3, positions.dtype).at[axis].set(1.0)
                modes.append(jnp.cross(omega, x))
    return jnp.stack(modes)


def diagonal_blocks(hvp: Callable[[Array], Array], n: int, d: int, dtype) -> Array:
    r"""Per-atom Hessian blocks :math:`H_{ii}` ``(N, d, d)`` from ``N d`` Hessian-vector
    products, batched with ``vmap`` over each atom's d directions and mapped over atoms."""

    def block(i):
        def column(a):
            e = jnp.zeros((n, d), dtype).at[i, a].set(1.0)
            return hvp(e)[i]

        return jax.vmap(column)(jnp.arange(d))

    return jax.lax.map(block, jnp.arange(n))


def rattler_modes(blocks: np.ndarray, threshold: float = RATTLER_THRESHOLD):
    """Zero modes localised on single atoms from the diagonal blocks ``(N, d, d)``.

    Returns ``(modes (k, N, d), atoms (indices of atoms with at least one floppy
    direction))``.
    """
    blocks = np.asarray(blocks)
    n, d, _ = blocks.shape
    sym = 0.5 * (blocks + np.swapaxes(blocks, 1, 2))
    w, v = np.linalg.eigh(sym)
    scale = max(float(np.abs(w).max()), np.finfo(float).tiny)
    modes, atoms = [], []
    for i in range(n):
        floppy = w[i] <= threshold * scale
        for a in np.nonzero(floppy)[0]:
            m = np.zeros((n, d))
            m[i] = v[i][:, a]
            modes.append(m)
        if floppy.any():
            atoms.append(i)
    if not modes:
        return np.zeros((0, n, d)), np.array([], int)
    return np.stack(modes), np.array(atoms, int)
