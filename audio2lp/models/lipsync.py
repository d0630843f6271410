"""Speech to mouth opening: a small temporal model from Whisper features to LivePortrait's lip-open ratio.

LivePortrait's lip retargeting network needs one number per frame, the lip-open ratio (inner-lip gap at the
mouth's middle / mouth-corner distance, LivePortrait's 203-point definition; :func:`lp_renderer.faces.lip_open_ratio`
measures it on the same scale). :class:`LipSync` predicts it at 25 fps from Whisper encoder features
(50 Hz, two tokens per frame), together with the probability that the mouth should be closed (pauses,
silence). The shipped model (``audio2lp/assets/lipsync.safetensors``, see ``LIPSYNC_MODEL_CARD.md``) was
trained on real talking videos by ``audio2lp-train lipsync`` (:mod:`training.lipsync.train`).

Typical use::

    model = load_lipsync_model()                              # the shipped weights
    feats = WhisperEncoder(model.config.whisper_model).encode(audio_16k, layers=model.config.whisper_layers)
    pred = model.predict(feats, n_frames, audio_16k=audio_16k)  # closes the mouth in silences > 200 ms
    pred.lip_open                                             # (T,) float32 lip ratios for the lip retargeting

Scale: a closed mouth is about ``config.closed_level`` (~0.01), speech moves between ~0.05 and ~0.3,
wide-open vowels reach ~0.4.

The network (defaults = the shipped model): the Whisper features are normalised per dimension (training
statistics, stored with the weights) and the two 50 Hz tokens of each frame averaged. A linear 1-D
convolution over ``linear_context`` frames on each side (+-80 ms) reads two signals out of them: the lip
ratio and a "mouth closed" score; it is fitted in closed form (ridge regression) on the training data. Small
residual blocks of dilated 1-D convolutions (non-causal: each frame sees ``receptive_field`` frames on both
sides) then read those two signals and give a correction of the lip ratio (in units of ``lip_scale``) and the
logit of "mouth closed". The predicted ratio is used as it is (blending the closed probability into it cost
correlation in cross-validation); the mouth is closed only in silences longer than 200 ms, found from the audio's
energy (:meth:`LipSync.predict` with ``audio_16k``, as ``audio2lp speak`` does).
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from audio2lp.models.threads import torch_threads
from lp_renderer.errors import InputError, WeightsError

log = logging.getLogger(__name__)

__all__ = [
    "FORMAT",
    "FPS",
    "TOKENS_PER_FRAME",
    "DEFAULT_ASSET",
    "LipSyncConfig",
    "LipPrediction",
    "LipSync",
    "frames_for_samples",
    "tokens_to_frames",
    "frame_rms_db",
    "silence_mask",
    "save_lipsync_model",
    "load_lipsync_model",
    "read_lipsync_metadata",
    "default_lipsync_path",
]

FORMAT = "audio2lp-lipsync-v1"
FPS = 25.0
TOKENS_PER_FRAME = 2  # Whisper tokens (50 Hz) per 25 fps frame
DEFAULT_ASSET = "lipsync.safetensors"


@dataclass(frozen=True)
class LipSyncConfig:
    """Architecture and output scale of a :class:`LipSync` model (stored in the weights' metadata).

    ``whisper_layers`` is the ``layers`` argument of :meth:`audio2lp.whisper.features.WhisperEncoder.encode`
    the features must be computed with (an int, a list of ints, or ``"last"``/``"middle"``/``"mean"``).
    ``lip_scale``: the network's lip output is multiplied by this (the typical 95th percentile of a
    speaker's lip ratio in the training data). ``closed_level``: the lip ratio of a closed mouth.
    """

    whisper_model: str = "tiny.en"
    whisper_layers: Any = 2
    in_dim: int = 384
    channels: int = 16
    kernel: int = 5
    dilations: tuple[int, ...] = (1, 2, 4, 1)
    dropout: float = 0.2
    input_dropout: float = 0.1
    linear_context: int = 2  # the linear read-out sees +-this many frames; see the module doc
    lip_scale: float = 0.25
    closed_level: float = 0.01
    fps: float = FPS

    def __post_init__(self) -> None:
        object.__setattr__(self, "dilations", tuple(int(d) for d in self.dilations))
        if isinstance(self.whisper_layers, (list, tuple)):
            object.__setattr__(self, "whisper_layers", [int(i) for i in self.whisper_layers])
        if self.linear_context < 0:
            raise ValueError(f"linear_context must be >= 0, got {self.linear_context}")
        if self.kernel % 2 != 1:
            raise ValueError(f"kernel must be odd, got {self.kernel}")

    @property
    def receptive_field(self) -> int:
        """Frames of context on each side of a frame (look-back = look-ahead)."""
        return sum((self.kernel - 1) // 2 * d for d in self.dilations) + self.linear_context

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["dilations"] = list(self.dilations)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> LipSyncConfig:
        """Inverse of :meth:`to_dict`. Files written during the design search carry its switches; they load when
        the switches describe this design (the shipped model's: stacked, one network, no blending)."""
        d = dict(d)
        for key, ok in _DESIGN_SEARCH_KEYS.items():
            if key in d and not ok(d.pop(key)):
                raise ValueError(f"this lip-sync model was made with the design-search option {key}, which this "
                                 f"version no longer supports")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown config keys {sorted(unknown)}")
        d = dict(d)
        if "dilations" in d:
            d["dilations"] = tuple(d["dilations"])
        return cls(**d)


#: switches of the design search (dropped) and the values that mean the design kept: the convolutions read the
#: linear read-out (``stacked``; the token pooling ``pool`` then plays no part), one network, no blending
_DESIGN_SEARCH_KEYS = {"stacked": lambda v: v is True, "members": lambda v: v == 1, "blend": lambda v: v is False,
                       "pool": lambda v: v in ("concat", "mean")}


@dataclass(frozen=True)
class LipPrediction:
    """Per-frame mouth at ``fps`` (float32 / bool numpy arrays of shape ``(T,)``).

    - ``lip_open``: the lip-open ratio to drive LivePortrait's lip retargeting with (closed in silences).
    - ``closed``: the mouth should be closed (``closed_prob > 0.5``).
    - ``closed_prob``: probability of a closed mouth, in [0, 1].
    - ``lip_open_raw``: the regression output before the silences are closed.
    """

    lip_open: np.ndarray
    closed: np.ndarray
    closed_prob: np.ndarray
    lip_open_raw: np.ndarray
    fps: float = FPS

    @property
    def n_frames(self) -> int:
        return int(self.lip_open.shape[0])

    @property
    def speaking(self) -> np.ndarray:
        """``~closed``: frames where the mouth moves with speech (e.g. for
        :func:`audio2lp.models.idle.idle_head_motion`)."""
        return ~self.closed


def frames_for_samples(n_samples: int, sr: int = 16000, fps: float = FPS) -> int:
    """Video frames covering ``n_samples`` of audio: ``ceil(n / sr * fps)`` (at least 1)."""
    return max(1, math.ceil(int(n_samples) * fps / sr - 1e-9))


def tokens_to_frames(features: Tensor, n_frames: int) -> Tensor:
    """50 Hz tokens ``(B, T50, D)`` -> ``(B, n_frames, 2 * D)``: frame ``k`` concatenates tokens ``2k`` and
    ``2k + 1``. Missing tokens at the end repeat the last one; extra tokens are dropped."""
    if features.ndim != 3 or features.shape[1] == 0:
        raise ValueError(f"features must be (B, T50 > 0, D), got {tuple(features.shape)}")
    need = TOKENS_PER_FRAME * int(n_frames)
    t50 = features.shape[1]
    if t50 < need:
        features = torch.cat([features, features[:, -1:].expand(-1, need - t50, -1)], dim=1)
    b, _, d = features.shape
    return features[:, :need].reshape(b, int(n_frames), TOKENS_PER_FRAME * d)


def frame_rms_db(audio_16k: np.ndarray, n_frames: int, fps: float = FPS, sr: int = 16000) -> np.ndarray:
    """Loudness per video frame: RMS of the samples in ``[k / fps, (k + 1) / fps)`` in dBFS (floor -100).

    Returns float32 ``(n_frames,)``; frames past the end of the audio count as silence.
    """
    x = np.asarray(audio_16k, dtype=np.float64).reshape(-1)
    edges = np.round(np.arange(n_frames + 1) * (sr / fps)).astype(np.int64)
    edges = np.clip(edges, 0, x.size)
    csum = np.concatenate([[0.0], np.cumsum(x * x)])
    count = np.diff(edges)
    energy = (csum[edges[1:]] - csum[edges[:-1]]) / np.maximum(count, 1)
    db = 10.0 * np.log10(np.maximum(energy, 0.0) + 1e-24)
    return np.where(count > 0, np.maximum(db, -100.0), -100.0).astype(np.float32)


SILENCE_REL_DB = -30.0
"""A frame is silent when its RMS is this far below the clip's 95th percentile frame RMS ..."""
SILENCE_ABS_DB = -60.0
"""... or below this level (dBFS)."""
SILENCE_MIN_FRAMES = 6
"""Silences shorter than this many frames (200 ms and less at 25 fps) do not count."""


def silence_mask(rms_db: np.ndarray, min_frames: int = SILENCE_MIN_FRAMES) -> np.ndarray:
    """Frames in silences of at least ``min_frames`` frames (bool ``(T,)``), by energy VAD.

    A frame is silent when its RMS is more than 30 dB below the 95th percentile of the frames' RMS, or below
    -60 dBFS; runs of silent frames shorter than ``min_frames`` (> 200 ms at 25 fps) are dropped. Noisy
    recordings (music, hum) have no frame that quiet and so no silence.
    """
    db = np.asarray(rms_db, dtype=np.float64).reshape(-1)
    if db.size == 0:
        return np.zeros(0, bool)
    silent = (db < np.percentile(db, 95) + SILENCE_REL_DB) | (db < SILENCE_ABS_DB)
    out = np.zeros(db.size, bool)
    padded = np.concatenate([[False], silent, [False]]).astype(np.int8)
    d = np.diff(padded)
    for a, b in zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1)):
        if b - a >= min_frames:
            out[a:b] = True
    return out


class _ChannelNorm(nn.LayerNorm):
    """LayerNorm over the channels of each frame of a ``(B, C, T)`` tensor (frames stay independent)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class _Block(nn.Module):
    def __init__(self, channels: int, kernel: int, dilation: int, dropout: float):
        super().__init__()
        self.norm = _ChannelNorm(channels)
        self.conv = nn.Conv1d(channels, channels, kernel, dilation=dilation, padding=(kernel - 1) // 2 * dilation,
                              padding_mode="replicate")
        self.mix = nn.Conv1d(channels, channels, 1)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.drop(self.mix(F.gelu(self.conv(self.norm(x)))))


class _Net(nn.Module):
    """One ensemble member: 1x1 projection, residual dilated conv blocks, 1x1 heads (lip, closed logit)."""

    def __init__(self, in_ch: int, config: LipSyncConfig):
        super().__init__()
        c = config.channels
        self.proj = nn.Conv1d(in_ch, c, 1)
        self.blocks = nn.ModuleList(_Block(c, config.kernel, dl, config.dropout) for dl in config.dilations)
        self.norm = _ChannelNorm(c)
        self.head = nn.Conv1d(c, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.proj(x)
        for block in self.blocks:
            x = block(x)
        return self.head(F.gelu(self.norm(x)))


class LipSync(nn.Module):
    """Whisper features -> lip-open ratio and closed-mouth probability per 25 fps frame.

    ``forward(features (B, T50, D), n_frames) -> (lip (B, T), closed_logit (B, T))`` with ``lip`` in units of
    ``config.lip_scale`` (training space). Use :meth:`predict` for inference.
    """

    def __init__(self, config: LipSyncConfig | None = None):
        super().__init__()
        self.config = config = config or LipSyncConfig()
        d = config.in_dim
        self.register_buffer("feat_mean", torch.zeros(d))
        self.register_buffer("feat_std", torch.ones(d))
        self.in_drop = nn.Dropout(config.input_dropout)
        # the convolutions read the linear read-out's two signals; a list of one network keeps the names of the
        # shipped weights (members.0.*)
        self.members = nn.ModuleList([_Net(2, config)])
        k = config.linear_context
        # two linear read-outs of +-k frames: the lip ratio and a "mouth closed" score
        self.linear = nn.Conv1d(d, 2, 2 * k + 1, padding=k, padding_mode="replicate")
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def set_feature_stats(self, mean: np.ndarray | Tensor, std: np.ndarray | Tensor, min_std: float = 1e-3) -> None:
        """Set the per-dimension normalisation of the Whisper features (from the training data)."""
        self.feat_mean.copy_(torch.as_tensor(np.asarray(mean), dtype=torch.float32))
        self.feat_std.copy_(torch.as_tensor(np.asarray(std), dtype=torch.float32).clamp_min(min_std))

    def forward(self, features: Tensor, n_frames: int) -> tuple[Tensor, Tensor]:
        """features ``(B, T50, D)`` float32 -> ``(lip (B, n_frames), closed_logit (B, n_frames))``."""
        if features.shape[-1] != self.config.in_dim:
            raise ValueError(f"features have width {features.shape[-1]}, the model expects {self.config.in_dim}")
        x = (features - self.feat_mean) / self.feat_std
        x = tokens_to_frames(self.in_drop(x), n_frames)  # (B, T, 2D)
        d = self.config.in_dim
        mean_pair = 0.5 * (x[..., :d] + x[..., d:])  # (B, T, D): the two tokens of each frame averaged
        lin = self.linear(mean_pair.transpose(1, 2))  # (B, 2, T): linear lip ratio and closed score
        out = self.members[0](lin)  # (B, 2, T)
        return out[:, 0] + lin[:, 0], out[:, 1]  # the convolutions learn what the linear read-out misses

    @torch.inference_mode()
    def predict(self, features_50hz: np.ndarray | Tensor, n_frames: int | None = None, *,
                audio_16k: np.ndarray | None = None, silence: np.ndarray | None = None) -> LipPrediction:
        """Mouth per 25 fps frame from Whisper features.

        Args:
            features_50hz: ``(T50, D)`` float features from ``WhisperEncoder(config.whisper_model).encode(audio,
                layers=config.whisper_layers)``.
            n_frames: frames to predict (default ``ceil(T50 / 2)``); frame ``k`` uses tokens ``2k, 2k + 1``
                (the last token is repeated when the features are short).
            audio_16k: the audio the features come from (optional). When given, frames in silences longer
                than 200 ms (:func:`silence_mask`) are closed whatever the network says.
            silence: instead of ``audio_16k``, a ``(n_frames,)`` bool mask of the frames to close.

        Deterministic (eval mode, one CPU thread).
        """
        feats = torch.as_tensor(np.asarray(features_50hz, dtype=np.float32))
        if feats.ndim != 2 or feats.shape[0] == 0:
            raise InputError(f"Lip-sync features must have shape (T50 > 0, D), got {tuple(feats.shape)}; pass "
                             f"the output of WhisperEncoder.encode.")
        if feats.shape[1] != self.config.in_dim:
            raise InputError(f"Lip-sync features have width {feats.shape[1]} but the model needs "
                             f"{self.config.in_dim} (Whisper {self.config.whisper_model}); encode the audio with "
                             f"that model.")
        if not torch.isfinite(feats).all():
            raise InputError("Lip-sync features contain NaN or infinite values; re-encode the audio.")
        n = int(n_frames) if n_frames is not None else max(1, -(-feats.shape[0] // TOKENS_PER_FRAME))
        if n < 1:
            raise InputError(f"n_frames must be at least 1, got {n_frames}.")
        was_training = self.training
        self.eval()
        dev = self.feat_mean.device
        try:
            with torch_threads(1):
                lip, logit = self(feats.to(dev)[None], n)
        finally:
            self.train(was_training)
        c = self.config
        raw = (lip[0].clamp_min(0) * c.lip_scale).cpu().numpy().astype(np.float32)
        prob = torch.sigmoid(logit[0]).cpu().numpy().astype(np.float32)
        if audio_16k is not None and silence is None:
            silence = silence_mask(frame_rms_db(np.asarray(audio_16k, dtype=np.float32), n, c.fps))
        if silence is not None:
            silence = np.asarray(silence, dtype=bool).reshape(-1)
            if silence.shape[0] != n:
                raise InputError(f"The silence mask has {silence.shape[0]} frames, the prediction {n}; pass one "
                                 f"value per frame.")
            prob = np.where(silence, np.float32(1.0), prob).astype(np.float32)
        final = raw.copy()
        if silence is not None:
            final[silence] = c.closed_level
        return LipPrediction(final, prob > 0.5, prob, raw, c.fps)


# -- checkpoints ------------------------------------------------------------------------------------


def default_lipsync_path():
    """A context manager giving the path of the shipped weights (``audio2lp/assets/lipsync.safetensors``)."""
    return importlib.resources.as_file(importlib.resources.files("audio2lp") / "assets" / DEFAULT_ASSET)


def save_lipsync_model(path: str | os.PathLike, model: LipSync, extra: dict | None = None) -> Path:
    """Write the weights as safetensors with the config and ``extra`` (JSON-serialisable training facts) as
    JSON metadata, atomically. Returns the path."""
    from lp_renderer.weights import write_safetensors

    path = Path(path)
    meta = {"format": FORMAT, "config": json.dumps(model.config.to_dict(), sort_keys=True),
            "extra": json.dumps(extra or {}, sort_keys=True)}
    write_safetensors(path, model.state_dict(), meta)
    log.info("wrote lip-sync model %s", path)
    return path


def _read(path: Path, with_tensors: bool) -> tuple[dict, dict[str, Tensor]]:
    from lp_renderer.weights import read_safetensors

    if not path.is_file():
        raise WeightsError(f"lip-sync model {path} does not exist; check the path (the default one ships with "
                           f"audio2lp: reinstall the package if it is missing).")
    tensors, meta = read_safetensors(path, with_tensors, remedy="train or download it again")
    if meta.get("format") != FORMAT:
        raise WeightsError(f"{path} has format {meta.get('format')!r}, expected {FORMAT!r}; is it an audio2lp "
                           f"lip-sync model?")
    try:
        info = {"config": LipSyncConfig.from_dict(json.loads(meta["config"])),
                "extra": json.loads(meta.get("extra", "{}"))}
    except (KeyError, ValueError, TypeError) as e:
        raise WeightsError(f"{path}: the metadata is missing or invalid ({e}); the file was not written by "
                           f"save_lipsync_model or is damaged.") from None
    return info, tensors


def read_lipsync_metadata(path: str | os.PathLike | None = None) -> dict:
    """``{"config": LipSyncConfig, "extra": dict}`` of a saved model (default: the shipped one)."""
    if path is None:
        with default_lipsync_path() as p:
            return _read(Path(p), with_tensors=False)[0]
    return _read(Path(path), with_tensors=False)[0]


def load_lipsync_model(path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> LipSync:
    """Load a lip-sync model (default: the weights shipped in ``audio2lp/assets``), in eval mode.

    Raises:
        WeightsError: the file is missing, not a lip-sync safetensors file, or its weights do not match.
    """
    from lp_renderer.weights import load_state_dict_strict

    if path is None:
        with default_lipsync_path() as p:
            info, tensors = _read(Path(p), with_tensors=True)
            src = str(p)
    else:
        info, tensors = _read(Path(path), with_tensors=True)
        src = str(path)
    model = LipSync(info["config"])
    load_state_dict_strict(model, tensors, src)
    for k, v in model.state_dict().items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise WeightsError(f"{src}: weight '{k}' contains NaN or infinite values; the training run diverged.")
    model.extra = info["extra"]
    log.info("loaded lip-sync model %s", src)
    return model.to(device).eval()
