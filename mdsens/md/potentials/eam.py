r"""Embedded-atom method (``eam``) from LAMMPS setfl (``*.eam.alloy``) or funcfl (``*.eam``).

.. math::
   E = \sum_i F_{s_i}(\bar\rho_i) + \tfrac12 \sum_i \sum_{j\ne i} \phi_{s_i s_j}(r_{ij}),
   \qquad \bar\rho_i = \sum_{j \ne i} \rho_{s_j}(r_{ij}),
   \qquad \phi_{ab}(r) = z2r_{ab}(r) / r,

over neighbours closer than the file's cutoff. F (eV) is tabulated on
:math:`\rho = m\,\Delta\rho`, :math:`\rho_a` and :math:`z2r_{ab} = r\phi_{ab}` (eV Å) on
:math:`r = m\,\Delta r`. Between grid points the tables are interpolated exactly as LAMMPS
``pair_style eam`` does (``PairEAM::interpolate``): a cubic Hermite polynomial per
interval whose end slopes are the finite-difference estimates
:math:`f'_m = [f_{m-2} - f_{m+2} + 8(f_{m+1} - f_{m-1})]/12` (lower order at the ends);
above :math:`\rho_{max} = (N_\rho - 1)\Delta\rho` F is extended linearly with its end
slope, as in LAMMPS. funcfl files store an effective charge; LAMMPS' conversion
:math:`z2r = 27.2 \cdot 0.529\, Z(r)^2` is used (ASE uses Hartree*Bohr = 14.3996 instead of
14.3888, so funcfl energies from ASE and LAMMPS differ slightly; this follows LAMMPS).
Like LAMMPS (``PairEAM::file2array``), funcfl tables lose their last point (N - 1 points
are kept, :math:`\rho_{max}` stays that of the file): F is then constant between the last
kept point and :math:`\rho_{max}`, which matters only at densities no physical structure
reaches; setfl tables are used whole.

Parameters (differentiable; shapes fixed by the file): ``F`` ``(S, N_rho)`` embedding
table, eV; ``rho`` ``(S, N_r)`` density table; ``z2r`` ``(S, S, N_r)`` :math:`r\phi` table,
eV Å, symmetrised as :math:`(z2r_{ab} + z2r_{ba})/2` in the energy. The spline
coefficients are linear in the table values and recomputed inside the energy, so
derivatives with respect to every table entry are exact; a scale factor s on a function
has derivative :math:`\sum_m T_m\, \partial E/\partial T_m`. Grid spacings, sizes and the
cutoff are static settings (not differentiable).

jax-md's ``load_lammps_eam_parameters`` / ``energy.eam`` handle a single element, build
SciPy-like splines that are not the LAMMPS interpolation, and down-cast to float32, so
they are not used here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import jax.numpy as jnp
import numpy as np

from ..geometry import Neighborhood
from . import _lammps_files
from .base import Array, Params, Potential, as_param, register

__all__ = ["EAM", "eam"]


def _slopes(f: Array) -> Array:
    """LAMMPS finite-difference slopes (per grid step) along the last axis (needs n >= 5)."""
    first = (f[..., 1] - f[..., 0])[..., None]
    second = (0.5 * (f[..., 2] - f[..., 0]))[..., None]
    middle = ((f[..., :-4] - f[..., 4:]) + 8.0 * (f[..., 3:-1] - f[..., 1:-3])) / 12.0
    before_last = (0.5 * (f[..., -1] - f[..., -3]))[..., None]
    last = (f[..., -1] - f[..., -2])[..., None]
    return jnp.concatenate([first, second, middle, before_last, last], axis=-1)


def _coefficients(f: Array) -> Array:
    r"""``(..., n - 1, 4)`` cubic coefficients :math:`(c_3, c_2, c_1, c_0)` of each interval,
    value :math:`((c_3 t + c_2) t + c_1) t + c_0` at :math:`t \in [0, 1]`."""
    d = _slopes(f)
    df = f[..., 1:] - f[..., :-1]
    c2 = 3.0 * df - 2.0 * d[..., :-1] - d[..., 1:]
    c3 = d[..., :-1] + d[..., 1:] - 2.0 * df
    return jnp.stack([c3, c2, d[..., :-1], f[..., :-1]], axis=-1)


def _locate(x: Array, step: float, n: int) -> tuple[Array, Array]:
    """Interval index (clipped to [0, n - 2]) and local coordinate t = x/step - m, t <= 1."""
    u = x / step
    m = jnp.clip(jnp.floor(u), 0, n - 2).astype(jnp.int32)
    return m, jnp.minimum(u - m, 1.0)


def _horner(c: Array, t: Array) -> tuple[Array, Array]:
    """Value and d/dt of the cubic with coefficients ``c[..., 4]`` at ``t``."""
    value = ((c[..., 0] * t + c[..., 1]) * t + c[..., 2]) * t + c[..., 3]
    slope = (3.0 * c[..., 0] * t + 2.0 * c[..., 1]) * t + c[..., 2]
    return value, slope


@dataclasses.dataclass(frozen=True, eq=False)
class EAM(Potential):
    """EAM from tables; the functional, interpolation and parameters are in the module doc.

    Settings: ``drho``, ``dr`` (grid steps), ``rc`` (cutoff, Å), ``rho_max`` (start of the
    linear extension of F), ``file``, ``fmt``.
    """

    neighbor_list_threshold: ClassVar[int] = 64

    name = "eam"
    param_units: ClassVar[Mapping[str, str]] = {"F": "eV", "rho": "1", "z2r": "eV Å"}
    """F(ρ) in eV; ρ(r) a dimensionless density; z2r = r·φ(r) in eV·Å (LAMMPS metal)."""
    drho: float = 1.0
    dr: float = 1.0
    rc: float = 0.0
    rho_max: float = 0.0
    file: str | None = None
    fmt: str | None = None

    def cutoff(self, params: Params | None = None) -> float:
        """The file's cutoff (Å); tables do not change it."""
        return self.rc

    def with_params(self, **updates: Any) -> EAM:
        unknown = set(updates) - set(self.params)
        if unknown:
            raise ValueError(f"{self.name}: unknown parameters {sorted(unknown)}")
        params = dict(self.params)
        for key, value in updates.items():
            arr = as_param(value)
            if arr.shape != params[key].shape:
                raise ValueError(f"eam: {key} has shape {arr.shape}, expected {params[key].shape}")
            params[key] = arr
        return dataclasses.replace(self, params=params)

    def energy(self, params: Params, nb: Neighborhood) -> Array:
        return eam_energy(params, nb, self.drho, self.dr, self.rc, self.rho_max)


def eam_energy(
    params: Params, nb: Neighborhood, drho: float, dr: float, rc: float, rho_max: float
) -> Array:
    """EAM energy (eV) of a dense full neighbourhood (formula: module doc)."""
    F, rho, z2r = params["F"], params["rho"], params["z2r"]
    nrho, nr = F.shape[-1], rho.shape[-1]
    z2r = 0.5 * (z2r + jnp.swapaxes(z2r, 0, 1))
    inside = nb.mask & (nb.r < rc)
    r = jnp.where(inside, nb.r, 0.5 * rc)  # safe radius (padded slots: no 1/r issue)
    m, t = _locate(r, dr, nr)
    rho_ij, _ = _horner(_coefficients(rho)[nb.neighbor_species, m], t)
    density = jnp.sum(jnp.where(inside, rho_ij, 0.0), axis=1)
    si = nb.species
    z_ij, _ = _horner(_coefficients(z2r)[si[:, None], nb.neighbor_species, m], t)
    pair = 0.5 * jnp.sum(jnp.where(inside, z_ij / r, 0.0))
    k, u = _locate(density, drho, nrho)
    f_i, slope = _horner(_coefficients(F)[si, k], u)
    f_i = f_i + jnp.where(density > rho_max, slope / drho * (density - rho_max), 0.0)
    return jnp.sum(f_i) + pair


@register("eam")
def eam(
    file: str | Path,
    *,
    fmt: Literal["setfl", "funcfl"] | None = None,
    species: Sequence[str] | None = None,
) -> EAM:
    r"""EAM potential from a LAMMPS table file.

    Args:
      file: a setfl (``eam/alloy``) or funcfl (``eam``) file.
      fmt: ``"setfl"`` or ``"funcfl"``; None picks it from the suffix (``.eam.alloy`` /
        ``.alloy`` / ``.setfl``: setfl; ``.eam``: funcfl).
      species: which of the file's elements to use, in this order (default: all, in file
        order).
    Returns:
      :class:`EAM` with params ``F``, ``rho``, ``z2r`` (float64 tables, see module doc).
    """
    tables = _lammps_files.read_eam(file, fmt)
    if min(tables.nrho, tables.nr) < 5:
        raise ValueError(f"eam: {file}: tables need at least 5 points")
    if species is None:
        species = tables.elements
    missing = [s for s in species if s not in tables.elements]
    if missing:
        raise ValueError(f"eam: {file} has no element(s) {missing}; it has {tables.elements}")
    pick = np.array([tables.elements.index(s) for s in species])
    keep_rho, keep_r = tables.nrho, tables.nr
    if tables.fmt == "funcfl":  # LAMMPS regrids funcfl tables to N - 1 points
        keep_rho, keep_r = tables.nrho - 1, tables.nr - 1
    params = {
        "F": as_param(tables.F[pick, :keep_rho]),
        "rho": as_param(tables.rho[pick, :keep_r]),
        "z2r": as_param(tables.z2r[np.ix_(pick, pick)][..., :keep_r]),
    }
    return EAM(
        params,
        tuple(species),
        float(tables.drho),
        float(tables.dr),
        float(tables.cutoff),
        (tables.nrho - 1) * float(tables.drho),
        str(file),
        tables.fmt,
    )
