"""``mdsens inspect``: a readable summary of a result file, or ``--json``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from . import _common as c


def summary(stored: Any) -> dict[str, Any]:
    """A JSON-ready summary of a :class:`~mdsens.io.hdf5.StoredResult`."""
    import numpy as np

    s = stored.sensitivity
    scalars = {
        obs: {p: float(np.asarray(v)) for p, v in per.items() if np.ndim(v) == 0}
        for obs, per in s.derivatives.items()
    }
    relax = s.diagnostics.get("relaxation", {})
    return {
        "kind": stored.kind,
        "structure": {"n_atoms": len(stored.symbols), "species": sorted(set(stored.symbols)),
                      "pbc": list(stored.pbc), "cell": np.asarray(stored.cell).tolist()},
        "potential": {"name": stored.potential["name"],
                      "params": {k: np.asarray(v).tolist()
                                 for k, v in stored.potential["params"].items()}},
        "converged": s.converged,
        "problems": list(s.problems),
        "relaxation": {k: relax.get(k) for k in ("steps", "fmax", "energy", "status")},
        "observables": {k: {"shape": list(np.shape(v)), "unit": s.units.get(k, ""),
                            **({"value": float(np.asarray(v))} if np.ndim(v) == 0 else {})}
                        for k, v in s.values.items()},
        "wrt": list(s.wrt),
        "scalar_derivatives": {k: v for k, v in scalars.items() if v},
        "derivative_shapes": {o: {p: list(np.shape(v)) for p, v in per.items()}
                              for o, per in s.derivatives.items()},
        "diagnostics": {k: s.diagnostics.get(k) for k in
                        ("mode", "n_solves", "min_curvature_estimate", "root_residual")
                        if k in s.diagnostics},
        "provenance": stored.provenance,
    }


@click.command("inspect")
@click.argument("result", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def inspect_cmd(result: Path, as_json: bool) -> None:
    """Summarise RESULT (an mdsens HDF5 file): structure, potential, convergence,
    scalar derivatives and diagnostics.

    \b
    Example:
      mdsens inspect out.h5 --json
    """
    import json

    from ..io.errors import InputError
    from ..io.hdf5 import read_result

    try:
        stored = read_result(result)
    except InputError as exc:
        raise c.BadInput(str(exc)) from None
    info = summary(stored)
    if as_json:
        click.echo(json.dumps(info, indent=1, default=str))
        return
    st, pot, rel = info["structure"], info["potential"], info["relaxation"]
    click.echo(f"{result}: mdsens {info['kind']} result")
    click.echo(f"structure: {st['n_atoms']} atoms {', '.join(st['species'])}, pbc={st['pbc']}")
    click.echo(f"potential: {pot['name']} {pot['params']}")
    click.echo(f"converged: {info['converged']}")
    for p in info["problems"]:
        click.echo(f"  problem: {p}")
    click.echo(f"relaxation: {rel['steps']} steps, fmax={rel['fmax']:.3g} eV/Å, "
               f"energy={rel['energy']:.6g} eV")
    click.echo("observables:")
    for k, v in info["observables"].items():
        value = f" = {v['value']:.8g}" if "value" in v else ""
        click.echo(f"  {k:<20} shape {tuple(v['shape'])}{value} {v['unit']}")
    if info["scalar_derivatives"]:
        wrt = info["wrt"]
        click.echo("scalar derivatives d(observable)/d(parameter):")
        click.echo("  " + f"{'':<20}" + "".join(f"{p:>16}" for p in wrt))
        for obs, per in info["scalar_derivatives"].items():
            cells = "".join(f"{per[p]:>16.6g}" if p in per else f"{'-':>16}" for p in wrt)
            click.echo(f"  {obs:<20}{cells}")
    for k, v in info["diagnostics"].items():
        click.echo(f"{k}: {v}")
    prov = info["provenance"]
    click.echo(f"written {prov.get('timestamp')} by mdsens {prov.get('mdsens')} "
               f"(jax {prov.get('jax')}, jax-md {prov.get('jax_md')})")
