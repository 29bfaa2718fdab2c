r"""Result files in HDF5 following H5MD 1.1, with sensitivities as the ``mdsens`` module.

Layout (every dataset time-independent; see ``docs/hdf5.md``)::

    /h5md                       attrs version=[1, 1]; groups author (name), creator
                                (name="mdsens", version)
    /h5md/modules/mdsens        attrs version=[1, 0], kind ("sensitivity" | "relaxation")
    /particles/all/position     (N, d) relaxed Cartesian positions, unit "Å"
    /particles/all/species      (N,) int32 index into attr ``names`` (chemical symbols)
    /particles/all/box          attrs dimension=d, boundary=("periodic"|"none",)*d;
                                dataset edges (d, d), lattice vectors as rows, unit "Å"
    /observables/<name>         value at the relaxed state, attr unit
    /sensitivity/<obs>/<param>  d obs / d param, shape obs.shape + param.shape, attrs unit,
                                observable_unit, parameter
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

from .errors import InputError

__all__ = ["StoredResult", "read_result", "write_result", "H5MD_VERSION", "MODULE_VERSION"]

H5MD_VERSION = (1, 1)
MODULE_VERSION = (1, 0)
_PARAM_UNITS = {"sigma": "Å", "epsilon": "eV", "alpha": "1", "pressure": "eV/Å^d",
                "strain": "1"}


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


def _structure(f: Any, system: Any) -> None:
    import h5py

    positions = np.asarray(system.positions, np.float64)
    cell = np.asarray(system.cell, np.float64)
    d = positions.shape[1]
    part = f.create_group("particles/all")
    pos = part.create_dataset("position", data=positions)
    pos.attrs["unit"] = "Å"
    sp = part.create_dataset("species", data=np.asarray(system.species, np.int32))
    sp.attrs["names"] = np.array(system.species_names, dtype=h5py.string_dtype())
    box = part.create_group("box")
    box.attrs["dimension"] = np.int32(d)
    box.attrs["boundary"] = np.array(
        ["periodic" if p else "none" for p in system.pbc], dtype=h5py.string_dtype())
    edges = box.create_dataset("edges", data=cell)
    edges.attrs["unit"] = "Å"


def _param_unit(name: str) -> str:
    base = name.split("[", 1)[0]
    return _PARAM_UNITS.get(base, "")


def _derivative_unit(obs_unit: str, param: str) -> str:
    p = _param_unit(param)
    if p in ("", "1"):
        return obs_unit
    return f"({obs_unit or '1'})/({p})"


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
            h5 = f.create_group("h5md")
            h5.attrs["version"] = np.array(H5MD_VERSION, np.int32)
            h5.create_group("author").attrs["name"] = os.environ.get("USER", "unknown")
            creator = h5.create_group("creator")
            creator.attrs["name"] = "mdsens"
            creator.attrs["version"] = __version__
            mod = h5.create_group("modules/mdsens")
            mod.attrs["version"] = np.array(MODULE_VERSION, np.int32)
            mod.attrs["kind"] = "sensitivity" if is_sens else "relaxation"
            _structure(f, relaxation.system)
            _write_values(f, result, relaxation, is_sens)
            _write_parameters(f, result, relaxation, system_input, potential, config, is_sens)
            if is_sens:
                diagnostics = result.diagnostics
            else:
                diagnostics = {"relaxation": {
                    "steps": int(relaxation.steps), "fmax": float(relaxation.fmax),
                    "converged": bool(relaxation.converged), "status": relaxation.message,
                    "energy": float(relaxation.energy)}}
            _put(f, "diagnostics", diagnostics)
            prov = f.create_group("provenance")
            for k, v in provenance(command_line).items():
                prov.attrs[k] = v
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out


def _write_values(f: Any, result: Any, relaxation: Any, is_sens: bool) -> None:
    obs = f.create_group("observables")
    if not is_sens:
        ds = obs.create_dataset("energy", data=np.float64(relaxation.energy))
        ds.attrs["unit"] = "eV"
        return
    for name, value in result.values.items():
        ds = obs.create_dataset(name, data=np.asarray(value))
        ds.attrs["unit"] = result.units.get(name, "")
    sens = f.create_group("sensitivity")
    for name, per_param in result.derivatives.items():
        g = sens.create_group(name)
        for pname in result.wrt:
            if pname not in per_param:
                continue
            ds = g.create_dataset(pname, data=np.asarray(per_param[pname]))
            ds.attrs["unit"] = _derivative_unit(result.units.get(name, ""), pname)
            ds.attrs["observable_unit"] = result.units.get(name, "")
            ds.attrs["parameter"] = pname
            ds.attrs["parameter_unit"] = _param_unit(pname)


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
    inp.attrs["unit"] = "Å"
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
        units = {k: str(v.attrs.get("unit", "")) for k, v in f["observables"].items()}
        values = {k: np.asarray(v[()]) for k, v in f["observables"].items()}
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
            parameter_shapes=shapes, diagnostics=_get(f["diagnostics"]), relaxation=None,
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
            positions=np.asarray(part["position"][()]),
            cell=np.asarray(part["box/edges"][()]), pbc=pbc, symbols=symbols,
            potential=potential, config=json.loads(par["config"].asstr()[()]),
            provenance={k: str(v) for k, v in f["provenance"].attrs.items()},
        )
