r"""Dense convex quadratic programs in JAX, differentiable by their KKT conditions.

Problem (``n`` variables, ``p`` equalities, ``q`` inequalities)::

    min_z  ½ zᵀQz + cᵀz    s.t.   A z = b,   G z ≤ h,

``Q`` (n, n) positive semi-definite (its symmetric part is used), ``A`` (p, n) of full row
rank, ``G`` (q, n); either constraint block may be absent (``None``). The solution is the
primal-dual triple ``x = (z, ν, λ)`` (``ν`` (p,), ``λ ≥ 0`` (q,)), the root of
:func:`mdsens.implicit.conditions.qp_kkt`.

:func:`interior_point` is a primal-dual interior-point method (Mehrotra predictor-corrector,
dense Newton systems, a ``lax.while_loop``), followed by an active-set polish: with the active
set read off the interior-point iterate (``λ_i > s_i``, ``s = h − Gz`` the slack) it solves
the equality-constrained KKT system on that set exactly, so that the KKT residual is at the
level of rounding (not of the barrier parameter); the polished point is kept only if it is
primal and dual feasible. :func:`solve_qp` wraps it with :func:`mdsens.implicit.custom_root`
on ``qp_kkt``: ``(z, ν, λ)`` is then differentiable with respect to all of
``(Q, c, A, b, G, h)`` in forward and reverse mode (one LU solve of the ``n + p + q`` KKT
Jacobian), valid under strict complementarity (see ``qp_kkt``).

Failures (iteration cap, infeasible or unbounded problems, non-finite values) follow the
``on_failure`` policy of :mod:`mdsens.implicit.policy`, also under ``jit`` (a host callback),
with :class:`mdsens.implicit.SolveError`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ._root import Solve, custom_root
from ._solution import SolveError
from .conditions import qp_kkt
from .policy import Policy, check_policy, surface

__all__ = ["QPInfo", "QPOptions", "interior_point", "solve_qp"]

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class QPOptions:
    """Options of :func:`interior_point`.

    Attributes:
      maxiter: cap on interior-point iterations (each one dense ``(n + p)`` solve twice).
      tol: convergence tolerance on the scaled KKT residuals: ``‖Q_s z + c + Aᵀν + Gᵀλ‖∞``,
        ``‖Az − b‖∞``, ``‖max(Gz − h, 0)‖∞`` relative to ``1 + `` the size of the data they
        come from, and the mean complementarity ``sᵀλ / q``.
      polish: finish with the active-set solve (see the module docstring).
      on_failure: ``"raise" | "warn" | "nan" | "ignore"`` for an unconverged solve.
    """

    maxiter: int = 100
    tol: float = 1e-10
    polish: bool = True
    on_failure: Policy = "raise"

    def __post_init__(self) -> None:
        check_policy(self.on_failure)
        if self.maxiter < 1 or not self.tol > 0:
            raise ValueError(f"QPOptions needs maxiter >= 1 and tol > 0, got {self}")


class QPInfo(NamedTuple):
    """Diagnostics of :func:`interior_point` (arrays; batched under ``vmap``).

    ``iterations``: interior-point iterations; ``dual_residual``: ``‖Q_s z + c + Aᵀν + Gᵀλ‖∞``;
    ``primal_residual``: ``max(‖Az − b‖∞, ‖max(Gz − h, 0)‖∞)``; ``complementarity``:
    ``max_i |λ_i (G z − h)_i|`` (with ``min(λ) < 0`` counted in it); ``polished``: the
    active-set solve was accepted; ``converged``: all residuals within tolerance."""

    iterations: Array
    dual_residual: Array
    primal_residual: Array
    complementarity: Array
    polished: Array
    converged: Array


def _sym(Q: Array) -> Array:
    return 0.5 * (Q + Q.T)


def _residuals(Qs, c, A, b, G, h, z, nu, lam):
    """(dual, primal, complementarity) residuals in the ∞-norm, and their scales."""
    dual = jnp.max(jnp.abs(Qs @ z + c + A.T @ nu + G.T @ lam), initial=0.0)
    primal = jnp.maximum(jnp.max(jnp.abs(A @ z - b), initial=0.0),
                         jnp.max(jnp.maximum(G @ z - h, 0.0), initial=0.0))
    comp = jnp.maximum(jnp.max(jnp.abs(lam * (G @ z - h)), initial=0.0),
                       jnp.max(-lam, initial=0.0))
    return dual, primal, comp


def _scales(Qs, c, A, b, G, h):
    norm = lambda v: jnp.max(jnp.abs(v), initial=0.0)  # noqa: E731
    return 1.0 + norm(c) + norm(Qs), 1.0 + norm(b) + norm(h) + norm(A) + norm(G)


def _ipm(Qs, c, A, b, G, h, maxiter: int, tol: float):
    """Mehrotra predictor-corrector on ``Gz + s = h``, ``s, λ ≥ 0``. Returns z, ν, λ, s, k."""
    n, p, q = Qs.shape[0], A.shape[0], G.shape[0]
    dual_scale, primal_scale = _scales(Qs, c, A, b, G, h)
    zeros_pp = jnp.zeros((p, p), Qs.dtype)

    def newton(z, nu, lam, s, r_c):
        """Newton direction for the residual ``s ⊙ λ − r_c`` target (see _ipm docstring)."""
        r_d = Qs @ z + c + A.T @ nu + G.T @ lam
        r_p = A @ z - b
        r_i = G @ z + s - h
        w = lam / s
        K = jnp.block([[Qs + G.T @ (w[:, None] * G), A.T], [A, zeros_pp]])
        rhs = jnp.concatenate([-r_d + G.T @ ((r_c - lam * r_i) / s), -r_p])
        d = jnp.linalg.solve(K, rhs)
        dz, dnu = d[:n], d[n:]
        ds = -r_i - G @ dz
        dlam = (-r_c - lam * ds) / s
        return dz, dnu, dlam, ds

    def max_step(v, dv):
        ratio = jnp.where(dv < 0, -v / jnp.where(dv < 0, dv, -1.0), jnp.inf)
        return jnp.minimum(1.0, jnp.min(ratio, initial=jnp.inf))

    def converged(state):
        z, nu, lam, s, _ = state
        r_d = jnp.max(jnp.abs(Qs @ z + c + A.T @ nu + G.T @ lam), initial=0.0)
        r_p = jnp.maximum(jnp.max(jnp.abs(A @ z - b), initial=0.0),
                          jnp.max(jnp.abs(G @ z + s - h), initial=0.0))
        mu = jnp.sum(s * lam) / max(q, 1)
        return (r_d <= tol * dual_scale) & (r_p <= tol * primal_scale) & (
            mu <= 1e-2 * tol * primal_scale)

    def body(state):
        z, nu, lam, s, k = state
        mu = jnp.sum(s * lam) / max(q, 1)
        # predictor (affine scaling, σ = 0)
        dz, dnu, dlam, ds = newton(z, nu, lam, s, s * lam)
        alpha = jnp.minimum(max_step(s, ds), max_step(lam, dlam))
        mu_aff = jnp.sum((s + alpha * ds) * (lam + alpha * dlam)) / max(q, 1)
        sigma = jnp.where(mu > 0, (mu_aff / jnp.where(mu > 0, mu, 1.0)) ** 3, 0.0)
        # corrector with centring
        dz, dnu, dlam, ds = newton(z, nu, lam, s, s * lam + ds * dlam - sigma * mu)
        alpha = 0.99 * jnp.minimum(max_step(s, ds), max_step(lam, dlam))
        alpha = jnp.minimum(alpha, 1.0)
        return z + alpha * dz, nu + alpha * dnu, lam + alpha * dlam, s + alpha * ds, k + 1

    z0 = jnp.zeros(n, Qs.dtype)
    state = (z0, jnp.zeros(p, Qs.dtype), jnp.ones(q, Qs.dtype),
             jnp.maximum(h - G @ z0, 1.0), jnp.asarray(0, jnp.int32))
    finite = lambda st: jnp.all(jnp.isfinite(st[0])) & jnp.all(jnp.isfinite(st[2]))  # noqa: E731
    state = lax.while_loop(
        lambda st: (st[4] < maxiter) & ~converged(st) & finite(st), body, state)
    return state


def _polish(Qs, c, A, b, G, h, z, nu, lam, s):
    """Exact KKT solve on the active set ``{λ_i > s_i}``; rows of inactive constraints read
    ``λ_i = 0``. Returns the polished (z, ν, λ)."""
    n, p, q = Qs.shape[0], A.shape[0], G.shape[0]
    active = (lam > s).astype(Qs.dtype)
    K = jnp.block([
        [Qs, A.T, G.T],
        [A, jnp.zeros((p, p + q), Qs.dtype)],
        [active[:, None] * G, jnp.zeros((q, p), Qs.dtype), jnp.diag(1.0 - active)],
    ])
    sol = jnp.linalg.solve(K, jnp.concatenate([-c, b, active * h]))
    return sol[:n], sol[n:n + p], sol[n + p:]


def _report(iterations, dual, primal, comp, converged, *, on_failure: str) -> None:
    bad = ~np.asarray(converged, bool)
    if not bad.any():
        return
    count = f" ({int(bad.sum())} of {bad.size} batched problems)" if bad.ndim else ""
    message = (
        f"quadratic program not solved{count}: iterations={int(np.max(iterations))}, "
        f"dual residual={float(np.max(dual)):.3e}, primal residual={float(np.max(primal)):.3e}, "
        f"complementarity={float(np.max(comp)):.3e}; the problem may be infeasible, unbounded "
        "(Q not positive definite on the feasible directions) or badly scaled: check the data, "
        "rescale it or raise QPOptions.maxiter"
    )
    surface(None, message, on_failure, error=SolveError, warning=RuntimeWarning, stacklevel=4)


def interior_point(
    init: Any, Q: Array, c: Array, A: Array | None = None, b: Array | None = None,
    G: Array | None = None, h: Array | None = None, *, options: QPOptions = QPOptions(),
) -> tuple[tuple[Array, Array | None, Array | None], QPInfo]:
    """Solve ``min ½zᵀQz + cᵀz s.t. Az = b, Gz ≤ h`` (see the module docstring).

    Args:
      init: ignored (the interior-point method starts from ``z = 0``, ``λ = 1``,
        ``s = max(h, 1)``); present so that the signature is that of a
        :func:`~mdsens.implicit.custom_root` solver.
      Q, c, A, b, G, h: the problem data, shapes (n, n), (n,), (p, n), (p,), (q, n), (q,);
        ``A, b`` or ``G, h`` may be ``None``.
      options: :class:`QPOptions` (bind it with ``functools.partial`` before decorating with
        ``custom_root``, which passes every keyword argument to ``F`` too).

    Returns:
      ``((z, ν, λ), QPInfo)``; ``ν`` / ``λ`` are ``None`` when ``A`` / ``G`` is. No derivative
      (this function is not differentiable: decorate it, or use :func:`solve_qp`).
    """
    del init
    if (A is None) != (b is None) or (G is None) != (h is None):
        raise ValueError("interior_point: give A with b and G with h (or neither)")
    Q, c = jnp.asarray(Q), jnp.asarray(c)
    dtype = jnp.result_type(Q, c, float)
    n = c.shape[0]
    if Q.shape != (n, n):
        raise ValueError(f"Q must have shape ({n}, {n}), got {Q.shape}")
    Aa = jnp.zeros((0, n), dtype) if A is None else jnp.asarray(A, dtype)
    ba = jnp.zeros((0,), dtype) if b is None else jnp.asarray(b, dtype)
    Ga = jnp.zeros((0, n), dtype) if G is None else jnp.asarray(G, dtype)
    ha = jnp.zeros((0,), dtype) if h is None else jnp.asarray(h, dtype)
    if Aa.shape != (ba.shape[0], n) or Ga.shape != (ha.shape[0], n):
        raise ValueError(f"shapes do not match: A {Aa.shape}, b {ba.shape}, G {Ga.shape}, "
                         f"h {ha.shape} for n = {n}")
    Qs, c = _sym(Q.astype(dtype)), c.astype(dtype)
    z, nu, lam, s, k = _ipm(Qs, c, Aa, ba, Ga, ha, int(options.maxiter), float(options.tol))
    dual_scale, primal_scale = _scales(Qs, c, Aa, ba, Ga, ha)

    def ok(res):
        dual, primal, comp = res
        finite = jnp.isfinite(dual) & jnp.isfinite(primal) & jnp.isfinite(comp)
        return finite & (dual <= options.tol * dual_scale) & (
            primal <= options.tol * primal_scale) & (comp <= options.tol * primal_scale)

    res = _residuals(Qs, c, Aa, ba, Ga, ha, z, nu, lam)
    polished = jnp.asarray(False)
    if options.polish:
        zp, nup, lamp = _polish(Qs, c, Aa, ba, Ga, ha, z, nu, lam, s)
        res_p = _residuals(Qs, c, Aa, ba, Ga, ha, zp, nup, lamp)
        polished = ok(res_p)
        z, nu, lam = (jnp.where(polished, u, v) for u, v in ((zp, z), (nup, nu), (lamp, lam)))
        res = tuple(jnp.where(polished, u, v) for u, v in zip(res_p, res))
    info = QPInfo(k, *res, polished, ok(res))
    if options.on_failure == "nan":
        z, nu, lam = (jnp.where(info.converged, v, jnp.nan) for v in (z, nu, lam))
    elif options.on_failure != "ignore":
        fields = (info.iterations, *res, info.converged)
        report = functools.partial(_report, on_failure=options.on_failure)
        if any(isinstance(f, jax.core.Tracer) for f in fields):
            jax.debug.callback(report, *fields)
        else:
            report(*fields)
    return (z, None if A is None else nu, None if G is None else lam), info


def solve_qp(
    Q: Array, c: Array, A: Array | None = None, b: Array | None = None,
    G: Array | None = None, h: Array | None = None, *, options: QPOptions = QPOptions(),
    solve: Solve = "lu",
) -> tuple[tuple[Array, Array | None, Array | None], QPInfo]:
    """:func:`interior_point` with implicit derivatives through :func:`conditions.qp_kkt
    <mdsens.implicit.conditions.qp_kkt>`.

    ``(z, ν, λ)`` are differentiable with respect to ``Q, c, A, b, G, h`` (``jax.grad``,
    ``jacfwd``, ``jacrev``, ``jit``, ``vmap``); the derivative solve ``solve`` (default dense
    ``lu``; ``gmres`` also works) is on the nonsymmetric KKT Jacobian of size ``n + p + q``.
    The derivative is that of the solution with its active set held fixed, exact under strict
    complementarity; at a degenerate point (an active constraint with ``λ_i = 0``) the
    Jacobian is singular and the derivative solve fails by ``options.on_failure``.

    Returns:
      ``((z, ν, λ), QPInfo)``, the info without derivative.
    """
    solver = functools.partial(interior_point, options=options)
    decorated = custom_root(qp_kkt(), solve=solve, has_aux=True,
                            on_failure=options.on_failure)(solver)
    return decorated(None, Q, c, A, b, G, h)
