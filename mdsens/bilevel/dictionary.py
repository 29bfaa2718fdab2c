r"""Task-driven dictionary learning by implicit differentiation (bilevel problem 3).

A dictionary ``D ∈ R^{d×m}`` (atoms in columns, ``‖d_j‖ ≤ 1``) encodes each image ``x_i`` by its
elastic-net sparse code, and a linear classifier ``(w, b)`` reads the codes (Mairal, Bach &
Ponce, "Task-driven dictionary learning", IEEE TPAMI 34(4), 2012)::

    outer:  min_{D, w, b}  L(D, w, b) = (1/n) Σ_i ℓ(y_i, wᵀz_i*(D) + b) + ν/2 ‖w‖²
    inner:  z_i*(D) = argmin_z ½‖x_i − D z‖² + λ (‖z‖₁ + γ/2 ‖z‖²)
    F:      F(z, D) = prox_{ηλ(‖·‖₁ + γ/2‖·‖²)}(z − η Dᵀ(Dz − x_i)) − z = 0
            (conditions.proximal_gradient with prox.prox_elastic_net; dense LU solve per code)

with the logistic loss ``ℓ(y, s) = log(1 + e^s) − y s`` (labels 0/1). ``∂L/∂D`` flows through
the codes by the implicit function theorem; ``w, b`` enter the outer objective directly.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mdsens.implicit import conditions, custom_root, projections, prox

from .hyperparameters import InnerStats, nesterov

__all__ = ["DictionaryResult", "coding_objective", "learn_dictionary", "sparse_codes",
           "task_loss"]

Array = jax.Array


def coding_objective(z: Array, theta: tuple[Array, Array]) -> Array:
    """Smooth part ``½‖x − D z‖²`` of the sparse-coding problem, ``theta = (x, D)``."""
    x, D = theta
    return 0.5 * jnp.sum((x - D @ z) ** 2)


@functools.cache
def _coding_solver(step_F: float, maxiter: int, tol: float, unroll: bool) -> Callable:
    F = conditions.proximal_gradient(coding_objective, prox.prox_elastic_net, step=step_F)
    grad_f = jax.grad(coding_objective)

    def solver(init: Array, theta: tuple[Array, Array], theta_g: tuple[Array, Array]):
        lam, gamma = theta_g
        D_c = lax.stop_gradient(theta[1])
        L = jnp.linalg.norm(D_c, 2) ** 2
        mu = lax.stop_gradient(lam * gamma)
        step, mom = 1.0 / (L + mu), nesterov_momentum(L + mu, mu)
        T = lambda z: prox.prox_elastic_net(z - step * grad_f(z, theta), theta_g, step)  # noqa: E731
        return nesterov(T, init, mom, step, maxiter=maxiter, tol=tol, unroll=unroll)

    if unroll:
        return solver
    return custom_root(F, solve="lu", has_aux=True)(solver)


def nesterov_momentum(L: Array, mu: Array) -> Array:
    """``(√κ − 1)/(√κ + 1)``, ``κ = L/μ``."""
    root = jnp.sqrt(L / mu)
    return (root - 1.0) / (root + 1.0)


def sparse_codes(
    X: Array, D: Array, lam: float = 0.1, gamma: float = 1.0, init: Array | None = None, *,
    step: float = 0.1, maxiter: int = 10_000, tol: float = 1e-10, unroll: bool = False,
) -> tuple[Array, InnerStats]:
    r"""Elastic-net codes ``Z[i] = argmin_z ½‖X[i] − Dz‖² + λ(‖z‖₁ + γ/2‖z‖²)`` of all rows of X.

    Accelerated proximal gradient (FISTA with the strongly convex momentum, ``μ = λγ``) per
    sample, vectorised with ``vmap``, until the gradient mapping is below ``tol``. Each code is
    differentiable in ``X`` and ``D`` (and ``λ, γ``) through the proximal-gradient fixed point
    ``F(z) = prox_elastic_net(z − η_F ∇f(z), (λ, γ), η_F) − z`` with ``η_F = step``; the
    derivative system (``m × m`` per sample, nonsymmetric) is solved by dense LU.

    Args:
      X: ``(n, d)`` signals; ``D``: ``(d, m)`` dictionary.
      lam, gamma: elastic-net weights ``λ > 0``, ``γ > 0``.
      init: ``(n, m)`` warm start (zeros by default).
      step: ``η_F`` of the optimality condition (any positive value; it only changes the
        conditioning of ``∂_z F``).
      unroll: exactly ``maxiter`` iterations in a ``fori_loop``, no ``custom_root``.

    Returns:
      ``(Z, InnerStats)`` with ``Z`` of shape ``(n, m)`` and per-sample stats.
    """
    if init is None:
        init = jnp.zeros((X.shape[0], D.shape[1]), jnp.result_type(X, D, float))
    solver = _coding_solver(float(step), int(maxiter), float(tol), bool(unroll))
    return jax.vmap(lambda z0, x: solver(z0, (x, D), (lam, gamma)))(init, X)


def task_loss(
    params: tuple[Array, Array, Array], X: Array, y: Array, *, lam: float = 0.1,
    gamma: float = 1.0, nu: float = 1e-3, init: Array | None = None, **coding_options,
) -> tuple[Array, Array]:
    """Outer objective ``L(D, w, b) = mean logistic loss of (w·z*(D) + b) + ν/2 ‖w‖²``.

    ``params = (D, w, b)``, ``y`` in {0, 1}. Returns ``(L, Z*)``."""
    D, w, b = params
    Z, _ = sparse_codes(X, D, lam, gamma, init, **coding_options)
    s = Z @ w + b
    return jnp.mean(jnp.logaddexp(0.0, s) - y * s) + 0.5 * nu * jnp.sum(w**2), Z


@dataclass
class DictionaryResult:
    """``D, w, b``: learned dictionary and classifier; ``D0`` the initial dictionary;
    ``losses[t]`` the outer (training) objective and ``val_accuracies[t]`` the validation
    accuracy after ``t`` outer steps (NaN without validation data)."""

    D: np.ndarray
    w: np.ndarray
    b: float
    D0: np.ndarray
    losses: np.ndarray
    val_accuracies: np.ndarray


def learn_dictionary(
    X: np.ndarray, y: np.ndarray, *, n_atoms: int = 16, lam: float = 0.1, gamma: float = 1.0,
    nu: float = 1e-3, steps: int = 30, lr: float = 0.05, lr_dictionary: float | None = None,
    seed: int = 0, X_val: np.ndarray | None = None, y_val: np.ndarray | None = None,
    tol: float = 1e-10,
) -> DictionaryResult:
    r"""Task-driven dictionary learning for a binary task (labels 0/1), see the module docstring.

    Bilevel problem: outer ``min_{D,w,b} (1/n) Σ ℓ(y_i, wᵀz_i* + b) + ν/2‖w‖²`` subject to
    ``‖d_j‖ ≤ 1``; inner elastic-net coding ``z_i* = argmin ½‖x_i − Dz‖² + λ(‖z‖₁ + γ/2‖z‖²)``;
    optimality condition the proximal-gradient fixed point (:func:`sparse_codes`). ``D`` starts
    from ``n_atoms`` random training images scaled to unit norm, ``w = 0``, ``b = 0``. Outer
    optimiser: Adam (step ``lr`` for ``w, b`` and ``lr_dictionary`` for ``D``, default ``lr``;
    ``lr_dictionary=0`` trains the classifier on a fixed dictionary), followed by the projection
    of every atom onto the unit ball. Codes are warm-started between outer steps.
    """
    rng = np.random.default_rng(seed)
    D0 = X[rng.choice(len(X), n_atoms, replace=False)].T
    D0 = D0 / np.linalg.norm(D0, axis=0, keepdims=True)
    params = (jnp.asarray(D0), jnp.zeros(n_atoms), jnp.asarray(0.0))
    lrs = (lr if lr_dictionary is None else lr_dictionary, lr, lr)
    Xj, yj = jnp.asarray(X), jnp.asarray(y, float)
    vg = jax.jit(jax.value_and_grad(
        lambda p, Z: task_loss(p, Xj, yj, lam=lam, gamma=gamma, nu=nu, init=Z, tol=tol),
        has_aux=True))
    predict = None
    if X_val is not None and y_val is not None:
        Xv = jnp.asarray(X_val)
        predict = jax.jit(lambda p: sparse_codes(Xv, p[0], lam, gamma, tol=tol)[0] @ p[1] + p[2])

    m = jax.tree.map(jnp.zeros_like, params)
    v = jax.tree.map(jnp.zeros_like, params)
    Z = jnp.zeros((len(X), n_atoms))
    losses, val_accs = [], []
    for t in range(steps + 1):
        (loss, Z), g = vg(params, Z)
        losses.append(float(loss))
        val_accs.append(float("nan") if predict is None
                        else float(np.mean((np.asarray(predict(params)) > 0) == y_val)))
        if t == steps:
            break
        m = jax.tree.map(lambda a, b: 0.9 * a + 0.1 * b, m, g)
        v = jax.tree.map(lambda a, b: 0.999 * a + 0.001 * b**2, v, g)
        params = tuple(
            p - r * (mi / (1 - 0.9 ** (t + 1))) / (jnp.sqrt(vi / (1 - 0.999 ** (t + 1))) + 1e-8)
            for p, r, mi, vi in zip(params, lrs, m, v))
        params = (jax.vmap(projections.projection_l2_ball, in_axes=(1, None), out_axes=1)(
            params[0], 1.0), params[1], params[2])
    D, w, b = params
    return DictionaryResult(np.asarray(D), np.asarray(w), float(b), D0, np.array(losses),
                            np.array(val_accs))
