"""Portrait editing maths (lp_renderer.editing): the official tab's offsets entry by entry, the slider ranges, the
composition against a NumPy re-derivation, retargeting only when a target ratio changes, and the sliders as
constant offsets in Algorithm 1."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lp_renderer import Renderer, RendererConfig
from lp_renderer.animation import AnimationOptions, driving_keypoints
from lp_renderer.editing import (
    EXPRESSION_SLIDERS,
    SLIDERS,
    PortraitEdit,
    apply_expression_offsets,
    edit_keypoints,
    edited_info,
    edited_keypoints,
    expression_offsets,
    source_ratio_targets,
)
from lp_renderer.errors import InputError
from lp_renderer.keypoints import transform_keypoints
from tests.lp_renderer.test_keypoints import random_info

X, Y, Z = 0, 1, 2

# ------------------------------------------------------------------------------------------ the table
#: spec section 10, worked out by hand for one value per slider (and per branch): {(kp, axis): expected delta}.
#: Every entry not listed must stay exactly 0.
CASES = [
    # gaze horizontal h = 12 (h > 0): [11,x] += 0.0007h, [15,x] += 0.001h
    ({"gaze_x": 12.0}, {(11, X): 0.0084, (15, X): 0.012}),
    # h = -12 (h <= 0): [11,x] += 0.001h, [15,x] += 0.0007h
    ({"gaze_x": -12.0}, {(11, X): -0.012, (15, X): -0.0084}),
    # gaze vertical u = 20: [11,y] -= 0.001u, [15,y] -= 0.001u; b = -u/2 = -10: [11,y] -= 0.001b, [13,y] += 0.0003b,
    # [15,y] -= 0.001b, [16,y] += 0.0003b
    ({"gaze_y": 20.0}, {(11, Y): -0.02 + 0.01, (15, Y): -0.02 + 0.01, (13, Y): -0.003, (16, Y): -0.003}),
    ({"gaze_y": -40.0}, {(11, Y): 0.04 - 0.02, (15, Y): 0.04 - 0.02, (13, Y): 0.006, (16, Y): 0.006}),
    # smile s = 0.5
    ({"smile": 0.5}, {(20, Y): -0.005, (14, Y): -0.01, (17, Y): 0.00325, (17, Z): 0.0015, (13, Y): -0.001375,
                      (16, Y): -0.001375, (3, Y): -0.00175, (7, Y): -0.00175}),
    ({"smile": -0.2}, {(20, Y): 0.002, (14, Y): 0.004, (17, Y): -0.0013, (17, Z): -0.0006, (13, Y): 0.00055,
                       (16, Y): 0.00055, (3, Y): 0.0007, (7, Y): 0.0007}),
    # wink w = 20
    ({"wink": 20.0}, {(11, Y): 0.02, (13, Y): -0.006, (17, X): 0.006, (17, Y): 0.006, (3, Y): -0.006}),
    # eyebrow e = 10 (e > 0): [1,y] += 0.001e, [2,y] -= 0.001e
    ({"eyebrow": 10.0}, {(1, Y): 0.01, (2, Y): -0.01}),
    # e = -10 (e <= 0): [1,x] -= 0.001e, [2,x] += 0.001e, [1,y] += 0.0003e, [2,y] -= 0.0003e
    ({"eyebrow": -10.0}, {(1, X): 0.01, (2, X): -0.01, (1, Y): -0.003, (2, Y): 0.003}),
    # pouting p = 0.05: [19,x] += p
    ({"pouting": 0.05}, {(19, X): 0.05}),
    # pursing p = 10: [14,y] += 0.001p, [3,y] -= 0.0005p, [7,y] -= 0.0005p, [17,z] -= 0.0005p
    ({"pursing": 10.0}, {(14, Y): 0.01, (3, Y): -0.005, (7, Y): -0.005, (17, Z): -0.005}),
    # grin g = 10: [20,z] -= 0.001g, [20,y] -= 0.001g, [14,y] -= 0.001g
    ({"grin": 10.0}, {(20, Z): -0.01, (20, Y): -0.01, (14, Y): -0.01}),
    # lip close <-> open o = 50: [19,y] += 0.001o, [19,z] += 0.0001o, [17,y] -= 0.0001o
    ({"lip_open": 50.0}, {(19, Y): 0.05, (19, Z): 0.005, (17, Y): -0.005}),
    # mov_x m = 0.1: [5,x] -= m (negated); mov_y: [5,y] += m
    ({"mov_x": 0.1}, {(5, X): -0.1}),
    ({"mov_y": -0.1}, {(5, Y): -0.1}),
]


@pytest.mark.parametrize(("values", "expected"), CASES, ids=[f"{k}={v}" for c in CASES for k, v in c[0].items()])
def test_offsets_match_the_spec_table(values, expected):
    got = expression_offsets(PortraitEdit(**values))
    assert got.shape == (21, 3) and got.dtype == np.float32
    want = np.zeros((21, 3))
    for (kp, axis), d in expected.items():
        want[kp, axis] = d
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-8)
    assert np.count_nonzero(got) == len(expected)  # nothing else moves


def test_offsets_add_up_and_neutral_is_zero():
    assert not np.any(expression_offsets(PortraitEdit()))
    # pose, scale and target ratios are not expression offsets
    assert not np.any(expression_offsets(PortraitEdit(pitch=5, yaw=-5, roll=3, mov_z=1.1, eye_ratio=0.3, lip_ratio=0)))
    combined = {"smile": 0.7, "wink": 12.0, "gaze_x": -8.0, "gaze_y": 30.0, "eyebrow": 5.0, "grin": 3.0,
                "lip_open": -20.0, "pursing": -5.0, "pouting": -0.03, "mov_x": -0.05, "mov_y": 0.02}
    total = sum(expression_offsets(PortraitEdit(**{k: v})) for k, v in combined.items())
    np.testing.assert_allclose(expression_offsets(PortraitEdit(**combined)), total, atol=1e-8)
    assert set(combined) == set(EXPRESSION_SLIDERS)


def _official_delta(exp: torch.Tensor, v: dict) -> torch.Tensor:
    """The official update functions (gradio_pipeline.py:46-142), transcribed: float32 tensors, in place, in the
    official order and with the official gates."""
    d = exp.clone()
    t = {k: torch.tensor(float(v.get(k, 0.0))) for k in EXPRESSION_SLIDERS}
    gx, gy = t["gaze_x"], t["gaze_y"]
    if gx != 0 or gy != 0:
        if gx > 0:
            d[0, 11, 0] += gx * 0.0007
            d[0, 15, 0] += gx * 0.001
        else:
            d[0, 11, 0] += gx * 0.001
            d[0, 15, 0] += gx * 0.0007
        d[0, 11, 1] += gy * -0.001
        d[0, 15, 1] += gy * -0.001
        blink = -gy / 2.
        d[0, 11, 1] += blink * -0.001
        d[0, 13, 1] += blink * 0.0003
        d[0, 15, 1] += blink * -0.001
        d[0, 16, 1] += blink * 0.0003
    s = t["smile"]
    if s != 0:
        for kp, ax, c in ((20, 1, -0.01), (14, 1, -0.02), (17, 1, 0.0065), (17, 2, 0.003), (13, 1, -0.00275),
                          (16, 1, -0.00275), (3, 1, -0.0035), (7, 1, -0.0035)):
            d[0, kp, ax] += s * c
    w = t["wink"]
    if w != 0:
        for kp, ax, c in ((11, 1, 0.001), (13, 1, -0.0003), (17, 0, 0.0003), (17, 1, 0.0003), (3, 1, -0.0003)):
            d[0, kp, ax] += w * c
    e = t["eyebrow"]
    if e != 0:
        if e > 0:
            d[0, 1, 1] += e * 0.001
            d[0, 2, 1] += e * -0.001
        else:
            d[0, 1, 0] += e * -0.001
            d[0, 2, 0] += e * 0.001
            d[0, 1, 1] += e * 0.0003
            d[0, 2, 1] += e * -0.0003
    if t["pouting"] != 0:
        d[0, 19, 0] += t["pouting"]
    p = t["pursing"]
    if p != 0:
        for kp, ax, c in ((14, 1, 0.001), (3, 1, -0.0005), (7, 1, -0.0005), (17, 2, -0.0005)):
            d[0, kp, ax] += p * c
    g = t["grin"]
    if g != 0:
        for kp, ax, c in ((20, 2, -0.001), (20, 1, -0.001), (14, 1, -0.001)):
            d[0, kp, ax] += g * c
    o = t["lip_open"]
    if o != 0:
        for kp, ax, c in ((19, 1, 0.001), (19, 2, 0.0001), (17, 1, -0.0001)):
            d[0, kp, ax] += o * c
    if t["mov_x"] != 0:
        d[0, 5, 0] += -t["mov_x"]
    if t["mov_y"] != 0:
        d[0, 5, 1] += t["mov_y"]
    return d


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_offsets_are_bit_identical_to_the_official_float32_updates(seed):
    rng = np.random.default_rng(seed)
    values = {k: float(rng.uniform(SLIDERS[k].minimum, SLIDERS[k].maximum)) for k in EXPRESSION_SLIDERS}
    values["gaze_x"] = [7.3, -7.3, 0.0][seed]  # both branches and the gate
    values["eyebrow"] = [-4.2, 4.2, 0.0][seed]
    exp = random_info(seed=seed).exp
    assert torch.equal(apply_expression_offsets(exp, PortraitEdit(**values)), _official_delta(exp, values))


# ------------------------------------------------------------------------------------------ ranges
OFFICIAL_RANGES = {"eye_ratio": (0, 0.8), "lip_ratio": (0, 0.8), "pitch": (-15, 15), "yaw": (-25, 25),
                   "roll": (-15, 15), "mov_x": (-0.19, 0.19), "mov_y": (-0.19, 0.19), "mov_z": (0.9, 1.2),
                   "pouting": (-0.09, 0.09), "pursing": (-20, 15), "grin": (0, 15), "lip_open": (-90, 120),
                   "smile": (-0.3, 1.3), "wink": (0, 39), "eyebrow": (-30, 30), "gaze_x": (-30, 30),
                   "gaze_y": (-63, 63)}


def test_slider_ranges_are_the_official_ones():
    assert {k: (s.minimum, s.maximum) for k, s in SLIDERS.items()} == OFFICIAL_RANGES
    for name, (lo, hi) in OFFICIAL_RANGES.items():
        assert getattr(PortraitEdit(**{name: lo}), name) == lo and getattr(PortraitEdit(**{name: hi}), name) == hi
        for bad in (lo - 0.01, hi + 0.01, float("nan"), "x", True):
            with pytest.raises(InputError, match=f"^{name} must be between {lo:g} and {hi:g}"):
                PortraitEdit(**{name: bad})
    assert PortraitEdit(eye_ratio=None).is_neutral and not PortraitEdit(eye_ratio=0.3).is_neutral
    with pytest.raises(InputError):
        PortraitEdit(smile=None)
    assert PortraitEdit(smile=1).smile == 1.0 and isinstance(PortraitEdit(smile=1).smile, float)


# ------------------------------------------------------------------------------------------ composition
def _rotation_np(p, y, r):
    """Spec section 4: degrees -> (Rz Ry Rx)^T for row vectors, in float64."""
    p, y, r = np.radians([p, y, r])
    rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    return (rz @ ry @ rx).T


@pytest.mark.parametrize("seed", [0, 1])
def test_composition_matches_a_numpy_rederivation(seed):
    info = random_info(seed=seed)
    edit = PortraitEdit(pitch=7, yaw=-12, roll=3, mov_x=0.05, mov_y=-0.1, mov_z=1.1, smile=0.8, gaze_x=-9, wink=4)
    x_d = edit_keypoints(info, edit).numpy()[0]
    d = {k: np.asarray(v, np.float64)[0] for k, v in info.as_numpy().items()}
    r_s = _rotation_np(d["pitch"][0], d["yaw"][0], d["roll"][0])
    r_user = _rotation_np(d["pitch"][0] + 7, d["yaw"][0] - 12, d["roll"][0] + 3)
    r_new = (r_user @ r_s.T) @ r_s
    delta = d["exp"] + expression_offsets(edit).astype(np.float64)
    want = 1.1 * d["scale"][0] * (d["kp"] @ r_new + delta) + d["t"]  # t with tz (the tab's quirk)
    np.testing.assert_allclose(x_d, want, rtol=0, atol=2e-6)
    assert np.allclose(r_new, r_user)  # R_d_new reduces to R(p + dp, y + dy, r + dr)


def test_neutral_edit_is_the_source_plus_tz():
    info = random_info(seed=3)
    x_d = edit_keypoints(info, PortraitEdit())
    diff = (x_d - transform_keypoints(info))[0]
    assert torch.allclose(diff[:, :2], torch.zeros(21, 2), atol=1e-6)
    assert torch.allclose(diff[:, 2], info.t[0, 2].expand(21), atol=1e-6)


def test_edited_info_moves_the_motion_parameters():
    info = random_info(b=2, seed=4)
    edit = PortraitEdit(pitch=-5, yaw=8, roll=2, mov_z=0.95, smile=0.5, mov_x=0.1)
    e = edited_info(info, edit)
    assert torch.allclose(e.pitch, info.pitch - 5) and torch.allclose(e.yaw, info.yaw + 8)
    assert torch.allclose(e.roll, info.roll + 2) and torch.allclose(e.scale, info.scale * 0.95)
    assert torch.equal(e.kp, info.kp) and torch.equal(e.t, info.t)
    assert torch.allclose(e.exp - info.exp, torch.from_numpy(expression_offsets(edit)).expand(2, 21, 3), atol=1e-7)
    assert edited_info(info, PortraitEdit()) is info


# ------------------------------------------------------------------------------------------ with networks
@pytest.fixture(scope="module")
def renderer():
    torch.set_num_threads(1)
    return Renderer.from_config(RendererConfig.tiny(), seed=2, device="cpu")


@pytest.fixture(scope="module")
def source(renderer):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)
    return renderer.prepare_source(img, eye_ratios=(0.322, 0.298), lip_ratio=0.044)


def test_retargeting_only_when_a_target_differs_from_the_rounded_source_ratio(renderer, source):
    assert source_ratio_targets(source) == (0.31, 0.04)
    base = edit_keypoints(source.info, PortraitEdit(smile=0.3))
    same = edited_keypoints(renderer, source, PortraitEdit(smile=0.3, eye_ratio=0.31, lip_ratio=0.04),
                            stitching=False)
    assert torch.equal(same, base)  # the tab's initial values: no retargeting
    eyes = edited_keypoints(renderer, source, PortraitEdit(smile=0.3, eye_ratio=0.5), stitching=False)
    want = base + renderer.retarget_eyes(source.x_s, np.array([[0.322, 0.298, 0.5]], np.float32))
    assert torch.allclose(eyes, want, atol=1e-7) and not torch.allclose(eyes, base, atol=1e-5)
    lip = edited_keypoints(renderer, source, PortraitEdit(lip_ratio=0.3), stitching=True)
    want = renderer.stitch(source.x_s, edit_keypoints(source.info, PortraitEdit())
                           + renderer.retarget_lip(source.x_s, np.array([[0.044, 0.3]], np.float32)))
    assert torch.allclose(lip, want, atol=1e-6)


def test_sliders_are_constant_offsets_in_algorithm_1(renderer, source):
    """A driving video whose frames equal its first frame leaves the portrait as it is; with an edit the result is
    the edited portrait (Eq. 2 of the edited motion), stitched, in every frame and every region."""
    driving = random_info(b=3, seed=5)
    still = driving[0:1].map(lambda t: t.expand(3, *t.shape[1:]))
    edit = PortraitEdit(smile=0.6, gaze_x=10, pitch=4, mov_z=1.05)
    want = renderer.stitch(source.x_s, transform_keypoints(edited_info(source.info, edit)))
    for region in ("all", "exp", "pose", "lip", "eyes"):
        got = driving_keypoints(renderer, source, still, driving[0], AnimationOptions(region=region), edit=edit)
        assert torch.allclose(got, want.expand(3, 21, 3), atol=1e-5), region
    # moving frames: the edited result is the unedited one shifted by what the edit adds (expression offsets add
    # linearly; pose and scale act on top of the driven pose), and a neutral edit changes nothing
    plain = driving_keypoints(renderer, source, driving, driving[0], AnimationOptions(stitching=False))
    neutral = driving_keypoints(renderer, source, driving, driving[0], AnimationOptions(stitching=False),
                                edit=PortraitEdit())
    assert torch.equal(plain, neutral)
    smile = driving_keypoints(renderer, source, driving, driving[0], AnimationOptions(stitching=False),
                              edit=PortraitEdit(smile=0.6))
    offset = torch.from_numpy(expression_offsets(PortraitEdit(smile=0.6)))
    scale = source.info.scale * driving.scale / driving.scale[:1]  # (3, 1): Eq. 7's scale per frame
    assert torch.allclose(smile - plain, scale[:, :, None] * offset, atol=1e-5)
    with pytest.raises(InputError, match="still portrait"):
        driving_keypoints(renderer, source, driving, driving[0], edit=PortraitEdit(eye_ratio=0.3))
