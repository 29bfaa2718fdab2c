"""``mdsens sensitivity``: relax, differentiate observables, write an H5MD file."""

from __future__ import annotations

from pathlib import Path

import click

from . import _common as c
from ._config import config_option, config_params, config_path
from ._progress import CHUNK, relax_progress
from .relax import config_params_json

DEFAULT_MAX_STEPS = 100000
"""``mdsens.md.sensitivity``'s default relaxation step cap (the progress bar's total)."""


@click.command("sensitivity")
@config_option
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
@c.partial_option
def sensitivity_cmd(structure: Path, fmt, index, potential, params, potential_file, relax_cell,
                    pressure, fmax, max_steps, method, wrt, observables, mode, output: Path,
                    overwrite: bool, quiet: bool, partial: bool) -> None:
    """Relax STRUCTURE and write d(observable)/d(parameter) to OUTPUT (HDF5, H5MD 1.1).

    Exit code 1 when the relaxation or a derivative solve fails (OUTPUT still written with
    converged = false, unless --no-partial).

    \b
    Examples:
      mdsens sensitivity data/ar_fcc_32.extxyz -p lj --param sigma=3.4 \\
          --param epsilon=0.0104 --wrt sigma --wrt epsilon \\
          --observable positions --observable energy -o out.h5
      mdsens sensitivity data/ar_fcc_32.extxyz -p lj --param sigma=3.4 \\
          --param epsilon=0.0104 --relax-cell --pressure 0.001 --wrt pressure \\
          --observable volume -o bulk.h5
      mdsens sensitivity --config run.toml --param sigma=3.5 -o other.h5
    """
    options = c.relax_options(fmax, max_steps, pressure, relax_cell)
    if method != c.DEFAULT_METHOD:
        options["method"] = method
    values = c.merge_params(c.parse_params(config_params(), f"{config_path()}: params"),
                            c.parse_params(params))
    c.check_output(output, overwrite, kind="hdf5")
    c.check_index(index)
    info = c.check_potential(potential, values, potential_file)
    c.check_observables(observables)
    c.check_wrt(wrt, info, values, relax_cell)
    atoms = c.load_structure(structure, fmt, index)
    c.check_structure(atoms, structure, info, values, observables, wrt)
    c.enable_x64()
    pot = c.make_potential(potential, values, potential_file)
    system = c.make_system(atoms, pot, structure)
    _check_names(system, pot, wrt, observables, relax_cell)
    model = c.check_energy(system, pot, structure)

    from ..io.hdf5 import write_result
    from ..md.options import DERIVATIVE_DEFAULTS
    from ..md.sensitivity import sensitivity

    steps = options.get("max_steps", DEFAULT_MAX_STEPS)
    with relax_progress(not quiet, steps) as callback:
        chunk = {} if callback is None else {"chunk": CHUNK}
        relax_options = DERIVATIVE_DEFAULTS.replace(relax_cell=relax_cell, **options, **chunk)
        result = sensitivity(system, model, list(wrt), list(observables), relax_cell=relax_cell,
                             pressure=relax_options.pressure, mode=mode,
                             relax_options=relax_options, callback=callback,
                             on_failure="ignore")
    config = {"command": "sensitivity", "structure": str(structure), "format": fmt,
              "index": index,
              "potential": potential, "params": config_params_json(values),
              "potential_file": None if potential_file is None else str(potential_file),
              "potential_file_sha256": c.file_digest(potential_file),
              "relax_cell": relax_cell, "relax_options": options, "wrt": list(wrt),
              "observables": list(observables), "mode": mode, "config_file": config_path()}
    written = result.converged or partial
    if written:
        write_result(output, result, system, pot, config, c.command_line())
    if not quiet:
        click.echo(result.diagnostics["relaxation"]["status"])
    c.finish(result.converged, result.problems, output, quiet, written)


def _check_names(system, pot, wrt, observables, relax_cell) -> None:
    """Validate wrt and observables as the library does, before any work (the checks of
    ``_common`` already ran without JAX; this keeps the library's own word final)."""
    from ..md import observables as obs_mod
    from ..md.root_problem import parse_wrt

    try:
        obs_mod.resolve(list(observables), system.is_periodic)
        parse_wrt(list(wrt), pot, system.dim, system.is_periodic, relax_cell)
    except ValueError as exc:
        raise c.BadInput(str(exc)) from None
