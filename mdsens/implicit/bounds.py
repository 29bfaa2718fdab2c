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

**The derivative solve.** The Jacobian is itself computed by linear solves that stop at a
residual. In forward mode column :math:`j` (parameter direction :math:`t_j`) is
:math:`\hat u_j` with residual :math:`r_j = A\hat u_j + B t_j`; since
:math:`\hat u_j - J(\hat x) t_j = A^{-1} r_j`,

.. math::  \|\hat J - J(\hat x)\| = \|A^{-1}[r_1 \dots r_p]\| \le \|[r_1 \dots r_p]\| / \alpha,

and with the triangle inequality the error of what is actually returned is bounded by

.. math::  \|\hat J - \partial x^\star(\theta)\|
           \le \underbrace{\|[r_1 \dots r_p]\|/\alpha}_{\text{solve term}}
           + \underbrace{C \|F(\hat x)\|/\alpha}_{\text{root term}}.

In reverse mode (adjoint solves :math:`A^\top \lambda_i = \bar x_i` with residuals
:math:`s_i`, rows :math:`-B^\top \lambda_i`) the solve term is
:math:`R\,\|[s_1 \dots s_m]\|/\alpha`. The residual matrix comes from one of:

- ``derivative``: the computed derivative as a map :math:`\dot\theta \mapsto \dot x`; it is
  evaluated on the :math:`p` unit directions of θ and the residual matrix is formed exactly
  (spectral norm);
- ``solve``: a linear solver; the forward-mode columns are solved with it here and measured
  as for ``derivative``;
- ``solve_info``: the :class:`~mdsens.implicit.SolveInfo` of the solves (batched over
  columns); :math:`\|[r_j]\|_2 \le \|[r_j]\|_F = (\sum_j \|r_j\|^2)^{1/2}`;
- ``solve_tol``: a priori from the relative tolerance of forward solves that reported
  success: the solvers accept :math:`\|r_j\| \le 10\max(\mathrm{tol}, 100\epsilon)\|B t_j\|`
  (the factor 10 is their allowance for rounding drift, ``atol`` = 0), so
  :math:`\|[r_j]\|_F \le 10\max(\mathrm{tol}, 100\epsilon)\|B\|_F`.

Without any of them the solve term is NaN ("not estimated") and so is the bound.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.flatten_util import ravel_pytree

from ._finish import RESIDUAL_SLACK
from ._solution import SolveInfo
from .linsolve import get_solver, gmres

PyTree = Any
Solve = str | Callable[..., tuple[PyTree, SolveInfo]]

__all__ = [
    "JacobianErrorEstimate", "jacobian_error_estimate", "extreme_singular_values", "lanczos_ritz",
]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class JacobianErrorEstimate:
    """Result of :func:`jacobian_error_estimate` (all scalars).

    Attributes:
      estimate: ``C ‖F(x̂)‖ / α``, the spectral-norm error of the Jacobian caused by the
        inexact root (the same as ``root_term``; kept under its original name).
      residual_norm: ``‖F(x̂, θ)‖``.
      sigma_min: α, smallest singular value of ∂₁F(x̂).
      sigma_max: largest singular value of ∂₁F(x̂) (for the condition number).
      norm_B: R, spectral norm of ∂₂F(x̂).
      lipschitz_A, lipschitz_B: γ and β.
      constant: C = β/α + γR/α².
      root_term: ``C ‖F(x̂)‖ / α``, the error of the exact-solve Jacobian at x̂.
      solve_residual: norm of the derivative solves' residual matrix (spectral norm when
        measured, Frobenius norm from a ``SolveInfo`` or a tolerance); NaN when not given.
      solve_term: ``solve_residual / α`` (× R for adjoint solves), the error added by the
        inexact derivative solves; NaN when no solve information was given.
      bound: ``root_term + solve_term``, the estimated error of the Jacobian as computed.
    """

    estimate: jax.Array
    residual_norm: jax.Array
    sigma_min: jax.Array
    sigma_max: jax.Array
    norm_B: jax.Array
    lipschitz_A: jax.Array
    lipschitz_B: jax.Array
    constant: jax.Array
    root_term: jax.Array
    solve_residual: jax.Array
    solve_term: jax.Array
    bound: jax.Array


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
    derivative: Callable[[tuple], PyTree] | None = None,
    solve: Solve | None = None,
    solve_info: SolveInfo | None = None,
    solve_tol: float | None = None,
    adjoint: bool = False,
    lipschitz_A: float | None = None,
    lipschitz_B: float | None = None,
    lanczos_steps: int = 50,
    seed: int = 0,
) -> JacobianErrorEstimate:
    """Estimate ``‖Ĵ − ∂x*(θ)‖`` for a Jacobian Ĵ computed at an approximate root ``x̂``.

    Two errors add up: the root term ``C‖F(x̂)‖/α`` (the exact-solve Jacobian at x̂ is not
    the one at x*) and the solve term ``‖[r_j]‖/α`` (the derivative solves stop at residuals
    ``r_j``). See the module docstring for the derivation.

    Args:
      F: optimality condition ``F(x, *args)``.
      x_hat: approximate root (pytree).
      args: parameters θ (tuple of pytrees of floats); B = ∂₂F is taken w.r.t. all of them
        jointly, and the Jacobian has one column per scalar entry of θ (p in all).
      derivative: the computed derivative as a linear map ``θ̇ ↦ ẋ`` (a tuple shaped like
        ``args`` to a pytree shaped like ``x_hat``), e.g.
        ``lambda t: jax.jvp(lambda *a: solver(init, *a), args, t)[1]``. It is evaluated
        (``vmap``) on the p unit directions and its residual matrix ``A Ĵ + B`` is measured.
      solve: a linear solver (name or ``(matvec, b, on_failure=...) -> (x, SolveInfo)``,
        e.g. ``functools.partial(linsolve.cg, tol=1e-6)``); the p forward-mode solves
        ``A u_j = −B e_j`` are run with it and measured as for ``derivative``.
      solve_info: the ``SolveInfo`` of the derivative solves (fields batched over the
        columns, or rows with ``adjoint``); their ``residual_norm`` values are used.
      solve_tol: relative tolerance of forward-mode solves that reported success (a priori,
        no solve is run): ``‖r_j‖ ≤ 10 max(tol, 100 ε) ‖B e_j‖``.
      adjoint: ``solve_info`` comes from reverse-mode solves ``Aᵀλ = x̄``; the rows
        ``−Bᵀλ`` carry the residual times ``R``.
      lipschitz_A, lipschitz_B: known Lipschitz constants of ∂₁F and ∂₂F in x; estimated
        along the error direction when not given.
      lanczos_steps: Lanczos steps for the singular-value estimates.

    At most one of ``derivative``, ``solve``, ``solve_info``, ``solve_tol`` may be given;
    with none, ``solve_term`` and ``bound`` are NaN (not estimated).

    Returns:
      :class:`JacobianErrorEstimate`; ``estimate`` = ``root_term`` = C‖F(x̂)‖/α with
      C = β/α + γR/α², ``solve_term``, and ``bound`` = root_term + solve_term.
    """
    sources = [name for name, value in (("derivative", derivative), ("solve", solve),
                                        ("solve_info", solve_info), ("solve_tol", solve_tol))
               if value is not None]
    if len(sources) > 1:
        raise ValueError(f"give at most one source of the solve error, got {sources}")
    if adjoint and solve_info is None:
        raise ValueError("adjoint=True describes the solves of a given solve_info")
    args = tuple(args)
    Fx = lambda x: F(x, *args)  # noqa: E731
    residual, A = jax.linearize(Fx, x_hat)
    residual_norm = jnp.linalg.norm(ravel_pytree(residual)[0])
    sigma_min, sigma_max = extreme_singular_values(A, x_hat, steps=lanczos_steps, seed=seed)
    B = lambda t: jax.jvp(lambda *a: F(x_hat, *a), args, t)[1]  # noqa: E731
    norm_B = extreme_singular_values(B, args, steps=lanczos_steps, seed=seed + 1)[1]

    if lipschitz_A is None or lipschitz_B is None:
        # Error direction e ∝ A⁻¹ F(x̂) (the Newton step), by a dense-free least-squares solve.
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
    root_term = constant * residual_norm / alpha

    solve_residual = _solve_residual(A, B, args, derivative=derivative, solve=solve,
                                     solve_info=solve_info, solve_tol=solve_tol)
    solve_residual = jnp.asarray(solve_residual, residual_norm.dtype)
    solve_term = solve_residual / alpha * (norm_B if adjoint else 1.0)
    return JacobianErrorEstimate(
        estimate=root_term,
        residual_norm=residual_norm,
        sigma_min=sigma_min,
        sigma_max=sigma_max,
        norm_B=norm_B,
        lipschitz_A=gamma,
        lipschitz_B=beta,
        constant=constant,
        root_term=root_term,
        solve_residual=solve_residual,
        solve_term=solve_term,
        bound=root_term + solve_term,
    )


def _solve_residual(A, B, args, *, derivative, solve, solve_info, solve_tol) -> jax.Array:
    """Norm of the residual matrix ``[r_1 … r_p]`` of the derivative solves (NaN if unknown).

    ``A``, ``B``: the linear maps ∂₁F(x̂) (x-pytree → F-pytree) and ∂₂F(x̂) (args tuple →
    F-pytree). Columns are taken along the unit directions of the flattened θ.
    """
    if solve_info is not None:
        return jnp.linalg.norm(jnp.ravel(solve_info.residual_norm))
    if derivative is None and solve is None and solve_tol is None:
        return jnp.asarray(jnp.nan)
    flat_theta, unravel_theta = ravel_pytree(args)
    basis = jnp.eye(flat_theta.shape[0], dtype=flat_theta.dtype)
    flat = lambda tree: ravel_pytree(tree)[0]  # noqa: E731
    B_cols = jax.vmap(lambda e: flat(B(unravel_theta(e))))(basis)  # (p, n)
    if solve_tol is not None:
        eps = jnp.finfo(B_cols.dtype).eps
        accepted = RESIDUAL_SLACK * jnp.maximum(jnp.asarray(solve_tol, B_cols.dtype), 100 * eps)
        return accepted * jnp.linalg.norm(B_cols)
    if derivative is None:
        solve_fn = get_solver(solve)

        def derivative(t):
            rhs = jax.tree.map(jnp.negative, B(t))
            return solve_fn(A, rhs, on_failure="ignore")[0]

    def column_residual(e):  # r = A u + B t for u the computed derivative along t
        t = unravel_theta(e)
        return flat(A(derivative(t))) + flat(B(t))

    residuals = jax.vmap(column_residual)(basis)  # (p, n)
    return jnp.linalg.norm(residuals, ord=2)
