"""Linear solvers against numpy.linalg, and failure reporting under each policy."""

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_tree_allclose, random_systems

from mdsens.implicit import SolveError, Status, linsolve

# Which solver handles which system (None: the solver is expected to fail and say so).
SOLVES = {
    "spd": ["cg", "minres", "gmres", "bicgstab", "normal_cg", "lu", "cholesky", "lstsq"],
    "sym_indef": ["minres", "gmres", "bicgstab", "normal_cg", "lu", "lstsq"],
    "nonsym": ["gmres", "bicgstab", "normal_cg", "lu", "lstsq"],
}


@pytest.fixture(scope="module")
def systems():
    return random_systems(np.random.default_rng(7), n=12)


@pytest.mark.parametrize(
    "kind,solver", [(k, s) for k, names in SOLVES.items() for s in names]
)
def test_solver_matches_numpy(systems, kind, solver):
    A = systems[kind]
    b = np.random.default_rng(1).normal(size=A.shape[0])
    x, info = linsolve.SOLVERS[solver](lambda v: A @ v, jnp.asarray(b))
    np.testing.assert_allclose(x, np.linalg.solve(A, b), rtol=1e-7, atol=1e-9)
    assert bool(info.converged)
    assert float(info.residual_norm) <= 1e-8 * np.linalg.norm(b)


@pytest.mark.parametrize("solver", ["cg", "minres", "gmres", "bicgstab", "normal_cg", "lstsq"])
def test_singular_consistent_with_nullspace(systems, solver):
    """A periodic-Hessian-like singular system: min-norm solution = numpy's lstsq."""
    A, q = systems["singular"], systems["null_vector"]
    rng = np.random.default_rng(2)
    b = A @ rng.normal(size=A.shape[0])  # consistent: b ⟂ null space
    x, info = linsolve.SOLVERS[solver](lambda v: A @ v, jnp.asarray(b), nullspace=q[None, :])
    np.testing.assert_allclose(x, np.linalg.lstsq(A, b, rcond=None)[0], rtol=1e-7, atol=1e-9)
    assert bool(info.converged)
    assert float(info.nullspace_component) < 1e-10


@pytest.mark.parametrize("solver", ["cg", "minres", "gmres"])
def test_inconsistent_rhs_is_projected_and_reported(systems, solver):
    """b with a component along the null space: solved on the complement, component reported."""
    A, q = systems["singular"], systems["null_vector"]
    b = A @ np.arange(A.shape[0], dtype=float) + 24.0 * q
    x, info = linsolve.SOLVERS[solver](lambda v: A @ v, jnp.asarray(b), nullspace=q[None, :])
    np.testing.assert_allclose(float(info.nullspace_component), 24.0, rtol=1e-10)
    np.testing.assert_allclose(x, np.linalg.pinv(A) @ b, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("solver", ["cg", "minres", "gmres", "bicgstab", "lstsq"])
def test_inconsistent_without_nullspace_is_not_silent(systems, solver):
    """Without the null space, an inconsistent singular system must not pass as solved."""
    A, q = systems["singular"], systems["null_vector"]
    b = A @ np.arange(A.shape[0], dtype=float) + 24.0 * q
    x, info = linsolve.SOLVERS[solver](
        lambda v: A @ v, jnp.asarray(b), maxiter=200, on_failure="ignore"
    )
    assert not bool(info.converged)
    assert float(info.residual_norm) > 1.0


def test_warm_start_ridge_and_preconditioner(systems):
    A = systems["spd"]
    b = np.random.default_rng(3).normal(size=A.shape[0])
    exact = np.linalg.solve(A, b)
    x, info = linsolve.cg(lambda v: A @ v, b, init=exact + 1e-6)
    assert int(info.iterations) < 10
    np.testing.assert_allclose(x, exact, rtol=1e-8)
    x, _ = linsolve.cg(lambda v: A @ v, b, ridge=2.0)
    np.testing.assert_allclose(x, np.linalg.solve(A + 2 * np.eye(len(b)), b), rtol=1e-8)
    jacobi = 1.0 / np.diag(A)
    x, info_m = linsolve.cg(lambda v: A @ v, b, M=lambda v: jacobi * v)
    np.testing.assert_allclose(x, exact, rtol=1e-8)
    assert bool(info_m.converged)


def test_pytree_rhs(systems):
    A = systems["spd"]
    n = A.shape[0]

    def matvec(tree):
        flat = jnp.concatenate([tree["a"].ravel(), tree["b"]])
        out = A @ flat
        return {"a": out[:4].reshape(2, 2), "b": out[4:]}

    rhs = {"a": jnp.arange(4.0).reshape(2, 2), "b": jnp.ones(n - 4)}
    flat_rhs = np.concatenate([np.arange(4.0), np.ones(n - 4)])
    ref = np.linalg.solve(A, flat_rhs)
    for solver in ["cg", "gmres", "bicgstab", "minres", "lu", "normal_cg"]:
        x, _ = linsolve.SOLVERS[solver](matvec, rhs)
        assert_tree_allclose(x, {"a": ref[:4].reshape(2, 2), "b": ref[4:]}, rtol=1e-7, atol=1e-9)


def test_negative_curvature_detected(systems):
    A = systems["sym_indef"]
    b = np.random.default_rng(4).normal(size=A.shape[0])
    _, info = linsolve.cg(lambda v: A @ v, b, on_failure="ignore")
    assert int(info.status) == Status.NEGATIVE_CURVATURE
    assert float(info.min_curvature) < 0


def test_cholesky_reports_indefinite(systems):
    A = systems["sym_indef"]
    _, info = linsolve.cholesky(lambda v: A @ v, np.ones(A.shape[0]), on_failure="ignore")
    assert int(info.status) == Status.SINGULAR


# ------------------------------------------------------------------ failure policies


def _unconverged(on_failure, jit=False):
    A = random_systems(np.random.default_rng(5), n=12)["spd"]
    b = jnp.ones(A.shape[0])
    solve = functools.partial(linsolve.cg, maxiter=1, on_failure=on_failure)
    fn = (lambda b: solve(lambda v: A @ v, b)) if not jit else jax.jit(
        lambda b: solve(lambda v: A @ v, b)
    )
    return fn(b)


@pytest.mark.parametrize("jit", [False, True])
def test_policy_raise(jit):
    error = SolveError if not jit else RuntimeError
    with pytest.raises(error, match="maximum iterations"):
        x, _ = _unconverged("raise", jit)
        jax.block_until_ready(x)


@pytest.mark.parametrize("jit", [False, True])
def test_policy_warn(jit):
    with pytest.warns(RuntimeWarning, match="maximum iterations"):
        x, info = _unconverged("warn", jit)
        jax.block_until_ready(x)
        jax.effects_barrier()
    assert int(info.status) == Status.MAX_ITERATIONS


@pytest.mark.parametrize("jit", [False, True])
def test_policy_nan(jit):
    x, info = _unconverged("nan", jit)
    assert np.all(np.isnan(x))
    assert not bool(info.converged)


def test_policy_ignore_and_vmap():
    A = random_systems(np.random.default_rng(6), n=12)["spd"]
    bs = jnp.stack([jnp.ones(12), jnp.arange(12.0)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x, info = jax.vmap(lambda b: linsolve.cg(lambda v: A @ v, b, maxiter=1,
                                                 on_failure="ignore"))(bs)
    assert info.status.shape == (2,)
    assert np.all(np.asarray(info.status) == Status.MAX_ITERATIONS)
    x, info = jax.vmap(lambda b: linsolve.cg(lambda v: A @ v, b))(bs)
    np.testing.assert_allclose(x, np.linalg.solve(A, np.asarray(bs).T).T, rtol=1e-8)


def test_bad_policy_and_solver_names():
    with pytest.raises(ValueError, match="on_failure"):
        linsolve.cg(lambda v: v, jnp.ones(3), on_failure="explode")
    with pytest.raises(ValueError, match="unknown linear solver"):
        linsolve.get_solver("magic")


@pytest.mark.parametrize("solver", ["cg", "minres", "gmres"])
def test_rhs_entirely_in_nullspace_gives_zero(solver):
    """A ring Laplacian with b along its null vector: x = 0, success, component reported."""
    n = 10
    L = 2 * np.eye(n) - np.roll(np.eye(n), 1, 0) - np.roll(np.eye(n), -1, 0)
    x, info = linsolve.SOLVERS[solver](lambda v: L @ v, 0.3 * jnp.ones(n),
                                       nullspace=np.ones((1, n)))
    np.testing.assert_allclose(x, 0.0, atol=1e-12)
    np.testing.assert_allclose(float(info.nullspace_component), 0.3 * np.sqrt(n), rtol=1e-12)


@pytest.mark.parametrize("solver", ["cg", "minres", "gmres", "lstsq"])
def test_inconsistent_system_under_each_policy(systems, solver):
    """The archived reference returned ~1e19 for this kind of system without a word: here
    every policy surfaces it."""
    A, q = systems["singular"], systems["null_vector"]
    b = jnp.asarray(A @ np.arange(A.shape[0], dtype=float) + 24.0 * q)
    solve = functools.partial(linsolve.SOLVERS[solver], lambda v: A @ v, b, maxiter=100)
    with pytest.raises(SolveError):
        solve(on_failure="raise")
    with pytest.warns(RuntimeWarning):
        solve(on_failure="warn")
    x, info = solve(on_failure="nan")
    assert np.all(np.isnan(x)) and not bool(info.converged)
