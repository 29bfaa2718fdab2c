r"""Multiclass SVM hyperparameter study: three fixed points of one dual problem.

After the multiclass-SVM experiment of Blondel et al. (2022, "Efficient and Modular Implicit
Differentiation", §4): the regularisation ``λ`` of a multiclass linear SVM is tuned through
the gradient of a validation loss, the inner (dual) problem being solved by one of three
algorithms, each differentiated implicitly through its own fixed point::

    outer:  L_val(λ) = (1/2n_val) ‖X_val W*(λ) − Y_val‖²_F,        W* = Xᵀ(Y − B*)/(λn)
    inner:  B*(λ) = argmin_{B: rows in Δ}  f(B, λ) = (1/2n)‖Xᵀ(Y − B)‖² − λ⟨B, 1 − Y⟩ + λγ/2 ‖B‖²

(``X`` (n, p) training features, ``Y`` (n, K) one-hot labels, ``Δ`` the probability simplex of
``R^K``, one per row; ``f`` = :func:`mdsens.bilevel.hyperparameters.svm_dual_objective`, the
dual of the Crammer–Singer SVM with a smoothed hinge, multiplied by ``λn``). The smoothing
``γ > 0`` makes the dual strongly convex and its solution unique; the paper uses the plain
hinge (``γ = 0``), whose dual has a face of solutions when ``n > p``.

The three methods (``method=``), with ``η`` steps ``1/L``, ``L = ‖X‖₂²/n + λγ`` and, per row,
``η_i = 1/L_i``, ``L_i = ‖x_i‖²/n + λγ``:

- ``"mirror_descent"``: ``B ← softmax_rows(log B − η ∇f(B))`` (entropic mirror descent, the KL
  projection onto each simplex); fixed point ``conditions.mirror_descent`` with
  ``projections.kl_projection_simplex`` per row and mapping ``log``;
- ``"projected_gradient"``: ``B ← Π_Δ(B − η ∇f(B))`` with Nesterov momentum (Euclidean simplex
  projection per row); fixed point ``conditions.projected_gradient``;
- ``"block_coordinate_descent"``: one sweep updates the rows in turn,
  ``β_i ← Π_Δ(β_i − η_i ∇_i f(B))`` with the current ``B``; fixed point
  ``conditions.block_proximal_gradient`` (``stacked=True``, the rows are the blocks).

All three fixed points have the same root ``B*`` (the entropic one on ``B > 0``; its entries
that vanish at ``B*`` are handled by a floored logarithm, with no effect on the derivative
there, see :func:`optimality_condition`). ``condition=`` differentiates a method's output
through another method's fixed point (e.g. block coordinate descent's output through the
mirror-descent or projected-gradient condition). Derivative solves are GMRES on the
nonsymmetric ``∂_B F``.

Data: :func:`make_classification`, a synthetic, seeded, numpy-only generator in the style of
``sklearn.datasets.make_classification`` (nothing is downloaded).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mdsens.implicit import conditions, custom_root, linsolve, projections

from ._data import Split
from .hyperparameters import (
    InnerStats,
    _momentum,
    nesterov,
    row_simplex_projection,
    svm_dual_objective,
    svm_weights,
)

__all__ = [
    "METHODS", "SVMData", "fit_svm_dual", "make_classification", "make_svm_data",
    "optimality_condition", "svm_validation_loss",
]

Array = jax.Array
METHODS: tuple[str, ...] = ("mirror_descent", "projected_gradient", "block_coordinate_descent")


# ----------------------------------------------------------------------------- data
def make_classification(
    n_samples: int, n_features: int, n_classes: int, *, n_informative: int = 10,
    class_sep: float = 1.0, seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic classification data (float64 features, integer labels), numpy only.

    Like ``sklearn.datasets.make_classification``: each class is a Gaussian cluster around a
    distinct vertex of the hypercube ``{−class_sep, +class_sep}^k`` in ``k = min(n_informative,
    n_features)`` informative features (unit normal noise mixed by a random ``k × k`` matrix);
    the other ``n_features − k`` features are independent unit normal noise; the feature order
    is shuffled. Classes are balanced (``n_samples // n_classes`` each, the rest spread).

    Returns:
      ``(X, y)``: ``X`` (n_samples, n_features), ``y`` (n_samples,) in ``0 … n_classes − 1``.
    """
    k = min(n_informative, n_features)
    if k < 1 or n_classes > 2**k:
        raise ValueError(f"{n_classes} classes need at least log2({n_classes}) informative "
                         f"features, got {k}")
    rng = np.random.default_rng(seed)
    vertices = rng.choice(2**k, size=n_classes, replace=False) if k <= 30 else \
        rng.integers(0, 2**30, size=n_classes)
    bits = (vertices[:, None] >> np.arange(k)[None, :]) & 1
    centroids = class_sep * (2.0 * bits - 1.0)
    y = rng.permutation(np.arange(n_samples) % n_classes)
    mix = rng.uniform(-1.0, 1.0, size=(k, k))
    informative = centroids[y] + rng.standard_normal((n_samples, k)) @ mix
    X = np.concatenate([informative, rng.standard_normal((n_samples, n_features - k))], axis=1)
    return X[:, rng.permutation(n_features)], y.astype(np.int64)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SVMData:
    """Arrays of one study: ``X`` (n, p), ``Y`` (n, K) one-hot, ``X_val`` (n_val, p), ``Y_val``
    (n_val, K), and ``sigma2 = ‖X‖₂²`` (the squared spectral norm, computed once on the host:
    it sets the steps ``1/L``, ``L = sigma2/n + λγ``). A pytree (``sigma2`` static), so it can
    be passed to a jitted function as an argument."""

    X: Array
    Y: Array
    X_val: Array
    Y_val: Array
    sigma2: float = dataclasses.field(metadata={"static": True})

    @classmethod
    def from_split(cls, split: Split) -> SVMData:
        """One-hot labels and ``sigma2`` from a :class:`~mdsens.bilevel.Split`."""
        eye = np.eye(split.n_classes)
        X = np.asarray(split.X_train, np.float64)
        return cls(jnp.asarray(X), jnp.asarray(eye[split.y_train]),
                   jnp.asarray(np.asarray(split.X_val, np.float64)),
                   jnp.asarray(eye[split.y_val]), float(np.linalg.norm(X, 2) ** 2))


def make_svm_data(n_train: int, n_val: int, n_features: int, n_classes: int = 5, *,
                  seed: int = 0, **kwargs) -> SVMData:
    """:func:`make_classification` of ``n_train + n_val`` samples split into training and
    validation sets (``kwargs`` go to it)."""
    X, y = make_classification(n_train + n_val, n_features, n_classes, seed=seed, **kwargs)
    empty = np.zeros((0, n_features))
    split = Split(X[:n_train], y[:n_train], X[n_train:], y[n_train:], empty,
                  np.zeros(0, np.int64), n_classes)
    return SVMData.from_split(split)


# ----------------------------------------------------------------------------- fixed points
Theta = tuple  # (lam, X, Y, gamma), the argument of svm_dual_objective


def _step(theta: Theta, sigma2: float) -> Array:
    """``η = 1/L``, ``L = sigma2/n + λγ`` (no derivative: the roots do not depend on η)."""
    lam, X, _, gamma = theta
    return 1.0 / (sigma2 / X.shape[0] + lax.stop_gradient(lam) * gamma)


def _row_steps(theta: Theta) -> Array:
    """``η_i = 1/L_i``, ``L_i = ‖x_i‖²/n + λγ``: the block Lipschitz constants, shape (n,)."""
    lam, X, _, gamma = theta
    X = lax.stop_gradient(X)
    return 1.0 / (jnp.sum(X**2, axis=1) / X.shape[0] + lax.stop_gradient(lam) * gamma)


def _row_kl_projection(V: Array, hyperparams: object = None) -> Array:
    """Row-wise KL projection ``softmax(v_i)`` of dual (log) coordinates onto the simplex."""
    del hyperparams
    return jax.vmap(projections.kl_projection_simplex)(V)


def _floored_log(B: Array) -> Array:
    """``log max(B, tiny)``: the mirror map of the entropy, finite where ``B`` underflowed.

    An entry with ``B_ik = 0`` has ``F_ik = 0`` and ``∂F_ik/∂B_jl = 0`` for ``(j, l) ≠ (i, k)``
    whatever the floor, so it gets a zero derivative like the exact map."""
    return jnp.log(jnp.maximum(B, jnp.finfo(B.dtype).tiny))


def _simplex_prox(v: Array, hyperparams: object = None, scaling: object = 1.0) -> Array:
    """Prox of the indicator of the simplex for one block (row): the Euclidean projection."""
    del hyperparams, scaling
    return projections.projection_simplex(v)


def optimality_condition(method: str, sigma2: float) -> Callable[[Array, Theta], Array]:
    """The fixed point ``F(B, θ) = T(B, θ) − B`` of ``method`` (one of :data:`METHODS`), as
    built from :mod:`mdsens.implicit.conditions`; ``θ = (λ, X, Y, γ)``.

    Steps: ``η = 1/(sigma2/n + λγ)`` for mirror descent and projected gradient, the row steps
    ``η_i = 1/(‖x_i‖²/n + λγ)`` for block coordinate descent (steps carry no derivative)."""
    f = svm_dual_objective
    if method == "mirror_descent":
        def F(B, theta):
            return conditions.mirror_descent(f, _row_kl_projection, _floored_log,
                                             step=_step(theta, sigma2))(B, theta)
    elif method == "projected_gradient":
        def F(B, theta):
            return conditions.projected_gradient(f, row_simplex_projection,
                                                 step=_step(theta, sigma2))(B, theta)
    elif method == "block_coordinate_descent":
        def F(B, theta):
            return conditions.block_proximal_gradient(f, _simplex_prox, step=_row_steps(theta),
                                                      stacked=True)(B, theta)
    else:
        raise ValueError(f"unknown method {method!r}; choose from {METHODS}")
    return F


# ----------------------------------------------------------------------------- inner solvers
def _bcd_sweep(B: Array, theta: Theta) -> Array:
    """One cyclic sweep of block coordinate descent over the rows (``V = Xᵀ(Y − B)`` kept up to
    date: ``O(pK)`` per row)."""
    lam, X, Y, gamma = theta
    n = X.shape[0]
    steps = _row_steps(theta)

    def row(i, carry):
        B, V = carry
        x_i, b_i = X[i], B[i]
        g = -(x_i @ V) / n - lam * (1.0 - Y[i]) + lam * gamma * b_i
        new = projections.projection_simplex(b_i - steps[i] * g)
        return B.at[i].set(new), V - jnp.outer(x_i, new - b_i)

    return lax.fori_loop(0, n, row, (B, X.T @ (Y - B)))[0]


@functools.cache
def _solver(method: str, condition: str, sigma2: float, maxiter: int, tol: float,
            unroll: bool) -> Callable:
    grad_f = jax.grad(svm_dual_objective)

    def solver(init: Array, theta: Theta):
        lam, _, _, gamma = theta
        step = _step(theta, sigma2)
        if method == "mirror_descent":
            T = lambda B: _row_kl_projection(_floored_log(B) - step * grad_f(B, theta))  # noqa
            momentum = 0.0
        elif method == "projected_gradient":
            T = lambda B: row_simplex_projection(B - step * grad_f(B, theta))  # noqa: E731
            momentum = _momentum(1.0 / step, lax.stop_gradient(lam) * gamma)
        else:
            # rematerialise each sweep in an unrolled backward pass (else O(n) copies of B)
            T = jax.checkpoint(lambda B: _bcd_sweep(B, theta))
            momentum = 0.0
        return nesterov(T, init, momentum, step, maxiter=maxiter, tol=tol, unroll=unroll)

    if unroll:
        return solver
    solve = functools.partial(linsolve.gmres, tol=1e-10, maxiter=20_000)
    return custom_root(optimality_condition(condition, sigma2), solve=solve,
                       has_aux=True)(solver)


def fit_svm_dual(
    X: Array, Y: Array, lam: Array, *, method: str, condition: str | None = None,
    sigma2: float | None = None, gamma: float = 1.0, init: Array | None = None,
    maxiter: int = 20_000, tol: float = 1e-10, unroll: bool = False,
) -> tuple[Array, InnerStats]:
    r"""Solve the smoothed multiclass-SVM dual ``B*(λ)`` with ``method`` (see the module
    docstring), differentiable in ``λ``, ``X``, ``Y`` through the fixed point of ``condition``
    (default: the method's own).

    Args:
      X, Y: training features ``(n, p)`` and one-hot labels ``(n, K)``.
      lam: ``λ > 0``.
      sigma2: ``‖X‖₂²`` (a concrete float; computed from ``X`` when ``None``, which needs a
        concrete ``X``).
      gamma: smoothing ``γ > 0`` of the hinge.
      init: start ``(n, K)`` with rows in the simplex, positive for mirror descent (default:
        uniform rows ``1/K``); no derivative.
      maxiter, tol: iteration (sweep) cap and tolerance on ``‖T(B) − B‖ / η``.
      unroll: exactly ``maxiter`` iterations in a ``fori_loop`` without ``custom_root``, so that
        ``jax.grad`` differentiates through the iterations (for comparisons).

    Returns:
      ``(B, InnerStats)``; the stats carry no derivative.
    """
    if method not in METHODS or (condition is not None and condition not in METHODS):
        raise ValueError(f"unknown method/condition {method!r}/{condition!r}; "
                         f"choose from {METHODS}")
    if sigma2 is None:
        sigma2 = float(np.linalg.norm(np.asarray(X), 2) ** 2)
    if init is None:
        init = jnp.full(Y.shape, 1.0 / Y.shape[1], jnp.result_type(X, float))
    solver = _solver(method, condition or method, float(sigma2), int(maxiter), float(tol),
                     bool(unroll))
    return solver(init, (lam, X, Y, gamma))


def svm_validation_loss(
    log_lam: Array, data: SVMData, *, method: str, condition: str | None = None,
    gamma: float = 1.0, init: Array | None = None, **solver_options,
) -> tuple[Array, tuple[Array, InnerStats]]:
    """Outer objective ``L_val(λ) = (1/2n_val) ‖X_val W*(λ) − Y_val‖²_F``, ``λ = exp(log_lam)``,
    ``W* = Xᵀ(Y − B*)/(λn)``. Returns ``(L_val, (B*, InnerStats))``: ``jax.grad`` of the first
    output (or ``jax.value_and_grad(..., has_aux=True)``) is the hypergradient
    ``dL_val/d log λ`` (``solver_options`` go to :func:`fit_svm_dual`). The hypergradient is
    that of the exact ``B*``: check ``InnerStats.residual`` against ``tol`` (entropic mirror
    descent approaches the zeros of a sparse ``B*`` only geometrically and may stop at
    ``maxiter`` short of the tolerance)."""
    lam = jnp.exp(log_lam)
    B, stats = fit_svm_dual(data.X, data.Y, lam, method=method, condition=condition,
                            sigma2=data.sigma2, gamma=gamma, init=init, **solver_options)
    W = svm_weights(B, lam, data.X, data.Y)
    return 0.5 * jnp.sum((data.X_val @ W - data.Y_val) ** 2) / data.X_val.shape[0], (B, stats)
