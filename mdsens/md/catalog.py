"""What the registered potentials and the built-in observables are called and take, as
plain data: importing this module imports neither JAX nor NumPy.

The command line checks names (potential, ``--param``, ``--potential-file``,
``--observable``, ``--wrt``, ``--sweep``) and prints ``mdsens potentials`` from this
catalog, so that bad input is refused before JAX is imported (about a second). It mirrors
the live registry of :mod:`mdsens.md.potentials` and :data:`mdsens.md.observables.NAMES`;
``tests/test_cli_fast.py`` checks that the two agree (names, aliases, parameter names,
defaults, units, which parameters take per-pair tables, which need a periodic system). A potential
added to the registry must be added here too, or that test fails.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

__all__ = [
    "OBSERVABLES",
    "OBSERVABLE_NAMES",
    "POTENTIALS",
    "ObservableInfo",
    "Parameter",
    "PotentialInfo",
    "names",
    "observable",
    "potential",
]

FileUse = Literal["required", "optional", "none"]


@dataclasses.dataclass(frozen=True)
class Parameter:
    """One parameter of a potential.

    Attributes:
      name: the parameter's name: a key of ``Potential.params`` when ``differentiable``
        (the name ``--wrt`` and ``--sweep`` take), else a static setting.
      default: the factory's value when none is given; None when the value comes from the
        potential file.
      unit: ``"Å"``, ``"eV"``, ``"1/Å"``, ``"eV Å"``, ``"σ"`` (a multiple of sigma) or
        ``"1"`` (dimensionless), as :mod:`mdsens.units` reads them; for a differentiable
        parameter the unit the potential class declares (``Potential.param_units``).
      differentiable: a key of ``Potential.params`` (False: a static setting).
      settable: a factory keyword (``--param NAME=VALUE``); False for tables read from a
        file.
      per_pair: the factory also takes a per-species-pair table
        (``--param 'NAME[A,B]=VALUE'``).
      keywords: other factory keywords for the same parameter (``lambda_`` for ``lambda``).
      choices: the only values allowed (empty: any number).
    """

    name: str
    default: float | None
    unit: str
    differentiable: bool = True
    settable: bool = True
    per_pair: bool = False
    keywords: tuple[str, ...] = ()
    choices: tuple[float, ...] = ()


@dataclasses.dataclass(frozen=True)
class PotentialInfo:
    """One registered potential: its names, parameters and how it uses a potential file.

    Attributes:
      name: the registry's canonical name.
      aliases: other registered names.
      summary: one line of plain text (no markup).
      parameters: in the order ``mdsens potentials`` prints them.
      potential_file: whether the factory needs (``"required"``), takes (``"optional"``)
        or refuses (``"none"``) a parameter file.
      file_note: what the file is and what it sets (empty without a file).
      python_only: built only from Python (it needs a function, not numbers).
    """

    name: str
    aliases: tuple[str, ...]
    summary: str
    parameters: tuple[Parameter, ...]
    potential_file: FileUse = "none"
    file_note: str = ""
    python_only: bool = False

    def parameter(self, keyword: str) -> Parameter | None:
        """The parameter a factory keyword (name or other keyword) sets, or None."""
        for p in self.parameters:
            if keyword == p.name or keyword in p.keywords:
                return p
        return None

    @property
    def differentiable(self) -> tuple[str, ...]:
        """Names of the differentiable parameters (the keys of ``Potential.params``)."""
        return tuple(p.name for p in self.parameters if p.differentiable)

    @property
    def settable(self) -> tuple[str, ...]:
        """Names of the parameters ``--param`` sets (without their other keywords)."""
        return tuple(p.name for p in self.parameters if p.settable)


def _pair_parameters(**defaults: tuple[float, str]) -> tuple[Parameter, ...]:
    """Differentiable parameters of a pair potential (each may be a per-pair table)."""
    return tuple(Parameter(name, value, unit, per_pair=True)
                 for name, (value, unit) in defaults.items())


_SWITCH = (Parameter("r_onset", 2.0, "σ", differentiable=False),
           Parameter("r_cutoff", 2.5, "σ", differentiable=False))

_SW_SILICON = (
    Parameter("epsilon", 2.1683, "eV"),
    Parameter("sigma", 2.0951, "Å"),
    Parameter("A", 7.049556277, "1"),
    Parameter("B", 0.6022245584, "1"),
    Parameter("p", 4.0, "1"),
    Parameter("q", 0.0, "1"),
    Parameter("a", 1.80, "1"),
    Parameter("lambda", 21.0, "1", keywords=("lambda_",)),
    Parameter("gamma", 1.20, "1"),
    Parameter("cos_theta0", -1.0 / 3.0, "1"),
)

_TERSOFF_SILICON_B = (
    Parameter("A", 3264.7, "eV"),
    Parameter("B", 95.373, "eV"),
    Parameter("lambda1", 3.2394, "1/Å"),
    Parameter("lambda2", 1.3258, "1/Å"),
    Parameter("lambda3", 1.3258, "1/Å"),
    Parameter("R", 3.0, "Å"),
    Parameter("D", 0.2, "Å"),
    Parameter("beta", 0.33675, "1"),
    Parameter("n", 22.956, "1"),
    Parameter("gamma", 1.0, "1"),
    Parameter("c", 4.8381, "1"),
    Parameter("d", 2.0417, "1"),
    Parameter("h", 0.0, "1"),
    Parameter("m", 3.0, "1", differentiable=False, choices=(1.0, 3.0)),
)

_EAM_TABLES = (
    Parameter("F", None, "eV", settable=False),
    Parameter("rho", None, "1", settable=False),
    Parameter("z2r", None, "eV Å", settable=False),
)

POTENTIALS: tuple[PotentialInfo, ...] = (
    PotentialInfo(
        "custom", (),
        "Any JAX energy function energy_fn(R, params, **kw); parameters are the user's.",
        (), python_only=True),
    PotentialInfo(
        "eam", (),
        "Embedded-atom method, tables interpolated as LAMMPS pair_style eam does.",
        _EAM_TABLES, potential_file="required",
        file_note="LAMMPS setfl (.eam.alloy) or funcfl (.eam) file; its tables F, rho, z2r "
                  "are the parameters"),
    PotentialInfo(
        "lennard_jones", ("lj",),
        "Lennard-Jones 4ε[(σ/r)^12 − (σ/r)^6], switched off smoothly (C¹) between "
        "r_onset·σ and r_cutoff·σ.",
        (*_pair_parameters(sigma=(1.0, "Å"), epsilon=(1.0, "eV")), *_SWITCH)),
    PotentialInfo(
        "morse", (),
        "Morse ε[(1 − exp(−α(r − σ)))² − 1] with the Lennard-Jones switch.",
        (*_pair_parameters(sigma=(1.0, "Å"), epsilon=(5.0, "eV"), alpha=(5.0, "1/Å")),
         *_SWITCH)),
    PotentialInfo(
        "soft_sphere", (),
        "Soft-sphere overlap (ε/α)(1 − r/σ)^α for r < σ, zero beyond.",
        _pair_parameters(sigma=(1.0, "Å"), epsilon=(1.0, "eV"), alpha=(2.0, "1"))),
    PotentialInfo(
        "stillinger_weber", ("sw",),
        "Stillinger-Weber three-body potential (LAMMPS pair_style sw); defaults: silicon.",
        _SW_SILICON, potential_file="optional",
        file_note="LAMMPS .sw file; its values replace the defaults (--param overrides them)"),
    PotentialInfo(
        "tersoff", (),
        "Tersoff bond-order potential (LAMMPS pair_style tersoff); defaults: Si(B).",
        _TERSOFF_SILICON_B, potential_file="optional",
        file_note="LAMMPS .tersoff file; its values replace the defaults (--param overrides "
                  "them)"),
)
"""Every registered potential, sorted by canonical name (as ``potentials.names()``)."""


def names(aliases: bool = False) -> tuple[str, ...]:
    """Canonical names, sorted; with ``aliases=True`` followed by the sorted aliases (the
    order of :func:`mdsens.md.potentials.names`)."""
    out = sorted(p.name for p in POTENTIALS)
    if aliases:
        out += sorted(a for p in POTENTIALS for a in p.aliases)
    return tuple(out)


def potential(name: str) -> PotentialInfo | None:
    """The potential registered as ``name`` (canonical or alias), or None."""
    for info in POTENTIALS:
        if name == info.name or name in info.aliases:
            return info
    return None


@dataclasses.dataclass(frozen=True)
class ObservableInfo:
    """One built-in observable name.

    Attributes:
      name: as ``sensitivity(..., observables=[name])`` takes it.
      periodic_only: needs a periodic system (a cell).
      needs: what it needs besides a name, which only the Python API can give (empty:
        nothing; ``distances`` needs atom pairs).
    """

    name: str
    periodic_only: bool = False
    needs: str = ""


OBSERVABLES: tuple[ObservableInfo, ...] = (
    ObservableInfo("energy"),
    ObservableInfo("energy_per_atom"),
    ObservableInfo("positions"),
    ObservableInfo("displacements"),
    ObservableInfo("cell", periodic_only=True),
    ObservableInfo("volume", periodic_only=True),
    ObservableInfo("lattice_parameters", periodic_only=True),
    ObservableInfo("stress", periodic_only=True),
    ObservableInfo("pressure", periodic_only=True),
    ObservableInfo("distances", needs="atom pairs"),
    ObservableInfo("elastic_constants", periodic_only=True),
)
"""The built-in observables, in the order of :data:`mdsens.md.observables.NAMES`."""

OBSERVABLE_NAMES: tuple[str, ...] = tuple(o.name for o in OBSERVABLES)


def observable(name: str) -> ObservableInfo | None:
    """The built-in observable ``name``, or None."""
    for info in OBSERVABLES:
        if info.name == name:
            return info
    return None
