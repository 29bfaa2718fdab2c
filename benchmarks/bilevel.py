"""Bilevel hypergradients: implicit differentiation vs unrolling the same inner solver.

For each application of ``mdsens.bilevel`` (digits from scikit-learn, float64), the gradient of
the outer objective is computed two ways with the SAME inner solver and the SAME number K of
inner iterations (the tolerance set to 0, so the implicit solver's ``while_loop`` also runs
exactly K iterations, from a zero / feasible start):

(a) implicit: the module's solver under ``custom_root`` (CG, GMRES or per-sample LU on the
    optimality condition), ``jax.grad`` of the outer objective;
(b) unrolled: ``jax.grad`` through the solver's ``fori_loop`` of K iterations (``unroll=True``).

Applications: 1a logistic-regression λ (300 train / 300 val digits, d = 65, 10 classes,
∂/∂ log λ at λ = 0.01); 1b smoothed multiclass SVM λ (same data, λ = 0.01); 2 distillation
(10 synthetic images, 500 real digits, ∂/∂S, 640 numbers); 3 dictionary learning (3 vs 8,
150 images, 16 atoms, ∂/∂(D, w, b)). Each gradient function is jitted and compiled once, run
once to warm up, then the two methods are timed interleaved ``--repeats`` times (default 7);
medians are reported with the compile times and the relative difference of the two gradients
(small once K iterations converge the inner problem).

Run pinned to one core (see benchmarks/README.md)::

    taskset -c 1 env OMP_NUM_THREADS=1 \\
      XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \\
      PYTHONPATH=. .venv/bin/python benchmarks/bilevel.py
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from mdsens.bilevel import dictionary, distillation, load_digits_split  # noqa: E402
from mdsens.bilevel import hyperparameters as hp  # noqa: E402


def problems(K: dict[str, int]) -> dict[str, tuple[Callable[[bool], Callable], tuple]]:
    """name -> (make(unroll) -> scalar outer objective, argument)."""
    d = load_digits_split(300, 300, 0, seed=0)
    Xt, Xv = hp.with_intercept(jnp.asarray(d.X_train)), hp.with_intercept(jnp.asarray(d.X_val))
    Yt, Yv = jnp.eye(10)[d.y_train], jnp.eye(10)[d.y_val]
    step = float(Xt.shape[0] / np.linalg.norm(np.asarray(Xt), 2) ** 2)
    dd = load_digits_split(500, 0, 0, seed=0)
    S = jnp.asarray(np.random.default_rng(0).uniform(0, 1, (10, 64)))
    Xd, Yd = jnp.asarray(dd.X_train), jnp.eye(10)[dd.y_train]
    b = load_digits_split(150, 0, 0, classes=(3, 8), seed=0)
    Xb, yb = jnp.asarray(b.X_train), jnp.asarray(b.y_train, float)
    rng = np.random.default_rng(1)
    D0 = np.asarray(b.X_train[rng.choice(150, 16, replace=False)].T)
    params = (jnp.asarray(D0 / np.linalg.norm(D0, axis=0)), jnp.asarray(rng.standard_normal(16)),
              jnp.asarray(0.0))

    def opts(name: str, unroll: bool) -> dict:
        return dict(maxiter=K[name], tol=0.0, unroll=unroll)

    return {
        "1a logistic λ": (lambda u: lambda t: hp.logistic_validation_loss(
            t, Xt, Yt, Xv, Yv, **opts("1a logistic λ", u))[0], jnp.log(0.01)),
        "1b SVM λ": (lambda u: lambda t: hp.svm_validation_loss(
            t, Xt, Yt, Xv, Yv, step=step, **opts("1b SVM λ", u))[0], jnp.log(0.01)),
        "2 distillation S": (lambda u: lambda S: distillation.distillation_loss(
            S, jnp.eye(10), 1e-2, Xd, Yd, **opts("2 distillation S", u))[0], S),
        "3 dictionary D,w,b": (lambda u: lambda p: dictionary.task_loss(
            p, Xb, yb, **opts("3 dictionary D,w,b", u))[0], params),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    K = {"1a logistic λ": 500, "1b SVM λ": 500, "2 distillation S": 500,
         "3 dictionary D,w,b": 200}
    print(f"jax {jax.__version__}, float64, repeats {args.repeats}")
    print("| application | K | compile s implicit / unrolled | run s implicit (median) "
          "| run s unrolled (median) | unrolled/implicit | rel. diff of gradients |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, (make, arg) in problems(K).items():
        fns, grads, comp = {}, {}, {}
        for unroll in (False, True):
            t0 = time.perf_counter()
            f = jax.jit(jax.grad(make(unroll))).lower(arg).compile()
            comp[unroll] = time.perf_counter() - t0
            grads[unroll] = jax.block_until_ready(f(arg))
            fns[unroll] = f
        times: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.repeats):
            for unroll in (False, True):
                t0 = time.perf_counter()
                jax.block_until_ready(fns[unroll](arg))
                times[unroll].append(time.perf_counter() - t0)
        gi, gu = (jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(grads[u])])
                  for u in (False, True))
        diff = float(jnp.linalg.norm(gi - gu) / jnp.linalg.norm(gu))
        ti, tu = statistics.median(times[False]), statistics.median(times[True])
        print(f"| {name} | {K[name]} | {comp[False]:.2f} / {comp[True]:.2f} | {ti:.4f} | "
              f"{tu:.4f} | {tu / ti:.2f} | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
