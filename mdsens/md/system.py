r"""The :class:`System` pytree: positions, cell, species and boundary conditions.

Conventions (ASE): positions ``R`` are Cartesian, shape ``(N, d)``, in Å; the cell is
``(d, d)`` with the lattice vectors as ROWS, so a fractional coordinate ``s`` maps to
``s @ cell``. Positions are float64 unless the user passes a float32 array (jax must have
x64 enabled for float64: ``jax.config.update("jax_enable_x64", True)``; the library never
changes it).

Boundary conditions are all-or-nothing: ``pbc`` all True (periodic, any triclinic cell)
or all False (free; ``cell`` is kept for the round trip to ASE but ignored by energies).
Mixed pbc is refused, unless :meth:`System.from_ase` is asked to pad the non-periodic
directions with vacuum (the vacuum must exceed the potential's cutoff).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from ase.data import atomic_numbers

__all__ = ["System"]

Array = jax.Array


def _as_float_array(x: Any) -> Array:
    """float64 unless ``x`` is already a floating array (then its dtype is kept)."""
    if isinstance(x, jax.Array) and np.issubdtype(x.dtype, np.floating):
        return x
    if isinstance(x, np.ndarray) and np.issubdtype(x.dtype, np.floating):
        return jax.device_put(x)  # jnp.asarray would compile a program per shape
    return jax.device_put(np.asarray(x, dtype=np.float64))


def _symbol_order(symbol: str) -> tuple[int, str]:
    return (atomic_numbers.get(symbol, 10**6), symbol)


def _mixed_pbc_error(pbc: tuple[bool, ...]) -> ValueError:
    return ValueError(
        f"mixed periodic boundary conditions pbc={pbc} are not supported: use "
        "System.from_ase(atoms, vacuum=...) to pad the non-periodic directions, or make "
        "pbc all True or all False"
    )


@dataclasses.dataclass(frozen=True)
class System:
    r"""An atomic structure (registered pytree; construct with :meth:`create`/:meth:`from_ase`).

    Attributes:
      positions: ``(N, d)`` Cartesian positions, Å (data).
      cell: ``(d, d)`` lattice vectors as rows, Å (data; ignored for free systems).
      species: ``(N,)`` int32 index into ``species_names`` (data).
      pbc: ``(d,)`` tuple of bools, all True or all False (static).
      species_names: species labels, chemical symbols for ASE round trips (static).

    ``species`` is an integer leaf: ``jax.grad`` of a function of a whole System needs
    ``allow_int=True`` (or differentiate ``positions``/``cell`` directly).
    """

    positions: Array
    cell: Array
    species: Array
    pbc: tuple[bool, ...] = dataclasses.field(default=(True, True, True))
    species_names: tuple[str, ...] = dataclasses.field(default=("X",))

    # ------------------------------------------------------------------ constructors
    @classmethod
    def create(
        cls,
        positions: Any,
        cell: Any = None,
        species: Any = None,
        pbc: bool | Sequence[bool] | None = None,
        species_names: Sequence[str] | None = None,
    ) -> System:
        """Validated constructor.

        Args:
          positions: ``(N, d)`` Cartesian positions (Å).
          cell: ``(d, d)`` rows = lattice vectors, or ``(d,)`` orthorhombic lengths, or None
            (free system).
          species: None (one species ``"X"``), ``N`` symbols (``["Ar", "Kr", ...]``), or
            ``N`` ints indexing ``species_names``.
          pbc: bool or ``d`` bools; default True when a cell is given, else False.
          species_names: labels for integer species (required with int species).
        Raises:
          ValueError: bad shapes, mixed pbc, singular periodic cell, unknown species.
        """
        R = _as_float_array(positions)
        if R.ndim != 2 or R.shape[1] not in (2, 3):
            raise ValueError(f"positions must have shape (N, 2) or (N, 3), got {R.shape}")
        n, d = R.shape
        if cell is None:
            C = jnp.zeros((d, d), R.dtype)
            pbc = False if pbc is None else pbc
        else:
            C = _as_float_array(cell)
            if C.ndim == 1:
                C = jnp.diag(C)
            if C.shape != (d, d):
                raise ValueError(f"cell must have shape {(d, d)} or {(d,)}, got {C.shape}")
            pbc = True if pbc is None else pbc
        pbc_t = tuple(bool(p) for p in np.broadcast_to(np.asarray(pbc, bool), (d,)))
        if any(pbc_t) and not all(pbc_t):
            raise _mixed_pbc_error(pbc_t)
        if all(pbc_t) and abs(float(np.linalg.det(np.asarray(C)))) < 1e-12:
            raise ValueError("periodic system needs a non-singular cell")
        sp, names = cls._species(species, species_names, n)
        return cls(R, C, sp, pbc_t, names)

    @staticmethod
    def _species(species: Any, names: Sequence[str] | None, n: int) -> tuple[Array, tuple]:
        if species is None:
            return jnp.zeros(n, jnp.int32), tuple(names or ("X",))
        arr = np.asarray(species)
        if arr.shape != (n,):
            raise ValueError(f"species must have shape ({n},), got {arr.shape}")
        if arr.dtype.kind in "US":
            symbols = [str(s) for s in arr]
            labels = tuple(names) if names is not None else tuple(
                sorted(set(symbols), key=_symbol_order)
            )
            missing = set(symbols) - set(labels)
            if missing:
                raise ValueError(f"species {sorted(missing)} not in species_names {labels}")
            pos = {s: k for k, s in enumerate(labels)}
            return jax.device_put(np.asarray([pos[s] for s in symbols], np.int32)), labels
        if names is None:
            raise ValueError("integer species need species_names=(...)")
        if n and (arr.min() < 0 or arr.max() >= len(names)):
            raise ValueError(f"species indices out of range for species_names {tuple(names)}")
        return jnp.asarray(arr, jnp.int32), tuple(names)

    @classmethod
    def from_ase(cls, atoms: Any, vacuum: float | None = None) -> System:
        """System from ``ase.Atoms`` (species = chemical symbols, sorted by atomic number).

        Args:
          atoms: the structure; its cell rows, positions and pbc are used as they are.
          vacuum: for mixed pbc only: pad each non-periodic direction so that ``vacuum`` Å
            separates the atoms from their periodic images on each side (ASE
            ``Atoms.center(vacuum, axis)``), then treat the system as fully periodic.
        Raises:
          ValueError: mixed pbc without ``vacuum``.
        """
        pbc = tuple(bool(p) for p in atoms.pbc)
        if any(pbc) and not all(pbc):
            if vacuum is None:
                raise _mixed_pbc_error(pbc)
            atoms = atoms.copy()
            atoms.center(vacuum=vacuum, axis=[k for k, p in enumerate(pbc) if not p])
            pbc = (True,) * len(pbc)
        return cls.create(
            np.asarray(atoms.get_positions(), np.float64),
            np.asarray(atoms.cell.array, np.float64),
            atoms.get_chemical_symbols(),
            pbc,
        )

    def to_ase(self) -> Any:
        """``ase.Atoms`` with the same symbols, positions, cell and pbc."""
        from ase import Atoms

        symbols = [self.species_names[int(s)] for s in np.asarray(self.species)]
        bad = sorted({s for s in symbols if s not in atomic_numbers})
        if bad:
            raise ValueError(f"species {bad} are not chemical symbols; cannot build ase.Atoms")
        return Atoms(
            symbols=symbols,
            positions=np.asarray(self.positions, np.float64),
            cell=np.asarray(self.cell, np.float64),
            pbc=self.pbc,
        )

    # ------------------------------------------------------------------ properties
    @property
    def n_atoms(self) -> int:
        return int(self.positions.shape[0])

    @property
    def dim(self) -> int:
        return int(self.positions.shape[1])

    @property
    def is_periodic(self) -> bool:
        return all(self.pbc)

    @property
    def volume(self) -> Array:
        """``|det(cell)|`` (Å^d); meaningless (often 0) for free systems."""
        return jnp.abs(jnp.linalg.det(self.cell))

    def replace(self, **changes: Any) -> System:
        """A copy with fields replaced (no validation; e.g. ``replace(positions=R)``)."""
        return dataclasses.replace(self, **changes)


jax.tree_util.register_dataclass(
    System,
    data_fields=["positions", "cell", "species"],
    meta_fields=["pbc", "species_names"],
)
