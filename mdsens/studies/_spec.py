"""Study definitions: sweep specs, the parameter grid, and the JSON that identifies a study.

A sweep maps parameter names to 1-D sequences of values; the grid is their cartesian product
(the last name varies fastest). Names are whole potential parameters (``"sigma"``, a scalar
or a per-pair matrix set to one value for every pair) or one species pair of a per-pair
parameter (``"sigma[Ar,Kr]"``: both symmetric entries set together).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["canonical_json", "grid", "parse_sweep", "potential_at", "structure_digest",
           "validate_sweep"]

_PAIR_RE = re.compile(r"^\s*([A-Za-z_]\w*)\s*\[\s*([A-Za-z]\w*)\s*,\s*([A-Za-z]\w*)\s*\]\s*$")
_NAME_RE = re.compile(r"^\s*[A-Za-z_]\w*\s*$")


def parse_sweep(text: str) -> tuple[str, list[float]]:
    """Parse one command-line sweep: ``NAME=START:STOP:COUNT`` (``COUNT`` evenly spaced values,
    both ends included), ``NAME=V1,V2,...`` or ``NAME=V``.

    Raises:
      ValueError: a malformed spec (the message names it).
    """
    if "=" not in text:
        raise ValueError(f"sweep {text!r}: expected NAME=START:STOP:COUNT or NAME=V1,V2,...")
    name, _, rhs = text.partition("=")
    name = name.strip()
    if not (_NAME_RE.match(name) or _PAIR_RE.match(name)):
        raise ValueError(f"sweep {text!r}: {name!r} is not a parameter name")
    rhs = rhs.strip()
    try:
        if ":" in rhs:
            parts = rhs.split(":")
            if len(parts) != 3:
                raise ValueError
            start, stop = float(parts[0]), float(parts[1])
            count = int(parts[2])
            if count < 1 or not (math.isfinite(start) and math.isfinite(stop)):
                raise ValueError
            if count == 1 and start != stop:
                raise ValueError
            values = np.linspace(start, stop, count).tolist()
        else:
            values = [float(v) for v in rhs.split(",")]
    except ValueError:
        raise ValueError(f"sweep {text!r}: expected NAME=START:STOP:COUNT (COUNT ≥ 1, finite "
                         "ends; COUNT = 1 needs START = STOP) or NAME=V1,V2,...") from None
    return name.replace(" ", ""), values


def validate_sweep(sweep: Mapping[str, Sequence[float]], potential: Any) -> dict[str, list[float]]:
    """Check a sweep against ``potential``; return ``{name: [float, ...]}`` (names normalised).

    Raises:
      ValueError: empty sweep or value list, non-finite or repeated values, a name the
        potential does not have, a pair name for a scalar parameter, or a parameter swept
        both whole and per pair.
    """
    if not isinstance(sweep, Mapping) or not sweep:
        raise ValueError("sweep must be a non-empty dict {parameter name: values}")
    out: dict[str, list[float]] = {}
    whole: set[str] = set()
    paired: set[str] = set()
    species = tuple(potential.species or ())
    for raw_name, raw_values in sweep.items():
        name = str(raw_name).replace(" ", "")
        m = _PAIR_RE.match(name)
        base = m.group(1) if m else name
        if base not in potential.params:
            raise ValueError(f"sweep: unknown parameter {base!r} of potential "
                             f"{potential.name!r}; known: {sorted(potential.params)}")
        if m:
            a, b = m.group(2), m.group(3)
            if np.ndim(potential.params[base]) != 2 or a not in species or b not in species:
                raise ValueError(f"sweep: {name!r}: {base!r} is not a per-pair parameter over "
                                 f"species {list(species)}; sweep {base!r} instead")
            paired.add(base)
        else:
            whole.add(base)
        if name in out:
            raise ValueError(f"sweep: {name!r} given twice")
        try:
            arr = np.asarray(raw_values, dtype=float)
        except (TypeError, ValueError):
            raise ValueError(f"sweep: {name!r}: values must be numbers") from None
        if arr.ndim > 1:
            raise ValueError(f"sweep: {name!r}: values must be a 1-D sequence")
        values = [float(v) for v in np.atleast_1d(arr)]
        if not values:
            raise ValueError(f"sweep: {name!r} has no values")
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"sweep: {name!r} has non-finite values")
        if len(set(values)) != len(values):
            raise ValueError(f"sweep: {name!r} repeats a value")
        out[name] = values
    both = whole & paired
    if both:
        raise ValueError(f"sweep: {sorted(both)} swept both whole and per species pair")
    return out


def grid(sweep: Mapping[str, Sequence[float]]) -> dict[str, np.ndarray]:
    """The cartesian product of the sweep, ``{name: (G,) array}``; the last name is fastest."""
    names = list(sweep)
    rows = list(itertools.product(*(sweep[n] for n in names)))
    return {n: np.array([r[k] for r in rows], np.float64) for k, n in enumerate(names)}


def potential_at(potential: Any, values: Mapping[str, float]) -> Any:
    """``potential`` with the swept parameters set to ``values`` (one grid point)."""
    updates: dict[str, Any] = {}
    for name, v in values.items():
        m = _PAIR_RE.match(name)
        if m is None:
            p = np.asarray(potential.params[name], np.float64)
            updates[name] = np.full_like(p, float(v)) if p.ndim else float(v)
            continue
        base, a, b = m.groups()
        mat = np.array(updates.get(base, potential.params[base]), np.float64)
        i, j = potential.species.index(a), potential.species.index(b)
        mat[i, j] = mat[j, i] = float(v)
        updates[base] = mat
    return potential.with_params(**updates)


def structure_digest(system: Any) -> str:
    """SHA-256 of a System's positions, cell, pbc and species (float64 bytes)."""
    h = hashlib.sha256()
    for arr in (np.asarray(system.positions, np.float64), np.asarray(system.cell, np.float64),
                np.asarray(system.pbc, bool), np.asarray(system.species, np.int64)):
        h.update(str(arr.shape).encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    h.update(json.dumps(list(system.species_names)).encode())
    return h.hexdigest()


def jsonable(x: Any) -> Any:
    """Plain JSON types for the study definition (arrays as nested lists)."""
    if isinstance(x, Mapping):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x)
    if isinstance(x, str) or x is None:
        return x
    if hasattr(x, "__array__"):
        return jsonable(np.asarray(x).tolist())
    return str(x)


def canonical_json(definition: Mapping[str, Any]) -> str:
    """The definition as canonical JSON (sorted keys): equal studies give equal strings."""
    return json.dumps(jsonable(definition), sort_keys=True, allow_nan=True)
