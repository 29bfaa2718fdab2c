"""FIRE 2.0 step cost without the force: harmonic force -q, N=32000x3 float64, 1 core."""
import statistics
import sys
import time
from pathlib import Path
import jax; jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
import numpy as np
from jax import lax

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from mdsens.md._fire import fire2

mz = fire2(0.005, 0.03, max_step=0.1)
ffn = lambda q: (0.5 * jnp.vdot(q, q), -q, None)
def run(R, n):
    st = mz.init(R, ffn)
    return lax.fori_loop(0, n, lambda i, s: mz.step(s, ffn)[0], st).position
j = jax.jit(run, static_argnums=1)
R = jnp.asarray(np.random.default_rng(0).standard_normal((32000, 3)))
j(R, 500).block_until_ready(); j(R, 1).block_until_ready()
ts = []
for _ in range(7):
    t0 = time.perf_counter(); j(R, 500).block_until_ready(); a = time.perf_counter() - t0
    t0 = time.perf_counter(); j(R, 1).block_until_ready(); b = time.perf_counter() - t0
    ts.append((a - b) / 499)
print("fire2 step without force: median %.3f ms min %.3f ms" % (1e3 * statistics.median(ts), 1e3 * min(ts)))
