"""The audio/video offset of a training clip (step 5 of :mod:`training.motion.prepare`).

The built-in lip-sync model predicts the mouth from the audio (its own lag is 0 frames on held-out speakers, see
its model card); the lag search of the lip-sync trainer (:func:`training.common.best_lag`) finds how many frames
the mouth measured in the video (the landmarks' lip-open ratio) runs behind it. ``prepare`` shifts video against
audio by that offset (:func:`apply_av_offset`), so motion frame ``i`` is paired with the audio spoken at frame ``i``.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from training.common import best_lag

__all__ = ["AV_MAX_LAG", "AV_MIN_SHIFT", "AV_MIN_R", "estimate_av_offset", "apply_av_offset", "lipsync_fingerprint",
           "offset_settings"]

AV_MAX_LAG = 8  # frames searched each way for the audio/video offset
AV_MIN_SHIFT = 2  # smaller offsets are not corrected (as in the lip-sync trainer)
AV_MIN_R = 0.3  # below this correlation at the best lag the clip's offset is not trusted (0)


def estimate_av_offset(pred: np.ndarray, measured: np.ndarray, valid: np.ndarray, *, max_lag: int = AV_MAX_LAG,
                       min_shift: int = AV_MIN_SHIFT, min_r: float = AV_MIN_R) -> tuple[int, int, float]:
    """``(offset, lag, r)``: how many frames the measured mouth runs behind the mouth predicted from the audio.

    pred: (T,) lip opening predicted from the audio (a model whose own lag is 0); measured: (T,) the landmarks'
    lip-open ratio; valid: (T,) bool frames to use. The lag maximising r(pred[t], measured[t + lag]) over
    ``-max_lag..max_lag`` (:func:`training.common.best_lag`, the lip-sync trainer's search); 0 when it is under
    ``min_shift`` frames or the correlation there is under ``min_r`` (no clear peak). ``lag`` is the best lag before
    those rules, ``r`` the correlation there (NaN without enough valid frames).
    """
    lag, r = best_lag(pred, measured, valid, max_lag)
    if not np.isfinite(r) or r < min_r or abs(lag) < min_shift:
        return 0, lag, r
    return lag, lag, r


def apply_av_offset(frames: dict[str, np.ndarray], feats: np.ndarray, offset: int
                    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Pair video frame ``i + offset`` with the audio of frame ``i`` (Whisper tokens ``2i, 2i+1``).

    frames: per-frame arrays (T, ...) of the video (motion, ratios, face flags); feats: (2T', D) Whisper tokens.
    A positive ``offset`` (the video runs behind the sound) drops the first ``offset`` video frames, a negative one
    the first ``-offset`` frames of audio (``-2 * offset`` tokens). The ends are cut by the caller.
    """
    if offset == 0:
        return frames, feats
    v0, a0 = max(0, offset), max(0, -offset)
    return {k: a[v0:] for k, a in frames.items()}, feats[2 * a0:]


def lipsync_fingerprint(model) -> str:
    """A short hash of the lip-sync model's weights (a new model may measure other offsets: clips are redone)."""
    h = hashlib.sha1(json.dumps(model.config.to_dict(), sort_keys=True, default=str).encode())
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def offset_settings(lipsync_model) -> dict:
    """What the offsets of a dataset depend on (part of its settings: a change redoes the clips)."""
    return {"method": "lipsync-model", "max_lag": AV_MAX_LAG, "min_shift": AV_MIN_SHIFT, "min_r": AV_MIN_R,
            "lipsync_model": lipsync_fingerprint(lipsync_model)}
