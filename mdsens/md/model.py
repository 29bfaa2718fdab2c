r"""EnergyModel: a potential bound to a system's size, boundary conditions and species.

The model is what minimisers and the sensitivity code call::

    model = build(system, potential)                  # neighbor_list="auto", skin=None
    nbrs = model.allocate(R, cell)                    # host side; None without a list
    E = model.energy(R, cell, params, nbrs)           # jit / grad / hessian safe
    nbrs = model.update(R, cell, nbrs)                # jit-able; new positions AND new cell
    if model.overflowed(nbrs): nbrs = model.allocate(R, cell)

Math and conventions
--------------------
* ``R``: ``(N, d)`` Cartesian positions (Å); ``cell``: ``(d, d)``, rows are lattice vectors
  (ASE); ignored (may be None) for free systems. ``params``: the potential's params pytree.
* Periodic systems use the minimum image in fractional coordinates,
  :math:`\Delta s = (R_j - R_i) C^{-1} - \mathrm{round}(\cdot)`, :math:`\Delta R = \Delta s\,C`,
  exact for any triclinic cell whose perpendicular widths :math:`w_k = 1/|C^{-1}_{:,k}|`
  exceed twice the cutoff.
* Small cells: if some :math:`w_k < 2(r_c + \text{skin})`, the model works on the
  supercell with :math:`n_k = \lceil 2(r_c + \text{skin}) / w_k\rceil` copies along
  lattice vector k, positions tiled from the user's, :math:`R^{(t)} = R + t\,C`, and
  returns :math:`E(\text{supercell}) / \prod_k n_k`: the energy of the user's cell, with
  correct derivatives w.r.t. the user's positions, cell and params. ``replicas`` is fixed
  at build; it stays valid while the widths exceed :math:`2 r_c` (skin is the margin).
* Neighbour lists (jax-md, dense format, full i->j and j->i) are used when
  ``neighbor_list=True`` or, with ``"auto"``, when the (super)cell has more than
  ``potential.neighbor_list_threshold`` atoms (300; 64 for many-body potentials).
  Pairs are listed within :math:`r_c + \text{skin}`;
  :meth:`EnergyModel.update` rebuilds when an atom moved more than skin/2 since the last
  build or when the cell changed (a fractional-coordinate list cannot see a box change).
  Padded slots carry a constant dummy displacement beyond the cutoff (a double ``where``),
  so parameter and position gradients stay finite.
* Free systems: plain Cartesian displacements, all pairs or a jax-md cell list over the
  bounding box (positions outside it are still handled: cells wrap, pairs are pruned by
  true distance).
* Forces :math:`F = -\partial E/\partial R`; stress :math:`\sigma = V^{-1}\,\partial E/
  \partial \varepsilon` at :math:`\varepsilon = 0` with :math:`C' = C(I+\varepsilon)`,
  :math:`R' = R(I+\varepsilon)` (ASE's sign convention).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import warnings
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from . import _cell_search
from ._jaxmd import partition, space
from .geometry import Geometry, fractional_near, image_index
from .potentials.base import Array, Params, Potential, pair_param
from .potentials.pair import PairPotential, symmetrized
from .sharding import mesh_for
from .system import System

__all__ = ["AUTO_NEIGHBOR_THRESHOLD", "EnergyModel", "Neighbors", "build"]

AUTO_NEIGHBOR_THRESHOLD = Potential.neighbor_list_threshold
"""Default of ``Potential.neighbor_list_threshold``: ``neighbor_list="auto"`` uses a list
above this many (super)cell atoms."""

DEFAULT_SKIN_FRACTION = 0.1
"""Default skin, as a fraction of the cutoff."""

_PEC = partition.PartitionErrorCode
_OVERFLOW_BITS = int(
    partition.PartitionErrorCode.NEIGHBOR_LIST_OVERFLOW
    | partition.PartitionErrorCode.CELL_LIST_OVERFLOW
    | partition.PartitionErrorCode.CELL_SIZE_TOO_SMALL
)


@dataclasses.dataclass(frozen=True)
class Neighbors:
    """Neighbour-list state of an :class:`EnergyModel` (a pytree; treat as opaque).

    Attributes:
      nlist: jax-md dense ``NeighborList`` over the internal (super)cell; fractional
        positions for periodic systems, shifted Cartesian positions for free ones.
      reference_cell: ``(d, d)`` internal cell at the last rebuild (zeros when free).
      images: ``(N, M)`` int32 or None. For a periodic list whose cell was at least
        ``2 reach`` wide at the last rebuild: slot ``(i, m)`` as ``j + N t``, where t
        numbers the periodic image of neighbour j nearest to i at the rebuild (one of the
        3^d cells around the reference cell, listed by ``mdsens.md.geometry.image_shifts``);
        padding is ``N 3^d``. Pair forces then read displacements from the images of the
        atoms instead of taking the minimum image of every pair at every step.
    """

    nlist: partition.NeighborList
    reference_cell: Array
    images: Array | None = None


jax.tree_util.register_dataclass(
    Neighbors, data_fields=["nlist", "reference_cell", "images"], meta_fields=[]
)


def _image_slots(X: Array, C_s: Array, R_s: Array, idx: Array) -> Array:
    r""":attr:`Neighbors.images` for the list ``idx`` built at fractional positions ``X``.

    With :math:`S` the fractional positions made continuous around ``X``
    (:func:`~mdsens.md.geometry.fractional_near`, as the energy takes them at every
    step), neighbour j's image nearest to i is :math:`S_j + n` with
    :math:`n = -\mathrm{round}(S_j - S_i)`.
    """
    n, d = X.shape
    S = fractional_near(R_s, C_s, X)
    mask = idx < n
    j = jnp.where(mask, idx, 0)
    shift = -jnp.round(S[j] - S[:, None, :]).astype(jnp.int32)  # (N, M, d)
    code = image_index(jnp.clip(shift, -1, 1))
    return jnp.where(mask, j + n * code, n * 3**d).astype(jnp.int32)


def _nl_box(cell: Array) -> Array:
    r"""Upper-triangular jax-md box with the metric of ``cell``: :math:`L^T`, :math:`LL^T = CC^T`.

    Fractional coordinates and distances are unchanged (a rotation), and jax-md's cell
    list needs an upper-triangular box.
    """
    cell = jax.lax.stop_gradient(cell)
    return jnp.linalg.cholesky(cell @ cell.T).T


@contextlib.contextmanager
def _quiet_jax_md():
    """Silence jax-md's int64 -> int32 scatter FutureWarning (its code, harmless here)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="scatter inputs have incompatible types")
        yield


_dense_search = jax.jit(_cell_search.dense_search, static_argnums=(2, 3, 4, 5))
_image_slots_jit = jax.jit(_image_slots)
_max_neighbors = jax.jit(_cell_search.max_neighbors, static_argnums=(2, 3, 4))


def _wrap(S: Array) -> Array:
    return S - jnp.floor(S)


@dataclasses.dataclass(frozen=True, eq=False)
class EnergyModel:
    """Energy of one system layout under one potential (see the module docstring).

    Build with :func:`build`. Hashed by identity, so it can be a static jit argument.

    Attributes:
      potential: the :class:`Potential` (its ``params`` are the default ``params``).
      n_atoms, dim, periodic: the user's system layout.
      species: ``(N,)`` int32 species indices as the potential sees them.
      replicas: copies of the user's cell along each lattice vector (all 1 if none).
      cutoff: interaction range in Å (None when the potential has none).
      skin: neighbour-list skin and small-cell margin, Å.
      uses_neighbor_list: whether :meth:`energy` needs ``nbrs``.
      mesh: the ``jax.sharding.Mesh`` whose devices share each evaluation (row blocks of
        the neighbour list; :mod:`mdsens.md.sharding`), or None for one device.
    """

    potential: Potential
    n_atoms: int
    dim: int
    periodic: bool
    species: np.ndarray
    replicas: tuple[int, ...]
    cutoff: float | None
    skin: float
    uses_neighbor_list: bool
    capacity_multiplier: float = 1.25
    mesh: Any = None
    _neighbor_fn: Any = None
    _origin: np.ndarray | None = None
    _all_pairs: np.ndarray | None = None
    _cell_list_fns: dict = dataclasses.field(default_factory=dict, repr=False)
    _search_template: dict = dataclasses.field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------ geometry
    @property
    def params(self) -> Params:
        return self.potential.params

    @property
    def n_copies(self) -> int:
        return math.prod(self.replicas)

    @property
    def _pad_distance(self) -> float:
        return 2.0 * ((self.cutoff or 1.0) + self.skin) + 1.0

    def supercell(self, R: Array, cell: Array | None) -> tuple[Array, Array | None]:
        r"""Internal positions and cell: :math:`R^{(t)} = R + tC` for every copy t, stacked
        copy-major to ``(n_copies * N, d)``, and ``diag(replicas) @ cell``."""
        if not self.periodic:
            return R, None
        if self.n_copies == 1:
            return R, cell
        t = np.array(list(itertools.product(*(range(n) for n in self.replicas))), float)
        shifts = jnp.asarray(t, cell.dtype) @ cell
        R_s = (R[None, :, :] + shifts[:, None, :]).reshape(-1, R.shape[-1])
        C_s = jnp.asarray(np.array(self.replicas, float), cell.dtype)[:, None] * cell
        return R_s, C_s

    def _species_s(self) -> np.ndarray:
        return np.tile(self.species, self.n_copies)

    # ------------------------------------------------------------------ energy
    def energy(
        self, R: Array, cell: Array | None, params: Params | None = None, nbrs: Any = None
    ) -> Array:
        r"""Potential energy (eV) of the user's cell: :math:`E(\text{supercell})/n_\text{copies}`.

        Args:
          R: ``(N, d)`` Cartesian positions, Å.
          cell: ``(d, d)`` rows = lattice vectors, Å (ignored for free systems).
          params: potential parameters (default: ``potential.params``).
          nbrs: from :meth:`allocate`/:meth:`update` (required iff ``uses_neighbor_list``).
        Returns:
          scalar energy.
        """
        params = self.potential.params if params is None else params
        R_s, C_s = self.supercell(R, cell)
        if self.uses_neighbor_list:
            if nbrs is None:
                raise ValueError(
                    "this model uses a neighbour list: pass nbrs=model.allocate(R, cell)"
                )
            idx = nbrs.nlist.idx
            images = (None if nbrs.images is None
                      else (nbrs.images, nbrs.nlist.reference_position))
        else:
            idx = None if self._all_pairs is None else jnp.asarray(self._all_pairs)
            images = None
        geom = Geometry(R_s, C_s, jnp.asarray(self._species_s()), idx, self._pad_distance,
                        images, self.mesh)
        e = self.potential.total_energy(params, geom)
        return e / self.n_copies if self.n_copies > 1 else e

    def forces(
        self, R: Array, cell: Array | None, params: Params | None = None, nbrs: Any = None
    ) -> Array:
        r"""Forces :math:`F = -\partial E / \partial R`, ``(N, d)``, eV/Å."""
        return -jax.grad(self.energy)(R, cell, params, nbrs)

    def stress(
        self, R: Array, cell: Array, params: Params | None = None, nbrs: Any = None
    ) -> Array:
        r"""Stress :math:`\sigma = V^{-1}\partial E(R(I+\varepsilon), C(I+\varepsilon))/
        \partial\varepsilon|_0`, ``(d, d)``, eV/Å^d (ASE sign convention)."""
        if not self.periodic:
            raise ValueError("stress is defined for periodic systems only")

        def strained(eps: Array) -> Array:
            F = jnp.eye(self.dim, dtype=cell.dtype) + eps
            return self.energy(R @ F, cell @ F, params, nbrs)

        g = jax.grad(strained)(jnp.zeros((self.dim, self.dim), cell.dtype))
        return g / jnp.abs(jnp.linalg.det(cell))

    # ------------------------------------------------------------------ assembled Hessian
    @property
    def has_pair_hessian(self) -> bool:
        """Whether :meth:`pair_hessian_matvec` applies: a pair potential evaluated on the
        user's own cell (no replication)."""
        return isinstance(self.potential, PairPotential) and self.n_copies == 1

    def pair_hessian_matvec(
        self, R: Array, cell: Array | None, params: Params | None = None, nbrs: Any = None
    ):
        r"""The Hessian :math:`\partial^2 E/\partial R^2` of a pair potential as an assembled
        sparse operator ``v (N, d) -> H v (N, d)``.

        With :math:`E = \tfrac12\sum_i\sum_m \phi(r_{im})` over the full neighbour list
        (:math:`d_{im} = R_{j(i,m)} - R_i`, :math:`\hat d = d/r`), each listed pair has the
        stiffness :math:`K_{im} = \phi''\,\hat d\hat d^\top + (\phi'/r)(I - \hat d\hat
        d^\top)` and

        .. math:: (Hv)_i = \sum_m K_{im}\,(v_i - v_{j(i,m)})

        (each pair appears once in each of its atoms' rows, and :math:`K` is even in
        :math:`d`). :math:`\phi'` and :math:`\phi''` come from forward-mode derivatives of
        the potential's own ``pair_energy`` (switch included), once; a product is then one
        gather and O(N M d) flops — much cheaper than differentiating the energy twice.
        Differentiable in ``R``, ``cell`` and ``params`` like any JAX function. The returned
        function carries ``diagonal_blocks``, the per-atom blocks
        :math:`H_{ii} = \sum_m K_{im}` ``(N, d, d)``.
        """
        if not self.has_pair_hessian:
            raise ValueError("pair_hessian_matvec needs a pair potential without replication")
        params = self.potential.params if params is None else params
        if self.uses_neighbor_list:
            idx = nbrs.nlist.idx
        else:
            idx = jnp.asarray(self._all_pairs)
        geom = Geometry(R, cell, jnp.asarray(self._species_s()), idx, self._pad_distance)
        nb = geom.neighborhood()
        p = {k: pair_param(v, nb.species, nb.neighbor_species)
             for k, v in symmetrized(params).items()}

        def phi(r):
            return self.potential.pair_energy(r, **p)

        def dphi(r):
            return jax.jvp(phi, (r,), (jnp.ones_like(r),))[1]

        d1, d2 = jax.jvp(dphi, (nb.r,), (jnp.ones_like(nb.r),))
        b = jnp.where(nb.mask, d1 / nb.r, 0.0)  # transverse stiffness φ'/r
        a = jnp.where(nb.mask, d2, 0.0) - b  # longitudinal excess φ'' - φ'/r
        unit = nb.dR / nb.r[..., None]
        j = jnp.where(nb.mask, nb.idx, 0)

        def matvec(v: Array) -> Array:
            u = v[:, None, :] - v[j]  # (N, M, d)
            along = jnp.sum(unit * u, axis=-1)
            return jnp.sum((a * along)[..., None] * unit + b[..., None] * u, axis=1)

        # the per-atom diagonal blocks H_ii = Σ_m K_im, (N, d, d), without any product
        eye = jnp.eye(R.shape[-1], dtype=R.dtype)
        matvec.diagonal_blocks = jnp.einsum("nm,nma,nmb->nab", a, unit, unit) + \
            jnp.sum(b, axis=1)[:, None, None] * eye
        return matvec

    def check_params(self, params: Params) -> None:
        """Raise ``ValueError`` if ``params`` reach beyond the cutoff the model was built for."""
        if self.cutoff is None:
            return
        rc = self.potential.cutoff(params)
        if rc is not None and rc > self.cutoff * (1 + 1e-12):
            raise ValueError(
                f"params need cutoff {rc:.4g} Å > {self.cutoff:.4g} Å of this model: rebuild it"
            )

    # ------------------------------------------------------------------ neighbour lists
    def _list_positions(self, R_s: Array, C_s: Array | None) -> Array:
        if self.periodic:
            return _wrap(R_s @ jnp.linalg.inv(C_s))
        return R_s - jnp.asarray(self._origin, R_s.dtype)

    def allocate(
        self, R: Array, cell: Array | None, extra_capacity: int = 0
    ) -> Neighbors | None:
        """New neighbour list for ``R``, ``cell`` (host side, not jit-able); None if unused.

        ``extra_capacity`` adds neighbour slots per atom beyond jax-md's
        ``capacity_multiplier`` margin (for states whose density is still changing).
        """
        if not self.uses_neighbor_list:
            return None
        R = jax.lax.stop_gradient(jnp.asarray(R))
        cell = None if cell is None else jax.lax.stop_gradient(jnp.asarray(cell))
        R_s, C_s = self.supercell(R, cell)
        X = self._list_positions(R_s, C_s)
        if self.periodic:
            nlist = self._allocate_by_search(X, C_s, extra_capacity)
            if nlist is None:
                with _quiet_jax_md():
                    nlist = self._neighbor_fn.allocate(X, extra_capacity=extra_capacity,
                                                       box=_nl_box(C_s))
                nlist = self._stable(nlist)
                if nlist.cell_list_fn is not None:
                    self._search_template["list"] = nlist
            images = None
            if not bool(self._too_narrow_for_images(C_s)):
                images = _image_slots_jit(X, C_s, R_s, nlist.idx)
            return Neighbors(nlist, C_s, images)
        with _quiet_jax_md():
            nlist = self._neighbor_fn.allocate(X, extra_capacity=extra_capacity)
            nlist = self._stable(nlist)
        return Neighbors(nlist, jnp.zeros((self.dim, self.dim), R.dtype))

    def _too_narrow_for_images(self, C_s: Array) -> Array:
        """True (``bool`` scalar array; jit-able) if a list in cell ``C_s`` may not carry
        :attr:`Neighbors.images`. Images need every perpendicular width at least
        ``2 reach``: then at most one image of an atom is within ``reach`` of another, and
        the image nearest at the rebuild is the one that can come within the cutoff before
        the next rebuild."""
        return jnp.any(_cell_search.perpendicular_widths(C_s)
                       < 2.0 * (self.cutoff + self.skin))

    def _allocate_by_search(
        self, X: Array, C_s: Array, extra_capacity: int
    ) -> partition.NeighborList | None:
        """A new list by the jitted :func:`~mdsens.md._cell_search.dense_search`, reusing
        the static layout (cell grid, cell capacity) of an earlier jax-md allocation.

        Same neighbour sets and the same capacity rule as jax-md's ``allocate``
        (``max occupancy × capacity_multiplier + extra_capacity``), ≈ 5× faster; None when
        there is no earlier allocation or the box needs another grid (jax-md then allocates
        afresh). A grid cell with more atoms than the cell capacity raises the capacity by
        jax-md's rule.
        """
        template = self._search_template.get("list")
        if template is None:
            return None
        reach = self.cutoff + self.skin
        grid = _cell_search.grid_shape(template.cell_size, self.dim)
        widths = _cell_search.perpendicular_widths(np.asarray(C_s))
        n_min = math.floor(float(np.min(widths)) / reach)
        if any(g != n_min for g in grid):
            return None
        Xn = np.asarray(X)
        cells = np.clip(np.floor(Xn * np.array(grid)).astype(np.int64), 0, np.array(grid) - 1)
        occupancy = np.bincount(np.ravel_multi_index(cells.T, grid), minlength=math.prod(grid))
        capacity = template.cell_list_capacity
        if occupancy.max() > capacity:  # jax-md's rule for a new cell capacity
            capacity = int(occupancy.max() * self.capacity_multiplier)
            template = template.set(cell_list_capacity=capacity)
            self._search_template["list"] = template
        n = Xn.shape[0]
        most = int(_max_neighbors(X, C_s, grid, capacity, reach))
        width = min(int(most * self.capacity_multiplier + extra_capacity), n - 1)
        idx, _, _, _ = _dense_search(X, C_s, grid, capacity, width, reach)
        error = partition.PartitionError(jnp.zeros((), jnp.uint8))
        return template.set(idx=idx, reference_position=X, error=error, max_occupancy=width)

    def _stable(self, nlist: partition.NeighborList) -> partition.NeighborList:
        """Reuse one cell-list function per (capacity, box) across allocations, and keep
        the cell size as a Python float.

        jax-md puts a fresh ``cell_list_fn`` closure into every allocated list as a static
        field; two lists for the same system would then never share compiled code. An
        equivalent closure is cached on the model and swapped in.
        """
        if nlist.cell_size is not None and np.ndim(nlist.cell_size) == 0 \
                and not isinstance(nlist.cell_size, float):
            # a static field compared at every jit call: a Python float compares for free,
            # a jax scalar needs an eager program (compiled once per process)
            nlist = nlist.set(cell_size=float(nlist.cell_size))
        fn = nlist.cell_list_fn
        if fn is None:
            return nlist
        key = (nlist.cell_list_capacity, nlist.max_occupancy,
               np.asarray(nlist.cell_size).tobytes())
        cached = self._cell_list_fns.setdefault(key, fn)
        return nlist if cached is fn else nlist.set(cell_list_fn=cached)

    def update(self, R: Array, cell: Array | None, nbrs: Neighbors | None,
               force: Any = False) -> Neighbors | None:
        r"""Neighbour list for new positions and cell (jit-able; keeps the capacity).

        Rebuilds when a pair outside the list could have come within the cutoff
        (:meth:`needs_rebuild`) or when ``force`` (a bool or bool scalar array: the list's
        reference point is not to be trusted); otherwise returns ``nbrs``. Periodic lists
        with a cell grid are rebuilt by :func:`mdsens.md._cell_search.dense_search`, others
        by jax-md. Check :meth:`overflowed` afterwards.
        """
        if nbrs is None:
            return None
        R = jax.lax.stop_gradient(R)
        cell = None if cell is None else jax.lax.stop_gradient(cell)
        R_s, C_s = self.supercell(R, cell)
        X = self._list_positions(R_s, C_s)
        rebuild = self._needs_rebuild(X, C_s, nbrs) | jnp.asarray(force)
        kw = {"box": _nl_box(C_s)} if self.periodic else {}
        old = nbrs.nlist
        with_images = nbrs.images is not None
        if self.periodic and old.cell_list_fn is not None:
            def search():
                grid = _cell_search.grid_shape(old.cell_size, self.dim)
                idx, list_over, cell_over, too_small, *slots = _cell_search.dense_search(
                    X, C_s, grid, old.cell_list_capacity, old.idx.shape[-1],
                    self.cutoff + self.skin, images=with_images)
                err = old.error.update(_PEC.NEIGHBOR_LIST_OVERFLOW, list_over)
                err = err.update(_PEC.CELL_LIST_OVERFLOW, cell_over)
                err = err.update(_PEC.CELL_SIZE_TOO_SMALL, too_small)
                new = old.set(idx=idx, reference_position=X, error=err)
                return new, (slots[0] if with_images else None)
        else:
            def search():
                with _quiet_jax_md():
                    new = old.update(X, **kw)
                return new, (_image_slots(X, C_s, R_s, new.idx) if with_images else None)
        if not with_images:
            nlist = jax.lax.cond(rebuild, lambda: search()[0], lambda: old)
            images = None
        else:
            def search_with_images():
                new, slots = search()
                # a cell too narrow for images flags the list for reallocation (allocate
                # then gives one without images)
                narrow = self._too_narrow_for_images(C_s)
                return new.set(error=new.error.update(_PEC.CELL_SIZE_TOO_SMALL, narrow)), slots

            nlist, images = jax.lax.cond(rebuild, search_with_images,
                                         lambda: (old, nbrs.images))
        ref_cell = (jnp.where(rebuild, C_s, nbrs.reference_cell) if self.periodic
                    else nbrs.reference_cell)
        return Neighbors(nlist, ref_cell, images)

    def needs_rebuild(self, R: Array, cell: Array | None, nbrs: Neighbors) -> Array:
        """True (``bool`` scalar array; jit-able) if :meth:`update` would rebuild ``nbrs``
        for positions ``R`` and ``cell``; see :meth:`_needs_rebuild` for the rule."""
        R_s, C_s = self.supercell(jax.lax.stop_gradient(R),
                                  None if cell is None else jax.lax.stop_gradient(cell))
        return self._needs_rebuild(self._list_positions(R_s, C_s), C_s, nbrs)

    def _needs_rebuild(self, X: Array, C_s: Array | None, nbrs: Neighbors) -> Array:
        r"""True if a pair beyond ``reach = cutoff + skin`` at the last build may now be
        within the cutoff.

        With fractional displacements :math:`\Delta s_i` since the build, current cell C
        and build cell :math:`C_0`, a pair's vector is :math:`d = d_0 + d_0 C_0^{-1}(C -
        C_0) + (\Delta s_j - \Delta s_i) C`, so :math:`|d| \ge |d_0|(1 - e) - 2u` with
        :math:`e = \lVert C_0^{-1}(C - C_0)\rVert_F` and :math:`u = \max_i |\Delta s_i C|`.
        Pairs with :math:`|d_0| > r_\mathrm{reach}` stay beyond the cutoff while
        :math:`2u + r_\mathrm{reach}\, e \le \mathrm{skin}`; at fixed cell that is the
        usual "an atom moved more than skin/2". Free systems: :math:`e = 0`.
        """
        ref = nbrs.nlist.reference_position
        dX = X - ref
        if self.periodic:
            dX = (dX - jnp.round(dX)) @ C_s
            C0 = nbrs.reference_cell
            e = jnp.sqrt(jnp.sum(jnp.linalg.solve(C0, C_s - C0) ** 2))
        else:
            e = jnp.zeros((), X.dtype)
        u = jnp.sqrt(jnp.max(jnp.sum(dX * dX, axis=-1)))
        return 2.0 * u + (self.cutoff + self.skin) * e > self.skin

    def overflowed(self, nbrs: Neighbors | None) -> Array:
        """True if the list must be reallocated (``bool`` scalar array; jit-able).

        Tests jax-md's buffer-overflow bits (neighbour and cell list) and the cell-size bit
        (the cell shrank so that cell-list cells are smaller than the cutoff), never the
        malformed-box bit (jax-md sets it spuriously).
        """
        if nbrs is None:
            return jnp.asarray(False)
        return (nbrs.nlist.error.code & _OVERFLOW_BITS) != 0


# ----------------------------------------------------------------------------- build
def _map_species(system: System, potential: Potential) -> np.ndarray:
    sp = np.asarray(system.species, np.int32)
    if potential.species is None:
        return sp
    pos = {s: k for k, s in enumerate(potential.species)}
    present = {system.species_names[k] for k in np.unique(sp)}
    missing = sorted(present - set(pos))
    if missing:
        raise ValueError(
            f"{potential.name}: system species {missing} not among the potential's "
            f"species {potential.species}"
        )
    table = np.array([pos.get(s, 0) for s in system.species_names], np.int32)
    return table[sp]


def _replicas(system: System, reach: float | None) -> tuple[int, ...]:
    if not system.is_periodic or reach is None:
        return (1,) * system.dim
    w = _cell_search.perpendicular_widths(np.asarray(system.cell, np.float64))
    return tuple(max(1, int(math.ceil(2.0 * reach / wk - 1e-12))) for wk in w)


def build(
    system: System,
    potential: Potential,
    neighbor_list: Literal["auto"] | bool = "auto",
    skin: float | None = None,
    capacity_multiplier: float = 1.25,
    devices: Any = "auto",
) -> EnergyModel:
    """Bind ``potential`` to ``system``'s layout (atom count, pbc, species, cell size).

    Args:
      system: the structure (its cell decides the replication).
      potential: any registered or custom :class:`Potential`.
      neighbor_list: ``"auto"`` (a list above ``potential.neighbor_list_threshold``
        internal atoms), True or False.
      skin: neighbour-list skin and small-cell margin in Å (default 0.1 * cutoff).
      capacity_multiplier: jax-md's spare neighbour capacity factor at allocation.
      devices: devices that share each energy evaluation of a system with a neighbour
        list (:func:`mdsens.md.sharding.mesh_for`): ``"auto"``, a count, or None.
    Raises:
      ValueError: unknown ``neighbor_list`` value, species the potential lacks, or a list
        requested for a potential without a cutoff.
    """
    if neighbor_list not in ("auto", True, False):
        raise ValueError(f"neighbor_list must be 'auto', True or False, got {neighbor_list!r}")
    if not isinstance(system, System):
        raise TypeError("build: system must be an mdsens.md.System (see System.from_ase)")
    cutoff = potential.cutoff()
    cutoff = None if cutoff is None else float(cutoff)
    if skin is None:
        skin = 0.0 if cutoff is None else DEFAULT_SKIN_FRACTION * cutoff
    if skin < 0:
        raise ValueError(f"skin must be >= 0, got {skin}")
    reach = None if cutoff is None else cutoff + skin
    replicas = _replicas(system, reach)
    n_internal = system.n_atoms * math.prod(replicas)
    if neighbor_list is True and (cutoff is None or not potential.uses_neighborhood):
        raise ValueError(
            f"{potential.name}: a neighbour list needs a neighbourhood potential with a cutoff"
        )
    if neighbor_list == "auto":
        use_nl = (
            cutoff is not None and potential.uses_neighborhood
            and n_internal > potential.neighbor_list_threshold
        )
    else:
        use_nl = bool(neighbor_list)
    kw: dict[str, Any] = {}
    if use_nl:
        kw.update(_neighbor_setup(system, replicas, reach, capacity_multiplier))
    elif potential.uses_neighborhood:
        idx = np.broadcast_to(np.arange(n_internal, dtype=np.int32), (n_internal,) * 2).copy()
        np.fill_diagonal(idx, n_internal)
        kw["_all_pairs"] = idx
    return EnergyModel(
        potential=potential,
        n_atoms=system.n_atoms,
        dim=system.dim,
        periodic=system.is_periodic,
        species=_map_species(system, potential),
        replicas=replicas,
        cutoff=cutoff,
        skin=float(skin),
        uses_neighbor_list=use_nl,
        capacity_multiplier=float(capacity_multiplier),
        mesh=mesh_for(n_internal, devices) if use_nl else None,
        **kw,
    )


def _neighbor_setup(
    system: System, replicas: tuple[int, ...], reach: float, capacity_multiplier: float
) -> dict[str, Any]:
    R = np.asarray(system.positions, np.float64)
    if system.is_periodic:
        C_s = np.array(replicas, float)[:, None] * np.asarray(system.cell, np.float64)
        box0 = np.linalg.cholesky(C_s @ C_s.T).T
        displacement, _ = space.periodic_general(jnp.asarray(box0), fractional_coordinates=True)
        fn = partition.neighbor_list(
            displacement, jnp.asarray(box0), reach, dr_threshold=0.0,
            capacity_multiplier=capacity_multiplier, fractional_coordinates=True,
            format=partition.NeighborListFormat.Dense,
        )
        return {"_neighbor_fn": fn}
    lo, hi = R.min(axis=0), R.max(axis=0)
    origin = lo - reach
    box = (hi - lo) + 2.0 * reach
    displacement, _ = space.free()
    fn = partition.neighbor_list(
        displacement, jnp.asarray(box), reach, dr_threshold=0.0,
        capacity_multiplier=capacity_multiplier, fractional_coordinates=False,
        format=partition.NeighborListFormat.Dense,
    )
    return {"_neighbor_fn": fn, "_origin": origin}
