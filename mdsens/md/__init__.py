"""Molecular mechanics on jax-md: systems, potentials, energy models.

``System`` (structure pytree), ``potentials`` (registry: ``potentials.get("lj", ...)``),
``build(system, potential)`` -> ``EnergyModel`` (energy / neighbour lists / replication).

Names are imported on first use, so that a module of this package that needs no numerics
(``options``, ``results``) can be imported without JAX and jax-md.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "potentials": (".potentials", None),
    "Relaxation": (".minimize", "Relaxation"),
    "RelaxationError": (".minimize", "RelaxationError"),
    "relax": (".minimize", "relax"),
    "relax_batch": (".minimize", "relax_batch"),
    "AUTO_NEIGHBOR_THRESHOLD": (".model", "AUTO_NEIGHBOR_THRESHOLD"),
    "EnergyModel": (".model", "EnergyModel"),
    "Neighbors": (".model", "Neighbors"),
    "build": (".model", "build"),
    "RelaxOptions": (".options", "RelaxOptions"),
    "Potential": (".potentials", "Potential"),
    "custom": (".potentials", "custom"),
    "lennard_jones": (".potentials", "lennard_jones"),
    "morse": (".potentials", "morse"),
    "soft_sphere": (".potentials", "soft_sphere"),
    "Sensitivity": (".results", "Sensitivity"),
    "Diagnostics": (".diagnostics", "Diagnostics"),
    "PointOptions": (".point", "PointOptions"),
    "PointResult": (".point", "PointResult"),
    "PointRunner": (".point", "PointRunner"),
    "SensitivityError": (".results", "SensitivityError"),
    "sensitivity": (".sensitivity", "sensitivity"),
    "System": (".system", "System"),
    "relaxed_state": (".relaxed", "relaxed_state"),
    "RelaxedState": (".relaxed", "RelaxedState"),
    "DerivativeOptions": (".relaxed", "DerivativeOptions"),
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module_name, attr = _LAZY[name]
    module = importlib.import_module(module_name, __name__)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
