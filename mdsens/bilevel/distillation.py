r"""Dataset distillation by implicit differentiation (bilevel problem 2).

Learn ``k`` synthetic images per class, ``S ∈ R^{10k × 64}`` with fixed labels ``Y_S``, such
that multinomial logistic regression trained on ``S`` *alone* classifies real digits::

    outer:  min_S  L(S) = (1/n) Σ_i CE(softmax(W*(S)ᵀ x̃_i), y_i)        (real training digits)
    inner:  W*(S) = argmin_W (1/10k) Σ_j CE(softmax(Wᵀ s̃_j), y_j^S) + λ/2 ‖W‖²
    F:      F(W, S) = ∇_W f(W, S) = 0             (conditions.stationarity, CG solve)

(``x̃ = (x, 1)``: features with a bias column). The gradient ``∂L/∂S`` (640 numbers for
``k = 1``) costs one CG solve with the inner Hessian; it flows through ``W*`` only, by the
implicit function theorem ``∂L/∂S = −(∂_S F)ᵀ (∂_W F)^{-T} ∂L/∂W``.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from .hyperparameters import fit_logistic_regression, softmax_cross_entropy, with_intercept

__all__ = ["DistillationResult", "distill_dataset", "distillation_loss"]

Array = jax.Array


def distillation_loss(
    S: Array, Y_S: Array, lam: Array, X: Array, Y: Array, init: Array | None = None,
    **solver_options,
) -> tuple[Array, Array]:
    """Outer objective ``L(S) = CE(X̃ W*(S), Y)`` of a model trained on ``(S, Y_S)`` only.

    Args:
      S: synthetic images ``(m, d)``; ``Y_S``: their one-hot labels ``(m, K)``.
      lam: ℓ2 strength of the inner logistic regression.
      X, Y: real images ``(n, d)`` and one-hot labels ``(n, K)``.
      init: warm start of the inner weights ``(d + 1, K)``.
      solver_options: passed to :func:`~mdsens.bilevel.hyperparameters.fit_logistic_regression`.

    Returns:
      ``(L, W*)``.
    """
    W, _ = fit_logistic_regression(with_intercept(S), Y_S, lam, init, **solver_options)
    return softmax_cross_entropy(with_intercept(X) @ W, Y), W


@dataclass
class DistillationResult:
    """``S``: the learned images ``(10k, 64)``, ``y_S`` their labels; ``losses[t]`` and
    ``accuracies[t]`` the outer loss and training accuracy after ``t`` outer steps;
    ``test_accuracies[t]`` the accuracy on held-out digits (NaN without test data)."""

    S: np.ndarray
    y_S: np.ndarray
    S0: np.ndarray
    losses: np.ndarray
    accuracies: np.ndarray
    test_accuracies: np.ndarray


def distill_dataset(
    X: np.ndarray, y: np.ndarray, *, per_class: int = 1, lam: float = 1e-2, steps: int = 50,
    lr: float = 0.05, seed: int = 0, X_test: np.ndarray | None = None,
    y_test: np.ndarray | None = None, tol: float = 1e-10,
) -> DistillationResult:
    r"""Distil ``(X, y)`` into ``per_class`` synthetic images per class by hypergradient descent.

    Solves the bilevel problem of this module (outer: cross-entropy on the real ``(X, y)`` of the
    logistic regression trained on the synthetic set; inner: ℓ2-regularised multinomial logistic
    regression with strength ``lam``; F: stationarity of the inner objective). The images start
    as uniform noise in [0, 1] and follow Adam (step ``lr``, β = (0.9, 0.999)) on ``∂L/∂S``,
    computed by implicit differentiation; inner solves are warm-started.
    """
    K = int(y.max()) + 1
    rng = np.random.default_rng(seed)
    y_S = np.repeat(np.arange(K), per_class)
    S = jnp.asarray(rng.uniform(0.0, 1.0, (K * per_class, X.shape[1])))
    S0 = np.asarray(S)
    Y_S, Xj, Yj = jnp.eye(K)[y_S], jnp.asarray(X), jnp.eye(K)[y]
    vg = jax.jit(jax.value_and_grad(
        lambda S, W: distillation_loss(S, Y_S, lam, Xj, Yj, W, tol=tol), has_aux=True))

    def accuracy(W: Array, Xa: np.ndarray | None, ya: np.ndarray | None) -> float:
        if Xa is None or ya is None:
            return float("nan")
        return float(np.mean(np.argmax(np.asarray(with_intercept(jnp.asarray(Xa)) @ W), 1) == ya))

    W = jnp.zeros((X.shape[1] + 1, K))
    m, v = jnp.zeros_like(S), jnp.zeros_like(S)
    losses, accs, test_accs = [], [], []
    for t in range(steps + 1):
        (loss, W), g = vg(S, W)
        losses.append(float(loss))
        accs.append(accuracy(W, X, y))
        test_accs.append(accuracy(W, X_test, y_test))
        if t == steps:
            break
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g**2
        S = S - lr * (m / (1 - 0.9 ** (t + 1))) / (jnp.sqrt(v / (1 - 0.999 ** (t + 1))) + 1e-8)
    return DistillationResult(np.asarray(S), y_S, S0, np.array(losses), np.array(accs),
                              np.array(test_accs))
