"""Shared pieces of the CLI: exit codes, the bad-input error, options defined once, checks
of the input that need no numerics, and turning options into a System and a Potential.

The checks run before JAX is imported (about a second), so that bad input is refused at
once: names of potentials, parameters, observables and ``--wrt`` come from the JAX-free
:mod:`mdsens.md.catalog`, the structure from ASE. JAX is imported only to build and
evaluate (``enable_x64``, ``make_potential``, ``make_system``, ``check_energy``).
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
output_option = click.option(
    "-o", "--output", required=True, type=click.Path(path_type=Path),
    help="Output file.")
overwrite_option = click.option(
    "--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
quiet_option = click.option(
    "-q", "--quiet", is_flag=True, help="Print nothing on success, and no progress bar.")
partial_option = click.option(
    "--partial/--no-partial", default=True, show_default=True,
    help="When the run does not converge, still write OUTPUT (marked converged = false); "
         "--no-partial writes nothing. The exit code is 1 either way.")

model_options = _stack(structure_argument, format_option, index_option, potential_option,
                       param_option,
                       potential_file_option, relax_cell_option, pressure_option, fmax_option,
                       max_steps_option, method_option)
output_options = _stack(output_option, overwrite_option, quiet_option)


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
        from ase.io.formats import filetype, ioformats

        try:
            fmt = filetype(str(path), read=False)
            writable = ioformats[fmt].can_write
        except Exception:  # ase raises several kinds for an unknown name
            writable = False
        if not writable:
            raise BadInput(f"{path}: no structure format ASE writes has this name; use -o "
                           f"*.h5 (H5MD), *.xyz (extended XYZ), *.cif, POSCAR, ...")


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
    enable()


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


def _check_pair_tables(name: str, params: dict[str, Any]) -> None:
    """Every per-pair table covers every pair of the species of all tables (as the
    potential's factory requires)."""
    species = pair_species(params)
    for key, table in params.items():
        if not isinstance(table, dict):
            continue
        missing = [f"{a}-{b}" for i, a in enumerate(species) for b in species[i:]
                   if (a, b) not in table and (b, a) not in table]
        if missing:
            raise BadInput(f"potential {name!r}: {key}: missing species pairs "
                           f"{', '.join(missing)}")


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


def check_structure(atoms: Any, path: Path, info: catalog.PotentialInfo,
                    params: dict[str, Any], observables: Sequence[str] = (),
                    wrt: Sequence[str] = ()) -> None:
    """Refuse, without JAX, a structure the run cannot use: mixed or singular periodic
    boundaries, species without parameters in the per-pair tables, cell observables or
    ``--wrt strain`` of a free system, overlapping atoms. (Species of a potential file
    are checked when the file is read, in :func:`make_system`.)"""
    import numpy as np

    pbc = tuple(bool(p) for p in atoms.pbc)
    if any(pbc) and not all(pbc):
        raise BadInput(f"{path}: mixed periodic boundary conditions pbc={pbc} are not "
                       "supported; make pbc all True or all False")
    periodic = all(pbc)
    if periodic and abs(float(np.linalg.det(atoms.cell.array))) < 1e-12:
        raise BadInput(f"{path}: periodic system needs a non-singular cell")
    species = pair_species(params)
    if species:
        missing = [s for s in sorted(set(atoms.get_chemical_symbols())) if s not in species]
        if missing:
            raise BadInput(f"{path}: species {missing} have no parameters in potential "
                           f"{info.name!r} (it has {list(species)})")
    if not periodic:
        for name in observables:
            if catalog.observable(name).periodic_only:
                raise BadInput(f"{path}: observable {name!r} needs a periodic system")
        if "strain" in wrt:
            raise BadInput(f"{path}: --wrt strain needs a periodic system")
    _check_overlap(atoms, path)


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


def make_system(atoms: Any, potential: Any, path: Path) -> Any:
    """``ase.Atoms`` -> ``System``, checking species against the potential (those of a
    potential file are known only now). Expects :func:`check_structure` to have run."""
    from ..md.system import System

    symbols = sorted(set(atoms.get_chemical_symbols()))
    if potential.species:
        missing = [s for s in symbols if s not in potential.species]
        if missing:
            raise BadInput(f"{path}: species {missing} have no parameters in potential "
                           f"{potential.name!r} (it has {list(potential.species)})")
    try:
        system = System.from_ase(atoms)
    except ValueError as exc:
        raise BadInput(f"{path}: {exc}") from None
    if system.is_periodic is False and any(atoms.pbc):
        raise BadInput(f"{path}: mixed periodic boundary conditions are not supported")
    return system


def _check_overlap(atoms: Any, path: Path, min_distance: float = 0.1) -> None:
    """Refuse atoms closer than ``min_distance`` Å (minimum image; skipped above 3000 atoms)."""
    import numpy as np
    from ase.geometry import get_distances

    n = len(atoms)
    if n < 2 or n > 3000:
        return
    pbc = atoms.pbc if all(atoms.pbc) else False
    _, dist = get_distances(atoms.positions, cell=atoms.cell if pbc is not False else None,
                            pbc=pbc)
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

    runtime_error = getattr(jax.errors, "JaxRuntimeError", RuntimeError)
    try:
        model = build(system, potential)
        cell = system.cell if system.is_periodic else None
        nbrs = model.allocate(system.positions, cell)
        energy_fn = jax.jit(EnergyModel.energy, static_argnums=0)
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
                  relax_cell: bool = False) -> dict[str, Any]:
    """Only the options the user set (the library keeps its own defaults)."""
    out: dict[str, Any] = {}
    if fmax is not None:
        if not fmax > 0:
            raise BadInput(f"--fmax must be positive, got {fmax}")
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


def save_png(fig: Any, output: Path, quiet: bool) -> None:
    """Write a matplotlib figure as PNG atomically (temporary file, then rename) and close
    it; a failed write leaves no partial file."""
    import matplotlib.pyplot as plt

    tmp = output.with_name(f".{output.name}.tmp.png")
    try:
        fig.savefig(tmp, dpi=110, format="png")
        tmp.replace(output)
    finally:
        plt.close(fig)
        if tmp.exists():
            tmp.unlink()
    if not quiet:
        click.echo(f"wrote {output}")
