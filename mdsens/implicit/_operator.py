"""Flattening of pytree linear systems and null-space projection.

Every solver works on 1-D vectors: ``b`` (any pytree) is ravelled once, ``matvec`` is wrapped
to act on flat vectors, and the solution is unravelled at the end. For arrays (the common case,
e.g. positions of shape (N, d)) ravelling is a reshape.

The optional null space is an orthonormalised basis ``Q`` (k, n). With ``P = I − QᵀQ`` the
solvers work with the projected system ``P (A + ridge I) P x = P b`` restricted to range(P):
the solution is the minimum-norm one with no component along the null space, and
``‖Q b‖`` is reported as the part of ``b`` that was removed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

PyTree = Any


@dataclasses.dataclass(frozen=True)
class FlatSystem:
    """A linear system in flat form: ``op(x) = P (A + ridge) P x``, right-hand side ``b``."""

    op: Callable[[jax.Array], jax.Array]
    b: jax.Array
    x0: jax.Array
    project: Callable[[jax.Array], jax.Array]
    precondition: Callable[[jax.Array], jax.Array]
    unravel: Callable[[jax.Array], PyTree]
    nullspace_component: jax.Array
    matvec: Callable[[jax.Array], jax.Array]  # unprojected A + ridge, flat
    raw_rhs_norm: jax.Array  # ‖b‖ before projection

    @property
    def size(self) -> int:
        return self.b.shape[0]


def _flat_basis(nullspace: PyTree, b_example: PyTree) -> jax.Array:
    """Return an orthonormal basis (k, n) from a pytree whose leaves carry a leading axis k."""
    leaves = jax.tree.leaves(nullspace)
    if len(leaves) == 0:
        raise ValueError("nullspace is empty")
    ravel = lambda tree: ravel_pytree(tree)[0]  # noqa: E731
    basis = jax.vmap(ravel)(nullspace)
    n = ravel(b_example).shape[0]
    if basis.ndim != 2 or basis.shape[1] != n:
        raise ValueError(
            f"nullspace must hold k vectors shaped like b (leading axis k); got flat shape "
            f"{basis.shape}, expected (k, {n})"
        )
    q, _ = jnp.linalg.qr(basis.T)
    return q.T


def flatten_system(
    matvec: Callable[[PyTree], PyTree],
    b: PyTree,
    *,
    init: PyTree | None = None,
    M: Callable[[PyTree], PyTree] | None = None,
    ridge: float | jax.Array | None = None,
    nullspace: PyTree | None = None,
) -> FlatSystem:
    """Ravel ``matvec``/``b``/``init``/``M`` and build the projected flat operator."""
    b_flat, unravel = ravel_pytree(b)

    def flat_matvec(v):
        out = ravel_pytree(matvec(unravel(v)))[0]
        if out.shape != v.shape:
            raise ValueError(
                f"matvec must map a vector shaped like b to one shaped like b; got {out.shape} "
                f"from {v.shape}"
            )
        if ridge is not None:
            out = out + ridge * v
        return out

    if nullspace is None:
        project = lambda v: v  # noqa: E731
        removed = jnp.zeros((), b_flat.dtype)
    else:
        q = _flat_basis(nullspace, b).astype(b_flat.dtype)
        project = lambda v: v - q.T @ (q @ v)  # noqa: E731
        removed = jnp.linalg.norm(q @ b_flat)

    if M is None:
        precondition = project
    else:
        precondition = lambda v: project(ravel_pytree(M(unravel(v)))[0])  # noqa: E731

    x0 = jnp.zeros_like(b_flat) if init is None else project(ravel_pytree(init)[0])
    op = lambda v: project(flat_matvec(project(v)))  # noqa: E731
    return FlatSystem(
        op=op,
        b=project(b_flat),
        x0=x0.astype(b_flat.dtype),
        project=project,
        precondition=precondition,
        unravel=unravel,
        nullspace_component=removed,
        matvec=flat_matvec,
        raw_rhs_norm=jnp.linalg.norm(b_flat),
    )


def default_tol(dtype) -> float:
    """Relative tolerance that float64 (1e-10) or float32 (1e-5) can reach."""
    return 1e-10 if jnp.finfo(dtype).bits >= 64 else 1e-5


def default_maxiter(n: int) -> int:
    return max(10 * n, 50)
