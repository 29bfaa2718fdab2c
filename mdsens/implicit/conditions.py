"""Optimality conditions ("optimality maps") for implicit differentiation.

Each builder returns a map ``F(x, *theta)`` whose root ``F(x*(theta), theta) = 0`` characterises
the output ``x*(theta)`` of a solver (Blondel et al. 2022, "Efficient and Modular Implicit
Differentiation", Table 1). ``F`` returns a pytree with the structure of ``x`` and is meant for
:func:`mdsens.implicit.custom_root`::

    F = proximal_gradient(f, prox_lasso, step=eta)

    @custom_root(F, solve=linsolve.lu)
    def solver(init, theta_f, lam):
        ...                      # any algorithm returning a root of F(., theta_f, lam)

The implicit function theorem then gives ``dx*/dtheta = -(d_x F)^{-1} d_theta F``. Maps built
from a prox or a projection (and ``kkt`` in complementarity form) have a nonsymmetric Jacobian
``d_x F``: pass a general solver (``lu``, ``gmres``, ``bicgstab``) as ``solve=``.

Keyword arguments of ``F`` are forwarded unchanged to the user functions (``f``, ``T``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from .projections import kl_projection_simplex

__all__ = [
    "fixed_point",
    "kkt",
    "kl_projection_simplex",
    "mirror_descent",
    "projected_gradient",
    "proximal_gradient",
    "stationarity",
]

PyTree = Any
OptimalityFn = Callable[..., PyTree]


def _tree_sub(a: PyTree, b: PyTree) -> PyTree:
    """Leafwise ``a - b``."""
    return jax.tree.map(lambda u, v: u - v, a, b)


def _tree_axpy(alpha: Any, a: PyTree, b: PyTree) -> PyTree:
    """Leafwise ``alpha * a + b``."""
    return jax.tree.map(lambda u, v: alpha * u + v, a, b)


def _tree_vdot(a: PyTree, b: PyTree) -> jax.Array:
    """Euclidean inner product ``sum_leaves sum(a * b)`` of two pytrees of equal structure."""
    parts = jax.tree.leaves(jax.tree.map(lambda u, v: jnp.sum(u * v), a, b))
    return sum(parts, start=jnp.zeros((), jnp.result_type(*parts)))


def stationarity(f: Callable[..., jax.Array]) -> OptimalityFn:
    """Stationarity of a smooth unconstrained problem ``x* = argmin_x f(x, *theta)``.

    ``F(x, *theta, **kw) = grad_x f(x, *theta, **kw)``; a root is a stationary point of
    ``f(., *theta)`` (the minimiser when ``f`` is convex). ``d_x F`` is the Hessian of ``f``,
    which is symmetric (use ``cg`` when it is positive definite).

    Args:
      f: scalar objective ``f(x, *theta, **kw)``, ``x`` a pytree.

    Returns:
      ``F`` with the signature of ``f``, returning a pytree like ``x``.
    """
    grad_f = jax.grad(f, argnums=0)

    def optimality_fun(x: PyTree, *theta: Any, **kwargs: Any) -> PyTree:
        return grad_f(x, *theta, **kwargs)

    return optimality_fun


def fixed_point(T: Callable[..., PyTree]) -> OptimalityFn:
    """Fixed-point condition ``x* = T(x*, *theta)``.

    ``F(x, *theta, **kw) = T(x, *theta, **kw) - x``; a root is a fixed point of ``T(., *theta)``.
    ``d_x F = d_x T - I``, nonsingular when ``T`` is a contraction.

    Args:
      T: map ``T(x, *theta, **kw)`` returning a pytree like ``x``.

    Returns:
      ``F`` with the signature of ``T``.
    """

    def optimality_fun(x: PyTree, *theta: Any, **kwargs: Any) -> PyTree:
        return _tree_sub(T(x, *theta, **kwargs), x)

    return optimality_fun


def proximal_gradient(
    f: Callable[..., jax.Array],
    prox: Callable[..., PyTree],
    step: float | jax.Array = 1.0,
) -> OptimalityFn:
    """Proximal-gradient fixed point of a composite problem ``min_x f(x, theta_f) + g(x, theta_g)``.

    ``F(x, theta_f, theta_g) = prox(x - step * grad_x f(x, theta_f), theta_g, step) - x``,
    where ``prox(v, theta_g, s) = argmin_y 1/2 ||y - v||^2 + s * g(y, theta_g)`` (see
    :mod:`mdsens.implicit.prox`). For convex ``f`` and ``g`` and any ``step > 0``, the roots of
    ``F`` are exactly the minimisers of ``f + g``. Both thetas are single arguments (pack several
    parameters into a tuple); ``theta_g`` may be ``None`` for a prox without hyperparameters.

    Args:
      f: smooth scalar objective ``f(x, theta_f, **kw)``.
      prox: proximal operator ``prox(x, theta_g, scaling)`` of ``g``.
      step: step size ``> 0`` (e.g. ``1 / L`` with ``L`` the Lipschitz constant of
        ``grad f``); it does not change the roots, only the conditioning of ``d_x F``.

    Returns:
      ``F(x, theta_f, theta_g=None, **kw)`` returning a pytree like ``x``.
    """
    grad_f = jax.grad(f, argnums=0)

    def optimality_fun(x: PyTree, theta_f: Any, theta_g: Any = None, **kwargs: Any) -> PyTree:
        y = _tree_axpy(-step, grad_f(x, theta_f, **kwargs), x)
        return _tree_sub(prox(y, theta_g, step), x)

    return optimality_fun


def projected_gradient(
    f: Callable[..., jax.Array],
    projection: Callable[..., PyTree],
    step: float | jax.Array = 1.0,
) -> OptimalityFn:
    """Projected-gradient fixed point of ``min_{x in C(theta_proj)} f(x, theta_f)``.

    ``F(x, theta_f, theta_proj) = projection(x - step * grad_x f(x, theta_f), theta_proj) - x``,
    with ``projection(v, theta_proj) = argmin_{y in C(theta_proj)} ||y - v||^2`` (see
    :mod:`mdsens.implicit.projections`). For convex ``f`` and a convex set ``C`` and any
    ``step > 0``, the roots of ``F`` are exactly the minimisers of ``f`` over ``C``.

    Args:
      f: smooth scalar objective ``f(x, theta_f, **kw)``.
      projection: Euclidean projection ``projection(x, theta_proj)`` onto ``C``.
      step: step size ``> 0``.

    Returns:
      ``F(x, theta_f, theta_proj=None, **kw)`` returning a pytree like ``x``.
    """
    grad_f = jax.grad(f, argnums=0)

    def optimality_fun(x: PyTree, theta_f: Any, theta_proj: Any = None, **kwargs: Any) -> PyTree:
        y = _tree_axpy(-step, grad_f(x, theta_f, **kwargs), x)
        return _tree_sub(projection(y, theta_proj), x)

    return optimality_fun


def mirror_descent(
    f: Callable[..., jax.Array],
    projection: Callable[..., PyTree],
    mapping: Callable[[PyTree], PyTree],
    step: float | jax.Array = 1.0,
) -> OptimalityFn:
    """Mirror-descent fixed point of ``min_{x in C(theta_proj)} f(x, theta_f)``.

    ``F(x, theta_f, theta_proj) = projection(mapping(x) - step * grad_x f(x, theta_f),
    theta_proj) - x``, where ``mapping = grad phi`` is the gradient of the mirror map ``phi``
    (primal to dual coordinates) and ``projection(v, theta_proj) = argmin_{y in C} D_phi(y,
    (grad phi)^{-1}(v))`` is the Bregman projection of the dual point ``v`` onto ``C``.

    Entropic simplex case: ``phi(y) = sum_i y_i log y_i``, ``mapping = jnp.log`` (the constant
    ``+1`` of ``grad phi`` cancels) and ``projection = kl_projection_simplex`` (``s *
    softmax(v)``, ``theta_proj = s`` the simplex scale). Then ``F(x) = 0`` reads
    ``x_i = s * x_i exp(-step g_i) / sum_j x_j exp(-step g_j)`` with ``g = grad f(x)``: on
    ``x > 0`` this holds iff ``g`` is constant, the KKT condition of ``min f`` over the simplex
    at an interior point. The map (and the derivatives) are meant for solutions with ``x > 0``.

    Args:
      f: smooth scalar objective ``f(x, theta_f, **kw)``.
      projection: Bregman projection ``projection(v, theta_proj)`` from dual coordinates.
      mapping: mirror map gradient ``grad phi``, pytree to pytree like ``x``.
      step: step size ``> 0``.

    Returns:
      ``F(x, theta_f, theta_proj=None, **kw)`` returning a pytree like ``x``.
    """
    grad_f = jax.grad(f, argnums=0)

    def optimality_fun(x: PyTree, theta_f: Any, theta_proj: Any = None, **kwargs: Any) -> PyTree:
        y = _tree_axpy(-step, grad_f(x, theta_f, **kwargs), mapping(x))
        return _tree_sub(projection(y, theta_proj), x)

    return optimality_fun


def kkt(
    f: Callable[..., jax.Array],
    eq: Callable[..., PyTree] | None = None,
    ineq: Callable[..., PyTree] | None = None,
) -> OptimalityFn:
    """KKT conditions of ``min_z f(z, theta_f)  s.t.  G(z, theta_eq) = 0,  H(z, theta_ineq) <= 0``.

    The unknown is the primal-dual triple ``x = (z, nu, lam)`` (a tuple; ``nu`` has the
    structure of ``G``'s output and ``lam`` that of ``H``'s; each is ``None`` when the
    corresponding constraint is absent). With the Lagrangian
    ``L(z) = f(z, theta_f) + <nu, G(z, theta_eq)> + <lam, H(z, theta_ineq)>``::

        F((z, nu, lam), theta_f, theta_eq, theta_ineq) = (
            grad_z L(z)              = grad f + dG^T nu + dH^T lam,   # stationarity, like z
            G(z, theta_eq),                                          # primal feasibility, like nu
            lam * H(z, theta_ineq),                                  # complementary slackness
        )

    with ``None`` in place of the second / third entry when ``eq`` / ``ineq`` is absent. The
    argument order is always ``(x, theta_f, theta_eq, theta_ineq)``: ``theta_eq`` and
    ``theta_ineq`` default to ``None``, and a ``None`` (or any placeholder) must be passed for
    ``theta_eq`` when only inequalities are present. The sign conditions ``lam >= 0`` and
    ``H <= 0`` are not part of ``F``: they are the solver's job. Under strict complementarity and
    LICQ, ``d_x F`` is nonsingular (and nonsymmetric: use ``lu``/``gmres``).

    Args:
      f: scalar objective ``f(z, theta_f)``.
      eq: equality constraint ``G(z, theta_eq)`` (pytree output), or ``None``.
      ineq: inequality constraint ``H(z, theta_ineq)`` (pytree output), or ``None``.

    Returns:
      ``F(x, theta_f, theta_eq=None, theta_ineq=None)`` returning a tuple like ``x``.
    """

    def lagrangian(z: PyTree, nu: PyTree, lam: PyTree, theta_f: Any, theta_eq: Any,
                   theta_ineq: Any) -> jax.Array:
        value = f(z, theta_f)
        if eq is not None:
            value = value + _tree_vdot(nu, eq(z, theta_eq))
        if ineq is not None:
            value = value + _tree_vdot(lam, ineq(z, theta_ineq))
        return value

    grad_lagrangian = jax.grad(lagrangian, argnums=0)

    def optimality_fun(x: tuple[PyTree, PyTree, PyTree], theta_f: Any, theta_eq: Any = None,
                       theta_ineq: Any = None) -> tuple[PyTree, PyTree, PyTree]:
        z, nu, lam = x
        stat = grad_lagrangian(z, nu, lam, theta_f, theta_eq, theta_ineq)
        feas = None if eq is None else eq(z, theta_eq)
        slack = None
        if ineq is not None:
            slack = jax.tree.map(lambda m, h: m * h, lam, ineq(z, theta_ineq))
        return stat, feas, slack

    return optimality_fun
