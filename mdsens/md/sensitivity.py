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
import functools
import sys
import time
import types
from collections.abc import Callable, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from ..implicit import Status, root_jvp, root_vjp
from ..implicit.bounds import jacobian_error_estimate, lanczos_ritz
from ..implicit.policy import Policy, check_policy, surface
from . import observables as obs_mod
from . import zero_modes
from ._models import model_for, same_form
from .diagnostics import (
    Diagnostics,
    ElasticSolves,
    JacobianErrorSummary,
    SolveTable,
    ZeroModes,
)
from .elastic import elastic_constants
from .minimize import relax
from .model import EnergyModel
from .options import DERIVATIVE_DEFAULTS, RelaxOptions
from .results import Sensitivity, SensitivityError, SensitivityWarning
from .root_problem import (
    RootProblem,
    SolverPlan,
    initial_theta,
    parse_wrt,
    preconditioner_data,
    user_specs,
)
from .stage_store import stage as persistent_stage
from .strain import n_voigt
from .system import System

Array = jax.Array
Mode = Literal["auto", "forward", "reverse"]

__all__ = ["Sensitivity", "SensitivityError", "SensitivityWarning", "sensitivity"]



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
    relax_options: RelaxOptions | dict | None = None,
    callback: Callable[[int, float, float], None] | None = None,
    solver: str = "cg",
    tol: float = 1e-10,
    maxiter: int | None = None,
    preconditioner: Literal["jacobi", "block_jacobi"] | None = None,
    rattlers: bool | Literal["auto"] = "auto",
    curvature_check: bool = True,
    lanczos_steps: int = 40,
    neighbor_list: Literal["auto"] | bool = "auto",
    on_failure: Policy = "raise",
    params: dict | None = None,
    params_fn: Callable[[dict], dict] | None = None,
    hessian: Literal["auto", "assembled", "autodiff"] = "auto",
    jacobian_error: bool = False,
) -> Sensitivity:
    r"""Relax ``system`` and differentiate observables of the relaxed state.

    Args:
      system: an :class:`~mdsens.md.System` or an ``ase.Atoms``.
      potential: a :class:`~mdsens.md.Potential` (e.g. ``potentials.get("lj", sigma=...)``)
        or a prebuilt :class:`~mdsens.md.EnergyModel` (``mdsens.md.build``): calls that
        share a model (or pass relaxations made with one) share compiled code, so a loop
        over parameter values compiles once.
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
      relax_options: the :class:`~mdsens.md.RelaxOptions` of the relaxation, or a dict of
        fields replacing those of ``DERIVATIVE_DEFAULTS`` (fmax 1e-8 eV/Å, max_steps 100000:
        derivatives are only as good as the root); ``relax_cell``, ``pressure`` and
        ``neighbor_list`` come from the arguments of the same names unless a dict sets them.
      callback: progress of the relaxation, ``callback(step, energy, fmax)`` (see
        :func:`~mdsens.md.relax`).
      solver: linear solver name (``"cg"``, ``"minres"``, ...; see ``implicit.linsolve``).
      tol, maxiter: relative residual tolerance and iteration cap of each solve.
      preconditioner: None, ``"jacobi"`` or ``"block_jacobi"`` (per-atom d × d blocks).
      rattlers: detect rattler zero modes from the Hessian's per-atom diagonal blocks
        (coloured probing: d products per colour). ``"auto"``: when N ≤
        ``zero_modes.MAX_ATOMS_FOR_RATTLER_SCAN`` (500); pass True for large jammed
        packings. A missed rattler excited by a right-hand side makes its solve fail
        (reported), never a silently wrong number.
      curvature_check: estimate the smallest Hessian eigenvalue on the complement of the zero
        modes (Lanczos, ``lanczos_steps`` products) and flag a saddle, or a Hessian that is
        zero or singular there (then every derivative is NaN, whatever ``on_failure``).
      hessian: how Hessian-vector products are formed: ``"autodiff"`` (forward-over-reverse
        differentiation of the energy, any potential), ``"assembled"`` (pair potentials at
        fixed cell without replication: the pair stiffnesses are computed once and each
        product is a gather — several times cheaper per CG iteration, see
        :meth:`~mdsens.md.EnergyModel.pair_hessian_matvec`) or ``"auto"`` (assembled where
        it applies). Elastic constants always use autodiff.
      jacobian_error: also estimate ‖J(x̂) − ∂x*‖, the error of the derivative of the
        unknowns caused by the relaxation being an approximate root
        (:func:`mdsens.implicit.bounds.jacobian_error_estimate` on the complement of the
        zero modes); costs one extra Krylov solve and a few dozen third-derivative products,
        so it is off by default. Reported in ``diagnostics.jacobian_error``.
      params_fn: a parameterisation of the user's own: ``params_fn(θ) -> {name: value}``
        (a JAX function of a dict θ; the potential parameters it returns replace the
        potential's). ``wrt`` is then the dict θ of values to differentiate at, e.g.
        ``wrt={"D": 1.0}`` with ``params_fn=lambda t: {"sigma": ...t["D"]...}``, and the
        derivatives are keyed by θ's names. Pass the same function object to reuse
        compiled code across calls.
      params: parameter values to use instead of the potential's (same names), e.g. the
        point of a parameter study; the model's cutoff must cover them.
      on_failure: ``"raise"`` (:class:`SensitivityError`), ``"warn"``, ``"nan"``
        (failed derivatives become NaN) or ``"ignore"``; the status is always in
        ``converged``, ``problems`` and ``diagnostics``. A relaxation that ended on
        non-finite energies or positions raises :class:`SensitivityError` under every
        policy: there is nothing to differentiate.

    Returns:
      :class:`Sensitivity`. ``diagnostics`` is a :class:`~mdsens.md.diagnostics.Diagnostics`
      record: ``relaxation`` (steps, fmax, converged, status), ``mode`` and ``n_solves``,
      ``solves`` (per solve: iterations, residual, converged, nullspace component, CG's
      smallest curvature ``pᵀHp/pᵀp``), ``zero_modes`` (count, rattler atoms),
      ``min_curvature_estimate`` (Lanczos), ``root_residual`` (‖F‖ on the complement of the
      zero modes) and ``root_error_estimate`` (‖F‖ / λ_min, a first-order bound on the
      distance to the exact root), ``jacobian_error`` (with ``jacobian_error=True``: the
      root term ``estimate``, the solve term of forward solves at ``tol``, their sum
      ``bound`` and the ingredients α, β, γ, R, C; else None), ``elastic_solves`` and
      ``timings``. Its fields also read by name (``diagnostics["solves"]``).
    """
    check_policy(on_failure)
    precision = _precision_problem()
    if precision is not None and on_failure == "raise":
        raise SensitivityError(precision)  # before any work
    if mode not in ("auto", "forward", "reverse"):
        raise ValueError(f"mode must be 'auto', 'forward' or 'reverse', got {mode!r}")
    if hessian not in ("auto", "assembled", "autodiff"):
        raise ValueError(f"hessian must be 'auto', 'assembled' or 'autodiff', got {hessian!r}")
    if not isinstance(system, System):
        system = System.from_ase(system)
    relaxation_model = potential
    if isinstance(potential, EnergyModel):
        potential = potential.potential
    params = dict(potential.params if params is None else params)
    unknown = set(params) - set(potential.params)
    if unknown:
        raise ValueError(f"unknown parameters {sorted(unknown)}; known: "
                         f"{sorted(potential.params)}")
    params = {**potential.params, **params}
    periodic = system.is_periodic
    dim = system.dim
    observables_ = obs_mod.resolve(observables, periodic, dim)
    user_theta = None
    if params_fn is not None:
        specs = tuple(user_specs(wrt, potential))
        user_theta = {s.name: jnp.asarray(wrt[s.name], jnp.float64) for s in specs}
        params = {**params, **{k: np.asarray(v, np.float64)
                               for k, v in params_fn(user_theta).items()}}
    else:
        specs = tuple(parse_wrt(wrt, potential, dim, periodic, relax_cell))
    timings: dict[str, float] = {}

    # 1. relaxation --------------------------------------------------------------------
    t0 = time.perf_counter()
    if relaxation is None:
        defaults = DERIVATIVE_DEFAULTS.replace(neighbor_list=neighbor_list,
                                               relax_cell=relax_cell, pressure=pressure)
        options = RelaxOptions.resolve(relax_options, defaults)
        if options.relax_cell != relax_cell:
            raise ValueError("sensitivity: relax_options.relax_cell differs from relax_cell")
        pressure = options.pressure
        relaxation = relax(system, relaxation_model, options, params=params,
                           callback=callback, on_failure="ignore")
    timings["relax"] = time.perf_counter() - t0
    relaxed = relaxation.system
    if not (np.isfinite(float(relaxation.energy))
            and np.all(np.isfinite(np.asarray(relaxed.positions)))):
        # Nothing can be differentiated at a non-finite state, whatever the policy.
        raise SensitivityError(f"cannot differentiate a non-finite state: {relaxation.message}")
    problems: list[str] = [] if precision is None else [precision]
    if not bool(relaxation.converged):
        problems.append(f"relaxation did not converge: {relaxation.message}")

    # 2. the root problem at the relaxed state -----------------------------------------
    # The relaxation's model (and its neighbour list) are reused: the compiled derivative
    # programs below are cached on the model, so repeated calls on the same layout (a
    # parameter study, a fitting loop) compile once.
    t0 = time.perf_counter()
    model, nbrs = _model_and_list(relaxation, potential, relaxed, neighbor_list)
    model.check_params(params)
    R_star = jnp.asarray(relaxed.positions, jnp.float64)
    cell0 = jnp.asarray(relaxed.cell, jnp.float64) if periodic else None
    problem = RootProblem(model, nbrs, specs, {k: jnp.asarray(v) for k, v in params.items()},
                          cell0, dim, relax_cell,
                          jax.device_put(np.asarray(pressure, np.float64)),
                          params_fn=params_fn)
    theta0 = (user_theta if user_theta is not None
              else initial_theta(specs, potential, dim, pressure, params))
    if relax_cell:
        x_star = {"R": R_star,
                  "eps": jax.device_put(np.zeros((n_voigt(dim),), np.float64))}
    else:
        x_star = R_star

    # 3. zero modes -------------------------------------------------------------------
    modes = zero_modes.rigid_modes(R_star, periodic)
    plan = SolverPlan(solver, float(tol), maxiter, preconditioner,
                      _hessian_kind(hessian, problem))
    blocks = _diagonal_blocks(problem, x_star, theta0, rattlers, preconditioner, plan.hessian)
    rattler_atoms = np.array([], int)
    if blocks is not None:
        if rattlers is not False:
            extra, rattler_atoms = zero_modes.rattler_modes(blocks)
            if len(extra):
                modes = jnp.concatenate([modes, jnp.asarray(extra, modes.dtype)])
    nullspace = problem.embed(modes)
    precond = None if blocks is None else preconditioner_data(preconditioner, blocks)
    timings["setup"] = time.perf_counter() - t0

    # 4. root residual and curvature ----------------------------------------------------
    t0 = time.perf_counter()
    q = _orthonormal_basis(nullspace)
    residual, ritz, count = _check_stage(lanczos_steps if curvature_check else 0,
                                         plan.hessian, problem, x_star, theta0, q)
    residual = float(residual)
    lam_min = float("nan")
    degenerate = None
    if curvature_check:
        lam_min, lam_neg, lam_max = _ritz_summary(np.asarray(ritz)[: int(count)])
        if lam_neg < -1e-8 * lam_max:
            problems.append(
                f"the relaxed state is not a minimum: the Hessian has a negative eigenvalue "
                f"(Lanczos estimate {lam_neg:.3e}) — it is a saddle; relax further or perturb"
            )
        if not lam_max > 0 or not lam_min > 0:
            degenerate = (
                f"the Hessian is zero or singular on the complement of the "
                f"{int(modes.shape[0])} known zero modes (Lanczos: largest |λ| {lam_max:.3e}, "
                f"no eigenvalue above round-off): the state is not an isolated minimum (atoms "
                f"that do not interact?) and has no derivatives"
            )
            problems.append(degenerate)
    timings["curvature"] = time.perf_counter() - t0
    jacobian_estimate = None
    if jacobian_error:
        t0 = time.perf_counter()
        if not curvature_check:
            _, ritz, count = _check_stage(lanczos_steps, plan.hessian, problem, x_star,
                                          theta0, q)
        lam_scale = _ritz_summary(np.asarray(ritz)[: int(count)])[2]
        est = _jacobian_error(problem, x_star, theta0, q, lam_scale, lanczos_steps, tol)
        jacobian_estimate = JacobianErrorSummary.of(est)
        timings["jacobian_error"] = time.perf_counter() - t0

    # 5. values and first derivatives ----------------------------------------------------
    ctx = obs_mod.Context(model, nbrs, jnp.asarray(system.positions, jnp.float64),
                          None if pairs is None else jnp.asarray(np.asarray(pairs, int)
                                                                 .reshape(-1, 2)))
    plain = tuple(o for k, o in observables_.items() if k != obs_mod.ELASTIC)
    t0 = time.perf_counter()
    values: dict[str, np.ndarray] = {}
    derivatives: dict[str, dict[str, np.ndarray]] = {}
    solve_infos = None
    chosen = mode
    if plain:
        shapes = jax.eval_shape(functools.partial(_observe, plain, ctx, problem),
                                x_star, theta0)
        n_in = int(sum(np.size(v) for v in jax.tree.leaves(theta0)))
        n_out = int(sum(np.prod(v.shape, dtype=int) for v in shapes.values()))
        chosen = mode if mode != "auto" else ("forward" if n_in <= n_out else "reverse")
        stage = _forward_stage if chosen == "forward" else _reverse_stage
        raw_values, raw, solve_infos = stage(plan, plain, problem, x_star, theta0, nullspace,
                                             precond, ctx)
        values = {k: np.asarray(v) for k, v in raw_values.items()}
        unpack = _unpack_forward if chosen == "forward" else _unpack_reverse
        derivatives = unpack(raw, values, theta0)
    elif mode == "auto":
        chosen = "forward"
    timings["derivatives"] = time.perf_counter() - t0

    # 6. elastic constants (a derivative of stress through the same relaxation) ----------
    elastic_info = None
    units = {k: o.unit for k, o in observables_.items()}
    if obs_mod.ELASTIC in observables_:
        t0 = time.perf_counter()
        C_val, C_der, elastic_info = elastic_constants(problem, x_star, theta0, plan,
                                                       nullspace, modes, precond)
        values[obs_mod.ELASTIC] = C_val
        derivatives[obs_mod.ELASTIC] = C_der
        timings["elastic"] = time.perf_counter() - t0

    # 7. status and policy ----------------------------------------------------------------
    solves = SolveTable.of(solve_infos)
    if solves is not None and not solves.converged.all():
        bad = int((~solves.converged).sum())
        worst = Status(int(solves.status.max()))
        problems.append(f"{bad} of {solves.count} derivative solves failed: "
                        f"{worst.message}")
    if elastic_info is not None and not elastic_info["converged"].all():
        problems.append("an elastic-constant solve failed: "
                        f"{Status(int(elastic_info['status'].max())).message}")
    if solves is not None and np.any(solves.min_curvature < 0):
        problems.append("negative curvature met in CG: the relaxed state is not a minimum")

    diagnostics = Diagnostics(
        relaxation=relaxation.summary(),
        mode=chosen,
        n_solves=0 if solves is None else solves.count,
        solves=solves,
        elastic_solves=None if elastic_info is None else ElasticSolves(**elastic_info),
        zero_modes=ZeroModes(count=int(modes.shape[0]), rattlers=rattler_atoms.tolist()),
        min_curvature_estimate=lam_min,
        root_residual=residual,
        root_error_estimate=residual / lam_min if lam_min > 0 else float("inf"),
        jacobian_error=jacobian_estimate,
        solver=solver,
        hessian=plan.hessian,
        preconditioner=preconditioner,
        timings=timings,
    )
    converged = not problems
    if degenerate is not None:  # never a number there, whatever the policy
        derivatives = _nan_derivatives(derivatives)
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
    return surface(result, "; ".join(problems) if problems else None, on_failure,
                   error=SensitivityError, warning=SensitivityWarning,
                   nan=lambda r: dataclasses.replace(
                       r, derivatives=_nan_derivatives(r.derivatives)))


def _precision_problem() -> str | None:
    """Why this process cannot give trustworthy derivatives, if it cannot: JAX computing
    in float32 (relaxations to fmax 1e-8 eV/Å and the derivative solves need float64)."""
    if jax.config.jax_enable_x64:
        return None
    return ("JAX computes in float32 (jax_enable_x64 is off): relaxations and derivative "
            "solves need float64; call jax.config.update('jax_enable_x64', True) at the "
            "start of the program")


def _nan_derivatives(derivatives: dict) -> dict:
    return {k: {p: np.full_like(v, np.nan) for p, v in d.items()}
            for k, d in derivatives.items()}


# ----------------------------------------------------------------------------- helpers


def _hessian_kind(hessian: str, problem: RootProblem) -> str:
    """Resolve ``hessian="auto"`` to the assembled operator where it applies."""
    if hessian not in ("auto", "assembled", "autodiff"):
        raise ValueError(f"hessian must be 'auto', 'assembled' or 'autodiff', got {hessian!r}")
    available = problem.hessian_operator() is not None
    if hessian == "assembled" and not available:
        raise ValueError("hessian='assembled' needs a pair potential at fixed cell on a cell "
                         "that is not replicated (at least twice the cutoff wide)")
    return "assembled" if hessian != "autodiff" and available else "autodiff"


def _model_and_list(relaxation, potential, relaxed: System, neighbor_list):
    """The relaxation's model and neighbour list when they fit ``potential``, else new ones.

    The list is the one the relaxation ended on (its capacity is kept, so compiled code is
    shared between warm-started relaxations of a study); it is reallocated if it overflowed.
    """
    model = getattr(relaxation, "model", None)
    if model is None or not same_form(model.potential, potential) \
            or model.n_atoms != relaxed.n_atoms:
        model = model_for(relaxed, potential, neighbor_list=neighbor_list)
        return model, model.allocate(relaxed.positions, relaxed.cell if relaxed.is_periodic
                                     else None)
    nbrs = getattr(relaxation, "nbrs", None)
    if model.uses_neighbor_list and (nbrs is None or bool(model.overflowed(nbrs))):
        nbrs = model.allocate(relaxed.positions, relaxed.cell if relaxed.is_periodic else None)
    return model, nbrs


def _position_hvp(problem: RootProblem, x_star, theta0, hessian: str = "autodiff"):
    """Hessian-vector product restricted to positions (N, d) -> (N, d)."""
    operator = problem.hessian_operator() if hessian == "assembled" else None
    if operator is not None:
        return operator(x_star, theta0)
    if not problem.relax_cell:
        _, hvp = jax.linearize(lambda x: problem.F(x, theta0), x_star)
        return hvp

    def F_R(R):
        return problem.F({"R": R, "eps": x_star["eps"]}, theta0)["R"]

    _, hvp = jax.linearize(F_R, x_star["R"])
    return hvp


@functools.partial(persistent_stage, static_argnums=(0, 1))
def _blocks_stage(colored: bool, hessian: str, problem, x_star, theta0, masks):
    hvp = _position_hvp(problem, x_star, theta0, hessian)
    if hasattr(hvp, "diagonal_blocks"):  # assembled: the blocks are sums of stiffnesses
        return hvp.diagonal_blocks
    R = x_star["R"] if problem.relax_cell else x_star
    n, d = R.shape
    if colored:
        return zero_modes.probed_diagonal_blocks(hvp, masks, d, R.dtype)
    return zero_modes.diagonal_blocks(hvp, n, d, R.dtype)


def _diagonal_blocks(problem, x_star, theta0, rattlers, preconditioner, hessian):
    """Per-atom Hessian blocks for rattler detection and preconditioning, or None.

    Assembled pair Hessian: the blocks are sums of pair stiffnesses (no products).
    Otherwise coloured probing (d Hessian-vector products per colour; atoms closer than the
    Hessian's range get different colours) when it needs fewer products than the
    one-atom-at-a-time scan (N·d products).
    """
    model = problem.model
    R = x_star["R"] if problem.relax_cell else x_star
    n = R.shape[0]
    if preconditioner is None and (
        rattlers is False or (rattlers == "auto" and n > zero_modes.MAX_ATOMS_FOR_RATTLER_SCAN)
    ):
        return None
    if hessian == "assembled":
        return np.asarray(_blocks_stage(False, hessian, problem, x_star, theta0, None))
    colors = None
    if model.cutoff is not None:
        reach = model.potential.hessian_range_factor * model.cutoff
        cell = problem.cell0
        colors = zero_modes.spatial_colors(np.asarray(R), None if cell is None else
                                           np.asarray(cell), reach)
    if colors is not None and colors.max() + 1 < n:
        masks = zero_modes.color_masks(colors)
        # pad to a multiple of 8 colours (zero probes add nothing) so that the colour count
        # of a new state rarely changes the compiled shape
        masks = np.vstack([masks, np.zeros((-len(masks) % 8, n))])
        masks = jax.device_put(masks)
        return np.asarray(_blocks_stage(True, hessian, problem, x_star, theta0, masks))
    return np.asarray(_blocks_stage(False, hessian, problem, x_star, theta0, None))


@jax.jit
def _orthonormal_basis(nullspace):
    """Orthonormal columns ``q`` (n_x, k) spanning the ``k`` zero modes (QR; one program
    instead of several eager ones)."""
    flat_null = jax.vmap(lambda t: ravel_pytree(t)[0])(nullspace)
    q, _ = jnp.linalg.qr(flat_null.T)
    return q


@functools.partial(persistent_stage, static_argnums=(0, 1))
def _check_stage(steps: int, hessian: str, problem, x_star, theta0, q):
    """‖P F‖ (the root residual off the zero modes, P = I − q qᵀ) and, for ``steps`` > 0,
    the Ritz values of P H P from ``steps`` Lanczos steps (count valid first)."""
    flat_x, unravel = ravel_pytree(x_star)
    project = lambda v: v - q @ (q.T @ v)  # noqa: E731
    operator = problem.hessian_operator() if hessian == "assembled" else None
    if operator is None:
        F0, hvp = jax.linearize(lambda x: problem.F(x, theta0), x_star)
    else:
        F0, hvp = problem.F(x_star, theta0), operator(x_star, theta0)
    residual = jnp.linalg.norm(project(ravel_pytree(F0)[0]))
    if steps == 0:
        return residual, jnp.zeros((0,), flat_x.dtype), jnp.int32(0)
    op = lambda v: project(ravel_pytree(hvp(unravel(project(v))))[0])  # noqa: E731
    v0 = project(jax.random.normal(jax.random.PRNGKey(0), flat_x.shape, flat_x.dtype))
    ritz, count = lanczos_ritz(op, v0, steps)
    return residual, ritz, count


def _jacobian_error(problem, x_star, theta0, q, scale, steps, tol):
    r"""Jacobian error estimate of the implicit core on the complement of the zero modes.

    The zero modes (orthonormal columns ``q``) make ``∂ₓF`` singular, so the estimate is
    taken for :math:`\tilde F(x, θ) = P F(x, θ) + s\,Q(x - \hat x)` (``P = I − Q``,
    ``Q = q qᵀ``, ``s`` = the largest Hessian eigenvalue): its root derivative is the
    minimum-norm derivative that :func:`sensitivity` reports, and its Jacobian has the
    nonzero spectrum of ``P H P`` plus ``s`` on the zero modes, so ``α`` is the smallest
    stiffness off the zero modes. ``tol``: relative tolerance of the derivative solves (the
    a-priori solve term).
    """
    flat_x, unravel = ravel_pytree(x_star)

    def F_tilde(x, theta):
        fx = ravel_pytree(problem.F(x, theta))[0]
        dx = ravel_pytree(x)[0] - flat_x
        return unravel(fx - q @ (q.T @ fx) + scale * (q @ (q.T @ dx)))

    return jax.jit(lambda: jacobian_error_estimate(F_tilde, x_star, (theta0,), solve_tol=tol,
                                                   lanczos_steps=steps))()


def _ritz_summary(ritz: np.ndarray) -> tuple[float, float, float]:
    """``(smallest, most_negative, largest |λ|)`` of Lanczos Ritz values of P H P.

    ``smallest`` is the smallest Ritz value above the numerical zero (|λ| ≤ 1e-10 λ_max:
    Lanczos finds the projected-out zero modes from rounding noise) — an upper bound on the
    smallest stiffness on the complement of the zero modes; ``most_negative`` is the
    smallest Ritz value, significant when below −1e-8 λ_max (the state is a saddle).
    """
    lam_max = float(np.max(np.abs(ritz))) if ritz.size else 0.0
    positive = ritz[ritz > 1e-10 * lam_max]
    smallest = float(positive.min()) if positive.size else 0.0
    return smallest, float(ritz.min()) if ritz.size else 0.0, lam_max


def _observe(plain, ctx, problem, x, theta):
    R, C, params = problem.configuration(x, theta)
    return {o.name: o.fn(ctx, R, C, params) for o in plain}


def _stage_tools(plan, plain, problem, x_star, theta0, nullspace, precond, ctx):
    """What both derivative stages need: the solver, the Hessian operator — assembled once,
    outside the loop over right-hand sides, or None to linearise F — and the observables."""
    solve = plan.solver_fn(nullspace, precond, problem.relax_cell)
    op = plan.operator(problem)
    A = None if op is None else op(x_star, theta0)
    operator = None if A is None else (lambda x, theta: A)
    return solve, operator, functools.partial(_observe, plain, ctx, problem)


@functools.partial(persistent_stage, static_argnums=(0, 1))
def _forward_stage(plan, plain, problem, x_star, theta0, nullspace, precond, ctx):
    """Values and one JVP solve per parameter component."""
    F = problem.F
    solve, operator, observe = _stage_tools(plan, plain, problem, x_star, theta0, nullspace,
                                            precond, ctx)
    flat, unravel = ravel_pytree(theta0)

    def one(t):
        theta_dot = unravel(t)
        x_dot, info = root_jvp(F, x_star, (theta0,), (theta_dot,), solve=solve,
                               on_failure="ignore", operator=operator)
        _, obs_dot = jax.jvp(observe, (x_star, theta0), (x_dot, theta_dot))
        return obs_dot, info

    # Sequential solves (lax.map): a vmapped while_loop runs every lane to the slowest and
    # batched gathers cost more — measured 1.5–2× slower than one solve after another.
    obs_dots, infos = jax.lax.map(one, jnp.eye(flat.size, dtype=flat.dtype))
    return observe(x_star, theta0), obs_dots, infos


@functools.partial(persistent_stage, static_argnums=(0, 1))
def _reverse_stage(plan, plain, problem, x_star, theta0, nullspace, precond, ctx):
    """Values and one VJP solve per observable component."""
    F = problem.F
    solve, operator, observe = _stage_tools(plan, plain, problem, x_star, theta0, nullspace,
                                            precond, ctx)
    values = observe(x_star, theta0)
    flat_values = ravel_pytree(values)[0]

    def one(w):
        _, vjp = jax.vjp(lambda x, t: ravel_pytree(observe(x, t))[0], x_star, theta0)
        x_bar, theta_bar_direct = vjp(w)
        (theta_bar_implicit,), info = root_vjp(F, x_star, (theta0,), x_bar, solve=solve,
                                               on_failure="ignore", operator=operator)
        return jax.tree.map(jnp.add, theta_bar_direct, theta_bar_implicit), info

    theta_bars, infos = jax.lax.map(one, jnp.eye(flat_values.size, dtype=flat_values.dtype))
    return values, theta_bars, infos


def _unpack_forward(obs_dots, values, theta0):
    """(n_in, *obs.shape) per observable -> derivatives[obs][param] (obs.shape + param.shape)."""
    derivatives = {}
    for name, val in values.items():
        d = np.asarray(obs_dots[name])
        per_param = {}
        offset = 0
        for path, p in jax.tree_util.tree_flatten_with_path(theta0)[0]:  # ravel order
            pname = path[0].key
            size = int(np.size(p))
            block = d[offset:offset + size].reshape(np.shape(p) + np.shape(val))
            nd_p = np.ndim(p)
            per_param[pname] = np.moveaxis(block, list(range(nd_p)),
                                           list(range(np.ndim(val), np.ndim(val) + nd_p)))
            offset += size
        derivatives[name] = per_param
    return derivatives


def _unpack_reverse(theta_bars, values, theta0):
    """(n_out, *param.shape) per parameter -> derivatives[obs][param]."""
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
    return derivatives


class _CallableModule(types.ModuleType):
    """``mdsens.md.sensitivity`` names both this module and the function above: the package
    exports the function lazily, but once any code imports the submodule, Python sets the
    package's attribute to the module. Calling the module calls the function, so
    ``from mdsens.md import sensitivity; sensitivity(...)`` works in either order."""

    def __call__(self, *args: Any, **kwargs: Any) -> Sensitivity:
        return sensitivity(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
