"""Tests of the bilevel applications (mdsens.bilevel) on small subsets of the digits.

Each hypergradient (implicit differentiation through the inner solver) is compared with a
central finite difference of the outer objective, the inner problem re-solved to ‖residual‖
≤ 1e-13 at every evaluation (float64, tests/conftest.py); each outer loop must lower its
objective by the stated margin in a few steps.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdsens.bilevel import dictionary, distillation, load_digits_split
from mdsens.bilevel import hyperparameters as hp

assert jax.config.jax_enable_x64, "tests/test_bilevel.py needs float64 (see conftest.py)"

TOL = 1e-13  # inner tolerance for the finite-difference checks


@pytest.fixture(scope="module")
def digits():
    return load_digits_split(80, 80, 0, seed=3)


@pytest.fixture(scope="module")
def binary():
    return load_digits_split(60, 60, 0, classes=(3, 8), seed=3)


def _central(f, eps: float) -> float:
    return (float(f(eps)) - float(f(-eps))) / (2 * eps)


def _arrays(split):
    Xt = hp.with_intercept(jnp.asarray(split.X_train))
    Xv = hp.with_intercept(jnp.asarray(split.X_val))
    K = split.n_classes
    return Xt, jnp.eye(K)[split.y_train], Xv, jnp.eye(K)[split.y_val]


@pytest.mark.parametrize("which", ["logistic", "svm"])
def test_hyperparameter_hypergradient_matches_fd(digits, which):
    Xt, Yt, Xv, Yv = _arrays(digits)
    loss = hp.logistic_validation_loss if which == "logistic" else hp.svm_validation_loss
    f = jax.jit(lambda t: loss(t, Xt, Yt, Xv, Yv, tol=TOL)[0])
    t0 = -2.0
    g = float(jax.jit(jax.grad(f))(t0))
    fd = _central(lambda e: f(t0 + e), 1e-4)
    assert abs(g) > 1e-3
    np.testing.assert_allclose(g, fd, rtol=1e-6)


def test_svm_inner_solution_is_the_dual_optimum(digits):
    """KKT of the smoothed SVM dual: on each row's support the gradient is constant and
    elsewhere not smaller; the primal weights give the primal objective = − dual objective."""
    Xt, Yt, _, _ = _arrays(digits)
    lam, gamma = 0.1, 1.0
    B, W, stats = hp.fit_multiclass_svm(Xt, Yt, lam, tol=TOL)
    assert float(stats.residual) <= TOL
    G = jax.grad(hp.svm_dual_objective)(B, (lam, Xt, Yt, gamma))
    tau = jnp.sum(jnp.where(B > 1e-12, G, 0), 1) / jnp.sum(B > 1e-12, 1)
    assert float(jnp.max(jnp.abs(jnp.where(B > 1e-12, G - tau[:, None], 0)))) < 1e-9
    assert float(jnp.min(G - tau[:, None])) > -1e-9
    n = Xt.shape[0]
    primal = 0.5 * lam * jnp.sum(W**2) + hp.smoothed_hinge(Xt @ W, Yt, gamma) - 0.5 * gamma
    dual = hp.svm_dual_objective(B, (lam, Xt, Yt, gamma)) / (lam * n)
    np.testing.assert_allclose(float(primal), -float(dual), rtol=1e-9)


@pytest.mark.parametrize("which", ["logistic", "svm"])
def test_hyperparameter_outer_loop_lowers_loss(digits, which):
    """≥ 30 % lower validation loss after 5 outer steps from the over-regularised λ = 1."""
    tune = hp.tune_logistic_regression if which == "logistic" else hp.tune_multiclass_svm
    lr = 5.0 if which == "logistic" else 3.0
    r = tune(digits.X_train, digits.y_train, digits.X_val, digits.y_val, log_lam0=0.0, steps=5,
             lr=lr)
    assert r.losses[-1] <= 0.7 * r.losses[0], r.losses
    assert r.log_lams[-1] < r.log_lams[0]


def test_distillation_hypergradient_matches_fd(digits):
    K = digits.n_classes
    S = jnp.asarray(np.random.default_rng(0).uniform(0, 1, (K, 64)))
    Y_S, X, Y = jnp.eye(K), jnp.asarray(digits.X_train), jnp.eye(K)[digits.y_train]
    f = jax.jit(lambda S: distillation.distillation_loss(S, Y_S, 1e-2, X, Y, tol=TOL)[0])
    g = jax.jit(jax.grad(f))(S)
    direction = jnp.asarray(np.random.default_rng(1).standard_normal(S.shape))
    fd = _central(lambda e: f(S + e * direction), 1e-5)
    np.testing.assert_allclose(float(jnp.vdot(g, direction)), fd, rtol=1e-6)


def test_distillation_outer_loop_lowers_loss(digits):
    """≥ 50 % lower outer loss (cross-entropy on real digits) after 10 Adam steps."""
    r = distillation.distill_dataset(digits.X_train, digits.y_train, steps=10)
    assert r.losses[-1] <= 0.5 * r.losses[0], r.losses
    assert r.accuracies[-1] >= 0.6


def test_dictionary_hypergradient_matches_fd(binary):
    rng = np.random.default_rng(2)
    X, y = jnp.asarray(binary.X_train), jnp.asarray(binary.y_train, float)
    D = rng.uniform(0, 1, (64, 8))
    D = jnp.asarray(D / np.linalg.norm(D, axis=0))
    w, b = jnp.asarray(rng.standard_normal(8)), jnp.asarray(0.1)
    f = jax.jit(lambda D: dictionary.task_loss((D, w, b), X, y, tol=TOL)[0])
    g = jax.jit(jax.grad(f))(D)
    direction = jnp.asarray(rng.standard_normal(D.shape))
    fd = _central(lambda e: f(D + e * direction), 1e-6)
    np.testing.assert_allclose(float(jnp.vdot(g, direction)), fd, rtol=1e-6)
    # the codes are sparse (the elastic net is active), so the prox Jacobian matters
    Z, stats = dictionary.sparse_codes(X, D, tol=TOL)
    assert 0.05 < float(jnp.mean(Z == 0)) < 0.95
    assert float(jnp.max(stats.residual)) <= TOL


def test_dictionary_outer_loop_lowers_loss(binary):
    """≥ 50 % lower training objective after 10 outer steps; and learning D beats training the
    classifier alone on the initial dictionary."""
    kw = dict(n_atoms=8, steps=10, lr=0.05)
    r = dictionary.learn_dictionary(binary.X_train, binary.y_train, **kw)
    fixed = dictionary.learn_dictionary(binary.X_train, binary.y_train, lr_dictionary=0.0, **kw)
    assert r.losses[-1] <= 0.5 * r.losses[0], r.losses
    assert r.losses[-1] < fixed.losses[-1]
    np.testing.assert_allclose(np.linalg.norm(r.D, axis=0).max(), 1.0, atol=1e-12)
