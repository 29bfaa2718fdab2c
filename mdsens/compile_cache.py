"""JAX's persistent compilation cache for mdsens runs: compiled programs kept on disk, so the
second run of a command (or a study's worker) loads them instead of compiling again.

The command line enables it by default; a Python program opts in with :func:`enable` (it
changes JAX's process-wide configuration, so the library never calls it on import). Where the
cache lives:

1. ``$MDSENS_CACHE_DIR`` when set, where the values ``0``, ``off``, ``no``, ``false`` and the
   empty string turn the cache off;
2. else ``$XDG_CACHE_HOME/mdsens/jax``, or ``~/.cache/mdsens/jax``;

and inside it, one subdirectory per kind of processor (a digest of the CPU's instruction-set
flags). JAX keys entries on the program, its shapes and the JAX/XLA version, but not on the
CPU's instruction set: a home directory shared by the nodes of a cluster would otherwise hand
code compiled for one node's vector units to another. Deleting the directory is always safe.

XLA:CPU logs two ``cpu_aot_loader`` error lines for every entry it loads (it mistakes two
tuning preferences recorded at compile time for missing CPU features; jax-ml/jax#38445); the
per-processor directories make that check moot, and the command line hides those lines.
"""

from __future__ import annotations

import hashlib
import os
import platform
from pathlib import Path

__all__ = ["ENV_VAR", "default_directory", "enable", "processor_key"]

ENV_VAR = "MDSENS_CACHE_DIR"
_OFF = {"", "0", "off", "no", "false", "none"}


def processor_key() -> str:
    """A short digest of this processor's architecture and instruction-set flags."""
    flags = ""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    flags = " ".join(sorted(line.split(":", 1)[1].split()))
                    break
    except OSError:
        flags = platform.processor()
    text = f"{platform.system()} {platform.machine()} {flags}"
    return f"{platform.machine()}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def default_directory() -> Path | None:
    """The cache directory chosen by the environment, per processor kind (module
    docstring); None when off."""
    value = os.environ.get(ENV_VAR)
    if value is not None:
        if value.strip().lower() in _OFF:
            return None
        base = Path(value).expanduser()
    else:
        home = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        base = Path(home) / "mdsens" / "jax"
    return base / processor_key()


def enable(directory: str | Path | None = None) -> Path | None:
    """Point JAX's persistent compilation cache at ``directory`` (default:
    :func:`default_directory`) and cache every compiled program, however quick its
    compilation (mdsens compiles many small programs). A cache the program already
    configured (``JAX_COMPILATION_CACHE_DIR``, ``jax.config``) is kept as it is, unless
    ``directory`` is given. Returns the directory in use, or None when the cache is off or
    the directory cannot be created (then nothing changes)."""
    import jax

    if directory is None:
        configured = jax.config.jax_compilation_cache_dir
        if configured:
            return Path(configured)
    path = default_directory() if directory is None else Path(directory).expanduser()
    if path is None:
        return None
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path
