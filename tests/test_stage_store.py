"""mdsens.md.stage_store: traced stage programs kept between processes (jax.export).

A stored program must give bitwise the results of the plain jit, be found again only for
the same code, static arguments, pytree metadata and shapes, and never be used for what
cannot be described (a user's function)."""

from __future__ import annotations

import dataclasses
import functools
import hashlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdsens import units
from mdsens.md import stage_store as store
from mdsens.md.root_problem import SolverPlan

pytest.importorskip("flatbuffers")

TRACES = []


def _scaled(power: int, x, w):
    TRACES.append(power)
    return {"y": jnp.sin(x) ** power @ w, "n": jnp.sum(x)}


@dataclasses.dataclass(frozen=True)
class _Meta:
    scale: float


def _digest(obj) -> str:
    h = hashlib.sha256()
    store.fingerprint(obj, h)
    return h.hexdigest()


@pytest.fixture
def trusted_here(monkeypatch, tmp_path):
    """Functions of this test module count as library code; a fresh store directory."""
    monkeypatch.setattr(store, "_TRUSTED", store._TRUSTED + (__name__.split(".")[0],))
    assert store.enable(tmp_path) == tmp_path
    yield tmp_path
    store.disable()


def test_fingerprint_is_canonical_and_refuses_foreign_code():
    assert _digest({"b": 1, "a": (2.0, "x")}) == _digest({"a": (2.0, "x"), "b": 1})
    assert _digest(np.arange(3.0)) != _digest(np.arange(3.0) + 1e-15)
    assert _digest(np.zeros(2, np.float32)) != _digest(np.zeros(2, np.float64))
    assert _digest(functools.partial(units.to_h5md, "eV")) != _digest(
        functools.partial(units.to_h5md, "Å"))
    assert _digest(SolverPlan(tol=1e-10)) != _digest(SolverPlan(tol=1e-9))
    with pytest.raises(store.NotPersistable):
        _digest(_Meta(1.0))  # a class of this module
    with pytest.raises(store.NotPersistable):
        _digest(lambda x: x)  # this module is not library code
    with pytest.raises(store.NotPersistable):
        _digest(object())
    k = 3
    with pytest.raises(store.NotPersistable):
        _digest((1, lambda x: x + k))


def test_stage_round_trip_is_bitwise_and_skips_tracing(trusted_here):
    x = jnp.linspace(0.1, 1.0, 6).reshape(2, 3)
    w = jnp.ones((3, 4)) * 0.5
    plain = jax.jit(_scaled, static_argnums=0)(2, x, w)
    TRACES.clear()
    first = store.stage(_scaled, static_argnums=(0,))(2, x, w)  # traced and exported
    assert TRACES == [2] and len(list(trusted_here.glob("*.stage"))) == 1
    second = store.stage(_scaled, static_argnums=(0,))(2, x, w)  # a new process's view
    assert TRACES == [2]  # loaded, not traced
    for out in (first, second):
        assert out.keys() == plain.keys()
        for k in plain:
            np.testing.assert_array_equal(np.asarray(out[k]), np.asarray(plain[k]))
    # another static argument or another shape is another program
    store.stage(_scaled, static_argnums=(0,))(3, x, w)
    store.stage(_scaled, static_argnums=(0,))(2, x[:1], w)
    assert TRACES == [2, 3, 2] and len(list(trusted_here.glob("*.stage"))) == 3


def test_damaged_entry_is_traced_again(trusted_here):
    x, w = jnp.ones((2, 3)), jnp.ones((3, 1))
    store.stage(_scaled, static_argnums=(0,))(1, x, w)
    (entry,) = trusted_here.glob("*.stage")
    entry.write_bytes(b"not a program")
    TRACES.clear()
    out = store.stage(_scaled, static_argnums=(0,))(1, x, w)
    assert TRACES == [1]
    np.testing.assert_array_equal(np.asarray(out["y"]), np.asarray(_scaled(1, x, w)["y"]))


def test_foreign_function_and_traced_arguments_take_the_plain_jit(tmp_path):
    store.enable(tmp_path)
    try:
        f = store.stage(_scaled, static_argnums=(0,))  # this module is not trusted here
        x, w = jnp.ones((2, 3)), jnp.ones((3, 2))
        f(2, x, w)
        assert not list(tmp_path.glob("*.stage"))
        g = jax.grad(lambda x: f(2, x, w)["n"])(x)  # inside a trace: differentiable
        np.testing.assert_array_equal(np.asarray(g), np.ones((2, 3)))
    finally:
        store.disable()
