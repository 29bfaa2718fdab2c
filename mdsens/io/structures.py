"""Structure files through ASE: ``read(path, format=None)`` and ``write(atoms, path)``.

Any format ASE reads is accepted; the format is taken from ``format`` or guessed by ASE from
the file name and content. Every failure is an :class:`~mdsens.io.errors.InputError` with a
one-line message: missing, empty or unreadable file, unknown format, no atoms, non-finite
positions.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError

__all__ = ["read", "write", "known_formats"]

# Suffixes ASE does not recognise by name, and the format (with read options) they mean.
_SUFFIX_FORMATS: dict[str, tuple[str, dict[str, Any]]] = {
    ".lmp": ("lammps-data", {"atom_style": "atomic"}),
    ".lammps": ("lammps-data", {"atom_style": "atomic"}),
}


def known_formats() -> tuple[str, ...]:
    """Names of the formats ASE knows (``ase.io.formats.ioformats``)."""
    from ase.io.formats import ioformats

    return tuple(sorted(ioformats))


def _check_format(fmt: str | None) -> None:
    if fmt is not None and fmt not in known_formats():
        raise InputError(f"unknown structure format {fmt!r} (see `ase info --formats`)")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def read(path: str | os.PathLike, format: str | None = None) -> Any:
    """Read the last image of a structure file into an ``ase.Atoms``.

    Args:
      path: the file.
      format: an ASE format name (``"extxyz"``, ``"vasp"``, ``"cif"``, ``"lammps-data"``, ...)
        or None to let ASE guess it from the name and content.
    Returns:
      ``ase.Atoms`` with at least one atom and finite positions.
    Raises:
      InputError: missing/empty/unreadable file, unknown format, no atoms, non-finite
        positions.
    """
    import ase.io
    from ase.io.formats import UnknownFileTypeError

    p = Path(path)
    _check_format(format)
    if not p.exists():
        raise InputError(f"{p}: no such file")
    if p.is_dir():
        raise InputError(f"{p}: is a directory, not a structure file")
    if p.stat().st_size == 0:
        raise InputError(f"{p}: the file is empty")
    options: dict[str, Any] = {}
    if format is None and p.suffix.lower() in _SUFFIX_FORMATS:
        format, options = _SUFFIX_FORMATS[p.suffix.lower()]
    if format is None:
        try:
            from ase.io.formats import filetype

            filetype(str(p), guess=False)
        except UnknownFileTypeError:
            raise InputError(
                f"{p}: unknown structure format; pass --format (an ASE format name)"
            ) from None
        except Exception:
            pass  # ASE's detector failed on the content; let read() report it
    try:
        atoms = ase.io.read(str(p), format=format, index=-1, **options)
    except UnknownFileTypeError as exc:
        raise InputError(f"{p}: unknown structure format ({_one_line(exc)})") from None
    except PermissionError:
        raise InputError(f"{p}: permission denied") from None
    except Exception as exc:  # ASE raises many types for malformed files
        raise InputError(f"{p}: cannot read as a structure file: {_one_line(exc)}") from None
    if isinstance(atoms, list):  # pragma: no cover - index=-1 gives one image
        atoms = atoms[-1]
    if len(atoms) == 0:
        raise InputError(f"{p}: the structure has no atoms")
    positions = np.asarray(atoms.get_positions())
    if not np.all(np.isfinite(positions)):
        raise InputError(f"{p}: non-finite atomic positions (NaN or inf)")
    return atoms


def write(atoms: Any, path: str | os.PathLike, format: str | None = None) -> None:
    """Write ``atoms`` with ASE (format from ``format`` or the file name), atomically."""
    import ase.io

    _check_format(format)
    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp{os.getpid()}")
    try:
        ase.io.write(str(tmp), atoms, format=format or _format_from_name(p))
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()


def _format_from_name(p: Path) -> str:
    from ase.io.formats import filetype

    try:
        return filetype(str(p), read=False)
    except Exception as exc:
        raise InputError(f"{p}: cannot tell the output format from the name") from exc
