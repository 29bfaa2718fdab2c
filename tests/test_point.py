"""mdsens.md.point: one study point is one call into md (relax + derivatives), with the
model, the neighbour list and the warm start kept by the runner."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mdsens.io.structures import read
from mdsens.md import sensitivity
from mdsens.md.compiled import compilations
from mdsens.md.diagnostics import Diagnostics, RelaxationSummary
from mdsens.md.options import DERIVATIVE_DEFAULTS
from mdsens.md.point import PointOptions, PointRunner, largest_cutoff
from mdsens.md.potentials import get

STRUCTURE = Path(__file__).resolve().parents[1] / "data" / "ar_fcc_32.extxyz"
OPTIONS = PointOptions(wrt=("sigma", "epsilon"), observables=("energy", "volume"),
                       relax_cell=True, relax=DERIVATIVE_DEFAULTS.replace(relax_cell=True))


def _pot(sigma):
    return get("lj", sigma=sigma, epsilon=0.0104)


@pytest.fixture(scope="module")
def runner():
    system = read(STRUCTURE)
    return PointRunner.covering(system, [_pot(3.35), _pot(3.45), _pot(3.40)])


def test_largest_cutoff_builds_the_model():
    pots = [_pot(3.35), _pot(3.45), _pot(3.40)]
    assert largest_cutoff(pots) == 1
    system = read(STRUCTURE)
    assert PointRunner.covering(system, pots).model.cutoff == pytest.approx(2.5 * 3.45)


def test_point_equals_sensitivity_and_warm_start_reuses_code(runner):
    first = runner.compute(_pot(3.40), OPTIONS)
    assert not first.warm_started and first.converged, first.problems
    assert isinstance(first.diagnostics, Diagnostics)
    assert isinstance(first.relaxation, RelaxationSummary) and first.relaxation.converged
    # the same answer as a direct call (its own relaxation from the input structure)
    ref = sensitivity(read(STRUCTURE), _pot(3.40), ["sigma", "epsilon"], ["energy", "volume"],
                      relax_cell=True)
    for obs in ("energy", "volume"):
        np.testing.assert_allclose(first.values[obs], ref.values[obs], rtol=1e-9)
        for p in ("sigma", "epsilon"):
            np.testing.assert_allclose(first.derivatives[obs][p], ref.derivatives[obs][p],
                                       rtol=1e-6)
    # LJ scaling at zero pressure: V ∝ σ³
    np.testing.assert_allclose(first.derivatives["volume"]["sigma"],
                               3 * first.values["volume"] / 3.40, rtol=1e-6)

    # the next point from the relaxed structure: warm, fewer steps, nothing compiled
    with compilations() as count:
        second = runner.compute(_pot(3.45), OPTIONS, start=(first.positions, first.edges))
    assert second.warm_started and second.converged
    assert count.value == 0
    np.testing.assert_allclose(second.values["volume"],
                               first.values["volume"] * (3.45 / 3.40) ** 3, rtol=1e-7)


def test_non_finite_start_falls_back_to_the_input(runner):
    n = runner.system.n_atoms
    result = runner.compute(_pot(3.35), OPTIONS,
                            start=(np.full((n, 3), np.nan), np.eye(3)))
    assert not result.warm_started and result.converged


def test_batch_equals_points(runner):
    pots = [_pot(3.35), _pot(3.40)]
    batch = runner.compute_batch(pots, OPTIONS, batch=3)
    assert len(batch) == 2
    for pot, b in zip(pots, batch):
        one = runner.compute(pot, OPTIONS)
        assert b.converged and not b.warm_started
        np.testing.assert_allclose(b.values["volume"], one.values["volume"], rtol=1e-8)
        np.testing.assert_allclose(b.derivatives["volume"]["sigma"],
                                   one.derivatives["volume"]["sigma"], rtol=1e-6)
    with pytest.raises(ValueError, match="batch of 1"):
        runner.compute_batch(pots, OPTIONS, batch=1)


def test_failed_point_is_a_result_not_an_exception(runner):
    options = PointOptions(wrt=OPTIONS.wrt, observables=OPTIONS.observables,
                           relax_cell=True, relax=OPTIONS.relax.replace(max_steps=2))
    result = runner.compute(_pot(3.40), options)
    assert not result.converged and result.problems
    assert result.relaxation.steps <= 2 and not result.relaxation.converged
