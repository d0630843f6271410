"""Following one face through the frames of a video: detection every few frames, tracking in between, and
recovery when the face is lost."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

import numpy as np

from lp_renderer.errors import InputError

from .base import Face, FaceBackend, FaceChoice, best_overlap, parse_face_option, select_faces

logger = logging.getLogger(__name__)


def iter_faces_in_frames(
    backend: FaceBackend,
    frames: Iterable[np.ndarray],
    which: FaceChoice = "largest",
    *,
    detect_every: int | None = 1,
    max_tracked: int = 5,
    verify_every: int = 1,
) -> Iterator[tuple[np.ndarray, Face | None]]:
    """Streaming form of :func:`faces_in_frames`: yields ``(frame, face or None)`` as frames arrive."""
    choice = parse_face_option(which)
    if choice == "all":
        raise InputError("which='all' cannot be used for a driving video; pick one face (largest or a number).")
    every = None if detect_every is None else max(1, int(detect_every))
    verify_every = max(1, int(verify_every))
    prev: Face | None = None
    misses = 0  # consecutive frames where the detector did not find the followed face
    tracked = 0  # frames tracked since the face was detected or last verified
    for i, frame in enumerate(frames):
        face: Face | None = None
        detect_frame = every is not None and i % every == 0
        if prev is None:
            found = backend.detect(frame)
            if found:
                face = select_faces(found, choice, source=f"frame {i}")[0]
            tracked = 0
        elif detect_frame:
            face = best_overlap(backend.detect(frame), prev)
            if face is None:
                misses += 1
                if misses <= max_tracked:
                    face = backend.track(frame, prev)
            else:
                misses = 0
            tracked = 0
        else:
            tracked += 1
            if tracked % verify_every == 0:
                face = backend.track(frame, prev)
                tracked = 0
            else:
                face = backend.track(frame, prev, verify=False)
        yield frame, face
        if face is not None:
            prev = face
        elif misses > max_tracked or not detect_frame:
            prev = None  # lost: the next detection picks the face by `which` again
            misses = 0


def faces_in_frames(
    backend: FaceBackend,
    frames: Iterable[np.ndarray],
    which: FaceChoice = "largest",
    *,
    detect_every: int | None = 1,
    max_tracked: int = 5,
    verify_every: int = 1,
    progress: bool = False,
) -> list[Face | None]:
    """One face per video frame (None where it is lost), following the same person.

    The first frame with faces picks the face by ``which`` (``"largest"`` or an index; ``"all"`` is not
    meaningful for a driving video). Detection runs on every ``detect_every``-th frame and takes the
    face overlapping the previous one best (IoU > 0.3); the frames in between use ``backend.track``.
    When detection misses the followed face, tracking stands in for up to ``max_tracked`` detection
    frames; after that (or when tracking fails) the face counts as lost and the next detection picks a
    face by ``which`` again. Frames before the first detection are None.

    ``detect_every=None`` detects only to find the face (the first frame, and the frame after it was lost) and
    tracks it everywhere else: the cheap way for a driving video (the dlib backend re-fits the landmarks from
    the previous frame's, as the official pipeline does with its landmark model). Tracked frames are checked
    (``backend.track(..., verify=True)``, dlib: a local HOG pass) every ``verify_every``-th frame and re-fitted
    without the check in between, so a face that leaves the picture is noticed within ``verify_every`` frames.
    """
    frame_iter: Iterable[np.ndarray] = frames
    if progress:
        from tqdm import tqdm

        frame_iter = tqdm(frames, desc="faces", unit="frame")
    result = [face for _, face in iter_faces_in_frames(backend, frame_iter, which, detect_every=detect_every,
                                                        max_tracked=max_tracked, verify_every=verify_every)]
    n_found = sum(f is not None for f in result)
    logger.debug("faces_in_frames: face in %d of %d frames", n_found, len(result))
    return result
