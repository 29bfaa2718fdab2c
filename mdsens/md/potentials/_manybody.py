r"""Shared helpers of the many-body potentials (Stillinger-Weber, Tersoff, EAM).

The potentials evaluate on the dense full :class:`~mdsens.md.potentials.base.Neighborhood`
built by the model: slot ``m`` of atom ``i`` holds :math:`R_j - R_i`, padded slots hold a
dummy vector of nonzero length (so ``r > 0`` everywhere) and ``mask`` False. Triplets
(j, i, k) are pairs of slots of the same centre i. Every branch that could overflow or
divide by zero in a slot that does not count is fed a safe value first and masked after
(the "double where"), so gradients with respect to positions *and* parameters stay finite.

Triplet parameters follow the LAMMPS entry convention: a scalar applies to every species
combination; an ``(S, S, S)`` table ``P[i, j, k]`` is indexed by the species of the centre
atom i and of the neighbours j and k, and pair terms of the bond i-j use ``P[i, j, j]``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..geometry import Neighborhood
from .base import Array, Params, as_param

__all__ = [
    "cosines",
    "max_over",
    "off_diagonal",
    "pair_of",
    "resolve_triplet_params",
    "triplet_of",
]


def _gather(value: Array, index: tuple[Array, ...]) -> Array:
    if jnp.ndim(value) == 0:
        return value
    return value[index]


def pair_of(value: Array, nb: Neighborhood) -> Array:
    """Bond value ``P[s_i, s_j, s_j]`` of a scalar or ``(S, S, S)`` parameter, ``(N, M)``."""
    sj = nb.neighbor_species
    return _gather(value, (nb.species[:, None], sj, sj))


def triplet_of(value: Array, nb: Neighborhood) -> Array:
    """Triplet value ``P[s_i, s_j, s_k]`` (j: axis 1, k: axis 2), shape ``(N, M, M)``."""
    sj = nb.neighbor_species
    return _gather(value, (nb.species[:, None, None], sj[:, :, None], sj[:, None, :]))


def cosines(nb: Neighborhood) -> Array:
    r""":math:`\cos\theta_{jik}` between slots j (axis 1) and k (axis 2), ``(N, M, M)``."""
    u = nb.dR / nb.r[..., None]
    return jnp.einsum("nja,nka->njk", u, u)


def off_diagonal(m: int) -> Array:
    """``(1, M, M)`` bool, True where slot j != slot k."""
    return ~jnp.eye(m, dtype=bool)[None]


def resolve_triplet_params(
    raw: Mapping[str, Any], species: Sequence[str] | None, name: str
) -> Params:
    """Validate parameters that are scalars or ``(S, S, S)`` triplet tables.

    Scalars stay scalars (shape ``()``); an array must have shape ``(S, S, S)`` with
    ``S = len(species)`` (``ValueError`` otherwise, also when ``species`` is None).
    """
    out: Params = {}
    for key, value in raw.items():
        arr = as_param(value)
        if arr.ndim != 0:
            if species is None:
                raise ValueError(f"{name}: parameter {key!r} is a table; give species=(...)")
            s = len(species)
            if arr.shape != (s, s, s):
                raise ValueError(
                    f"{name}: parameter {key!r} has shape {arr.shape}; expected a scalar or "
                    f"an (S, S, S) triplet table with S = {s} (species {tuple(species)})"
                )
        out[key] = arr
    return out


def max_over(value: Any) -> float:
    """Largest entry of a (concrete) parameter as a Python float."""
    if isinstance(value, jax.core.Tracer):
        raise ValueError("a cutoff needs concrete parameter values, not traced ones")
    return float(np.max(np.asarray(value)))
