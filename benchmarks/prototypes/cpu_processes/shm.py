"""D2: two processes WITHOUT jax.distributed; each pinned to one core with one XLA thread,
each computes the forces of its half of the neighbour-list rows, and the halves are
exchanged through POSIX shared memory from inside the compiled loop (jax.experimental.
io_callback: write my half, publish a step counter, spin until the peer's counter
arrives, read the whole array). FIRE 2.0 (mdsens's fire2) then runs replicated in both
processes on identical data, so both follow the identical trajectory.

  python shm.py            # parent: creates the segment, starts 2 pinned workers
  (worker: python shm.py --rank r --shm NAME)
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ap = argparse.ArgumentParser()
ap.add_argument("--rank", type=int, default=-1)
ap.add_argument("--shm", default="")
ap.add_argument("--steps", type=int, default=200)
ap.add_argument("--evals", type=int, default=20)
ap.add_argument("--reps", type=int, default=7)
ap.add_argument("--out", default="D2.npz")
ap.add_argument("--barrier", action="store_true", help="optimization_barrier around the force")
ap.add_argument("--solo", action="store_true", help="one process, all rows, no exchange")
args = ap.parse_args()
N, D = 32000, 3
NBYTES = 4096 + 2 * (N * D + 64) * 8
SINGLE = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"

if args.rank < 0 and not args.solo:  # ---------------------------------------------------------- parent
    from multiprocessing import shared_memory

    seg = shared_memory.SharedMemory(create=True, size=NBYTES)
    seg.buf[:4096] = bytes(4096)
    try:
        env = {**os.environ, "XLA_FLAGS": SINGLE}
        procs = [subprocess.Popen(["taskset", "-c", str(r), sys.executable, __file__,
                                   "--rank", str(r), "--shm", seg.name, "--steps",
                                   str(args.steps), "--evals", str(args.evals), "--reps",
                                   str(args.reps), "--out", args.out] + (["--barrier"] if args.barrier else []), env=env)
                 for r in range(2)]
        rcs = [p.wait() for p in procs]
        print("rc", rcs)
    finally:
        seg.close()
        seg.unlink()
    sys.exit(0)

# ------------------------------------------------------------------------------- worker
from multiprocessing import resource_tracker, shared_memory  # noqa: E402

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402
from jax.experimental import io_callback  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
import relax as rb  # noqa: E402

from mdsens.md import build, lennard_jones  # noqa: E402
from mdsens.md._fire import fire2  # noqa: E402
from mdsens.md.geometry import Geometry  # noqa: E402
from mdsens.md.potentials import pair  # noqa: E402
from mdsens.md.potentials._fusion import materialize  # noqa: E402
from mdsens.md.potentials.base import pair_param  # noqa: E402

if not args.solo:
    seg = shared_memory.SharedMemory(name=args.shm)
    resource_tracker.unregister(seg._name, "shared_memory")  # the parent owns it
    ctr = np.ndarray((2, 64), np.int64, seg.buf, 0)  # ctr[r, 0]: rank r's last published step
    bufs = np.ndarray((2, N * D + 64), np.float64, seg.buf, 4096)  # [parity]: forces, energies
rank, peer = max(args.rank, 0), 1 - max(args.rank, 0)

rng = np.random.default_rng(rb.SEED)
systems = {n: rb.fcc(n, rng) for n in (4000, 32000)}
system = systems[N]
pot = lennard_jones(r_onset=rb.R_ONSET, r_cutoff=rb.R_CUT)
model = build(system, pot, devices=None)
R0 = np.asarray(system.positions)
cell = np.asarray(system.cell)
nb = jax.tree.map(jnp.asarray, jax.tree.map(np.asarray,
                                            model.allocate(jnp.asarray(R0), jnp.asarray(cell))))
params = jax.tree.map(np.asarray, model.params)
CHUNK = 128
h = N if args.solo else N // 2
lo, hi = rank * h, (rank + 1) * h
sym = pot.r2_coefficients(**pair.symmetrized(params))
species = jnp.zeros(N, jnp.int32)


def own_rows(R, nbrs):
    """(energy of rows lo:hi, dE/dR of rows lo:hi): the block body of mdsens's pair module
    (r2 form, image slots), over this rank's row blocks only."""
    geom = Geometry(R, cell, species, nbrs.nlist.idx, getattr(model, "pad_distance", None) or model._pad_distance,
                    (nbrs.images, nbrs.nlist.reference_position))
    nbf = geom.image_neighborhood_fn()

    def block(rows_b):
        nb_ = nbf(rows_b)
        p = {k: pair_param(v, nb_.species, nb_.neighbor_species) for k, v in sym.items()}
        r2 = sum(nb_.dR[..., k] ** 2 for k in range(D))
        e, dphi = jax.jvp(lambda x: pot.pair_energy_r2(x, **p), (r2,), (jnp.ones_like(r2),))
        coef = materialize(2.0 * dphi, nb_.idx[0, 0])
        g = -jnp.stack([jnp.sum(coef * nb_.dR[..., k], axis=1) for k in range(D)], -1)
        return 0.5 * jnp.sum(e, axis=1), g

    e, g = lax.map(block, jnp.arange(lo, hi).reshape(-1, CHUNK))
    return jnp.sum(e), g.reshape(hi - lo, D)


state = {"k": 0, "spins": 0}


def _exchange(g_half, e_half):
    k = state["k"] = state["k"] + 1
    buf = bufs[k % 2]
    buf[lo * D:hi * D] = np.asarray(g_half).reshape(-1)
    buf[N * D + rank] = e_half
    ctr[rank, 0] = k  # publish (x86: stores are seen in order)
    spins, t_start = 0, None
    while ctr[peer, 0] < k:  # spin, then yield the core (a loaded machine), then give up
        spins += 1
        if spins > 2000:
            os.sched_yield()
            if spins % 10000 == 0:
                t_start = t_start or time.monotonic()
                if time.monotonic() - t_start > 60:
                    raise RuntimeError(f"rank {rank}: peer silent for 60 s at exchange {k}")
    state["spins"] += spins
    full = buf[:N * D].reshape(N, D).copy()
    return full, buf[N * D] + buf[N * D + 1]  # same order in both ranks


def exchange(g_half, e_half):
    if args.solo:
        return g_half, e_half
    return io_callback(_exchange, (jax.ShapeDtypeStruct((N, D), jnp.float64),
                                   jax.ShapeDtypeStruct((), jnp.float64)), g_half, e_half,
                       ordered=False)


def energy_grad(R, nbrs):
    if args.barrier:
        R = lax.optimization_barrier(R)
    e, g = own_rows(R, nbrs)
    if args.barrier:
        e, g = lax.optimization_barrier((e, g))
    g, e = exchange(g, e)
    return e, g


force_j = jax.jit(lambda R, nbrs: -energy_grad(R, nbrs)[1])
mz = fire2(rb.DT, rb.DT_MAX, max_step=rb.MAX_STEP)


def relax_n(R, nbrs, nsteps):
    def ffn(q):
        e, g = energy_grad(q, nbrs)
        return e, -g, None

    st = mz.init(R, ffn)
    st = lax.while_loop(lambda s: s[0] < nsteps, lambda s: (s[0] + 1, mz.step(s[1], ffn)[0]),
                        (jnp.zeros((), jnp.int32), st))[1]
    return st.position, st.energy, jnp.sqrt(jnp.max(jnp.sum(st.force ** 2, -1)))


relax_j = jax.jit(relax_n)
Rj = jnp.asarray(R0)
steps = jnp.asarray(args.steps, jnp.int32)


def load():
    return round(os.getloadavg()[0], 2)


# the exchange-only cost: a loop of exchanges of a half array, nothing else
def xloop(x, n):
    return lax.fori_loop(0, n, lambda i, y: y + 1e-300 * exchange(y, jnp.sum(y))[0][lo:hi],
                         x)


xj = jax.jit(xloop, static_argnums=1)
xh = jnp.asarray(R0[lo:hi])
xj(xh, 10).block_until_ready()

F = force_j(Rj, nb).block_until_ready()
out = relax_j(Rj, nb, steps)
jax.block_until_ready(out)
t_eval, t_step, t_x, loads = [], [], [], [load()]
for _ in range(args.reps):
    t0 = time.perf_counter()
    for _ in range(args.evals):
        F = force_j(Rj, nb)
    F.block_until_ready()
    t_eval.append((time.perf_counter() - t0) / args.evals)
    t0 = time.perf_counter()
    out = relax_j(Rj, nb, steps)
    jax.block_until_ready(out)
    t_step.append((time.perf_counter() - t0) / (args.steps + 1))
    t0 = time.perf_counter()
    xj(xh, 200).block_until_ready()
    t_x.append((time.perf_counter() - t0) / 200)
    loads.append(load())
res = {"mode": ("solo" if args.solo else "shm") + ("+barrier" if args.barrier else ""), "rank": rank, "eval_ms": 1e3 * statistics.median(t_eval),
       "eval_min": 1e3 * min(t_eval), "step_ms": 1e3 * statistics.median(t_step),
       "step_min": 1e3 * min(t_step), "exchange_ms": 1e3 * statistics.median(t_x),
       "eval_ms_all": [1e3 * t for t in t_eval], "step_ms_all": [1e3 * t for t in t_step],
       "energy": float(out[1]), "fmax": float(out[2]), "loads": loads,
       "spins": state["spins"], "exchanges": state["k"],
       "affinity": sorted(os.sched_getaffinity(0))}
if rank == 0:
    np.savez(args.out, F=np.asarray(F), R=np.asarray(out[0]), E=np.asarray(out[1]))
print("RESULT " + json.dumps(res), flush=True)
if not args.solo:
    del ctr, bufs
    seg.close()
