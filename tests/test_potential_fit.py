"""Fitting a potential to relaxed properties (mdsens.bilevel.potential_fit): the loss
gradient by implicit differentiation vs central differences of the re-relaxed loss, and a
fit of LJ σ, ε to three measured properties of solid argon."""

import jax
import numpy as np
import pytest
from ase.build import bulk
from scipy.optimize import OptimizeResult, minimize

from mdsens.bilevel.potential_fit import fit_potential
from mdsens.md import System, potentials

jax.config.update("jax_enable_x64", True)

# Solid argon near 0 K: a = 5.311 Å (Peterson, Batchelder & Simmons, Phys. Rev. 150, 703
# (1966)); cohesive energy 7.74 kJ/mol = 0.0803 eV/atom and bulk modulus 2.7 GPa (Kittel,
# Introduction to Solid State Physics, 8th ed., ch. 3, tables of inert-gas crystals).
TARGETS = {"lattice_constant": 5.311, "cohesive_energy": 0.0803, "bulk_modulus": 2.7}
# Kittel's LJ parameters of argon from gas-phase data: the start of the fit
GAS_PHASE = {"sigma": 3.40, "epsilon": 0.0104}


@pytest.fixture(scope="module")
def argon():
    return System.from_ase(bulk("Ar", "fcc", a=5.26, cubic=True))


def test_fit_to_argon_lattice_constant_bulk_modulus_and_cohesive_energy(argon):
    """One fit (one compiled derivative function): at the start, dL/d(log θ) — through the
    cell relaxation and, for the bulk modulus, through the strained fixed-cell relaxation
    — matches central differences of the re-relaxed loss; then L-BFGS-B brings all three
    relaxed properties within 1 % of experiment with two parameters."""
    probes = {}

    def probe_then_lbfgsb(fun, x0, args=(), jac=None, **options):
        h = 1e-4
        fun(x0)
        probes["grad"] = jac(x0)  # scipy splits fun(x) -> (loss, grad) into fun and jac
        probes["fd"] = np.array([
            (fun(x0 + h * e) - fun(x0 - h * e)) / (2 * h) for e in np.eye(x0.size)])
        return minimize(lambda x: (fun(x), jac(x)), x0, jac=True, method="L-BFGS-B",
                        options={"maxiter": 30, "gtol": 1e-10, "ftol": 1e-14})

    pot = potentials.get("lj", **GAS_PHASE)
    fit = fit_potential(argon, pot, TARGETS, wrt=["sigma", "epsilon"],
                        method=probe_then_lbfgsb)
    grad, fd = probes["grad"], probes["fd"]
    assert np.all(np.abs(grad) > 1e-3)
    np.testing.assert_allclose(grad, fd, rtol=1e-5)

    first = fit.evaluations[0]["observables"]
    assert abs(first["bulk_modulus"] / TARGETS["bulk_modulus"] - 1) > 0.04, first
    for k in TARGETS:
        assert abs(fit.relative_errors[k]) < 1e-2, fit.table()
    assert fit.loss < 0.05 * fit.loss_history[0]
    assert fit.success, fit.message
    assert 3.38 < fit.params["sigma"] < 3.48 and 0.0098 < fit.params["epsilon"] < 0.0106


def test_reported_gradient_is_in_the_parameters(argon):
    """``fit.gradient`` is dL/dθ; the optimiser sees dL/dz with z = (log θ − log θ₀)/0.1,
    so dL/dz = 0.1 θ dL/dθ (checked at the start, where θ = θ₀)."""
    seen = {}

    def one_step(fun, x0, args=(), jac=None, **_):
        seen["dz"] = jac(x0)
        return OptimizeResult(x=x0, success=True, message="one evaluation", nit=0)

    pot = potentials.get("lj", **GAS_PHASE)
    fit = fit_potential(argon, pot, {"lattice_constant": 5.311, "cohesive_energy": 0.0803},
                        wrt=["sigma", "epsilon"], method=one_step)
    np.testing.assert_allclose(
        [0.1 * 3.40 * fit.gradient["sigma"], 0.1 * 0.0104 * fit.gradient["epsilon"]],
        seen["dz"], rtol=1e-10)
