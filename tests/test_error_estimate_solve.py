"""The solve term of the Jacobian error estimate (bounds.jacobian_error_estimate).

Ridge regression w*(λ, y) = (XᵀX + λI)⁻¹ Xᵀy has a closed-form Jacobian. At a root that is
exact up to rounding, the error of a Jacobian computed with a loose CG tolerance comes from the
derivative solves alone: the root term must miss it, the bound (root + solve term) must cover
it without being vacuous.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from mdsens.implicit import bounds, custom_root, linsolve, root_jvp, root_vjp

RNG = np.random.default_rng(0)
N, D = 80, 40
_U, _ = np.linalg.qr(RNG.normal(size=(N, D)))
_V, _ = np.linalg.qr(RNG.normal(size=(D, D)))
# singular values 0.03 … 10: CG needs ~100 iterations, so a loose tolerance stops it early
X = jnp.asarray(_U @ np.diag(np.logspace(-1.5, 1.0, D)) @ _V.T)
Y = jnp.asarray(RNG.normal(size=N))
LAM = 1e-3
ARGS = (LAM, Y)
TOL = 1e-6
CG = functools.partial(linsolve.cg, tol=TOL)


def F(w, lam, y):
    """Stationarity of ½‖Xw − y‖² + ½λ‖w‖²."""
    return X.T @ (X @ w - y) + lam * w


def closed_form(lam, y):
    return jnp.linalg.solve(X.T @ X + lam * jnp.eye(D), X.T @ y)


def as_matrix(jac_lam, jac_y):
    """The (D, 1 + N) Jacobian with respect to the flattened (λ, y)."""
    return jnp.concatenate([jac_lam[:, None], jac_y], axis=1)


W = closed_form(*ARGS)  # the root, exact up to rounding
J_TRUE = as_matrix(*jax.jacfwd(closed_form, (0, 1))(*ARGS))
solver = custom_root(F, solve=CG, symmetric=True)(lambda init, lam, y: closed_form(lam, y))
implicit = lambda lam, y: solver(jnp.zeros(D), lam, y)  # noqa: E731


@pytest.fixture(scope="module")
def forward():
    """The forward-mode Jacobian at the loose tolerance and its true spectral-norm error."""
    J = as_matrix(*jax.jit(jax.jacfwd(implicit, (0, 1)))(*ARGS))
    return J, float(jnp.linalg.norm(J - J_TRUE, 2))


def estimate(**source):
    """The estimate with the known constants of ridge regression: ∂₁F = XᵀX + λI does not
    depend on w (γ = 0) and ∂₂F = [w, −Xᵀ] changes along e by [e, 0] (β = 1)."""
    return jax.jit(lambda: bounds.jacobian_error_estimate(
        F, W, ARGS, lipschitz_A=0.0, lipschitz_B=1.0, lanczos_steps=D, **source))()


def check_bound(est, error, factor=100.0):
    assert error > 1e-6  # the loose solve does change the Jacobian
    assert float(est.root_term) < error / 100  # the root term alone misses it
    np.testing.assert_allclose(est.estimate, est.root_term)
    assert error <= float(est.bound) <= factor * error, (error, est)
    np.testing.assert_allclose(est.bound, est.root_term + est.solve_term, rtol=1e-12)


def test_measured_residual_of_the_computed_derivative_bounds_the_error(forward):
    J, error = forward
    # the computed Jacobian as the linear map θ̇ ↦ ẋ
    derivative = lambda t: J @ ravel_pytree(t)[0]  # noqa: E731
    est = estimate(derivative=derivative)
    check_bound(est, error, factor=20)
    # the residual matrix is measured: ‖A Ĵ + B‖₂ against dense algebra
    A = X.T @ X + LAM * jnp.eye(D)
    B = as_matrix(W, -X.T)
    np.testing.assert_allclose(est.solve_residual, jnp.linalg.norm(A @ J + B, 2), rtol=1e-4)
    # running the solves inside the estimate with the same solver gives a term of the same
    # size (CG at this conditioning is not reproducible to more than its tolerance)
    run = estimate(solve=CG)
    assert 0.2 < float(run.solve_term / est.solve_term) < 5
    assert error <= float(run.bound) <= 100 * error


def test_solve_info_of_forward_and_adjoint_solves_bounds_the_error(forward):
    _, error = forward
    flat, unravel = ravel_pytree(ARGS)
    basis = jnp.eye(flat.size)
    _, info = jax.jit(jax.vmap(lambda e: root_jvp(F, W, ARGS, unravel(e), CG)))(basis)
    est = estimate(solve_info=info)
    check_bound(est, error)
    np.testing.assert_allclose(est.solve_residual, jnp.linalg.norm(info.residual_norm))

    # reverse mode: rows −Bᵀλᵢ with Aᵀλᵢ = eᵢ; the solve term carries the factor R
    rows, info_adj = jax.jit(jax.vmap(lambda c: root_vjp(F, W, ARGS, c, CG)))(jnp.eye(D))
    J_rev = as_matrix(rows[0], rows[1])
    error_rev = float(jnp.linalg.norm(J_rev - J_TRUE, 2))
    adj = estimate(solve_info=info_adj, adjoint=True)
    check_bound(adj, error_rev, factor=1000)
    np.testing.assert_allclose(adj.solve_term,
                               adj.norm_B * adj.solve_residual / adj.sigma_min, rtol=1e-12)


def test_a_priori_term_from_the_tolerance_covers_the_error(forward):
    _, error = forward
    est = estimate(solve_tol=TOL)
    check_bound(est, error, factor=1000)
    B = as_matrix(W, -X.T)
    np.testing.assert_allclose(est.solve_residual, 10 * TOL * jnp.linalg.norm(B), rtol=1e-10)


def test_without_solve_information_the_bound_is_not_a_number():
    est = estimate()
    assert np.isnan(est.solve_term) and np.isnan(est.bound)
    assert np.isfinite(est.root_term)
    with pytest.raises(ValueError, match="at most one"):
        bounds.jacobian_error_estimate(F, W, ARGS, solve="cg", solve_tol=1e-8)
    with pytest.raises(ValueError, match="adjoint"):
        bounds.jacobian_error_estimate(F, W, ARGS, solve="cg", adjoint=True)
