"""The source portrait: load it, find its faces, crop each one, and prepare it for rendering once."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from audio2lp.options import OptionError, literal
from lp_renderer.crop import SOURCE_CROP, Crop, PasteMask, crop_face, paste_back, shared_paste_masks
from lp_renderer.errors import NoFaceError
from lp_renderer.faces import Face, FaceBackend, FaceNumberError, eye_open_ratios, lip_open_ratio, select_faces
from lp_renderer.image_io import load_image, resize_to_limit
from lp_renderer.renderer import PreparedSource, Renderer

log = logging.getLogger(__name__)


@dataclass
class PortraitFace:
    """One face of the portrait: where it is (crop), its 256x256 crop, its prepared source and the
    paste-back mask (built once, reused for every frame)."""

    face: Face
    crop: Crop
    crop_rgb: np.ndarray  # (256, 256, 3) uint8
    source: PreparedSource
    mask: PasteMask


@dataclass
class Portrait:
    """A loaded portrait (full resolution RGB) and the faces that will be animated."""

    image: np.ndarray  # (H, W, 3) uint8
    faces: list[PortraitFace]
    path: str

    def composite(self, rendered: list[np.ndarray], pasteback: bool = True) -> np.ndarray:
        """Rendered 512x512 crops (one per face) -> the output frame.

        With paste-back, each face is blended into the full-resolution original with its soft mask, in
        order (several faces' masks share their overlaps, see
        :func:`lp_renderer.crop.shared_paste_masks`); without, the single face's 512x512 crop is returned.
        """
        if not pasteback:
            return rendered[0]
        out = self.image
        for pf, img in zip(self.faces, rendered):
            out = paste_back(img, pf.crop, out, pf.mask)
        return out


MAX_SIZE = 1280
"""The official ``--source-max-dim``: the portrait's longer side is scaled down to this many pixels."""


def prepare_portrait(renderer: Renderer, backend: FaceBackend, image: str | os.PathLike | np.ndarray,
                     which: str | int = "largest", pasteback: bool = True, max_size: int = MAX_SIZE,
                     crop_scale: float | None = None) -> Portrait:
    """Load ``image``, cap its size as the official pipeline does (longer side scaled down to ``max_size`` pixels,
    bilinear, then both sides rounded down to a multiple of 2; ``max_size`` 0: no scaling), detect faces, pick them
    (``"largest"``, an index, or ``"all"``), crop each with LivePortrait's source geometry (``crop_scale``: the
    crop's size relative to the face, default :data:`~lp_renderer.crop.SOURCE_CROP`'s 2.3) and prepare it (F, M,
    x_s, W's per-source work; eye/lip ratios). The pasted-back frames have the capped size."""
    name = str(image) if not isinstance(image, np.ndarray) else "the portrait"
    loaded = load_image(image)
    rgb = resize_to_limit(loaded, max_size, 2)
    if rgb.shape[:2] != loaded.shape[:2]:
        log.info("%s: %dx%d scaled to %dx%d (longest side at most %d pixels)", name, loaded.shape[1], loaded.shape[0],
                 rgb.shape[1], rgb.shape[0], max_size)
    faces = backend.detect(rgb)
    if not faces:
        raise NoFaceError(f"No face was found in {name}; use a photo with a clearly visible, roughly frontal "
                          f"face (at least ~60 pixels wide).")
    try:
        chosen = select_faces(faces, which, source=name)
    except FaceNumberError as e:
        raise OptionError("face", e.describe("{face}").replace(e.source, literal(e.source))) from None
    check_crop_output(len(chosen), pasteback)
    geometry = SOURCE_CROP if crop_scale is None else {**SOURCE_CROP, "scale": float(crop_scale)}
    crops = [crop_face(face, **geometry) for face in chosen]
    masks = shared_paste_masks(crops, rgb.shape)
    out = []
    for face, crop, mask in zip(chosen, crops, masks):
        crop_rgb = crop.warp(rgb, 256)
        src = renderer.prepare_source(crop_rgb, eye_ratios=eye_open_ratios(face), lip_ratio=lip_open_ratio(face))
        out.append(PortraitFace(face, crop, crop_rgb, src, mask))
    log.info("%s: %d face(s) found, animating %d", name, len(faces), len(out))
    return Portrait(rgb, out, name if not isinstance(image, np.ndarray) else "")


def check_crop_output(n_faces: int, pasteback: bool) -> None:
    """Without paste-back the output is one face's crop: refuse several faces."""
    if not pasteback and n_faces > 1:
        raise OptionError("pasteback", "{not_pasteback} outputs one face's 512x512 crop; pick one face with {face} N "
                          "or {face} largest.")


def is_image_path(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}
