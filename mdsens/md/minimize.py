r"""Energy minimisation of a :class:`~mdsens.md.System`: ``relax`` -> ``Relaxation``.

``relax`` finds a local minimum of the potential energy :math:`E(R)` at fixed cell, or of the
enthalpy :math:`H = E + pV` over positions and cell (``relax_cell=True``), with FIRE
(default), FIRE 2.0 or adaptive gradient descent. Every setting is a field of
:class:`~mdsens.md.options.RelaxOptions`. Convergence (ASE convention):

.. math:: \max_i |F_i| \le \text{fmax}
   \quad\text{and, with relax\_cell,}\quad \max_{ij} |\sigma + pI|_{ij} \le \text{stress\_tol},

:math:`F = -\partial E/\partial R` (eV/Å), :math:`\sigma = V^{-1}\partial E/\partial
\varepsilon` (eV/Å^d, ASE sign: positive = tensile). The default ``stress_tol`` is
``fmax / v^((d-1)/d)`` (``v = V/N`` the volume per atom of the start cell): the stress whose
force on one atom's share of a face is ``fmax``.

How it runs
-----------
The steps run inside a jitted ``lax.while_loop`` in *chunks* of at most ``chunk`` steps
(``mdsens.md._relax_loop``); ``relax`` and ``relax_batch`` share one host loop
(``mdsens.md._driver``) that reports through ``callback(step, energy, fmax)`` between chunks
and repairs what cannot be repaired inside ``jit``: when a trial step overflowed the
neighbour list, the step is not taken, the list is reallocated for the last good state
(``model.allocate``) and the relaxation resumes (FIRE's velocity and time step are kept).
With ``relax_cell``, a cell that shrank below the model's small-cell replication is rebuilt
the same way (``Potential.build`` on the current structure). The chunk function is compiled
once per (model, method, relax_cell, array shapes); every other setting is traced. Pass a
prebuilt ``EnergyModel`` (``mdsens.md.build``) as ``potential`` to reuse the compiled code
across calls.

Safeguards
----------
Nothing non-finite is ever accepted: a trial step whose energy or forces are non-finite,
whose objective rises by more than :math:`|H| + N\varepsilon` (atoms pushed into each
other), or whose cell turns inside out is rejected, and the minimiser restarts from the last
good point at rest with half the time step (40 rejections in a row end the relaxation as
``NONFINITE``). Every step is capped: no atom moves more than ``max_step`` ℓ, no strain
component changes by more than ``max_strain_step`` (also FIRE 2.0's half step back, which
LAMMPS does not cap). A cell relaxation stops as ``CELL_DIVERGED`` when the volume leaves
``[V0 / r, r V0]`` (``r = max_volume_ratio``), and a "converged" cell relaxation whose atoms no
longer interact (energy 0 where the start had some) is ``CELL_DIVERGED`` too, never
converged.

Units and defaults
------------------
Time steps are given in units of :math:`\tau = \ell\sqrt{m/\varepsilon}
\sqrt{\kappa_{LJ}/\kappa}` with unit mass (every degree of freedom has mass 1):
:math:`\ell` and :math:`\varepsilon` are the potential's ``sigma`` and ``epsilon``
parameters when it has them (their largest entries: LJ, Morse, soft sphere,
Stillinger–Weber), else 1 Å and 1 eV (ASE units); :math:`\kappa` is the potential's
``bond_stiffness`` (:math:`\ell^2\phi''/\varepsilon` at a bond; Lennard-Jones's 57.15 unless
the potential says otherwise: 1 for harmonic soft spheres, whose relaxations near jamming
took 12000–48000 steps with LJ's time unit and 2300–6400 with their own). ``max_step`` is in
units of :math:`\ell`. The defaults ``dt=0.005``, ``dt_max=0.03``, ``max_step=0.1`` were
measured on LJ in reduced units with this code (fmax 1e-8, steps to convergence):

========================================  ============  =============  ============  ===========
system                                    0.005 / 0.03  0.005 / 0.02   0.01 / 0.05   0.02 / 0.1
========================================  ============  =============  ============  ===========
Kob–Andersen 80:20, N=500, ρ=1.2, random  1588 1373     1978 2115      1586 4925     2683 9849
start (3 starts)                          1328          1624           1472          4173
LJ fcc N=256, a=1.55σ, 0.05σ noise (2)    267 243       270 270        --            238 240
========================================  ============  =============  ============  ===========

(τ there is σ·sqrt(1/ε_max), ε_max = 1.5 for KA.) Larger steps lose more to FIRE's
restarts on the glass. Without the ``max_step`` cap (measured with this FIRE on jax-md's LJ,
cutoff 2.5σ_max) 0.1 / 0.4 (jax-md's defaults) wandered without converging on fcc N = 256,
and 0.005 / 0.02 did not converge in 20000 steps from a random KA start. The variable-cell
loop rebuilds the neighbour list at every step (the cell moves), so its steps cost more than
fixed-cell ones.

Exports: :func:`relax`, :func:`relax_batch` (K parameter sets at once, ``vmap``),
:class:`RelaxOptions`, :class:`Relaxation`, :class:`Status`, :class:`RelaxationError`,
:class:`RelaxationWarning`, and the pieces :func:`fire`, :func:`fire2`, :func:`gd`
(``init / step / reject`` minimisers over pytrees).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from ..implicit.policy import check_policy
from . import _driver
from ._fire import Fire2State, FireState, GDState, Minimizer, fire, fire2, gd
from ._relaxation import (
    Policy,
    Relaxation,
    RelaxationError,
    RelaxationWarning,
    Status,
    apply_policy,
    summary,
)
from .options import METHODS, Method, RelaxOptions
from .system import System

__all__ = [
    "METHODS",
    "Fire2State",
    "FireState",
    "GDState",
    "Method",
    "Minimizer",
    "Policy",
    "RelaxOptions",
    "Relaxation",
    "RelaxationError",
    "RelaxationWarning",
    "summary",
    "Status",
    "fire",
    "fire2",
    "gd",
    "relax",
    "relax_batch",
]


def _as_system(system: Any, who: str) -> System:
    """``system`` itself, or ``System.from_ase(system)`` for an ``ase.Atoms``."""
    if isinstance(system, System):
        return system
    if hasattr(system, "get_positions") and hasattr(system, "get_cell"):
        return System.from_ase(system)
    raise TypeError(f"{who}: system must be an mdsens.md.System or an ase.Atoms, got "
                    f"{type(system).__name__}")


def relax(
    system: System | Any,
    potential: Any,
    options: RelaxOptions | dict | None = None,
    *,
    callback: Callable[[int, float, float], None] | None = None,
    on_failure: Policy = "raise",
    params: dict | None = None,
    nbrs: Any = None,
    **settings: Any,
) -> Relaxation:
    r"""Relax ``system`` to a local minimum of ``potential`` (see the module docstring).

    Fixed cell: minimise :math:`E(R)`. ``relax_cell=True``: minimise
    :math:`H = E(R, C) + p\,\det C` over positions and cell through a symmetric strain of
    the start cell (``_relax_loop`` states the coordinates and generalised forces); the
    result has :math:`\sigma = -pI` within ``stress_tol``.

    ``relax`` drives compiled chunks from Python, so it is not itself traceable (no ``jit``,
    ``vmap`` or ``grad`` around it); derivatives of the relaxed state come from implicit
    differentiation at the returned minimum, not from differentiating the loop.

    Args:
      system: start structure, a :class:`System` or an ``ase.Atoms`` (periodic or free;
        ``relax_cell`` needs periodic).
      potential: a :class:`~mdsens.md.Potential`, or an ``EnergyModel`` already built for
        this system layout (reuses compiled code across calls; its neighbour-list settings
        then win over the options').
      options: a :class:`RelaxOptions` (or a dict of its fields); default ``RelaxOptions()``.
      callback: called as ``callback(step, energy, fmax)`` after every chunk.
      on_failure: ``"raise"`` (:class:`RelaxationError`), ``"warn"``, ``"nan"`` (results
        become NaN) or ``"ignore"``; the status is always in the result.
      params: potential parameters (default: the potential's own).
      nbrs: a start neighbour list for this model (e.g. a previous ``Relaxation.nbrs``);
        reallocated if it overflows.
      **settings: fields of :class:`RelaxOptions` (``fmax``, ``max_steps``, ``method``,
        ``relax_cell``, ``pressure``, ...) replacing those of ``options``.
    Returns:
      :class:`Relaxation`.
    Raises:
      ValueError: invalid settings, or ``relax_cell`` for a free system.
      TypeError: a setting that is not a field of :class:`RelaxOptions`.
      RelaxationError: with ``on_failure="raise"`` when not converged.
    """
    options = RelaxOptions.of(options, **settings)
    check_policy(on_failure)
    if options.processes > 1:
        return _relax_on_processes(system, potential, options, callback, on_failure, params,
                                   nbrs)
    system, model, params = prepare(system, potential, options, params, "relax")
    (result,) = _driver.drive(model, [system], [params], options, nbrs=nbrs,
                              callback=callback)
    return apply_policy(result, on_failure)


def prepare(system: Any, potential: Any, options: RelaxOptions, params: dict | None,
            who: str) -> tuple[System, Any, dict]:
    """``(system, model, params)`` of one relaxation: the system as a :class:`System`,
    the model for its layout (:func:`mdsens.md._driver.resolve_model`) and the parameters,
    checked (``relax_cell`` needs a periodic system; the parameters within the model's
    cutoff)."""
    system = _as_system(system, who)
    if options.relax_cell and not system.is_periodic:
        raise ValueError("relax_cell=True needs a periodic system")
    model = _driver.resolve_model(system, potential, options)
    params = _driver.default_params(potential, model, params)
    model.check_params(params)
    return system, model, params


def _relax_on_processes(system, potential, options, callback, on_failure, params, nbrs):
    """``relax`` on a :class:`~mdsens.md.processes.ProcessPool` started for this call."""
    from .processes import ProcessPool

    if nbrs is not None:
        raise ValueError("processes > 1 takes no nbrs (the workers allocate their own): "
                         "use processes=1")
    with ProcessPool(options.processes) as pool:
        return pool.relax(system, potential, options, callback=callback,
                          on_failure=on_failure, params=params)


def relax_batch(
    systems: System | Any | Sequence[System | Any],
    potential: Any,
    params: Sequence[dict],
    options: RelaxOptions | dict | None = None,
    *,
    on_failure: Policy = "raise",
    nbrs: Any = None,
    **settings: Any,
) -> list[Relaxation]:
    r"""Relax K parameter sets at once: ``[relax(system_k, potential, params=params[k])]``.

    Member k minimises :math:`E(R; \theta_k)` (or the enthalpy with ``relax_cell``) from
    ``systems[k]`` (or the one ``systems`` shared by all) exactly as :func:`relax` does
    (same time and length units from :math:`\theta_k`, same ``stress_tol`` rule, same
    steps, same safeguards): one ``lax.while_loop`` steps every member under ``vmap`` while
    some member is active and freezes the members that are done, and the host loop between
    chunks is :func:`relax`'s, member by member (``mdsens.md._driver``). Every member
    reports its own ``converged``, ``status``, ``steps`` and ``fmax``; ``on_failure``
    applies to each (``"raise"``: the first failed member's :class:`RelaxationError`).

    A batch costs about as much per step as its slowest member takes steps: it pays when
    members converge in similar step counts and one member alone does not fill the
    machine (an accelerator, or small systems).

    Args:
      systems: one start structure for every member, or K of them with one layout
        (atom count, dimension, boundary conditions, species); :class:`System` or
        ``ase.Atoms``.
      potential: a :class:`~mdsens.md.Potential` or an ``EnergyModel`` built for the
        layout (reuses compiled code across calls).
      params: K parameter pytrees of one structure and shapes (e.g. swept values of the
        potential's ``params``).
      options, on_failure, **settings: as for :func:`relax`.
      nbrs: a start neighbour list for the model, given to every member (default: each
        member's own, allocated at its start).
    Returns:
      K :class:`Relaxation`\ s, in the order of ``params``.
    Raises:
      ValueError: invalid settings, members of different layouts or parameter shapes.
      RelaxationError: with ``on_failure="raise"`` when a member did not converge.
    """
    options = RelaxOptions.of(options, **settings)
    check_policy(on_failure)
    if options.processes > 1:
        raise ValueError("relax_batch runs in this process: use processes=1 (or a "
                         "ProcessPool per member)")
    params = list(params)
    n_members = len(params)
    if n_members == 0:
        raise ValueError("relax_batch: no parameter sets")
    if not isinstance(systems, (list, tuple)):
        systems = [systems] * n_members
    systems = [_as_system(s, "relax_batch") for s in systems]
    if len(systems) != n_members:
        raise ValueError(f"relax_batch: {len(systems)} systems for {n_members} parameter sets")
    first = systems[0]
    for s in systems:
        if (s.n_atoms != first.n_atoms or s.dim != first.dim
                or tuple(np.asarray(s.pbc)) != tuple(np.asarray(first.pbc))
                or not np.array_equal(np.asarray(s.species), np.asarray(first.species))):
            raise ValueError("relax_batch: the systems differ in layout (atoms, dimension, "
                             "boundary conditions or species)")
    if options.relax_cell and not first.is_periodic:
        raise ValueError("relax_cell=True needs a periodic system")
    model = _driver.resolve_model(first, potential, options)
    tree0 = jax.tree.structure(params[0])
    shapes0 = [np.shape(x) for x in jax.tree.leaves(params[0])]
    for p in params:
        if (jax.tree.structure(p) != tree0
                or [np.shape(x) for x in jax.tree.leaves(p)] != shapes0):
            raise ValueError("relax_batch: the parameter sets differ in structure or shapes")
        model.check_params(p)
    results = _driver.drive(model, systems, params, options, nbrs=nbrs)
    return [apply_policy(r, on_failure) for r in results]
