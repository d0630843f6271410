"""The dataset as the trainer reads it: frames without a face are masked (issue 16.1), targets are relative to each
clip's own pose and expression (16.4), the format version guards against datasets of older versions."""

from __future__ import annotations

import json

import numpy as np
import pytest

from audio2lp.models.motion import LIP_DIMS, MOTION_DIM, PITCH, SCALE, YAW, MotionStats, from_relative, to_relative
from lp_renderer.errors import InputError
from training.motion.dataset import ClipData, Dataset, valid_frames, write_dataset

AUDIO_DIM = 8
SETTINGS = {"whisper_model": "tiny.en", "whisper_layers": "middle", "audio_dim": AUDIO_DIM}


def _clip(T: int, rng, *, yaw0=0.0, mouth0=0.0, face=None, lip=None) -> ClipData:
    """A clip whose motion is a resting pose / mouth (``yaw0``, ``mouth0``) plus audio-driven deltas."""
    audio = rng.normal(size=(2 * T, AUDIO_DIM)).astype(np.float32)
    drive = audio[0::2, 0] + audio[1::2, 0]
    m = np.zeros((T, MOTION_DIM), np.float32)
    m[:, list(LIP_DIMS)] = mouth0 + 0.01 * drive[:, None]
    m[:, YAW] = yaw0 + 2.0 * audio[0::2, 1]
    m[:, SCALE] = 1.5
    return ClipData(m, audio, lip_ratio=0.2 + 0.05 * drive if lip is None else lip, face=face)


def test_valid_frames_drop_two_neighbours_of_every_faceless_frame():
    face = np.ones(20, np.uint8)
    face[8:10] = 0
    face[0] = 0
    v = valid_frames(face)
    assert v.dtype == bool and v.shape == (20,)
    assert not v[:3].any() and v[3:6].all() and not v[6:12].any() and v[12:].all()
    assert valid_frames(None, n=5).all()


def test_frames_without_a_face_do_not_train_or_count(tmp_path):
    """Garbage motion where the face was lost (what M says about a crop without a face) changes neither the
    statistics, nor the lip direction, nor the targets the loss sees; those frames are masked out."""
    rng = np.random.default_rng(0)
    a = _clip(80, rng)
    b = _clip(60, rng)
    face = np.ones(80, np.uint8)
    face[30:40] = 0
    clean = ClipData(a.motion.copy(), a.audio, a.eye_ratio, a.lip_ratio, face)
    garbage = a.motion.copy()
    garbage[30:40] = rng.normal(size=(10, MOTION_DIM)) * 50  # a crop without a face
    lips = a.lip_ratio.copy()
    lips[30:40] = 5.0
    dirty = ClipData(garbage, a.audio, a.eye_ratio, lips, face)
    ds_clean = Dataset(write_dataset(tmp_path / "clean", [("a", clean, "s1"), ("b", b, "s2")], SETTINGS).parent)
    ds_dirty = Dataset(write_dataset(tmp_path / "dirty", [("a", dirty, "s1"), ("b", b, "s2")], SETTINGS).parent)
    np.testing.assert_allclose(ds_dirty.stats.mean, ds_clean.stats.mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ds_dirty.stats.std, ds_clean.stats.std, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ds_dirty.reference(0), ds_clean.reference(0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(ds_dirty.lip_direction(), ds_clean.lip_direction(), rtol=1e-5, atol=1e-6)
    m, audio, valid = ds_dirty.window(0, 20, 40)
    assert m.shape == (40, MOTION_DIM) and audio.shape == (80, AUDIO_DIM) and valid.shape == (40,)
    assert not valid[8:22].any() and valid[:8].all() and valid[22:].all()  # frames 28..41 (+-2 around 30..39)
    m_clean, _, _ = ds_clean.window(0, 20, 40)
    np.testing.assert_allclose(m[valid], m_clean[valid], rtol=1e-6, atol=1e-6)
    # the decoder still reads something sane there: the valid frames on either side, interpolated
    assert np.abs(m[~valid]).max() <= np.abs(m_clean[valid]).max() + 1e-6
    np.testing.assert_allclose(m[8:22], np.linspace(m[7], m[22], 16)[1:-1], rtol=1e-5, atol=1e-6)
    assert ds_dirty.manifest["clips"][0]["valid_frames"] == 80 - 14


def test_targets_are_relative_to_each_clips_own_pose_and_mouth(tmp_path):
    """Two speakers with the same speech-driven motion but different resting head pose and mouth give the same
    targets: nothing of a training speaker's pose or resting mouth is left to carry over to a portrait."""
    rng = np.random.default_rng(1)
    a = _clip(70, rng, yaw0=20.0, mouth0=0.03)
    b = ClipData(a.motion.copy(), a.audio, lip_ratio=a.lip_ratio)
    b.motion[:, YAW] -= 40.0  # yaw0 = -20
    b.motion[:, list(LIP_DIMS)] -= 0.06
    b.motion[:, PITCH] += 7.0
    b.motion[:, SCALE] = 1.2
    ds = Dataset(write_dataset(tmp_path / "ds", [("a", a, "s1"), ("b", b, "s2")], SETTINGS).parent)
    ma, _, _ = ds.window(0, 0, 70)
    mb, _, _ = ds.window(1, 0, 70)
    np.testing.assert_allclose(ma, mb, rtol=1e-4, atol=1e-5)
    assert abs(float(np.median(ma[:, YAW]))) < 1e-5  # the clip's own median pose is the zero
    assert abs(float(ds.stats.mean[YAW])) < 1.0 and ds.stats.std[YAW] < 5.0  # not the +-20 degrees of the speakers
    # the reference maps the relative motion back to the clip's own absolute motion
    np.testing.assert_allclose(from_relative(mb, ds.reference(1)), b.motion, rtol=1e-5, atol=1e-5)


def test_the_lip_reference_is_the_clips_closed_mouth():
    """The lip dims are relative to the clip's most closed mouth (its 20 % lowest lip-open ratios), so a closed
    mouth in a photo plus the model's lip deltas opens as the speaker did; pose and the other dims use the median."""
    from training.motion.dataset import clip_reference

    T = 100
    m = np.zeros((T, MOTION_DIM), np.float32)
    lip = np.linspace(0.0, 0.3, T).astype(np.float32)
    m[:, list(LIP_DIMS)] = lip[:, None]
    m[:, YAW] = np.arange(T)
    m[:, SCALE] = 1.0
    ref = clip_reference(m, np.ones(T, bool), lip)
    assert ref[YAW] == pytest.approx(np.median(np.arange(T)))
    assert ref[LIP_DIMS[0]] == pytest.approx(np.median(lip[:20]), abs=1e-6)
    no_ratio = clip_reference(m, np.ones(T, bool), None)
    assert no_ratio[LIP_DIMS[0]] == pytest.approx(np.median(lip), abs=1e-6)
    d = to_relative(m, ref)
    np.testing.assert_allclose(from_relative(d, ref), m, atol=1e-6)


def test_a_dataset_of_an_older_version_is_refused(tmp_path):
    rng = np.random.default_rng(2)
    root = write_dataset(tmp_path / "ds", [("a", _clip(40, rng), None)], SETTINGS).parent
    m = json.loads((root / "manifest.json").read_text())
    m["format"] = "audio2lp-dataset-v1"
    (root / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(InputError, match="older version.*audio2lp-train prepare"):
        Dataset(root)


def test_stats_are_of_the_relative_motion(tmp_path):
    rng = np.random.default_rng(3)
    clips = [(f"c{k}", _clip(50, rng, yaw0=10.0 * k), None) for k in range(3)]
    ds = Dataset(write_dataset(tmp_path / "ds", clips, SETTINGS).parent)
    rel = [ds.window(i, 0, 50)[0] for i in range(3)]
    expected = MotionStats.from_data(rel)
    np.testing.assert_allclose(ds.stats.mean, expected.mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ds.stats.std, expected.std, rtol=1e-4, atol=1e-5)
