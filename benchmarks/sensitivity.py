"""Sensitivity benchmark: implicit derivatives of relaxed structures vs the alternatives.

Systems (float64, periodic):

- ``soft128``: the 2D bidisperse soft-sphere packing of ``examples/soft_spheres.py``
  (N = 128, diameters 1 : 1.4, 50:50, φ = 0.9, random start; all pairs, no neighbour list);
- ``lj1000`` / ``lj4000`` / ``lj10000``: a disordered binary Lennard-Jones crystal: fcc
  lattice (5×5×10, 10×10×10, 10×10×25 cells; ρ = 1.0) with the species A/B assigned at
  random 50:50, σ_AA = 1, σ_AB = 1.05, σ_BB = 1.1, ε = 1 for every pair (jax-md's C¹ switch
  2.0σ–2.5σ), atoms displaced by 0.05σ (Gaussian); neighbour lists. The random species make
  dR/dσ non-zero (a perfect one-species crystal has dR/dσ = 0 at fixed cell). A
  Kob–Andersen glass was tried first and dropped: FIRE needs 1500–3000 steps at N = 1000–4000
  (about 5 min per relaxation at N = 10⁴ on the shared machine), which does not fit a run of
  a few minutes; this alloy relaxes in ~300–400 steps.

Quantities (each timed after a warm-up that compiles it; compile time reported apart):

- relaxation: ``mdsens.relax`` (FIRE, fmax 1e-8, the library's defaults) from the start;
- one Hessian-vector product (forward-over-reverse, linearised once), and one FIRE step
  (relaxation time / steps), to convert CG iterations into relaxation steps;
- mdsens core, jitted once: ``root_jvp`` (one parameter direction, d(positions)/dσ_AB),
  ``root_vjp`` (one scalar: the distance between atom 0 and its nearest neighbour, w.r.t. all
  parameters), and all parameter directions (JVPs one after another in a ``lax.map``, as
  ``sensitivity()`` runs them); CG with translations projected
  out (``nullspace=``), tol 1e-10; Hessian products from the assembled pair stiffnesses
  (``EnergyModel.pair_hessian_matvec``, as ``sensitivity()`` uses them) where the model
  allows it; the autodiff product (forward-over-reverse) is timed alongside;
- ``mdsens.sensitivity(..., relaxation=...)`` as a user calls it: first call (compiles its
  stages) and a second identical call (the compiled stages are cached on the model: the cost
  of every further call in a study); ``diagnostics["timings"]`` split setup / curvature /
  derivatives: one JVP, one VJP, all parameters; settings in the output (``rattlers``,
  ``curvature_check``);
- central finite differences: two relaxations warm-started from the relaxed state at
  θ ± h (fmax 1e-10, tighter than the base so the difference is not noise), h = 1e-5 and
  1e-6; "all parameters" = measured per-component cost × number of components;
- unrolled FIRE: the same FIRE (same constants and step cap, a NaN-safe norm) in a
  ``lax.scan`` of K steps, K = the relaxation's step count, from the same start; JVP with
  ``jax.jvp`` (forward mode, memory O(N)); VJP with ``jax.grad`` (stores every step: XLA temp
  memory reported; run only where small);
- jaxopt (archived reference implementation, extra ``bench-jaxopt``):
  ``jaxopt.implicit_diff.custom_root(F)`` with its default solver (``solve_normal_cg``,
  jax's CG on the normal equations, tol 1e-5) wrapped around the relaxed state, ``jax.grad``
  of the same distance (reverse mode only: jaxopt's custom_root is a custom_vjp); at the small
  sizes also the x-coordinate of atom 0 (not translation-invariant) with the default and with
  ``solve_cg`` (no projection).

EAM table derivatives of elastic constants (``eam4`` / ``eam32`` / ``eam108``, not in the
default set): fcc Cu (cubic cell repeated 1, 2, 3 times: N = 4, 32, 108) with the LAMMPS
``Cu_u3.eam`` tables (``data/potentials``; 499 knots each of F, rho, z2r), cell relaxed
(fmax 1e-11 eV/Å, stress 1e-12 eV/Å³); ``sensitivity(..., relax_cell=True,
wrt=["F", "rho", "z2r"], observables=["elastic_constants"])``: first call (compiles) and a
second call (compiled), the elastic stage's share of each (``diagnostics["timings"]``;
compile ≈ first − second), the process's peak RSS (each case runs in a fresh process, so
the peak is that case's), and dC/dF_k for the knot with the largest derivative against a
central difference of C from structures relaxed again at F_k ± 1e-7 eV (the step is small
because C depends on one knot very non-linearly; see tests/test_eam_table_derivatives.py).

Run pinned to one core (see benchmarks/README.md)::

    taskset -c 0 env OMP_NUM_THREADS=1 \\
      XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \\
      PYTHONPATH=. .venv/bin/python benchmarks/sensitivity.py [--quick]
      ... benchmarks/sensitivity.py --cases eam4 eam32 eam108
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import math
import multiprocessing
import os
import platform
import statistics
import time
import warnings
from pathlib import Path

import jax

# A benchmark script may set global configuration; the library never does.
jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

from mdsens.implicit import linsolve, root_jvp, root_vjp  # noqa: E402
from mdsens.md import (  # noqa: E402
    System,
    build,
    potentials,
    zero_modes,  # noqa: E402
)
from mdsens.md._driver import natural_scales  # noqa: E402  (mdsens's own ℓ, ε rule)
from mdsens.md.minimize import relax  # noqa: E402
from mdsens.md.sensitivity import sensitivity  # noqa: E402

FMAX = 1e-8
FD_FMAX = 1e-10
FD_STEPS = (1e-5, 1e-6)
MB = 1024.0**2
VJP_RUN_MAX_MIB = 3000  # run the unrolled reverse pass only when XLA's temp memory is below
# FIRE settings of relax() (defaults, in units of tau / ell)
DT, DT_MAX, MAX_STEP = 0.005, 0.03, 0.1


# ------------------------------------------------------------------------------ systems


def soft_spheres(n=128, phi=0.9, seed=0):
    rng = np.random.default_rng(seed)
    species = ["A"] * (n // 2) + ["B"] * (n // 2)
    diam = np.where(np.array(species) == "A", 1.0, 1.4)
    side = np.sqrt(np.sum(np.pi * (diam / 2) ** 2) / phi)
    system = System.create(rng.random((n, 2)) * side, cell=np.diag([side, side]),
                           species=species)
    pot = potentials.get("soft_sphere", sigma={("A", "A"): 1.0, ("A", "B"): 1.2,
                                               ("B", "B"): 1.4})
    wrt = ["sigma[A,A]", "sigma[A,B]", "sigma[B,B]", "epsilon", "alpha"]
    return system, pot, wrt


def lj_alloy(reps, rho=1.0, noise=0.05, seed=0):
    a = (4 / rho) ** (1 / 3)
    base = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    g = np.stack(np.meshgrid(*[np.arange(k) for k in reps], indexing="ij"), -1).reshape(-1, 3)
    R = (g[:, None, :] + base[None]).reshape(-1, 3) * a
    rng = np.random.default_rng(seed)
    R = R + noise * rng.standard_normal(R.shape)
    n = len(R)
    sp = np.array(["A"] * n)
    sp[rng.permutation(n)[: n // 2]] = "B"
    system = System.create(R, cell=np.diag(np.array(reps, float) * a), species=list(sp))
    pot = potentials.get("lj", sigma={("A", "A"): 1.0, ("A", "B"): 1.05, ("B", "B"): 1.1},
                         epsilon={("A", "A"): 1.0, ("A", "B"): 1.0, ("B", "B"): 1.0})
    wrt = [f"{p}[{a_},{b_}]" for p in ("sigma", "epsilon")
           for a_, b_ in (("A", "A"), ("A", "B"), ("B", "B"))]
    return system, pot, wrt


CASES = {
    "soft128": lambda: soft_spheres(),
    "lj1000": lambda: lj_alloy((5, 5, 10)),
    "lj4000": lambda: lj_alloy((10, 10, 10)),
    "lj10000": lambda: lj_alloy((10, 10, 25)),
}
WRT1 = "sigma[A,B]"


# ------------------------------------------------------------------------------ helpers


def block(x):
    return jax.tree.map(lambda a: a.block_until_ready() if hasattr(a, "block_until_ready")
                        else a, x)


def timed(fn, repeats):
    out, times = None, []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = block(fn())
        times.append(time.perf_counter() - t0)
    return out, statistics.median(times), times


def compile_and_time(jitted, args, repeats):
    t0 = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    t_compile = time.perf_counter() - t0
    block(compiled(*args))  # warm-up
    out, med, _ = timed(lambda: compiled(*args), repeats)
    return out, t_compile, med, compiled


def params_of(base, pot, theta):
    """Potential params with ``theta`` (name -> scalar offset) applied like sensitivity()."""
    params = dict(base)
    for name, t in theta.items():
        if "[" in name:
            pname, rest = name.split("[")
            a, b = rest.rstrip("]").split(",")
            i, j = pot.species.index(a), pot.species.index(b)
            bump = np.zeros(np.shape(params[pname]))
            bump[i, j] = bump[j, i] = 1.0
            params[pname] = params[pname] + t * jnp.asarray(bump)
        else:
            params[name] = params[name] + t
    return params


def rel(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def centred(d):
    d = np.asarray(d)
    return d - d.mean(axis=0)


def min_image(R, cell, i, j):
    dR = R[j] - R[i]
    s = dR @ jnp.linalg.inv(cell)
    return jnp.linalg.norm((s - jnp.round(s)) @ cell)


# ------------------------------------------------------------------------------ unrolled FIRE


def _safe_norm(tree):
    s = sum(jnp.vdot(x, x) for x in jax.tree.leaves(tree))
    pos = s > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, s, 1.0)), 0.0)


def make_unrolled(model, cell, R0, nbrs0, base_params):
    """K FIRE steps (library constants, same step cap) in a lax.scan, the neighbour list
    updated every step as in relax(); returns final positions and the overflow flag."""
    ell, eps = natural_scales(base_params)
    tau = ell / math.sqrt(eps)
    dt0, dt_max, max_step = DT * tau, DT_MAX * tau, MAX_STEP * ell
    n_min, f_inc, f_dec, a0, f_a = 5, 1.1, 0.5, 0.1, 0.99

    def run(params, K):
        def force(R, nbrs):
            nb = model.update(R, cell, nbrs) if nbrs is not None else None
            g = jax.grad(model.energy)(R, cell, params, nb)
            return -g, nb

        f0, nb0 = force(R0, nbrs0)
        state = (R0, jnp.zeros_like(R0), f0, jnp.asarray(dt0), jnp.asarray(a0),
                 jnp.zeros((), jnp.int32), nb0)

        def step(state, _):
            q, v, f, dt, alpha, n_pos, nb = state
            power = jnp.vdot(f, v)
            up, down = power > 0, power < 0
            v_norm, f_norm = _safe_norm(v), _safe_norm(f)
            scale = jnp.where(f_norm > 0, v_norm / jnp.where(f_norm > 0, f_norm, 1.0), 0.0)
            v = jnp.where(up, (1 - alpha) * v + alpha * scale * f, jnp.where(down, 0.0, v))
            grow = up & (n_pos > n_min)
            dt = jnp.where(grow, jnp.minimum(dt * f_inc, dt_max),
                           jnp.where(down, dt * f_dec, dt))
            alpha = jnp.where(grow, alpha * f_a, jnp.where(down, a0, alpha))
            n_pos = jnp.where(down, 0, n_pos + 1)
            v = v + dt * f
            dq = dt * v
            longest = jnp.max(jnp.sqrt(jnp.sum(dq**2, axis=-1) + 1e-300))
            dq = dq * jnp.where(longest > max_step, max_step / longest, 1.0)
            q = q + dq
            f, nb = force(q, nb)
            return (q, v, f, dt, alpha, n_pos, nb), None

        state, _ = lax.scan(step, state, None, length=K)
        over = model.overflowed(state[-1]) if state[-1] is not None else jnp.asarray(False)
        return state[0], over

    return run


# ------------------------------------------------------------------------------ one case


def run_case(name, quick, rows, notes):
    system, pot, wrt_all = CASES[name]()
    n, dim = system.n_atoms, system.dim
    small = n <= 1000
    reps = 3 if small else 1
    print(f"\n=== {name}: N = {n}, d = {dim} ===", flush=True)
    model = build(system, pot)
    cell = jnp.asarray(system.cell)
    res = {"case": name, "N": n, "nl": model.uses_neighbor_list, "n_params": len(wrt_all)}

    # 1. relaxation ---------------------------------------------------------------------
    t0 = time.perf_counter()
    relax(system, model, fmax=FMAX, max_steps=1, on_failure="ignore")
    t_first_step = time.perf_counter() - t0
    rel_runs = []
    for _ in range(reps):
        t0 = time.perf_counter()
        r = relax(system, model, fmax=FMAX, max_steps=100000, on_failure="ignore")
        block(r.system.positions)
        rel_runs.append(time.perf_counter() - t0)
    relaxation = r
    t_relax = statistics.median(rel_runs)
    K = relaxation.steps
    t_step = t_relax / K
    res.update(relax=t_relax, relax_compile=t_first_step, steps=K, converged=r.converged,
               fmax=float(r.fmax), relax_runs=rel_runs)
    print(f"relax: {t_relax:.3f} s median of {rel_runs}, {K} steps, {1e3 * t_step:.2f} "
          f"ms/step, compile+1 step {t_first_step:.2f} s, converged {r.converged}", flush=True)

    R_star = jnp.asarray(relaxation.system.positions)
    nbrs = model.allocate(R_star, cell)
    base = dict(pot.params)
    theta0 = {k: 0.0 for k in wrt_all}
    d_star = np.asarray(R_star)
    dist2 = np.sum((d_star[1:] - d_star[0]) ** 2, axis=1)  # rough pick, then min image
    s = (d_star - d_star[0]) @ np.linalg.inv(np.asarray(cell))
    dist2 = np.sum(((s - np.round(s)) @ np.asarray(cell)) ** 2, axis=1)
    dist2[0] = np.inf
    pair = (0, int(np.argmin(dist2)))

    def F(R, theta):
        return jax.grad(model.energy)(R, cell, params_of(base, pot, theta), nbrs)

    def distance(R):
        return min_image(R, cell, *pair)

    null = zero_modes.rigid_modes(R_star, True)
    solve = functools.partial(linsolve.cg, tol=1e-10, nullspace=null)
    # the assembled pair Hessian (what sensitivity() uses here), when the model allows it
    operator = None
    if model.has_pair_hessian:
        def operator(R, theta):
            return model.pair_hessian_matvec(R, cell, params_of(base, pot, theta), nbrs)

    # 2. one HVP ----------------------------------------------------------------------
    hvp_j = jax.jit(lambda R, v: jax.jvp(lambda x: F(x, theta0), (R,), (v,))[1])
    v = jax.random.normal(jax.random.PRNGKey(1), R_star.shape)
    _, c_hvp, t_hvp, _ = compile_and_time(hvp_j, (R_star, v), max(reps, 5))
    res.update(hvp=t_hvp, hvp_assembled=None)
    print(f"HVP (autodiff): {1e3 * t_hvp:.2f} ms = {t_hvp / t_step:.2f} FIRE steps", flush=True)
    if operator is not None:
        mv_j = jax.jit(lambda R, v: operator(R, theta0)(v))
        _, _, t_mv, _ = compile_and_time(mv_j, (R_star, v), max(reps, 5))
        res["hvp_assembled"] = t_mv
        print(f"HVP (assembled, stiffnesses recomputed each call): {1e3 * t_mv:.2f} ms = "
              f"{t_mv / t_step:.2f} FIRE steps", flush=True)

    # 3. mdsens core, compiled once --------------------------------------------------------
    e1 = {k: (1.0 if k == WRT1 else 0.0) for k in wrt_all}

    @jax.jit
    def core_jvp(R):
        xdot, info = root_jvp(F, R, (theta0,), (e1,), solve=solve, on_failure="ignore",
                              operator=operator)
        return xdot, info.iterations, info.status

    @jax.jit
    def core_vjp(R):
        xbar = jax.grad(distance)(R)
        (tbar,), info = root_vjp(F, R, (theta0,), xbar, solve=solve, on_failure="ignore",
                                 operator=operator)
        return tbar, info.iterations, info.status

    @jax.jit
    def core_all(R):
        def one(k):
            t = {kk: jnp.where(k == i, 1.0, 0.0) for i, kk in enumerate(wrt_all)}
            xdot, info = root_jvp(F, R, (theta0,), (t,), solve=solve, on_failure="ignore",
                                  operator=operator)
            return xdot, info.iterations
        return jax.lax.map(one, jnp.arange(len(wrt_all)))  # as sensitivity() does

    (xdot, it_jvp, st_jvp), c_jvp, t_jvp, _ = compile_and_time(core_jvp, (R_star,), reps)
    (tbar, it_vjp, st_vjp), c_vjp, t_vjp, _ = compile_and_time(core_vjp, (R_star,), reps)
    (xdots, it_all), c_all, t_all, _ = compile_and_time(core_all, (R_star,), reps)
    xdot = np.asarray(xdot)
    ddist_jvp = float(jax.jvp(distance, (R_star,), (jnp.asarray(xdot),))[1])
    res.update(core_jvp=t_jvp, core_jvp_c=c_jvp, it_jvp=int(it_jvp), core_vjp=t_vjp,
               core_vjp_c=c_vjp, it_vjp=int(it_vjp), core_all=t_all, core_all_c=c_all,
               it_all=np.asarray(it_all).tolist())
    tp = rel(ddist_jvp, tbar[WRT1])
    print(f"core JVP {t_jvp:.3f} s ({int(it_jvp)} CG it, status {int(st_jvp)}, compile "
          f"{c_jvp:.2f}); VJP {t_vjp:.3f} s ({int(it_vjp)} it, compile {c_vjp:.2f}); all "
          f"{len(wrt_all)} {t_all:.3f} s (it {np.asarray(it_all).tolist()}, compile "
          f"{c_all:.2f}); <w,Jv> vs <J^T w,v> rel {tp:.1e}", flush=True)
    res["transpose"] = tp

    # 4. sensitivity() as a user calls it ---------------------------------------------------
    lean = dict(rattlers=("auto" if name == "soft128" else False), curvature_check=True)
    res["sens_settings"] = lean

    def sens(**kw):
        t0 = time.perf_counter()
        out = sensitivity(system, pot, relaxation=relaxation, **{**lean, **kw})
        return out, time.perf_counter() - t0

    s1, w1 = sens(wrt=[WRT1], observables=["positions"], mode="forward")
    sv, wv = sens(wrt=wrt_all, observables=["distances"], pairs=[pair], mode="reverse")
    sa, wa = sens(wrt=wrt_all, observables=["positions"], mode="forward")
    # second identical calls: the compiled stages are cached on the model, so these are
    # what each further call of a study or fitting loop costs
    s1b, w1b = sens(wrt=[WRT1], observables=["positions"], mode="forward")
    sv, wv2 = sens(wrt=wrt_all, observables=["distances"], pairs=[pair], mode="reverse")
    sa, wa2 = sens(wrt=wrt_all, observables=["positions"], mode="forward")
    res.update(sens_jvp_first=w1, sens_vjp_first=wv, sens_all_first=wa)
    wv, wa = wv2, wa2
    tm = s1b.diagnostics["timings"]
    res.update(sens_jvp=w1, sens_jvp2=w1b, sens_vjp=wv, sens_all=wa, sens_timings=tm,
               sens_vjp_timings=sv.diagnostics["timings"],
               sens_all_timings=sa.diagnostics["timings"],
               sens_it=s1b.diagnostics["solves"]["iterations"].tolist(),
               sens_zero=s1b.diagnostics["zero_modes"]["count"])
    dR_sens = s1.derivatives["positions"][WRT1]
    res["sens_vs_core"] = rel(dR_sens, xdot)
    sv_grad = np.array([sv.derivatives["distances"][k][0] for k in wrt_all])
    res["sens_vjp_vs_core"] = rel(sv_grad, np.array([tbar[k] for k in wrt_all]))
    print(f"sensitivity(): JVP {w1b:.2f} s (first call {w1:.2f} s: {tm}); VJP {wv:.2f} s "
          f"(first {res['sens_vjp_first']:.2f}); all {wa:.2f} s (first "
          f"{res['sens_all_first']:.2f}); converged {s1.converged} {sv.converged} {sa.converged}; "
          f"vs core {res['sens_vs_core']:.1e} / {res['sens_vjp_vs_core']:.1e}", flush=True)
    if name == "lj1000" and not quick:
        # the library default (rattlers="auto": the N·d-HVP rattler scan runs for N ≤ 4000)
        s_def, w_def = sens(wrt=[WRT1], observables=["positions"], mode="forward",
                            rattlers="auto")
        res["sens_default"] = w_def
        res["sens_default_timings"] = s_def.diagnostics["timings"]
        print(f"sensitivity() with rattlers='auto' (scan): {w_def:.2f} s "
              f"{s_def.diagnostics['timings']}", flush=True)

    # 5. central finite differences -------------------------------------------------------
    fd = {}
    for h in (FD_STEPS if small else FD_STEPS[:1]):
        out, t_fd, steps = [], 0.0, []
        for sgn in (1, -1):
            p = params_of(base, pot, {WRT1: sgn * h})
            t0 = time.perf_counter()
            rr = relax(relaxation.system, model, params=p, fmax=FD_FMAX, max_steps=100000,
                       nbrs=relaxation.nbrs, on_failure="ignore")
            block(rr.system.positions)
            t_fd += time.perf_counter() - t0
            steps.append(rr.steps)
            out.append(np.asarray(rr.system.positions))
            if not rr.converged:
                notes.append(f"{name}: FD relaxation at h={h} did not converge: {rr.message}")
        dR_fd = (out[0] - out[1]) / (2 * h)
        fd[h] = dict(time=t_fd, steps=steps, err=rel(centred(dR_fd), centred(xdot)))
        print(f"FD h={h:g}: {t_fd:.2f} s for 2 relaxations ({steps} steps), rel diff vs "
              f"implicit {fd[h]['err']:.1e}", flush=True)
    res["fd"] = fd

    # 6. unrolled FIRE ------------------------------------------------------------------------
    R0 = jnp.asarray(system.positions)
    nb0 = model.allocate(R0, cell)
    run = make_unrolled(model, cell, R0, nb0, base)
    K_run = K if n <= 4000 else min(K, 100)

    def unrolled_jvp(K_):
        @jax.jit
        def f(R0_dummy):
            def pos(t):
                return run(params_of(base, pot, {WRT1: t}), K_)
            (Rf, over), (dRf, _) = jax.jvp(pos, (0.0,), (1.0,))
            return Rf, over, dRf
        return f

    fj = unrolled_jvp(K_run)
    (Rf, over, dRf), c_un, t_un, comp = compile_and_time(fj, (R0,), 1)
    t_un_full = t_un * K / K_run
    un = dict(compile=c_un, time=t_un_full, K_run=K_run,
              temp=comp.memory_analysis().temp_size_in_bytes / MB)
    if K_run == K:
        un["err"] = rel(centred(dRf), centred(xdot))
        un["pos_diff"] = float(np.max(np.abs(np.asarray(Rf) - np.asarray(R_star))))
        un["overflow"] = bool(over)
    print(f"unrolled JVP ({K_run} of {K} steps timed): compile {c_un:.2f} s, run "
          f"{t_un:.2f} s -> {t_un_full:.2f} s for K; {un}", flush=True)

    # reverse through the unroll: memory always, run only at small N
    def unrolled_grad(K_):
        def loss(th):
            Rf, _ = run(params_of(base, pot, th), K_)
            return distance(Rf)
        return jax.jit(jax.grad(loss))

    g = unrolled_grad(K)
    t0 = time.perf_counter()
    comp_g = g.lower(theta0).compile()
    un["vjp_compile"] = time.perf_counter() - t0
    un["vjp_temp"] = comp_g.memory_analysis().temp_size_in_bytes / MB
    if small and un["vjp_temp"] < VJP_RUN_MAX_MIB:
        block(comp_g(theta0))
        gr, t_ug, _ = timed(lambda: comp_g(theta0), 1)
        un["vjp_time"] = t_ug
        un["vjp_err"] = rel(np.array([gr[k] for k in wrt_all]),
                            np.array([tbar[k] for k in wrt_all]))
    print(f"unrolled VJP: {un}", flush=True)
    res["unrolled"] = un

    # 7. jaxopt ---------------------------------------------------------------------------------
    try:
        from jaxopt import implicit_diff as jid
        from jaxopt import linear_solve as jls
    except ImportError:
        notes.append("jaxopt not installed (pip install -e .[bench-jaxopt]): skipped")
        res["jaxopt"] = None
    else:
        def jx(obs, solve=None):
            kw = {} if solve is None else {"solve": solve}
            root = jid.custom_root(F, **kw)(lambda init, theta: lax.stop_gradient(R_star))
            return jax.jit(jax.grad(lambda th: obs(root(R_star, th))))

        jo = {}
        variants = [("distance, default (normal CG)", distance, None)]
        if small:
            variants += [("x of atom 0, default (normal CG)", lambda R: R[0, 0], None)]
        if n <= 128:  # plain CG on the inconsistent system runs to jax's maxiter (10 n)
            variants += [("x of atom 0, solve_cg", lambda R: R[0, 0], jls.solve_cg)]
        for label, obs, slv in variants:
            f = jx(obs, slv)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                gr, c_jo, t_jo, _ = compile_and_time(f, (theta0,), reps)
            if obs is distance:
                ref = tbar
            else:  # mdsens min-norm VJP of the same observable
                xb = jax.grad(obs)(R_star)
                (ref,), _ = root_vjp(F, R_star, (theta0,), xb, solve=solve, on_failure="ignore")
            vec = np.array([gr[k] for k in wrt_all])
            refv = np.array([ref[k] for k in wrt_all])
            jo[label] = dict(compile=c_jo, time=t_jo, err=rel(vec, refv),
                             finite=bool(np.all(np.isfinite(vec))),
                             max_abs=float(np.max(np.abs(vec))),
                             ref_max_abs=float(np.max(np.abs(refv))))
            print(f"jaxopt {label}: {jo[label]}", flush=True)
        res["jaxopt"] = jo
    rows.append(res)


# ------------------------------------------------------------------------------ report


def fmt(x, nd=3):
    return "–" if x is None else f"{x:.{nd}f}"


def report(rows, notes):
    print("\n## Times (s; run = median after warm-up compilation, compile apart)\n")
    print("| system | N | relax (steps) | relax compile | HVP ms autodiff / assembled (FIRE "
          "steps) | core JVP | "
          "core VJP | core all (n) | CG it JVP/VJP | sensitivity() JVP / VJP / all "
          "(first calls) | "
          "FD per param (h=1e-5) | unrolled JVP | unrolled VJP (temp MiB) | jaxopt VJP |")
    print("|---|---:|---|---:|---|---:|---:|---|---|---|---:|---|---|---|")
    for r in rows:
        un, fd = r["unrolled"], r["fd"][1e-5]
        jo = (r["jaxopt"] or {}).get("distance, default (normal CG)")
        print(f"| {r['case']} | {r['N']} | {r['relax']:.2f} ({r['steps']}) | "
              f"{r['relax_compile']:.2f} | {1e3 * r['hvp']:.2f} / "
              f"{fmt(r['hvp_assembled'] and 1e3 * r['hvp_assembled'], 2)} "
              f"({r['hvp'] / (r['relax'] / r['steps']):.2f} / "
              f"{fmt(r['hvp_assembled'] and r['hvp_assembled'] / (r['relax'] / r['steps']), 2)})"
              f" | {r['core_jvp']:.3f} | "
              f"{r['core_vjp']:.3f} | {r['core_all']:.3f} ({r['n_params']}) | "
              f"{r['it_jvp']}/{r['it_vjp']} | {r['sens_jvp2']:.2f} / {r['sens_vjp']:.2f} / "
              f"{r['sens_all']:.2f} ({r['sens_jvp_first']:.1f} / {r['sens_vjp_first']:.1f} / "
              f"{r['sens_all_first']:.1f}) | {fd['time']:.2f} | "
              f"{un['time']:.2f}{'' if un['K_run'] == r['steps'] else ' (scaled)'} | "
              f"{fmt(un.get('vjp_time'), 2)} ({un['vjp_temp']:.0f}) | "
              f"{fmt(jo and jo['time'], 3)} |")
    print("\n## Ratios to the relaxation (same run)\n")
    print("| system | N | core JVP | core VJP | core all | sensitivity() JVP | "
          "sensitivity() VJP | sensitivity() all | FD 1 param | FD all | unrolled JVP | "
          "unrolled VJP | jaxopt VJP | target JVP/VJP ≤ 0.2 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        t = r["relax"]
        un, fd = r["unrolled"], r["fd"][1e-5]
        jo = (r["jaxopt"] or {}).get("distance, default (normal CG)")
        core = max(r["core_jvp"], r["core_vjp"]) / t
        sens = max(r["sens_jvp2"], r["sens_vjp"]) / t
        print(f"| {r['case']} | {r['N']} | {r['core_jvp'] / t:.3f} | {r['core_vjp'] / t:.3f} | "
              f"{r['core_all'] / t:.3f} | {r['sens_jvp2'] / t:.3f} | {r['sens_vjp'] / t:.3f} | "
              f"{r['sens_all'] / t:.3f} | {fd['time'] / t:.2f} | "
              f"{r['n_params'] * fd['time'] / t:.2f} | {un['time'] / t:.2f} | "
              f"{fmt(un.get('vjp_time') and un['vjp_time'] / t, 2)} | "
              f"{fmt(jo and jo['time'] / t, 3)} | core {'yes' if core <= 0.2 else 'no'} "
              f"({core:.3f}), sensitivity() {'yes' if sens <= 0.2 else 'no'} ({sens:.3f}) |")
    print("\n## Agreement (relative 2-norm difference)\n")
    print("| system | FD h=1e-5 vs implicit | FD h=1e-6 | unrolled JVP vs implicit | "
          "unrolled VJP vs implicit | jaxopt VJP vs mdsens | sensitivity() vs core | "
          "<w,Jv> vs <Jᵀw,v> |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        un, fd = r["unrolled"], r["fd"]
        jo = (r["jaxopt"] or {}).get("distance, default (normal CG)")
        print(f"| {r['case']} | {fd[1e-5]['err']:.1e} | "
              f"{fd[1e-6]['err']:.1e} | " if 1e-6 in fd else
              f"| {r['case']} | {fd[1e-5]['err']:.1e} | – | ", end="")
        print(f"{un['err']:.1e} | " if "err" in un else "– (partial run) | ", end="")
        print(f"{un['vjp_err']:.1e} | " if "vjp_err" in un else "– | ", end="")
        print(f"{jo['err']:.1e} | " if jo else "– | ", end="")
        print(f"{r['sens_vs_core']:.1e} | {r['transpose']:.1e} |")
    print("\n## sensitivity() timings breakdown (second JVP call; s)\n")
    for r in rows:
        print(f"- {r['case']}: settings {r['sens_settings']}; JVP {r['sens_timings']}; "
              f"VJP {r['sens_vjp_timings']}; all {r['sens_all_timings']}; CG iterations "
              f"{r['sens_it']}; zero modes {r['sens_zero']}")
        if "sens_default" in r:
            print(f"  - default rattlers='auto' (rattler scan, N·d HVPs): "
                  f"{r['sens_default']:.2f} s, {r['sens_default_timings']}")
    print("\n## jaxopt variants\n")
    for r in rows:
        for k, v in (r["jaxopt"] or {}).items():
            print(f"- {r['case']} {k}: {v}")
    print("\n## unrolled details\n")
    for r in rows:
        print(f"- {r['case']}: {r['unrolled']}; FD {r['fd']}")
    for note in notes:
        print("NOTE:", note)


# ------------------------------------------------------------------------------ EAM tables

EAM_FILE = Path(__file__).resolve().parents[1] / "data" / "potentials" / "Cu_u3.eam"
EAM_CASES = {"eam4": 1, "eam32": 2, "eam108": 3}  # fcc Cu, cubic cell repeated n × n × n
EAM_RELAX = {"relax_cell": True, "fmax": 1e-11, "stress_tol": 1e-12, "max_steps": 100000}
EAM_TABLES = ["F", "rho", "z2r"]
EAM_FD_STEP = 1e-7  # eV, on one knot of F


def fcc_cu(reps, a=3.615):
    """fcc Cu, the cubic 4-atom cell repeated ``reps`` times along each axis (N = 4 reps³)."""
    base = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    g = np.stack(np.meshgrid(*[np.arange(reps)] * 3, indexing="ij"), -1).reshape(-1, 3)
    R = (g[:, None, :] + base[None]).reshape(-1, 3) * a
    return System.create(R, cell=np.eye(3) * reps * a, species=["Cu"] * len(R))


def eam_case(name):
    """One EAM case (run in a fresh process: ``peak_rss_mib`` is this case's peak)."""
    import resource

    jax.config.update("jax_enable_x64", True)
    system = fcc_cu(EAM_CASES[name])
    pot = potentials.get("eam", file=EAM_FILE)
    model = build(system, pot)
    tables = {k: np.asarray(v) for k, v in pot.params.items()}
    out = {"case": name, "N": system.n_atoms, "internal": system.n_atoms * model.n_copies,
           "knots": int(sum(tables[k].size for k in EAM_TABLES))}
    t0 = time.perf_counter()
    rel = relax(system, model, **EAM_RELAX)
    out["relax"], out["steps"] = time.perf_counter() - t0, int(rel.steps)

    def call(params=None, wrt=EAM_TABLES, relaxation=rel):
        t0 = time.perf_counter()
        res = sensitivity(relaxation.system, model, wrt=wrt,
                          observables=["elastic_constants"], relax_cell=True,
                          relaxation=relaxation, params=params, relax_options=EAM_RELAX)
        return res, time.perf_counter() - t0

    res, out["first"] = call()
    out["first_elastic"] = res.diagnostics["timings"]["elastic"]
    res2, out["second"] = call()
    out["second_elastic"] = res2.diagnostics["timings"]["elastic"]
    out["mode"] = res.diagnostics["elastic_solves"]["mode"]
    out["converged"] = bool(res.converged)
    out["same"] = float(np.abs(res.derivatives["elastic_constants"]["F"]
                               - res2.derivatives["elastic_constants"]["F"]).max())
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["C11_C12_C44_GPa"] = [float(160.21766 * res.values["elastic_constants"][i, j])
                              for i, j in ((0, 0), (0, 1), (3, 3))]

    # central difference of C for the F knot with the largest derivative
    d = res.derivatives["elastic_constants"]["F"]
    k = np.unravel_index(np.argmax(np.abs(d).reshape(36, -1).max(axis=0)), tables["F"].shape)
    values = []
    for sign in (1.0, -1.0):
        params = {key: v.copy() for key, v in tables.items()}
        params["F"][k] += sign * EAM_FD_STEP
        rel_h = relax(system, model, params=params, **EAM_RELAX)
        values.append(call(params, ["pressure"], rel_h)[0].values["elastic_constants"])
    fd = (values[0] - values[1]) / (2 * EAM_FD_STEP)
    analytic = d[(..., *k)]
    out["fd_knot"] = int(k[-1])
    out["fd_rel_err"] = float(np.abs(fd - analytic).max() / np.abs(analytic).max())
    return out


def run_eam_case(name, eam_rows):
    print(f"\n=== {name}: EAM Cu_u3, elastic constants wrt the tables ===", flush=True)
    with concurrent.futures.ProcessPoolExecutor(
            1, mp_context=multiprocessing.get_context("spawn")) as pool:
        r = pool.submit(eam_case, name).result()
    print(r, flush=True)
    eam_rows.append(r)


def report_eam(eam_rows):
    print("\n## Elastic constants wrt EAM tables (s; MiB)\n")
    print("| system | N (internal) | knots | relax (steps) | sensitivity() first call "
          "(elastic stage) | second call (elastic stage) | compile ≈ | peak RSS | mode | "
          "FD rel. err (F knot) |")
    print("|---|---|---:|---|---|---|---:|---:|---|---|")
    for r in eam_rows:
        print(f"| {r['case']} | {r['N']} ({r['internal']}) | {r['knots']} | "
              f"{r['relax']:.1f} ({r['steps']}) | {r['first']:.1f} ({r['first_elastic']:.1f}) | "
              f"{r['second']:.1f} ({r['second_elastic']:.1f}) | "
              f"{r['first_elastic'] - r['second_elastic']:.1f} | {r['peak_rss_mib']:.0f} | "
              f"{r['mode']} | {r['fd_rel_err']:.1e} (k = {r['fd_knot']}) |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="soft128 and lj1000 only")
    ap.add_argument("--cases", nargs="*", default=None,
                    help=f"of {', '.join([*CASES, *EAM_CASES])}")
    args = ap.parse_args()
    cases = args.cases or (["soft128", "lj1000"] if args.quick
                           else ["soft128", "lj1000", "lj4000", "lj10000"])
    print(f"python {platform.python_version()}, jax {jax.__version__}, "
          f"{platform.processor() or platform.machine()}, cpus {os.cpu_count()}, "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    rows, notes, eam_rows = [], [], []
    t0 = time.perf_counter()
    for c in cases:
        if c in EAM_CASES:
            run_eam_case(c, eam_rows)
        else:
            run_case(c, args.quick, rows, notes)
    if rows:
        report(rows, notes)
    if eam_rows:
        report_eam(eam_rows)
    print(f"\ntotal wall {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
