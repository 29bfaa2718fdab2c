r"""Sensitivities of relaxed structures by implicit differentiation.

The relaxed state is a root of the optimality condition

* fixed cell: :math:`F(\tilde R, \theta) = \nabla_{\tilde R}\, E(\tilde R (I+\eta),\;
  C_0 (I+\eta);\; p)` with unknowns :math:`\tilde R` (N, d) — positions in the frame of the
  undeformed cell — and parameters :math:`\theta = (p, \eta)`: potential parameters ``p``
  and an applied Voigt strain :math:`\eta` (zero at the reference);
* relaxing cell: unknowns :math:`x = (\tilde R, \varepsilon)` with :math:`\varepsilon` a
  symmetric strain of the relaxed cell :math:`C_0` (Voigt, engineering shears) and
  :math:`F = \nabla_x [E(\tilde R(I+\varepsilon), C_0(I+\varepsilon); p) + P\det C]`, so
  :math:`\partial_\varepsilon` gives :math:`V(\sigma + P I)` — force and stress balance.

By the implicit function theorem :math:`H\,\dot x = -\partial_\theta F\,\dot\theta` with
:math:`H = \partial_x F` the (symmetric) Hessian. It is solved matrix-free: Hessian-vector
products by forward-over-reverse differentiation, linearised once per solve, the neighbour
list frozen at the relaxed state, CG by default (optionally Jacobi / per-atom block-Jacobi
preconditioned).

Zero modes. :math:`H` is singular along rigid translations (and rotations of free clusters)
and along rattlers (directions of an atom with no stiffness, found from the per-atom diagonal
blocks of :math:`H`). Solves run on the complement of these modes, giving the minimum-norm
solution: derivatives are reported in the frame that fixes the centre of mass (no rigid
rotation, rattlers do not move), and forward (JVP) and reverse (VJP) mode use the same
pseudo-inverse, so :math:`\langle w, J v\rangle = \langle J^\top w, v\rangle`. The part of a
right-hand side along the zero modes (e.g. :math:`\partial(\text{observable})/\partial R` of
an observable that is not translation invariant) is removed and reported.

Curvature. CG stops on negative curvature (:math:`p^\top H p \le 0`), and a short Lanczos
run estimates the smallest eigenvalue of :math:`H` on the complement of the zero modes: a
negative value means the relaxed state is a saddle, not a minimum, and the derivatives are
flagged.

Elastic constants are the derivative of the Voigt stress with respect to the applied strain
through the relaxation (fixed cell), :math:`C = d\sigma/d\eta`: the affine (Born) term minus
the non-affine relaxation :math:`\Xi^\top H^+ \Xi`, here in one code path. With a residual
stress :math:`\sigma_0 \ne 0` this is the derivative of the Cauchy stress, which differs
from the energy's second strain derivative by terms linear in :math:`\sigma_0`
(Wallace 1972); relax the cell first (``relax_cell=True``) for the usual constants at zero
stress.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from ..implicit import SolveInfo, Status, root_jvp, root_vjp
from ..implicit.bounds import lanczos_ritz
from . import observables as obs_mod
from . import zero_modes
from ._problem import RootProblem, initial_theta, make_preconditioner, make_solver, parse_wrt
from .elastic import elastic_constants
from .minimize import relax
from .model import build
from .strain import n_voigt
from .system import System

Array = jax.Array
Mode = Literal["auto", "forward", "reverse"]
Policy = Literal["raise", "warn", "nan", "ignore"]

__all__ = ["Sensitivity", "SensitivityError", "SensitivityWarning", "sensitivity"]



class SensitivityError(RuntimeError):
    """The relaxation or a derivative solve failed, or the state is not a minimum."""


class SensitivityWarning(RuntimeWarning):
    pass


@dataclasses.dataclass(frozen=True)
class Sensitivity:
    """Result of :func:`sensitivity`.

    Attributes:
      values: observable name -> value at the relaxed state (numpy arrays).
      derivatives: observable name -> parameter name -> derivative of shape
        ``observable.shape + parameter.shape``.
      units: observable name -> unit string.
      wrt: the parameter names, in request order, with ``parameter_shapes``.
      diagnostics: relaxation and solve diagnostics (see :func:`sensitivity`).
      relaxation: the :class:`~mdsens.md.minimize.Relaxation` the derivatives were taken at.
      converged: relaxation converged, every solve converged, no negative curvature.
    """

    values: dict[str, np.ndarray]
    derivatives: dict[str, dict[str, np.ndarray]]
    units: dict[str, str]
    wrt: tuple[str, ...]
    parameter_shapes: dict[str, tuple[int, ...]]
    diagnostics: dict[str, Any]
    relaxation: Any
    converged: bool
    problems: tuple[str, ...] = ()


# ----------------------------------------------------------------------------- main entry


def sensitivity(
    system: System | Any,
    potential: Any,
    wrt: Sequence[str] | str,
    observables: Sequence[str | Callable] | str | Callable = ("energy",),
    *,
    relax_cell: bool = False,
    pressure: float = 0.0,
    mode: Mode = "auto",
    pairs: Sequence[tuple[int, int]] | None = None,
    relaxation: Any = None,
    relax_options: dict | None = None,
    solver: str = "cg",
    tol: float = 1e-10,
    maxiter: int | None = None,
    preconditioner: Literal["jacobi", "block_jacobi"] | None = None,
    rattlers: bool | Literal["auto"] = "auto",
    curvature_check: bool = True,
    lanczos_steps: int = 40,
    neighbor_list: Literal["auto"] | bool = "auto",
    on_failure: Policy = "raise",
) -> Sensitivity:
    r"""Relax ``system`` and differentiate observables of the relaxed state.

    Args:
      system: an :class:`~mdsens.md.System` or an ``ase.Atoms``.
      potential: a :class:`~mdsens.md.Potential` (e.g. ``potentials.get("lj", sigma=...)``).
      wrt: parameter names: potential parameters (``"sigma"``: the whole array as given;
        ``"sigma[Ar,Kr]"``: one species pair of a per-pair matrix, both symmetric entries
        moving together), ``"strain"`` (Voigt, fixed cell) or ``"pressure"`` (relax_cell).
      observables: names from :mod:`mdsens.md.observables`, ``"elastic_constants"``, or
        callables ``f(R, cell, params)``.
      relax_cell: relax positions and cell (at external ``pressure``, eV/Å^d).
      mode: ``"forward"`` (one solve per parameter component), ``"reverse"`` (one solve per
        observable component) or ``"auto"`` (whichever needs fewer solves).
      pairs: atom index pairs for the ``distances`` observable.
      relaxation: a :class:`Relaxation` to reuse instead of relaxing again.
      relax_options: keyword arguments for :func:`~mdsens.md.relax` (fmax, max_steps, ...);
        the default fmax is 1e-8 eV/Å (derivatives are only as good as the root).
      solver: linear solver name (``"cg"``, ``"minres"``, ...; see ``implicit.linsolve``).
      tol, maxiter: relative residual tolerance and iteration cap of each solve.
      preconditioner: None, ``"jacobi"`` or ``"block_jacobi"`` (per-atom d × d blocks).
      rattlers: detect rattler zero modes from the Hessian's per-atom diagonal blocks
        (coloured probing: d products per colour). ``"auto"``: when N ≤
        ``zero_modes.MAX_ATOMS_FOR_RATTLER_SCAN`` (500); pass True for large jammed
        packings. A missed rattler excited by a right-hand side makes its solve fail
        (reported), never a silently wrong number.
      curvature_check: estimate the smallest Hessian eigenvalue on the complement of the zero
        modes (Lanczos, ``lanczos_steps`` products) and flag a saddle.
      on_failure: ``"raise"`` (:class:`SensitivityError`), ``"warn"``, ``"nan"``
        (failed derivatives become NaN) or ``"ignore"``; the status is always in
        ``converged``, ``problems`` and ``diagnostics``. A relaxation that ended on
        non-finite energies or positions raises :class:`SensitivityError` under every
        policy: there is nothing to differentiate.

    Returns:
      :class:`Sensitivity`. ``diagnostics`` holds: ``relaxation`` (steps, fmax, converged,
      status), ``mode`` and ``n_solves``, ``solves`` (per solve: iterations, residual,
      converged, nullspace component, CG's smallest curvature ``pᵀHp/pᵀp``),
      ``zero_modes`` (count, rattler atoms), ``min_curvature_estimate`` (Lanczos),
      ``root_residual`` (‖F‖ on the complement of the zero modes) and
      ``root_error_estimate`` (‖F‖ / λ_min, a first-order bound on the distance to the
      exact root), ``elastic_solves`` and timings.
    """
    if on_failure not in ("raise", "warn", "nan", "ignore"):
        raise ValueError(f"on_failure must be raise, warn, nan or ignore, got {on_failure!r}")
    if mode not in ("auto", "forward", "reverse"):
        raise ValueError(f"mode must be 'auto', 'forward' or 'reverse', got {mode!r}")
    if not isinstance(system, System):
        system = System.from_ase(system)
    periodic = system.is_periodic
    dim = system.dim
    observables_ = obs_mod.resolve(observables, periodic, dim)
    specs = tuple(parse_wrt(wrt, potential, dim, periodic, relax_cell))
    timings: dict[str, float] = {}

    # 1. relaxation --------------------------------------------------------------------
    t0 = time.perf_counter()
    if relaxation is None:
        options = {"fmax": 1e-8, "max_steps": 100000, "neighbor_list": neighbor_list,
                   "on_failure": "ignore"}
        options.update(relax_options or {})
        options.setdefault("pressure", pressure)
        relaxation = relax(system, potential, relax_cell=relax_cell, **options)
    timings["relax"] = time.perf_counter() - t0
    relaxed = relaxation.system
    if not (np.isfinite(float(relaxation.energy))
            and np.all(np.isfinite(np.asarray(relaxed.positions)))):
        # Nothing can be differentiated at a non-finite state, whatever the policy.
        raise SensitivityError(f"cannot differentiate a non-finite state: {relaxation.message}")
    problems: list[str] = []
    if not bool(relaxation.converged):
        problems.append(f"relaxation did not converge: {relaxation.message}")

    # 2. the root problem at the relaxed state -----------------------------------------
    t0 = time.perf_counter()
    model = build(relaxed, potential, neighbor_list=neighbor_list)
    R_star = jnp.asarray(relaxed.positions, jnp.float64)
    cell0 = jnp.asarray(relaxed.cell, jnp.float64) if periodic else None
    nbrs = model.allocate(R_star, cell0)
    problem = RootProblem(model, nbrs, specs, dict(potential.params), cell0, dim, relax_cell,
                       float(pressure))
    theta0 = initial_theta(specs, potential, dim, pressure)
    if relax_cell:
        x_star = {"R": R_star, "eps": jnp.zeros((n_voigt(dim),), jnp.float64)}
    else:
        x_star = R_star

    # 3. zero modes -------------------------------------------------------------------
    modes = zero_modes.rigid_modes(R_star, periodic)
    hvp_R = _position_hvp(problem, x_star, theta0)
    blocks = _diagonal_blocks(model, hvp_R, R_star, cell0, rattlers, preconditioner)
    rattler_atoms = np.array([], int)
    if blocks is not None:
        if rattlers is not False:
            extra, rattler_atoms = zero_modes.rattler_modes(blocks)
            if len(extra):
                modes = jnp.concatenate([modes, jnp.asarray(extra, modes.dtype)])
    nullspace = problem.embed(modes)
    M = make_preconditioner(preconditioner, blocks, problem) if blocks is not None else None
    solve = make_solver(solver, tol, maxiter, nullspace, M)
    timings["setup"] = time.perf_counter() - t0

    # 4. root residual and curvature ----------------------------------------------------
    t0 = time.perf_counter()
    F_fn = problem.F
    flat_null = jax.vmap(lambda t: ravel_pytree(t)[0])(nullspace)
    q, _ = jnp.linalg.qr(flat_null.T)
    project = lambda v: v - q @ (q.T @ v)  # noqa: E731
    residual = float(jnp.linalg.norm(project(ravel_pytree(F_fn(x_star, theta0))[0])))
    lam_min = float("nan")
    if curvature_check:
        lam_min, lam_neg, lam_max = _smallest_curvature(problem, x_star, theta0, project,
                                                        lanczos_steps)
        if lam_neg < -1e-8 * lam_max:
            problems.append(
                f"the relaxed state is not a minimum: the Hessian has a negative eigenvalue "
                f"(Lanczos estimate {lam_neg:.3e}) — it is a saddle; relax further or perturb"
            )
    timings["curvature"] = time.perf_counter() - t0

    # 5. values and first derivatives ----------------------------------------------------
    ctx = obs_mod.Context(model, nbrs, jnp.asarray(system.positions, jnp.float64),
                          None if pairs is None else np.asarray(pairs, int).reshape(-1, 2))
    plain = {k: o for k, o in observables_.items() if k != obs_mod.ELASTIC}

    def observe(x, theta):
        R, C, params = problem.configuration(x, theta)
        return {k: o.fn(ctx, R, C, params) for k, o in plain.items()}

    t0 = time.perf_counter()
    values = {k: np.asarray(v) for k, v in observe(x_star, theta0).items()} if plain else {}
    n_in = int(ravel_pytree(theta0)[0].size)
    n_out = int(sum(np.size(v) for v in values.values()))
    chosen = mode if mode != "auto" else ("forward" if n_in <= n_out else "reverse")
    derivatives: dict[str, dict[str, np.ndarray]] = {}
    solve_infos = None
    if plain:
        run = _forward if chosen == "forward" else _reverse
        derivatives, solve_infos = run(F_fn, observe, x_star, theta0, solve, values)
    timings["derivatives"] = time.perf_counter() - t0

    # 6. elastic constants (a derivative of stress through the same relaxation) ----------
    elastic_info = None
    units = {k: o.unit for k, o in observables_.items()}
    if obs_mod.ELASTIC in observables_:
        t0 = time.perf_counter()
        fixed_problem = dataclasses.replace(problem, relax_cell=False)
        M_fixed = (make_preconditioner(preconditioner, blocks, fixed_problem)
                   if blocks is not None else None)
        solve_fixed = make_solver(solver, tol, maxiter, modes, M_fixed)
        C_val, C_der, elastic_info = elastic_constants(problem, x_star, theta0, solve, solve_fixed)
        values[obs_mod.ELASTIC] = C_val
        derivatives[obs_mod.ELASTIC] = C_der
        timings["elastic"] = time.perf_counter() - t0

    # 7. status and policy ----------------------------------------------------------------
    solves = _solve_table(solve_infos)
    if solves is not None and not solves["converged"].all():
        bad = int((~solves["converged"]).sum())
        worst = Status(int(solves["status"].max()))
        problems.append(f"{bad} of {solves['converged'].size} derivative solves failed: "
                        f"{worst.message}")
    if elastic_info is not None and not elastic_info["converged"].all():
        problems.append("an elastic-constant solve failed: "
                        f"{Status(int(elastic_info['status'].max())).message}")
    if solves is not None and np.any(solves["min_curvature"] < 0):
        problems.append("negative curvature met in CG: the relaxed state is not a minimum")

    diagnostics = {
        "relaxation": {
            "steps": int(relaxation.steps), "fmax": float(relaxation.fmax),
            "converged": bool(relaxation.converged), "status": relaxation.message,
            "energy": float(relaxation.energy),
        },
        "mode": chosen,
        "n_solves": 0 if solves is None else int(solves["converged"].size),
        "solves": solves,
        "elastic_solves": elastic_info,
        "zero_modes": {"count": int(modes.shape[0]), "rattlers": rattler_atoms.tolist()},
        "min_curvature_estimate": lam_min,
        "root_residual": residual,
        "root_error_estimate": residual / lam_min if lam_min > 0 else float("inf"),
        "solver": solver,
        "preconditioner": preconditioner,
        "timings": timings,
    }
    converged = not problems
    if problems and on_failure == "nan":
        derivatives = {k: {p: np.full_like(v, np.nan) for p, v in d.items()}
                       for k, d in derivatives.items()}
    result = Sensitivity(
        values=values,
        derivatives=derivatives,
        units=units,
        wrt=tuple(s.name for s in specs),
        parameter_shapes={k: tuple(np.shape(v)) for k, v in theta0.items()},
        diagnostics=diagnostics,
        relaxation=relaxation,
        converged=converged,
        problems=tuple(problems),
    )
    if problems and on_failure == "raise":
        raise SensitivityError("; ".join(problems))
    if problems and on_failure == "warn":
        warnings.warn("; ".join(problems), SensitivityWarning, stacklevel=2)
    return result


# ----------------------------------------------------------------------------- helpers


def _position_hvp(problem: RootProblem, x_star, theta0):
    """Hessian-vector product restricted to positions (N, d) -> (N, d)."""
    if not problem.relax_cell:
        _, hvp = jax.linearize(lambda x: problem.F(x, theta0), x_star)
        return hvp

    def F_R(R):
        return problem.F({"R": R, "eps": x_star["eps"]}, theta0)["R"]

    _, hvp = jax.linearize(F_R, x_star["R"])
    return hvp


def _diagonal_blocks(model, hvp, R, cell, rattlers, preconditioner):
    """Per-atom Hessian blocks for rattler detection and preconditioning, or None.

    Coloured probing (d Hessian-vector products per colour; atoms closer than the
    Hessian's range get different colours) when it needs fewer products than the
    one-atom-at-a-time scan (N·d products).
    """
    n, d = R.shape
    if preconditioner is None and (
        rattlers is False or (rattlers == "auto" and n > zero_modes.MAX_ATOMS_FOR_RATTLER_SCAN)
    ):
        return None
    colors = None
    if model.cutoff is not None:
        reach = model.potential.hessian_range_factor * model.cutoff
        colors = zero_modes.spatial_colors(np.asarray(R), None if cell is None else
                                           np.asarray(cell), reach)
    if colors is not None and colors.max() + 1 < n:
        fn = lambda: zero_modes.colored_diagonal_blocks(hvp, colors, d, R.dtype)  # noqa: E731
    else:
        fn = lambda: zero_modes.diagonal_blocks(hvp, n, d, R.dtype)  # noqa: E731
    return np.asarray(jax.jit(fn)())


def _smallest_curvature(problem, x_star, theta0, project, steps) -> tuple[float, ...]:
    """Extreme Ritz values of the projected Hessian P H P from ``steps`` Lanczos steps.

    Returns ``(smallest, most_negative, largest |λ|)``. ``smallest`` is the smallest Ritz
    value above the numerical zero (|λ| ≤ 1e-10 λ_max: Lanczos finds the projected-out
    zero modes from rounding noise) — an upper bound on the smallest stiffness on the
    complement of the zero modes; ``most_negative`` is the smallest Ritz value,
    significant when below −1e-8 λ_max (the state is a saddle).
    """
    flat_x, unravel = ravel_pytree(x_star)
    _, hvp = jax.linearize(lambda x: problem.F(x, theta0), x_star)
    op = lambda v: project(ravel_pytree(hvp(unravel(project(v))))[0])  # noqa: E731
    v0 = project(jax.random.normal(jax.random.PRNGKey(0), flat_x.shape, flat_x.dtype))
    ritz, count = jax.jit(lambda v: lanczos_ritz(op, v, steps))(v0)
    ritz = np.asarray(ritz)[: int(count)]
    lam_max = float(np.max(np.abs(ritz)))
    positive = ritz[ritz > 1e-10 * lam_max]
    smallest = float(positive.min()) if positive.size else 0.0
    return smallest, float(ritz.min()), lam_max


def _forward(F, observe, x_star, theta0, solve, values):
    """One JVP solve per parameter component, batched with vmap."""
    flat, unravel = ravel_pytree(theta0)

    def one(t):
        theta_dot = unravel(t)
        x_dot, info = root_jvp(F, x_star, (theta0,), (theta_dot,), solve=solve,
                               on_failure="ignore")
        _, obs_dot = jax.jvp(observe, (x_star, theta0), (x_dot, theta_dot))
        return obs_dot, info

    basis = jnp.eye(flat.size, dtype=flat.dtype)
    obs_dots, infos = jax.jit(jax.vmap(one))(basis)
    derivatives = {}
    for name, val in values.items():
        d = np.asarray(obs_dots[name])  # (n_in, *obs.shape)
        per_param = {}
        offset = 0
        for path, p in jax.tree_util.tree_flatten_with_path(theta0)[0]:  # ravel order
            pname = path[0].key
            size = int(np.size(p))
            block = d[offset:offset + size].reshape(np.shape(p) + np.shape(val))
            # move parameter axes after observable axes: obs.shape + param.shape
            nd_p = np.ndim(p)
            per_param[pname] = np.moveaxis(block, list(range(nd_p)),
                                           list(range(np.ndim(val), np.ndim(val) + nd_p)))
            offset += size
        derivatives[name] = per_param
    return derivatives, infos


def _reverse(F, observe, x_star, theta0, solve, values):
    """One VJP solve per observable component, batched with vmap."""
    def flat_observe(x, theta):
        return ravel_pytree(observe(x, theta))[0]

    n_out = int(sum(np.size(v) for v in values.values()))

    def one(w):
        _, vjp = jax.vjp(flat_observe, x_star, theta0)
        x_bar, theta_bar_direct = vjp(w)
        (theta_bar_implicit,), info = root_vjp(F, x_star, (theta0,), x_bar, solve=solve,
                                               on_failure="ignore")
        return jax.tree.map(jnp.add, theta_bar_direct, theta_bar_implicit), info

    basis = jnp.eye(n_out, dtype=jnp.float64)
    theta_bars, infos = jax.jit(jax.vmap(one))(basis)
    derivatives = {}
    offset = 0
    # ravel_pytree flattens a dict in its canonical (sorted-key) order
    for path, val in jax.tree_util.tree_flatten_with_path(values)[0]:
        name = path[0].key
        size = int(np.size(val))
        derivatives[name] = {
            pname: np.asarray(theta_bars[pname][offset:offset + size]).reshape(
                np.shape(val) + np.shape(p))
            for pname, p in theta0.items()
        }
        offset += size
    return derivatives, infos


def _solve_table(infos: SolveInfo | None):
    if infos is None:
        return None
    table = {
        "status": np.atleast_1d(np.asarray(infos.status)),
        "iterations": np.atleast_1d(np.asarray(infos.iterations)),
        "residual_norm": np.atleast_1d(np.asarray(infos.residual_norm)),
        "rhs_norm": np.atleast_1d(np.asarray(infos.rhs_norm)),
        "nullspace_component": np.atleast_1d(np.asarray(infos.nullspace_component)),
        "min_curvature": np.atleast_1d(np.asarray(infos.min_curvature)),
    }
    table["converged"] = table["status"] == Status.SUCCESS
    return table
