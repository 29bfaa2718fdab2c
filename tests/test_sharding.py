"""Energy evaluations spread over several devices (row blocks of the neighbour list, one per
device) give the single-device numbers: energy, forces, stress, a relaxation and its
derivatives. Run in a subprocess that has two CPU devices."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import json, sys
import jax, jax.numpy as jnp, numpy as np
jax.config.update("jax_enable_x64", True)
from ase.build import bulk
from mdsens.md import potentials, relax, build, System
from mdsens.md.sensitivity import sensitivity
assert len(jax.devices()) == 2, jax.devices()
atoms = bulk("Ar", "fcc", a=5.3, cubic=True).repeat((7, 7, 7))   # 1372 atoms
atoms.positions += np.random.default_rng(1).normal(0, 0.08, atoms.positions.shape)
pot = potentials.get("lj", sigma=3.4, epsilon=0.0104)
system = System.from_ase(atoms)
out = {}
models = {k: build(system, pot, devices=d) for k, d in (("one", None), ("two", 2))}
out["mesh"] = [models["one"].mesh is None, models["two"].mesh is not None]
for k, m in models.items():
    nb = m.allocate(system.positions, system.cell)
    f = jax.jit(lambda R, C: (m.energy(R, C, pot.params, nb), m.forces(R, C, pot.params, nb),
                              m.stress(R, C, pot.params, nb)))
    e, F, S = f(system.positions, system.cell)
    out[k] = [float(e), np.asarray(F).tolist(), np.asarray(S).tolist()]
r1 = relax(atoms, pot, fmax=1e-4, devices=None, relax_cell=True)
r2 = relax(atoms, pot, fmax=1e-4, devices=2, relax_cell=True)
out["relax"] = [r1.steps, r2.steps, float(r1.energy), float(r2.energy), r2.converged]
if "--derivatives" in sys.argv:
    kw = dict(wrt=["sigma"], observables=["energy", "volume"], relax_cell=True,
              relax_options={"fmax": 1e-7, "devices": None}, rattlers=False)
    s1 = sensitivity(atoms, pot, **kw)
    kw["relax_options"] = {"fmax": 1e-7, "devices": 2}
    s2 = sensitivity(atoms, pot, **kw)
    out["sens"] = [float(np.ravel(s1.derivatives[o]["sigma"])[0])
                   for o in ("energy", "volume")] + \
                  [float(np.ravel(s2.derivatives[o]["sigma"])[0])
                   for o in ("energy", "volume")]
    out["sens_model_mesh"] = s2.relaxation.model.mesh is not None
print("RESULT", json.dumps(out))
"""


def _run(*args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, *args], capture_output=True,
                          text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(s for s in proc.stdout.splitlines() if s.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


@pytest.fixture(scope="module")
def two_devices() -> dict:
    return _run()


def test_energy_forces_stress_and_relaxation_equal_one_device(two_devices):
    """One test (one subprocess): a module fixture would run once per xdist worker."""
    import numpy as np

    assert two_devices["mesh"] == [True, True]
    (e1, f1, s1), (e2, f2, s2) = two_devices["one"], two_devices["two"]
    assert e2 == pytest.approx(e1, rel=1e-13)
    np.testing.assert_allclose(f2, f1, rtol=0, atol=1e-13)
    np.testing.assert_allclose(s2, s1, rtol=0, atol=1e-15)
    assert np.max(np.abs(f1)) > 1e-2  # a state with forces, not a trivial comparison
    steps1, steps2, e1, e2, converged = two_devices["relax"]
    assert converged and steps1 == steps2 and e2 == pytest.approx(e1, rel=1e-12)


@pytest.mark.slow
def test_derivatives_equal_one_device():
    """Hessian-vector products and parameter derivatives through the split evaluation."""
    out = _run("--derivatives")
    dE1, dV1, dE2, dV2 = out["sens"]
    assert out["sens_model_mesh"]
    assert dE2 == pytest.approx(dE1, rel=1e-8) and dV2 == pytest.approx(dV1, rel=1e-8)
