r"""The Hessian of a pair potential, assembled from the pair stiffnesses.

With :math:`E = \tfrac12\sum_i\sum_m \phi(r_{im})` over a full neighbour list
(:math:`d_{im} = R_{j(i,m)} - R_i`, :math:`\hat d = d/r`), each listed pair has the
stiffness :math:`K_{im} = \phi''\,\hat d\hat d^\top + (\phi'/r)(I - \hat d\hat d^\top)`
and

.. math:: (Hv)_i = \sum_m K_{im}\,(v_i - v_{j(i,m)})

(each pair appears once in each of its atoms' rows, and :math:`K` is even in :math:`d`).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from .geometry import Geometry
from .potentials.base import Array, Params, pair_param
from .potentials.pair import PairPotential, symmetrized

__all__ = ["pair_hessian_matvec"]


def pair_hessian_matvec(
    potential: PairPotential, params: Params, geom: Geometry
) -> Callable[[Array], Array]:
    r"""The Hessian :math:`\partial^2 E/\partial R^2` of ``potential`` on ``geom`` as a
    sparse operator ``v (N, d) -> H v (N, d)`` (module docstring), eV/Å².

    :math:`\phi'` and :math:`\phi''` come from forward-mode derivatives of the potential's
    own ``pair_energy`` (switch included), once; a product is then one gather and
    O(N M d) flops, much cheaper than differentiating the energy twice. Differentiable in
    positions, cell and ``params`` like any JAX function.

    Args:
      potential: a pair potential.
      params: its parameters.
      geom: positions, cell, species and dense neighbour indices of the user's own cell
        (no replication): the Hessian is that of the energy of these N atoms.
    Returns:
      ``matvec`` with attribute ``diagonal_blocks``, the per-atom blocks
      :math:`H_{ii} = \sum_m K_{im}`, ``(N, d, d)``.
    """
    nb = geom.neighborhood()
    p = {k: pair_param(v, nb.species, nb.neighbor_species)
         for k, v in symmetrized(params).items()}

    def phi(r):
        return potential.pair_energy(r, **p)

    def dphi(r):
        return jax.jvp(phi, (r,), (jnp.ones_like(r),))[1]

    d1, d2 = jax.jvp(dphi, (nb.r,), (jnp.ones_like(nb.r),))
    b = jnp.where(nb.mask, d1 / nb.r, 0.0)  # transverse stiffness φ'/r
    a = jnp.where(nb.mask, d2, 0.0) - b  # longitudinal excess φ'' - φ'/r
    unit = nb.dR / nb.r[..., None]
    j = jnp.where(nb.mask, nb.idx, 0)

    def matvec(v: Array) -> Array:
        u = v[:, None, :] - v[j]  # (N, M, d)
        along = jnp.sum(unit * u, axis=-1)
        return jnp.sum((a * along)[..., None] * unit + b[..., None] * u, axis=1)

    # the per-atom diagonal blocks H_ii = Σ_m K_im, (N, d, d), without any product
    eye = jnp.eye(nb.dR.shape[-1], dtype=nb.dR.dtype)
    matvec.diagonal_blocks = jnp.einsum("nm,nma,nmb->nab", a, unit, unit) + \
        jnp.sum(b, axis=1)[:, None, None] * eye
    return matvec
