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

MAX_ATOMS_FOR_RATTLER_SCAN = 500
"""``rattlers="auto"`` scans for rattlers up to this many atoms (larger systems: pass
``rattlers=True``)."""


def rigid_modes(positions: Array, periodic: bool) -> Array:
    """Translations (d modes) and, for free systems, rotations about the centre of mass
    (1 in 2D, 3 in 3D), as a ``(k, N, d)`` array."""
    n, d = positions.shape
    if periodic:  # built on the host: no eager programs
        modes = np.zeros((d, n, d), positions.dtype)
        modes[np.arange(d), :, np.arange(d)] = 1.0
        return jax.device_put(modes)
    modes = [jnp.zeros((n, d), positions.dtype).at[:, a].set(1.0) for a in range(d)]
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
    products (one unit vector per atom and direction), mapped over atoms."""

    def block(i):
        def column(a):
            e = jnp.zeros((n, d), dtype).at[i, a].set(1.0)
            return hvp(e)[i]

        return jax.vmap(column)(jnp.arange(d))

    return jax.lax.map(block, jnp.arange(n))


def spatial_colors(
    positions: np.ndarray, cell: np.ndarray | None, reach: float
) -> np.ndarray:
    """Colour atoms so that no two atoms of one colour are within ``reach`` of each other.

    Greedy colouring of the graph of pairs closer than ``reach`` (periodic images
    included, by ASE's neighbour list): at most (largest neighbour count + 1) colours.
    Returns an ``(N,)`` int array.
    """
    from ase import Atoms
    from ase.neighborlist import neighbor_list

    positions = np.asarray(positions, float)
    n, d = positions.shape
    if d == 2:  # ASE works in 3D: pad with a non-periodic third axis
        positions = np.hstack([positions, np.zeros((n, 1))])
        cell = None if cell is None else np.pad(np.asarray(cell), ((0, 1), (0, 1)))
    if cell is None:
        atoms = Atoms(positions=positions, pbc=False)
    else:
        cell3 = np.asarray(cell, float)
        pbc = [True] * d + [False] * (3 - d)
        if d == 2:
            cell3[2, 2] = 1.0
        atoms = Atoms(positions=positions, cell=cell3, pbc=pbc)
    first, second = neighbor_list("ij", atoms, reach)
    order = np.argsort(first, kind="stable")
    first, second = first[order], second[order]
    starts = np.searchsorted(first, np.arange(n + 1))
    colors = np.full(n, -1, int)
    for i in range(n):
        taken = colors[second[starts[i]:starts[i + 1]]]
        free = np.ones(len(taken) + 2, bool)
        free[taken[(taken >= 0) & (taken < len(free))]] = False
        colors[i] = int(np.argmax(free))
    return colors


def color_masks(colors: np.ndarray) -> np.ndarray:
    """``(C, N)`` float indicator of each colour's atoms from per-atom colours ``(N,)``."""
    colors = np.asarray(colors)
    return np.stack([(colors == c) for c in np.unique(colors)]).astype(float)


def colored_diagonal_blocks(hvp: Callable[[Array], Array], colors: np.ndarray, d: int,
                            dtype) -> Array:
    r"""Per-atom blocks :math:`H_{ii}` from ``d × (number of colours)`` Hessian-vector
    products: with :math:`v = \sum_{j \in c} e_{j,a}` over the atoms of colour ``c``,
    :math:`(Hv)_i = H_{ii} e_a` for ``i`` in ``c``, because :math:`H_{ij} = 0` for atoms
    farther apart than the Hessian's range, and :func:`spatial_colors` gives atoms within
    that range different colours."""
    return probed_diagonal_blocks(hvp, jnp.asarray(color_masks(colors)), d, dtype)


def probed_diagonal_blocks(hvp: Callable[[Array], Array], masks: Array, d: int,
                           dtype) -> Array:
    """:func:`colored_diagonal_blocks` from the colour masks ``(C, N)`` (traceable)."""
    n = masks.shape[1]
    masks = jnp.asarray(masks, dtype)

    def probe(mask):
        def column(a):
            v = jnp.zeros((n, d), dtype).at[:, a].set(mask)
            return hvp(v)  # (N, d): row i holds H_ii e_a for atoms of this colour

        return jax.vmap(column)(jnp.arange(d))  # (d, N, d)

    columns = jax.lax.map(probe, masks)  # (C, d, N, d)
    return jnp.einsum("cn,cani->nia", masks, columns)  # (N, d, d)


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
