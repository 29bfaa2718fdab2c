"""Structure files through ASE: ``read(path, format=None, index=-1)``,
``read_frames(path, format=None, index=":")`` and ``write(atoms, path)``.

Any format ASE reads is accepted; the format is taken from ``format`` or guessed by ASE from
the file name and content. Frames of a multi-frame file are chosen with ASE's index
syntax (:func:`parse_index`: ``"0"``, ``"-1"``, ``"2:5"``, ``"::2"``, ``":"``). Every
failure is an :class:`~mdsens.io.errors.InputError` with a one-line message: missing, empty
or unreadable file, unknown format, bad or out-of-range index, no atoms, non-finite
positions.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError

__all__ = ["Frames", "check_write", "known_formats", "output_format", "parse_index", "read",
           "read_frames", "write"]

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


_INDEX_RE = re.compile(r"^\s*(-?\d+)\s*$|^\s*(-?\d*)\s*:\s*(-?\d*)\s*(?::\s*(-?\d*)\s*)?$")


def parse_index(text: str | int | slice) -> int | slice:
    """ASE's frame index syntax: ``"3"``/``"-1"`` -> an int, ``"2:5"``, ``"::2"``, ``":"``
    -> a slice (Python semantics, negative counts from the end). Ints and slices pass.

    Raises:
      InputError: anything else, or a zero slice step.
    """
    if isinstance(text, (int, slice)) and not isinstance(text, bool):
        return text
    m = _INDEX_RE.match(str(text))
    if not m:
        raise InputError(f"bad index {text!r}: expected ASE's syntax, e.g. 0, -1, 2:5, ::2 "
                         "or :")
    if m.group(1) is not None:
        return int(m.group(1))
    start, stop, step = (int(g) if g else None for g in m.group(2, 3, 4))
    if step == 0:
        raise InputError(f"bad index {text!r}: the slice step must not be 0")
    return slice(start, stop, step)


@dataclass(frozen=True)
class Frames:
    """Frames chosen from a structure file by :func:`read_frames`.

    Attributes:
      images: the chosen ``ase.Atoms``, in file order of the selection.
      indices: their frame numbers in the file (0-based, non-negative).
      n_frames: how many frames the file holds.
    """

    images: list[Any]
    indices: list[int]
    n_frames: int


def _open_checks(p: Path, format: str | None) -> tuple[str | None, dict[str, Any]]:
    """Refuse a missing/empty/unknown file; the format (and read options) to read it with."""
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
        from ase.io.formats import UnknownFileTypeError, filetype

        try:
            filetype(str(p), guess=False)
        except UnknownFileTypeError:
            raise InputError(
                f"{p}: unknown structure format; pass --format (an ASE format name)"
            ) from None
        except Exception:
            pass  # ASE's detector failed on the content; let read() report it
    return format, options


def _read_all(p: Path, format: str | None, options: dict[str, Any]) -> list[Any]:
    """Every frame of ``p`` (``ase.io.read(index=":")``), failures as InputError."""
    import ase.io
    from ase.io.formats import UnknownFileTypeError

    try:
        images = ase.io.read(str(p), format=format, index=":", **options)
    except UnknownFileTypeError as exc:
        raise InputError(f"{p}: unknown structure format ({_one_line(exc)})") from None
    except PermissionError:
        raise InputError(f"{p}: permission denied") from None
    except Exception as exc:  # ASE raises many types for malformed files
        raise InputError(f"{p}: cannot read as a structure file: {_one_line(exc)}") from None
    images = images if isinstance(images, list) else [images]
    if not images:
        raise InputError(f"{p}: the file holds no structure")
    return images


def _check_atoms(atoms: Any, where: str) -> None:
    if len(atoms) == 0:
        raise InputError(f"{where}: the structure has no atoms")
    if not np.all(np.isfinite(np.asarray(atoms.get_positions()))):
        raise InputError(f"{where}: non-finite atomic positions (NaN or inf)")


def read_frames(path: str | os.PathLike, format: str | None = None,
                index: str | int | slice = ":") -> Frames:
    """Read the frames ``index`` selects (ASE syntax, :func:`parse_index`) from a file.

    Args:
      path: the file.
      format: an ASE format name or None to let ASE guess it.
      index: one frame (``-1``, ``"0"``) or a slice (``"2:5"``, ``":"``).
    Returns:
      :class:`Frames` with at least one image, each with atoms and finite positions.
    Raises:
      InputError: as :func:`read`, a bad index, an index beyond the frames, or a slice
        that selects no frame.
    """
    p = Path(path)
    sel = parse_index(index)
    format, options = _open_checks(p, format)
    images = _read_all(p, format, options)
    n = len(images)
    if isinstance(sel, int):
        if not -n <= sel < n:
            raise InputError(f"{p}: index {index} is out of range: the file has {n} "
                             f"frame{'s' if n != 1 else ''}")
        indices = [sel % n]
    else:
        indices = list(range(n))[sel]
        if not indices:
            raise InputError(f"{p}: index {index!r} selects no frame of the {n}")
    chosen = [images[i] for i in indices]
    for i, atoms in zip(indices, chosen):
        _check_atoms(atoms, str(p) if n == 1 else f"{p} frame {i}")
    return Frames(chosen, indices, n)


def read(path: str | os.PathLike, format: str | None = None,
         index: str | int = -1) -> Any:
    """Read one frame (default: the last) of a structure file into an ``ase.Atoms``.

    Args:
      path: the file.
      format: an ASE format name (``"extxyz"``, ``"vasp"``, ``"cif"``, ``"lammps-data"``, ...)
        or None to let ASE guess it from the name and content.
      index: the frame, ASE syntax (``-1``, ``"0"``, or a slice that selects exactly one).
    Returns:
      ``ase.Atoms`` with at least one atom and finite positions.
    Raises:
      InputError: missing/empty/unreadable file, unknown format, bad index or one that
        does not select exactly one frame, no atoms, non-finite positions.
    """
    frames = read_frames(path, format, index)
    if len(frames.images) != 1:
        raise InputError(f"{path}: index {index!r} selects {len(frames.images)} frames; "
                         "exactly one is needed")
    return frames.images[0]


def output_format(path: str | os.PathLike) -> str:
    """The ASE format a structure written to ``path`` gets, from its name (ASE's rules,
    plus ``.lmp``/``.lammps`` for LAMMPS data files, as :func:`read` takes them).

    Raises:
      InputError: no format ASE can write has this name.
    """
    p = Path(path)
    if p.suffix.lower() in _SUFFIX_FORMATS:
        return _SUFFIX_FORMATS[p.suffix.lower()][0]
    from ase.io.formats import filetype, ioformats

    try:
        fmt = filetype(str(p), read=False)
        writable = ioformats[fmt].can_write
    except Exception:  # ase raises several kinds for an unknown name
        writable = False
    if not writable:
        raise InputError(f"{p}: no structure format ASE writes has this name")
    return fmt


def write(atoms: Any, path: str | os.PathLike, format: str | None = None) -> None:
    """Write ``atoms`` with ASE (format from ``format`` or the file name,
    :func:`output_format`), atomically: nothing is left at ``path`` when it fails.

    Raises:
      InputError: an unknown format, or one that cannot hold this structure (e.g. POSCAR
        or CIF of a cluster without a cell), with ASE's reason in one line.
    """
    import ase.io

    _check_format(format)
    p = Path(path)
    fmt = format or output_format(p)
    tmp = p.with_name(f".{p.name}.tmp{os.getpid()}")
    try:
        try:
            ase.io.write(str(tmp), atoms, format=fmt)
        except Exception as exc:  # ASE raises many types for what a format cannot hold
            raise InputError(f"{p}: cannot write this structure as {fmt}: "
                             f"{_one_line(exc).rstrip('.')}") from None
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()


def check_write(atoms: Any, path: str | os.PathLike, format: str | None = None) -> None:
    """Refuse, before any work, a structure the format of ``path`` cannot hold: ``atoms``
    (the input, with the cell and boundary conditions the output will have) is written
    to a temporary file of that format and removed.

    Raises:
      InputError: as :func:`write`.
    """
    import tempfile
    import warnings

    p = Path(path)
    with tempfile.TemporaryDirectory(prefix="mdsens-probe-") as directory, \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numpy's on a singular cell: the error says it
        try:
            write(atoms, Path(directory) / p.name, format)
        except InputError as exc:
            raise InputError(str(exc).replace(str(Path(directory) / p.name), str(p))) from None
