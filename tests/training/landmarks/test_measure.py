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


# ------------------------------------------------------------------------- head angles: measured vs rendered
# LivePortrait's keypoints live in the warping grid's axes: x right and y down in the image (grid_sample's x, y),
# z the depth; ``transform_keypoints`` turns them by ``rotation_matrix(pitch, yaw, roll)`` (``kp @ R``, i.e.
# ``Rz(roll) Ry(yaw) Rx(pitch)`` on column vectors). The canonical face looks towards -z, the camera (a nod with a
# negative pitch raises the head, as LivePortrait's pose editing shows): the camera frame the landmark measurement
# solves in. These tests tie the two together through the product's own conversion.
_KP_POINTS = (0, 4, 8, 12, 16, 17, 21, 22, 26, 27, 30, 31, 33, 35, 36, 39, 42, 45, 48, 54, 57)  # 21 points
_NOSE, _EYE_IMAGE_LEFT, _EYE_IMAGE_RIGHT = _KP_POINTS.index(30), _KP_POINTS.index(36), _KP_POINTS.index(45)


def _physical(axis: int, degrees: float) -> np.ndarray:
    """A rotation about a camera axis (0: x, 1: y, 2: z) by axis-angle, independent of any Euler convention."""
    import cv2

    v = np.zeros(3)
    v[axis] = math.radians(degrees)
    return cv2.Rodrigues(v)[0]


def _rendered(angles: np.ndarray, shift: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """2-D keypoints ``(T, 21, 2)`` that ``speak``/``drive MOTION.npz`` give a frontal portrait whose canonical
    keypoints are the generic face (LivePortrait's scale) for per-frame ``angles (T, 3)`` (pitch, yaw, roll) and
    head offsets ``shift`` (tx, ty in head sizes): :func:`audio2lp.speech_motion.speech_motion_keypoints` with
    retargeting and stitching that leave the keypoints alone."""
    import types

    import torch

    from audio2lp.speech_motion import SpeechMotion, speech_motion_keypoints
    from lp_renderer.keypoints import KeypointInfo

    n = angles.shape[0]
    kp = torch.tensor(measure.FACE_MODEL_3D[list(_KP_POINTS)] / 150.0, dtype=torch.float32)[None]
    zero = torch.zeros(1, 1)
    info = KeypointInfo(kp=kp, exp=torch.zeros_like(kp), pitch=zero, yaw=zero, roll=zero, t=torch.zeros(1, 3),
                        scale=torch.ones(1, 1))
    src = types.SimpleNamespace(info=info, x_s=kp, lip_ratio=0.3, eye_ratios=(0.35, 0.35))
    renderer = types.SimpleNamespace(device="cpu", retarget_lip=lambda x_s, r: torch.zeros(len(r), 21, 3),
                                     retarget_eyes=lambda x_s, r: torch.zeros(len(r), 21, 3),
                                     stitch=lambda x_s, x_d: x_d)
    col = np.asarray(angles, np.float32)
    motion = SpeechMotion(fps=25.0, seed=0, lip_open=np.full(n, 0.3, np.float32),
                          eyes_open=np.ones((n, 2), np.float32), pitch=col[:, 0], yaw=col[:, 1], roll=col[:, 2],
                          tx=np.full(n, shift[0], np.float32), ty=np.full(n, shift[1], np.float32),
                          scale=np.ones(n, np.float32))
    x_d = speech_motion_keypoints(renderer, types.SimpleNamespace(source=src), motion, np.arange(n), eyes=False)
    return x_d[..., :2].numpy()


def _turn_signs(points: np.ndarray) -> tuple[float, float, float]:
    """Image-space effect of a head turn on 2-D points ``(N, 2)`` of the keypoint set (x right, y down): the nose
    relative to the eye midpoint (x: >0 when it looks towards image right, y: >0 when it looks down) and the
    image-right eye's height over the image-left eye's (>0 when the head tilts towards image right)."""
    mid = 0.5 * (points[_EYE_IMAGE_LEFT] + points[_EYE_IMAGE_RIGHT])
    nose = points[_NOSE] - mid
    return float(nose[0]), float(nose[1]), float(points[_EYE_IMAGE_RIGHT, 1] - points[_EYE_IMAGE_LEFT, 1])


@pytest.mark.parametrize("axis, degrees, moved", [
    (1, -12.0, "the head turns to its own left (towards image right)"),
    (1, 12.0, "the head turns to its own right"),
    (0, -10.0, "the head looks up"),
    (0, 10.0, "the head nods down"),
    (2, 10.0, "the head tilts towards its own left shoulder (image right)"),
    (2, -10.0, "the head tilts towards its own right shoulder"),
])
def test_measured_head_turns_render_the_same_way(axis, degrees, moved):
    """Landmarks of a head physically turned in front of the camera -> measured pitch/yaw/roll (relative to the
    frontal frame, as the training data is) -> the renderer-side conversion: the rendered keypoints turn the same
    way in the image as the landmarks did, by about the same angle. A flipped sign anywhere (the measurement's
    Euler read-out or 3-D face, or how ``speak`` adds the angles to the portrait's pose) fails this."""
    w, h = 640, 480
    t = np.array([0.0, 0.0, 900.0])
    frontal = _project(np.eye(3), t, w, h)
    turned = _project(_physical(axis, degrees), t, w, h)
    pose = measure.head_pose(np.stack([frontal, turned]), w, h)
    rel = pose[1, :3] - pose[0, :3]  # relative to the clip's neutral frame
    assert abs(rel[axis] - degrees) < 0.5 and np.abs(np.delete(rel, axis)).max() < 0.5, (moved, rel)
    k = list(_KP_POINTS)
    seen = np.subtract(_turn_signs(turned[k]), _turn_signs(frontal[k]))
    kp = _rendered(np.stack([np.zeros(3), rel]))
    shown = np.subtract(_turn_signs(kp[1]), _turn_signs(kp[0]))
    component = {1: 0, 0: 1, 2: 2}[axis]  # yaw moves the nose sideways, pitch up/down, roll the eye line
    assert abs(seen[component]) > 1e-3 and abs(shown[component]) > 1e-4, (moved, seen, shown)
    assert np.sign(shown[component]) == np.sign(seen[component]), (moved, seen, shown)
    if axis == 2:  # in the image plane: the same angle whatever the depth, so compare it too
        tilt = lambda p: math.degrees(math.atan2(*(p[_EYE_IMAGE_RIGHT] - p[_EYE_IMAGE_LEFT])[::-1]))  # noqa: E731
        assert tilt(kp[1]) - tilt(kp[0]) == pytest.approx(tilt(turned[k]) - tilt(frontal[k]), abs=0.5)


def test_measured_head_shift_renders_the_same_way():
    """tx/ty (head sizes, x right, y down) move the rendered head the way the measured head moved."""
    kp = _rendered(np.zeros((2, 3)), shift=(0.2, -0.1))
    d = kp.mean(1) - _rendered(np.zeros((2, 3))).mean(1)
    assert d[0, 0] > 0 and d[0, 1] < 0
