"""The study file: one HDF5 file with a leading point axis, written point by point.

Every dataset is created, filled (NaN / False / -1) and flushed when the file is created
(under a temporary name, then moved into place with ``os.replace``), so that later writes
change only raw data in place — never HDF5 metadata. A point is written, the file flushed,
then the point's ``done`` flag set and flushed again: a process killed at any moment leaves
every point marked done complete, and no point half-written and marked done.

Layout (H5MD 1.1 with the ``units`` and ``mdsens`` modules; see ``docs/hdf5.md``). Point
``p`` is structure ``structure_index[p]`` at grid point ``p % G``; the step of a point is
its index ``p``::

    /h5md                                 as result files (kind "study")
    /particles/structure_<k>/position     step (G,) the points of structure k, time (G,)
                                          zeros in ps, value (G, N_k, d) relaxed, Angstrom
    /particles/structure_<k>/box          dimension, boundary; edges/value (G, d, d)
    /particles/structure_<k>/species      (N_k,) int32, attr names
    /observables/<obs>                    step (P,) = 0..P-1, time (P,), value (P, ...)
    /sensitivity/<obs>/<param>            (P, *obs.shape, *param.shape), attrs as results
    /structures/<k>                       attrs label, species_names, pbc; input_position,
                                          input_edges, species; position and edges: soft
                                          links to the particles group's values
    /parameters/<name>, /structure_index, /done, /converged, /problems, /status,
    /diagnostics/<name>, /study (attr definition), /provenance

One writer: :class:`WriterLock` holds an OS advisory lock (``flock``) on the side file
``<file>.lock`` for as long as a process writes the study; a second writer is refused with
:class:`StudyInUse` naming the first (pid, host, start time, command). The kernel releases
the lock when its process ends, however it ends, so a killed writer leaves no stale lock.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["KIND", "PROBLEM_BYTES", "LockOwner", "StudyInUse", "StudyResult", "WriterLock",
           "create", "lock_owner", "lock_path", "read", "write_point"]

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


def particles_name(k: int) -> str:
    """The particles group of structure ``k`` (``structure_0`` sorts first, the group
    MDAnalysis reads)."""
    return f"structure_{k}"


def _parameter_units(definition: dict[str, Any]) -> Any:
    """``name -> unit`` of the potential's parameters from the study definition: the
    class's declarations, a custom potential's declared units, else "unknown"."""
    from ..md.potentials.base import Potential

    pot = definition.get("potential", {})
    classes = [Potential]
    for cls in classes:
        classes.extend(cls.__subclasses__())
    cls = next((c for c in classes if c.__name__ == pot.get("class")), Potential)
    declared = dict(map(tuple, (pot.get("settings") or {}).get("declared_units") or ()))
    return lambda name: declared.get(name.split("[", 1)[0]) or cls.param_units.get(
        name.split("[", 1)[0], "unknown")


def create(path: Path, definition_json: str, parameters: dict[str, np.ndarray],
           structure_index: np.ndarray, structures: list[tuple[str, Any]],
           obs_shapes: dict[str, tuple], units: dict[str, str],
           param_shapes: dict[str, tuple], provenance: dict[str, str]) -> None:
    """Write the empty study file atomically (see the module docstring)."""
    import h5py

    from .. import __version__
    from ..io.hdf5 import write_header

    path = Path(path)
    n_points = int(structure_index.size)
    n_grid = n_points // max(len(structures), 1)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with h5py.File(tmp, "w") as f:
            write_header(f, KIND, __version__)
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
            dim = int(np.shape(structures[0][1].positions)[-1]) if structures else 3
            _create_values(f, n_points, obs_shapes, units, param_shapes, dim,
                           _parameter_units(json.loads(definition_json)))
            diag = f.create_group("diagnostics")
            for name, (dtype, fill) in DIAGNOSTICS.items():
                _ds(diag, name, np.full(n_points, fill, dtype))
            _create_structures(f, structures, np.asarray(structure_index), n_grid)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _create_values(f: Any, n_points: int, obs_shapes: dict[str, tuple],
                   units: dict[str, str], param_shapes: dict[str, tuple], dim: int,
                   declared: Any) -> None:
    """``/observables/<obs>`` (time-dependent, step = point index) and
    ``/sensitivity/<obs>/<param>``, NaN-filled, with their units."""
    from ..io.hdf5 import parameter_unit, set_derivative_units, set_unit, time_dependent

    obs = f.create_group("observables")
    sens = f.create_group("sensitivity")
    steps = np.arange(n_points, dtype=np.int64)
    first = None
    for name, shape in obs_shapes.items():
        size = int(np.prod(shape, dtype=int))
        ds = time_dependent(obs, name, np.full((n_points, *shape), np.nan), steps, first)
        if first is None:
            first = obs[name]
        set_unit(ds, units[name], dim, size)
        g = sens.create_group(name)
        for pname, pshape in param_shapes.items():
            d = _ds(g, pname, np.full((n_points, *shape, *pshape), np.nan))
            set_derivative_units(d, units[name], pname, parameter_unit(pname, declared),
                                 dim, size)


def _create_structures(f: Any, structures: list[tuple[str, Any]],
                       structure_index: np.ndarray, n_grid: int) -> None:
    """One particles group per structure (NaN-filled frames at its points' steps) and
    ``/structures/<k>`` with the input and soft links to the relaxed frames."""
    import h5py

    from ..io.hdf5 import write_particles

    sg = f.create_group("structures")
    for k, (label, system) in enumerate(structures):
        pos = np.asarray(system.positions, np.float64)
        cell = np.asarray(system.cell, np.float64)
        name = particles_name(k)
        write_particles(f.create_group(f"particles/{name}"), system,
                        np.full((n_grid, *pos.shape), np.nan),
                        np.full((n_grid, *cell.shape), np.nan),
                        np.flatnonzero(structure_index == k))
        g = sg.create_group(str(k))
        g.attrs["label"] = label
        g.attrs["species_names"] = json.dumps(list(system.species_names))
        g.attrs["pbc"] = np.asarray(system.pbc, bool)
        _ds(g, "species", np.asarray(system.species, np.int32))
        _ds(g, "input_position", pos)
        _ds(g, "input_edges", cell)
        g["position"] = h5py.SoftLink(f"/particles/{name}/position/value")
        g["edges"] = h5py.SoftLink(f"/particles/{name}/box/edges/value")


def _value(node: Any) -> Any:
    """The dataset holding an element's data (``value`` of a time-dependent group; the
    dataset itself in files written before the H5MD layout)."""
    import h5py

    return node["value"] if isinstance(node, h5py.Group) else node


def _text(s: str, n: int) -> bytes:
    return s.encode("utf-8")[:n]


def relaxed_structure(f: Any, k: int, g: int) -> tuple[np.ndarray, np.ndarray]:
    """The relaxed ``(positions (N, d), edges (d, d))``, Å, of grid point ``g`` of
    structure ``k`` in the open study file ``f`` (NaN where not written)."""
    group = f["structures"][str(k)]
    return group["position"][g], group["edges"][g]


def point_record(result: Any, warm: int) -> dict[str, Any]:
    """The record :func:`write_point` stores for a :class:`~mdsens.md.point.PointResult`
    computed from the relaxed structure of point ``warm`` (-1: the input structure): its
    values, derivatives, status, relaxed structure and the row of ``/diagnostics``
    (:data:`DIAGNOSTICS`; entries a failed point lacks keep their fill values)."""
    relaxation, diagnostics = result.relaxation, result.diagnostics
    row: dict[str, Any] = {"relax_steps": relaxation.steps, "fmax": relaxation.fmax,
                           "energy": relaxation.energy, "warm_start": int(warm),
                           "seconds": result.seconds}
    if relaxation.stress_residual is not None:
        row["stress_residual"] = relaxation.stress_residual
    if diagnostics is not None:
        row["root_residual"] = diagnostics.root_residual
        row["min_curvature_estimate"] = diagnostics.min_curvature_estimate
        row["n_solves"] = diagnostics.n_solves
        if diagnostics.solves is not None and diagnostics.solves.count:
            row["max_solve_iterations"] = diagnostics.max_solve_iterations
    return {"values": result.values, "derivatives": result.derivatives,
            "converged": bool(result.converged), "problems": list(result.problems),
            "status": result.status, "position": result.positions, "edges": result.edges,
            "diagnostics": row}


def write_point(f: Any, p: int, n_grid: int, k: int, point: dict[str, Any]) -> None:
    """Write point ``p`` (structure ``k``), flush, then mark it done and flush again."""
    for name, v in point["values"].items():
        _value(f["observables"][name])[p] = v
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


def _open_read(path: str | os.PathLike) -> Any:
    """Open for reading without HDF5's own file lock, so that a study being written by
    another process can be read: the writer changes only raw data in place, and a point
    is marked done only after its data are flushed. Where that is refused (an HDF5 build
    without the property; the file already open in this process with HDF5's lock) the
    file is opened as usual."""
    import h5py

    try:
        return h5py.File(path, "r", locking=False)
    except (TypeError, ValueError, OSError):
        return h5py.File(path, "r")


def is_study(path: str | os.PathLike) -> bool:
    """True when ``path`` is an HDF5 file written by :func:`mdsens.studies.scan`."""
    try:
        with _open_read(path) as f:
            return f.get("h5md/modules/mdsens") is not None and \
                f["h5md/modules/mdsens"].attrs.get("kind") == KIND
    except OSError:
        return False


def _only_done(array: np.ndarray, done: np.ndarray) -> np.ndarray:
    """``array`` (points first) with the rows of points not marked done set to NaN."""
    if not np.issubdtype(array.dtype, np.floating) or array.shape[:1] != done.shape:
        return array
    out = np.array(array, copy=True)
    out[~done.astype(bool)] = np.nan
    return out


def read(path: str | os.PathLike) -> StudyResult:
    """Read a study file (complete or not, also while another process writes it) into a
    :class:`StudyResult`. ``done`` is read first: every point it marks is complete in the
    arrays read after it; the values and derivatives of every other point are NaN (a point
    whose writer was stopped after its data but before its mark is not a result)."""
    from ..io.hdf5 import unit_of

    if not is_study(path):
        raise ValueError(f"{path}: not an mdsens study file")
    with _open_read(path) as f:
        done = f["done"][()]
        converged = f["converged"][()]
        definition = json.loads(f["study"].attrs["definition"])
        values = {k: _value(v)[()] for k, v in f["observables"].items()}
        units = {k: unit_of(v) for k, v in f["observables"].items()}
        derivs = {k: {p: d[()] for p, d in g.items()} for k, g in f["sensitivity"].items()}
        parameters = {k: f["parameters"][k][()] for k, _ in definition["sweep"]}
        values = {k: _only_done(v, done) for k, v in values.items()}
        derivs = {k: {p: _only_done(d, done) for p, d in g.items()} for k, g in derivs.items()}
        return StudyResult(
            path=Path(path),
            parameters=parameters,
            structure_index=f["structure_index"][()],
            structures=tuple(s["label"] for s in definition["structures"]),
            values=values,
            derivatives=derivs,
            units=units,
            done=done,
            converged=converged & done,
            problems=tuple(b.decode("utf-8", "replace") for b in f["problems"][()]),
            diagnostics={k: v[()] for k, v in f["diagnostics"].items()},
            definition=definition,
        )


# ----------------------------------------------------------------------------- one writer


@dataclasses.dataclass(frozen=True)
class LockOwner:
    """The process that holds a study file's writer lock (as it recorded itself)."""

    pid: int
    host: str
    started: str  # local time, ISO 8601, seconds
    command: str

    def describe(self) -> str:
        """``pid 123 on host node1 since 2025-01-01T10:00:00: mdsens scan ...``"""
        if self.pid < 0:
            return "a process that has not recorded itself"
        command = " ".join(self.command.split()) or "?"
        return f"pid {self.pid} on host {self.host} since {self.started}: {command}"


class StudyInUse(RuntimeError):
    """Another process is writing the study file (it holds the file's writer lock).

    Attributes:
      path: the study file; owner: the :class:`LockOwner`, or None when it could not be
        read (a writer that has just taken the lock and not yet recorded itself).
    """

    def __init__(self, path: str | os.PathLike, owner: LockOwner | None):
        self.path = Path(path)
        self.owner = owner
        who = owner.describe() if owner is not None else "a process that is starting"
        super().__init__(f"{self.path} is being written by another process ({who}); "
                         "wait for it to finish or stop it")


def lock_path(path: str | os.PathLike) -> Path:
    """The side file ``<path>.lock`` whose lock guards the study file ``path``."""
    path = Path(path)
    return path.with_name(path.name + ".lock")


def _fcntl() -> Any:
    try:
        import fcntl
    except ImportError:  # not POSIX
        return None
    return fcntl


def _read_owner(fd: int) -> LockOwner | None:
    """The owner recorded in an open lock file, or None (empty or unreadable)."""
    for _ in range(20):  # a writer that has just taken the lock records itself at once
        try:
            data = json.loads(os.pread(fd, 65536, 0).decode("utf-8"))
            return LockOwner(int(data["pid"]), str(data["host"]), str(data["started"]),
                             str(data["command"]))
        except (OSError, ValueError, KeyError, TypeError):
            time.sleep(0.025)
    return None


def lock_owner(path: str | os.PathLike) -> LockOwner | None:
    """The process writing the study file ``path`` now, or None when none is.

    A probe that takes nothing: it tests the lock of ``<path>.lock`` and lets it go (a
    lock file left by a killed writer holds no lock and reads as None).
    """
    fcntl = _fcntl()
    if fcntl is None:
        return None
    try:
        fd = os.open(lock_path(path), os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _read_owner(fd)
            return owner if owner is not None else LockOwner(-1, "?", "?", "?")
        except OSError:  # no locks on this file system: nothing can be said
            return None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


class WriterLock:
    """Exclusive right to write the study file ``path``, as a context manager.

    ``flock(LOCK_EX | LOCK_NB)`` on ``<path>.lock``, which then records this process
    (JSON: pid, host, started, command). Held by an open file description: the kernel
    drops it when the process exits or is killed, so no stale lock survives its writer;
    a process forked while it is held shares it (exec'd children do not: the descriptor
    is not inheritable). On release the side file is removed while still locked. Where
    ``fcntl`` does not exist (not POSIX) no lock is taken and a ``RuntimeWarning`` says so.

    Raises (on entry):
      StudyInUse: another open description holds the lock (another process, or another
        writer in this one).
      OSError: the side file cannot be created or locked (a read-only directory, a file
        system without locks), with the reason.
    """

    def __init__(self, path: str | os.PathLike, command: str = ""):
        self.path = Path(path)
        self.command = command or " ".join(sys.argv) or sys.executable
        self._fd: int | None = None

    def __enter__(self) -> WriterLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def acquire(self) -> None:
        fcntl = _fcntl()
        if fcntl is None:
            warnings.warn(f"{self.path}: no file locks on this platform; nothing stops a "
                          "second process from writing the same study file",
                          RuntimeWarning, stacklevel=3)
            return
        side = lock_path(self.path)
        while True:
            try:
                fd = os.open(side, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise OSError(exc.errno, f"{side}: cannot create the study's lock file "
                                         f"({exc.strerror})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = _read_owner(fd)
                os.close(fd)
                raise StudyInUse(self.path, owner) from None
            except OSError as exc:
                os.close(fd)
                raise OSError(exc.errno, f"{side}: cannot lock the study's lock file "
                                         f"({exc.strerror})") from None
            # the previous holder may have removed the file between our open and flock:
            # then this lock guards nothing and a fresh file is needed
            try:
                current = os.stat(side)
            except FileNotFoundError:
                current = None
            if current is not None and os.path.samestat(os.fstat(fd), current):
                break
            os.close(fd)
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "command": self.command}
        data = json.dumps(record).encode("utf-8")
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.unlink(lock_path(self.path))
        except OSError:
            pass
        os.close(fd)
