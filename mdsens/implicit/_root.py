r"""Implicit differentiation of root and fixed-point solvers.

The invariant is an optimality condition :math:`F(x^\star(\theta), \theta) = 0`. Differentiating
it gives the implicit function theorem

.. math::
   -\partial_1 F(x^\star, \theta)\, \partial x^\star(\theta) = \partial_2 F(x^\star, \theta),

so a tangent :math:`\dot\theta` maps to :math:`\dot x` solving
:math:`A \dot x = -\partial_2 F\,\dot\theta` with :math:`A = \partial_1 F`, and a cotangent
:math:`\bar x` maps to :math:`\bar\theta = -(\partial_2 F)^\top \lambda` with
:math:`A^\top \lambda = \bar x`.

:func:`custom_root` attaches this rule to any solver as a ``jax.custom_jvp`` whose tangent is a
``lax.custom_linear_solve``. Because that linear solve is transposable, the same rule gives
forward mode (``jvp``, ``jacfwd``), reverse mode (``vjp``, ``grad``, ``jacrev``, by
transposition, i.e. an adjoint solve with Aᵀ) and higher order (``hessian``), and composes with
``jit`` and ``vmap``. Values that ``F`` closes over are hoisted out with
``jax.closure_convert`` and differentiated like explicit arguments.

The rule takes symbolic zeros (``defjvp(..., symbolic_zeros=True)``): an argument that is not
differentiated arrives as a ``jax.custom_derivatives.SymbolicZero`` tangent and is closed over
as a constant, so :math:`\partial_2 F\,\dot\theta` is a JVP in the differentiated arguments
only. A large argument that is not differentiated (a data matrix, a neighbour table) costs
no zero tangent of its size and no product with it.

References: Blondel et al., "Efficient and Modular Implicit Differentiation", NeurIPS 2022;
Griewank & Walther, "Evaluating Derivatives" (2008), ch. 15.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.custom_derivatives import SymbolicZero
from jax.flatten_util import ravel_pytree

from ._solution import Policy, SolveInfo, check_policy
from .conditions import fixed_point
from .linsolve import get_solver

PyTree = Any
Solve = str | Callable[..., tuple[PyTree, SolveInfo]]

__all__ = ["custom_root", "custom_fixed_point", "root_jvp", "root_vjp"]


def _is_array_leaf(leaf) -> bool:
    return isinstance(leaf, (jax.Array, np.ndarray, np.generic, float, int, complex, bool))


def _is_symbolic_zero(tangent) -> bool:
    """A tangent that ``custom_jvp(symbolic_zeros=True)`` marks as not differentiated."""
    return isinstance(tangent, SymbolicZero)


def _neg(tree):
    def neg(leaf):
        if getattr(leaf, "dtype", None) == jax.dtypes.float0:
            return leaf
        return jnp.negative(leaf)

    return jax.tree.map(neg, tree)


def _linear_solver(solve: Solve, on_failure: Policy, what: str):
    solve_fn = get_solver(solve)

    def run(matvec, b):
        x, _ = solve_fn(matvec, b, on_failure=on_failure)
        return x

    run.__name__ = what
    return run


def custom_root(
    F: Callable[..., PyTree],
    solve: Solve = "gmres",
    has_aux: bool = False,
    *,
    symmetric: bool = False,
    on_failure: Policy = "raise",
):
    """Decorate ``solver(init, *args, **kwargs) -> x`` so that ``x`` is differentiated implicitly.

    Args:
      F: optimality condition ``F(x, *args, **kwargs) -> pytree like x``, zero at the solution.
        It may close over traced values; they are differentiated like explicit arguments.
      solve: linear solver for ``∂₁F u = v`` (a name from ``linsolve.SOLVERS`` or a callable
        ``(matvec, b, on_failure=...) -> (x, SolveInfo)``, e.g.
        ``functools.partial(linsolve.cg, tol=1e-12)``). Use ``"cg"`` with ``symmetric=True``
        when ``∂₁F`` is symmetric positive definite (``F`` a gradient of a strongly convex
        function).
      has_aux: the solver returns ``(x, aux)``; ``aux`` gets a zero derivative.
      symmetric: ``∂₁F`` is symmetric, so the transposed solve reuses ``solve`` on ``∂₁F``.
        This is trusted, not checked: on a nonsymmetric ``∂₁F`` reverse-mode derivatives
        would be wrong (forward mode is unaffected).
      on_failure: policy for a failed derivative solve (see :mod:`mdsens.implicit.linsolve`).

    Returns:
      A decorator. The decorated solver has the same signature; ``init`` gets no derivative;
      derivatives with respect to ``args``/``kwargs`` (array leaves) follow
      ``−∂₁F ∂x* = ∂₂F`` in forward and reverse mode, under ``jit``/``vmap``, to any order.
      Array leaves that are not differentiated enter ``∂₂F θ̇`` as constants (no zero
      tangent is formed for them). Non-array leaves of ``args``/``kwargs`` (strings,
      callables, None) are static.
    """
    check_policy(on_failure)
    get_solver(solve)  # validate early

    def decorator(solver: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(solver)
        def wrapped(init, *args, **kwargs):
            return _solve_implicit(
                solver, F, init, args, kwargs, solve=solve, has_aux=has_aux,
                symmetric=symmetric, on_failure=on_failure,
            )

        return wrapped

    return decorator


def custom_fixed_point(
    T: Callable[..., PyTree],
    solve: Solve = "gmres",
    has_aux: bool = False,
    *,
    symmetric: bool = False,
    on_failure: Policy = "raise",
):
    """:func:`custom_root` for solvers of ``x = T(x, *args)``, with ``F(x) = T(x) − x``."""
    return custom_root(
        fixed_point(T), solve, has_aux, symmetric=symmetric, on_failure=on_failure
    )


def _solve_implicit(solver, F, init, args, kwargs, *, solve, has_aux, symmetric, on_failure):
    leaves, treedef = jax.tree.flatten((args, kwargs))
    is_array = [_is_array_leaf(leaf) for leaf in leaves]
    dyn = [leaf for leaf, a in zip(leaves, is_array) if a]

    def rebuild(dyn_leaves):
        it = iter(dyn_leaves)
        merged = [next(it) if a else leaf for leaf, a in zip(leaves, is_array)]
        return jax.tree.unflatten(treedef, merged)

    def run_solver(init, dyn_leaves):
        a, kw = rebuild(dyn_leaves)
        return solver(init, *a, **kw)

    def F_dyn(x, dyn_leaves):
        a, kw = rebuild(dyn_leaves)
        return F(x, *a, **kw)

    init = lax.stop_gradient(init)
    # The solver may close over traced values (they get no derivative: derivatives come from
    # F alone); hoisting them into explicit arguments keeps them out of the custom_jvp closure.
    solver_closed, solver_consts = jax.closure_convert(run_solver, init, dyn)
    out_shape = jax.eval_shape(solver_closed, init, dyn, *solver_consts)
    x_shape = out_shape[0] if has_aux else out_shape
    x_example = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), x_shape)
    F_closed, consts = jax.closure_convert(F_dyn, x_example, dyn)

    solve_arrays, solve_with = _split_solve(solve)

    @jax.custom_jvp
    def implicit(init, dyn_leaves, consts, solver_consts, solve_consts):
        del consts, solve_consts
        return solver_closed(init, dyn_leaves, *solver_consts)

    def implicit_jvp(primals, tangents):
        init, dyn_leaves, consts, solver_consts, solve_consts = primals
        _, dyn_dot, consts_dot, _, _ = tangents
        forward = _linear_solver(solve_with(solve_consts), on_failure, "implicit_jvp_solve")
        # Calling the custom_jvp function itself (not the raw solver) keeps the primal
        # differentiable by the same rule under outer transformations: higher-order
        # derivatives never differentiate through the solver's iterations.
        out = implicit(init, dyn_leaves, consts, solver_consts, solve_consts)
        x = out[0] if has_aux else out
        aux_dot = (jax.tree.map(SymbolicZero.from_primal_value, out[1]),) if has_aux else ()
        theta = [*dyn_leaves, *consts]
        theta_dot = [*dyn_dot, *consts_dot]
        # Symbolic zeros: parameters that are not differentiated (tangent SymbolicZero) are
        # closed over as constants, so ∂₂F θ̇ never touches them (no dense zero tangent).
        live = [i for i, t in enumerate(theta_dot) if not _is_symbolic_zero(t)]
        if not live:  # only init / solver constants were perturbed: they get no derivative
            return out, (jax.tree.map(SymbolicZero.from_primal_value, x), *aux_dot)
        n_dyn = len(dyn_leaves)

        def F_live(*live_values):
            values = list(theta)
            for i, value in zip(live, live_values):
                values[i] = value
            return F_closed(x, values[:n_dyn], *values[n_dyn:])

        _, F_theta_dot = jax.jvp(
            F_live, tuple(theta[i] for i in live), tuple(theta_dot[i] for i in live)
        )
        _, A = jax.linearize(lambda u: F_closed(u, dyn_leaves, *consts), x)
        # The solve runs on one flat vector: custom_linear_solve cannot transpose a pytree
        # right-hand side some of whose leaves do not depend on the differentiated input.
        b_flat, _ = ravel_pytree(_neg(F_theta_dot))
        _, unravel_x = ravel_pytree(x)
        A_flat = lambda v: ravel_pytree(A(unravel_x(v)))[0]  # noqa: E731
        x_dot = unravel_x(lax.custom_linear_solve(
            A_flat, b_flat, solve=forward,
            transpose_solve=None if symmetric else forward, symmetric=symmetric,
        ))
        return out, ((x_dot, *aux_dot) if has_aux else x_dot)

    implicit.defjvp(implicit_jvp, symbolic_zeros=True)

    return implicit(init, dyn, list(consts), [lax.stop_gradient(c) for c in solver_consts],
                    [lax.stop_gradient(c) for c in solve_arrays])


def _split_solve(solve):
    """``(arrays, rebuild)``: the array arguments bound in a ``functools.partial`` solver
    (a null-space basis, a tolerance) and ``rebuild(arrays) -> solver``.

    They travel as explicit (non-differentiated) arguments of the rule: a value traced in a
    caller's ``jit`` and closed over by the rule would be a stale tracer when that jitted
    function is differentiated from outside. Other callables are used as they are (their
    closures must not hold such values)."""
    if not isinstance(solve, functools.partial):
        return [], lambda arrays: solve
    leaves, treedef = jax.tree.flatten((solve.args, solve.keywords))
    is_array = [isinstance(leaf, jax.Array) for leaf in leaves]

    def rebuild(arrays):
        it = iter(arrays)
        merged = [next(it) if a else leaf for leaf, a in zip(leaves, is_array)]
        args, keywords = jax.tree.unflatten(treedef, merged)
        return functools.partial(solve.func, *args, **keywords)

    return [leaf for leaf, a in zip(leaves, is_array) if a], rebuild


def root_jvp(
    F: Callable[..., PyTree],
    x: PyTree,
    args: tuple,
    tangents: tuple,
    solve: Solve = "gmres",
    *,
    on_failure: Policy = "raise",
    operator: Callable[..., Callable[[PyTree], PyTree]] | None = None,
    **solve_options,
) -> tuple[PyTree, SolveInfo]:
    """Forward-mode derivative of a root: ``ẋ`` solving ``∂₁F(x, θ) ẋ = −∂₂F(x, θ) θ̇``.

    Args:
      F: optimality condition ``F(x, *args)``.
      x: the root (``F(x, *args) ≈ 0``), any pytree.
      args: the parameters θ as a tuple; ``tangents``: a tuple of the same structure.
      solve: linear solver name or callable; ``solve_options`` go to it (``tol``,
        ``nullspace``, ``M``, ...).
      operator: optional ``operator(x, *args) -> matvec``, the product with ``∂₁F`` computed
        another way (e.g. an assembled sparse Hessian, cheaper than linearising ``F``); it
        must equal ``∂₁F``. Default: ``jax.linearize`` of ``F``.

    Returns:
      ``(ẋ, SolveInfo)`` with ``ẋ`` shaped like ``x``.
    """
    solve_fn = get_solver(solve)
    if operator is not None:
        A = operator(x, *args)
    else:
        _, A = jax.linearize(lambda u: F(u, *args), x)
    _, F_theta_dot = jax.jvp(lambda *a: F(x, *a), tuple(args), tuple(tangents))
    return solve_fn(A, _neg(F_theta_dot), on_failure=on_failure, **solve_options)


def root_vjp(
    F: Callable[..., PyTree],
    x: PyTree,
    args: tuple,
    cotangent: PyTree,
    solve: Solve = "gmres",
    *,
    on_failure: Policy = "raise",
    operator: Callable[..., Callable[[PyTree], PyTree]] | None = None,
    **solve_options,
) -> tuple[tuple, SolveInfo]:
    """Reverse-mode derivative of a root: ``θ̄ = −(∂₂F)ᵀ λ`` with ``(∂₁F)ᵀ λ = x̄``.

    Args:
      F: optimality condition ``F(x, *args)``.
      x: the root, any pytree; ``cotangent`` x̄ has the same structure.
      args: the parameters θ as a tuple.
      operator: optional ``operator(x, *args) -> matvec`` with ``(∂₁F)ᵀ`` (for a symmetric
        ``∂₁F``, e.g. a Hessian, the product with ``∂₁F`` itself); default: ``jax.vjp``
        of ``F``.

    Returns:
      ``(θ̄, SolveInfo)`` with ``θ̄`` a tuple shaped like ``args``.
    """
    solve_fn = get_solver(solve)
    if operator is not None:
        AT = operator(x, *args)
    else:
        _, vjp_x = jax.vjp(lambda u: F(u, *args), x)
        AT = lambda v: vjp_x(v)[0]  # noqa: E731
    lam, info = solve_fn(AT, cotangent, on_failure=on_failure, **solve_options)
    _, vjp_args = jax.vjp(lambda *a: F(x, *a), *args)
    return _neg(vjp_args(lam)), info
