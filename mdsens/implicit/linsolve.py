"""Linear solvers for ``A x = b`` with ``A`` given as a matrix-vector product on pytrees.

Every solver has the signature ``solver(matvec, b, **options) -> (x, SolveInfo)``:

- ``matvec``: linear function taking and returning pytrees shaped like ``b``.
- ``b``: right-hand side pytree. ``x`` comes back with the same structure.

Options shared by all solvers:

``tol``, ``atol``
    Success means ``‖P(b − A x)‖ ≤ max(tol ‖P b‖, atol)`` for the *true* residual recomputed
    after the loop (within a factor 10 for the rounding drift of recursive residuals).
    ``tol=None`` picks 1e-10 in float64 and 1e-5 in float32.
``maxiter``
    Iteration cap of the Krylov loop (default ``max(10 n, 50)``).
``M``
    Preconditioner: a linear function approximating ``A⁻¹`` (symmetric positive definite for
    ``cg`` and ``minres``).
``init``
    Warm start (pytree like ``b``); the initial guess has no derivative.
``ridge``
    Solve ``(A + ridge I) x = b`` instead.
``nullspace``
    A basis of null(A) (pytree whose leaves have a leading axis ``k``, one vector per row,
    shaped like ``b``; orthonormalised internally). The solve is done on the complement:
    ``P (A + ridge) P x = P b`` with ``P = I − QᵀQ``, giving the minimum-norm solution.
    ``‖Q b‖`` is reported in ``SolveInfo.nullspace_component``: a large value means the
    original system was inconsistent and ``x`` solves it in the least-squares sense.
    The same basis projects both sides, which assumes null(A) = null(Aᵀ) (symmetric or
    normal operators, e.g. Hessians); for a general nonsymmetric singular operator use
    ``lstsq``.
``on_failure``
    ``"raise" | "warn" | "nan" | "ignore"`` — see :mod:`mdsens.implicit._solution`.

Matrix-free: :func:`cg` (symmetric positive definite), :func:`minres` (symmetric),
:func:`gmres`, :func:`bicgstab` (general), :func:`normal_cg` (any, via AᵀA).
Dense (materialise A with n products, O(n³)): :func:`lu`, :func:`cholesky`, :func:`lstsq`
(pseudo-inverse, for singular systems).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl

from . import _krylov
from ._finish import finish
from ._operator import default_maxiter, default_tol, flatten_system
from ._solution import Policy, SolveInfo, Status, check_policy

PyTree = Any
MatVec = Callable[[PyTree], PyTree]

__all__ = [
    "cg", "minres", "gmres", "bicgstab", "normal_cg", "lu", "cholesky", "lstsq", "SOLVERS",
    "get_solver",
]


def _run(loop, name, matvec, b, *, tol, atol, maxiter, M, init, ridge, nullspace, on_failure,
         **loop_kwargs):
    check_policy(on_failure)
    system = flatten_system(matvec, b, init=init, M=M, ridge=ridge, nullspace=nullspace)
    tol = default_tol(system.b.dtype) if tol is None else tol
    maxiter = default_maxiter(system.size) if maxiter is None else int(maxiter)
    x, k, loop_status, min_curv = loop(system, tol, atol, maxiter, **loop_kwargs)
    return finish(
        system, x, iterations=k, loop_status=loop_status, tol=tol, atol=atol,
        on_failure=on_failure, min_curvature=min_curv, name=name,
    )


def cg(
    matvec: MatVec, b: PyTree, *, tol: float | None = None, atol: float = 0.0,
    maxiter: int | None = None, M: MatVec | None = None, init: PyTree | None = None,
    ridge: float | None = None, nullspace: PyTree | None = None, on_failure: Policy = "raise",
) -> tuple[PyTree, SolveInfo]:
    """Conjugate gradients for symmetric positive definite ``A`` (semi-definite with
    ``nullspace``). Negative curvature ``pᵀAp ≤ 0`` stops the loop with status
    NEGATIVE_CURVATURE; ``SolveInfo.min_curvature`` is the smallest ``pᵀAp/pᵀp`` seen."""
    return _run(_krylov.cg_loop, "cg", matvec, b, tol=tol, atol=atol, maxiter=maxiter, M=M,
                init=init, ridge=ridge, nullspace=nullspace, on_failure=on_failure)


def minres(
    matvec: MatVec, b: PyTree, *, tol: float | None = None, atol: float = 0.0,
    maxiter: int | None = None, M: MatVec | None = None, init: PyTree | None = None,
    ridge: float | None = None, nullspace: PyTree | None = None, on_failure: Policy = "raise",
) -> tuple[PyTree, SolveInfo]:
    """MINRES for symmetric (possibly indefinite) ``A``; ``M`` must be positive definite."""
    return _run(_krylov.minres_loop, "minres", matvec, b, tol=tol, atol=atol, maxiter=maxiter,
                M=M, init=init, ridge=ridge, nullspace=nullspace, on_failure=on_failure)


def gmres(
    matvec: MatVec, b: PyTree, *, tol: float | None = None, atol: float = 0.0,
    maxiter: int | None = None, M: MatVec | None = None, init: PyTree | None = None,
    ridge: float | None = None, nullspace: PyTree | None = None, on_failure: Policy = "raise",
    restart: int = 30,
) -> tuple[PyTree, SolveInfo]:
    """Restarted GMRES(``restart``) with right preconditioning for general square ``A``."""
    return _run(_krylov.gmres_loop, "gmres", matvec, b, tol=tol, atol=atol, maxiter=maxiter,
                M=M, init=init, ridge=ridge, nullspace=nullspace, on_failure=on_failure,
                restart=restart)


def bicgstab(
    matvec: MatVec, b: PyTree, *, tol: float | None = None, atol: float = 0.0,
    maxiter: int | None = None, M: MatVec | None = None, init: PyTree | None = None,
    ridge: float | None = None, nullspace: PyTree | None = None, on_failure: Policy = "raise",
) -> tuple[PyTree, SolveInfo]:
    """BiCGSTAB for general square ``A`` (two products with A per iteration)."""
    return _run(_krylov.bicgstab_loop, "bicgstab", matvec, b, tol=tol, atol=atol,
                maxiter=maxiter, M=M, init=init, ridge=ridge, nullspace=nullspace,
                on_failure=on_failure)


def normal_cg(
    matvec: MatVec, b: PyTree, *, tol: float | None = None, atol: float = 0.0,
    maxiter: int | None = None, M: MatVec | None = None, init: PyTree | None = None,
    ridge: float | None = None, nullspace: PyTree | None = None, on_failure: Policy = "raise",
) -> tuple[PyTree, SolveInfo]:
    """CG on the normal equations ``AᵀA x = Aᵀb`` (CGLS form) for any ``A``; ``Aᵀ`` comes from
    linear transposition of ``matvec``. Success is judged on the residual of ``A x = b``.
    ``M`` is not supported (a preconditioner for AᵀA is rarely available)."""
    if M is not None:
        raise ValueError("normal_cg does not take a preconditioner M")
    return _run(_krylov.cgls_loop, "normal_cg", matvec, b, tol=tol, atol=atol, maxiter=maxiter,
                M=None, init=init, ridge=ridge, nullspace=nullspace, on_failure=on_failure)


# ----------------------------------------------------------------------------- dense solvers


def _dense(name, factor_solve, matvec, b, *, tol, atol, ridge, nullspace, on_failure,
           maxiter=None, M=None, init=None):
    """Materialise the projected operator (n products) and solve densely.

    ``maxiter``, ``M`` and ``init`` are accepted for a uniform signature and ignored.
    """
    del maxiter, M, init
    check_policy(on_failure)
    system = flatten_system(matvec, b, ridge=ridge, nullspace=nullspace)
    tol = default_tol(system.b.dtype) if tol is None else tol
    n = system.size
    matrix = jax.vmap(system.op, in_axes=1, out_axes=1)(jnp.eye(n, dtype=system.b.dtype))
    x, singular = factor_solve(matrix, system.b, system)
    x = system.project(x)
    loop_status = jnp.where(singular, jnp.int32(Status.SINGULAR), jnp.int32(Status.SUCCESS))
    return finish(system, x, iterations=1, loop_status=loop_status, tol=tol, atol=atol,
                  on_failure=on_failure, name=name, unconverged=Status.INCONSISTENT)


def _lu_solve(matrix, b, system):
    lu_piv = jsl.lu_factor(matrix)
    pivots = jnp.abs(jnp.diag(lu_piv[0]))
    scale = jnp.max(jnp.abs(matrix))
    n = matrix.shape[0]
    singular = jnp.min(pivots) <= n * jnp.finfo(matrix.dtype).eps * scale
    return jsl.lu_solve(lu_piv, b), singular


def _cholesky_solve(matrix, b, system):
    factor = jsl.cho_factor(matrix, lower=True)
    singular = ~jnp.all(jnp.isfinite(factor[0]))
    return jsl.cho_solve(factor, b), singular


def _pinv_solve(rcond):
    def solve(matrix, b, system):
        x = jnp.linalg.pinv(matrix, rtol=rcond, hermitian=False) @ b
        return x, jnp.asarray(False)

    return solve


def lu(
    matvec: MatVec, b: PyTree, *, tol: float | None = None, atol: float = 0.0,
    ridge: float | None = None, nullspace: PyTree | None = None, on_failure: Policy = "raise",
    **ignored,
) -> tuple[PyTree, SolveInfo]:
    """Dense LU with partial pivoting. A pivot below n·eps·max|A| is reported as SINGULAR.

    With ``nullspace`` the projected operator is singular by construction; use ``lstsq``."""
    if nullspace is not None:
        raise ValueError("lu cannot solve a projected (singular) system; use lstsq or cg")
    return _dense("lu", _lu_solve, matvec, b, tol=tol, atol=atol, ridge=ridge,
                  nullspace=None, on_failure=on_failure, **ignored)


def cholesky(
    matvec: MatVec, b: PyTree, *, tol: float | None = None, atol: float = 0.0,
    ridge: float | None = None, nullspace: PyTree | None = None, on_failure: Policy = "raise",
    **ignored,
) -> tuple[PyTree, SolveInfo]:
    """Dense Cholesky for symmetric positive definite ``A``; failure (not positive definite)
    is reported as SINGULAR."""
    if nullspace is not None:
        raise ValueError("cholesky cannot solve a projected (singular) system; use lstsq or cg")
    return _dense("cholesky", _cholesky_solve, matvec, b, tol=tol, atol=atol, ridge=ridge,
                  nullspace=None, on_failure=on_failure, **ignored)


def lstsq(
    matvec: MatVec, b: PyTree, *, tol: float | None = None, atol: float = 0.0,
    ridge: float | None = None, nullspace: PyTree | None = None, on_failure: Policy = "raise",
    rcond: float | None = None, **ignored,
) -> tuple[PyTree, SolveInfo]:
    """Minimum-norm least-squares solution ``x = A⁺ b`` by the pseudo-inverse (SVD).

    Singular values below ``rcond·σ_max`` (default n·eps) are treated as zero. Never fails to
    produce ``x``; if ``b`` has a component outside range(A) (an inconsistent system) the
    true residual exceeds the tolerance and the status says so (INCONSISTENT), so an
    inconsistent right-hand side is never passed off as a solution."""
    return _dense("lstsq", _pinv_solve(rcond), matvec, b, tol=tol, atol=atol, ridge=ridge,
                  nullspace=nullspace, on_failure=on_failure, **ignored)


SOLVERS: dict[str, Callable[..., tuple[PyTree, SolveInfo]]] = {
    "cg": cg, "minres": minres, "gmres": gmres, "bicgstab": bicgstab, "normal_cg": normal_cg,
    "lu": lu, "cholesky": cholesky, "lstsq": lstsq,
}


def get_solver(solve: str | Callable) -> Callable[..., tuple[PyTree, SolveInfo]]:
    """Resolve a solver given by name (one of ``SOLVERS``) or return a callable unchanged."""
    if callable(solve):
        return solve
    try:
        return SOLVERS[solve]
    except KeyError:
        known = sorted(SOLVERS)
        raise ValueError(f"unknown linear solver {solve!r}; choose from {known}") from None
