"""``mdsens inspect``: a readable summary of any file mdsens writes, or ``--json``.

Reads relaxation and sensitivity results (:func:`mdsens.io.hdf5.read_result`) and study
files (:func:`mdsens.studies.read`) without importing JAX. Besides the summary it holds
the rules the CLI uses to present numbers (``mdsens plot`` uses them too):

* units: the H5MD grammar of the files (``"eV Angstrom-3"``) shown as ``eV/Å³``; values in
  eV/Å³ (stress, pressure, elastic constants and their derivatives) also in GPa;
* zero to the precision computed: a derivative ``dO/dp`` with
  ``r = |dO/dp| · P / S_O ≤ ROUND_OFF`` is shown as ``≈0 (round-off)`` (floating-point
  rounding), with ``r ≤ TOLERANCE`` as ``≈0 (within tolerance)`` (below what the
  relaxation's fmax and the solves' tolerance resolve); ``S_O = max(|O|, natural scale of
  O's unit)``
  and ``P = |p|`` (the parameter's value; the natural scale of its unit when the value is
  zero or unknown). Natural scales come from the structure: ``e`` = |relaxed energy| / N
  (eV), ``ℓ`` = (volume / N)^(1/3) (Å), a unit eV^a Å^b has scale ``e^a ℓ^b``;
* the relative sensitivity ``(p / O) dO/dp`` (= d ln O / d ln p, dimensionless) where
  ``p`` is non-zero and ``|O|`` above ``RESOLVED`` times the natural scale of its unit.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any

import click

from . import _common as c

RESOLVED = 1e-6
"""An observable is taken as non-zero, and a relative sensitivity computed, only where
``|O|`` exceeds this fraction of the natural scale of its unit (a pressure of 1e-11 eV/Å³
after a cell relaxation is zero to the relaxation's tolerance, not a value to divide by)."""

ROUND_OFF = 1e-11
"""Relative size (see the module docstring) up to which a derivative is floating-point
round-off: float64 rounding (2.2e-16) amplified by sums over atoms and the condition of
the Hessian solves."""

TOLERANCE = 1e-7
"""Relative size up to which a derivative is zero within the tolerances of the computation:
a relaxation to fmax 1e-8 eV/Å places atoms to ~1e-8 of their spacing, and derivative
solves converge to 1e-10 relative residuals, so a smaller relative change is not
resolved (e.g. dV/dε of a Lennard-Jones crystal, exactly zero, computes as ~1e-8)."""

ZERO_TEXT = {"round-off": "≈0 (round-off)", "tolerance": "≈0 (within tolerance)"}
"""How a derivative judged zero (:attr:`Judged.zero`) is shown."""

_SYMBOLS = {"Angstrom": "Å", "deg": "deg", "eV": "eV"}
_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")
_TOKEN = re.compile(r"^([A-Za-z_]+)([-+]?[0-9]+)?$")
_PRESSURE = {"eV": 1, "Angstrom": -3}


# ----------------------------------------------------------------------------- units
def unit_powers(unit: str) -> dict[str, int] | None:
    """``"eV Angstrom-3"`` -> ``{"eV": 1, "Angstrom": -3}``; ``"1"`` -> ``{}``; None when
    ``unit`` is not one unit in the H5MD grammar (empty, unknown, several components)."""
    if not unit or unit.strip() == "1":
        return {} if unit.strip() == "1" else None
    out: dict[str, int] = {}
    for token in unit.split():
        m = _TOKEN.match(token)
        if m is None:
            return None
        out[m.group(1)] = out.get(m.group(1), 0) + int(m.group(2) or 1)
    return out


def human_unit(unit: str) -> str:
    """A unit for people: ``"eV Angstrom-3"`` -> ``"eV/Å³"``, ``"Angstrom3 eV-1"`` ->
    ``"Å³/eV"``, ``"1"`` -> ``"1"`` (dimensionless); components joined by ", "; text
    that is not in the H5MD grammar is returned as it is."""
    if "," in unit:
        return ", ".join(human_unit(u.strip()) for u in unit.split(","))
    powers = unit_powers(unit)
    if powers is None:
        return unit
    if not powers:
        return "1"

    def term(sym: str, exp: int) -> str:
        text = _SYMBOLS.get(sym, sym)
        return text if exp == 1 else text + str(exp).translate(_SUPERSCRIPT)

    num = " ".join(term(s, e) for s, e in powers.items() if e > 0)
    den = " ".join(term(s, -e) for s, e in powers.items() if e < 0)
    if not den:
        return num
    return f"{num or '1'}/{den if ' ' not in den else '(' + den + ')'}"


def is_pressure(unit: str) -> bool:
    """The unit is eV/Å³ (pressure, stress, elastic constants)."""
    return unit_powers(unit) == _PRESSURE


def gpa_per_ev_per_a3() -> float:
    """1 eV/Å³ in GPa (160.2177), from :mod:`mdsens.units`."""
    from ..units import value_in

    return value_in("1 eV/Å^3", "GPa")


def divide_units(numerator: str, denominator: str) -> str:
    """``numerator / denominator`` of two H5MD units ("" when either is not one unit)."""
    a, b = unit_powers(numerator), unit_powers(denominator)
    if a is None or b is None:
        return ""
    out = dict(a)
    for s, e in b.items():
        out[s] = out.get(s, 0) - e
    terms = [f"{s}{'' if e == 1 else e}" for s, e in sorted(out.items(), key=lambda kv: kv[1] < 0)
             if e]
    return " ".join(terms) or "1"


@dataclasses.dataclass(frozen=True)
class Scales:
    """Natural magnitudes of a structure: ``energy`` eV per atom, ``length`` Å."""

    energy: float = 1.0
    length: float = 1.0

    @classmethod
    def of_structure(cls, n_atoms: int, energy: float | None, positions: Any,
                     cell: Any, pbc: Any) -> Scales:
        """``energy`` = |E| / N (1 eV when unknown or zero); ``length`` = (V / N)^(1/3)
        with V the cell volume (periodic) or the atoms' bounding box (free), 1 Å when
        that is degenerate."""
        import numpy as np

        e = abs(energy) / max(n_atoms, 1) if energy is not None and math.isfinite(
            energy) and energy != 0 else 1.0
        R = np.asarray(positions, float)
        vol = 0.0
        if all(bool(p) for p in pbc) and np.ndim(cell) == 2:
            vol = abs(float(np.linalg.det(np.asarray(cell, float))))
        if not vol > 0 and R.size:
            vol = float(np.prod(np.maximum(np.ptp(R, axis=0), 1.0)))
        length = (vol / max(n_atoms, 1)) ** (1 / R.shape[-1]) if vol > 0 and R.size else 1.0
        return cls(e, length)

    def of(self, unit: str) -> float:
        """The natural magnitude of a quantity in ``unit`` (1 per unit it cannot scale)."""
        powers = unit_powers(unit) or {}
        return self.energy ** powers.get("eV", 0) * self.length ** powers.get("Angstrom", 0)


@dataclasses.dataclass(frozen=True)
class Judged:
    """A scalar derivative ``dO/dp`` judged against its scale (see the module docstring).

    Attributes:
      value: dO/dp in ``unit`` (H5MD grammar).
      zero: ``"round-off"``, ``"tolerance"`` (see :data:`ROUND_OFF`, :data:`TOLERANCE`)
        or None (a resolved value).
      relative: ``(p / O) dO/dp``, 0 when zero; None where p or O is zero or unknown.
    """

    value: float
    unit: str
    zero: str | None
    relative: float | None


def judge(value: float, unit: str, obs_value: Any, obs_unit: str, p_value: float | None,
          p_unit: str, scales: Scales) -> Judged:
    """Judge one scalar derivative (``obs_value``: the observable's value, any shape)."""
    import numpy as np

    o = float(np.max(np.abs(obs_value))) if np.size(obs_value) else 0.0
    s_o = max(o if math.isfinite(o) else 0.0, scales.of(obs_unit))
    p = abs(p_value) if p_value is not None and math.isfinite(p_value) else 0.0
    big_p = p if p > 0 else scales.of(p_unit)
    ratio = abs(value) * big_p / s_o if s_o > 0 else math.inf
    zero = (None if not math.isfinite(ratio) else "round-off" if ratio <= ROUND_OFF else
            "tolerance" if ratio <= TOLERANCE else None)
    relative = None
    o_scalar = float(np.asarray(obs_value)) if np.size(obs_value) == 1 else None
    if (p > 0 and o_scalar is not None and o_scalar != 0 and math.isfinite(o_scalar)
            and abs(o_scalar) > RESOLVED * scales.of(obs_unit)):
        relative = 0.0 if zero else float(p_value) / o_scalar * value
    return Judged(float(value), unit, zero, relative)


def parameter_value(potential: dict[str, Any], config: dict[str, Any], name: str
                    ) -> float | None:
    """The value of ``--wrt`` parameter ``name`` in a result: a scalar potential parameter,
    one entry ``NAME[A,B]`` of a per-pair table, the pressure (``relax_options`` of the run
    configuration, 0 by default) or the strain (0); None for tables and unknown names."""
    import numpy as np

    base, _, pair = name.partition("[")
    if base == "strain":
        return 0.0
    if base == "pressure":
        opts = config.get("relax_options") or {}
        return float(opts.get("pressure", config.get("pressure", 0.0)) or 0.0)
    value = potential.get("params", {}).get(base)
    if value is None:
        return None
    arr = np.asarray(value, float)
    if not pair:
        return float(arr) if arr.size == 1 else None
    species = list(potential.get("species") or ())
    a, _, b = pair.rstrip("]").partition(",")
    try:
        return float(arr[species.index(a.strip()), species.index(b.strip())])
    except (ValueError, IndexError):
        return None


def derivative_units(path: Path) -> dict[str, dict[str, dict[str, str]]]:
    """``obs -> param -> {"unit", "observable_unit", "parameter_unit"}`` (H5MD grammar;
    "" where the file declares none; ``unit`` lists distinct components joined by ", ")
    of the ``/sensitivity`` datasets of a result or study file."""
    import h5py

    from ..io.hdf5 import unit_of

    def text(ds: Any, key: str) -> str:
        v = ds.attrs.get(key, "")
        return v.decode() if isinstance(v, bytes) else str(v)

    out: dict[str, dict[str, dict[str, str]]] = {}
    with h5py.File(path, "r") as f:
        for obs, g in f.get("sensitivity", {}).items():
            out[obs] = {p: {"unit": unit_of(ds), "observable_unit": text(ds, "observable_unit"),
                            "parameter_unit": text(ds, "parameter_unit")}
                        for p, ds in g.items()}
    return out


def derivative_unit_text(units: dict[str, str]) -> str:
    """The unit of a derivative for people (``units``: an entry of
    :func:`derivative_units`): simplified (``Å²`` for Å³/Å), except that a dimensionless
    ratio keeps its parts (``eV/eV``, ``Å/Å``) to say what it is a ratio of."""
    unit = units.get("unit", "")
    o, p = units.get("observable_unit", ""), units.get("parameter_unit", "")
    if unit == "1" and o and p and o != "1" and p != "1":
        return f"{human_unit(o)}/{human_unit(p)}"
    return human_unit(unit)


def fmt(x: float, digits: int = 6) -> str:
    """A number with ``digits`` significant digits."""
    return f"{x:.{digits}g}"


# ----------------------------------------------------------------------------- results
def _kind(path: Path) -> str:
    """``"study"``, ``"result"``; BadInput for anything else."""
    import h5py

    if not path.is_file():
        raise c.BadInput(f"{path}: no such file")
    try:
        with h5py.File(path, "r") as f:
            mod = f.get("h5md/modules/mdsens")
            kind = None if mod is None else str(mod.attrs.get("kind", ""))
    except OSError:
        raise c.BadInput(f"{path}: not an HDF5 file") from None
    if kind is None:
        raise c.BadInput(f"{path}: not a file written by mdsens (no /h5md/modules/mdsens)")
    return "study" if kind == "study" else "result"


def _matrix(m: Any) -> list[list[float]]:
    import numpy as np

    return np.asarray(m, float).tolist()


def summary(stored: Any, path: Path | None = None,
            units: dict[str, dict[str, dict[str, str]]] | None = None) -> dict[str, Any]:
    """A JSON-ready summary of a :class:`~mdsens.io.hdf5.StoredResult` (``path``: the file;
    ``units``: its :func:`derivative_units`, read from ``path`` when not given)."""
    import numpy as np

    s = stored.sensitivity
    relax = s.diagnostics.get("relaxation") or {}
    n = len(stored.symbols)
    scales = Scales.of_structure(n, relax.get("energy"), stored.positions, stored.cell,
                                 stored.pbc)
    if units is None:
        units = derivative_units(path) if path is not None else {}
    gpa = None
    observables: dict[str, Any] = {}
    for k, v in s.values.items():
        unit = s.units.get(k, "")
        entry: dict[str, Any] = {"shape": list(np.shape(v)), "unit": unit,
                                 "unit_text": human_unit(unit)}
        if np.ndim(v) == 0:
            entry["value"] = float(np.asarray(v))
        elif np.size(v) <= 36:
            entry["value"] = np.asarray(v, float).tolist()
        if is_pressure(unit) and "value" in entry:
            gpa = gpa or gpa_per_ev_per_a3()
            entry["value_GPa"] = (np.asarray(v, float) * gpa).tolist()
        observables[k] = entry
    derivatives: dict[str, dict[str, Any]] = {}
    for obs, per in s.derivatives.items():
        for p, d in per.items():
            info = units.get(obs, {}).get(p, {})
            unit = info.get("unit", "")
            entry = {"shape": list(np.shape(d)), "unit": unit,
                     "unit_text": derivative_unit_text(info)}
            if np.ndim(d) == 0:
                j = judge(float(np.asarray(d)), unit, s.values.get(obs, 0.0),
                          s.units.get(obs, ""), parameter_value(stored.potential,
                                                                 stored.config, p),
                          info.get("parameter_unit", ""), scales)
                entry.update(value=j.value, zero=j.zero, relative=j.relative)
            else:
                arr = np.asarray(d, float)
                entry["max_abs"] = float(np.max(np.abs(arr))) if arr.size else 0.0
                if arr.size <= 36:
                    entry["value"] = arr.tolist()
            if is_pressure(info.get("observable_unit", "")) and "value" in entry:
                gpa = gpa or gpa_per_ev_per_a3()
                entry["value_GPa"] = (np.asarray(entry["value"]) * gpa).tolist()
                entry["unit_GPa"] = _gpa_unit(info.get("parameter_unit", ""))
            derivatives.setdefault(obs, {})[p] = entry
    scalars = {o: {p: e["value"] for p, e in per.items() if not e["shape"]}
               for o, per in derivatives.items()}
    return {
        "file": str(path) if path is not None else None,
        "kind": stored.kind,
        "structure": {"n_atoms": n, "species": sorted(set(stored.symbols)),
                      "pbc": list(stored.pbc), "cell": _matrix(stored.cell)},
        "potential": {"name": stored.potential["name"],
                      "params": {k: np.asarray(v).tolist()
                                 for k, v in stored.potential["params"].items()},
                      "species": list(stored.potential.get("species") or ())},
        "converged": s.converged,
        "problems": list(s.problems),
        "relaxation": {k: relax.get(k) for k in ("steps", "fmax", "energy", "status")},
        "observables": observables,
        "wrt": list(s.wrt),
        "derivatives": derivatives,
        "scalar_derivatives": {k: v for k, v in scalars.items() if v},
        "zero_rule": _zero_rule(scales),
        "diagnostics": {k: s.diagnostics.get(k) for k in
                        ("mode", "n_solves", "min_curvature_estimate", "root_residual")
                        if _reported(s.diagnostics.get(k))},
        "provenance": stored.provenance,
    }


def _reported(value: Any) -> bool:
    """Whether a diagnostics entry holds something (not absent, empty or NaN)."""
    if value is None or value == "":
        return False
    return not (isinstance(value, float) and value != value)


def _zero_rule(scales: Scales) -> dict[str, float]:
    """The thresholds and scales derivatives were judged zero with (for ``--json``)."""
    return {"round_off": ROUND_OFF, "tolerance": TOLERANCE, "resolved": RESOLVED,
            "energy_scale_eV": scales.energy, "length_scale_A": scales.length}


def _zero_footnote(kinds: set[str], table: bool = False) -> list[str]:
    """What the ≈0 marks used mean (``table``: the short marks ``≈0``, ``≈0*``)."""
    marks = {"round-off": "≈0", "tolerance": "≈0*"} if table else ZERO_TEXT
    out = []
    if "round-off" in kinds:
        out.append(f"{marks['round-off']}{': round-off' if table else ''}: |dO/dp|·|p| ≤ "
                   f"{ROUND_OFF:g} × the scale of O")
    if "tolerance" in kinds:
        out.append(f"{marks['tolerance']}{': within tolerance' if table else ''}: "
                   f"|dO/dp|·|p| ≤ {TOLERANCE:g} × the scale of O, below what the "
                   "relaxation and solves resolve")
    return [*out, "raw values: --json"] if out else []


def _gpa_unit(param_unit: str) -> str:
    """GPa per parameter unit, for people: ``"GPa/Å"``, ``"GPa"`` (dimensionless)."""
    p = human_unit(param_unit) if param_unit else "?"
    return "GPa" if p == "1" else f"GPa/{p}" if "/" not in p and " " not in p else f"GPa/({p})"


def _param_unit(potential_name: str, name: str) -> str:
    """The human unit of parameter ``name`` of a registered potential (catalog), pressure
    and strain included; "" when unknown."""
    from ..md import catalog

    base = name.split("[", 1)[0]
    if base == "pressure":
        return "eV/Å³"
    if base == "strain":
        return "1"
    info = catalog.potential(potential_name)
    p = info.parameter(base) if info is not None else None
    return "" if p is None else p.unit


def _result_lines(info: dict[str, Any]) -> list[str]:
    st, pot, rel = info["structure"], info["potential"], info["relaxation"]
    pbc = st["pbc"]
    periodic = "periodic" if all(pbc) else "free" if not any(pbc) else "mixed"
    lines = [f"{info['file']}: mdsens {info['kind']} result",
             f"structure: {st['n_atoms']} atoms {', '.join(st['species'])}, {periodic} "
             f"(pbc {' '.join('T' if p else 'F' for p in pbc)})"]
    params = []
    for k, v in pot["params"].items():
        unit = _param_unit(pot["name"], k)
        if isinstance(v, (int, float)):
            params.append(f"{k}={fmt(v, 8)}" + (f" {unit}" if unit not in ("", "1") else ""))
        else:
            params.append(f"{k}=table {_shape_text(_shape(v))}")
    lines.append(f"potential: {pot['name']} " + ", ".join(params))
    lines.append(f"converged: {'yes' if info['converged'] else 'NO'}")
    lines += [f"  problem: {p}" for p in info["problems"]]
    if rel.get("steps") is not None:
        lines.append(f"relaxation: {rel['steps']} steps, fmax {rel['fmax']:.3g} eV/Å, "
                     f"energy {fmt(rel['energy'], 8)} eV")
    lines.append("observables:")
    for k, v in info["observables"].items():
        lines += _observable_lines(k, v, st["n_atoms"])
    if info["derivatives"]:
        lines.append("derivatives d(observable)/d(parameter); relative: (p/O) dO/dp "
                     "(scalar derivatives):")
        lines += _derivative_lines(info["derivatives"], st["n_atoms"])
    kinds = {e.get("zero") for per in info["derivatives"].values() for e in per.values()}
    lines += [f"  {x}" for x in _zero_footnote({k for k in kinds if k})]
    for k, v in info["diagnostics"].items():
        lines.append(f"{k}: {fmt(v) if isinstance(v, float) else v}")
    prov = info["provenance"]
    lines.append(f"written {prov.get('timestamp')} by mdsens {prov.get('mdsens')} "
                 f"(jax {prov.get('jax')}, jax-md {prov.get('jax_md')})")
    return lines


def _shape(v: Any) -> list[int]:
    import numpy as np

    return list(np.shape(v))


def _shape_text(shape: list[int]) -> str:
    return "×".join(str(n) for n in shape)


def fixed(values: Any, digits: int = 5) -> list[str]:
    """Numbers in fixed point with ``digits`` significant digits of the largest one, so
    that entries far below it (noise of an otherwise zero entry) read ``0``."""
    import numpy as np

    arr = np.asarray(values, float).ravel()
    finite = arr[np.isfinite(arr)]
    top = float(np.max(np.abs(finite))) if finite.size else 0.0
    if top == 0.0:
        return ["0" if np.isfinite(x) else str(x) for x in arr]
    decimals = min(max(0, digits - 1 - math.floor(math.log10(top))), 12)
    out = []
    for x in arr:
        text = f"{x:.{decimals}f}" if np.isfinite(x) else str(x)
        out.append("0" if np.isfinite(x) and float(text) == 0 else text)
    return out


def _per_atom(name: str, shape: list[int], n_atoms: int) -> bool:
    return name in ("positions", "displacements") and bool(shape) and shape[0] == n_atoms


def _observable_lines(name: str, v: dict[str, Any], n_atoms: int) -> list[str]:
    unit = v["unit_text"]
    shape = _shape_text(v["shape"])
    if not v["shape"]:
        gpa = f"  ({fmt(v['value_GPa'])} GPa)" if "value_GPa" in v else ""
        return [f"  {name:<34}{fmt(v['value'], 8):>16} {unit}{gpa}"]
    if _per_atom(name, v["shape"], n_atoms) or "value" not in v:
        return [f"  {name:<34}{shape:>16} {unit}  (per atom; --json or the file for values)"]
    if len(v["shape"]) == 2:
        if "value_GPa" in v:
            return [f"  {name} ({shape}) in GPa [in {unit}]:",
                    *_matrix_lines(v["value_GPa"], v["value"])]
        return [f"  {name} ({shape}) in {unit}:", *_matrix_lines(v["value"])]
    text = f"  {name:<34}[{' '.join(fixed(v['value']))}] {unit}"
    if "value_GPa" in v:
        text += f"  = [{' '.join(fixed(v['value_GPa']))}] GPa"
    return [text]


def _matrix_lines(m: Any, also: Any = None) -> list[str]:
    """Rows of a matrix in :func:`fixed` point; ``also``: the same matrix in other units,
    in brackets beside it."""
    import numpy as np

    def cells(a: Any) -> list[list[str]]:
        arr = np.asarray(a, float)
        flat = fixed(arr)
        return [flat[i * arr.shape[1]:(i + 1) * arr.shape[1]] for i in range(arr.shape[0])]

    left = cells(m)
    right = cells(also) if also is not None else None
    w1 = max(len(x) for row in left for x in row)
    w2 = max(len(x) for row in right for x in row) if right is not None else 0
    out = []
    for i, row in enumerate(left):
        text = "    " + " ".join(f"{x:>{w1}}" for x in row)
        if right is not None:
            text += "   [" + " ".join(f"{x:>{w2}}" for x in right[i]) + "]"
        out.append(text)
    return out


def _derivative_lines(derivatives: dict[str, dict[str, Any]], n_atoms: int) -> list[str]:
    out = []
    for obs, per in derivatives.items():
        for p, e in per.items():
            label = f"d {obs} / d {p}"
            unit = e["unit_text"]
            if not e["shape"]:
                if e["zero"]:
                    out.append(f"  {label:<34}{ZERO_TEXT[e['zero']]:>16}"
                               + ("   relative ≈0" if e["relative"] is not None else ""))
                    continue
                gpa = (f"  ({fmt(e['value_GPa'])} {e['unit_GPa']})" if "value_GPa" in e
                       else "")
                rel = "" if e["relative"] is None else f"   relative {fmt(e['relative'], 4)}"
                out.append(f"  {label:<34}{fmt(e['value']):>16} {unit}{gpa}{rel}")
            elif _per_atom(obs, e["shape"], n_atoms) or "value" not in e:
                out.append(f"  {label:<34}{_shape_text(e['shape']):>16} {unit}   "
                           f"max |·| {fmt(e['max_abs'], 4)}")
            elif len(e["shape"]) == 2:
                units = (f"{e['unit_GPa']} [in {unit}]" if "value_GPa" in e else unit)
                out.append(f"  {label} ({_shape_text(e['shape'])}) in {units}:")
                out += _matrix_lines(e.get("value_GPa", e["value"]),
                                     e["value"] if "value_GPa" in e else None)
            else:
                text = f"  {label:<34}[{' '.join(fixed(e['value']))}] {unit}"
                if "value_GPa" in e:
                    text += f"  = [{' '.join(fixed(e['value_GPa']))}] {e['unit_GPa']}"
                out.append(text)
    return out


# ----------------------------------------------------------------------------- studies
def _study_scales(path: Path, study: Any) -> Scales:
    """Natural scales of a study's first structure (its input cell and positions, the
    median relaxed energy of its done points)."""
    import h5py
    import numpy as np

    with h5py.File(path, "r") as f:
        g = f["structures/0"]
        positions, edges = g["input_position"][()], g["input_edges"][()]
        pbc = tuple(bool(b) for b in g.attrs["pbc"])
    sel = (study.structure_index == 0) & study.done
    energy = study.diagnostics.get("energy")
    e = float(np.nanmedian(energy[sel])) if energy is not None and sel.any() else None
    return Scales.of_structure(len(positions), e, positions, edges, pbc)


def study_summary(study: Any, path: Path) -> dict[str, Any]:
    """A JSON-ready summary of a study file (:class:`mdsens.studies.StudyResult`): the
    definition, point counts, which observables do not change with which parameter, and
    per point the swept values, scalar observables, scalar derivatives and status."""
    d = study.definition
    units = derivative_units(path)
    scales = _study_scales(path, study)
    done, conv = study.done, study.converged
    pot = d.get("potential", {})
    points = []
    for p in range(done.size):
        row: dict[str, Any] = {
            "point": p, "structure": study.structures[int(study.structure_index[p])],
            "parameters": {k: float(v[p]) for k, v in study.parameters.items()},
            "done": bool(done[p]), "converged": bool(conv[p]), "problems": study.problems[p],
            "values": {k: float(v[p]) for k, v in study.values.items() if v.ndim == 1},
            "derivatives": {}, "zero": {}}
        for k, per in study.derivatives.items():
            for q, dv in per.items():
                if dv.ndim != 1:
                    continue
                row["derivatives"].setdefault(k, {})[q] = float(dv[p])
                if done[p] and math.isfinite(dv[p]):
                    p_value = row["parameters"].get(q, _study_parameter(pot, d, q))
                    j = judge(float(dv[p]), units[k][q]["unit"], study.values[k][p],
                              study.units.get(k, ""), p_value,
                              units[k][q]["parameter_unit"], scales)
                    row["zero"].setdefault(k, {})[q] = j.zero
        points.append(row)
    unchanged = []
    for k, per in study.derivatives.items():
        for q, dv in per.items():
            flags = [r["zero"].get(k, {}).get(q) for r in points if r["done"]]
            if dv.ndim == 1 and flags and all(flags):
                unchanged.append([k, q])
    return {
        "file": str(path), "kind": "study",
        "points": int(done.size), "done": int(done.sum()),
        "converged": int((done & conv).sum()), "failed": int((done & ~conv).sum()),
        "structures": d.get("structures", []),
        "potential": pot,
        "sweep": {name: list(vals) for name, vals in d.get("sweep", [])},
        "wrt": d.get("wrt", []), "observables": d.get("observables", []),
        "relax_cell": d.get("relax_cell"), "pressure": d.get("pressure"),
        "units": dict(study.units),
        "derivative_units": {o: {p: e["unit"] for p, e in per.items()}
                             for o, per in units.items()},
        "derivative_unit_text": {o: {p: derivative_unit_text(e) for p, e in per.items()}
                                 for o, per in units.items()},
        "unchanged": unchanged,
        "zero_rule": _zero_rule(scales),
        "point_table": points,
    }


def _study_parameter(pot: dict[str, Any], definition: dict[str, Any], name: str
                     ) -> float | None:
    """The fixed value of a non-swept ``--wrt`` parameter of a study."""
    return parameter_value({"params": pot.get("params") or {},
                            "species": pot.get("species") or ()},
                           {"pressure": definition.get("pressure", 0.0)}, name)


MAX_ROWS = 40
"""Points listed by the text summary of a study (``--json`` lists all)."""


def _study_lines(info: dict[str, Any]) -> list[str]:
    pot = info["potential"]
    lines = [f"{info['file']}: mdsens study (mdsens scan)",
             f"points: {info['done']} of {info['points']} done, {info['converged']} "
             f"converged, {info['failed']} failed"]
    for s in info["structures"]:
        lines.append(f"structure: {s.get('label')} ({s.get('n_atoms')} atoms)")
    fixed_params = [f"{k}={fmt(v, 8)}" + (f" {u}" if (u := _param_unit(pot.get("name", ""), k))
                                          not in ("", "1") else "")
                    for k, v in (pot.get("params") or {}).items()
                    if k not in info["sweep"] and isinstance(v, (int, float))]
    lines.append(f"potential: {pot.get('name')}" +
                 (f" {', '.join(fixed_params)}" if fixed_params else ""))
    for name, vals in info["sweep"].items():
        unit = _param_unit(pot.get("name", ""), name)
        unit = f" {unit}" if unit not in ("", "1") else ""
        lines.append(f"sweep: {name} = {', '.join(fmt(v) for v in vals)}{unit}")
    cell = "relaxed cell" if info["relax_cell"] else "fixed cell"
    lines.append(f"wrt: {', '.join(info['wrt'])}; observables: "
                 f"{', '.join(info['observables'])}; {cell}, pressure "
                 f"{fmt(info['pressure'] or 0.0)} eV/Å³")
    for obs, q in info["unchanged"]:
        lines.append(f"{obs} does not change with {q}: d {obs} / d {q} ≈0 at every done "
                     "point")
    rows = info["point_table"][:MAX_ROWS]
    multi = len(info["structures"]) > 1
    punits = {k: _param_unit(pot.get("name", ""), k) for k in info["sweep"]}

    def head(name: str, unit: str) -> str:
        return f"{name} ({unit})" if unit not in ("", "1") else name

    def status(r: dict[str, Any]) -> str:
        return ("not done" if not r["done"] else "ok" if r["converged"] else
                f"FAILED: {r['problems'][:60]}")

    lead = ["#", *(["structure"] if multi else []),
            *[head(k, u) for k, u in punits.items()]]

    def lead_cells(r: dict[str, Any]) -> list[str]:
        return [str(r["point"]), *([r["structure"]] if multi else []),
                *[fmt(r["parameters"][k]) for k in punits]]

    obs = [k for k in info["units"] if rows and k in rows[0]["values"]]
    lines.append("values:")
    lines += _table([*lead, *[head(k, human_unit(info["units"][k])) for k in obs], "status"],
                    [[*lead_cells(r), *[_cell(r["values"][k], r["done"]) for k in obs],
                      status(r)] for r in rows])
    for k in obs:
        params = [q for q in info["wrt"] if rows and q in rows[0]["derivatives"].get(k, {})]
        if not params:
            continue
        lines.append(f"d {k} / d parameter:")
        cols = [f"d/d {q} ({info['derivative_unit_text'][k][q]})" for q in params]
        lines += _table([*lead, *cols],
                        [[*lead_cells(r),
                          *[(_zero_cell(r["zero"].get(k, {}).get(q)) or
                             _cell(r["derivatives"][k][q], r["done"])) for q in params]]
                         for r in rows])
    if info["points"] > MAX_ROWS:
        lines.append(f"... {info['points'] - MAX_ROWS} more points (--json lists all)")
    lines += _zero_footnote({v for r in rows for per in r["zero"].values()
                             for v in per.values() if v}, table=True)
    return lines


def _zero_cell(zero: str | None) -> str:
    """``≈0`` (round-off) or ``≈0*`` (within tolerance) in a table; "" when not zero."""
    return {"round-off": "≈0", "tolerance": "≈0*"}.get(zero or "", "")


def _cell(v: float, done: bool) -> str:
    return "-" if not done or not math.isfinite(v) else fmt(v)


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    return ["  " + "  ".join(f"{x:>{w}}" for x, w in zip(row, widths))
            for row in [head, *rows]]


# ----------------------------------------------------------------------------- command
@click.command("inspect")
@click.argument("path", metavar="FILE", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def inspect_cmd(path: Path, as_json: bool) -> None:
    """Summarise any file mdsens writes.

    A relax or sensitivity result: structure, potential, convergence, observables
    (elastic constants and stresses also in GPa), derivatives with their units and
    relative sensitivities (p/O) dO/dp, values zero to the precision computed marked ≈0,
    diagnostics. A study (mdsens scan): the sweep, points done and failed, and tables of
    the values and derivatives at each point. Reads the file without importing JAX.

    \b
    Examples:
      mdsens inspect out.h5
      mdsens inspect study.h5 --json
    """
    kind = _kind(path)
    if kind == "study":
        from ..studies import read

        try:
            info = study_summary(read(path), path)
        except (ValueError, KeyError, OSError) as exc:
            raise c.BadInput(f"{path}: cannot read the study file ({exc})") from None
        lines = _study_lines(info)
    else:
        from ..io.errors import InputError
        from ..io.hdf5 import read_result

        try:
            stored = read_result(path)
        except InputError as exc:
            raise c.BadInput(str(exc)) from None
        info = summary(stored, path)
        lines = _result_lines(info)
    if as_json:
        click.echo(json.dumps(_finite(info), indent=1, default=_json_default,
                              allow_nan=False, ensure_ascii=False))
        return
    for line in lines:
        click.echo(line)


def _finite(x: Any) -> Any:
    """``x`` with every NaN or infinity replaced by None (JSON has neither)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def _json_default(x: Any) -> Any:
    """numpy scalars and arrays as JSON numbers and lists."""
    import numpy as np

    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)
