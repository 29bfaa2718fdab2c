"""One relaxation on several worker processes (mdsens.md.processes, mdsens.md._exchange).

References: the same relaxation in this process (``relax``), forces and stress evaluated
here at the positions the workers return, the exchange's totals summed by hand. Failure
paths: a peer that never answers, replicas that drift apart, a worker killed mid-run --
each must end in an error, never a hang or a silent result.
"""

import os
import threading
import time
from multiprocessing import shared_memory
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from mdsens.md import System, lennard_jones, relax
from mdsens.md import potentials as P
from mdsens.md._exchange import RowChannel, segment_bytes
from mdsens.md.processes import ProcessPool, ProcessPoolError
from mdsens.md.sharding import usable_cores

TWO_CORES = pytest.mark.skipif(usable_cores() < 2, reason="needs two usable cores")


def fcc(k: int, a: float = 1.55, noise: float = 0.04, seed: int = 3) -> System:
    base = np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
    g = np.stack(np.meshgrid(*[np.arange(k)] * 3, indexing="ij"), -1).reshape(-1, 3)
    R = (g[:, None, :] + base[None]).reshape(-1, 3) * a
    R = R + noise * np.random.default_rng(seed).standard_normal(R.shape)
    return System.create(R, np.eye(3) * k * a)


LJ = lennard_jones(r_onset=2.0, r_cutoff=2.5)
EAM_FILE = Path(__file__).resolve().parents[1] / "data" / "potentials" / "Cu_u3.eam"


@pytest.fixture(scope="module")
def pool():
    with ProcessPool(2) as p:
        yield p


# ------------------------------------------------------------------ the exchange itself
def _channels(size=2, n_rows=8, dim=3, timeout=5.0):
    seg = shared_memory.SharedMemory(create=True, size=segment_bytes(size, n_rows, dim))
    np.ndarray((64,), np.int64, seg.buf)[:] = 0
    return seg, [RowChannel(seg.buf, size, n_rows, dim, timeout) for _ in range(size)]


def _run_ranks(channels, args):
    out = [None] * len(channels)

    def go(r):
        out[r] = channels[r].exchange(r, *args[r])

    threads = [threading.Thread(target=go, args=(r,)) for r in range(len(channels))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return out


def test_exchange_gathers_rows_and_sums_in_rank_order():
    seg, chans = _channels()
    try:
        rng = np.random.default_rng(0)
        grads = [rng.standard_normal((4, 3)) for _ in range(2)]
        energies = [np.asarray(1e16), np.asarray(1.0)]
        virials = [rng.standard_normal((3, 3)) for _ in range(2)]
        for step in range(3):  # both parities of the double buffer
            out = _run_ranks(chans, [(energies[r], grads[r] + step, virials[r],
                                      np.asarray(7.0)) for r in range(2)])
            for e, g, w in out:
                assert e == energies[0] + energies[1]  # rank order, the same everywhere
                np.testing.assert_array_equal(g, np.concatenate(grads) + step)
                np.testing.assert_array_equal(w, virials[0] + virials[1])
            assert all(c.failure is None for c in chans)
    finally:
        seg.close()
        seg.unlink()


def test_exchange_without_peer_times_out_to_nan():
    seg, chans = _channels(timeout=0.2)
    try:
        t0 = time.monotonic()
        e, g, w = chans[0].exchange(0, np.asarray(1.0), np.ones((4, 3)), np.zeros(1),
                                    np.asarray(0.0))
        assert time.monotonic() - t0 < 5
        assert np.isnan(e) and np.all(np.isnan(g)) and np.all(np.isnan(w))
        assert "did not answer" in chans[0].failure
        # the abort word is set: the peer fails at once instead of waiting
        e1, *_ = chans[1].exchange(1, np.asarray(1.0), np.ones((4, 3)), np.zeros(1),
                                   np.asarray(0.0))
        assert np.isnan(e1) and "failed" in chans[1].failure
    finally:
        seg.close()
        seg.unlink()


def test_exchange_detects_replicas_that_drifted_apart():
    seg, chans = _channels()
    try:
        out = _run_ranks(chans, [(np.asarray(1.0), np.ones((4, 3)), np.zeros(1),
                                  np.asarray(float(r))) for r in range(2)])
        assert all(np.isnan(o[0]) for o in out)
        assert all(c.failure for c in chans)
        assert any("differ" in c.failure for c in chans)  # the other sees the abort
    finally:
        seg.close()
        seg.unlink()


# ------------------------------------------------------------------ refusals (no workers)
def test_bad_pool_sizes_are_refused():
    with pytest.raises(ValueError, match="processes must be"):
        ProcessPool(0)
    with pytest.raises(ValueError, match="use processes <="):
        ProcessPool(usable_cores() + 1)


def test_relax_processes_refuses_nbrs_and_batches():
    system = fcc(8)
    with pytest.raises(ValueError, match="no nbrs"):
        relax(system, LJ, processes=2, nbrs=object())
    from mdsens.md import relax_batch

    with pytest.raises(ValueError, match="processes=1"):
        relax_batch(system, LJ, [LJ.params], processes=2)


# ------------------------------------------------------------------ relaxations
@TWO_CORES
def test_pool_refuses_what_it_cannot_split(pool):
    with pytest.raises(ValueError, match="only pair potentials"):
        cu = fcc(8, a=3.615)
        pool.relax(System.create(cu.positions, cu.cell, species=["Cu"] * cu.n_atoms),
                   P.get("eam", file=EAM_FILE), fmax=1e-3)
    with pytest.raises(ValueError, match="too few to split"):
        pool.relax(fcc(2), LJ, fmax=1e-3)


@TWO_CORES
@pytest.mark.parametrize("relax_cell", [False, True])
def test_pool_relaxation_matches_this_process(pool, relax_cell):
    system = fcc(8)  # 2048 atoms: split in row blocks between the two workers
    kw = dict(fmax=1e-8, max_steps=20000, relax_cell=relax_cell)
    seen = []
    ours = pool.relax(system, LJ, callback=lambda *a: seen.append(a), chunk=50, **kw)
    ref = relax(system, LJ, **kw)
    # progress after every chunk, as relax reports it: step, energy, fmax
    assert [a[0] for a in seen] == [min(50 * (i + 1), ours.steps) for i in range(len(seen))]
    assert seen[-1][0] == ours.steps and seen[-1][2] == pytest.approx(float(ours.fmax))
    assert ours.converged and ref.converged
    assert abs(ours.steps - ref.steps) <= 0.05 * ref.steps
    assert abs(float(ours.energy) - float(ref.energy)) <= 1e-12 * abs(float(ref.energy))
    np.testing.assert_allclose(np.asarray(ours.system.positions),
                               np.asarray(ref.system.positions), atol=1e-7)
    # the returned forces (and stress) are this process's at the returned point
    model = ours.model
    R, cell = ours.system.positions, ours.system.cell
    assert ours.nbrs is None  # the workers' lists stay there; none is allocated here
    nbrs = model.allocate(R, cell)
    np.testing.assert_allclose(np.asarray(ours.forces),
                               np.asarray(model.forces(R, cell, nbrs=nbrs)), atol=1e-11)
    assert float(ours.fmax) <= 1e-8
    if relax_cell:
        np.testing.assert_allclose(np.asarray(ours.system.cell),
                                   np.asarray(ref.system.cell), atol=1e-9)
        np.testing.assert_allclose(np.asarray(ours.stress),
                                   np.asarray(model.stress(R, cell, nbrs=nbrs)),
                                   atol=1e-12)


@TWO_CORES
def test_a_killed_worker_fails_the_call_and_closes_the_pool():
    system = fcc(8)
    pool = ProcessPool(2, timeout=60)
    try:
        pool.relax(system, LJ, fmax=1e-3)  # started and compiled
        errors = []

        def run():
            try:
                pool.relax(system, LJ, fmax=1e-14, max_steps=10**6, on_failure="ignore")
            except Exception as err:  # noqa: BLE001
                errors.append(err)

        thread = threading.Thread(target=run)
        thread.start()
        time.sleep(1.0)
        os.kill(pool._workers[1].process.pid, 9)  # noqa: SLF001
        thread.join(60)
        assert not thread.is_alive()
        assert errors and isinstance(errors[0], ProcessPoolError)
        with pytest.raises(ProcessPoolError, match="closed"):
            pool.relax(system, LJ, fmax=1e-3)
    finally:
        pool.close()


def test_forces_of_process_rows_model_equal_plain_model_with_one_process():
    """A one-process share (size 1) is the plain evaluation: no exchange is traced."""
    import dataclasses

    from mdsens.md import build
    from mdsens.md._exchange import ProcessRows

    system = fcc(8)
    model = build(system, LJ)
    split = dataclasses.replace(model, mesh=ProcessRows(0, 1, "unused"))
    R, cell = jnp.asarray(system.positions), jnp.asarray(system.cell)
    nbrs = model.allocate(R, cell)
    np.testing.assert_array_equal(np.asarray(split.forces(R, cell, nbrs=nbrs)),
                                  np.asarray(model.forces(R, cell, nbrs=nbrs)))


# ------------------------------------------------------------------ the command line
@TWO_CORES
def test_cli_relax_on_two_processes(tmp_path):
    import h5py
    from ase import Atoms
    from click.testing import CliRunner

    from mdsens.cli import main

    system = fcc(8, a=1.55 * 3.4)  # argon-like LJ, sigma 3.4 Å
    Atoms("Ar" * system.n_atoms, positions=np.asarray(system.positions),
          cell=np.asarray(system.cell), pbc=True).write(tmp_path / "ar.extxyz")
    common = ["relax", str(tmp_path / "ar.extxyz"), "-p", "lj", "--param", "sigma=3.4",
              "--param", "epsilon=0.0104", "--fmax", "1e-5", "-q"]
    result = CliRunner().invoke(main, [*common, "--processes", "2", "-o",
                                       str(tmp_path / "two.h5")])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, [*common, "-o", str(tmp_path / "one.h5")])
    assert result.exit_code == 0, result.output
    with h5py.File(tmp_path / "two.h5") as two, h5py.File(tmp_path / "one.h5") as one:
        for name in ("particles/all/position/value", "observables/energy/value"):
            np.testing.assert_allclose(two[name][()], one[name][()], rtol=1e-9, atol=1e-6)


@TWO_CORES
def test_cli_sensitivity_relaxes_on_two_processes(tmp_path):
    import h5py
    from ase import Atoms
    from click.testing import CliRunner

    from mdsens.cli import main

    system = fcc(8, a=1.55 * 3.4)
    Atoms("Ar" * system.n_atoms, positions=np.asarray(system.positions),
          cell=np.asarray(system.cell), pbc=True).write(tmp_path / "ar.extxyz")
    common = ["sensitivity", str(tmp_path / "ar.extxyz"), "-p", "lj", "--param", "sigma=3.4",
              "--param", "epsilon=0.0104", "--wrt", "sigma", "--observable", "energy",
              "--fmax", "1e-6", "-q"]
    for name, extra in (("two", ["--processes", "2"]), ("one", [])):
        result = CliRunner().invoke(main, [*common, *extra, "-o", str(tmp_path / f"{name}.h5")])
        assert result.exit_code == 0, result.output
    with h5py.File(tmp_path / "two.h5") as two, h5py.File(tmp_path / "one.h5") as one:
        found = []

        def compare(name, obj):
            if isinstance(obj, h5py.Dataset) and name.startswith("sensitivity/") \
                    and obj.dtype.kind == "f":
                found.append(name)
                np.testing.assert_allclose(obj[()], one[name][()], rtol=1e-7, atol=1e-9)

        two.visititems(compare)
        assert found  # dE/dsigma was written and agrees


@TWO_CORES
def test_cli_refuses_processes_for_what_cannot_be_split(tmp_path):
    from click.testing import CliRunner

    from mdsens.cli import main

    argon = str(Path(__file__).resolve().parents[1] / "data" / "ar_fcc_32.extxyz")
    result = CliRunner().invoke(main, ["relax", argon, "-p", "lj", "--param", "sigma=3.4",
                                       "--param", "epsilon=0.0104", "--processes", "2",
                                       "-o", str(tmp_path / "x.h5")])
    assert result.exit_code == 2
    assert "--processes 1" in result.stderr and not (tmp_path / "x.h5").exists()


def test_exchange_sums_whole_gradients_and_gathers_parts_in_one_sequence():
    size, n_rows, dim = 2, 8, 3
    seg = shared_memory.SharedMemory(create=True,
                                     size=segment_bytes(size, n_rows, dim, part_bytes=4096))
    np.ndarray((64,), np.int64, seg.buf)[:] = 0
    chans = [RowChannel(seg.buf, size, n_rows, dim, 5.0, part_bytes=4096)
             for _ in range(size)]
    try:
        rng = np.random.default_rng(1)
        grads = [rng.standard_normal((n_rows, dim)) for _ in range(size)]
        parts = [rng.integers(0, 2**32, (5, 7), dtype=np.uint32) for _ in range(size)]
        out = [None] * size

        def go(r):
            got = []
            for step in range(3):  # parts between gradient exchanges, both parities
                got.append(chans[r].gather(r, parts[r] + np.uint32(step)))
                got.append(chans[r].exchange(r, np.asarray(1.0), grads[r] * step,
                                             np.zeros(1), np.asarray(3.0), summed=True))
            out[r] = got

        threads = [threading.Thread(target=go, args=(r,)) for r in range(size)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        for r in range(size):
            for step in range(3):
                gathered, (e, g, _) = out[r][2 * step], out[r][2 * step + 1]
                np.testing.assert_array_equal(
                    gathered, np.concatenate(parts) + np.uint32(step))
                np.testing.assert_array_equal(g, grads[0] * step + grads[1] * step)
                assert e == 2.0
        assert all(c.failure is None for c in chans)
    finally:
        seg.close()
        seg.unlink()
