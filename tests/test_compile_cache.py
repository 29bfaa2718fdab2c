"""The persistent compilation cache of the command line: where it lives, how to turn it off,
and that a second run loads the first run's programs quietly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mdsens import compile_cache

ROOT = Path(__file__).resolve().parents[1]
ARGON = ROOT / "data" / "ar_fcc_32.extxyz"


def test_directory_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(compile_cache.ENV_VAR, str(tmp_path / "c"))
    path = compile_cache.default_directory()
    assert path.parent == tmp_path / "c"
    assert path.name == compile_cache.processor_key()  # one subdirectory per processor kind
    for off in ("off", "0", "", "false", "No"):
        monkeypatch.setenv(compile_cache.ENV_VAR, off)
        assert compile_cache.default_directory() is None
    monkeypatch.delenv(compile_cache.ENV_VAR)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compile_cache.default_directory().parent == tmp_path / "xdg" / "mdsens" / "jax"


def test_processor_key_is_stable():
    assert compile_cache.processor_key() == compile_cache.processor_key()


def _cli(args, env) -> subprocess.CompletedProcess:
    code = "import sys; from mdsens.cli import main; main(sys.argv[1:])"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=600)


def test_second_run_loads_cached_programs_quietly(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    env.update(MDSENS_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=str(ROOT))
    args = ["relax", str(ARGON), "-p", "lj", "--param", "sigma=3.4", "--param",
            "epsilon=0.0104", "-q", "-o"]
    first = _cli([*args, str(tmp_path / "a.h5")], env)
    assert first.returncode == 0, first.stderr
    entries = list((tmp_path / "cache").rglob("*"))
    assert len(entries) > 5, "the first run wrote no compiled programs"
    second = _cli([*args, str(tmp_path / "b.h5")], env)
    assert second.returncode == 0, second.stderr
    assert second.stderr == "", second.stderr  # no XLA loader lines reach the user
    before = sorted((tmp_path / "cache").rglob("*"))
    # another potential: programs the cache does not hold, which it would now receive
    morse = ["relax", str(ARGON), "-p", "morse", "--param", "sigma=3.8", "--param",
             "epsilon=0.0104", "--param", "alpha=1.5", "-q", "-o", str(tmp_path / "c.h5")]
    off = _cli(morse, {**env, "MDSENS_CACHE_DIR": "off"})
    assert off.returncode == 0, off.stderr
    assert sorted((tmp_path / "cache").rglob("*")) == before
    on = _cli([*morse[:-1], str(tmp_path / "d.h5")], env)
    assert on.returncode == 0, on.stderr
    assert len(sorted((tmp_path / "cache").rglob("*"))) > len(before)


@pytest.mark.parametrize("configured", [True, False])
def test_enable_keeps_a_configured_cache(tmp_path, configured):
    code = ("import jax, sys\n"
            "from mdsens import compile_cache\n"
            "print(compile_cache.enable())\n"
            "print(jax.config.jax_compilation_cache_dir)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    env.update(MDSENS_CACHE_DIR=str(tmp_path / "ours"), PYTHONPATH=str(ROOT))
    if configured:
        env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path / "theirs")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, check=True).stdout.split()
    expected = tmp_path / "theirs" if configured else \
        tmp_path / "ours" / compile_cache.processor_key()
    assert out == [str(expected), str(expected)]
