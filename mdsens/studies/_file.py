"""The study file: one HDF5 file with a leading point axis, written point by point.

Every dataset is created, filled (NaN / False / -1) and flushed when the file is created
(under a temporary name, then moved into place with ``os.replace``), so that later writes
change only raw data in place — never HDF5 metadata. A point is written, the file flushed,
then the point's ``done`` flag set and flushed again: a process killed at any moment leaves
every point marked done complete, and no point half-written and marked done.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["StudyResult", "create", "read", "write_point", "KIND", "PROBLEM_BYTES"]

KIND = "study"
PROBLEM_BYTES = 2048
STATUS_BYTES = 128
DIAGNOSTICS = {  # name -> (dtype, fill)
    "relax_steps": ("i8", -1),
    "fmax": ("f8", np.nan),
    "stress_residual": ("f8", np.nan),
    "energy": ("f8", np.nan),
    "root_residual": ("f8", np.nan),
    "min_curvature_estimate": ("f8", np.nan),
    "n_solves": ("i8", -1),
    "max_solve_iterations": ("i8", -1),
    "warm_start": ("i8", -1),
    "seconds": ("f8", np.nan),
}


@dataclasses.dataclass(frozen=True)
class StudyResult:
    """A study file read back (:func:`read`); arrays have a leading point axis (P).

    Point ``p`` is structure ``structure_index[p]`` at grid point ``p % G``.

    Attributes:
      path: the file.
      parameters: swept name -> (P,) values.
      structure_index: (P,) index into ``structures`` (labels).
      values: observable -> (P, *obs.shape) (NaN where not done or failed).
      derivatives: observable -> parameter -> (P, *obs.shape, *param.shape).
      units: observable -> unit.
      done, converged: (P,) bool masks; a failed point is done and not converged.
      problems: (P,) strings, empty for a clean point.
      diagnostics: name -> (P,) (relax_steps, fmax, energy, root_residual, ...).
      definition: the study definition (sweep, structures, wrt, observables, potential, ...).
    """

    path: Path
    parameters: dict[str, np.ndarray]
    structure_index: np.ndarray
    structures: tuple[str, ...]
    values: dict[str, np.ndarray]
    derivatives: dict[str, dict[str, np.ndarray]]
    units: dict[str, str]
    done: np.ndarray
    converged: np.ndarray
    problems: tuple[str, ...]
    diagnostics: dict[str, np.ndarray]
    definition: dict[str, Any]

    @property
    def complete(self) -> bool:
        """Every point has been computed (converged or not)."""
        return bool(self.done.all())


def _ds(group: Any, name: str, data: np.ndarray) -> Any:
    return group.create_dataset(name, data=data, track_times=False)


def create(path: Path, definition_json: str, parameters: dict[str, np.ndarray],
           structure_index: np.ndarray, structures: list[tuple[str, Any]],
           obs_shapes: dict[str, tuple], units: dict[str, str],
           param_shapes: dict[str, tuple], provenance: dict[str, str]) -> None:
    """Write the empty study file atomically (see the module docstring)."""
    import h5py

    from ..io.hdf5 import H5MD_VERSION, _derivative_unit

    path = Path(path)
    n_points = int(structure_index.size)
    n_grid = n_points // max(len(structures), 1)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with h5py.File(tmp, "w") as f:
            h5 = f.create_group("h5md")
            h5.attrs["version"] = np.asarray(H5MD_VERSION, np.int32)
            h5.create_group("creator").attrs["name"] = "mdsens"
            h5.create_group("author").attrs["name"] = os.environ.get("USER", "unknown")
            mod = h5.create_group("modules/mdsens")
            mod.attrs["version"] = np.asarray((1, 0), np.int32)
            mod.attrs["kind"] = KIND
            study = f.create_group("study")
            study.attrs["definition"] = definition_json
            study.attrs["n_points"] = n_points
            study.attrs["n_grid"] = n_grid
            prov = f.create_group("provenance")
            for k, v in provenance.items():
                prov.attrs[k] = v
            par = f.create_group("parameters")
            for name, vals in parameters.items():
                _ds(par, name, np.asarray(vals, np.float64))
            _ds(f, "structure_index", np.asarray(structure_index, np.int64))
            _ds(f, "done", np.zeros(n_points, bool))
            _ds(f, "converged", np.zeros(n_points, bool))
            _ds(f, "problems", np.zeros(n_points, f"S{PROBLEM_BYTES}"))
            _ds(f, "status", np.zeros(n_points, f"S{STATUS_BYTES}"))
            obs = f.create_group("observables")
            sens = f.create_group("sensitivity")
            for name, shape in obs_shapes.items():
                _ds(obs, name, np.full((n_points, *shape), np.nan)).attrs["unit"] = units[name]
                g = sens.create_group(name)
                for pname, pshape in param_shapes.items():
                    d = _ds(g, pname, np.full((n_points, *shape, *pshape), np.nan))
                    d.attrs["unit"] = _derivative_unit(units[name], pname)
                    d.attrs["observable_unit"] = units[name]
                    d.attrs["parameter"] = pname
            diag = f.create_group("diagnostics")
            for name, (dtype, fill) in DIAGNOSTICS.items():
                _ds(diag, name, np.full(n_points, fill, dtype))
            sg = f.create_group("structures")
            for k, (label, system) in enumerate(structures):
                g = sg.create_group(str(k))
                g.attrs["label"] = label
                g.attrs["species_names"] = json.dumps(list(system.species_names))
                g.attrs["pbc"] = np.asarray(system.pbc, bool)
                pos = np.asarray(system.positions, np.float64)
                cell = np.asarray(system.cell, np.float64)
                _ds(g, "species", np.asarray(system.species, np.int32))
                _ds(g, "input_position", pos)
                _ds(g, "input_edges", cell)
                _ds(g, "position", np.full((n_grid, *pos.shape), np.nan)).attrs["unit"] = "Å"
                _ds(g, "edges", np.full((n_grid, *cell.shape), np.nan)).attrs["unit"] = "Å"
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _text(s: str, n: int) -> bytes:
    return s.encode("utf-8")[:n]


def write_point(f: Any, p: int, n_grid: int, k: int, point: dict[str, Any]) -> None:
    """Write point ``p`` (structure ``k``), flush, then mark it done and flush again."""
    for name, v in point["values"].items():
        f["observables"][name][p] = v
    for name, per in point["derivatives"].items():
        for pname, v in per.items():
            f["sensitivity"][name][pname][p] = v
    for name, v in point["diagnostics"].items():
        f["diagnostics"][name][p] = v
    g = f["structures"][str(k)]
    g["position"][p % n_grid] = point["position"]
    g["edges"][p % n_grid] = point["edges"]
    f["converged"][p] = bool(point["converged"])
    f["problems"][p] = _text("; ".join(point["problems"]), PROBLEM_BYTES)
    f["status"][p] = _text(point["status"], STATUS_BYTES)
    f.flush()
    f["done"][p] = True
    f.flush()


def is_study(path: str | os.PathLike) -> bool:
    """True when ``path`` is an HDF5 file written by :func:`mdsens.studies.scan`."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return f.get("h5md/modules/mdsens") is not None and \
                f["h5md/modules/mdsens"].attrs.get("kind") == KIND
    except OSError:
        return False


def read(path: str | os.PathLike) -> StudyResult:
    """Read a study file (complete or not) into a :class:`StudyResult`."""
    import h5py

    if not is_study(path):
        raise ValueError(f"{path}: not an mdsens study file")
    with h5py.File(path, "r") as f:
        definition = json.loads(f["study"].attrs["definition"])
        values = {k: v[()] for k, v in f["observables"].items()}
        units = {k: str(v.attrs["unit"]) for k, v in f["observables"].items()}
        derivs = {k: {p: d[()] for p, d in g.items()} for k, g in f["sensitivity"].items()}
        parameters = {k: f["parameters"][k][()] for k, _ in definition["sweep"]}
        return StudyResult(
            path=Path(path),
            parameters=parameters,
            structure_index=f["structure_index"][()],
            structures=tuple(s["label"] for s in definition["structures"]),
            values=values,
            derivatives=derivs,
            units=units,
            done=f["done"][()],
            converged=f["converged"][()],
            problems=tuple(b.decode("utf-8", "replace") for b in f["problems"][()]),
            diagnostics={k: v[()] for k, v in f["diagnostics"].items()},
            definition=definition,
        )
