"""ASE io plugin: ``ase.io.read("run.h5")`` returns the relaxed structure(s) of an mdsens
HDF5 file.

Registered through the ``ase.ioformats`` entry point (``pyproject.toml``) as the format
``mdsens-h5``, recognised by the extensions ``.h5``/``.h5md``/``.hdf5`` and by the HDF5
signature; ASE finds it once mdsens is installed (``pip install -e .`` registers the entry
point)::

    import ase.io
    atoms = ase.io.read("run.h5")                 # relax / sensitivity result file
    points = ase.io.read("study.h5", index=":")   # every computed point of a study

Result files (:func:`mdsens.io.read_result`) hold one frame: the relaxed structure with
energy and stress on a ``SinglePointCalculator`` and the derivatives as named by
:meth:`mdsens.md.results.Sensitivity.to_ase`. Study files (``mdsens scan``) hold one frame
per computed point, in point order (points not yet computed are left out), with the swept
parameter values, ``point``, ``structure`` (label) and ``converged`` in ``atoms.info``
besides the point's values and derivatives. Reading is read-only and needs no JAX.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from ase.utils.plugins import ExternalIOFormat

from ..md.diagnostics import Diagnostics
from .errors import InputError

__all__ = ["mdsens_h5", "read_mdsens_h5"]

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"

mdsens_h5 = ExternalIOFormat(
    desc="mdsens result or study file (HDF5, H5MD)",
    code="+S",  # several images; ASE passes the file name
    module="mdsens.io.ase_format",
    ext=["h5", "h5md", "hdf5"],
    magic=HDF5_SIGNATURE,
)
"""The format object the ``ase.ioformats`` entry point ``mdsens-h5`` points at."""


def read_mdsens_h5(filename: str, index: Any = slice(None)) -> Iterator[Any]:
    """The relaxed structures ``index`` selects (ASE passes a slice), as ``ase.Atoms``.

    Raises:
      InputError: not an mdsens result or study file.
    """
    images = _study_images(filename) if _is_study(filename) else [_result_image(filename)]
    if isinstance(index, int):
        index = slice(index, None if index == -1 else index + 1)
    yield from images[index]


def _is_study(path: str) -> bool:
    from ..studies import is_study

    return is_study(path)


def _result_image(path: str) -> Any:
    """The relaxed structure of a relax/sensitivity file with its values and derivatives."""
    from .hdf5 import read_result

    stored = read_result(path)
    return stored.sensitivity.to_ase(stored.to_ase())


def _study_images(path: str) -> list[Any]:
    """One ``ase.Atoms`` per computed point of a study file (:mod:`mdsens.studies`)."""
    from ..md.results import Sensitivity
    from ..studies import read

    study = read(path)
    structures = _study_structures(path, len(study.structures))
    n_grid = study.done.size // max(len(study.structures), 1)
    images = []
    for p in np.flatnonzero(study.done):
        k = int(study.structure_index[p])
        point = Sensitivity(
            values={name: v[p] for name, v in study.values.items()},
            derivatives={o: {n: d[p] for n, d in per.items()}
                         for o, per in study.derivatives.items()},
            units=dict(study.units), wrt=tuple(study.definition.get("wrt", ())),
            parameter_shapes={}, diagnostics=Diagnostics(), relaxation=None,
            converged=bool(study.converged[p]))
        atoms = point.to_ase(structures[k](int(p) % n_grid))
        atoms.info.update({name: float(v[p]) for name, v in study.parameters.items()})
        atoms.info.update(point=int(p), structure=study.structures[k])
        images.append(atoms)
    return images


def _study_structures(path: str, n_structures: int) -> list[Any]:
    """For each structure k of a study: ``frame(g)`` -> ``ase.Atoms`` relaxed at grid point
    g (the per-structure ``position``/``edges`` arrays of the study file)."""
    import h5py
    from ase import Atoms

    out = []
    with h5py.File(path, "r") as f:
        group = f.get("structures")
        if group is None:
            raise InputError(f"{Path(path)}: no relaxed structures in this study file")
        for k in range(n_structures):
            g = group[str(k)]
            names = json.loads(g.attrs["species_names"])
            symbols = [names[int(s)] for s in g["species"][()]]
            pbc = np.asarray(g.attrs["pbc"], bool)
            positions, edges = g["position"][()], g["edges"][()]

            def frame(i: int, symbols=symbols, pbc=pbc, positions=positions,
                      edges=edges) -> Any:
                return Atoms(symbols=symbols, positions=positions[i], cell=edges[i],
                             pbc=pbc)

            out.append(frame)
    return out
