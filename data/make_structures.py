"""Regenerate the small structure files in ``data/`` (run from the repository root).

    python data/make_structures.py

Every file is deterministic (fixed random seed) and small, so tests and the demo stay fast.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ase.build import bulk

HERE = Path(__file__).resolve().parent
A_AR = 5.26  # Å, fcc argon lattice constant (about the LJ minimum for sigma=3.4)


def argon_fcc(noise: float = 0.05, seed: int = 0):
    """32-atom fcc argon (2x2x2 conventional cells), positions perturbed by ``noise`` Å."""
    atoms = bulk("Ar", "fcc", a=A_AR, cubic=True).repeat((2, 2, 2))
    rng = np.random.default_rng(seed)
    atoms.positions += rng.normal(scale=noise, size=atoms.positions.shape)
    return atoms


def main() -> None:
    argon_fcc().write(HERE / "ar_fcc_32.extxyz", format="extxyz")
    argon_fcc(seed=1).write(HERE / "ar_fcc.poscar", format="vasp", direct=True)
    argon_fcc(seed=2).write(HERE / "ar_fcc.lmp", format="lammps-data", atom_style="atomic",
                            masses=True, specorder=["Ar"])
    bulk("Si", "diamond", a=5.431, cubic=True).write(HERE / "si_diamond.cif", format="cif")


if __name__ == "__main__":
    main()
