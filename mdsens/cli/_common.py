"""Shared pieces of the CLI: exit codes, the bad-input error, options defined once, checks
of the input that need no numerics, turning options into a System and a Potential, and the
outcome of a run in the command line's words.

The checks run before JAX is imported (about a second), so that bad input is refused at
once, each with one line that names the option (or the file) to change: names of
potentials, parameters, observables and ``--wrt`` come from the JAX-free
:mod:`mdsens.md.catalog`, as do the units that say which parameter values make sense
(finite; lengths and energies positive); the structure from ASE (boundaries: periodic,
free or a slab; the cell; overlaps). JAX is imported only to build and evaluate
(``enable_x64``, ``make_potential``, ``make_system`` (a slab padded with vacuum, the
cutoff checked against the structure before any neighbour list is sized),
``check_energy``).
"""

from __future__ import annotations

import enum
import math
import re
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from ..md import catalog
from ..md.options import METHODS, RelaxOptions

DEFAULT_METHOD = RelaxOptions.method  # the library's default minimiser


class ExitCode(enum.IntEnum):
    """Process exit status of every ``mdsens`` command."""

    SUCCESS = 0
    NOT_CONVERGED = 1  # relaxation or a derivative solve failed; the file is still written
    BAD_INPUT = 2  # bad usage or bad input; nothing written


class BadInput(click.ClickException):
    """Bad input: a one-line ``Error: ...`` on stderr, exit code 2, no traceback."""

    exit_code = ExitCode.BAD_INPUT

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


# ----------------------------------------------------------------------------- options
def _stack(*decorators: Callable) -> Callable:
    def apply(f: Callable) -> Callable:
        for d in reversed(decorators):
            f = d(f)
        return f

    return apply


structure_argument = click.argument("structure", type=click.Path(path_type=Path))
format_option = click.option(
    "--format", "fmt", default=None, metavar="FMT",
    help="ASE format of STRUCTURE (default: guessed from the name and content).")
index_option = click.option(
    "--index", default=None, metavar="INDEX",
    help="Frame of a multi-frame STRUCTURE, ASE syntax: 0, -1, 2:5 (one frame where one is "
         "used; default: the last, with a note when there are several).")
potential_option = click.option(
    "-p", "--potential", required=True, metavar="NAME",
    help="Registered potential name or alias (see `mdsens potentials`).")
param_option = click.option(
    "--param", "params", multiple=True, metavar="NAME=VALUE",
    help="Potential parameter; repeatable. Per species pair: 'sigma[Ar,Kr]=3.6'.")
potential_file_option = click.option(
    "--potential-file", type=click.Path(path_type=Path), default=None,
    help="Parameter file for file-based potentials (EAM, Tersoff, SW).")
relax_cell_option = click.option(
    "--relax-cell", is_flag=True,
    help="Relax the cell as well as the positions (at --pressure, default 0).")
class _Pressure(click.ParamType):
    """A pressure: a number in eV/Å^3, or a number with a unit ("1GPa", "0.5 eV/Ang^3",
    "10 kbar") converted to eV/Å^3 with :mod:`mdsens.units`."""

    name = "pressure"

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        if isinstance(value, float):
            return value
        try:
            return float(value)
        except ValueError:
            pass
        from ..units import value_in

        try:
            return value_in(str(value), "eV/Å^3")
        except ValueError as exc:
            raise BadInput(f"--pressure: {exc}") from None


pressure_option = click.option(
    "--pressure", type=_Pressure(), default=None, metavar="P",
    help="External pressure for --relax-cell: a number in eV/Å^3, or with a unit: 1GPa, "
         "'0.5 eV/Ang^3', '10 kbar' (1 GPa = 6.2415e-3 eV/Å^3).")
method_option = click.option(
    "--method", type=click.Choice(list(METHODS)), default=DEFAULT_METHOD, show_default=True,
    help="Minimiser of the relaxation (FIRE, FIRE 2.0 or gradient descent).")
fmax_option = click.option(
    "--fmax", type=float, default=None,
    help="Force tolerance of the relaxation, eV/Å (relax: 1e-6, sensitivity: 1e-8).")
max_steps_option = click.option(
    "--max-steps", type=int, default=None,
    help="Maximum relaxation steps (relax: 10000, sensitivity: 100000).")
stress_tol_option = click.option(
    "--stress-tol", type=float, default=None, metavar="EV_PER_A3",
    help="Stress tolerance of a cell relaxation (--relax-cell): max|σ + pI| in eV/Å^3 "
         "(default: --fmax divided by the area of one atom's share of a face).")
processes_option = click.option(
    "--processes", type=int, default=1, show_default=True, metavar="K",
    help="Worker processes that share the relaxation, one pinned core each (pair "
         "potentials on systems with a neighbour list; for a machine whose cores are free).")
output_option = click.option(
    "-o", "--output", required=True, type=click.Path(path_type=Path),
    help="Output file.")
overwrite_option = click.option(
    "--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
quiet_option = click.option(
    "-q", "--quiet", is_flag=True, help="Print nothing on success, and no progress bar.")
verbose_option = click.option(
    "-v", "--verbose", is_flag=True,
    help="Log each stage with its duration, and let JAX/XLA's own log lines (compiler "
         "warnings, slow-compile alarms) through to stderr.")
partial_option = click.option(
    "--partial/--no-partial", default=True, show_default=True,
    help="When the run does not converge, still write OUTPUT (marked converged = false); "
         "--no-partial writes nothing. The exit code is 1 either way.")

model_options = _stack(structure_argument, format_option, index_option, potential_option,
                       param_option,
                       potential_file_option, relax_cell_option, pressure_option, fmax_option,
                       stress_tol_option, max_steps_option, method_option)
output_options = _stack(output_option, overwrite_option, quiet_option, verbose_option)


def set_verbosity(verbose: bool) -> None:
    """Before JAX is imported: XLA's C++ log lines (warnings, errors such as the
    slow-compile alarm) reach stderr with ``-v`` (``TF_CPP_MIN_LOG_LEVEL`` at most 1, JAX's
    default), none without (level 3, which the ``mdsens`` group sets unless the user chose
    another level). No effect once JAX is imported."""
    import os

    level = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "1")
    if verbose and not (level.isdigit() and int(level) <= 1):
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "1"
    elif not verbose and level == "1":
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"


# ----------------------------------------------------------------------------- parsing
_PARAM_RE = re.compile(r"^\s*([A-Za-z_]\w*)\s*(?:\[\s*([A-Za-z]\w*)\s*,\s*([A-Za-z]\w*)\s*\])?"
                       r"\s*=\s*(.+?)\s*$")


def parse_params(items: Sequence[str], source: str = "--param") -> dict[str, Any]:
    """``["sigma=3.4", "eps[Ar,Kr]=0.01"]`` -> ``{"sigma": 3.4, "eps": {("Ar","Kr"): 0.01}}``."""
    out: dict[str, Any] = {}
    for item in items:
        m = _PARAM_RE.match(item)
        if not m:
            raise BadInput(f"{source} {item!r}: expected NAME=VALUE or 'NAME[A,B]=VALUE'")
        name, a, b, text = m.groups()
        try:
            value = float(text)
        except ValueError:
            raise BadInput(f"{source} {item!r}: {text!r} is not a number") from None
        if a is None:
            if name in out:
                raise BadInput(f"{source} {name!r} given twice")
            out[name] = value
        else:
            table = out.setdefault(name, {})
            if not isinstance(table, dict):
                raise BadInput(f"{source} {name!r} given both as a scalar and per species pair")
            if (a, b) in table or (b, a) in table:
                raise BadInput(f"{source} {name}[{a},{b}] given twice")
            table[(a, b)] = value
    return out


def merge_params(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` (the command line) on top of ``base`` (the config file), by name; a
    per-pair entry replaces one entry of a per-pair table of ``base`` (either order)."""
    out = dict(base)
    for name, value in override.items():
        old = out.get(name)
        if isinstance(value, dict) and isinstance(old, dict):
            table = {k: v for k, v in old.items()
                     if k not in value and (k[1], k[0]) not in value}
            out[name] = {**table, **value}
        else:
            out[name] = value
    return out


HDF5_SUFFIXES = (".h5", ".hdf5", ".h5md")
"""Output names an HDF5 (H5MD) result is written under."""


def check_output(path: Path, overwrite: bool, kind: str = "any") -> None:
    """Refuse, before any work, an output that could not be written at the end: an existing
    file without ``--overwrite``, a directory, a missing or unwritable directory, or a name
    whose suffix does not say the format written.

    Args:
      kind: ``"hdf5"`` (``.h5``, ``.hdf5``, ``.h5md``), ``"png"``, ``"structure"`` (HDF5 or
        any format ASE writes, from the suffix) or ``"any"`` (no suffix check).
    """
    if path.exists() and not overwrite:
        raise BadInput(f"{path}: output exists; pass --overwrite to replace it")
    if path.is_dir():
        raise BadInput(f"{path}: output is a directory")
    if not path.parent.exists():
        raise BadInput(f"{path.parent}: output directory does not exist")
    if not path.parent.is_dir():
        raise BadInput(f"{path.parent}: not a directory; choose another -o")
    _check_suffix(path, kind)
    _check_writable(path.parent)


def _check_suffix(path: Path, kind: str) -> None:
    suffix = path.suffix.lower()
    if kind == "hdf5" and suffix not in HDF5_SUFFIXES:
        raise BadInput(f"{path}: the output is HDF5 (H5MD); name it with -o *.h5")
    if kind == "png" and suffix != ".png":
        raise BadInput(f"{path}: the figure is a PNG; name it with -o *.png")
    if kind == "structure" and suffix not in HDF5_SUFFIXES:
        from ..io.errors import InputError
        from ..io.structures import output_format

        try:
            output_format(path)
        except InputError:
            raise BadInput(f"{path}: no structure format ASE writes has this name; use -o "
                           f"*.h5 (H5MD), *.xyz (extended XYZ), *.cif, POSCAR, ...") from None


def check_structure_output(atoms: Any, path: Path) -> None:
    """Refuse, before any work, a structure OUTPUT whose format cannot hold this structure
    (POSCAR or CIF of a cluster without a cell, ...): one atom of each species, with the
    structure's cell and boundary conditions (a slab padded as it will be), is written to
    a temporary file of that format. HDF5 outputs hold every structure."""
    if path.suffix.lower() in HDF5_SUFFIXES:
        return
    from ..io.errors import InputError
    from ..io.structures import check_write

    symbols = atoms.get_chemical_symbols()
    probe = atoms[sorted({s: k for k, s in reversed(list(enumerate(symbols)))}.values())]
    if boundary(atoms) == "mixed":
        probe.center(vacuum=1.0, axis=[k for k, p in enumerate(atoms.pbc) if not p])
    try:
        check_write(probe, path)
    except InputError as exc:
        raise BadInput(f"{exc}; choose another -o format (*.xyz holds any structure)") from None


def _check_writable(directory: Path) -> None:
    """Create and remove a temporary file in ``directory`` (permissions alone do not say
    whether, e.g., ``/proc`` takes a new file)."""
    import tempfile

    try:
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".mdsens-check-"):
            pass
    except OSError as exc:
        raise BadInput(f"{directory}: cannot write there ({exc.strerror}); choose another "
                       f"-o") from None


def command_line() -> str:
    """The command line of this process, shell-quoted."""
    return " ".join(shlex.quote(a) for a in ["mdsens", *sys.argv[1:]])


def enable_x64() -> None:
    """Configure JAX for a command (an application, not the library): float64, which
    sensitivities need, and the persistent compilation cache of
    :mod:`mdsens.compile_cache` (``MDSENS_CACHE_DIR=off`` turns it off)."""
    import jax

    from ..compile_cache import enable

    jax.config.update("jax_enable_x64", True)
    directory = enable()
    if directory is not None:
        from ..md import stage_store

        stage_store.enable(directory / "stages")


def check_index(index: str | None) -> None:
    """Refuse a ``--index`` that is not ASE's index syntax (before ASE or JAX is loaded)."""
    if index is None:
        return
    from ..io.errors import InputError
    from ..io.structures import parse_index

    try:
        parse_index(index)
    except InputError as exc:
        raise BadInput(f"--index: {exc}") from None


def load_frames(path: Path, fmt: str | None, index: str | None) -> list[tuple[str, Any]]:
    """The frames of STRUCTURE that ``--index`` selects, as ``(label, ase.Atoms)``; the
    label is ``path`` for a one-frame file and ``path@k`` (k the frame number) otherwise.

    Without ``--index``: the last frame, and a one-line note on stderr when the file has
    several. BadInput for a missing/unreadable file or a bad or out-of-range index.
    """
    check_structure_exists(path)
    check_index(index)
    from ..io.errors import InputError
    from ..io.structures import read_frames

    try:
        frames = read_frames(path, format=fmt, index=-1 if index is None else index)
    except InputError as exc:
        raise BadInput(str(exc)) from None
    if index is None and frames.n_frames > 1:
        click.echo(f"note: {path} has {frames.n_frames} frames; using the last (-1); "
                   "choose with --index", err=True)
    if frames.n_frames == 1:
        return [(str(path), frames.images[0])]
    return [(f"{path}@{k}", atoms) for k, atoms in zip(frames.indices, frames.images)]


def load_structure(path: Path, fmt: str | None, index: str | None = None) -> Any:
    """Read one frame of STRUCTURE into an ``ase.Atoms`` (BadInput on failure, or when
    ``--index`` selects more or fewer than one frame); a missing file is refused before
    ASE is imported. Frame choice and the note as in :func:`load_frames`."""
    frames = load_frames(path, fmt, index)
    if len(frames) != 1:
        raise BadInput(f"{path}: --index {index} selects {len(frames)} frames; this command "
                       "takes exactly one")
    return frames[0][1]


def check_structure_exists(path: Path) -> None:
    """Refuse a STRUCTURE that does not exist (the wording of :func:`mdsens.io.read`)."""
    if not path.exists():
        raise BadInput(f"{path}: no such file")


# ----------------------------------------------------------------------------- checks (no JAX)
_PAIR_NAME_RE = re.compile(r"^(\w+)\[\s*([A-Za-z]\w*)\s*,\s*([A-Za-z]\w*)\s*\]$")


def check_potential(name: str, params: dict[str, Any],
                    potential_file: Path | None) -> catalog.PotentialInfo:
    """The catalog entry of potential ``name``, after checking without JAX that the command
    line can build it: a registered name, known parameters (per species pair only where
    the potential takes tables, every pair of a table's species present) and a potential
    file where one is needed."""
    info = catalog.potential(name)
    if info is None:
        raise BadInput(f"unknown potential {name!r}; known: {', '.join(catalog.names(True))}")
    if info.python_only:
        raise BadInput(f"potential {name!r} is built from a Python function; use the Python "
                       f"API (mdsens.md.potentials.{info.name})")
    _check_params(info, name, params)
    _check_param_values(info, params)
    _check_pair_tables(name, params)
    _check_potential_file(info, name, potential_file)
    return info


def _check_params(info: catalog.PotentialInfo, name: str, params: dict[str, Any]) -> None:
    """Each ``--param`` names a settable parameter of the potential, once, with a value of
    the right kind (a per-pair table only where allowed, one of the allowed values)."""
    seen: dict[str, str] = {}
    for key, value in params.items():
        p = info.parameter(key)
        if p is None or not p.settable:
            known = ", ".join(info.settable) or "none (its parameters come from the file)"
            raise BadInput(f"unknown parameter {key!r} for potential {name!r}; known: {known}")
        if p.name in seen:
            raise BadInput(f"parameter {p.name!r} of potential {name!r} given twice (as "
                           f"{seen[p.name]!r} and {key!r})")
        seen[p.name] = key
        if isinstance(value, dict) and not p.per_pair:
            raise BadInput(f"parameter {key!r} of potential {name!r} takes no per-species-pair "
                           "values")
        if p.choices and value not in p.choices:
            allowed = ", ".join(f"{c:g}" for c in p.choices)
            raise BadInput(f"parameter {key!r} of potential {name!r} must be one of {allowed}, "
                           f"got {value:g}")


_POSITIVE_UNITS = {"Å": "a length", "σ": "a length in units of sigma", "eV": "an energy"}
"""Units of parameters that must be > 0 (a zero or negative length or energy scale has no
physical meaning, and a negative length gives the neighbour list a negative size)."""
_NON_NEGATIVE_UNITS = {"1/Å": "an inverse length"}
"""Units of parameters that must be >= 0 (Tersoff's lambda3 is 0 in many parametrisations)."""


def _check_param_values(info: catalog.PotentialInfo, params: dict[str, Any]) -> None:
    """Each ``--param`` value is finite; lengths (Å, multiples of sigma) and energies (eV)
    are positive, inverse lengths (1/Å) not negative, as the catalog's units say; the
    switch of a switched pair potential starts before it ends (``r_onset < r_cutoff``)."""
    for key, value in params.items():
        p = info.parameter(key)
        if p is None:
            continue
        entries = value.items() if isinstance(value, dict) else [(None, value)]
        for pair, x in entries:
            label = key if pair is None else f"{key}[{pair[0]},{pair[1]}]"
            if not math.isfinite(x):
                raise BadInput(f"--param {label}={x}: not a finite number; give a value in "
                               f"{p.unit}")
            if p.unit in _POSITIVE_UNITS and not x > 0:
                raise BadInput(f"--param {label}={x:g}: {_POSITIVE_UNITS[p.unit]} ({p.unit}) "
                               "must be positive")
            if p.unit in _NON_NEGATIVE_UNITS and not x >= 0:
                raise BadInput(f"--param {label}={x:g}: {_NON_NEGATIVE_UNITS[p.unit]} "
                               f"({p.unit}) must not be negative")
    onset, cutoff = info.parameter("r_onset"), info.parameter("r_cutoff")
    if onset is not None and cutoff is not None:
        r_on = params.get("r_onset", onset.default)
        r_off = params.get("r_cutoff", cutoff.default)
        if not r_on < r_off:
            raise BadInput(f"--param r_onset={r_on:g} must be below r_cutoff={r_off:g} (both "
                           "in units of sigma): the switch runs from r_onset to r_cutoff")


def _check_pair_tables(name: str, params: dict[str, Any]) -> None:
    """Every species of a per-pair table is a chemical symbol, and every table covers every
    pair of the species of all tables (as the potential's factory requires)."""
    from ase.data import atomic_numbers

    for key, table in params.items():
        if not isinstance(table, dict):
            continue
        for a, b in table:
            for s in (a, b):
                if s not in atomic_numbers:
                    hint = s[:1].upper() + s[1:].lower()
                    guess = f" (did you mean {hint}?)" if hint in atomic_numbers else ""
                    raise BadInput(f"--param {key}[{a},{b}]: {s!r} is not a chemical "
                                   f"symbol{guess}; species are named as in the structure "
                                   "file")
    species = pair_species(params)
    for key, table in params.items():
        if not isinstance(table, dict):
            continue
        missing = [f"{a}-{b}" for i, a in enumerate(species) for b in species[i:]
                   if (a, b) not in table and (b, a) not in table]
        if missing:
            raise BadInput(f"--param {key}: per-pair values need every pair of the species "
                           f"{', '.join(species)}: missing species pairs "
                           f"{', '.join(missing)} (add --param '{key}[A,B]=VALUE'; potential "
                           f"{name!r})")


def pair_species(params: dict[str, Any]) -> tuple[str, ...]:
    """The species of the per-pair tables in ``params``, in the order the potential gives
    them (by atomic number): the potential's ``species`` (empty without tables)."""
    found = {s for value in params.values() if isinstance(value, dict)
             for pair in value for s in pair}
    if not found:
        return ()
    from ase.data import atomic_numbers

    return tuple(sorted(found, key=lambda s: (atomic_numbers.get(s, 10**6), s)))


def _check_potential_file(info: catalog.PotentialInfo, name: str,
                          potential_file: Path | None) -> None:
    """A potential file is given where the potential needs one, exists, and is refused
    where the potential takes none."""
    if potential_file is None:
        if info.potential_file == "required":
            raise BadInput(f"potential {name!r} needs --potential-file ({info.file_note})")
        return
    if info.potential_file == "none":
        raise BadInput(f"potential {name!r} takes no --potential-file")
    if not potential_file.is_file():
        raise BadInput(f"{potential_file}: no such potential file")


def check_observables(observables: Sequence[str]) -> None:
    """Each ``--observable`` is a built-in one the command line can compute, given once."""
    for k, name in enumerate(observables):
        info = catalog.observable(name)
        if info is None:
            raise BadInput(f"unknown observable {name!r}; known: "
                           f"{', '.join(catalog.OBSERVABLE_NAMES)}")
        if info.needs:
            raise BadInput(f"the {name!r} observable needs {info.needs}; use the Python API")
        if name in observables[:k]:
            raise BadInput(f"observable {name!r} requested twice")


def check_wrt(wrt: Sequence[str], info: catalog.PotentialInfo, params: dict[str, Any],
              relax_cell: bool) -> None:
    """Each ``--wrt`` is ``strain`` (fixed cell), ``pressure`` (``--relax-cell``), a
    differentiable parameter of the potential, or ``NAME[A,B]`` of a parameter given per
    species pair; given once. (That the system is periodic, as ``strain`` needs, is
    checked with the structure.)"""
    for k, item in enumerate(wrt):
        if item in wrt[:k]:
            raise BadInput(f"--wrt {item!r} given twice")
        if item == "strain":
            if relax_cell:
                raise BadInput("--wrt strain needs a fixed cell (no --relax-cell: a relaxing "
                               "cell relaxes the strain away)")
        elif item == "pressure":
            if not relax_cell:
                raise BadInput("--wrt pressure needs --relax-cell")
        else:
            check_parameter_name(item, info, params, "--wrt",
                                 "pressure" if relax_cell else "strain")


def check_parameter_name(item: str, info: catalog.PotentialInfo, params: dict[str, Any],
                         source: str, *extra: str) -> None:
    """``item`` (of option ``source``) is a differentiable parameter of the potential or
    ``NAME[A,B]`` with NAME given per species pair over species including A and B;
    ``extra`` names are listed as known too."""
    m = _PAIR_NAME_RE.match(item)
    base = m.group(1) if m else item
    if base not in info.differentiable:
        known = ", ".join([*sorted(info.differentiable), *extra])
        raise BadInput(f"{source} {item!r}: unknown parameter of potential {info.name!r}; "
                       f"known: {known}")
    if m:
        species = pair_species(params)
        if not isinstance(params.get(base), dict) or not {m.group(2), m.group(3)} <= set(
                species):
            raise BadInput(f"{source} {item!r}: {base!r} is not a per-pair parameter over "
                           f"species {list(species)} (give it per pair: --param "
                           f"'{base}[A,B]=VALUE')")


def pbc_text(pbc: Sequence[bool]) -> str:
    """``(True, True, False)`` -> ``"T T F"`` (as extended XYZ writes it)."""
    return " ".join("T" if p else "F" for p in pbc)


def boundary(atoms: Any) -> str:
    """``"periodic"`` (pbc all True), ``"free"`` (all False: a cluster or molecule) or
    ``"mixed"`` (a slab or wire: periodic along some cell vectors only)."""
    pbc = [bool(p) for p in atoms.pbc]
    return "periodic" if all(pbc) else "free" if not any(pbc) else "mixed"


def check_structure(atoms: Any, path: Path, info: catalog.PotentialInfo,
                    params: dict[str, Any], observables: Sequence[str] = (),
                    wrt: Sequence[str] = (), relax_cell: bool = False) -> None:
    """Refuse, without JAX, a structure the run cannot use: a singular periodic cell,
    species without parameters in the per-pair tables, a ``--wrt`` pair of species the
    structure lacks, overlapping atoms, and for a structure that is not periodic in every
    direction (free: a cluster; mixed: a slab) ``--relax-cell``, ``--wrt strain`` and the
    observables of a cell (volume, stress, ...).

    Mixed boundaries are accepted: :func:`make_system` pads the non-periodic directions
    with vacuum wider than the potential's cutoff and treats the structure as periodic.
    (Species of a potential file are checked when the file is read, in
    :func:`make_system`.)
    """
    kind = boundary(atoms)
    where = f"{path} (pbc {pbc_text(atoms.pbc)}"
    where += ": a free cluster)" if kind == "free" else ": a slab)" if kind == "mixed" else ")"
    if kind != "periodic":
        if relax_cell:
            reason = ("a free structure has no cell to relax" if kind == "free" else
                      "across the vacuum there is no stress, and the cell relaxes as a whole")
            raise BadInput(f"--relax-cell needs a structure periodic in every direction; "
                           f"{where}: {reason}; drop --relax-cell")
        for name in observables:
            if catalog.observable(name).periodic_only:
                raise BadInput(f"--observable {name} needs a structure periodic in every "
                               f"direction; {where} has none that means something; choose "
                               "another --observable")
        if "strain" in wrt:
            raise BadInput(f"--wrt strain needs a structure periodic in every direction; "
                           f"{where}")
    checked = atoms
    if kind == "mixed":
        # any vacuum separates the slab from its images for the checks below; the run's
        # own vacuum (wider than the cutoff) is chosen in make_system
        checked = atoms.copy()
        checked.center(vacuum=1.0, axis=[k for k, p in enumerate(atoms.pbc) if not p])
        checked.pbc = True
    if kind != "free":
        _check_cell(checked, path, kind)
    species = pair_species(params)
    present = sorted(set(atoms.get_chemical_symbols()))
    if species:
        missing = [s for s in present if s not in species]
        if missing:
            raise BadInput(f"{path}: species {missing} have no parameters in potential "
                           f"{info.name!r} (it has {list(species)}); add them with --param "
                           "'NAME[A,B]=VALUE'")
    for item in wrt:
        m = _PAIR_NAME_RE.match(item)
        if m:
            absent = [s for s in m.group(2, 3) if s not in present]
            if absent:
                raise BadInput(f"--wrt {item}: {path} has no {', '.join(absent)} atoms (its "
                               f"species: {', '.join(present)}), so the derivative is zero; "
                               "choose a pair of its species")
    _check_overlap(checked, path)


def _check_cell(atoms: Any, path: Path, kind: str) -> None:
    """A periodic cell with volume: ``|det C| > 1e-9 |a||b||c|`` (scale free: the volume
    against that of a cube with the same edge lengths)."""
    import numpy as np

    cell = np.asarray(atoms.cell.array, np.float64)
    lengths = np.linalg.norm(cell, axis=1)
    det = abs(float(np.linalg.det(cell)))
    if not np.all(np.isfinite(cell)) or not det > 1e-9 * float(np.prod(lengths)):
        what = ("the periodic cell vectors" if kind == "periodic"
                else "the periodic cell vectors of the slab")
        raise BadInput(f"{path}: {what} are linearly dependent (singular cell, volume "
                       f"{det:.3g} Å^3); fix the Lattice in the file, or mark the structure "
                       "non-periodic (pbc F F F)")


# ----------------------------------------------------------------------------- building (JAX)
def make_potential(name: str, params: dict[str, Any], potential_file: Path | None) -> Any:
    """Build the registered potential (checked first by :func:`check_potential`), mapping
    every failure to BadInput."""
    info = check_potential(name, params, potential_file)
    from ..md.potentials import get

    kwargs = dict(params)
    if potential_file is not None:
        kwargs["file"] = str(potential_file)
    try:
        return get(info.name, **kwargs)
    except (TypeError, ValueError, OSError, KeyError) as exc:
        raise BadInput(f"potential {name!r}: {exc}") from None


VACUUM_MARGIN = 1.0
"""Å of vacuum beyond the cutoff on each side of a slab (:func:`slab_vacuum`)."""


def slab_vacuum(atoms: Any, potential: Any) -> float | None:
    r"""The vacuum (Å, on each side) that makes a slab periodic in every direction, or None
    for a structure periodic in every direction or in none.

    The vacuum rule of :meth:`mdsens.md.System.from_ase`: each non-periodic direction is
    padded so that ``v = r_c + 1`` Å of vacuum lies on each side of the atoms, so a gap
    of :math:`2 r_c + 2` Å separates them from their periodic images: no interaction crosses
    it (its length exceeds the cutoff :math:`r_c` plus the neighbour-list skin,
    :math:`0.1\,r_c`, plus the surface atoms' relaxation), so the energy, forces and
    derivatives are those of the isolated slab.
    """
    if boundary(atoms) != "mixed":
        return None
    cutoff = _cutoff(potential)
    if cutoff is None:
        raise BadInput(f"potential {potential.name!r} has no cutoff, so no vacuum can "
                       "separate a slab from its images; make pbc all True or all False")
    return cutoff + VACUUM_MARGIN


def boundary_record(atoms: Any, potential: Any) -> dict[str, Any]:
    """The input's boundary conditions for a result file's run configuration: ``pbc`` of
    the input and, for a slab, the ``vacuum`` (Å on each side) it was padded with."""
    return {"pbc": [bool(p) for p in atoms.pbc], "kind": boundary(atoms),
            "vacuum": slab_vacuum(atoms, potential)}


def make_system(atoms: Any, potential: Any, path: Path, params: dict[str, Any] | None = None,
                note: bool = False) -> Any:
    """``ase.Atoms`` -> ``System``, checking species against the potential (those of a
    potential file are known only now) and that the potential's cutoff is sane for the
    structure (:func:`check_size`). A slab (mixed pbc) is padded with
    :func:`slab_vacuum` and becomes periodic in every direction (with ``note``, a line on
    stderr says so). Expects :func:`check_structure` to have run.

    Args:
      params: the ``--param`` values given, named in the message of a cutoff too long.
    """
    from ..md.system import System

    symbols = sorted(set(atoms.get_chemical_symbols()))
    if potential.species:
        missing = [s for s in symbols if s not in potential.species]
        if missing:
            raise BadInput(f"{path}: species {missing} have no parameters in potential "
                           f"{potential.name!r} (it has {list(potential.species)})")
    vacuum = slab_vacuum(atoms, potential)
    try:
        system = System.from_ase(atoms, vacuum=vacuum)
    except ValueError as exc:
        raise BadInput(f"{path}: {exc}") from None
    if vacuum is not None and note:
        axes = "".join("xyz"[k] for k, p in enumerate(atoms.pbc) if not p)
        click.echo(f"note: {path} is a slab (pbc {pbc_text(atoms.pbc)}): {vacuum:.3g} Å of "
                   f"vacuum on each side along {axes} (cutoff {vacuum - VACUUM_MARGIN:.3g} Å "
                   f"+ {VACUUM_MARGIN:g} Å), then periodic", err=True)
    check_size(system, potential, path, params or {})
    return system


MAX_NEIGHBORS = 10_000
"""Most neighbours per atom within the cutoff that :func:`check_size` accepts: a physical
potential reaches tens to a few hundred (LJ at 2.5σ in fcc: 78); ten thousand means a
length parameter far beyond the structure's own scale."""


def neighbor_estimate(system: Any, cutoff: float, threshold: int) -> tuple[float, float]:
    r"""``(neighbours per atom, pair slots)`` of the model :func:`mdsens.md.build` would
    make, estimated without building it.

    Reach :math:`r = 1.1\,r_c` (cutoff plus the default skin). A periodic cell narrower than
    :math:`2r` along lattice vector k is replicated :math:`n_k = \lceil 2r/w_k\rceil` times
    (:math:`w_k` its perpendicular width): :math:`N_s = N\prod_k n_k` internal atoms. The
    neighbours per atom are :math:`\min(N_s - 1, \rho\,\tfrac43\pi r^3)`, with
    :math:`\rho = N/V` (a free structure: its bounding box, each side at least 1 Å);
    the slots are :math:`N_s^2` when :math:`N_s` is at most ``threshold`` (all pairs, no
    list), else :math:`1.25\,N_s` times the neighbours (the list's capacity).
    """
    import numpy as np

    positions = np.asarray(system.positions, np.float64)
    n, d = positions.shape
    reach = 1.1 * cutoff
    if system.is_periodic:
        cell = np.asarray(system.cell, np.float64)
        volume = abs(float(np.linalg.det(cell)))
        widths = 1.0 / np.linalg.norm(np.linalg.inv(cell), axis=0)
        replicas = float(np.prod([max(1.0, math.ceil(2.0 * reach / w - 1e-12))
                                  for w in widths]))
    else:
        extent = np.maximum(np.ptp(positions, axis=0), 1.0)
        volume, replicas = float(np.prod(extent)), 1.0
    n_internal = n * replicas
    ball = math.pi * reach**2 if d == 2 else 4.0 / 3.0 * math.pi * reach**3
    neighbors = min(n_internal - 1.0, n / volume * ball)
    if n_internal <= threshold:
        return neighbors, n_internal**2
    return neighbors, 1.25 * n_internal * neighbors


def _memory_bytes() -> float:
    """Physical memory of this machine (bytes; infinity when unknown)."""
    import os

    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return math.inf


BYTES_PER_SLOT = 100
"""Memory per neighbour slot of one energy-and-force evaluation (displacements, pair terms
and their derivatives, float64), as :func:`check_size` counts it."""


def check_size(system: Any, potential: Any, path: Path, params: dict[str, Any]) -> None:
    """Refuse, before a neighbour list is sized, a cutoff that reaches more than
    :data:`MAX_NEIGHBORS` neighbours per atom or whose pairs would need more than this
    machine's memory (:func:`neighbor_estimate`); the message names the length
    parameters that set the cutoff."""
    cutoff = _cutoff(potential)
    if cutoff is None:
        return
    neighbors, slots = neighbor_estimate(system, cutoff, potential.neighbor_list_threshold)
    need = slots * BYTES_PER_SLOT
    if neighbors <= MAX_NEIGHBORS and need <= _memory_bytes():
        return
    info = catalog.potential(potential.name)
    given = [f"--param {k}={_value_text(v)}" for k, v in params.items()
             if info is not None and (p := info.parameter(k)) is not None
             and p.unit in ("Å", "σ")]
    change = (" or ".join(given) if given else "--potential-file"
              if info is not None and info.potential_file != "none" else "--param")
    raise BadInput(f"{path}: the cutoff {cutoff:.3g} Å of potential {potential.name!r} reaches "
                   f"~{neighbors:.3g} neighbours per atom in this {system.n_atoms}-atom "
                   f"structure (its pairs would need ~{_bytes_text(need)}); a length "
                   f"parameter is far too large: check {change}")


def _value_text(value: Any) -> str:
    if isinstance(value, dict):
        return ",".join(f"[{a},{b}]{x:g}" for (a, b), x in value.items())
    return f"{value:g}"


def _bytes_text(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if n < 1000:
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} EB"


def _check_overlap(atoms: Any, path: Path, min_distance: float = 0.1) -> None:
    """Refuse atoms closer than ``min_distance`` Å (minimum image when periodic, plain
    distances when free; skipped above 3000 atoms). ``atoms`` is periodic in every
    direction or in none (a slab is padded first, in :func:`check_structure`)."""
    import numpy as np
    from ase.geometry import get_distances

    n = len(atoms)
    if n < 2 or n > 3000:
        return
    try:
        if all(atoms.pbc):
            _, dist = get_distances(atoms.positions, cell=atoms.cell, pbc=True)
        else:
            _, dist = get_distances(atoms.positions)
    except np.linalg.LinAlgError:
        raise BadInput(f"{path}: the cell is singular; fix the Lattice in the file") from None
    dist[np.diag_indices(n)] = np.inf
    i, j = np.unravel_index(np.argmin(dist), dist.shape)
    if dist[i, j] < min_distance:
        raise BadInput(f"{path}: atoms {min(i, j)} and {max(i, j)} overlap "
                       f"(distance {dist[i, j]:.3g} Å)")


def check_energy(system: Any, potential: Any, path: Path) -> Any:
    """Refuse a start structure whose energy is not finite (overlapping atoms) or cannot be
    evaluated at all (e.g. a potential file whose cutoff needs more memory than there is).

    Returns the ``EnergyModel`` it built, for the command to relax with (one model per run:
    its compiled code is shared by the check, the relaxation and the derivatives).
    """
    import jax

    from ..md.model import EnergyModel, build
    from ..md.stage_store import stage as persistent_stage

    runtime_error = getattr(jax.errors, "JaxRuntimeError", RuntimeError)
    try:
        model = build(system, potential)
        cell = system.cell if system.is_periodic else None
        nbrs = model.allocate(system.positions, cell)
        energy_fn = persistent_stage(EnergyModel.energy, static_argnums=(0,))
        energy = float(energy_fn(model, system.positions, cell, potential.params, nbrs))
    except (ValueError, TypeError) as exc:
        raise BadInput(f"{path}: cannot evaluate the potential: {exc}") from None
    except (runtime_error, MemoryError) as exc:
        reason = str(exc).rsplit("Error dispatching computation: ", 1)[-1]
        cutoff = _cutoff(potential)
        where = f" (cutoff {cutoff:.3g} Å)" if cutoff is not None else ""
        raise BadInput(f"{path}: cannot evaluate potential {potential.name!r}{where}: "
                       f"{reason}") from None
    if not math.isfinite(energy):
        raise BadInput(f"{path}: the start energy is not finite (overlapping atoms?)")
    return model


def _cutoff(potential: Any) -> float | None:
    try:
        cutoff = potential.cutoff()
        return None if cutoff is None else float(cutoff)
    except Exception:  # only for the message
        return None


def relax_options(fmax: float | None, max_steps: int | None, pressure: float | None = None,
                  relax_cell: bool = False, stress_tol: float | None = None) -> dict[str, Any]:
    """Only the options the user set (the library keeps its own defaults), each checked:
    ``--fmax`` and ``--stress-tol`` finite and positive, ``--max-steps`` at least 1,
    ``--pressure`` finite; ``--pressure`` and ``--stress-tol`` only with ``--relax-cell``."""
    out: dict[str, Any] = {}
    if fmax is not None:
        if not (math.isfinite(fmax) and fmax > 0):
            raise BadInput(f"--fmax must be a positive number (eV/Å), got {fmax}")
        out["fmax"] = fmax
    if max_steps is not None:
        if max_steps < 1:
            raise BadInput(f"--max-steps must be at least 1, got {max_steps}")
        out["max_steps"] = max_steps
    if pressure is not None:
        if not math.isfinite(pressure):
            raise BadInput(f"--pressure must be finite, got {pressure}")
        if not relax_cell:
            raise BadInput("--pressure needs --relax-cell (a fixed cell feels no pressure)")
        out["pressure"] = pressure
    if stress_tol is not None:
        if not (math.isfinite(stress_tol) and stress_tol > 0):
            raise BadInput(f"--stress-tol must be a positive number (eV/Å^3), got {stress_tol}")
        if not relax_cell:
            raise BadInput("--stress-tol needs --relax-cell (at a fixed cell only the forces "
                           "converge: --fmax)")
        out["stress_tol"] = stress_tol
    return out


def check_processes(processes: int) -> None:
    """``--processes``: at least 1 and at most the cores this process may use."""
    from ..md.sharding import usable_cores

    cores = usable_cores()
    if not 1 <= processes <= cores:
        raise BadInput(f"--processes must be between 1 and the {cores} core(s) this process "
                       f"may use, got {processes}")


def check_splittable(processes: int, model: Any) -> None:
    """``--processes K > 1`` needs a pair potential on a system with a neighbour list."""
    if processes == 1:
        return
    from ..md.processes import cannot_split

    reason = cannot_split(model)
    if reason is not None:
        raise BadInput(f"--processes {processes}: {reason}: use --processes 1")


# ----------------------------------------------------------------------------- outcomes
def relaxation_outcome(relaxation: Any, options: Any) -> str:
    """One line on how a relaxation ended, in the command line's words: the options that
    set its limits (``--max-steps``, ``--fmax``, ``--stress-tol`` when the cell relaxed,
    ``--pressure``, ``--param``) instead of the library's argument names.

    Args:
      relaxation: a :class:`mdsens.md.Relaxation` (anything without a ``status``: its
        ``message``, or its ``str``).
      options: the :class:`mdsens.md.RelaxOptions` it ran with.
    """
    status = getattr(getattr(relaxation, "status", None), "name", None)
    if status is None:
        return str(getattr(relaxation, "message", relaxation))
    steps = int(relaxation.steps)
    fmax = float(relaxation.fmax)
    residual = relaxation.stress_residual
    cell = residual is not None
    reached = f"fmax={fmax:.3g} eV/Å"
    if cell:
        reached += f", max|σ + pI|={float(residual):.3g} eV/Å^3"
    if status == "CONVERGED":
        return f"relaxation: converged after {steps} steps, {reached}"
    if status == "MAX_STEPS":
        target = f"--fmax {options.fmax:g}"
        if cell:
            tol = options.stress_tol
            target += f" and --stress-tol {'(default)' if tol is None else f'{tol:g}'}"
        loosen = "--fmax or --stress-tol" if cell else "--fmax"
        return (f"relaxation stopped at --max-steps {steps} with {reached}, short of "
                f"{target}: raise --max-steps, loosen {loosen}, or start closer to a "
                "minimum")
    if status == "NONFINITE":
        return (f"relaxation: non-finite energy or forces after {steps} steps (atoms pushed "
                "into each other, or parameters without physical sense): check the "
                "structure and the --param values")
    if status == "NEIGHBOR_LIST":
        return (f"relaxation: the neighbour list kept overflowing after {steps} steps (the "
                "density changes too fast): start closer to a minimum")
    if status == "INVALID_CELL":
        return (f"relaxation: the cell collapsed after {steps} steps: check the sign and "
                "units of --pressure (eV/Å^3, or with a unit: 1GPa)")
    if status == "CELL_DIVERGED":
        return (f"relaxation: the cell diverged after {steps} steps (its volume changed "
                "more than 8-fold, or the atoms stopped interacting): check the sign and "
                "units of --pressure, or start from a denser structure")
    return str(relaxation.message)


SOLVERS = ("cg", "minres", "gmres", "bicgstab", "normal_cg", "lu", "cholesky", "lstsq")
"""``--solver`` choices: the linear solvers of :data:`mdsens.implicit.linsolve.SOLVERS`
(listed here so that ``--help`` needs no JAX; a test checks that the two agree)."""

_SOLVE_ADVICE = {
    "MAX_ITERATIONS": "the solver reached its iteration cap: try --preconditioner "
                      "block_jacobi or --solver minres, or relax further (lower --fmax)",
    "BREAKDOWN": "the Krylov solver broke down (a singular Hessian?): try --solver lstsq",
    "NONFINITE": "non-finite values in the solve: check the --param values",
    "NEGATIVE_CURVATURE": "negative curvature, so the relaxed state is not a minimum: try "
                          "--solver minres or --solver gmres, or relax further (lower "
                          "--fmax)",
    "SINGULAR": "the dense factorisation failed (a singular Hessian): try --solver lstsq",
    "INCONSISTENT": "no solution: a right-hand side has a component along a zero mode "
                    "(a loose atom or group of atoms?); check the structure",
}


def _solve_advice(table: Any) -> str | None:
    """The advice for the worst status of a table of solves (``diagnostics["solves"]``)."""
    if not table or "status" not in table:
        return None
    import numpy as np

    from ..implicit import Status

    worst = int(np.max(np.asarray(table["status"])))
    return _SOLVE_ADVICE.get(Status(worst).name) if worst else None


def sensitivity_problems(result: Any, options: Any) -> list[str]:
    """A sensitivity's problems in the command line's words: the relaxation's by
    :func:`relaxation_outcome`, failed derivative and elastic-constant solves with the
    option to change (``--solver``, ``--preconditioner``, ``--fmax``); the others (a
    saddle, a singular Hessian) as the library states them."""
    out = []
    diagnostics = getattr(result, "diagnostics", {}) or {}
    for problem in result.problems:
        if problem.startswith("relaxation did not converge") and hasattr(
                result.relaxation, "status"):
            out.append(relaxation_outcome(result.relaxation, options))
            continue
        key = ("solves" if "derivative solves failed" in problem else "elastic_solves"
               if "elastic-constant solve failed" in problem else None)
        advice = None if key is None else _solve_advice(diagnostics.get(key))
        out.append(problem if advice is None else f"{problem.split(':', 1)[0]}: {advice}")
    return out


def file_digest(path: Path | None) -> str | None:
    """SHA-256 of a potential file, for the run configuration."""
    if path is None:
        return None
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def finish(converged: bool, problems: Sequence[str], output: Path, quiet: bool,
           written: bool = True) -> None:
    """Report and exit with SUCCESS or NOT_CONVERGED."""
    if not converged:
        for p in problems:
            click.echo(f"warning: {p}", err=True)
        if written:
            click.echo(f"not converged; wrote {output} (converged=false)", err=True)
        else:
            click.echo(f"not converged; {output} not written (--no-partial)", err=True)
        sys.exit(ExitCode.NOT_CONVERGED)
    if not quiet:
        click.echo(f"wrote {output}")

