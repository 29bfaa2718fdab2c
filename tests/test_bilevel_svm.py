"""Tests of the multiclass-SVM study (mdsens.bilevel.svm) on a small synthetic problem.

The implicit hypergradient of each fixed point (mirror descent, projected gradient, block
coordinate descent) is compared with central differences of the validation loss, the inner
problem re-solved to ‖T(B) − B‖/η ≤ 1e-13 at every evaluation (float64, tests/conftest.py);
the three solvers must reach the same dual optimum (checked by its KKT conditions).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from mdsens.bilevel import svm
from mdsens.bilevel.hyperparameters import svm_dual_objective

assert jax.config.jax_enable_x64, "tests/test_bilevel_svm.py needs float64 (see conftest.py)"

TOL = 1e-13
LOG_LAM = -1.0


@pytest.fixture(scope="module")
def data():
    return svm.make_svm_data(30, 30, 10, 3, seed=0)


def _loss(data, method, condition=None, **options):
    options = {"tol": TOL, "maxiter": 200_000, **options}
    return lambda t: svm.svm_validation_loss(t, data, method=method, condition=condition,
                                             **options)[0]


@pytest.mark.parametrize("method", svm.METHODS)
def test_hypergradient_matches_central_differences(data, method):
    value_and_grad = jax.jit(jax.value_and_grad(_loss(data, method)))
    _, g = value_and_grad(LOG_LAM)
    eps = 1e-4
    fd = (float(value_and_grad(LOG_LAM + eps)[0])
          - float(value_and_grad(LOG_LAM - eps)[0])) / (2 * eps)
    assert abs(fd) > 1e-2
    np.testing.assert_allclose(float(g), fd, rtol=1e-6)


def test_methods_reach_the_dual_optimum(data):
    """One optimum for the three solvers: on each row's support the gradient of the dual is
    constant and elsewhere not smaller (KKT on the simplex); every fixed point vanishes."""
    lam = float(np.exp(LOG_LAM))
    theta = (lam, data.X, data.Y, 1.0)
    solve = jax.jit(lambda: [svm.fit_svm_dual(data.X, data.Y, lam, method=m,
                                              sigma2=data.sigma2, tol=TOL,
                                              maxiter=200_000)[0] for m in svm.METHODS])
    Bs = solve()
    for B in Bs[1:]:
        np.testing.assert_allclose(B, Bs[0], atol=1e-9)
    B = Bs[1]
    G = np.asarray(jax.grad(svm_dual_objective)(B, theta))
    support = np.asarray(B) > 1e-12
    assert 0 < support.sum() < B.size  # a nontrivial face of the simplices
    tau = np.sum(np.where(support, G, 0), 1) / np.sum(support, 1)
    assert np.max(np.abs(np.where(support, G - tau[:, None], 0))) < 1e-9
    assert np.min(G - tau[:, None]) > -1e-9
    residuals = jax.jit(lambda B: [svm.optimality_condition(m, data.sigma2)(B, theta)
                                   for m in svm.METHODS])(B)
    for r in residuals:
        np.testing.assert_allclose(r, 0.0, atol=1e-11)


def test_block_coordinate_descent_through_other_fixed_points(data):
    """BCD's solution differentiated through the mirror-descent and projected-gradient fixed
    points gives the same hypergradient as through its own."""
    grads = jax.jit(lambda t: [jax.grad(_loss(data, "block_coordinate_descent", c))(t)
                               for c in svm.METHODS])(LOG_LAM)
    np.testing.assert_allclose(grads, grads[2], rtol=1e-8)


def test_unrolled_gradient_agrees_once_converged(data):
    """jax.grad through K converged iterations (projected gradient, block coordinate descent
    with a checkpointed sweep) equals the implicit hypergradient."""
    cases = (("projected_gradient", 300), ("block_coordinate_descent", 150))
    grads = jax.jit(lambda t: [(jax.grad(_loss(data, m))(t),
                                jax.grad(_loss(data, m, maxiter=K, unroll=True))(t))
                               for m, K in cases])(LOG_LAM)
    for (method, _), (gi, gu) in zip(cases, grads):
        np.testing.assert_allclose(float(gu), float(gi), rtol=1e-8, err_msg=method)


def test_make_classification():
    X, y = svm.make_classification(50, 20, 4, seed=3)
    X2, y2 = svm.make_classification(50, 20, 4, seed=3)
    assert X.shape == (50, 20) and y.shape == (50,) and X.dtype == np.float64
    np.testing.assert_array_equal(X, X2)
    np.testing.assert_array_equal(np.bincount(y), [13, 13, 12, 12])
    # the class means differ in the informative features only: a nearest-mean classifier
    # does far better than chance on well-separated data
    X, y = svm.make_classification(400, 20, 4, class_sep=3.0, seed=1)
    means = np.stack([X[y == k].mean(0) for k in range(4)])
    pred = np.argmin(((X[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
    assert np.mean(pred == y) > 0.8
    with pytest.raises(ValueError, match="informative"):
        svm.make_classification(10, 2, 5)
    with pytest.raises(ValueError, match="unknown method"):
        svm.fit_svm_dual(X, np.eye(4)[y], 1.0, method="newton")
