"""Hypergradient benchmark: implicit differentiation vs unrolling the same inner solver.

Two bilevel problems with a scalar regularisation strength λ and d = 10³ … 10⁴ features
(n = 500 training and 500 validation samples, Gaussian features, fixed seed):

- ridge regression, inner objective ``f(w, λ) = ‖Xw − y‖² / 2n + λ‖w‖² / 2``;
- ℓ2-regularised logistic regression, ``f(w, λ) = mean(log(1 + e^{z}) − y z) + λ‖w‖² / 2``,
  ``z = Xw``, labels y ∈ {0, 1}.

The outer objective is the unregularised validation loss and the quantity timed is the
hypergradient ``d L_val(w*(λ)) / dλ`` computed by ``jax.grad`` of one jitted function:

(a) implicit: K steps of fixed-step gradient descent in a ``lax.fori_loop``, wrapped in
    ``mdsens.implicit.custom_root`` with ``F = ∇_w f`` (stationarity); the derivative is one
    CG solve with the Hessian (``solve="cg", symmetric=True``, default tol 1e-10);
(b) unrolled: ``jax.grad`` straight through the SAME ``fori_loop`` of K steps.

A third function, the validation loss at the K-th iterate without any derivative ("forward
only"), is the baseline cost. Each is compiled once (``jax.jit(f).lower(...).compile()``:
trace + XLA compile time, reported separately), run once to warm up, then timed at least
``--repeats`` times (default 7; runs under 0.2 s are repeated for about a second, at most 21
times), interleaved round robin so that load changes on a shared machine hit all three
alike, and the median is reported.
Memory is XLA's buffer assignment of the compiled executable
(``compiled.memory_analysis().temp_size_in_bytes``): the temporaries the program needs beyond
its arguments (the data, identical for both methods) and outputs. For the unrolled gradient it
contains the K stored iterates of the reverse pass.

Checks: the two hypergradients are compared with each other and with a reference: the closed
form for ridge (Woodbury, an n × n solve in numpy), and for logistic regression a fourth-order
central finite difference of the validation loss through the same K-step inner solver. The
inner solver's final relative gradient norm and the CG iterations of the derivative solve
(the same adjoint system, solved again with ``root_vjp`` to read its ``SolveInfo``) are
printed.

Run pinned to one core (see benchmarks/README.md)::

    taskset -c 1 env OMP_NUM_THREADS=1 \\
      XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \\
      PYTHONPATH=. .venv/bin/python benchmarks/implicit_core.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import jax

# A benchmark script may set global configuration; the library never does.
jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

from mdsens.implicit import custom_root, root_vjp  # noqa: E402

N_TRAIN = 500
N_VAL = 500
SIZES = (1_000, 3_000, 10_000)
SEED = 20260101
MB = 1024.0**2


# --------------------------------------------------------------------------------- problems


@dataclass(frozen=True)
class Problem:
    """A bilevel problem: inner objective, validation loss, Lipschitz constant of ∇f."""

    name: str
    lam: float
    iterations: int
    objective: Callable  # f(w, lam, X, y) -> scalar
    val_loss: Callable  # L(w, Xv, yv) -> scalar
    lipschitz: Callable  # (sigma_max(X)^2 / n, lam) -> L


def _ridge_objective(w, lam, X, y):
    r = X @ w - y
    return 0.5 * jnp.vdot(r, r) / X.shape[0] + 0.5 * lam * jnp.vdot(w, w)


def _ridge_val(w, Xv, yv):
    r = Xv @ w - yv
    return 0.5 * jnp.vdot(r, r) / Xv.shape[0]


def _logistic_objective(w, lam, X, y):
    z = X @ w
    return jnp.mean(jnp.logaddexp(0.0, z) - y * z) + 0.5 * lam * jnp.vdot(w, w)


def _logistic_val(w, Xv, yv):
    z = Xv @ w
    return jnp.mean(jnp.logaddexp(0.0, z) - yv * z)


PROBLEMS = (
    Problem("ridge", 1.0, 300, _ridge_objective, _ridge_val, lambda s2, lam: s2 + lam),
    Problem("logistic", 0.3, 300, _logistic_objective, _logistic_val,
            lambda s2, lam: 0.25 * s2 + lam),
)


def make_data(problem: Problem, d: int, seed: int = SEED):
    """Gaussian features, a dense ground truth, noisy targets (labels for logistic)."""
    rng = np.random.default_rng(seed + d)
    w_true = rng.standard_normal(d) / np.sqrt(d)
    X = rng.standard_normal((N_TRAIN, d))
    Xv = rng.standard_normal((N_VAL, d))
    noise, noise_v = 0.5 * rng.standard_normal(N_TRAIN), 0.5 * rng.standard_normal(N_VAL)
    if problem.name == "ridge":
        y, yv = X @ w_true + noise, Xv @ w_true + noise_v
    else:
        y, yv = (X @ w_true + noise > 0) * 1.0, (Xv @ w_true + noise_v > 0) * 1.0
    s2 = np.linalg.norm(X, 2) ** 2 / N_TRAIN
    step = 1.0 / problem.lipschitz(s2, problem.lam)
    return X, y, Xv, yv, step


# --------------------------------------------------------------------------- hypergradients


def build(problem: Problem):
    """Return (implicit, unrolled, forward, inner): the first three are functions of
    (lam, X, y, Xv, yv, step); ``forward`` is the validation loss without a derivative."""
    F = jax.grad(problem.objective)  # stationarity: F(w, lam, X, y) = ∇_w f
    K = problem.iterations

    def gd(init, lam, X, y, step):
        """The inner solver: K fixed steps of gradient descent."""
        return lax.fori_loop(0, K, lambda _, w: w - step * F(w, lam, X, y), init)

    def F_root(w, lam, X, y, step):  # same argument list as the solver; step plays no role
        del step
        return F(w, lam, X, y)

    gd_implicit = custom_root(F_root, solve="cg", symmetric=True)(gd)

    def outer(solver):
        def value(lam, X, y, Xv, yv, step):
            w = solver(jnp.zeros(X.shape[1], X.dtype), lam, X, y, step)
            return problem.val_loss(w, Xv, yv)

        return jax.grad(value)

    def inner(lam, X, y, step):
        return gd(jnp.zeros(X.shape[1], X.dtype), lam, X, y, step)

    def forward(lam, X, y, Xv, yv, step):
        return problem.val_loss(inner(lam, X, y, step), Xv, yv)

    return outer(gd_implicit), outer(gd), forward, inner


def ridge_closed_form(lam, X, y, Xv, yv) -> float:
    """dL_val/dλ = −∇L_val(w*)ᵀ H⁻¹ w*, H = XᵀX/n + λI, by Woodbury (an n × n solve)."""
    n = X.shape[0]
    G = X @ X.T + n * lam * np.eye(n)
    w = X.T @ np.linalg.solve(G, y)
    g = Xv.T @ (Xv @ w - yv) / Xv.shape[0]
    H_inv_w = (w - X.T @ np.linalg.solve(G, X @ w)) / lam
    return float(-g @ H_inv_w)


# ------------------------------------------------------------------------------- measuring


@dataclass
class Measurement:
    value: float
    compile_s: float
    run_s: float
    min_s: float
    temp_mb: float
    argument_mb: float


def measure(fns: dict, args, repeats: int) -> dict[str, Measurement]:
    """Compile each function, warm it up, then time them interleaved (round robin), so that
    load changes on a shared machine hit every method alike; median per method."""
    compiled, compile_s, values, warm = {}, {}, {}, 0.0
    for name, fn in fns.items():
        t0 = time.perf_counter()
        compiled[name] = jax.jit(fn).lower(*args).compile()
        compile_s[name] = time.perf_counter() - t0
        t0 = time.perf_counter()
        values[name] = float(jax.block_until_ready(compiled[name](*args)))  # warm-up run
        warm = max(warm, time.perf_counter() - t0)
    # short runs are noisier: repeat them for about a second per method (at most 21 times)
    rounds = max(repeats, min(21, int(1.0 / max(warm, 1e-3))))
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name in fns:
            t0 = time.perf_counter()
            jax.block_until_ready(compiled[name](*args))
            times[name].append(time.perf_counter() - t0)
    out = {}
    for name in fns:
        mem = compiled[name].memory_analysis()
        out[name] = Measurement(values[name], compile_s[name], statistics.median(times[name]),
                                min(times[name]),
                                mem.temp_size_in_bytes / MB, mem.argument_size_in_bytes / MB)
    return out


def reference(problem: Problem, inner, data) -> tuple[float, str]:
    X, y, Xv, yv, step = data
    if problem.name == "ridge":
        return ridge_closed_form(problem.lam, X, y, Xv, yv), "closed form"
    solve = jax.jit(inner)
    loss = jax.jit(problem.val_loss)
    lam, h = problem.lam, 1e-3 * problem.lam

    def L(lam):
        return float(loss(solve(lam, X, y, step), Xv, yv))

    # fourth-order central difference: truncation O(h⁴), rounding O(eps / h)
    fd = (8 * (L(lam + h) - L(lam - h)) - (L(lam + 2 * h) - L(lam - 2 * h))) / (12 * h)
    return fd, "central FD (4th order)"


def diagnostics(problem: Problem, inner, data) -> tuple[float, int]:
    """Relative gradient norm of the inner solution and CG iterations of the adjoint solve."""
    X, y, Xv, yv, step = data
    F = jax.grad(problem.objective)
    w = jax.jit(inner)(problem.lam, X, y, step)
    g0 = jnp.linalg.norm(F(jnp.zeros_like(w), problem.lam, X, y))
    rel_grad = float(jnp.linalg.norm(F(w, problem.lam, X, y)) / g0)
    cot = jax.grad(problem.val_loss)(w, Xv, yv)
    _, info = jax.jit(
        lambda w, cot: root_vjp(F, w, (problem.lam, X, y), cot, solve="cg")
    )(w, cot)
    return rel_grad, int(info.iterations)


def _ratio(a: Measurement, b: Measurement) -> str:
    """Run-time ratio a/b of the medians, and in parentheses of the minima."""
    return f"{a.run_s / b.run_s:.2f} ({a.min_s / b.min_s:.2f})"


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-300)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smallest size only (smoke test)")
    parser.add_argument("--repeats", type=int, default=7, help="minimum timed runs per case (>= 3)")
    opts = parser.parse_args(argv)
    sizes = SIZES[:1] if opts.quick else SIZES
    repeats = max(3, opts.repeats)

    print(f"# implicit_core: jax {jax.__version__}, {platform.processor() or platform.machine()},"
          f" float64, {os.cpu_count()} CPUs visible, affinity "
          f"{sorted(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else '?'}")
    print(f"# XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r} "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')!r}")
    print(f"# n_train = {N_TRAIN}, n_val = {N_VAL}, median of >= {repeats} runs after a warm-up "
          "(more for runs < 0.2 s); "
          "memory = XLA temp buffers (memory_analysis().temp_size_in_bytes)\n")

    rows, ratios = [], []
    t_start = time.perf_counter()
    for problem in PROBLEMS:
        implicit, unrolled, forward, inner = build(problem)
        for d in sizes:
            data = make_data(problem, d)
            args = (jnp.asarray(problem.lam), *map(jnp.asarray, data))
            m = measure({"implicit": implicit, "unrolled": unrolled, "forward": forward},
                        args, repeats)
            m_imp, m_unr, m_fwd = m["implicit"], m["unrolled"], m["forward"]
            ref, ref_name = reference(problem, inner, data)
            rel_grad, cg_iters = diagnostics(problem, inner, data)
            rows.append((problem, d, m_imp, m_unr, m_fwd, ref, ref_name, rel_grad, cg_iters))
            ratios.append((problem.name, d, _ratio(m_unr, m_imp),
                           m_unr.compile_s / m_imp.compile_s, m_unr.temp_mb / m_imp.temp_mb,
                           _ratio(m_imp, m_fwd), _ratio(m_unr, m_fwd)))
            print(f"  done {problem.name:8s} d={d:6d} "
                  f"({time.perf_counter() - t_start:6.1f} s elapsed)", flush=True)

    print("\n| problem | d | K | method | compile s | run s (median) | run s (min) | temp MiB | "
          "dL/dλ | rel. diff vs ref |")
    print("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    for problem, d, m_imp, m_unr, m_fwd, ref, _, _, _ in rows:
        for name, m in (("implicit (CG)", m_imp), ("unrolled", m_unr)):
            print(f"| {problem.name} | {d} | {problem.iterations} | {name} | "
                  f"{m.compile_s:.2f} | {m.run_s:.4f} | {m.min_s:.4f} | {m.temp_mb:.2f} | "
                  f"{m.value:.10e} | "
                  f"{rel(m.value, ref):.1e} |")
        print(f"| {problem.name} | {d} | {problem.iterations} | forward only (L_val, no "
              f"derivative) | {m_fwd.compile_s:.2f} | {m_fwd.run_s:.4f} | {m_fwd.min_s:.4f} | "
              f"{m_fwd.temp_mb:.2f} | – | – |")

    print("\nrun-time ratios: median (min)")
    print("\n| problem | d | data MiB (args) | run unrolled/implicit | compile unrolled/implicit"
          " | temp mem unrolled/implicit | implicit/forward run | unrolled/forward run | "
          "implicit vs unrolled rel. diff | reference | inner ‖∇f(w_K)‖/‖∇f(0)‖ | "
          "adjoint CG iters |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|")
    for (problem, d, m_imp, m_unr, _, _, ref_name, rel_grad, cg_iters), r in zip(rows, ratios):
        print(f"| {problem.name} | {d} | {m_imp.argument_mb:.1f} | {r[2]} | {r[3]:.2f} | "
              f"{r[4]:.1f} | {r[5]} | {r[6]} | {rel(m_imp.value, m_unr.value):.1e} | "
              f"{ref_name} | {rel_grad:.1e} | {cg_iters} |")
    print(f"\n# total {time.perf_counter() - t_start:.1f} s")


if __name__ == "__main__":
    main()
