"""Load still images as HxWx3 uint8 RGB arrays, whatever the file looks like.

:func:`load_image` accepts a path, a :class:`PIL.Image.Image` or a numpy array and always returns a
C-contiguous ``HxWx3`` ``uint8`` RGB array at the file's full resolution (keep it: paste-back writes into
it). What it normalises:

- **EXIF orientation** is applied (``ImageOps.exif_transpose``), so a phone photo stored sideways comes
  out the way a viewer shows it.
- **Grayscale** (1-bit, 8-bit, 16-bit, 32-bit int, float) becomes three equal channels.
- **Transparency** (RGBA, LA, PA, palette images with a transparent index) is composited on **white**:
  a cut-out portrait becomes a portrait on a white background, the way most viewers display it.
  Dropping alpha instead would expose whatever colour the encoder left under transparent pixels
  (often black, sometimes garbage), which the face detector and LivePortrait then see.
- **16-bit PNG / TIFF** are scaled with ``round(v * 255 / 65535)``. Pillow alone would either clip
  16-bit grayscale at 255 (``I;16`` -> ``L``) or keep only the high byte of 48/64-bit RGB(A); those
  files are decoded with OpenCV at full depth instead.
- **Float** grayscale (``F`` mode) is taken as [0, 1] when its maximum is <= 1, else as [0, 255].
- **CMYK** (and YCbCr, LAB, HSV) is converted with Pillow's built-in conversion. Embedded ICC
  profiles are ignored, as OpenCV (which the official LivePortrait uses) ignores them.

A missing, unreadable, truncated or non-image file raises :class:`~lp_renderer.errors.InputError`
naming the file. :func:`resize_to_limit` reproduces the official ``resize_to_limit`` (long side <=
``max_dim``, then trailing rows/columns cropped to a multiple of ``division``) for callers that want the
official working resolution; the renderer itself crops from the full-resolution image.
"""

from __future__ import annotations

import logging
import os
import struct
import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from lp_renderer.errors import InputError

logger = logging.getLogger(__name__)

ImageLike = str | os.PathLike | np.ndarray | Image.Image

__all__ = ["ImageLike", "load_image", "resize_to_limit", "to_rgb_uint8"]

# EXIF orientation value -> numpy operations that undo it (the same result as ImageOps.exif_transpose).
_EXIF_ORIENTATION_TAG = 0x0112


def load_image(source: ImageLike) -> np.ndarray:
    """Load an image as a C-contiguous ``HxWx3`` ``uint8`` RGB array (full resolution).

    ``source`` is a file path, a PIL image (EXIF orientation is applied if it carries one) or a numpy
    array (``HxW``, ``HxWx1``, ``HxWx3`` RGB or ``HxWx4`` RGBA; ``uint8``, ``uint16``, ``bool`` or float
    in [0, 1]). See the module docstring for how each kind of file is normalised.

    Raises :class:`InputError` if the file is missing or not a readable image.
    """
    if isinstance(source, np.ndarray):
        return to_rgb_uint8(source, name="the image array")
    if isinstance(source, Image.Image):
        return _pil_to_rgb(ImageOps.exif_transpose(source), name="the PIL image")
    if not isinstance(source, (str, os.PathLike)):
        raise InputError(
            f"Cannot load an image from a {type(source).__name__}; pass a file path, a PIL image or a "
            "numpy array."
        )
    path = Path(source)
    if not path.exists():
        raise InputError(f"Image file not found: {path}; check the path.")
    if path.is_dir():
        raise InputError(f"{path} is a folder, not an image file; pass the path of an image file.")
    try:
        with warnings.catch_warnings():
            # Pillow warns above ~89 MP (real 100+ MP camera files exist) and refuses above ~179 MP.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
                orientation = _exif_orientation(im)
                deep = _deep_colour(im, path)
                if deep is None:
                    rgb = _pil_to_rgb(ImageOps.exif_transpose(im), name=str(path))
    except Image.DecompressionBombError as exc:
        raise InputError(
            f"{path} is too large to load safely ({exc}); downscale it below about 178 megapixels."
        ) from exc
    except UnidentifiedImageError as exc:
        raise InputError(
            f"Cannot read {path}: it is not an image format Pillow recognises; convert it to PNG or JPEG."
        ) from exc
    except (OSError, SyntaxError, ValueError, struct.error) as exc:
        raise InputError(
            f"Cannot read {path}: the file is corrupt or truncated ({exc}); re-export or re-download it."
        ) from exc
    if deep is not None:
        rgb = to_rgb_uint8(_apply_orientation(deep, orientation), name=str(path))
    logger.debug("loaded %s: %dx%d", path, rgb.shape[1], rgb.shape[0])
    return rgb


def to_rgb_uint8(array: np.ndarray, name: str = "the image array") -> np.ndarray:
    """Convert a numpy image (``HxW``, ``HxWx1``, ``HxWx2`` gray+alpha, ``HxWx3`` RGB, ``HxWx4`` RGBA) to
    C-contiguous ``HxWx3`` uint8 RGB. Integer types are scaled from their full range (uint16: /257),
    floats are taken as [0, 1]; alpha is composited on white."""
    a = np.asarray(array)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 2, 3, 4) or a.shape[0] == 0 or a.shape[1] == 0:
        raise InputError(
            f"{name} has shape {tuple(np.shape(array))}; expected HxW, HxWx3 (RGB) or HxWx4 (RGBA)."
        )
    channels = a.shape[2]
    if a.dtype == np.uint8 and channels == 3:
        return np.ascontiguousarray(a)
    if a.dtype == np.uint8 and channels == 1:
        return np.ascontiguousarray(np.repeat(a, 3, axis=2))
    f = _to_unit_float(a, name)
    if channels in (2, 4):
        alpha = f[:, :, -1:]
        f = f[:, :, :-1] * alpha + (1.0 - alpha)
    if f.shape[2] == 1:
        f = np.repeat(f, 3, axis=2)
    return np.ascontiguousarray(np.clip(np.rint(f * 255.0), 0, 255).astype(np.uint8))


def resize_to_limit(image: np.ndarray, max_dim: int = 1280, division: int = 2) -> np.ndarray:
    """The official ``resize_to_limit``: if the long side exceeds ``max_dim`` (``<= 0`` disables it),
    resize bilinearly so it equals ``max_dim`` (the short side is truncated to an int); then crop
    trailing rows and columns so both sides are multiples of ``division``. Returns a new array or the
    input unchanged."""
    h, w = image.shape[:2]
    if max_dim > 0 and max(h, w) > max_dim:
        if h > w:
            new_h, new_w = max_dim, int(w * (max_dim / h))
        else:
            new_w, new_h = max_dim, int(h * (max_dim / w))
        image = cv2.resize(image, (max(new_w, 1), max(new_h, 1)), interpolation=cv2.INTER_LINEAR)
    n = max(int(division), 1)
    new_h = image.shape[0] - image.shape[0] % n
    new_w = image.shape[1] - image.shape[1] % n
    if new_h == 0 or new_w == 0:
        return image
    if (new_h, new_w) != image.shape[:2]:
        image = np.ascontiguousarray(image[:new_h, :new_w])
    return image


# --------------------------------------------------------------------------------------------------
# helpers


def _to_unit_float(a: np.ndarray, name: str) -> np.ndarray:
    if a.dtype == np.bool_:
        return a.astype(np.float32)
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    if a.dtype == np.uint16:
        return a.astype(np.float32) / 65535.0
    if np.issubdtype(a.dtype, np.integer):
        # Pillow's "I" mode (32-bit) holds 16-bit samples; anything larger is clipped.
        return np.clip(a.astype(np.float64) / 65535.0, 0.0, 1.0).astype(np.float32)
    if np.issubdtype(a.dtype, np.floating):
        f = np.nan_to_num(a.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
        return np.clip(f, 0.0, 1.0)
    raise InputError(f"{name} has dtype {a.dtype}; expected uint8, uint16, bool or float in [0, 1].")


def _pil_to_rgb(im: Image.Image, name: str) -> np.ndarray:
    mode = im.mode
    if mode == "RGB":
        return np.ascontiguousarray(np.asarray(im, dtype=np.uint8))
    if mode == "P" or mode == "PA":
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "La", "RGBa", "RGBX"):
        if mode == "RGBX":
            return np.ascontiguousarray(np.asarray(im.convert("RGB"), dtype=np.uint8))
        if mode in ("La", "RGBa"):  # premultiplied alpha: undo it first
            im = im.convert("RGBA" if mode == "RGBa" else "LA")
        return to_rgb_uint8(np.asarray(im), name=name)
    if mode == "1":
        return to_rgb_uint8(np.asarray(im.convert("L")), name=name)
    if mode == "L":
        return to_rgb_uint8(np.asarray(im), name=name)
    if mode.startswith("I;16") or mode == "I":
        return to_rgb_uint8(np.asarray(im).astype(np.int64), name=name)
    if mode == "F":
        f = np.asarray(im, dtype=np.float32)
        finite = f[np.isfinite(f)]
        if finite.size and float(finite.max()) > 1.0:
            f = f / 255.0
        return to_rgb_uint8(f, name=name)
    # CMYK, YCbCr, LAB, HSV and anything else Pillow can convert.
    try:
        return np.ascontiguousarray(np.asarray(im.convert("RGB"), dtype=np.uint8))
    except (ValueError, OSError) as exc:
        raise InputError(f"Cannot convert {name} (mode {mode}) to RGB; re-save it as RGB PNG or JPEG.") from exc


def _exif_orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(_EXIF_ORIENTATION_TAG, 1) or 1)
    except Exception:  # malformed EXIF must not prevent loading the pixels
        return 1


def _apply_orientation(a: np.ndarray, orientation: int) -> np.ndarray:
    """Undo EXIF orientation on an array (same result as ``ImageOps.exif_transpose``)."""
    if orientation == 2:
        a = a[:, ::-1]
    elif orientation == 3:
        a = a[::-1, ::-1]
    elif orientation == 4:
        a = a[::-1, :]
    elif orientation == 5:
        a = np.swapaxes(a, 0, 1)
    elif orientation == 6:
        a = np.swapaxes(a, 0, 1)[:, ::-1]
    elif orientation == 7:
        a = np.swapaxes(a, 0, 1)[::-1, ::-1]
    elif orientation == 8:
        a = np.swapaxes(a, 0, 1)[::-1, :]
    return np.ascontiguousarray(a)


def _deep_colour(im: Image.Image, path: Path) -> np.ndarray | None:
    """Return the full-depth RGB(A) array of a 16-bit-per-channel colour PNG/TIFF, else None.

    Pillow reduces those files to 8 bits by keeping the high byte; OpenCV keeps all 16 bits."""
    if im.mode not in ("RGB", "RGBA"):
        return None
    if not _is_16bit_colour(im, path):
        return None
    data = np.fromfile(path, dtype=np.uint8)
    a = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if a is None or a.dtype != np.uint16 or a.ndim != 3 or a.shape[2] not in (3, 4):
        return None
    order = [2, 1, 0] if a.shape[2] == 3 else [2, 1, 0, 3]
    return a[:, :, order]


def _is_16bit_colour(im: Image.Image, path: Path) -> bool:
    if im.format == "PNG":
        with open(path, "rb") as fh:
            head = fh.read(26)
        # signature (8) + IHDR length (4) + b"IHDR" (4) + width (4) + height (4) + bit depth (1)
        return len(head) >= 25 and head[12:16] == b"IHDR" and head[24] == 16
    if im.format == "TIFF":
        tags = getattr(im, "tag_v2", None)
        bits = tags.get(258) if tags is not None else None
        if isinstance(bits, (tuple, list)):
            return any(int(b) == 16 for b in bits)
        return bits is not None and int(bits) == 16
    return False
