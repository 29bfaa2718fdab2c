"""Steady-state cost of a relaxation step on one and on two worker processes
(``mdsens.md.processes.ProcessPool``), without the per-call costs.

LJ fcc (``benchmarks/relax.py``'s start: a = 1.55σ, N = 32000 by default, displaced by
0.05σ), FIRE. ``ProcessPool(1)`` and ``ProcessPool(2)`` are started side by side (idle
workers use no CPU) and each relaxes the same start for M = 100 and M = 300 steps
(``fmax=1e-14``, so every call runs exactly M steps), calls interleaved, ``--repeats``
times. Per step = (median T(300) − median T(100)) / 200 with T the workers' own clock of
their ``relax`` (``ProcessPool.last_seconds``): the start allocation, the early
neighbour-list rebuilds (steps 2, 5, 10, 26 of this start) and the result's transfer
cancel. Also printed: the time rank 0 spent in the exchange and waiting for its peer.

Run from the repository root on an otherwise idle machine with two cores::

    PYTHONPATH=. .venv/bin/python benchmarks/pool_steady.py [--n 32000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import relax as rb  # noqa: E402

from mdsens.md import lennard_jones  # noqa: E402
from mdsens.md.processes import ProcessPool  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=32000, help="atoms (4000 or 32000)")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    rng = np.random.default_rng(rb.SEED)
    systems = {n: rb.fcc(n, rng) for n in (4000, 32000)}  # relax.py's order of draws
    system = systems[args.n]
    pot = lennard_jones(r_onset=rb.R_ONSET, r_cutoff=rb.R_CUT)
    pools = {1: ProcessPool(1), 2: ProcessPool(2)}
    try:
        def run(k: int, steps: int) -> dict:
            pools[k].relax(system, pot, fmax=1e-14, max_steps=steps, on_failure="ignore")
            return pools[k].last_seconds[0]

        for k in pools:  # compile, then the list search's first compile
            run(k, 100)
            run(k, 100)
        times: dict = {}
        for _ in range(args.repeats):
            for k in pools:
                for steps in (100, 300):
                    times.setdefault((k, steps), []).append(run(k, steps))
        print(f"# LJ fcc N = {args.n}, FIRE; load {os.getloadavg()[0]:.2f}")
        print("| workers | ms per step | exchange ms per step | waiting ms per step |")
        print("|---:|---:|---:|---:|")
        per = {}
        for k in pools:
            def med(key: str, steps: int, k: int = k) -> float:
                return statistics.median(t[key] for t in times[(k, steps)])

            per[k] = 1e3 * (med("relax", 300) - med("relax", 100)) / 200
            exchange = 1e3 * med("exchange", 300) / 300
            wait = 1e3 * med("wait", 300) / 300
            print(f"| {k} | {per[k]:.2f} | {exchange:.2f} | {wait:.2f} |")
        print(f"efficiency T1 / (2 T2) = {100 * per[1] / (2 * per[2]):.0f} %")
    finally:
        for pool in pools.values():
            pool.close()


if __name__ == "__main__":
    main()
