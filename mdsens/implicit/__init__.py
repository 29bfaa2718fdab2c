"""Implicit differentiation of optimisation and root-finding solvers (no MD knowledge here).

State the optimality condition ``F(x*, θ) = 0`` of any solver; :func:`custom_root` attaches
derivatives by the implicit function theorem ``−∂₁F ∂x* = ∂₂F`` in forward and reverse mode.
"""

from . import bounds as bounds
from . import conditions as conditions
from . import linsolve as linsolve
from . import projections as projections
from . import prox as prox
from ._root import custom_fixed_point as custom_fixed_point
from ._root import custom_root as custom_root
from ._root import root_jvp as root_jvp
from ._root import root_vjp as root_vjp
from ._solution import POLICIES as POLICIES
from ._solution import SolveError as SolveError
from ._solution import SolveInfo as SolveInfo
from ._solution import Status as Status

__all__ = [
    "bounds", "conditions", "linsolve", "projections", "prox", "custom_root",
    "custom_fixed_point", "root_jvp", "root_vjp", "POLICIES", "SolveError",
    "SolveInfo", "Status",
]
