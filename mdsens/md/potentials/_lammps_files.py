"""Readers for LAMMPS potential files (Stillinger-Weber, Tersoff, EAM funcfl / setfl).

Pure host-side parsing into NumPy float64 arrays; nothing here touches JAX. The formats are
those documented for LAMMPS ``pair_style sw``, ``tersoff`` and ``eam`` / ``eam/alloy``
(https://docs.lammps.org/pair_sw.html, pair_tersoff.html, pair_eam.html), in LAMMPS
``metal`` units (eV, Å).

Entry files (``.sw``, ``.tersoff``): everything after a ``#`` on a line is a comment; the
remaining words form consecutive entries of a fixed number of words (an entry may span
several lines), each starting with three element symbols.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

# Words per entry after the three element symbols, in file order.
SW_FIELDS: tuple[str, ...] = (
    "epsilon", "sigma", "a", "lambda", "gamma", "cos_theta0", "A", "B", "p", "q", "tol",
)  # fmt: skip
TERSOFF_FIELDS: tuple[str, ...] = (
    "m", "gamma", "lambda3", "c", "d", "cos_theta0", "n", "beta",
    "lambda2", "B", "R", "D", "lambda1", "A",
)  # fmt: skip

# LAMMPS converts funcfl effective charges Z(r) to r*phi(r) = 27.2 * 0.529 * Z_i(r) Z_j(r)
# (Hartree in eV times Bohr in Å, rounded as in pair_eam.cpp).
FUNCFL_ZZ_TO_RPHI = 27.2 * 0.529

Triplet = tuple[str, str, str]


def _entry_words(path: str | Path) -> list[str]:
    words: list[str] = []
    with open(path, encoding="utf-8") as fd:
        for line in fd:
            words.extend(line.split("#", 1)[0].split())
    return words


def read_entries(path: str | Path, fields: tuple[str, ...]) -> dict[Triplet, dict[str, float]]:
    """Read a LAMMPS three-element entry file (``.sw``, ``.tersoff``).

    Returns ``{(e1, e2, e3): {field: value}}`` in file order. A later entry for the same
    triplet replaces an earlier one (as in LAMMPS). Raises ``ValueError`` when the number of
    words is not a multiple of the entry size or a value is not a number.
    """
    words = _entry_words(path)
    size = 3 + len(fields)
    if len(words) % size != 0:
        raise ValueError(
            f"{path}: {len(words)} words is not a multiple of the entry size {size} "
            f"(3 element symbols + {', '.join(fields)})"
        )
    entries: dict[Triplet, dict[str, float]] = {}
    for start in range(0, len(words), size):
        block = words[start : start + size]
        key = (block[0], block[1], block[2])
        try:
            values = [float(w) for w in block[3:]]
        except ValueError as exc:
            raise ValueError(f"{path}: bad number in entry {key}: {exc}") from None
        entries[key] = dict(zip(fields, values, strict=True))
    return entries


def entry_elements(entries: dict[Triplet, dict[str, float]]) -> tuple[str, ...]:
    """Distinct element symbols of an entry file, in order of first appearance."""
    seen: dict[str, None] = {}
    for key in entries:
        for e in key:
            seen.setdefault(e, None)
    return tuple(seen)


def entries_to_arrays(
    entries: dict[Triplet, dict[str, float]],
    elements: tuple[str, ...],
    fields: tuple[str, ...],
) -> dict[str, np.ndarray]:
    """Arrange entries as ``(S, S, S)`` float64 arrays indexed ``[i, j, k]`` by position in
    ``elements``; every triplet over ``elements`` must be present (``ValueError`` otherwise).
    """
    s = len(elements)
    out = {f: np.empty((s, s, s), dtype=np.float64) for f in fields}
    for i, ei in enumerate(elements):
        for j, ej in enumerate(elements):
            for k, ek in enumerate(elements):
                entry = entries.get((ei, ej, ek))
                if entry is None:
                    raise ValueError(f"potential file has no entry for {ei} {ej} {ek}")
                for f in fields:
                    out[f][i, j, k] = entry[f]
    return out


@dataclasses.dataclass(frozen=True)
class EAMTables:
    """Tabulated EAM functions on uniform grids (LAMMPS setfl layout).

    ``F[a, m]`` = F_a(m * drho) (eV); ``rho[a, m]`` = rho_a(m * dr) (electron density of an
    atom of element a at distance m * dr); ``z2r[a, b, m]`` = r phi_ab(r) at r = m * dr
    (eV Å), symmetric in (a, b). ``cutoff`` in Å. ``fmt``: "setfl" or "funcfl".
    """

    elements: tuple[str, ...]
    nrho: int
    drho: float
    nr: int
    dr: float
    cutoff: float
    F: np.ndarray
    rho: np.ndarray
    z2r: np.ndarray
    masses: tuple[float, ...]
    header: str
    fmt: str


def _floats(words: list[str], start: int, count: int, path: str | Path) -> np.ndarray:
    if start + count > len(words):
        raise ValueError(f"{path}: file ends early ({len(words) - start} of {count} values)")
    return np.asarray(words[start : start + count], dtype=np.float64)


def read_eam_setfl(path: str | Path) -> EAMTables:
    """Read a DYNAMO setfl file (LAMMPS ``pair_style eam/alloy``, ``*.eam.alloy``).

    Layout: three comment lines; ``S el_1 ... el_S``; ``Nrho drho Nr dr cutoff``; per element
    a line ``Z mass a lattice`` then F (Nrho values) and rho (Nr values); then r*phi for the
    pairs (i, j), i >= j, in the order (1,1), (2,1), (2,2), (3,1), ...
    """
    with open(path, encoding="utf-8") as fd:
        lines = fd.readlines()
    if len(lines) < 6:
        raise ValueError(f"{path}: too short for a setfl file")
    header = "".join(lines[:3])
    words = " ".join(lines[3:]).split()
    s = int(words[0])
    elements = tuple(words[1 : 1 + s])
    pos = 1 + s
    nrho, drho, nr, dr, cutoff = (
        int(words[pos]), float(words[pos + 1]), int(words[pos + 2]),
        float(words[pos + 3]), float(words[pos + 4]),
    )  # fmt: skip
    pos += 5
    F = np.empty((s, nrho))
    rho = np.empty((s, nr))
    masses = []
    for a in range(s):
        masses.append(float(words[pos + 1]))
        pos += 4
        F[a] = _floats(words, pos, nrho, path)
        pos += nrho
        rho[a] = _floats(words, pos, nr, path)
        pos += nr
    z2r = np.empty((s, s, nr))
    for a in range(s):
        for b in range(a + 1):
            z2r[a, b] = z2r[b, a] = _floats(words, pos, nr, path)
            pos += nr
    return EAMTables(
        elements, nrho, drho, nr, dr, cutoff, F, rho, z2r, tuple(masses), header, "setfl"
    )


def read_eam_funcfl(path: str | Path) -> EAMTables:
    """Read a DYNAMO funcfl file (LAMMPS ``pair_style eam``, single element ``*.eam``).

    Layout: one comment line; ``Z mass a lattice``; ``Nrho drho Nr dr cutoff``; F (Nrho
    values), effective charge Z(r) (Nr values), rho (Nr values). As in LAMMPS,
    r*phi(r) = 27.2 * 0.529 * Z(r)^2 (eV Å). The element symbol is taken from the atomic
    number on line 2.
    """
    from ase.data import chemical_symbols

    with open(path, encoding="utf-8") as fd:
        lines = fd.readlines()
    if len(lines) < 4:
        raise ValueError(f"{path}: too short for a funcfl file")
    header = lines[0]
    words = " ".join(lines[1:]).split()
    number, mass = int(words[0]), float(words[1])
    nrho, drho, nr, dr, cutoff = (
        int(words[4]), float(words[5]), int(words[6]), float(words[7]), float(words[8]),
    )  # fmt: skip
    pos = 9
    F = _floats(words, pos, nrho, path)
    pos += nrho
    zr = _floats(words, pos, nr, path)
    pos += nr
    rho = _floats(words, pos, nr, path)
    z2r = FUNCFL_ZZ_TO_RPHI * zr * zr
    return EAMTables(
        (chemical_symbols[number],), nrho, drho, nr, dr, cutoff,
        F[None], rho[None], z2r[None, None], (mass,), header, "funcfl",
    )  # fmt: skip


def read_eam(path: str | Path, fmt: str | None = None) -> EAMTables:
    """Read an EAM table file; ``fmt`` is ``"setfl"`` or ``"funcfl"``, or ``None`` to choose
    by suffix (``.eam.alloy`` / ``.alloy`` / ``.setfl`` -> setfl, ``.eam`` -> funcfl)."""
    name = str(path)
    if fmt is None:
        if name.endswith((".alloy", ".setfl")):
            fmt = "setfl"
        elif name.endswith(".eam"):
            fmt = "funcfl"
        else:
            raise ValueError(
                f"cannot tell the EAM format of {name!r} from its suffix: pass "
                "fmt='setfl' (eam/alloy) or fmt='funcfl' (eam)"
            )
    if fmt == "setfl":
        return read_eam_setfl(path)
    if fmt == "funcfl":
        return read_eam_funcfl(path)
    raise ValueError(f"unknown EAM format {fmt!r}: expected 'setfl' or 'funcfl'")
