"""Demo: implicit differentiation of a ridge-regression solver (placeholder for the MD demo).

Run with `make demo`. Prints the hypergradient by implicit differentiation next to the
closed form.
"""

import jax
import jax.numpy as jnp
import numpy as np

from mdsens.implicit import custom_root

jax.config.update("jax_enable_x64", True)


def main() -> None:
    rng = np.random.default_rng(0)
    X = jnp.asarray(rng.normal(size=(50, 8)))
    y = jnp.asarray(rng.normal(size=50))

    def F(w, lam):
        return X.T @ (X @ w - y) + lam * w

    @custom_root(F, solve="cg", symmetric=True)
    def ridge(init, lam):
        return jnp.linalg.solve(X.T @ X + lam * jnp.eye(8), X.T @ y)

    dw = jax.jacfwd(lambda lam: ridge(None, lam))(1.0)
    closed = -jnp.linalg.solve(X.T @ X + jnp.eye(8), ridge(None, 1.0))
    print("dw*/dλ (implicit):   ", np.asarray(dw).round(6))
    print("dw*/dλ (closed form):", np.asarray(closed).round(6))


if __name__ == "__main__":
    main()
