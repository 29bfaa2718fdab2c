"""``mdsens sensitivity``: relax, differentiate observables, write an H5MD file."""

from __future__ import annotations

from pathlib import Path

import click

from . import _common as c
from .relax import _config_params


@click.command("sensitivity")
@c.model_options
@click.option("--wrt", multiple=True, required=True, metavar="NAME",
              help="Parameter to differentiate with respect to; repeatable "
                   "(sigma, 'sigma[Ar,Kr]', strain, pressure).")
@click.option("--observable", "observables", multiple=True, required=True, metavar="NAME",
              help="Observable to differentiate; repeatable (energy, positions, volume, "
                   "stress, ...).")
@click.option("--mode", type=click.Choice(["auto", "forward", "reverse"]), default="auto",
              show_default=True, help="Forward (JVP) or reverse (VJP) differentiation.")
@c.output_options
def sensitivity_cmd(structure: Path, fmt, potential, params, potential_file, relax_cell,
                    fmax, max_steps, wrt, observables, mode, output: Path, overwrite: bool,
                    quiet: bool) -> None:
    """Relax STRUCTURE and write d(observable)/d(parameter) to OUTPUT (HDF5, H5MD 1.1).

    \b
    Example:
      mdsens sensitivity data/ar_fcc_32.extxyz -p lj --param sigma=3.4 \\
          --param epsilon=0.0104 --wrt sigma --wrt epsilon \\
          --observable positions --observable energy -o out.h5
    """
    options = c.relax_options(fmax, max_steps)
    values = c.parse_params(params)
    c.check_output(output, overwrite)
    _check_observables(observables)
    atoms = c.load_structure(structure, fmt)
    c.enable_x64()
    pot = c.make_potential(potential, values, potential_file)
    system = c.make_system(atoms, pot, structure)
    _check_names(system, pot, wrt, observables, relax_cell)
    c.check_energy(system, pot, structure)

    from ..io.hdf5 import write_result
    from ..md.sensitivity import sensitivity

    result = sensitivity(system, pot, list(wrt), list(observables), relax_cell=relax_cell,
                         mode=mode, relax_options=options or None, on_failure="ignore")
    config = {"command": "sensitivity", "structure": str(structure), "format": fmt,
              "potential": potential, "params": _config_params(values),
              "potential_file": None if potential_file is None else str(potential_file),
              "relax_cell": relax_cell, "relax_options": options, "wrt": list(wrt),
              "observables": list(observables), "mode": mode}
    write_result(output, result, system, pot, config, c.command_line())
    if not quiet:
        click.echo(result.diagnostics["relaxation"]["status"])
    c.finish(result.converged, result.problems, output, quiet)


def _check_observables(observables) -> None:
    from ..md import observables as obs_mod

    for name in observables:
        if name not in obs_mod.NAMES:
            raise c.BadInput(f"unknown observable {name!r}; known: {', '.join(obs_mod.NAMES)}")
        if name == "distances":
            raise c.BadInput("the 'distances' observable needs atom pairs; use the Python API")


def _check_names(system, pot, wrt, observables, relax_cell) -> None:
    """Validate wrt and observables as the library would, before any work."""
    from ..md import observables as obs_mod
    from ..md.sensitivity import _parse_wrt

    try:
        obs_mod.resolve(list(observables), system.is_periodic)
        _parse_wrt(list(wrt), pot, system.dim, system.is_periodic, relax_cell)
    except ValueError as exc:
        raise c.BadInput(str(exc)) from None
