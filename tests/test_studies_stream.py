"""Studies streamed one point at a time: the planner's order and warm starts, per-point
writes in completion order (a scripted pool), and real Dask runs on one shared 2-worker
cluster: a scheduler file, a client SIGKILLed mid-study then resumed, a cluster spec."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("distributed")

import ase.build  # noqa: E402
import h5py  # noqa: E402

from mdsens.md.potentials import get  # noqa: E402
from mdsens.studies import ClusterSpec, _dask, _file, lock_owner, read, scan  # noqa: E402
from mdsens.studies._dask import Planner, stream  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- planner


def _drive(planner: Planner, slots: int, order) -> list[tuple[int, int]]:
    """Run ``planner`` to the end with ``slots`` in flight; ``order(running)`` picks the
    point that completes next. Returns the (point, warm) pairs in submission order."""
    submitted, running = [], []
    while True:
        while len(running) < slots and (chosen := planner.next()) is not None:
            submitted.append(chosen)
            planner.start(chosen[0])
            running.append(chosen[0])
        if not running:
            return submitted
        p = order(running)
        running.remove(p)
        planner.finish(p)


def test_planner_one_slot_is_the_serial_loop():
    done = np.zeros(8, bool)
    done[[2, 5]] = True  # a resume: point 3 starts warm from the stored point 2, ...
    submitted = _drive(Planner(done, 4), 1, lambda running: running[0])
    assert sorted(submitted) == [(0, -1), (1, 0), (3, 2), (4, -1), (6, 5), (7, 6)]
    assert all(w in (-1, p - 1) for p, w in submitted)
    assert sorted(p for p, _ in submitted) == [0, 1, 3, 4, 6, 7]


def test_planner_splits_runs_and_keeps_chains():
    planner = Planner(np.zeros(8, bool), 8)
    assert planner.next() == (0, -1)
    planner.start(0)
    assert planner.next() == (4, -1)  # the new chain takes 4..7, the running one 1..3
    planner.start(4)
    assert planner.next() == (2, -1)  # a third worker: 1..3 and 5..7 tie, the lower wins
    planner.finish(4)
    assert planner.next() == (5, 4)  # a done predecessor first: continue its chain
    two = Planner(np.zeros(8, bool), 4)  # two structures: the second starts at its start
    two.start(0)
    assert two.next() == (4, -1)
    resumed = Planner(np.array([1, 0, 0, 0, 0, 0], bool), 6)
    assert resumed.next() == (1, 0)
    resumed.start(1)
    assert resumed.next() == (4, -1)  # 2..5 behind the running 1: split in the middle
    lost = Planner(np.zeros(4, bool), 4)
    lost.start(0)
    lost.lose(0)  # a crashed task is not retried; the run after it starts at its start
    assert lost.next() == (1, -1)
    for p in (1, 2, 3):
        lost.start(p)
        lost.finish(p)
    assert lost.next() is None


@pytest.mark.parametrize("slots", [2, 3, 5])
def test_planner_covers_every_point_once(slots):
    rng = np.random.default_rng(slots)
    done = rng.random(30) < 0.2
    submitted = _drive(Planner(done, 10), slots,
                       lambda running: running[int(rng.integers(len(running)))])
    points = [p for p, _ in submitted]
    assert sorted(points) == list(np.flatnonzero(~done))
    assert all(w == -1 or (w == p - 1 and p % 10 != 0) for p, w in submitted)
    # cold starts: about one per slot and structure, not one per point
    assert sum(w == -1 for _, w in submitted) <= 3 * (slots + 3)


# ----------------------------------------------------------------------------- stream


def _atoms():
    atoms = ase.build.bulk("Ar", "fcc", a=5.3, cubic=True)
    atoms.rattle(0.01, seed=1)
    return atoms


def _empty_study(path: Path, n_structures: int, n_grid: int) -> None:
    """A study file as ``scan`` creates it (energy, d/dsigma), with no point done."""
    from mdsens.md.system import System

    system = System.from_ase(_atoms())
    sigmas = np.linspace(3.3, 3.5, n_grid)
    definition = {"sweep": [["sigma", list(sigmas)]],
                  "structures": [{"label": f"s{k}"} for k in range(n_structures)],
                  "potential": {"class": "LennardJones", "settings": {}}}
    _file.create(path, json.dumps(definition), {"sigma": np.tile(sigmas, n_structures)},
                 np.repeat(np.arange(n_structures), n_grid),
                 [(f"s{k}", system) for k in range(n_structures)], {"energy": ()},
                 {"energy": "eV"}, {"sigma": ()}, {})


class _ScriptedPool:
    """A pool whose tasks complete in the order ``pick(running)`` says (no Dask, no jax):
    the point record of ``p`` has energy ``100 + p`` and positions ``start + p`` (the
    input structure's when cold), so warm starts are visible in the file."""

    def __init__(self, f, slots, pick, crash=()):
        self.f, self.slots_, self.pick, self.crash = f, slots, pick, set(crash)
        self.submitted, self.running = [], []
        n_grid = int(f["study"].attrs["n_grid"])
        self.inputs = [f["structures"][str(k)]["input_position"][()]
                       for k in range(f["done"].size // n_grid)]
        self.n_grid = n_grid

    def slots(self):
        return self.slots_

    def wait_for_slots(self):
        raise AssertionError("slots never run out here")

    def submit(self, p, start, warm):
        self.submitted.append((p, warm, None if start is None else np.array(start[0])))
        self.running.append(p)
        return p

    def wait(self, futures):
        assert sorted(futures) == sorted(self.running)
        p = self.pick(self.running)
        self.running.remove(p)
        return [p]

    def result(self, p):
        if p in self.crash:
            raise OSError(f"worker lost computing {p}")
        warm, start = next((w, s) for q, w, s in self.submitted if q == p)
        base = self.inputs[p // self.n_grid] if start is None else start
        return {"values": {"energy": 100.0 + p}, "derivatives": {"energy": {"sigma": -p}},
                "converged": p != 2, "problems": [] if p != 2 else ["saddle"],
                "status": "converged", "position": base + p, "edges": np.eye(3) * 5.3,
                "diagnostics": {"warm_start": warm, "seconds": 0.5}}

    def cancel(self, futures):
        pass


def test_points_written_as_they_complete_out_of_order(tmp_path):
    """The last submitted point completes first: the file receives each point when its
    task completes (done and flushed before progress is told), in that order; a warm
    start is the relaxed structure that was written for its predecessor."""
    path = tmp_path / "stream.h5"
    _empty_study(path, 2, 4)
    reported = []
    with h5py.File(path, "r+") as f:
        pool = _ScriptedPool(f, 2, lambda running: running[-1])

        def progress(n_done, n_points, p, converged):
            with h5py.File(path, "r") as g:  # another reader sees the point now
                assert g["done"][p] and g["observables/energy/value"][p] == 100 + p
            reported.append((n_done, p, converged))

        stream(pool, f, progress=progress)
    order = [p for _, p, _ in reported]
    assert sorted(order) == list(range(8)) and order != sorted(order), order
    assert [n for n, _, _ in reported] == list(range(1, 9))
    assert [c for _, p, c in reported] == [p != 2 for p in order]
    r = read(path)
    assert r.complete and list(r.converged) == [p != 2 for p in range(8)]
    np.testing.assert_array_equal(r.values["energy"], 100.0 + np.arange(8))
    np.testing.assert_array_equal(r.derivatives["energy"]["sigma"], -np.arange(8.0))
    assert "saddle" in r.problems[2]
    with h5py.File(path, "r") as f:
        for p, warm, start in pool.submitted:
            k, g = divmod(p, 4)
            stored = f["structures"][str(k)]["position"][g]
            if warm >= 0:  # chained: from what the file holds for p - 1
                assert warm == p - 1
                np.testing.assert_array_equal(start, f["structures"][str(k)]["position"][g - 1])
            np.testing.assert_array_equal(stored, (pool.inputs[k] if start is None else start)
                                          + p)
    np.testing.assert_array_equal(r.diagnostics["warm_start"],
                                  [w for _, w, _ in sorted(pool.submitted, key=lambda t: t[0])])


def test_crashed_task_raises_after_the_rest_is_written(tmp_path):
    path = tmp_path / "crash.h5"
    _empty_study(path, 1, 5)
    with h5py.File(path, "r+") as f:
        pool = _ScriptedPool(f, 2, lambda running: running[0], crash={1})
        with pytest.raises(RuntimeError, match=r"1 points failed.*point 1: OSError"):
            stream(pool, f)
    assert list(read(path).done) == [True, False, True, True, True]
    assert (1, -1, None) not in [(p, w, s) for p, w, s in pool.submitted if p != 1]
    with h5py.File(path, "r+") as f:  # a resume computes what is left, warm from point 0
        pool = _ScriptedPool(f, 2, lambda running: running[0])
        stream(pool, f)
    assert [(p, w) for p, w, _ in pool.submitted] == [(1, 0)]
    assert read(path).complete


# ----------------------------------------------------------------------------- real Dask

SIGMAS = [3.397, 3.398, 3.399, 3.400, 3.401, 3.402]
WRT = ["sigma", "epsilon"]
OBS = ["energy", "pressure"]
RELAX = {"fmax": 1e-10}


def _pot():
    return get("lj", sigma=3.4, epsilon=0.0104)


def _run(path, **kw):
    return scan(_atoms(), _pot(), {"sigma": SIGMAS}, WRT, OBS, path, relax_options=RELAX,
                **kw)


@pytest.fixture(scope="module")
def cluster():
    """One 2-worker cluster for the module (its workers keep their compiled models)."""
    import distributed

    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address="127.0.0.1:0") as c:
        yield c


@pytest.fixture(scope="module")
def streamed(cluster, tmp_path_factory):
    """The study through a scheduler file (``dask scheduler --scheduler-file``)."""
    folder = tmp_path_factory.mktemp("stream")
    scheduler_file = folder / "scheduler.json"
    scheduler_file.write_text(json.dumps({"address": cluster.scheduler_address}))
    messages, written = [], []
    result = _run(folder / "study.h5", scheduler_file=scheduler_file, notify=messages.append,
                  progress=lambda n, total, p, ok: written.append(p))
    return result, messages, written


def test_scheduler_file_streams_every_point(streamed):
    r, messages, written = streamed
    assert r.complete and r.converged.all(), r.problems
    assert sorted(written) == list(range(len(SIGMAS)))
    assert any(m.startswith("Dask dashboard: http://127.0.0.1:") for m in messages), messages
    warm = r.diagnostics["warm_start"]
    assert all(warm[p] in (-1, p - 1) for p in range(len(SIGMAS))), warm
    # points 0 and 3 start cold; the first to finish hands its successor a warm start
    assert warm[0] == -1 and warm[3] == -1 and (warm >= 0).any(), warm
    # each point checked by its neighbours: central differences along sigma (h = 1e-3 A;
    # error h^2/6 |v'''|, 4e-5 relative here: the 5th neighbour shell lies in the
    # cutoff's smoothing range) and by LJ scaling (E and P proportional to epsilon)
    s = r.parameters["sigma"]
    for name in OBS:
        v, d = r.values[name], r.derivatives[name]["sigma"]
        fd = (v[2:] - v[:-2]) / (s[2:] - s[:-2])
        np.testing.assert_allclose(fd, d[1:-1], rtol=2e-4, err_msg=name)
        np.testing.assert_allclose(r.derivatives[name]["epsilon"], v / 0.0104, rtol=1e-8,
                                   err_msg=name)


_CHILD = textwrap.dedent("""
    import sys, jax, ase.build
    jax.config.update("jax_enable_x64", True)
    from mdsens.md.potentials import get
    from mdsens.studies import scan
    atoms = ase.build.bulk("Ar", "fcc", a=5.3, cubic=True)
    atoms.rattle(0.01, seed=1)
    scan(atoms, get("lj", sigma=3.4, epsilon=0.0104), {{"sigma": {sigmas!r}}}, {wrt!r},
         {obs!r}, {path!r}, relax_options={relax!r}, scheduler={address!r},
         progress=lambda n, total, p, ok: print("done", p, flush=True))
""")


def test_client_killed_mid_study_leaves_a_resumable_file(cluster, streamed, tmp_path):
    """The file of a running study can be read from another process; SIGKILL of the
    writing client after its first point: the points written are complete and readable,
    the others untouched, no lock is left; resuming on the cluster finishes the study
    with the uninterrupted run's values."""
    path = tmp_path / "killed.h5"
    code = _CHILD.format(sigmas=SIGMAS, wrt=WRT, obs=OBS, path=str(path), relax=RELAX,
                         address=cluster.scheduler_address)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        line = child.stdout.readline()
        assert line.startswith("done"), line
        p = int(line.split()[1])
        running = read(path)  # readable while the other process writes it
        assert running.done[p] and np.isfinite(running.values["energy"][p])
        assert lock_owner(path).pid == child.pid
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
    partial = read(path)
    assert 1 <= partial.done.sum() < len(SIGMAS)
    for name in OBS:
        assert np.isfinite(partial.values[name][partial.done]).all()
        assert np.isnan(partial.values[name][~partial.done]).all()
    assert lock_owner(path) is None
    computed = []
    r = _run(path, resume=True, scheduler=cluster.scheduler_address,
             progress=lambda n, total, p, ok: computed.append(p))
    assert sorted(computed) == list(np.flatnonzero(~partial.done))
    reference = streamed[0]
    assert r.complete and r.converged.all(), r.problems
    for name in OBS:
        for p in WRT:
            d = reference.derivatives[name][p]
            np.testing.assert_allclose(r.derivatives[name][p], d, rtol=1e-7,
                                       atol=1e-9 * np.abs(d).max(), err_msg=f"{name} {p}")
        v = reference.values[name]
        np.testing.assert_allclose(r.values[name], v, rtol=1e-7, atol=1e-9 * np.abs(v).max())


def _spec_file(tmp_path: Path) -> Path:
    """dask-jobqueue's LocalCluster (its job machinery, each job a local process) when
    installed, else distributed.LocalCluster."""
    spec = tmp_path / "cluster.yaml"
    try:
        import dask_jobqueue  # noqa: F401

        spec.write_text("class: jobqueue-local\noptions: {cores: 1, processes: 1, "
                        "memory: 2GB}\nscale: {jobs: 1}\n")
    except ImportError:
        spec.write_text("class: local\noptions: {n_workers: 1}\n")
    return spec


def test_cluster_spec_starts_scales_and_closes(tmp_path, capfd):
    """A YAML cluster spec is started, scaled, runs tasks, announces its dashboard on
    localhost (where it listens), and closes without a word on stderr."""
    import socket
    from urllib.parse import urlparse

    spec = _spec_file(tmp_path)
    backend = _dask.Backend.of(cluster=spec)
    assert backend.cluster == ClusterSpec.load(spec) and backend.workers is None
    messages = []
    capfd.readouterr()
    with _dask.connect(backend, messages.append) as client:
        assert client.submit(os.getpid, pure=False).result() != os.getpid()
        assert len(messages) == 1 and messages[0].startswith("Dask dashboard: http://127.0.0.1:")
        link = urlparse(messages[0].split()[2])
        with socket.create_connection((link.hostname, link.port), timeout=5):
            pass
    err = capfd.readouterr().err
    for bad in ("still alive", "killing", "CancelledError", "Traceback"):
        assert bad not in err, err


@pytest.mark.slow
def test_study_on_a_cluster_spec(tmp_path, capfd):
    """A whole (one-point) study through a cluster spec, as ``mdsens scan --cluster``."""
    capfd.readouterr()
    r = scan(_atoms(), _pot(), {"sigma": [3.4]}, ["sigma"], ["energy"], tmp_path / "s.h5",
             cluster=_spec_file(tmp_path))
    err = capfd.readouterr().err
    assert r.complete and r.converged.all(), r.problems
    for bad in ("still alive", "killing", "CancelledError", "Traceback"):
        assert bad not in err, err


def test_batch_system_missing_is_refused(tmp_path):
    """A SLURM spec where ``sbatch`` does not exist fails at once (not a wait for
    workers that never come)."""
    import shutil

    pytest.importorskip("dask_jobqueue")
    if shutil.which("sbatch"):
        pytest.skip("a SLURM machine")
    spec = tmp_path / "slurm.yaml"
    spec.write_text("class: slurm\noptions: {cores: 1, memory: 1GB}\nscale: {jobs: 1}\n")
    with pytest.raises(ValueError, match="'sbatch', which is not on PATH"):
        _dask.Backend.of(cluster=spec)


@pytest.mark.parametrize("text, match", [
    ("class: nosuch.Cluster\n", "cannot import"),
    ("class: builtins.dict\n", "not a Dask cluster class"),
    ("options: {}\n", "needs 'class'"),
    ("class: local\nworkers: 2\n", "unknown cluster spec keys"),
    ("class: local\noptions: {n_workers: 1, bogus: 3}\n", "takes no option 'bogus'"),
    ("class: local\nscale: 0\n", "positive worker count"),
    ("class: local\nscale: 2\nadapt: {maximum: 2}\n", "exclude each other"),
    ("[1, 2]\n", "mapping"),
])
def test_bad_cluster_spec(text, match, tmp_path):
    from click.testing import CliRunner

    from mdsens.cli import main

    spec = tmp_path / "bad.yaml"
    spec.write_text(text)
    with pytest.raises(ValueError, match=match):
        _dask.Backend.of(cluster=spec)
    res = CliRunner().invoke(main, ["scan", str(ROOT / "data" / "ar_fcc_32.extxyz"), "-p",
                                    "lj", "--sweep", "sigma=3.3,3.4", "--wrt", "sigma",
                                    "--observable", "energy", "-o", str(tmp_path / "x.h5"),
                                    "--cluster", str(spec)])
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and match in lines[0], res.output
    assert not (tmp_path / "x.h5").exists()


@pytest.mark.slow
def test_cli_two_workers_stderr_is_clean(tmp_path):
    """A real 2-worker study from the command line: stderr holds the dashboard line and
    nothing else (no "Worker process still alive ... killing" at the close)."""
    out = tmp_path / "cli.h5"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-m", "mdsens.cli", "scan",
                          str(ROOT / "data" / "ar_fcc_32.extxyz"), "-p", "lj", "--param",
                          "epsilon=0.0104", "--sweep", "sigma=3.3:3.5:4", "--wrt", "sigma",
                          "--observable", "energy", "-o", str(out), "--workers", "2"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Dask dashboard: http://127.0.0.1:"), \
        res.stderr
    assert read(out).complete
