"""Blinks, idle head motion and template poses (audio2lp.models.idle)."""

from __future__ import annotations

import numpy as np
import pytest

from audio2lp.models.idle import (
    BLINK_DURATION_S,
    DEFAULT_BLINK_RATE,
    DEFAULT_POSE_SCALE_DEG,
    blink_events,
    blink_eye_ratio,
    blink_schedule,
    idle_head_motion,
    pose_from_template,
)
from audio2lp.models.motion import MOTION_DIM, POSE, MotionTemplate, save_motion_template
from lp_renderer.errors import InputError

FPS = 25.0
TEN_MIN = int(600 * FPS)


def _closures(m: np.ndarray, level: float) -> list[tuple[int, int]]:
    """(start, end) frame runs where m < level."""
    below = np.concatenate([[False], m < level, [False]])
    d = np.diff(below.astype(int))
    return list(zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1)))


def test_blink_intervals_and_durations_over_ten_minutes():
    events = blink_events(TEN_MIN, FPS, seed=3)
    starts = np.array([e.start for e in events])
    durations = np.array([e.duration for e in events])
    intervals = np.diff(starts)
    assert 2.0 <= intervals.mean() <= 6.0
    assert intervals.min() > 1.9 and intervals.max() < 6.1  # 2-6 s, up to frame snapping
    assert durations.min() >= BLINK_DURATION_S[0] and durations.max() <= BLINK_DURATION_S[1]
    assert abs(len(events) / 10.0 - DEFAULT_BLINK_RATE) < 2.0  # per minute


def test_blink_schedule_closes_once_per_blink_at_25fps():
    events = blink_events(TEN_MIN, FPS, seed=1)
    m = blink_schedule(TEN_MIN, FPS, seed=1)
    assert m.dtype == np.float32 and m.shape == (TEN_MIN,)
    assert m.min() >= 0.0 and m.max() <= 1.0
    runs = _closures(m, 0.999)
    assert len(runs) == len(events)
    for (a, b), ev in zip(runs, events):
        assert m[a:b].min() < 0.05  # fully closed on some frame, even at 25 fps
        # frames touched by a blink span its 150-250 ms duration (frame quantisation: +-1 frame)
        assert BLINK_DURATION_S[0] - 1 / FPS <= (b - a) / FPS <= BLINK_DURATION_S[1] + 1 / FPS
        assert abs(a / FPS - ev.start) <= 1 / FPS
    # open most of the time
    assert (m == 1.0).mean() > 0.9


def test_blink_shape_is_smooth_at_high_frame_rate():
    fps = 1000.0
    m = blink_schedule(int(20 * fps), fps, seed=0)
    (a, b), *_ = _closures(m, 0.999)
    blink = m[a - 1:b + 1].astype(np.float64)
    assert np.abs(np.diff(blink)).max() < 0.1  # no jumps
    closed = np.flatnonzero(blink < 0.01)
    # closes faster than it opens
    assert closed[0] < (len(blink) - closed[-1])
    assert (b - a) / fps == pytest.approx(np.mean(BLINK_DURATION_S), abs=0.06)


def test_blink_rate_option_and_no_blink():
    for rate in (6.0, 30.0):
        events = blink_events(TEN_MIN, FPS, rate_per_min=rate, seed=0)
        assert abs(len(events) / 10.0 - rate) < 0.2 * rate
        assert np.diff([e.start for e in events]).mean() == pytest.approx(60.0 / rate, rel=0.15)
    assert np.all(blink_schedule(1000, FPS, rate_per_min=0) == 1.0)
    assert np.all(blink_schedule(1000, FPS, enabled=False) == 1.0)
    with pytest.raises(InputError):
        blink_schedule(100, FPS, rate_per_min=-1)


def test_blink_schedule_is_deterministic():
    a = blink_schedule(3000, FPS, seed=7)
    assert np.array_equal(a, blink_schedule(3000, FPS, seed=7))
    assert not np.array_equal(a, blink_schedule(3000, FPS, seed=8))


def test_blink_eye_ratio():
    m = np.array([1.0, 0.5, 0.0], np.float32)
    r = blink_eye_ratio(0.3, m)
    assert np.allclose(r, [0.3, 0.15, 0.0])
    r2 = blink_eye_ratio([0.3, 0.4], m)
    assert r2.shape == (3, 2) and np.allclose(r2[2], 0.0) and np.allclose(r2[0], [0.3, 0.4])


def test_idle_head_motion_amplitude_smoothness_and_speaking():
    n = TEN_MIN
    speaking = np.zeros(n, bool)
    speaking[n // 2:] = True
    pose = idle_head_motion(n, FPS, speaking, seed=0)
    assert pose.shape == (n, 3) and pose.dtype == np.float32
    assert np.abs(pose).max() < 3.0 * DEFAULT_POSE_SCALE_DEG + 1e-4  # a few degrees at most
    assert 0.3 < pose[:, 1].std() < 2 * DEFAULT_POSE_SCALE_DEG
    # smooth: per-frame steps and second differences are tiny compared with the amplitude
    assert np.abs(np.diff(pose, axis=0)).max() < 0.5  # < 12.5 deg/s
    assert np.abs(np.diff(pose, 2, axis=0)).max() < 0.05
    # livelier while speaking (skip the smoothed transition)
    quiet, talk = pose[: n // 2 - 50], pose[n // 2 + 50:]
    assert np.all(talk.std(0) > 1.3 * quiet.std(0))
    assert np.abs(np.diff(talk, axis=0)).mean() > 1.5 * np.abs(np.diff(quiet, axis=0)).mean()


def test_idle_head_motion_scale_and_determinism():
    a = idle_head_motion(2000, FPS, None, scale_deg=1.0, seed=4)
    b = idle_head_motion(2000, FPS, None, scale_deg=2.0, seed=4)
    assert np.allclose(b, 2 * a, atol=0.05 * np.abs(b).max())  # linear except the soft limit
    assert np.array_equal(a, idle_head_motion(2000, FPS, None, scale_deg=1.0, seed=4))
    assert np.all(idle_head_motion(500, FPS, np.ones(500), scale_deg=0.0) == 0.0)
    with pytest.raises(InputError):
        idle_head_motion(100, FPS, np.ones(99))


def _template(n: int) -> MotionTemplate:
    motion = np.zeros((n, MOTION_DIM), np.float32)
    t = np.arange(n, dtype=np.float32)
    motion[:, POSE] = np.stack([10 + t, -5 + 2 * t, 3 - t], axis=1)
    return MotionTemplate(motion, fps=25.0)


def test_pose_from_template_offsets_and_lengths(tmp_path):
    tp = _template(5)
    first = pose_from_template(tp, 5, relative_to="first")
    assert first.shape == (5, 3) and np.allclose(first[0], 0) and np.allclose(first[:, 0], np.arange(5))
    mean = pose_from_template(tp, 5)
    assert np.allclose(mean.mean(0), 0, atol=1e-5)
    # mirror: 0 1 2 3 4 3 2 1 0 1 ...
    long = pose_from_template(tp, 12, relative_to="first")
    assert np.allclose(long[:, 0], [0, 1, 2, 3, 4, 3, 2, 1, 0, 1, 2, 3])
    assert np.abs(np.diff(long[:, 0])).max() == 1  # no jumps
    loop = pose_from_template(tp, 7, relative_to="first", mode="loop")
    assert np.allclose(loop[:, 0], [0, 1, 2, 3, 4, 0, 1])
    # shorter video: the first frames
    assert np.allclose(pose_from_template(tp, 3, relative_to="first")[:, 1], [0, 2, 4])
    # a saved template, and a 50 fps template resampled to 25 fps
    path = save_motion_template(tmp_path / "t.npz", tp)
    assert np.allclose(pose_from_template(path, 5, relative_to="first"), first)
    fast = MotionTemplate(_template(10).motion, fps=50.0)
    assert np.allclose(pose_from_template(fast, 5, relative_to="first")[:, 0], [0, 2, 4, 6, 8], atol=1e-4)
    # plain arrays
    assert np.allclose(pose_from_template(tp.motion[:, POSE], 5, relative_to="first"), first)
    with pytest.raises(InputError):
        pose_from_template(np.zeros((4, 7)), 5)
