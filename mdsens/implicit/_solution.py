"""Status codes, solve diagnostics and the failure policy shared by every linear solve.

A solve never returns a bare array: it returns ``(x, SolveInfo)``. ``SolveInfo`` is a frozen
pytree, so it passes through ``jit``/``vmap`` like any other output, and the caller decides how
failure surfaces through ``on_failure``:

``"raise"``
    Outside ``jit`` a :class:`SolveError` is raised at once. Under ``jit``/``vmap`` the check
    runs in a ``jax.debug.callback`` after the loop; the error then reaches the caller as a
    ``jax.errors.JaxRuntimeError`` (a ``RuntimeError``) whose text holds the
    :class:`SolveError` message. (``checkify`` would need every caller to wrap its function;
    the callback works with any transformation stack.)
``"warn"``
    A ``RuntimeWarning`` with the same message (also under ``jit``, via the callback).
``"nan"``
    The solution is replaced by NaN wherever the solve failed; works under ``jit`` and
    ``vmap`` with no host round trip.
``"ignore"``
    Nothing is done: the status is only in the returned ``SolveInfo``. For callers that
    collect diagnostics themselves (e.g. a sensitivity report).
"""

from __future__ import annotations

import dataclasses
import enum

import jax
import jax.numpy as jnp
import numpy as np

from .policy import POLICIES as POLICIES  # the one failure policy (mdsens.implicit.policy)
from .policy import Policy as Policy
from .policy import check_policy as check_policy
from .policy import surface


class SolveError(RuntimeError):
    """A linear solve (or a root solve built on it) did not produce a trustworthy answer."""


class Status(enum.IntEnum):
    """Outcome of a linear solve. Each member maps to an actionable message."""

    SUCCESS = 0
    MAX_ITERATIONS = 1
    BREAKDOWN = 2
    NONFINITE = 3
    NEGATIVE_CURVATURE = 4
    SINGULAR = 5
    INCONSISTENT = 6

    @property
    def message(self) -> str:
        return _MESSAGES[self]


_MESSAGES = {
    Status.SUCCESS: "converged",
    Status.MAX_ITERATIONS: (
        "maximum iterations reached before the residual tolerance: raise maxiter, loosen "
        "tol/atol, add a preconditioner, or check that the system is consistent (a singular "
        "operator needs its null space passed as `nullspace`)"
    ),
    Status.BREAKDOWN: (
        "Krylov breakdown (a zero inner product): the operator may be singular or the "
        "right-hand side inconsistent; pass `nullspace`, use `lstsq`, or a `ridge`"
    ),
    Status.NONFINITE: (
        "non-finite values (NaN/inf) in the solve: check the operator and right-hand side"
    ),
    Status.NEGATIVE_CURVATURE: (
        "negative or zero curvature met in CG: the operator is not positive definite (at an "
        "optimisation problem this means the point is not a minimum); use minres/gmres or "
        "check the inner solution"
    ),
    Status.SINGULAR: (
        "the dense factorisation failed: the matrix is singular or not positive definite; "
        "use lstsq or pass `nullspace`"
    ),
    Status.INCONSISTENT: (
        "inconsistent system: the right-hand side has a component outside the range of the "
        "operator, so A x = b has no solution (x is the least-squares one); project that "
        "component out with `nullspace` if it is a known zero mode"
    ),
}


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SolveInfo:
    """Diagnostics of one linear solve ``A x = b`` (all fields are arrays, batched under vmap).

    Attributes:
      status: ``Status`` code (int32).
      iterations: iterations (matrix-vector products of the main loop) performed.
      residual_norm: the true residual ``‖P(b − A x)‖₂`` recomputed after the loop, with P the
        projector onto the complement of ``nullspace`` (identity when none is given).
      rhs_norm: ``‖P b‖₂``, the scale the relative tolerance refers to.
      nullspace_component: ``‖Qᵀ b‖₂``, the part of ``b`` removed by the null-space projection
        (zero when no null space is given). A large value means ``A x = b`` itself has no
        solution; the returned ``x`` is then the minimum-norm least-squares solution.
      min_curvature: smallest Rayleigh quotient ``pᵀ A p / pᵀ p`` met by CG (an upper bound on
        the smallest eigenvalue of ``A`` on the Krylov space); NaN for other solvers.
    """

    status: jax.Array
    iterations: jax.Array
    residual_norm: jax.Array
    rhs_norm: jax.Array
    nullspace_component: jax.Array
    min_curvature: jax.Array

    @property
    def converged(self) -> jax.Array:
        """True where the solve succeeded."""
        return self.status == Status.SUCCESS

    @property
    def relative_residual(self) -> jax.Array:
        return self.residual_norm / jnp.where(self.rhs_norm > 0, self.rhs_norm, 1.0)

    def describe(self) -> str:
        """A one-line human-readable summary (host side, concrete values only)."""
        status = np.asarray(self.status)
        worst = int(status.max()) if status.size else 0
        return (
            f"{Status(worst).message}; iterations={np.asarray(self.iterations).max()}, "
            f"residual={np.asarray(self.residual_norm).max():.3e}, "
            f"|rhs|={np.asarray(self.rhs_norm).max():.3e}, "
            f"nullspace component={np.asarray(self.nullspace_component).max():.3e}"
        )


def make_info(
    status, iterations, residual_norm, rhs_norm, nullspace_component=0.0, min_curvature=np.nan
) -> SolveInfo:
    """Assemble a ``SolveInfo`` with canonical dtypes."""
    real = jnp.asarray(residual_norm).dtype
    return SolveInfo(
        status=jnp.asarray(status, jnp.int32),
        iterations=jnp.asarray(iterations, jnp.int32),
        residual_norm=jnp.asarray(residual_norm, real),
        rhs_norm=jnp.asarray(rhs_norm, real),
        nullspace_component=jnp.asarray(nullspace_component, real),
        min_curvature=jnp.asarray(min_curvature, real),
    )


def _failure_message(status: np.ndarray, iterations, residual, rhs, what: str) -> str | None:
    status = np.asarray(status)
    bad = status != Status.SUCCESS
    if not bad.any():
        return None
    worst = Status(int(status[bad].max()))
    count = f" ({int(bad.sum())} of {bad.size} batched solves)" if status.ndim else ""
    return (
        f"{what} failed{count}: {worst.message} "
        f"[iterations={int(np.max(iterations))}, residual={float(np.max(residual)):.3e}, "
        f"|rhs|={float(np.max(rhs)):.3e}]"
    )


def _host_report(status, iterations, residual, rhs, *, on_failure: str, what: str) -> None:
    message = _failure_message(status, iterations, residual, rhs, what)
    surface(None, message, on_failure, error=SolveError, warning=RuntimeWarning, stacklevel=4)


def apply_policy(x, info: SolveInfo, on_failure: str, what: str = "linear solve"):
    """Surface a failed solve according to ``on_failure``; return ``x`` (NaN for "nan")."""
    check_policy(on_failure)
    if on_failure == "ignore":
        return x
    if on_failure == "nan":
        ok = info.converged
        return jax.tree.map(lambda leaf: jnp.where(ok, leaf, jnp.nan), x)
    fields = (info.status, info.iterations, info.residual_norm, info.rhs_norm)
    if any(isinstance(f, jax.core.Tracer) for f in fields):
        jax.debug.callback(
            lambda *a: _host_report(*a, on_failure=on_failure, what=what), *fields
        )
    else:
        _host_report(*fields, on_failure=on_failure, what=what)
    return x
