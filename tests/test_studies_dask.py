"""Parameter studies on a Dask cluster of its own (``workers=2``): same results as the
serial loop, one writer, a dashboard on localhost, a quiet shutdown."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("distributed")

import ase.build  # noqa: E402

from mdsens.md.potentials import get  # noqa: E402
from mdsens.studies import read, scan  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STRUCTURE = str(ROOT / "data" / "ar_fcc_32.extxyz")
SIGMAS = [3.30, 3.35, 3.40, 3.45, 3.50, 3.55]
WRT = ["sigma", "epsilon"]
OBS = ["energy", "pressure"]
# relaxed tighter than the default (fmax 1e-8) so that chunks started cold and points
# started warm agree far below the comparison tolerance
RELAX = {"fmax": 1e-10}


def _structure():
    """4-atom fcc Ar, rattled: every relaxation has work to do (fixed cell)."""
    atoms = ase.build.bulk("Ar", "fcc", a=5.3, cubic=True)
    atoms.rattle(0.01, seed=1)
    return atoms


def _run(path, **kw):
    return scan(_structure(), get("lj", sigma=3.4, epsilon=0.0104), {"sigma": SIGMAS}, WRT,
                OBS, path, relax_options=RELAX, **kw)


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("serial") / "serial.h5")


def _forget(path, points):
    """Reset ``points`` of a study file to never computed (what a killed run leaves)."""
    import h5py

    from mdsens.studies._file import DIAGNOSTICS

    with h5py.File(path, "r+") as f:
        n_grid = int(f["study"].attrs["n_grid"])
        for p in points:
            f["done"][p] = False
            f["converged"][p] = False
            f["problems"][p] = b""
            f["status"][p] = b""
            for d in f["observables"].values():
                d["value"][p] = np.nan  # time-dependent H5MD element
            for g in f["sensitivity"].values():
                for d in g.values():
                    d[p] = np.nan
            for name, (_, fill) in DIAGNOSTICS.items():
                f["diagnostics"][name][p] = fill
            s = f["structures"][str(int(f["structure_index"][p]))]
            s["position"][p % n_grid] = np.nan
            s["edges"][p % n_grid] = np.nan


def test_dask_equals_serial(serial, tmp_path, capfd):
    """A partly done file resumed on a 2-process LocalCluster, one task per point: point 1
    warm-starts from the stored point 0 and point 4 (the middle of the rest) starts cold
    on the other worker; every later point starts warm from its predecessor or cold, as
    the planner picks. The dashboard listens on localhost only; closing the cluster logs
    nothing (the worker processes' stderr is this process's, captured by capfd)."""
    assert serial.complete and serial.converged.all(), serial.problems
    path = tmp_path / "dask.h5"
    shutil.copy(serial.path, path)
    _forget(path, range(1, len(SIGMAS)))
    written, messages = [], []
    capfd.readouterr()
    result = _run(path, resume=True, workers=2, notify=messages.append,
                  progress=lambda n, total, p, ok: written.append((n, p, ok)))
    err = capfd.readouterr().err
    for bad in ("still alive", "killing", "CancelledError", "Traceback"):
        assert bad not in err, err
    assert any(m.startswith("Dask dashboard: http://127.0.0.1:") for m in messages), messages
    assert sorted(p for _, p, _ in written) == list(range(1, len(SIGMAS)))  # no duplicates
    assert [n for n, _, _ in written] == list(range(2, len(SIGMAS) + 1))
    assert all(ok for _, _, ok in written)
    assert result.complete and result.converged.all(), result.problems
    warm = result.diagnostics["warm_start"]
    assert warm[0] == -1 and warm[1] == 0 and warm[4] == -1, warm
    assert all(warm[p] in (-1, p - 1) for p in range(len(SIGMAS))), warm
    for name in OBS:
        v = serial.values[name]
        np.testing.assert_allclose(result.values[name], v, rtol=1e-7,
                                   atol=1e-9 * np.max(np.abs(v)), err_msg=name)
        for p in WRT:
            d = serial.derivatives[name][p]
            np.testing.assert_allclose(result.derivatives[name][p], d, rtol=1e-7,
                                       atol=1e-9 * np.max(np.abs(d)), err_msg=f"{name} {p}")
    assert read(path).done.all()


@pytest.mark.parametrize("args, match", [
    (["--workers", "0"], "--workers"),
    (["--workers", "2", "--scheduler", "tcp://127.0.0.1:8786"], "exclude"),
    (["--scheduler-file", "missing.json"], "no such file"),
    (["--cluster", "missing.yaml"], "no such file"),
])
def test_cli_rejects_bad_backend(args, match, tmp_path):
    from click.testing import CliRunner

    from mdsens.cli import main

    out = tmp_path / "study.h5"
    res = CliRunner().invoke(main, ["scan", STRUCTURE, "-p", "lj", "--param", "epsilon=0.0104",
                                    "--sweep", "sigma=3.3,3.4", "--wrt", "sigma",
                                    "--observable", "energy", "-o", str(out), *args])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:") and match in lines[0], res.output
    assert not out.exists()


@pytest.mark.parametrize("kw, match", [
    ({"workers": 0}, "positive integer"),
    ({"workers": True}, "positive integer"),
    ({"workers": 2, "scheduler": "tcp://127.0.0.1:8786"}, "exclude"),
    ({"scheduler": ""}, "address"),
])
def test_bad_backend_rejected(kw, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        _run(tmp_path / "x.h5", **kw)
    assert not (tmp_path / "x.h5").exists()


def test_missing_dask_is_one_line(monkeypatch, tmp_path):
    import importlib.util

    from click.testing import CliRunner

    from mdsens.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "distributed" else real(name, *a))
    with pytest.raises(ImportError, match=r"pip install 'mdsens\[dask\]'"):
        _run(tmp_path / "x.h5", workers=2)
    res = CliRunner().invoke(main, ["scan", STRUCTURE, "-p", "lj", "--sweep", "sigma=3.3,3.4",
                                    "--wrt", "sigma", "--observable", "energy", "-o",
                                    str(tmp_path / "x.h5"), "--workers", "2"])
    assert res.exit_code == 2 and "pip install 'mdsens[dask]'" in res.output, res.output
    assert not (tmp_path / "x.h5").exists()


def test_unpicklable_potential_travels_by_registry(monkeypatch):
    """A potential that does not pickle is sent as name, parameters, species, settings."""
    import threading

    from mdsens.md.potentials import custom
    from mdsens.md.potentials.pair import LennardJones
    from mdsens.studies._dask import _potential_payload, _PotentialSpec

    pot = get("lj", sigma={("Ar", "Ar"): 3.4, ("Ar", "Kr"): 3.6, ("Kr", "Kr"): 3.8},
              epsilon=0.0104, r_cutoff=3.0)
    assert not isinstance(_potential_payload(pot), _PotentialSpec)

    def refuse(self, protocol):
        raise TypeError("not today")

    monkeypatch.setattr(LennardJones, "__reduce_ex__", refuse, raising=False)
    spec = _potential_payload(pot)
    assert isinstance(spec, _PotentialSpec)
    rebuilt = spec.build()
    assert type(rebuilt) is LennardJones and rebuilt.species == pot.species
    assert rebuilt.settings == pot.settings
    for name, value in pot.params.items():
        np.testing.assert_array_equal(rebuilt.params[name], value)

    lock = threading.Lock()  # neither the object nor its settings pickle

    def energy(R, params):
        with lock:
            return params["k"] * (R**2).sum()

    with pytest.raises(ValueError, match="cannot be sent to Dask workers"):
        _potential_payload(custom(energy, {"k": 1.0}))
