r"""Result files in HDF5 following H5MD 1.1, with sensitivities as the ``mdsens`` module.

Layout (see ``docs/hdf5.md``). The relaxed state is one frame (step 0, time 0) of
time-dependent elements, the form MDAnalysis's and pyh5md's readers take::

    /h5md                       attrs version=[1, 1]; groups author (name), creator
                                (name="mdsens", version), fixed-length strings
    /h5md/modules/units         attrs version=[1, 0], system="SI"
    /h5md/modules/mdsens        attrs version=[2, 0], kind ("sensitivity" | "relaxation")
    /particles/all/position     step (1,), time (1,) unit "ps", value (1, N, d) relaxed
                                Cartesian positions, unit "Angstrom"
    /particles/all/species      (N,) int32 index into attr ``names`` (chemical symbols)
    /particles/all/box          attrs dimension=d, boundary=("periodic"|"none",)*d;
                                edges: step, time (links to position's), value (1, d, d),
                                lattice vectors as rows, unit "Angstrom"
    /observables/<name>         step, time (links), value (1, *obs.shape), attr unit
    /sensitivity/<obs>/<param>  d obs / d param, shape obs.shape + param.shape, attrs unit,
                                observable_unit, parameter, parameter_unit

Units follow the grammar of the H5MD ``units`` module (:mod:`mdsens.units`); a quantity
of mixed units (lattice parameters) has ``unit_components`` (one unit per component)
instead of ``unit``; an undeclared unit (a custom potential's parameter, a user
observable) has neither.
    /parameters                 attrs potential, wrt, converged, problems; groups potential
                                (params, settings, species), parameter_shapes; dataset
                                config (the run configuration as JSON)
    /diagnostics/...            nested groups mirroring ``Sensitivity.diagnostics``
    /provenance                 attrs mdsens, jax, jax_md, h5py, numpy, python versions,
                                command_line, timestamp (UTC ISO 8601)

Writes are atomic: the file is written next to the target under a temporary name and moved
into place with ``os.replace``, so a failed run never leaves a partial file.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from .. import units as _units
from ..md.diagnostics import Diagnostics, RelaxationSummary
from .errors import InputError

__all__ = ["StoredResult", "read_result", "write_result", "H5MD_VERSION", "MODULE_VERSION"]

H5MD_VERSION = (1, 1)
UNITS_MODULE_VERSION = (1, 0)
MODULE_VERSION = (2, 0)
"""The ``mdsens`` module: 2.0 stores the relaxed state as time-dependent elements (1.0:
time-independent datasets, still read)."""
TIME_UNIT = "ps"
"""Unit of the ``time`` datasets: relaxed states have no physical time (all zero), but
MDAnalysis's reader requires a time unit."""
_BUILTIN_PARAM_UNITS = {"pressure": "eV/Å^d", "strain": "1"}


@dataclasses.dataclass(frozen=True)
class StoredResult:
    """A result file read back by :func:`read_result`.

    Attributes:
      sensitivity: the :class:`~mdsens.md.sensitivity.Sensitivity` (``relaxation`` is None;
        values, derivatives, units, wrt, parameter_shapes, diagnostics, converged, problems
        as written). For a relaxation file: no derivatives, values hold the energy.
      kind: ``"sensitivity"`` or ``"relaxation"``.
      positions, cell, pbc, symbols: the relaxed structure.
      potential: ``{"name", "params", "settings", "species"}``.
      config: the run configuration (dict).
      provenance: versions, command line, timestamp.
    """

    sensitivity: Any
    kind: str
    positions: np.ndarray
    cell: np.ndarray
    pbc: tuple[bool, ...]
    symbols: tuple[str, ...]
    potential: dict[str, Any]
    config: dict[str, Any]
    provenance: dict[str, str]

    def to_ase(self) -> Any:
        """The relaxed structure as ``ase.Atoms``."""
        from ase import Atoms

        return Atoms(symbols=list(self.symbols), positions=self.positions, cell=self.cell,
                     pbc=self.pbc)


# ----------------------------------------------------------------------------- writing


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


def provenance(command_line: str) -> dict[str, str]:
    """Versions of mdsens and its numerical stack, the command line and a UTC timestamp."""
    from .. import __version__

    return {
        "mdsens": __version__,
        "jax": _version("jax"),
        "jaxlib": _version("jaxlib"),
        "jax_md": _version("jax-md"),
        "h5py": _version("h5py"),
        "numpy": _version("numpy"),
        "ase": _version("ase"),
        "python": platform.python_version(),
        "command_line": command_line,
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.ndarray, np.generic)) or hasattr(x, "__array__"):
        return np.asarray(x).tolist()
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return str(x)


def _put(group: Any, name: str, value: Any) -> None:
    """Store ``value`` under ``group[name]``: dicts as groups, None as an empty dataset,
    strings as UTF-8 strings, everything else as a numpy array."""
    import h5py

    if isinstance(value, dict):
        sub = group.create_group(name)
        for k, v in value.items():
            _put(sub, str(k), v)
        return
    if value is None:
        group.create_dataset(name, data=h5py.Empty("f8"))
        return
    if isinstance(value, str):
        group.create_dataset(name, data=value, dtype=h5py.string_dtype())
        return
    arr = np.asarray(value)
    if arr.dtype.kind in "US" or (arr.dtype == object and arr.size and
                                  all(isinstance(v, str) for v in arr.ravel())):
        group.create_dataset(name, data=arr.astype(object), dtype=h5py.string_dtype())
        return
    if arr.dtype == object:
        group.create_dataset(name, data=json.dumps(_jsonable(value)),
                             dtype=h5py.string_dtype())
        return
    group.create_dataset(name, data=arr)


def fixed_string(obj: Any, name: str, value: str | list[str]) -> None:
    """Attribute ``name`` as a fixed-length string (array), ASCII when it is, else UTF-8
    (H5MD requires fixed-length strings for its own attributes)."""
    import h5py

    items = [value] if isinstance(value, str) else list(value)
    encoding = "ascii" if all(s.isascii() for s in items) else "utf-8"
    size = max([len(s.encode(encoding)) for s in items] + [1])
    dtype = h5py.string_dtype(encoding, size)
    data = np.array([s.encode(encoding) for s in items], dtype=f"S{size}")
    obj.attrs.create(name, data[0] if isinstance(value, str) else data, dtype=dtype)


def unit_string(obj: Any, name: str, value: str | list[str]) -> None:
    """A unit attribute: ASCII, variable-length. H5MD's ``units`` module asks for
    fixed-length strings, but MDAnalysis's reader (2.11) looks ``unit`` up as a Python
    ``str``, which h5py returns only for variable-length strings."""
    import h5py

    dtype = h5py.string_dtype("ascii")
    if isinstance(value, str):
        obj.attrs.create(name, value, dtype=dtype)
    else:
        obj.attrs.create(name, np.array(value, dtype=object), dtype=dtype)


def write_header(f: Any, kind: str, creator_version: str) -> None:
    """The ``/h5md`` group: version, author (``$USER``), creator, the ``units`` module and
    the ``mdsens`` module (``kind``)."""
    h5 = f.create_group("h5md")
    h5.attrs["version"] = np.array(H5MD_VERSION, np.int32)
    fixed_string(h5.create_group("author"), "name", os.environ.get("USER", "unknown"))
    creator = h5.create_group("creator")
    fixed_string(creator, "name", "mdsens")
    fixed_string(creator, "version", creator_version)
    units = h5.create_group("modules/units")
    units.attrs["version"] = np.array(UNITS_MODULE_VERSION, np.int32)
    fixed_string(units, "system", "SI")
    mod = h5.create_group("modules/mdsens")
    mod.attrs["version"] = np.array(MODULE_VERSION, np.int32)
    mod.attrs["kind"] = kind


def set_unit(ds: Any, unit: str, dim: int, size: int | None = None) -> None:
    """Attach a human-form unit (:mod:`mdsens.units`) to ``ds`` in the H5MD grammar:
    ``unit``; ``unit_components`` for mixed units (``size`` components); nothing when the
    unit is unknown."""
    if "," in unit:
        parts = _units.h5md_components(unit, size or 1, dim)
        if parts is not None:
            unit_string(ds, "unit_components", parts)
        return
    h5md = _units.to_h5md(unit, dim)
    if h5md is not None:
        unit_string(ds, "unit", h5md)


def set_derivative_units(ds: Any, obs_unit: str, param: str, param_unit: str, dim: int,
                         size: int) -> None:
    """Units of d obs / d param on ``ds`` (composed with pint): ``unit`` or
    ``unit_components``, ``observable_unit``, ``parameter_unit`` (each absent when
    unknown), ``parameter``."""
    if "," in obs_unit:
        parts = _units.compose_components(obs_unit, param_unit, size, dim)
        if parts is not None:
            unit_string(ds, "unit_components", parts)
    else:
        unit = _units.compose(obs_unit, param_unit, dim)
        if unit is not None:
            unit_string(ds, "unit", unit)
        if _units.to_h5md(obs_unit, dim) is not None:
            unit_string(ds, "observable_unit", _units.to_h5md(obs_unit, dim))
    if _units.to_h5md(param_unit, dim) is not None:
        unit_string(ds, "parameter_unit", _units.to_h5md(param_unit, dim))
    ds.attrs["parameter"] = param


def parameter_unit(name: str, declared: Any) -> str:
    """The human unit of ``--wrt`` parameter ``name``: ``pressure`` eV/Å^d, ``strain``
    dimensionless, else ``declared(name)`` (a potential's ``parameter_unit``)."""
    base = name.split("[", 1)[0]
    return _BUILTIN_PARAM_UNITS.get(base) or declared(name)


def time_dependent(group: Any, name: str, value: np.ndarray, steps: np.ndarray,
                   like: Any = None) -> Any:
    """H5MD time-dependent element ``group/name``: ``step`` (F,) int64, ``time`` (F,)
    zeros in ps, ``value`` (F, ...); ``step`` and ``time`` are hard links to those of
    ``like`` when given. Returns the ``value`` dataset."""
    el = group.create_group(name)
    if like is not None:
        el["step"] = like["step"]
        el["time"] = like["time"]
    else:
        el.create_dataset("step", data=np.asarray(steps, np.int64))
        time = el.create_dataset("time", data=np.zeros(len(steps)))
        unit_string(time, "unit", TIME_UNIT)
    return el.create_dataset("value", data=value)


def write_particles(part: Any, system: Any, positions: np.ndarray, edges: np.ndarray,
                    steps: np.ndarray) -> None:
    """A particles group: ``position`` (F, N, d) and ``box/edges`` (F, d, d) at ``steps``,
    in Å, with ``species`` (N,) and the box's ``dimension`` and ``boundary``."""
    import h5py

    d = positions.shape[-1]
    pos = time_dependent(part, "position", positions, steps)
    set_unit(pos, "Å", d)
    sp = part.create_dataset("species", data=np.asarray(system.species, np.int32))
    sp.attrs["names"] = np.array(system.species_names, dtype=h5py.string_dtype())
    box = part.create_group("box")
    box.attrs["dimension"] = np.int32(d)
    fixed_string(box, "boundary", ["periodic" if p else "none" for p in system.pbc])
    set_unit(time_dependent(box, "edges", edges, steps, like=part["position"]), "Å", d)


def _structure(f: Any, system: Any) -> None:
    positions = np.asarray(system.positions, np.float64)
    cell = np.asarray(system.cell, np.float64)
    write_particles(f.create_group("particles/all"), system, positions[None], cell[None],
                    np.zeros(1, np.int64))


def write_result(
    path: str | os.PathLike,
    result: Any,
    system_input: Any,
    potential: Any,
    config: dict[str, Any],
    command_line: str,
) -> Path:
    """Write a sensitivity or relaxation result as an H5MD 1.1 file, atomically.

    Args:
      path: the output file (``.h5``); its directory must exist.
      result: a :class:`~mdsens.md.sensitivity.Sensitivity` or a
        :class:`~mdsens.md.minimize.Relaxation`.
      system_input: the input :class:`~mdsens.md.System` (its positions are stored as
        ``/parameters/input_position`` for reference).
      potential: the :class:`~mdsens.md.Potential` used.
      config: the run configuration (JSON-serialisable: potential, params, options).
      command_line: the command line that produced the result.
    Returns:
      the path written.
    Raises:
      InputError: the output directory does not exist.
    """
    import h5py

    from .. import __version__

    out = Path(path)
    if not out.parent.exists():
        raise InputError(f"{out.parent}: output directory does not exist")
    is_sens = hasattr(result, "derivatives")
    relaxation = result.relaxation if is_sens else result
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    try:
        with h5py.File(tmp, "w") as f:
            write_header(f, "sensitivity" if is_sens else "relaxation", __version__)
            _structure(f, relaxation.system)
            _write_values(f, result, relaxation, is_sens, potential)
            _write_parameters(f, result, relaxation, system_input, potential, config, is_sens)
            if is_sens:
                diagnostics = result.diagnostics.as_dict()
            else:
                diagnostics = {"relaxation": RelaxationSummary.of(relaxation).as_dict()}
            _put(f, "diagnostics", diagnostics)
            prov = f.create_group("provenance")
            for k, v in provenance(command_line).items():
                prov.attrs[k] = v
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out


def _write_values(f: Any, result: Any, relaxation: Any, is_sens: bool,
                  potential: Any) -> None:
    """``/observables/<name>`` (one frame, linked to the position's step and time) and
    ``/sensitivity/<obs>/<param>`` with their units."""
    obs = f.create_group("observables")
    like = f["particles/all/position"]
    d = like["value"].shape[-1]
    if not is_sens:
        ds = time_dependent(obs, "energy", np.float64(relaxation.energy)[None], [0], like)
        set_unit(ds, "eV", d)
        return
    for name, value in result.values.items():
        value = np.asarray(value)
        ds = time_dependent(obs, name, value[None], [0], like)
        set_unit(ds, result.units.get(name, ""), d, value.size)
    declared = getattr(potential, "parameter_unit", lambda name: _units.UNKNOWN)
    sens = f.create_group("sensitivity")
    for name, per_param in result.derivatives.items():
        g = sens.create_group(name)
        size = int(np.size(result.values.get(name, 1)))
        for pname in result.wrt:
            if pname not in per_param:
                continue
            ds = g.create_dataset(pname, data=np.asarray(per_param[pname]))
            set_derivative_units(ds, result.units.get(name, ""), pname,
                                 parameter_unit(pname, declared), d, size)


def _write_parameters(f, result, relaxation, system_input, potential, config, is_sens):
    import h5py

    par = f.create_group("parameters")
    par.attrs["potential"] = getattr(potential, "name", type(potential).__name__)
    par.attrs["converged"] = bool(result.converged)
    problems = list(result.problems) if is_sens else (
        [] if relaxation.converged else [relaxation.message])
    par.attrs["problems"] = np.array(problems, dtype=h5py.string_dtype())
    if is_sens:
        par.attrs["wrt"] = np.array(list(result.wrt), dtype=h5py.string_dtype())
        shapes = par.create_group("parameter_shapes")
        for k, v in result.parameter_shapes.items():
            shapes.create_dataset(k, data=np.array(v, np.int64))
    pot = par.create_group("potential")
    pot.attrs["name"] = par.attrs["potential"]
    pot.attrs["species"] = np.array(list(potential.species or ()), dtype=h5py.string_dtype())
    _put(pot, "params", {k: np.asarray(v) for k, v in potential.params.items()})
    pot.attrs["settings"] = json.dumps(_jsonable(potential.settings))
    inp = par.create_dataset("input_position", data=np.asarray(system_input.positions))
    set_unit(inp, "Å", inp.shape[-1])
    par.create_dataset("config", data=json.dumps(_jsonable(config), indent=1),
                       dtype=h5py.string_dtype())


# ----------------------------------------------------------------------------- reading


def _get(node: Any) -> Any:
    import h5py

    if isinstance(node, h5py.Group):
        return {k: _get(v) for k, v in node.items()}
    if node.shape is None:  # h5py.Empty
        return None
    if h5py.check_string_dtype(node.dtype) is not None:
        value = node.asstr()[()]
        return value if isinstance(value, str) else np.asarray(value, dtype=object).astype(str)
    value = node[()]
    return value.item() if np.ndim(value) == 0 and not isinstance(value, np.ndarray) else value


def _strings(value: Any) -> tuple[str, ...]:
    return tuple(v.decode() if isinstance(v, bytes) else str(v) for v in np.atleast_1d(value))


def element_value(node: Any, frame: int | None = 0) -> np.ndarray:
    """The data of an H5MD element: ``value[frame]`` of a time-dependent one (all frames
    with ``frame=None``), the dataset itself for a time-independent one (files of the
    ``mdsens`` module 1.0)."""
    import h5py

    if isinstance(node, h5py.Group):
        value = node["value"]
        return np.asarray(value[()] if frame is None else value[frame])
    return np.asarray(node[()])


def unit_of(node: Any) -> str:
    """The unit stored on an element (on its ``value`` when time-dependent): ``unit``, or
    the distinct ``unit_components`` joined by ", "; "" when none is stored."""
    import h5py

    ds = node["value"] if isinstance(node, h5py.Group) else node
    if "unit" in ds.attrs:
        return _strings(ds.attrs["unit"])[0]
    if "unit_components" in ds.attrs:
        return ", ".join(dict.fromkeys(_strings(ds.attrs["unit_components"])))
    return ""


def read_result(path: str | os.PathLike) -> StoredResult:
    """Read a file written by :func:`write_result` back into a :class:`StoredResult`.

    Raises:
      InputError: missing file, not HDF5, or not an mdsens H5MD file.
    """
    import h5py

    from ..md.results import Sensitivity

    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such file")
    try:
        f = h5py.File(p, "r")
    except OSError:
        raise InputError(f"{p}: not an HDF5 file") from None
    with f:
        if "h5md/modules/mdsens" not in f or "particles/all" not in f:
            raise InputError(f"{p}: not an mdsens H5MD result file")
        kind = str(f["h5md/modules/mdsens"].attrs["kind"])
        part = f["particles/all"]
        names = _strings(part["species"].attrs["names"])
        species = np.asarray(part["species"][()])
        symbols = tuple(names[int(s)] for s in species)
        pbc = tuple(b == "periodic" for b in _strings(part["box"].attrs["boundary"]))
        par = f["parameters"]
        units = {k: unit_of(v) for k, v in f["observables"].items()}
        values = {k: element_value(v) for k, v in f["observables"].items()}
        wrt = _strings(par.attrs["wrt"]) if "wrt" in par.attrs else ()
        derivatives: dict[str, dict[str, np.ndarray]] = {}
        if "sensitivity" in f:
            for obs, g in f["sensitivity"].items():
                derivatives[obs] = {pn: np.asarray(g[pn][()]) for pn in wrt if pn in g}
        shapes = {k: tuple(int(i) for i in v[()])
                  for k, v in par.get("parameter_shapes", {}).items()}
        problems = tuple(str(s) for s in _strings(par.attrs["problems"])
                         ) if len(par.attrs["problems"]) else ()
        sens = Sensitivity(
            values=values, derivatives=derivatives, units=units, wrt=wrt,
            parameter_shapes=shapes,
            diagnostics=Diagnostics.from_dict(_get(f["diagnostics"])), relaxation=None,
            converged=bool(par.attrs["converged"]), problems=problems)
        pot = par["potential"]
        potential = {
            "name": str(pot.attrs["name"]),
            "params": {k: np.asarray(v[()]) for k, v in pot["params"].items()},
            "settings": json.loads(str(pot.attrs["settings"])),
            "species": _strings(pot.attrs["species"]) if len(pot.attrs["species"]) else (),
        }
        return StoredResult(
            sensitivity=sens, kind=kind,
            positions=element_value(part["position"]),
            cell=element_value(part["box/edges"]), pbc=pbc, symbols=symbols,
            potential=potential, config=json.loads(par["config"].asstr()[()]),
            provenance={k: str(v) for k, v in f["provenance"].attrs.items()},
        )
