"""Models reused across calls: ``relax`` and ``sensitivity`` called again on the same layout
with the same kind of potential run the code compiled the first time, without the caller
building an :class:`~mdsens.md.model.EnergyModel`.

Compiled programs are cached by JAX per model object (a model is hashed by identity), so
reuse means handing out the same model. Two requests share a model when everything that
decides the compiled program is equal (:func:`program_key`):

* the potential's form: its class, species and static settings (cutoff factors, tables
  given as settings, a custom energy function), and the structure, shapes and dtypes of its
  parameters -- not their values, which every compiled program takes as an argument;
* the layout: atom count, dimension, boundary conditions, the species of every atom, the
  small-cell replication, the cutoff and skin, whether a neighbour list is used and its
  capacity factor, the devices it is spread over, and (free systems with a list) the
  list's box.

A shared model's ``potential`` is the first requester's; the library always passes the
parameters explicitly, so the values of a later potential are the ones used. At most
:data:`MAX_MODELS` models are kept (least recently used dropped).
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Hashable
from typing import Any

import jax
import numpy as np

from .model import EnergyModel, build
from .system import System

__all__ = ["MAX_MODELS", "clear", "model_for", "program_key", "same_form"]

MAX_MODELS = 16

_MODELS: collections.OrderedDict[Hashable, EnergyModel] = collections.OrderedDict()
_LOCK = threading.Lock()


def _frozen(value: Any) -> Hashable:
    """A hashable stand-in for a setting's value (arrays by dtype, shape and bytes)."""
    if isinstance(value, (np.ndarray, jax.Array)):
        a = np.asarray(value)
        return ("array", a.dtype.str, a.shape, a.tobytes())
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _frozen(v)) for k, v in value.items()))
    hash(value)  # raises TypeError for what cannot be a key
    return value


def _form_key(potential: Any) -> Hashable:
    leaves, tree = jax.tree.flatten(potential.params)
    shapes = tuple((np.shape(x), np.asarray(x).dtype.str) for x in leaves)
    settings = tuple(sorted((k, _frozen(v)) for k, v in potential.settings.items()))
    return (type(potential), potential.species, settings, tree, shapes)


def program_key(model: EnergyModel) -> Hashable | None:
    """What decides the programs compiled for ``model`` (module docstring); None when a
    setting cannot be compared (such a model is never shared)."""
    try:
        return (
            _form_key(model.potential), model.n_atoms, model.dim, model.periodic,
            model.species.tobytes(), model.replicas, model.cutoff, model.skin,
            model.uses_neighbor_list, model.capacity_multiplier, model.mesh,
            None if model.list_origin is None else np.asarray(model.list_origin).tobytes(),
        )
    except TypeError:
        return None


def model_for(system: System, potential: Any, neighbor_list: Any = "auto",
              skin: float | None = None, capacity_multiplier: float = 1.25,
              devices: Any = "auto") -> EnergyModel:
    """``build(system, potential, ...)``, or the model an earlier call built for the same
    program (module docstring). Building is host-side bookkeeping; the saving is every
    compiled program of the relaxation and the derivatives."""
    model = build(system, potential, neighbor_list=neighbor_list, skin=skin,
                  capacity_multiplier=capacity_multiplier, devices=devices)
    key = program_key(model)
    if key is None:
        return model
    with _LOCK:
        cached = _MODELS.get(key)
        if cached is not None:
            _MODELS.move_to_end(key)
            return cached
        _MODELS[key] = model
        while len(_MODELS) > MAX_MODELS:
            _MODELS.popitem(last=False)
    return model


def clear() -> None:
    """Forget every kept model (their compiled programs go with the last reference)."""
    with _LOCK:
        _MODELS.clear()


def same_form(a: Any, b: Any) -> bool:
    """Whether two potentials have the same form (class, species, static settings and
    parameter structure); parameter values may differ."""
    try:
        return a is b or _form_key(a) == _form_key(b)
    except TypeError:
        return False


