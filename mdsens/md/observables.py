r"""Observables of a (relaxed) configuration, as differentiable functions.

An observable maps a configuration — Cartesian positions ``R`` (N, d), cell ``C`` (d, d),
potential parameters ``params`` — to an array. :func:`mdsens.md.sensitivity` differentiates
it through the relaxation. Built-in names (units in ASE's eV and Å):

============================  ===============  ======================================
name                          shape            meaning
============================  ===============  ======================================
``energy``                    ()               potential energy E, eV
``energy_per_atom``           ()               E / N, eV
``positions``                 (N, d)           R, Å (frame with fixed centre of mass)
``displacements``             (N, d)           R − R_input, Å
``cell``                      (d, d)           lattice vectors as rows, Å
``volume``                    ()               |det C|, Å^d
``lattice_parameters``        (6,) / (3,)      a, b, c (Å), α, β, γ (degrees); 2D: a, b, γ
``stress``                    (6,) / (3,)      Cauchy stress, Voigt (xx yy zz yz xz xy), eV/Å^d
``pressure``                  ()               −tr σ / d, eV/Å^d
``distances``                 (P,)             |R_j − R_i| (minimum image) for listed pairs, Å
============================  ===============  ======================================

``elastic_constants`` is handled by :mod:`mdsens.md.sensitivity` (it is itself a derivative:
``dσ/dη`` through the relaxation). A user callable ``f(R, cell, params) -> array`` is an
observable too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .strain import stress_to_voigt

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Context:
    """What observables may need beyond (R, cell, params): the energy model and its
    neighbour list at the relaxed state, and the input positions."""

    model: Any
    nbrs: Any
    input_positions: Array
    pairs: np.ndarray | None = None


# A pytree (the model is static), so jitted functions of a context are reused across calls.
jax.tree_util.register_dataclass(
    Context, data_fields=["nbrs", "input_positions", "pairs"], meta_fields=["model"]
)


@dataclasses.dataclass(frozen=True, eq=False)
class _UserObservable:
    """A user callable ``f(R, cell, params)`` as an observable function; equal (and so one
    compiled program) for the same ``f`` object."""

    f: Callable

    def __eq__(self, other):
        return isinstance(other, _UserObservable) and other.f is self.f

    def __hash__(self):
        return hash(("user-observable", id(self.f)))

    def __call__(self, ctx, R, cell, params):
        return jnp.asarray(self.f(R, cell, params))


ObservableFn = Callable[[Context, Array, Array, Any], Array]


@dataclasses.dataclass(frozen=True)
class Observable:
    """A named observable: ``fn(context, R, cell, params) -> array`` with its unit."""

    name: str
    fn: ObservableFn
    unit: str
    periodic_only: bool = False


def _energy(ctx, R, cell, params):
    return ctx.model.energy(R, cell, params, ctx.nbrs)


def _energy_per_atom(ctx, R, cell, params):
    return _energy(ctx, R, cell, params) / R.shape[0]


def _positions(ctx, R, cell, params):
    return R


def _displacements(ctx, R, cell, params):
    return R - ctx.input_positions


def _cell(ctx, R, cell, params):
    return cell


def _volume(ctx, R, cell, params):
    return jnp.abs(jnp.linalg.det(cell))


def _lattice_parameters(ctx, R, cell, params):
    lengths = jnp.linalg.norm(cell, axis=1)
    d = cell.shape[0]
    pairs = ((1, 2), (0, 2), (0, 1)) if d == 3 else ((0, 1),)
    angles = [
        jnp.degrees(jnp.arccos(jnp.dot(cell[i], cell[j]) / (lengths[i] * lengths[j])))
        for i, j in pairs
    ]
    return jnp.concatenate([lengths, jnp.stack(angles)])


def _stress(ctx, R, cell, params):
    return stress_to_voigt(ctx.model.stress(R, cell, params, ctx.nbrs))


def _pressure(ctx, R, cell, params):
    sigma = ctx.model.stress(R, cell, params, ctx.nbrs)
    return -jnp.trace(sigma) / cell.shape[0]


def _distances(ctx, R, cell, params):
    if ctx.pairs is None:
        raise ValueError("the 'distances' observable needs pairs=[(i, j), ...]")
    i, j = ctx.pairs[:, 0], ctx.pairs[:, 1]
    dR = R[j] - R[i]
    if ctx.model.periodic:
        s = dR @ jnp.linalg.inv(cell)
        dR = (s - jnp.round(s)) @ cell
    return jnp.linalg.norm(dR, axis=-1)


_LENGTH_D = "Å^d"
BUILTIN: dict[str, Observable] = {
    o.name: o
    for o in (
        Observable("energy", _energy, "eV"),
        Observable("energy_per_atom", _energy_per_atom, "eV"),
        Observable("positions", _positions, "Å"),
        Observable("displacements", _displacements, "Å"),
        Observable("cell", _cell, "Å", periodic_only=True),
        Observable("volume", _volume, _LENGTH_D, periodic_only=True),
        Observable("lattice_parameters", _lattice_parameters, "Å, degrees", periodic_only=True),
        Observable("stress", _stress, f"eV/{_LENGTH_D}", periodic_only=True),
        Observable("pressure", _pressure, f"eV/{_LENGTH_D}", periodic_only=True),
        Observable("distances", _distances, "Å"),
    )
}
ELASTIC = "elastic_constants"
NAMES: tuple[str, ...] = (*BUILTIN, ELASTIC)


def resolve(
    observables: Sequence[str | Callable] | str | Callable, periodic: bool,
    dim: int | None = None,
) -> dict[str, Observable]:
    """Turn names and callables into :class:`Observable` objects keyed by name.

    With ``dim`` given, units are written for that dimension (``Å^3`` rather than ``Å^d``).

    A callable ``f(R, cell, params)`` is keyed by its ``__name__``. Raises ``ValueError`` for
    unknown names, duplicates, and cell observables of free systems.
    """
    if isinstance(observables, str) or callable(observables):
        observables = [observables]
    out: dict[str, Observable] = {}
    for item in observables:
        if callable(item):
            user = item
            name = getattr(user, "__name__", "observable")
            obs = Observable(name, _UserObservable(user), "")
        elif item == ELASTIC:
            obs = Observable(ELASTIC, _energy, f"eV/{_LENGTH_D}", periodic_only=True)
        elif item in BUILTIN:
            obs = BUILTIN[item]
        else:
            raise ValueError(f"unknown observable {item!r}; known: {', '.join(NAMES)}")
        if obs.periodic_only and not periodic:
            raise ValueError(f"observable {obs.name!r} needs a periodic system")
        if dim is not None:
            obs = dataclasses.replace(obs, unit=obs.unit.replace(_LENGTH_D, f"Å^{dim}"))
        if obs.name in out:
            raise ValueError(f"observable {obs.name!r} requested twice")
        out[obs.name] = obs
    if not out:
        raise ValueError("no observables requested")
    return out
