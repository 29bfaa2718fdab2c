"""Potentials and their registry.

``get("lj", sigma=3.4, epsilon=0.0104)`` builds a registered potential by name or alias;
``names()`` lists them. Each registered factory is also an attribute of this package
(``potentials.lennard_jones(...)``, ``potentials.lj(...)``) unless a submodule has the
same name (then ``get(name, ...)`` or ``potentials.<module>.<factory>``). New potential modules call
:func:`register` (see :mod:`mdsens.md.potentials.base` for the contract).
"""

import importlib as _importlib
import importlib.util as _importlib_util
import types as _types

from ..geometry import Geometry as Geometry
from ..geometry import Neighborhood as Neighborhood
from . import custom as _custom_module
from . import pair as _pair_module
from .base import Potential as Potential
from .base import factories as factories
from .base import get as get
from .base import names as names
from .base import register as register
from .custom import custom as custom
from .pair import lennard_jones as lennard_jones
from .pair import morse as morse
from .pair import soft_sphere as soft_sphere

lj = lennard_jones

# Many-body potentials live in their own modules (public or ``_``-prefixed names); import
# those present (a missing module is skipped, an error inside an existing one is raised).
for _name in ("stillinger_weber", "tersoff", "eam"):
    for _mod in (_name, f"_{_name}"):
        if _importlib_util.find_spec(f"{__name__}.{_mod}") is not None:
            _importlib.import_module(f"{__name__}.{_mod}")

# Expose every registered factory (and alias) as an attribute, potentials.<name>(...),
# except where a submodule of the same name exists (never shadow a module: ``import
# mdsens.md.potentials.eam`` must give the module); use get(name, ...) for those.
_modules = {k for k, v in globals().items() if isinstance(v, _types.ModuleType)}
globals().update({k: f for k, f in factories().items() if k not in _modules})

del _name, _mod, _modules, _custom_module, _pair_module
