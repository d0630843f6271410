"""What every face backend shares: :class:`Face` (box, score, landmarks), the :class:`FaceBackend` interface,
the eye / lip open ratios on one scale for both landmark layouts, and how faces are chosen (largest first).

See :mod:`lp_renderer.faces` for the backends, the named points and how the ratios were calibrated.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from lp_renderer.errors import InputError, NoFaceError
from lp_renderer.image_io import to_rgb_uint8

FaceKind = Literal["dlib68", "insightface106"]
FaceChoice = str | int


# Multiply raw 68-point ratios by these to approximate LivePortrait's 203-point ratio definitions
# (see the module docstring for how they were measured).
EYE_RATIO_TO_LP203 = 1.16
LIP_RATIO_TO_LP203 = 1.03

# iBUG-68 index -> insightface-106 index, region by region (the widely used correspondence for
# 2d106det; 106-point contour is ordered chin first, zig-zagging outwards).
_MAP_106_TO_68 = np.array(
    [1, 10, 12, 14, 16, 3, 5, 7, 0, 23, 21, 19, 32, 30, 28, 26, 17]  # jaw 0-16
    + [43, 48, 49, 51, 50]  # brow 17-21 (image left)
    + [102, 103, 104, 105, 101]  # brow 22-26
    + [72, 73, 74, 86, 78, 79, 80, 85, 84]  # nose 27-35
    + [35, 41, 42, 39, 37, 36]  # eye 36-41 (image left)
    + [89, 95, 96, 93, 91, 90]  # eye 42-47
    + [52, 64, 63, 71, 67, 68, 61, 58, 59, 53, 56, 55]  # outer lip 48-59
    + [65, 66, 62, 70, 69, 57, 60, 54],  # inner lip 60-67
    dtype=np.int64,
)

_EYE_IDX = {
    "dlib68": ((36, 37, 38, 39, 40, 41), (42, 43, 44, 45, 46, 47)),
    "insightface106": ((33, 35, 40, 39), (87, 89, 94, 93)),
}
_MOUTH_IDX = {"dlib68": (48, 54), "insightface106": (52, 61)}
_N_POINTS = {"dlib68": 68, "insightface106": 106}



# --------------------------------------------------------------------------------------------------
# Face


@dataclass(frozen=True, eq=False)
class Face:
    """One detected face. Coordinates are pixels of the image passed to ``detect`` (x right, y down).

    - ``box``: ``(x0, y0, x1, y1)`` floats, the detector's box (x1/y1 exclusive).
    - ``score``: detector confidence (dlib HOG margin, dlib CNN confidence, or SCRFD probability).
    - ``landmarks``: ``Nx2`` float32, read-only; N = 68 (``kind="dlib68"``) or 106
      (``kind="insightface106"``).
    """

    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray = field(repr=False)
    kind: FaceKind

    def __post_init__(self) -> None:
        if self.kind not in _N_POINTS:
            raise ValueError(f"unknown landmark kind {self.kind!r}")
        lmk = np.array(self.landmarks, dtype=np.float32).reshape(-1, 2)
        if lmk.shape[0] != _N_POINTS[self.kind]:
            raise ValueError(f"{self.kind} faces need {_N_POINTS[self.kind]} landmarks, got {lmk.shape[0]}")
        lmk.setflags(write=False)
        object.__setattr__(self, "landmarks", lmk)
        object.__setattr__(self, "box", tuple(float(v) for v in self.box))
        object.__setattr__(self, "score", float(self.score))

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)

    @property
    def eye_left_center(self) -> np.ndarray:
        """Centre of the eye on the image's left (subject's right eye), float64 (2,)."""
        return self.landmarks[list(_EYE_IDX[self.kind][0])].astype(np.float64).mean(axis=0)

    @property
    def eye_right_center(self) -> np.ndarray:
        """Centre of the eye on the image's right (subject's left eye), float64 (2,)."""
        return self.landmarks[list(_EYE_IDX[self.kind][1])].astype(np.float64).mean(axis=0)

    @property
    def eye_center(self) -> np.ndarray:
        """Mid-point of the two eye centres, float64 (2,)."""
        return (self.eye_left_center + self.eye_right_center) / 2.0

    @property
    def mouth_center(self) -> np.ndarray:
        """Mid-point of the two mouth corners, float64 (2,)."""
        a, b = _MOUTH_IDX[self.kind]
        return (self.landmarks[a].astype(np.float64) + self.landmarks[b].astype(np.float64)) / 2.0

    @property
    def landmarks68(self) -> np.ndarray:
        """The landmarks in the iBUG 68-point layout (106-point faces are reduced), float32 68x2."""
        if self.kind == "dlib68":
            return self.landmarks
        return self.landmarks[_MAP_106_TO_68]

    def transformed(self, matrix: np.ndarray) -> Face:
        """This face with box and landmarks mapped through a 2x3 affine matrix (the box becomes the
        axis-aligned bounds of the mapped box corners)."""
        m = np.asarray(matrix, dtype=np.float64)[:2]
        x0, y0, x1, y1 = self.box
        corners = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]]) @ m[:, :2].T + m[:, 2]
        lo, hi = corners.min(axis=0), corners.max(axis=0)
        lmk = self.landmarks.astype(np.float64) @ m[:, :2].T + m[:, 2]
        return Face((lo[0], lo[1], hi[0], hi[1]), self.score, lmk, self.kind)


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def best_overlap(faces: Iterable[Face], previous: Face, min_iou: float = 0.3) -> Face | None:
    """The face of ``faces`` whose box overlaps ``previous``'s most (IoU above ``min_iou``), or None."""
    best, best_iou = None, min_iou
    for f in faces:
        iou = _iou(f.box, previous.box)
        if iou > best_iou:
            best, best_iou = f, iou
    return best


def _sort_largest_first(faces: Iterable[Face]) -> list[Face]:
    return sorted(faces, key=lambda f: (-f.area, -f.score))


# --------------------------------------------------------------------------------------------------
# ratios


def _dist(p: np.ndarray, a: int, b: int) -> float:
    return float(np.linalg.norm(p[a] - p[b]))


def eye_open_ratios(face: Face, calibrated: bool = True) -> tuple[float, float]:
    """(left, right) eye open ratios, left = the eye on the image's left.

    Raw: mean of the two eyelid distances / eye-corner distance on the 68-point layout; with
    ``calibrated`` multiplied by :data:`EYE_RATIO_TO_LP203` to approximate LivePortrait's 203-point
    ratio (see the module docstring). About 0.3 (raw) for open eyes, near 0.05 for closed ones.
    """
    p = face.landmarks68.astype(np.float64)
    k = EYE_RATIO_TO_LP203 if calibrated else 1.0
    left = (_dist(p, 37, 41) + _dist(p, 38, 40)) / 2.0 / (_dist(p, 36, 39) + 1e-6)
    right = (_dist(p, 43, 47) + _dist(p, 44, 46)) / 2.0 / (_dist(p, 42, 45) + 1e-6)
    return left * k, right * k


def lip_open_ratio(face: Face, calibrated: bool = True) -> float:
    """Lip open ratio: mean of the three inner-lip gaps / mouth-corner distance on the 68-point layout;
    with ``calibrated`` multiplied by :data:`LIP_RATIO_TO_LP203` (see the module docstring). 0 for a
    closed mouth."""
    p = face.landmarks68.astype(np.float64)
    gap = (_dist(p, 61, 67) + _dist(p, 62, 66) + _dist(p, 63, 65)) / 3.0
    k = LIP_RATIO_TO_LP203 if calibrated else 1.0
    return gap / (_dist(p, 48, 54) + 1e-6) * k


# --------------------------------------------------------------------------------------------------
# backends


class FaceBackend(abc.ABC):
    """Detects faces (largest first) and, optionally, tracks one from frame to frame."""

    name: str = ""
    kind: FaceKind

    @abc.abstractmethod
    def detect(self, image_rgb: np.ndarray) -> list[Face]:
        """All faces in an ``HxWx3`` uint8 RGB image, largest box first (empty list if none)."""

    def track(self, image_rgb: np.ndarray, previous: Face, verify: bool = True) -> Face | None:
        """The face in ``image_rgb`` that continues ``previous`` (a face of the previous frame), or None
        if it is lost. ``verify=False`` allows a backend to skip its check that the face is really there (a
        cheaper step between checks). The default re-detects and takes the best-overlapping face."""
        return best_overlap(self.detect(image_rgb), previous)


def _check_image(image_rgb: np.ndarray) -> np.ndarray:
    a = np.asarray(image_rgb)
    if a.ndim == 3 and a.shape[2] == 3 and a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    return to_rgb_uint8(a, name="the image passed to face detection")


# --------------------------------------------------------------------------------------------------
# choosing faces


def parse_face_option(value: FaceChoice) -> str | int:
    """Normalise a face choice (``which``): ``"largest"``, ``"all"`` or a 0-based index (int)."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        if value < 0:
            raise InputError(f"face number {value} is negative; use 0 for the largest face, 1 for the next, ...")
        return int(value)
    text = str(value).strip().lower()
    if text in ("largest", "all"):
        return text
    if text.isdigit():
        return int(text)
    raise InputError(f"Invalid face choice {value!r}; use 'largest', 'all' or a face number (0 = largest).")


def select_faces(faces: Sequence[Face], which: FaceChoice = "largest", *, source: str = "the image") -> list[Face]:
    """Pick faces by ``which``: ``"largest"`` (default) -> [largest], ``"all"`` -> all (largest first),
    ``N`` -> [the N-th largest, 0-based]. Raises NoFaceError if there is no face, InputError if N is out
    of range (:class:`FaceNumberError`)."""
    choice = parse_face_option(which)
    ordered = _sort_largest_first(faces)
    if not ordered:
        raise NoFaceError(
            f"No face was found in {source}; use a photo with a clearly visible, roughly frontal face."
        )
    if choice == "largest":
        return ordered[:1]
    if choice == "all":
        return ordered
    assert isinstance(choice, int)
    if choice >= len(ordered):
        raise FaceNumberError(choice, len(ordered), source)
    return [ordered[choice]]


class FaceNumberError(InputError):
    """A face number (``which``) beyond the faces found: ``number``, ``found`` and ``source`` are kept so that an
    application can word it in its own terms (:meth:`describe`)."""

    def __init__(self, number: int, found: int, source: str):
        self.number, self.found, self.source = number, found, source
        super().__init__(self.describe("face number"))

    def describe(self, name: str) -> str:
        """The message with the choice called ``name`` (e.g. ``"--face"``)."""
        found = f"{self.found} face was" if self.found == 1 else f"{self.found} faces were"
        return (f"{name} {self.number} is out of range: {found} found in {self.source}; use a number from 0 to "
                f"{self.found - 1} (0 = largest).")


