r"""Hyperparameter optimisation by implicit differentiation (bilevel problems 1a and 1b).

Both problems have the form

    min_{log λ}  L_val(x*(λ)),      x*(λ) = argmin_x f(x, λ; training data),

and the hypergradient ``d L_val / d log λ`` is obtained by :func:`mdsens.implicit.custom_root`
from an optimality condition ``F(x*, λ) = 0`` of the inner problem, never by differentiating
the inner iterations:

(a) ℓ2-regularised multinomial logistic regression, ``F = ∇_W f`` (``conditions.stationarity``),
    inner solver: Nesterov-accelerated gradient descent in a ``lax.while_loop``;
(b) a multiclass linear SVM (Crammer–Singer, with a smoothed hinge) solved in the dual by
    accelerated projected gradient on a product of simplices, ``F`` the projected-gradient
    fixed point (``conditions.projected_gradient``).

The inner solvers here (:func:`fit_logistic_regression`, :func:`fit_multiclass_svm`) are also
used by :mod:`mdsens.bilevel.distillation` and :mod:`mdsens.bilevel.dictionary`. Every fitted
model is linear in its features; append a constant column (:func:`with_intercept`) for a bias.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mdsens.implicit import conditions, custom_root, linsolve, projections

__all__ = [
    "InnerStats", "TuningResult", "fit_logistic_regression", "fit_multiclass_svm",
    "logistic_objective", "logistic_validation_loss", "nesterov", "row_simplex_projection",
    "smoothed_hinge", "softmax_cross_entropy", "svm_dual_objective", "svm_validation_loss",
    "svm_weights", "tune_logistic_regression", "tune_multiclass_svm", "with_intercept",
]

Array = jax.Array


class InnerStats(NamedTuple):
    """What an inner solver reports: iterations run and the final residual (the norm of the
    (projected) gradient mapping ``(T(y) − y) / η`` at the last extrapolated point)."""

    iterations: Array
    residual: Array


# ----------------------------------------------------------------------------- inner loop
def nesterov(
    T: Callable[[Array], Array], init: Array, momentum: Array, step: Array, *, maxiter: int,
    tol: float, unroll: bool = False,
) -> tuple[Array, InnerStats]:
    """Accelerated fixed-point iteration ``y = x_k + m (x_k − x_{k−1})``, ``x_{k+1} = T(y)``.

    With ``T`` a (projected / proximal) gradient step of size ``η = step`` on a μ-strongly
    convex, L-smooth problem and ``m = (√κ − 1)/(√κ + 1)``, ``κ = L/μ``, this is Nesterov's
    method for strongly convex functions (linear rate ``1 − 1/√κ``).

    ``unroll=False``: a ``lax.while_loop`` that stops when ``‖T(y) − y‖ / η ≤ tol`` or after
    ``maxiter`` iterations (not reverse-differentiable: use it under ``custom_root``).
    ``unroll=True``: exactly ``maxiter`` iterations in a ``lax.fori_loop`` (``tol`` ignored),
    which ``jax.grad`` differentiates by unrolling.
    """

    def body(state):
        x, x_prev, k, _ = state
        y = x + momentum * (x - x_prev)
        x_new = T(y)
        res = jnp.linalg.norm(x_new - y) / step
        return x_new, x, k + 1, res

    state = (init, init, jnp.asarray(0), jnp.asarray(jnp.inf, init.dtype))
    if unroll:
        state = lax.fori_loop(0, maxiter, lambda _, s: body(s), state)
    else:
        state = lax.while_loop(lambda s: (s[3] > tol) & (s[2] < maxiter), body, state)
    return state[0], InnerStats(state[2], state[3])


def _momentum(L: Array, mu: Array) -> Array:
    root = jnp.sqrt(L / mu)
    return (root - 1.0) / (root + 1.0)


def with_intercept(X: Array) -> Array:
    """Append a constant feature 1 (the bias; it is regularised like the other weights)."""
    return jnp.concatenate([X, jnp.ones((X.shape[0], 1), X.dtype)], axis=1)


# ----------------------------------------------------------------------- (a) logistic regression
def softmax_cross_entropy(logits: Array, Y: Array) -> Array:
    """Mean cross-entropy ``−(1/n) Σ_i Σ_k Y_ik log softmax(logits_i)_k`` (``Y`` one-hot)."""
    return -jnp.mean(jnp.sum(Y * jax.nn.log_softmax(logits, axis=1), axis=1))


def logistic_objective(W: Array, lam: Array, X: Array, Y: Array) -> Array:
    """``f(W, λ) = (1/n) Σ_i CE(softmax(W^T x_i), y_i) + λ/2 ‖W‖_F²``, ``W`` of shape (d, K)."""
    return softmax_cross_entropy(X @ W, Y) + 0.5 * lam * jnp.sum(W**2)


@functools.cache
def _logistic_solver(maxiter: int, tol: float, unroll: bool) -> Callable:
    def solver(init: Array, lam: Array, X: Array, Y: Array):
        grad_f = jax.grad(logistic_objective)
        lam_c, X_c = lax.stop_gradient(lam), lax.stop_gradient(X)
        # ∇²f ⪯ (1/2n) XᵀX ⊗ I + λI: the softmax Hessian diag(p) − ppᵀ has eigenvalues ≤ 1/2
        L = 0.5 * jnp.linalg.norm(X_c, 2) ** 2 / X.shape[0] + lam_c
        step, mom = 1.0 / L, _momentum(L, lam_c)
        return nesterov(lambda W: W - step * grad_f(W, lam, X, Y), init, mom, step,
                        maxiter=maxiter, tol=tol, unroll=unroll)

    if unroll:
        return solver
    F = conditions.stationarity(logistic_objective)
    return custom_root(F, solve="cg", has_aux=True, symmetric=True)(solver)


def fit_logistic_regression(
    X: Array, Y: Array, lam: Array, init: Array | None = None, *, maxiter: int = 20_000,
    tol: float = 1e-10, unroll: bool = False,
) -> tuple[Array, InnerStats]:
    r"""Multinomial logistic regression ``W*(λ, X, Y) = argmin_W f(W, λ, X, Y)``.

    ``f(W) = (1/n) Σ_i CE(softmax(Wᵀx_i), y_i) + λ/2 ‖W‖²`` (see :func:`logistic_objective`) is
    λ-strongly convex. Solver: Nesterov's accelerated gradient with step ``1/L``,
    ``L = ‖X‖₂²/(2n) + λ``, until ``‖∇f‖ ≤ tol``. ``W*`` is differentiable with respect to
    ``λ``, ``X`` and ``Y`` by the implicit function theorem on the stationarity condition
    ``F(W, λ, X, Y) = ∇_W f = 0``; the derivative solve is CG on the Hessian of ``f``.

    Args:
      X: features ``(n, d)`` (append a constant column for a bias, :func:`with_intercept`).
      Y: one-hot labels ``(n, K)`` (or any rows of class probabilities).
      lam: regularisation strength ``λ > 0``.
      init: starting point ``(d, K)`` (zeros by default); gets no derivative.
      maxiter, tol: iteration cap and tolerance on ``‖∇f‖``.
      unroll: run exactly ``maxiter`` iterations in a ``fori_loop`` without ``custom_root``, so
        that ``jax.grad`` differentiates by unrolling (for comparisons only).

    Returns:
      ``(W, InnerStats)``; the stats carry no derivative.
    """
    if init is None:
        init = jnp.zeros((X.shape[1], Y.shape[1]), jnp.result_type(X, float))
    return _logistic_solver(int(maxiter), float(tol), bool(unroll))(init, lam, X, Y)


def logistic_validation_loss(
    log_lam: Array, X: Array, Y: Array, X_val: Array, Y_val: Array, init: Array | None = None,
    **solver_options,
) -> tuple[Array, Array]:
    """Outer objective of (a): ``L_val(λ) = CE(X_val W*(λ), Y_val)``, ``λ = exp(log_lam)``.

    Returns ``(L_val, W*)``; use ``jax.value_and_grad(..., has_aux=True)`` for the hypergradient.
    """
    W, _ = fit_logistic_regression(X, Y, jnp.exp(log_lam), init, **solver_options)
    return softmax_cross_entropy(X_val @ W, Y_val), W


@dataclass
class TuningResult:
    """History of an outer gradient descent on ``log λ``: ``log_lams[t]``, ``losses[t]``
    (validation objective at ``log_lams[t]``), ``hypergradients[t]`` (its derivative in
    ``log λ``), ``accuracies[t]`` (validation accuracy), and the last inner solution ``x``."""

    log_lams: np.ndarray
    losses: np.ndarray
    hypergradients: np.ndarray
    accuracies: np.ndarray
    x: np.ndarray


def _descend(value_and_grad: Callable, accuracy: Callable, log_lam0: float, x0: Array,
             steps: int, lr: float) -> TuningResult:
    """Gradient descent ``log λ ← log λ − lr · g`` with warm-started inner solves;
    ``value_and_grad(log_lam, x) -> ((loss, x), g)``, ``accuracy(x, log_lam) -> float``."""
    log_lam, x = jnp.asarray(float(log_lam0)), x0
    hist: dict[str, list[float]] = {"t": [], "l": [], "g": [], "a": []}
    for it in range(steps + 1):
        (loss, x), g = value_and_grad(log_lam, x)
        for key, v in zip("tlga", (log_lam, loss, g, accuracy(x, log_lam))):
            hist[key].append(float(v))
        if it < steps:
            log_lam = log_lam - lr * g
    return TuningResult(*(np.array(hist[k]) for k in "tlga"), np.asarray(x))


def tune_logistic_regression(
    X_train: np.ndarray, y_train: np.ndarray, X_val: np.ndarray, y_val: np.ndarray, *,
    log_lam0: float = 0.0, steps: int = 15, lr: float = 1.0, tol: float = 1e-10,
) -> TuningResult:
    r"""Tune the ℓ2 strength of multinomial logistic regression by hypergradient descent.

    Bilevel problem (features get a bias column, labels are one-hot)::

        outer:  min_{log λ}  L_val(λ) = (1/n_val) Σ_j CE(softmax(W*(λ)ᵀ x_j^val), y_j^val)
        inner:  W*(λ) = argmin_W (1/n) Σ_i CE(softmax(Wᵀx_i), y_i) + λ/2 ‖W‖²
        F:      F(W, λ) = ∇_W f(W, λ) = 0          (conditions.stationarity; CG solve)

    ``dL_val/d log λ = λ ∂L_val/∂λ`` comes from one CG solve with the inner Hessian. Outer
    update: ``log λ ← log λ − lr · dL_val/d log λ``, inner solves warm-started.
    """
    Xt, Xv = with_intercept(jnp.asarray(X_train)), with_intercept(jnp.asarray(X_val))
    K = int(max(y_train.max(), y_val.max())) + 1
    Yt, Yv = jnp.eye(K)[y_train], jnp.eye(K)[y_val]
    vg = jax.jit(jax.value_and_grad(
        lambda t, W: logistic_validation_loss(t, Xt, Yt, Xv, Yv, W, tol=tol), has_aux=True))
    acc = jax.jit(lambda W, t: jnp.mean(1.0 * (jnp.argmax(Xv @ W, axis=1) == y_val)))
    return _descend(vg, acc, log_lam0, jnp.zeros((Xt.shape[1], K)), steps, lr)


# ----------------------------------------------------------------------------- (b) linear SVM
def row_simplex_projection(B: Array, hyperparams: object = None) -> Array:
    """Project every row of ``B`` onto the probability simplex ``{β ≥ 0, Σ_k β_k = 1}``."""
    del hyperparams
    return jax.vmap(projections.projection_simplex)(B)


def svm_dual_objective(B: Array, theta: tuple[Array, Array, Array, float]) -> Array:
    r"""λ × the dual of the smoothed Crammer–Singer SVM, over ``B`` with rows in the simplex.

    ``theta = (λ, X, Y, γ)``. Primal: ``min_W λ/2 ‖W‖² + (1/n) Σ_i ℓ_γ(z_i)``,
    ``z_i = 1 − y_i + Wᵀx_i − (w_{y_i}ᵀx_i) 1``, with the smoothed multiclass hinge
    ``ℓ_γ(z) = max_{β∈Δ} βᵀz − γ/2 ‖β‖²`` (``γ → 0``: the hinge ``max_k z_k``). Dual
    (multiplied by ``λ n``, which does not move the minimiser)::

        f(B) = (1/2n) ‖Xᵀ(Y − B)‖² − λ ⟨B, 1 − Y⟩ + λγ/2 ‖B‖²,   W = Xᵀ(Y − B)/(λ n).
    """
    lam, X, Y, gamma = theta
    V = X.T @ (Y - B)
    return (0.5 * jnp.sum(V**2) / X.shape[0] - lam * jnp.sum(B * (1.0 - Y))
            + 0.5 * lam * gamma * jnp.sum(B**2))


def svm_weights(B: Array, lam: Array, X: Array, Y: Array) -> Array:
    """Primal weights ``W = Xᵀ(Y − B)/(λ n)`` of the dual solution ``B``."""
    return X.T @ (Y - B) / (lam * X.shape[0])


def smoothed_hinge(scores: Array, Y: Array, gamma: float) -> Array:
    """Mean smoothed multiclass hinge ``(1/n) Σ_i (ℓ_γ(z_i) + γ/2)`` of the scores ``(n, K)``.

    The shift ``γ/2`` makes it non-negative (``ℓ_γ ≥ −γ/2``, reached by a confident correct
    score); it changes no derivative."""
    Z = 1.0 - Y + scores - jnp.sum(scores * Y, axis=1, keepdims=True)
    beta = row_simplex_projection(Z / gamma)
    loss = jnp.sum(beta * Z, axis=1) - 0.5 * gamma * jnp.sum(beta**2, axis=1)
    return jnp.mean(loss) + 0.5 * gamma


@functools.cache
def _svm_solver(step_F: float, maxiter: int, tol: float, unroll: bool) -> Callable:
    F = conditions.projected_gradient(svm_dual_objective, row_simplex_projection, step=step_F)
    grad_f = jax.grad(svm_dual_objective)

    def solver(init: Array, theta: tuple, theta_proj: object = None):
        lam, X, _, gamma = theta
        lam_c, X_c = lax.stop_gradient(lam), lax.stop_gradient(X)
        L = jnp.linalg.norm(X_c, 2) ** 2 / X.shape[0] + lam_c * gamma
        step, mom = 1.0 / L, _momentum(L, lam_c * gamma)
        T = lambda B: row_simplex_projection(B - step * grad_f(B, theta))  # noqa: E731
        return nesterov(T, init, mom, step, maxiter=maxiter, tol=tol, unroll=unroll)

    if unroll:
        return solver
    solve = functools.partial(linsolve.gmres, tol=1e-10, maxiter=20_000)
    return custom_root(F, solve=solve, has_aux=True)(solver)


def fit_multiclass_svm(
    X: Array, Y: Array, lam: Array, init: Array | None = None, *, gamma: float = 1.0,
    step: float | None = None, maxiter: int = 50_000, tol: float = 1e-10, unroll: bool = False,
) -> tuple[Array, Array, InnerStats]:
    r"""Smoothed multiclass linear SVM, solved in the dual by accelerated projected gradient.

    ``B*(λ) = argmin_{B: rows in Δ} f(B, (λ, X, Y, γ))`` with ``f`` = :func:`svm_dual_objective`
    (strongly convex, ``μ = λγ``). The solver iterates ``B ← Π_Δ(Y_k − η ∇f(Y_k))`` with
    Nesterov extrapolation ``Y_k`` and ``η = 1/L``, ``L = ‖X‖₂²/n + λγ``, until the projected
    gradient mapping is below ``tol``. ``B*`` is differentiated through the projected-gradient
    fixed point

        F(B, θ) = Π_Δ(B − η_F ∇_B f(B, θ)) − B = 0       (conditions.projected_gradient)

    with ``η_F = step`` (default ``n/‖X‖₂²``, needs a concrete ``X``); ``∂_B F`` is
    nonsymmetric, the derivative solve is GMRES.

    Returns:
      ``(B, W, InnerStats)`` with the primal weights ``W = Xᵀ(Y − B)/(λn)`` (:func:`svm_weights`).
    """
    if step is None:
        step = float(X.shape[0] / np.linalg.norm(np.asarray(X), 2) ** 2)
    if init is None:
        init = jnp.asarray(Y, jnp.result_type(X, float))  # β_i = y_i: a vertex, feasible
    B, stats = _svm_solver(float(step), int(maxiter), float(tol), bool(unroll))(
        init, (lam, X, Y, gamma))
    return B, svm_weights(B, lam, X, Y), stats


def svm_validation_loss(
    log_lam: Array, X: Array, Y: Array, X_val: Array, Y_val: Array, init: Array | None = None,
    *, gamma: float = 1.0, **solver_options,
) -> tuple[Array, Array]:
    """Outer objective of (b): the validation smoothed hinge ``(1/n_val) Σ_j ℓ_γ(z_j^val)`` of
    ``W*(λ)``, ``λ = exp(log_lam)``. Returns ``(L_val, B*)``."""
    lam = jnp.exp(log_lam)
    B, W, _ = fit_multiclass_svm(X, Y, lam, init, gamma=gamma, **solver_options)
    return smoothed_hinge(X_val @ W, Y_val, gamma), B


def tune_multiclass_svm(
    X_train: np.ndarray, y_train: np.ndarray, X_val: np.ndarray, y_val: np.ndarray, *,
    log_lam0: float = 0.0, steps: int = 15, lr: float = 1.0, gamma: float = 1.0,
    tol: float = 1e-10,
) -> TuningResult:
    r"""Tune the regularisation of a smoothed multiclass linear SVM by hypergradient descent.

    Bilevel problem (features get a bias column, ``Y`` one-hot, ``Δ`` the simplex)::

        outer:  min_{log λ}  L_val(λ) = (1/n_val) Σ_j ℓ_γ(z_j^val(W*(λ)))
        inner:  B*(λ) = argmin_{B: rows in Δ} (1/2n)‖Xᵀ(Y − B)‖² − λ⟨B, 1 − Y⟩ + λγ/2 ‖B‖²,
                W*(λ) = Xᵀ(Y − B*)/(λ n)        (the dual of the smoothed Crammer–Singer SVM)
        F:      F(B, λ) = Π_Δ(B − η ∇_B f(B, λ)) − B = 0   (conditions.projected_gradient; GMRES)

    ``ℓ_γ`` is the smoothed multiclass hinge of :func:`svm_dual_objective`. The result's ``x``
    is the last dual solution ``B``.
    """
    Xt, Xv = with_intercept(jnp.asarray(X_train)), with_intercept(jnp.asarray(X_val))
    K = int(max(y_train.max(), y_val.max())) + 1
    Yt, Yv = jnp.eye(K)[y_train], jnp.eye(K)[y_val]
    step = float(Xt.shape[0] / np.linalg.norm(np.asarray(Xt), 2) ** 2)
    vg = jax.jit(jax.value_and_grad(
        lambda t, B: svm_validation_loss(t, Xt, Yt, Xv, Yv, B, gamma=gamma, step=step, tol=tol),
        has_aux=True))
    acc = jax.jit(lambda B, t: jnp.mean(
        1.0 * (jnp.argmax(Xv @ svm_weights(B, jnp.exp(t), Xt, Yt), axis=1) == y_val)))
    return _descend(vg, acc, log_lam0, Yt, steps, lr)
