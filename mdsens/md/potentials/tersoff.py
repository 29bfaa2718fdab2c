r"""Tersoff bond-order potential (``tersoff``), single or several elements.

.. math::
   E = \tfrac12 \sum_i \sum_{j\ne i} f_C(r_{ij})\left[f_R(r_{ij}) + b_{ij} f_A(r_{ij})\right],
   \qquad f_R = A e^{-\lambda_1 r},\quad f_A = -B e^{-\lambda_2 r},

   b_{ij} = \left(1 + (\beta\zeta_{ij})^{n}\right)^{-1/(2n)},\qquad
   \zeta_{ij} = \sum_{k\ne i,j} f_C(r_{ik})\, g(\theta_{ijk})\,
       \exp\!\left[\left(\lambda_3 (r_{ij} - r_{ik})\right)^{m}\right],

   g(\theta) = \gamma\left(1 + \frac{c^2}{d^2} - \frac{c^2}{d^2 + (h - \cos\theta)^2}\right),
   \qquad f_C(r) = \begin{cases} 1 & r < R - D\\
       \tfrac12 - \tfrac12\sin\!\left(\frac{\pi}{2}\frac{r - R}{D}\right) & |r - R| \le D\\
       0 & r > R + D \end{cases}

This is LAMMPS ``pair_style tersoff`` (J. Tersoff, Phys. Rev. B 37, 6991 (1988); 39, 5566
(1989)) in its parameter-file convention: for an entry ``[i, j, k]`` (species of the
centre i, bonded neighbour j, third atom k), the bond i-j takes A, lambda1, B, lambda2,
R, D, beta, n from entry ``[i, j, j]``; the sum over k in zeta takes R, D (of f_C(r_ik)),
gamma, lambda3, m, c, d, h from entry ``[i, j, k]``. Units: A, B in eV; lambda1,
lambda2, lambda3 in 1/Å; R, D in Å; the rest dimensionless. ``h`` is LAMMPS' costheta0.

jax-md's ``energy.tersoff`` is single-species only, ignores gamma, and its bond order
(beta zeta)^n has an infinite derivative at zeta = 0 (padded slots and isolated bonds), so
its gradients are NaN there; the functional is therefore written out here. b_ij = 1 where
zeta = 0 (the limit; LAMMPS switches to the same value for beta zeta below ~1e-20).
LAMMPS clips the exponent (lambda3 (r_ij - r_ik))^m at +-69.08; this code does not (the
clip only acts for bond-length differences larger than any cutoff allows in practice).

Parameters (differentiable): gamma, lambda3, c, d, h, n, beta, lambda2, B, R, D, lambda1,
A, each a scalar or an ``(S, S, S)`` table. ``m`` (1 or 3, an exponent) is a static
setting. Defaults: Tersoff's Si(B) (PRB 37, 6991), identical to LAMMPS ``Si.tersoff``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import jax.numpy as jnp
import numpy as np

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

__all__ = ["Tersoff", "tersoff"]

PARAM_NAMES: tuple[str, ...] = (
    "gamma", "lambda3", "c", "d", "h", "n", "beta", "lambda2", "B", "R", "D", "lambda1", "A",
)  # fmt: skip

SILICON_B: dict[str, float] = {
    "gamma": 1.0,
    "lambda3": 1.3258,
    "c": 4.8381,
    "d": 2.0417,
    "h": 0.0,
    "n": 22.956,
    "beta": 0.33675,
    "lambda2": 1.3258,
    "B": 95.373,
    "R": 3.0,
    "D": 0.2,
    "lambda1": 3.2394,
    "A": 3264.7,
}
"""Tersoff Si(B), PRB 37, 6991 (1988), LAMMPS ``Si.tersoff`` (m = 3)."""

MExponent = int | tuple[tuple[tuple[int, ...], ...], ...]


@dataclasses.dataclass(frozen=True, eq=False)
class Tersoff(Potential):
    """Tersoff potential; the functional and parameters are in the module doc.

    Settings: ``m`` (int for all triplets, or a nested ``(S, S, S)`` tuple of ints, each 1
    or 3), ``file`` (the LAMMPS file the parameters came from, or None).
    """

    neighbor_list_threshold: ClassVar[int] = 64

    name = "tersoff"
    param_units: ClassVar[Mapping[str, str]] = {
        "A": "eV", "B": "eV", "lambda1": "1/Å", "lambda2": "1/Å", "lambda3": "1/Å",
        "R": "Å", "D": "Å", **dict.fromkeys(("beta", "n", "gamma", "c", "d", "h"), "1")}
    m: MExponent = 3
    file: str | None = None

    def cutoff(self, params: Params | None = None) -> float:
        """Largest ``R + D`` over all entries (Å)."""
        params = self.params if params is None else params
        return max_over(jnp.asarray(params["R"]) + jnp.asarray(params["D"]))

    def with_params(self, **updates: Any) -> Tersoff:
        unknown = set(updates) - set(self.params)
        if unknown:
            raise ValueError(f"{self.name}: unknown parameters {sorted(unknown)}")
        params = resolve_triplet_params({**self.params, **updates}, self.species, self.name)
        return dataclasses.replace(self, params=params)

    def energy(self, params: Params, nb: Neighborhood) -> Array:
        return tersoff_energy(params, nb, self.m)


def _cutoff_fn(r: Array, R: Array, D: Array) -> Array:
    smooth = 0.5 * (1.0 - jnp.sin(0.5 * jnp.pi * (r - R) / D))
    return jnp.where(r < R - D, 1.0, jnp.where(r < R + D, smooth, 0.0))


def tersoff_energy(params: Params, nb: Neighborhood, m: MExponent = 3) -> Array:
    """Tersoff energy (eV) of a dense full neighbourhood (formula: module doc)."""
    P = {k: pair_of(params[k], nb) for k in ("A", "lambda1", "B", "lambda2", "R", "D")}
    beta, n = pair_of(params["beta"], nb), pair_of(params["n"], nb)
    r = nb.r
    bond = nb.mask & (r < P["R"] + P["D"])
    fc = jnp.where(bond, _cutoff_fn(r, P["R"], P["D"]), 0.0)
    f_rep = P["A"] * jnp.exp(-P["lambda1"] * r)
    f_att = -P["B"] * jnp.exp(-P["lambda2"] * r)

    # zeta_ij: j on axis 1, k on axis 2.
    T = {k: triplet_of(params[k], nb) for k in ("R", "D", "gamma", "lambda3", "c", "d", "h")}
    r_ij, r_ik = r[:, :, None], r[:, None, :]
    active = (
        bond[:, :, None] & nb.mask[:, None, :] & (r_ik < T["R"] + T["D"])
        & off_diagonal(r.shape[1])
    )  # fmt: skip
    fc_ik = jnp.where(active, _cutoff_fn(r_ik, T["R"], T["D"]), 0.0)
    c2, d2 = T["c"] ** 2, T["d"] ** 2
    g = T["gamma"] * (1.0 + c2 / d2 - c2 / (d2 + (T["h"] - cosines(nb)) ** 2))
    arg = jnp.where(active, T["lambda3"] * (r_ij - r_ik), 0.0)  # safe: no overflow in exp
    if isinstance(m, int):
        if m not in (1, 3):
            raise ValueError(f"tersoff: m must be 1 or 3, got {m}")
        arg = arg**3 if m == 3 else arg
    else:
        m_ijk = triplet_of(jnp.asarray(np.asarray(m)), nb)
        arg = jnp.where(m_ijk == 3, arg**3, arg)
    zeta = jnp.sum(fc_ik * g * jnp.exp(arg), axis=2)

    x = beta * zeta
    positive = x > 0.0
    x_safe = jnp.where(positive, x, 1.0)
    b = jnp.where(positive, (1.0 + x_safe**n) ** (-0.5 / n), 1.0)
    return 0.5 * jnp.sum(jnp.where(bond, fc * (f_rep + b * f_att), 0.0))


def _m_setting(m_table: np.ndarray) -> MExponent:
    values = np.unique(m_table)
    bad = [v for v in values if v not in (1.0, 3.0)]
    if bad:
        raise ValueError(f"tersoff: m must be 1 or 3 (LAMMPS), file has {bad}")
    if len(values) == 1:
        return int(values[0])
    return tuple(tuple(tuple(int(v) for v in row) for row in plane) for plane in m_table)


@register("tersoff")
def tersoff(
    file: str | Path | None = None,
    *,
    species: Sequence[str] | None = None,
    m: MExponent | None = None,
    **params: Any,
) -> Tersoff:
    r"""Tersoff potential from a LAMMPS ``.tersoff`` file, or Tersoff Si(B) by default.

    Args:
      file: LAMMPS parameter file (metal units). Single-element files give scalar
        parameters; several elements give ``(S, S, S)`` tables (every triplet of the
        selected elements must be present, as LAMMPS requires).
      species: with ``file``, which elements to use and their order (default: all, in
        order of first appearance). Without ``file``, the row labels of ``(S, S, S)``
        tables passed in ``params``.
      m: override of the static exponent setting (1 or 3).
      params: values overriding the file's / the defaults, by name (module doc): scalars
        or ``(S, S, S)`` tables.
    """
    unknown = set(params) - set(PARAM_NAMES)
    if unknown:
        raise TypeError(f"tersoff: unknown parameters {sorted(unknown)}; known: {PARAM_NAMES}")
    if file is not None:
        entries = _lammps_files.read_entries(file, _lammps_files.TERSOFF_FIELDS)
        sp = tuple(species) if species is not None else _lammps_files.entry_elements(entries)
        tables = _lammps_files.entries_to_arrays(entries, sp, _lammps_files.TERSOFF_FIELDS)
        tables["h"] = tables.pop("cos_theta0")
        m_file = _m_setting(tables.pop("m"))
        raw: dict[str, Any] = {k: tables[k] for k in PARAM_NAMES}
        if len(sp) == 1:
            raw = {k: float(v[0, 0, 0]) for k, v in raw.items()}
    else:
        sp = tuple(species) if species is not None else None
        raw, m_file = dict(SILICON_B), 3
    raw.update(params)
    m_value = m_file if m is None else m
    if isinstance(m_value, int | float) and not isinstance(m_value, bool):
        m_value = _m_setting(np.asarray([m_value]))
    checked = resolve_triplet_params(raw, sp, "tersoff")
    return Tersoff(checked, sp, m_value, None if file is None else str(file))
