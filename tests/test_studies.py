"""Parameter studies: self-consistency of a sweep, SIGKILL + resume, batched points, bad
specs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from mdsens.md.potentials import get
from mdsens.studies import parse_sweep, read, scan, validate_sweep

ROOT = Path(__file__).resolve().parents[1]
STRUCTURE = str(ROOT / "data" / "ar_fcc_32.extxyz")
SIGMAS = [3.35, 3.40, 3.45]
WARM_STARTS = [-1] + list(range(len(SIGMAS) - 1))  # each point starts from the previous
OBS = ["lattice_parameters", "volume", "energy"]


def _pot():
    return get("lj", sigma=3.4, epsilon=0.0104)


def _run(path, **kw):
    return scan(STRUCTURE, _pot(), {"sigma": SIGMAS}, ["sigma", "epsilon"], OBS, path,
                relax_cell=True, **kw)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    path = tmp_path_factory.mktemp("study") / "ref.h5"
    return _run(path)


def test_sweep_derivatives_match_finite_differences(reference):
    r = reference
    assert r.complete and r.converged.all(), r.problems
    np.testing.assert_array_equal(r.parameters["sigma"], SIGMAS)
    np.testing.assert_array_equal(r.diagnostics["warm_start"], WARM_STARTS)
    s = r.parameters["sigma"]
    for name in OBS:
        v, d = r.values[name], r.derivatives[name]["sigma"]
        fd = (v[2:] - v[:-2]) / (s[2:] - s[:-2]).reshape(-1, *[1] * (v.ndim - 1))
        # central differences with h = 0.05 Å: error h²/6 |v'''|, ~1e-4 relative here
        # (the energy does not depend on σ at p = 0: compare at the rounding level of v)
        atol = 5e-4 * np.max(np.abs(d)) + 1e-10 * np.max(np.abs(v))
        np.testing.assert_allclose(fd, d[1:-1], rtol=0, atol=atol, err_msg=name)
    # LJ scaling: V ∝ σ³ at fixed ε, energy independent of σ
    np.testing.assert_allclose(r.derivatives["volume"]["sigma"], 3 * r.values["volume"] / s,
                               rtol=1e-6)
    np.testing.assert_allclose(r.derivatives["energy"]["sigma"], 0, atol=1e-8)
    assert r.derivatives["volume"]["epsilon"].shape == (len(SIGMAS),)
    assert r.values["lattice_parameters"].shape == (len(SIGMAS), 6)


_CHILD = textwrap.dedent("""
    import sys, jax
    jax.config.update("jax_enable_x64", True)
    sys.path.insert(0, {root!r})
    from mdsens.md.potentials import get
    from mdsens.studies import scan
    scan({structure!r}, get("lj", sigma=3.4, epsilon=0.0104), {{"sigma": {sigmas!r}}},
         ["sigma", "epsilon"], {obs!r}, {path!r}, relax_cell=True,
         progress=lambda n, total, p, ok: print("done", p, flush=True))
""")


def test_sigkill_then_resume_equals_uninterrupted(reference, tmp_path):
    path = tmp_path / "killed.h5"
    code = _CHILD.format(root=str(ROOT), structure=STRUCTURE, sigmas=SIGMAS, obs=OBS,
                         path=str(path))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        line = child.stdout.readline()  # the first point is written, flushed and done
        assert line.startswith("done"), line
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
    partial = read(path)
    n_before = int(partial.done.sum())
    assert 1 <= n_before
    for name in OBS:  # every point marked done is complete; the others untouched
        assert np.isfinite(partial.values[name][partial.done]).all()
        assert np.isnan(partial.values[name][~partial.done]).all()

    computed = []
    result = _run(path, resume=True, progress=lambda n, total, p, ok: computed.append(p))
    assert computed == [p for p in range(len(SIGMAS)) if not partial.done[p]]
    assert result.complete and result.converged.all()
    np.testing.assert_array_equal(result.diagnostics["warm_start"], WARM_STARTS)
    for name in OBS:
        np.testing.assert_allclose(result.values[name], reference.values[name], rtol=1e-10)
        for p in ("sigma", "epsilon"):
            np.testing.assert_allclose(result.derivatives[name][p],
                                       reference.derivatives[name][p], rtol=1e-8, atol=1e-12)
    # a completed study resumes to a no-op
    again = []
    _run(path, resume=True, progress=lambda *a: again.append(a))
    assert again == []


class _Stop(Exception):
    pass


def test_batched_scan_resumes_and_equals_serial(reference, tmp_path):
    """scan(batch=2), interrupted after its first point and resumed with batch=2, equals
    the serial scan to the relaxation tolerance (the warm starts differ)."""
    def stop_after_first(n, total, p, ok):
        raise _Stop

    path = tmp_path / "batched.h5"
    with pytest.raises(_Stop):
        _run(path, batch=2, progress=stop_after_first)
    computed = []
    result = _run(path, batch=2, resume=True, progress=lambda n, t, p, ok: computed.append(p))
    assert computed == [1, 2]  # point 0 was written before the interruption
    assert result.complete and result.converged.all(), result.problems
    # point 0: batch (0, 1) from the input; then batch (1, 2) from point 0's structure
    np.testing.assert_array_equal(result.diagnostics["warm_start"], [-1, 0, 0])
    # to the relaxation tolerance (fmax 1e-8 eV/Å): derivatives on the scale |v| / |θ| of
    # d v / d θ (those that vanish physically, d a / d ε, are noise of that size)
    theta = {"sigma": 3.4, "epsilon": 0.0104}
    for name in OBS:
        v = reference.values[name]
        np.testing.assert_allclose(result.values[name], v, rtol=2e-7)
        for p in ("sigma", "epsilon"):
            np.testing.assert_allclose(result.derivatives[name][p],
                                       reference.derivatives[name][p], rtol=1e-6,
                                       atol=1e-6 * np.abs(v).max() / theta[p], err_msg=name)



def test_resume_refuses_another_study(reference, tmp_path):
    with pytest.raises(ValueError, match="sweep"):
        scan(STRUCTURE, _pot(), {"sigma": SIGMAS[:2]}, ["sigma", "epsilon"], OBS,
             reference.path, relax_cell=True, resume=True)
    with pytest.raises(ValueError, match="wrt"):
        scan(STRUCTURE, _pot(), {"sigma": SIGMAS}, ["sigma"], OBS, reference.path,
             relax_cell=True, resume=True)
    with pytest.raises(FileExistsError):
        _run(reference.path)
    with pytest.raises(FileNotFoundError):
        _run(tmp_path / "missing.h5", resume=True)


@pytest.mark.parametrize("sweep, match", [
    ({}, "non-empty"),
    ({"rho": [1.0]}, "unknown parameter"),
    ({"sigma": []}, "no values"),
    ({"sigma": [3.3, float("nan")]}, "non-finite"),
    ({"sigma": [3.3, 3.3]}, "repeats"),
    ({"sigma": [[3.3, 3.4]]}, "1-D"),
    ({"sigma": ["a"]}, "numbers"),
    ({"sigma[Ar,Ar]": [3.3]}, "not a per-pair"),
])
def test_bad_sweeps_rejected(sweep, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        validate_sweep(sweep, _pot())
    with pytest.raises(ValueError, match=match):
        scan(STRUCTURE, _pot(), sweep, ["sigma"], ["energy"], tmp_path / "x.h5")
    assert not (tmp_path / "x.h5").exists()


def test_pair_sweeps():
    pot = get("lj", sigma={("Ar", "Ar"): 3.4, ("Ar", "Kr"): 3.6, ("Kr", "Kr"): 3.8},
              epsilon=0.0104)
    assert validate_sweep({"sigma[Ar, Kr]": [3.5, 3.6]}, pot) == {"sigma[Ar,Kr]": [3.5, 3.6]}
    with pytest.raises(ValueError, match="both whole and per species pair"):
        validate_sweep({"sigma[Ar,Kr]": [3.5], "sigma": [3.4]}, pot)
    with pytest.raises(ValueError, match="not a per-pair"):
        validate_sweep({"sigma[Ar,Xe]": [3.5]}, pot)
    from mdsens.studies._spec import potential_at

    p = potential_at(pot, {"sigma[Ar,Kr]": 3.55})
    np.testing.assert_allclose(np.asarray(p.params["sigma"]), [[3.4, 3.55], [3.55, 3.8]])


@pytest.mark.parametrize("text, expected", [
    ("sigma=3.3:3.5:5", ("sigma", [3.3, 3.35, 3.4, 3.45, 3.5])),
    ("sigma=3.3,3.4", ("sigma", [3.3, 3.4])),
    ("epsilon=0.01", ("epsilon", [0.01])),
    ("sigma[Ar, Kr]=3.5:3.6:2", ("sigma[Ar,Kr]", [3.5, 3.6])),
])
def test_parse_sweep(text, expected):
    name, values = parse_sweep(text)
    assert name == expected[0]
    np.testing.assert_allclose(values, expected[1])


@pytest.mark.parametrize("text", ["sigma", "sigma=", "sigma=3.3:3.5", "sigma=3.3:3.5:0",
                                  "sigma=3.3:3.5:x", "sigma=a,b", "1x=3", "sigma=3.3:3.5:1",
                                  "sigma=3.3:inf:3"])
def test_parse_sweep_rejects(text):
    with pytest.raises(ValueError, match="sweep"):
        parse_sweep(text)


# ----------------------------------------------------------------------------- CLI


@pytest.mark.parametrize("sweep", ["sigma=3.3:3.5", "sigma=3.3:3.5:0", "rho=1:2:3",
                                   "sigma=3.3,3.3", "sigma=a"])
def test_cli_rejects_bad_sweep(sweep, tmp_path):
    from click.testing import CliRunner

    from mdsens.cli import main

    out = tmp_path / "study.h5"
    res = CliRunner().invoke(main, ["scan", STRUCTURE, "-p", "lj", "--param", "epsilon=0.0104",
                                    "--sweep", sweep, "--wrt", "sigma", "--observable",
                                    "energy", "-o", str(out)])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), res.output
    assert not out.exists()


def test_cli_writes_the_python_study(tmp_path):
    """The CLI's file has the same study definition as the Python call: resuming it from
    Python computes nothing."""
    from click.testing import CliRunner

    from mdsens.cli import main

    out = tmp_path / "study.h5"
    res = CliRunner().invoke(main, ["scan", STRUCTURE, "-p", "lj", "--param", "sigma=3.4",
                                    "--param", "epsilon=0.0104", "--sweep", "epsilon=0.01,0.011",
                                    "--wrt", "epsilon", "--observable", "energy", "-q",
                                    "-o", str(out)])
    assert res.exit_code == 0, res.output
    computed = []
    r = scan(STRUCTURE, _pot(), {"epsilon": [0.01, 0.011]}, ["epsilon"], ["energy"], out,
             resume=True, progress=lambda *a: computed.append(a))
    assert computed == [] and r.complete and r.converged.all()
    # E ∝ ε at fixed σ (the fcc start is a fixed-cell minimum by symmetry)
    np.testing.assert_allclose(r.derivatives["energy"]["epsilon"], r.values["energy"] / 0.01 *
                               0.01 / r.parameters["epsilon"], rtol=1e-8)
    res = CliRunner().invoke(main, ["scan", STRUCTURE, "-p", "lj", "--param", "sigma=3.4",
                                    "--param", "epsilon=0.0104", "--sweep", "epsilon=0.01",
                                    "--wrt", "epsilon", "--observable", "energy", "-q",
                                    "-o", str(out), "--resume"])
    assert res.exit_code == 2 and "differs" in res.output


def test_cli_plot_study(reference, tmp_path):
    from click.testing import CliRunner

    from mdsens.cli import main

    out = tmp_path / "study.png"
    res = CliRunner().invoke(main, ["plot", str(reference.path), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = CliRunner().invoke(main, ["plot", str(reference.path), "--wrt", "rho", "-o",
                                    str(tmp_path / "x.png")])
    assert res.exit_code == 2 and not (tmp_path / "x.png").exists()


def test_failed_points_are_recorded(tmp_path):
    r = scan(STRUCTURE, _pot(), {"sigma": [3.2]}, ["sigma"], ["volume"], tmp_path / "f.h5",
             relax_cell=True, relax_options={"max_steps": 2},
             sensitivity_options={"curvature_check": False})
    assert r.done.all() and not r.converged.any()
    assert "did not converge" in r.problems[0]
    assert r.diagnostics["relax_steps"][0] == 2 and r.diagnostics["fmax"][0] > 1e-8
    assert np.isfinite(r.values["volume"][0])  # a finite state is still differentiated
