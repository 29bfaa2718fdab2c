"""Control over XLA's operator fusion where it recomputes work.

XLA fuses cheap elementwise producers into each of their consumers, so a value read by
several fused consumers is recomputed once per consumer (a pair force read by the d
component sums, a rank computed for several gathers). ``jax.lax.optimization_barrier``
does not prevent this on XLA:CPU (the barrier is removed before fusion). The results of a
conditional are always written to buffers, so :func:`materialize` routes a value through
one whose predicate the compiler cannot fold. Only on CPU, where it was measured: on
accelerators a conditional reads its predicate on the host (a synchronisation per call), and
the value is returned as is.
"""

from __future__ import annotations

from typing import TypeVar

import jax
import jax.numpy as jnp

T = TypeVar("T")


def materialize(tree: T, anchor: jax.Array) -> T:
    """``tree`` unchanged, computed once into buffers (CPU backend; elsewhere as is).

    Args:
      tree: a pytree of arrays.
      anchor: a traced integer scalar that is ``>= 0`` by construction (an index, a
        count) but not provably so for the compiler. The conditional selects the identity
        branch; the other branch (zeros, so that the two differ and the conditional is
        kept) is never taken.
    """
    if jax.default_backend() != "cpu":
        return tree
    return jax.lax.cond(anchor >= 0, lambda t: t, lambda t: jax.tree.map(jnp.zeros_like, t),
                        tree)
