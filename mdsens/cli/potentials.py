"""``mdsens potentials``: the registered potentials, their parameters and defaults."""

from __future__ import annotations

import click


@click.command("potentials")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def potentials_cmd(as_json: bool) -> None:
    """List the registered potentials, their parameters, defaults and units.

    \b
    Example:
      mdsens potentials
    """
    import inspect
    import json

    from ..md.potentials import base

    canonical = base.names()
    aliases: dict[str, list[str]] = {n: [] for n in canonical}
    factories = base.factories()
    for alias in base.names(aliases=True)[len(canonical):]:
        target = next(n for n in canonical if factories[n] is factories[alias])
        aliases[target].append(alias)
    table = []
    for name in canonical:
        f = factories[name]
        sig = inspect.signature(f)
        params = {k: (None if v.default is inspect.Parameter.empty else repr(v.default))
                  for k, v in sig.parameters.items() if v.kind is not v.VAR_KEYWORD}
        doc = (inspect.getdoc(f) or "").splitlines()
        table.append({"name": name, "aliases": aliases[name], "parameters": params,
                      "summary": doc[0] if doc else ""})
    if as_json:
        click.echo(json.dumps(table, indent=1))
        return
    for row in table:
        alias = f" (alias: {', '.join(row['aliases'])})" if row["aliases"] else ""
        click.echo(f"{row['name']}{alias}: {row['summary']}")
        for k, v in row["parameters"].items():
            click.echo(f"    {k} = {v if v is not None else '(required)'}")
    click.echo("Units: eV and Å (ASE); see each potential's docstring.")
