"""Traced stage programs kept on disk between processes, so that a later command skips
Python tracing and lowering (the persistent compilation cache of :mod:`mdsens.compile_cache`
skips only XLA's compilation).

A stage is a jitted function (:func:`stage`). With a store directory set (:func:`enable`,
off by default: the command line turns it on), its first call for a given program exports
the traced program (``jax.export``: StableHLO with the pytree structure of its results) to
``<directory>/<key>.stage``; a later process with the same key deserialises it and runs
that instead of tracing ``fn`` again. Both paths compile the same StableHLO, so results are
bitwise the same.

The key is a SHA-256 digest of everything the traced program depends on:

* the source of every module of mdsens, the versions of jax, jaxlib, jax-md and numpy, every
  value of ``jax.config``;
* the stage function, its static arguments and the pytree structure of its other
  arguments, including the metadata of every node, walked by :func:`fingerprint`;
* the shape, dtype and weak type of every array argument.

:func:`fingerprint` accepts plain values (numbers, strings, arrays by content, tuples,
dicts, dataclasses, enums), classes and functions of mdsens, jax, jax-md and numpy (a
function by its code, defaults and closure contents), and an ``EnergyModel`` by its
:func:`mdsens.md._models.program_key`. Anything else (a user's function, an object of
another kind) raises :class:`NotPersistable` and the stage runs as a plain ``jax.jit`` —
never a program traced for other code or settings.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import os
import pickle
import types
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import jax
import numpy as np

__all__ = ["NotPersistable", "disable", "enable", "fingerprint", "stage"]

_FORMAT = b"mdsens-stage-1"
_TRUSTED = ("mdsens", "jax", "jaxlib", "jax_md", "numpy", "builtins", "functools")
_directory: Path | None = None


class NotPersistable(TypeError):
    """A stage argument whose identity cannot be written down (e.g. a user's function)."""


def enable(directory: str | Path) -> Path | None:
    """Keep stage programs in ``directory`` (process-wide; for applications, like
    :func:`mdsens.compile_cache.enable`). Returns the directory, or None when it cannot be
    created or ``jax.export`` cannot serialise (then nothing changes)."""
    global _directory
    try:
        import flatbuffers  # noqa: F401  (jax.export serialises with it)

        path = Path(directory).expanduser()
        path.mkdir(parents=True, exist_ok=True)
    except (ImportError, OSError):
        return None
    _directory = path
    return path


def disable() -> None:
    """Stop using the store (stages run as plain ``jax.jit``)."""
    global _directory
    _directory = None


# ----------------------------------------------------------------------------- the key


@functools.lru_cache(maxsize=1)
def _environment() -> bytes:
    """Digest of the mdsens source and the versions of the libraries that trace."""
    h = hashlib.sha256(_FORMAT)
    root = Path(__file__).resolve().parents[1]
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    for dist in ("jax", "jaxlib", "jax-md", "numpy"):
        try:
            h.update(f"{dist}={metadata.version(dist)}".encode())
        except metadata.PackageNotFoundError:
            h.update(f"{dist}=none".encode())
    return h.digest()


def _trusted(module: str | None) -> bool:
    return module is not None and module.split(".", 1)[0] in _TRUSTED


def fingerprint(obj: Any, h: Any, _seen: frozenset = frozenset()) -> None:
    """Feed a canonical description of ``obj`` to the hash ``h`` (module docstring).

    Raises:
      NotPersistable: ``obj`` holds something without a canonical description.
    """
    if id(obj) in _seen:
        raise NotPersistable("a cycle")
    seen = _seen | {id(obj)}

    def tag(*parts: Any) -> None:
        h.update(repr(parts).encode())

    if obj is None or isinstance(obj, (bool, int, float, complex, str, bytes)):
        tag(type(obj).__name__, obj)
    elif isinstance(obj, enum.Enum):
        tag("enum", type(obj).__module__, type(obj).__qualname__, obj.value)
    elif isinstance(obj, (np.ndarray, np.generic, jax.Array)):
        a = np.asarray(obj)
        tag("array", a.dtype.str, a.shape)
        h.update(np.ascontiguousarray(a).tobytes())
    elif isinstance(obj, (tuple, list)):
        tag(type(obj).__name__, len(obj))
        if hasattr(obj, "_fields"):  # a named tuple
            fingerprint(type(obj), h, seen)
        for x in obj:
            fingerprint(x, h, seen)
    elif isinstance(obj, dict):
        tag("dict", len(obj))
        for k in sorted(obj, key=repr):
            fingerprint(k, h, seen)
            fingerprint(obj[k], h, seen)
    elif isinstance(obj, type):
        if not _trusted(obj.__module__):
            raise NotPersistable(f"class {obj.__qualname__} of {obj.__module__}")
        tag("type", obj.__module__, obj.__qualname__)
    elif isinstance(obj, functools.partial):
        tag("partial")
        fingerprint(obj.func, h, seen)
        fingerprint(obj.args, h, seen)
        fingerprint(obj.keywords, h, seen)
    elif isinstance(obj, types.FunctionType):
        _function(obj, h, seen)
    elif isinstance(obj, types.MethodType):
        tag("method")
        fingerprint(obj.__func__, h, seen)
        fingerprint(obj.__self__, h, seen)
    elif isinstance(obj, jax.tree_util.PyTreeDef):
        tag("treedef")
        _treedef(obj, h, seen)
    elif _is_energy_model(obj):
        from ._models import program_key

        key = program_key(obj)
        if key is None or obj.mesh is not None:
            raise NotPersistable("an EnergyModel without a comparable program key")
        tag("EnergyModel")
        fingerprint(key, h, seen)
    elif dataclasses.is_dataclass(obj):
        fingerprint(type(obj), h, seen)
        for f in dataclasses.fields(obj):
            tag("field", f.name)
            fingerprint(getattr(obj, f.name), h, seen)
    else:
        raise NotPersistable(f"an object of type {type(obj).__qualname__}")


def _function(fn: types.FunctionType, h: Any, seen: frozenset) -> None:
    if not _trusted(fn.__module__):
        raise NotPersistable(f"function {fn.__qualname__} of {fn.__module__}")
    code = fn.__code__
    h.update(repr(("function", fn.__module__, fn.__qualname__, code.co_firstlineno)).encode())
    h.update(code.co_code)
    fingerprint(_constants(code), h, seen)
    fingerprint(fn.__defaults__, h, seen)
    fingerprint(fn.__kwdefaults__, h, seen)
    cells = fn.__closure__ or ()
    try:
        contents = tuple(c.cell_contents for c in cells)
    except ValueError:  # an empty cell
        raise NotPersistable(f"function {fn.__qualname__} with an unset closure") from None
    fingerprint(contents, h, seen)


def _constants(code: types.CodeType) -> tuple:
    return tuple(_constants(c) if isinstance(c, types.CodeType) else c
                 for c in code.co_consts)


def _is_energy_model(obj: Any) -> bool:
    from .model import EnergyModel

    return isinstance(obj, EnergyModel)


def _treedef(treedef: Any, h: Any, seen: frozenset = frozenset()) -> None:
    data = treedef.node_data()
    if data is None:  # a leaf
        h.update(b"*")
        return
    node_type, aux = data
    fingerprint(node_type, h, seen)
    fingerprint(aux, h, seen)
    children = treedef.children()
    h.update(repr(("children", len(children))).encode())
    for child in children:
        _treedef(child, h, seen)


def _key(fn: Callable, static: tuple, treedef: Any, leaves: Sequence[Any]) -> str:
    h = hashlib.sha256(_environment())
    fingerprint(sorted((k, repr(v)) for k, v in jax.config.values.items()), h)
    fingerprint(fn, h)
    fingerprint(static, h)
    _treedef(treedef, h)
    for x in leaves:
        aval = jax.typeof(x) if isinstance(x, jax.Array) else None
        if aval is None:
            raise NotPersistable(f"a non-array leaf of type {type(x).__qualname__}")
        h.update(repr((aval.shape, str(aval.dtype), aval.weak_type)).encode())
    return h.hexdigest()


# ----------------------------------------------------------------------------- stages


def stage(fn: Callable, static_argnums: Sequence[int] = ()) -> Callable:
    """``jax.jit(fn, static_argnums=...)`` whose traced programs are kept in the store
    (module docstring) when one is set. Array arguments must be ``jax.Array``s (others are
    passed to the plain jit). ``.jitted`` is the plain jitted function."""
    static_argnums = tuple(static_argnums)
    jitted = jax.jit(fn, static_argnums=static_argnums)
    loaded: dict[Any, tuple[Callable, Any]] = {}

    @functools.wraps(fn)
    def call(*args: Any) -> Any:
        if _directory is None:
            return jitted(*args)
        static = tuple(args[i] for i in static_argnums)
        dynamic = tuple(a for i, a in enumerate(args) if i not in static_argnums)
        leaves, treedef = jax.tree.flatten(dynamic)
        if any(isinstance(x, jax.core.Tracer) for x in leaves):  # inside a trace (a
            return jitted(*args)  # caller's jit or grad): the plain, differentiable path
        try:
            memo = (static, treedef, tuple(jax.typeof(x) for x in leaves))
            entry = loaded.get(memo)
        except TypeError:  # an unhashable static argument or a non-array leaf
            return jitted(*args)
        if entry is None:
            try:
                key = _key(fn, static, treedef, leaves)
            except NotPersistable:
                return jitted(*args)
            entry = _load(_directory / f"{key}.stage")
            if entry is None:
                entry = _export(fn, static_argnums, args, treedef, leaves,
                                _directory / f"{key}.stage")
            loaded[memo] = entry
        run, out_tree = entry
        return jax.tree.unflatten(out_tree, run(*leaves))

    def clear_cache() -> None:
        """Forget this stage's compiled and loaded programs (:func:`mdsens.md.compiled.free`)."""
        jitted.clear_cache()
        loaded.clear()

    call.jitted = jitted  # type: ignore[attr-defined]
    call.lower = jitted.lower  # type: ignore[attr-defined]
    call.clear_cache = clear_cache  # type: ignore[attr-defined]
    return call


def _load(path: Path) -> tuple[Callable, Any] | None:
    try:
        blob = path.read_bytes()
    except OSError:
        return None
    try:
        serialized, out_tree = pickle.loads(blob)
        exported = jax.export.deserialize(bytearray(serialized))
    except Exception:  # a damaged or foreign entry: traced again and rewritten
        return None
    return jax.jit(exported.call), out_tree


def _export(fn: Callable, static_argnums: tuple, args: tuple, treedef: Any,
            leaves: list, path: Path) -> tuple[Callable, Any]:
    out_trees = []

    def flat(*flat_leaves: Any) -> list:
        dynamic = iter(jax.tree.unflatten(treedef, flat_leaves))
        full = [args[i] if i in static_argnums else next(dynamic) for i in range(len(args))]
        out = fn(*full)
        flat_out, out_tree = jax.tree.flatten(out)
        out_trees.append(out_tree)
        return flat_out

    exported = jax.export.export(jax.jit(flat))(*leaves)
    blob = pickle.dumps((exported.serialize(), out_trees[-1]))
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    try:
        tmp.write_bytes(blob)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
    return jax.jit(exported.call), out_trees[-1]
