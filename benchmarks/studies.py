"""Parameter-study throughput: points per second of a sweep, serial vs batched vs Dask workers.

System: a disordered binary Lennard-Jones crystal of 500 atoms (fcc 5×5×5 cells, reduced
units, ρ = 1.0, species A/B assigned at random 50:50, σ_AA = 1, σ_BB = 1.1, ε = 1, 0.05σ
start noise, fixed cell, neighbour lists), the alloy of ``benchmarks/sensitivity.py``. The
sweep moves σ_AB over 1.00 … 1.10 in 64 points; every point is a FIRE relaxation to
fmax 1e-8 (warm-started from the previous point of its chunk) plus the derivatives of the
energy, the pressure and the stress with respect to σ and ε (both per-pair matrices) —
``mdsens.scan`` as a user calls it.

Backends (same sweep, same output layout, one HDF5 file each):

- ``serial``: the in-process loop;
- ``batch-K``: the in-process loop with ``scan(..., batch=K)``: K consecutive points relaxed
  at once (``vmap``), each batch warm-started from the last point of the previous one;
- ``dask-N``: ``scan(..., workers=N)``, a ``dask.distributed.LocalCluster`` of N worker
  processes with one thread each (cluster start-up included in the time).

Reported: wall time, points per second (whole run, and after the first point, which pays
compilation), and the largest relative difference of every value and derivative from the
serial run (warm starts differ at chunk and batch boundaries, so agreement is to the
relaxation tolerance, not bit for bit).

Usage: ``python benchmarks/studies.py [--points 64] [--batch 8 16] [--workers 2]``; a quick
check that the script runs: ``--points 4 --cells 3 --batch 2 --workers`` (108 atoms, no
Dask row).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sensitivity import lj_alloy  # noqa: E402

from mdsens.studies import scan  # noqa: E402

WRT = ["sigma", "epsilon"]
OBSERVABLES = ["energy", "pressure", "stress"]


def run(backend: str, system, pot, sweep, out: Path, workers: int | None, batch: int = 1):
    times = []

    def progress(n_done, n_points, p, converged):
        times.append(time.perf_counter())

    t0 = time.perf_counter()
    result = scan(system, pot, sweep, WRT, OBSERVABLES, out, overwrite=True,
                  workers=workers, batch=batch, progress=progress)
    wall = time.perf_counter() - t0
    n = len(times)
    after_first = (n - 1) / (times[-1] - times[0]) if n > 1 else float("nan")
    return result, {"backend": backend, "wall": wall, "points": n, "pps": n / wall,
                    "pps_after_first": after_first}


def max_rel_diff(a, b) -> float:
    worst = 0.0
    for k in a.values:
        x, y = np.asarray(a.values[k]), np.asarray(b.values[k])
        worst = max(worst, float(np.max(np.abs(x - y)) / max(np.max(np.abs(y)), 1e-300)))
    for k in a.derivatives:
        for p in a.derivatives[k]:
            x, y = np.asarray(a.derivatives[k][p]), np.asarray(b.derivatives[k][p])
            worst = max(worst, float(np.max(np.abs(x - y)) / max(np.max(np.abs(y)), 1e-300)))
    return worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--points", type=int, default=64)
    ap.add_argument("--batch", type=int, nargs="*", default=[8, 16],
                    help="batch sizes of the batched rows (none: no batched row)")
    ap.add_argument("--workers", type=int, nargs="*", default=[2],
                    help="worker counts of the Dask rows (none: no Dask row)")
    ap.add_argument("--cells", type=int, default=5,
                    help="fcc cells per side (5: N = 500; 3: N = 108 for a quick check)")
    args = ap.parse_args()
    print(f"python {platform.python_version()}, jax {jax.__version__}, cpus {os.cpu_count()}, "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    system, pot, _ = lj_alloy((args.cells,) * 3)
    sweep = {"sigma[A,B]": np.linspace(1.0, 1.1, args.points)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        serial, row = run("serial", system, pot, sweep, Path(tmp) / "serial.h5", None)
        row["diff"] = 0.0
        row["converged"] = int(np.sum(serial.converged))
        rows.append(row)
        print(row, flush=True)
        for k in args.batch:
            res, row = run(f"batch-{k}", system, pot, sweep, Path(tmp) / f"batch{k}.h5", None,
                           batch=k)
            row["diff"] = max_rel_diff(res, serial)
            row["converged"] = int(np.sum(res.converged))
            rows.append(row)
            print(row, flush=True)
        for w in args.workers:
            res, row = run(f"dask-{w}", system, pot, sweep, Path(tmp) / f"dask{w}.h5", w)
            row["diff"] = max_rel_diff(res, serial)
            row["converged"] = int(np.sum(res.converged))
            rows.append(row)
            print(row, flush=True)
    base = rows[0]["wall"]
    print(f"\n{args.points}-point sweep of σ_AB, N = {system.n_atoms}, fixed cell\n")
    print("| backend | wall s | points/s | points/s after the first | speed-up vs serial | "
          "converged | max rel. diff vs serial |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['backend']} | {r['wall']:.1f} | {r['pps']:.2f} | "
              f"{r['pps_after_first']:.2f} | {base / r['wall']:.2f} | "
              f"{r['converged']}/{r['points']} | {r['diff']:.1e} |")


if __name__ == "__main__":
    main()
