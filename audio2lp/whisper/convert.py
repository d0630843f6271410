"""Convert a Whisper model in CTranslate2 format (:mod:`audio2lp.whisper.ct2`) into an openai-whisper checkpoint.

The Whisper layout differs from openai-whisper's in two ways that matter: attention
projections are fused (self-attention ``linear_0`` is q|k|v, cross-attention ``linear_1`` is
k|v) and the key projection has a bias slot that openai-whisper lacks. A key bias adds the
same number to every attention logit of a query, which softmax ignores, so it is dropped
exactly. The output projection is tied to the token embedding in both formats.

Public entry point: :func:`convert_ct2_to_whisper` (files or folder in, checkpoint dict out, optionally
written to disk, atomically).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from audio2lp.media.atomic import atomic_output
from lp_renderer.errors import WeightsError

from .ct2 import CT2File, CT2Model, ct2_model_from_path, read_ct2_model_bin

__all__ = ["CONVERTER_VERSION", "convert_ct2_to_whisper", "ct2_to_whisper_state_dict", "save_checkpoint"]

logger = logging.getLogger(__name__)

CONVERTER_VERSION = 1
"""Bumped whenever the converter's output changes (invalidates cached conversions)."""

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
    with atomic_output(dst, make_folder=True) as tmp:
        torch.save(checkpoint, tmp)
    return dst
