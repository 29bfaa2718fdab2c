"""FIRE's own constants measured: steps on crystals and glasses, landings on the corpus.

Each variant is a set of keyword arguments of ``mdsens.md.minimize.fire`` (FIRE's
constants: ``alpha_start``, ``n_min``, ``f_alpha``, ``f_inc``, ``f_dec``) and, optionally,
``dt_max`` (a ``RelaxOptions`` field). A variant runs in a fresh process whose relaxation
loop builds FIRE with those constants (``mdsens.md._relax_loop.fire`` replaced by a
``functools.partial``: the compiled loop is per process, so variants never share one), and
relaxes with ``mdsens.md.relax`` and its defaults otherwise:

* ``bench``: relax.py's fcc starts (N = 4000 and 32000, 0.05σ noise, relax.py's draws)
  and three more N = 4000 draws; the Kob–Andersen glass N = 4000 from relax.py's draw and
  ``--glass-seeds`` more (uniform random starts pre-relaxed with the default FIRE to
  max|F| ≤ 1 once, shared by every variant); every relaxation to max|F| ≤ 1e-8; steps;
* ``corpus``: the cases of ``robustness.py`` with their tolerances and step limit, the end
  points judged as there (fmax and energy recomputed, lowest Hessian eigenvalue): landed,
  false converged (and why), steps.

Run from the repository root on a quiet machine (two variants run side by side, one core
each)::

    PYTHONPATH=. .venv/bin/python benchmarks/fire_constants.py \
        --variant default: --variant a25:alpha_start=0.25 [--parts bench corpus]

About 4 min of bench and 3 min of corpus per variant on one core.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
FCC_SEEDS = (21, 22, 23)


def parse_variant(text: str) -> tuple[str, dict]:
    """``name:key=value,key=value`` -> (name, settings); ints stay ints."""
    name, _, spec = text.partition(":")
    settings = {}
    for part in filter(None, spec.split(",")):
        key, value = part.split("=")
        settings[key] = int(value) if value.lstrip("-").isdigit() else float(value)
    return name, settings


def starts(glass_seeds: int, workdir: str) -> list[str]:
    """The start structures as npz files (made once, shared by every variant)."""
    import jax
    import numpy as np

    jax.config.update("jax_enable_x64", True)
    sys.path.insert(0, HERE)
    import relax as rb

    from mdsens.md import build, relax

    def save(name, system):
        path = os.path.join(workdir, f"{name}.npz")
        np.savez(path, positions=np.asarray(system.positions), cell=np.asarray(system.cell),
                 species=np.asarray(system.species),
                 species_names=np.array(list(system.species_names)))
        return path

    def glass(rng):
        start = rb.ka_random(4000, rng)
        return relax(start, build(start, rb.ka_potential()), fmax=1.0, max_steps=100_000,
                     method="fire").system

    rng = np.random.default_rng(rb.SEED)  # relax.py's order of draws
    paths = [save("fcc_4000", rb.fcc(4000, rng)), save("fcc_32000", rb.fcc(32000, rng)),
             save("glass_4000", glass(rng))]
    paths += [save(f"fcc_4000_s{s}", rb.fcc(4000, np.random.default_rng(s)))
              for s in FCC_SEEDS]
    paths += [save(f"glass_4000_s{s}", glass(np.random.default_rng(s)))
              for s in range(11, 11 + glass_seeds)]
    return paths


def worker(config_path: str) -> None:
    """One variant, in this fresh process."""
    import functools

    import jax
    import numpy as np

    jax.config.update("jax_enable_x64", True)
    sys.path.insert(0, HERE)
    import jax.numpy as jnp
    import relax as rb
    import robustness as rob

    import mdsens.md._relax_loop as loop
    from mdsens.md import System, build, lennard_jones, relax
    from mdsens.md.minimize import fire

    with open(config_path) as fh:
        cfg = json.load(fh)
    settings = dict(cfg["settings"])
    options = {"dt_max": settings.pop("dt_max")} if "dt_max" in settings else {}
    if settings:
        loop.fire = functools.partial(fire, **settings)
    out = {"bench": {}, "corpus": {}}
    if "bench" in cfg["parts"]:
        for path in cfg["starts"]:
            z = np.load(path)
            system = System.create(z["positions"], z["cell"], species=z["species"],
                                   species_names=tuple(str(s) for s in z["species_names"]))
            name = os.path.basename(path)[:-4]
            pot = (rb.ka_potential() if name.startswith("glass")
                   else lennard_jones(r_onset=rb.R_ONSET, r_cutoff=rb.R_CUT))
            res = relax(system, build(system, pot), fmax=1e-8, max_steps=200_000,
                        on_failure="ignore", method="fire", **options)
            out["bench"][name] = {"steps": int(res.steps), "converged": bool(res.converged),
                                  "energy": float(res.energy)}
            print(f"  [{cfg['name']}] {name}: {res.steps} steps", flush=True)
    if "corpus" in cfg["parts"]:
        args = argparse.Namespace(hess_tol=1e-7, dense_max=800, fmax=1e-6)
        for case in rob.CASES:
            setup = case.make()
            system = setup.system
            n, d = system.positions.shape
            fmax = 1e-6 * setup.force_unit
            stol = fmax / (rob.volume(system.cell) / n) ** ((d - 1) / d)
            model = build(system, setup.potential)
            try:
                res = relax(system, model, fmax=fmax, max_steps=10_000,
                            relax_cell=case.relax_cell, on_failure="ignore", method="fire",
                            **options)
                rec = {"status": res.status.name.lower(), "claimed": bool(res.converged),
                       "steps": int(res.steps), "R": np.asarray(res.system.positions),
                       "cell": np.asarray(res.system.cell)}
            except Exception as exc:  # noqa: BLE001 (reported as the case's outcome)
                rec = {"status": "error", "claimed": False, "steps": None,
                       "error": str(exc)[:200]}
            fns = rob.Functions(model, jnp.asarray(system.positions), jnp.asarray(system.cell))
            rob.judge(setup, fns, rec, fmax, case.relax_cell, args, [])
            rob.classify(rec, fmax, stol, case.relax_cell)
            out["corpus"][case.name] = {k: rec.get(k) for k in (
                "status", "steps", "landed", "false_converged", "false_reason", "lambda_min")}
            print(f"  [{cfg['name']}] {case.name}: {rec['status']} {rec.get('steps')}"
                  f"{' FALSE ' + rec['false_reason'] if rec['false_converged'] else ''}",
                  flush=True)
    with open(cfg["out"], "w") as fh:
        json.dump(out, fh)


def report(results: dict) -> None:
    names = list(results)
    bench = sorted({k for r in results.values() for k in r["bench"]})
    if bench:
        print("\n## Steps to max|F| <= 1e-8 (FIRE, the variant's constants)")
        print("| start | " + " | ".join(names) + " |")
        print("|---|" + "---:|" * len(names))
        for start in bench:
            print(f"| {start} | " + " | ".join(
                str(results[v]["bench"].get(start, {}).get("steps", "–")) for v in names) + " |")
        glass = [s for s in bench if s.startswith("glass")]
        print("| glass total | " + " | ".join(
            str(sum(results[v]["bench"][s]["steps"] for s in glass
                    if s in results[v]["bench"])) for v in names) + " |")
    if any(r["corpus"] for r in results.values()):
        print("\n## Robustness corpus")
        print("| variant | landed | false converged | cases |")
        print("|---|---:|---:|---|")
        for v in names:
            cases = results[v]["corpus"]
            false = [f"{k} ({c['false_reason']}, λ_min {c['lambda_min']:.1e})"
                     for k, c in cases.items() if c["false_converged"]]
            print(f"| {v} | {sum(bool(c['landed']) for c in cases.values())} / {len(cases)} "
                  f"| {len(false)} | {'; '.join(false) or '–'} |")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", action="append", required=True,
                   help="name:key=value,... (FIRE constants, dt_max); 'default:' for none")
    p.add_argument("--parts", nargs="+", default=["bench", "corpus"],
                   choices=["bench", "corpus"])
    p.add_argument("--glass-seeds", type=int, default=4, help="glass starts beyond relax.py's")
    p.add_argument("--json", default=None, help="write the results to this file")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args.worker)
        return
    variants = [parse_variant(v) for v in args.variant]
    t0 = time.perf_counter()
    results = {}
    with tempfile.TemporaryDirectory() as workdir:
        paths = starts(args.glass_seeds, workdir) if "bench" in args.parts else []
        cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "XLA_FLAGS":
               "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"}
        pending = list(enumerate(variants))
        while pending:  # one variant per core at a time
            batch, pending = pending[:len(cores)], pending[len(cores):]
            procs = []
            for slot, (i, (name, settings)) in enumerate(batch):
                cfg = os.path.join(workdir, f"variant{i}.json")
                out = os.path.join(workdir, f"result{i}.json")
                with open(cfg, "w") as fh:
                    json.dump({"name": name, "settings": settings, "parts": args.parts,
                               "starts": paths, "out": out}, fh)
                cmd = ["taskset", "-c", str(cores[slot]), sys.executable, __file__,
                       "--variant", "x:", "--worker", cfg]
                procs.append((name, out, subprocess.Popen(cmd, env=env)))
            for name, out, proc in procs:
                if proc.wait() != 0:
                    raise SystemExit(f"variant {name} failed")
                with open(out) as fh:
                    results[name] = json.load(fh)
    report(results)
    print(f"\ntotal wall {time.perf_counter() - t0:.0f} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
