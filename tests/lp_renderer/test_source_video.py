"""The source-video mode at the keypoint level (lp_renderer.source_video) against the spec's formulas (§5, "Source is
a video"): which expression entries come from the source frame and which from the driving sequence, the rotation,
scale and translation of each frame, the smoother against a direct matrix Kalman smoother, and Algorithm 1 per
frame (tiny renderer)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lp_renderer import Renderer, RendererConfig
from lp_renderer.animation import AnimationOptions
from lp_renderer.keypoints import KeypointInfo, rotation_matrix
from lp_renderer.source_video import (
    EYE_OPEN_FALLBACK,
    OBSERVATION_VARIANCE,
    expression_mask,
    eye_retargeting_target,
    kalman_smooth,
    lip_keypoints,
    source_frame_keypoints,
    source_video_keypoints,
    source_video_motion,
)


def random_info(n: int, seed: int) -> KeypointInfo:
    g = torch.Generator().manual_seed(seed)
    return KeypointInfo(kp=torch.randn(n, 21, 3, generator=g) * 0.3, exp=torch.randn(n, 21, 3, generator=g) * 0.02,
                        pitch=torch.randn(n, 1, generator=g) * 10, yaw=torch.randn(n, 1, generator=g) * 10,
                        roll=torch.randn(n, 1, generator=g) * 5, t=torch.randn(n, 3, generator=g) * 0.05,
                        scale=1.5 + 0.1 * torch.rand(n, 1, generator=g))


# ------------------------------------------------------------------------------------------ the smoother
def matrix_kalman_smoother(z: np.ndarray, r: float, q: float) -> np.ndarray:
    """pykalman's filter + RTS smoother written out with full matrices (as pykalman's _filter / _smooth do, pinv
    included): A = C = I, Q = q I, R = r I, initial mean z[0], initial covariance I."""
    t_len, d = z.shape
    eye = np.eye(d)
    a, c, qm, rm = eye, eye, q * eye, r * eye
    m_pred, p_pred = np.zeros((t_len, d)), np.zeros((t_len, d, d))
    m_filt, p_filt = np.zeros((t_len, d)), np.zeros((t_len, d, d))
    for t in range(t_len):
        if t == 0:
            m_pred[t], p_pred[t] = z[0], eye
        else:
            m_pred[t] = a @ m_filt[t - 1]
            p_pred[t] = a @ p_filt[t - 1] @ a.T + qm
        k = p_pred[t] @ c.T @ np.linalg.pinv(c @ p_pred[t] @ c.T + rm)
        m_filt[t] = m_pred[t] + k @ (z[t] - c @ m_pred[t])
        p_filt[t] = p_pred[t] - k @ c @ p_pred[t]
    m_s = m_filt.copy()
    for t in range(t_len - 2, -1, -1):
        g = p_filt[t] @ a.T @ np.linalg.pinv(p_pred[t + 1])
        m_s[t] = m_filt[t] + g @ (m_s[t + 1] - m_pred[t + 1])
    return m_s


@pytest.mark.parametrize("r", [OBSERVATION_VARIANCE, 1e-5, 1e-3, 0.0])
def test_kalman_smooth_matches_the_matrix_smoother(r):
    rng = np.random.default_rng(1)
    z = np.cumsum(rng.normal(0, 3e-3, (17, 4)), axis=0) + rng.normal(0, 1e-3, (17, 4))
    ours = kalman_smooth(z, r, 1e-5)
    np.testing.assert_allclose(ours, matrix_kalman_smoother(z, r, 1e-5), rtol=1e-9, atol=1e-12)
    if r == 0.0:
        np.testing.assert_allclose(ours, z, rtol=1e-12, atol=1e-15)  # no smoothing
    if r == 1e-3:  # a large observation variance smooths strongly: the path is much less rough
        assert np.abs(np.diff(ours, 2, axis=0)).mean() < 0.3 * np.abs(np.diff(z, 2, axis=0)).mean()


def test_kalman_smooth_shapes_and_bad_values():
    z = np.random.default_rng(0).normal(size=(5, 21, 3)).astype(np.float32)
    out = kalman_smooth(z)
    assert out.shape == (5, 21, 3) and out.dtype == np.float64
    assert kalman_smooth(z[:1]).shape == (1, 21, 3)
    np.testing.assert_allclose(kalman_smooth(z[:1])[0], z[0], rtol=1e-6)  # one frame: the prior mean is the frame
    with pytest.raises(ValueError):
        kalman_smooth(z, -1.0)


# ------------------------------------------------------------------------------------------ composition
def official_delta(exp_s: torch.Tensor, exp_i: torch.Tensor, region: str) -> torch.Tensor:
    """delta_new of the official loop for a video source, written as the reference code assigns it."""
    delta = exp_s.clone()
    if region in ("all", "exp"):
        for idx in [1, 2, 6, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20]:
            delta[:, idx, :] = exp_i[:, idx, :]
        delta[:, 3:5, 1] = exp_i[:, 3:5, 1]
        delta[:, 5, 2] = exp_i[:, 5, 2]
        delta[:, 8, 2] = exp_i[:, 8, 2]
        delta[:, 9, 1:] = exp_i[:, 9, 1:]
    elif region == "lip":
        for idx in [6, 12, 14, 17, 19, 20]:
            delta[:, idx, :] = exp_i[:, idx, :]
    elif region == "eyes":
        for idx in [11, 13, 15, 16, 18]:
            delta[:, idx, :] = exp_i[:, idx, :]
    return delta


def test_expression_mask_rows():
    m = expression_mask("all")
    assert np.array_equal(m, expression_mask("exp"))
    assert m[[1, 2, 6] + list(range(11, 21))].all()  # whole rows from the driving sequence
    assert not m[[0, 7, 10]].any()  # rows that stay the source frame's
    assert m[3].tolist() == [False, True, False] and m[4].tolist() == [False, True, False]
    assert m[5].tolist() == [False, False, True] and m[8].tolist() == [False, False, True]
    assert m[9].tolist() == [False, True, True]
    assert np.flatnonzero(expression_mask("lip").any(1)).tolist() == [6, 12, 14, 17, 19, 20]
    assert np.flatnonzero(expression_mask("eyes").any(1)).tolist() == [11, 13, 15, 16, 18]
    assert not expression_mask("pose").any()


@pytest.mark.parametrize("region", ["all", "exp", "pose", "lip", "eyes"])
def test_source_video_keypoints_follow_the_spec(region):
    """Unsmoothed (variance 0): exp_i = exp_s_i + exp_d_i - exp_d_0, R_i = R_d_i R_d_0^T R_s_i; delta takes the
    official entries from exp_i; scale and t (tz = 0) stay each source frame's."""
    n = 6
    src, drv = random_info(n, 0), random_info(n, 1)
    motion = source_video_motion(src, drv, region=region, observation_variance=0.0)
    exp_i = src.exp + drv.exp - drv.exp[:1]
    r_i = drv.rotation @ drv.rotation[:1].transpose(1, 2) @ src.rotation
    torch.testing.assert_close(motion.exp, exp_i, rtol=1e-5, atol=1e-6)
    if region in ("all", "pose"):
        torch.testing.assert_close(motion.rotation, r_i, rtol=1e-5, atol=1e-6)
    else:
        assert motion.rotation is None
    exp, rot = motion.frames(slice(0, n))
    x_d = source_video_keypoints(src, exp, rot, region)
    r_new = r_i if region in ("all", "pose") else src.rotation
    t = src.t.clone()
    t[:, 2] = 0
    expected = src.scale[..., None] * (src.kp @ r_new + official_delta(src.exp, exp_i, region)) + t[:, None, :]
    torch.testing.assert_close(x_d, expected, rtol=1e-5, atol=1e-6)
    # frame 0 of the driving sequence is the reference: the first source frame comes out as it is (tz dropped)
    own = src[0].scale[..., None] * (src[0].kp @ src[0].rotation + src[0].exp) + t[:1, None, :]
    torch.testing.assert_close(x_d[:1], own, rtol=1e-5, atol=1e-6)


def test_which_rows_come_from_the_driving_frames():
    """A driving change on a source-only row (0, 7, 10; row 3's x) moves nothing; on a transferred row it moves
    exactly that keypoint; a driving scale or translation change moves nothing."""
    src = random_info(1, 0).map(lambda a: a.expand(2, *a.shape[1:]).clone())
    base = random_info(1, 1).map(lambda a: a.expand(2, *a.shape[1:]).clone())

    def moved(change) -> np.ndarray:
        drv = base.map(lambda a: a.clone())
        change(drv)
        m = source_video_motion(src, drv, region="all", observation_variance=0.0)
        x = source_video_keypoints(src, *m.frames(slice(0, 2)), "all")
        return (x[1] - x[0]).abs().amax(1).numpy() > 1e-6  # per keypoint: does frame 1 differ from frame 0?

    for row, axis in ((0, 0), (7, 1), (10, 2), (3, 0), (5, 0)):
        assert not moved(lambda d, r=row, a=axis: d.exp[1, r, a].add_(0.1)).any(), (row, axis)
    for row, axis in ((1, 0), (6, 2), (20, 1), (3, 1), (9, 2)):
        assert np.flatnonzero(moved(lambda d, r=row, a=axis: d.exp[1, r, a].add_(0.1))).tolist() == [row]
    assert not moved(lambda d: d.scale[1].mul_(1.3)).any()
    assert not moved(lambda d: d.t[1].add_(0.2)).any()
    assert moved(lambda d: d.yaw[1].add_(10.0)).all()  # the rotation is transferred


def test_smoothing_applies_to_the_composed_sequences():
    n = 9
    src, drv = random_info(n, 2), random_info(n, 3)
    m = source_video_motion(src, drv, region="all", observation_variance=1e-4)
    exp_i = (src.exp + drv.exp - drv.exp[:1]).numpy().reshape(n, -1)
    r_i = (drv.rotation @ drv.rotation[:1].transpose(1, 2) @ src.rotation).numpy().reshape(n, -1)
    np.testing.assert_allclose(m.exp.numpy().reshape(n, -1), matrix_kalman_smoother(exp_i, 1e-4, 1e-5), atol=1e-6)
    np.testing.assert_allclose(m.rotation.numpy().reshape(n, -1), matrix_kalman_smoother(r_i, 1e-4, 1e-5), atol=1e-6)
    with pytest.raises(ValueError):
        source_video_motion(src, drv[:3])


def test_eye_retargeting_target():
    assert eye_retargeting_target((0.3, 0.34)) == pytest.approx(0.32)
    assert eye_retargeting_target((0.1, 0.2)) == EYE_OPEN_FALLBACK  # mean 0.15 < 0.18: a blink
    assert eye_retargeting_target(np.array([0.18, 0.18])) == pytest.approx(0.18)


# ------------------------------------------------------------------------------------------ Algorithm 1 per frame
@pytest.fixture(scope="module")
def renderer():
    return Renderer.from_config(RendererConfig.tiny(), seed=0, device="cpu")


@pytest.fixture(scope="module")
def prepared(renderer):
    img = np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)
    return renderer.prepare_source(img, eye_ratios=(0.31, 0.29), lip_ratio=0.05)


def test_source_frame_keypoints_branches(renderer, prepared):
    x_s = prepared.x_s
    info = prepared.info
    x_d = source_video_keypoints(info, info.exp, info.rotation, "all") + 0.01
    # stitching, then the eye delta towards the first frame's opening (after stitching, as the official code)
    got = source_frame_keypoints(renderer, prepared, x_d, AnimationOptions(), eye_target=0.2)
    eyes = renderer.retarget_eyes(x_s, np.array([[0.31, 0.29, 0.2]], np.float32))
    torch.testing.assert_close(got, renderer.stitch(x_s, x_d) + eyes)
    torch.testing.assert_close(source_frame_keypoints(renderer, prepared, x_d), renderer.stitch(x_s, x_d))
    plain = source_frame_keypoints(renderer, prepared, x_d, AnimationOptions(stitching=False), eye_target=0.2)
    torch.testing.assert_close(plain, x_d + eyes)
    # lip retargeting drops the composed motion: x_s + R_lip, stitched; the multiplier scales around x_s
    opts = AnimationOptions(retarget_lip=True, multiplier=0.5)
    got = source_frame_keypoints(renderer, prepared, x_d, opts, driving_lip_ratio=np.array([0.4]), eye_target=0.2)
    lip = renderer.retarget_lip(x_s, np.array([[0.05, 0.4]], np.float32))
    full = renderer.stitch(x_s, x_s + lip)
    torch.testing.assert_close(got, x_s + (full - x_s) * 0.5)


def test_lip_keypoints_replace_the_mouth(renderer, prepared):
    x_s = prepared.x_s
    got = lip_keypoints(renderer, prepared, np.array([0.0, 0.3, 0.6]))
    ratios = np.array([[0.05, 0.0], [0.05, 0.3], [0.05, 0.6]], np.float32)
    torch.testing.assert_close(got, renderer.stitch(x_s, x_s + renderer.retarget_lip(x_s, ratios)))
    assert not torch.allclose(got[1], got[2])


def test_rotation_matrix_convention_used_by_the_composition():
    """R_d_i R_d_0^T R_s_i with identical driving frames is R_s_i (the reference frame adds nothing)."""
    src = random_info(3, 4)
    drv = random_info(1, 5).map(lambda a: a.expand(3, *a.shape[1:]).clone())
    m = source_video_motion(src, drv, region="pose", observation_variance=0.0)
    torch.testing.assert_close(m.rotation, rotation_matrix(src.pitch, src.yaw, src.roll), rtol=1e-5, atol=1e-6)
