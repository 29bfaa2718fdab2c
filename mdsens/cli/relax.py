"""``mdsens relax``: relax a structure; write H5MD (``.h5``) or any ASE format."""

from __future__ import annotations

from pathlib import Path

import click

from . import _common as c

_H5 = (".h5", ".hdf5", ".h5md")


@click.command("relax")
@c.model_options
@click.option("--method", type=click.Choice(["fire", "gd"]), default="fire", show_default=True,
              help="Minimiser.")
@c.output_options
def relax_cmd(structure: Path, fmt, potential, params, potential_file, relax_cell, fmax,
              max_steps, method, output: Path, overwrite: bool, quiet: bool) -> None:
    """Relax STRUCTURE (positions, and the cell with --relax-cell).

    OUTPUT ending in .h5 gets the H5MD result file (structure, energy, diagnostics); any
    other name is written by ASE in the format its extension implies (e.g. relaxed.xyz).

    \b
    Example:
      mdsens relax data/ar_fcc_32.extxyz -p lj --param sigma=3.4 \\
          --param epsilon=0.0104 --relax-cell -o relaxed.h5
    """
    options = c.relax_options(fmax, max_steps)
    values = c.parse_params(params)
    c.check_output(output, overwrite)
    atoms = c.load_structure(structure, fmt)
    c.enable_x64()
    pot = c.make_potential(potential, values, potential_file)
    system = c.make_system(atoms, pot, structure)
    c.check_energy(system, pot, structure)

    from ..md.minimize import relax

    relaxation = relax(system, pot, method=method, relax_cell=relax_cell,
                       on_failure="ignore", **options)
    config = {"command": "relax", "structure": str(structure), "format": fmt,
              "potential": potential, "params": _config_params(values),
              "potential_file": None if potential_file is None else str(potential_file),
              "relax_cell": relax_cell, "method": method, "relax_options": options}
    if output.suffix.lower() in _H5:
        from ..io.hdf5 import write_result

        write_result(output, relaxation, system, pot, config, c.command_line())
    else:
        from ..io.errors import InputError
        from ..io.structures import write

        try:
            write(relaxation.system.to_ase(), output)
        except InputError as exc:
            raise c.BadInput(str(exc)) from None
    if not quiet:
        click.echo(relaxation.message)
    c.finish(bool(relaxation.converged), [relaxation.message], output, quiet)


def _config_params(values: dict) -> dict:
    """Per-pair tables with string keys (``"Ar-Kr"``) for JSON."""
    return {k: ({f"{a}-{b}": x for (a, b), x in v.items()} if isinstance(v, dict) else v)
            for k, v in values.items()}
