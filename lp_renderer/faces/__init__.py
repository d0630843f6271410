"""Face detection and landmarks for the LivePortrait renderer, behind one small interface.

Two backends produce :class:`Face` objects (box, score, landmarks in original-image pixels):

- :class:`DlibBackend` (``kind="dlib68"``): dlib's HOG frontal-face detector plus the iBUG 68-point
  shape predictor shipped by the ``face-recognition-models`` package. It needs no download, so it is
  the fallback that always works offline. Large images are downscaled for detection (long side <=
  ``max_detect_side``, 1024) and small ones (<= ``upsample_below``, 640) upsampled once by dlib; images in
  between get an upsampled second pass when the first finds nothing. Faces from about 40 px up to
  full-frame 3500 px portraits are found (in images larger than 1024 px the smallest face found is about
  40 px x long side / 1024); boxes and landmarks are mapped back to the original pixels. When HOG finds
  nothing, dlib's CNN (MMOD) detector is tried on a <= 384 px copy (0.4-0.8 s); its box is converted
  to the HOG convention through a first landmark pass, because the 68-point predictor was trained on
  HOG boxes. Tracking (:meth:`DlibBackend.track`) re-fits the landmarks from the previous face and then
  checks with a lenient HOG pass around them that a face is really there, so a frame without the face
  (blank, or the person gone) counts as lost instead of getting the predictor's mean shape.
- :class:`InsightFaceBackend` (``kind="insightface106"``): what the official LivePortrait uses for source
  images: SCRFD-10G (``det_10g.onnx``, 512x512 letterboxed input) and the 106-point ``2d106det.onnx``, both of
  the ``buffalo_l`` pack, through the ``insightface`` package (:mod:`lp_renderer.faces.insightface`). The models
  are not redistributable here: they are found in the folder given, in LivePortrait's
  ``<weights dir>/insightface/models/buffalo_l``, or in insightface's usual ``~/.insightface/models/buffalo_l``.

``get_face_backend("auto")`` picks insightface when the package and both model files are available,
else dlib. Faces are always sorted largest box first, so face number N (:func:`select_faces`) means the
same thing for both backends. :mod:`lp_renderer.faces.tracking` follows one face through a video.

Named points (both backends, "left" = the eye on the image's left, i.e. the subject's right eye):

- ``eye_left_center`` / ``eye_right_center``: 106 points: mean of idx [33,35,40,39] / [87,89,94,93]
  (the official ``parse_pt2_from_pt106``); 68 points: mean of the eye contour 36-41 / 42-47.
- ``mouth_center``: the mid-point of the two mouth corners: 106 points idx 52 and 61 (official),
  68 points 48 and 54 (the official ``parse_pt2_from_pt68`` uses the same two corners).

These points only set the crop's roll angle; the crop's centre and size come from the bounding box
of all landmarks (see :mod:`lp_renderer.crop`), which the 68- and 106-point sets span alike (jaw line,
brows, chin).

Eye and lip open ratios (inputs of LivePortrait's eye/lip retargeting networks)
-------------------------------------------------------------------------------
LivePortrait trains its retargeting MLPs on ratios from its own 203-point landmarks (spec section 5):
eye = vertical eyelid distance at the eye's middle / eye width (corner to corner), lip = inner-lip gap
at the mouth's middle / distance between the mouth corners. Neither backend has those 203 points, so we
compute ratios on the iBUG 68-point layout (106-point faces are first reduced to 68 points through the
commonly used 106->68 index correspondence, ``_MAP_106_TO_68``), which puts both backends on one scale:

- raw eye ratio (per eye) = mean(|p37-p41|, |p38-p40|) / |p36-p39| (left), mean(|p43-p47|, |p44-p46|) /
  |p42-p45| (right). This is the classic eye aspect ratio.
- raw lip ratio = mean(|p61-p67|, |p62-p66|, |p63-p65|) / |p48-p54|.

The 68-point eyelid points 37/38 (43/44) sit at about 1/3 and 2/3 of the eye's width, where the lids are
closer together than at the middle that the 203-point ratio measures, and two of the three inner-lip gaps
are off-centre too. ``calibrated=True`` (the default) multiplies the raw ratios by
``EYE_RATIO_TO_LP203`` and ``LIP_RATIO_TO_LP203``. Those factors were measured with the dlib backend on
the project's real talking-face clips (``tests/lp_renderer/test_faces.py`` re-measures them):

- eye: a cubic through each lid's four 68-point samples (corner, 1/3, 2/3, corner), expressed in the
  eye's own frame, gives the lid gap at the middle; the least-squares factor from the raw mean gap to
  that middle gap is ``EYE_RATIO_TO_LP203``.
- lip: the middle inner-lip gap |p62-p66| is a point the 68 layout has; the least-squares factor from
  the three-gap mean to it (over frames with the mouth open) is ``LIP_RATIO_TO_LP203``.

This is a geometric calibration to the 203-point *definition*, not a fit to the 203-point model's
outputs (which cannot be run here): annotation conventions (e.g. where exactly a corner sits) may still
differ by a few percent.
"""

from __future__ import annotations

import logging
import os

from lp_renderer.errors import InputError

from .base import (
    EYE_RATIO_TO_LP203,
    LIP_RATIO_TO_LP203,
    Face,
    FaceBackend,
    FaceChoice,
    FaceKind,
    FaceNumberError,
    eye_open_ratios,
    lip_open_ratio,
    parse_face_option,
    select_faces,
)
from .dlib import DLIB_PREDICTOR_FILE, DlibBackend
from .insightface import InsightFaceBackend, insightface_available
from .tracking import faces_in_frames, iter_faces_in_frames

logger = logging.getLogger(__name__)

__all__ = [
    "DLIB_PREDICTOR_FILE",
    "EYE_RATIO_TO_LP203",
    "LIP_RATIO_TO_LP203",
    "DlibBackend",
    "Face",
    "FaceBackend",
    "FaceChoice",
    "FaceKind",
    "FaceNumberError",
    "eye_open_ratios",
    "faces_in_frames",
    "get_face_backend",
    "insightface_available",
    "InsightFaceBackend",
    "iter_faces_in_frames",
    "lip_open_ratio",
    "parse_face_option",
    "select_faces",
]


def get_face_backend(
    name: str = "auto",
    insightface_dir: str | os.PathLike | None = None,
    *,
    weights_dir: str | os.PathLike | None = None,
) -> FaceBackend:
    """``"dlib"``, ``"insightface"`` or ``"auto"`` (insightface when the package and its two model files are
    available, see :func:`lp_renderer.faces.insightface.resolve_model_dir`, else dlib). Raises InputError for an
    unknown name or a missing insightface setup."""
    key = str(name).strip().lower()
    if key == "auto":
        if insightface_available(insightface_dir, weights_dir):
            return InsightFaceBackend(insightface_dir, weights_dir=weights_dir)
        logger.debug("insightface or its models are not available; using the dlib face backend")
        return DlibBackend()
    if key == "dlib":
        return DlibBackend()
    if key == "insightface":
        return InsightFaceBackend(insightface_dir, weights_dir=weights_dir)
    raise InputError(f"Unknown face backend {name!r}; use 'auto', 'dlib' or 'insightface'.")
