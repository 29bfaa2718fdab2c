r"""Potential base class, parameter handling and the registry.

A :class:`Potential` is a small frozen object: a differentiable ``params`` pytree (a dict
of arrays), static settings (its other dataclass fields: cutoffs, switches, file paths) and
``species``, the chemical symbols that per-species parameters refer to. It knows nothing
about neighbour lists, periodic images or replication: :mod:`mdsens.md.model` turns a
system into a :class:`~mdsens.md.geometry.Geometry` (:mod:`mdsens.md.geometry`) and calls
:meth:`Potential.total_energy` on it.

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
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from ase.data import atomic_numbers

# the geometry lives in mdsens.md.geometry; re-exported here for existing imports
from ..geometry import Geometry, Neighborhood

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
    return jax.device_put(arr)  # jnp.asarray would compile a program per shape


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
    owned_pairs: ClassVar[tuple[int, int] | None] = None
    """``(above, up_to)``: neighbour lists of systems with more than ``above`` and at most
    ``up_to`` internal atoms also list each pair once (``Geometry.owned``), for a potential
    whose force loop is faster with it there; None: never."""
    image_table_above: ClassVar[int | None] = None
    """Neighbour lists of systems with more than this many internal atoms and no owned
    pairs carry an image table (``mdsens.md.neighbors.ImageTable``), for a potential whose
    force loop reads pair displacements from periodic images; None: never."""
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
        from ..model import build  # lazy: the model imports the potentials, not back

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
