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
    detect_every: int = 1,
    max_tracked: int = 5,
) -> Iterator[tuple[np.ndarray, Face | None]]:
    """Streaming form of :func:`faces_in_frames`: yields ``(frame, face or None)`` as frames arrive."""
    choice = parse_face_option(which)
    if choice == "all":
        raise InputError("which='all' cannot be used for a driving video; pick one face (largest or a number).")
    every = max(1, int(detect_every))
    prev: Face | None = None
    misses = 0  # consecutive frames where the detector did not find the followed face
    for i, frame in enumerate(frames):
        face: Face | None = None
        if prev is None:
            found = backend.detect(frame)
            if found:
                face = select_faces(found, choice, source=f"frame {i}")[0]
        elif i % every == 0:
            face = best_overlap(backend.detect(frame), prev)
            if face is None:
                misses += 1
                if misses <= max_tracked:
                    face = backend.track(frame, prev)
            else:
                misses = 0
        else:
            face = backend.track(frame, prev)
        yield frame, face
        if face is not None:
            prev = face
        elif misses > max_tracked or i % every != 0:
            prev = None  # lost: the next detection picks the face by `which` again
            misses = 0


def faces_in_frames(
    backend: FaceBackend,
    frames: Iterable[np.ndarray],
    which: FaceChoice = "largest",
    *,
    detect_every: int = 1,
    max_tracked: int = 5,
    progress: bool = False,
) -> list[Face | None]:
    """One face per video frame (None where it is lost), following the same person.

    The first frame with faces picks the face by ``which`` (``"largest"`` or an index; ``"all"`` is not
    meaningful for a driving video). Detection runs on every ``detect_every``-th frame and takes the
    face overlapping the previous one best (IoU > 0.3); the frames in between use ``backend.track``.
    When detection misses the followed face, tracking stands in for up to ``max_tracked`` detection
    frames; after that (or when tracking fails) the face counts as lost and the next detection picks a
    face by ``which`` again. Frames before the first detection are None.
    """
    frame_iter: Iterable[np.ndarray] = frames
    if progress:
        from tqdm import tqdm

        frame_iter = tqdm(frames, desc="faces", unit="frame")
    result = [face for _, face in iter_faces_in_frames(backend, frame_iter, which, detect_every=detect_every,
                                                        max_tracked=max_tracked)]
    n_found = sum(f is not None for f in result)
    logger.debug("faces_in_frames: face in %d of %d frames", n_found, len(result))
    return result
