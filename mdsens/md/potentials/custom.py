r"""Wrap any JAX energy function as a :class:`~mdsens.md.potentials.base.Potential`.

``custom(energy_fn, params)`` with ``energy_fn(R, params, **kw) -> scalar`` (eV), where
``R`` is ``(N, d)`` Cartesian positions (Å) and ``kw`` holds, for the keywords the function
accepts (or all of them if it takes ``**kwargs``):

* ``cell``: ``(d, d)`` lattice vectors as rows (ASE convention), or None for free systems;
* ``displacement``: ``displacement(Ra, Rb) -> Ra - Rb``, minimum image for periodic
  systems (shapes broadcast over leading axes, last axis d);
* ``species``: ``(N,)`` int32 species index (into ``species`` when given to
  :func:`custom`, else into ``System.species_names``).

The function is evaluated on all atoms at once (no neighbour list). If ``cutoff`` (Å) is
given, cells narrower than twice the cutoff are replicated internally (the model divides
the energy by the copy count), so a minimum-image energy function stays correct; without
a cutoff, the function is called on the user's cell as is.

Example::

    def harmonic_pairs(R, params, displacement):
        dR = displacement(R[:, None, :], R[None, :, :])
        r2 = jnp.sum(dR**2, -1)
        return 0.5 * params["k"] * jnp.sum(jnp.triu(r2, 1))

    pot = custom(harmonic_pairs, {"k": 1.0})
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax

from ..geometry import Geometry
from .base import Array, Params, Potential, as_param, register

__all__ = ["Custom", "custom"]

_KEYWORDS = ("cell", "displacement", "species")


@dataclasses.dataclass(frozen=True, eq=False)
class Custom(Potential):
    """A user energy function; see the module docstring for what it receives."""

    name = "custom"
    uses_neighborhood = False
    energy_fn: Callable[..., Array] | None = None
    range: float | None = None
    keywords: tuple[str, ...] = _KEYWORDS
    declared_units: tuple[tuple[str, str], ...] = ()
    """``(parameter, unit)`` pairs the user declared (:func:`custom`'s ``units``)."""

    def parameter_unit(self, name: str) -> str:
        """The unit the user declared for ``name``, else ``"unknown"`` (never guessed)."""
        return dict(self.declared_units).get(name.split("[", 1)[0], "unknown")

    def cutoff(self, params: Params | None = None) -> float | None:
        return self.range

    def total_energy(self, params: Params, geometry: Geometry) -> Array:
        available = {
            "cell": geometry.cell,
            "displacement": geometry.displacement,
            "species": geometry.species,
        }
        kw = {k: available[k] for k in self.keywords}
        return self.energy_fn(geometry.positions, params, **kw)

    def with_params(self, **updates: Any) -> Custom:
        unknown = set(updates) - set(self.params)
        if unknown:
            raise ValueError(f"custom: unknown parameters {sorted(unknown)}")
        merged = {**self.params, **jax.tree.map(as_param, updates)}
        return dataclasses.replace(self, params=merged)


def _accepted_keywords(fn: Callable[..., Any]) -> tuple[str, ...]:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return _KEYWORDS
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
        return _KEYWORDS
    return tuple(k for k in _KEYWORDS if k in sig.parameters)


@register("custom")
def custom(
    energy_fn: Callable[..., Array],
    params: Mapping[str, Any] | None = None,
    *,
    cutoff: float | None = None,
    species: Sequence[str] | None = None,
    units: Mapping[str, str] | None = None,
) -> Custom:
    """Potential from ``energy_fn(R, params, **kw)``; ``params`` any dict of arrays.

    Args:
      energy_fn: JAX-traceable total energy (eV); see the module docstring for ``kw``.
      params: differentiable parameters (leaves become float64 arrays unless already
        floating arrays).
      cutoff: interaction range in Å, used only to replicate small periodic cells.
      species: symbols the ``species`` indices should refer to (default: the system's).
      units: parameter name -> unit (``"Å"``, ``"eV"``, ``"1/Å"``, ``"1"`` dimensionless,
        any text :func:`mdsens.units.parse` reads); parameters not listed are
        ``"unknown"``, and so are derivatives with respect to them.
    Raises:
      ValueError: a unit for a parameter that does not exist, or a unit that is not one.
    """
    if not callable(energy_fn):
        raise TypeError("custom: energy_fn must be callable")
    if cutoff is not None and not cutoff > 0:
        raise ValueError(f"custom: cutoff must be positive, got {cutoff}")
    p = jax.tree.map(as_param, dict(params or {}))
    sp = None if species is None else tuple(species)
    return Custom(
        p, sp, energy_fn, None if cutoff is None else float(cutoff), _accepted_keywords(energy_fn),
        _declared_units(units or {}, p),
    )


def _declared_units(units: Mapping[str, str], params: Mapping[str, Any]
                    ) -> tuple[tuple[str, str], ...]:
    """Check the user's units (known parameters, readable units) as sorted pairs."""
    from ...units import UNKNOWN, parse

    unknown = set(units) - set(params)
    if unknown:
        raise ValueError(f"custom: units for unknown parameters {sorted(unknown)}")
    for name, unit in units.items():
        if unit != UNKNOWN:
            try:
                parse(unit)
            except ValueError as exc:
                raise ValueError(f"custom: parameter {name}: {exc}") from None
    return tuple(sorted((str(k), str(v)) for k, v in units.items()))
