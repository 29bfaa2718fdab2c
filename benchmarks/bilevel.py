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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    K = {"1a logistic λ": 500, "1b SVM λ": 500, "2 distillation S": 500,
         "3 dictionary D,w,b": 200, "4 potential fit σ, ε": 2000}
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
