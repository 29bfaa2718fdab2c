r"""Relaxed elastic constants as a derivative through the relaxation.

:math:`C = d\sigma_\text{Voigt}/d\eta` at fixed cell: the affine (Born) term minus the
non-affine relaxation :math:`\Xi^\top H^+ \Xi`, obtained by wrapping the known root with
:func:`mdsens.implicit.custom_root` so that ``C`` (a first derivative) and ``dC/dθ`` (a second
derivative) both come from the implicit rule.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np

from ..implicit import Status, custom_root
from ._problem import ParamSpec, RootProblem, SolverPlan
from .strain import deformation, n_voigt, stress_to_voigt, voigt_labels


def relaxed_stiffness(problem: RootProblem, theta, R0, C0, implicit):
    r"""``C = dσ_Voigt/dη`` (d(d+1)/2 × d(d+1)/2) at the cell ``C0`` with relaxed positions
    ``R0``, as a JAX function of the parameters ``theta`` (differentiable again).

    The fixed-cell root problem of ``problem`` in an applied strain ``η`` of ``C0`` is
    wrapped around its known root ``R0`` by ``implicit`` (``custom_root`` with a solver that
    projects out the translations), and the stress is differentiated in ``η`` through it.
    A strain already in ``theta`` (``wrt="strain"``) is added to ``η``.
    """
    strain = ParamSpec("__strain__", "strain")
    fixed = dataclasses.replace(
        problem, relax_cell=False, cell0=C0,
        specs=(*(s for s in problem.specs if s.kind in ("param", "pair")), strain),
    )
    keys = [s.name for s in fixed.specs if s.kind != "strain"]
    # The root is known (R_ref, the relaxed positions): the "solver" returns it.
    root = implicit(lambda x, th, R_ref: fixed.F(x, th))(lambda init, th, R_ref: R_ref)
    applied = problem.strain(theta)

    def stress_of(eta):
        th = {k: theta[k] for k in keys}
        th["__strain__"] = eta + applied
        Rc, Cc, params = fixed.configuration(root(None, th, R0), th)
        return stress_to_voigt(problem.model.stress(Rc, Cc, params, problem.nbrs))

    return jax.jacfwd(stress_of)(jnp.zeros((n_voigt(fixed.dim),), R0.dtype))


def elastic_constants(problem: RootProblem, x_star, theta0, plan: SolverPlan, nullspace,
                      modes, precond=None):
    r"""Relaxed elastic constants :math:`C = d\sigma_\text{Voigt}/d\eta` at fixed cell and
    their derivatives with respect to the requested parameters.

    A fixed-cell root problem in the strain of the relaxed cell is wrapped with
    :func:`mdsens.implicit.custom_root` around the known root, so both ``C`` (a first
    derivative) and ``dC/dθ`` (a second derivative) come from the implicit rule. With
    ``relax_cell`` the relaxed positions and cell depend on θ through the cell-relaxation
    root, which is included the same way.

    Args:
      problem, x_star, theta0: the root problem, its root and parameters.
      plan: solver settings; ``nullspace`` — zero modes of the unknowns (for the
        cell-relaxation root), ``modes`` — zero modes of the positions (fixed-cell solves),
        ``precond`` — :func:`~mdsens.md._problem.preconditioner_data` or None.

    Each solve's status is recorded host-side (returned in the info dict). The computation
    is one compiled program, cached on (plan, model, parameter layout).
    """
    token = next(_TOKENS)
    _RECORDS[token] = []
    try:
        value, jac = _elastic_stage(plan, problem, x_star, theta0, nullspace, modes, precond,
                                    jnp.int32(token))
        value = np.asarray(value)
        derivatives = {k: np.asarray(v) for k, v in jac.items()}
        jax.effects_barrier()
        records = _RECORDS[token]
    finally:
        _RECORDS.pop(token, None)
    info = {
        "status": np.array([int(np.max(r[0])) for r in records] or [0]),
        "iterations": np.array([int(np.max(r[1])) for r in records] or [0]),
        "residual_norm": np.array([float(np.max(r[2])) for r in records] or [0.0]),
        "labels": voigt_labels(problem.dim),
    }
    info["converged"] = info["status"] == Status.SUCCESS
    return value, derivatives, info


# Solve records of running elastic_constants calls, keyed by a traced call token (the
# compiled program is shared between calls, so its callback cannot close over a list).
_RECORDS: dict[int, list] = {}
_TOKENS = itertools.count()


def _record(token, status, iterations, residual):
    records = _RECORDS.get(int(np.ravel(token)[0]))
    if records is not None:
        records.append((status, iterations, residual))


@functools.partial(jax.jit, static_argnums=0)
def _elastic_stage(plan, problem, x_star, theta0, nullspace, modes, precond, token):
    dim = problem.dim

    def tracked(solve_fn):
        def run(matvec, b, on_failure="ignore"):
            x, info = solve_fn(matvec, b, on_failure="ignore")
            jax.debug.callback(_record, token, info.status, info.iterations,
                               info.residual_norm)
            return x, info

        return functools.partial(custom_root, solve=run, symmetric=True, on_failure="ignore")

    implicit = tracked(plan.solver_fn(modes, precond, False))

    def base_state(theta):
        if not problem.relax_cell:
            return x_star, problem.cell0
        solve = plan.solver_fn(nullspace, precond, True)
        outer = tracked(solve)(problem.F)(lambda init, th: x_star)(None, theta)
        U = deformation(outer["eps"], dim)
        return outer["R"] @ U, problem.cell0 @ U

    def elastic(theta):
        R0, C0 = base_state(theta)
        C = relaxed_stiffness(problem, theta, R0, C0, implicit)
        return C, C

    jac, value = jax.jacfwd(elastic, has_aux=True)(theta0)
    return value, jac
