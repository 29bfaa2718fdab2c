r"""The geometry a potential sees in one energy evaluation, and the periodic images.

:class:`Geometry` holds the positions, cell, species and dense neighbour indices of one
evaluation (built by :mod:`mdsens.md.model` inside the traced function) and gathers the
dense :class:`Neighborhood` that potentials sum over. :func:`fractional_near`,
:func:`image_shifts` and :func:`image_index` describe the periodic images of a neighbour
list's image slots; the cell search (:mod:`mdsens.md._cell_search`) and the potentials
share them. This module imports nothing from :mod:`mdsens.md.potentials`.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

__all__ = [
    "Geometry",
    "Neighborhood",
    "fractional_near",
    "image_index",
    "image_shifts",
]


@dataclasses.dataclass(frozen=True)
class Neighborhood:
    r"""Dense, full neighbourhood of every atom, safe to differentiate.

    For atom ``i`` and slot ``m``, ``j = idx[i, m]`` is a neighbour (``idx == N`` marks a
    padded slot). Padded slots hold a constant dummy displacement of length
    ``pad_distance`` (beyond every cutoff), so ``r`` is never zero there and neither
    energies nor gradients produce NaN; still multiply contributions by ``mask``.

    Attributes:
      dR: ``(N, M, d)`` Cartesian vector from atom i to its neighbour,
        :math:`R_j - R_i` (minimum image for periodic systems), in Å.
      r: ``(N, M)`` its length :math:`|R_j - R_i|`.
      mask: ``(N, M)`` bool, True for real neighbours (not necessarily within cutoff).
      idx: ``(N, M)`` int32 neighbour indices, ``N`` for padding.
      species: ``(N,)`` int32 species of atom i (index into ``Potential.species``; zeros
        when the potential has no species).
      neighbor_species: ``(N, M)`` int32 species of the neighbour (0 in padded slots).
    """

    dR: Array
    r: Array
    mask: Array
    idx: Array
    species: Array
    neighbor_species: Array


@dataclasses.dataclass(frozen=True)
class Geometry:
    r"""What a potential sees for one energy evaluation (built inside the traced function).

    Attributes:
      positions: ``(N, d)`` Cartesian positions in Å (the internal supercell when the
        model replicates a small cell; the model divides the energy by the copy count).
      cell: ``(d, d)`` lattice vectors as rows (ASE convention), or None for free systems.
      species: ``(N,)`` int32 species index (into ``Potential.species`` when the potential
        has species, else into ``System.species_names``).
      idx: ``(N, M)`` int32 dense neighbour indices padded with ``N`` (None for potentials
        with ``uses_neighborhood = False``).
      pad_distance: length of the dummy displacement put into padded slots.
      images: optional ``(image slots (N, M), reference fractional positions (N, d))`` of
        the list (``mdsens.md.Neighbors.images``): pair forces may then read each pair's
        displacement from its periodic image instead of taking the minimum image. With a
        third entry, the ghosts ``(G,)`` of an ``mdsens.md.neighbors.ImageTable``, the
        slots are that table's (atom j's own image ``j``, padding ``N``, ghost g
        ``N + 1 + g``).
      mesh: optional ``jax.sharding.Mesh`` whose devices share the evaluation, row blocks
        of the list each (:mod:`mdsens.md.sharding`); potentials that cannot split their
        work ignore it.
      owned: optional ``(N, H)`` int32: each pair of the list once, in the row of the atom
        that owns it (:attr:`mdsens.md.Neighbors.owned`; image slots when ``images`` is
        set, else indices). Pair potentials may evaluate forces from it; others ignore it.
    """

    positions: Array
    cell: Array | None
    species: Array
    idx: Array | None
    pad_distance: float
    images: tuple[Array, ...] | None = None
    mesh: Any = None
    owned: Array | None = None

    @property
    def periodic(self) -> bool:
        return self.cell is not None

    def displacement(self, Ra: Array, Rb: Array) -> Array:
        r"""Minimum-image displacement :math:`R_a - R_b` (shapes broadcast, last axis d).

        Periodic: :math:`\Delta s = (R_a - R_b) C^{-1}`, :math:`\Delta s \leftarrow \Delta s
        - \mathrm{round}(\Delta s)`, result :math:`\Delta s\, C` (rows of C are lattice
        vectors). Exact while the cutoff is below half the smallest perpendicular width,
        which the model guarantees by replication.
        """
        dR = Ra - Rb
        if self.cell is None:
            return dR
        ds = dR @ jnp.linalg.inv(self.cell)
        ds = ds - jnp.round(_stop(ds))
        return ds @ self.cell

    def neighborhood(self, rows: Array | None = None, by_component: bool = False
                     ) -> Neighborhood:
        """Gather the dense :class:`Neighborhood` (displacements to listed neighbours).

        Args:
          rows: optional ``(m,)`` indices of the centre atoms whose neighbourhoods are
            gathered (default all N, in order).
          by_component: write gathers, minimum image and the cell product one Cartesian
            component at a time (1-D gathers, scalar multiply-adds), which XLA fuses into
            one loop: ≈ 3× faster energies of large systems on CPU, but a larger program,
            slower to compile under nested derivatives. Same numbers either way.
        """
        return self.neighborhood_fn(by_component)(rows)

    def neighborhood_fn(self, by_component: bool = False
                        ) -> Callable[[Array | None], Neighborhood]:
        """``rows -> neighborhood(rows, by_component)`` with the per-atom work (fractional
        coordinates, gather sources) done once, outside the returned function: for
        evaluating blocks of rows in a loop (``lax.map``)."""
        R = self.positions
        n, d = R.shape
        periodic = self.cell is not None
        X = R @ jnp.linalg.inv(self.cell) if periodic else R

        # the gathers read one extra zero row at index n (the padding index) instead of
        # clamping idx, which costs as much as the gather itself on CPU
        def padded(x: Array) -> Array:
            return jnp.concatenate([x, jnp.zeros((1, *x.shape[1:]), x.dtype)])

        sources = [padded(X[:, k]) for k in range(d)] if by_component else padded(X)
        species_src = padded(self.species)

        def gather(rows: Array | None) -> Neighborhood:
            idx = self.idx if rows is None else self.idx[rows]
            species = self.species if rows is None else self.species[rows]
            mask = idx < n
            Xi = X if rows is None else X[rows]
            if by_component:
                ds = [sources[k][idx] - Xi[:, k][:, None] for k in range(d)]
            else:
                dX = sources[idx] - Xi[:, None, :]
                ds = [dX[..., k] for k in range(d)]
            if periodic:
                C = self.cell
                ds = [s - jnp.round(_stop(s)) for s in ds]
                if by_component:
                    comps = [functools.reduce(jnp.add, [ds[k] * C[k, m] for k in range(d)])
                             for m in range(d)]
                else:
                    dR = jnp.stack(ds, -1) @ C
                    comps = [dR[..., m] for m in range(d)]
            else:
                comps = ds
            # padded slots: a constant dummy displacement (pad_distance, 0, ...) beyond
            # the cutoff
            comps = [jnp.where(mask, c, self.pad_distance if m == 0 else 0.0)
                     for m, c in enumerate(comps)]
            r = jnp.sqrt(functools.reduce(jnp.add, [c * c for c in comps]))
            dR = jnp.stack(comps, axis=-1)
            return Neighborhood(dR, r, mask, idx, species, species_src[idx])

        return gather

    def image_neighborhood_fn(self) -> Callable[[Array | None], Neighborhood]:
        r"""``rows -> Neighborhood`` read from the periodic images of the list's atoms
        (``images``; periodic systems only), component by component.

        With :math:`S = R C^{-1}` made continuous around the reference positions
        :math:`X` of the last rebuild, :math:`S \leftarrow S - \mathrm{round}(S - X)`, and
        :math:`\bar R = S C`, the image t of atom j sits at :math:`\bar R_j + n_t C`; slot
        ``j + N t`` reads it, and :math:`d_{im} = \bar R_j + n_t C - \bar R_i` needs no
        minimum-image rounding per pair. Exact while the list's rule holds (the model
        keeps images only for cells at least ``2 reach`` wide). Padded slots read a
        sentinel ``pad_distance`` beyond every atom in every component (beyond the cutoff);
        ``mask`` marks the real slots.

        With an image table (a third entry of ``images``: its ghosts, see
        :class:`mdsens.md.neighbors.ImageTable`) the positions read are those of the N
        atoms, the padding sentinel and the ghosts only (the same numbers, bit for bit).
        """
        slots, X_ref = self.images[:2]
        R, C = self.positions, self.cell
        n, d = R.shape
        Rc = fractional_near(R, C, X_ref) @ C
        shifts = jnp.asarray(image_shifts(d), R.dtype) @ C  # (3^d, d)
        n_images = shifts.shape[0]
        far = _stop(jnp.max(Rc, axis=0)) + self.pad_distance
        if len(self.images) == 3:
            ghosts = self.images[2]
            g_atom, g_image = ghosts % n, ghosts // n
            sources = [jnp.concatenate([Rc[:, k], far[k][None],
                                        shifts[g_image, k] + Rc[g_atom, k]]) for k in range(d)]
            species_src = jnp.concatenate([self.species, jnp.zeros((1,), self.species.dtype),
                                           self.species[g_atom]])
            padding = n
        else:
            sources = [jnp.concatenate([(shifts[:, k][:, None] + Rc[:, k][None, :]).reshape(-1),
                                        far[k][None]]) for k in range(d)]
            species_src = jnp.concatenate([jnp.tile(self.species, n_images),
                                           jnp.zeros((1,), self.species.dtype)])
            padding = n * n_images

        def gather(rows: Array | None) -> Neighborhood:
            sl = slots if rows is None else slots[rows]
            Ri = Rc if rows is None else Rc[rows]
            comps = [sources[k][sl] - Ri[:, k][:, None] for k in range(d)]
            r = jnp.sqrt(functools.reduce(jnp.add, [c * c for c in comps]))
            species = self.species if rows is None else self.species[rows]
            return Neighborhood(jnp.stack(comps, axis=-1), r, sl != padding, sl, species,
                                species_src[sl])

        return gather


def fractional_near(R: Array, cell: Array, reference: Array) -> Array:
    r"""Fractional coordinates :math:`S = R C^{-1}`, each row moved by a lattice vector to
    lie within half a cell of ``reference`` (:math:`S - \mathrm{round}(S - X)`): continuous
    in R between neighbour-list rebuilds, whichever way the positions are wrapped."""
    S = R @ jnp.linalg.inv(cell)
    return S - jnp.round(_stop(S - reference))


def image_shifts(dim: int) -> np.ndarray:
    """``(3^d, d)`` lattice-vector multiples of the periodic images ``t = 0 … 3^d - 1`` of
    a neighbour list's image slots (row ``t``; the last axis varies fastest)."""
    return np.array(list(itertools.product(*([(-1, 0, 1)] * dim))), np.float64)


def image_index(shift):
    r"""Row of :func:`image_shifts` for integer lattice shifts ``shift`` (``(..., d)``,
    entries in {-1, 0, 1}; numpy or jax): :math:`\sum_k (n_k + 1)\, 3^{d-1-k}`."""
    d = shift.shape[-1]
    return functools.reduce(lambda t, k: 3 * t + shift[..., k] + 1, range(1, d),
                            shift[..., 0] + 1)


def _stop(x: Array) -> Array:
    """``jax.lax.stop_gradient`` (image shifts are integers: no derivative)."""
    return jax.lax.stop_gradient(x)
