"""Forward mode of custom_root with arguments that are not differentiated (symbolic zeros).

Ridge regression w*(λ, M, y) = (MᵀM + λI)⁻¹ Mᵀy with a data matrix M of a shape that nothing
else in the problem has, so that an operation producing an M-shaped array in the JVP's jaxpr
can only be a tangent of M.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdsens.implicit import custom_root

RNG = np.random.default_rng(5)
M = jnp.asarray(RNG.normal(size=(43, 7)))
Y = jnp.asarray(RNG.normal(size=43))
LAM = 0.7
W0 = jnp.zeros(7)


def F(w, lam, M, y):
    """Stationarity of ½‖Mw − y‖² + ½λ‖w‖²."""
    return M.T @ (M @ w - y) + lam * w


def closed_form(lam, M, y):
    return jnp.linalg.solve(M.T @ M + lam * jnp.eye(M.shape[1]), M.T @ y)


solver = custom_root(F, solve="cg", symmetric=True)(lambda init, lam, M, y:
                                                       closed_form(lam, M, y))


def ops_with_shape(jaxpr, shapes) -> list[str]:
    """Primitives, recursively through sub-jaxprs, whose result has one of ``shapes``."""
    found = []
    for eqn in jaxpr.eqns:
        found += [eqn.primitive.name for v in eqn.outvars
                  if tuple(getattr(v.aval, "shape", ())) in shapes]
        for param in eqn.params.values():
            for sub in param if isinstance(param, (list, tuple)) else (param,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    found += ops_with_shape(inner, shapes)
    return found


def jvp_lam(lam, M):
    """Primal and tangent of w* along λ; M and y are not differentiated."""
    return jax.jvp(lambda l: solver(W0, l, M, Y), (lam,), (1.0,))


def jvp_dense(lam, M, M_dot):
    """The same derivative with M given an explicit (dense) tangent: what the rule computed
    for every argument before symbolic zeros."""
    return jax.jvp(lambda l, m: solver(W0, l, m, Y), (lam, M), (1.0, M_dot))


def test_undifferentiated_argument_has_no_tangent_in_the_jaxpr():
    shapes = {M.shape, M.shape[::-1]}
    sparse = ops_with_shape(jax.make_jaxpr(jvp_lam)(LAM, M).jaxpr, shapes)
    dense = ops_with_shape(jax.make_jaxpr(jvp_dense)(LAM, M, M).jaxpr, shapes)
    # no zeros of M's shape are materialised (a broadcast), none are multiplied ...
    assert not any(name in ("broadcast_in_dim", "zeros_like", "mul", "dot_general")
                   for name in sparse), sparse
    # ... and ∂₂F θ̇ does not differentiate through M: fewer M-sized operations than with a
    # dense tangent for M (which costs one more transpose, of the tangent).
    assert len(sparse) < len(dense), (sparse, dense)


def test_derivatives_match_closed_form_and_the_dense_path():
    primal, tangent = jax.jit(jvp_lam)(LAM, M)
    np.testing.assert_allclose(primal, closed_form(LAM, M, Y), rtol=1e-10)
    ref = jax.jacfwd(closed_form)(LAM, M, Y)
    np.testing.assert_allclose(tangent, ref, rtol=1e-8)
    _, dense = jax.jit(jvp_dense)(LAM, M, jnp.zeros_like(M))
    np.testing.assert_allclose(tangent, dense, rtol=1e-12)
    # differentiating M (λ and y undifferentiated), and y alone
    M_dot = jnp.asarray(RNG.normal(size=M.shape))
    got = jax.jit(lambda t: jax.jvp(lambda m: solver(W0, LAM, m, Y), (M,), (t,))[1])(M_dot)
    want = jax.jvp(lambda m: closed_form(LAM, m, Y), (M,), (M_dot,))[1]
    np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-10)
    got = jax.jit(jax.jacfwd(lambda y: solver(W0, LAM, M, y)))(Y)
    np.testing.assert_allclose(got, jax.jacfwd(closed_form, 2)(LAM, M, Y), rtol=1e-7,
                               atol=1e-10)


@pytest.mark.parametrize("transform", ["jacrev", "hessian", "vmap", "jit"])
def test_transformations_with_undifferentiated_arguments(transform):
    loss = lambda lam: jnp.sum(solver(W0, lam, M, Y) ** 2)  # noqa: E731
    ref = lambda lam: jnp.sum(closed_form(lam, M, Y) ** 2)  # noqa: E731
    if transform == "jacrev":
        np.testing.assert_allclose(jax.jit(jax.jacrev(loss))(LAM), jax.grad(ref)(LAM),
                                   rtol=1e-7)
    elif transform == "hessian":
        np.testing.assert_allclose(jax.jit(jax.hessian(loss))(LAM), jax.hessian(ref)(LAM),
                                   rtol=1e-6)
    elif transform == "vmap":
        lams = jnp.array([0.3, 1.0, 2.5])
        got = jax.jit(jax.vmap(lambda lam: jvp_lam(lam, M)[1]))(lams)
        want = jax.vmap(jax.jacfwd(closed_form), in_axes=(0, None, None))(lams, M, Y)
        np.testing.assert_allclose(got, want, rtol=1e-7)
    else:  # forward mode of a scalar loss, compiled
        got = jax.jit(jax.jacfwd(loss))(LAM)
        np.testing.assert_allclose(got, jax.grad(ref)(LAM), rtol=1e-7)


def test_aux_keywords_and_closed_over_values():
    """has_aux (the aux output gets a zero tangent), a keyword argument, and F closing over a
    traced value that is not differentiated."""

    def outer(lam, scale):
        F_closed = lambda w, lam, *, y: F(w, lam, scale * M, y)  # noqa: E731
        wrapped = custom_root(F_closed, solve="gmres", has_aux=True)(
            lambda init, lam, *, y: (closed_form(lam, scale * M, y), jnp.int32(3)))
        return jax.jvp(lambda l: wrapped(W0, l, y=Y), (lam,), (1.0,))

    (w, aux), (w_dot, aux_dot) = jax.jit(outer)(LAM, 2.0)
    np.testing.assert_allclose(w_dot, jax.jacfwd(closed_form)(LAM, 2.0 * M, Y), rtol=1e-8)
    assert int(aux) == 3 and aux_dot.dtype == jax.dtypes.float0
