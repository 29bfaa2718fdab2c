"""mdsens: sensitivity analysis of relaxed molecular systems by implicit differentiation.

``mdsens.implicit`` is the domain-free core (custom_root, linear solvers, optimality
conditions). Enable float64 in your program (``jax.config.update("jax_enable_x64", True)``)
for sensitivities; the library never changes JAX's global configuration on import.
"""

__version__ = "0.1.0"

from . import implicit as implicit  # noqa: E402

__all__ = ["__version__", "implicit"]
