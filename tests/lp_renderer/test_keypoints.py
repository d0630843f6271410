"""Keypoint maths: pose bins, rotations, Eq. 2, Eq. 7 and its regions, stitching, Algorithm 1."""

from __future__ import annotations

import logging
import pickle
import shutil

import numpy as np
import pytest
import torch

from lp_renderer import Renderer, RendererConfig, WeightsError, keypoints
from lp_renderer.animation import AnimationOptions, driving_keypoints
from lp_renderer.errors import InputError
from lp_renderer.keypoints import (
    EYE_INDICES,
    LIP_INDICES,
    KeypointInfo,
    apply_stitching,
    headpose_to_degrees,
    motion_multiplier,
    relative_motion,
    rotation_matrix,
    rotation_to_degrees,
    transform_keypoints,
)


def random_info(b=1, seed=0) -> KeypointInfo:
    g = torch.Generator().manual_seed(seed)
    return KeypointInfo(kp=torch.rand(b, 21, 3, generator=g) - 0.5, exp=0.05 * torch.randn(b, 21, 3, generator=g),
                        pitch=10 * torch.randn(b, 1, generator=g), yaw=10 * torch.randn(b, 1, generator=g),
                        roll=5 * torch.randn(b, 1, generator=g), t=0.05 * torch.randn(b, 3, generator=g),
                        scale=1.5 + 0.1 * torch.rand(b, 1, generator=g))


def test_headpose_bins():
    logits = torch.full((2, 66), -1e4)
    logits[0, 0] = 0  # all mass on bin 0 -> -97.5 degrees
    logits[1, 65] = 0  # bin 65 -> 97.5
    assert torch.allclose(headpose_to_degrees(logits), torch.tensor([-97.5, 97.5]))
    assert torch.allclose(headpose_to_degrees(torch.zeros(1, 66)), torch.tensor([0.0]))  # uniform -> 0
    deg = torch.tensor([[12.5]])
    assert headpose_to_degrees(deg) is deg  # already degrees
    # as the official headpose_pred_to_degree: anything whose dim 1 is not 66 passes through
    for other in (torch.zeros(2, 3), torch.zeros(2, 65), torch.zeros(2, 67), torch.zeros(66)):
        assert headpose_to_degrees(other) is other


def test_rotation_matrix_properties():
    z = torch.zeros(1)
    assert torch.allclose(rotation_matrix(z, z, z), torch.eye(3)[None])
    r = rotation_matrix(torch.tensor([20.0]), torch.tensor([-30.0]), torch.tensor([10.0]))
    assert torch.allclose(r @ r.transpose(1, 2), torch.eye(3)[None], atol=1e-6)
    assert torch.allclose(torch.det(r), torch.ones(1), atol=1e-6)
    # yaw of +90 degrees: row vector x-axis maps to -z (R = Ry^T), degrees in the public API
    r = rotation_matrix(torch.zeros(1), torch.tensor([90.0]), torch.zeros(1))
    assert torch.allclose(torch.tensor([[1.0, 0, 0]]) @ r[0], torch.tensor([[0.0, 0, -1]]), atol=1e-6)


def test_eq2_ignores_tz():
    info = random_info()
    a = transform_keypoints(info)
    b = transform_keypoints(info.replace(t=info.t + torch.tensor([[0.0, 0.0, 5.0]])))
    assert torch.equal(a, b)
    c = transform_keypoints(info.replace(t=info.t + torch.tensor([[0.1, 0.0, 0.0]])))
    assert torch.allclose(c - a, torch.tensor([0.1, 0.0, 0.0]).expand(1, 21, 3), atol=1e-6)


def test_relative_motion_reference_frame_is_source():
    """Eq. 7 with the driving frame equal to the reference gives back x_s (multiplier 1)."""
    src, drv = random_info(seed=1), random_info(seed=2)
    x_s = transform_keypoints(src)
    x_d0 = relative_motion(src, drv, drv)
    assert torch.allclose(x_d0, x_s, atol=1e-5)
    assert motion_multiplier(x_s, x_d0) == pytest.approx(1.0, abs=1e-4)


def test_regions():
    zero = torch.zeros(1, 1)
    src = random_info(seed=1).replace(pitch=zero, roll=zero)  # pure yaw rotations commute
    ref = random_info(seed=2).replace(pitch=zero, roll=zero)
    drv = ref.replace(exp=ref.exp + 0.1, yaw=ref.yaw + 20)
    x_s = transform_keypoints(src)
    pose_only = relative_motion(src, drv, ref, "pose")
    assert torch.allclose(pose_only, transform_keypoints(src.replace(yaw=src.yaw + 20)), atol=1e-4)
    exp_only = relative_motion(src, drv, ref, "exp")
    assert torch.allclose(exp_only, transform_keypoints(src.replace(exp=src.exp + 0.1)), atol=1e-5)
    lip = relative_motion(src, drv, ref, "lip")
    moved = (lip - x_s).abs().sum(-1)[0] > 1e-6
    assert set(torch.nonzero(moved).flatten().tolist()) == set(LIP_INDICES)
    eyes = relative_motion(src, drv, ref, "eyes")
    moved = (eyes - x_s).abs().sum(-1)[0] > 1e-6
    assert set(torch.nonzero(moved).flatten().tolist()) == set(EYE_INDICES)
    with pytest.raises(ValueError):
        relative_motion(src, drv, ref, "mouth")


def test_single_image_driving_official_formula():
    """One driving image (no reference frame): the source pose, scale and t stay; the expression is
    ``exp_s + (exp_d - lip_array)`` ('all', 'exp'; 'lip' on the lip rows) and ``exp_s + exp_d`` on the
    eye rows for 'eyes' (the official image-driving branches)."""
    src, drv = random_info(seed=1), random_info(seed=2)
    neutral = 0.03 * torch.randn(1, 21, 3, generator=torch.Generator().manual_seed(4))
    full = src.replace(exp=src.exp + (drv.exp - neutral))
    for region in ("all", "exp"):
        x = relative_motion(src, drv, None, region, neutral_exp=neutral)
        assert torch.allclose(x, transform_keypoints(full), atol=1e-5), region
    lip_exp = src.exp.clone()
    lip_exp[:, LIP_INDICES] = full.exp[:, LIP_INDICES]
    x = relative_motion(src, drv, None, "lip", neutral_exp=neutral)
    assert torch.allclose(x, transform_keypoints(src.replace(exp=lip_exp)), atol=1e-5)
    eye_exp = src.exp.clone()
    eye_exp[:, EYE_INDICES] = (src.exp + drv.exp)[:, EYE_INDICES]
    for n in (neutral, None):  # the eyes branch never uses the neutral expression
        x = relative_motion(src, drv, None, "eyes", neutral_exp=n)
        assert torch.allclose(x, transform_keypoints(src.replace(exp=eye_exp)), atol=1e-5)
    x = relative_motion(src, drv, None, "pose", neutral_exp=neutral)
    assert torch.allclose(x, transform_keypoints(src), atol=1e-5)


def test_single_image_driving_without_neutral_expression_warns_once(caplog, monkeypatch):
    """Without lip_array.pkl the source expression stands in for the neutral one (exp = exp_d): a
    documented deviation from the official output, logged once."""
    monkeypatch.setattr(keypoints, "_warned_no_neutral", False)
    src, drv = random_info(seed=1), random_info(seed=2)
    with caplog.at_level(logging.WARNING, logger="lp_renderer.keypoints"):
        x = relative_motion(src, drv, None)
        relative_motion(src, drv, None, "lip")
    assert torch.allclose(x, transform_keypoints(src.replace(exp=drv.exp)), atol=1e-5)
    assert [r.levelno for r in caplog.records if "lip_array.pkl" in r.getMessage()] == [logging.WARNING]


def test_apply_stitching_layout():
    x = torch.zeros(2, 21, 3)
    delta = torch.zeros(2, 65)
    delta[:, :63] = torch.arange(63.0)
    delta[:, 63:] = torch.tensor([100.0, 200.0])
    out = apply_stitching(x, delta)
    assert torch.equal(out[:, :, 2], torch.arange(63.0).reshape(21, 3)[:, 2].expand(2, 21))
    assert torch.equal(out[:, :, 0], (torch.arange(63.0).reshape(21, 3)[:, 0] + 100).expand(2, 21))


@pytest.fixture(scope="module")
def tiny_renderer():
    return Renderer.from_config(RendererConfig.tiny(), seed=1, device="cpu")


def test_algorithm1_branches(tiny_renderer):
    r = tiny_renderer
    rng = np.random.default_rng(0)
    src = r.prepare_source(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8), eye_ratios=(0.3, 0.31),
                           lip_ratio=0.05)
    drv = r.extract_motion(rng.integers(0, 255, (3, 256, 256, 3), dtype=np.uint8))
    plain = driving_keypoints(r, src, drv, drv[0], AnimationOptions(stitching=False))
    assert torch.allclose(plain[0:1], src.x_s, atol=1e-5)  # first frame = source
    stitched = driving_keypoints(r, src, drv, drv[0])
    assert torch.allclose(stitched, r.stitch(src.x_s, plain), atol=1e-6)
    lip = driving_keypoints(r, src, drv, drv[0], AnimationOptions(retarget_lip=True, stitching=False),
                            driving_lip_ratio=np.array([0.0, 0.2, 0.4]))
    expected = src.x_s + r.retarget_lip(src.x_s, np.array([[0.05, 0.0], [0.05, 0.2], [0.05, 0.4]], np.float32))
    assert torch.allclose(lip, expected, atol=1e-6)
    double = driving_keypoints(r, src, drv, drv[0], AnimationOptions(stitching=False, multiplier=2.0))
    assert torch.allclose(double, src.x_s + 2 * (plain - src.x_s), atol=1e-5)
    with pytest.raises(InputError, match="eye"):
        driving_keypoints(r, src.__class__(**{**src.__dict__, "eye_ratios": None}), drv, drv[0],
                          AnimationOptions(retarget_eyes=True), driving_eye_ratio=np.ones(3))
    with pytest.raises(InputError, match="region"):
        AnimationOptions(region="mouth")


def test_rotation_to_degrees_roundtrip():
    g = torch.Generator().manual_seed(3)
    pitch, yaw, roll = (torch.empty(50, 1).uniform_(-80, 80, generator=g) for _ in range(3))
    back = rotation_to_degrees(rotation_matrix(pitch, yaw, roll))
    for a, b in zip((pitch, yaw, roll), back):
        assert torch.allclose(a, b, atol=1e-3)


def test_renderer_uses_lip_array_from_weights_folder(tiny_weights, tmp_path):
    """``lip_array.pkl`` (a pickled 1x21x3 float64 numpy array, as LivePortrait ships it; protocols 2 and 4)
    in the weights folder is loaded by ``Renderer.from_weights`` and used by Algorithm 1 for a single
    driving image."""
    wdir = tmp_path / "weights"
    shutil.copytree(tiny_weights, wdir)
    neutral = np.random.default_rng(7).normal(0.0, 0.02, (1, 21, 3))
    for protocol in (4, 2):
        (wdir / "lip_array.pkl").write_bytes(pickle.dumps(neutral, protocol=protocol))
        r = Renderer.from_weights(wdir, device="cpu")
        assert r.neutral_exp.dtype == torch.float32 and r.neutral_exp.shape == (1, 21, 3)
        assert torch.allclose(r.neutral_exp, torch.from_numpy(neutral).float())
    rng = np.random.default_rng(0)
    src = r.prepare_source(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8))
    drv = r.extract_motion(rng.integers(0, 255, (1, 256, 256, 3), dtype=np.uint8))
    x = driving_keypoints(r, src, drv, None, AnimationOptions(stitching=False))
    expected = transform_keypoints(src.info.replace(exp=src.info.exp + (drv.exp - torch.from_numpy(neutral).float())))
    assert torch.allclose(x, expected, atol=1e-5)
    assert Renderer.from_weights(tiny_weights, device="cpu").neutral_exp is None  # absent: the fallback


def test_malicious_lip_array_is_refused(tiny_weights, tmp_path):
    wdir = tmp_path / "weights"
    shutil.copytree(tiny_weights, wdir)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (wdir / "lip_array.pkl").write_bytes(pickle.dumps(Evil(), protocol=4))
    with pytest.raises(WeightsError, match=r"lip_array\.pkl refers to \S*open, .*src/utils/resources"):
        Renderer.from_weights(wdir, device="cpu")
    assert not marker.exists()
    (wdir / "lip_array.pkl").write_bytes(pickle.dumps({"exp": np.zeros((1, 21, 3))}, protocol=4))
    with pytest.raises(WeightsError, match="holds a dict, not LivePortrait's 1x21x3"):
        Renderer.from_weights(wdir, device="cpu")
    (wdir / "lip_array.pkl").write_bytes(pickle.dumps(np.zeros((1, 20, 3)), protocol=4))
    with pytest.raises(WeightsError, match=r"shape \(1, 20, 3\)"):
        Renderer.from_weights(wdir, device="cpu")

