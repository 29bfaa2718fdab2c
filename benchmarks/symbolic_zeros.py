"""Forward mode of ``custom_root`` with a large argument that is not differentiated.

Problem (n = 4000 by default, float64, fixed seed): ``x*(λ, M)`` is the root of

    F(x, λ, M) = x + c Mᵀ(M x) − λ u,        M ∈ R^{n×n} with N(0, 1/n) entries, c = 0.1,

found by Richardson iteration (``K`` steps) and wrapped in ``custom_root`` (CG, symmetric).
The quantity timed is ``jax.jvp`` with respect to λ alone (the root and ``dx*/dλ``), ``M``
(128 MB) being an argument of the jitted function that is not differentiated:

(a) symbolic zeros (the implementation): ``M``'s tangent is a symbolic zero; the JVP rule
    closes over ``M`` and the right-hand side ``∂₂F θ̇`` is a JVP in λ alone;
(b) dense zeros (what the rule did before, reproduced exactly): ``M`` gets a materialised
    zero tangent ``jnp.zeros_like(M)`` and ``∂₂F θ̇`` is a JVP in (λ, M);
(c) the forward pass alone (the K inner steps), the baseline.

Each is compiled once (``jax.jit(f).lower(...).compile()``), run once to warm up, then timed
``--repeats`` times interleaved round robin; medians are reported. (a) and (b) are also timed
without ``jit`` (``--eager-repeats``), where the dense zeros are a concrete array. Memory is
XLA's buffer assignment (``compiled.memory_analysis().temp_size_in_bytes``, temporaries beyond
arguments and outputs). The jaxpr of each JVP is searched for operations whose result has M's shape.
Checks: (a) and (b) agree, and match ``(I + c MᵀM)⁻¹ u`` from a dense Cholesky solve.

Run pinned to one core (see benchmarks/README.md)::

    taskset -c 1 env OMP_NUM_THREADS=1 \\
      XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \\
      PYTHONPATH=. .venv/bin/python benchmarks/symbolic_zeros.py [--n 4000] [--repeats 7]

About 1.5 min at n = 4000 on one core.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import jax

# A benchmark script may set global configuration; the library never does.
jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import scipy.linalg  # noqa: E402
from jax import lax  # noqa: E402

from mdsens.implicit import custom_root  # noqa: E402

C = 0.1
STEPS = 40
SEED = 20260101
MB = 1024.0**2


def F(x, lam, M, u):
    """Stationarity of ½xᵀ(I + c MᵀM)x − λ uᵀx."""
    return x + C * (M.T @ (M @ x)) - lam * u


def richardson(init, lam, M, u):
    """K fixed-step iterations x ← x − ω F(x); ω = 2 / (1 + (1 + c‖M‖²)) with ‖M‖ ≤ 2."""
    omega = 2.0 / (2.0 + 4.0 * C)
    return lax.fori_loop(0, STEPS, lambda _, x: x - omega * F(x, lam, M, u), init)


solver = custom_root(F, solve="cg", symmetric=True)(richardson)


def x_star(lam, M, u):
    return solver(jnp.zeros_like(u), lam, M, u)


def jvp_symbolic(lam, M, u):
    return jax.jvp(lambda l: x_star(l, M, u), (lam,), (jnp.ones_like(lam),))


def jvp_dense(lam, M, u):
    return jax.jvp(lambda l, m: x_star(l, m, u), (lam, M),
                   (jnp.ones_like(lam), jnp.zeros_like(M)))


def forward_only(lam, M, u):
    return x_star(lam, M, u)


def ops_with_shape(jaxpr, shape) -> list[str]:
    """Primitives (recursively through sub-jaxprs) whose result has ``shape``."""
    found = []
    for eqn in jaxpr.eqns:
        found += [eqn.primitive.name for v in eqn.outvars
                  if tuple(getattr(v.aval, "shape", ())) == tuple(shape)]
        for param in eqn.params.values():
            for sub in param if isinstance(param, (list, tuple)) else (param,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    found += ops_with_shape(inner, shape)
    return found


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--eager-repeats", type=int, default=3)
    args = parser.parse_args(argv)
    n = args.n
    rng = np.random.default_rng(SEED)
    M = jnp.asarray(rng.standard_normal((n, n)) / np.sqrt(n))
    u = jnp.asarray(rng.standard_normal(n))
    lam = jnp.asarray(1.3)
    print(f"n = {n}, M {n}×{n} float64 = {M.nbytes / MB:.0f} MB; jax {jax.__version__}, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")

    functions = {"symbolic zeros": jvp_symbolic, "dense zeros": jvp_dense,
                 "forward only": forward_only}
    compiled, compile_s = {}, {}
    for name, f in functions.items():
        t0 = time.perf_counter()
        compiled[name] = jax.jit(f).lower(lam, M, u).compile()
        compile_s[name] = time.perf_counter() - t0
    results = {name: jax.block_until_ready(c(lam, M, u)) for name, c in compiled.items()}
    results = {name: r[1] for name, r in results.items() if name != "forward only"}
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(args.repeats):
        for name, c in compiled.items():
            t0 = time.perf_counter()
            jax.block_until_ready(c(lam, M, u))
            times[name].append(time.perf_counter() - t0)

    base = statistics.median(times["forward only"])
    print(f"\n{'':16s} {'median s':>9s} {'- fwd s':>8s} {'compile s':>9s} {'temp MB':>8s}  "
          f"ops of M's shape in the jaxpr")
    for name, f in functions.items():
        med = statistics.median(times[name])
        temp = compiled[name].memory_analysis().temp_size_in_bytes / MB
        ops = ops_with_shape(jax.make_jaxpr(f)(lam, M, u).jaxpr, M.shape)
        print(f"{name:16s} {med:9.4f} {med - base:8.4f} {compile_s[name]:9.2f} {temp:8.1f}  "
              f"{len(ops)} {sorted(set(ops))}")

    sym, dense = np.asarray(results["symbolic zeros"]), np.asarray(results["dense zeros"])
    Md = np.asarray(M)
    ref = scipy.linalg.solve(np.eye(n) + C * Md.T @ Md, np.asarray(u), assume_a="pos")
    scale = np.abs(ref).max()
    print(f"\nmax |symbolic − dense| / max|ref| = {np.abs(sym - dense).max() / scale:.1e}; "
          f"max |symbolic − (I + c MᵀM)⁻¹u| / max|ref| = {np.abs(sym - ref).max() / scale:.1e}")
    ratio = statistics.median(times["dense zeros"]) / statistics.median(times["symbolic zeros"])
    print(f"dense / symbolic time (jit): {ratio:.2f}×")

    # without jit (op by op, as an interactive jax.jvp runs): warm-up, then interleaved
    eager = {"symbolic zeros": jvp_symbolic, "dense zeros": jvp_dense}
    eager_times: dict[str, list[float]] = {name: [] for name in eager}
    for f in eager.values():
        jax.block_until_ready(f(lam, M, u))
    for _ in range(args.eager_repeats):
        for name, f in eager.items():
            t0 = time.perf_counter()
            jax.block_until_ready(f(lam, M, u))
            eager_times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(t) for name, t in eager_times.items()}
    print(f"without jit: symbolic {med['symbolic zeros']:.3f} s, dense "
          f"{med['dense zeros']:.3f} s, dense / symbolic "
          f"{med['dense zeros'] / med['symbolic zeros']:.2f}×")


if __name__ == "__main__":
    main()
