"""``relax`` and ``sensitivity`` called again on the same layout with the same kind of
potential reuse the compiled programs (no model built by the caller), and use the new
parameter values."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest

from mdsens.io import read
from mdsens.md import _models, potentials, relax
from mdsens.md.compiled import compilations
from mdsens.md.sensitivity import sensitivity

ARGON = Path(__file__).resolve().parents[1] / "data" / "ar_fcc_32.extxyz"


@pytest.fixture(scope="module")
def argon():
    atoms = read(ARGON)
    atoms.rattle(0.05, seed=3)
    return atoms


def test_relax_again_compiles_nothing_and_uses_the_new_parameters(argon):
    first = relax(argon, potentials.get("lj", sigma=3.4, epsilon=0.0104), fmax=1e-8)
    with compilations() as c:
        second = relax(argon, potentials.get("lj", sigma=3.4, epsilon=0.0208), fmax=1e-8)
    assert c.value == 0
    assert first.converged and second.converged
    assert second.model is first.model
    # the minimum does not depend on epsilon; the energy is proportional to it
    np.testing.assert_allclose(np.asarray(second.system.positions),
                               np.asarray(first.system.positions), atol=1e-6)
    np.testing.assert_allclose(float(second.energy), 2 * float(first.energy), rtol=1e-10)


def test_another_cutoff_is_another_model(argon):
    a = relax(argon, potentials.get("lj", sigma=3.4, epsilon=0.0104), fmax=1e-6)
    b = relax(argon, potentials.get("lj", sigma=3.3, epsilon=0.0104), fmax=1e-6)
    assert a.model is not b.model and b.model.cutoff == pytest.approx(2.5 * 3.3)


def test_sensitivity_again_compiles_nothing(argon):
    kw = dict(wrt=["sigma", "epsilon"], observables=["energy", "positions"],
              relax_options={"fmax": 1e-9})
    first = sensitivity(argon, potentials.get("lj", sigma=3.4, epsilon=0.0104), **kw)
    with compilations() as c:
        second = sensitivity(argon, potentials.get("lj", sigma=3.4, epsilon=0.0208), **kw)
    assert c.value == 0
    # dE/deps = E/eps is the same at both epsilons; dE/dsigma doubles with epsilon
    d1, d2 = first.derivatives["energy"], second.derivatives["energy"]
    np.testing.assert_allclose(d2["epsilon"], d1["epsilon"], rtol=1e-7)
    np.testing.assert_allclose(d2["sigma"], 2 * d1["sigma"], rtol=1e-6, atol=1e-12)


def test_program_key_separates_forms(argon):
    from mdsens.md.system import System

    system = System.from_ase(argon)
    lj = _models.model_for(system, potentials.get("lj", sigma=3.4, epsilon=0.0104))
    morse = _models.model_for(system, potentials.get("morse", sigma=3.4, epsilon=0.0104,
                                                    alpha=1.5))
    lj_other_switch = _models.model_for(
        system, potentials.get("lj", sigma=3.4, epsilon=0.0104, r_onset=1.5))
    assert len({id(lj), id(morse), id(lj_other_switch)}) == 3
    assert _models.model_for(system, potentials.get("lj", sigma=3.4, epsilon=0.5)) is lj


def test_free_releases_mdsens_programs_only(argon):
    """compiled.free() empties mdsens's own compile caches (the next relaxation compiles
    again, to the same result) and leaves the caller's jitted functions alone."""
    import jax.numpy as jnp

    from mdsens.md import compiled

    pot = potentials.get("lj", sigma=3.4, epsilon=0.0104)
    users = jax.jit(lambda x: jnp.sin(x) * 2.0)
    users(jnp.ones(3))
    first = relax(argon, pot, fmax=1e-8)
    assert compiled.free() > 0
    with compiled.compilations() as mine:
        again = relax(argon, pot, fmax=1e-8)
    with compiled.compilations() as theirs:
        users(jnp.ones(3))
    assert mine.value > 0 and theirs.value == 0
    assert again.steps == first.steps and float(again.energy) == float(first.energy)


def test_sensitivity_name_works_in_either_import_order():
    """``mdsens.md.sensitivity`` is a submodule and the function: after the submodule is
    imported, the package attribute is the module, and calling it calls the function."""
    import mdsens.md.sensitivity as module
    from mdsens.md import sensitivity

    assert callable(sensitivity) and callable(module)
    with pytest.raises(ValueError, match="on_failure"):
        sensitivity(None, None, "sigma", on_failure="bogus")
