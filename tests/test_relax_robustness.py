"""Relaxations that land or say why: overlapping random starts, heavily rattled crystals with
a relaxing cell, runaway cells (a fast subset of ``benchmarks/robustness.py``).

References: the end point is checked to be a minimum by the dense Hessian's spectrum on the
complement of the translations, and compared with ASE's FIRE (+ ``FrechetCellFilter``) on
the same model (ASE's ``LennardJones(smooth=True)``, the switch of mdsens's LJ) where both
converge to the same crystal.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import bulk

from mdsens.md import RelaxOptions, System, build, potentials, relax
from mdsens.md.minimize import RelaxationError, Status

LJ = potentials.get("lj")


def _random_start(n: int, density: float, seed: int, closest: float | None = None) -> System:
    """Uniform random positions in a cube; ``closest``: atom 1 put that far from atom 0."""
    rng = np.random.default_rng(seed)
    side = (n / density) ** (1 / 3)
    R = rng.uniform(0, side, (n, 3))
    if closest is not None:
        R[1] = R[0] + closest * np.array([1.0, 0.0, 0.0])
    return System.create(R, np.eye(3) * side)


def _lowest_curvature(result, zero_modes: int = 3) -> float:
    """Smallest eigenvalue of the dense position Hessian at the end point above its
    ``zero_modes`` lowest (the translations of a periodic system)."""
    model = result.model
    R = jnp.asarray(result.system.positions)
    cell = jnp.asarray(result.system.cell)

    def energy(x):
        return model.energy(x.reshape(R.shape), cell, model.params, result.nbrs)

    H = np.asarray(jax.jit(jax.hessian(energy))(R.ravel()))
    eig = np.linalg.eigvalsh(0.5 * (H + H.T))
    return float(eig[zero_modes])


@pytest.mark.parametrize("seed, closest", [(5, None), (21, 0.01)])
def test_overlapping_random_start_lands_on_a_minimum(seed, closest):
    """Uniform random LJ, N = 216 at ρ = 0.95 (seed 5: FIRE 2.0 stalled on it at fmax 13 for
    200000 steps; LAMMPS's FIRE 2.0 loses atoms); seed 21 with a pair at 0.01σ (energy
    ~1e24). The default relaxation converges, every state it reports is finite, and the
    end point is a minimum."""
    start = _random_start(216, 0.95, seed, closest)
    result = relax(start, LJ, fmax=1e-6, max_steps=20000)
    assert result.status is Status.CONVERGED, result.message
    assert float(result.fmax) <= 1e-6 and np.isfinite(float(result.energy))
    assert np.all(np.isfinite(np.asarray(result.system.positions)))
    assert -7.5 < float(result.energy) / 216 < -5.0  # a dense LJ solid/glass, not a blow-up
    assert _lowest_curvature(result) > -1e-8


def test_fire2_overlapping_start_never_accepts_a_nonfinite_step():
    """FIRE 2.0 from the start with a pair at 0.01σ: whatever it reaches in 400 steps, every
    reported quantity is finite (the overlap is resolved by rejected-and-retried steps)."""
    start = _random_start(216, 0.95, 21, closest=0.01)
    result = relax(start, LJ, method="fire2", fmax=1e-6, max_steps=400, on_failure="ignore")
    assert result.status in (Status.CONVERGED, Status.MAX_STEPS), result.message
    assert np.isfinite(float(result.energy)) and float(result.energy) < 0
    assert np.all(np.isfinite(np.asarray(result.system.positions)))


def test_soft_spheres_near_jamming_land():
    """Bidisperse harmonic soft spheres in 2-D at φ = 0.86, a uniform random start (jammed:
    the minimum has a positive energy): the default relaxation converges in well under the
    default step limit (with Lennard-Jones's time unit it took 35000 steps; the potential's
    own bond stiffness sets it now), to a minimum."""
    rng = np.random.default_rng(5)
    n = 256
    species = np.repeat([0, 1], n // 2)
    diameter = np.where(species == 0, 1.0, 1.4)
    side = (np.sum(np.pi / 4 * diameter**2) / 0.86) ** 0.5
    start = System.create(rng.uniform(0, side, (n, 2)), np.eye(2) * side, species=species,
                          species_names=("A", "B"))
    sigma = np.array([[1.0, 1.2], [1.2, 1.4]])
    pot = potentials.get("soft_sphere", sigma=sigma, species=("A", "B"))
    result = relax(start, pot, fmax=1e-6)
    assert result.status is Status.CONVERGED and result.steps < 8000, result.message
    assert float(result.energy) > 0  # jammed
    assert _lowest_curvature(result, zero_modes=2) > -1e-8


def _argon(n: int, rattle: float, seed: int):
    atoms = bulk("Ar", "fcc", a=5.26, cubic=True).repeat((n, n, n))
    atoms.rattle(stdev=rattle, seed=seed)
    return atoms


def test_rattled_crystal_with_relaxing_cell_matches_ase():
    """Ar fcc 3×3×3 rattled by 0.35 Å (the 10×10×10 case ran away to a 1e12 Å cell and was
    reported "converged"): the cell relaxation converges to the crystal ASE's FIRE +
    FrechetCellFilter finds on the same model (energy and volume)."""
    from ase.calculators.lj import LennardJones
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE

    sigma, eps = 3.4, 0.0104
    atoms = _argon(3, 0.35, 2)
    pot = potentials.get("lj", sigma=sigma, epsilon=eps)
    result = relax(atoms, pot, relax_cell=True, fmax=1e-6, max_steps=20000)
    assert result.status is Status.CONVERGED, result.message
    volume = abs(float(np.linalg.det(np.asarray(result.system.cell))))
    assert 0.5 < volume / atoms.get_volume() < 2.0

    ref = atoms.copy()
    ref.calc = LennardJones(sigma=sigma, epsilon=eps, rc=2.5 * sigma, ro=2.0 * sigma,
                            smooth=True)
    FIRE(FrechetCellFilter(ref), logfile=None).run(fmax=1e-5, steps=5000)
    np.testing.assert_allclose(float(result.energy), ref.get_potential_energy(), rtol=1e-8)
    # ASE stopped at 1e-5 eV/Å (to keep the test short): its volume is off by ~1e-5
    np.testing.assert_allclose(volume, ref.get_volume(), rtol=5e-5)


def test_runaway_case_relaxes_to_the_crystal():
    """Ar fcc 5×5×5 rattled by 0.35 Å with a relaxing cell (before the step safeguards the
    cell ran away to 75×130×23 Å, not converged after 10000 steps): converges to the fcc
    crystal, whose energy and volume per atom come from ASE's LennardJones on the 4-atom
    cubic cell minimised over the lattice constant."""
    from ase.calculators.lj import LennardJones
    from scipy.optimize import minimize_scalar

    sigma, eps = 3.4, 0.0104
    calc = LennardJones(sigma=sigma, epsilon=eps, rc=2.5 * sigma, ro=2.0 * sigma, smooth=True)

    def per_atom(a):
        cell = bulk("Ar", "fcc", a=a, cubic=True)
        cell.calc = calc
        return cell.get_potential_energy() / 4

    best = minimize_scalar(per_atom, bracket=(5.2, 5.26, 5.32), tol=1e-10)
    atoms = _argon(5, 0.35, 2)
    result = relax(atoms, potentials.get("lj", sigma=sigma, epsilon=eps), relax_cell=True,
                   fmax=1e-6, max_steps=20000)
    assert result.status is Status.CONVERGED, result.message
    np.testing.assert_allclose(float(result.energy) / 500, best.fun, rtol=1e-9)
    volume = abs(float(np.linalg.det(np.asarray(result.system.cell))))
    np.testing.assert_allclose(volume / 500, best.x**3 / 4, rtol=1e-5)


def test_cell_under_tension_diverges_and_says_so():
    """A crystal pulled by a tension beyond its strength (p = -0.05 eV/Å³, -8 GPa, on argon)
    has no minimum: the cell grows until its volume leaves [V0/8, 8 V0] and the relaxation
    stops as CELL_DIVERGED, never "converged"; the default policy raises."""
    atoms = _argon(2, 0.05, 1)
    pot = potentials.get("lj", sigma=3.4, epsilon=0.0104)
    result = relax(atoms, pot, relax_cell=True, pressure=-0.05, max_steps=20000,
                   on_failure="ignore")
    assert result.status is Status.CELL_DIVERGED and not result.converged, result.message
    assert np.isfinite(float(result.energy))
    with pytest.raises(RelaxationError, match="diverged"):
        relax(atoms, pot, relax_cell=True, pressure=-0.05, max_steps=20000)


def test_repulsive_packing_with_relaxing_cell_is_diverged_not_converged():
    """Soft spheres (purely repulsive) at zero pressure: the cell expands until no pair
    overlaps, where forces and stress vanish (a stationary point of nothing). That end is
    CELL_DIVERGED (energy 0 where the start had overlaps), never "converged"."""
    rng = np.random.default_rng(3)
    n, side = 64, 4.0
    R = rng.uniform(0, side, (n, 3))
    start = System.create(R, np.eye(3) * side)
    pot = potentials.get("soft_sphere")
    assert float(build(start, pot).energy(start.positions, start.cell, None,
                                           build(start, pot).allocate(start.positions,
                                                                      start.cell))) > 0
    result = relax(start, pot, relax_cell=True, max_steps=20000, on_failure="ignore")
    assert result.status is Status.CELL_DIVERGED, result.message
    # at fixed cell an energy of 0 is a real (unjammed) minimum: converged
    fixed = relax(start.replace(cell=np.eye(3) * 2 * side, positions=2 * R), pot,
                  max_steps=20000)
    assert fixed.status is Status.CONVERGED and float(fixed.energy) == 0.0


def test_coincident_atoms_are_nonfinite_at_the_start():
    start = _random_start(32, 0.5, 0, closest=0.0)
    result = relax(start, LJ, on_failure="ignore")
    assert result.status is Status.NONFINITE and result.steps == 0


def test_relax_options_validate_and_compose():
    options = RelaxOptions(fmax=1e-4, max_steps=10)
    assert RelaxOptions.of(options, method="fire2").method == "fire2"
    assert RelaxOptions.of({"fmax": 1e-3}).fmax == 1e-3
    assert options.replace(pressure=0.1).compile_key() == RelaxOptions()
    assert options.replace(relax_cell=True).compile_key() != RelaxOptions()
    assert options.changed() == {"fmax": 1e-4, "max_steps": 10}
    for bad in ({"fmax": 0}, {"fmax": float("nan")}, {"max_steps": 1.5}, {"method": "bfgs"},
                {"dt": 0.1, "dt_max": 0.01}, {"max_volume_ratio": 1.0}, {"chunk": 0},
                {"relax_cell": "yes"}, {"neighbor_list": "always"}, {"skin": -1.0}):
        with pytest.raises(ValueError):
            RelaxOptions(**bad)
    with pytest.raises(TypeError, match="unknown relaxation setting"):
        RelaxOptions.of(None, fmx=1e-3)
