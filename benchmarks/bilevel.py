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
150 images, 16 atoms, ∂/∂(D, w, b)); 4 potential fitting: the loss
L = (e − e_t)² / e_t² + (P − P_t)² / P_t² of the relaxed energy per atom and pressure of a
256-atom binary LJ crystal (fcc 4×4×4, ρ = 1, species at random, 0.05σ noise, fixed cell,
all pairs) with respect to the (2, 2) matrices σ and ε (8 numbers); inner solver: gradient
descent on the positions with a fixed step (1e-4; 2/λ_max of the Hessian is 1.4e-4),
implicit derivative by CG with the translations projected out (the positions' null space);
targets from θ moved by 2 %. The unrolled loop rematerialises each step in the backward
pass (``jax.checkpoint``): storing every step's intermediates would need ≈ 38 GB.

Each gradient function is jitted and compiled once, run
once to warm up, then the two methods are timed interleaved ``--repeats`` times (default 7);
medians are reported with the compile times and the relative difference of the two gradients
(small once K iterations converge the inner problem).

Run pinned to one core (see benchmarks/README.md)::

    taskset -c 1 env OMP_NUM_THREADS=1 \\
      XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \\
      PYTHONPATH=. .venv/bin/python benchmarks/bilevel.py

``--study svm``: the multiclass-SVM study of Blondel et al. (2022) with
``mdsens.bilevel.svm``: dL_val/d log λ (squared validation loss, smoothed Crammer–Singer dual,
λ = 1) for the mirror-descent, projected-gradient and block-coordinate-descent solvers, each
differentiated implicitly through its own fixed point or by unrolling its K iterations
(``SVM_ITERATIONS``), for synthetic data (``svm.make_svm_data``: 300 training / 200
validation samples, 5 classes) with ``--features`` (default 100 … 2000) features. It prints a
table (times, and the relative error of both gradients against the converged implicit one)
and writes ``--out`` (default docs/figures/bilevel_svm.png)::

    PYTHONPATH=. .venv/bin/python benchmarks/bilevel.py --study svm --repeats 3

``--clock cpu`` times the runs by the process's CPU time instead of the wall clock (for a
machine shared with other jobs; run pinned to one core with one XLA thread as above).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

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

    fit_loss, fit_theta = potential_fit_problem(K["4 potential fit σ, ε"])

    return {
        "1a logistic λ": (lambda u: lambda t: hp.logistic_validation_loss(
            t, Xt, Yt, Xv, Yv, **opts("1a logistic λ", u))[0], jnp.log(0.01)),
        "1b SVM λ": (lambda u: lambda t: hp.svm_validation_loss(
            t, Xt, Yt, Xv, Yv, step=step, **opts("1b SVM λ", u))[0], jnp.log(0.01)),
        "2 distillation S": (lambda u: lambda S: distillation.distillation_loss(
            S, jnp.eye(10), 1e-2, Xd, Yd, **opts("2 distillation S", u))[0], S),
        "3 dictionary D,w,b": (lambda u: lambda p: dictionary.task_loss(
            p, Xb, yb, **opts("3 dictionary D,w,b", u))[0], params),
        "4 potential fit σ, ε": (fit_loss, fit_theta),
    }


def potential_fit_problem(K: int):
    """(make(unroll) -> L(θ), θ₀) for application 4 (see the module docstring)."""
    import functools

    from mdsens.implicit import custom_root, linsolve
    from mdsens.md import build, zero_modes

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from sensitivity import lj_alloy  # the alloy of the sensitivity benchmark

    system, pot, _ = lj_alloy((4, 4, 4))
    n = system.n_atoms
    model = build(system, pot, neighbor_list=False)
    assert model.n_copies == 1
    cell = jnp.asarray(system.cell)
    R0 = jnp.asarray(system.positions)
    theta0 = {k: jnp.asarray(v) for k, v in pot.params.items()}
    step = 1e-4  # below 2 / λ_max(H) ≈ 1.4e-4

    def F(R, theta):
        return jax.grad(model.energy)(R, cell, theta)

    @jax.checkpoint  # unrolled reverse mode keeps only R per step (else ≈ 38 GB at K = 2000)
    def gd_step(R, theta):
        return R - step * F(R, theta)

    def descend(init, theta):
        """K gradient-descent steps (a fixed trip count: reverse-differentiable)."""
        return jax.lax.fori_loop(0, K, lambda _, R: gd_step(R, theta), init)

    solve = functools.partial(linsolve.cg, tol=1e-10,
                              nullspace=zero_modes.rigid_modes(R0, True))
    implicit_descend = custom_root(F, solve=solve, symmetric=True)(descend)

    def observables(R, theta):
        e = model.energy(R, cell, theta) / n
        P = -jnp.trace(model.stress(R, cell, theta)) / 3
        return e, P

    t_shift = jax.tree.map(lambda v: 1.02 * v, theta0)
    e_t, P_t = observables(implicit_descend(R0, t_shift), t_shift)

    def make(unroll: bool):
        def loss(theta):
            R = descend(R0, theta) if unroll else implicit_descend(R0, theta)
            e, P = observables(R, theta)
            return (e - e_t) ** 2 / e_t ** 2 + (P - P_t) ** 2 / P_t ** 2

        return loss

    return make, theta0


def time_pair(make: Callable[[bool], Callable], args: tuple, repeats: int,
              clock: Callable[[], float] = time.perf_counter):
    """Compile ``jax.grad`` (first argument) of ``make(False)`` (implicit) and ``make(True)``
    (unrolled), run each once to warm up, then time them interleaved ``repeats`` times with
    ``clock`` (wall time by default; ``time.process_time``: CPU seconds of this process,
    robust to other processes sharing the cores).

    Returns ``(compile seconds (wall), median run seconds, gradients)``, each a dict keyed by
    ``unroll``."""
    fns, grads, comp = {}, {}, {}
    for unroll in (False, True):
        t0 = time.perf_counter()
        f = jax.jit(jax.grad(make(unroll))).lower(*args).compile()
        comp[unroll] = time.perf_counter() - t0
        grads[unroll] = jax.block_until_ready(f(*args))
        fns[unroll] = f
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(repeats):
        for unroll in (False, True):
            t0 = clock()
            jax.block_until_ready(fns[unroll](*args))
            times[unroll].append(clock() - t0)
    return comp, {u: statistics.median(t) for u, t in times.items()}, grads


def applications(repeats: int) -> None:
    """The table of the five applications (module docstring)."""
    K = {"1a logistic λ": 500, "1b SVM λ": 500, "2 distillation S": 500,
         "3 dictionary D,w,b": 200, "4 potential fit σ, ε": 2000}
    print(f"jax {jax.__version__}, float64, repeats {repeats}")
    print("| application | K | compile s implicit / unrolled | run s implicit (median) "
          "| run s unrolled (median) | unrolled/implicit | rel. diff of gradients |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, (make, arg) in problems(K).items():
        comp, med, grads = time_pair(make, (arg,), repeats)
        gi, gu = (jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(grads[u])])
                  for u in (False, True))
        diff = float(jnp.linalg.norm(gi - gu) / jnp.linalg.norm(gu))
        ti, tu = med[False], med[True]
        print(f"| {name} | {K[name]} | {comp[False]:.2f} / {comp[True]:.2f} | {ti:.4f} | "
              f"{tu:.4f} | {tu / ti:.2f} | {diff:.1e} |", flush=True)


# ----------------------------------------------------------------------------- SVM study
SVM_ITERATIONS = {"mirror_descent": 1000, "projected_gradient": 200,
                  "block_coordinate_descent": 50}


def svm_study(features: list[int], *, n_train: int, n_val: int, n_classes: int, lam: float,
              repeats: int, out: Path | None, clock: str = "wall") -> list[dict]:
    """Hypergradient dL_val/d log λ of the multiclass SVM (mdsens.bilevel.svm) for each fixed
    point and feature count: implicit vs unrolled, K = SVM_ITERATIONS[method] inner
    iterations (sweeps for block coordinate descent) from uniform rows, tolerance 0. The
    reference is the implicit projected-gradient hypergradient at an inner tolerance 1e-12
    (tests/test_bilevel_svm.py checks it against central differences)."""
    from mdsens.bilevel import svm

    rows = []
    timer = time.perf_counter if clock == "wall" else time.process_time
    print(f"jax {jax.__version__}, float64, repeats {repeats}; n_train {n_train}, n_val "
          f"{n_val}, {n_classes} classes, λ = {lam}, smoothing γ = 1; run times: {clock} "
          "seconds")
    print("| fixed point | K | features p | compile s implicit / unrolled | run s implicit "
          "(median) | run s unrolled (median) | unrolled/implicit | rel. err implicit "
          "| rel. err unrolled |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    t = jnp.log(lam)
    for p in features:
        data = svm.make_svm_data(n_train, n_val, p, n_classes, seed=0)
        ref = float(jax.jit(jax.grad(lambda t, d: svm.svm_validation_loss(
            t, d, method="projected_gradient", tol=1e-12, maxiter=100_000)[0]))(t, data))
        for method in svm.METHODS:
            K = SVM_ITERATIONS[method]

            def make(unroll: bool, method=method, K=K):
                return lambda t, d: svm.svm_validation_loss(
                    t, d, method=method, tol=0.0, maxiter=K, unroll=unroll)[0]

            comp, med, grads = time_pair(make, (t, data), repeats, timer)
            err = {u: abs(float(grads[u]) - ref) / abs(ref) for u in (False, True)}
            rows.append(dict(method=method, K=K, p=p, implicit=med[False], unrolled=med[True],
                             err_implicit=err[False], err_unrolled=err[True]))
            print(f"| {method.replace('_', ' ')} | {K} | {p} | {comp[False]:.2f} / "
                  f"{comp[True]:.2f} | {med[False]:.4f} | {med[True]:.4f} | "
                  f"{med[True] / med[False]:.2f} | {err[False]:.1e} | {err[True]:.1e} |",
                  flush=True)
    if out is not None:
        plot_svm_study(rows, out, n_train=n_train, n_classes=n_classes, lam=lam, clock=clock)
    return rows


def plot_svm_study(rows: list[dict], out: Path, *, n_train: int, n_classes: int,
                   lam: float, clock: str = "wall") -> None:
    """One panel per fixed point: run time of the hypergradient vs the number of features."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mdsens.bilevel.svm import METHODS

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8), sharey=True)
    for ax, method in zip(axes, METHODS):
        sel = [r for r in rows if r["method"] == method]
        p = [r["p"] for r in sel]
        ax.plot(p, [r["implicit"] for r in sel], "o-", label="implicit (custom_root)")
        ax.plot(p, [r["unrolled"] for r in sel], "s--", label="unrolled (jax.grad)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("number of features p")
        ax.set_title(f"{method.replace('_', ' ')} (K = {sel[0]['K']})", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel(f"hypergradient run time ({'CPU ' if clock == 'cpu' else ''}s)")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"multiclass SVM, dL_val/d log λ: n = {n_train} samples, {n_classes} "
                 f"classes, λ = {lam}, float64, CPU", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--study", choices=("applications", "svm"), default="applications",
                        help="the five applications (default) or the multiclass SVM study")
    parser.add_argument("--features", default="100,250,500,1000,2000",
                        help="svm: comma-separated feature counts")
    parser.add_argument("--n-train", type=int, default=300, help="svm: training samples")
    parser.add_argument("--n-val", type=int, default=200, help="svm: validation samples")
    parser.add_argument("--classes", type=int, default=5, help="svm: number of classes")
    parser.add_argument("--lam", type=float, default=1.0, help="svm: regularisation λ")
    parser.add_argument("--out", type=Path, default=Path("docs/figures/bilevel_svm.png"),
                        help="svm: figure path")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="svm: time runs by wall clock or by this process's CPU time")
    args = parser.parse_args()
    if args.study == "applications":
        applications(args.repeats)
    else:
        svm_study([int(p) for p in args.features.split(",")], n_train=args.n_train,
                  n_val=args.n_val, n_classes=args.classes, lam=args.lam,
                  repeats=args.repeats, out=args.out, clock=args.clock)


if __name__ == "__main__":
    main()
