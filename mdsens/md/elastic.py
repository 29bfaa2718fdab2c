r"""Relaxed elastic constants as a derivative through the relaxation.

:math:`C = d\sigma_\text{Voigt}/d\eta` at fixed cell: the affine (Born) term minus the
non-affine relaxation :math:`\Xi^\top H^+ \Xi`, obtained by wrapping the known root with
:func:`mdsens.implicit.custom_root` so that ``C`` (a first derivative) and ``dC/dθ`` (a second
derivative) both come from the implicit rule.

Derivatives with respect to many parameters (e.g. every knot of an EAM table: hundreds) are
taken in reverse mode: each of the m = d(d+1)/2 columns :math:`C e_j` is linearised once
(one tangent through the relaxation) and its m entries are pulled back one after another
(``lax.map``), so memory holds one column's linearisation and one cotangent, and each
pull-back costs one adjoint solve per root (the fixed-cell one and, with ``relax_cell``, the
cell-relaxation one). Forward mode (all parameter tangents at once, ``jacfwd``) is used for
at most m parameter components, where it is cheaper; it holds m tangents per parameter
component and so does not scale to tables.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np

from ..implicit import Status
from .root_problem import ParamSpec, RootProblem, SolverPlan, implicit_root
from .strain import deformation, n_voigt, stress_to_voigt, voigt_labels


def stress_response(problem: RootProblem, theta, R0, C0, solve, on_failure="ignore"):
    r"""``η ↦ σ_Voigt(η)``: the Voigt stress (eV/Å^d, shape ``(d(d+1)/2,)``) of the cell
    ``C0 (I + η)`` with the positions relaxed at that cell, around the relaxed positions
    ``R0`` (N, d) of ``C0``, for an applied Voigt strain ``η`` (d(d+1)/2,); a JAX function
    of ``η`` and of the parameters ``theta`` (differentiable again).

    The fixed-cell root problem of ``problem`` in the strain ``η`` of ``C0`` is wrapped
    around its known root ``R0`` by :func:`~mdsens.md.root_problem.implicit_root` (``solve``:
    a linear solver that projects out the translations; ``on_failure`` its policy), so a
    derivative in ``η`` goes through the relaxation of the positions. A strain already in
    ``theta`` (``wrt="strain"``) is added to ``η``.
    """
    strain = ParamSpec("__strain__", "strain")
    fixed = dataclasses.replace(
        problem, relax_cell=False, cell0=C0,
        specs=(*(s for s in problem.specs if s.kind in ("param", "pair", "user")), strain),
    )
    keys = [s.name for s in fixed.specs if s.kind != "strain"]
    applied = problem.strain(theta)

    def stress_of(eta):
        th = {k: theta[k] for k in keys}
        th["__strain__"] = eta + applied
        x = implicit_root(fixed, R0, th, solve, on_failure)  # R0: the known root
        Rc, Cc, params = fixed.configuration(x, th)
        return stress_to_voigt(problem.model.stress(Rc, Cc, params, problem.nbrs))

    return stress_of


def relaxed_stiffness(problem: RootProblem, theta, R0, C0, solve, on_failure="ignore"):
    r"""``C = dσ_Voigt/dη`` (d(d+1)/2 × d(d+1)/2, eV/Å^d) at the cell ``C0`` with relaxed
    positions ``R0``, as a JAX function of the parameters ``theta`` (differentiable again):
    the Jacobian of :func:`stress_response` at ``η = 0``, all columns at once (forward
    mode, d(d+1)/2 tangents)."""
    stress_of = stress_response(problem, theta, R0, C0, solve, on_failure)
    return jax.jacfwd(stress_of)(jnp.zeros((n_voigt(problem.dim),), R0.dtype))


def stiffness_column(problem: RootProblem, theta, R0, C0, solve, e):
    r"""One column ``C e = (dσ_Voigt/dη) e`` (d(d+1)/2,) of :func:`relaxed_stiffness` for a
    strain direction ``e`` (d(d+1)/2,): one tangent through the relaxation instead of
    d(d+1)/2, so that a reverse-mode derivative of it carries one adjoint solve."""
    stress_of = stress_response(problem, theta, R0, C0, solve)
    return jax.jvp(stress_of, (jnp.zeros_like(e),), (e,))[1]


def elastic_constants(problem: RootProblem, x_star, theta0, plan: SolverPlan, nullspace,
                      modes, precond=None, mode: str = "auto"):
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
        ``precond`` — :func:`~mdsens.md.root_problem.preconditioner_data` or None.
      mode: ``"forward"`` (``jacfwd`` over every parameter component at once: memory grows
        with their number), ``"reverse"`` (m² pull-backs one at a time, m = d(d+1)/2:
        memory independent of the number of parameters) or ``"auto"``: forward for at most
        m parameter components, else reverse (module doc). The mode used is
        ``info["mode"]``.

    Each solve's status is recorded host-side (returned in the info dict). The computation
    is one compiled program, cached on (plan, model, parameter layout).
    """
    mode = _choose_mode(mode, theta0, problem.dim)
    token = next(_TOKENS)
    _RECORDS[token] = []
    try:
        value, jac = _elastic_stage(plan, mode, problem, x_star, theta0, nullspace, modes,
                                    precond, jnp.int32(token))
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
        "mode": mode,
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


@functools.partial(jax.jit, static_argnums=(0, 1))
def _elastic_stage(plan, mode, problem, x_star, theta0, nullspace, modes, precond, token):
    """``(C, {name: dC/dθ_name})``, C (m, m) and each derivative (m, m, *θ_name.shape),
    m = d(d+1)/2, in ``mode`` ``"forward"`` or ``"reverse"`` (see :func:`elastic_constants`)."""
    dim = problem.dim

    def recorded(solve_fn):
        def run(matvec, b, on_failure="ignore"):
            x, info = solve_fn(matvec, b, on_failure="ignore")
            jax.debug.callback(_record, token, info.status, info.iterations,
                               info.residual_norm)
            return x, info

        return run

    fixed_solve = recorded(plan.solver_fn(modes, precond, False))

    def base_state(theta):
        if not problem.relax_cell:
            return x_star, problem.cell0
        solve = recorded(plan.solver_fn(nullspace, precond, True))
        outer = implicit_root(problem, x_star, theta, solve)
        U = deformation(outer["eps"], dim)
        return outer["R"] @ U, problem.cell0 @ U

    if mode == "forward":
        def elastic(theta):
            R0, C0 = base_state(theta)
            C = relaxed_stiffness(problem, theta, R0, C0, fixed_solve)
            return C, C

        jac, value = jax.jacfwd(elastic, has_aux=True)(theta0)
        return value, jac

    def column(theta, e):
        R0, C0 = base_state(theta)
        return stiffness_column(problem, theta, R0, C0, fixed_solve, e)

    eye = jnp.eye(n_voigt(dim), dtype=jax.tree.leaves(x_star)[0].dtype)

    def column_and_gradients(e):
        # C e_j (m,) and dC_ij/dθ for i = 1..m: one linearisation, m pull-backs in sequence
        col, pullback = jax.vjp(lambda t: column(t, e), theta0)
        return col, jax.lax.map(lambda w: pullback(w)[0], eye)

    cols, grads = jax.lax.map(column_and_gradients, eye)  # cols[j, i] = C_ij
    return cols.T, {k: jnp.swapaxes(g, 0, 1) for k, g in grads.items()}


def _choose_mode(mode: str, theta0, dim: int) -> str:
    """``mode`` resolved: ``"auto"`` is forward for at most d(d+1)/2 parameter components
    (all tangents at once is then about as cheap as d(d+1)/2 columns of pull-backs), else
    reverse."""
    if mode not in ("auto", "forward", "reverse"):
        raise ValueError(f"mode must be 'auto', 'forward' or 'reverse', got {mode!r}")
    if mode != "auto":
        return mode
    n_in = sum(int(np.size(v)) for v in jax.tree.leaves(theta0))
    return "forward" if n_in <= n_voigt(dim) else "reverse"
