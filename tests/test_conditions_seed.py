"""Tests of the Newton, block proximal-gradient and QP optimality maps, and of the QP solver.

References are independent of the code under test: closed forms solved with numpy (the
Newton/stationarity derivative −H⁻¹∂θ∇f, the lasso/ridge and active-set KKT systems),
scipy.optimize.nnls, and float64 central differences of the re-solved problems.
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
from mdsens.implicit import conditions, linsolve, prox, qp

assert jax.config.jax_enable_x64, "tests/test_conditions_seed.py needs float64 (conftest.py)"

GMRES = functools.partial(linsolve.gmres, tol=1e-12)


def _central_fd(fun: Callable, theta, h: float = 1e-6) -> np.ndarray:
    """Central-difference Jacobian of ``fun`` (array -> array) at ``theta``: shape
    out.shape + theta.shape."""
    theta = np.asarray(theta, float)
    cols = []
    for i in range(theta.size):
        e = np.zeros(theta.size)
        e[i] = h
        plus = np.asarray(fun(jnp.asarray((theta.ravel() + e).reshape(theta.shape))))
        minus = np.asarray(fun(jnp.asarray((theta.ravel() - e).reshape(theta.shape))))
        cols.append((plus - minus) / (2 * h))
    jac = np.stack(cols, axis=-1)
    return jac.reshape(jac.shape[:-1] + theta.shape)


def _iterate(step_fn: Callable, init, tol: float = 1e-15, maxiter: int = 50_000):
    """``x <- step_fn(x)`` until ``max|x_new - x| <= tol`` (a while_loop, jit-compatible)."""

    def body(state):
        it, x, _ = state
        new = step_fn(x)
        err = jnp.max(jnp.stack([jnp.max(jnp.abs(a - b)) for a, b in
                                 zip(jax.tree.leaves(new), jax.tree.leaves(x))]))
        return it + 1, new, err

    return jax.lax.while_loop(lambda s: (s[0] < maxiter) & (s[2] > tol), body,
                              (0, init, jnp.inf))[1]


# ============================================================================= Newton
def _logistic_data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 3))
    y = np.sign(X @ np.array([1.0, -2.0, 0.5]) + 0.5 * rng.normal(size=40))
    return jnp.asarray(X), jnp.asarray(y)


def _logistic(x, theta):
    """f((w, b), (X, y, λ)) = mean log(1 + exp(−y (Xw + b))) + λ/2 (‖w‖² + b²)."""
    w, b = x
    X, y, lam = theta
    return jnp.mean(jnp.logaddexp(0.0, -y * (X @ w + b))) + 0.5 * lam * (w @ w + b * b)


def _newton_solver(init, theta):
    """Plain Newton iterations on the flattened (w, b) (no derivative of its own)."""
    flat0 = jnp.concatenate([init[0], init[1][None]])
    unravel = lambda v: (v[:-1], v[-1])  # noqa: E731
    f = lambda v: _logistic(unravel(v), theta)  # noqa: E731
    flat = _iterate(lambda v: v - jnp.linalg.solve(jax.hessian(f)(v), jax.grad(f)(v)), flat0,
                    tol=1e-14, maxiter=100)
    return unravel(flat)


def test_newton_map_root_jacobian_and_derivatives():
    X, y = _logistic_data()
    lam, eta = 0.1, 0.7
    F = conditions.newton(_logistic, step=eta)
    init = (jnp.zeros(3), jnp.zeros(()))
    x = jax.jit(_newton_solver)(init, (X, y, lam))
    flat = lambda v: jnp.concatenate([a.ravel() for a in jax.tree.leaves(v)])  # noqa: E731
    w, b = x[0] + 0.3, x[1] - 0.2

    @jax.jit
    def maps(x, off):
        """F at the root, F at a point off the root, ∂₁F at the root (4 × 4)."""
        jac = jax.jacfwd(lambda v: flat(F((v[:3], v[3]), (X, y, lam))))(flat(x))
        return flat(F(x, (X, y, lam))), flat(F(off, (X, y, lam))), jac

    at_root, off_root, jac = maps(x, (w, b))
    np.testing.assert_allclose(at_root, 0.0, atol=1e-14)
    # the stated map F = T − x, T(x) = x − η H⁻¹∇f, with numpy's gradient and Hessian
    Xt, yy = np.hstack([np.asarray(X), np.ones((40, 1))]), np.asarray(y)

    def grad_hess(u):
        sig = 1.0 / (1.0 + np.exp(yy * (Xt @ u)))                # σ(−y xᵀu)
        return (-Xt.T @ (yy * sig) / 40 + lam * u,
                (Xt.T * (sig * (1 - sig))) @ Xt / 40 + lam * np.eye(4))

    g, H = grad_hess(np.asarray(flat((w, b))))
    np.testing.assert_allclose(off_root, -eta * np.linalg.solve(H, g), atol=1e-13)
    np.testing.assert_allclose(jac, -eta * np.eye(4), atol=1e-12)   # ∂₁F = −η I at the root
    # implicit derivatives: dx*/dλ = −H⁻¹ x* (closed form), forward mode; d x*/dX in reverse
    # mode vs central differences of the re-solved problem
    u = np.asarray(flat(x))
    _, H = grad_hess(u)
    solver = mi.custom_root(F, solve=GMRES)(_newton_solver)
    derivs = jax.jit(lambda t, XX: (
        jax.jacfwd(lambda s: flat(solver(init, (XX, y, s))))(t),
        jax.jacrev(lambda Z: flat(solver(init, (Z, y, t))))(XX)))
    d_lam, d_X = derivs(lam, X)
    np.testing.assert_allclose(d_lam, -np.linalg.solve(H, u), atol=1e-10)
    plain = jax.jit(lambda XX: flat(_newton_solver(init, (XX, y, lam))))
    np.testing.assert_allclose(d_X, _central_fd(plain, X), atol=1e-7)


# ============================================================================= block prox-grad
def _blocks_data():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(30, 6))
    y = X @ np.array([1.5, 0.0, -2.0, 0.0, 0.7, -0.4]) + 0.3 * rng.normal(size=30)
    return jnp.asarray(X[:, :4]), jnp.asarray(X[:, 4:]), jnp.asarray(y)


def _two_block_loss(x, theta):
    """½‖X₁w₁ + X₂w₂ − y‖²: block 1 gets an ℓ1 penalty, block 2 a ridge."""
    w1, w2 = x
    X1, X2, y = theta
    return 0.5 * jnp.sum((X1 @ w1 + X2 @ w2 - y) ** 2)


_PROXES = (lambda v, t, s: prox.prox_lasso(v, t[0], s),
           lambda v, t, s: prox.prox_ridge(v, t[1], s))


def _bcd_two_blocks(init, theta, theta_g, steps):
    """Gauss–Seidel block coordinate descent (block 1, then block 2 with the new block 1)."""
    X1, X2, y = theta

    def sweep(x):
        w1, w2 = x
        w1 = _PROXES[0](w1 - steps[0] * X1.T @ (X1 @ w1 + X2 @ w2 - y), theta_g, steps[0])
        w2 = _PROXES[1](w2 - steps[1] * X2.T @ (X1 @ w1 + X2 @ w2 - y), theta_g, steps[1])
        return w1, w2

    return _iterate(sweep, init)


def test_block_proximal_gradient_tuple_blocks():
    X1, X2, y = _blocks_data()
    steps = (1.0 / float(jnp.linalg.norm(X1, 2) ** 2), 1.0 / float(jnp.linalg.norm(X2, 2) ** 2))
    F = conditions.block_proximal_gradient(_two_block_loss, _PROXES, step=steps)
    # same root as proximal gradient on the whole problem (common step, per-block prox)
    pg = conditions.proximal_gradient(
        _two_block_loss, lambda v, t, s: (_PROXES[0](v[0], t, s), _PROXES[1](v[1], t, s)),
        min(steps))
    theta_g = (jnp.asarray(8.0), jnp.asarray(3.0))
    init = (jnp.zeros(4), jnp.zeros(2))
    raw = functools.partial(_bcd_two_blocks, steps=steps)
    w1, w2 = jax.jit(raw)(init, (X1, X2, y), theta_g)
    residuals = jax.jit(lambda x: (F(x, (X1, X2, y), theta_g), pg(x, (X1, X2, y), theta_g)))
    for leaf in jax.tree.leaves(residuals((w1, w2))):
        np.testing.assert_allclose(leaf, 0.0, atol=1e-12)
    # closed form on the support S of w₁: (AᵀA + diag(0_S, λ₂)) u = Aᵀy − (λ₁ sign(w_S), 0)
    S = np.abs(np.asarray(w1)) > 1e-9
    assert 0 < S.sum() < 4
    A = np.hstack([np.asarray(X1)[:, S], np.asarray(X2)])
    M = A.T @ A + np.diag(np.r_[np.zeros(S.sum()), 3.0 * np.ones(2)])
    sgn = np.sign(np.asarray(w1)[S])
    u = np.linalg.solve(M, A.T @ np.asarray(y) - np.r_[8.0 * sgn, 0, 0])
    np.testing.assert_allclose(np.r_[np.asarray(w1)[S], w2], u, atol=1e-10)
    expected = np.zeros((6, 2))      # d(w₁, w₂)/d(λ₁, λ₂), zero off the support
    expected[np.r_[S, True, True], 0] = np.linalg.solve(M, -np.r_[sgn, 0, 0])
    expected[np.r_[S, True, True], 1] = np.linalg.solve(M, -np.r_[np.zeros(S.sum()), u[-2:]])
    lu = mi.custom_root(F, solve="lu")(raw)
    gm = mi.custom_root(F, solve=GMRES)(raw)

    @jax.jit
    def derivs(t, yy):
        """d/dθ_g by forward mode (LU) and reverse mode (GMRES); d/dy by reverse mode (LU)."""
        return (jax.jacfwd(lambda s: jnp.concatenate(lu(init, (X1, X2, yy), s)))(t),
                jax.jacrev(lambda s: jnp.concatenate(gm(init, (X1, X2, yy), s)))(t),
                jax.jacrev(lambda v: jnp.concatenate(lu(init, (X1, X2, v), t)))(yy))

    fwd, rev, d_y = derivs(theta_g, y)
    np.testing.assert_allclose(np.stack(fwd, axis=1), expected, atol=1e-9)
    np.testing.assert_allclose(np.stack(rev, axis=1), expected, atol=1e-9)
    plain = jax.jit(lambda yy: jnp.concatenate(raw(init, (X1, X2, yy), theta_g)))
    np.testing.assert_allclose(d_y, _central_fd(plain, y), atol=1e-7)


def _rows_loss(W, theta):
    """½‖A W − Y‖²_F, the rows of W (d, K) are the blocks."""
    A, Y = theta
    return 0.5 * jnp.sum((A @ W - Y) ** 2)


def _row_group_lasso(v, lam, s):
    return prox.prox_group_lasso(v, lam, s)


def _bcd_rows(init, theta, lam):
    """Row-by-row block coordinate descent with steps 1/‖a_j‖²."""
    A, Y = theta
    steps = 1.0 / jnp.sum(A**2, axis=0)

    def sweep(W):
        def row(j, W):
            g = A[:, j] @ (A @ W - Y)
            return W.at[j].set(_row_group_lasso(W[j] - steps[j] * g, lam, steps[j]))

        return jax.lax.fori_loop(0, W.shape[0], row, W)

    return _iterate(sweep, init)


def test_block_proximal_gradient_stacked_rows():
    rng = np.random.default_rng(2)
    A = jnp.asarray(rng.normal(size=(20, 5)))
    W_true = np.zeros((5, 3))
    W_true[[0, 2, 3]] = rng.normal(size=(3, 3))
    Y = jnp.asarray(np.asarray(A) @ W_true + 0.3 * rng.normal(size=(20, 3)))
    lam = jnp.asarray(6.0)
    steps = 1.0 / jnp.sum(A**2, axis=0)
    F = conditions.block_proximal_gradient(_rows_loss, _row_group_lasso, step=steps,
                                           stacked=True)
    # the same root for proximal gradient with the row-wise (block) group-lasso prox
    pg = conditions.proximal_gradient(_rows_loss, prox.prox_block_group_lasso,
                                      step=float(1.0 / jnp.linalg.norm(A, 2) ** 2))
    # the stacked layout is the tuple layout with the rows as blocks
    rows_loss = lambda x, t: _rows_loss(jnp.stack(x), t)  # noqa: E731
    F_tuple = conditions.block_proximal_gradient(rows_loss, _row_group_lasso,
                                                 step=tuple(float(s) for s in steps))
    plain = jax.jit(lambda t, YY: _bcd_rows(jnp.zeros((5, 3)), (A, YY), t))
    W = plain(lam, Y)
    zero_rows = np.linalg.norm(np.asarray(W), axis=1) < 1e-12
    assert 0 < zero_rows.sum() < 5
    V = W + 0.1 * jnp.asarray(rng.normal(size=(5, 3)))
    maps = jax.jit(lambda W, V: (F(W, (A, Y), lam), pg(W, (A, Y), lam), F(V, (A, Y), lam),
                                 jnp.stack(F_tuple(tuple(V), (A, Y), lam))))
    at_root, pg_at_root, stacked, tupled = maps(W, V)
    np.testing.assert_allclose(at_root, 0.0, atol=1e-12)
    np.testing.assert_allclose(pg_at_root, 0.0, atol=1e-12)
    np.testing.assert_allclose(stacked, tupled, atol=1e-14)
    assert float(jnp.max(jnp.abs(stacked))) > 1e-3
    # derivatives vs central differences of the re-solved problem
    solver = mi.custom_root(F, solve="lu")(_bcd_rows)
    derivs = jax.jit(lambda t, YY: (
        jax.jacrev(lambda s: solver(jnp.zeros((5, 3)), (A, YY), s))(t),
        jax.jacfwd(lambda Z: solver(jnp.zeros((5, 3)), (A, Z), t))(YY)))
    d_lam, d_Y = derivs(lam, Y)
    np.testing.assert_allclose(d_lam, _central_fd(lambda t: plain(t, Y), lam), atol=1e-7)
    np.testing.assert_allclose(d_Y, _central_fd(lambda YY: plain(lam, YY), Y), atol=1e-7)


def test_block_proximal_gradient_rejects_bad_layouts():
    f = lambda x, t: sum(jnp.sum(v**2) for v in jax.tree.leaves(x))  # noqa: E731
    with pytest.raises(ValueError, match="blocks"):
        conditions.block_proximal_gradient(f, (prox.prox_none,) * 3)(
            (jnp.ones(2), jnp.ones(2)), None)
    with pytest.raises(TypeError, match="tuple or list"):
        conditions.block_proximal_gradient(f, prox.prox_none)(jnp.ones(3), None)
    with pytest.raises(ValueError, match="one prox"):
        conditions.block_proximal_gradient(f, (prox.prox_none,), stacked=True)
    F = conditions.block_proximal_gradient(f, prox.prox_none, step=jnp.ones(4), stacked=True)
    with pytest.raises(ValueError, match="shape"):
        F(jnp.ones((3, 2)), None)
    with pytest.raises(ValueError, match="leading"):
        F({"a": jnp.ones((3, 2)), "b": jnp.ones(4)}, None)


# ============================================================================= quadratic programs
def _qp_data(seed: int = 0):
    """A random strictly convex QP with a nontrivial, strictly complementary active set."""
    rng = np.random.default_rng(seed)
    n, p, q = 6, 2, 8
    M = rng.normal(size=(n, n))
    Q = M @ M.T + 0.5 * np.eye(n)
    c = 3.0 * rng.normal(size=n)
    A = rng.normal(size=(p, n))
    G = rng.normal(size=(q, n))
    z0 = rng.normal(size=n)
    b, h = A @ z0, G @ z0 + rng.uniform(0.1, 1.0, size=q)
    return tuple(jnp.asarray(v) for v in (Q, c, A, b, G, h))


def _active_set_solution(Q, c, A, b, G, h, active):
    """Solve the equality-constrained KKT system on the active set (numpy); returns the
    system matrix K, the solution u = (z, ν, λ_M) and the full (z, ν, λ)."""
    Q, c, A, b, G, h = (np.asarray(v) for v in (Q, c, A, b, G, h))
    n, p, GM = Q.shape[0], A.shape[0], G[active]
    m = GM.shape[0]
    K = np.block([[0.5 * (Q + Q.T), A.T, GM.T], [A, np.zeros((p, p + m))],
                  [GM, np.zeros((m, p + m))]])
    u = np.linalg.solve(K, np.concatenate([-c, b, h[active]]))
    lam = np.zeros(G.shape[0])
    lam[active] = u[n + p:]
    return K, u, (u[:n], u[n:n + p], lam)


def _active_set_jacobians(Q, c, A, b, G, h, active):
    """d(z, ν, λ)/d(Q, c, A, b, G, h) of the active-set closed form, du = K⁻¹(dr − dK u)."""
    K, u, _ = _active_set_solution(Q, c, A, b, G, h, active)
    n, p, q = Q.shape[0], A.shape[0], G.shape[0]
    idx = np.flatnonzero(active)
    m = idx.size
    out = []
    for name, P in zip("QcAbGh", (Q, c, A, b, G, h)):
        P = np.asarray(P)
        cols = []
        for k in range(P.size):
            E = np.zeros(P.size)
            E[k] = 1.0
            E = E.reshape(P.shape)
            dK, dr = np.zeros_like(K), np.zeros(K.shape[0])
            if name == "Q":
                dK[:n, :n] = 0.5 * (E + E.T)
            elif name == "c":
                dr[:n] = -E
            elif name == "A":
                dK[n:n + p, :n], dK[:n, n:n + p] = E, E.T
            elif name == "b":
                dr[n:n + p] = E
            elif name == "G":
                dK[n + p:, :n], dK[:n, n + p:] = E[idx], E[idx].T
            else:
                dr[n + p:] = E[idx]
            du = np.linalg.solve(K, dr - dK @ u)
            dlam = np.zeros(q)
            dlam[idx] = du[n + p:]
            cols.append(np.concatenate([du[:n + p], dlam]))
        out.append(np.stack(cols, axis=-1).reshape((n + p + q,) + P.shape))
    del m
    return out


def _flat(x):
    return jnp.concatenate([v.ravel() for v in jax.tree.leaves(x)])


_ipm = jax.jit(qp.interior_point)  # one compilation for every plain solve of _qp_data


def test_qp_solution_is_the_active_set_solution():
    data = _qp_data()
    (z, nu, lam), info = _ipm(None, *data)
    assert bool(info.converged) and bool(info.polished)
    Q, c, A, b, G, h = (np.asarray(v) for v in data)
    slack = h - G @ np.asarray(z)
    active = slack < 1e-9
    assert 1 <= active.sum() <= 3
    # strict complementarity, feasibility: the derivative is well defined
    assert np.min(np.asarray(lam)[active]) > 1e-3 and np.min(slack[~active]) > 1e-3
    np.testing.assert_allclose(np.asarray(lam)[~active], 0.0, atol=1e-14)
    _, _, ref = _active_set_solution(*data, active)
    for got, want in zip((z, nu, lam), ref):
        np.testing.assert_allclose(got, want, atol=1e-12)
    for leaf in jax.tree.leaves(conditions.qp_kkt()((z, nu, lam), *data)):
        np.testing.assert_allclose(leaf, 0.0, atol=1e-12)


def test_qp_derivatives_wrt_all_data():
    """d(z, ν, λ)/d(Q, c, A, b, G, h): reverse mode (LU) in full and forward mode (GMRES)
    along a random direction, vs the active-set closed form and central differences."""
    data = _qp_data()
    (z, _, _), _ = _ipm(None, *data)
    active = np.asarray(data[5] - data[4] @ z) < 1e-9
    expected = _active_set_jacobians(*data, active)
    lu = mi.custom_root(conditions.qp_kkt(), solve="lu", has_aux=True)(qp.interior_point)
    gm = mi.custom_root(conditions.qp_kkt(), solve=GMRES, has_aux=True)(qp.interior_point)
    rng = np.random.default_rng(7)
    direction = tuple(jnp.asarray(rng.normal(size=d.shape)) for d in data)

    @jax.jit
    def derivs(data, direction):
        jacs = jax.jacrev(lambda *d: _flat(lu(None, *d)[0]), argnums=tuple(range(6)))(*data)
        _, tangent = jax.jvp(lambda *d: _flat(gm(None, *d)[0]), data, direction)
        return jacs, tangent

    jacs, tangent = derivs(data, direction)
    for name, got, want in zip("QcAbGh", jacs, expected):
        np.testing.assert_allclose(got, want, atol=1e-9, err_msg=name)
    along = sum(np.tensordot(J, np.asarray(d), axes=d.ndim) for J, d in zip(expected, direction))
    np.testing.assert_allclose(tangent, along, atol=1e-9)
    # central differences of the re-solved problem (no implicit differentiation)
    for k, name in enumerate("QcAbGh"):
        def one(v, k=k):
            return _flat(_ipm(None, *(v if i == k else data[i] for i in range(6)))[0])
        np.testing.assert_allclose(jacs[k], _central_fd(one, data[k]), atol=1e-6,
                                   err_msg=name)


def test_solve_qp_without_equalities_or_inequalities():
    """Only inequalities: nonnegative least squares vs scipy.optimize.nnls, dz/dy on the
    support; only equalities: the KKT solve. Both through solve_qp (implicit derivatives)."""
    rng = np.random.default_rng(4)
    X, y = rng.normal(size=(15, 5)), rng.normal(size=15)
    ref, _ = scipy.optimize.nnls(X, y)
    S = ref > 0
    assert 0 < S.sum() < 5
    Q, G, h = X.T @ X, -np.eye(5), np.zeros(5)
    Qe, ce, Ae, be, _, _ = _qp_data(1)

    @jax.jit
    def run(yy, bb):
        (z, nu, lam), info = qp.solve_qp(Q, -X.T @ yy, G=G, h=h)
        jac = jax.jacrev(lambda v: qp.solve_qp(Q, -X.T @ v, G=G, h=h)[0][0])(yy)
        (ze, nue, lame), info_e = qp.solve_qp(Qe, ce, Ae, bb)
        jac_e = jax.jacfwd(lambda v: qp.solve_qp(Qe, ce, Ae, v)[0][0])(bb)
        return (z, nu, lam, info.converged, jac), (ze, nue, lame, info_e.converged, jac_e)

    (z, nu, lam, ok, jac), (ze, nue, lame, ok_e, jac_e) = run(jnp.asarray(y), be)
    assert nu is None and lame is None and bool(ok) and bool(ok_e)
    np.testing.assert_allclose(z, ref, atol=1e-12)
    expected = np.zeros((5, 15))                  # (X_Sᵀ X_S)⁻¹ X_Sᵀ on S, zero elsewhere
    expected[S] = np.linalg.solve(X[:, S].T @ X[:, S], X[:, S].T)
    np.testing.assert_allclose(jac, expected, atol=1e-10)
    K = np.block([[np.asarray(Qe), np.asarray(Ae).T], [np.asarray(Ae), np.zeros((2, 2))]])
    np.testing.assert_allclose(jnp.concatenate([ze, nue]),
                               np.linalg.solve(K, np.r_[-np.asarray(ce), np.asarray(be)]),
                               atol=1e-12)
    np.testing.assert_allclose(jac_e, np.linalg.inv(K)[:6, 6:], atol=1e-12)


def test_qp_failures_are_reported():
    """x ≤ −1 and x ≥ 1: infeasible. Raised eagerly and under jit, NaN under 'nan'."""
    Q, c = jnp.eye(1), jnp.zeros(1)
    G, h = jnp.array([[1.0], [-1.0]]), jnp.array([-1.0, -1.0])
    options = qp.QPOptions(maxiter=30)
    with pytest.raises(mi.SolveError, match="quadratic program not solved"):
        qp.interior_point(None, Q, c, G=G, h=h, options=options)
    with pytest.raises(RuntimeError, match="quadratic program not solved"):
        jax.block_until_ready(jax.jit(lambda hh: qp.solve_qp(
            Q, c, G=G, h=hh, options=options)[0][0])(h))
    (z, _, lam), info = jax.jit(lambda hh: qp.solve_qp(
        Q, c, G=G, h=hh, options=qp.QPOptions(maxiter=30, on_failure="nan")))(h)
    assert not bool(info.converged) and np.isnan(z).all() and np.isnan(lam).all()
    with pytest.raises(ValueError, match="on_failure"):
        qp.QPOptions(on_failure="maybe")
    with pytest.raises(ValueError, match="all given or all None"):
        conditions.qp_kkt()((jnp.zeros(1), None, jnp.zeros(2)), Q, c, G=G)
