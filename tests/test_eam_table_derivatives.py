"""Elastic constants differentiated with respect to every knot of the EAM tables.

hcp Cu (4 atoms, orthorhombic cell) with Cu_u3's tables (499 knots each of F, rho and z2r),
cell relaxed: the derivatives come from the reverse-mode elastic stage (far more parameters
than the 36 outputs) and are checked against central differences of the elastic constants
of structures relaxed again (positions and cell) at T_k ± h, for the knot k of each table
with the largest derivative. hcp has internal relaxation under strain (the atoms are not
centres of inversion: the relaxed C11, C12, C66 are 17 GPa away from the affine ones), so
the fixed-cell root's derivative is exercised as well as the cell-relaxation root's.

The steps are small because C depends on one knot very non-linearly: a knot moves the
interpolant's second derivative by ~h/Δ² over a few grid steps and the relaxed lattice moves
with it, so the central difference is O(h²)-accurate only for small h. Measured relative
error of the difference (max over the 6 × 6 block): rho 5.8e-2 / 6.2e-4 / 6.2e-6 / 6.3e-8
at h = 1e-8 / 1e-9 / 1e-10 / 1e-11; F 2.9e-5 / 2.9e-7 / 2.6e-8 at h = 1e-6 / 1e-7 / 1e-8 eV;
z2r 8.1e-6 / 8.1e-8 / 1.8e-9 at h = 1e-7 / 1e-8 / 1e-9 eV Å.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk

from mdsens.md import System, build, relax, sensitivity
from mdsens.md import potentials as P

POT = Path(__file__).resolve().parents[1] / "data" / "potentials" / "Cu_u3.eam"
RELAX = {"relax_cell": True, "fmax": 1e-11, "stress_tol": 1e-12, "max_steps": 100000}
TABLES = ("F", "rho", "z2r")
STEPS = {"F": 1e-8, "rho": 1e-11, "z2r": 1e-9}
WRT = [*TABLES, "pressure"]


@pytest.fixture(scope="module")
def hcp_cu():
    """(system, model, tables, relaxation, sensitivity wrt every knot and the pressure)."""
    atoms = bulk("Cu", "hcp", a=2.557, c=4.161, orthorhombic=True)
    pot = P.get("eam", file=POT)
    system = System.from_ase(atoms)
    model = build(system, pot)
    tables = {k: np.asarray(v) for k, v in pot.params.items()}
    rel = relax(system, model, **RELAX)
    res = sensitivity(rel.system, model, wrt=WRT,
                      observables=["elastic_constants"], relax_cell=True, relaxation=rel,
                      relax_options=RELAX)
    return system, model, tables, rel, res


def _elastic_constants(system, model, params):
    """C (6, 6), eV/Å³, of ``system`` relaxed again (positions and cell) with ``params``
    (the same ``wrt`` as the fixture: its compiled program is reused)."""
    rel = relax(system, model, params=params, **RELAX)
    res = sensitivity(rel.system, model, wrt=WRT, observables=["elastic_constants"],
                      relax_cell=True, relaxation=rel, params=params, relax_options=RELAX)
    return res.values["elastic_constants"]


def test_table_derivatives_use_reverse_mode_and_bounded_shapes(hcp_cu):
    _, _, tables, _, res = hcp_cu
    assert res.converged, res.problems
    assert res.diagnostics["elastic_solves"]["mode"] == "reverse"
    for name in TABLES:
        d = res.derivatives["elastic_constants"][name]
        assert d.shape == (6, 6, *tables[name].shape)
        assert np.all(np.isfinite(d))


@pytest.mark.parametrize("name", TABLES)
def test_table_derivative_matches_central_difference(hcp_cu, name):
    """dC/dT_k for the knot k of each table with the largest derivative (6 × 6 block)."""
    system, model, tables, _, res = hcp_cu
    d = res.derivatives["elastic_constants"][name]
    k = np.unravel_index(np.argmax(np.abs(d).reshape(36, -1).max(axis=0)), tables[name].shape)
    analytic = d[(..., *k)]
    h = STEPS[name]
    values = []
    for sign in (1.0, -1.0):
        params = {key: v.copy() for key, v in tables.items()}
        params[name][k] += sign * h
        values.append(_elastic_constants(system, model, params))
    central = (values[0] - values[1]) / (2 * h)
    scale = np.abs(analytic).max()
    assert scale > 0
    np.testing.assert_allclose(analytic, central, rtol=0, atol=1e-6 * scale)


@pytest.mark.slow  # ≈ 20 s: compiles the forward-mode elastic stage
def test_reverse_mode_matches_forward_mode(hcp_cu):
    """C and dC/dP from the reverse stage (with the 1497 table knots) equal those of the
    forward stage (the pressure alone) at the same relaxed state."""
    _, model, _, rel, res = hcp_cu
    forward = sensitivity(rel.system, model, wrt=["pressure"],
                          observables=["elastic_constants"], relax_cell=True,
                          relaxation=rel, relax_options=RELAX)
    assert forward.diagnostics["elastic_solves"]["mode"] == "forward"
    C = forward.values["elastic_constants"]
    np.testing.assert_allclose(res.values["elastic_constants"], C, rtol=0,
                               atol=1e-12 * np.abs(C).max())
    d_rev = res.derivatives["elastic_constants"]["pressure"]
    d_fwd = forward.derivatives["elastic_constants"]["pressure"]
    np.testing.assert_allclose(d_rev, d_fwd, rtol=0, atol=1e-9 * np.abs(d_fwd).max())
