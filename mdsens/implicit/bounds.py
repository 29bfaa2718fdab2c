r"""A-posteriori error estimates for Jacobians computed at an approximate root.

When the inner problem is solved only approximately, implicit differentiation evaluates
:math:`J(\hat x) = -A(\hat x)^{-1} B(\hat x)` with :math:`A = \partial_1 F`,
:math:`B = \partial_2 F` at :math:`\hat x \ne x^\star`. Theorem 1 of Blondel et al. (2022)
bounds the error: if :math:`\|\hat x - x^\star\| \le \varepsilon`, the smallest singular value
of :math:`A` is at least :math:`\alpha`, :math:`\|B\| \le R`, and :math:`A`, :math:`B` are
:math:`\gamma`- and :math:`\beta`-Lipschitz in :math:`x`, then

.. math::  \|J(\hat x) - \partial x^\star(\theta)\| \le C \varepsilon,
           \qquad C = \frac{\beta}{\alpha} + \frac{\gamma R}{\alpha^2}.

A posteriori, :math:`\varepsilon \approx \|F(\hat x, \theta)\| / \alpha` (exact to first order
for the Newton step), so the estimate is :math:`C \|F(\hat x)\| / \alpha`: it shrinks linearly
with the residual of the inner solve.

All constants are *estimates* at :math:`\hat x`: :math:`\alpha` and :math:`R` from Lanczos on
:math:`A^\top A` and :math:`B^\top B` (exact once ``lanczos_steps`` reaches the dimension;
fewer steps over-estimate :math:`\alpha`), :math:`\gamma` and :math:`\beta` as the norms of the
second derivatives :math:`\partial_1^2 F[e]` and :math:`\partial_1\partial_2 F[e]` along the
estimated error direction :math:`e \propto A^{-1}F(\hat x)`, or given by the caller.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.flatten_util import ravel_pytree

PyTree = Any

__all__ = [
    "JacobianErrorEstimate", "jacobian_error_estimate", "extreme_singular_values", "lanczos_ritz",
]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class JacobianErrorEstimate:
    """Result of :func:`jacobian_error_estimate` (all scalars).

    Attributes:
      estimate: ``C ‖F(x̂)‖ / α``, the estimated spectral-norm error of the Jacobian.
      residual_norm: ``‖F(x̂, θ)‖``.
      sigma_min: α, smallest singular value of ∂₁F(x̂).
      sigma_max: largest singular value of ∂₁F(x̂) (for the condition number).
      norm_B: R, spectral norm of ∂₂F(x̂).
      lipschitz_A, lipschitz_B: γ and β.
      constant: C = β/α + γR/α².
    """

    estimate: jax.Array
    residual_norm: jax.Array
    sigma_min: jax.Array
    sigma_max: jax.Array
    norm_B: jax.Array
    lipschitz_A: jax.Array
    lipschitz_B: jax.Array
    constant: jax.Array


def lanczos_ritz(matvec: Callable[[jax.Array], jax.Array], v0: jax.Array, steps: int):
    """Ritz values of a symmetric operator from ``steps`` Lanczos steps (full reorthogonalisation).

    Returns the eigenvalues of the tridiagonal T (ascending); padded steps after an invariant
    subspace is found are dropped by masking with NaN.
    """
    n = v0.shape[0]
    steps = int(min(steps, n))
    dtype = v0.dtype
    Q = jnp.zeros((steps + 1, n), dtype).at[0].set(v0 / jnp.linalg.norm(v0))
    alphas = jnp.zeros((steps,), dtype)
    betas = jnp.zeros((steps,), dtype)

    def body(j, carry):
        Q, alphas, betas, done = carry
        w = matvec(Q[j])
        alpha = jnp.vdot(Q[j], w)
        mask = (jnp.arange(steps + 1) <= j).astype(dtype)
        w = w - Q.T @ ((Q @ w) * mask)
        w = w - Q.T @ ((Q @ w) * mask)
        beta = jnp.linalg.norm(w)
        scale = jnp.linalg.norm(alpha) + 1.0
        now_done = done | (beta <= 1e-12 * scale)
        Q = Q.at[j + 1].set(jnp.where(now_done, 0.0, w / jnp.where(beta > 0, beta, 1.0)))
        alphas = alphas.at[j].set(jnp.where(done, jnp.nan, alpha))
        betas = betas.at[j].set(jnp.where(now_done, 0.0, beta))
        return Q, alphas, betas, now_done

    _, alphas, betas, _ = lax.fori_loop(0, steps, body, (Q, alphas, betas, jnp.asarray(False)))
    valid = jnp.isfinite(alphas)
    a = jnp.where(valid, alphas, 0.0)
    b = jnp.where(valid[1:], betas[:-1], 0.0)  # betas[j] couples steps j and j + 1
    # Padded steps become decoupled rows with a diagonal above the Gershgorin bound of the
    # valid block, so their eigenvalues sort last and are dropped by ``count``.
    above = 10.0 * (jnp.max(jnp.abs(a)) + 2.0 * jnp.max(jnp.abs(b), initial=0.0)) + 1.0
    T = jnp.diag(jnp.where(valid, a, above)) + jnp.diag(b, 1) + jnp.diag(b, -1)
    ritz = jnp.linalg.eigvalsh(T)
    return ritz, valid.sum()


def extreme_singular_values(
    matvec: Callable[[PyTree], PyTree], x_like: PyTree, *, steps: int = 50, seed: int = 0
) -> tuple[jax.Array, jax.Array]:
    """Estimate the smallest and largest singular values of a linear map on pytrees.

    Lanczos on ``AᵀA`` (``Aᵀ`` by linear transposition) from a random start; exact once
    ``steps`` ≥ dimension, otherwise the smallest value is over-estimated and the largest
    under-estimated (Ritz values lie inside the spectrum). Works for maps between spaces of
    different dimension (``x_like`` is an input example).
    """
    flat, unravel = ravel_pytree(x_like)
    A = lambda v: ravel_pytree(matvec(unravel(v)))[0]  # noqa: E731
    out_example = jax.eval_shape(A, flat)
    transpose = jax.linear_transpose(A, flat)
    AtA = lambda v: transpose(A(v).astype(out_example.dtype))[0]  # noqa: E731
    v0 = jax.random.normal(jax.random.PRNGKey(seed), flat.shape, flat.dtype)
    ritz, count = lanczos_ritz(AtA, v0, steps)
    lam_min = jnp.maximum(ritz[0], 0.0)
    lam_max = ritz[count - 1]
    return jnp.sqrt(lam_min), jnp.sqrt(jnp.maximum(lam_max, 0.0))


def _second_derivative_norm(linear_in_v, v_like, *, steps: int, seed: int) -> jax.Array:
    """Spectral norm of the linear map ``v ↦ linear_in_v(v)`` (power iteration via Lanczos)."""
    return extreme_singular_values(linear_in_v, v_like, steps=steps, seed=seed)[1]


def jacobian_error_estimate(
    F: Callable[..., PyTree],
    x_hat: PyTree,
    args: tuple,
    *,
    lipschitz_A: float | None = None,
    lipschitz_B: float | None = None,
    lanczos_steps: int = 50,
    seed: int = 0,
) -> JacobianErrorEstimate:
    """Estimate ``‖J(x̂) − ∂x*(θ)‖`` for an approximate root ``x̂`` of ``F(·, *args)``.

    Args:
      F: optimality condition ``F(x, *args)``.
      x_hat: approximate root (pytree).
      args: parameters θ (tuple of pytrees); B = ∂₂F is taken w.r.t. all of them jointly.
      lipschitz_A, lipschitz_B: known Lipschitz constants of ∂₁F and ∂₂F in x; estimated
        along the error direction when not given.
      lanczos_steps: Lanczos steps for the singular-value estimates.

    Returns:
      :class:`JacobianErrorEstimate`; ``estimate`` = C‖F(x̂)‖/α with C = β/α + γR/α².
    """
    args = tuple(args)
    Fx = lambda x: F(x, *args)  # noqa: E731
    residual, A = jax.linearize(Fx, x_hat)
    residual_norm = jnp.linalg.norm(ravel_pytree(residual)[0])
    sigma_min, sigma_max = extreme_singular_values(A, x_hat, steps=lanczos_steps, seed=seed)
    B = lambda t: jax.jvp(lambda *a: F(x_hat, *a), args, t)[1]  # noqa: E731
    norm_B = extreme_singular_values(B, args, steps=lanczos_steps, seed=seed + 1)[1]

    if lipschitz_A is None or lipschitz_B is None:
        # Error direction e ∝ A⁻¹ F(x̂) (the Newton step), by a dense-free least-squares solve.
        from .linsolve import gmres

        step, _ = gmres(A, residual, on_failure="ignore", maxiter=10 * lanczos_steps)
        flat_step, unravel = ravel_pytree(step)
        e = unravel(flat_step / jnp.maximum(jnp.linalg.norm(flat_step), jnp.finfo(
            flat_step.dtype).tiny))

        def dA(v):  # ∂₁²F[e, v]
            return jax.jvp(lambda x: jax.jvp(Fx, (x,), (v,))[1], (x_hat,), (e,))[1]

        def dB(t):  # ∂₁∂₂F[e, t]
            return jax.jvp(lambda x: B_at(x, t), (x_hat,), (e,))[1]

        def B_at(x, t):
            return jax.jvp(lambda *a: F(x, *a), args, t)[1]

        if lipschitz_A is None:
            lipschitz_A = _second_derivative_norm(dA, x_hat, steps=lanczos_steps, seed=seed + 2)
        if lipschitz_B is None:
            lipschitz_B = _second_derivative_norm(dB, args, steps=lanczos_steps, seed=seed + 3)

    gamma = jnp.asarray(lipschitz_A, residual_norm.dtype)
    beta = jnp.asarray(lipschitz_B, residual_norm.dtype)
    alpha = sigma_min
    constant = beta / alpha + gamma * norm_B / alpha**2
    return JacobianErrorEstimate(
        estimate=constant * residual_norm / alpha,
        residual_norm=residual_norm,
        sigma_min=sigma_min,
        sigma_max=sigma_max,
        norm_B=norm_B,
        lipschitz_A=gamma,
        lipschitz_B=beta,
        constant=constant,
    )
