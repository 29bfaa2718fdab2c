"""``mdsens potentials``: the registered potentials, their parameters, defaults and units.

Printed from :mod:`mdsens.md.catalog` (plain data), so the command does not import JAX.
"""

from __future__ import annotations

from typing import Any

import click

from ..md import catalog


@click.command("potentials")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def potentials_cmd(as_json: bool) -> None:
    """List the registered potentials, their parameters, defaults and units.

    \b
    Examples:
      mdsens potentials
      mdsens potentials --json
    """
    if as_json:
        import json

        table = [_as_json(info) for info in catalog.POTENTIALS]
        click.echo(json.dumps(table, indent=1, ensure_ascii=False))
        return
    for info in catalog.POTENTIALS:
        for line in _lines(info):
            click.echo(line)
    click.echo("Units: eV and Å (ASE); σ: a multiple of sigma; none shown: dimensionless. "
               "Per species pair: --param 'sigma[Ar,Kr]=3.6'.")


def _as_json(info: catalog.PotentialInfo) -> dict[str, Any]:
    """One potential as JSON types: ``default`` a number or null (from the file), every
    other field always of one type."""
    return {
        "name": info.name,
        "aliases": list(info.aliases),
        "summary": info.summary,
        "python_only": info.python_only,
        "potential_file": info.potential_file,
        "potential_file_note": info.file_note,
        "parameters": [
            {"name": p.name, "default": p.default, "unit": p.unit,
             "differentiable": p.differentiable, "settable": p.settable,
             "per_pair": p.per_pair, "keywords": list(p.keywords),
             "choices": list(p.choices)}
            for p in info.parameters
        ],
    }


def _lines(info: catalog.PotentialInfo) -> list[str]:
    """The text listing of one potential: a headline, then how to give its file and one
    line per parameter."""
    alias = f" (alias: {', '.join(info.aliases)})" if info.aliases else ""
    lines = [f"{info.name}{alias}: {info.summary}"]
    if info.python_only:
        lines.append(f"    Python API only: mdsens.md.potentials.{info.name}(energy_fn, params)")
    if info.potential_file != "none":
        lines.append(f"    --potential-file ({info.potential_file}): {info.file_note}")
    lines += [f"    {_parameter_line(p)}" for p in info.parameters]
    return lines


def _parameter_line(p: catalog.Parameter) -> str:
    """``name = default unit`` and what kind of parameter it is."""
    value = "(from the file)" if p.default is None else f"{p.default!r}"
    unit = f" {p.unit}" if p.unit not in ("", "1") and p.default is not None else ""
    notes = []
    if p.per_pair:
        notes.append("per species pair")
    if not p.differentiable:
        notes.append("setting, not differentiable")
    if p.choices:
        notes.append("one of " + ", ".join(f"{c:g}" for c in p.choices))
    if not p.settable:
        shown = {"": "", "1": "dimensionless"}.get(p.unit, p.unit)
        notes.append(f"table{', ' + shown if shown else ''}; --wrt only")
    if p.keywords:
        notes.append("also " + ", ".join(p.keywords))
    return f"{p.name} = {value}{unit}" + (f"  ({'; '.join(notes)})" if notes else "")
