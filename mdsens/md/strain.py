r"""Voigt notation for small strains and stresses (3D: 6 components, 2D: 3).

Order: 3D ``(xx, yy, zz, yz, xz, xy)``, 2D ``(xx, yy, xy)``. Strains use engineering shears
(``γ_yz = 2 ε_yz``), stresses plain components, so that ``∂E/∂η_voigt = V σ_voigt`` and the
elastic constants ``C = ∂σ_voigt/∂η_voigt`` are the usual Voigt matrix.

A strain ``η`` deforms a structure affinely: ``R → R (I + η)``, ``cell → cell (I + η)``
(row-vector convention, ``η`` symmetric).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_PAIRS = {
    2: ((0, 0), (1, 1), (0, 1)),
    3: ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)),
}


def n_voigt(dim: int) -> int:
    """Number of independent strain components: 3 in 2D, 6 in 3D."""
    return len(_PAIRS[dim])


def voigt_labels(dim: int) -> tuple[str, ...]:
    axes = "xyz"
    return tuple(axes[i] + axes[j] for i, j in _PAIRS[dim])


def strain_from_voigt(eta: jax.Array, dim: int) -> jax.Array:
    """Symmetric ``(d, d)`` strain from Voigt components with engineering shears."""
    out = jnp.zeros((dim, dim), eta.dtype)
    for k, (i, j) in enumerate(_PAIRS[dim]):
        if i == j:
            out = out.at[i, i].set(eta[k])
        else:
            out = out.at[i, j].set(eta[k] / 2).at[j, i].set(eta[k] / 2)
    return out


def stress_to_voigt(sigma: jax.Array) -> jax.Array:
    """Voigt vector of a ``(d, d)`` stress (symmetrised)."""
    dim = sigma.shape[-1]
    sym = 0.5 * (sigma + sigma.T)
    return jnp.stack([sym[i, j] for i, j in _PAIRS[dim]])


def deformation(eta_voigt: jax.Array, dim: int) -> jax.Array:
    """``I + η`` for a Voigt strain."""
    return jnp.eye(dim, dtype=eta_voigt.dtype) + strain_from_voigt(eta_voigt, dim)
