"""The 70-d motion layout, normalisation stats, resampling and the motion-template file."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from audio2lp.models.motion import (
    EXP,
    EYE_DIMS,
    LIP_DIMS,
    MOTION_DIM,
    PITCH,
    ROLL,
    SCALE,
    TEMPLATE_FORMAT,
    YAW,
    MotionStats,
    MotionTemplate,
    T,
    load_motion_template,
    pack_motion,
    resample_motion,
    save_motion_template,
    unpack_motion,
)
from lp_renderer.errors import InputError


def _parts(n=5, seed=0):
    r = np.random.default_rng(seed)
    return dict(exp=r.normal(size=(n, 21, 3)), pitch=r.normal(size=n) * 10, yaw=r.normal(size=n) * 10,
                roll=r.normal(size=n) * 10, t=r.normal(size=(n, 3)), scale=1 + r.normal(size=n) * 0.1)


def test_layout():
    assert (EXP, PITCH, YAW, ROLL, T, SCALE) == (slice(0, 63), 63, 64, 65, slice(66, 69), 69)
    assert LIP_DIMS[:3] == (18, 19, 20) and len(LIP_DIMS) == 18 and len(EYE_DIMS) == 15
    assert EYE_DIMS[:3] == (33, 34, 35) and not set(LIP_DIMS) & set(EYE_DIMS)
    assert max(LIP_DIMS + EYE_DIMS) < 63


def test_pack_unpack_round_trip():
    p = _parts()
    m = pack_motion(**p)
    assert m.shape == (5, MOTION_DIM) and m.dtype == np.float32
    np.testing.assert_allclose(m[:, EXP].reshape(5, 21, 3)[:, 6], p["exp"][:, 6], rtol=1e-6)
    np.testing.assert_allclose(m[:, LIP_DIMS].reshape(5, 6, 3)[:, 0], p["exp"][:, 6], rtol=1e-6)
    u = unpack_motion(m)
    for k, v in p.items():
        np.testing.assert_allclose(u[k], v, rtol=1e-6)
        assert u[k].shape == np.shape(v)
    # LivePortrait's own shapes: exp (T, 63), angles (T, 1), scale (T, 1)
    p2 = dict(p, exp=p["exp"].reshape(5, 63), pitch=p["pitch"][:, None], scale=p["scale"][:, None])
    np.testing.assert_array_equal(pack_motion(**p2), m)
    ut = unpack_motion(torch.from_numpy(m))
    assert ut["exp"].shape == (5, 21, 3) and isinstance(ut["yaw"], torch.Tensor)
    with pytest.raises(ValueError, match="t has shape"):
        pack_motion(**dict(p, t=p["t"][:4]))


def test_stats():
    r = np.random.default_rng(1)
    arrays = [r.normal(size=(n, MOTION_DIM)) * 3 + 2 for n in (7, 11)]
    arrays[0][:, 5] = arrays[1][:, 5] = 0.25  # a dim that never moves
    st = MotionStats.from_data(iter(arrays), min_std=1e-3)
    cat = np.concatenate(arrays)
    np.testing.assert_allclose(st.mean, cat.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.delete(st.std, 5), np.delete(cat.std(0), 5), rtol=1e-4)
    assert st.std[5] == pytest.approx(1e-3)
    x = cat.astype(np.float32)
    np.testing.assert_allclose(st.denormalize(st.normalize(x)), x, rtol=1e-5, atol=1e-5)
    xt = torch.from_numpy(x)
    torch.testing.assert_close(st.normalize(xt), torch.from_numpy(st.normalize(x)))
    assert MotionStats.from_dict(st.to_dict()) == st  # exact float32 round trip through JSON numbers
    with pytest.raises(dataclasses.FrozenInstanceError):
        st.mean = st.std
    with pytest.raises(ValueError):
        st.mean[0] = 1.0  # read-only
    with pytest.raises(ValueError):
        MotionStats.from_dict({"mean": [0.0] * 70})
    with pytest.raises(ValueError):
        MotionStats(np.zeros(70), np.zeros(70))


def test_resample_linear_in_time():
    t30 = np.arange(90) / 30.0  # 3 s at 30 fps
    m = np.stack([2 * t30 + 1, -t30], axis=1)  # values linear in time
    out = resample_motion(m, 30, 25)
    assert out.shape == (75, 2) and out.dtype == np.float32
    t25 = np.arange(75) / 25.0
    np.testing.assert_allclose(out, np.stack([2 * t25 + 1, -t25], axis=1), atol=1e-5)
    np.testing.assert_array_equal(resample_motion(m, 25, 25), m.astype(np.float32))
    up = resample_motion(m[:3], 30, 60, n_frames=8)  # past the last input frame: hold it
    np.testing.assert_allclose(up[-1], m[2], atol=1e-6)
    assert resample_motion(np.ones((20, 70)), 25, 30).shape == (24, 70)


def test_template_round_trip(tmp_path):
    r = np.random.default_rng(2)
    tp = MotionTemplate(r.normal(size=(10, 70)), 30.0, eye_ratio=r.random((10, 2)), lip_ratio=r.random((10, 1)),
                        kp=r.normal(size=(21, 3)))
    assert tp.lip_ratio.shape == (10,) and tp.motion.dtype == np.float32
    path = save_motion_template(tmp_path / "clip.motion", tp)  # no .npz suffix is added
    assert path == tmp_path / "clip.motion" and sorted(p.name for p in tmp_path.iterdir()) == ["clip.motion"]
    back = load_motion_template(path)
    for k in ("motion", "eye_ratio", "lip_ratio", "kp"):
        np.testing.assert_array_equal(getattr(back, k), getattr(tp, k))
    assert back.fps == 30.0
    bare = load_motion_template(save_motion_template(tmp_path / "bare.npz", MotionTemplate(tp.motion)))
    assert bare.fps == 25.0 and bare.eye_ratio is None and bare.kp is None
    rs = tp.resample(25)
    assert rs.n_frames == 8 and rs.eye_ratio.shape == (8, 2) and rs.lip_ratio.shape == (8,) and rs.fps == 25


def _npz(path, **arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


@pytest.mark.parametrize("case, match", [
    ("missing", "does not exist"),
    ("not_npz", "not an .npz"),
    ("format", "has format"),
    ("shape", "motion has shape"),
    ("nan", "NaN"),
    ("fps", "fps is"),
    ("eye", "eye_ratio has shape"),
    ("pickle", "pickled objects"),
    ("no_motion", "lacks the key 'motion'"),
])
def test_template_errors(tmp_path, case, match):
    ok = dict(format=np.array(TEMPLATE_FORMAT), motion=np.zeros((4, 70), np.float32), fps=np.array(25.0))
    p = tmp_path / "t.npz"
    if case == "not_npz":
        p.write_bytes(b"hello, not a zip")
    elif case == "format":
        _npz(p, **dict(ok, format=np.array("something-else")))
    elif case == "shape":
        _npz(p, **dict(ok, motion=np.zeros((4, 69))))
    elif case == "nan":
        _npz(p, **dict(ok, motion=np.full((4, 70), np.nan)))
    elif case == "fps":
        _npz(p, **dict(ok, fps=np.array(0.0)))
    elif case == "eye":
        _npz(p, **dict(ok, eye_ratio=np.zeros((3, 2))))
    elif case == "pickle":
        np.savez(p, **dict(ok, kp=np.array([{"a": 1}], dtype=object)))
    elif case == "no_motion":
        _npz(p, format=ok["format"], fps=ok["fps"])
    with pytest.raises(InputError, match=match):
        load_motion_template(p)


# ---------------------------------------------------------------------------------------------- hostile templates
def _npy_header(shape, dtype="<f4") -> bytes:
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def _bomb(path, frames: int, *, data_bytes: int | None = None):
    """An .npz whose ``motion`` member claims ``frames`` x 70 float32 (zeros: it compresses ~1000:1); with
    ``data_bytes`` the member holds only that much data behind the header."""
    import zipfile

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, arr in (("format", np.array(TEMPLATE_FORMAT)), ("fps", np.array(25.0))):
            with z.open(f"{name}.npy", "w") as f:
                np.lib.format.write_array(f, arr)
        with z.open("motion.npy", "w", force_zip64=True) as f:
            f.write(_npy_header((frames, MOTION_DIM)))
            left = frames * MOTION_DIM * 4 if data_bytes is None else data_bytes
            zeros = bytes(1 << 20)
            while left > 0:
                f.write(zeros[:min(left, len(zeros))])
                left -= len(zeros)
    return path


@pytest.fixture
def no_np_load(monkeypatch):
    """Fails the test if numpy starts loading the archive."""
    def refuse(*a, **k):
        raise AssertionError("np.load was called")

    monkeypatch.setattr(np, "load", refuse)


def test_a_zip_bomb_template_is_refused_before_loading(tmp_path, no_np_load):
    bomb = _bomb(tmp_path / "bomb.npz", 200_000)  # 56 MB unpacked from a ~60 kB file
    assert bomb.stat().st_size < 1_000_000
    with pytest.raises(InputError, match="motion.npy unpacks to 56.0 MB"):
        load_motion_template(bomb, max_frames=10_000)


def test_a_member_whose_header_claims_more_than_it_holds_is_refused(tmp_path, no_np_load):
    liar = _bomb(tmp_path / "liar.npz", 10**9, data_bytes=400)  # says 280 GB, holds 400 bytes
    with pytest.raises(InputError, match="claims"):
        load_motion_template(liar)


def test_template_frame_limit(tmp_path):
    path = save_motion_template(tmp_path / "t.npz", MotionTemplate(np.zeros((50, MOTION_DIM), np.float32)))
    with pytest.raises(InputError, match="50 frames.*at most 10"):
        load_motion_template(path, max_frames=10)
    assert load_motion_template(path, max_frames=50).n_frames == 50
    assert load_motion_template(path).n_frames == 50


def test_an_archive_with_too_many_members_is_refused_before_reading_them(tmp_path, no_np_load):
    import zipfile

    with zipfile.ZipFile(tmp_path / "many.npz", "w") as z:
        for i in range(5000):
            z.writestr(f"x{i}.npy", b"")
    with pytest.raises(InputError, match="5000 members"):
        load_motion_template(tmp_path / "many.npz")
