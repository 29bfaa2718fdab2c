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
from a prox or a projection (``proximal_gradient``, ``block_proximal_gradient``, ...) and the KKT
maps in complementarity form (``kkt``, ``qp_kkt``) have a nonsymmetric Jacobian ``d_x F``: pass
a general solver (``lu``, ``gmres``, ``bicgstab``) as ``solve=``. ``newton`` has ``d_x F = -eta I``
at a root. A solver for ``qp_kkt``: :mod:`mdsens.implicit.qp`.

Keyword arguments of ``F`` are forwarded unchanged to the user functions (``f``, ``T``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from .projections import kl_projection_simplex

__all__ = [
    "block_proximal_gradient",
    "fixed_point",
    "kkt",
    "kl_projection_simplex",
    "mirror_descent",
    "newton",
    "projected_gradient",
    "proximal_gradient",
    "qp_kkt",
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


def newton(f: Callable[..., jax.Array], step: float | jax.Array = 1.0) -> OptimalityFn:
    """Newton fixed point of a smooth problem ``x* = argmin_x f(x, *theta)``.

    The Newton map ``T(x, θ) = x − η [∇²ₓf(x, θ)]⁻¹ ∇ₓf(x, θ)`` gives
    ``F(x, *θ, **kw) = T(x, *θ, **kw) − x = −η H(x, θ)⁻¹ ∇ₓf(x, θ)``, ``H = ∇²ₓf``. Where ``H``
    is nonsingular, ``F(x) = 0`` iff ``∇ₓf(x) = 0``: the roots are those of
    :func:`stationarity`. At a root the derivative of ``H⁻¹`` multiplies ``∇f = 0``, so
    ``∂₁F = −η I`` exactly and ``∂_θF = −η H⁻¹ ∂_θ∇ₓf``: the implicit derivative
    ``dx*/dθ = −H⁻¹ ∂_θ∇ₓf`` is the same as for stationarity, but ``∂₁F`` is perfectly
    conditioned (GMRES converges in one iteration; ``lu`` also works) — the Hessian solve
    happens inside ``F``.

    ``H`` is formed densely (``jax.hessian`` of ``f`` on the flattened ``x`` of ``n``
    coordinates, ``n`` Hessian-vector products) and the Newton step solved by LU: O(n³) per
    evaluation of ``F``, meant for small ``x``. ``F`` is non-finite where ``H`` is singular.

    Args:
      f: scalar objective ``f(x, *theta, **kw)``, ``x`` a pytree.
      step: ``η > 0`` (``1``: the full Newton step); it scales ``F`` and ``∂₁F``, not the roots.

    Returns:
      ``F`` with the signature of ``f``, returning a pytree like ``x``.
    """

    def optimality_fun(x: PyTree, *theta: Any, **kwargs: Any) -> PyTree:
        flat, unravel = ravel_pytree(x)

        def f_flat(v: jax.Array) -> jax.Array:
            return f(unravel(v), *theta, **kwargs)

        gradient = jax.grad(f_flat)(flat)
        hessian = jax.hessian(f_flat)(flat)
        return unravel(-step * jnp.linalg.solve(hessian, gradient))

    return optimality_fun


def _leading_size(x: PyTree) -> int:
    """The common leading-axis length of the leaves of ``x`` (the number of blocks)."""
    sizes = {jnp.shape(leaf)[0] if jnp.ndim(leaf) else None for leaf in jax.tree.leaves(x)}
    if len(sizes) != 1 or None in sizes:
        found = sorted(map(str, sizes))
        raise ValueError("block_proximal_gradient(stacked=True) needs every leaf of x to have "
                         f"the same leading (block) axis; got leading sizes {found}")
    return sizes.pop()


def block_proximal_gradient(
    f: Callable[..., jax.Array],
    prox: Callable[..., PyTree] | tuple[Callable[..., PyTree], ...],
    step: float | jax.Array | tuple[float, ...] = 1.0,
    *,
    stacked: bool = False,
) -> OptimalityFn:
    """Block proximal-gradient fixed point, the optimality map of block coordinate descent.

    For ``min_x f(x, θ_f) + Σ_j g_j(x_j, θ_g)`` with ``x = (x_1, …, x_m)`` split into blocks::

        F(x, θ_f, θ_g)_j = prox_j(x_j − η_j [∇ₓf(x, θ_f)]_j, θ_g, η_j) − x_j,   j = 1 … m,

    every block evaluated at the same ``x`` (Blondel et al. 2022, "block proximal gradient").
    Block coordinate descent updates one block at a time with exactly this map; its fixed
    points are those of ``F``. With a common step ``η_j = η`` and ``prox`` separable over the
    blocks this is :func:`proximal_gradient` with ``prox = (prox_1, …, prox_m)``, so for convex
    ``f`` and ``g_j`` and any steps ``η_j > 0`` the roots are exactly the minimisers of
    ``f + Σ g_j``. Per-block steps (e.g. ``η_j = 1/L_j`` with ``L_j`` the Lipschitz constant of
    the ``j``-th block of ``∇f``) change only the conditioning of ``∂₁F`` (nonsymmetric: use
    ``lu``/``gmres``).

    Two layouts of ``x``:

    - ``stacked=False``: ``x`` is a tuple (or list / NamedTuple) of ``m`` blocks, each any
      pytree; ``prox`` is one callable for every block or a sequence of ``m`` callables;
      ``step`` is a scalar or a sequence of ``m`` steps.
    - ``stacked=True``: every leaf of ``x`` has a leading axis of length ``m`` and block ``j`` is
      the slice ``x[j]`` of every leaf (e.g. the rows of a matrix); ``prox`` is one callable,
      applied to each block by ``jax.vmap``; ``step`` is a scalar or an array of shape ``(m,)``.

    ``prox(v, θ_g, s)`` is the proximal operator of ``s g_j`` on one block (see
    :mod:`mdsens.implicit.prox`); ``θ_g`` is passed unchanged to every block's prox (put
    block-specific hyperparameters in per-block proxes).

    Args:
      f: smooth scalar objective ``f(x, theta_f, **kw)`` of all blocks.
      prox: the block proximal operator(s).
      step: block step sizes ``η_j > 0``.
      stacked: layout of ``x`` (see above).

    Returns:
      ``F(x, theta_f, theta_g=None, **kw)`` returning a pytree like ``x``.
    """
    grad_f = jax.grad(f, argnums=0)
    if stacked and isinstance(prox, (tuple, list)):
        raise ValueError("block_proximal_gradient(stacked=True) takes one prox for all blocks")

    def stacked_fun(x: PyTree, theta_f: Any, theta_g: Any = None, **kwargs: Any) -> PyTree:
        m = _leading_size(x)
        steps = jnp.asarray(step)
        if steps.ndim not in (0, 1) or (steps.ndim == 1 and steps.shape[0] != m):
            raise ValueError(f"step must be a scalar or have shape ({m},), got {steps.shape}")
        steps = jnp.broadcast_to(steps, (m,))

        def block(xj: PyTree, gj: PyTree, sj: jax.Array) -> PyTree:
            return _tree_sub(prox(_tree_axpy(-sj, gj, xj), theta_g, sj), xj)

        return jax.vmap(block)(x, grad_f(x, theta_f, **kwargs), steps)

    def tuple_fun(x: PyTree, theta_f: Any, theta_g: Any = None, **kwargs: Any) -> PyTree:
        if not isinstance(x, (tuple, list)):
            raise TypeError("block_proximal_gradient needs x as a tuple or list of blocks "
                            f"(or stacked=True), got {type(x).__name__}")
        m = len(x)
        proxes = list(prox) if isinstance(prox, (tuple, list)) else [prox] * m
        steps = list(step) if isinstance(step, (tuple, list)) else [step] * m
        if len(proxes) != m or len(steps) != m:
            raise ValueError(f"x has {m} blocks but {len(proxes)} proxes and {len(steps)} steps")
        g = grad_f(x, theta_f, **kwargs)
        out = [_tree_sub(p(_tree_axpy(-s, gj, xj), theta_g, s), xj)
               for xj, gj, p, s in zip(x, g, proxes, steps)]
        if hasattr(x, "_make"):  # NamedTuple
            return type(x)._make(out)
        return tuple(out) if isinstance(x, tuple) else out

    return stacked_fun if stacked else tuple_fun


def qp_kkt() -> OptimalityFn:
    """KKT conditions of a convex quadratic program with equality and inequality constraints.

    ``min_z ½ zᵀQz + cᵀz  s.t.  Az = b,  Gz ≤ h`` with ``Q`` (n, n) positive semi-definite (only
    its symmetric part ``Q_s = (Q + Qᵀ)/2`` enters the objective, so a derivative with respect
    to ``Q`` is that of the objective ``½ zᵀQz``), ``c`` (n,), ``A`` (p, n), ``b`` (p,), ``G``
    (q, n), ``h`` (q,). The unknown is the primal-dual triple ``x = (z, ν, λ)`` with ``ν``
    (p,) and ``λ`` (q,) the multipliers::

        F((z, ν, λ), Q, c, A, b, G, h) = (
            Q_s z + c + Aᵀν + Gᵀλ,       # stationarity of the Lagrangian, shape (n,)
            A z − b,                     # primal feasibility, shape (p,)
            λ ⊙ (G z − h),               # complementary slackness, shape (q,)
        )

    Pass ``A = b = None`` (and ``ν = None``) without equalities, ``G = h = None`` (and
    ``λ = None``) without inequalities; the corresponding entry of ``F`` is then ``None``.
    The signs ``λ ≥ 0``, ``Gz ≤ h`` are the solver's job (e.g.
    :func:`mdsens.implicit.qp.solve_qp`). Under strict complementarity (``λ_i > 0`` on every
    active constraint), linearly independent active constraints and ``Q_s`` positive definite
    on their null space, ``∂₁F`` is nonsingular and nonsymmetric (use ``lu``/``gmres``); the
    implicit derivative is then that of the equality-constrained problem on the active set.

    Returns:
      ``F(x, Q, c, A=None, b=None, G=None, h=None)`` returning a tuple like ``x``.
    """

    def optimality_fun(x: tuple[jax.Array, Any, Any], Q: jax.Array, c: jax.Array,
                       A: jax.Array | None = None, b: jax.Array | None = None,
                       G: jax.Array | None = None, h: jax.Array | None = None
                       ) -> tuple[jax.Array, Any, Any]:
        z, nu, lam = x
        if (A is None) != (b is None) or (A is None) != (nu is None):
            raise ValueError("qp_kkt: A, b and nu must be all given or all None")
        if (G is None) != (h is None) or (G is None) != (lam is None):
            raise ValueError("qp_kkt: G, h and lam must be all given or all None")
        stat = 0.5 * (Q @ z + Q.T @ z) + c
        feas = slack = None
        if A is not None:
            stat = stat + A.T @ nu
            feas = A @ z - b
        if G is not None:
            stat = stat + G.T @ lam
            slack = lam * (G @ z - h)
        return stat, feas, slack

    return optimality_fun
