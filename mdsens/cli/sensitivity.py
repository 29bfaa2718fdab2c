"""``mdsens sensitivity``: relax, differentiate observables, write an H5MD file."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from . import _common as c
from ._config import config_option, config_params, config_path
from ._progress import CHUNK, Progress
from .relax import config_params_json


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
@click.option("--solver", type=click.Choice(list(c.SOLVERS)), default="cg", show_default=True,
              help="Linear solver of the derivative solves: cg for a minimum; minres or "
                   "gmres where CG meets negative curvature; lu, cholesky, lstsq are dense "
                   "(small systems).")
@click.option("--preconditioner", type=click.Choice(["jacobi", "block_jacobi"]), default=None,
              help="Preconditioner of the iterative solvers (default: none).")
@c.output_options
@c.partial_option
@c.processes_option
def sensitivity_cmd(structure: Path, fmt, index, potential, params, potential_file, relax_cell,
                    pressure, fmax, stress_tol, max_steps, method, wrt, observables, mode,
                    solver, preconditioner, output: Path, overwrite: bool, quiet: bool,
                    verbose: bool, partial: bool, processes: int) -> None:
    """Relax STRUCTURE and write d(observable)/d(parameter) to OUTPUT (HDF5, H5MD 1.1).

    STRUCTURE may be periodic, free (a cluster: pbc F F F; derivatives in the frame of
    its centre of mass, without rigid rotation) or a slab (pbc T T F: padded with vacuum
    wider than the cutoff). Observables of the cell (volume, stress, ...), --wrt strain
    and --relax-cell need a structure periodic in every direction.
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
    c.set_verbosity(verbose)
    options = c.relax_options(fmax, max_steps, pressure, relax_cell, stress_tol)
    if method != c.DEFAULT_METHOD:
        options["method"] = method
    values = c.merge_params(c.parse_params(config_params(), f"{config_path()}: params"),
                            c.parse_params(params))
    c.check_output(output, overwrite, kind="hdf5")
    c.check_index(index)
    c.check_processes(processes)
    info = c.check_potential(potential, values, potential_file)
    c.check_observables(observables)
    c.check_wrt(wrt, info, values, relax_cell)
    with Progress(not quiet, verbose) as progress:
        progress.stage("reading", str(structure))
        atoms = c.load_structure(structure, fmt, index)
        c.check_structure(atoms, structure, info, values, observables, wrt, relax_cell)
        progress.stage("building the model", "starting JAX, compiling the energy")
        c.enable_x64()
        pot = c.make_potential(potential, values, potential_file)
        system = c.make_system(atoms, pot, structure, values, note=not quiet)
        _check_names(system, pot, wrt, observables, relax_cell)
        model = c.check_energy(system, pot, structure)
        c.check_splittable(processes, model)

        from ..io.hdf5 import write_result
        from ..md.minimize import relax
        from ..md.options import DERIVATIVE_DEFAULTS
        from ..md.sensitivity import sensitivity

        relax_options = DERIVATIVE_DEFAULTS.replace(relax_cell=relax_cell, **options)
        callback = progress.relax(relax_options.fmax)
        if callback is not None:
            relax_options = relax_options.replace(chunk=CHUNK)
        # the relaxation on --processes workers; the derivatives in this process
        relaxation = relax(system, model, relax_options.replace(processes=processes),
                           callback=callback, on_failure="ignore")
        progress.stage("derivatives", f"{', '.join(observables)} w.r.t. {', '.join(wrt)} "
                                      f"({solver})")
        result = _differentiate(sensitivity, system, model, wrt, observables, relax_cell,
                                relax_options, mode, relaxation, solver, preconditioner)
        config = {"command": "sensitivity", "structure": str(structure), "format": fmt,
                  "index": index,
                  "potential": potential, "params": config_params_json(values),
                  "potential_file": None if potential_file is None else str(potential_file),
                  "potential_file_sha256": c.file_digest(potential_file),
                  "relax_cell": relax_cell, "relax_options": options, "processes": processes,
                  "wrt": list(wrt),
                  "observables": list(observables), "mode": mode, "solver": solver,
                  "preconditioner": preconditioner, "boundary": c.boundary_record(atoms, pot),
                  "config_file": config_path()}
        written = result.converged or partial
        if written:
            progress.stage("writing", str(output))
            write_result(output, result, system, pot, config, c.command_line())
    if not quiet:
        relaxed = getattr(result, "relaxation", None)
        click.echo(c.relaxation_outcome(relaxed, relax_options)
                   if hasattr(relaxed, "status") else
                   result.diagnostics["relaxation"]["status"])
    c.finish(result.converged, c.sensitivity_problems(result, relax_options), output, quiet,
             written)


def _differentiate(sensitivity, system, model, wrt, observables, relax_cell, relax_options,
                   mode, relaxation, solver, preconditioner):
    """The library's sensitivity at the CLI's relaxation (its failures are in the result;
    a state without finite energies has nothing to differentiate: exit 1, no file)."""
    from ..md.results import SensitivityError

    try:
        return sensitivity(system, model, list(wrt), list(observables), relax_cell=relax_cell,
                           pressure=relax_options.pressure, mode=mode,
                           relax_options=relax_options, relaxation=relaxation, solver=solver,
                           preconditioner=preconditioner, on_failure="ignore")
    except SensitivityError as exc:
        click.echo(f"warning: {exc}", err=True)
        click.echo("not converged; nothing to write", err=True)
        sys.exit(c.ExitCode.NOT_CONVERGED)


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
