r"""Potential base class, the per-evaluation geometry it sees, and the registry.

A :class:`Potential` is a small frozen object: a differentiable ``params`` pytree (a dict
of arrays), static settings (its other dataclass fields: cutoffs, switches, file paths) and
``species``, the chemical symbols that per-species parameters refer to. It knows nothing
about neighbour lists, periodic images or replication: :mod:`mdsens.md.model` turns a
system into a :class:`Geometry` and calls :meth:`Potential.total_energy` on it.

Writing a potential (the contract)
----------------------------------
Subclass :class:`Potential` as a frozen dataclass and implement

* ``energy(params, nb) -> scalar``: the total energy of the atoms of ``nb``, a dense *full*
  :class:`Neighborhood` (pair i->j and j->i both present); pair potentials therefore sum
  :math:`\tfrac12 \sum_i \sum_m \phi(r_{im})`.
* ``cutoff(params=None) -> float``: the interaction range in Å (host side, a Python float)
  for the given (default: own) parameters. Neighbour lists and small-cell replication use it.

then register a factory with :func:`register`::

    @register("my_pot", aliases=("mp",))
    def my_pot(a=1.0, *, species=None, r_cutoff=3.0) -> MyPot: ...

Potentials that need something other than a neighbourhood (e.g. :func:`custom`) override
:meth:`Potential.total_energy` instead and set ``uses_neighborhood = False``.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from ase.data import atomic_numbers

Array = jax.Array
Params = dict[str, Array]

__all__ = [
    "Geometry",
    "Neighborhood",
    "Potential",
    "as_param",
    "get",
    "names",
    "pair_param",
    "register",
    "resolve_pair_params",
]


# ----------------------------------------------------------------------------- geometry
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
        displacement from its periodic image instead of taking the minimum image.
      mesh: optional ``jax.sharding.Mesh`` whose devices share the evaluation, row blocks
        of the list each (:mod:`mdsens.md.sharding`); potentials that cannot split their
        work ignore it.
    """

    positions: Array
    cell: Array | None
    species: Array
    idx: Array | None
    pad_distance: float
    images: tuple[Array, Array] | None = None
    mesh: Any = None

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
        """
        slots, X_ref = self.images
        R, C = self.positions, self.cell
        n, d = R.shape
        Rc = fractional_near(R, C, X_ref) @ C
        shifts = jnp.asarray(image_shifts(d), R.dtype) @ C  # (3^d, d)
        n_images = shifts.shape[0]
        far = _stop(jnp.max(Rc, axis=0)) + self.pad_distance
        sources = [jnp.concatenate([(shifts[:, k][:, None] + Rc[:, k][None, :]).reshape(-1),
                                    far[k][None]]) for k in range(d)]
        species_src = jnp.concatenate([jnp.tile(self.species, n_images),
                                       jnp.zeros((1,), self.species.dtype)])

        def gather(rows: Array | None) -> Neighborhood:
            sl = slots if rows is None else slots[rows]
            Ri = Rc if rows is None else Rc[rows]
            comps = [sources[k][sl] - Ri[:, k][:, None] for k in range(d)]
            r = jnp.sqrt(functools.reduce(jnp.add, [c * c for c in comps]))
            species = self.species if rows is None else self.species[rows]
            return Neighborhood(jnp.stack(comps, axis=-1), r, sl < n * n_images, sl, species,
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


# ----------------------------------------------------------------------------- params
def as_param(value: Any) -> Array:
    """Convert a parameter value to a jax array, float64 unless the user chose a dtype.

    Python numbers and integer arrays become float64 (float32 when jax x64 is disabled);
    floating numpy/jax arrays keep their dtype (so explicit float32 is respected).
    """
    if isinstance(value, jax.Array) and jnp.issubdtype(value.dtype, jnp.floating):
        return value
    arr = np.asarray(value)
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    return jnp.asarray(arr)


_SELECT_SPECIES_MAX = 4  # above: one gather per slot and parameter


def pair_param(value: Array, species_i: Array, species_j: Array) -> Array:
    r"""Per-pair value of a parameter: scalar as is, ``(S, S)`` matrix as ``P[s_i, s_j]``.

    Args:
      value: scalar or ``(S, S)`` array.
      species_i: ``(N,)`` species of the centre atoms.
      species_j: ``(N, M)`` species of their neighbours.
    Returns:
      scalar or ``(N, M)``.
    """
    if jnp.ndim(value) == 0:
        return value
    n_species = value.shape[-1]
    if n_species > _SELECT_SPECIES_MAX:
        # one 1-D gather from the flattened table (faster on CPU than a 2-D gather)
        return value.reshape(-1)[species_i[:, None] * n_species + species_j]
    # row i's S values P[s_i, :] (one gather per atom), then per slot a chain of S - 1
    # selects on s_j: elementwise and vectorised, ≈ 20 % of a Kob–Andersen force
    # evaluation faster on CPU than one gather per slot and parameter
    rows = value[species_i]  # (N, S)
    out = jnp.broadcast_to(rows[:, :1], species_j.shape)
    for t in range(1, n_species):
        out = jnp.where(species_j == t, rows[:, t:t + 1], out)
    return out


def _species_key(symbol: str) -> tuple[int, str]:
    return (atomic_numbers.get(symbol, 10**6), symbol)


def _pair_key(key: Any) -> tuple[str, str]:
    if isinstance(key, str):
        parts = key.split("-")
        if len(parts) == 2:
            return parts[0], parts[1]
    elif isinstance(key, tuple) and len(key) == 2 and all(isinstance(k, str) for k in key):
        return key
    raise ValueError(f"pair key {key!r}: expected a tuple ('A', 'B') or a string 'A-B'")


def resolve_pair_params(
    raw: Mapping[str, Any], species: Sequence[str] | None = None
) -> tuple[Params, tuple[str, ...] | None]:
    r"""Normalise pair parameters to scalars or symmetric ``(S, S)`` matrices.

    Each value may be

    * a scalar: applies to every pair (keeps shape ``()``);
    * a dict keyed by species pairs, ``{("Ar", "Kr"): 3.6, ("Ar", "Ar"): 3.4, ...}`` (or
      ``"Ar-Kr"`` strings): becomes an ``(S, S)`` symmetric matrix; every unordered pair
      of the species must be given exactly once (either order);
    * an ``(S, S)`` symmetric array: requires ``species`` (its row/column labels).

    Species order: ``species`` when given, else the symbols of all dict keys sorted by
    atomic number (then name, for non-elements).

    Returns:
      ``(params, species)``; ``species`` is None when every parameter is a scalar and no
      species were given.
    """
    names_: list[str] = list(species) if species is not None else []
    if species is None:
        found: set[str] = set()
        for value in raw.values():
            if isinstance(value, Mapping):
                for key in value:
                    found.update(_pair_key(key))
        names_ = sorted(found, key=_species_key)
    if len(set(names_)) != len(names_):
        raise ValueError(f"duplicate species in {tuple(names_)}")
    pos = {s: k for k, s in enumerate(names_)}
    out: Params = {}
    for name, value in raw.items():
        if isinstance(value, Mapping):
            mat = np.full((len(names_), len(names_)), np.nan)
            for key, v in value.items():
                a, b = _pair_key(key)
                if a not in pos or b not in pos:
                    raise ValueError(f"{name}: species pair {key!r} not in species {tuple(names_)}")
                if not np.isnan(mat[pos[a], pos[b]]):
                    raise ValueError(f"{name}: species pair {key!r} given twice")
                mat[pos[a], pos[b]] = mat[pos[b], pos[a]] = float(v)
            missing = [
                f"{a}-{b}" for a in names_ for b in names_ if pos[a] <= pos[b] and
                np.isnan(mat[pos[a], pos[b]])
            ]
            if missing:
                raise ValueError(f"{name}: missing species pairs {', '.join(missing)}")
            out[name] = as_param(mat)
            continue
        arr = as_param(value)
        if arr.ndim == 2:
            if species is None:
                raise ValueError(f"{name}: an (S, S) matrix needs species=(...) naming its rows")
            if arr.shape != (len(names_), len(names_)):
                raise ValueError(f"{name}: shape {arr.shape}, expected {(len(names_),) * 2}")
            if not isinstance(arr, jax.core.Tracer) and not np.allclose(arr, arr.T):
                raise ValueError(f"{name}: per-pair matrix must be symmetric")
        elif arr.ndim != 0:
            raise ValueError(f"{name}: expected a scalar or an (S, S) matrix, got {arr.shape}")
        out[name] = arr
    if species is None and not names_:
        return out, None
    return out, tuple(names_)


# ----------------------------------------------------------------------------- potential
LJ_BOND_STIFFNESS = 36 * 2 ** (2 / 3)
r"""Lennard-Jones's :math:`\sigma^2\phi''/\varepsilon` at its minimum
:math:`2^{1/6}\sigma` (= 57.15)."""


@dataclasses.dataclass(frozen=True, eq=False)
class Potential:
    r"""Base class of all potentials (frozen; hashed by identity so it can be jit-static).

    Attributes:
      params: the differentiable parameters, ``{name: array}``; a scalar applies to all
        species pairs, an ``(S, S)`` symmetric matrix is per pair (rows/columns follow
        ``species``). Shapes are kept as the user gave them, so derivatives come back in
        the same shapes. The gradient w.r.t. a matrix is symmetric; the derivative w.r.t.
        the physical a-b parameter (both entries moving together) is ``G[a, b] + G[b, a]``.
      species: chemical symbols that per-species parameters refer to, or None.

    Subclasses add static settings as further dataclass fields (with defaults).
    """

    name: ClassVar[str] = "potential"
    uses_neighborhood: ClassVar[bool] = True
    neighbor_list_threshold: ClassVar[int] = 300
    """``neighbor_list="auto"`` uses a list above this many internal atoms. Measured for
    Lennard-Jones: at 256 atoms all pairs cost 0.33 ms a step against the list's 0.25 ms,
    but the first relaxation takes 0.8 s instead of 2.8 s (no list to allocate, smaller
    programs to compile); at 500 atoms all pairs cost 3.4× the list per step. Three-body
    potentials without a list cost O(N³) per evaluation, so they set it lower."""
    hessian_range_factor: ClassVar[float] = 2.0
    """The Hessian couples atoms up to this many cutoffs apart: 1 for pair potentials, 2
    for three-body and embedded-atom ones (neighbours of a common neighbour)."""
    bond_stiffness: ClassVar[float] = LJ_BOND_STIFFNESS
    r"""The dimensionless stiffness of a bond, :math:`\kappa = \ell^2\phi''/\varepsilon` at
    the pair minimum or contact (ℓ, ε the potential's length and energy units). It only
    scales the relaxation's time unit, :math:`\tau = \ell\sqrt{m/\varepsilon}
    \sqrt{\kappa_{LJ}/\kappa}`, so that the default time steps (measured on Lennard-Jones,
    :math:`\kappa_{LJ} = 57.15`) suit softer potentials too. Default: Lennard-Jones's."""

    param_units: ClassVar[Mapping[str, str]] = {}
    """Each differentiable parameter's unit in human form (:mod:`mdsens.units`: ``"Å"``,
    ``"eV"``, ``"1/Å"``, ``"eV Å"``, ``"1"`` dimensionless). Every registered potential
    declares all of its parameters; ``tests/test_cli_fast.py`` checks it against the
    catalog."""

    params: Params
    species: tuple[str, ...] | None = None

    def parameter_unit(self, name: str) -> str:
        """The unit of parameter ``name`` (``"sigma[Ar,Kr]"`` is ``sigma``'s), or
        ``"unknown"`` when it is not declared."""
        return self.param_units.get(name.split("[", 1)[0], "unknown")

    @property
    def settings(self) -> dict[str, Any]:
        """The static settings (every dataclass field other than params and species)."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("params", "species")
        }

    def with_params(self, **updates: Any) -> Potential:
        """A copy with some parameters replaced (same validation as the factory)."""
        unknown = set(updates) - set(self.params)
        if unknown:
            raise ValueError(f"{self.name}: unknown parameters {sorted(unknown)}")
        merged = {**self.params, **updates}
        params, species = resolve_pair_params(merged, self.species)
        return dataclasses.replace(self, params=params, species=species)

    def cutoff(self, params: Params | None = None) -> float | None:
        """Interaction range in Å for ``params`` (default: own); None if unbounded."""
        raise NotImplementedError

    def energy(self, params: Params, nb: Neighborhood) -> Array:
        """Total energy (eV) of the atoms of ``nb``; see the module docstring."""
        raise NotImplementedError

    def total_energy(self, params: Params, geometry: Geometry) -> Array:
        """Energy of a :class:`Geometry`; default: ``energy(params, geometry.neighborhood())``."""
        return self.energy(params, geometry.neighborhood())

    def build(self, system: Any, neighbor_list: Any = "auto", skin: float | None = None, **kw: Any):
        """Shortcut for :func:`mdsens.md.model.build` ``(system, self, ...)``."""
        from ..model import build

        return build(system, self, neighbor_list=neighbor_list, skin=skin, **kw)


# ----------------------------------------------------------------------------- registry
_FACTORIES: dict[str, Callable[..., Potential]] = {}
_ALIASES: dict[str, str] = {}


def register(
    name: str, factory: Callable[..., Potential] | None = None, *, aliases: Sequence[str] = ()
):
    """Register a potential factory under ``name`` (and ``aliases``).

    Use as ``register("lj_like", factory)`` or as a decorator ``@register("lj_like")``.
    Re-registering a name raises ``ValueError``.
    """

    def _add(f: Callable[..., Potential]) -> Callable[..., Potential]:
        for key in (name, *aliases):
            if key in _FACTORIES or key in _ALIASES:
                raise ValueError(f"potential name {key!r} is already registered")
        _FACTORIES[name] = f
        for alias in aliases:
            _ALIASES[alias] = name
        return f

    return _add if factory is None else _add(factory)


def get(name: str, **kwargs: Any) -> Potential:
    """Build the potential registered as ``name`` (or an alias) with ``kwargs``."""
    key = _ALIASES.get(name, name)
    if key not in _FACTORIES:
        raise ValueError(f"unknown potential {name!r}; known: {', '.join(names(aliases=True))}")
    return _FACTORIES[key](**kwargs)


def names(aliases: bool = False) -> tuple[str, ...]:
    """Registered potential names (canonical; with ``aliases=True`` also the aliases)."""
    out = sorted(_FACTORIES)
    if aliases:
        out += sorted(_ALIASES)
    return tuple(out)


def factories() -> dict[str, Callable[..., Potential]]:
    """Canonical name and alias -> factory (a copy)."""
    out = dict(_FACTORIES)
    out.update({a: _FACTORIES[n] for a, n in _ALIASES.items()})
    return out
