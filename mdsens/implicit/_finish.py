"""Common epilogue of every linear solve: true residual, final status, policy."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ._operator import FlatSystem
from ._solution import SolveInfo, Status, apply_policy, make_info

# The loop stops on a recursively updated residual; the true residual recomputed afterwards
# may differ from it by rounding. A solve counts as converged when the true residual is
# within this factor of the requested bound.
RESIDUAL_SLACK = 10.0


def threshold(system: FlatSystem, tol: float, atol: float) -> jax.Array:
    """Residual bound ``max(tol ‖P b‖, atol, 100 eps ‖b‖)``.

    The last term matters when ``b`` lies (almost) entirely in the null space: ``P b`` is
    then rounding noise of ``b``, and the answer is ``x = 0`` up to that noise.
    """
    eps = jnp.finfo(system.b.dtype).eps
    return jnp.maximum(jnp.maximum(tol * jnp.linalg.norm(system.b), atol),
                       100 * eps * system.raw_rhs_norm)


def finish(
    system: FlatSystem,
    x: jax.Array,
    *,
    iterations,
    loop_status,
    tol: float,
    atol: float,
    on_failure: str,
    min_curvature=jnp.nan,
    name: str,
    unconverged: Status = Status.MAX_ITERATIONS,
):
    """Recompute the true residual, settle the status and apply the failure policy.

    Status precedence: negative curvature and a singular factorisation recorded by the loop
    stand; then non-finite values; then the true residual: within
    ``RESIDUAL_SLACK × max(tol ‖P b‖, atol)`` is SUCCESS (also after a Krylov breakdown, which
    may be a lucky one), above it the loop's BREAKDOWN or else ``unconverged``
    (MAX_ITERATIONS for iterative solvers, INCONSISTENT for exact ones).
    """
    residual = jnp.linalg.norm(system.b - system.op(x))
    bound = threshold(system, tol, atol)
    finite = jnp.all(jnp.isfinite(x)) & jnp.isfinite(residual)
    hard = (loop_status == Status.NEGATIVE_CURVATURE) | (loop_status == Status.SINGULAR)
    unconverged = jnp.where(loop_status == Status.BREAKDOWN, Status.BREAKDOWN, unconverged)
    status = jnp.where(
        hard,
        loop_status,
        jnp.where(
            ~finite,
            Status.NONFINITE,
            jnp.where(residual <= RESIDUAL_SLACK * bound, Status.SUCCESS, unconverged),
        ),
    )
    info: SolveInfo = make_info(
        status=status,
        iterations=iterations,
        residual_norm=residual,
        rhs_norm=jnp.linalg.norm(system.b),
        nullspace_component=system.nullspace_component,
        min_curvature=min_curvature,
    )
    solution = apply_policy(system.unravel(x), info, on_failure, what=name)
    return solution, info
