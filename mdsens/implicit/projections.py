"""Euclidean projections onto convex sets, as pure JAX functions over pytrees.

Every ``projection_X(x, hyperparams)`` returns ``argmin_{y in C} ||y - x||^2`` for a convex set
``C`` parameterised by ``hyperparams``, where ``x`` is a pytree of arrays and ``||.||`` is the
Euclidean norm of the concatenation of all leaves. The output is a pytree with the structure,
shapes and dtypes of ``x``. Sets defined jointly over all coordinates (simplex, balls, halfspace,
affine set) treat a pytree ``x`` as the flat vector ``ravel(x)``; separable sets (box,
non-negative orthant) act leaf by leaf.

The functions are jit/vmap/grad compatible and differentiable almost everywhere in both ``x``
and the hyperparameters. They are meant to be plugged into the optimality maps of
:mod:`mdsens.implicit.conditions` (``projected_gradient``, ``mirror_descent``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

__all__ = [
    "projection_affine_set",
    "projection_box",
    "projection_halfspace",
    "projection_hyperplane",
    "projection_l1_ball",
    "projection_l2_ball",
    "projection_non_negative",
    "projection_simplex",
    "kl_projection_simplex",
]

PyTree = Any


# ----------------------------------------------------------------------------- tree helpers
def _broadcast_like(value: PyTree, x: PyTree) -> PyTree:
    """Returns ``value`` with the tree structure of ``x``.

    ``value`` is either already a pytree with the structure of ``x`` (returned unchanged) or a
    single scalar/array leaf, which is repeated for every leaf of ``x``.
    """
    if jax.tree.structure(value) == jax.tree.structure(x):
        return value
    leaves = jax.tree.leaves(value)
    if len(leaves) != 1 or jax.tree.structure(value).num_nodes != 1:
        raise ValueError("hyperparameter must be one array or a pytree with the structure of x")
    return jax.tree.map(lambda _: leaves[0], x)


def _tree_vdot(a: PyTree, b: PyTree) -> jax.Array:
    """``sum_leaves sum(a * b)``: the Euclidean inner product of two pytrees."""
    parts = jax.tree.leaves(jax.tree.map(lambda u, v: jnp.vdot(u, v), a, b))
    return sum(parts, start=jnp.zeros((), jnp.result_type(*parts)))


def _safe_norm(v: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Returns ``(||v||_2, ||v||_2 > 0)`` with a finite gradient at ``v = 0``."""
    sq = jnp.sum(v * v)
    pos = sq > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1.0)), 0.0), pos


# ----------------------------------------------------------------------------- separable sets
def projection_non_negative(x: PyTree, hyperparams: Any = None) -> PyTree:
    """Projection onto the non-negative orthant ``{y : y >= 0}``: ``y = max(x, 0)``.

    Args:
      x: pytree of arrays, any shapes.
      hyperparams: ignored (present so that every projection takes ``(x, hyperparams)``).

    Returns:
      pytree like ``x``.
    """
    del hyperparams
    return jax.tree.map(lambda v: jnp.maximum(v, 0), x)


def projection_box(x: PyTree, hyperparams: tuple[PyTree, PyTree]) -> PyTree:
    """Projection onto the box ``{y : lower <= y <= upper}``: ``y = clip(x, lower, upper)``.

    Args:
      x: pytree of arrays.
      hyperparams: ``(lower, upper)``; each is a scalar/array broadcastable against every leaf
        of ``x``, or a pytree with the structure of ``x`` whose leaves broadcast against the
        corresponding leaves. Requires ``lower <= upper`` elementwise.

    Returns:
      pytree like ``x``.
    """
    lower, upper = hyperparams
    lower = _broadcast_like(lower, x)
    upper = _broadcast_like(upper, x)
    return jax.tree.map(lambda v, lo, hi: jnp.minimum(jnp.maximum(v, lo), hi), x, lower, upper)


# ----------------------------------------------------------------------------- simplex
@jax.custom_jvp
def _projection_simplex_vec(x: jax.Array, value: jax.Array) -> jax.Array:
    """Sort-based projection of a vector ``x`` of shape (n,) onto ``{p >= 0, sum(p) = value}``."""
    n = x.shape[0]
    u = jnp.sort(x)[::-1]
    cssv = jnp.cumsum(u) - value
    ind = jnp.arange(1, n + 1, dtype=x.dtype)
    cond = u - cssv / ind > 0
    rho = jnp.max(jnp.where(cond, jnp.arange(1, n + 1), 1))
    tau = cssv[rho - 1] / rho.astype(x.dtype)
    return jnp.maximum(x - tau, 0)


@_projection_simplex_vec.defjvp
def _projection_simplex_vec_jvp(primals, tangents):
    """Closed-form JVP: with support ``S = {p > 0}``, ``dp_S = dx_S - (1^T dx_S - dvalue)/|S|``."""
    x, value = primals
    dx, dvalue = tangents
    p = _projection_simplex_vec(x, value)
    mask = (p > 0).astype(x.dtype)
    size = jnp.maximum(jnp.sum(mask), 1.0)
    dtau = (jnp.vdot(mask, dx) - dvalue) / size
    return p, mask * (dx - dtau)


def projection_simplex(x: PyTree, value: float | jax.Array = 1.0) -> PyTree:
    """Projection onto the scaled simplex ``{y : y >= 0, sum(y) = value}``.

    ``y = max(x - tau, 0)`` with ``tau`` the unique scalar such that ``sum(y) = value``, found by
    the sort-based algorithm of Held et al. (1974) / Duchi et al. (2008) in O(n log n). The sum
    runs over all coordinates of all leaves of ``x``.

    Differentiable almost everywhere, with the closed-form Jacobian on the support
    ``S = {i : y_i > 0}``: ``dy/dx = diag(1_S) - 1_S 1_S^T / |S|`` and ``dy/dvalue = 1_S / |S|``.

    Args:
      x: pytree of arrays (n coordinates in total).
      value: scale ``s > 0`` of the simplex (scalar).

    Returns:
      pytree like ``x``.
    """
    flat, unravel = ravel_pytree(x)
    value = jnp.asarray(value, dtype=flat.dtype)
    return unravel(_projection_simplex_vec(flat, value))


def kl_projection_simplex(x: PyTree, value: float | jax.Array = 1.0) -> PyTree:
    """Kullback-Leibler (Bregman) projection of ``exp(x)`` onto ``{y >= 0, sum(y) = value}``.

    ``y = argmin_{y in simplex} KL(y, exp(x)) = value * softmax(x)``, the softmax running over all
    coordinates of all leaves. This is the projection step of mirror descent with the entropic
    mirror map ``phi(y) = sum y log y`` (mapping ``grad phi = log``); see
    :func:`mdsens.implicit.conditions.mirror_descent`.

    Args:
      x: pytree of arrays (dual / log-domain coordinates).
      value: scale of the simplex (scalar).

    Returns:
      pytree like ``x``, with strictly positive entries.
    """
    flat, unravel = ravel_pytree(x)
    return unravel(jnp.asarray(value, dtype=flat.dtype) * jax.nn.softmax(flat))


# ----------------------------------------------------------------------------- balls
def projection_l1_ball(x: PyTree, max_value: float | jax.Array = 1.0) -> PyTree:
    """Projection onto the l1 ball ``{y : ||y||_1 <= r}`` with ``r = max_value``.

    ``y = x`` when ``||x||_1 <= r``, else ``y = sign(x) * projection_simplex(|x|, r)``
    (Duchi et al. 2008). The norm runs over all coordinates of all leaves.

    Args:
      x: pytree of arrays.
      max_value: radius ``r >= 0`` (scalar).

    Returns:
      pytree like ``x``.
    """
    flat, unravel = ravel_pytree(x)
    radius = jnp.asarray(max_value, dtype=flat.dtype)
    proj = jnp.sign(flat) * _projection_simplex_vec(jnp.abs(flat), radius)
    inside = jnp.sum(jnp.abs(flat)) <= radius
    return unravel(jnp.where(inside, flat, proj))


def projection_l2_ball(x: PyTree, max_value: float | jax.Array = 1.0) -> PyTree:
    """Projection onto the l2 ball ``{y : ||y||_2 <= r}`` with ``r = max_value``.

    ``y = x * min(1, r / ||x||_2)``, the norm running over all coordinates of all leaves.

    Args:
      x: pytree of arrays.
      max_value: radius ``r >= 0`` (scalar).

    Returns:
      pytree like ``x``.
    """
    flat, _ = ravel_pytree(x)
    norm, pos = _safe_norm(flat)
    radius = jnp.asarray(max_value, dtype=flat.dtype)
    outside = pos & (norm > radius)
    factor = jnp.where(outside, radius / jnp.where(outside, norm, 1.0), 1.0)
    return jax.tree.map(lambda v: (factor * v).astype(v.dtype), x)


# ----------------------------------------------------------------------------- affine sets
def projection_halfspace(x: PyTree, hyperparams: tuple[PyTree, jax.Array]) -> PyTree:
    """Projection onto the halfspace ``{y : <a, y> <= b}``.

    ``y = x - max(<a, x> - b, 0) / ||a||^2 * a``.

    Args:
      x: pytree of arrays.
      hyperparams: ``(a, b)`` with ``a`` a nonzero pytree like ``x`` and ``b`` a scalar.

    Returns:
      pytree like ``x``.
    """
    a, b = hyperparams
    scale = jnp.maximum(_tree_vdot(a, x) - b, 0) / _tree_vdot(a, a)
    return jax.tree.map(lambda v, w: v - scale * w, x, a)


def projection_hyperplane(x: PyTree, hyperparams: tuple[PyTree, jax.Array]) -> PyTree:
    """Projection onto the hyperplane ``{y : <a, y> = b}``.

    ``y = x - (<a, x> - b) / ||a||^2 * a``.

    Args:
      x: pytree of arrays.
      hyperparams: ``(a, b)`` with ``a`` a nonzero pytree like ``x`` and ``b`` a scalar.

    Returns:
      pytree like ``x``.
    """
    a, b = hyperparams
    scale = (_tree_vdot(a, x) - b) / _tree_vdot(a, a)
    return jax.tree.map(lambda v, w: v - scale * w, x, a)


def projection_affine_set(x: PyTree, hyperparams: tuple[jax.Array, jax.Array]) -> PyTree:
    """Projection onto the affine set ``{y : A y = b}``.

    ``y = x - A^+ (A x - b)`` with ``A^+`` the Moore-Penrose pseudo-inverse; for ``A`` of full
    row rank this is ``x - A^T (A A^T)^{-1} (A x - b)``. If ``A y = b`` has no solution the result
    is the projection onto the least-squares set ``{y : A^T A y = A^T b}``.

    Args:
      x: pytree of arrays with n coordinates in total (``A`` acts on ``ravel(x)``).
      hyperparams: ``(A, b)`` with ``A`` of shape (m, n) and ``b`` of shape (m,).

    Returns:
      pytree like ``x``.
    """
    mat, b = hyperparams
    flat, unravel = ravel_pytree(x)
    residual = mat @ flat - b
    return unravel(flat - jnp.linalg.pinv(mat) @ residual)
