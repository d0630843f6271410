"""Life for a speaking portrait when no motion model drives it: eye blinks and idle head motion.

- :func:`blink_schedule`: per-frame eye-open multiplier (1 = as open as in the portrait, 0 = closed) with
  natural blinks: random intervals (uniform in 0.5-1.5x the mean interval ``60 / rate_per_min`` s, i.e.
  2-6 s at the default 15 per minute) and closures of 150-250 ms with a quick close, a short hold and a
  slower re-opening. Drive LivePortrait's eye retargeting with ``source_eye_ratio * multiplier``
  (:func:`blink_eye_ratio`).
- :func:`idle_head_motion`: smooth pitch/yaw/roll offsets in degrees (low-pass filtered noise), a few degrees
  at most, livelier (larger and with faster nods) while speaking.
- :func:`pose_from_template`: the head motion of a motion template as offsets from its mean (or first)
  pose, ping-ponged (or looped) when the template is shorter than the video.

All functions are deterministic for a given ``seed``.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass

import numpy as np

from lp_renderer.errors import InputError

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_BLINK_RATE",
    "DEFAULT_POSE_SCALE_DEG",
    "BLINK_DURATION_S",
    "Blink",
    "blink_events",
    "blink_schedule",
    "blink_eye_ratio",
    "idle_head_motion",
    "pose_from_template",
]

DEFAULT_BLINK_RATE = 15.0
"""Blinks per minute (mean interval 4 s; intervals 2-6 s)."""
DEFAULT_POSE_SCALE_DEG = 1.5
"""Standard deviation (degrees) of the yaw of :func:`idle_head_motion` while speaking."""
BLINK_DURATION_S = (0.15, 0.25)
"""Range of a blink's duration, from the start of closing to fully open again (seconds)."""
_CLOSE_FRAC, _HOLD_FRAC = 0.3, 0.15  # of a blink's duration: closing, holding closed; the rest re-opens


@dataclass(frozen=True)
class Blink:
    """One blink: the eyes start closing at ``start`` s and are open again at ``start + duration``."""

    start: float
    duration: float

    @property
    def closed_at(self) -> float:
        """Time (s) at which the eyes are fully closed."""
        return self.start + _CLOSE_FRAC * self.duration


def _check_frames(n_frames: int, fps: float) -> tuple[int, float]:
    try:
        n, f = int(n_frames), float(fps)
    except (TypeError, ValueError):
        raise InputError(f"n_frames and fps must be numbers, got {n_frames!r} and {fps!r}.") from None
    if n < 0:
        raise InputError(f"n_frames must be at least 0, got {n_frames}.")
    if not (math.isfinite(f) and f > 0):
        raise InputError(f"fps must be a positive number, got {fps}.")
    return n, f


def blink_events(n_frames: int, fps: float = 25.0, rate_per_min: float = DEFAULT_BLINK_RATE, seed: int = 0
                 ) -> list[Blink]:
    """The blinks of :func:`blink_schedule` (same arguments), in time order.

    Intervals between blink starts are uniform in ``[0.5, 1.5] * 60 / rate_per_min`` s (the first one starts
    0.25-1x an interval in); durations are uniform in :data:`BLINK_DURATION_S`. Each blink is placed so
    that a frame falls on its fully-closed moment (the eyes visibly close even at 25 fps).
    """
    n, fps = _check_frames(n_frames, fps)
    rate = float(rate_per_min)
    if not math.isfinite(rate) or rate < 0:
        raise InputError(f"blink rate must be a number >= 0 per minute, got {rate_per_min}.")
    if rate == 0 or n == 0:
        return []
    rng = np.random.default_rng(seed)
    mean = 60.0 / rate
    total = n / fps
    events = []
    t = rng.uniform(0.25, 1.0) * mean
    while t < total:
        dur = rng.uniform(*BLINK_DURATION_S)
        peak = round((t + _CLOSE_FRAC * dur) * fps) / fps  # snap the closed moment to a frame
        start = max(0.0, peak - _CLOSE_FRAC * dur)
        events.append(Blink(start, dur))
        t += rng.uniform(0.5, 1.5) * mean
    return events


def _blink_shape(x: np.ndarray) -> np.ndarray:
    """Closure amount (0 open .. 1 closed) at fraction ``x`` of a blink: cosine close, hold, cosine open."""
    out = np.zeros_like(x)
    a, b = _CLOSE_FRAC, _CLOSE_FRAC + _HOLD_FRAC
    m = (x > 0) & (x < a)
    out[m] = 0.5 - 0.5 * np.cos(np.pi * x[m] / a)
    out[(x >= a) & (x <= b)] = 1.0
    m = (x > b) & (x < 1)
    out[m] = 0.5 + 0.5 * np.cos(np.pi * (x[m] - b) / (1 - b))
    return out


def blink_schedule(n_frames: int, fps: float = 25.0, rate_per_min: float = DEFAULT_BLINK_RATE, seed: int = 0,
                   *, enabled: bool = True) -> np.ndarray:
    """Eye-open multiplier per frame: float32 ``(n_frames,)`` in [0, 1], 1 = open, 0 = closed.

    ``rate_per_min``: mean blinks per minute (0 or ``enabled=False``: no blinks, all ones). See
    :func:`blink_events` for the timing; each blink closes with a half-cosine over 30 % of its duration,
    stays closed for 15 % and re-opens with a half-cosine over the rest.
    """
    n, fps = _check_frames(n_frames, fps)
    out = np.ones(n, dtype=np.float64)
    if not enabled:
        return out.astype(np.float32)
    t = np.arange(n) / fps
    for ev in blink_events(n, fps, rate_per_min, seed):
        i0, i1 = int(math.floor(ev.start * fps)), int(math.ceil((ev.start + ev.duration) * fps)) + 1
        sl = slice(max(0, i0), min(n, i1))
        out[sl] = np.minimum(out[sl], 1.0 - _blink_shape((t[sl] - ev.start) / ev.duration))
    return out.astype(np.float32)


def blink_eye_ratio(source_ratio, multiplier: np.ndarray, closed_ratio: float = 0.0) -> np.ndarray:
    """Target eye-open ratios for the eye retargeting: ``closed + (source - closed) * multiplier``.

    ``source_ratio``: the portrait's eye ratio (a number, or ``(2,)`` left/right); returns ``(T,)`` or
    ``(T, 2)`` float32.
    """
    src = np.asarray(source_ratio, dtype=np.float32)
    m = np.asarray(multiplier, dtype=np.float32)
    m = m[:, None] if src.ndim == 1 and src.size > 1 else m
    return (closed_ratio + (src - closed_ratio) * m).astype(np.float32)


# ---------------------------------------------------------------------------------------------------
# head motion


def _smooth_noise(rng: np.random.Generator, n: int, sigma_frames: float, dims: int) -> np.ndarray:
    """Gaussian-filtered white noise (n, dims) scaled to unit standard deviation (in expectation)."""
    from scipy.ndimage import gaussian_filter1d

    pad = int(4 * sigma_frames) + 1
    x = rng.standard_normal((n + 2 * pad, dims))
    y = gaussian_filter1d(x, sigma_frames, axis=0, mode="reflect")[pad:pad + n]
    # expected std of filtered unit white noise: 1 / sqrt(2 sqrt(pi) sigma)
    return y * math.sqrt(2.0 * math.sqrt(math.pi) * sigma_frames)


def idle_head_motion(n_frames: int, fps: float = 25.0, speaking=None, scale_deg: float = DEFAULT_POSE_SCALE_DEG,
                     seed: int = 0) -> np.ndarray:
    """Smooth idle head motion: float32 ``(n_frames, 3)`` pitch, yaw, roll offsets in degrees.

    A slow sway (filtered noise, ~1.2 s smoothing) plus, while speaking, faster nods (~0.3 s smoothing) whose
    amplitude follows the smoothed ``speaking`` signal. ``scale_deg`` is the standard deviation of the yaw
    while speaking (pitch 0.8x, roll 0.5x; about 0.6x of that when silent); 0 gives a still head. Offsets are
    softly limited to +-3 ``scale_deg``.

    Args:
        speaking: ``(n_frames,)`` bool or float in [0, 1] (e.g. ``~LipPrediction.closed``); None = silent.
    """
    from scipy.ndimage import gaussian_filter1d

    n, fps = _check_frames(n_frames, fps)
    scale = float(scale_deg)
    if not math.isfinite(scale) or scale < 0:
        raise InputError(f"pose scale must be a number >= 0 degrees, got {scale_deg}.")
    if n == 0 or scale == 0:
        return np.zeros((n, 3), dtype=np.float32)
    if speaking is None:
        s = np.zeros(n)
    else:
        s = np.asarray(speaking, dtype=np.float64).reshape(-1)
        if s.shape[0] != n:
            raise InputError(f"speaking has {s.shape[0]} frames but the video has {n}; pass one value per frame.")
        s = np.clip(np.nan_to_num(s), 0.0, 1.0)
        s = np.clip(gaussian_filter1d(s, 0.4 * fps, mode="nearest"), 0.0, 1.0)
    rng = np.random.default_rng(seed)
    axes = np.array([0.8, 1.0, 0.5])  # pitch, yaw, roll relative to yaw
    slow = _smooth_noise(rng, n, 1.2 * fps, 3)
    fast = _smooth_noise(rng, n, 0.3 * fps, 3)
    # variance budget: silent = 0.6^2 of speaking; speaking = slow 0.8^2 + fast 0.6^2 = 1
    slow_amp = 0.6 + 0.2 * s
    fast_amp = 0.6 * s
    pose = (slow * slow_amp[:, None] + fast * fast_amp[:, None]) * axes * scale
    limit = 3.0 * scale * axes
    return (limit * np.tanh(pose / limit)).astype(np.float32)


def pose_from_template(template, n_frames: int, fps: float = 25.0, *, relative_to: str = "mean",
                       mode: str = "mirror") -> np.ndarray:
    """Head pose offsets (degrees) of a motion template, ``(n_frames, 3)`` float32 pitch/yaw/roll.

    Args:
        template: a :class:`audio2lp.models.motion.MotionTemplate`, the path of one (``.npz``), or an array of
            motion ``(T, 70)`` or poses ``(T, 3)`` at ``fps``.
        n_frames, fps: the video's length and rate (the template is resampled to ``fps``).
        relative_to: ``"mean"`` (offsets from the template's mean pose) or ``"first"`` (from its first frame).
        mode: when the template is shorter: ``"mirror"`` plays it forwards, backwards, forwards ... (no jumps);
            ``"loop"`` restarts it.
    """
    from audio2lp.models.motion import POSE, MotionTemplate, load_motion_template, resample_motion

    n, fps = _check_frames(n_frames, fps)
    if relative_to not in ("mean", "first"):
        raise InputError(f"relative_to must be 'mean' or 'first', got {relative_to!r}.")
    if mode not in ("mirror", "loop"):
        raise InputError(f"mode must be 'mirror' or 'loop', got {mode!r}.")
    if isinstance(template, (str, os.PathLike)):
        template = load_motion_template(template)
    if isinstance(template, MotionTemplate):
        pose = template.motion[:, POSE].astype(np.float32)
        if abs(template.fps - fps) > 1e-6:
            pose = resample_motion(pose, template.fps, fps)
    else:
        arr = np.asarray(template, dtype=np.float32)
        if arr.ndim != 2 or arr.shape[1] not in (3, 70) or arr.shape[0] == 0:
            raise InputError(f"a pose template must have shape (frames, 70) or (frames, 3), got {arr.shape}.")
        pose = arr[:, POSE] if arr.shape[1] == 70 else arr
    if not np.isfinite(pose).all():
        raise InputError("the template's head pose contains NaN or infinite values; re-create the template.")
    ref = pose.mean(axis=0) if relative_to == "mean" else pose[0]
    rel = pose - ref
    if n == 0:
        return np.zeros((0, 3), np.float32)
    t = rel.shape[0]
    idx = np.arange(n)
    if t == 1:
        idx = np.zeros(n, dtype=np.int64)
    elif mode == "loop":
        idx = idx % t
    else:
        period = 2 * (t - 1)
        k = idx % period
        idx = np.where(k < t, k, period - k)
    return rel[idx].astype(np.float32)
