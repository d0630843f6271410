"""The dlib face backend: dlib's HOG frontal-face detector (CNN fallback) plus the iBUG 68-point shape predictor
shipped by the ``face-recognition-models`` package; no download, so it always works offline. See
:class:`DlibBackend` and :mod:`lp_renderer.faces`.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from lp_renderer.errors import InputError

from .base import Face, FaceBackend, FaceKind, _check_image, _iou, _sort_largest_first

logger = logging.getLogger(__name__)

DLIB_PREDICTOR_FILE = "shape_predictor_68_face_landmarks.dat"
_DLIB_CNN_FILE = "mmod_human_face_detector.dat"

@functools.lru_cache(maxsize=1)
def _dlib_models_dir() -> Path:
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise InputError(
            "The dlib landmark model is missing: install it with `pip install face-recognition-models`."
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "models"
    if not (folder / DLIB_PREDICTOR_FILE).is_file():
        raise InputError(
            f"{folder / DLIB_PREDICTOR_FILE} is missing; reinstall it with "
            "`pip install --force-reinstall face-recognition-models`."
        )
    return folder


def _import_dlib() -> Any:
    try:
        import dlib
    except ImportError as exc:
        raise InputError("dlib is not installed; install it with `pip install dlib-bin`.") from exc
    return dlib


@functools.lru_cache(maxsize=1)
def _dlib_hog() -> Any:
    return _import_dlib().get_frontal_face_detector()


@functools.lru_cache(maxsize=4)
def _dlib_predictor(path: str) -> Any:
    return _import_dlib().shape_predictor(path)


@functools.lru_cache(maxsize=1)
def _dlib_cnn() -> Any:
    return _import_dlib().cnn_face_detection_model_v1(str(_dlib_models_dir() / _DLIB_CNN_FILE))


# HOG box relative to the landmarks, measured on the project's portraits (35 faces): with
# d = |mouth_center - eye_center| and u = unit(mouth_center - eye_center), the HOG box is a square of
# side 2.26 d centred at eye_center + 0.46 d u.
_HOG_BOX_SIDE = 2.26
_HOG_BOX_OFFSET = 0.46


def _hog_like_box(landmarks68: np.ndarray) -> tuple[float, float, float, float]:
    p = landmarks68.astype(np.float64)
    eye = (p[36:42].mean(axis=0) + p[42:48].mean(axis=0)) / 2.0
    mouth = (p[48] + p[54]) / 2.0
    v = mouth - eye
    d = float(np.linalg.norm(v))
    if d < 1e-6:
        lo, hi = p.min(axis=0), p.max(axis=0)
        return (lo[0], lo[1], hi[0], hi[1])
    c = eye + _HOG_BOX_OFFSET * v
    h = _HOG_BOX_SIDE * d / 2.0
    return (c[0] - h, c[1] - h, c[0] + h, c[1] + h)


class DlibBackend(FaceBackend):
    """dlib HOG detector (CNN fallback) + 68-point predictor. See the module docstring.

    ``max_detect_side``: images whose long side is larger are downscaled (INTER_AREA) for detection and
    landmarks. ``upsample_below``: images (after downscaling) whose long side is at most this are
    upsampled once by dlib, finding faces down to about 40 px. ``threshold``: HOG margin to accept the
    best detection; ``extra_threshold``: margin to accept further ones (low-margin HOG hits beside a real
    face are mostly false positives: on the project's talking clips every real face scored >= 0 and
    the only extra hits scored 0.0 and 0.18). ``cnn_fallback``: try dlib's CNN detector when HOG finds
    nothing. ``verify_threshold``, ``verify_size``, ``verify_pad``, ``min_contrast``: how :meth:`track`
    checks that a tracked face is really there (:meth:`verify`).
    """

    name = "dlib"
    kind: FaceKind = "dlib68"

    def __init__(
        self,
        predictor_path: str | os.PathLike | None = None,
        *,
        max_detect_side: int = 1024,
        upsample_below: int = 640,
        threshold: float = 0.0,
        extra_threshold: float = 0.3,
        cnn_fallback: bool = True,
        verify_threshold: float = -0.5,
        verify_size: float = 100.0,
        verify_pad: float = 0.5,
        min_contrast: float = 4.0,
    ) -> None:
        path = Path(predictor_path) if predictor_path is not None else _dlib_models_dir() / DLIB_PREDICTOR_FILE
        if not path.is_file():
            raise InputError(f"dlib landmark model not found: {path}; pass the path of {DLIB_PREDICTOR_FILE}.")
        self.predictor_path = path
        self.max_detect_side = int(max_detect_side)
        self.upsample_below = int(upsample_below)
        self.threshold = float(threshold)
        self.extra_threshold = float(extra_threshold)
        self.cnn_fallback = bool(cnn_fallback)
        self.verify_threshold = float(verify_threshold)
        self.verify_size = float(verify_size)
        self.verify_pad = float(verify_pad)
        self.min_contrast = float(min_contrast)
        self._predictor = _dlib_predictor(str(path))
        self._hog = _dlib_hog()

    # -- helpers
    def _working(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        h, w = image.shape[:2]
        long_side = max(h, w)
        if long_side <= self.max_detect_side:
            return image, 1.0
        s = self.max_detect_side / long_side
        size = (max(1, round(w * s)), max(1, round(h * s)))
        small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        # exact per-axis factors after rounding; use their mean (they differ by < 1 px / side)
        return small, (size[0] / w + size[1] / h) / 2.0

    def _shape(self, work: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
        dlib = _import_dlib()
        rect = dlib.rectangle(round(box[0]), round(box[1]), round(box[2]) - 1, round(box[3]) - 1)
        shape = self._predictor(work, rect)
        return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)

    def _to_face(self, box, score: float, lmk_work: np.ndarray, s: float) -> Face:
        b = tuple(v / s for v in box)
        # dlib returns integer pixel positions of the working image; map pixel centres back.
        lmk = (lmk_work + 0.5) / s - 0.5 if s != 1.0 else lmk_work
        return Face(b, score, lmk, "dlib68")

    # -- API
    def detect(self, image_rgb: np.ndarray) -> list[Face]:
        image = _check_image(image_rgb)
        work, s = self._working(image)
        upsample = 1 if max(work.shape[:2]) <= self.upsample_below else 0
        rects, scores, _ = self._hog.run(work, upsample, self.threshold)
        if not len(rects) and upsample == 0:
            # small faces in a mid-size image: one more pass with dlib's 2x upsampling (~0.3 s at 1024 px)
            rects, scores, _ = self._hog.run(work, 1, self.threshold)
        ranked = sorted(zip(rects, scores), key=lambda rs: -rs[1])
        boxes = [
            ((r.left(), r.top(), r.right() + 1.0, r.bottom() + 1.0), float(sc))
            for i, (r, sc) in enumerate(ranked)
            if sc >= (self.threshold if i == 0 else max(self.threshold, self.extra_threshold))
        ]
        faces: list[Face] = []
        for box, score in boxes:
            faces.append(self._to_face(box, score, self._shape(work, box), s))
        if not faces and self.cnn_fallback:
            faces = self._detect_cnn(work, s)
        return _sort_largest_first(faces)

    def _detect_cnn(self, work: np.ndarray, s: float) -> list[Face]:
        h, w = work.shape[:2]
        c = min(1.0, 384.0 / max(h, w))
        small = cv2.resize(work, (max(1, round(w * c)), max(1, round(h * c))), interpolation=cv2.INTER_AREA) \
            if c < 1.0 else work
        cx, cy = small.shape[1] / w, small.shape[0] / h
        faces = []
        for det in _dlib_cnn()(small, 0):
            r = det.rect
            box = (r.left() / cx, r.top() / cy, (r.right() + 1) / cx, (r.bottom() + 1) / cy)
            lmk = self._shape(work, box)
            # the predictor expects HOG-style boxes: redo it once from a HOG-like box
            box = _hog_like_box(lmk)
            lmk = self._shape(work, box)
            faces.append(self._to_face(box, float(det.confidence), lmk, s))
        if faces:
            logger.debug("HOG found no face; the CNN detector found %d", len(faces))
        return faces

    def track(self, image_rgb: np.ndarray, previous: Face, verify: bool = True) -> Face | None:
        """Re-fit the 68 points from a box derived from ``previous``'s landmarks (no detection, ~3 ms for
        two fits), then verify that a face is really there (:meth:`verify`, ~8 ms; with ``verify=False`` only
        its contrast test, and the score is ``previous``'s). Returns None when the result is implausible
        (collapsed or jumped in scale) or fails verification (e.g. a blank frame, where the predictor still
        places its mean shape in the box)."""
        image = _check_image(image_rgb)
        work, s = self._working(image)
        prev = (previous.landmarks68.astype(np.float64) + 0.5) * s - 0.5
        box = _hog_like_box(prev)
        lmk = self._shape(work, box)
        box = _hog_like_box(lmk)
        lmk = self._shape(work, box)
        size_prev = float(np.ptp(prev, axis=0).max())
        size_new = float(np.ptp(lmk, axis=0).max())
        if size_prev <= 0 or not (0.75 < size_new / size_prev < 1.33):
            return None
        if verify:
            score = self.verify(work, box)
        else:  # the cheap part of the check only: is there any image structure in the box?
            score = previous.score if self._has_contrast(work, box) else None
        if score is None:
            return None
        return self._to_face(box, score, lmk, s)

    def _has_contrast(self, work: np.ndarray, box: Sequence[float]) -> bool:
        """Whether the grey levels inside ``box`` (pixels of ``work``) vary by at least ``min_contrast`` (not a
        blank or uniform region); ~0.1 ms."""
        h, w = work.shape[:2]
        x0, y0 = max(0, int(box[0])), max(0, int(box[1]))
        x1, y1 = min(w, int(np.ceil(box[2]))), min(h, int(np.ceil(box[3])))
        if x1 - x0 < 2 or y1 - y0 < 2:
            return False
        return float(cv2.cvtColor(work[y0:y1, x0:x1], cv2.COLOR_RGB2GRAY).std()) >= self.min_contrast

    def verify(self, work: np.ndarray, box: Sequence[float]) -> float | None:
        """HOG margin of a face at ``box`` (pixels of ``work``, an ``HxWx3`` uint8 image), or None if
        there is no face there.

        The region around the box (``verify_pad`` box sides on each side, border replicated) is rescaled
        so that the box is ``verify_size`` px (the HOG window is 80 px) and searched with the HOG
        detector at the lenient margin ``verify_threshold``; the face counts as present when a hit
        overlaps the box (IoU > 0.3). Regions whose grey-level standard deviation is below
        ``min_contrast`` (blank or nearly uniform frames) are rejected without running HOG. Measured on
        352 tracked frames of the project's 35 talking clips (every 4th of the first 48 frames): all
        verified, lowest margin 0.15; ~8 ms per call (a 200x200 region). A frame blurred beyond
        recognition (Gaussian sigma 40) was still accepted in 1% of the cases (the face's blob survives).
        """
        x0, y0, x1, y1 = (float(v) for v in box)
        side = max(x1 - x0, y1 - y0)
        if not side > 1:
            return None
        cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
        k = self.verify_size / side
        r = max(1, int(round(side * (1.0 + 2.0 * self.verify_pad) * k)))
        m = np.array([[k, 0.0, r / 2.0 - k * cx], [0.0, k, r / 2.0 - k * cy]])
        region = cv2.warpAffine(work, m, (r, r), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        half = self.verify_size / 2.0
        inner = region[int(r / 2 - half):int(r / 2 + half), int(r / 2 - half):int(r / 2 + half)]
        if inner.size == 0 or float(cv2.cvtColor(inner, cv2.COLOR_RGB2GRAY).std()) < self.min_contrast:
            return None
        rects, scores, _ = self._hog.run(region, 0, self.verify_threshold)
        target = (r / 2.0 - half, r / 2.0 - half, r / 2.0 + half, r / 2.0 + half)
        best = None
        for rect, sc in zip(rects, scores):
            hit = (rect.left(), rect.top(), rect.right() + 1.0, rect.bottom() + 1.0)
            if _iou(hit, target) > 0.3 and (best is None or sc > best):
                best = float(sc)
        return best


