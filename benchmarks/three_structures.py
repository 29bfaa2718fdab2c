r"""Gradient of a loss over three relaxed structures: implicit differentiation vs central
differences of re-relaxed structures.

Setup (EAM copper, Cu_u3 of Foiles, Baskes & Daw 1986, ``data/potentials/Cu_u3.eam``): the
potential's three tables are scaled by θ = (s_F, s_ρ, s_φ),

    F(ρ̄) → s_F F(ρ̄),    ρ(r) → s_ρ ρ(r),    φ(r) → s_φ φ(r),

and three observables come from two :func:`mdsens.relaxed_state` functions of θ:

* bulk fcc (4-atom cubic cell, positions and cell relaxed): lattice constant a (Å), energy
  per atom e, and the relaxed C44 (GPa; a derivative through a further fixed-cell root);
* a vacancy in the 2×2×2 supercell (31 atoms, positions and cell relaxed): energy E_v, so
  E_vac = E_v − 31 e (eV, zero-pressure formation energy).

The loss is L(θ) = Σ_k ((o_k(θ) − t_k)/t_k)² with t = (3.615 Å, 1.28 eV, 81.8 GPa), at
θ = (1, 1, 1).

Methods, each timed as a first call (tracing + XLA compilation + one run) and warm calls
(median of ``--repeats``):

(a) implicit: ``jax.jit(jax.value_and_grad(L))`` — one relaxation of each structure inside
    the program, the gradient by adjoint solves at the three roots;
(b) central differences: ``jax.jit(observables)`` at θ ± h e_k (k = 1…3: six evaluations,
    each re-relaxing both structures from the reference structures), L from the observables,
    ∂L/∂θ_k = (L(θ + h e_k) − L(θ − h e_k)) / 2h; the warm time is that of all six;
(c) independent check of a and E_vac: the host driver ``mdsens.md.relax`` (cell relaxed, to
    ``--host-tol``: fmax in eV/Å and stress_tol in eV/Å³, default 1e-12, far below the 1e-8
    eV/Å and ≈ 1.9e-9 eV/Å³ of the relaxations of (a) and (b)) at θ ± h e_k from the same
    start structures, then a fresh energy evaluation
    of the relaxed structures (``EnergyModel.energy`` with a newly allocated neighbour list):
    central differences of a and E_vac compared with those of (b) and with the implicit
    Jacobian rows ``jax.jacrev`` of the same observables (compiled after the timings).

Central differences of a relaxed quantity carry a bias of the order of (relaxation
tolerance) / (2h · stiffness): a relaxation that stops at ``stress_tol`` falls short of the
minimum on both sides of θ, so the difference quotient of a (and of C44, which depends on a)
is too small by ≈ 2e-5 relative at the default tolerances and h = 1e-4; the energy is
stationary there and E_vac is not affected. The tight host relaxations of (c) remove it.

The setup (two reference relaxations on the host, made once when the relaxed-state
functions are built) is reported separately. Relative agreement is ‖g_a − g_b‖ / ‖g_b‖.
``--clock cpu`` times by the process's CPU time (all threads of the process) instead of the
wall clock, for a machine shared with other jobs; the table says which clock it used. Run::

    PYTHONPATH=. .venv/bin/python benchmarks/three_structures.py [--clock cpu] [--h 1e-4]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

from ase.build import bulk  # noqa: E402

from mdsens import potentials, relaxed_state  # noqa: E402
from mdsens.md import relax  # noqa: E402

GPA = 160.21766208  # 1 eV/Å³ in GPa
CU_U3 = Path(__file__).resolve().parents[1] / "data" / "potentials" / "Cu_u3.eam"
TARGETS = np.array([3.615, 1.28, 81.8])  # a (Å), E_vac (eV), C44 (GPa)
NAMES = ("s_F", "s_rho", "s_phi")


def build():
    """The potential, ``params_fn``, the two relaxed-state functions and ``observables``."""
    pot = potentials.get("eam", file=str(CU_U3))
    tables = {k: jnp.asarray(v) for k, v in pot.params.items()}

    def params_fn(theta):
        return {"F": theta[0] * tables["F"], "rho": theta[1] * tables["rho"],
                "z2r": theta[2] * tables["z2r"]}

    cell = bulk("Cu", "fcc", a=3.615, cubic=True)
    supercell = cell.repeat(2)
    n = len(supercell)
    del supercell[0]
    bulk_fn = relaxed_state(cell, pot, params_fn=params_fn, relax_cell=True,
                            elastic_constants=True)
    vacancy_fn = relaxed_state(supercell, pot, params_fn=params_fn, relax_cell=True)

    def observables(theta):
        b, v = bulk_fn(theta), vacancy_fn(theta)
        return jnp.stack([b.cell[0, 0], v.energy - (n - 1) * b.energy_per_atom,
                          GPA * b.elastic_constants[3, 3]])

    return params_fn, bulk_fn, vacancy_fn, observables, n


def loss_of(o):
    return jnp.sum(((o - TARGETS) / TARGETS) ** 2)


def timed(fn: Callable, clock: Callable[[], float]):
    t0 = clock()
    out = jax.block_until_ready(fn())
    return out, clock() - t0


def host_observables(theta, params_fn, bulk_fn, vacancy_fn, n, tol):
    """(a, E_vac) from the host driver at θ: ``relax`` from the start structures of the
    relaxed-state functions, then a fresh energy evaluation of each relaxed structure."""
    params = {k: np.asarray(v) for k, v in params_fn(jnp.asarray(theta)).items()}
    out = []
    for fn in (bulk_fn, vacancy_fn):
        full = {**fn.params, **params}
        r = relax(fn.reference.system, fn.model, fmax=tol, stress_tol=tol, relax_cell=True,
                  max_steps=100_000, params=full)
        R = jnp.asarray(r.system.positions)
        C = jnp.asarray(r.system.cell)
        energy = float(fn.model.energy(R, C, full, fn.model.allocate(R, C)))
        out.append((float(C[0, 0]), energy, r.steps))
    (a, e_bulk, s1), (_, e_vac_cell, s2) = out
    return np.array([a, e_vac_cell - (n - 1) * e_bulk / 4]), s1 + s2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--h", type=float, default=1e-4, help="central-difference step")
    parser.add_argument("--host-tol", type=float, default=1e-12,
                        help="fmax (eV/Å) and stress_tol (eV/Å³) of the host relaxations")
    parser.add_argument("--no-host", action="store_true", help="skip the host-driver check")
    args = parser.parse_args()
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    h = args.h
    theta = jnp.ones(3)

    t0 = clock()
    params_fn, bulk_fn, vacancy_fn, observables, n = build()
    t_setup = clock() - t0

    # (a) implicit
    vg = jax.jit(jax.value_and_grad(lambda th: loss_of(observables(th))))
    (value, g_imp), t_imp_first = timed(lambda: vg(theta), clock)
    t_imp = statistics.median(timed(lambda: vg(theta), clock)[1] for _ in range(args.repeats))
    g_imp = np.asarray(g_imp)

    # (b) central differences through the traced relaxations
    evaluate = jax.jit(observables)
    o0, t_fd_first = timed(lambda: evaluate(theta), clock)
    steps = [h * np.eye(3)[k] for k in range(3)]

    def six():
        return [(evaluate(theta + s), evaluate(theta - s)) for s in steps]

    t_fd = []
    for _ in range(args.repeats):
        pairs, t = timed(six, clock)
        t_fd.append(t)
    t_fd = statistics.median(t_fd)
    obs_fd = np.stack([(np.asarray(p) - np.asarray(m)) / (2 * h) for p, m in pairs], axis=1)
    g_fd = np.array([(float(loss_of(p)) - float(loss_of(m))) / (2 * h) for p, m in pairs])
    rel = np.linalg.norm(g_imp - g_fd) / np.linalg.norm(g_fd)

    clock_name = "process CPU s" if args.clock == "cpu" else "wall s"
    print(f"EAM Cu_u3, θ = (1, 1, 1), L = {float(value):.6e}; observables a = {o0[0]:.6f} Å, "
          f"E_vac = {o0[1]:.6f} eV, C44 = {o0[2]:.4f} GPa; h = {h:g}; clock: {clock_name}")
    print(f"setup (two host reference relaxations, built once): {t_setup:.2f}")
    print()
    print(f"| method | first call ({clock_name}) | warm ({clock_name}, median of "
          f"{args.repeats}) | dL/dθ (s_F, s_ρ, s_φ) |")
    print("|---|---:|---:|---|")
    fmt = lambda g: ", ".join(f"{x:+.8e}" for x in g)  # noqa: E731
    print(f"| implicit, jit(value_and_grad) | {t_imp_first:.2f} | {t_imp:.3f} | {fmt(g_imp)} |")
    print(f"| central differences, 6 × jit(observables) | {t_fd_first:.2f} (one call) | "
          f"{t_fd:.3f} (six calls) | {fmt(g_fd)} |")
    print()
    print(f"relative agreement ‖g_implicit − g_fd‖/‖g_fd‖ = {rel:.2e}; per component "
          f"{np.abs(g_imp - g_fd) / np.abs(g_fd)}")
    print(f"warm time ratio (central differences / implicit) = {t_fd / t_imp:.2f}")

    if args.no_host:
        return
    # (c) host driver check of a and E_vac; the implicit Jacobian of the same observables
    jac = np.asarray(jax.jit(jax.jacrev(observables))(theta))
    t0 = clock()
    host = []
    host_steps = 0
    for s in steps:
        p, sp = host_observables(theta + s, params_fn, bulk_fn, vacancy_fn, n,
                                 args.host_tol)
        m, sm = host_observables(theta - s, params_fn, bulk_fn, vacancy_fn, n,
                                 args.host_tol)
        host.append((p - m) / (2 * h))
        host_steps += sp + sm
    t_host = clock() - t0
    host = np.stack(host, axis=1)  # (2, 3): d(a, E_vac)/dθ
    print()
    print(f"host driver check (relax to fmax = stress_tol = {args.host_tol:g} + fresh energy, "
          f"12 relaxations, {host_steps} FIRE steps, {t_host:.1f} {clock_name}):")
    print("| d/dθ | implicit (jacrev) | traced central diff. | host central diff. | "
          "max rel. diff. host vs implicit |")
    print("|---|---|---|---|---:|")
    for i, name in enumerate(("a", "E_vac", "C44")):
        hd = host[i] if i < 2 else None
        cell = fmt(hd) if hd is not None else "—"
        rd = (f"{np.max(np.abs(hd - jac[i]) / np.abs(jac[i])):.1e}" if hd is not None
              else "—")
        print(f"| {name} | {fmt(jac[i])} | {fmt(obs_fd[i])} | {cell} | {rd} |")
    print(f"implicit Jacobian vs traced central differences: max rel. diff. "
          f"{np.max(np.abs(jac - obs_fd) / np.abs(jac)):.1e}")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")


if __name__ == "__main__":
    main()
