r"""Fit potential parameters so that the *relaxed* crystal reproduces measured properties.

The bilevel problem: the inner problem relaxes positions and cell (zero stress) at
parameters :math:`\theta`; the outer problem fits :math:`\theta` to targets,

.. math::
   L(\theta) = \sum_k w_k \sum_c \Big(\frac{o_{k,c}(x^*(\theta), \theta) - t_{k,c}}
   {s_{k,c}}\Big)^2, \qquad
   \frac{dL}{d\theta} = \sum_k \sum_c \frac{2 w_k r_{k,c}}{s_{k,c}}\,
   \frac{d o_{k,c}}{d\theta},

with :math:`r = (o - t)/s` and the scale :math:`s = |t|` (relative errors) unless given.
The total derivatives :math:`do/d\theta` run through the relaxation by implicit
differentiation: through the cell-relaxation root for the lattice constant and the energy,
and — for elastic constants, themselves the derivative :math:`d\sigma/d\eta` through the
fixed-cell relaxation — through both roots (second derivatives). Two engines give the same
numbers:

* ``engine="compiled"`` (default): the root problem of :mod:`mdsens.md.sensitivity`
  (:class:`~mdsens.md.root_problem.RootProblem`, :func:`mdsens.implicit.custom_root`, the same
  formulation as :mod:`mdsens.md.elastic`), traced once with the parameters as arguments,
  so that every outer step reuses one compiled function (≈ 1 s a step for a 4-atom cell
  instead of ≈ 100 s of tracing and compiling);
* ``engine="sensitivity"``: one call to :func:`mdsens.md.sensitivity.sensitivity` per step
  (recompiles every time; a reference).

The outer optimiser works on :math:`u = \log\theta` (parameters stay positive) with
``scipy.optimize.minimize`` (L-BFGS-B by default, box bounds ``θ₀/bounds_factor ≤ θ ≤
θ₀·bounds_factor``) or with Adam (``method="adam"``, ``learning_rate``). Every relaxation
starts from the last relaxed structure (warm start), rescaled by the change of the length
parameter (``sigma``) when it is fitted.

Targets (``targets`` keys; elastic moduli in GPa):

=====================  ======  ==========================================================
name                   unit    definition at the relaxed state
=====================  ======  ==========================================================
``lattice_constant``   Å       length of the first cell vector (pass one conventional
                               cubic cell; small-cell replication handles the cutoff)
``lattice_parameters`` Å, °    (a, b, c, α, β, γ) of the cell (array target)
``volume_per_atom``    Å³      V / N
``cohesive_energy``    eV      −E / N (isolated atoms at zero energy, as for pair
                               potentials)
``energy_per_atom``    eV      E / N
``bulk_modulus``       GPa     Voigt average (C11+C22+C33 + 2(C12+C13+C23))/9 — for a
                               cubic crystal (C11 + 2 C12)/3
``C11``, ``C12``,      GPa     cubic averages (C11+C22+C33)/3, (C12+C13+C23)/3,
``C44``                        (C44+C55+C66)/3
``elastic_constants``  GPa     the (6, 6) Voigt matrix (array target; give ``scales``
                               for its zero entries)
=====================  ======  ==========================================================

Worked example (solid argon, LJ σ and ε; ``examples/fit_potential.py``): targets
a = 5.311 Å (Peterson, Batchelder & Simmons, Phys. Rev. 150, 703 (1966), ≈ 4 K),
E_coh = 0.0803 eV/atom (7.74 kJ/mol) and B = 2.7 GPa (Kittel, *Introduction to Solid State
Physics*, 8th ed., ch. 3, tables of inert-gas crystals). From Kittel's gas-phase σ = 3.40 Å,
ε = 0.0104 eV (B 4.6 % off) the fit gives σ = 3.4349 Å, ε = 0.010258 eV and reproduces all
three to ≤ 0.17 % (10 relaxations; two parameters, three targets: a least-squares fit).
Caveat: with a C¹ switch (LJ, Morse) the second derivatives of φ jump where a neighbour
shell crosses r_onset or r_cutoff, so elastic targets are only piecewise smooth in θ when
the ratio a/σ changes (Morse α); LJ's exact scaling (a ∝ σ) never crosses a shell.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from ..md import observables as obs_mod
from ..md import zero_modes
from ..md.elastic import relaxed_stiffness
from ..md.minimize import relax
from ..md.model import EnergyModel, build
from ..md.options import DERIVATIVE_DEFAULTS, RelaxOptions
from ..md.root_problem import ParamSpec, RootProblem, implicit_root, make_solver, parse_wrt
from ..md.strain import n_voigt
from ..md.system import System

__all__ = ["EV_PER_A3_TO_GPA", "OBSERVABLES", "PotentialFit", "fit_potential", "fit_loss"]

EV_PER_A3_TO_GPA = 160.21766208
"""1 eV/Å³ in GPa."""

Engine = Literal["compiled", "sensitivity"]


# ----------------------------------------------------------------------------- observables
# Each target observable is a *linear* function of the raw relaxed quantities (lattice
# parameters, energy per atom, volume, elastic constants in eV/Å³), so the same function
# maps values and derivatives (applied to d(raw)/dθ, with a trailing parameter axis).


def _lp(raw):
    return raw["lattice_parameters"]


def _voigt_bulk(C):
    return (C[0, 0] + C[1, 1] + C[2, 2] + 2 * (C[0, 1] + C[0, 2] + C[1, 2])) / 9


@dataclasses.dataclass(frozen=True)
class _Observable:
    raw: tuple[str, ...]
    fn: Callable[[Mapping[str, np.ndarray], int], np.ndarray]  # (raw, n_atoms) -> value
    unit: str


OBSERVABLES: dict[str, _Observable] = {
    "lattice_constant": _Observable(("lattice_parameters",), lambda r, n: _lp(r)[0], "Å"),
    "lattice_parameters": _Observable(("lattice_parameters",), lambda r, n: _lp(r), "Å, °"),
    "volume_per_atom": _Observable(("volume",), lambda r, n: r["volume"] / n, "Å³"),
    "cohesive_energy": _Observable(("energy_per_atom",), lambda r, n: -r["energy_per_atom"],
                                   "eV"),
    "energy_per_atom": _Observable(("energy_per_atom",), lambda r, n: r["energy_per_atom"],
                                   "eV"),
    "bulk_modulus": _Observable(
        ("elastic_constants",),
        lambda r, n: EV_PER_A3_TO_GPA * _voigt_bulk(r["elastic_constants"]), "GPa"),
    "C11": _Observable(
        ("elastic_constants",),
        lambda r, n: EV_PER_A3_TO_GPA * sum(r["elastic_constants"][i, i] for i in range(3)) / 3,
        "GPa"),
    "C12": _Observable(
        ("elastic_constants",),
        lambda r, n: EV_PER_A3_TO_GPA * (r["elastic_constants"][0, 1] + r["elastic_constants"][
            0, 2] + r["elastic_constants"][1, 2]) / 3, "GPa"),
    "C44": _Observable(
        ("elastic_constants",),
        lambda r, n: EV_PER_A3_TO_GPA * sum(r["elastic_constants"][i, i] for i in range(3, 6))
        / 3, "GPa"),
    "elastic_constants": _Observable(
        ("elastic_constants",), lambda r, n: EV_PER_A3_TO_GPA * r["elastic_constants"], "GPa"),
}


# ----------------------------------------------------------------------------- result


@dataclasses.dataclass(frozen=True)
class PotentialFit:
    """Result of :func:`fit_potential`.

    Attributes:
      potential: the potential with the fitted parameters.
      params: fitted values of the ``wrt`` parameters; ``initial_params`` the start.
      targets, observables: target and fitted (relaxed) values, by target name.
      relative_errors: ``(observable − target) / scale`` by target name.
      loss: final loss; ``loss_history`` the loss at the start and after every outer
        iteration; ``evaluations`` one record per relaxation (params, loss, observables,
        gradient, seconds).
      system: the relaxed structure at the fitted parameters.
      success, message, n_iterations: the outer optimiser's report.
      gradient: dL/dθ at the fitted parameters.
    """

    potential: Any
    params: dict[str, float]
    initial_params: dict[str, float]
    targets: dict[str, np.ndarray]
    observables: dict[str, np.ndarray]
    relative_errors: dict[str, np.ndarray]
    units: dict[str, str]
    loss: float
    loss_history: list[float]
    evaluations: list[dict]
    system: System
    success: bool
    message: str
    n_iterations: int
    gradient: dict[str, float]
    seconds: float

    def table(self) -> str:
        """Observables vs targets as a text table."""
        lines = [f"{'observable':<20}{'target':>14}{'fitted':>14}{'error %':>10}"]
        for k, t in self.targets.items():
            o, e = np.ravel(self.observables[k]), np.ravel(self.relative_errors[k])
            for i, tv in enumerate(np.ravel(t)):
                name = k if np.size(t) == 1 else f"{k}[{i}]"
                lines.append(f"{name:<20}{tv:>14.6g}{o[i]:>14.6g}{100 * e[i]:>10.3f}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- engines


def _check_wrt(potential, wrt: Sequence[str]) -> None:
    for name in wrt:
        if name not in potential.params:
            raise ValueError(f"unknown parameter {name!r}; known: {sorted(potential.params)}")
        if np.ndim(potential.params[name]) != 0:
            raise ValueError(f"fit_potential fits scalar parameters; {name!r} has shape "
                             f"{np.shape(potential.params[name])}")
        if not float(potential.params[name]) > 0:
            raise ValueError(f"{name!r} must be > 0 (it is fitted as log {name})")


class _CompiledEngine:
    """Raw relaxed quantities and their θ-Jacobian from one compiled function per model."""

    def __init__(self, wrt, relax_cell, need_elastic, tol, maxiter):
        self.wrt = tuple(wrt)
        self.relax_cell = relax_cell
        self.need_elastic = need_elastic
        self.tol = tol
        self.maxiter = maxiter
        self._cache: dict[int, tuple[EnergyModel, Callable]] = {}

    def function(self, model: EnergyModel) -> Callable:
        hit = self._cache.get(id(model))
        if hit is not None and hit[0] is model:
            return hit[1]
        fn = jax.jit(self._make(model))
        self._cache = {id(model): (model, fn)}  # one live model at a time
        return fn

    def _make(self, model: EnergyModel) -> Callable:
        specs = tuple(ParamSpec(name, "param", name) for name in self.wrt)
        dim, relax_cell, need_elastic = model.dim, self.relax_cell, self.need_elastic
        tol, maxiter = self.tol, self.maxiter

        def evaluate(theta, base_params, R_star, cell0, nbrs):
            problem = RootProblem(model, nbrs, specs, base_params, cell0, dim, relax_cell, 0.0)
            modes = zero_modes.rigid_modes(R_star, True)
            solve = make_solver("cg", tol, maxiter, problem.embed(modes), None)
            solve_fixed = make_solver("cg", tol, maxiter, modes, None)
            x_star = ({"R": R_star, "eps": jnp.zeros((n_voigt(dim),), R_star.dtype)}
                      if relax_cell else R_star)

            context = obs_mod.Context(model, nbrs, R_star)

            def raw(th):
                x = implicit_root(problem, x_star, th, solve)  # the relaxation's root
                R, C, params = problem.configuration(x, th)
                out = {name: obs_mod.BUILTIN[name].fn(context, R, C, params)
                       for name in ("lattice_parameters", "energy_per_atom", "volume")}
                if need_elastic:
                    # C = dσ/dη through the fixed-cell relaxation of positions at cell C
                    out["elastic_constants"] = relaxed_stiffness(problem, th, R, C, solve_fixed)
                return out

            return raw(theta), jax.jacfwd(raw)(theta)

        return evaluate

    def __call__(self, relaxation, params) -> tuple[dict, dict]:
        model = relaxation.model
        system = relaxation.system
        R = jnp.asarray(system.positions, jnp.float64)
        cell = jnp.asarray(system.cell, jnp.float64)
        nbrs = relaxation.nbrs if relaxation.nbrs is not None else model.allocate(R, cell)
        theta = {k: jnp.asarray(params[k], jnp.float64) for k in self.wrt}
        base = {k: jnp.asarray(v, jnp.float64) for k, v in params.items()}
        values, jac = self.function(model)(theta, base, R, cell, nbrs)
        values = {k: np.asarray(v) for k, v in values.items()}
        derivatives = {k: {p: np.asarray(d[p]) for p in self.wrt} for k, d in jac.items()}
        return values, derivatives


def _sensitivity_engine(wrt, raw_names, relax_cell, tol, on_failure):
    from ..md.sensitivity import sensitivity

    def run(relaxation, potential):
        res = sensitivity(relaxation.system, potential, wrt=list(wrt),
                          observables=list(raw_names), relax_cell=relax_cell,
                          relaxation=relaxation, tol=tol, on_failure=on_failure)
        return dict(res.values), {k: dict(v) for k, v in res.derivatives.items()}

    return run


# ----------------------------------------------------------------------------- the loss


def _normalise_targets(targets, scales, weights):
    if not targets:
        raise ValueError("targets is empty")
    unknown = sorted(set(targets) - set(OBSERVABLES))
    if unknown:
        raise ValueError(f"unknown targets {unknown}; known: {sorted(OBSERVABLES)}")
    t = {k: np.asarray(v, np.float64) for k, v in targets.items()}
    s = {k: np.abs(t[k]) if scales is None or k not in scales
         else np.broadcast_to(np.asarray(scales[k], np.float64), t[k].shape).copy()
         for k in t}
    for k, v in s.items():
        if np.any(v <= 0):
            raise ValueError(f"target {k!r} has a zero entry: give a positive scale in scales")
    w = {k: 1.0 if weights is None else float(weights.get(k, 1.0)) for k in t}
    return t, s, w


def fit_loss(observables, derivatives, targets, scales, weights, wrt):
    r"""Loss :math:`\sum_k w_k \sum_c ((o_{k,c}-t_{k,c})/s_{k,c})^2` and its gradient
    :math:`\sum_k\sum_c 2 w_k r_{k,c}/s_{k,c}\; do_{k,c}/d\theta` (chain rule), with
    ``derivatives[k][p]`` of shape ``o_k.shape + ()`` for scalar parameters ``p``."""
    loss, grad = 0.0, dict.fromkeys(wrt, 0.0)
    for k, t in targets.items():
        r = (observables[k] - t) / scales[k]
        loss += weights[k] * float(np.sum(r**2))
        for p in wrt:
            grad[p] += float(np.sum(2 * weights[k] * r / scales[k] * derivatives[k][p]))
    return loss, grad


# ----------------------------------------------------------------------------- the fit


def fit_potential(
    system: System | Any,
    potential: Any,
    targets: Mapping[str, float | Sequence[float] | np.ndarray],
    wrt: Sequence[str],
    *,
    steps: int = 50,
    method: str | Callable = "L-BFGS-B",
    learning_rate: float = 0.05,
    weights: Mapping[str, float] | None = None,
    scales: Mapping[str, float | np.ndarray] | None = None,
    relax_cell: bool = True,
    bounds_factor: float | None = 2.0,
    step_scale: float = 0.1,
    gtol: float = 1e-10,
    ftol: float = 1e-14,
    fmax: float = 1e-10,
    relax_options: RelaxOptions | dict | None = None,
    engine: Engine = "compiled",
    tol: float = 1e-12,
    maxiter: int | None = None,
    length_parameter: str | None = "sigma",
    on_failure: Literal["raise", "warn", "ignore"] = "raise",
    callback: Callable[[dict], None] | None = None,
) -> PotentialFit:
    r"""Fit scalar potential parameters ``wrt`` so that the relaxed crystal matches ``targets``.

    Args:
      system: the crystal (an :class:`~mdsens.md.System` or ``ase.Atoms``), e.g. one
        conventional fcc cell; it is relaxed (cell too, with ``relax_cell``) at every step.
      potential: the potential, with the start values of the parameters.
      targets: target name -> value (see the module table; elastic moduli in GPa).
      wrt: names of scalar, positive potential parameters to fit (``"sigma"``,
        ``"epsilon"``, ``"alpha"``, ...); the optimiser works on their logarithms.
      steps: most outer iterations.
      method: a ``scipy.optimize.minimize`` method that uses gradients (``"L-BFGS-B"``,
        default, with box bounds; ``"BFGS"``, ``"CG"``, ...), or ``"adam"`` (Adam on the
        log-parameters with ``learning_rate``), or a callable custom ``scipy`` method.
      weights: target name -> weight ``w_k`` (default 1).
      scales: target name -> scale ``s_k`` of the residual (default ``|target|``: relative
        errors).
      relax_cell: relax the cell at zero pressure (lattice constants need it).
      bounds_factor: L-BFGS-B keeps each parameter within ``[θ₀/f, θ₀ f]`` (None: no
        bounds).
      step_scale: the optimiser's variables are ``z = (log θ − log θ₀) / step_scale``, so
        that a unit step (L-BFGS-B's first trial step has length 1) changes the parameters by
        about ``step_scale`` (10 %), not by a factor e.
      gtol, ftol: L-BFGS-B's tolerances (``options``), on the log-parameter gradient and on
        the relative loss decrease.
      fmax: force tolerance of each relaxation (eV/Å; the derivatives are only as good as
        the root); ``relax_options``: a :class:`~mdsens.md.RelaxOptions` for every
        relaxation, or a dict of its fields (over fmax and max_steps 100000).
      engine: ``"compiled"`` (one compiled implicit-derivative function for all steps) or
        ``"sensitivity"`` (:func:`~mdsens.md.sensitivity.sensitivity` at every step).
      tol, maxiter: CG tolerance and iteration cap of the implicit solves.
      length_parameter: a parameter that sets the length scale (lattice constants scale
        with it): when fitted, the warm-start structure is rescaled by its change.
      on_failure: a relaxation that did not converge raises (``"raise"``), warns, or is
        used anyway.
      callback: called with each evaluation record.

    Returns:
      :class:`PotentialFit`.
    """
    from scipy import optimize

    t_start = time.perf_counter()
    if not isinstance(system, System):
        system = System.from_ase(system)
    if not system.is_periodic:
        raise ValueError("fit_potential needs a periodic crystal")
    wrt = list(wrt)
    if not wrt or len(set(wrt)) != len(wrt):
        raise ValueError(f"wrt must name distinct parameters, got {wrt}")
    _check_wrt(potential, wrt)
    parse_wrt(wrt, potential, system.dim, True, relax_cell)  # same validation as sensitivity
    if system.dim != 3 and any(OBSERVABLES[k].raw == ("elastic_constants",) or
                               k in ("lattice_constant", "lattice_parameters")
                               for k in targets):
        raise ValueError("these targets are defined for 3D crystals")
    t_, s_, w_ = _normalise_targets(targets, scales, weights)
    raw_names = sorted({r for k in t_ for r in OBSERVABLES[k].raw})
    need_elastic = "elastic_constants" in raw_names
    if engine == "compiled":
        compiled = _CompiledEngine(wrt, relax_cell, need_elastic, tol, maxiter)
    elif engine == "sensitivity":
        run_sensitivity = _sensitivity_engine(wrt, raw_names, relax_cell, tol, on_failure)
    else:
        raise ValueError(f"engine must be 'compiled' or 'sensitivity', got {engine!r}")

    theta0 = {k: float(potential.params[k]) for k in wrt}
    u0 = np.log(np.array([theta0[k] for k in wrt]))
    n_atoms = system.n_atoms
    # FIRE steps are in units of the current τ and ℓ (relax's own convention) and traced:
    # every relaxation reuses one compiled loop
    ropts = RelaxOptions.resolve(relax_options, DERIVATIVE_DEFAULTS.replace(fmax=fmax)
                                 ).replace(relax_cell=bool(relax_cell))
    # A model whose cutoff covers the fit's range of the length parameter (rebuilt if not).
    state = {"system": system, "potential": potential, "model": None}
    evaluations: list[dict] = []
    cache: dict[bytes, tuple[float, np.ndarray]] = {}

    def model_for(start: System, pot):
        model = state["model"]
        if model is not None:
            try:
                model.check_params(pot.params)
                needed = build(start, model.potential).replicas
                if all(m >= n for m, n in zip(model.replicas, needed, strict=True)):
                    return model
            except ValueError:
                pass
        margin = pot
        if length_parameter in pot.params and np.ndim(pot.params[length_parameter]) == 0:
            # 10 % headroom on the cutoff: the model survives small steps of the length scale
            margin = pot.with_params(**{length_parameter: 1.1 * float(
                pot.params[length_parameter])})
        state["model"] = build(start, margin)
        return state["model"]

    def evaluate(z: np.ndarray) -> tuple[float, np.ndarray]:
        key = np.asarray(z, np.float64).tobytes()
        if key in cache:
            return cache[key]
        t0 = time.perf_counter()
        u = u0 + step_scale * np.asarray(z, np.float64)
        theta = dict(zip(wrt, np.exp(u).tolist(), strict=True))
        pot = potential.with_params(**theta)
        start, previous = state["system"], state["potential"]
        if length_parameter in theta:
            ratio = theta[length_parameter] / float(previous.params[length_parameter])
            start = start.replace(positions=start.positions * ratio, cell=start.cell * ratio)
        model = model_for(start, pot)
        nbrs = state.get("nbrs") if model is state.get("nbrs_model") else None
        relaxation = relax(start, model, ropts, params=pot.params, nbrs=nbrs,
                           on_failure="ignore")
        if not bool(relaxation.converged):
            message = f"relaxation did not converge at {theta}: {relaxation.message}"
            if on_failure == "raise":
                raise RuntimeError(message)
            if on_failure == "warn":
                import warnings

                warnings.warn(message, RuntimeWarning, stacklevel=2)
        if relaxation.model is not model:
            state["model"] = relaxation.model
        # keep the list (and its capacity: the compiled function's shapes) for the next step
        state.update(nbrs=relaxation.nbrs, nbrs_model=relaxation.model)
        t_relax = time.perf_counter() - t0
        if engine == "compiled":
            raw, draw = compiled(relaxation, pot.params)
        else:
            raw, draw = run_sensitivity(relaxation, pot)
        obs = {k: np.asarray(OBSERVABLES[k].fn(raw, n_atoms), np.float64) for k in t_}
        dobs = {k: {p: np.asarray(OBSERVABLES[k].fn({r: d[p] for r, d in draw.items()},
                                                    n_atoms), np.float64) for p in wrt}
                for k in t_}
        loss, grad = fit_loss(obs, dobs, t_, s_, w_, wrt)
        grad_u = np.array([grad[p] * theta[p] for p in wrt])  # d/d log θ
        state.update(system=relaxation.system, potential=pot)
        record = {"params": theta, "loss": loss, "observables": obs, "gradient": grad,
                  "relaxation_steps": int(relaxation.steps),
                  "seconds": time.perf_counter() - t0, "relax_seconds": t_relax}
        evaluations.append(record)
        if callback is not None:
            callback(record)
        if not np.isfinite(loss):
            raise RuntimeError(f"non-finite loss at {theta}")
        cache[key] = (loss, step_scale * grad_u)
        state["last"] = (np.array(z, np.float64), obs, grad, relaxation.system, pot)
        return cache[key]

    z0 = np.zeros_like(u0)
    loss0, _ = evaluate(z0)
    history = [loss0]
    named = method.upper() if isinstance(method, str) else ""
    if named == "ADAM":
        u, m, v = z0.copy(), np.zeros_like(u0), np.zeros_like(u0)
        b1, b2 = 0.9, 0.999
        for it in range(1, steps + 1):
            _, g = evaluate(u)
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g**2
            m_hat, v_hat = m / (1 - b1**it), v / (1 - b2**it)
            u = u - learning_rate / step_scale * m_hat / (np.sqrt(v_hat) + 1e-12)
            history.append(evaluate(u)[0])
        success, message, n_it, u_best = True, f"{steps} Adam steps", steps, u
    else:
        bounds = None
        if bounds_factor is not None and named == "L-BFGS-B":
            half = math.log(bounds_factor) / step_scale
            bounds = [(-half, half)] * len(u0)
        options = {"maxiter": int(steps)}
        if named == "L-BFGS-B":
            options.update(gtol=gtol, ftol=ftol)
        res = optimize.minimize(evaluate, z0, jac=True, method=method, bounds=bounds,
                                options=options,
                                callback=lambda xk: history.append(evaluate(xk)[0]))
        success, message, n_it, u_best = bool(res.success), str(res.message), int(res.nit), \
            res.x
    # make sure the reported state is the final iterate
    evaluate(u_best)
    cached = state["last"]
    if not np.array_equal(cached[0], u_best):
        cache.clear()
        evaluate(u_best)
    _, obs, grad, relaxed, pot = state["last"]
    loss = cache[np.asarray(u_best, np.float64).tobytes()][0]
    params = {k: float(pot.params[k]) for k in wrt}
    return PotentialFit(
        potential=pot,
        params=params,
        initial_params=theta0,
        targets=t_,
        observables=obs,
        relative_errors={k: (obs[k] - t_[k]) / s_[k] for k in t_},
        units={k: OBSERVABLES[k].unit for k in t_},
        loss=loss,
        loss_history=history,
        evaluations=evaluations,
        system=relaxed,
        success=success,
        message=message,
        n_iterations=n_it,
        gradient=grad,
        seconds=time.perf_counter() - t_start,
    )
