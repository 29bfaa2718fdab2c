"""Test configuration: sensitivities are checked in float64."""

import jax
import pytest

jax.config.update("jax_enable_x64", True)


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
    and keeps a long session's memory bounded.
    """
    yield
    jax.clear_caches()
