"""C: two Python threads in one process, each calling a jitted force program on its own
CPU device (XLA_FLAGS=--xla_force_host_platform_device_count=2, single-threaded ops set by the
caller). Each thread evaluates the forces of HALF the rows (row blocks of mdsens's
scatter-free rule, via the library's blocked evaluation on a sub-range of rows).
Reports: one half alone, both halves from two threads at once, both halves sequentially
from one thread, and the full evaluation on one device."""

import statistics
import sys
import threading
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
import relax as rb  # noqa: E402

from mdsens.md import build, lennard_jones  # noqa: E402
from mdsens.md.geometry import Geometry  # noqa: E402
from mdsens.md.potentials import pair  # noqa: E402
from mdsens.md.potentials._fusion import materialize  # noqa: E402

rng = np.random.default_rng(rb.SEED)
systems = {n: rb.fcc(n, rng) for n in (4000, 32000)}
system = systems[32000]
pot = lennard_jones(r_onset=rb.R_ONSET, r_cutoff=rb.R_CUT)
model = build(system, pot, devices=None)
R0 = np.asarray(system.positions)
cell = np.asarray(system.cell)
nb = jax.tree.map(np.asarray, model.allocate(jnp.asarray(R0), jnp.asarray(cell)))
params = jax.tree.map(np.asarray, model.params)
n = R0.shape[0]
devs = jax.devices()
print("devices", devs, "row_chunk", pair.row_chunk())


def full(R, nbrs):
    return -jax.grad(model.energy)(R, cell, params, nbrs)


def half_fn(lo, hi):
    """Gradient of rows lo:hi: the block body of mdsens.md.potentials.pair (r2 form,
    image slots), looped over row blocks lo..hi only."""
    from mdsens.md.potentials.base import pair_param
    chunk = 128  # one core per device
    sym = pot.r2_coefficients(**pair.symmetrized(params))
    species = jnp.zeros(n, jnp.int32)

    def f(R, nbrs):
        geom = Geometry(R, cell, species, nbrs.nlist.idx, getattr(model, "pad_distance", None) or model._pad_distance,
                        (nbrs.images, nbrs.nlist.reference_position))
        nbf = geom.image_neighborhood_fn()
        rows = jnp.arange(lo, hi).reshape(-1, chunk)

        def block(rows_b):
            nb_ = nbf(rows_b)
            p = {k: pair_param(v, nb_.species, nb_.neighbor_species) for k, v in sym.items()}
            r2 = sum(nb_.dR[..., k] ** 2 for k in range(3))
            e, dphi = jax.jvp(lambda x: pot.pair_energy_r2(x, **p), (r2,),
                              (jnp.ones_like(r2),))
            coef = materialize(2.0 * dphi, nb_.idx[0, 0])
            return -jnp.stack([jnp.sum(coef * nb_.dR[..., k], axis=1) for k in range(3)], -1)

        return -jax.lax.map(block, rows).reshape(hi - lo, 3)
    return f


_ = Geometry
h = n // 2
progs = []
for k, (lo, hi) in enumerate([(0, h), (h, n)]):
    d = devs[k]
    args = (jax.device_put(R0, d), jax.tree.map(lambda x: jax.device_put(x, d), nb))
    progs.append((jax.jit(half_fn(lo, hi)), args))
fullj = jax.jit(full)
fargs = (jax.device_put(R0, devs[0]), jax.tree.map(lambda x: jax.device_put(x, devs[0]), nb))
Ffull = np.asarray(fullj(*fargs))
Fh = np.concatenate([np.asarray(p(*a)) for p, a in progs])
print("half-split vs full max|dF|", np.abs(Fh - Ffull).max(), "max|F|", np.abs(Ffull).max())

REPS, IT = 7, 20


def run(p, a, it=IT):
    for _ in range(it):
        out = p(*a)
    out.block_until_ready()


def timed(fn):
    ts = []
    for _ in range(REPS):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) / IT)
    return 1e3 * statistics.median(ts)


def both_threads():
    th = [threading.Thread(target=run, args=pa) for pa in progs]
    for t in th:
        t.start()
    for t in th:
        t.join()


def both_async():  # one thread, async dispatch to both devices, interleaved
    outs = []
    for _ in range(IT):
        outs = [p(*a) for p, a in progs]
    for o in outs:
        o.block_until_ready()


run(*progs[0]), run(*progs[1]), run(fullj, fargs)
print(f"full, one device:          {timed(lambda: run(fullj, fargs)):.2f} ms")
print(f"half 0 alone:              {timed(lambda: run(*progs[0])):.2f} ms")
print(f"halves sequential:         {timed(lambda: (run(*progs[0]), run(*progs[1]))):.2f} ms")
print(f"halves, 2 threads:         {timed(both_threads):.2f} ms")
print(f"halves, async interleaved: {timed(both_async):.2f} ms")
