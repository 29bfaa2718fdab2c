"""Toolchain sanity: the installed JAX must not be a release known to miscompile on CPU.

jax/jaxlib 0.10.2 silently produce wrong numbers on CPU (jax-ml/jax#39103); the project's
dependency specification excludes them. These tests fail loudly if such a build sneaks in
(e.g. installed by hand), and check that compiled code agrees with plain NumPy on the kernel
shapes mdsens relies on (reductions under vmap+grad, while loops, scatter-adds).
"""

import importlib.metadata

import jax
import jax.numpy as jnp
import numpy as np
import pytest

BAD_RELEASES = {"0.10.2"}


@pytest.mark.parametrize("package", ["jax", "jaxlib"])
def test_no_known_miscompiling_release(package):
    version = importlib.metadata.version(package)
    assert version not in BAD_RELEASES, (
        f"{package} {version} miscompiles on CPU (jax-ml/jax#39103); reinstall with "
        f"'pip install -e .' which excludes it"
    )


def test_pyproject_excludes_bad_release():
    import pathlib

    import tomllib

    pyproject = pathlib.Path(__file__).resolve().parents[1] / "pyproject.toml"
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    jax_spec = next(d for d in deps if d.replace(" ", "").startswith("jax>"))
    assert "!=0.10.2" in jax_spec.replace(" ", "")


def test_jit_grad_of_vmapped_mean_matches_numpy():
    """The gradient of a mean over a vmapped function, jitted vs closed form."""
    w = jnp.array([1.0, 2.0, 3.0])
    ys = jnp.asarray(np.random.default_rng(0).normal(size=(20000, 3)))

    def mean_fun(x):
        def one(y):
            diff = y - x
            return jnp.dot(diff, w) + jnp.dot(jnp.dot(diff, jnp.zeros((3, 3))), diff)

        return jnp.mean(jax.vmap(one)(ys))

    np.testing.assert_allclose(jax.jit(jax.grad(mean_fun))(jnp.ones(3)), -np.asarray(w),
                               rtol=1e-12)


def test_jit_while_loop_and_scatter_add_match_numpy():
    rng = np.random.default_rng(1)
    idx = rng.integers(0, 50, size=1000)
    vals = rng.normal(size=(1000, 3))
    got = jax.jit(lambda v: jnp.zeros((50, 3)).at[idx].add(v))(vals)
    want = np.zeros((50, 3))
    np.add.at(want, idx, vals)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)

    def power_sum(x):
        return jax.lax.while_loop(lambda s: s[1] < 30, lambda s: (s[0] * 0.9 + x, s[1] + 1),
                                  (jnp.zeros_like(x), 0))[0]

    x = rng.normal(size=7)
    expected = x * sum(0.9**k for k in range(30))
    np.testing.assert_allclose(jax.jit(power_sum)(x), expected, rtol=1e-12)


def test_materialize_keeps_one_buffer_on_cpu():
    """``mdsens.md._fusion.materialize`` returns its input unchanged and, on CPU, compiles
    to a conditional (whose result is a buffer read by both consumers) that XLA keeps: a
    conditional with two identical branches would be simplified away."""
    from mdsens.md.potentials._fusion import materialize

    def f(x, i, use):
        y = jnp.sin(x) * 3.0
        y = use(y, i[0])
        return y[i] + y[i + 1]

    x, i = jnp.linspace(0.0, 1.0, 100), jnp.arange(10)
    expected = f(x, i, lambda y, _: y)
    np.testing.assert_array_equal(jax.jit(lambda x, i: f(x, i, materialize))(x, i), expected)
    if jax.default_backend() == "cpu":
        kept = jax.jit(lambda x, i: f(x, i, materialize)).lower(x, i).compile().as_text()
        assert "conditional" in kept
