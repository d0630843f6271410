"""What both trainers (:mod:`training.motion`, :mod:`training.lipsync`) share: the speaker split, Pearson's r, the
audio/video lag search (:func:`best_lag`, used by the lip-sync trainer's offset estimate and by ``prepare``), and
writing their files atomically (through :mod:`audio2lp.media.atomic`, the one atomic writer)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from audio2lp.media.atomic import atomic_output

T = TypeVar("T")


def split_by_speaker(items: Iterable[T], held_out: Iterable[str],
                     speaker: Callable[[T], Any] = lambda c: c.speaker) -> tuple[list[T], list[T]]:
    """``(kept, held)``: the items whose ``speaker(item)`` is not / is in ``held_out``, in their order. Clips of one
    person never straddle the split."""
    held = set(held_out)
    items = list(items)
    return [c for c in items if speaker(c) not in held], [c for c in items if speaker(c) in held]


def pearson(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Pearson correlation of two equal-length arrays (0 when either is constant)."""
    a = np.asarray(a, np.float64).ravel() - np.mean(a)
    b = np.asarray(b, np.float64).ravel() - np.mean(b)
    d = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / d) if d > 0 else 0.0


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (the folder is created)."""
    path = Path(path)
    with atomic_output(path, make_folder=True) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def lagged_r(pred: np.ndarray, measured: np.ndarray, valid: np.ndarray, lag: int) -> float:
    """r(pred[t], measured[t + lag]) over the frames where ``valid[t + lag]`` (NaN with fewer than 3 of them)."""
    n = pred.shape[0]
    if lag >= 0:
        p, g, v = pred[:n - lag], measured[lag:], valid[lag:]
    else:
        p, g, v = pred[-lag:], measured[:n + lag], valid[:n + lag]
    return pearson(p[v], g[v]) if v.sum() >= 3 else float("nan")


def best_lag(pred: np.ndarray, measured: np.ndarray, valid: np.ndarray, max_lag: int = 8) -> tuple[int, float]:
    """``(lag, r)``: the lag in ``-max_lag..max_lag`` frames that maximises r(pred[t], measured[t + lag]) over the
    valid frames, and that r (NaN when no lag has 3 valid frames). A positive lag: ``measured`` runs behind ``pred``.

    pred, measured: (T,) float; valid: (T,) bool (e.g. frames with a face).
    """
    pred, measured = np.asarray(pred, np.float64), np.asarray(measured, np.float64)
    valid = np.asarray(valid, bool) & np.isfinite(measured)
    rs = {lag: lagged_r(pred, measured, valid, lag) for lag in range(-max_lag, max_lag + 1)}
    lag = max(rs, key=lambda k: -np.inf if np.isnan(rs[k]) else rs[k])
    return int(lag), float(rs[lag])
