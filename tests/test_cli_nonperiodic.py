"""Free and mixed boundaries through the command line, checked against physics.

* An Ar13 icosahedron (pbc F F F, without a cell and with one): Lennard-Jones has no
  length but sigma and no energy but epsilon, so a free cluster's relaxed positions scale
  as R(σ) = c + (R − c) σ'/σ about its centre c, and its energy as E ∝ ε: dR/dσ = (R − c)/σ,
  dE/dσ = 0, dE/dε = E/ε, with 6 zero modes (3 translations, 3 rotations).
* An Ar fcc(111) slab of three layers (pbc T T F): padded with vacuum wider than the cutoff
  its energy is that of any wider padding (no interaction crosses the vacuum), its two
  surfaces relax alike (the ABC stack is inversion symmetric about the middle layer),
  dE/dε = E/ε, and dR/dσ equals a central difference of float64 relaxations.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mdsens.cli import ExitCode, main
from mdsens.io.hdf5 import read_result

SIGMA, EPSILON = 3.4, 0.0104
LJ = ["-p", "lj", "--param", f"sigma={SIGMA}", "--param", f"epsilon={EPSILON}"]
SENS = ["--wrt", "sigma", "--wrt", "epsilon", "--observable", "positions", "--observable",
        "energy"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    from ase.build import fcc111
    from ase.cluster import Icosahedron

    d = tmp_path_factory.mktemp("nonperiodic")
    cluster = Icosahedron("Ar", 2, latticeconstant=5.26)
    cluster.rattle(0.05, seed=1)
    cluster.write(d / "ar13.xyz")  # no cell
    boxed = cluster.copy()
    boxed.center(vacuum=5.0)  # a cell, pbc F F F
    boxed.write(d / "ar13_box.extxyz")
    slab = fcc111("Ar", (2, 2, 3), a=5.26, vacuum=4.0)  # vacuum < cutoff (8.5 Å)
    slab.info.clear()
    slab.rattle(0.02, seed=2)
    slab.write(d / "slab.extxyz")
    return {p.name: p for p in d.iterdir()}


def _run(args: list[str]) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == ExitCode.SUCCESS, (result.output, result.exception)


def test_cluster_scaling_laws(inputs, tmp_path):
    out = tmp_path / "cluster.h5"
    _run(["sensitivity", str(inputs["ar13.xyz"]), *LJ, *SENS, "-o", str(out)])
    stored = read_result(out)
    sens = stored.sensitivity
    assert stored.pbc == (False, False, False)
    assert stored.config["boundary"] == {"pbc": [False] * 3, "kind": "free", "vacuum": None}
    assert sens.diagnostics["zero_modes"]["count"] == 6
    R = sens.values["positions"]
    E = float(sens.values["energy"])
    c = R.mean(axis=0)
    d = sens.derivatives
    np.testing.assert_allclose(d["positions"]["sigma"], (R - c) / SIGMA, rtol=0, atol=1e-7)
    assert abs(float(d["energy"]["sigma"])) < 1e-9 * abs(E) / SIGMA
    np.testing.assert_allclose(float(d["energy"]["epsilon"]), E / EPSILON, rtol=1e-10)
    # positions do not depend on epsilon (up to the root's own error, fmax 1e-8 eV/Å)
    assert np.abs(d["positions"]["epsilon"]).max() < 1e-4

    # the same cluster in a box (pbc F F F): the same relaxed energy, still free
    relaxed = tmp_path / "boxed.extxyz"
    _run(["relax", str(inputs["ar13_box.extxyz"]), *LJ, "--fmax", "1e-8", "-o", str(relaxed)])
    import ase.io

    atoms = ase.io.read(relaxed)
    assert tuple(atoms.pbc) == (False, False, False) and atoms.cell.volume > 0
    assert abs(atoms.get_potential_energy() - E) < 1e-12 * abs(E)


def test_slab(inputs, tmp_path):
    import ase.io
    import jax.numpy as jnp

    from mdsens.md import System, build, potentials, relax

    out = tmp_path / "slab.h5"
    _run(["sensitivity", str(inputs["slab.extxyz"]), *LJ, *SENS, "-o", str(out), "-q"])
    stored = read_result(out)
    sens = stored.sensitivity
    cutoff = 2.5 * SIGMA
    assert stored.config["boundary"] == {"pbc": [True, True, False], "kind": "mixed",
                                         "vacuum": cutoff + 1.0}
    R = sens.values["positions"]
    E = float(sens.values["energy"])
    z = np.sort(R[:, 2])
    gap = stored.cell[2, 2] - (z[-1] - z[0])
    assert gap > 2 * cutoff  # images of the slab beyond the cutoff

    # both surfaces relax alike: layer spacings d12 = d23
    layers = np.sort(R[:, 2]).reshape(3, 4).mean(axis=1)
    d12, d23 = np.diff(layers)
    assert abs(d12 - d23) < 1e-6, (d12, d23)

    d = sens.derivatives
    np.testing.assert_allclose(float(d["energy"]["epsilon"]), E / EPSILON, rtol=1e-10)
    assert np.abs(d["positions"]["epsilon"]).max() < 1e-4

    # The library with twice the vacuum (one model, built for the largest sigma, whose
    # cutoff covers the others): the same energy (no interaction crosses the vacuum), and
    # dR/dσ by a central difference of float64 relaxations; positions about their mean,
    # the frame the derivatives are reported in.
    slab = ase.io.read(inputs["slab.extxyz"])
    wide = System.from_ase(slab, vacuum=2 * cutoff)
    h = 1e-3
    model = build(wide, potentials.get("lj", sigma=SIGMA + h, epsilon=EPSILON))
    runs = {s: relax(wide, model, fmax=1e-11,
                     params={"sigma": jnp.asarray(s), "epsilon": jnp.asarray(EPSILON)})
            for s in (SIGMA, SIGMA - h, SIGMA + h)}
    assert abs(float(runs[SIGMA].energy) - E) < 1e-10 * abs(E)
    ends = [np.asarray(runs[s].system.positions) for s in (SIGMA - h, SIGMA + h)]
    fd = ((ends[1] - ends[1].mean(axis=0)) - (ends[0] - ends[0].mean(axis=0))) / (2 * h)
    np.testing.assert_allclose(d["positions"]["sigma"], fd, rtol=0, atol=1e-5)
    assert np.abs(fd[:, 2]).max() > 0.05  # the slab's thickness responds (not a zero test)

    # relax to extended XYZ: the slab keeps pbc T T F
    xyz = tmp_path / "slab.extxyz"
    _run(["relax", str(inputs["slab.extxyz"]), *LJ, "-o", str(xyz), "-q"])
    assert tuple(ase.io.read(xyz).pbc) == (True, True, False)
