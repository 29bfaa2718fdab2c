r"""Physical units: parsing, composition, conversion, and the H5MD unit grammar.

mdsens computes in ASE's units: lengths in Å, energies in eV (pressures and stresses in
eV/Å^d, d the dimension). Units are written as text in two forms:

* human form, as potentials and observables declare them and ``mdsens potentials`` prints
  them: ``"Å"``, ``"eV"``, ``"1/Å"``, ``"eV Å"``, ``"eV/Å^d"`` (``d`` the dimension),
  ``"1"`` (dimensionless), ``"Å, degrees"`` (components of different units: lengths
  first, then angles), ``"unknown"`` or ``""`` (not declared);
* the H5MD 1.1 ``units`` module grammar, written to result files: unit factors separated
  by single spaces, each a symbol optionally followed by a signed non-zero integer power,
  at most one leading number, ASCII only: ``"Angstrom"``, ``"eV Angstrom-3"``, ``"1"``.
  Lengths are ``Angstrom`` (the spelling MDAnalysis's H5MD reader recognises), angles
  ``deg``.

All parsing uses a private :class:`pint.UnitRegistry` (pint's application registry is
left alone).
"""

from __future__ import annotations

import functools
import re
from typing import Any

__all__ = [
    "UNKNOWN",
    "H5MD_UNIT",
    "compose",
    "h5md_components",
    "parse",
    "registry",
    "to_h5md",
    "value_in",
]

UNKNOWN = "unknown"
"""The unit of a quantity whose unit nobody declared (never guessed)."""

H5MD_UNIT = re.compile(
    r"^(?:[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?(?: |$))?"
    r"(?:[A-Za-z_]+(?:[-+]?[1-9][0-9]*)?(?: (?=[A-Za-z_])|$))*$")
"""A unit string of the H5MD ``units`` module: an optional leading number, then symbols
with optional signed powers, separated by single spaces (each symbol once: checked by
:func:`is_h5md`)."""

_SYMBOLS = {  # pint unit name -> H5MD symbol
    "angstrom": "Angstrom",
    "electron_volt": "eV",
    "degree": "deg",
    "radian": "rad",
    "picosecond": "ps",
    "femtosecond": "fs",
    "nanometer": "nm",
    "meter": "m",
    "second": "s",
    "kilogram": "kg",
    "joule": "J",
    "pascal": "Pa",
    "gigapascal": "GPa",
    "megapascal": "MPa",
    "kilopascal": "kPa",
    "bar": "bar",
    "kelvin": "K",
    "mole": "mol",
    "dalton": "Da",
}
_H5MD_TOKEN = re.compile(r"^([A-Za-z_]+)([-+]?[0-9]+)?$")

# The H5MD forms of the units that mdsens's own observables and parameters declare ("^d"
# filled in), so that writing a result file does not load pint (about 0.3 s a command).
# Generated with pint; tests/test_units.py checks every entry against it. Other units take
# the pint path.
_H5MD = {
    '1': '1', '1/Å': 'Angstrom-1', 'degrees': 'deg', 'eV': 'eV', 'eV Å': 'eV Angstrom',
    'Å': 'Angstrom', 'Å^2': 'Angstrom2', 'eV/Å^2': 'eV Angstrom-2', 'Å^3': 'Angstrom3',
    'eV/Å^3': 'eV Angstrom-3',
}
_COMPOSED = {
    ('1', '1'): '1', ('1', '1/Å'): 'Angstrom', ('1', 'eV'): 'eV-1',
    ('1', 'eV Å'): 'eV-1 Angstrom-1', ('1', 'Å'): 'Angstrom-1',
    ('1', 'eV/Å^2'): 'Angstrom2 eV-1', ('1', 'eV/Å^3'): 'Angstrom3 eV-1',
    ('eV', '1'): 'eV', ('eV', '1/Å'): 'eV Angstrom', ('eV', 'eV'): '1',
    ('eV', 'eV Å'): 'Angstrom-1', ('eV', 'Å'): 'eV Angstrom-1',
    ('eV', 'eV/Å^2'): 'Angstrom2', ('eV', 'eV/Å^3'): 'Angstrom3',
    ('Å', '1'): 'Angstrom', ('Å', '1/Å'): 'Angstrom2', ('Å', 'eV'): 'Angstrom eV-1',
    ('Å', 'eV Å'): 'eV-1', ('Å', 'Å'): '1', ('Å', 'eV/Å^2'): 'Angstrom3 eV-1',
    ('Å', 'eV/Å^3'): 'Angstrom4 eV-1',
    ('Å^2', '1'): 'Angstrom2', ('Å^2', '1/Å'): 'Angstrom3', ('Å^2', 'eV'): 'Angstrom2 eV-1',
    ('Å^2', 'eV Å'): 'Angstrom eV-1', ('Å^2', 'Å'): 'Angstrom',
    ('Å^2', 'eV/Å^2'): 'Angstrom4 eV-1', ('Å^2', 'eV/Å^3'): 'Angstrom5 eV-1',
    ('Å^3', '1'): 'Angstrom3', ('Å^3', '1/Å'): 'Angstrom4', ('Å^3', 'eV'): 'Angstrom3 eV-1',
    ('Å^3', 'eV Å'): 'Angstrom2 eV-1', ('Å^3', 'Å'): 'Angstrom2',
    ('Å^3', 'eV/Å^2'): 'Angstrom5 eV-1', ('Å^3', 'eV/Å^3'): 'Angstrom6 eV-1',
    ('eV/Å^2', '1'): 'eV Angstrom-2', ('eV/Å^2', '1/Å'): 'eV Angstrom-1',
    ('eV/Å^2', 'eV'): 'Angstrom-2', ('eV/Å^2', 'eV Å'): 'Angstrom-3',
    ('eV/Å^2', 'Å'): 'eV Angstrom-3', ('eV/Å^2', 'eV/Å^2'): '1',
    ('eV/Å^2', 'eV/Å^3'): 'Angstrom',
    ('eV/Å^3', '1'): 'eV Angstrom-3', ('eV/Å^3', '1/Å'): 'eV Angstrom-2',
    ('eV/Å^3', 'eV'): 'Angstrom-3', ('eV/Å^3', 'eV Å'): 'Angstrom-4',
    ('eV/Å^3', 'Å'): 'eV Angstrom-4', ('eV/Å^3', 'eV/Å^2'): 'Angstrom-1',
    ('eV/Å^3', 'eV/Å^3'): '1',
}


@functools.lru_cache(maxsize=1)
def registry() -> Any:
    """The module's own :class:`pint.UnitRegistry` (``Angstrom`` and ``Ang`` mean Å)."""
    import pint

    reg = pint.UnitRegistry()
    reg.define("@alias angstrom = Angstrom = Ang")
    return reg


def _with_dim(text: str, dim: int) -> str:
    """``text`` stripped, with ``^d`` filled in (the key of the tables above)."""
    return text.strip().replace("^d", f"^{dim}")


def _known(text: str | None) -> bool:
    return bool(text) and text.strip() != UNKNOWN


def _pint_text(text: str, dim: int) -> str:
    """Human or H5MD text as pint expression text (``^d`` filled in with ``dim``)."""
    text = text.strip().replace("^d", f"^{dim}").replace("·", " ")
    tokens = text.split()
    if tokens and all(_H5MD_TOKEN.match(t) for t in tokens[1:]) and (
            _H5MD_TOKEN.match(tokens[0]) or _is_number(tokens[0])):
        return " * ".join(_power(t) for t in tokens)
    return text.replace("^", "**")


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _power(token: str) -> str:
    m = _H5MD_TOKEN.match(token)
    if m is None:
        return token
    sym, exp = m.groups()
    return sym if exp is None else f"{sym}**({int(exp)})"


def parse(text: str, dim: int = 3) -> Any:
    """The :class:`pint.Unit` of one unit in human or H5MD form (``"1"`` and ``""``... see
    below); ``Å^d`` is read for dimension ``dim``.

    Raises:
      ValueError: ``text`` is unknown (``"unknown"`` or empty), has several components
        (``"Å, degrees"``) or is not a unit.
    """
    if not _known(text):
        raise ValueError(f"unit {text!r} is not declared")
    if "," in text:
        raise ValueError(f"unit {text!r} has several components")
    reg = registry()
    try:
        q = reg.Quantity(_pint_text(text, dim))
    except Exception as exc:  # pint raises several types for bad text
        raise ValueError(f"{text!r} is not a unit ({exc})") from None
    if q.magnitude != 1:
        raise ValueError(f"unit {text!r} has a numeric factor")
    return q.units


def to_h5md(text: str, dim: int = 3) -> str | None:
    """One unit in the H5MD grammar (``"eV/Å^3"`` -> ``"eV Angstrom-3"``, dimensionless
    -> ``"1"``), or None when it is unknown."""
    if not _known(text):
        return None
    known = _H5MD.get(_with_dim(text, dim))
    return known if known is not None else _format(parse(text, dim))


def _format(unit: Any) -> str:
    """A :class:`pint.Unit` as H5MD factors: positive powers first, then negative."""
    reg = registry()
    items = sorted(dict(unit._units).items(), key=lambda kv: (kv[1] < 0,))
    parts = []
    for name, exp in items:
        sym = _SYMBOLS.get(name) or reg.get_symbol(name)
        if not sym.isascii() or not re.fullmatch(r"[A-Za-z_]+", sym):
            raise ValueError(f"unit {name!r} has no ASCII symbol")
        parts.append(sym if exp == 1 else f"{sym}{int(exp)}")
    return " ".join(parts) or "1"


def h5md_components(text: str, size: int, dim: int = 3) -> list[str] | None:
    """Per-component H5MD units of a quantity of ``size`` components whose human unit
    lists several (``"Å, degrees"``: the first ``dim`` components lengths, the rest
    angles); one unit repeated for a single-unit ``text``; None when unknown."""
    if not _known(text):
        return None
    parts = [p.strip() for p in text.split(",")]
    if len(parts) == 1:
        return [to_h5md(parts[0], dim)] * size  # type: ignore[list-item]
    first = min(dim, size)
    return ([to_h5md(parts[0], dim)] * first  # type: ignore[list-item]
            + [to_h5md(parts[1], dim)] * (size - first))  # type: ignore[list-item]


def compose(numerator: str, denominator: str, dim: int = 3) -> str | None:
    """The H5MD unit of d(numerator)/d(denominator), simplified by pint (``"eV"``,
    ``"Å"`` -> ``"eV Angstrom-1"``); None when either is unknown or has components."""
    if not (_known(numerator) and _known(denominator)):
        return None
    if "," in numerator or "," in denominator:
        return None
    known = _COMPOSED.get((_with_dim(numerator, dim), _with_dim(denominator, dim)))
    if known is not None:
        return known
    return _format(parse(numerator, dim) / parse(denominator, dim))


def compose_components(numerator: str, denominator: str, size: int, dim: int = 3
                       ) -> list[str] | None:
    """Per-component H5MD units of d(numerator)/d(denominator) for a numerator of several
    components (see :func:`h5md_components`); None when either is unknown."""
    nums = h5md_components(numerator, size, dim)
    if nums is None or not _known(denominator):
        return None
    den = parse(denominator, dim)
    return [_format(parse(n, dim) / den) for n in nums]


def is_h5md(text: str) -> bool:
    """Whether ``text`` follows the H5MD unit grammar (ASCII, each symbol once)."""
    if not text.isascii() or not H5MD_UNIT.match(text):
        return False
    symbols = [_H5MD_TOKEN.match(t).group(1) for t in text.split()  # type: ignore[union-attr]
               if not _is_number(t)]
    return len(symbols) == len(set(symbols))


def value_in(text: str, unit: str, dim: int = 3) -> float:
    """A number with or without a unit, in ``unit``: ``"1GPa"`` in ``"eV/Å^3"`` ->
    0.0062415; a bare number is taken to be in ``unit`` already.

    Raises:
      ValueError: not a number, an unknown unit, or a unit of another dimension.
    """
    text = text.strip()
    if _is_number(text):
        return float(text)
    reg = registry()
    try:
        q = reg.Quantity(_pint_text(text, dim))
    except Exception:
        raise ValueError(f"{text!r} is not a number with a unit") from None
    target = parse(unit, dim)
    try:
        return float(q.to(target).magnitude)
    except Exception:
        raise ValueError(f"{text!r} cannot be converted to {unit.replace('^d', f'^{dim}')} "
                         f"(units of {q.dimensionality}, expected "
                         f"{(1 * target).dimensionality})") from None
