"""Speech -> landmark motion: the default motion of ``speak``, a FaceFormer-style causal transformer.

Motion per 25 fps frame (:data:`CHANNELS`), everything relative to the speaker's neutral:

====  =======  ==========================================================================================
 0    lip      lip-open ratio (LivePortrait's, on the lip-sync model's absolute scale; for lip retargeting)
 1-2  eye_l/r  eye-open multiplier of the portrait's own eye ratio (1 = as in the portrait); image-left/right
 3-5  pitch/yaw/roll  degrees, relative to the neutral pose
 6-7  tx/ty    head-centre offset in face sizes
 8    scale    face size / neutral face size
====  =======  ==========================================================================================

Audio: streaming Whisper features (:mod:`audio2lp.whisper.stream`, 50 Hz; tokens ``2i`` and ``2i + 1`` belong
to frame ``i``) of the audio with ``pad_tokens`` tokens of digital silence before and after (:func:`pad_audio`).

Network (causal, with a fixed look-ahead of ``lookahead_frames`` frames of features):

- **lip read-out**: a linear filter (``readout``, a Conv1d) over the normalised features of frames
  ``i - readout_past .. i + readout_ahead`` (the two tokens of a frame averaged) giving ``n_readout`` numbers:
  the normalised lip, then scores (silence, closed) that drive :class:`PauseClosure`. It is fitted in closed
  form (ridge) by the trainer and frozen; it is the transformer's lip output.
- **decoder**: token ``i`` = ``start`` + (``i > 0``: projection of motion frame ``i - 1``, channels
  ``feedback`` only) + projection of the read-out of frame ``i`` + PPE(``i mod period``); ``n_layers`` blocks of
  :class:`audio2lp.models.motion_model.DecoderBlock` (self-attention with FaceFormer's periodic ALiBi bias,
  causal and limited to the last ``max_context`` frames; cross-attention to the tokens of frames
  ``i - audio_past .. i + audio_ahead``; feed-forward); a Gaussian head (mean, log-std per channel).

Generation (:class:`MotionStream`, one frame at a time with a sliding key/value cache: bounded work per frame)
feeds back the transformer's mean. The head channels get the fitted AR(2) process :class:`HeadNoise` and a
causal 2-pole smoother (``smooth_tau``); the eyes come from :class:`BlinkProcess`; the lip is
:class:`LipMix`'s blend of the read-out and the built-in lip-sync model's lip, through the causal pause gate
:class:`PauseClosure` (closes the mouth in pauses as often as the training speakers do, not in every pause).
Head process and blinks are driven by ``numpy.random.default_rng`` streams of the seed: a seed is
deterministic, seeds differ, and the lip does not depend on the seed. The processes and every parameter are
stored in the checkpoint's metadata (:func:`save_landmark_motion`).
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from audio2lp.models.motion_model import (
    DecoderBlock,
    periodic_causal_bias,
    periodic_positional_encoding,
)
from audio2lp.models.threads import torch_threads
from audio2lp.whisper.features import SAMPLES_PER_TOKEN
from audio2lp.whisper.stream import StreamConfig
from lp_renderer.errors import WeightsError

from .processes import BlinkProcess, HeadNoise, LipMix, PauseClosure

__all__ = [
    "FORMAT", "FPS", "CHANNELS", "LIP", "EYES", "HEAD", "LandmarkMotionConfig", "LandmarkMotionModel",
    "MotionStream", "SlidingKVCache", "HeadNoise", "BlinkProcess", "PauseClosure", "LipMix", "pad_audio",
    "save_landmark_motion", "load_landmark_motion", "read_landmark_motion_metadata", "default_landmark_motion_path",
    "gaussian_nll",
]

log = logging.getLogger(__name__)

FORMAT = "audio2lp-landmark-motion-v1"
DEFAULT_ASSET = "landmark_motion.safetensors"
FPS = 25.0
TOKENS_PER_FRAME = 2
CHANNELS = ("lip", "eye_l", "eye_r", "pitch", "yaw", "roll", "tx", "ty", "scale")
N_CH = len(CHANNELS)
LIP, EYES, HEAD = 0, (1, 2), (3, 4, 5, 6, 7, 8)


@dataclass(frozen=True)
class LandmarkMotionConfig:
    """Architecture and feature settings (stored in the checkpoint). Frames are 25 fps, tokens 50 Hz."""

    features: StreamConfig = field(default_factory=StreamConfig)
    feat_dim: int = 384  # Whisper width (tiny.en)
    pad_tokens: int = 52  # digital silence before/after the audio, in tokens (a multiple of the block and of 2)
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 2
    ff_mult: int = 2
    dropout: float = 0.1
    period: int = 25  # PPE period and bias step (frames)
    max_context: int = 50  # frames of self-attention keys
    audio_past: int = 3  # cross-attention band (frames)
    audio_ahead: int = 1
    readout_past: int = 2  # read-out filter taps (frames)
    readout_ahead: int = 2
    n_readout: int = 3  # read-out outputs: normalised lip, then pause-gate scores
    feedback: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8)  # channels fed back (not the lip: it would be copied)
    smooth_tau: float = 3.0  # causal 2-pole smoother on the head channels (frames; 0 = off)

    def __post_init__(self):
        for name in ("feat_dim", "d_model", "n_heads", "n_layers", "ff_mult", "period", "max_context", "n_readout"):
            if getattr(self, name) < 1:
                raise ValueError(f"LandmarkMotionConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be a multiple of n_heads ({self.n_heads})")
        if self.pad_tokens % TOKENS_PER_FRAME or self.pad_tokens % self.features.block:
            raise ValueError(f"pad_tokens ({self.pad_tokens}) must be a multiple of 2 and of the feature block")
        if self.pad_tokens < TOKENS_PER_FRAME * self.margin:
            raise ValueError(f"pad_tokens ({self.pad_tokens}) must cover {self.margin} frames of context")
        if not set(self.feedback) <= set(range(1, N_CH)):
            raise ValueError(f"feedback channels must be in 1..{N_CH - 1}, got {self.feedback}")

    @property
    def lookahead_frames(self) -> int:
        """Frames of features after frame ``i`` that frame ``i`` reads."""
        return max(self.audio_ahead, self.readout_ahead)

    @property
    def margin(self) -> int:
        """Frames of features before frame ``i`` that frame ``i`` reads."""
        return max(self.audio_past, self.readout_past)

    def lookahead_ms(self) -> int:
        """Worst-case audio (ms) past the end of a frame's own 40 ms that its motion depends on (features'
        block + window look-ahead + the model's look-ahead)."""
        f, worst = self.features, 0
        for k in range(4 * f.block):  # one period of the block grid
            last_tok = TOKENS_PER_FRAME * (k + self.lookahead_frames) + 1 + self.pad_tokens  # padded index
            audio_end = ((last_tok // f.block + 1) * f.block + f.lookahead - self.pad_tokens) * 20
            worst = max(worst, audio_end - (k + 1) * 40)
        return worst

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["features"] = self.features.to_dict()
        d["feedback"] = list(self.feedback)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> LandmarkMotionConfig:
        """Inverse of :meth:`to_dict`; unknown fields raise ValueError."""
        d = dict(d)
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown LandmarkMotionConfig fields {sorted(unknown)}")
        if "features" in d:
            d["features"] = StreamConfig.from_dict(d["features"])
        if "feedback" in d:
            d["feedback"] = tuple(int(i) for i in d["feedback"])
        return cls(**d)


def pad_audio(audio_16k: np.ndarray, config: LandmarkMotionConfig) -> np.ndarray:
    """16 kHz mono ``(n,)`` -> float32 ``(n + 2 * pad_tokens * 320,)`` with digital silence before and after,
    as the model was trained (its features are :meth:`StreamingEncoder.encode` of this)."""
    pad = np.zeros(config.pad_tokens * SAMPLES_PER_TOKEN, np.float32)
    return np.concatenate([pad, np.asarray(audio_16k, np.float32).reshape(-1), pad])


def gaussian_nll(mean: Tensor, log_std: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """Mean Gaussian negative log-likelihood (constant dropped) of ``target`` under ``N(mean, exp(log_std)^2)``;
    all ``(B, T, C)``, ``weight`` ``(B, T, C)`` or broadcastable (0 = ignore, e.g. invalid frames or the lip)."""
    nll = log_std + 0.5 * ((target - mean) * torch.exp(-log_std)) ** 2
    w = weight.expand_as(nll)
    return (nll * w).sum() / w.sum().clamp(min=1.0)


class SlidingKVCache:
    """Keys and values of one self-attention layer, the last ``n_max`` positions: ``(B, H, <= n_max, Dh)``.
    Same ``append`` contract as :class:`audio2lp.models.motion_model.KVCache`."""

    def __init__(self, n_max: int):
        self.n_max = n_max
        self.k = self.v = None

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        self.k = k if self.k is None else torch.cat([self.k, k], 2)[:, :, -self.n_max:]
        self.v = v if self.v is None else torch.cat([self.v, v], 2)[:, :, -self.n_max:]
        return self.k, self.v


class LandmarkMotionModel(nn.Module):
    """See the module docstring. ``forward`` is the teacher-forced pass of training; :meth:`generate` /
    :class:`MotionStream` generate. The fitted processes are attributes (None: off)."""

    def __init__(self, config: LandmarkMotionConfig | None = None, *, head_noise: HeadNoise | None = None,
                 blinks: BlinkProcess | None = None, closure: PauseClosure | None = None,
                 lip_mix: LipMix | None = None):
        super().__init__()
        self.config = c = config or LandmarkMotionConfig()
        self.head_noise, self.blinks, self.closure = head_noise, blinks, closure
        self.lip_mix = lip_mix or LipMix()
        self.register_buffer("feat_mean", torch.zeros(c.feat_dim))
        self.register_buffer("feat_std", torch.ones(c.feat_dim))
        self.register_buffer("motion_mean", torch.zeros(N_CH))
        self.register_buffer("motion_std", torch.ones(N_CH))
        fb = torch.zeros(N_CH)
        fb[list(c.feedback)] = 1.0
        self.register_buffer("feedback_mask", fb, persistent=False)
        self.readout = nn.Conv1d(c.feat_dim, c.n_readout, c.readout_past + c.readout_ahead + 1)
        self.readout.requires_grad_(False)  # fitted in closed form
        self.audio_norm = nn.LayerNorm(c.feat_dim)
        self.audio_proj = nn.Linear(c.feat_dim, c.d_model)
        self.readout_proj = nn.Linear(c.n_readout, c.d_model)
        self.motion_enc = nn.Linear(N_CH, c.d_model)
        self.start = nn.Parameter(torch.randn(c.d_model) * 0.02)
        self.blocks = nn.ModuleList(DecoderBlock(c) for _ in range(c.n_layers))
        for blk in self.blocks:  # dropout on the residual branches only, not on the attention weights
            blk.self_attn.dropout = blk.cross_attn.dropout = 0.0
        self.ln_out = nn.LayerNorm(c.d_model)
        self.head = nn.Linear(c.d_model, 2 * N_CH)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.register_buffer("ppe", periodic_positional_encoding(c.period, c.d_model, c.period), persistent=False)

    # -- pieces ------------------------------------------------------------------------------------------

    def frame_features(self, feats: Tensor) -> Tensor:
        """Padded tokens ``(B, 2F, D)`` -> normalised frame features ``(B, F, D)`` (a frame's two tokens averaged)."""
        x = (feats - self.feat_mean) / self.feat_std
        b, t, d = x.shape
        return x[:, : t // 2 * 2].reshape(b, t // 2, 2, d).mean(2)  # (B, F, 2, D) -> (B, F, D)

    def readout_frames(self, feats: Tensor, n_frames: int) -> Tensor:
        """Read-out ``(B, n_frames, n_readout)``; ``feats`` ``(B, L, D)`` start ``readout_past`` frames before the
        first of the ``n_frames`` frames and reach ``readout_ahead`` frames past the last."""
        c = self.config
        ff = self.frame_features(feats[:, : TOKENS_PER_FRAME * (n_frames + c.readout_past + c.readout_ahead)])
        return self.readout(ff.transpose(1, 2)).transpose(1, 2)  # (B, n_frames, n_readout)

    def embed(self, prev: Tensor, readout: Tensor, first_pos: int) -> Tensor:
        """Decoder inputs ``(B, S, d_model)``. ``prev`` ``(B, S, C)``: normalised motion of the frame before each
        token (row 0 ignored when ``first_pos == 0``: the start token); ``readout`` ``(B, S, n_readout)``."""
        x = self.motion_enc(prev * self.feedback_mask)  # (B, S, d)
        if first_pos == 0:
            x = torch.cat([torch.zeros_like(x[:, :1]), x[:, 1:]], 1)
        pos = torch.arange(first_pos, first_pos + prev.shape[1], device=prev.device) % self.config.period
        return x + self.start + self.readout_proj(readout) + self.ppe[pos]

    def out(self, h: Tensor, readout: Tensor) -> tuple[Tensor, Tensor]:
        """Gaussian head on decoder states ``(B, S, d)``: ``mean, log_std`` ``(B, S, C)`` (normalised); the lip mean
        is the read-out's lip."""
        y = self.head(self.ln_out(h))
        mean, log_std = y[..., :N_CH], y[..., N_CH:].clamp(-5.0, 3.0)
        return torch.cat([readout[..., :1], mean[..., 1:]], -1), log_std

    def forward(self, feats: Tensor, prev: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Teacher forcing over a crop of ``T`` frames whose first token is the start token.

        Args:
            feats: ``(B, L, D)`` padded tokens from padded index ``pad_tokens + 2 (s - margin)`` for a crop
                starting at frame ``s``: ``L = 2 (margin + T + lookahead_frames)``.
            prev: ``(B, T, C)`` normalised motion of the frame before each token (row 0 ignored).
        Returns:
            ``mean (B, T, C)``, ``log_std (B, T, C)`` (normalised units), ``readout (B, T, n_readout)``.
        """
        c = self.config
        b, t, _ = prev.shape
        m = c.margin
        ro = self.readout_frames(feats[:, TOKENS_PER_FRAME * (m - c.readout_past):], t)
        x = F.dropout(self.embed(prev, ro, 0), c.dropout, self.training)  # (B, T, d)
        mem = self.audio_proj(self.audio_norm(feats[:, TOKENS_PER_FRAME * (m - c.audio_past):]))  # (B, L', d)
        win = TOKENS_PER_FRAME * (c.audio_past + c.audio_ahead + 1)
        idx = TOKENS_PER_FRAME * torch.arange(t, device=x.device)[:, None] + torch.arange(win, device=x.device)
        self_mask = periodic_causal_bias(t, c.period, c.n_heads, x.device, c.max_context)[None]  # (1, H, T, T)
        for blk in self.blocks:
            x = _block_banded(blk, x, self_mask, mem, idx)
        mean, log_std = self.out(x, ro)
        return mean, log_std, ro

    # -- generation ---------------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(self, feats_padded: np.ndarray, n_frames: int, seed: int = 0,
                 lipsync_lip: np.ndarray | None = None) -> np.ndarray:
        """Motion ``(n_frames, C)`` float32 (the channels of the module docstring) for padded features
        ``(T50 + 2 pad_tokens, D)``; ``lipsync_lip`` ``(n_frames,)``: the lip-sync model's lip for
        :class:`LipMix` (None: the read-out's lip alone). Deterministic for a seed; equal to a
        :class:`MotionStream` fed the same tokens in any chunks."""
        stream = MotionStream(self, seed)
        raw, scores = stream.push(feats_padded)
        if raw.shape[0] < n_frames:
            more, more_s = stream.flush(n_frames - raw.shape[0])
            raw, scores = np.concatenate([raw, more]), np.concatenate([scores, more_s])
        raw, scores = raw[:n_frames], scores[:n_frames]
        raw[:, LIP] = self.finish_lip(raw[:, LIP], scores, lipsync_lip)
        return raw

    def finish_lip(self, readout_lip: np.ndarray, scores: np.ndarray, lipsync_lip: np.ndarray | None = None
                   ) -> np.ndarray:
        """The shipped lip ``(T,)`` float32: :class:`LipMix` of the read-out's lip ``(T,)`` and ``lipsync_lip``
        ``(T,)`` (None: read-out only), then :class:`PauseClosure` on the scores ``(T, n_readout - 1)``. Causal."""
        lip = self.lip_mix.mix(np.asarray(readout_lip, np.float64), lipsync_lip)
        if self.closure is not None:
            lip = self.closure.apply(lip, np.asarray(scores, np.float64))
        return np.maximum(lip, 0.0).astype(np.float32)


def _block_banded(blk: DecoderBlock, x: Tensor, self_mask: Tensor, mem: Tensor, idx: Tensor) -> Tensor:
    """One decoder block (teacher-forced pass) whose cross-attention reads only each frame's band of tokens:
    ``x`` (B, S, d); ``self_mask`` (1, H, S, S); ``mem`` (B, L, d) projected tokens; ``idx`` (S, win) the band's
    token indices per frame. Same numbers as ``blk`` with a banded mask, at a fraction of the cost."""
    b, s, d = x.shape
    h = blk.ln_self(x)
    k, v = blk.self_attn.kv(h)
    x = x + blk.drop(blk.self_attn(h, k, v, self_mask))
    ck, cv = blk.cross_attn.kv(mem)  # (B, H, L, dh)
    ck = ck[:, :, idx].permute(0, 2, 1, 3, 4).reshape(b * s, ck.shape[1], idx.shape[1], -1)  # (B S, H, win, dh)
    cv = cv[:, :, idx].permute(0, 2, 1, 3, 4).reshape(b * s, cv.shape[1], idx.shape[1], -1)
    y = blk.cross_attn(blk.ln_cross(x).reshape(b * s, 1, d), ck, cv, None).reshape(b, s, d)
    x = x + blk.drop(y)
    return x + blk.drop(blk.mlp(blk.ln_mlp(x)))


class MotionStream:
    """Frame-by-frame generation as padded feature tokens arrive; bounded work and memory per frame.

    :meth:`push` takes the next padded tokens (the first ``pad_tokens`` are the leading silence) and returns the
    frames whose look-ahead is complete; :meth:`flush` makes frames at the end (repeating the last token when
    the look-ahead runs past the tokens pushed). Each pair of tokens is projected once with fixed shapes, so
    the result does not depend on the chunking. Returns ``(motion (n, C), scores (n, n_readout - 1))``: the
    motion's lip is the read-out's (finish it with :meth:`LandmarkMotionModel.finish_lip`); eyes and head are
    final (blinks, head process, smoother)."""

    def __init__(self, model: LandmarkMotionModel, seed: int = 0):
        self.m = model.eval()
        c = model.config
        self.blink = model.blinks.stream(seed) if model.blinks is not None else None
        self.noise = model.head_noise.stream(seed) if model.head_noise is not None else None
        self.caches = [SlidingKVCache(c.max_context) for _ in model.blocks]
        row = periodic_causal_bias(c.max_context, c.period, c.n_heads)[:, -1]  # (H, max_context): keys i-49..i
        self.bias = [row[None, :, None, -n:] for n in range(1, c.max_context + 1)]  # n keys: (1, H, 1, n)
        self.pf = c.pad_tokens // TOKENS_PER_FRAME  # padding frames before frame 0
        self.pending = torch.zeros(0, c.feat_dim)  # a token not yet paired into a frame
        self.frames_in = 0  # padded frames received
        self.ff, self.kv = [], []  # per kept padded frame: read-out features (D,), per block (k, v) (1, H, 2, dh)
        self.first_kept = 0  # padded frame index of ff[0] / kv[0]
        self.frame = 0  # next output frame
        self.prev = torch.zeros(1, 1, N_CH)
        self.last_tok = None
        self.smooth = None  # the head smoother's two states (6,)
        self.smooth_a = math.exp(-1.0 / c.smooth_tau) if c.smooth_tau > 0 else 0.0
        self.mean, self.std = model.motion_mean.double().numpy(), model.motion_std.double().numpy()

    def _add_frame(self, tok2: Tensor) -> None:
        """``tok2`` (2, D): the two tokens of the next padded frame."""
        m = self.m
        self.ff.append(((tok2 - m.feat_mean) / m.feat_std).mean(0))
        mem = m.audio_proj(m.audio_norm(tok2[None]))  # (1, 2, d)
        self.kv.append([blk.cross_attn.kv(mem) for blk in m.blocks])
        self.frames_in += 1
        self.last_tok = tok2[-1:]

    def _ready(self) -> bool:
        return self.pf + self.frame + self.m.config.lookahead_frames < self.frames_in

    def _step(self) -> tuple[np.ndarray, np.ndarray]:
        m, c, f = self.m, self.m.config, self.frame
        p = self.pf + f - self.first_kept  # list index of this frame
        ffw = torch.stack(self.ff[p - c.readout_past: p + c.readout_ahead + 1], 1)  # (D, taps)
        ro = m.readout(ffw[None]).view(1, 1, -1)  # (1, 1, n_readout)
        x = m.embed(self.prev, ro, f)  # (1, 1, d); frame 0 is the start token
        window = self.kv[p - c.audio_past: p + c.audio_ahead + 1]
        for bi, (blk, cache) in enumerate(zip(m.blocks, self.caches)):
            ck = torch.cat([kv[bi][0] for kv in window], 2)  # (1, H, win, dh)
            cv = torch.cat([kv[bi][1] for kv in window], 2)
            x = blk(x, self.bias[min(f + 1, c.max_context) - 1], ck, cv, None, cache)
        mean, _ = m.out(x, ro)  # (1, 1, C)
        self.prev = mean
        self.frame += 1
        drop = self.pf + self.frame - c.margin - self.first_kept  # frames no later step reads
        if drop > 0:
            del self.ff[:drop], self.kv[:drop]
            self.first_kept += drop
        out = mean[0, 0].double().numpy() * self.std + self.mean
        head = list(HEAD)
        if self.noise is not None:
            out[head] += self.noise.next() * self.std[head]
        if self.smooth_a > 0:  # what is fed back stays unsmoothed
            a, h = self.smooth_a, out[head]
            if self.smooth is None:
                self.smooth = [h.copy(), h.copy()]
            self.smooth[0] = a * self.smooth[0] + (1 - a) * h
            self.smooth[1] = a * self.smooth[1] + (1 - a) * self.smooth[0]
            out[head] = self.smooth[1]
        if self.blink is not None:
            out[list(EYES)] = self.blink.next()
        return out, ro[0, 0, 1:].double().numpy()

    def _frames(self, n_max: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        outs, scores = [], []
        while self._ready() and (n_max is None or len(outs) < n_max):
            o, s = self._step()
            outs.append(o)
            scores.append(s)
        k = self.m.config.n_readout - 1
        if not outs:
            return np.zeros((0, N_CH), np.float32), np.zeros((0, k), np.float32)
        return np.stack(outs).astype(np.float32), np.stack(scores).astype(np.float32).reshape(-1, k)

    @torch.no_grad()
    def push(self, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Append padded feature tokens ``(k, D)``; returns the frames made: ``(n, C)``, ``(n, n_readout - 1)``.
        Runs on one torch thread (:mod:`audio2lp.models.threads`: one frame's operations are far too small)."""
        with torch_threads(1):
            return self._push(tokens)

    def _push(self, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t = torch.cat([self.pending, torch.as_tensor(np.asarray(tokens, np.float32))])
        n = t.shape[0] // TOKENS_PER_FRAME
        for i in range(n):
            self._add_frame(t[TOKENS_PER_FRAME * i: TOKENS_PER_FRAME * (i + 1)])
        self.pending = t[TOKENS_PER_FRAME * n:]
        return self._frames()

    @torch.no_grad()
    def flush(self, n_more: int) -> tuple[np.ndarray, np.ndarray]:
        """``n_more`` more frames after the tokens pushed (the trailing silence tokens should have been pushed);
        missing look-ahead repeats the last token."""
        with torch_threads(1):
            return self._flush(n_more)

    def _flush(self, n_more: int) -> tuple[np.ndarray, np.ndarray]:
        if self.last_tok is None and not self.pending.shape[0]:
            raise ValueError("MotionStream.flush needs at least one pushed token")
        if self.pending.shape[0]:
            self._add_frame(torch.cat([self.pending, self.pending[-1:]]))
            self.pending = self.pending[:0]
        outs = [self._frames(n_more)]
        while sum(o[0].shape[0] for o in outs) < n_more:
            self._add_frame(self.last_tok.expand(TOKENS_PER_FRAME, -1))
            outs.append(self._frames(n_more - sum(o[0].shape[0] for o in outs)))
        return np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])


# -- checkpoints --------------------------------------------------------------------------------------------

_PROCESSES = {"head_noise": HeadNoise, "blinks": BlinkProcess, "closure": PauseClosure, "lip_mix": LipMix}


def default_landmark_motion_path():
    """A context manager giving the path of the shipped weights (``audio2lp/assets/landmark_motion.safetensors``)."""
    return importlib.resources.as_file(importlib.resources.files("audio2lp") / "assets" / DEFAULT_ASSET)


def save_landmark_motion(path: str | os.PathLike, model: LandmarkMotionModel, extra: dict | None = None) -> Path:
    """Write the weights as safetensors with the config, the fitted processes and ``extra`` (JSON: training
    facts, figures) as JSON metadata, atomically. Returns the path."""
    from lp_renderer.weights import write_safetensors

    meta = {"format": FORMAT, "config": json.dumps(model.config.to_dict(), sort_keys=True),
            "extra": json.dumps(extra or {}, sort_keys=True)}
    for key in _PROCESSES:
        proc = getattr(model, key)
        meta[key] = json.dumps(proc.to_dict() if proc is not None else None, sort_keys=True)
    write_safetensors(path, model.state_dict(), meta)
    log.info("wrote landmark motion model %s", path)
    return Path(path)


def _read(path: Path, with_tensors: bool) -> tuple[dict, dict[str, Tensor]]:
    from lp_renderer.weights import read_safetensors

    if not path.is_file():
        raise WeightsError(f"landmark motion model {path} does not exist; reinstall audio2lp or check the path.")
    tensors, meta = read_safetensors(path, with_tensors, remedy="reinstall or retrain it")
    if meta.get("format") != FORMAT:
        raise WeightsError(f"{path} has format {meta.get('format')!r}, expected {FORMAT!r}; is it an audio2lp "
                           f"landmark motion model?")
    info = {}
    try:
        info["config"] = LandmarkMotionConfig.from_dict(json.loads(meta["config"]))
        info["extra"] = dict(json.loads(meta.get("extra", "{}")))
        for key, cls in _PROCESSES.items():
            d = json.loads(meta.get(key, "null"))
            info[key] = cls.from_dict(d) if d is not None else None
    except (KeyError, ValueError, TypeError) as e:
        raise WeightsError(f"{path}: its metadata is missing or invalid ({type(e).__name__}: {e}); the file was "
                           f"not written by save_landmark_motion or is damaged.") from None
    return info, tensors


def read_landmark_motion_metadata(path: str | os.PathLike | None = None) -> dict:
    """``{"config", "extra", "head_noise", "blinks", "closure", "lip_mix"}`` of a saved model (default: the
    shipped one), without reading its weights."""
    if path is None:
        with default_landmark_motion_path() as p:
            return _read(Path(p), False)[0]
    return _read(Path(path), False)[0]


def load_landmark_motion(path: str | os.PathLike | None = None) -> LandmarkMotionModel:
    """The model in ``path`` (default: the shipped weights), built from its stored config, loaded strictly,
    checked for NaN/inf, in eval mode on the CPU. Any problem raises WeightsError naming the file."""
    from lp_renderer.weights import load_state_dict_strict

    if path is None:
        with default_landmark_motion_path() as p:
            return load_landmark_motion(Path(p))
    path = Path(path)
    info, tensors = _read(path, True)
    model = LandmarkMotionModel(info["config"], head_noise=info["head_noise"], blinks=info["blinks"],
                                closure=info["closure"], lip_mix=info["lip_mix"])
    load_state_dict_strict(model, tensors, str(path))
    for k, v in model.state_dict().items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise WeightsError(f"{path}: weight '{k}' contains NaN or infinite values; the training run diverged.")
    model.extra = info["extra"]
    log.info("loaded landmark motion model %s", path)
    return model.eval()

