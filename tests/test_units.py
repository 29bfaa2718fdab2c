"""mdsens.units: parsing, composition with pint, the H5MD unit grammar; units declared by
the potentials; ``--pressure`` with a unit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mdsens import units
from mdsens.md import catalog

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("human, h5md", [
    ("Å", "Angstrom"), ("eV", "eV"), ("1/Å", "Angstrom-1"), ("eV Å", "eV Angstrom"),
    ("eV/Å^3", "eV Angstrom-3"), ("1", "1"), ("degrees", "deg"),
    ("eV Angstrom-3", "eV Angstrom-3"), ("Ang", "Angstrom"),
])
def test_to_h5md(human, h5md):
    assert units.to_h5md(human) == h5md
    assert units.is_h5md(h5md)


def test_dimension_placeholder():
    assert units.to_h5md("eV/Å^d", dim=2) == "eV Angstrom-2"
    assert units.to_h5md("eV/Å^d") == "eV Angstrom-3"


@pytest.mark.parametrize("num, den, expected", [
    ("eV", "Å", "eV Angstrom-1"), ("eV", "eV", "1"), ("Å", "1/Å", "Angstrom2"),
    ("eV/Å^3", "eV/Å^3", "1"), ("eV", "1", "eV"), ("Å^3", "eV/Å^3", "Angstrom6 eV-1"),
    ("eV", "eV Å", "Angstrom-1"),
])
def test_compose_simplifies(num, den, expected):
    out = units.compose(num, den)
    assert out == expected and units.is_h5md(out)
    assert units.parse(out) == units.parse(num) / units.parse(den)


def test_unknown_is_never_guessed():
    assert units.to_h5md("unknown") is None and units.to_h5md("") is None
    assert units.compose("eV", "unknown") is None
    assert units.compose("", "Å") is None


def test_components():
    assert units.h5md_components("Å, degrees", 6) == ["Angstrom"] * 3 + ["deg"] * 3
    assert units.h5md_components("Å, degrees", 3, dim=2) == ["Angstrom"] * 2 + ["deg"]
    assert units.compose_components("Å, degrees", "Å", 6) == ["1"] * 3 + [
        "deg Angstrom-1"] * 3


@pytest.mark.parametrize("text", ["Å", "eV/Å^d", "(eV)/(Å)", "Å, degrees", "eV eV",
                                  "eV Angstrom-0", "eV  Angstrom"])
def test_grammar_rejects(text):
    assert not units.is_h5md(text)


@pytest.mark.parametrize("text, value", [
    ("1GPa", 6.241509074460763e-3), ("0.5 eV/Ang^3", 0.5), ("0.5 eV/Å^3", 0.5),
    ("2", 2.0), ("10 kbar", 6.241509074460763e-3), ("-1e-3", -1e-3),
])
def test_value_in(text, value):
    assert units.value_in(text, "eV/Å^3") == pytest.approx(value, rel=1e-12)


@pytest.mark.parametrize("text", ["1 eV", "abc", "1 furlong"])
def test_value_in_rejects(text):
    with pytest.raises(ValueError):
        units.value_in(text, "eV/Å^3")


def test_catalog_units_parse():
    """Every unit ``mdsens potentials`` shows is one mdsens.units reads (σ: a setting in
    multiples of sigma, not a physical unit)."""
    for info in catalog.POTENTIALS:
        for p in info.parameters:
            if p.unit != "σ":
                assert units.is_h5md(units.to_h5md(p.unit)), (info.name, p.name)


def test_potentials_declare_units():
    from mdsens.md import potentials

    morse = potentials.get("morse")
    assert morse.parameter_unit("alpha") == "1/Å"
    assert morse.parameter_unit("alpha[Ar,Kr]") == "1/Å"
    assert potentials.get("soft_sphere").parameter_unit("alpha") == "1"
    assert potentials.get("sw").parameter_unit("lambda") == "1"
    assert potentials.get("tersoff").parameter_unit("lambda1") == "1/Å"


def test_custom_units_declared_or_unknown():
    from mdsens.md import potentials

    def fn(R, params):
        return params["k"] * (R**2).sum()

    pot = potentials.custom(fn, {"k": 1.0, "c": 0.0}, units={"k": "eV/Å^2"})
    assert pot.parameter_unit("k") == "eV/Å^2"
    assert pot.parameter_unit("c") == "unknown"
    with pytest.raises(ValueError, match="unknown parameters"):
        potentials.custom(fn, {"k": 1.0}, units={"q": "eV"})
    with pytest.raises(ValueError, match="not a unit"):
        potentials.custom(fn, {"k": 1.0}, units={"k": "eV//"})


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mdsens.cli", *args], capture_output=True,
                          text=True, cwd=ROOT)


@pytest.mark.parametrize("pressure, message", [
    ("1 furlong", "cannot be converted to eV/Å^3"), ("abc", "not a number with a unit")])
def test_pressure_bad_unit_is_one_error_line(pressure, message, tmp_path):
    proc = _cli("relax", "data/ar_fcc_32.extxyz", "-p", "lj", "--relax-cell",
                "--pressure", pressure, "-o", str(tmp_path / "r.h5"))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: --pressure:") and message in lines[0]


def test_pressure_option_converts():
    from mdsens.cli._common import _Pressure

    conv = _Pressure().convert
    assert conv("1GPa", None, None) == pytest.approx(6.241509074460763e-3)
    assert conv("0.01", None, None) == 0.01


def test_known_unit_tables_match_pint():
    """The tables that spare pint when a result file is written hold pint's answers."""
    for text, h5md in units._H5MD.items():
        assert h5md == units._format(units.parse(text)), text
        assert units.is_h5md(h5md)
    for (num, den), h5md in units._COMPOSED.items():
        assert h5md == units._format(units.parse(num) / units.parse(den)), (num, den)
    assert units.to_h5md(" eV/Å^d ", dim=2) == "eV Angstrom-2"
    assert units.compose("Å^d", "eV/Å^d", dim=2) == "Angstrom4 eV-1"


def test_writing_declared_units_does_not_load_pint():
    code = ("import sys; from mdsens import units; "
            "assert units.to_h5md('eV/Å^d') == 'eV Angstrom-3'; "
            "assert units.compose('Å^3', 'eV') == 'Angstrom3 eV-1'; "
            "assert 'pint' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
