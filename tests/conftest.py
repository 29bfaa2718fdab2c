"""Test configuration: sensitivities are checked in float64; compiled programs are shared
through a persistent compilation cache and freed after each module."""

import atexit
import os
import shutil
import tempfile

import jax
import pytest

jax.config.update("jax_enable_x64", True)


def _share_compiled_programs() -> None:
    """Persistent compilation cache for the session (and its subprocesses).

    Many tests build equal models (new objects, so new jit-cache entries) or run the same
    program again after the per-module cache clearing below, and the CLI, SIGKILL and Dask
    tests start Python processes that compile the parent's programs again. The on-disk
    cache is keyed by the program itself, so each is compiled once per session (the
    SIGKILL-resume and Dask tests take half the time). A ``JAX_COMPILATION_CACHE_DIR`` set by
    the developer is used as is (and kept); otherwise a temporary one is removed at exit.
    """
    directory = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    if not directory:
        directory = tempfile.mkdtemp(prefix="mdsens-test-jax-cache-")
        os.environ["JAX_COMPILATION_CACHE_DIR"] = directory
        atexit.register(shutil.rmtree, directory, ignore_errors=True)
    # programs that took at least 0.5 s to compile: writing every small one costs more
    # than it saves
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs",
                      float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes",
                      int(os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"]))


_share_compiled_programs()


@pytest.fixture
def rng():
    import numpy as np

    return np.random.default_rng(20261124)


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs():
    """Free compiled programs after each test module.

    The derivative stages are module-level jitted functions whose caches are keyed on the
    energy model, so every model a test builds keeps its executables alive for the whole
    session. Each test module builds its own models, so clearing at module end loses nothing
    (the persistent cache above keeps them on disk) and keeps a long session's memory
    bounded.
    """
    yield
    jax.clear_caches()
