"""Tests of the optimality-map catalog: projections, prox operators and conditions.

Every check is against an independent reference (numpy closed forms, scipy.optimize minimisers,
bisection, central finite differences of re-solved problems). Runs in float64
(tests/conftest.py).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

import mdsens.implicit as mi
from mdsens.implicit import conditions, projections, prox

# float64 is enabled by tests/conftest.py; fail loudly rather than compare in float32.
assert jax.config.jax_enable_x64, "tests/test_conditions.py needs float64 (see conftest.py)"

# ============================================================================= references
def _simplex_bisection(x: np.ndarray, s: float) -> np.ndarray:
    """Projection onto {y >= 0, sum y = s} by bisection on tau in sum(max(x - tau, 0)) = s."""
    lo, hi = x.min() - s / x.size - 1.0, x.max()
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if np.maximum(x - mid, 0).sum() > s:
            lo = mid
        else:
            hi = mid
    return np.maximum(x - 0.5 * (lo + hi), 0)


def _slsqp_projection(x: np.ndarray, constraints: list[dict], x0: np.ndarray) -> np.ndarray:
    """argmin_y ||y - x||^2 over the set given as scipy constraints, by SLSQP."""
    res = scipy.optimize.minimize(
        lambda y: 0.5 * np.sum((y - x) ** 2), x0, jac=lambda y: y - x, method="SLSQP",
        constraints=constraints, options={"ftol": 1e-13, "maxiter": 1000},
    )
    assert res.success, res.message
    return res.x


def _l1_ball_slsqp(x: np.ndarray, r: float) -> np.ndarray:
    """l1-ball projection via the split y = u - v, u, v >= 0, sum(u + v) <= r (smooth QP)."""
    n = x.size

    def obj(uv: np.ndarray) -> float:
        return 0.5 * np.sum((uv[:n] - uv[n:] - x) ** 2)

    def jac(uv: np.ndarray) -> np.ndarray:
        d = uv[:n] - uv[n:] - x
        return np.concatenate([d, -d])

    res = scipy.optimize.minimize(
        obj, np.zeros(2 * n), jac=jac, method="SLSQP", bounds=[(0, None)] * (2 * n),
        constraints=[{"type": "ineq", "fun": lambda uv: r - uv.sum(),
                      "jac": lambda uv: -np.ones(2 * n)}],
        options={"ftol": 1e-13, "maxiter": 1000},
    )
    assert res.success, res.message
    return res.x[:n] - res.x[n:]


def _central_fd(fun: Callable[[jax.Array], jax.Array], theta: jax.Array,
                h: float = 1e-6) -> np.ndarray:
    """Central finite-difference Jacobian of a vector function of a vector (or scalar) theta.

    Returns an array of shape out.shape + theta.shape.
    """
    fun = jax.jit(fun)
    theta = jnp.asarray(theta)
    flat = theta.reshape(-1)
    cols = []
    for i in range(flat.size):
        e = jnp.zeros_like(flat).at[i].set(h)
        plus = np.asarray(fun((flat + e).reshape(theta.shape)))
        minus = np.asarray(fun((flat - e).reshape(theta.shape)))
        cols.append((plus - minus) / (2 * h))
    jac = np.stack(cols, axis=-1)
    return jac.reshape(jac.shape[:-1] + theta.shape)


# ============================================================================= projections
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("scale", [1.0, 0.3, 4.0])
def test_simplex_matches_bisection(seed: int, scale: float) -> None:
    x = np.random.default_rng(seed).normal(size=7) * 2
    got = projections.projection_simplex(jnp.asarray(x), scale)
    np.testing.assert_allclose(got, _simplex_bisection(x, scale), atol=1e-12)
    assert float(jnp.sum(got)) == pytest.approx(scale, abs=1e-12)
    assert float(jnp.min(got)) >= 0.0


def test_simplex_on_pytree_is_joint() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(2, 2)), rng.normal(size=3)
    got = projections.projection_simplex({"a": jnp.asarray(a), "b": jnp.asarray(b)}, 1.5)
    ref = _simplex_bisection(np.concatenate([a.ravel(), b]), 1.5)
    np.testing.assert_allclose(got["a"], ref[:4].reshape(2, 2), atol=1e-12)
    np.testing.assert_allclose(got["b"], ref[4:], atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_l1_ball_matches_slsqp(seed: int) -> None:
    x = np.random.default_rng(seed).normal(size=6) * 2
    radius = 0.4 * np.abs(x).sum()
    got = projections.projection_l1_ball(jnp.asarray(x), radius)
    np.testing.assert_allclose(got, _l1_ball_slsqp(x, radius), atol=1e-6)
    assert float(jnp.abs(got).sum()) == pytest.approx(radius, abs=1e-12)


def test_l1_ball_inside_is_identity() -> None:
    x = jnp.array([0.1, -0.2, 0.3])
    np.testing.assert_array_equal(projections.projection_l1_ball(x, 1.0), x)


@pytest.mark.parametrize("seed", [0, 1])
def test_l2_ball_and_halfspace_match_slsqp(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x, a = rng.normal(size=5) * 2, rng.normal(size=5)
    radius, b = 0.5 * np.linalg.norm(x), a @ x - 1.0
    ball_ref = _slsqp_projection(
        x, [{"type": "ineq", "fun": lambda y: radius**2 - y @ y, "jac": lambda y: -2 * y}],
        np.zeros(5))
    np.testing.assert_allclose(projections.projection_l2_ball(jnp.asarray(x), radius),
                               ball_ref, atol=1e-6)
    half_ref = _slsqp_projection(
        x, [{"type": "ineq", "fun": lambda y: b - a @ y, "jac": lambda y: -a}], np.zeros(5))
    hyper = (jnp.asarray(a), b)
    np.testing.assert_allclose(projections.projection_halfspace(jnp.asarray(x), hyper),
                               half_ref, atol=1e-6)
    plane_ref = _slsqp_projection(
        x, [{"type": "eq", "fun": lambda y: b - a @ y, "jac": lambda y: -a}], np.zeros(5))
    np.testing.assert_allclose(projections.projection_hyperplane(jnp.asarray(x), hyper),
                               plane_ref, atol=1e-6)
    # a point already inside the halfspace / ball is left untouched
    inside = jnp.asarray(half_ref - 0.1 * a)
    np.testing.assert_allclose(projections.projection_halfspace(inside, hyper), inside)
    np.testing.assert_allclose(projections.projection_l2_ball(0.5 * jnp.asarray(ball_ref),
                                                              radius), 0.5 * ball_ref)


def test_box_and_non_negative_match_clip() -> None:
    rng = np.random.default_rng(0)
    x = {"u": rng.normal(size=(3, 2)), "v": rng.normal(size=4)}
    xj = jax.tree.map(jnp.asarray, x)
    got = projections.projection_box(xj, (-0.5, 0.25))
    np.testing.assert_array_equal(got["u"], np.clip(x["u"], -0.5, 0.25))
    np.testing.assert_array_equal(got["v"], np.clip(x["v"], -0.5, 0.25))
    lower = {"u": -0.1 * np.ones((3, 2)), "v": np.linspace(-1, 0, 4)}
    upper = {"u": 0.2, "v": np.ones(4)}
    got = projections.projection_box(xj, (lower, upper))
    np.testing.assert_array_equal(got["u"], np.clip(x["u"], -0.1, 0.2))
    np.testing.assert_array_equal(got["v"], np.clip(x["v"], lower["v"], 1.0))
    got = projections.projection_non_negative(xj)
    np.testing.assert_array_equal(got["v"], np.maximum(x["v"], 0))


def test_affine_set_matches_kkt_system() -> None:
    rng = np.random.default_rng(1)
    a, b, x = rng.normal(size=(2, 5)), rng.normal(size=2), rng.normal(size=5)
    # reference: [[I, A^T], [A, 0]] [y; mu] = [x; b]
    kkt = np.block([[np.eye(5), a.T], [a, np.zeros((2, 2))]])
    ref = np.linalg.solve(kkt, np.concatenate([x, b]))[:5]
    got = projections.projection_affine_set(jnp.asarray(x), (jnp.asarray(a), jnp.asarray(b)))
    np.testing.assert_allclose(got, ref, atol=1e-12)
    # and the least-squares form y = x - lstsq(A, A x - b)
    lst = x - np.linalg.lstsq(a, a @ x - b, rcond=None)[0]
    np.testing.assert_allclose(got, lst, atol=1e-12)


_RNG = np.random.default_rng(5)
_A5, _B2 = jnp.asarray(_RNG.normal(size=(2, 5))), jnp.asarray(_RNG.normal(size=2))
_PROJECTIONS = {
    "non_negative": lambda x: projections.projection_non_negative(x),
    "box": lambda x: projections.projection_box(x, (-0.3, 0.5)),
    "simplex": lambda x: projections.projection_simplex(x, 2.0),
    "l1_ball": lambda x: projections.projection_l1_ball(x, 0.7),
    "l2_ball": lambda x: projections.projection_l2_ball(x, 0.7),
    "halfspace": lambda x: projections.projection_halfspace(x, (_A5[0], 0.2)),
    "hyperplane": lambda x: projections.projection_hyperplane(x, (_A5[0], 0.2)),
    "affine_set": lambda x: projections.projection_affine_set(x, (_A5, _B2)),
}


@pytest.mark.parametrize("name", sorted(_PROJECTIONS))
def test_projections_idempotent_and_nonexpansive(name: str) -> None:
    proj = jax.jit(_PROJECTIONS[name])
    rng = np.random.default_rng(0)
    x, z = jnp.asarray(rng.normal(size=5) * 2), jnp.asarray(rng.normal(size=5) * 2)
    px = proj(x)
    np.testing.assert_allclose(proj(px), px, atol=1e-12)
    # variational inequality <x - P x, P z - P x> <= 0 for any point P z of the set
    assert float(jnp.vdot(x - px, proj(z) - px)) <= 1e-10
    # vmap agrees with the loop
    batch = jnp.stack([x, z])
    np.testing.assert_allclose(jax.vmap(proj)(batch), jnp.stack([px, proj(z)]), atol=1e-14)


def test_simplex_jacobian_closed_form_and_fd() -> None:
    x = jnp.array([0.9, -0.4, 0.5, 1.1, -2.0, 0.05])
    scale = 1.3
    p = projections.projection_simplex(x, scale)
    support = np.asarray(p > 0, dtype=float)
    assert 1 < support.sum() < x.size  # a nontrivial support
    closed = np.diag(support) - np.outer(support, support) / support.sum()
    fwd = jax.jacfwd(projections.projection_simplex)(x, scale)
    rev = jax.jacrev(projections.projection_simplex)(x, scale)
    fd = _central_fd(lambda v: projections.projection_simplex(v, scale), x)
    np.testing.assert_allclose(fwd, closed, atol=1e-12)
    np.testing.assert_allclose(rev, closed, atol=1e-12)
    np.testing.assert_allclose(fd, closed, atol=1e-8)
    dscale = jax.jacfwd(projections.projection_simplex, argnums=1)(x, scale)
    np.testing.assert_allclose(dscale, support / support.sum(), atol=1e-12)
    dscale_fd = _central_fd(lambda s: projections.projection_simplex(x, s), jnp.asarray(scale))
    np.testing.assert_allclose(dscale_fd, support / support.sum(), atol=1e-8)


def test_l1_ball_and_affine_jacobians_match_fd() -> None:
    x = jnp.array([0.9, -0.4, 0.5, 1.1, -2.0])
    fun = functools.partial(projections.projection_l1_ball, max_value=1.5)
    np.testing.assert_allclose(jax.jacrev(fun)(x), _central_fd(fun, x), atol=1e-8)
    fun_a = lambda a: projections.projection_affine_set(x, (a, _B2))  # noqa: E731
    np.testing.assert_allclose(jax.jacfwd(fun_a)(_A5), _central_fd(fun_a, _A5), atol=1e-7)


def test_kl_projection_simplex_is_scaled_softmax() -> None:
    x = np.array([0.3, -1.0, 2.0])
    got = projections.kl_projection_simplex(jnp.asarray(x), 2.0)
    np.testing.assert_allclose(got, 2.0 * np.exp(x) / np.exp(x).sum(), rtol=1e-14)
    assert conditions.kl_projection_simplex is projections.kl_projection_simplex


# ============================================================================= prox
_SCALE = 0.7


def _group_norms(y: np.ndarray) -> np.ndarray:
    return np.linalg.norm(y.reshape(y.shape[0], -1), axis=1)


_PROX_CASES = {
    # name: (prox(x) with scaling=_SCALE, g(y) in numpy, shape, bounds)
    "lasso": (lambda x: prox.prox_lasso(x, 0.6, _SCALE),
              lambda y: 0.6 * np.abs(y).sum(), (5,), None),
    "lasso_weights": (lambda x: prox.prox_lasso(x, jnp.array([0.1, 0.5, 1.0, 2.0]), _SCALE),
                      lambda y: np.dot([0.1, 0.5, 1.0, 2.0], np.abs(y)), (4,), None),
    "non_negative_lasso": (lambda x: prox.prox_non_negative_lasso(x, 0.4, _SCALE),
                           lambda y: 0.4 * y.sum(), (5,), (0, None)),
    "elastic_net": (lambda x: prox.prox_elastic_net(x, (0.5, 0.8), _SCALE),
                    lambda y: 0.5 * (np.abs(y).sum() + 0.4 * (y @ y)), (5,), None),
    "ridge": (lambda x: prox.prox_ridge(x, 1.3, _SCALE),
              lambda y: 0.65 * (y @ y), (5,), None),
    "group_lasso": (lambda x: prox.prox_group_lasso(x, 0.6, _SCALE),
                    lambda y: 0.6 * np.linalg.norm(y), (4,), None),
    "group_lasso_zero": (lambda x: prox.prox_group_lasso(x, 10.0, _SCALE),
                         lambda y: 10.0 * np.linalg.norm(y), (4,), None),
    "block_group_lasso": (
        lambda x: prox.prox_block_group_lasso(x, jnp.array([0.2, 5.0, 1.0]), _SCALE),
        lambda y: np.dot([0.2, 5.0, 1.0], _group_norms(y)), (3, 2), None),
}


@pytest.mark.parametrize("name", sorted(_PROX_CASES))
@pytest.mark.parametrize("seed", [0, 1])
def test_prox_matches_numerical_argmin(name: str, seed: int) -> None:
    prox_fn, g, shape, bounds = _PROX_CASES[name]
    x = np.random.default_rng(seed).normal(size=shape) * 1.5

    def objective(y_flat: np.ndarray) -> float:
        y = y_flat.reshape(shape)
        return 0.5 * np.sum((y - x) ** 2) + _SCALE * g(y)

    got = np.asarray(jax.jit(prox_fn)(jnp.asarray(x))).ravel()
    size = x.size
    x0 = x.ravel() if bounds is None else np.clip(x.ravel(), *bounds)
    res = scipy.optimize.minimize(
        objective, x0, method="Powell", bounds=None if bounds is None else [bounds] * size,
        options={"xtol": 1e-12, "ftol": 1e-15, "maxiter": 50000},
    )
    # 1-strong convexity: objective(ref) - objective(opt) >= 1/2 ||ref - opt||^2
    assert objective(got) <= res.fun + 1e-12
    np.testing.assert_allclose(got, res.x, atol=1e-5)


def test_prox_lasso_on_pytrees_and_projection_prox() -> None:
    x = {"a": jnp.array([1.0, -0.2]), "b": jnp.array([[0.5, -3.0]])}
    lam = {"a": 0.5, "b": jnp.array([[1.0, 1.0]])}
    got = prox.prox_lasso(x, lam, 0.5)
    np.testing.assert_allclose(got["a"], [0.75, 0.0])
    np.testing.assert_allclose(got["b"], [[0.0, -2.5]])
    box_prox = prox.make_prox_from_projection(projections.projection_box)
    np.testing.assert_array_equal(box_prox(x["a"], (0.0, 0.5), 3.0), [0.5, 0.0])
    np.testing.assert_array_equal(prox.prox_none(x["a"], None, 2.0), x["a"])


def test_prox_gradients_match_fd() -> None:
    x = jnp.array([1.2, -0.3, 0.05, -2.0])
    cases = (
        (lambda v: prox.prox_elastic_net(v, (0.4, 0.5), 0.7), x),
        (lambda v: prox.prox_group_lasso(v, 0.6, 0.7), x),
        (lambda v: prox.prox_block_group_lasso(v.reshape(2, 2), 0.6, 0.7), x),
        # derivatives in the hyperparameters (lam, gamma, scaling)
        (lambda t: prox.prox_elastic_net(x, (t[0], t[1]), t[2]), jnp.array([0.4, 0.5, 0.7])),
        (lambda t: prox.prox_group_lasso(x, t[0], t[1]), jnp.array([0.6, 0.7])),
    )
    for i, (fun, point) in enumerate(cases):
        jac = (jax.jacrev if i % 2 else jax.jacfwd)(fun)
        np.testing.assert_allclose(jac(point), _central_fd(fun, point), atol=1e-8)


# ============================================================================= conditions
def _quadratic(z: jax.Array, theta: tuple[jax.Array, jax.Array]) -> jax.Array:
    """f(z; Q, c) = 1/2 z^T Q z + c^T z."""
    q, c = theta
    return 0.5 * z @ q @ z + c @ z


def _spd(n: int, seed: int, shift: float = 1.0) -> jax.Array:
    m = np.random.default_rng(seed).normal(size=(n, n))
    return jnp.asarray(m @ m.T / n + shift * np.eye(n))


def test_stationarity_and_fixed_point_maps() -> None:
    q, c = _spd(4, 0), jnp.array([1.0, -2.0, 0.5, 0.0])
    z = jnp.array([0.3, 0.1, -0.2, 1.0])
    np.testing.assert_allclose(conditions.stationarity(_quadratic)(z, (q, c)), q @ z + c)
    t = lambda v, a: 0.5 * v + a  # noqa: E731
    np.testing.assert_allclose(conditions.fixed_point(t)(z, c), -0.5 * z + c)
    # kwargs are forwarded
    f_kw = lambda v, a, *, w: w * jnp.sum((v - a) ** 2)  # noqa: E731
    np.testing.assert_allclose(conditions.stationarity(f_kw)(z, c, w=3.0), 6.0 * (z - c))


def test_proximal_and_projected_maps_vanish_at_known_solutions() -> None:
    # min 1/2 ||z - a||^2 + lam ||z||_1 has z* = soft(a, lam): F(z*) = 0 for every step
    a, lam = jnp.array([2.0, -0.1, 0.5, -1.5]), 0.3
    f = lambda z, target: 0.5 * jnp.sum((z - target) ** 2)  # noqa: E731
    z_star = jnp.sign(a) * jnp.maximum(jnp.abs(a) - lam, 0)
    for step in (0.1, 1.0, 1.7):
        fun = conditions.proximal_gradient(f, prox.prox_lasso, step=step)
        np.testing.assert_allclose(fun(z_star, a, lam), 0.0, atol=1e-15)
        assert float(jnp.max(jnp.abs(fun(z_star + 0.01, a, lam)))) > 1e-3
    # min 1/2 ||z - a||^2 over the box is clip(a): projected gradient vanishes there
    fun = conditions.projected_gradient(f, projections.projection_box, step=0.5)
    np.testing.assert_allclose(fun(jnp.clip(a, 0.0, 1.0), a, (0.0, 1.0)), 0.0, atol=1e-15)


def test_kkt_map_vanishes_at_qp_solution_and_pytree_structure() -> None:
    # min 1/2 ||z||^2 - z_0 s.t. z_1 = 1, z_2 >= 0.5 (H = 0.5 - z_2 <= 0): z* = (1, 1, 0.5)
    f = lambda z, _: 0.5 * z @ z - z[0]  # noqa: E731
    eq = lambda z, b: jnp.array([z[1] - b])  # noqa: E731
    ineq = lambda z, h: jnp.array([h - z[2]])  # noqa: E731
    fun = conditions.kkt(f, eq, ineq)
    x = (jnp.array([1.0, 1.0, 0.5]), jnp.array([-1.0]), jnp.array([0.5]))
    out = fun(x, None, 1.0, 0.5)
    assert jax.tree.structure(out) == jax.tree.structure(x)
    for leaf in jax.tree.leaves(out):
        np.testing.assert_allclose(leaf, 0.0, atol=1e-15)
    # absent constraints give None entries
    only_ineq = conditions.kkt(f, ineq=ineq)
    out = only_ineq((jnp.array([1.0, 0.0, 0.5]), None, jnp.array([0.5])), None, None, 0.5)
    assert out[1] is None
    np.testing.assert_allclose(out[0], 0.0, atol=1e-15)
    np.testing.assert_allclose(out[2], 0.0, atol=1e-15)


def test_mirror_descent_map_vanishes_when_gradient_constant() -> None:
    # f(x) = <c, x> + 1/2 ||x||^2 on the simplex: interior optimum with x + c = const
    c = jnp.array([0.1, -0.05, 0.0])
    x = 1.0 / 3 - c + jnp.mean(c)
    fun = conditions.mirror_descent(lambda v, cc: cc @ v + 0.5 * v @ v,
                                    projections.kl_projection_simplex, jnp.log, step=0.7)
    np.testing.assert_allclose(fun(x, c, 1.0), 0.0, atol=1e-15)


# ============================================================================= custom_root
def _linsolve():
    from mdsens.implicit import linsolve

    return linsolve


def _lu_solve():
    return _linsolve().lu


def _gmres_solve():
    return functools.partial(_linsolve().gmres, tol=1e-12)


def _iterate(step_fn: Callable, init, tol: float = 1e-15, maxiter: int = 20000):
    """Runs ``x <- step_fn(x)`` until ``max|x_new - x| <= tol`` (jit-compatible)."""

    def cond(state):
        it, _, err = state
        return (it < maxiter) & (err > tol)

    def body(state):
        it, x, _ = state
        new = step_fn(x)
        diffs = jax.tree.leaves(jax.tree.map(lambda a, b: jnp.max(jnp.abs(a - b)), new, x))
        err = jnp.max(jnp.stack(diffs))
        return it + 1, new, err

    return jax.lax.while_loop(cond, body, (0, init, jnp.inf))[1]


# --- lasso by ISTA
def _lasso_data() -> tuple[jax.Array, jax.Array]:
    rng = np.random.default_rng(0)
    design = rng.normal(size=(30, 6))
    w_true = np.array([1.5, 0.0, -2.0, 0.0, 0.7, 0.0])
    y = design @ w_true + 0.3 * rng.normal(size=30)
    return jnp.asarray(design), jnp.asarray(y)


def _least_squares(w: jax.Array, theta: tuple[jax.Array, jax.Array]) -> jax.Array:
    """f(w; X, y) = 1/2 ||X w - y||^2."""
    design, y = theta
    return 0.5 * jnp.sum((design @ w - y) ** 2)


def _ista_solver(step: float) -> Callable:
    grad_f = jax.grad(_least_squares)

    def solver(init, theta_f, lam):
        return _iterate(lambda w: prox.prox_lasso(w - step * grad_f(w, theta_f), lam, step), init)

    return solver


@pytest.mark.parametrize("solve_name", ["lu", "gmres"])
def test_lasso_jacobian_matches_closed_form(solve_name: str) -> None:
    design, y = _lasso_data()
    step = 1.0 / float(jnp.linalg.norm(design, 2) ** 2)
    fun = conditions.proximal_gradient(_least_squares, prox.prox_lasso, step=step)
    solve = _lu_solve() if solve_name == "lu" else _gmres_solve()
    solver = jax.jit(mi.custom_root(fun, solve=solve)(_ista_solver(step)))
    lam = 6.0
    init = jnp.zeros(6)
    w = solver(init, (design, y), lam)
    np.testing.assert_allclose(fun(w, (design, y), lam), 0.0, atol=1e-12)
    # preconditions for a stable support: strictly nonzero on S, strict slack off S
    supp = np.abs(np.asarray(w)) > 1e-8
    corr = np.abs(np.asarray(design.T @ (y - design @ w)))
    assert 0 < supp.sum() < 6
    assert np.min(np.abs(np.asarray(w))[supp]) > 1e-2 and np.max(corr[~supp]) < 0.95 * lam
    # closed form: w_S = (X_S^T X_S)^{-1} (X_S^T y - lam s_S)
    xs = np.asarray(design)[:, supp]
    gram_inv = np.linalg.inv(xs.T @ xs)
    sign = np.sign(np.asarray(w)[supp])
    np.testing.assert_allclose(np.asarray(w)[supp], gram_inv @ (xs.T @ np.asarray(y)
                                                                 - lam * sign), atol=1e-10)
    dlam = np.zeros(6)
    dlam[supp] = -gram_inv @ sign
    dy = np.zeros((6, 30))
    dy[supp] = gram_inv @ xs.T
    if solve_name == "lu":
        jac_lam = jax.jacfwd(lambda t: solver(init, (design, y), t))(lam)
        jac_y = jax.jacrev(lambda t: solver(init, (design, t), lam))(y)
        np.testing.assert_allclose(jac_y, dy, atol=1e-8)
    else:
        jac_lam = jax.jacrev(lambda t: solver(init, (design, y), t))(lam)
    np.testing.assert_allclose(jac_lam, dlam, atol=1e-8)


# --- QP with equality constraints only (direct KKT solve)
def test_equality_qp_kkt_matches_fd() -> None:
    n, m = 5, 2
    q = _spd(n, 1)
    rng = np.random.default_rng(2)
    c, a, b = (jnp.asarray(rng.normal(size=s)) for s in ((n,), (m, n), (m,)))
    fun = conditions.kkt(_quadratic, eq=lambda z, t: t[0] @ z - t[1])

    def raw_solver(init, theta_f, theta_eq, theta_ineq=None):
        del init, theta_ineq
        qq, cc = theta_f
        aa, bb = theta_eq
        mat = jnp.block([[qq, aa.T], [aa, jnp.zeros((m, m))]])
        sol = jnp.linalg.solve(mat, jnp.concatenate([-cc, bb]))
        return sol[:n], sol[n:], None

    solver = mi.custom_root(fun, solve=_lu_solve())(raw_solver)
    init = (jnp.zeros(n), jnp.zeros(m), None)
    plain = jax.jit(lambda aa, bb: raw_solver(None, (q, c), (aa, bb))[0])
    _fd_check(lambda bb: solver(init, (q, c), (a, bb))[0], b, lambda t: plain(a, t), "fwd")
    _fd_check(lambda aa: solver(init, (q, c), (aa, b))[0], a, lambda t: plain(t, b), "rev")


# --- simplex-constrained quadratic: projected gradient, KKT and mirror descent
_N = 5


def _simplex_qp_data(interior: bool) -> tuple[jax.Array, jax.Array]:
    q = _spd(_N, 3)
    c = np.random.default_rng(4).normal(size=_N)
    return q, jnp.asarray(0.05 * c if interior else 1.5 * c)


def _pg_simplex_solve(theta_f: tuple[jax.Array, jax.Array], scale: jax.Array) -> jax.Array:
    """Projected gradient on min_{z in scale*simplex} 1/2 z^T Q z + c^T z (plain, jit-able)."""
    q, c = theta_f
    step = 1.0 / jnp.linalg.norm(q, 2)
    init = jnp.full(_N, scale / _N)
    return _iterate(lambda z: projections.projection_simplex(z - step * (q @ z + c), scale), init)


def _fd_check(solution_of: Callable, theta: jax.Array, plain: Callable, mode: str) -> None:
    """``jacfwd``/``jacrev`` (``mode``) of ``solution_of`` at ``theta`` vs central FD of
    ``plain``, the same solver without implicit differentiation."""
    jac = jax.jit((jax.jacfwd if mode == "fwd" else jax.jacrev)(solution_of))
    np.testing.assert_allclose(jac(theta), _central_fd(plain, theta), atol=1e-6)


def test_projected_gradient_simplex_qp_matches_fd() -> None:
    q, c = _simplex_qp_data(interior=False)
    scale = 1.3
    step = 0.5 / float(jnp.linalg.norm(q, 2))
    fun = conditions.projected_gradient(_quadratic, projections.projection_simplex, step=step)
    solver = mi.custom_root(fun, solve=_lu_solve())(
        lambda init, theta_f, s: _pg_simplex_solve(theta_f, s))
    z = solver(None, (q, c), scale)
    n_active = int(np.sum(np.asarray(z) > 1e-9))
    assert 1 < n_active < _N  # a nontrivial active set
    plain_c = jax.jit(lambda cc: _pg_simplex_solve((q, cc), scale))
    plain_s = jax.jit(lambda s: _pg_simplex_solve((q, c), s))
    _fd_check(lambda cc: solver(None, (q, cc), scale), c, plain_c, "fwd")
    _fd_check(lambda s: solver(None, (q, c), s), jnp.asarray(scale), plain_s, "rev")


def test_kkt_simplex_qp_matches_fd() -> None:
    """min 1/2 z^T Q z + c^T z  s.t.  sum(z) = b, z >= 0, with x = (z, nu, lam)."""
    q, c = _simplex_qp_data(interior=False)
    b = 1.3
    fun = conditions.kkt(_quadratic, eq=lambda z, bb: jnp.sum(z) - bb, ineq=lambda z, _: -z)

    def raw_solver(init, theta_f, bb, theta_ineq=None):
        del init, theta_ineq
        z = _pg_simplex_solve(theta_f, bb)
        grad = theta_f[0] @ z + theta_f[1]
        support = z > 1e-9
        nu = -jnp.sum(jnp.where(support, grad, 0)) / jnp.sum(support)
        lam = jnp.where(support, 0.0, grad + nu)
        return z, nu, lam

    z, nu, lam = raw_solver(None, (q, c), b)
    support = np.asarray(z) > 1e-9
    assert 1 < support.sum() < _N and np.min(np.asarray(lam)[~support]) > 1e-3
    for leaf in jax.tree.leaves(fun((z, nu, lam), (q, c), b, None)):
        np.testing.assert_allclose(leaf, 0.0, atol=1e-12)
    solver = mi.custom_root(fun, solve=_lu_solve())(raw_solver)
    init = (jnp.zeros(_N), jnp.zeros(()), jnp.zeros(_N))
    plain_c = jax.jit(lambda cc: _pg_simplex_solve((q, cc), b))
    plain_b = jax.jit(lambda bb: _pg_simplex_solve((q, c), bb))
    _fd_check(lambda cc: solver(init, (q, cc), b, None)[0], c, plain_c, "rev")
    _fd_check(lambda bb: solver(init, (q, c), bb, None)[0], jnp.asarray(b), plain_b, "fwd")


def _eg_simplex_solve(theta_f: tuple[jax.Array, jax.Array], scale: jax.Array,
                      step: float) -> jax.Array:
    """Exponentiated gradient (entropic mirror descent) on the scaled simplex."""
    q, c = theta_f
    init = jnp.full(_N, scale / _N)
    return _iterate(lambda x: scale * jax.nn.softmax(jnp.log(x) - step * (q @ x + c)), init)


def test_mirror_descent_simplex_matches_fd() -> None:
    q, c = _simplex_qp_data(interior=True)
    scale = 1.0
    step = 0.5 / float(jnp.linalg.norm(q, 2))
    fun = conditions.mirror_descent(_quadratic, projections.kl_projection_simplex, jnp.log,
                                    step=step)
    solver = mi.custom_root(fun, solve=_gmres_solve())(
        lambda init, theta_f, s: _eg_simplex_solve(theta_f, s, step))
    x = solver(None, (q, c), scale)
    assert float(jnp.min(x)) > 0.05  # interior solution
    # same minimiser as projected gradient
    np.testing.assert_allclose(x, _pg_simplex_solve((q, c), scale), atol=1e-10)
    plain_c = jax.jit(lambda cc: _eg_simplex_solve((q, cc), scale, step))
    plain_s = jax.jit(lambda s: _eg_simplex_solve((q, c), s, step))
    _fd_check(lambda cc: solver(None, (q, cc), scale), c, plain_c, "rev")
    _fd_check(lambda s: solver(None, (q, c), s), jnp.asarray(scale), plain_s, "fwd")


def test_stationarity_and_fixed_point_roots_match_closed_form() -> None:
    """Ridge regression argmin 1/2||Xw - y||^2 + lam/2 ||w||^2: dw/dlam = -(X^TX + lam)^-1 w."""
    design, y = _lasso_data()
    f = lambda w, lam: _least_squares(w, (design, y)) + 0.5 * lam * w @ w  # noqa: E731
    gram = design.T @ design

    def raw(init, lam):
        del init
        return jnp.linalg.solve(gram + lam * jnp.eye(6), design.T @ y)

    lam = 2.0
    w = raw(None, lam)
    expected = -jnp.linalg.solve(gram + lam * jnp.eye(6), w)
    solver = mi.custom_root(conditions.stationarity(f), solve="cholesky", symmetric=True)(raw)
    np.testing.assert_allclose(jax.jit(jax.jacrev(lambda t: solver(None, t)))(lam), expected,
                               atol=1e-10)
    # same solution as the fixed point of a gradient step T(w) = w - eta grad f(w)
    eta = 1.0 / float(jnp.linalg.norm(gram, 2) + lam)
    t_map = lambda v, t: v - eta * jax.grad(f)(v, t)  # noqa: E731
    fp_solver = mi.custom_root(conditions.fixed_point(t_map))(raw)
    np.testing.assert_allclose(jax.jit(jax.jacfwd(lambda t: fp_solver(None, t)))(lam),
                               expected, atol=1e-10)
