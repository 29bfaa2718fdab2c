"""Batched relaxations (relax_batch) and batched parameter studies (scan(batch=K))."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mdsens.io.structures import read as read_structure
from mdsens.md import System, build
from mdsens.md.minimize import Status, relax, relax_batch
from mdsens.md.potentials import get
from mdsens.studies import scan

ROOT = Path(__file__).resolve().parents[1]
STRUCTURE = str(ROOT / "data" / "ar_fcc_32.extxyz")
SIGMAS = [3.35, 3.40, 3.45]


def _pot():
    return get("lj", sigma=3.4, epsilon=0.0104)


@pytest.mark.parametrize("relax_cell", [
    # 17–22 s measured on a loaded 2-core machine (not measured quiet): it compiles the
    # serial and the batched fixed-cell loops; the only exact check of relax_batch
    False,
    # ≈ 20 s: compiles the variable-cell loop twice (serial and batched); the batched
    # variable-cell loop also runs in test_studies.py::test_batched_scan_resumes_...
    pytest.param(True, marks=pytest.mark.slow),
])
def test_relax_batch_equals_serial_relax(relax_cell, rng):
    """Each member of a batch takes the steps of a serial relax from the same start and
    start list: the same state to rounding, the same step count and status — also through
    a neighbour-list overflow at the start and a member with non-finite parameters."""
    system = System.from_ase(read_structure(STRUCTURE))
    model = build(system, get("lj", sigma=3.45, epsilon=0.0104), neighbor_list=True)
    starts = [system.replace(positions=np.asarray(system.positions)
                             + 0.3 * rng.standard_normal((32, 3))) for _ in range(3)]
    # strongly typed float64 values: a weakly typed (Python float) sigma puts jax-md's LJ
    # switch in float32, and a stack of mixed weak and strong values is strong
    params = [dict(model.params, sigma=np.float64(s)) for s in (3.35, 3.4, 3.45)]
    params.append(dict(model.params, epsilon=np.float64(np.nan)))
    starts.append(starts[0])
    # a list built for a dilated structure is too small for these: overflow at the start
    dilated = 1.15 * np.asarray(system.positions), 1.15 * np.asarray(system.cell)
    small = model.allocate(*dilated)
    opts = dict(fmax=1e-8, max_steps=3000, relax_cell=relax_cell, on_failure="ignore",
                nbrs=small)
    batch = relax_batch(starts, model, params, **opts)
    serial = [relax(s, model, params=p, **opts) for s, p in zip(starts, params)]
    assert [r.status for r in batch] == [Status.CONVERGED] * 3 + [Status.NONFINITE]
    for b, s in zip(batch, serial):
        assert (b.status, b.steps, b.converged) == (s.status, s.steps, s.converged)
        np.testing.assert_allclose(b.system.positions, s.system.positions, rtol=0, atol=1e-10)
        np.testing.assert_allclose(b.system.cell, s.system.cell, rtol=0, atol=1e-10)
        np.testing.assert_allclose(b.energy, s.energy, rtol=1e-12)
        np.testing.assert_allclose(b.fmax, s.fmax, rtol=1e-3, atol=1e-12)
    assert len({r.steps for r in batch[:3]}) > 1  # the members stopped at their own steps
    assert batch[0].nbrs.nlist.idx.shape[-1] > small.nlist.idx.shape[-1]  # reallocated


def test_members_whose_lists_cannot_share_a_layout_relax_alone(rng):
    """Start cells so different that their neighbour lists have different cell-list grids
    cannot be stacked: every member falls back to a serial relax and ends exactly as one
    (state, steps, status)."""
    system = System.from_ase(read_structure(STRUCTURE))
    model = build(system, _pot(), neighbor_list=True)
    R = np.asarray(system.positions) + 0.2 * rng.standard_normal((32, 3))
    starts = [system.replace(positions=R),
              system.replace(positions=0.85 * R, cell=0.85 * np.asarray(system.cell))]
    cells = {np.asarray(model.allocate(s.positions, s.cell).nlist.cell_size).tobytes()
             for s in starts}
    assert len(cells) == 2  # the fallback is the path under test
    opts = dict(fmax=1e-6, max_steps=3000, on_failure="ignore")
    batch = relax_batch(starts, model, [dict(model.params)] * 2, **opts)
    serial = [relax(s, model, **opts) for s in starts]
    for b, s in zip(batch, serial, strict=True):
        assert (b.status, b.steps) == (s.status, s.steps)
        np.testing.assert_allclose(b.system.positions, s.system.positions, rtol=0, atol=1e-12)
        np.testing.assert_allclose(b.energy, s.energy, rtol=1e-14)
    assert [r.status for r in batch] == [Status.CONVERGED] * 2
    assert min(r.steps for r in batch) > 10


def test_relax_batch_rejects_mixed_members():
    system = System.from_ase(read_structure(STRUCTURE))
    pot = _pot()
    with pytest.raises(ValueError, match="structure or shapes"):
        relax_batch(system, pot, [dict(pot.params), {"sigma": 3.4}])
    with pytest.raises(ValueError, match="2 systems for 1"):
        relax_batch([system, system], pot, [dict(pot.params)])
    with pytest.raises(ValueError, match="no parameter sets"):
        relax_batch(system, pot, [])


@pytest.mark.parametrize("batch", [0, -2])
def test_bad_batch_rejected(batch, tmp_path):
    from click.testing import CliRunner

    from mdsens.cli import main

    out = tmp_path / "study.h5"
    with pytest.raises(ValueError, match="batch"):
        scan(STRUCTURE, _pot(), {"sigma": SIGMAS}, ["sigma"], ["energy"], out, batch=batch)
    assert not out.exists()
    res = CliRunner().invoke(main, ["scan", STRUCTURE, "-p", "lj", "--param", "epsilon=0.0104",
                                    "--sweep", "sigma=3.3:3.5:3", "--wrt", "sigma",
                                    "--observable", "energy", "-o", str(out),
                                    "--batch", str(batch)])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:") and "batch" in lines[0]
    assert not out.exists()
