"""Sensitivities of relaxed structures against dense linear algebra, finite differences,
scaling laws and jax-md's elastic moduli."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import bulk
from helpers import binary_lj_crystal

from mdsens.md import System, build, potentials
from mdsens.md.minimize import relax
from mdsens.md.sensitivity import SensitivityError, sensitivity

N_SOFT = 128


def soft_sphere_packing(phi: float, seed: int = 0) -> tuple[System, potentials.Potential]:
    """The 2D bidisperse soft-sphere packing (diameters 1 : 1.4, 50:50) at packing fraction φ."""
    rng = np.random.default_rng(seed)
    species = np.array(["A"] * (N_SOFT // 2) + ["B"] * (N_SOFT // 2))
    diameters = np.where(species == "A", 1.0, 1.4)
    L = np.sqrt(np.sum(np.pi * (diameters / 2) ** 2) / phi)
    system = System.create(rng.random((N_SOFT, 2)) * L, cell=np.diag([L, L]),
                           species=list(species))
    pot = potentials.get(
        "soft_sphere", sigma={("A", "A"): 1.0, ("A", "B"): 1.2, ("B", "B"): 1.4}
    )
    return system, pot


@pytest.fixture(scope="module")
def packing():
    system, pot = soft_sphere_packing(0.9)
    result = sensitivity(system, pot, wrt=["sigma[A,B]", "sigma"],
                         observables=["positions", "energy"], mode="forward")
    return system, pot, result


def _dense_reference(relaxation, pot, param_fn):
    """−H⁺ ∂_θ∇E by dense pseudo-inverse (numpy), θ ↦ params given by ``param_fn``."""
    model = build(relaxation.system, pot, neighbor_list=False)
    R, C = relaxation.system.positions, relaxation.system.cell
    n = R.size
    H = np.asarray(jax.hessian(lambda R: model.energy(R, C))(R)).reshape(n, n)
    B = np.asarray(jax.jacfwd(
        lambda t: jax.grad(lambda R: model.energy(R, C, param_fn(t)))(R))(0.0)).reshape(n)
    return -(np.linalg.pinv(H, rcond=1e-12, hermitian=True) @ B).reshape(R.shape)


def test_soft_spheres_vs_dense_lstsq(packing):
    system, pot, result = packing
    assert result.converged, result.problems
    sig = pot.params["sigma"]
    i, j = pot.species.index("A"), pot.species.index("B")
    bump = np.zeros((2, 2))
    bump[i, j] = bump[j, i] = 1.0
    ref = _dense_reference(result.relaxation, pot,
                           lambda t: {**pot.params, "sigma": sig + t * jnp.asarray(bump)})
    got = result.derivatives["positions"]["sigma[A,B]"]
    assert got.shape == (N_SOFT, 2)
    np.testing.assert_allclose(got, ref, atol=1e-7 * np.abs(ref).max())
    # the same pair through the whole (2, 2) matrix: G[a, b] + G[b, a]
    whole = result.derivatives["positions"]["sigma"]
    assert whole.shape == (N_SOFT, 2, 2, 2)
    np.testing.assert_allclose(whole[..., i, j] + whole[..., j, i], got, atol=1e-8)


def test_soft_spheres_vs_central_differences(packing):
    """Re-relax at σ_AB ± h (float64, h = 1e-6) from the relaxed state; compare with the
    centre of mass fixed."""
    system, pot, result = packing
    h = 1e-6
    start = result.relaxation.system
    i, j = pot.species.index("A"), pot.species.index("B")

    def relaxed_positions(delta):
        sig = np.array(pot.params["sigma"])
        sig[i, j] += delta
        sig[j, i] += delta
        p = pot.with_params(sigma=jnp.asarray(sig))
        r = relax(start, p, fmax=1e-12, max_steps=50000)
        return np.asarray(r.system.positions)

    diff = (relaxed_positions(h) - relaxed_positions(-h)) / (2 * h)
    diff -= diff.mean(axis=0)
    got = result.derivatives["positions"]["sigma[A,B]"]
    np.testing.assert_allclose(got, diff, atol=2e-4 * np.abs(got).max())


def test_forward_reverse_transposition(packing):
    """⟨w, J v⟩ = ⟨Jᵀ w, v⟩ for an observable that is not translation invariant (the
    positions of a few atoms): reverse mode projects ∂obs/∂R onto the complement of
    translations and reports the removed part."""
    system, pot, forward = packing

    def first_atoms(R, cell, params):
        return R[:4]

    reverse = sensitivity(system, pot, wrt=["sigma[A,B]", "epsilon"],
                          observables=[first_atoms], mode="reverse",
                          relaxation=forward.relaxation)
    J_fwd = forward.derivatives["positions"]["sigma[A,B]"][:4].ravel()
    J_rev = reverse.derivatives["first_atoms"]["sigma[A,B]"].ravel()
    rng = np.random.default_rng(3)
    w, v = rng.normal(size=J_fwd.size), 0.7
    np.testing.assert_allclose(w @ (J_fwd * v), (J_rev @ w) * v, rtol=1e-8)
    np.testing.assert_allclose(J_fwd, J_rev, atol=1e-8 * np.abs(J_fwd).max())
    # a unit cotangent on one coordinate has a component 1/sqrt(N) along a translation
    np.testing.assert_allclose(
        reverse.diagnostics["solves"]["nullspace_component"], 1 / np.sqrt(N_SOFT), rtol=1e-10
    )
    # soft-sphere minima do not move with ε (energy scale only): dx/dε = −H⁺∇E/ε, which is
    # only the root's residual (fmax 1e-8 eV/Å) amplified by H⁺ (λ_min ~ 6e-3)
    np.testing.assert_allclose(reverse.derivatives["first_atoms"]["epsilon"], 0.0, atol=1e-5)


def test_energy_derivative_is_hellmann_feynman(packing):
    """dE/dθ at a minimum equals the explicit ∂E/∂θ (the relaxation term vanishes)."""
    system, pot, result = packing
    model = build(result.relaxation.system, pot, neighbor_list=False)
    R, C = result.relaxation.system.positions, result.relaxation.system.cell
    explicit = jax.grad(lambda s: model.energy(R, C, {**pot.params, "sigma": s}))(
        pot.params["sigma"])
    np.testing.assert_allclose(result.derivatives["energy"]["sigma"], explicit, rtol=1e-6)


@pytest.fixture(scope="module")
def lj_fcc():
    atoms = bulk("Ar", "fcc", a=5.3, cubic=True).repeat((2, 2, 2))
    atoms.rattle(0.05, seed=1)
    return System.from_ase(atoms), potentials.get("lj", sigma=3.4, epsilon=0.0104)


def test_lj_scaling_laws_with_cell_relaxation(lj_fcc):
    """Lengths scale with σ, energies with ε: da₀/dσ = a₀/σ, dE/dε = E/ε, dE/dσ = 0."""
    system, pot = lj_fcc
    res = sensitivity(system, pot, wrt=["sigma", "epsilon"],
                      observables=["lattice_parameters", "energy", "volume"], relax_cell=True)
    assert res.converged, res.problems
    a = res.values["lattice_parameters"][:3]
    np.testing.assert_allclose(res.derivatives["lattice_parameters"]["sigma"][:3], a / 3.4,
                               rtol=1e-7)
    np.testing.assert_allclose(res.derivatives["lattice_parameters"]["sigma"][3:], 0,
                               atol=1e-6)
    E = res.values["energy"]
    np.testing.assert_allclose(res.derivatives["energy"]["epsilon"], E / 0.0104, rtol=1e-7)
    np.testing.assert_allclose(res.derivatives["energy"]["sigma"], 0.0, atol=1e-8 * abs(E))
    V = res.values["volume"]
    np.testing.assert_allclose(res.derivatives["volume"]["sigma"], 3 * V / 3.4, rtol=1e-7)


def test_lj_elastic_constants_vs_jax_md_and_stress_differences(lj_fcc):
    """C = dσ/dη through the relaxation vs finite differences of relaxed stress and vs
    jax_md.elasticity.athermal_moduli, at zero residual stress (cell relaxed first)."""
    from jax_md import elasticity, energy, space

    system, pot = lj_fcc
    cell_relaxed = relax(system, pot, relax_cell=True, fmax=1e-10).system
    res = sensitivity(cell_relaxed, pot, wrt=["strain"],
                      observables=["elastic_constants", "stress"])
    C = res.values["elastic_constants"]
    assert C.shape == (6, 6)
    # cubic symmetry
    np.testing.assert_allclose(C[0, 0], C[1, 1], rtol=1e-6)
    np.testing.assert_allclose(C[3, 3], C[5, 5], rtol=1e-6)
    # the same tensor from the strain derivative of the stress observable
    np.testing.assert_allclose(res.derivatives["stress"]["strain"], C, atol=1e-9)

    # finite differences of the relaxed stress under applied strain η (fixed cell); one
    # model for both strained cells (same layout), so its loop and stress compile once
    model = build(cell_relaxed, pot)
    stress = jax.jit(model.stress)

    def relaxed_stress(eta):
        F = np.eye(3) + np.array([[eta, 0, 0], [0, 0, eta / 2], [0, eta / 2, 0]])
        strained = cell_relaxed.replace(positions=cell_relaxed.positions @ F,
                                        cell=cell_relaxed.cell @ F)
        r = relax(strained, model, fmax=1e-11)
        s = stress(r.system.positions, r.system.cell, None,
                   model.allocate(r.system.positions, r.system.cell))
        return np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])

    h = 1e-5
    fd = (relaxed_stress(h) - relaxed_stress(-h)) / (2 * h)
    np.testing.assert_allclose(C[:, 0] + C[:, 3], fd, atol=1e-5 * np.abs(C).max())

    # jax-md: same smooth LJ in reduced units, positions fractional in the relaxed box,
    # replicated 2x2x2 so that its minimum image sees every neighbour (box > 2 r_cut)
    sigma, eps = 3.4, 0.0104
    big = cell_relaxed.to_ase().repeat((2, 2, 2))
    box = jnp.asarray(np.array(big.cell)).T / sigma
    disp, _ = space.periodic_general(box)
    R_frac = jnp.asarray(big.get_scaled_positions(wrap=True))
    energy_fn = energy.lennard_jones_pair(disp, sigma=jnp.float64(1.0),
                                          epsilon=jnp.float64(1.0), r_onset=2.0, r_cutoff=2.5)
    moduli = jax.jit(elasticity.athermal_moduli(energy_fn, check_convergence=True))(
        R_frac, box)
    C_jm = np.asarray(elasticity.tensor_to_mandel(moduli[0] if isinstance(moduli, tuple)
                                                  else moduli))
    # Mandel → Voigt: shear rows/columns carry √2 factors
    scale = np.array([1, 1, 1, 1 / np.sqrt(2), 1 / np.sqrt(2), 1 / np.sqrt(2)])
    C_jm_voigt = C_jm * np.outer(scale, scale) * eps / sigma**3
    np.testing.assert_allclose(C, C_jm_voigt, atol=1e-6 * np.abs(C).max())


@pytest.mark.slow  # ≈ 45 s; dC/dθ is also checked against finite differences in
# tests/test_potential_fit.py (bulk-modulus target)
def test_elastic_constants_derivative_follows_scaling_law(lj_fcc):
    """With the cell relaxed at every σ, C ∝ ε/σ³, so dC/dσ = −3C/σ and dC/dε = C/ε: the
    second derivatives through both relaxations (cell, then positions under strain)."""
    system, pot = lj_fcc
    res = sensitivity(system, pot, wrt=["sigma", "epsilon"],
                      observables=["elastic_constants"], relax_cell=True)
    C = res.values["elastic_constants"]
    scale = np.abs(C).max()
    np.testing.assert_allclose(res.derivatives["elastic_constants"]["sigma"], -3 * C / 3.4,
                               atol=1e-6 * scale)
    np.testing.assert_allclose(res.derivatives["elastic_constants"]["epsilon"], C / 0.0104,
                               atol=1e-6 * scale / 0.0104)
    assert res.diagnostics["elastic_solves"]["converged"].all()


def test_unconverged_packing_is_flagged():
    """A packing near jamming stopped after a few FIRE steps is not a minimum: flagged under
    every policy, raised by default."""
    system, pot = soft_sphere_packing(0.84, seed=5)
    with pytest.raises(SensitivityError, match="relaxation did not converge"):
        sensitivity(system, pot, wrt=["sigma"], observables=["positions"],
                    relax_options={"max_steps": 20})
    res = sensitivity(system, pot, wrt=["sigma"], observables=["positions"],
                      relax_options={"max_steps": 20}, on_failure="nan")
    assert not res.converged
    assert np.all(np.isnan(res.derivatives["positions"]["sigma"]))
    with pytest.warns(RuntimeWarning, match="did not converge"):
        sensitivity(system, pot, wrt=["sigma"], observables=["positions"],
                    relax_options={"max_steps": 20}, on_failure="warn")


def test_bad_requests_are_rejected(lj_fcc):
    system, pot = lj_fcc
    with pytest.raises(ValueError, match="unknown parameter"):
        sensitivity(system, pot, wrt=["rho"], observables=["energy"])
    with pytest.raises(ValueError, match="unknown observable"):
        sensitivity(system, pot, wrt=["sigma"], observables=["entropy"])
    with pytest.raises(ValueError, match="fixed cell"):
        sensitivity(system, pot, wrt=["strain"], observables=["energy"], relax_cell=True)


def test_stillinger_weber_silicon_nonaffine_c44():
    """Diamond Si with Stillinger–Weber: internal relaxation lowers C44 far below its affine
    (Born) value. C44 through the relaxation vs central differences of the relaxed stress
    under an applied shear, and vs the affine value (positions strained homogeneously)."""
    atoms = bulk("Si", "diamond", a=5.431, cubic=True)
    pot = potentials.get("sw")
    relaxed = relax(System.from_ase(atoms), pot, relax_cell=True, fmax=1e-10).system
    res = sensitivity(relaxed, pot, wrt=["strain"], observables=["elastic_constants"])
    assert res.converged, res.problems
    C = res.values["elastic_constants"]
    model = build(relaxed, pot)
    stress = jax.jit(model.stress)

    def stress_yz(eta, relax_positions):
        F = np.eye(3) + np.array([[0, 0, 0], [0, 0, eta / 2], [0, eta / 2, 0]])
        strained = relaxed.replace(positions=relaxed.positions @ F, cell=relaxed.cell @ F)
        if relax_positions:
            strained = relax(strained, pot, fmax=1e-11).system
        s = stress(strained.positions, strained.cell)
        return float(s[1, 2])

    h = 1e-5
    c44_relaxed = (stress_yz(h, True) - stress_yz(-h, True)) / (2 * h)
    c44_affine = (stress_yz(h, False) - stress_yz(-h, False)) / (2 * h)
    np.testing.assert_allclose(C[3, 3], c44_relaxed, rtol=1e-5)
    assert C[3, 3] < 0.6 * c44_affine  # SW: ~56 GPa relaxed vs ~117 GPa affine
    gpa = 160.21766
    np.testing.assert_allclose(C[3, 3] * gpa, 56.4, rtol=0.02)
    np.testing.assert_allclose(C[0, 0] * gpa, 151.4, rtol=0.02)


def test_free_cluster_scales_with_sigma_without_rigid_motion():
    """A free LJ cluster: rigid translations and rotations are zero modes; the minimum-norm
    derivative of the positions is the pure breathing mode dR/dσ = (R − R̄)/σ."""
    from ase.cluster import Icosahedron

    atoms = Icosahedron("Ar", noshells=2)  # 13 atoms
    atoms.rattle(0.02, seed=3)
    pot = potentials.get("lj", sigma=3.4, epsilon=0.0104)
    res = sensitivity(System.from_ase(atoms), pot, wrt=["sigma"],
                      observables=["positions", "energy"])
    assert res.converged, res.problems
    assert res.diagnostics["zero_modes"]["count"] == 6  # 3 translations + 3 rotations
    R = res.values["positions"]
    np.testing.assert_allclose(res.derivatives["positions"]["sigma"], (R - R.mean(0)) / 3.4,
                               atol=1e-7)


def test_rattler_is_detected_and_kept_still():
    """A small particle in an interstitial site of a compressed triangular soft-sphere
    crystal touches nothing: its directions join the zero modes, the solves converge, and it
    does not move."""
    rows, cols = 4, 4
    h = np.sqrt(3) / 2
    lattice = np.array([[i + 0.5 * (j % 2), j * h] for j in range(rows) for i in range(cols)])
    lattice += np.random.default_rng(0).normal(scale=0.02, size=lattice.shape)
    interstitial = np.array([0.5, h / 3])
    system = System.create(np.vstack([lattice, interstitial]),
                           cell=np.diag([cols, rows * h]),
                           species=["B"] * len(lattice) + ["A"])
    pot = potentials.get("soft_sphere", sigma={("A", "A"): 0.3, ("A", "B"): 0.4,
                                               ("B", "B"): 1.05})
    res = sensitivity(system, pot, wrt=["sigma[B,B]"], observables=["positions", "energy"])
    assert res.converged, res.problems
    assert res.diagnostics["zero_modes"]["rattlers"] == [len(lattice)]
    assert res.diagnostics["zero_modes"]["count"] == 4  # 2 translations + 2 rattler modes
    np.testing.assert_allclose(res.derivatives["positions"]["sigma[B,B]"][-1], 0.0,
                               atol=1e-12)
    assert res.derivatives["energy"]["sigma[B,B]"] > 0


def test_preconditioners_agree(packing):
    system, pot, plain = packing
    for kind in ("jacobi", "block_jacobi"):
        res = sensitivity(system, pot, wrt=["sigma[A,B]"], observables=["positions"],
                          relaxation=plain.relaxation, preconditioner=kind)
        assert res.converged, res.problems
        np.testing.assert_allclose(res.derivatives["positions"]["sigma[A,B]"],
                                   plain.derivatives["positions"]["sigma[A,B]"],
                                   atol=1e-7 * np.abs(plain.derivatives["positions"]
                                                      ["sigma[A,B]"]).max())


def test_colored_probing_gives_exact_diagonal_blocks(packing):
    """Per-atom Hessian blocks from 2^d·d coloured probes equal the one-atom-at-a-time scan
    (the soft-sphere packing; reach = twice the cutoff)."""
    from mdsens.md import zero_modes

    _, pot, result = packing
    relaxed = result.relaxation.system
    model = build(relaxed, pot, neighbor_list=True)
    R, C = jnp.asarray(relaxed.positions), jnp.asarray(relaxed.cell)
    nbrs = model.allocate(R, C)
    _, hvp = jax.linearize(jax.grad(lambda R: model.energy(R, C, None, nbrs)), R)
    colors = zero_modes.spatial_colors(np.asarray(R), np.asarray(C), 2 * model.cutoff)
    assert colors.max() + 1 < 20  # a handful of colours for ~6 contacts per disc
    probed = jax.jit(lambda: zero_modes.colored_diagonal_blocks(hvp, colors, 2, R.dtype))()
    scanned = jax.jit(lambda: zero_modes.diagonal_blocks(hvp, len(R), 2, R.dtype))()
    np.testing.assert_allclose(probed, scanned, atol=1e-12 * np.abs(scanned).max())


def test_repeated_calls_with_new_parameters_reuse_compiled_code(lj_fcc):
    """A loop over parameter values with one model compiles the derivative stage once, and
    the parameter values passed (not the potential's defaults) are the ones differentiated:
    E is linear in ε at fixed positions, so dE/dε = E/ε at every ε."""
    system, pot = lj_fcc
    model = build(system, pot)
    from mdsens.md.compiled import compilations

    counts = []
    for eps in (0.0104, 0.02):
        params = {"sigma": jnp.asarray(3.4), "epsilon": jnp.asarray(eps)}
        r = relax(system, model, params=params, fmax=1e-8, max_steps=20000)
        with compilations() as count:
            res = sensitivity(r.system, model, ["epsilon", "sigma"], ["energy", "positions"],
                              relaxation=r, params=params, mode="forward")
        assert res.converged, res.problems
        np.testing.assert_allclose(res.derivatives["energy"]["epsilon"],
                                   res.values["energy"] / eps, rtol=1e-8)
        counts.append(count.value)
    assert counts[0] > 0 and counts[1] == 0  # the derivative programs compile once


@pytest.mark.parametrize("neighbor_list", [True, False])
def test_assembled_pair_hessian_equals_autodiff_product(neighbor_list):
    """H v from the assembled pair stiffnesses equals forward-over-reverse differentiation
    of the energy (binary LJ with per-pair σ, periodic, disordered positions)."""
    system, pot = binary_lj_crystal(a=5.26, repeat=4, rattle=0.1, seed=0)  # wider than 2 r_c
    model = build(system, pot, neighbor_list=neighbor_list)
    assert model.has_pair_hessian and model.uses_neighbor_list == neighbor_list
    R, C = jnp.asarray(system.positions), jnp.asarray(system.cell)
    nbrs = model.allocate(R, C)
    v = jax.random.normal(jax.random.PRNGKey(0), R.shape)
    ref = jax.jvp(lambda x: jax.grad(model.energy)(x, C, None, nbrs), (R,), (v,))[1]
    matvec = model.pair_hessian_matvec(R, C, None, nbrs)
    got = matvec(v)
    np.testing.assert_allclose(got, ref, atol=1e-12 * float(jnp.abs(ref).max()))
    if neighbor_list:  # the per-atom blocks, against one-atom-at-a-time probing
        from mdsens.md import zero_modes

        hvp = lambda u: jax.jvp(lambda x: jax.grad(model.energy)(x, C, None, nbrs),  # noqa: E731
                                (R,), (u,))[1]
        probed = jax.jit(lambda: zero_modes.diagonal_blocks(hvp, R.shape[0], 3, R.dtype))()
        np.testing.assert_allclose(matvec.diagonal_blocks, probed,
                                   atol=1e-12 * float(jnp.abs(probed).max()))


def test_assembled_and_autodiff_hessians_give_the_same_derivatives(packing):
    system, pot, assembled = packing
    assert assembled.diagnostics["hessian"] == "assembled"
    res = sensitivity(system, pot, wrt=["sigma[A,B]", "sigma"],
                      observables=["positions", "energy"], mode="forward",
                      relaxation=assembled.relaxation, hessian="autodiff")
    assert res.converged and res.diagnostics["hessian"] == "autodiff"
    for name in ("sigma[A,B]", "sigma"):
        ref = res.derivatives["positions"][name]
        np.testing.assert_allclose(assembled.derivatives["positions"][name], ref,
                                   atol=1e-7 * np.abs(ref).max())
    with pytest.raises(ValueError, match="assembled"):
        sensitivity(system, pot, wrt=["sigma"], observables=["energy"], relax_cell=True,
                    relaxation=assembled.relaxation, hessian="assembled")


@pytest.mark.slow  # ≈ 50 s: three uncached compilations of the estimate
def test_jacobian_error_estimate_bounds_the_error_of_a_loose_relaxation():
    """With the relaxation stopped at fmax 1e-4, the reported Jacobian error estimate is at
    least the actual error of dR/dσ_AB (against a relaxation to 1e-11) and not wildly above
    it; the zero modes (translations) do not make it infinite."""
    system, pot = binary_lj_crystal(a=5.3, repeat=2, rattle=0.05, seed=1)
    ref = sensitivity(system, pot, ["sigma[Ar,Kr]"], ["positions"],
                      relax_options={"fmax": 1e-11})
    loose = relax(system, pot, fmax=1e-4, max_steps=100000)
    res = sensitivity(system, pot, ["sigma[Ar,Kr]"], ["positions"], relaxation=loose,
                      jacobian_error=True, on_failure="ignore")
    actual = np.linalg.norm(res.derivatives["positions"]["sigma[Ar,Kr]"]
                            - ref.derivatives["positions"]["sigma[Ar,Kr]"])
    est = res.diagnostics["jacobian_error"]
    assert actual > 1e-4  # the loose root does change the derivative
    assert actual <= est["estimate"] <= 100 * actual
    assert 0 < est["sigma_min"] < est["sigma_max"]
    assert ref.diagnostics["jacobian_error"] is None


def test_float32_process_is_refused_before_any_work():
    """In a process where JAX computes in float32 the derivatives are not trustworthy:
    ``sensitivity`` says so (raise: before relaxing; ignore: as a problem) instead of
    reporting a float32 round-off "saddle"."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import warnings
        warnings.simplefilter("ignore")
        import jax
        assert not jax.config.jax_enable_x64
        from ase.build import bulk
        from mdsens.md import potentials, sensitivity
        from mdsens.md.results import SensitivityError
        atoms = bulk("Ar", "fcc", a=5.3, cubic=True)
        lj = potentials.get("lj", sigma=3.4, epsilon=0.0104)
        try:
            sensitivity(atoms, lj, ["sigma"], ["energy"])
        except SensitivityError as exc:
            print("RAISED", "jax_enable_x64" in str(exc))
        res = sensitivity(atoms, lj, ["sigma"], ["energy"], on_failure="ignore",
                          relax_options={"max_steps": 200})
        print("IGNORED", res.converged, "jax_enable_x64" in res.problems[0])
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, env={k: v for k, v in __import__("os").environ.items()
                                           if k != "JAX_ENABLE_X64"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "RAISED True" in out.stdout and "IGNORED False True" in out.stdout, out.stdout
