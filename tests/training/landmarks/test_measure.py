"""Measurement of motion from landmarks (training.landmarks.measure), the card's metrics and the dataset rules."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.landmarks import dataset, measure
from training.landmarks import metrics as mm


def _rot(pitch: float, yaw: float, roll: float) -> np.ndarray:
    p, y, r = (math.radians(v) for v in (pitch, yaw, roll))
    rx = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    rz = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _project(rot: np.ndarray, t: np.ndarray, width: int, height: int) -> np.ndarray:
    cam = measure.camera_matrix(width, height)
    pts = measure.FACE_MODEL_3D @ rot.T + t
    uv = pts @ cam.T
    return (uv[:, :2] / uv[:, 2:]).astype(np.float32)


def test_euler_round_trip():
    for angles in [(10.0, -20.0, 5.0), (-30.0, 45.0, -12.0), (0.0, 0.0, 0.0), (3.0, 80.0, 1.0)]:
        assert np.allclose(measure.euler_lp(_rot(*angles)), angles, atol=1e-9)


def test_head_pose_recovers_a_projected_rotation():
    w, h = 640, 480
    poses = [(5.0, -12.0, 3.0), (-8.0, 20.0, -6.0), (0.0, 0.0, 0.0), (12.0, 5.0, 10.0)]
    t = np.array([15.0, -10.0, 900.0])
    lms = np.stack([_project(_rot(*p), t, w, h) for p in poses])
    out = measure.head_pose(lms, w, h)
    assert np.abs(out[:, :3] - np.array(poses)).max() < 0.1
    f = float(max(w, h))
    assert np.allclose(out[:, 3], f * t[0] / t[2] + w / 2, atol=0.05)
    assert np.allclose(out[:, 4], f * t[1] / t[2] + h / 2, atol=0.05)
    assert np.allclose(out[:, 5], f * measure.SIZE_UNITS / t[2], rtol=1e-3)


def test_head_pose_sign_conventions():
    """Positive roll turns the face clockwise in the image (y down): the right eye corner goes lower."""
    w, h = 640, 480
    lm = _project(_rot(0, 0, 10.0), np.array([0, 0, 900.0]), w, h)
    assert lm[45, 1] > lm[36, 1]
    assert measure.head_pose(lm[None], w, h)[0, 2] == pytest.approx(10.0, abs=0.1)


def test_head_pose_missing_faces_and_distance():
    w, h = 640, 480
    near = _project(_rot(0, 0, 0), np.array([0, 0, 600.0]), w, h)
    far = _project(_rot(0, 0, 0), np.array([0, 0, 1200.0]), w, h)
    lms = np.stack([near, np.full_like(near, np.nan), far])
    out = measure.head_pose(lms, w, h)
    assert np.isnan(out[1]).all()
    assert out[0, 5] == pytest.approx(2 * out[2, 5], rel=1e-3)


def test_erode_valid():
    v = np.ones(12, bool)
    v[5] = False
    out = measure.erode_valid(v, 2)
    assert out.tolist() == [True] * 3 + [False] * 5 + [True] * 4
    assert measure.erode_valid(np.ones(4, bool)).all()


def test_normalise_removes_the_speaker():
    rng = np.random.default_rng(0)
    n = 200
    raw = np.zeros((n, 9))
    raw[:, measure.LIP] = rng.uniform(0.05, 0.6, n)
    raw[:, 1:3] = 0.3 + 0.01 * rng.standard_normal((n, 2))
    raw[:, 3:6] = np.array([10.0, -5.0, 2.0]) + rng.standard_normal((n, 3))
    raw[:, 6:8] = np.array([300.0, 200.0]) + rng.standard_normal((n, 2))
    raw[:, 8] = 150.0
    valid = np.ones(n, bool)
    valid[:3] = False
    out, neutral = measure.normalise(raw, valid)
    assert np.isnan(out[:3]).all()
    assert np.allclose(np.median(out[valid, 3:6], 0), 0, atol=1e-9)
    assert np.percentile(out[valid, 0], 95) == pytest.approx(measure.LIP_SCALE, rel=0.02)
    assert np.median(out[valid, 1]) == pytest.approx(1.0, abs=0.02)
    assert np.allclose(out[valid, 8], 1.0)
    assert neutral["median_scale"] == pytest.approx(150.0)
    # smoothing lowers the frame-to-frame noise of the head channels only; the lip stays raw
    assert np.abs(np.diff(out[valid, 3], 2)).mean() < 0.5 * np.abs(np.diff(raw[valid, 3], 2)).mean()
    assert np.allclose(out[valid, 0], raw[valid, 0] / np.percentile(raw[valid, 0], 95) * measure.LIP_SCALE)


def test_clip_motion_npz_layout():
    cm = measure.ClipMotion("x", np.ones((5, 9), np.float32), np.ones((5, 9), np.float32),
                            np.array([False, True, True, False, True]), 25.0)
    cm.motion[1, 3] = 4.0
    d = cm.to_npz_dict()
    assert d["eyes_open"].shape == (5, 2) and float(d["fps"]) == 25.0
    assert d["pitch"].tolist() == [0.0, 4.0, 1.0, 1.0, 1.0]  # invalid frames hold the last valid value


def test_blinks_and_head_figures():
    n = 500
    eye = np.ones(n)
    for start in (50, 200, 350):
        eye[start:start + 4] = [0.75, 0.3, 0.4, 0.78]
    eye[420:440] = 0.5  # too long for a blink (looking down)
    t = np.arange(n) / 25.0
    motion = np.zeros((n, 9))
    motion[:, 1] = motion[:, 2] = eye
    motion[:, 3] = 2.0 * np.sin(2 * np.pi * 0.5 * t)
    valid = np.ones(n, bool)
    assert mm.detect_blinks(eye, valid) == [(50, 54), (200, 204), (350, 354)]
    f = mm.aggregate([mm.clip_figures(motion, valid)])
    assert f["blinks"] == 3 and f["blink_rate"] == pytest.approx(3 / (n / 25 / 60))
    assert f["blink_duration"] == pytest.approx(4 / 25)
    assert f["std_pitch"] == pytest.approx(2.0 / math.sqrt(2), rel=0.01)
    assert f["speed_pitch"] == pytest.approx(2.0 * 2 * np.pi * 0.5 * 2 / np.pi, rel=0.02)  # mean |d/dt| of a sine
    assert f["std_yaw"] == 0.0


def test_speakers_and_held_out_rule(tmp_path):
    talking = tmp_path / "talking"
    talking.mkdir()
    names = ["video-retalking__1.mp4", "old__a.mp4", "n1.mp4", "n2.mp4", "n3.mp4", "n4.mp4", "n5.mp4", "m030.mp4"]
    for n in names:
        (talking / n).write_bytes(b"")
    (tmp_path / "SPEAKERS.tsv").write_text(
        "file\tspeaker_id\tnote\n" + "".join(f"talking/n{i}.mp4\tS{i}\tx\n" for i in range(1, 6))
        + "talking/m030.mp4\tMEAD_M030\tsame person\n")
    table = dataset.speaker_table(talking)
    assert table["n1"] == "S1" and table["m030"] == "EAMM__M030_sad_3_001"
    held = dataset.held_out_speakers(talking)
    # today's held-out speakers present in the folder, plus the added speakers at positions 0 mod 4 of their sorted
    # ids; the older clips' speakers (today's lip-sync model trained on them) stay in training
    assert set(held) == {"video-retalking__1", "EAMM__M030_sad_3_001", "S1", "S5"}


def test_shift_moves_the_motion():
    n = 10
    c = dataset.Clip("c", "s", np.zeros(16000, np.float32), np.arange(n * 9, dtype=np.float32).reshape(n, 9),
                     np.arange(n * 9, dtype=np.float32).reshape(n, 9), np.ones(n, bool), np.zeros(n))
    s = dataset.shift(c, 2)
    assert s.motion[0, 0] == c.motion[2, 0] and not s.valid[-2:].any() and s.meta["offset"] == 2
    assert dataset.shift(c, 0) is c
    assert dataset.pad_tokens_for(4) == 52 and dataset.pad_tokens_for(6) == 54


def test_measure_motion_command_bad_input(tmp_path, capsys):
    from training.cli import main

    assert main(["measure-motion", str(tmp_path / "missing.mp4"), "-o", str(tmp_path / "m.npz")]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert not (tmp_path / "m.npz").exists()


@pytest.mark.slow
@pytest.mark.realdata
def test_measure_motion_command_on_a_real_clip(data_dir, tmp_path):
    from training.cli import main

    clip = data_dir / "talking" / "LipNet__sbia1a.mpg"
    if not clip.is_file():
        pytest.skip(f"{clip} is not in the data folder")
    out = tmp_path / "m.npz"
    assert main(["measure-motion", str(clip), "-o", str(out)]) == 0
    with np.load(out) as z:
        n = z["lip_open"].shape[0]
        assert float(z["fps"]) == 25.0 and z["eyes_open"].shape == (n, 2) and n > 50
        assert z["valid"].mean() > 0.9
        for k in ("pitch", "yaw", "roll"):  # relative to the clip's own median, a few degrees of motion
            assert abs(np.median(z[k][z["valid"]])) < 1.0 and 0.05 < z[k].std() < 15.0
        assert 0.0 < np.percentile(z["lip_open"], 95) < 0.6
