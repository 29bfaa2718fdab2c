"""Gradients of losses over several relaxed structures (bulk, vacancy, elastic constants):
scaling laws for LJ, central differences of re-relaxed structures for EAM copper."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import bulk

from mdsens.md import potentials, relaxed_state

GPA = 160.21766208
CU_U3 = Path(__file__).resolve().parents[1] / "data" / "potentials" / "Cu_u3.eam"


def three_observables(cell, pot, params_fn):
    """``θ -> (a, E_vac, C44)``: lattice constant (Å), zero-pressure vacancy formation
    energy E_v − (N−1) e in a 2×2×2 supercell (eV) and relaxed C44 (GPa) — three roots."""
    supercell = cell.repeat(2)
    n = len(supercell)
    del supercell[0]
    bulk_fn = relaxed_state(cell, pot, params_fn=params_fn, relax_cell=True,
                            elastic_constants=True)
    vacancy_fn = relaxed_state(supercell, pot, params_fn=params_fn, relax_cell=True)

    def observables(theta):
        b, v = bulk_fn(theta), vacancy_fn(theta)
        return jnp.stack([b.cell[0, 0], v.energy - (n - 1) * b.energy_per_atom,
                          GPA * b.elastic_constants[3, 3]])

    return observables


def test_lj_bulk_vacancy_and_c44_gradients_follow_scaling_laws():
    """LJ: a ∝ σ, E_vac ∝ ε, C44 ∝ ε/σ³, so d log o / d log θ is (1, 0), (0, 1), (−3, 1)."""
    pot = potentials.get("lj", sigma=3.4, epsilon=0.0104)
    obs = three_observables(bulk("Ar", "fcc", a=5.26, cubic=True), pot,
                            lambda th: {"sigma": th[0], "epsilon": th[1]})
    theta = jnp.array([3.4, 0.0104])
    values = obs(theta)
    assert 0.05 < float(values[1]) < 0.15  # LJ E_vac ≈ 8 ε
    jac = np.asarray(jax.jit(jax.jacfwd(obs))(theta))
    log_slopes = jac * np.asarray(theta)[None, :] / np.asarray(values)[:, None]
    np.testing.assert_allclose(log_slopes, [[1, 0], [0, 1], [-3, 1]], atol=2e-6)
    # one scalar loss over the three: reverse mode through all three roots
    loss = lambda th: jnp.sum((obs(th) / values - 1.1) ** 2)  # noqa: E731
    g = np.asarray(jax.grad(loss)(theta))
    np.testing.assert_allclose(g, 2 * (1 - 1.1) * np.asarray(jac).T @ (1 / np.asarray(values)),
                               rtol=1e-6)


@pytest.mark.slow
def test_eam_copper_gradients_match_central_differences():
    pot = potentials.get("eam", file=str(CU_U3))
    tables = {k: jnp.asarray(v) for k, v in pot.params.items()}

    def params_fn(th):
        return {"F": th[0] * tables["F"], "rho": th[1] * tables["rho"],
                "z2r": th[2] * tables["z2r"]}

    obs = three_observables(bulk("Cu", "fcc", a=3.615, cubic=True), pot, params_fn)
    theta = jnp.ones(3)
    values = np.asarray(obs(theta))
    np.testing.assert_allclose(values, [3.615, 1.2845, 76.45], rtol=2e-3)  # Cu_u3's own
    jac = np.asarray(jax.jit(jax.jacfwd(obs))(theta))
    h = 1e-4
    evaluate = jax.jit(obs)  # every call re-relaxes from the reference structures
    for k in range(3):
        step = jnp.zeros(3).at[k].set(h)
        fd = (np.asarray(evaluate(theta + step)) - np.asarray(evaluate(theta - step))) / (2 * h)
        tolerance = 1e-4 * np.abs(fd) + 1e-6 * np.abs(values)  # per observable
        assert np.all(np.abs(jac[:, k] - fd) <= tolerance), (k, jac[:, k], fd)
