"""The audio/video offset of a training clip (issue 16.2): the estimate finds a known shift, the shift pairs motion
frame i with the audio of frame i."""

from __future__ import annotations

import numpy as np
import pytest

from audio2lp.models.motion import MOTION_DIM
from training.motion.av_offset import apply_av_offset, estimate_av_offset


def _smooth_signal(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    k = np.hanning(7)
    return np.convolve(rng.normal(size=n + 6), k / k.sum(), mode="valid").astype(np.float32)


@pytest.mark.parametrize("shift", [-5, -3, 0, 2, 4, 7])
def test_estimate_av_offset_recovers_a_known_shift(shift):
    """The measured mouth runs ``shift`` frames behind the mouth predicted from the audio: the estimate is
    ``shift`` (shifts under 2 frames count as 0, as in the lip-sync trainer)."""
    n = 200
    pred = _smooth_signal(n + 20, 0)
    noise = 0.3 * np.random.default_rng(1).normal(size=n).astype(np.float32)
    measured = pred[10 - shift:10 - shift + n] + noise  # measured[t + shift] = pred[t]
    valid = np.ones(n, bool)
    valid[50:60] = False
    offset, lag, r = estimate_av_offset(pred[10:10 + n], measured, valid)
    assert lag == shift and offset == (shift if abs(shift) >= 2 else 0) and r > 0.8
    # a mouth that does not follow the audio at all gives no correction
    offset, _, r = estimate_av_offset(pred[10:10 + n], _smooth_signal(n, 5), valid)
    assert offset == 0


def test_apply_av_offset_pairs_motion_frame_i_with_the_audio_of_frame_i():
    T = 30
    motion = np.repeat(np.arange(T, dtype=np.float32)[:, None], MOTION_DIM, 1)
    frames = {"motion": motion, "eye_ratio": np.repeat(np.arange(T, dtype=np.float32)[:, None], 2, 1),
              "lip_ratio": np.arange(T, dtype=np.float32), "face": np.ones(T, np.uint8)}
    feats = np.repeat(np.arange(2 * T, dtype=np.float32)[:, None] // 2, 4, 1)  # token 2i, 2i+1 -> frame i
    late, late_feats = apply_av_offset(frames, feats, 3)  # the video runs 3 frames behind the audio
    assert late["motion"][0, 0] == 3 and late_feats[0, 0] == 0 and len(late["lip_ratio"]) == T - 3
    early, early_feats = apply_av_offset(frames, feats, -2)
    assert early["motion"][0, 0] == 0 and early_feats[0, 0] == 2 and early_feats.shape[0] == 2 * (T - 2)
    same, same_feats = apply_av_offset(frames, feats, 0)
    assert same["motion"] is frames["motion"] and same_feats is feats
