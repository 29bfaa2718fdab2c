"""A-posteriori Jacobian error estimate (bounds) against dense references."""

import jax
import jax.numpy as jnp
import numpy as np

from mdsens.implicit import bounds

RNG = np.random.default_rng(3)
X = jnp.asarray(RNG.normal(size=(40, 5)))
Y = jnp.asarray((RNG.random(40) < 0.5) * 1.0)


def logistic_objective(w, lam):
    """ℓ2-regularised logistic regression."""
    z = X @ w
    return jnp.mean(jnp.logaddexp(0.0, z) - Y * z) + 0.5 * lam * w @ w


F = jax.grad(logistic_objective)


def implicit_jacobian(w, lam):
    """J(w) = −∂₁F(w)⁻¹ ∂₂F(w), dense."""
    return -jnp.linalg.solve(jax.jacfwd(F)(w, lam), jax.jacfwd(F, 1)(w, lam))


@jax.jit
def gradient_descent(steps, lam):
    return jax.lax.fori_loop(0, steps, lambda _, w: w - 0.5 * F(w, lam), jnp.zeros(5))


def test_extreme_singular_values_match_svd():
    A = RNG.normal(size=(9, 9))
    s = np.linalg.svd(A, compute_uv=False)
    smin, smax = bounds.extreme_singular_values(lambda v: A @ v, jnp.zeros(9), steps=9)
    np.testing.assert_allclose([smin, smax], [s.min(), s.max()], rtol=1e-6)
    # rectangular map (5 -> 9)
    R = RNG.normal(size=(9, 5))
    s = np.linalg.svd(R, compute_uv=False)
    smin, smax = bounds.extreme_singular_values(lambda v: R @ v, jnp.zeros(5), steps=5)
    np.testing.assert_allclose([smin, smax], [s.min(), s.max()], rtol=1e-6)


def test_estimate_bounds_error_and_shrinks_linearly_with_residual():
    lam = 0.1
    exact = implicit_jacobian(gradient_descent(3000, lam), lam)
    residuals, estimates, errors = [], [], []
    for steps in (5, 10, 20, 40):
        w_hat = gradient_descent(steps, lam)
        est = bounds.jacobian_error_estimate(F, w_hat, (lam,))
        errors.append(float(jnp.linalg.norm(implicit_jacobian(w_hat, lam) - exact)))
        estimates.append(float(est.estimate))
        residuals.append(float(est.residual_norm))
    # the estimate is an upper bound on the true error here ...
    assert all(e <= s for e, s in zip(errors, estimates)), (errors, estimates)
    # ... and not a vacuous one (within a factor 5) ...
    assert all(s <= 5 * e for e, s in zip(errors, estimates)), (errors, estimates)
    # ... and it is linear in the residual: estimate / residual is nearly constant.
    ratios = np.array(estimates) / np.array(residuals)
    assert ratios.max() / ratios.min() < 1.5, ratios
    assert residuals[-1] < residuals[0] / 20


def test_given_lipschitz_constants_are_used():
    w_hat = gradient_descent(10, 0.1)
    est = bounds.jacobian_error_estimate(F, w_hat, (0.1,), lipschitz_A=2.0, lipschitz_B=1.0)
    expected_C = 1.0 / est.sigma_min + 2.0 * est.norm_B / est.sigma_min**2
    np.testing.assert_allclose(est.constant, expected_C, rtol=1e-12)
    np.testing.assert_allclose(est.estimate, expected_C * est.residual_norm / est.sigma_min,
                               rtol=1e-12)
