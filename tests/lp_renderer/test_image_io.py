"""lp_renderer.image_io: every kind of still image becomes HxWx3 uint8 RGB, bad files raise InputError."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from lp_renderer.errors import InputError
from lp_renderer.image_io import _apply_orientation, load_image, resize_to_limit, to_rgb_uint8
from tests.conftest import MIN_PORTRAITS, manifest_files

REPO = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("AUDIO2LP_TEST_DATA", REPO.parent / "shared" / "data"))


def _marker_image(w: int = 40, h: int = 24) -> np.ndarray:
    """An RGB image whose four quadrants have different colours, so any flip/rotation is visible."""
    a = np.zeros((h, w, 3), np.uint8)
    a[: h // 2, : w // 2] = (255, 0, 0)
    a[: h // 2, w // 2 :] = (0, 255, 0)
    a[h // 2 :, : w // 2] = (0, 0, 255)
    a[h // 2 :, w // 2 :] = (255, 255, 0)
    return a


def _save_with_orientation(path: Path, rgb: np.ndarray, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(rgb).save(path, exif=exif)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow(tmp_path, orientation):
    rgb = _marker_image()
    path = tmp_path / f"o{orientation}.png"
    _save_with_orientation(path, rgb, orientation)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    got = load_image(path)
    assert got.dtype == np.uint8 and got.flags.c_contiguous
    np.testing.assert_array_equal(got, expected)
    # our own array version (used for 16-bit files decoded by OpenCV) agrees with Pillow too
    np.testing.assert_array_equal(_apply_orientation(rgb, orientation), expected)


def test_exif_rotated_jpeg_is_upright(tmp_path):
    rgb = _marker_image(40, 24)
    path = tmp_path / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: viewers rotate 90 degrees clockwise
    Image.fromarray(rgb).save(path, exif=exif, quality=95)
    got = load_image(path)
    assert got.shape == (40, 24, 3)
    # rotating the stored image clockwise brings its bottom-left (blue) quadrant to the top-left
    assert got[2, 2, 2] > 200 and got[2, 2, 0] < 60


def test_grayscale_and_bilevel(tmp_path):
    g = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (8, 1))
    Image.fromarray(g).save(tmp_path / "g.png")
    got = load_image(tmp_path / "g.png")
    assert got.shape == (8, 64, 3)
    np.testing.assert_array_equal(got[..., 0], g)
    np.testing.assert_array_equal(got[..., 0], got[..., 2])
    Image.fromarray(g > 100).convert("1").save(tmp_path / "b.png")
    b = load_image(tmp_path / "b.png")
    assert set(np.unique(b)) <= {0, 255}


def test_rgba_la_and_palette_transparency_composite_on_white(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 0)  # fully transparent red -> white
    rgba[0, 1] = (255, 0, 0, 255)  # opaque red
    rgba[0, 2] = (0, 0, 0, 128)  # half-transparent black -> mid grey
    Image.fromarray(rgba).save(tmp_path / "a.png")
    got = load_image(tmp_path / "a.png")
    assert tuple(got[0, 0]) == (255, 255, 255)
    assert tuple(got[0, 1]) == (255, 0, 0)
    assert np.all(np.abs(got[0, 2].astype(int) - 127) <= 1)

    la = np.zeros((2, 2, 2), np.uint8)
    la[0, 0] = (0, 0)
    la[0, 1] = (0, 255)
    Image.fromarray(la).save(tmp_path / "la.png")
    got = load_image(tmp_path / "la.png")
    assert tuple(got[0, 0]) == (255, 255, 255) and tuple(got[0, 1]) == (0, 0, 0)

    p = Image.new("P", (3, 1))
    p.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    p.putpixel((0, 0), 0)
    p.putpixel((1, 0), 1)
    p.info["transparency"] = 0
    p.save(tmp_path / "p.png", transparency=0)
    got = load_image(tmp_path / "p.png")
    assert tuple(got[0, 0]) == (255, 255, 255) and tuple(got[0, 1]) == (10, 200, 30)


def test_16bit_grayscale_is_scaled_not_clipped(tmp_path):
    g = np.array([[0, 257, 32768, 65535, 65280, 511]], dtype=np.uint16)
    Image.fromarray(g).save(tmp_path / "g16.png")
    Image.fromarray(g).save(tmp_path / "g16.tif")
    expected = np.rint(g.astype(np.float64) * 255 / 65535).astype(np.uint8)
    for name in ("g16.png", "g16.tif"):
        got = load_image(tmp_path / name)
        np.testing.assert_array_equal(got[..., 0], expected)
        np.testing.assert_array_equal(got[..., 1], expected)


@pytest.mark.parametrize("ext", ["png", "tif"])
def test_16bit_colour_uses_full_depth(tmp_path, ext):
    # 65280 -> 254 when scaled, 255 when only the high byte is kept (what Pillow alone does);
    # 511 -> 2 scaled, 1 from the high byte.
    rgb = np.zeros((2, 3, 3), np.uint16)
    rgb[0, 0] = (65280, 511, 0)
    rgb[0, 1] = (65535, 32768, 257)
    rgb[1, 2] = (1000, 20000, 40000)
    path = tmp_path / f"c16.{ext}"
    assert cv2.imwrite(str(path), rgb[..., ::-1])
    got = load_image(path)
    expected = np.rint(rgb.astype(np.float64) * 255 / 65535).astype(np.uint8)
    np.testing.assert_array_equal(got, expected)


def test_16bit_rgba_png_composites_on_white(tmp_path):
    bgra = np.zeros((1, 2, 4), np.uint16)
    bgra[0, 0] = (0, 0, 65535, 65535)  # opaque red
    bgra[0, 1] = (0, 0, 65535, 0)  # transparent
    path = tmp_path / "c16a.png"
    assert cv2.imwrite(str(path), bgra)
    got = load_image(path)
    assert tuple(got[0, 0]) == (255, 0, 0) and tuple(got[0, 1]) == (255, 255, 255)


def test_cmyk_jpeg(tmp_path):
    rgb = _marker_image()
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    got = load_image(tmp_path / "c.jpg")
    expected = np.asarray(Image.open(tmp_path / "c.jpg").convert("RGB"))
    assert got.shape == rgb.shape
    np.testing.assert_array_equal(got, expected)
    assert np.abs(got.astype(int) - rgb.astype(int)).mean() < 12


def test_float_tiff(tmp_path):
    f = np.array([[0.0, 0.5, 1.0]], np.float32)
    Image.fromarray(f).save(tmp_path / "f.tif")
    got = load_image(tmp_path / "f.tif")
    np.testing.assert_array_equal(got[0, :, 0], [0, 128, 255])


def test_large_image_keeps_full_resolution(tmp_path):
    a = np.empty((3000, 2200, 3), np.uint8)
    a[...] = (np.arange(2200, dtype=np.uint8)[None, :, None] + np.arange(3000, dtype=np.uint8)[:, None, None])
    a[..., 1] = 7
    Image.fromarray(a).save(tmp_path / "big.tif")
    got = load_image(tmp_path / "big.tif")
    np.testing.assert_array_equal(got, a)


def test_numpy_and_pil_inputs():
    a = _marker_image()
    assert load_image(a) is not None
    np.testing.assert_array_equal(load_image(a), a)
    np.testing.assert_array_equal(load_image(Image.fromarray(a)), a)
    np.testing.assert_array_equal(load_image(a[..., 0])[..., 1], a[..., 0])
    np.testing.assert_array_equal(load_image(a.astype(np.float32) / 255.0), a)
    np.testing.assert_array_equal(load_image(a.astype(np.uint16) * 257), a)
    rgba = np.dstack([a, np.zeros(a.shape[:2], np.uint8)])
    assert np.all(load_image(rgba) == 255)
    assert to_rgb_uint8(np.ones((2, 2), bool)).max() == 255
    with pytest.raises(InputError, match="shape"):
        load_image(np.zeros((4, 4, 5), np.uint8))
    with pytest.raises(InputError, match="shape"):
        load_image(np.zeros((0, 4, 3), np.uint8))
    with pytest.raises(InputError):
        load_image(12345)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(InputError, match="not found") as e:
        load_image(tmp_path / "nope.jpg")
    assert "nope.jpg" in str(e.value)
    with pytest.raises(InputError, match="folder"):
        load_image(tmp_path)


@pytest.mark.parametrize(
    "name,content",
    [
        ("random.jpg", np.random.default_rng(1).integers(0, 255, 2000, dtype=np.uint8).tobytes()),
        ("text.png", b"this is not an image\n" * 10),
        ("empty.png", b""),
    ],
)
def test_corrupt_files_raise_input_error_naming_the_file(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputError) as e:
        load_image(path)
    assert name in str(e.value)


@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_truncated_file_raises_input_error(tmp_path, ext):
    a = np.random.default_rng(2).integers(0, 255, (200, 200, 3), dtype=np.uint8)
    full = tmp_path / f"full.{ext}"
    Image.fromarray(a).save(full)
    data = full.read_bytes()
    cut = tmp_path / f"cut.{ext}"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="corrupt or truncated") as e:
        load_image(cut)
    assert f"cut.{ext}" in str(e.value)


def test_resize_to_limit_matches_official_rules():
    a = np.zeros((2001, 3001, 3), np.uint8)
    r = resize_to_limit(a, 1280, 2)
    # long side -> 1280, short side int(2001 * 1280 / 3001) = 853 -> cropped to even 852
    assert r.shape == (852, 1280, 3)
    small = np.zeros((301, 201, 3), np.uint8)
    assert resize_to_limit(small, 1280, 2).shape == (300, 200, 3)
    even = np.zeros((300, 200, 3), np.uint8)
    assert resize_to_limit(even) is even
    assert resize_to_limit(np.zeros((1, 1, 3), np.uint8)).shape == (1, 1, 3)


@pytest.mark.realdata
def test_real_portraits_load():
    for path in manifest_files(DATA, "portraits", MIN_PORTRAITS):
        a = load_image(path)
        assert a.ndim == 3 and a.shape[2] == 3 and a.dtype == np.uint8, path


def test_decompression_bomb_is_an_input_error(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((100, 100, 3), np.uint8)).save(tmp_path / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow refuses above 2x this
    with pytest.raises(InputError, match="too large") as e:
        load_image(tmp_path / "huge.png")
    assert "huge.png" in str(e.value)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 6000)  # only a warning between 1x and 2x: loads
    assert load_image(tmp_path / "huge.png").shape == (100, 100, 3)
