"""Input and output: structure files (through ASE) and result files (HDF5, H5MD 1.1).

``read(path)`` -> ``ase.Atoms``; ``write_result(path, ...)`` / ``read_result(path)`` for
sensitivity and relaxation results. Errors about user files are :class:`InputError`
(a ``ValueError`` with a one-line message).
"""

from .errors import InputError as InputError
from .hdf5 import StoredResult as StoredResult
from .hdf5 import read_result as read_result
from .hdf5 import write_result as write_result
from .structures import read as read
from .structures import write as write

__all__ = ["InputError", "StoredResult", "read", "read_result", "write", "write_result"]
