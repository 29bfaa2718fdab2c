"""Proximal operators, as pure JAX functions over pytrees.

Every ``prox_X(x, hyperparams, scaling=1.0)`` returns

    prox_{s g}(x) = argmin_y  1/2 ||y - x||^2 + s * g(y, hyperparams),      s = scaling > 0,

for a convex function ``g`` documented on each operator. ``x`` is a pytree of arrays and the
output is a pytree with the structure, shapes and dtypes of ``x``. Regularisation strengths
(``lam``, ``gamma``) are scalars or, for separable ``g``, pytrees like ``x`` (elementwise
weights). The signature ``prox(x, hyperparams, scaling)`` is the one expected by
:func:`mdsens.implicit.conditions.proximal_gradient`, which passes the step size as ``scaling``.

All operators are jit/vmap/grad compatible and differentiable almost everywhere in ``x``,
``hyperparams`` and ``scaling``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from mdsens.implicit.projections import _broadcast_like, _safe_norm

__all__ = [
    "make_prox_from_projection",
    "prox_block_group_lasso",
    "prox_elastic_net",
    "prox_group_lasso",
    "prox_lasso",
    "prox_non_negative_lasso",
    "prox_none",
    "prox_ridge",
]

PyTree = Any


def prox_none(x: PyTree, hyperparams: Any = None, scaling: float | jax.Array = 1.0) -> PyTree:
    """Proximal operator of ``g = 0``: the identity, ``prox(x) = x``.

    With it, :func:`~mdsens.implicit.conditions.proximal_gradient` reduces to the (scaled)
    stationarity condition ``-step * grad f(x) = 0``.
    """
    del hyperparams, scaling
    return x


def _soft_threshold(v: jax.Array, t: jax.Array) -> jax.Array:
    """Elementwise soft-thresholding ``sign(v) * max(|v| - t, 0)``."""
    return jnp.sign(v) * jnp.maximum(jnp.abs(v) - t, 0)


def prox_lasso(x: PyTree, hyperparams: PyTree = 1.0, scaling: float | jax.Array = 1.0) -> PyTree:
    """Proximal operator of ``g(y) = lam * ||y||_1`` (soft-thresholding).

    ``g(y) = sum_i lam_i |y_i|`` and ``prox_{s g}(x) = sign(x) * max(|x| - s * lam, 0)``.

    Args:
      x: pytree of arrays.
      hyperparams: ``lam >= 0``, a scalar or a pytree like ``x`` of elementwise weights.
      scaling: ``s > 0``.

    Returns:
      pytree like ``x``.
    """
    lam = _broadcast_like(hyperparams, x)
    return jax.tree.map(lambda v, w: _soft_threshold(v, scaling * w), x, lam)


def prox_non_negative_lasso(
    x: PyTree, hyperparams: PyTree = 1.0, scaling: float | jax.Array = 1.0
) -> PyTree:
    """Proximal operator of ``g(y) = lam * ||y||_1 + indicator(y >= 0)``.

    On the non-negative orthant ``||y||_1 = sum(y)``, so ``g(y) = sum_i lam_i y_i`` for
    ``y >= 0`` (``+inf`` otherwise) and ``prox_{s g}(x) = max(x - s * lam, 0)``.

    Args:
      x: pytree of arrays.
      hyperparams: ``lam``, a scalar or a pytree like ``x``.
      scaling: ``s > 0``.

    Returns:
      pytree like ``x``.
    """
    lam = _broadcast_like(hyperparams, x)
    return jax.tree.map(lambda v, w: jnp.maximum(v - scaling * w, 0), x, lam)


def prox_elastic_net(
    x: PyTree, hyperparams: tuple[PyTree, PyTree] = (1.0, 1.0), scaling: float | jax.Array = 1.0
) -> PyTree:
    """Proximal operator of ``g(y) = lam * (||y||_1 + gamma / 2 * ||y||_2^2)``.

    ``g(y) = sum_i lam_i (|y_i| + gamma_i / 2 * y_i^2)`` and
    ``prox_{s g}(x) = soft_threshold(x, s * lam) / (1 + s * lam * gamma)``.

    Args:
      x: pytree of arrays.
      hyperparams: ``(lam, gamma)`` with ``lam >= 0``, ``gamma >= 0``; each a scalar or a pytree
        like ``x``.
      scaling: ``s > 0``.

    Returns:
      pytree like ``x``.
    """
    lam, gamma = hyperparams
    lam = _broadcast_like(lam, x)
    gamma = _broadcast_like(gamma, x)

    def _leaf(v: jax.Array, w: jax.Array, g: jax.Array) -> jax.Array:
        return _soft_threshold(v, scaling * w) / (1 + scaling * w * g)

    return jax.tree.map(_leaf, x, lam, gamma)


def prox_ridge(x: PyTree, hyperparams: PyTree = 1.0, scaling: float | jax.Array = 1.0) -> PyTree:
    """Proximal operator of ``g(y) = lam / 2 * ||y||_2^2``.

    ``g(y) = sum_i lam_i / 2 * y_i^2`` and ``prox_{s g}(x) = x / (1 + s * lam)``.

    Args:
      x: pytree of arrays.
      hyperparams: ``lam >= 0``, a scalar or a pytree like ``x``.
      scaling: ``s > 0``.

    Returns:
      pytree like ``x``.
    """
    lam = _broadcast_like(hyperparams, x)
    return jax.tree.map(lambda v, w: v / (1 + scaling * w), x, lam)


def prox_group_lasso(
    x: PyTree, hyperparams: float | jax.Array = 1.0, scaling: float | jax.Array = 1.0
) -> PyTree:
    """Proximal operator of ``g(y) = lam * ||y||_2`` for a single group (block soft-thresholding).

    ``||y||_2`` is the (unsquared) Euclidean norm over all coordinates of all leaves, and
    ``prox_{s g}(x) = max(0, 1 - s * lam / ||x||_2) * x`` (``0`` when ``x = 0``).

    Args:
      x: pytree of arrays.
      hyperparams: ``lam >= 0`` (scalar).
      scaling: ``s > 0``.

    Returns:
      pytree like ``x``.
    """
    flat, _ = ravel_pytree(x)
    norm, pos = _safe_norm(flat)
    factor = jnp.where(pos, jnp.maximum(0, 1 - scaling * hyperparams / jnp.where(pos, norm, 1)), 0)
    return jax.tree.map(lambda v: (factor * v).astype(v.dtype), x)


def _block_group_lasso_leaf(v: jax.Array, lam: jax.Array, scaling: jax.Array) -> jax.Array:
    """Row-wise block soft-thresholding of an array of shape (G, ...)."""
    return jax.vmap(lambda row, w: prox_group_lasso(row, w, scaling))(v, lam)


def prox_block_group_lasso(
    x: PyTree, hyperparams: PyTree = 1.0, scaling: float | jax.Array = 1.0
) -> PyTree:
    """Proximal operator of ``g(y) = sum_k lam_k * ||y[k]||_2``, groups along the leading axis.

    For each leaf of shape (G, ...), the groups are the G slices ``y[k]`` (e.g. the rows of a
    matrix), and ``prox_{s g}(x)[k] = max(0, 1 - s * lam_k / ||x[k]||_2) * x[k]``. Different
    leaves are different sets of groups (``g`` sums over all of them).

    Args:
      x: pytree of arrays, each leaf with at least one axis.
      hyperparams: ``lam >= 0``: a scalar, an array of shape (G,), or a pytree like ``x`` of
        such (per-leaf) values.
      scaling: ``s > 0``.

    Returns:
      pytree like ``x``.
    """
    lam = _broadcast_like(hyperparams, x)

    def _leaf(v: jax.Array, w: jax.Array) -> jax.Array:
        return _block_group_lasso_leaf(v, jnp.broadcast_to(w, v.shape[:1]), scaling)

    return jax.tree.map(_leaf, x, lam)


def make_prox_from_projection(
    projection: Callable[[PyTree, Any], PyTree],
) -> Callable[..., PyTree]:
    """Turns a projection onto ``C`` into the proximal operator of ``g = indicator(C)``.

    ``prox_{s g}(x, hyperparams) = projection(x, hyperparams)`` for every ``s > 0``, so that
    :func:`~mdsens.implicit.conditions.proximal_gradient` with this prox coincides with
    :func:`~mdsens.implicit.conditions.projected_gradient`.
    """

    def prox(x: PyTree, hyperparams: Any = None, scaling: float | jax.Array = 1.0) -> PyTree:
        del scaling
        return projection(x, hyperparams)

    return prox
