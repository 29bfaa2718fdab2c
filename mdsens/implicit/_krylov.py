"""Matrix-free Krylov solvers on flat vectors, each a ``lax.while_loop``.

Each ``_xxx_loop(system, tol, atol, maxiter, ...)`` returns
``(x, iterations, loop_status, min_curvature)``; the public wrappers in ``linsolve`` add the
true-residual check and the failure policy.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ._finish import threshold
from ._operator import FlatSystem
from ._solution import Status

_OK = np.int32(Status.SUCCESS)  # a jnp scalar would compile a program at import


def _dot(a, b):
    return jnp.vdot(a, b).real


def _tiny(dtype) -> float:
    return float(jnp.finfo(dtype).tiny) * 1e4


def cg_loop(system: FlatSystem, tol, atol, maxiter):
    """Preconditioned conjugate gradients for symmetric positive (semi)definite ``A``.

    Iterates x_{k+1} = x_k + α_k p_k with α_k = r_kᵀz_k / p_kᵀAp_k, z = M r. Stops on
    ‖r‖ ≤ max(tol‖b‖, atol), after ``maxiter`` steps, or when pᵀAp ≤ 0 (negative curvature:
    A is not positive definite on the Krylov space), recorded as NEGATIVE_CURVATURE.
    The smallest Rayleigh quotient pᵀAp / pᵀp seen is returned as ``min_curvature``.
    """
    A, M = system.op, system.precondition
    bound = threshold(system, tol, atol)
    x = system.x0
    r = system.b - A(x)
    z = M(r)
    dtype = system.b.dtype

    def cond(state):
        _, r, _, _, _, k, status, _ = state
        return (k < maxiter) & (jnp.linalg.norm(r) > bound) & (status == _OK)

    def body(state):
        x, r, z, p, rz, k, status, min_curv = state
        Ap = A(p)
        pAp = _dot(p, Ap)
        pp = _dot(p, p)
        curvature = pAp / jnp.where(pp > 0, pp, 1.0)
        min_curv = jnp.minimum(min_curv, curvature)
        negative = pAp <= _tiny(dtype) * pp
        breakdown = ~jnp.isfinite(pAp)
        alpha = jnp.where(negative | breakdown, 0.0, rz / jnp.where(negative, 1.0, pAp))
        x_new = x + alpha * p
        r_new = r - alpha * Ap
        z_new = M(r_new)
        rz_new = _dot(r_new, z_new)
        beta = rz_new / jnp.where(rz == 0, 1.0, rz)
        p_new = z_new + beta * p
        status = jnp.where(
            negative,
            jnp.int32(Status.NEGATIVE_CURVATURE),
            jnp.where(breakdown, jnp.int32(Status.NONFINITE), status),
        )
        return x_new, r_new, z_new, p_new, rz_new, k + 1, status, min_curv

    state = (x, r, z, z, _dot(r, z), jnp.int32(0), _OK, jnp.asarray(jnp.inf, dtype))
    x, _, _, _, _, k, status, min_curv = lax.while_loop(cond, body, state)
    return x, k, status, min_curv


def minres_loop(system: FlatSystem, tol, atol, maxiter):
    """MINRES (Paige & Saunders 1975) for symmetric, possibly indefinite ``A``.

    Minimises ‖b − A x‖ over the Krylov space by the Lanczos process with Givens rotations;
    ``M`` must be symmetric positive definite. Stops when the residual estimate φ̄ falls below
    max(tol‖b‖, atol); an exactly invariant Krylov space (β = 0) ends the loop too.
    """
    A, M = system.op, system.precondition
    bound = threshold(system, tol, atol)
    dtype = system.b.dtype
    eps = jnp.finfo(dtype).eps
    x = system.x0
    r1 = system.b - A(x)
    y = M(r1)
    beta1 = jnp.sqrt(jnp.maximum(_dot(r1, y), 0.0))
    zero = jnp.zeros_like(x)
    scalar = lambda v: jnp.asarray(v, dtype)  # noqa: E731

    def cond(state):
        k, status, beta, phibar = state[0], state[1], state[5], state[9]
        return (k < maxiter) & (phibar > bound) & (beta > 0) & (status == _OK)

    def body(state):
        (k, status, x, r1, r2, beta, oldb, dbar, epsln, phibar, cs, sn, w, w2, y) = state
        v = y / beta
        y = A(v)
        y = jnp.where(k >= 1, y - (beta / jnp.where(oldb == 0, 1.0, oldb)) * r1, y)
        alfa = _dot(v, y)
        y = y - (alfa / beta) * r2
        r1, r2 = r2, y
        y = M(r2)
        oldb = beta
        beta2 = _dot(r2, y)
        status = jnp.where(beta2 < 0, jnp.int32(Status.BREAKDOWN), status)
        beta = jnp.sqrt(jnp.maximum(beta2, 0.0))
        oldeps = epsln
        delta = cs * dbar + sn * alfa
        gbar = sn * dbar - cs * alfa
        epsln = sn * beta
        dbar = -cs * beta
        gamma = jnp.maximum(jnp.hypot(gbar, beta), eps)
        cs = gbar / gamma
        sn = beta / gamma
        phi = cs * phibar
        phibar = sn * phibar
        w1, w2 = w2, w
        w = (v - oldeps * w1 - delta * w2) / gamma
        x = x + phi * w
        finite = jnp.isfinite(phibar) & jnp.isfinite(alfa)
        status = jnp.where(finite, status, jnp.int32(Status.NONFINITE))
        return (k + 1, status, x, r1, r2, beta, oldb, dbar, epsln, phibar, cs, sn, w, w2, y)

    state = (
        jnp.int32(0), _OK, x, r1, r1, beta1, scalar(0.0), scalar(0.0), scalar(0.0),
        beta1, scalar(-1.0), scalar(0.0), zero, zero, y,
    )
    state = lax.while_loop(cond, body, state)
    return state[2], state[0], state[1], jnp.asarray(jnp.nan, dtype)


def bicgstab_loop(system: FlatSystem, tol, atol, maxiter):
    """Preconditioned BiCGSTAB (van der Vorst 1992) for general square ``A``.

    Two products with A per iteration. A vanishing ρ = r̂ᵀr or ω is a breakdown, recorded as
    BREAKDOWN (a true residual below tolerance afterwards still counts as success).
    """
    A, M = system.op, system.precondition
    bound = threshold(system, tol, atol)
    dtype = system.b.dtype
    tiny = _tiny(dtype)
    x = system.x0
    r = system.b - A(x)
    rhat = r
    zero = jnp.zeros_like(x)
    one = jnp.asarray(1.0, dtype)

    def cond(state):
        _, r, _, _, _, _, _, k, status = state
        return (k < maxiter) & (jnp.linalg.norm(r) > bound) & (status == _OK)

    def body(state):
        x, r, p, v, rho, alpha, omega, k, status = state
        rho_new = _dot(rhat, r)
        bad_rho = jnp.abs(rho_new) <= tiny
        beta = (rho_new / jnp.where(rho == 0, 1.0, rho)) * (
            alpha / jnp.where(omega == 0, 1.0, omega)
        )
        p = r + beta * (p - omega * v)
        phat = M(p)
        v = A(phat)
        rv = _dot(rhat, v)
        bad_rv = jnp.abs(rv) <= tiny
        alpha = rho_new / jnp.where(bad_rv, 1.0, rv)
        s = r - alpha * v
        shat = M(s)
        t = A(shat)
        tt = _dot(t, t)
        omega = jnp.where(tt > 0, _dot(t, s) / jnp.where(tt > 0, tt, 1.0), 0.0)
        s_done = jnp.linalg.norm(s) <= bound
        x_new = x + alpha * phat + jnp.where(s_done, 0.0, omega) * shat
        r_new = jnp.where(s_done, s, s - omega * t)
        broke = bad_rho | bad_rv | ((omega == 0) & ~s_done)
        keep = broke
        x_new = jnp.where(keep, x, x_new)
        r_new = jnp.where(keep, r, r_new)
        status = jnp.where(broke, jnp.int32(Status.BREAKDOWN), status)
        return x_new, r_new, p, v, rho_new, alpha, omega, k + 1, status

    state = (x, r, zero, zero, one, one, one, jnp.int32(0), _OK)
    x, _, _, _, _, _, _, k, status = lax.while_loop(cond, body, state)
    return x, k, status, jnp.asarray(jnp.nan, dtype)


def gmres_loop(system: FlatSystem, tol, atol, maxiter, restart: int):
    """Restarted GMRES(m) with right preconditioning for general square ``A``.

    Each cycle builds an m-step Arnoldi basis of A M (classical Gram–Schmidt applied twice),
    solves the small least-squares problem min ‖β e₁ − H y‖ and updates x ← x + M V y. The
    true residual is recomputed at every restart and decides termination.
    """
    A, M = system.op, system.precondition
    bound = threshold(system, tol, atol)
    dtype = system.b.dtype
    n = system.size
    m = int(min(restart, n))

    def cycle(x):
        r = system.b - A(x)
        beta = jnp.linalg.norm(r)
        V = jnp.zeros((m + 1, n), dtype).at[0].set(r / jnp.where(beta > 0, beta, 1.0))
        H = jnp.zeros((m + 1, m), dtype)

        def arnoldi(j, carry):
            V, H = carry
            w = A(M(V[j]))
            mask = (jnp.arange(m + 1) <= j).astype(dtype)
            h = (V @ w) * mask
            w = w - V.T @ h
            h2 = (V @ w) * mask
            w = w - V.T @ h2
            h = h + h2
            norm = jnp.linalg.norm(w)
            H = H.at[:, j].set(h.at[j + 1].set(norm))
            V = V.at[j + 1].set(w / jnp.where(norm > 0, norm, 1.0))
            return V, H

        V, H = lax.fori_loop(0, m, arnoldi, (V, H))
        e1 = jnp.zeros((m + 1,), dtype).at[0].set(beta)
        y = jnp.linalg.lstsq(H, e1)[0]
        return x + M(V[:m].T @ y)

    def cond(state):
        _, res, k, status = state
        return (k < maxiter) & (res > bound) & (status == _OK)

    def body(state):
        x, _, k, status = state
        x = cycle(x)
        res = jnp.linalg.norm(system.b - A(x))
        status = jnp.where(jnp.isfinite(res), status, jnp.int32(Status.NONFINITE))
        return x, res, k + m, status

    x = system.x0
    state = (x, jnp.linalg.norm(system.b - A(x)), jnp.int32(0), _OK)
    x, _, k, status = lax.while_loop(cond, body, state)
    return x, k, status, jnp.asarray(jnp.nan, dtype)


def cgls_loop(system: FlatSystem, tol, atol, maxiter):
    """CG on the normal equations Aᵀ A x = Aᵀ b in its stable CGLS form (Björck 1996).

    Works for any square or singular ``A`` (Aᵀ by linear transposition of the projected
    operator). Tracks the residual r = b − A x of the original system and stops when
    ‖r‖ ≤ max(tol‖b‖, atol), or when the normal-equation residual ‖Aᵀ r‖ falls below
    tol‖Aᵀ b‖ (a least-squares solution: if ‖r‖ is still large the system is inconsistent and
    the final residual check reports it).
    """
    A = system.op
    transpose = jax.linear_transpose(A, system.b)
    At = lambda v: transpose(v)[0]  # noqa: E731
    bound = threshold(system, tol, atol)
    dtype = system.b.dtype
    x = system.x0
    r = system.b - A(x)
    s = At(r)
    normal_bound = tol * jnp.linalg.norm(At(system.b))

    def cond(state):
        _, r, s, _, _, k, status = state
        return (
            (k < maxiter)
            & (jnp.linalg.norm(r) > bound)
            & (jnp.linalg.norm(s) > normal_bound)
            & (status == _OK)
        )

    def body(state):
        x, r, s, p, gamma, k, status = state
        q = A(p)
        qq = _dot(q, q)
        broke = ~(qq > 0)
        alpha = jnp.where(broke, 0.0, gamma / jnp.where(broke, 1.0, qq))
        x = x + alpha * p
        r = r - alpha * q
        s = At(r)
        gamma_new = _dot(s, s)
        p = s + (gamma_new / jnp.where(gamma == 0, 1.0, gamma)) * p
        status = jnp.where(broke, jnp.int32(Status.BREAKDOWN), status)
        return x, r, s, p, gamma_new, k + 1, status

    state = (x, r, s, s, _dot(s, s), jnp.int32(0), _OK)
    x, _, _, _, _, k, status = lax.while_loop(cond, body, state)
    return x, k, status, jnp.asarray(jnp.nan, dtype)
