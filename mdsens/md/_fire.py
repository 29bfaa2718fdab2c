"""FIRE and gradient descent as small ``init / step`` pieces over pytrees.

Both minimisers work on generalised coordinates ``q`` (any pytree of float arrays; for a
fixed-cell relaxation the positions ``(N, d)``, for a variable-cell one positions and a
strain) and a *force function*

    force_fn(q) -> (energy, force, aux)

where ``force = -∇_q H(q)`` is a pytree shaped like ``q`` and ``aux`` is anything the caller
wants carried with the point (neighbour list, Cartesian forces, stress...). Every ``step``
calls ``force_fn`` exactly once and returns ``(new_state, trial)``, ``trial = (energy, force,
aux)`` of the point it evaluated, so a driving loop can inspect the trial (neighbour-list
overflow, non-finite values) and keep the previous state when it is bad. The state always
holds the energy, force and aux of its own position.

Masses are 1 for every degree of freedom, so a time step ``dt`` has units of
``length * sqrt(mass / energy)`` with mass 1: in Lennard-Jones reduced units it is the LJ time
``τ = σ sqrt(m/ε)``; with ASE units (eV, Å) it is Å·sqrt(1/eV) (≈ 10.18 fs · sqrt(m/amu)).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.tree_util import tree_leaves, tree_map

PyTree = Any
ForceFn = Callable[[PyTree], tuple[jax.Array, PyTree, PyTree]]

__all__ = ["Fire2State", "FireState", "GDState", "Minimizer", "fire", "fire2", "gd",
           "max_atom_norm", "step_ratio"]


class Minimizer(NamedTuple):
    """Pure functions ``init(q, force_fn) -> state``, ``step(state, force_fn) -> (state,
    trial)`` (jax-md/optax style) and ``reject(state) -> state``: the state to retry from
    after the driving loop refused the trial of ``step`` (non-finite, or an absurd energy
    rise): same point, at rest, with a smaller step."""

    init: Callable[..., Any]
    step: Callable[..., Any]
    reject: Callable[..., Any]


class FireState(NamedTuple):
    """State of FIRE at one point.

    position, velocity, force: pytrees shaped like ``q``; energy: scalar; aux: the caller's
    data for ``position``; dt: current time step; alpha: current mixing parameter; n_pos:
    number of steps since the power last turned negative.
    """

    position: PyTree
    velocity: PyTree
    force: PyTree
    energy: jax.Array
    aux: PyTree
    dt: jax.Array
    alpha: jax.Array
    n_pos: jax.Array


class Fire2State(NamedTuple):
    r"""State of FIRE 2.0 at one point: :class:`FireState`'s fields, with ``n_pos`` the
    steps since the power was last :math:`\le 0`, plus ``n_steps``, the steps taken."""

    position: PyTree
    velocity: PyTree
    force: PyTree
    energy: jax.Array
    aux: PyTree
    dt: jax.Array
    alpha: jax.Array
    n_pos: jax.Array
    n_steps: jax.Array


class GDState(NamedTuple):
    """State of adaptive gradient descent: the point, its energy/force/aux and step size."""

    position: PyTree
    force: PyTree
    energy: jax.Array
    aux: PyTree
    step_size: jax.Array


def _vdot(a: PyTree, b: PyTree) -> jax.Array:
    return sum(jnp.vdot(x, y) for x, y in zip(tree_leaves(a), tree_leaves(b)))


def _norm(a: PyTree) -> jax.Array:
    return jnp.sqrt(_vdot(a, a))


def _row_norm(x: jax.Array) -> jax.Array:
    """Largest Euclidean norm of a row of ``x`` (shape ``(n, ...)``; a scalar is one row)."""
    if x.ndim >= 1 and x.size:
        return jnp.max(jnp.sqrt(jnp.sum(x.reshape(x.shape[0], -1) ** 2, axis=-1)))
    return jnp.abs(x.reshape(-1)).max(initial=0.0)


def max_atom_norm(a: PyTree) -> jax.Array:
    """Largest Euclidean norm of a row of any leaf (leaf shape ``(n, d)``; a scalar leaf
    counts as one row of one element): the per-atom step length that ``max_step`` caps."""
    return jnp.max(jnp.stack([_row_norm(x) for x in tree_leaves(a)]))


def step_ratio(dq: PyTree, max_step: Any) -> jax.Array:
    """``max over leaves of (largest row norm of the leaf) / (its cap)``: the step is
    within its caps iff this is ``<= 1``. ``max_step`` is one cap for every leaf or a pytree
    of caps shaped like ``dq`` (e.g. one for the positions, another for a strain)."""
    leaves = tree_leaves(dq)
    caps = tree_leaves(max_step)
    if len(caps) == 1:
        caps = caps * len(leaves)
    elif len(caps) != len(leaves):
        raise ValueError("max_step: one cap, or one per leaf of the coordinates")
    return jnp.max(jnp.stack([_row_norm(x) / c for x, c in zip(leaves, caps)]))


def _cap(dq: PyTree, max_step: Any) -> PyTree:
    """Scale the whole step down uniformly so that no row of a leaf moves farther than its
    cap (``max_step``: see :func:`step_ratio`; None: no cap)."""
    if max_step is None:
        return dq
    ratio = step_ratio(dq, max_step)
    scale = jnp.where(ratio > 1, 1.0 / jnp.maximum(ratio, 1e-300), 1.0)
    return tree_map(lambda x: x * scale.astype(x.dtype), dq)


def _fire_start(q: PyTree, force_fn: ForceFn, dt_start: float, alpha_start: float
                ) -> tuple:
    """The fields of :class:`FireState` at the start ``q``: at rest, ``dt_start``,
    ``alpha_start``, no steps since a negative power."""
    e, f, aux = force_fn(q)
    dtype = jnp.result_type(*tree_leaves(q))
    return (q, tree_map(jnp.zeros_like, q), f, e, aux, jnp.asarray(dt_start, dtype),
            jnp.asarray(alpha_start, dtype), jnp.zeros((), jnp.int32))


def _restart(state: Any, f_dec: float, alpha_start: float) -> Any:
    """FIRE's state after a rejected trial: same point, at rest, ``dt`` times ``f_dec``,
    mixing back to ``alpha_start``, no steps since a reset."""
    return state._replace(velocity=tree_map(jnp.zeros_like, state.velocity),
                          dt=state.dt * f_dec, alpha=jnp.full_like(state.alpha, alpha_start),
                          n_pos=jnp.zeros_like(state.n_pos))


def fire(
    dt_start: float,
    dt_max: float,
    *,
    n_min: int = 5,
    f_inc: float = 1.1,
    f_dec: float = 0.5,
    alpha_start: float = 0.1,
    f_alpha: float = 0.99,
    max_step: float | None = None,
) -> Minimizer:
    r"""FIRE, the Fast Inertial Relaxation Engine (Bitzek et al., PRL 97, 170201 (2006)).

    Semi-implicit Euler MD with unit masses plus velocity mixing. One step, with generalised
    force :math:`F = -\nabla H(q)` and power :math:`P = F \cdot v` (global dot products):

    * :math:`P > 0`: :math:`v \leftarrow (1-\alpha) v + \alpha |v| \hat F`; when more than
      ``n_min`` steps have passed since the last :math:`P < 0`,
      :math:`\Delta t \leftarrow \min(f_{inc} \Delta t, \Delta t_{max})`,
      :math:`\alpha \leftarrow f_\alpha \alpha`.
    * :math:`P < 0`: :math:`v \leftarrow 0`, :math:`\Delta t \leftarrow f_{dec} \Delta t`,
      :math:`\alpha \leftarrow \alpha_{start}` (FIRE 2.0's half step back is not taken).
    * then :math:`v \leftarrow v + \Delta t F`, :math:`\delta q = \Delta t v`, scaled down as a
      whole so that no row of any leaf moves more than ``max_step`` (a safeguard as in ASE;
      ``None``: no cap), :math:`q \leftarrow q + \delta q`, and the force is re-evaluated.

    Args:
        dt_start, dt_max: initial and largest time step (units: see the module docstring).
        n_min, f_inc, f_dec, alpha_start, f_alpha: the FIRE constants of Bitzek et al.
        max_step: cap on the per-row displacement of one step (length units): one for every
          leaf, a pytree of caps shaped like ``q`` (see :func:`step_ratio`), or ``None``.
    """

    def init(q: PyTree, force_fn: ForceFn) -> FireState:
        return FireState(*_fire_start(q, force_fn, dt_start, alpha_start))

    def step(state: FireState, force_fn: ForceFn) -> tuple[FireState, tuple]:
        q, v, f, _, _, dt, alpha, n_pos = state
        power = _vdot(f, v)
        up, down = power > 0, power < 0
        v_norm, f_norm = _norm(v), _norm(f)
        scale = jnp.where(f_norm > 0, v_norm / jnp.where(f_norm > 0, f_norm, 1.0), 0.0)
        v = tree_map(
            lambda vi, fi: jnp.where(
                up, (1 - alpha) * vi + alpha * scale * fi, jnp.where(down, 0.0, vi)
            ),
            v,
            f,
        )
        grow = up & (n_pos > n_min)
        dt = jnp.where(grow, jnp.minimum(dt * f_inc, dt_max), jnp.where(down, dt * f_dec, dt))
        alpha = jnp.where(grow, alpha * f_alpha, jnp.where(down, alpha_start, alpha))
        n_pos = jnp.where(down, 0, n_pos + 1)

        v = tree_map(lambda vi, fi: vi + dt * fi, v, f)
        dq = _cap(tree_map(lambda vi: dt * vi, v), max_step)
        q_new = tree_map(jnp.add, q, dq)
        e_new, f_new, aux_new = force_fn(q_new)
        new = FireState(q_new, v, f_new, e_new, aux_new, dt, alpha, n_pos)
        return new, (e_new, f_new, aux_new)

    return Minimizer(init, step, lambda state: _restart(state, f_dec, alpha_start))


def fire2(
    dt_start: float,
    dt_max: float,
    *,
    dt_min: float | None = None,
    delay: int = 20,
    f_inc: float = 1.1,
    f_dec: float = 0.5,
    alpha_start: float = 0.25,
    f_alpha: float = 0.99,
    max_step: float | None = None,
    half_step_back: bool = True,
) -> Minimizer:
    r"""FIRE 2.0 (Guénolé et al., Comput. Mater. Sci. 175, 109584 (2020)), with the
    constants and step of LAMMPS's ``min_style fire`` (semi-implicit Euler).

    One step from :math:`(q, v, F)`, power :math:`P = F \cdot v` (global dot products):

    * :math:`P > 0`: mixing weights :math:`a = 1-\alpha`, :math:`b = \alpha |v|/|F|` (from
      the current :math:`v`); when more than ``delay`` steps have passed since the last
      :math:`P \le 0`: :math:`\Delta t \leftarrow \min(f_{inc}\Delta t, \Delta t_{max})`,
      :math:`\alpha \leftarrow f_\alpha \alpha`.
    * :math:`P \le 0`: after the first ``delay`` steps of the run,
      :math:`\alpha \leftarrow \alpha_{start}` and :math:`\Delta t \leftarrow f_{dec}\Delta t`
      unless that falls below ``dt_min``; with ``half_step_back``,
      :math:`q \leftarrow q - \tfrac12 \Delta t\, v` (the inertia correction); :math:`v
      \leftarrow 0`.
    * the step's time :math:`h = \Delta t`, reduced so that :math:`h \max_i |u_i| \le`
      ``max_step`` with :math:`u = v`, or :math:`u = \Delta t F` right after a reset (rows
      of every leaf; Euclidean norm);
    * :math:`v \leftarrow v + hF`; if :math:`P > 0`, :math:`v \leftarrow a v + b F`;
      :math:`q \leftarrow q + h v` (that move scaled down to the cap when it exceeds it:
      the cut of :math:`h` bounds only the velocity before the kick; LAMMPS does not cap it,
      and loses atoms when the force jumps), and the force is re-evaluated.

    The first step has :math:`v = 0`, hence :math:`P = 0`: it starts with a reset.

    Args:
        dt_start, dt_max: initial and largest time step (units: module docstring).
        dt_min: smallest time step a reset may set (default ``0.02 * dt_start``).
        delay, f_inc, f_dec, alpha_start, f_alpha: the FIRE 2.0 constants (LAMMPS's
          ``delaystep``, ``dtgrow``, ``dtshrink``, ``alpha0``, ``alphashrink``).
        max_step: cap on the per-row displacement of one step (length units): one for every
          leaf, a pytree of caps shaped like ``q`` (see :func:`step_ratio`), or ``None``.
        half_step_back: take the half step back at a reset.
    """
    dt_floor = 0.02 * dt_start if dt_min is None else dt_min

    def init(q: PyTree, force_fn: ForceFn) -> Fire2State:
        return Fire2State(*_fire_start(q, force_fn, dt_start, alpha_start),
                          jnp.zeros((), jnp.int32))

    def step(state: Fire2State, force_fn: ForceFn) -> tuple[Fire2State, tuple]:
        q, v, f, _, _, dt, alpha, n_pos, n_steps = state
        power = _vdot(f, v)
        up = power > 0
        f_norm2 = _vdot(f, f)
        mix_b = jnp.where(f_norm2 > 1e-20,
                          alpha * jnp.sqrt(_vdot(v, v) / jnp.where(f_norm2 > 1e-20, f_norm2, 1.0)),
                          0.0)
        mix_a = 1.0 - alpha
        grow = up & (n_pos + 1 > delay)
        settled = n_steps + 1 >= delay  # resets change dt and alpha only after the delay
        shrink = ~up & settled & (dt * f_dec >= dt_floor)
        dt = jnp.where(grow, jnp.minimum(dt * f_inc, dt_max), jnp.where(shrink, dt * f_dec, dt))
        alpha = jnp.where(grow, alpha * f_alpha,
                          jnp.where(~up & settled, alpha_start, alpha))
        n_pos = jnp.where(up, n_pos + 1, 0)
        if half_step_back:  # capped like a step (LAMMPS's is not: it can lose atoms)
            back = _cap(tree_map(lambda vi: -0.5 * dt * vi, v), max_step)
            q = tree_map(lambda qi, bi: jnp.where(up, qi, qi + bi), q, back)
        v = tree_map(lambda vi: jnp.where(up, vi, 0.0), v)
        h = dt
        if max_step is not None:
            probe = tree_map(lambda vi, fi: jnp.where(up, vi, dt * fi), v, f)
            fastest = step_ratio(probe, max_step)  # per unit time, in units of the caps
            h = jnp.where(h * fastest > 1, 1.0 / jnp.maximum(fastest, 1e-300), h)
        v = tree_map(lambda vi, fi: vi + h * fi, v, f)
        v = tree_map(lambda vi, fi: jnp.where(up, mix_a * vi + mix_b * fi, vi), v, f)
        # the time cut above bounds the move by the velocity before the force kick; after a
        # jump of the force (overlaps) h v can still be long: capped like every move
        q_new = tree_map(jnp.add, q, _cap(tree_map(lambda vi: h * vi, v), max_step))
        e_new, f_new, aux_new = force_fn(q_new)
        new = Fire2State(q_new, v, f_new, e_new, aux_new, dt, alpha, n_pos, n_steps + 1)
        return new, (e_new, f_new, aux_new)

    return Minimizer(init, step, lambda state: _restart(state, f_dec, alpha_start))


def gd(
    step_size: float,
    *,
    f_inc: float = 1.2,
    f_dec: float = 0.5,
    max_step: float | None = None,
    energy_rtol: float = 1e-12,
) -> Minimizer:
    r"""Gradient descent with an adaptive step size and a descent safeguard.

    Trial point :math:`q' = q + \eta F` (step scaled down as a whole so that no row moves
    more than ``max_step``). The trial is *accepted* when the energy went down,
    :math:`H(q') < H(q) - \tau`, or when the change is within round-off,
    :math:`|H(q') - H(q)| \le \tau` with :math:`\tau = \text{energy\_rtol}\,(|H(q)| + 1)`, and the
    force norm did not grow (the quadratic-regime test of stability:
    :math:`|F(q')| \le |F(q)|` holds for every :math:`\eta < 2/\lambda_{max}`). On acceptance
    :math:`\eta \leftarrow f_{inc}\eta`; otherwise the point is kept and
    :math:`\eta \leftarrow f_{dec}\eta`. The step size therefore settles just below the
    stability limit :math:`2/\lambda_{max}` of the Hessian; ``step_size`` is only its start.
    """

    def init(q: PyTree, force_fn: ForceFn) -> GDState:
        e, f, aux = force_fn(q)
        dtype = jnp.result_type(*tree_leaves(q))
        return GDState(q, f, e, aux, jnp.asarray(step_size, dtype))

    def step(state: GDState, force_fn: ForceFn) -> tuple[GDState, tuple]:
        q, f, e, aux, eta = state
        dq = _cap(tree_map(lambda fi: eta * fi, f), max_step)
        q_t = tree_map(jnp.add, q, dq)
        e_t, f_t, aux_t = force_fn(q_t)
        tol = energy_rtol * (jnp.abs(e) + 1)
        accept = (e_t < e - tol) | ((jnp.abs(e_t - e) <= tol) & (_norm(f_t) <= _norm(f)))
        pick = lambda a, b: tree_map(lambda x, y: jnp.where(accept, x, y), a, b)  # noqa: E731
        new = GDState(
            pick(q_t, q),
            pick(f_t, f),
            jnp.where(accept, e_t, e),
            pick(aux_t, aux),
            jnp.where(accept, eta * f_inc, eta * f_dec),
        )
        return new, (e_t, f_t, aux_t)

    def reject(state: GDState) -> GDState:
        return state._replace(step_size=state.step_size * f_dec)

    return Minimizer(init, step, reject)
