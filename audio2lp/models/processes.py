"""The fitted processes around the landmark motion transformer (:mod:`audio2lp.models.landmark_motion`): the head
motion process, blinks, the lip blend and the pause gate. Each is a frozen dataclass of fitted numbers (stored as
JSON in the checkpoint's metadata) with a causal, seeded ``stream`` that makes one value per 25 fps frame, so a
streamed run and an offline run give the same values.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

__all__ = ["HeadNoise", "BlinkProcess", "PauseClosure", "LipMix"]

FPS = 25.0


class _Stored:
    """``to_dict`` / ``from_dict`` for the frozen dataclasses below (lists become tuples)."""

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


@dataclass(frozen=True)
class HeadNoise(_Stored):
    """Per head channel (pitch, yaw, roll, tx, ty, scale) an AR(2) process ``x_t = a1 x_{t-1} + a2 x_{t-2} +
    sigma e_t`` in normalised units, fitted to the training speakers' head motion (Yule-Walker). Added to the
    transformer's mean: the mean follows the speech, the process gives the variability and tempo of real heads
    that a mean cannot have. ``burn_in`` frames are simulated first (start in the stationary state)."""

    a1: tuple[float, ...]
    a2: tuple[float, ...]
    sigma: tuple[float, ...]
    burn_in: int = 200

    def __post_init__(self):
        if not len(self.a1) == len(self.a2) == len(self.sigma):
            raise ValueError("HeadNoise a1, a2 and sigma must have one value per head channel")

    def stream(self, seed: int) -> _HeadNoiseStream:
        return _HeadNoiseStream(self, seed)


class _HeadNoiseStream:
    def __init__(self, p: HeadNoise, seed: int):
        self.a1, self.a2, self.s = (np.asarray(v, np.float64) for v in (p.a1, p.a2, p.sigma))
        self.rng = np.random.default_rng([int(seed), 11])
        self.x1 = self.x2 = np.zeros(self.a1.size)
        for _ in range(p.burn_in):
            self.next()

    def next(self) -> np.ndarray:
        """The next frame's values ``(channels,)`` float64."""
        x = self.a1 * self.x1 + self.a2 * self.x2 + self.s * self.rng.standard_normal(self.a1.size)
        self.x2, self.x1 = self.x1, x
        return x


@dataclass(frozen=True)
class BlinkProcess(_Stored):
    """Blinks as a renewal process fitted to the training speakers' eye traces.

    Intervals between onsets are log-normal (``log_interval_mu``, ``log_interval_sigma``, seconds, at least
    ``min_interval``); each blink draws a duration (frames) from ``durations`` and a depth (1 - eye multiplier
    at the deepest frame) from ``depths`` and follows ``shape`` (the mean closure profile, 0..1, resampled to the
    duration). Output per frame: the eye-open multiplier (1 = open as in the portrait). ``rate_scale``
    multiplies the rate (``--blink-rate`` sets it relative to :attr:`rate_per_min`)."""

    log_interval_mu: float
    log_interval_sigma: float
    min_interval: float
    durations: tuple[int, ...]
    depths: tuple[float, ...]
    shape: tuple[float, ...]
    rate_scale: float = 1.0

    @property
    def rate_per_min(self) -> float:
        """Mean blinks per minute of the fitted process (``rate_scale`` 1, ignoring ``min_interval``)."""
        return 60.0 / float(np.exp(self.log_interval_mu + 0.5 * self.log_interval_sigma ** 2))

    def with_rate(self, per_min: float) -> BlinkProcess:
        """The same process at ``per_min`` blinks per minute on average (> 0)."""
        if not per_min > 0:
            raise ValueError(f"blink rate must be > 0, got {per_min}")
        return dataclasses.replace(self, rate_scale=float(per_min) / self.rate_per_min)

    def stream(self, seed: int) -> _BlinkStream:
        return _BlinkStream(self, seed)

    def sample(self, n_frames: int, seed: int = 0) -> np.ndarray:
        """Eye-open multipliers ``(n_frames,)`` float32."""
        s = self.stream(seed)
        return np.array([s.next() for _ in range(n_frames)], np.float32)


class _BlinkStream:
    def __init__(self, p: BlinkProcess, seed: int):
        self.p = p
        self.rng = np.random.default_rng([int(seed), 7])
        self.t = 0
        self.profile = np.zeros(0)
        self.next_onset = int(round(self.rng.uniform(0.0, 1.0) * self._interval() * FPS))

    def _interval(self) -> float:
        x = float(np.exp(self.rng.normal(self.p.log_interval_mu, self.p.log_interval_sigma)))
        return max(self.p.min_interval, x / self.p.rate_scale)

    def next(self) -> float:
        """The next frame's eye-open multiplier."""
        if self.t == self.next_onset:
            dur = int(self.rng.choice(self.p.durations))
            depth = float(self.rng.choice(self.p.depths))
            shape = np.asarray(self.p.shape, np.float64)
            prof = np.interp(np.linspace(0, 1, dur), np.linspace(0, 1, shape.size), shape) * depth
            self.profile = np.maximum(np.pad(self.profile, (0, max(0, dur - self.profile.size))), prof)
            self.next_onset = self.t + max(dur + 1, int(round(self._interval() * FPS)))
        v = 1.0 - (self.profile[0] if self.profile.size else 0.0)
        self.profile = self.profile[1:]
        self.t += 1
        return v


@dataclass(frozen=True)
class LipMix(_Stored):
    """The shipped lip before the pause gate: ``w * lipsync + (1 - w) * readout`` with ``w = lipsync_weight``
    (the built-in lip-sync model's lip without its silence closing, and the transformer's lip read-out; both on
    the lip-sync model's absolute scale). ``w`` is chosen by the trainer on the training speakers by
    cross-validation."""

    lipsync_weight: float = 0.0

    def __post_init__(self):
        if not 0.0 <= self.lipsync_weight <= 1.0:
            raise ValueError(f"LipMix.lipsync_weight must be in [0, 1], got {self.lipsync_weight}")

    def mix(self, readout: np.ndarray, lipsync: np.ndarray | None) -> np.ndarray:
        """``(T,)`` float64 from ``readout`` ``(T,)`` and ``lipsync`` ``(T,)`` (None: ``readout``)."""
        readout = np.asarray(readout, np.float64)
        if lipsync is None or self.lipsync_weight == 0.0:
            return readout
        lipsync = np.asarray(lipsync, np.float64)
        if lipsync.shape != readout.shape:
            raise ValueError(f"lip-sync lip {lipsync.shape} and read-out {readout.shape} differ in length")
        return self.lipsync_weight * lipsync + (1.0 - self.lipsync_weight) * readout


@dataclass(frozen=True)
class PauseClosure(_Stored):
    """Causal mouth closing in pauses, driven by one read-out score ``s_t`` (``scores[:, score]``).

    The gate enters "closed" once ``s_t > on`` for ``hold`` consecutive frames and leaves as soon as
    ``s_t < off``; its weight ``g_t`` moves towards 1 by ``1 / ramp_close`` per frame while closed and back to 0
    by ``1 / ramp_open``; the lip is ``(1 - g_t) lip_t + g_t level``. ``s_t`` reads features only up to the
    model's look-ahead, and the mouth starts opening before speech resumes. With ``lip_below`` the gate closes
    only the frames of a pause whose incoming lip is below it (the frames where the lip is already the most
    closed: the gated lip keeps the incoming lip's order, which costs less correlation than closing at random
    frames). The trainer fits ``on`` (or ``lip_below``) so the fraction of pause frames with a closed mouth
    matches the training speakers' (real mouths are not shut in every pause); ``level`` is their median closed
    lip."""

    on: float
    off: float
    hold: int
    ramp_close: float
    ramp_open: float
    level: float
    score: int = 1  # which score: 0 = silence, 1 = closed
    lip_below: float | None = None  # close only frames whose incoming lip is below this (None: every gated frame)

    def __post_init__(self):
        if self.hold < 1 or self.ramp_close <= 0 or self.ramp_open <= 0 or self.score < 0:
            raise ValueError(f"PauseClosure needs hold >= 1, ramps > 0 and score >= 0, got {self}")
        if self.lip_below is not None and not self.lip_below > 0:
            raise ValueError(f"PauseClosure.lip_below must be > 0 or None, got {self.lip_below}")

    def stream(self) -> _ClosureStream:
        return _ClosureStream(self)

    def apply(self, lip: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """Gated lip ``(T,)`` float64 for ``lip`` ``(T,)`` and ``scores`` ``(T, k)``, ``k > score``."""
        s = self.stream()
        col = np.asarray(scores, np.float64)[:, self.score]
        return np.array([s.next(float(a), float(b)) for a, b in zip(lip, col)], np.float64)


class _ClosureStream:
    def __init__(self, p: PauseClosure):
        self.p = p
        self.g, self.closed, self.count = 0.0, False, 0

    def next(self, lip: float, score: float) -> float:
        p = self.p
        if self.closed:
            if score < p.off:
                self.closed, self.count = False, 0
        else:
            self.count = self.count + 1 if score > p.on else 0
            self.closed = self.count >= p.hold
        close = self.closed and (p.lip_below is None or lip < p.lip_below)
        self.g = min(1.0, self.g + 1.0 / p.ramp_close) if close else max(0.0, self.g - 1.0 / p.ramp_open)
        return (1.0 - self.g) * lip + self.g * p.level
