r"""Relaxed elastic constants as a derivative through the relaxation.

:math:`C = d\sigma_\text{Voigt}/d\eta` at fixed cell: the affine (Born) term minus the
non-affine relaxation :math:`\Xi^\top H^+ \Xi`, obtained by wrapping the known root with
:func:`mdsens.implicit.custom_root` so that ``C`` (a first derivative) and ``dC/dθ`` (a second
derivative) both come from the implicit rule.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from ..implicit import Status, custom_root
from ._problem import ParamSpec, RootProblem
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


def elastic_constants(problem: RootProblem, x_star, theta0, solve, solve_fixed):
    r"""Relaxed elastic constants :math:`C = d\sigma_\text{Voigt}/d\eta` at fixed cell and
    their derivatives with respect to the requested parameters.

    A fixed-cell root problem in the strain of the relaxed cell is wrapped with
    :func:`mdsens.implicit.custom_root` around the known root, so both ``C`` (a first
    derivative) and ``dC/dθ`` (a second derivative) come from the implicit rule. With
    ``relax_cell`` the relaxed positions and cell depend on θ through the cell-relaxation
    root, which is included the same way. Each solve's status is recorded host-side.
    """
    dim = problem.dim
    records: list[tuple] = []

    def tracked(solve_fn):
        def run(matvec, b, on_failure="ignore"):
            x, info = solve_fn(matvec, b, on_failure="ignore")
            jax.debug.callback(lambda *a: records.append(a), info.status, info.iterations,
                               info.residual_norm)
            return x, info

        return functools.partial(custom_root, solve=run, symmetric=True, on_failure="ignore")

    implicit = tracked(solve_fixed)

    def base_state(theta):
        if not problem.relax_cell:
            return x_star, problem.cell0
        outer = tracked(solve)(problem.F)(lambda init, th: x_star)(None, theta)
        U = deformation(outer["eps"], dim)
        return outer["R"] @ U, problem.cell0 @ U

    def elastic(theta):
        R0, C0 = base_state(theta)
        return relaxed_stiffness(problem, theta, R0, C0, implicit)

    value = np.asarray(jax.jit(elastic)(theta0))
    jac = jax.jit(jax.jacfwd(elastic))(theta0)
    jax.effects_barrier()
    derivatives = {k: np.asarray(v) for k, v in jac.items()}
    info = {
        "status": np.array([int(np.max(r[0])) for r in records] or [0]),
        "iterations": np.array([int(np.max(r[1])) for r in records] or [0]),
        "residual_norm": np.array([float(np.max(r[2])) for r in records] or [0.0]),
        "labels": voigt_labels(dim),
    }
    info["converged"] = info["status"] == Status.SUCCESS
    return value, derivatives, info
