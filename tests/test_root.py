"""custom_root / custom_fixed_point / root_jvp / root_vjp against closed forms."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_tree_allclose, central_difference

from mdsens.implicit import (
    custom_fixed_point,
    custom_root,
    linsolve,
    root_jvp,
    root_vjp,
)

RNG = np.random.default_rng(11)
X = jnp.asarray(RNG.normal(size=(30, 6)))
Y = jnp.asarray(RNG.normal(size=30))


def ridge_closed_form(lam, X=X, y=Y):
    """w*(λ) = (XᵀX + λI)⁻¹ Xᵀy, the reference."""
    return jnp.linalg.solve(X.T @ X + lam * jnp.eye(X.shape[1]), X.T @ y)


def ridge_F(w, lam, X, y):
    """Stationarity of ½‖Xw − y‖² + ½λ‖w‖²."""
    return X.T @ (X @ w - y) + lam * w


def ridge_gd(init, lam, X, y):
    """An iterative inner solver (gradient descent in a while_loop), not differentiable itself
    in any useful way: derivatives must come from the implicit rule."""
    L = jnp.linalg.norm(X, ord=2) ** 2 + lam

    def body(state):
        w, k = state
        return w - ridge_F(w, lam, X, y) / L, k + 1

    def cond(state):
        w, k = state
        return (jnp.linalg.norm(ridge_F(w, lam, X, y)) > 1e-13) & (k < 20000)

    return jax.lax.while_loop(cond, body, (init, 0))[0]


SOLVES = {
    "cg": dict(solve="cg", symmetric=True),
    "gmres": dict(solve="gmres"),
    "bicgstab": dict(solve="bicgstab"),
    "normal_cg": dict(solve="normal_cg"),
    "lu": dict(solve="lu"),
}


@pytest.fixture(params=sorted(SOLVES))
def ridge_solver(request):
    return custom_root(ridge_F, **SOLVES[request.param])(ridge_gd)


def test_forward_and_reverse_match_closed_form(ridge_solver):
    w0 = jnp.zeros(6)
    f = lambda lam: ridge_solver(w0, lam, X, Y)  # noqa: E731
    ref = jax.jacfwd(ridge_closed_form)(2.0)
    np.testing.assert_allclose(f(2.0), ridge_closed_form(2.0), rtol=1e-9)
    np.testing.assert_allclose(jax.jacfwd(f)(2.0), ref, rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(jax.jacrev(f)(2.0), ref, rtol=1e-7, atol=1e-10)


def test_hessian_matches_closed_form():
    solver = custom_root(ridge_F, solve="cg", symmetric=True)(ridge_gd)
    w0 = jnp.zeros(6)
    loss = lambda lam: jnp.sum(solver(w0, lam, X, Y) ** 2)  # noqa: E731
    ref = lambda lam: jnp.sum(ridge_closed_form(lam) ** 2)  # noqa: E731
    np.testing.assert_allclose(jax.jit(jax.hessian(loss))(1.5), jax.hessian(ref)(1.5),
                               rtol=1e-6)
    # hessian with respect to a matrix argument (reverse over forward and forward over reverse)
    lossX = lambda Xm: jnp.sum(solver(w0, 1.5, Xm, Y[:8]) ** 2)  # noqa: E731
    refX = lambda Xm: jnp.sum(ridge_closed_form(1.5, Xm, Y[:8]) ** 2)  # noqa: E731
    Xs = X[:8]
    np.testing.assert_allclose(jax.jit(jax.hessian(lossX))(Xs), jax.hessian(refX)(Xs),
                               rtol=1e-6, atol=1e-9)


def test_higher_order_never_differentiates_the_solver():
    """A "solver" that returns a precomputed root (constant in θ) still gives exact first and
    second derivatives at that θ, in every nesting of forward and reverse mode."""
    lam0 = 1.5
    w_star = ridge_closed_form(lam0)
    frozen = custom_root(ridge_F, solve="cg", symmetric=True)(lambda init, lam, X, y: w_star)
    loss = lambda lam: jnp.sum(frozen(None, lam, X, Y) ** 3)  # noqa: E731
    ref = lambda lam: jnp.sum(ridge_closed_form(lam) ** 3)  # noqa: E731
    want = jax.hessian(ref)(lam0)
    for outer in (jax.jacfwd, jax.jacrev):
        for inner in (jax.jacfwd, jax.jacrev):
            np.testing.assert_allclose(outer(inner(loss))(lam0), want, rtol=1e-7)


def test_jacobian_wrt_data_matrix_under_jit():
    solver = custom_root(ridge_F, solve="cg", symmetric=True)(ridge_gd)
    w0 = jnp.zeros(6)
    jac = jax.jit(jax.jacrev(lambda Xm: solver(w0, 2.0, Xm, Y)))(X)
    ref = jax.jacfwd(lambda Xm: ridge_closed_form(2.0, Xm))(X)
    np.testing.assert_allclose(jac, ref, rtol=1e-7, atol=1e-10)


def test_vmap_over_hyperparameters():
    solver = custom_root(ridge_F, solve="cg", symmetric=True)(ridge_gd)
    lams = jnp.array([0.5, 1.0, 4.0])
    grad = jax.vmap(jax.grad(lambda lam: solver(jnp.zeros(6), lam, X, Y).sum()))(lams)
    ref = jax.vmap(jax.grad(lambda lam: ridge_closed_form(lam).sum()))(lams)
    np.testing.assert_allclose(grad, ref, rtol=1e-7)


def test_vs_central_finite_differences():
    solver = custom_root(ridge_F, solve="gmres")(ridge_gd)
    f = lambda lam: solver(jnp.zeros(6), lam, X, Y)  # noqa: E731
    np.testing.assert_allclose(jax.jacfwd(f)(0.7), central_difference(f, 0.7, 1e-5), rtol=1e-6)


def test_transposition_identity():
    """⟨v, J u⟩ = ⟨Jᵀ v, u⟩ for the Jacobian with respect to the data matrix."""
    solver = custom_root(ridge_F, solve="gmres")(ridge_gd)
    f = lambda Xm: solver(jnp.zeros(6), 2.0, Xm, Y)  # noqa: E731
    u = jnp.asarray(RNG.normal(size=X.shape))
    v = jnp.asarray(RNG.normal(size=6))
    _, Ju = jax.jvp(f, (X,), (u,))
    _, vjp = jax.vjp(f, X)
    (JTv,) = vjp(v)
    np.testing.assert_allclose(jnp.vdot(v, Ju), jnp.vdot(JTv, u), rtol=1e-9)


def test_pytree_unknowns_kwargs_and_has_aux():
    """x is a dict, a parameter is passed by keyword, the solver returns (x, aux)."""

    def F(x, lam, *, y):
        return {"w": X.T @ (X @ x["w"] + x["b"] - y) + lam * x["w"],
                "b": jnp.sum(X @ x["w"] + x["b"] - y)[None]}

    def solver(init, lam, *, y):
        A = jnp.block([[X.T @ X + lam * jnp.eye(6), X.T.sum(1, keepdims=True)],
                       [X.sum(0)[None, :], jnp.array([[30.0]])]])
        rhs = jnp.concatenate([X.T @ y, jnp.sum(y)[None]])
        sol = jnp.linalg.solve(A, rhs)
        return {"w": sol[:6], "b": sol[6:]}, jnp.int32(1)

    wrapped = custom_root(F, solve="gmres", has_aux=True)(solver)
    init = {"w": jnp.zeros(6), "b": jnp.zeros(1)}

    def loss(lam, y):
        x, aux = wrapped(init, lam, y=y)
        return jnp.sum(x["w"] ** 2) + x["b"][0]

    def ref(lam, y):
        x, _ = solver(init, lam, y=y)
        return jnp.sum(x["w"] ** 2) + x["b"][0]

    g = jax.grad(loss, argnums=(0, 1))(1.3, Y)
    assert_tree_allclose(g, jax.grad(ref, argnums=(0, 1))(1.3, Y), rtol=1e-7, atol=1e-10)
    assert_tree_allclose(jax.jacfwd(loss)(1.3, Y), jax.jacfwd(ref)(1.3, Y), rtol=1e-7)


def test_closure_over_traced_values():
    """F and the solver close over λ instead of taking it as an argument."""

    def outer(lam):
        F = lambda w, X, y: X.T @ (X @ w - y) + lam * w  # noqa: E731
        solver = custom_root(F, solve="cg", symmetric=True)(
            lambda init, X, y: ridge_gd(init, lam, X, y)
        )
        return solver(jnp.zeros(6), X, Y).sum()

    ref = jax.grad(lambda lam: ridge_closed_form(lam).sum())(2.0)
    np.testing.assert_allclose(jax.grad(outer)(2.0), ref, rtol=1e-7)
    np.testing.assert_allclose(jax.jacfwd(outer)(2.0), ref, rtol=1e-7)


def test_init_gets_no_derivative():
    solver = custom_root(ridge_F, solve="cg", symmetric=True)(ridge_gd)
    g = jax.grad(lambda w0: solver(w0, 2.0, X, Y).sum())(jnp.ones(6))
    np.testing.assert_array_equal(g, np.zeros(6))


def test_custom_fixed_point():
    """x = T(x) with T a contraction: x*(θ) = (I − θ K)⁻¹ c."""
    K = jnp.asarray(RNG.normal(size=(5, 5))) / 10
    c = jnp.arange(1.0, 6.0)

    def T(x, theta):
        return theta * K @ x + c

    @custom_fixed_point(T, solve="gmres")
    def iterate(init, theta):
        return jax.lax.fori_loop(0, 200, lambda _, x: T(x, theta), init)

    ref = lambda theta: jnp.linalg.solve(jnp.eye(5) - theta * K, c)  # noqa: E731
    f = lambda theta: iterate(jnp.zeros(5), theta)  # noqa: E731
    np.testing.assert_allclose(jax.jacrev(f)(0.8), jax.jacfwd(ref)(0.8), rtol=1e-8)
    np.testing.assert_allclose(jax.jacfwd(f)(0.8), jax.jacfwd(ref)(0.8), rtol=1e-8)


def test_root_jvp_and_vjp_explicit():
    w = ridge_closed_form(2.0)
    args = (2.0, X, Y)
    tangents = (1.0, jnp.zeros_like(X), jnp.zeros_like(Y))
    w_dot, info = root_jvp(ridge_F, w, args, tangents, solve="cg")
    np.testing.assert_allclose(w_dot, jax.jacfwd(ridge_closed_form)(2.0), rtol=1e-8)
    assert bool(info.converged)
    cot = jnp.arange(6.0)
    bars, info = root_vjp(ridge_F, w, args, cot, solve=functools.partial(linsolve.cg, tol=1e-12))
    ref = jax.vjp(lambda lam, Xm, y: ridge_closed_form(lam, Xm, y), *args)[1](cot)
    for got, want in zip(bars, ref):
        np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-10)
    assert int(info.iterations) > 0


def test_failed_derivative_solve_is_not_silent():
    """A derivative solve capped at one iteration must raise, not return garbage."""
    solver = custom_root(ridge_F, solve=functools.partial(linsolve.cg, maxiter=1))(ridge_gd)
    with pytest.raises(RuntimeError, match="maximum iterations"):
        jax.block_until_ready(jax.jacfwd(lambda lam: solver(jnp.zeros(6), lam, X, Y))(2.0))
    nan_solver = custom_root(
        ridge_F, solve=functools.partial(linsolve.cg, maxiter=1), on_failure="nan"
    )(ridge_gd)
    jac = jax.jacfwd(lambda lam: nan_solver(jnp.zeros(6), lam, X, Y))(2.0)
    assert np.all(np.isnan(jac))
