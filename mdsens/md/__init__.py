"""Molecular mechanics on jax-md: systems, potentials, energy models.

``System`` (structure pytree), ``potentials`` (registry: ``potentials.get("lj", ...)``),
``build(system, potential)`` -> ``EnergyModel`` (energy / neighbour lists / replication).
"""

from . import potentials as potentials
from .minimize import Relaxation as Relaxation
from .minimize import RelaxationError as RelaxationError
from .minimize import relax as relax
from .minimize import relax_batch as relax_batch
from .model import AUTO_NEIGHBOR_THRESHOLD as AUTO_NEIGHBOR_THRESHOLD
from .model import EnergyModel as EnergyModel
from .model import Neighbors as Neighbors
from .model import build as build
from .options import RelaxOptions as RelaxOptions
from .potentials import Potential as Potential
from .potentials import custom as custom
from .potentials import lennard_jones as lennard_jones
from .potentials import morse as morse
from .potentials import soft_sphere as soft_sphere
from .sensitivity import Sensitivity as Sensitivity
from .sensitivity import SensitivityError as SensitivityError
from .sensitivity import sensitivity as sensitivity
from .system import System as System
