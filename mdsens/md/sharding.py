r"""Spreading one energy-and-force evaluation over several devices (CPU cores or
accelerators): the rows of the neighbour list are split in equal blocks, one per device.

Each device receives every position (replicated: a few hundred kB per step) and its own
block of centre atoms; with a full neighbour list, the energy of atom i's row and
:math:`\partial E/\partial R_i` come from row i alone (the scatter-free rule of
:mod:`mdsens.md.potentials.pair`), so a device computes its atoms' forces with no
communication, and the blocks are gathered once per evaluation (an all-gather of
:math:`N \times d` numbers, plus a sum of the energy and virial). Everything else in a
relaxation step (the minimiser's update, the neighbour-list check) is O(N) and runs on
every device alike.

Devices: JAX sees every accelerator. ``devices="auto"`` (the default of ``RelaxOptions`` and
``build``) spreads a system with at least :data:`MIN_ATOMS_PER_DEVICE` atoms per device over
all devices of an accelerator backend, and never over CPU devices: on CPU (jaxlib 0.10),
the devices a process gets from ``XLA_FLAGS=--xla_force_host_platform_device_count=K`` run
their programs one after another, not side by side (measured: two halves of an LJ force
evaluation, N = 32000, on two CPU devices 108 ms, the whole on one device 101 ms). On CPU,
a process's cores are used by XLA itself, which splits each large loop over its thread
pool (``mdsens.md.potentials.pair.row_chunk`` sizes the blocks for that). An integer
``devices`` still splits over CPU devices (tests check the numbers are the same).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Any

__all__ = ["AXIS", "MIN_ATOMS_PER_DEVICE", "mesh_for", "usable_cores"]

# (this module imports jax only inside mesh_for: usable_cores is read by code that must not
# import jax)

AXIS = "rows"
"""Name of the mesh axis that the neighbour-list rows are split along."""

MIN_ATOMS_PER_DEVICE = 2048
"""Below this many (internal) atoms per device a device's block is too small to pay for the
per-evaluation gather; such systems run on one device."""


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@functools.lru_cache(maxsize=8)
def _mesh(devices: tuple[Any, ...]) -> Any:
    import numpy as np
    from jax.sharding import Mesh

    return Mesh(np.array(devices, dtype=object), (AXIS,))


def mesh_for(n_atoms: int, devices: str | int | Sequence[Any] | None = "auto") -> Any:
    """The mesh an energy model of ``n_atoms`` (internal) atoms evaluates on, or None for
    one device.

    Args:
      devices: ``"auto"`` (every device of an accelerator backend, when each gets at
        least :data:`MIN_ATOMS_PER_DEVICE` atoms; one device on CPU), an int (the first
        so many devices, whatever the size), a sequence of devices, or None / 1 (one
        device).
    """
    import jax

    if devices is None:
        return None
    if devices == "auto":
        if jax.default_backend() == "cpu":
            return None
        available = jax.devices()
        count = min(len(available), n_atoms // MIN_ATOMS_PER_DEVICE)
        chosen = tuple(available[:count])
    elif isinstance(devices, int):
        available = jax.devices()
        if not 1 <= devices <= len(available):
            raise ValueError(
                f"devices={devices}: this process has {len(available)} JAX device(s) (on "
                f"CPU: XLA_FLAGS=--xla_force_host_platform_device_count=K before importing jax)")
        chosen = tuple(available[:devices])
    else:
        chosen = tuple(devices)
    return _mesh(chosen) if len(chosen) > 1 else None
