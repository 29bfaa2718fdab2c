"""Parameter studies: sweeps over potential parameters × structures, each point a relaxation
plus exact sensitivities, streamed into one resumable HDF5 file (see ``docs/studies.md``).

- :func:`scan`: run (or resume) a study -> :class:`StudyResult`; in-process, or one Dask
  task per point (``workers=``, ``scheduler=``, ``scheduler_file=``, ``cluster=`` a
  :class:`ClusterSpec`).
- :func:`read`: read a study file back; :func:`is_study`: is a file a study file.
- :func:`parse_sweep`: ``"sigma=3.3:3.5:5"`` -> ``("sigma", [3.3, ..., 3.5])``.
- :func:`grid`: the cartesian product of a sweep.
- One writer per study file: :class:`WriterLock`, :func:`lock_owner`, :class:`StudyInUse`.
"""

from __future__ import annotations

from ._dask import ClusterSpec as ClusterSpec
from ._file import LockOwner as LockOwner
from ._file import StudyInUse as StudyInUse
from ._file import StudyResult as StudyResult
from ._file import WriterLock as WriterLock
from ._file import is_study as is_study
from ._file import lock_owner as lock_owner
from ._file import read as read
from ._scan import scan as scan
from ._spec import grid as grid
from ._spec import parse_sweep as parse_sweep
from ._spec import validate_sweep as validate_sweep

__all__ = ["ClusterSpec", "LockOwner", "StudyInUse", "StudyResult", "WriterLock", "grid",
           "is_study", "lock_owner", "parse_sweep", "read", "scan", "validate_sweep"]
