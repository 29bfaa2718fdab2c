r"""Stillinger-Weber three-body potential (``stillinger_weber``, alias ``sw``).

.. math::
   E = \sum_{i<j} \phi_2(r_{ij}) + \sum_i \sum_{j<k;\ j,k\ne i} \phi_3(r_{ij}, r_{ik},
       \theta_{jik}),

   \phi_2(r) = A\epsilon\left[B\left(\frac{\sigma}{r}\right)^{p}
       - \left(\frac{\sigma}{r}\right)^{q}\right] \exp\!\left(\frac{\sigma}{r - a\sigma}
       \right),

   \phi_3 = \lambda\epsilon\,(\cos\theta_{jik} - \cos\theta_0)^2
       \exp\!\left(\frac{\gamma\sigma}{r_{ij} - a\sigma}\right)
       \exp\!\left(\frac{\gamma\sigma}{r_{ik} - a\sigma}\right),

each term zero beyond its cutoff :math:`r \ge a\sigma`. This is the form of LAMMPS
``pair_style sw`` (Stillinger & Weber, Phys. Rev. B 31, 5262 (1985)); jax-md's
``energy.stillinger_weber`` fixes p = 4, q = 0 and cos θ0 = -1/3 and cannot differentiate
with respect to them, so the functional is written out here on the model's neighbourhood.

Parameters (all differentiable; defaults: silicon of the 1985 paper in eV/Å, as in LAMMPS
``Si.sw``): ``epsilon`` = 2.1683 eV, ``sigma`` = 2.0951 Å, ``A`` = 7.049556277,
``B`` = 0.6022245584, ``p`` = 4, ``q`` = 0, ``a`` = 1.80, ``lambda`` = 21.0,
``gamma`` = 1.20, ``cos_theta0`` = -1/3 (the others dimensionless). The factory keyword
for ``lambda`` is ``lambda_`` (``lambda`` is a Python keyword; ``**{"lambda": x}`` works too).

Several species: each parameter is a scalar (same for all species) or an ``(S, S, S)``
table in the LAMMPS entry convention (see :mod:`._manybody`): the bond i-j uses entry
``[i, j, j]`` for epsilon, sigma, a, gamma, A, B, p, q; the triplet j-i-k uses ``lambda``,
``epsilon`` and ``cos_theta0`` of entry ``[i, j, k]``. Pair energies are averaged over the
two directions, ``(phi_2^{ijj} + phi_2^{jii}) / 2`` (LAMMPS uses one of them; the two agree
for every published file). ``stillinger_weber(file="GaN.sw")`` reads a LAMMPS file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import jax.numpy as jnp

from ..geometry import Neighborhood
from . import _lammps_files
from ._manybody import (
    cosines,
    max_over,
    off_diagonal,
    pair_of,
    resolve_triplet_params,
    triplet_of,
)
from .base import Array, Params, Potential, register

__all__ = ["StillingerWeber", "stillinger_weber"]

PARAM_NAMES: tuple[str, ...] = (
    "epsilon", "sigma", "A", "B", "p", "q", "a", "lambda", "gamma", "cos_theta0",
)  # fmt: skip

SILICON: dict[str, float] = {
    "epsilon": 2.1683,
    "sigma": 2.0951,
    "A": 7.049556277,
    "B": 0.6022245584,
    "p": 4.0,
    "q": 0.0,
    "a": 1.80,
    "lambda": 21.0,
    "gamma": 1.20,
    "cos_theta0": -1.0 / 3.0,
}
"""Stillinger & Weber (1985) silicon in eV and Å (LAMMPS ``Si.sw``)."""


@dataclasses.dataclass(frozen=True, eq=False)
class StillingerWeber(Potential):
    """Stillinger-Weber potential; the functional and parameters are in the module doc.

    Settings: ``file``, the LAMMPS file the parameters were read from (or None).
    """

    neighbor_list_threshold: ClassVar[int] = 64

    name = "stillinger_weber"
    param_units: ClassVar[Mapping[str, str]] = {
        "epsilon": "eV", "sigma": "Å", **dict.fromkeys(
            ("A", "B", "p", "q", "a", "lambda", "gamma", "cos_theta0"), "1")}
    file: str | None = None

    def cutoff(self, params: Params | None = None) -> float:
        """Largest bond cutoff ``a * sigma`` over the bond entries ``[i, j, j]`` (Å)."""
        params = self.params if params is None else params
        rc = jnp.asarray(params["a"]) * jnp.asarray(params["sigma"])
        if rc.ndim == 3:  # only entries [i, j, j] define bonds (LAMMPS)
            rc = jnp.diagonal(rc, axis1=1, axis2=2)
        return max_over(rc)

    def with_params(self, **updates: Any) -> StillingerWeber:
        unknown = set(updates) - set(self.params)
        if unknown:
            raise ValueError(f"{self.name}: unknown parameters {sorted(unknown)}")
        params = resolve_triplet_params({**self.params, **updates}, self.species, self.name)
        return dataclasses.replace(self, params=params)

    def energy(self, params: Params, nb: Neighborhood) -> Array:
        return stillinger_weber_energy(params, nb)


def stillinger_weber_energy(params: Params, nb: Neighborhood) -> Array:
    """Stillinger-Weber energy (eV) of a dense full neighbourhood (formula: module doc)."""
    eps, sig, a = (pair_of(params[k], nb) for k in ("epsilon", "sigma", "a"))
    A, B, p, q, gam = (pair_of(params[k], nb) for k in ("A", "B", "p", "q", "gamma"))
    rc = a * sig
    inside = nb.mask & (nb.r < rc)
    r = jnp.where(inside, nb.r, 0.5 * rc)  # safe radius: keeps exp and powers finite
    x = sig / r
    e2 = A * eps * (B * x**p - x**q) * jnp.exp(sig / (r - rc))
    e2 = jnp.where(inside, e2, 0.0)
    g = jnp.where(inside, jnp.exp(gam * sig / (r - rc)), 0.0)  # (N, M)
    lam_eps = triplet_of(params["lambda"], nb) * triplet_of(params["epsilon"], nb)
    cos0 = triplet_of(params["cos_theta0"], nb)
    e3 = lam_eps * (cosines(nb) - cos0) ** 2 * g[:, :, None] * g[:, None, :]
    e3 = jnp.where(off_diagonal(nb.r.shape[1]), e3, 0.0)
    # Full neighbourhood: every bond is seen from both ends and every triplet as (j, k)
    # and (k, j).
    return 0.5 * jnp.sum(e2) + 0.5 * jnp.sum(e3)


def _from_file(
    file: str | Path, elements: Sequence[str] | None
) -> tuple[dict[str, Any], tuple[str, ...]]:
    entries = _lammps_files.read_entries(file, _lammps_files.SW_FIELDS)
    species = tuple(elements) if elements is not None else _lammps_files.entry_elements(entries)
    tables = _lammps_files.entries_to_arrays(entries, species, _lammps_files.SW_FIELDS)
    raw: dict[str, Any] = {k: tables[k] for k in PARAM_NAMES}  # "tol" is not used
    if len(species) == 1:
        raw = {k: float(v[0, 0, 0]) for k, v in raw.items()}
    return raw, species


@register("stillinger_weber", aliases=("sw",))
def stillinger_weber(
    epsilon: Any = None,
    sigma: Any = None,
    A: Any = None,
    B: Any = None,
    p: Any = None,
    q: Any = None,
    a: Any = None,
    lambda_: Any = None,
    gamma: Any = None,
    cos_theta0: Any = None,
    *,
    species: Sequence[str] | None = None,
    file: str | Path | None = None,
    **kwargs: Any,
) -> StillingerWeber:
    r"""Stillinger-Weber potential (functional, units and defaults in the module doc).

    Args:
      epsilon, sigma, A, B, p, q, a, lambda_, gamma, cos_theta0: parameter values (scalar
        or ``(S, S, S)`` table); None keeps the default (silicon, or the file's value).
      species: symbols the tables refer to (required for tables; with ``file``, selects
        and orders the file's elements).
      file: a LAMMPS ``.sw`` file; its values become the parameters (scalars for a single
        element). Explicit arguments override them.
      kwargs: only ``lambda`` (same as ``lambda_``).
    """
    if set(kwargs) - {"lambda"}:
        raise TypeError(f"unexpected arguments {sorted(set(kwargs) - {'lambda'})}")
    if "lambda" in kwargs and lambda_ is not None:
        raise TypeError("give lambda_ or lambda, not both")
    lam = kwargs.get("lambda", lambda_)
    if file is not None:
        raw, species = _from_file(file, species)
    else:
        raw = dict(SILICON)
    given = {
        "epsilon": epsilon, "sigma": sigma, "A": A, "B": B, "p": p, "q": q, "a": a,
        "lambda": lam, "gamma": gamma, "cos_theta0": cos_theta0,
    }  # fmt: skip
    raw.update({k: v for k, v in given.items() if v is not None})
    sp = tuple(species) if species is not None else None
    params = resolve_triplet_params(raw, sp, "stillinger_weber")
    return StillingerWeber(params, sp, None if file is None else str(file))
