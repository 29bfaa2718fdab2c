"""mdsens: sensitivity analysis of relaxed molecular systems by implicit differentiation.

Public API (imported lazily, so that ``import mdsens`` and the command line stay fast):

- ``mdsens.relax(system, potential, RelaxOptions(...))``: energy minimisation (FIRE,
  FIRE 2.0 / GD, fixed or relaxing cell) -> ``Relaxation``; ``mdsens.relax_batch`` for K
  parameter sets at once.
- ``mdsens.sensitivity(system, potential, wrt=..., observables=...)``: derivatives of the
  relaxed state -> ``Sensitivity``.
- ``mdsens.relaxed_state(system, potential, ...)``: the relaxed state as a differentiable
  JAX function of the parameters (``jax.grad``/``jit``/``vmap`` through relaxations).
- ``mdsens.potentials``: the potential registry (``potentials.get("lj", sigma=3.4)``).
- ``mdsens.System``: the structure pytree (``System.from_ase(atoms)``).
- ``mdsens.implicit``: the domain-free implicit-differentiation core.

Enable float64 in your program (``jax.config.update("jax_enable_x64", True)``) for
sensitivities; the library never changes JAX's global configuration on import.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "implicit": ("mdsens.implicit", None),
    "md": ("mdsens.md", None),
    "io": ("mdsens.io", None),
    "studies": ("mdsens.studies", None),
    "bilevel": ("mdsens.bilevel", None),
    "potentials": ("mdsens.md.potentials", None),
    "System": ("mdsens.md.system", "System"),
    "relax": ("mdsens.md.minimize", "relax"),
    "relax_batch": ("mdsens.md.minimize", "relax_batch"),
    "RelaxOptions": ("mdsens.md.options", "RelaxOptions"),
    "Relaxation": ("mdsens.md.minimize", "Relaxation"),
    "sensitivity": ("mdsens.md.sensitivity", "sensitivity"),
    "Sensitivity": ("mdsens.md.sensitivity", "Sensitivity"),
    "relaxed_state": ("mdsens.md.relaxed", "relaxed_state"),
    "RelaxedState": ("mdsens.md.relaxed", "RelaxedState"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'mdsens' has no attribute {name!r}")
    module_name, attr = _LAZY[name]
    module = importlib.import_module(module_name)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
