"""``--config run.toml``: a command's options from a TOML file; the command line wins.

The file holds the option names as keys (``-`` or ``_``; ``format``, ``param``/``params``,
``observable``/``observables`` also accepted) with TOML values of the option's type::

    structure = "data/ar_fcc_32.extxyz"     # paths are relative to the TOML file
    potential = "lj"
    relax_cell = true
    pressure = 0.0
    fmax = 1e-8
    wrt = ["sigma", "epsilon"]
    observables = ["energy", "volume"]
    output = "out.h5"

    [params]
    epsilon = 0.0104
    sigma = { "Ar-Ar" = 3.4, "Ar-Kr" = 3.6, "Kr-Kr" = 3.8 }   # per species pair
    # or: "sigma[Ar,Kr]" = 3.6

Every key except ``params`` becomes the option's default (click's ``default_map``), so an
option given on the command line replaces the file's value (a repeatable option such as
``--wrt`` replaces the whole list). ``params`` merge by name instead: ``--param sigma=3.5``
replaces the file's ``sigma`` and keeps its ``epsilon``; ``--param 'sigma[Ar,Kr]=3.5'``
replaces one entry of a per-pair table. A malformed file, an unknown key or a value of the
wrong type is bad input (exit 2, one line).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from ._common import BadInput

__all__ = ["config_option", "config_params", "config_path"]

_META = "mdsens.config"
_ALIASES = {"format": "fmt", "param": "params", "observable": "observables"}
_NOT_IN_FILE = {"config", "help"}


def _type_name(param: click.Parameter) -> str:
    t = param.type
    if isinstance(param, click.Option) and param.is_flag:
        kind = "true or false"
    elif isinstance(t, click.Choice):
        kind = "one of " + ", ".join(repr(c) for c in t.choices)
    elif t is click.INT:
        kind = "an integer"
    elif t is click.FLOAT:
        kind = "a number"
    else:
        kind = "a string"
    return "a string or a list of strings" if param.multiple else kind


def _check_scalar(param: click.Parameter, value: Any) -> bool:
    """Is the TOML value of the option's basic type (no string-to-number coercion)."""
    if isinstance(param, click.Option) and param.is_flag:
        return isinstance(value, bool)
    if param.type is click.INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if param.type is click.FLOAT:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, str)


def _param_items(path: Path, table: Any) -> list[str]:
    """The ``[params]`` table as ``--param`` strings (``NAME=VALUE`` / ``NAME[A,B]=VALUE``)."""
    if not isinstance(table, dict):
        raise BadInput(f"{path}: 'params' must be a table of NAME = number")
    items = []
    for name, value in table.items():
        if isinstance(value, dict):
            for pair, x in value.items():
                species = [s for s in pair.replace(",", "-").replace(" ", "").split("-") if s]
                if len(species) != 2:
                    raise BadInput(f"{path}: params.{name}: pair key {pair!r} is not 'A-B'")
                if not _is_number(x):
                    raise BadInput(f"{path}: params.{name}.{pair}: {x!r} is not a number")
                items.append(f"{name}[{species[0]},{species[1]}]={x!r}")
        elif _is_number(value):
            items.append(f"{name}={value!r}")
        else:
            raise BadInput(f"{path}: params.{name}: {value!r} is not a number or a table of "
                           "species pairs")
    return items


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _load(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """Eager callback of ``--config``: read the file into ``ctx.default_map`` and ``ctx.meta``."""
    if value is None or ctx.resilient_parsing:
        return value
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    try:
        with open(value, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise BadInput(f"{value}: no such config file") from None
    except IsADirectoryError:
        raise BadInput(f"{value}: config is a directory, not a TOML file") from None
    except OSError as exc:
        raise BadInput(f"{value}: cannot read config: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise BadInput(f"{value}: invalid TOML: {exc}") from None

    params = {p.name: p for p in ctx.command.params if p.name not in _NOT_IN_FILE}
    base = value.parent
    defaults: dict[str, Any] = {}
    meta: dict[str, Any] = {"path": str(value), "params": []}
    for key, item in data.items():
        name = _ALIASES.get(key.replace("-", "_"), key.replace("-", "_"))
        if name not in params:
            raise BadInput(f"{value}: unknown key {key!r} for `mdsens {ctx.command.name}`; "
                           f"known: {', '.join(sorted(_file_keys(params)))}")
        if name == "params":
            meta["params"] = _param_items(value, item)
            continue
        p = params[name]
        if p.multiple and isinstance(item, str):
            item = [item]
        ok = (all(_check_scalar(p, x) for x in item) if isinstance(item, list) else False) \
            if p.multiple else _check_scalar(p, item)
        if not ok:
            raise BadInput(f"{value}: {key} = {item!r}: expected {_type_name(p)}")
        if isinstance(p.type, click.Path):
            item = [_relative(base, x) for x in item] if p.multiple else _relative(base, item)
        try:
            p.type_cast_value(ctx, item)
        except click.BadParameter as exc:
            raise BadInput(f"{value}: {key} = {item!r}: {exc.message}") from None
        defaults[name] = item
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    ctx.meta[_META] = meta
    return value


def _file_keys(params: dict[str, click.Parameter]) -> list[str]:
    back = {v: k for k, v in _ALIASES.items() if k != "param" and k != "observable"}
    return [back.get(n, n) for n in params]


def _relative(base: Path, item: str) -> str:
    """A path from the config file, relative to the file's directory."""
    if os.path.isabs(item) or base == Path("."):
        return item
    return os.path.normpath(base / item)


config_option = click.option(
    "--config", type=click.Path(path_type=Path, dir_okay=True), default=None, is_eager=True,
    expose_value=False, callback=_load, metavar="RUN.toml",
    help="Read options from a TOML file (same keys as the options; relative paths are "
         "relative to the file). Options on the command line override it.")


def config_params() -> list[str]:
    """The ``[params]`` of the ``--config`` file as ``--param`` strings (empty without one)."""
    ctx = click.get_current_context()
    return list(ctx.meta.get(_META, {}).get("params", []))


def config_path() -> str | None:
    """The ``--config`` file of this command, or None."""
    return click.get_current_context().meta.get(_META, {}).get("path")
