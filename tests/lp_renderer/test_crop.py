"""lp_renderer.crop: LivePortrait crop geometry, driving-video crops, paste-back."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from lp_renderer.crop import (
    CROP_DSIZE,
    DRIVING_CROP,
    SOURCE_CROP,
    Crop,
    crop_face,
    crop_from_landmarks,
    crop_space_mask,
    crops_for_frames,
    paste_back,
    paste_mask,
    smooth_crops,
)
from lp_renderer.errors import InputError, NoFaceError
from lp_renderer.faces import DlibBackend, Face
from lp_renderer.image_io import load_image
from tests.conftest import MIN_PORTRAITS, manifest_files

REPO = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("AUDIO2LP_TEST_DATA", REPO.parent / "shared" / "data"))


def _data(sub: str) -> Path:
    path = DATA / sub
    if not path.exists():
        pytest.skip(f"real test data not found at {path} (set AUDIO2LP_TEST_DATA)")
    return path


def _face_points(center=(0.0, 0.0), scale=1.0, angle_deg=0.0) -> np.ndarray:
    """An upright iBUG-68-like point set (eyes at y=-30, mouth corners at y=30, chin at y=65), then
    scaled, rotated counter-clockwise on screen by ``angle_deg`` and moved to ``center``."""
    p = np.zeros((68, 2))
    t = np.linspace(-1, 1, 17)
    p[0:17] = np.stack([70 * t, -10 + 75 * np.sqrt(1 - 0.8 * t**2)], 1)
    p[17:27] = np.stack([np.r_[np.linspace(-55, -15, 5), np.linspace(15, 55, 5)], np.full(10, -45.0)], 1)
    p[27:31] = np.stack([np.zeros(4), np.linspace(-30, 0, 4)], 1)
    p[31:36] = np.stack([np.linspace(-12, 12, 5), np.full(5, 8.0)], 1)
    for base, x0 in ((36, -50.0), (42, 20.0)):
        p[base : base + 6] = [(x0, -30), (x0 + 10, -34), (x0 + 20, -34), (x0 + 30, -30), (x0 + 20, -26),
                              (x0 + 10, -26)]
    p[48:60] = np.stack([25 * np.cos(np.linspace(np.pi, -np.pi, 13)[:-1]),
                         30 + 7 * np.sin(np.linspace(np.pi, -np.pi, 13)[:-1])], 1)
    p[48], p[54] = (-25, 30), (25, 30)
    p[60:68] = np.stack([18 * np.cos(np.linspace(np.pi, -np.pi, 9)[:-1]), np.full(8, 30.0)], 1)
    th = math.radians(angle_deg)
    # on screen (y down) a counter-clockwise rotation by th is [[c, s], [-s, c]]
    rot = np.array([[math.cos(th), math.sin(th)], [-math.sin(th), math.cos(th)]])
    return (p * scale) @ rot.T + np.asarray(center)


def _face(points: np.ndarray) -> Face:
    lo, hi = points.min(0), points.max(0)
    return Face((lo[0], lo[1], hi[0], hi[1]), 1.0, points, "dlib68")


def _astronaut() -> np.ndarray:
    data = pytest.importorskip("skimage.data", reason="scikit-image provides the astronaut test portrait")
    return data.astronaut()


# --------------------------------------------------------------------------------------------------
# geometry


def test_from_params_matrices_are_exact_inverses():
    c = Crop.from_params((123.4, 567.8), 301.5, 17.0)
    h = np.vstack([c.M_o2c, [0, 0, 1]]) @ np.vstack([c.M_c2o, [0, 0, 1]])
    np.testing.assert_allclose(h, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(c.to_crop([c.center]), [[256.0, 256.0]], atol=1e-9)
    s = 512 / 301.5
    np.testing.assert_allclose(np.linalg.det(c.M_o2c[:, :2]), s * s, rtol=1e-12)
    with pytest.raises(ValueError):
        Crop.from_params((0, 0), 0.0)
    assert not c.M_o2c.flags.writeable


def test_official_formula_upright():
    pts = _face_points(center=(200.0, 180.0), scale=2.0)
    f = _face(pts)
    crop = crop_face(f)
    assert crop.angle_deg == pytest.approx(0.0, abs=1e-9)
    lo, hi = pts.min(0), pts.max(0)
    size = max(hi - lo) * 2.3
    assert crop.size == pytest.approx(size)
    # centre: box centre moved up (towards the forehead) by 0.125 * size
    assert crop.center == pytest.approx(((lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2 - 0.125 * size))
    s = 512 / size
    expected = np.array([[s, 0, 256 - s * crop.center[0]], [0, s, 256 - s * crop.center[1]]])
    np.testing.assert_allclose(crop.M_o2c, expected, atol=1e-9)


@pytest.mark.parametrize("angle", [-35.0, -8.0, 12.0, 40.0, 170.0])
def test_rotation_invariance(angle):
    """A rotated, scaled, moved face gives the same crop content: landmarks land on the same crop
    pixels, the eyes level, and angle_deg reports the roll."""
    ref = crop_face(_face(_face_points(center=(300, 300), scale=1.0)))
    pts = _face_points(center=(640.0, 410.0), scale=2.5, angle_deg=angle)
    crop = crop_face(_face(pts))
    base = _face_points()
    # (Face stores float32 landmarks, hence the 1e-3 tolerance)
    np.testing.assert_allclose(crop.to_crop(pts), ref.to_crop(base + (300, 300)), atol=1e-3)
    eyes = crop.to_crop([_face(pts).eye_left_center, _face(pts).eye_right_center])
    assert eyes[0, 1] == pytest.approx(eyes[1, 1], abs=1e-3) and eyes[0, 0] < eyes[1, 0]
    # official sign: positive when the face is rolled clockwise on screen
    assert crop.angle_deg == pytest.approx(-angle, abs=1e-4)
    assert crop.size == pytest.approx(ref.size * 2.5)


def test_rotate_false_keeps_axes_but_not_size():
    pts = _face_points(center=(400, 400), scale=1.5, angle_deg=20)
    rot, flat = crop_face(_face(pts)), crop_face(_face(pts), rotate=False)
    assert flat.angle_deg == 0.0
    assert flat.size == pytest.approx(rot.size) and flat.center == pytest.approx(rot.center)
    np.testing.assert_allclose(flat.M_o2c[:, :2], np.eye(2) * 512 / flat.size, atol=1e-12)


def test_degenerate_inputs():
    pts = _face_points()
    c = crop_from_landmarks(pts, (5.0, 5.0), (5.0, 5.0))  # eye == mouth: official falls back to upright
    assert c.angle_deg == 0.0
    with pytest.raises(ValueError):
        crop_from_landmarks(np.full((68, 2), 3.0), (0, 0), (0, 1))
    with pytest.raises(ValueError):
        crop_from_landmarks(np.full((68, 2), np.nan), (0, 0), (0, 1))


def test_driving_and_source_presets():
    assert SOURCE_CROP == {"scale": 2.3, "vy_ratio": -0.125, "rotate": True}
    assert DRIVING_CROP == {"scale": 2.2, "vy_ratio": -0.1, "rotate": False}


def test_matrix_at_other_sizes_follows_pixel_centres():
    c = Crop.from_params((100, 80), 200.0, 10.0)
    m256 = c.matrix(256)
    p = np.array([[90.0, 70.0], [130.0, 95.0]])
    q512 = c.to_crop(p)
    np.testing.assert_allclose(c.to_crop(p, 256), (q512 - 0.5) / 2, atol=1e-12)
    np.testing.assert_allclose(c.to_original(c.to_crop(p, 256), 256), p, atol=1e-9)
    np.testing.assert_allclose(m256, c.matrix(256))
    np.testing.assert_allclose(c.inverse_matrix(512), c.M_c2o)


def _blob_image(h, w, p, sigma=2.0):
    yy, xx = np.mgrid[:h, :w]
    g = np.exp(-((xx - p[0]) ** 2 + (yy - p[1]) ** 2) / (2 * sigma**2))
    return np.dstack([g, g, g]).astype(np.float32)


def _centroid(img):
    g = img[..., 0].astype(np.float64)
    g = np.where(g > g.max() * 0.05, g, 0)
    yy, xx = np.mgrid[: g.shape[0], : g.shape[1]]
    return np.array([(g * xx).sum() / g.sum(), (g * yy).sum() / g.sum()])


@pytest.mark.parametrize("direct", [False, True])
@pytest.mark.parametrize("dsize", [256, 512])
def test_warp_follows_to_crop(direct, dsize):
    """A Gaussian dot in the original lands exactly where to_crop says, for both warp paths."""
    crop = Crop.from_params((160.0, 150.0), 420.0, 23.0)
    p = np.array([[201.3, 117.7]])
    img = _blob_image(300, 320, p[0], sigma=6.0)
    out = crop.warp(img, dsize, direct=direct)
    assert out.shape == (dsize, dsize, 3)
    np.testing.assert_allclose(_centroid(out), crop.to_crop(p, dsize)[0], atol=0.05)


def test_official_and_direct_warps_agree():
    img = _astronaut()
    crop = Crop.from_params((220.0, 140.0), 300.0, -7.0)
    a = crop.warp(img, 256).astype(np.float64)
    b = crop.warp(img, 256, direct=True).astype(np.float64)
    assert np.abs(a - b).mean() < 3.0


# --------------------------------------------------------------------------------------------------
# driving-video crops


def test_smooth_crops_constant_and_none():
    c = Crop.from_params((10, 20), 100.0, 5.0)
    out = smooth_crops([c] * 7, 5)
    for o in out:
        np.testing.assert_allclose(o.M_o2c, c.M_o2c, atol=1e-9)
    assert smooth_crops([], 5) == []
    assert smooth_crops([c, c], 1) == [c, c]
    crops = [Crop.from_params((i, 0), 100.0 + i, 0.0) for i in range(5)]
    glob = smooth_crops(crops, None)
    assert all(g is glob[0] for g in glob)
    assert glob[0].center == pytest.approx((2.0, 0.0)) and glob[0].size == pytest.approx(102.0)


def test_smooth_crops_reduces_jitter_and_keeps_ends():
    rng = np.random.default_rng(0)
    n = 60
    path = np.linspace(0, 30, n)
    crops = [Crop.from_params((100 + path[i] + rng.normal(0, 2), 80 + rng.normal(0, 2)),
                              200 + rng.normal(0, 4), rng.normal(0, 2)) for i in range(n)]
    sm = smooth_crops(crops, 7)
    raw_c = np.array([c.center for c in crops])
    sm_c = np.array([c.center for c in sm])
    assert np.diff(sm_c, axis=0).std() < 0.5 * np.diff(raw_c, axis=0).std()
    assert np.std([c.angle_deg for c in sm]) < 0.6 * np.std([c.angle_deg for c in crops])
    # the slow drift survives: no lag at the ends
    assert sm_c[0, 0] == pytest.approx(raw_c[:4, 0].mean())
    assert sm_c[-1, 0] == pytest.approx(raw_c[-4:, 0].mean())


def test_smooth_crops_unwraps_angles():
    crops = [Crop.from_params((0, 0), 100.0, a) for a in (178.0, -178.0, 179.0, -179.0)]
    sm = smooth_crops(crops, None)[0]
    assert abs(((sm.angle_deg + 180) % 360) - 180) > 178.0


def test_crops_for_frames_holds_last_good_and_raises_without_faces():
    f1 = _face(_face_points(center=(100, 100)))
    f2 = _face(_face_points(center=(120, 100)))
    crops = crops_for_frames([None, None, f1, None, f2, None], window=1)
    c1, c2 = crop_face(f1, **DRIVING_CROP), crop_face(f2, **DRIVING_CROP)
    assert [c.center for c in crops] == [c1.center, c1.center, c1.center, c1.center, c2.center, c2.center]
    assert all(c.angle_deg == 0.0 for c in crops)
    assert len(crops_for_frames([None, f1, None], window=5)) == 3
    with pytest.raises(NoFaceError, match="any frame"):
        crops_for_frames([None, None], window=5)


def test_streaming_crops_cap_leading_frames_without_a_face():
    """Leading faceless frames are buffered until the first face; max_leading bounds that buffer."""
    from lp_renderer.crop import iter_crops_for_frames

    f1 = _face(_face_points(center=(100, 100)))
    items = [(i, None) for i in range(5)] + [(5, f1)]
    assert [i for i, _ in iter_crops_for_frames(iter(items), max_leading=5)] == list(range(6))
    consumed = []

    def endless():
        for i in range(10**9):
            consumed.append(i)
            yield i, None

    with pytest.raises(NoFaceError, match="first 100 frames"):
        list(iter_crops_for_frames(endless(), max_leading=100))
    assert len(consumed) == 101


def test_streaming_crops_equal_smoothing_the_filled_sequence():
    """iter_crops_for_frames emits each frame as soon as it can and gives the very same crops as
    smoothing the whole hold-last-good sequence at once."""
    from lp_renderer.crop import iter_crops_for_frames, smooth_crops

    rng = np.random.default_rng(0)
    faces = [None if rng.random() < 0.3 else
             _face(_face_points(center=rng.uniform(80, 120, 2), scale=rng.uniform(0.9, 1.1),
                                angle_deg=rng.uniform(-170, 170)))
             for _ in range(40)]
    faces[0] = faces[1] = None
    first_face = next(i for i, f in enumerate(faces) if f is not None)
    filled, last = [], None
    first_good = next(crop_face(f, **DRIVING_CROP) for f in faces if f is not None)
    for f in faces:
        if f is not None:
            last = crop_face(f, **DRIVING_CROP)
        filled.append(last or first_good)
    for window in (1, 2, 5, 9):
        expected = smooth_crops(filled, window)
        seen = []

        def source(window=window, seen=seen):
            for i, f in enumerate(faces):
                seen.append(i)
                yield i, f

        out = []
        for i, c in iter_crops_for_frames(source(), window=window):
            # look-ahead is bounded: frame i is out once frame i + window // 2 (and the first face) was read
            assert seen[-1] <= max(i + window // 2, first_face) or seen[-1] == len(faces) - 1
            out.append((i, c))
        assert [i for i, _ in out] == list(range(len(faces)))
        for (_, c), e in zip(out, expected):
            np.testing.assert_allclose(c.M_o2c, e.M_o2c, atol=1e-9)


# --------------------------------------------------------------------------------------------------
# paste-back


def test_crop_space_mask_shape():
    """Face-shaped: a feathered superellipse, 1 over head, hair and neck, 0 in the crop's corners."""
    m = crop_space_mask()
    assert m.shape == (512, 512) and m.dtype == np.float32
    assert m[256, 256] == 1.0 and m[0, 0] == 0.0 and m[511, 511] == 0.0
    # 48-px linear feather towards the middle of each side: the pixel centre 8.5 px in -> 8.5 / 48
    assert m[256, 8] == pytest.approx(8.5 / 48, abs=1e-6)
    assert m[256, 0] > 0 and m[256, 48] == 1.0 and m[256, 47] == pytest.approx(47.5 / 48, abs=1e-6)
    assert np.all(np.diff(m[256, :256]) >= 0) and np.all(np.diff(np.diag(m)[:256]) >= 0)
    # face-shaped, not a square: the corners (shoulders, background) come from the original
    assert m[40, 40] == 0.0 and m[470, 470] == 0.0 and m[60, 60] < m[60, 256]
    # the landmarks of every project portrait fall in crop x 145-367, y 209-431: fully covered, and so is
    # the hair above them and the neck below
    assert np.all(m[209:432, 145:368] == 1.0)
    assert np.all(m[60:460, 256] == 1.0) and np.all(m[300, 60:452] == 1.0)
    assert 0.5 < (m == 1.0).mean() < 0.65
    np.testing.assert_allclose(m, m[::-1], atol=1e-6)
    np.testing.assert_allclose(m, m.T, atol=1e-6)
    # other sizes follow the 512 template; feather 0 gives a hard mask; margin insets it
    small = crop_space_mask(256)
    assert np.abs(small - cv2.resize(m, (256, 256), interpolation=cv2.INTER_AREA)).max() < 0.02
    assert set(np.unique(crop_space_mask(feather=0))) == {0.0, 1.0}
    assert crop_space_mask(margin=20)[256, 19] == 0.0


def test_shared_paste_masks_split_overlaps():
    """Two overlapping crops: neither face covers the other's centre, the weights add up to the larger
    alpha, and where only one crop reaches the mask is the plain one."""
    from lp_renderer.crop import shared_paste_masks

    shape = (300, 420)
    a, b = Crop.from_params((150.0, 150.0), 240.0, 5.0), Crop.from_params((230.0, 150.0), 240.0, -8.0)
    plain = [paste_mask(a, shape), paste_mask(b, shape)]
    shared = shared_paste_masks([a, b], shape)
    assert [m.region for m in shared] == [m.region for m in plain]
    assert [m.crop for m in shared] == [a, b]
    overlap = (plain[0].full() > 0) & (plain[1].full() > 0)
    assert overlap.sum() > 0.1 * overlap.size  # the crops overlap a lot
    orig = np.full(shape + (3,), 128, np.uint8)
    red, blue = np.zeros((512, 512, 3), np.uint8), np.zeros((512, 512, 3), np.uint8)
    red[..., 0] = 255
    blue[..., 2] = 255

    def composite(masks):
        out = paste_back(red, a, orig, masks[0])
        return paste_back(blue, b, out, masks[1])

    naive, ours = composite(plain), composite(shared)
    # sequential full masks: the later face covers the earlier one's centre
    assert tuple(naive[150, 150]) == (0, 0, 255)
    # shared: each face keeps its own centre, and the hand-over is half way between them
    assert tuple(ours[150, 150]) == (255, 0, 0) and tuple(ours[150, 230]) == (0, 0, 255)
    assert abs(int(ours[150, 190, 0]) - int(ours[150, 190, 2])) <= 8
    # the weights sum to max(alpha_a, alpha_b): green (0 in both renders) is 128 (1 - w_red - w_blue)
    total = np.maximum(plain[0].full(), plain[1].full())
    assert np.abs((1 - ours[..., 1] / 128.0) - total).max() < 0.02
    # where only one crop reaches, the alpha is exactly the plain one
    only_a = (plain[0].full() > 0) & (plain[1].full() == 0)
    assert only_a.any()
    np.testing.assert_array_equal(shared[0].full()[only_a], plain[0].full()[only_a])
    # one crop, or crops far apart: the plain masks
    assert np.array_equal(shared_paste_masks([a], shape)[0].alpha, plain[0].alpha)
    far = Crop.from_params((1000.0, 150.0), 240.0, 0.0)
    wide = (300, 1200)
    sep = shared_paste_masks([a, far], wide)
    np.testing.assert_array_equal(sep[0].alpha, paste_mask(a, wide).alpha)
    np.testing.assert_array_equal(sep[1].alpha, paste_mask(far, wide).alpha)


def _linear_image(h, w):
    """Steep (2 levels / pixel) linear ramps, so that a quarter-pixel misplacement changes the values."""
    yy, xx = np.mgrid[:h, :w]
    img = np.dstack([xx * 2.0 + 5, 250 - yy * 2.0, xx + yy])
    assert img.min() >= 0 and img.max() <= 255
    return img.astype(np.uint8)


def _interior(shape, border=2):
    m = np.zeros(shape[:2], bool)
    m[border:-border, border:-border] = True
    return m


def test_paste_back_geometry_is_exact_on_a_linear_image():
    """Bilinear interpolation reproduces a linear image, so warping the crop out (float) and pasting it
    back must return the original where alpha == 1, to OpenCV's 1/32-pixel coordinate rounding (measured:
    max 0 levels). A crop map off by a quarter pixel fails it (measured mean error 0.33 levels)."""
    orig = _linear_image(120, 124)
    face = _face(_face_points(center=(62, 58), scale=0.45, angle_deg=14.0))
    crop = crop_face(face)
    assert crop.size < CROP_DSIZE  # the crop upsamples, as for typical portraits
    rendered = crop.warp(orig.astype(np.float32), 512) / 255.0
    mask = paste_mask(crop, orig.shape)
    out = paste_back(rendered, crop, orig, mask)
    full = mask.full()
    sel = (full == 1.0) & _interior(orig.shape, 2)
    assert sel.sum() > 0.3 * sel.size
    err = np.abs(out.astype(int) - orig.astype(int))[sel]
    assert err.max() <= 1 and err.mean() < 0.05, (err.max(), err.mean())

    shifted = Crop.from_params((crop.center[0] + 0.25, crop.center[1]), crop.size, crop.angle_deg)
    bad = paste_back(rendered, shifted, orig, paste_mask(shifted, orig.shape))
    bad_err = np.abs(bad.astype(int) - orig.astype(int))[sel]
    assert bad_err.mean() > 0.2, bad_err.mean()


def test_paste_back_identity_outside_mask_and_alpha_blend():
    orig = _astronaut()
    crop = Crop.from_params((220.0, 130.0), 260.0, 9.0)
    mask = paste_mask(crop, orig.shape)
    rendered = np.full((512, 512, 3), 17, np.uint8)
    out = paste_back(rendered, crop, orig, mask)
    full = mask.full()
    assert np.array_equal(out[full == 0], orig[full == 0])
    x0, y0, x1, y1 = mask.region
    assert (x1 - x0) * (y1 - y0) < orig.shape[0] * orig.shape[1]  # only the crop's bounds are touched
    outside = np.ones(orig.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    assert np.all(full[outside] == 0)
    inside = full == 1.0
    assert inside.sum() > 0 and np.all(out[inside] == 17)
    feather = (full > 0.05) & (full < 0.95)
    expected = np.rint(full[feather, None] * 17 + (1 - full[feather, None]) * orig[feather])
    assert np.abs(out[feather].astype(int) - expected).max() <= 1


def test_paste_back_roundtrip_real_portrait():
    """Warping the unmodified crop out at 512 (uint8, as the renderer's output would be) and pasting it
    back reproduces the portrait where alpha == 1. The residual is the double bilinear resampling
    (forward at s = 512 / size, then back: a slight blur) plus two uint8 roundings; for the astronaut
    (crop size 214 px, s = 2.4) we measured mean 1.08, 99th percentile 9 and max 61 levels (the max on
    the sharpest edges, e.g. the flag's stripes)."""
    orig = _astronaut()
    face = DlibBackend().detect(orig)[0]
    crop = crop_face(face)
    rendered = crop.warp(orig, 512)
    out = paste_back(rendered, crop, orig)
    full = paste_mask(crop, orig.shape).full()
    sel = (full == 1.0) & _interior(orig.shape, 2)
    err = np.abs(out.astype(int) - orig.astype(int))[sel]
    assert err.mean() < 1.5 and np.percentile(err, 99) <= 12, (err.mean(), np.percentile(err, 99))
    assert np.array_equal(out[full == 0], orig[full == 0])


def test_region_warp_equals_whole_image_warp():
    orig = _astronaut()
    crop = Crop.from_params((230.5, 150.25), 333.3, -12.0)
    rendered = np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    mask = paste_mask(crop, orig.shape)
    ours = paste_back(rendered, crop, orig, mask)
    # reference: warp the whole frame, as the official code does
    h, w = orig.shape[:2]
    template = crop_space_mask()
    alpha = np.clip(cv2.warpAffine(template, np.array(crop.M_c2o), (w, h), flags=cv2.INTER_LINEAR), 0, 1)
    warped = cv2.warpAffine(rendered, np.array(crop.M_c2o), (w, h), flags=cv2.INTER_LINEAR)
    ref = np.clip(np.rint(alpha[..., None] * warped + (1 - alpha[..., None]) * orig), 0, 255).astype(np.uint8)
    np.testing.assert_allclose(mask.full(), alpha, atol=1e-5)
    diff = np.abs(ours.astype(int) - ref.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


def test_paste_back_float_and_uint8_agree_and_validation():
    orig = _astronaut()
    crop = Crop.from_params((220.0, 130.0), 260.0, 0.0)
    rendered = np.random.default_rng(1).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    mask = paste_mask(crop, orig.shape)
    a = paste_back(rendered, crop, orig, mask)
    b = paste_back(rendered.astype(np.float32) / 255.0, crop, orig, mask)
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    # a 256 render pastes to the same place (its own pixel grid)
    small = cv2.resize(rendered, (256, 256), interpolation=cv2.INTER_AREA)
    c = paste_back(small, crop, orig, mask)
    assert np.abs(c.astype(int) - a.astype(int)).mean() < 20
    with pytest.raises(InputError):
        paste_back(rendered[:, :300], crop, orig, mask)
    with pytest.raises(InputError):
        paste_back(rendered, crop, orig.astype(np.float32), mask)
    with pytest.raises(ValueError):
        paste_back(rendered, Crop.from_params((1, 1), 10.0), orig, mask)


def test_crop_partly_or_fully_outside_the_image():
    orig = _astronaut()
    corner = Crop.from_params((5.0, 500.0), 400.0, 30.0)
    out = paste_back(np.zeros((512, 512, 3), np.uint8), corner, orig)
    assert out.shape == orig.shape
    away = Crop.from_params((-2000.0, -2000.0), 100.0, 0.0)
    mask = paste_mask(away, orig.shape)
    assert mask.alpha.size == 0
    assert np.array_equal(paste_back(np.zeros((512, 512, 3), np.uint8), away, orig, mask), orig)


def test_paste_back_full_resolution_speed():
    h = w = 3511
    orig = np.zeros((h, w, 3), np.uint8)
    orig[::7] = 200
    crop = Crop.from_params((1750.0, 1600.0), 3500.0, 4.0)  # a near-full-frame crop, as in hallo__7.jpg
    rendered = np.full((512, 512, 3), 90, np.uint8)
    t = time.perf_counter()
    mask = paste_mask(crop, orig.shape)
    t_mask = time.perf_counter() - t
    t = time.perf_counter()
    out = paste_back(rendered, crop, orig, mask)
    t_paste = time.perf_counter() - t
    assert out[1750, 1750, 0] == 90
    # measured on 2 CPU cores: mask ~0.03 s, paste ~0.12 s; generous bounds against regressions
    assert t_mask < 1.0 and t_paste < 1.5, (t_mask, t_paste)


# --------------------------------------------------------------------------------------------------
# real data


@pytest.mark.realdata
def test_every_portrait_crop_contains_eyes_and_mouth():
    backend = DlibBackend()
    for path in manifest_files(DATA, "portraits", MIN_PORTRAITS):
        img = load_image(path)
        faces = backend.detect(img)
        assert faces, path.name
        f = faces[0]
        crop = crop_face(f)
        c256 = crop.warp(img, 256)
        assert c256.shape == (256, 256, 3) and c256.dtype == np.uint8
        pts = crop.to_crop(f.landmarks, 256)
        assert np.all((pts > 16) & (pts < 240)), path.name
        eyes_mouth = crop.to_crop([f.eye_left_center, f.eye_right_center, f.mouth_center], 256)
        assert np.all((eyes_mouth > 64) & (eyes_mouth < 192)), path.name
        # LivePortrait framing (measured over the portraits: eyes at y 117-133, mouth at y 170-187, eye
        # mid-point at x 110-145 of 256): eyes near the middle, mouth below, face roughly centred
        assert 100 < eyes_mouth[0, 1] < 150 and 150 < eyes_mouth[2, 1] < 205, path.name
        assert abs(eyes_mouth[:2, 0].mean() - 128) < 30, path.name


@pytest.mark.realdata
def test_driving_video_crops_are_steady():
    iio = pytest.importorskip("imageio.v3")
    from lp_renderer.faces import faces_in_frames

    frames = [f for _, f in zip(range(40), iio.imiter(_data("talking/Talking-Face_PC-AVS__00086.mp4")))]
    faces = faces_in_frames(DlibBackend(), frames)
    raw = crops_for_frames(faces, window=1)
    smooth = crops_for_frames(faces, window=5)
    jitter_raw = np.abs(np.diff([c.center for c in raw], axis=0)).mean()
    jitter_smooth = np.abs(np.diff([c.center for c in smooth], axis=0)).mean()
    assert jitter_smooth < 0.6 * jitter_raw
    crops256 = [c.warp(f, 256, resize=cv2.INTER_LINEAR) for c, f in zip(smooth, frames)]
    assert all(c.shape == (256, 256, 3) for c in crops256)
