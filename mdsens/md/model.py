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
  :meth:`EnergyModel.update` rebuilds when the two atoms that moved most since the last
  build moved more than skin together, or when the cell changed (a fractional-coordinate
  list cannot see a box change).
  Padded slots carry a constant dummy displacement beyond the cutoff (a double ``where``),
  so parameter and position gradients stay finite. The lists themselves (allocation,
  update, rebuild rule, overflow) are :mod:`mdsens.md.neighbors`; the assembled Hessian
  of a pair potential is :mod:`mdsens.md.pair_hessian`.
* Free systems: plain Cartesian displacements, all pairs or a jax-md cell list over the
  bounding box (positions outside it are still handled: cells wrap, pairs are pruned by
  true distance).
* Forces :math:`F = -\partial E/\partial R`; stress :math:`\sigma = V^{-1}\,\partial E/
  \partial \varepsilon` at :math:`\varepsilon = 0` with :math:`C' = C(I+\varepsilon)`,
  :math:`R' = R(I+\varepsilon)` (ASE's sign convention).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from . import _cell_search
from ._exchange import ProcessRows
from .geometry import Geometry
from .neighbors import NeighborListManager, Neighbors
from .pair_hessian import pair_hessian_matvec as _pair_hessian_matvec
from .potentials.base import Array, Params, Potential
from .potentials.pair import PairPotential
from .sharding import mesh_for
from .system import System

__all__ = ["AUTO_NEIGHBOR_THRESHOLD", "EnergyModel", "Neighbors", "build"]

AUTO_NEIGHBOR_THRESHOLD = Potential.neighbor_list_threshold
"""Default of ``Potential.neighbor_list_threshold``: ``neighbor_list="auto"`` uses a list
above this many (super)cell atoms."""

DEFAULT_SKIN_FRACTION = 0.1
"""Default skin, as a fraction of the cutoff."""


@dataclasses.dataclass(frozen=True, eq=False)
class EnergyModel:
    """Energy of one system layout under one potential (see the module docstring).

    Build with :func:`build`. Hashed and compared by identity, so it can be a static jit
    argument. The model evaluates energies; neighbour lists are the job of its
    :attr:`neighbor_lists` manager (:mod:`mdsens.md.neighbors`), which :meth:`allocate`,
    :meth:`update`, :meth:`needs_rebuild` and :meth:`overflowed` call on the internal
    (super)cell.

    Attributes:
      potential: the :class:`Potential` (its ``params`` are the default ``params``).
      n_atoms, dim, periodic: the user's system layout.
      species: ``(N,)`` int32 species indices as the potential sees them.
      replicas: copies of the user's cell along each lattice vector (all 1 if none).
      cutoff: interaction range in Å (None when the potential has none).
      skin: neighbour-list skin and small-cell margin, Å.
      capacity_multiplier: spare neighbour-list capacity at allocation.
      mesh: the ``jax.sharding.Mesh`` whose devices share each evaluation (row blocks of
        the neighbour list; :mod:`mdsens.md.sharding`), or None for one device.
      neighbor_lists: the :class:`~mdsens.md.neighbors.NeighborListManager` of the
        internal (super)cell, or None when the model uses no list.
      all_pairs: without a list, for a neighbourhood potential: the ``(n, n)`` int32 index
        table of every other internal atom (diagonal padded with n), else None.
    """

    potential: Potential
    n_atoms: int
    dim: int
    periodic: bool
    species: np.ndarray
    replicas: tuple[int, ...]
    cutoff: float | None
    skin: float
    capacity_multiplier: float = 1.25
    mesh: Any = None
    neighbor_lists: NeighborListManager | None = None
    all_pairs: np.ndarray | None = dataclasses.field(default=None, repr=False)

    @property
    def uses_neighbor_list(self) -> bool:
        """Whether :meth:`energy` needs ``nbrs``."""
        return self.neighbor_lists is not None

    @property
    def list_origin(self) -> np.ndarray | None:
        """Free systems with a list: the lower corner of the list's box, Å, shape (d,)
        (part of the compiled program's identity, see
        :func:`mdsens.md._models.program_key`); else None."""
        return None if self.neighbor_lists is None else self.neighbor_lists.origin

    # ------------------------------------------------------------------ geometry
    @property
    def params(self) -> Params:
        return self.potential.params

    @property
    def n_copies(self) -> int:
        return math.prod(self.replicas)

    @property
    def pad_distance(self) -> float:
        """Distance (Å) a padded neighbour slot is placed at: beyond cutoff + skin, so a
        padded pair contributes nothing (and, guarded, no NaN gradient)."""
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

    def supercell_species(self) -> np.ndarray:
        """Species of the internal atoms, shape (n_copies * N,), copy-major like
        :meth:`supercell`."""
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
            if nbrs.table is not None:  # the same slots, renumbered into a short table
                images = (nbrs.table.slots, nbrs.nlist.reference_position,
                          nbrs.table.ghosts)
            owned = nbrs.owned
        else:
            idx = None if self.all_pairs is None else jnp.asarray(self.all_pairs)
            images = owned = None
        geom = Geometry(R_s, C_s, jnp.asarray(self.supercell_species()), idx, self.pad_distance,
                        images, self.mesh, owned)
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
        sparse operator ``v (N, d) -> H v (N, d)`` with attribute ``diagonal_blocks``
        ``(N, d, d)``, from the pair stiffnesses of the listed pairs
        (:func:`mdsens.md.pair_hessian.pair_hessian_matvec`, which states the math).
        Differentiable in ``R``, ``cell`` and ``params`` like any JAX function.

        Raises:
          ValueError: not :attr:`has_pair_hessian`.
        """
        if not self.has_pair_hessian:
            raise ValueError("pair_hessian_matvec needs a pair potential without replication")
        params = self.potential.params if params is None else params
        idx = nbrs.nlist.idx if self.uses_neighbor_list else jnp.asarray(self.all_pairs)
        geom = Geometry(R, cell, jnp.asarray(self.supercell_species()), idx, self.pad_distance)
        return _pair_hessian_matvec(self.potential, params, geom)

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
    def allocate(
        self, R: Array, cell: Array | None, extra_capacity: int = 0
    ) -> Neighbors | None:
        """New neighbour list for ``R``, ``cell`` (host side, not jit-able); None if unused.

        ``extra_capacity`` adds neighbour slots per atom beyond the
        ``capacity_multiplier`` margin (for states whose density is still changing).
        See :meth:`mdsens.md.neighbors.NeighborListManager.allocate`.
        """
        if not self.uses_neighbor_list:
            return None
        cell = None if cell is None else jnp.asarray(cell)
        R_s, C_s = self.supercell(jnp.asarray(R), cell)
        return self.neighbor_lists.allocate(R_s, C_s, extra_capacity)

    def update(self, R: Array, cell: Array | None, nbrs: Neighbors | None,
               force: Any = False) -> Neighbors | None:
        r"""Neighbour list for new positions and cell (jit-able; keeps the capacity).

        Rebuilds when a pair outside the list could have come within the cutoff
        (:meth:`needs_rebuild`) or when ``force`` (a bool or bool scalar array: the list's
        reference point is not to be trusted); otherwise returns ``nbrs``. Check
        :meth:`overflowed` afterwards. None when ``nbrs`` is None. See
        :meth:`mdsens.md.neighbors.NeighborListManager.update`.
        """
        if nbrs is None:
            return None
        R_s, C_s = self.supercell(R, cell)
        # worker processes that share the force loop share the rebuild's search too
        split = self.mesh.cells() if isinstance(self.mesh, ProcessRows) else None
        return self.neighbor_lists.update(R_s, C_s, nbrs, force, split)

    def needs_rebuild(self, R: Array, cell: Array | None, nbrs: Neighbors) -> Array:
        """True (``bool`` scalar array; jit-able) if :meth:`update` would rebuild ``nbrs``
        for positions ``R`` and ``cell``: the two atoms of the internal cell that moved
        most moved more than skin together, or the cell changed as much
        (:meth:`mdsens.md.neighbors.NeighborListManager.needs_rebuild`)."""
        R_s, C_s = self.supercell(R, cell)
        return self.neighbor_lists.needs_rebuild(R_s, C_s, nbrs)

    def overflowed(self, nbrs: Neighbors | None) -> Array:
        """True if the list must be reallocated (``bool`` scalar array; jit-able); False
        for None (:meth:`mdsens.md.neighbors.NeighborListManager.overflowed`)."""
        return NeighborListManager.overflowed(nbrs)


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
    lists, all_pairs = None, None
    if use_nl:
        C_s = None
        if system.is_periodic:
            C_s = np.array(replicas, float)[:, None] * np.asarray(system.cell, np.float64)
        span = potential.owned_pairs
        owned = span is not None and span[0] < n_internal <= span[1]
        above = potential.image_table_above
        lists = NeighborListManager.create(
            system.positions, C_s, cutoff, float(skin), capacity_multiplier,
            owned_pairs=owned,
            image_table=not owned and above is not None and n_internal > above)
    elif potential.uses_neighborhood:
        all_pairs = np.broadcast_to(np.arange(n_internal, dtype=np.int32),
                                    (n_internal,) * 2).copy()
        np.fill_diagonal(all_pairs, n_internal)
    return EnergyModel(
        potential=potential,
        n_atoms=system.n_atoms,
        dim=system.dim,
        periodic=system.is_periodic,
        species=_map_species(system, potential),
        replicas=replicas,
        cutoff=cutoff,
        skin=float(skin),
        capacity_multiplier=float(capacity_multiplier),
        mesh=mesh_for(n_internal, devices) if use_nl else None,
        neighbor_lists=lists,
        all_pairs=all_pairs,
    )
