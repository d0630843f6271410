"""The figures of the default motion model's card, computed the same way for measured and generated motion.

Motion is the 9-channel vector of :mod:`training.landmarks.measure` (``(T, 9)``: lip as the normalised ratio,
eyes as multipliers of the neutral ratio, angles in degrees relative to neutral, ...), on the 25 fps grid. Every
figure is computed per clip on its valid frames and averaged over clips weighted by valid frames, except the
correlations, which are plain means over clips (as in the lip-sync model card).

- ``std_{pitch,yaw,roll}``: standard deviation of the angle (deg);
- ``speed_{...}``: mean |first difference| x 25 (deg/s);
- ``jitter_{...}``: mean |second difference| (deg/frame^2); measured series are the smoothed targets,
  generated ones are scored as produced;
- ``head_energy_r``: Pearson r between head speed (norm of the angular velocity) and loudness (RMS dB re the
  clip's 95th percentile, floored at -60 dB), both smoothed with a 0.5 s Gaussian; clips of >= 4 s;
- blinks (:func:`detect_blinks` on the mean of the two eye multipliers): ``blink_rate`` per minute,
  ``blink_duration`` mean seconds;
- lips: ``lip_r``, Pearson r with the measured lip at lag 0; in energy-VAD silences > 200 ms
  (:func:`audio2lp.models.lipsync.silence_mask`): ``sil_lip_median`` (pooled median), ``sil_closed`` (fraction of
  silent frames below :data:`CLOSED_RATIO`) and ``sil_lip_rel`` (mean lip in silence / in speech, per clip).
"""

from __future__ import annotations

import numpy as np

from training.common import pearson

__all__ = ["CLOSED_RATIO", "aggregate", "clip_figures", "detect_blinks", "runs"]

FPS = 25.0
ANGLE_NAMES = ("pitch", "yaw", "roll")
ANGLES = slice(3, 6)
LIP = 0
CLOSED_RATIO = 0.03  # normalised lip ratio below which a mouth counts as closed
BLINK_ENTER = 0.7  # a blink dips below this fraction of the open eye ratio ...
BLINK_EXIT = 0.8  # ... and is the run of frames below this fraction
BLINK_MAX_FRAMES = 12  # longer closures (looking down, squinting) are not blinks
MIN_CORR_SECONDS = 4.0
HEAD_KEYS = tuple(f"{k}_{a}" for k in ("std", "speed", "jitter") for a in ANGLE_NAMES)


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """``(start, end)`` of every run of True in ``mask (T,)``."""
    d = np.diff(np.concatenate([[0], np.asarray(mask, np.int8), [0]]))
    return [(int(a), int(b)) for a, b in zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1))]


def detect_blinks(eye: np.ndarray, valid: np.ndarray) -> list[tuple[int, int]]:
    """Blinks in an eye-open multiplier series ``eye (T,)`` (1 = open): runs of valid frames below
    :data:`BLINK_EXIT` that reach below :data:`BLINK_ENTER`, last at most :data:`BLINK_MAX_FRAMES` and do not
    touch the ends. Thresholds set on the training speakers' eye traces."""
    e = np.where(valid, eye, np.inf)
    return [(a, b) for a, b in runs(e < BLINK_EXIT)
            if b - a <= BLINK_MAX_FRAMES and e[a:b].min() < BLINK_ENTER and a > 0 and b < e.shape[0]]


def _smooth(x: np.ndarray, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter1d

    return gaussian_filter1d(np.asarray(x, np.float64), sigma, mode="nearest")


def clip_figures(motion: np.ndarray, valid: np.ndarray, rms_db: np.ndarray | None = None,
                 measured_lip: np.ndarray | None = None, silence: np.ndarray | None = None) -> dict:
    """Figures of one clip's ``motion (T, 9)`` on its ``valid (T,)`` frames. ``rms_db (T,)``: loudness, for
    ``head_energy_r``; ``measured_lip (T,)``: the measured normalised lip, for ``lip_r``; ``silence (T,)`` bool:
    the silent frames, for the ``sil_*`` figures."""
    v = np.asarray(valid, bool) & np.isfinite(motion).all(1)
    n = int(v.sum())
    out: dict = {"frames": n}
    if n < 10:
        return out
    ang = motion[:, ANGLES].astype(np.float64)
    d1ok, d2ok = v[1:] & v[:-1], v[2:] & v[1:-1] & v[:-2]
    for i, name in enumerate(ANGLE_NAMES):
        a = ang[:, i]
        out[f"std_{name}"] = float(a[v].std())
        out[f"speed_{name}"] = float(np.abs(np.diff(a))[d1ok].mean() * FPS) if d1ok.any() else float("nan")
        out[f"jitter_{name}"] = float(np.abs(np.diff(a, 2))[d2ok].mean()) if d2ok.any() else float("nan")
    blinks = detect_blinks(motion[:, 1:3].mean(1), v)
    out.update(blinks=len(blinks), blink_frames=int(sum(b - a for a, b in blinks)), minutes=n / FPS / 60.0)
    if rms_db is not None and n / FPS >= MIN_CORR_SECONDS and d1ok.sum() > 10:
        speed = np.zeros(len(v))
        speed[1:] = np.linalg.norm(np.diff(ang, axis=0), axis=1) * FPS
        speed[0] = speed[1]
        db = np.maximum(rms_db - np.percentile(rms_db, 95), -60.0)
        sp = _smooth(np.where(v, speed, np.nanmean(speed[v])), 0.5 * FPS)
        out["head_energy_r"] = pearson(sp[v], _smooth(db, 0.5 * FPS)[v])
    lip = motion[:, LIP].astype(np.float64)
    if measured_lip is not None:
        ok = v & np.isfinite(measured_lip)
        out["lip_r"] = pearson(lip[ok], measured_lip[ok]) if ok.sum() >= 3 else float("nan")
    if silence is not None:
        sil, spk = np.asarray(silence, bool) & v, ~np.asarray(silence, bool) & v
        out["sil_lips"] = lip[sil].tolist()
        if sil.any() and spk.any():
            out["sil_lip_rel"] = float(lip[sil].mean() / max(lip[spk].mean(), 1e-6))
    return out


def aggregate(rows: list[dict]) -> dict:
    """The figures over clips from :func:`clip_figures` rows (see the module docstring)."""
    rows = [r for r in rows if r.get("frames", 0) >= 10]
    w = np.array([r["frames"] for r in rows], np.float64)
    out: dict = {}
    for key in HEAD_KEYS:
        x = np.array([r[key] for r in rows])
        ok = np.isfinite(x)
        out[key] = float((x[ok] * w[ok]).sum() / w[ok].sum()) if ok.any() else float("nan")
    for key in ("head_energy_r", "lip_r", "sil_lip_rel"):
        x = [r[key] for r in rows if key in r and np.isfinite(r[key])]
        if x:
            out[key] = float(np.mean(x))
            out[f"{key}_clips"] = len(x)
    minutes = sum(r["minutes"] for r in rows)
    n_blinks = sum(r["blinks"] for r in rows)
    out["blinks"] = n_blinks
    out["blink_rate"] = n_blinks / minutes if minutes > 0 else float("nan")
    out["blink_duration"] = sum(r["blink_frames"] for r in rows) / n_blinks / FPS if n_blinks else float("nan")
    sil = np.concatenate([np.asarray(r.get("sil_lips", []), np.float64) for r in rows]) if rows else np.zeros(0)
    if sil.size:
        out["sil_frames"] = int(sil.size)
        out["sil_lip_median"] = float(np.median(sil))
        out["sil_closed"] = float((sil < CLOSED_RATIO).mean())
    return out
