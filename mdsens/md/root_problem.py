r"""The root problem behind :func:`mdsens.md.sensitivity.sensitivity`.

Unknowns ``x`` and parameters ``θ`` around a relaxed state, and the optimality condition
``F(x, θ) = ∇ₓ G(x, θ)``:

* fixed cell: ``x = R̃`` (N, d), ``G = E(R̃(I+η), C₀(I+η); p)`` with ``θ = (p, η)``;
* relaxing cell: ``x = (R̃, ε)``, ``G = E(R̃(I+ε), C₀(I+ε); p) + P det C``.

``wrt`` names map to entries of ``θ`` (:class:`ParamSpec`): a whole parameter array, one
species pair of a per-pair matrix (an additive offset on both symmetric entries), the applied
Voigt strain, or the external pressure.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from ..implicit import custom_root, linsolve
from .strain import deformation, n_voigt

Array = jax.Array

_PAIR_RE = re.compile(r"^(\w+)\[\s*([A-Za-z]+)\s*,\s*([A-Za-z]+)\s*\]$")


# ----------------------------------------------------------------------------- parameters


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    """How one ``wrt`` name enters the parameters: a whole array, a species-pair entry, the
    applied strain, the external pressure, or (``"user"``) an entry of the dict passed to
    the problem's ``params_fn``, whose output replaces the named potential parameters."""

    name: str
    kind: Literal["param", "pair", "strain", "pressure", "user"]
    base: str = ""
    index: tuple[tuple[int, int], ...] = ()


def parse_wrt(wrt, potential, dim, periodic, relax_cell) -> list[ParamSpec]:
    if isinstance(wrt, str):
        wrt = [wrt]
    specs: list[ParamSpec] = []
    names = set(potential.params)
    for item in wrt:
        if item == "strain":
            if not periodic:
                raise ValueError("wrt='strain' needs a periodic system")
            if relax_cell:
                raise ValueError(
                    "wrt='strain' needs a fixed cell (a relaxing cell relaxes the strain away)"
                )
            specs.append(ParamSpec("strain", "strain"))
            continue
        if item == "pressure":
            if not relax_cell:
                raise ValueError("wrt='pressure' needs relax_cell=True")
            specs.append(ParamSpec("pressure", "pressure"))
            continue
        m = _PAIR_RE.match(item)
        if m:
            base, a, b = m.groups()
            if base not in names:
                raise ValueError(f"unknown parameter {base!r}; known: {sorted(names)}")
            species = potential.species or ()
            if jnp.ndim(potential.params[base]) != 2 or a not in species or b not in species:
                raise ValueError(
                    f"{item!r}: {base!r} is not a per-pair parameter over species "
                    f"{list(species)}"
                )
            i, j = species.index(a), species.index(b)
            index = ((i, j),) if i == j else ((i, j), (j, i))
            specs.append(ParamSpec(item, "pair", base, index))
            continue
        if item not in names:
            known = sorted(names) + ["strain" if not relax_cell else "pressure"]
            raise ValueError(f"unknown parameter {item!r}; known: {known}")
        specs.append(ParamSpec(item, "param", item))
    if not specs:
        raise ValueError("no parameters to differentiate with respect to (wrt is empty)")
    if len({s.name for s in specs}) != len(specs):
        raise ValueError(f"duplicate names in wrt: {list(wrt)}")
    return specs


def user_specs(theta: dict, potential) -> list[ParamSpec]:
    """``"user"`` specs for the entries of a user's θ dict (``sensitivity(params_fn=...)``);
    a name must not shadow a potential parameter or ``strain``/``pressure``."""
    if not isinstance(theta, dict) or not theta:
        raise ValueError("with params_fn, wrt must be a non-empty dict {name: value} of the "
                         "parameters params_fn takes")
    clash = set(theta) & (set(potential.params) | {"strain", "pressure"})
    if clash:
        raise ValueError(f"with params_fn, wrt names must differ from the potential's "
                         f"parameters and strain/pressure; got {sorted(clash)}")
    return [ParamSpec(str(k), "user") for k in theta]


def initial_theta(specs, potential, dim, pressure, params=None) -> dict[str, Array]:
    """θ at the reference point: parameter values (``params``, default the potential's),
    zero pair offsets, zero strain, the external pressure."""
    params = potential.params if params is None else params
    out = {}
    for s in specs:
        if s.kind == "param":
            out[s.name] = jnp.asarray(params[s.name], jnp.float64)
        elif s.kind == "pair":
            out[s.name] = jnp.zeros((), jnp.float64)
        elif s.kind == "strain":
            out[s.name] = jnp.zeros((n_voigt(dim),), jnp.float64)
        else:
            out[s.name] = jnp.asarray(pressure, jnp.float64)
    return out


# ----------------------------------------------------------------------------- the problem


@dataclasses.dataclass(frozen=True)
class RootProblem:
    """The root problem F(x, θ) = ∇ₓ G(x, θ) around the relaxed state.

    A pytree: the data (neighbour list, parameter values, cell, pressure) are leaves and the
    layout (model, specs, dimension, relax_cell) is static, so a jitted function of a
    problem compiles once per layout and is reused for new parameters and states.
    """

    model: Any
    nbrs: Any
    specs: tuple[ParamSpec, ...]
    base_params: dict
    cell0: Array | None
    dim: int
    relax_cell: bool
    pressure: Any
    params_fn: Any = None  # {user spec name: θ value} -> {param name: value} (replacing)

    def params(self, theta) -> dict:
        params = dict(self.base_params)
        user = {s.name: theta[s.name] for s in self.specs if s.kind == "user"}
        if user:
            params.update(self.params_fn(user))
        for s in self.specs:
            if s.kind == "param":
                params[s.base] = theta[s.name]
        for s in self.specs:
            if s.kind == "pair":
                delta = jnp.zeros_like(params[s.base])
                for i, j in s.index:
                    delta = delta.at[i, j].set(1.0)
                params[s.base] = params[s.base] + theta[s.name] * delta
        return params

    def strain(self, theta) -> Array:
        for s in self.specs:
            if s.kind == "strain":
                return theta[s.name]
        return jnp.zeros((n_voigt(self.dim),), jnp.float64)

    def ext_pressure(self, theta) -> Array:
        for s in self.specs:
            if s.kind == "pressure":
                return theta[s.name]
        return jnp.asarray(self.pressure, jnp.float64)

    def configuration(self, x, theta):
        """Cartesian positions, cell and parameters of unknowns ``x`` at parameters ``θ``."""
        params = self.params(theta)
        if self.cell0 is None:
            return x, None, params
        if self.relax_cell:
            U = deformation(x["eps"], self.dim)
            return x["R"] @ U, self.cell0 @ U, params
        U = deformation(self.strain(theta), self.dim)
        return x @ U, self.cell0 @ U, params

    def objective(self, x, theta):
        R, C, params = self.configuration(x, theta)
        E = self.model.energy(R, C, params, self.nbrs)
        if self.relax_cell:
            E = E + self.ext_pressure(theta) * jnp.abs(jnp.linalg.det(C))
        return E

    def F(self, x, theta):
        return jax.grad(self.objective)(x, theta)

    def hessian_operator(self):
        """``operator(x, θ) -> (v ↦ ∂ₓF v)`` assembled from pair stiffnesses
        (:meth:`EnergyModel.pair_hessian_matvec`) when the model allows it and the cell is
        fixed, else None. With the applied strain ``U`` (``R = R̃ U``) the product is
        ``(H (v U)) Uᵀ``. The matvec carries ``diagonal_blocks`` (N, d, d)."""
        if self.relax_cell or not self.model.has_pair_hessian:
            return None

        def operator(x, theta):
            R, C, params = self.configuration(x, theta)
            hv = self.model.pair_hessian_matvec(R, C, params, self.nbrs)
            if self.cell0 is None:
                return hv
            U = deformation(self.strain(theta), self.dim)

            def strained(v):
                return hv(v @ U) @ U.T

            # blocks of the strained operator: U H_ii Uᵀ
            strained.diagonal_blocks = jnp.einsum("ab,nbc,dc->nad", U, hv.diagonal_blocks, U)
            return strained

        return operator

    def embed(self, modes: Array):
        """Zero modes (k, N, d) of the positions as modes of the unknowns x."""
        if not self.relax_cell:
            return modes
        k = modes.shape[0]
        return {"R": modes,
                "eps": jax.device_put(np.zeros((k, n_voigt(self.dim)), modes.dtype))}


jax.tree_util.register_dataclass(
    RootProblem,
    data_fields=["nbrs", "base_params", "cell0", "pressure"],
    meta_fields=["model", "specs", "dim", "relax_cell", "params_fn"],
)


def implicit_root(problem: RootProblem, x_star, theta, solve, on_failure: str = "ignore"):
    r"""The unknowns ``x(θ)`` of ``problem`` at its known root ``x_star`` (the result of a
    relaxation at ``θ``), as a JAX function of ``θ`` whose derivatives follow the implicit
    function theorem ``∂ₓF ẋ = −∂_θF θ̇`` (:func:`mdsens.implicit.custom_root`, symmetric
    ``∂ₓF``: the Hessian of the objective).

    ``x_star`` gets no derivative of its own (the relaxation that produced it is never
    differentiated); ``solve`` is a linear solver with the zero modes projected out
    (:func:`make_solver`). This is the one place where a relaxed state becomes
    differentiable: :func:`mdsens.md.relaxed.relaxed_state`, the elastic constants and
    :func:`mdsens.bilevel.fit_potential` all call it.
    """
    # The problem (its neighbour list, cell, parameters) is an explicit argument, not a
    # closure: traced integer data closed over by F would reach the derivative rule as a
    # stale tracer when a jitted caller is differentiated from outside.
    root = custom_root(lambda x, th, ref, prob: prob.F(x, th), solve=solve, symmetric=True,
                       on_failure=on_failure)(lambda init, th, ref, prob: ref)
    return root(None, theta, jax.lax.stop_gradient(x_star), problem)


@dataclasses.dataclass(frozen=True)
class SolverPlan:
    """Static settings of the derivative solves (hashable: part of the cache key of every
    compiled derivative stage; the null space and preconditioner data are traced)."""

    solver: str = "cg"
    tol: float = 1e-10
    maxiter: int | None = None
    preconditioner: str | None = None
    hessian: str = "autodiff"  # or "assembled": RootProblem.hessian_operator

    def operator(self, problem: RootProblem):
        """The ``operator`` for :func:`mdsens.implicit.root_jvp` / ``root_vjp`` (None:
        linearise F)."""
        return problem.hessian_operator() if self.hessian == "assembled" else None

    def solver_fn(self, nullspace, precond, relax_cell: bool):
        """The linear solver with ``nullspace`` projected out and the preconditioner of
        :func:`preconditioner_data` ``precond`` (None: none); traceable."""
        M = None if precond is None else preconditioner_apply(precond, relax_cell)
        return make_solver(self.solver, self.tol, self.maxiter, nullspace, M)


def make_solver(name, tol, maxiter, nullspace, M):
    solver = linsolve.get_solver(name)
    options = {"tol": tol, "nullspace": nullspace}
    if maxiter is not None:
        options["maxiter"] = maxiter
    if M is not None:
        options["M"] = M
    return functools.partial(solver, **options)


def preconditioner_data(kind, blocks) -> np.ndarray | None:
    """Host side: the inverse diagonal ``(N, d)`` (Jacobi) or the pseudo-inverse of each
    symmetrised per-atom block ``(N, d, d)`` (block-Jacobi) from the diagonal blocks
    ``(N, d, d)``; zero where an atom has no stiffness."""
    if kind is None:
        return None
    if kind not in ("jacobi", "block_jacobi"):
        raise ValueError(f"preconditioner must be None, 'jacobi' or 'block_jacobi', got {kind!r}")
    blocks = np.asarray(blocks)
    if kind == "jacobi":
        diag = np.einsum("nii->ni", blocks)
        scale = np.abs(diag).max()
        return np.where(diag > 1e-12 * scale, 1.0 / np.where(diag > 0, diag, 1.0), 0.0)
    return np.linalg.pinv(0.5 * (blocks + np.swapaxes(blocks, 1, 2)), hermitian=True,
                          rtol=1e-10)


def preconditioner_apply(data, relax_cell: bool):
    """The preconditioner ``M`` (a function of the unknowns' pytree) from
    :func:`preconditioner_data` (traceable); cell strain components (relax_cell) are left
    unpreconditioned. None for None."""
    if data is None:
        return None
    data = jnp.asarray(data)
    if data.ndim == 2:
        apply_R = lambda v: data * v  # noqa: E731
    else:
        apply_R = lambda v: jnp.einsum("nij,nj->ni", data, v)  # noqa: E731
    if not relax_cell:
        return apply_R
    return lambda x: {"R": apply_R(x["R"]), "eps": x["eps"]}
