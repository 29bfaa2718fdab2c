"""Force-evaluation and FIRE-step timing of mdsens LJ fcc N=32000 (float64), in one of
several parallel set-ups.

  --mode single : one process, one JAX device (XLA threads as the caller's flags/taskset say)
  --mode inproc : one process, K in-process CPU devices (mesh over them, shard_map rows)
  --mode dist   : jax.distributed (gloo), one CPU device per process, mesh over all
                  processes' devices; run once per process with --pid i --nproc K

Timed (process 0 reports): a jitted force evaluation with a fixed neighbour list (output
replicated: includes the all-gather), and a jitted FIRE 2.0 loop of --steps steps
(lax.while_loop, fixed list). Writes RESULT json and an npz with forces and final
positions for cross-checks.
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ap = argparse.ArgumentParser()
ap.add_argument("--mode", default="single")
ap.add_argument("--pid", type=int, default=0)
ap.add_argument("--nproc", type=int, default=1)
ap.add_argument("--port", type=int, default=23456)
ap.add_argument("--steps", type=int, default=200)
ap.add_argument("--evals", type=int, default=20)
ap.add_argument("--reps", type=int, default=7)
ap.add_argument("--n", type=int, default=32000)
ap.add_argument("--out", default="")
ap.add_argument("--collective", action="store_true", help="time all-gather alone too")
args = ap.parse_args()

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
if args.mode == "dist":
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"localhost:{args.port}",
                               num_processes=args.nproc, process_id=args.pid)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
import relax as rb  # noqa: E402

from mdsens.md import build, lennard_jones  # noqa: E402
from mdsens.md._fire import fire2  # noqa: E402
from mdsens.md.potentials.pair import row_chunk  # noqa: E402

rng = np.random.default_rng(rb.SEED)
systems = {n: rb.fcc(n, rng) for n in (4000, 32000)}
system = systems[args.n]
pot = lennard_jones(r_onset=rb.R_ONSET, r_cutoff=rb.R_CUT)

if args.mode == "single":
    devices = None
elif args.mode == "inproc":
    devices = jax.local_devices()
else:
    devices = jax.devices()
model = build(system, pot, devices=devices)
mesh = model.mesh
R0 = np.asarray(system.positions, np.float64)
cell = np.asarray(system.cell, np.float64)
nbrs_local = model.allocate(jnp.asarray(R0), jnp.asarray(cell))
nbrs_np = jax.tree.map(np.asarray, nbrs_local)
params = jax.tree.map(np.asarray, model.params)

if mesh is not None:
    rep = NamedSharding(mesh, P())

    def glob(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, rep, lambda i: x[i])

    jit_kw = {"out_shardings": rep}
else:
    glob = jnp.asarray
    jit_kw = {}

R_g = glob(R0)
nbrs_g = jax.tree.map(glob, nbrs_np)


def force(R, nbrs):
    return -jax.grad(model.energy)(R, cell, params, nbrs)


force_j = jax.jit(force, **jit_kw)
mz = fire2(rb.DT, rb.DT_MAX, max_step=rb.MAX_STEP)


def relax_n(R, nbrs, nsteps):
    def ffn(q):
        e, g = jax.value_and_grad(model.energy)(q, cell, params, nbrs)
        return e, -g, None

    st = mz.init(R, ffn)
    st = lax.while_loop(lambda s: s[0] < nsteps, lambda s: (s[0] + 1, mz.step(s[1], ffn)[0]),
                        (jnp.zeros((), jnp.int32), st))[1]
    fmax = jnp.sqrt(jnp.max(jnp.sum(st.force ** 2, -1)))
    return st.position, st.energy, fmax


relax_j = jax.jit(relax_n, **jit_kw)
steps_g = glob(np.int32(args.steps))


def local(x):
    return np.asarray(x.addressable_data(0)) if mesh is not None else np.asarray(x)


def load():
    return round(os.getloadavg()[0], 2)


if os.environ.get("HLO_DUMP") and args.pid == 0:
    import re
    txt = relax_j.lower(R_g, nbrs_g, steps_g).compile().as_text()
    open(os.environ["HLO_DUMP"], "w").write(txt)
    ops = re.findall(r"= (\S+\[[^\]]*\][^ ]*) (all-gather|all-reduce|collective-permute|all-to-all|reduce-scatter)", txt)
    print("COLLECTIVES", ops)
t0 = time.perf_counter()
F = force_j(R_g, nbrs_g).block_until_ready()
t_cf = time.perf_counter() - t0
t0 = time.perf_counter()
out = relax_j(R_g, nbrs_g, steps_g)
jax.block_until_ready(out)
t_cr = time.perf_counter() - t0

loads = [load()]
t_eval, t_step = [], []
for _ in range(args.reps):  # interleaved, so both see the same machine load
    t0 = time.perf_counter()
    for _ in range(args.evals):
        F = force_j(R_g, nbrs_g)
    F.block_until_ready()
    t_eval.append((time.perf_counter() - t0) / args.evals)
    t0 = time.perf_counter()
    out = relax_j(R_g, nbrs_g, steps_g)
    jax.block_until_ready(out)
    t_step.append((time.perf_counter() - t0) / (args.steps + 1))
    loads.append(load())

res = {"mode": args.mode, "pid": args.pid, "nproc": args.nproc,
       "devices": [str(d) for d in jax.devices()], "mesh": None if mesh is None else mesh.size,
       "row_chunk": row_chunk(), "affinity": sorted(os.sched_getaffinity(0)),
       "xla_flags": os.environ.get("XLA_FLAGS", ""),
       "compile_force_s": t_cf, "compile_relax_s": t_cr,
       "eval_ms": 1e3 * statistics.median(t_eval), "eval_ms_all": [1e3 * t for t in t_eval],
       "step_ms": 1e3 * statistics.median(t_step), "eval_min": 1e3 * min(t_eval), "step_min": 1e3 * min(t_step), "step_ms_all": [1e3 * t for t in t_step],
       "energy": float(local(out[1])), "fmax": float(local(out[2])), "loads": loads}

if args.collective and mesh is not None:
    from jax import shard_map

    from mdsens.md.sharding import AXIS

    def ag_loop(x, n):
        def body(i, y):
            g = shard_map(lambda b: lax.all_gather(b, AXIS, tiled=True), mesh=mesh,
                          in_specs=P(AXIS), out_specs=P(), check_vma=False)(y)
            return y + 1e-300 * g.reshape(y.shape)
        return lax.fori_loop(0, n, body, x)

    Xs = jax.make_array_from_callback(
        R0.shape, NamedSharding(mesh, P(AXIS)), lambda i: R0[i])
    agj = jax.jit(ag_loop, static_argnums=1)
    agj(Xs, 200).block_until_ready()
    ts = []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        agj(Xs, 200).block_until_ready()
        ts.append((time.perf_counter() - t0) / 200)
    res["allgather_ms"] = 1e3 * statistics.median(ts)

    def ps_loop(x, n):
        def body(i, y):
            s = shard_map(lambda b: lax.psum(jnp.sum(b), AXIS), mesh=mesh,
                          in_specs=P(AXIS), out_specs=P(), check_vma=False)(y)
            return y + 1e-300 * s
        return lax.fori_loop(0, n, body, x)

    psj = jax.jit(ps_loop, static_argnums=1)
    psj(Xs, 200).block_until_ready()
    ts = []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        psj(Xs, 200).block_until_ready()
        ts.append((time.perf_counter() - t0) / 200)
    res["psum_ms"] = 1e3 * statistics.median(ts)

if args.out and args.pid == 0:
    np.savez(args.out, F=local(F), R=local(out[0]), E=local(out[1]))
print("RESULT " + json.dumps(res), flush=True)
