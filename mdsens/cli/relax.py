"""``mdsens relax``: relax a structure; write H5MD (``.h5``) or any ASE format."""

from __future__ import annotations

from pathlib import Path

import click

from . import _common as c
from ._config import config_option, config_params, config_path
from ._progress import CHUNK, Progress


@click.command("relax")
@config_option
@c.model_options
@c.output_options
@c.partial_option
@c.processes_option
def relax_cmd(structure: Path, fmt, index, potential, params, potential_file, relax_cell,
              pressure, fmax, stress_tol, max_steps, method, output: Path, overwrite: bool,
              quiet: bool, verbose: bool, partial: bool, processes: int) -> None:
    """Relax STRUCTURE (positions, and the cell with --relax-cell).

    OUTPUT ending in .h5 gets the H5MD result file (structure, energy, diagnostics); any
    other name is written by ASE in the format its extension implies (e.g. relaxed.xyz:
    extxyz with energy, forces, stress with --relax-cell, and converged/steps/fmax).
    A multi-frame STRUCTURE is read at --index (default: the last frame).
    STRUCTURE may be periodic, free (a cluster: pbc F F F) or a slab (pbc T T F: padded
    with vacuum wider than the cutoff; an ASE OUTPUT keeps the input's pbc).
    Exit code 1 when the relaxation does not converge (OUTPUT still written, unless
    --no-partial).

    \b
    Examples:
      mdsens relax data/ar_fcc_32.extxyz -p lj --param sigma=3.4 \\
          --param epsilon=0.0104 --relax-cell -o relaxed.h5
      mdsens relax data/si_diamond.cif -p tersoff \\
          --potential-file data/potentials/Si.tersoff -o si.xyz
      mdsens relax --config run.toml --fmax 1e-4
      mdsens relax big_lj.xyz -p lj --param sigma=3.4 --processes 2 -o out.h5
    """
    c.set_verbosity(verbose)
    options = c.relax_options(fmax, max_steps, pressure, relax_cell, stress_tol)
    values = c.merge_params(c.parse_params(config_params(), f"{config_path()}: params"),
                            c.parse_params(params))
    c.check_output(output, overwrite, kind="structure")
    c.check_index(index)
    c.check_processes(processes)
    info = c.check_potential(potential, values, potential_file)
    with Progress(not quiet, verbose) as progress:
        progress.stage("reading", str(structure))
        atoms = c.load_structure(structure, fmt, index)
        c.check_structure(atoms, structure, info, values, relax_cell=relax_cell)
        c.check_structure_output(atoms, output)
        progress.stage("building the model", "starting JAX, compiling the energy")
        c.enable_x64()
        pot = c.make_potential(potential, values, potential_file)
        system = c.make_system(atoms, pot, structure, values, note=not quiet)
        model = c.check_energy(system, pot, structure)
        c.check_splittable(processes, model)

        from ..md.minimize import relax
        from ..md.options import RelaxOptions

        relax_options = RelaxOptions(method=method, relax_cell=relax_cell,
                                     processes=processes, **options)
        callback = progress.relax(relax_options.fmax)
        if callback is not None:
            relax_options = relax_options.replace(chunk=CHUNK)
        relaxation = relax(system, model, relax_options, callback=callback,
                           on_failure="ignore")
        converged = bool(relaxation.converged)
        config = {"command": "relax", "structure": str(structure), "format": fmt,
                  "index": index,
                  "potential": potential, "params": config_params_json(values),
                  "potential_file": None if potential_file is None else str(potential_file),
                  "potential_file_sha256": c.file_digest(potential_file),
                  "relax_cell": relax_cell, "method": method, "relax_options": options,
                  "processes": processes,
                  "boundary": c.boundary_record(atoms, pot), "config_file": config_path()}
        written = converged or partial
        if written:
            progress.stage("writing", str(output))
        if written and output.suffix.lower() in c.HDF5_SUFFIXES:
            from ..io.hdf5 import write_result

            write_result(output, relaxation, system, pot, config, c.command_line())
        elif written:
            from ..io.errors import InputError
            from ..io.structures import write

            relaxed = relaxation.to_ase()
            relaxed.pbc = atoms.pbc  # a slab or cluster stays one
            try:
                write(relaxed, output)
            except InputError as exc:
                raise c.BadInput(str(exc)) from None
    outcome = c.relaxation_outcome(relaxation, relax_options)
    if not quiet:
        click.echo(outcome)
    c.finish(converged, [outcome], output, quiet, written)


def config_params_json(values: dict) -> dict:
    """Per-pair tables with string keys (``"Ar-Kr"``) for JSON (and ``--config`` files)."""
    return {k: ({f"{a}-{b}": x for (a, b), x in v.items()} if isinstance(v, dict) else v)
            for k, v in values.items()}
