"""Load pickles of plain data (LivePortrait ``.pkl`` motion templates, ``lip_array.pkl``) without running code.

``pickle.load`` executes whatever callables a pickle names, so a crafted ``.pkl`` can run any
command. :func:`load_restricted_pickle` uses an unpickler whose ``find_class`` only resolves
the few globals that plain containers and numpy arrays need, each mapped to a fixed object:

- ``numpy.core.multiarray._reconstruct`` / ``numpy._core.multiarray._reconstruct`` and
  ``.scalar`` (arrays and numpy scalars, protocols 0-4, numpy 1.x and 2.x module paths),
- ``numpy.core.numeric._frombuffer`` / ``numpy._core.numeric._frombuffer`` (arrays, protocol 5),
- ``numpy.ndarray`` and ``numpy.dtype``,
- ``_codecs.encode`` restricted to latin-1 (how protocol 2 stores ``bytes``), and the builtins
  ``set``, ``frozenset`` and ``complex`` (stored as calls before protocol 4).

Anything else (``os.system``, ``builtins.eval``, ``subprocess.Popen``, torch classes, any class
with a custom ``__reduce__``) raises :class:`lp_renderer.errors.InputError` naming the refused
global, before it is called. Persistent ids and out-of-band buffers are refused too. The loaded
object is then checked recursively: only dict, list, tuple, set, frozenset, str, bytes, int,
float, complex, bool, None, numpy arrays (not of dtype object) and numpy scalars may appear.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError

__all__ = ["load_restricted_pickle", "loads_restricted_pickle", "DEFAULT_MAX_BYTES", "MAX_DEPTH"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 256 * 1024 * 1024
"""Largest pickle file :func:`load_restricted_pickle` reads by default (256 MiB)."""

MAX_DEPTH = 64
"""Deepest nesting of containers accepted in a loaded object."""


def _numpy_core_module(name: str) -> Any:
    """``numpy._core.<name>`` on numpy 2, ``numpy.core.<name>`` on numpy 1 (without the numpy 2
    deprecation shim)."""
    import importlib

    try:
        return importlib.import_module(f"numpy._core.{name}")
    except ImportError:  # numpy < 2
        return importlib.import_module(f"numpy.core.{name}")


def _latin1_encode(obj: object, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as protocol 2 uses it for bytes: a str encoded as latin-1, nothing else."""
    if not isinstance(obj, str) or encoding.lower().replace("_", "-") not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode is only allowed to encode text as latin-1")
    return obj.encode("latin-1")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    multiarray = _numpy_core_module("multiarray")
    numeric = _numpy_core_module("numeric")
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("builtins", "complex"): complex,
    }
    for prefix in ("numpy.core", "numpy._core"):
        allowed[(f"{prefix}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{prefix}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{prefix}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


def _python3_name(module: str, name: str) -> tuple[str, str]:
    """Map Python 2 names (``__builtin__.set``, which Python 3 writes with protocols 0-2) to
    Python 3 ones, as ``pickle.Unpickler.find_class`` does with ``fix_imports``."""
    try:
        import _compat_pickle
    except ImportError:  # pragma: no cover - always present in CPython
        return module, name
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals in :func:`_allowed_globals`."""

    def __init__(self, file: io.BufferedIOBase, source: str):
        super().__init__(file)  # fix_imports maps Python 2 names (__builtin__.set) as usual
        self._source = source
        self._allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Callable[..., Any]:
        module, name = _python3_name(module, name)
        obj = self._allowed.get((module, name))
        if obj is None:
            raise InputError(
                f"{self._source} refers to {module}.{name}, which a plain-data pickle never needs, so "
                "it was refused without loading anything; use a plain-data file (as LivePortrait writes), "
                "and do not load this file with plain pickle."
            )
        return obj

    def persistent_load(self, pid: object) -> Any:
        raise InputError(
            f"{self._source} uses pickle persistent ids (as torch checkpoints do) and is not a "
            "plain-data pickle; give a motion template .pkl, or load weights with the weights loader."
        )


class _Budget:
    """Bytes of array data a pickle may yield: at most its own size, since legitimate array data
    is stored in the pickle verbatim (an array allocated by a crafted call is refused)."""

    def __init__(self, limit: int):
        self.left = limit


def _check_value(obj: object, source: str, depth: int, seen: set[int], budget: _Budget) -> None:
    if obj is None or isinstance(obj, (bool, int, float, complex, str, bytes)):
        return
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise InputError(f"{source} holds a numpy array of Python objects, which a motion "
                             "template never does; re-create the template (LivePortrait's templates are plain data).")
        if id(obj) not in seen:
            seen.add(id(obj))
            budget.left -= obj.nbytes
            if budget.left < 0:
                raise InputError(f"{source} yields more array data than it stores, which only a crafted "
                                 "pickle does; use a plain-data template (as LivePortrait writes).")
        return
    if isinstance(obj, np.generic):
        if obj.dtype.hasobject:  # pragma: no cover - np.object_ scalars unpickle as their object
            raise InputError(f"{source} holds a numpy object scalar; re-create the template.")
        return
    if depth > MAX_DEPTH:
        raise InputError(f"{source} nests containers more than {MAX_DEPTH} levels deep, which a "
                         "motion template never does; re-create the template (LivePortrait's are plain data).")
    if type(obj) in (dict, list, tuple, set, frozenset):
        if id(obj) in seen:  # shared or self-referencing containers: check once
            return
        seen.add(id(obj))
        items = obj.items() if isinstance(obj, dict) else obj
        for item in items:  # type: ignore[union-attr]
            if isinstance(obj, dict):
                _check_value(item[0], source, depth + 1, seen, budget)
                _check_value(item[1], source, depth + 1, seen, budget)
            else:
                _check_value(item, source, depth + 1, seen, budget)
        return
    raise InputError(f"{source} contains a {type(obj).__module__}.{type(obj).__qualname__} object, "
                     "which is not plain data; use a plain-data template (as LivePortrait writes).")


def loads_restricted_pickle(data: bytes, *, source: str = "The pickle data") -> object:
    """Like :func:`load_restricted_pickle`, from bytes already in memory."""
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data), source).load()
    except InputError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, KeyError,
            IndexError, OverflowError, MemoryError, UnicodeDecodeError) as exc:
        raise InputError(f"{source} is not a valid pickle of plain data ({type(exc).__name__}: "
                         f"{str(exc)[:200]}); check that the file is complete and undamaged.") from exc
    _check_value(obj, source, 0, set(), _Budget(len(data)))
    return obj


def load_restricted_pickle(path: str | os.PathLike, *, max_bytes: int = DEFAULT_MAX_BYTES) -> object:
    """Load a pickle of plain data (e.g. a LivePortrait motion template) without running code.

    Works for pickles written with protocols 0-5 by numpy 1.x (``numpy.core.*`` paths) and
    numpy 2.x (``numpy._core.*``).

    Args:
        path: the ``.pkl`` file.
        max_bytes: refuse files larger than this (default 256 MiB).

    Returns:
        The unpickled object: dicts, lists, tuples, sets, str, bytes, numbers, None, numpy
        arrays and numpy scalars only.

    Raises:
        InputError: the file is missing, too large, not a pickle, refers to any global other than
            the allowed numpy/container ones (the message names it), or holds other objects.
    """
    p = Path(path)
    source = os.fspath(path)
    if not p.is_file():
        if p.exists():
            raise InputError(f"{source} is a folder, not a .pkl file; give the path of a .pkl file.")
        raise InputError(f"The pickle file {source} does not exist; check the path.")
    size = p.stat().st_size
    if size > max_bytes:
        raise InputError(f"{source} is {size / 2**20:.1f} MiB, more than the {max_bytes / 2**20:.0f} MiB "
                         "allowed for a motion template; check that this is the right file.")
    if size == 0:
        raise InputError(f"The pickle file {source} is empty; give a complete .pkl file.")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise InputError(f"Cannot read {source} ({exc.strerror or exc}); check its permissions.") from exc
    obj = loads_restricted_pickle(data, source=source)
    logger.debug("loaded %s (%d bytes) with the restricted unpickler", source, size)
    return obj
