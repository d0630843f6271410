"""The insightface face backend: what the official LivePortrait uses for source images, through the
``insightface`` package (``pip install insightface``): SCRFD-10G (``det_10g.onnx``, 512x512 letterboxed input) and
the 106-point ``2d106det.onnx`` landmarks, both of the ``buffalo_l`` pack, loaded with
``insightface.model_zoo.get_model`` and run as insightface runs them.

The models are not redistributable here and are never downloaded: the folder that holds them is the one given
(``model_dir``), else LivePortrait's ``<weights dir>/insightface/models/buffalo_l``, else the insightface
package's usual folder ``~/.insightface/models/buffalo_l`` (:func:`resolve_model_dir`).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lp_renderer.errors import InputError

from .base import Face, FaceBackend, FaceKind, _check_image, _sort_largest_first

logger = logging.getLogger(__name__)

MODEL_FILES = ("det_10g.onnx", "2d106det.onnx")
PACK = "buffalo_l"


def usual_model_dir() -> Path:
    """The insightface package's own folder for the ``buffalo_l`` pack: ``~/.insightface/models/buffalo_l``."""
    return Path("~/.insightface/models").expanduser() / PACK


def package_installed() -> bool:
    return importlib.util.find_spec("insightface") is not None


def resolve_model_dir(model_dir: str | os.PathLike | None = None,
                      weights_dir: str | os.PathLike | None = None) -> Path | None:
    """The ``buffalo_l`` folder to use: ``model_dir`` when given; else the first of LivePortrait's
    ``<weights_dir>/insightface/models/buffalo_l`` and (when the insightface package is installed) its usual folder
    that holds both model files; else the first of those candidates (None without any)."""
    if model_dir is not None:
        return Path(model_dir).expanduser()
    candidates = []
    if weights_dir is not None:
        candidates.append(Path(weights_dir).expanduser() / "insightface" / "models" / PACK)
    if package_installed():
        candidates.append(usual_model_dir())
    for folder in candidates:
        if all((folder / f).is_file() for f in MODEL_FILES):
            return folder
    return candidates[0] if candidates else None


def insightface_available(model_dir: str | os.PathLike | None = None,
                          weights_dir: str | os.PathLike | None = None) -> bool:
    """True when the insightface package is installed and both buffalo_l model files are in the folder of
    :func:`resolve_model_dir`."""
    folder = resolve_model_dir(model_dir, weights_dir)
    if folder is None or not package_installed():
        return False
    return all((folder / f).is_file() for f in MODEL_FILES)


class InsightFaceBackend(FaceBackend):
    """SCRFD-10G detector + 2d106det landmarks (insightface ``buffalo_l``) through the insightface package.

    ``model_dir`` / ``weights_dir``: where the models are (see :func:`resolve_model_dir`). ``det_size``: detector
    input (official: 512). ``det_thresh``: the official CLI uses 0.15; we default to insightface's 0.5 so that
    counting or picking faces by number does not count spurious boxes (the largest face is the same either way).
    ``providers``: onnxruntime execution providers (default the CPU).
    """

    name = "insightface"
    kind: FaceKind = "insightface106"

    def __init__(
        self,
        model_dir: str | os.PathLike | None = None,
        *,
        weights_dir: str | os.PathLike | None = None,
        det_size: int = 512,
        det_thresh: float = 0.5,
        nms_thresh: float = 0.4,
        providers: Sequence[str] | None = None,
    ) -> None:
        self.det_size = (int(det_size), int(det_size))
        self.model_dir = folder = resolve_model_dir(model_dir, weights_dir)
        if folder is None:
            raise InputError(
                "No insightface model folder is configured; put det_10g.onnx and 2d106det.onnx (from insightface's "
                "buffalo_l pack) in a folder and pass it as model_dir, or use the dlib face backend."
            )
        missing = [f for f in MODEL_FILES if not (folder / f).is_file()]
        if missing:
            raise InputError(
                f"Missing insightface model file(s) {', '.join(missing)} in {folder}; copy them there from "
                "insightface's buffalo_l pack (or give the folder that holds them as model_dir), or use the dlib "
                "face backend."
            )
        try:
            from insightface.model_zoo import get_model
        except ImportError as exc:
            raise InputError(
                "the insightface package is not installed; install it with `pip install insightface` to use the "
                "insightface face backend, or use the dlib backend."
            ) from exc
        prov = list(providers) if providers is not None else ["CPUExecutionProvider"]
        try:
            self._det = get_model(str(folder / MODEL_FILES[0]), providers=prov)
            self._lmk = get_model(str(folder / MODEL_FILES[1]), providers=prov)
        except Exception as exc:  # onnx / onnxruntime raise their own exception types for bad files
            raise InputError(
                f"Cannot load the insightface models in {folder} ({type(exc).__name__}: {exc}); re-download "
                "det_10g.onnx and 2d106det.onnx from insightface's buffalo_l pack."
            ) from exc
        if type(self._det).__name__ != "SCRFD" or not getattr(self._det, "use_kps", False):
            raise InputError(f"{folder / MODEL_FILES[0]} is not SCRFD with keypoints; use the det_10g.onnx of "
                             "insightface's buffalo_l pack.")
        if type(self._lmk).__name__ != "Landmark" or getattr(self._lmk, "lmk_num", 0) != 106:
            raise InputError(f"{folder / MODEL_FILES[1]} is not a 106-point landmark model; use the 2d106det.onnx "
                             "of insightface's buffalo_l pack.")
        self._det.prepare(ctx_id=-1, input_size=self.det_size, det_thresh=float(det_thresh),
                          nms_thresh=float(nms_thresh))
        self._lmk.prepare(ctx_id=-1)

    def detect(self, image_rgb: np.ndarray) -> list[Face]:
        from insightface.app.common import Face as InsightFace

        image = _check_image(image_rgb)
        bgr = np.ascontiguousarray(image[:, :, ::-1])  # insightface works on OpenCV's BGR images
        boxes, _ = self._det.detect(bgr, input_size=self.det_size, max_num=0)
        faces = []
        for b in boxes:
            box = tuple(float(v) for v in b[:4])
            found: Any = InsightFace(bbox=np.asarray(b[:4], np.float32), det_score=float(b[4]))
            landmarks = self._lmk.get(bgr, found)  # (106, 2) pixels of the image
            faces.append(Face(box, float(b[4]), landmarks, "insightface106"))
        return _sort_largest_first(faces)
