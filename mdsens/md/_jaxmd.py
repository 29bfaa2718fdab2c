"""The jax-md submodules mdsens uses (``partition``, ``space``), without jax-md's package
``__init__``.

``import jax_md.partition`` normally runs ``jax_md/__init__.py`` first, which imports every
submodule (``rigid_body``, ``nn``, ``energy`` with flax, ...): about 4.5 s, of which mdsens
needs none. When ``jax_md`` is not imported yet, :func:`load` registers the package without
running its ``__init__`` and imports only the two submodules (≈ 30 ms beyond jax). Code that
uses jax-md later still finds everything: an attribute the package lacks is imported as its
submodule on first access (``jax_md.energy``, ``from jax_md import rigid_body``), and any other
name runs the package's own ``__init__`` once.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

__all__ = ["partition", "space"]


def _lazy_package() -> types.ModuleType:
    """The ``jax_md`` package module, registered but not yet initialised."""
    spec = importlib.util.find_spec("jax_md")
    if spec is None or spec.origin is None:
        raise ImportError("jax-md is not installed (pip install jax-md)")
    package = importlib.util.module_from_spec(spec)

    def submodule_or_rest(name: str):
        """``jax_md.<name>``: the submodule alone if there is one, else whatever the
        package's own ``__init__`` (run now, once) defines."""
        if importlib.util.find_spec(f"jax_md.{name}") is not None:
            return importlib.import_module(f"jax_md.{name}")
        del package.__getattr__
        spec.loader.exec_module(package)
        return getattr(package, name)

    package.__getattr__ = submodule_or_rest
    sys.modules["jax_md"] = package
    return package


def load() -> tuple[types.ModuleType, types.ModuleType]:
    """``(jax_md.partition, jax_md.space)``, importing as little of jax-md as possible."""
    if "jax_md" not in sys.modules:
        _lazy_package()
    return (importlib.import_module("jax_md.partition"),
            importlib.import_module("jax_md.space"))


partition, space = load()
