"""``--index``: frames of multi-frame structure files for relax, sensitivity and scan.

A bad index is refused before JAX is imported (exit 2, one ``Error:`` line); without
``--index`` the last frame is used with a note on stderr; ``relax -o X.xyz`` writes the
energy, forces and status with the structure."""

from __future__ import annotations

from pathlib import Path

import ase.io
import numpy as np
import pytest
from click.testing import CliRunner
from test_cli_fast import ARGON, LJ, SENS, SWEEP, _cli

from mdsens.cli import main
from mdsens.io.errors import InputError
from mdsens.io.structures import parse_index, read, read_frames

LJ_FULL = [*LJ, "--param", "epsilon=0.0104"]


@pytest.fixture
def movie(tmp_path: Path) -> Path:
    """Three frames of the 32-atom argon crystal, scaled by 1.00, 1.01, 1.02."""
    base = ase.io.read(ARGON)
    frames = []
    for k in range(3):
        a = base.copy()
        a.set_cell(a.cell.array * (1 + 0.01 * k), scale_atoms=True)
        frames.append(a)
    path = tmp_path / "movie.extxyz"
    ase.io.write(path, frames, format="extxyz")
    return path


def test_parse_index() -> None:
    assert parse_index("0") == 0 and parse_index("-1") == -1
    assert parse_index("2:5") == slice(2, 5) and parse_index(":") == slice(None)
    assert parse_index("::2") == slice(None, None, 2)
    for bad in ("a", "1,2", "1:2:0", ""):
        with pytest.raises(InputError, match="index"):
            parse_index(bad)


def test_reader_selects_frames(movie: Path) -> None:
    first = read(movie, index="0")
    last = read(movie)
    assert last.get_volume() > first.get_volume()
    frames = read_frames(movie, index="1:")
    assert frames.indices == [1, 2] and frames.n_frames == 3
    with pytest.raises(InputError, match="out of range: the file has 3 frames"):
        read(movie, index="3")
    with pytest.raises(InputError, match="exactly one"):
        read(movie, index="0:2")
    with pytest.raises(InputError, match="selects no frame"):
        read_frames(movie, index="5:")


@pytest.mark.parametrize("command, message", [
    (["relax", "{movie}", *LJ, "--index", "x", "-o", "r.xyz"], "--index: bad index 'x'"),
    (["relax", "{movie}", *LJ, "--index", "7", "-o", "r.xyz"], "out of range"),
    (["relax", "{movie}", *LJ, "--index", "0:2", "-o", "r.xyz"], "takes exactly one"),
    (["sensitivity", "{movie}", *LJ, *SENS, "--index", "1:1", "-o", "s.h5"],
     "selects no frame"),
    (["scan", "{movie}", "-p", "lj", *SWEEP, *SENS, "--index", "::0", "-o", "t.h5"],
     "step must not be 0"),
])
def test_bad_index_refused_without_jax(movie: Path, command: list[str], message: str) -> None:
    args = [a.format(movie=movie) for a in command]
    code, _, err, jax_imported = _cli(args, movie.parent)
    assert code == 2 and not jax_imported
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and message in lines[0], err
    assert not any(p.suffix in (".xyz", ".h5") for p in movie.parent.iterdir())


def test_relax_index_and_structure_output(movie: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "relaxed.xyz"
    result = runner.invoke(main, ["relax", str(movie), *LJ_FULL, "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    assert "has 3 frames; using the last (-1); choose with --index" in result.stderr
    relaxed = ase.io.read(out)
    assert relaxed.info["converged"] is True and relaxed.info["status"] == "CONVERGED"
    assert np.abs(relaxed.get_forces()).max() < 1e-6
    assert relaxed.get_potential_energy() < 0
    # --index 0: the first frame's (smaller) cell, and no note
    first = tmp_path / "first.xyz"
    result = runner.invoke(main, ["relax", str(movie), *LJ_FULL, "--index", "0", "-o",
                                  str(first), "-q"])
    assert result.exit_code == 0, result.output
    assert "note:" not in result.stderr
    assert ase.io.read(first).get_volume() == pytest.approx(read(movie, index=0).get_volume())
