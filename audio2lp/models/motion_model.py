"""A FaceFormer-style autoregressive model from Whisper features to LivePortrait motion.

One decoder token per 25 fps video frame. The input of token ``i`` is the encoding of motion
frame ``i-1`` (token 0: no motion, only the conditioning, as FaceFormer seeds its loop with the
style embedding), plus the style embedding, plus a periodic positional encoding (PPE) of
``i mod period``. Each block has

* causal self-attention with FaceFormer's periodic ALiBi bias ``-floor((i-j)/period) * slope_h``,
  which depends only on ``i-j``: no length limit, and the keys/values of earlier tokens can be cached;
* cross-attention to the Whisper tokens with the alignment mask: frame ``i`` sees tokens ``2i``
  and ``2i+1`` only (50 Hz tokens, 25 fps frames; clamped to the last token past the audio's end);
* a feed-forward layer. Pre-LayerNorm residual blocks (as in Whisper) instead of FaceFormer's
  post-norm; the Whisper features go through a LayerNorm first so any encoder layer can be used.

The output head is zero-initialised, so an untrained model predicts the mean motion. The motion is
*relative* (:func:`audio2lp.models.motion.to_relative`): a change from the speaker's own resting pose and mouth
(training targets are relative to each clip's reference, see :mod:`training.motion.dataset`), which ``speak``
applies around the portrait's own pose and expression. All motion the model sees or returns is normalised with
:class:`audio2lp.models.motion.MotionStats` (saved with the weights). Files of format version 1 held absolute
motion around the dataset mean and are refused.

There is no conditioning on the portrait: with relative targets the model does not need the portrait's absolute
pose and expression, and feeding them in would let it recognise a training speaker again.

Training (teacher forcing): ``model(audio_feats, motion_in, style)`` where ``motion_in`` is the
ground truth; the model shifts it by one frame itself. Scheduled sampling is a second call with
mixed inputs::

    with torch.no_grad():
        pred = model(audio, gt, style)                       # one teacher-forced pass
    mixed = scheduled_sampling_inputs(gt, pred, p)           # frame-wise: pred with probability p
    loss = F.mse_loss(model(audio, mixed, style), gt)        # the target is still gt

Inference: :meth:`MotionModel.generate` runs the decoder one frame at a time with a key/value
cache, in windows (default 250 frames = 10 s) that are primed with the previous output (50 frames)
and cross-faded over their overlap (25 frames), so each frame costs a bounded amount of work and
memory for any length. :meth:`MotionModel.rollout` is ``generate`` with the window, overlap and context
stored in the model's config: the call ``speak`` makes and the trainer's validation scores (the trainer trains on
sequences of ``context + window`` frames, the longest a window decodes). :meth:`MotionModel.generate_uncached` is
the FaceFormer loop (the whole prefix is recomputed for each frame), kept as the reference the cached path must
reproduce.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from audio2lp.models.motion import MOTION_DIM, MotionStats
from audio2lp.models.threads import torch_threads
from lp_renderer.errors import InputError, WeightsError

log = logging.getLogger(__name__)

__all__ = [
    "FORMAT", "TOKENS_PER_FRAME", "MotionModelConfig", "MotionModel", "alibi_slopes", "periodic_causal_bias",
    "alignment_mask", "periodic_positional_encoding", "scheduled_sampling_inputs", "n_frames_for_tokens",
    "save_motion_model", "load_motion_model", "read_motion_model_metadata",
]

FORMAT = "audio2lp-motion-model-v2"  # v2: relative motion, windows in the config, no source conditioning
OLD_FORMATS = ("audio2lp-motion-model-v1",)
TOKENS_PER_FRAME = 2  # Whisper tokens (50 Hz) per video frame (25 fps)


@dataclass(frozen=True)
class MotionModelConfig:
    audio_dim: int = 384  # Whisper width: 384 tiny / tiny.en, 512 base
    whisper_model: str = "tiny.en"  # the Whisper model the features come from
    whisper_layers: str = "last"  # the `layers` argument of WhisperEncoder.encode used for training, as text
    d_model: int = 128
    n_heads: int = 4
    n_layers: int = 2
    ff_mult: int = 2
    dropout: float = 0.1
    period: int = 25  # PPE period and bias step, in frames (one second at 25 fps)
    n_styles: int = 1
    motion_dim: int = MOTION_DIM
    window: int = 250  # generation (rollout): frames per window; training sequences are context + window frames
    overlap: int = 25  # frames two neighbouring windows both make (cross-faded)
    context: int = 50  # frames of earlier output that prime each window after the first

    def __post_init__(self):
        for name in ("audio_dim", "d_model", "n_heads", "n_layers", "ff_mult", "period", "n_styles", "motion_dim",
                     "window"):
            if getattr(self, name) < 1:
                raise ValueError(f"MotionModelConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.overlap < self.window or self.context < 0:
            raise ValueError(f"need 0 <= overlap < window and context >= 0, got window {self.window}, overlap "
                             f"{self.overlap}, context {self.context}")
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2 or self.d_model % 2:
            raise ValueError(f"d_model ({self.d_model}) must be even and a multiple of n_heads ({self.n_heads})")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> MotionModelConfig:
        """Inverse of :meth:`to_dict`; missing fields take their defaults, unknown or mistyped ones raise ValueError."""
        types = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for k, v in d.items():
            if k not in fields:
                raise ValueError(f"unknown config field '{k}'")
            ok = types[fields[k].type]
            if not isinstance(v, ok) or (bool not in ok and isinstance(v, bool)):
                raise ValueError(f"config field '{k}' = {v!r} should be of type {fields[k].type}")
        return cls(**d)


def n_frames_for_tokens(n_tokens: int) -> int:
    """Video frames (25 fps) covering ``n_tokens`` Whisper tokens (50 Hz): ``ceil(n_tokens / 2)``."""
    return -(-n_tokens // TOKENS_PER_FRAME)


def alibi_slopes(n_heads: int) -> list[float]:
    """ALiBi's per-head slopes: geometric from ``2^(-8/n)``; n=4 gives [1/4, 1/16, 1/64, 1/256]."""
    def pow2(n):
        start = 2.0 ** (-(2.0 ** -(math.log2(n) - 3)))
        return [start ** (i + 1) for i in range(n)]

    if math.log2(n_heads).is_integer():
        return pow2(n_heads)
    closest = 2 ** math.floor(math.log2(n_heads))  # ALiBi's recipe for other head counts
    return pow2(closest) + alibi_slopes(2 * closest)[0::2][: n_heads - closest]


def periodic_causal_bias(n_frames: int, period: int, n_heads: int, device=None, max_context: int | None = None
                         ) -> Tensor:
    """FaceFormer's self-attention bias, float32 ``(n_heads, T, T)``: ``-floor((i-j)/period) * slope_h``
    for key ``j <= i`` and ``-inf`` for ``j > i`` (query ``i``, key ``j``); with ``max_context`` also ``-inf``
    for ``i - j >= max_context`` (a sliding window of keys)."""
    i = torch.arange(n_frames, device=device)[:, None]
    j = torch.arange(n_frames, device=device)[None, :]
    steps = torch.div(i - j, period, rounding_mode="floor").float()  # (T, T)
    slopes = torch.tensor(alibi_slopes(n_heads), device=device)[:, None, None]  # (H, 1, 1)
    hidden = (j > i) if max_context is None else (j > i) | (i - j >= max_context)
    return (-steps * slopes).masked_fill(hidden, float("-inf"))  # (H, T, T)


def alignment_mask(n_frames: int, n_tokens: int, device=None) -> Tensor:
    """Cross-attention mask, float32 ``(T, L)``: 0 where frame ``i`` may attend token ``min(2i, L-1)`` or
    ``min(2i+1, L-1)``, ``-inf`` elsewhere. Past the end of the audio a frame sees the last token,
    so every row has an allowed key."""
    if n_tokens < 1:
        raise ValueError("alignment_mask needs at least one audio token")
    i = torch.arange(n_frames, device=device)[:, None]
    j = torch.arange(n_tokens, device=device)[None, :]
    lo = (TOKENS_PER_FRAME * i).clamp(max=n_tokens - 1)
    hi = (TOKENS_PER_FRAME * i + TOKENS_PER_FRAME - 1).clamp(max=n_tokens - 1)
    allowed = (j >= lo) & (j <= hi)  # (T, L)
    return torch.zeros(n_frames, n_tokens, device=device).masked_fill(~allowed, float("-inf"))


def periodic_positional_encoding(n_frames: int, d_model: int, period: int, start: int = 0, device=None) -> Tensor:
    """FaceFormer's PPE, float32 ``(n_frames, d_model)``: the sinusoidal encoding (sin on even channels,
    cos on odd) of ``t mod period`` for frames ``t = start .. start + n_frames - 1``. Any length."""
    pos = (torch.arange(start, start + n_frames, device=device) % period).float()[:, None]  # (T, 1)
    freq = torch.exp(torch.arange(0, d_model, 2, device=device).float() * (-math.log(10000.0) / d_model))
    pe = torch.zeros(n_frames, d_model, device=device)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq)
    return pe


def scheduled_sampling_inputs(target: Tensor, predicted: Tensor, p: float, generator: torch.Generator | None = None
                              ) -> Tensor:
    """Decoder inputs for scheduled sampling, ``(B, T, M)``: each frame of ``target`` is replaced by the same
    frame of ``predicted`` (detached) with probability ``p``, independently per sample and frame.

    Pass the result as ``motion_in`` to :meth:`MotionModel.forward`; keep ``target`` as the loss target.
    ``predicted`` is typically a teacher-forced pass of the same model under ``torch.no_grad()``.
    """
    dev = generator.device if generator is not None else target.device
    replace = (torch.rand(target.shape[:2], generator=generator, device=dev) < p).to(target.device)
    return torch.where(replace[..., None], predicted.detach().to(target.dtype), target)


class KVCache:
    """Preallocated keys/values of one self-attention layer, ``(B, H, n_max, d_head)`` each."""

    def __init__(self, like: Tensor, n_max: int):
        B, H, _, dh = like.shape
        self.k = like.new_empty(B, H, n_max, dh)
        self.v = like.new_empty(B, H, n_max, dh)
        self.n = 0

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        m = k.shape[2]
        self.k[:, :, self.n:self.n + m] = k
        self.v[:, :, self.n:self.n + m] = v
        self.n += m
        return self.k[:, :, :self.n], self.v[:, :, :self.n]


class Attention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads, self.dropout = n_heads, dropout
        self.query = nn.Linear(d_model, d_model)
        self.key = nn.Linear(d_model, d_model)
        self.value = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model)

    def split(self, x: Tensor) -> Tensor:
        B, S, D = x.shape
        return x.view(B, S, self.n_heads, D // self.n_heads).transpose(1, 2)  # (B, H, S, Dh)

    def kv(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.split(self.key(x)), self.split(self.value(x))  # (B, H, S, Dh) each

    def forward(self, x: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        q = self.split(self.query(x))  # (B, H, Sq, Dh)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        B, H, S, Dh = y.shape
        return self.out(y.transpose(1, 2).reshape(B, S, H * Dh))  # (B, Sq, D)


class DecoderBlock(nn.Module):
    def __init__(self, c: MotionModelConfig):
        super().__init__()
        d = c.d_model
        self.ln_self, self.self_attn = nn.LayerNorm(d), Attention(d, c.n_heads, c.dropout)
        self.ln_cross, self.cross_attn = nn.LayerNorm(d), Attention(d, c.n_heads, c.dropout)
        self.ln_mlp = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, c.ff_mult * d), nn.GELU(), nn.Dropout(c.dropout),
                                 nn.Linear(c.ff_mult * d, d))
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x: Tensor, self_mask: Tensor, cross_k: Tensor, cross_v: Tensor, cross_mask: Tensor | None,
                cache: KVCache | None = None) -> Tensor:
        """x (B, S, D) new tokens; self_mask (1, H, S, n_keys); cross_k/v (B, H, L, Dh); cross_mask (1, 1, S, L)."""
        h = self.ln_self(x)
        k, v = self.self_attn.kv(h)
        if cache is not None:
            k, v = cache.append(k, v)  # all keys so far, (B, H, n_keys, Dh)
        x = x + self.drop(self.self_attn(h, k, v, self_mask))
        x = x + self.drop(self.cross_attn(self.ln_cross(x), cross_k, cross_v, cross_mask))
        return x + self.drop(self.mlp(self.ln_mlp(x)))


class MotionModel(nn.Module):
    def __init__(self, config: MotionModelConfig):
        super().__init__()
        c = self.config = config
        self.audio_norm = nn.LayerNorm(c.audio_dim)
        self.audio_proj = nn.Linear(c.audio_dim, c.d_model)
        self.motion_enc = nn.Linear(c.motion_dim, c.d_model)
        self.style = nn.Embedding(c.n_styles, c.d_model)
        nn.init.normal_(self.style.weight, std=0.02)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(DecoderBlock(c) for _ in range(c.n_layers))
        self.ln_out = nn.LayerNorm(c.d_model)
        self.head = nn.Linear(c.d_model, c.motion_dim)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        # one period of the PPE covers every position: ppe[t % period]
        self.register_buffer("ppe", periodic_positional_encoding(c.period, c.d_model, c.period), persistent=False)

    # -- pieces ---------------------------------------------------------------------------------

    def encode_audio(self, audio_feats: Tensor) -> Tensor:
        """(B, L, audio_dim) Whisper features -> (B, L, d_model) cross-attention memory."""
        if audio_feats.shape[-1] != self.config.audio_dim:
            raise InputError(f"the audio features have width {audio_feats.shape[-1]} but this motion model expects "
                             f"{self.config.audio_dim} ({self.config.whisper_model}); encode the audio with "
                             f"Whisper {self.config.whisper_model}.")
        if audio_feats.shape[-2] == 0:
            raise InputError("the audio has no Whisper tokens (it is empty); give a longer audio file.")
        return self.audio_proj(self.audio_norm(audio_feats))

    def condition(self, style, batch: int) -> Tensor:
        """Per-sequence conditioning (B, d_model): the style embedding."""
        dev = self.head.weight.device
        style = torch.as_tensor(style, dtype=torch.long, device=dev).reshape(-1)
        if style.numel() == 1:
            style = style.expand(batch)
        if style.shape != (batch,):
            raise ValueError(f"style must be an int or have {batch} entries, got shape {tuple(style.shape)}")
        if ((style < 0) | (style >= self.config.n_styles)).any():
            raise InputError(f"style id {style.tolist()} is out of range: this motion model has "
                             f"{self.config.n_styles} style(s), 0..{self.config.n_styles - 1}; pick one of those.")
        return self.style(style)  # (B, D)

    def embed(self, prev: Tensor, cond: Tensor, start: int, with_start: bool) -> Tensor:
        """Decoder inputs (B, S, D) for previous frames ``prev`` (B, P, M); S = P + with_start.

        Token k's input is the frame before its own: nothing (the start token: conditioning + PPE only)
        for k = 0 if ``with_start``, else ``prev[:, k - with_start]``. Its PPE phase is ``(start + k) % period``.
        """
        x = self.motion_enc(prev)  # (B, P, D)
        if with_start:
            x = torch.cat([x.new_zeros(x.shape[0], 1, x.shape[2]), x], dim=1)  # (B, S, D)
        S = x.shape[1]
        pos = torch.arange(start, start + S, device=x.device) % self.config.period
        return self.drop(x + cond[:, None] + self.ppe[pos])

    def decode(self, x: Tensor, memory: Tensor) -> Tensor:
        """All tokens at once: x (B, S, D) decoder inputs, memory (B, L, D) -> (B, S, M) motion."""
        S, L = x.shape[1], memory.shape[1]
        c = self.config
        self_mask = periodic_causal_bias(S, c.period, c.n_heads, x.device)[None]  # (1, H, S, S)
        cross_mask = alignment_mask(S, L, x.device)[None, None]  # (1, 1, S, L)
        for blk in self.blocks:
            ck, cv = blk.cross_attn.kv(memory)
            x = blk(x, self_mask, ck, cv, cross_mask)
        return self.head(self.ln_out(x))

    # -- training ---------------------------------------------------------------------------------

    def forward(self, audio_feats: Tensor, motion_in: Tensor, style) -> Tensor:
        """Teacher-forced prediction of every frame.

        Args:
            audio_feats: (B, L, audio_dim) Whisper features at 50 Hz, L normally 2T (shorter is clamped).
            motion_in: (B, T, M) normalised motion fed back as "previous frame": output ``i`` sees
                ``motion_in[:, :i]`` (the last frame is unused). Ground truth, or
                :func:`scheduled_sampling_inputs` for scheduled sampling.
            style: int or (B,) long style ids.

        Returns: (B, T, M) normalised motion. Sequences padded at the end (motion and audio) give the same
        outputs for their real frames (attention is causal and the audio alignment is local).
        """
        B, T, _ = motion_in.shape
        memory = self.encode_audio(audio_feats)  # (B, L, D)
        x = self.embed(motion_in[:, :T - 1], self.condition(style, B), 0, True)  # (B, T, D)
        return self.decode(x, memory)

    # -- inference --------------------------------------------------------------------------------

    @torch.no_grad()
    def rollout(self, audio_feats, style=0, *, n_frames: int | None = None, noise: float = 0.0,
                seed: int | None = None, stats: MotionStats | None = None, progress: bool = False) -> np.ndarray:
        """The motion ``speak`` makes: :meth:`generate` with the window, overlap and context of the model's config
        (the ones it was trained and validated for). Arguments and result as :meth:`generate`."""
        c = self.config
        return self.generate(audio_feats, style, n_frames=n_frames, window=c.window, overlap=c.overlap,
                             context=c.context, noise=noise, seed=seed, stats=stats, progress=progress)

    @torch.no_grad()
    def generate(self, audio_feats, style=0, *, n_frames: int | None = None, window: int | None = 250,
                 overlap: int = 25, context: int = 50, noise: float = 0.0, seed: int | None = None,
                 stats: MotionStats | None = None, progress: bool = False) -> np.ndarray:
        """Autoregressive motion for Whisper features, with a key/value cache.

        Long audio is made in windows of ``window`` frames; each window starts ``overlap`` frames before the
        previous one ends. A window is decoded like a training sequence (start token, PPE from phase 0),
        primed with the ``context`` frames of final output just before its first new frame (fed as known
        inputs in one pass, their predictions discarded), then one frame at a time. Frames made by two
        windows are cross-faded linearly (new-window weight ``k/(overlap+1)``, k = 1..overlap). Work per
        frame and memory of the decoder are bounded by ``context + window``, whatever the length.

        Args:
            audio_feats: (L, audio_dim) or (B, L, audio_dim) Whisper features at 50 Hz (array or tensor).
            style: int or (B,) style ids.
            n_frames: frames to make; default ``ceil(L / 2)`` (the audio's duration at 25 fps). Frames past
                the audio attend its last token.
            window: frames per window (None: a single window; the cache then grows with the length).
            overlap: frames made by two neighbouring windows and cross-faded; ``0 <= overlap < window``.
            context: frames that prime each window after the first.
            noise: std (normalised units) of Gaussian noise added to each frame before it is fed back;
                the returned frames are the model's predictions. 0: fully deterministic.
            seed: seeds that noise; with ``noise=0`` the result does not depend on it.
            stats: if given, the output is denormalised with it (else normalised motion is returned).
            progress: show a tqdm bar over frames.

        Returns: float32 (n_frames, M), or (B, n_frames, M) for batched input.
        """
        return self._generate(audio_feats, style, n_frames, window, overlap, context, noise, seed, stats, progress,
                              cached=True)

    @torch.no_grad()
    def generate_uncached(self, audio_feats, style=0, *, n_frames: int | None = None,
                          window: int | None = None, overlap: int = 25, context: int = 50, noise: float = 0.0,
                          seed: int | None = None, stats: MotionStats | None = None,
                          progress: bool = False) -> np.ndarray:
        """:meth:`generate` without a cache, as FaceFormer does it: every frame re-runs the decoder over the
        whole prefix (O(T^2) work per window). By default in one window. A reference for tests."""
        return self._generate(audio_feats, style, n_frames, window, overlap, context, noise, seed, stats, progress,
                              cached=False)

    def _generate(self, audio_feats, style, n_frames, window, overlap, context, noise, seed, stats, progress,
                  cached) -> np.ndarray:
        dev = self.head.weight.device
        audio = torch.as_tensor(np.asarray(audio_feats) if not isinstance(audio_feats, Tensor) else audio_feats,
                                dtype=torch.float32, device=dev)
        batched = audio.ndim == 3
        audio = audio if batched else audio[None]  # (B, L, A)
        B, L, _ = audio.shape
        if L == 0:
            raise InputError("the audio has no Whisper tokens (it is empty); give a longer audio file.")
        N = n_frames_for_tokens(L) if n_frames is None else int(n_frames)
        W, overlap = (N, 0) if window is None else (int(window), int(overlap))
        if N < 1 or W < 1 or not 0 <= overlap < W or context < 0:
            raise ValueError(f"need n_frames >= 1, window >= 1, 0 <= overlap < window and context >= 0; got "
                             f"n_frames={N}, window={W}, overlap={overlap}, context={context}")
        was_training = self.training
        self.eval()
        try:
            memory = self.encode_audio(audio)  # (B, L, D)
            cond = self.condition(style, B)  # (B, D)
            M = self.config.motion_dim
            if noise > 0:
                gen = torch.Generator().manual_seed(seed) if seed is not None else None
                noise_all = (torch.randn(B, N, M, generator=gen) * noise).to(dev)  # (B, N, M)
            else:
                noise_all = torch.zeros(B, N, M, device=dev)
            out = torch.zeros(B, N, M, device=dev)
            run = self._window_cached if cached else self._window_uncached
            with tqdm(total=N, unit="frame", disable=not progress, desc="motion") as bar:
                s, done = 0, 0  # first new frame of this window; frames made so far
                while True:
                    e = min(s + W, N)
                    f0 = s - min(context, s)  # the window decodes frames f0..e-1; f0..s-1 are primed
                    lo, hi = min(TOKENS_PER_FRAME * f0, L - 1), min(TOKENS_PER_FRAME * e, L)
                    new = run(memory[:, lo:max(hi, lo + 1)], cond, out[:, f0:s] + noise_all[:, f0:s],
                              noise_all[:, s:e])  # (B, e - s, M)
                    ov = done - s  # frames the previous window made too (overlap, or 0 for the first)
                    if ov > 0:
                        w = torch.arange(1, ov + 1, device=dev, dtype=out.dtype)[:, None] / (ov + 1)  # (ov, 1)
                        out[:, s:s + ov] = (1 - w) * out[:, s:s + ov] + w * new[:, :ov]
                    out[:, s + ov:e] = new[:, ov:]
                    bar.update(e - done)
                    log.debug("motion window: frames %d..%d, primed with %d..%d", s, e, f0, s)
                    done = e
                    if e >= N:
                        break
                    s = e - overlap
        finally:
            self.train(was_training)
        if stats is not None:
            out = stats.denormalize(out)
        out = out.float().cpu().numpy()
        return out if batched else out[0]

    def _window_cached(self, memory: Tensor, cond: Tensor, prev: Tensor, noise: Tensor) -> Tensor:
        """One window, decoded as a fresh sequence with a KV cache: start token, then the ``P`` primed frames
        ``prev`` (B, P, M) fed as known inputs (one parallel pass), then ``n_new = noise.shape[1]`` frames one
        at a time, each fed back plus its noise (B, n_new, M). memory (B, Lw, D): the window's audio, starting
        with the first token of the window's first frame. Returns the new frames (B, n_new, M).

        Runs single-threaded: one frame's operations are far too small to gain from threads, and on a busy
        CPU each parallel region can stall for milliseconds (measured: 20-1600 frames/s with 2 threads on a
        loaded 2-core machine, a steady 700-1000 with 1).
        """
        with torch_threads(1):
            return self._window_cached_impl(memory, cond, prev, noise)

    def _window_cached_impl(self, memory: Tensor, cond: Tensor, prev: Tensor, noise: Tensor) -> Tensor:
        n_new, Lw = noise.shape[1], memory.shape[1]
        x = self.embed(prev, cond, 0, True)  # (B, P + 1, D)
        n_max = x.shape[1] + n_new - 1  # tokens in this window
        c = self.config
        bias = periodic_causal_bias(n_max, c.period, c.n_heads, x.device)  # (H, n_max, n_max)
        cross = [blk.cross_attn.kv(memory) for blk in self.blocks]  # per block (B, H, Lw, Dh) x2, once per window
        caches = [KVCache(k, n_max) for k, _ in cross]
        outs, n = [], 0  # n: tokens already in the caches
        for step in range(n_new):
            S = x.shape[1]
            self_mask = bias[None, :, n:n + S, :n + S]  # (1, H, S, n + S)
            if S == 1:  # frame n sees tokens 2n, 2n+1 (clamped): slice them, no mask needed
                t0 = min(TOKENS_PER_FRAME * n, Lw - 1)
                t1 = max(min(TOKENS_PER_FRAME * (n + 1), Lw), t0 + 1)
                kv = [(k[:, :, t0:t1], v[:, :, t0:t1]) for k, v in cross]  # (B, H, <=2, Dh)
                cross_mask = None
            else:
                kv = cross
                cross_mask = alignment_mask(n + S, Lw, x.device)[None, None, n:]  # (1, 1, S, Lw)
            h = x
            for blk, (ck, cv), cache in zip(self.blocks, kv, caches):
                h = blk(h, self_mask, ck, cv, cross_mask, cache)
            y = self.head(self.ln_out(h[:, -1:]))  # (B, 1, M)
            outs.append(y)
            n += S
            if step + 1 < n_new:
                x = self.embed(y + noise[:, step:step + 1], cond, n, False)  # (B, 1, D), token n
        return torch.cat(outs, dim=1)  # (B, n_new, M)

    def _window_uncached(self, memory: Tensor, cond: Tensor, prev: Tensor, noise: Tensor) -> Tensor:
        """Same contract as :meth:`_window_cached`, recomputing the whole prefix for every frame."""
        fed, outs = prev, []  # (B, P, M)
        for step in range(noise.shape[1]):
            y = self.decode(self.embed(fed, cond, 0, True), memory)[:, -1:]  # (B, 1, M)
            outs.append(y)
            fed = torch.cat([fed, y + noise[:, step:step + 1]], dim=1)
        return torch.cat(outs, dim=1)  # (B, n_new, M)


# -- checkpoints ------------------------------------------------------------------------------------


def save_motion_model(path: str | os.PathLike, model: MotionModel, stats: MotionStats, extra: dict | None = None
                      ) -> Path:
    """Write the weights as safetensors, with the config, the motion stats and ``extra`` (JSON-serialisable,
    e.g. training facts) as JSON in the metadata. Written atomically. Returns the path."""
    from lp_renderer.weights import write_safetensors

    path = Path(path)
    if model.config.motion_dim != MOTION_DIM:
        raise ValueError(f"MotionStats hold {MOTION_DIM} dims but the model predicts {model.config.motion_dim}")
    meta = {"format": FORMAT, "config": json.dumps(model.config.to_dict(), sort_keys=True),
            "stats": json.dumps(stats.to_dict()), "extra": json.dumps(extra or {}, sort_keys=True)}
    write_safetensors(path, model.state_dict(), meta)
    log.info("wrote motion model %s", path)
    return path


def _read(path: str | os.PathLike, with_tensors: bool) -> tuple[dict, dict[str, Tensor]]:
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"motion model {path} does not exist; check the path (or --motion-model).")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()} if with_tensors else {}
    except (SafetensorError, OSError, ValueError) as e:
        with open(path, "rb") as fh:
            head = fh.read(4)
        if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
            raise WeightsError(f"{path} is a pickle / torch.save checkpoint; motion models are only loaded from "
                               f"safetensors files written by save_motion_model (pickle can run code).") from None
        raise WeightsError(f"{path} is not a readable safetensors file ({e}); save or download it again.") from None
    if meta.get("format") in OLD_FORMATS:
        raise WeightsError(f"{path} was made by an older version of audio2lp-train ({meta['format']}): it predicts "
                           f"absolute motion around its dataset's mean, which would put a training speaker's pose and "
                           f"mouth on every portrait; prepare the dataset and train it again with this version.")
    if meta.get("format") != FORMAT:
        raise WeightsError(f"{path} has format {meta.get('format')!r}, expected {FORMAT!r}; is it an audio2lp "
                           f"motion model?")
    info = {}
    for key, parse in (("config", MotionModelConfig.from_dict), ("stats", MotionStats.from_dict), ("extra", dict)):
        try:
            info[key] = parse(json.loads(meta[key]))
        except (KeyError, ValueError, TypeError) as e:
            raise WeightsError(f"{path}: the metadata entry '{key}' is missing or invalid ({e}); the file was not "
                               f"written by save_motion_model or is damaged.") from None
    if info["config"].motion_dim != MOTION_DIM:
        raise WeightsError(f"{path}: config motion_dim is {info['config'].motion_dim}, this version of audio2lp "
                           f"needs {MOTION_DIM}.")
    return info, tensors


def read_motion_model_metadata(path: str | os.PathLike) -> dict:
    """``{"config": MotionModelConfig, "stats": MotionStats, "extra": dict}`` of a saved model, without
    reading its weights."""
    return _read(path, with_tensors=False)[0]


def load_motion_model(path: str | os.PathLike, device: str | torch.device = "cpu"
                      ) -> tuple[MotionModel, MotionStats]:
    """Build the model from the config stored in ``path``, load its weights strictly (in eval mode on
    ``device``) and return it with its motion stats. Any mismatch raises WeightsError naming the file and key."""
    from lp_renderer.weights import load_state_dict_strict

    info, tensors = _read(path, with_tensors=True)
    model = MotionModel(info["config"])
    load_state_dict_strict(model, tensors, str(path))
    for k, v in model.state_dict().items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise WeightsError(f"{path}: weight '{k}' contains NaN or infinite values; the training run diverged.")
    log.info("loaded motion model %s (%s)", path, info["config"])
    return model.to(device).eval(), info["stats"]
