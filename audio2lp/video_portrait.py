"""A portrait that is a video (``speak VIDEO SPEECH``, ``drive VIDEO DRIVING``): every source frame is its own
source, and the output frames are pasted back into the video's own frames.

The video is never held in memory. :func:`track_video_portrait` streams it once: the face is followed
(:func:`lp_renderer.faces.iter_faces_in_frames`, as for a driving video), each frame gets LivePortrait's source
crop (:data:`lp_renderer.crop.SOURCE_CROP` geometry, as a photo portrait, smoothed over a few frames), its
landmark ratios and a fingerprint of its pixels; frames where the face is lost hold the last good crop and
ratios (the first good ones before the face appears), as the driving path does. That is a few numbers per frame.
Then :func:`iter_source_frames` reads the frames again in any order of forward and backward runs
(:class:`SourceFrames`: ffmpeg seeking, checked frame by frame against the fingerprints, with at most a block of
frames in memory for a backward run) and prepares each one (crop, F, M, W's per-source work) right before it is
rendered. A frame shown twice (ping-pong) is prepared twice, so memory does not grow with the video's length.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from audio2lp.options import OptionError, literal
from lp_renderer.crop import SOURCE_CROP, Crop, PasteMask, iter_crops_for_frames, paste_back, paste_mask
from lp_renderer.errors import InputError, NoFaceError
from lp_renderer.faces import (
    FaceBackend,
    FaceNumberError,
    eye_open_ratios,
    iter_faces_in_frames,
    lip_open_ratio,
)

if TYPE_CHECKING:
    from audio2lp.media.probe import VideoInfo
    from lp_renderer.animation import AnimationOptions
    from lp_renderer.keypoints import KeypointInfo
    from lp_renderer.renderer import PreparedSource, Renderer
    from lp_renderer.source_video import SourceVideoMotion

log = logging.getLogger(__name__)

#: memory for the frames of one backward block (ping-pong), in bytes
BLOCK_BYTES = 64 << 20
#: a seek starts this many seconds before the first wanted frame (ffmpeg's seek lands at or after the time)
SEEK_MARGIN = 1.0


def is_video_portrait(portrait) -> bool:
    """True when ``portrait`` is a path that is not an image file (it is then read as a video)."""
    from audio2lp.portrait import is_image_path

    return isinstance(portrait, (str, os.PathLike)) and not is_image_path(portrait)


def fingerprint(frame: np.ndarray) -> int:
    """A 64-bit fingerprint of a frame's pixels (to check that a seek landed on the wanted frame)."""
    return int.from_bytes(hashlib.blake2b(np.ascontiguousarray(frame).data, digest_size=8).digest(), "little")


@dataclass
class VideoPortrait:
    """A tracked portrait video: per frame, its crop (``crops`` (N, 4) float64: centre x, y, side, angle in
    degrees), eye-open ratios (N, 2) and lip-open ratio (N,) float32 and pixel fingerprint (N,) uint64."""

    path: Path
    info: VideoInfo
    crops: np.ndarray
    eye_ratios: np.ndarray
    lip_ratios: np.ndarray
    fingerprints: np.ndarray
    n_lost: int = 0

    @property
    def n_frames(self) -> int:
        return len(self.crops)

    @property
    def fps(self) -> float:
        return self.info.fps

    def crop(self, i: int) -> Crop:
        cx, cy, size, angle = self.crops[i]
        return Crop.from_params((cx, cy), size, angle)


def track_video_portrait(path: str | os.PathLike, backend: FaceBackend, which: str | int = "largest", *,
                         max_frames: int | None = None, smooth_window: int = 5, info: VideoInfo | None = None,
                         progress: bool = False) -> VideoPortrait:
    """Stream the video at ``path`` once (its first ``max_frames`` frames) and track its face ``which``
    (``"largest"`` or a face number, chosen at the first frame with faces); see the module docstring. ``info``: the
    video already probed. Raises NoFaceError when no frame has a face."""
    from tqdm import tqdm

    from audio2lp.media.probe import probe_video
    from audio2lp.media.reader import FrameReader

    if which == "all":
        raise OptionError("face", "{face} all animates every face of a photo; a portrait video follows one face: "
                          "pick it with {face} largest or {face} N.")
    p = Path(path)
    info = info or probe_video(p)
    if info.n_frames <= 0:
        raise InputError(f"the portrait video {p} has no frames; give a video with at least one frame.")
    total = info.n_frames if max_frames is None else min(info.n_frames, max_frames)
    prints: list[int] = []
    with FrameReader(p, max_frames=max_frames, info=info) as reader, \
            tqdm(reader, total=total, desc="faces", unit="frame", disable=not progress, leave=False,
                 dynamic_ncols=True) as frames:

        def fingerprinted():
            for frame in frames:
                prints.append(fingerprint(frame))
                yield frame

        faces = iter_faces_in_frames(backend, fingerprinted(), which)
        # payloads are the landmark ratios of frames with a face (None where it is lost): a few numbers a frame
        payloads = ((None if face is None else (*eye_open_ratios(face), lip_open_ratio(face)), face)
                    for _, face in faces)
        rows, ratios = [], []
        try:
            for ratio, crop in iter_crops_for_frames(payloads, window=smooth_window, **SOURCE_CROP):
                rows.append((crop.center[0], crop.center[1], crop.size, crop.angle_deg))
                ratios.append(ratio)
        except NoFaceError:
            raise NoFaceError(f"No face was found in any frame of the portrait video {p}; use a video with a "
                              f"clearly visible, roughly frontal face.") from None
        except FaceNumberError as e:
            raise OptionError("face", e.describe("{face}").replace(e.source, literal(e.source))) from None
    n_lost = sum(r is None for r in ratios)
    first = next(r for r in ratios if r is not None)
    held = [first]
    for r in ratios:  # lost frames hold the last good ratios (the first good ones before the face appears)
        held.append(r if r is not None else held[-1])
    held = np.asarray(held[1:], np.float64)
    if n_lost:
        log.info("%s: the face is lost on %d of %d frames; they hold the last good crop", p, n_lost, len(rows))
    return VideoPortrait(p, info, np.asarray(rows, np.float64), held[:, :2].astype(np.float32),
                         held[:, 2].astype(np.float32), np.asarray(prints, np.uint64), n_lost)


def pingpong_indices(n_source: int, n_out: int) -> np.ndarray:
    """Source frame index of each of ``n_out`` output frames: 0..n-1, then n-2..1, then 0..n-1 again, and so on
    (the turning frames are not repeated, so the motion reverses without a stall or a jump); the first ``n_out``
    frames when the source is long enough. (n_out,) int64."""
    if n_source < 1 or n_out < 0:
        raise ValueError(f"need at least one source frame and n_out >= 0, got {n_source} and {n_out}")
    k = np.arange(n_out, dtype=np.int64)
    if n_source == 1:
        return np.zeros(n_out, np.int64)
    period = 2 * n_source - 2
    m = k % period
    return np.where(m < n_source, m, period - m)


def _runs(indices: Sequence[int]) -> Iterator[tuple[int, int, int]]:
    """Split an index sequence into maximal runs of step +1 or -1: ``(first, last, step)`` each."""
    idx = [int(i) for i in indices]
    start = 0
    while start < len(idx):
        end = start + 1
        step = idx[end] - idx[start] if end < len(idx) and abs(idx[end] - idx[start]) == 1 else 1
        while end < len(idx) and idx[end] - idx[end - 1] == step:
            end += 1
        yield idx[start], idx[end - 1], step
        start = end


class SourceFrames:
    """The frames of a tracked video by index, in any order, with bounded memory.

    Forward runs stream from one decoder; backward runs are read in blocks of at most :data:`BLOCK_BYTES`,
    each decoded forward and handed out in reverse. A run that does not start at frame 0 seeks
    (:data:`SEEK_MARGIN` before it) and finds where it landed by the fingerprints of :func:`track_video_portrait`;
    every frame handed out is checked against its fingerprint. When seeking does not land on known frames (some
    containers), the video is decoded from its start instead (slower, same frames).
    """

    def __init__(self, video: VideoPortrait, block_bytes: int = BLOCK_BYTES):
        self.video = video
        frame_bytes = video.info.width * video.info.height * 3
        self.block = int(max(2, min(512, block_bytes // max(frame_bytes, 1))))
        self.seeks = 0  # seeks that landed on known frames
        self._can_seek = True

    def read(self, indices: Iterable[int]) -> Iterator[tuple[int, np.ndarray]]:
        """``(index, frame)`` for every index of ``indices`` (each ``HxWx3`` uint8 RGB)."""
        n = self.video.n_frames
        idx = [int(i) for i in indices]
        if idx and (min(idx) < 0 or max(idx) >= n):
            raise IndexError(f"frame indices must be in 0..{n - 1}")
        for first, last, step in _runs(idx):
            if step == 1:
                yield from self._forward(first, last + 1)
                continue
            hi = first + 1  # the run goes first, first-1, ..., last
            while hi > last:
                lo = max(last, hi - self.block)
                block = list(self._forward(lo, hi))
                while block:
                    yield block.pop()
                hi = lo

    def _forward(self, start: int, stop: int) -> Iterator[tuple[int, np.ndarray]]:
        from audio2lp.media.reader import FrameReader

        video = self.video
        i = start  # the next frame to hand out
        while i < stop:
            opened = self._seek(i) if i > 0 and self._can_seek else None
            seeked = opened is not None
            if opened is None:
                opened = (FrameReader(video.path, max_frames=stop, info=video.info, queue_size=2), 0, None)
            reader, pos, first = opened
            mismatch = False
            with reader:
                for frame in reader if first is None else _chain(first, reader):
                    if pos >= stop:
                        break
                    if int(video.fingerprints[pos]) != fingerprint(frame):
                        if not seeked:
                            raise InputError(f"the portrait video {video.path} decoded differently the second time "
                                             f"(frame {pos}); re-encode it to MP4 (H.264) and try again.")
                        mismatch = True  # the seek landed on look-alike frames: read from the start instead
                        break
                    if pos >= i:
                        yield pos, frame
                        i = pos + 1
                    pos += 1
            if mismatch:
                self._can_seek = False
                log.info("seeking in %s does not land on known frames; reading it from the start", video.path)
            elif i < stop:
                raise InputError(f"the portrait video {video.path} ended after {pos} frames the second time, not "
                                 f"{video.n_frames}; re-encode it to MP4 (H.264) and try again.")

    def _seek(self, target: int):
        """A reader seeked to at most ``target`` and the index of its first frame: ``(reader, index, first)``, or
        None when the landing frame cannot be identified (seeking is then not tried again)."""
        from audio2lp.media.reader import FrameReader

        video = self.video
        fps = video.fps
        start = max(0.0, target / fps - SEEK_MARGIN)
        reader = FrameReader(video.path, info=video.info, start=start, queue_size=2)
        first = next(reader, None)
        landed = None
        if first is not None:
            fp = fingerprint(first)
            expected = int(round(start * fps))
            window = int(math.ceil(2 * SEEK_MARGIN * fps)) + 2
            candidates = [j for j in range(max(0, expected - window), min(target, expected + window) + 1)
                          if int(video.fingerprints[j]) == fp]
            if candidates:
                landed = min(candidates, key=lambda j: abs(j - expected))
        if landed is None:
            reader.close()
            self._can_seek = False
            log.info("seeking in %s does not land on known frames; reading it from the start instead", video.path)
            return None
        self.seeks += 1
        return reader, landed, first


def _chain(first, rest):
    yield first
    yield from rest


@dataclass
class SourceFrame:
    """One prepared frame of a portrait video: its index, the full frame (``HxWx3`` uint8), its crop, the 256x256
    crop, the prepared source (None when not asked for) and the paste-back mask (None without paste-back)."""

    index: int
    frame: np.ndarray
    crop: Crop
    crop_rgb: np.ndarray
    source: PreparedSource | None
    mask: PasteMask | None

    def composite(self, rendered: np.ndarray, pasteback: bool = True) -> np.ndarray:
        """A rendered 512x512 crop -> the output frame (pasted back into this frame, or the crop itself)."""
        if not pasteback:
            return rendered
        return paste_back(rendered, self.crop, self.frame, self.mask)


def iter_source_frames(renderer: Renderer | None, video: VideoPortrait, indices: Iterable[int], *,
                       pasteback: bool = True, prepare: bool = True) -> Iterator[SourceFrame]:
    """The frames ``indices`` of ``video``, cropped (decoding, cropping and paste masks one or two frames ahead in a
    background thread) and, with ``prepare``, prepared for rendering (F, M, x_s, W's per-source work, and the
    frame's landmark ratios) on ``renderer``."""
    from audio2lp.media.queue import Prefetcher

    frames = SourceFrames(video)

    def cropped():
        for i, frame in frames.read(indices):
            crop = video.crop(i)
            yield i, frame, crop, crop.warp(frame, 256), paste_mask(crop, frame.shape) if pasteback else None

    with Prefetcher(cropped(), size=2, name="audio2lp-source-frames") as items:
        for i, frame, crop, crop_rgb, mask in items:
            source = None
            if prepare:
                eyes = video.eye_ratios[i]
                source = renderer.prepare_source(crop_rgb, eye_ratios=(float(eyes[0]), float(eyes[1])),
                                                 lip_ratio=float(video.lip_ratios[i]))
            yield SourceFrame(i, frame, crop, crop_rgb, source, mask)


def source_motion(renderer: Renderer, video: VideoPortrait, n_frames: int, *, batch_size: int = 8,
                  progress: bool = False) -> KeypointInfo:
    """M on the crops of the first ``n_frames`` frames: their motion (n_frames), on the renderer's device."""
    from tqdm import tqdm

    from lp_renderer.keypoints import KeypointInfo

    infos, batch = [], []
    with tqdm(total=n_frames, desc="portrait motion", unit="frame", disable=not progress, leave=False,
              dynamic_ncols=True) as bar:
        for sf in iter_source_frames(None, video, range(n_frames), pasteback=False, prepare=False):
            batch.append(sf.crop_rgb)
            if len(batch) == batch_size or sf.index == n_frames - 1:
                infos.append(renderer.extract_motion(np.stack(batch)))
                bar.update(len(batch))
                batch = []
    return KeypointInfo.cat(infos)


# ------------------------------------------------------------------------------------------ rendering
def dubbed_frames(renderer: Renderer, video: VideoPortrait, lip_open: np.ndarray, *,
                  pasteback: bool = True) -> Iterator[np.ndarray]:
    """``speak VIDEO SPEECH``: one output frame per entry of ``lip_open`` (the speech's lip-open ratio at the video's
    frame rate). Output frame k shows source frame :func:`pingpong_indices` [k] with its own head pose, eyes and
    expression and its mouth set to ``lip_open[k]`` (:func:`lp_renderer.source_video.lip_keypoints`, relative to
    that frame's own lip ratio, so the source's mouth motion is replaced), pasted back into that frame."""
    from lp_renderer.source_video import lip_keypoints

    lip_open = np.asarray(lip_open, np.float32)
    order = pingpong_indices(video.n_frames, len(lip_open))
    for k, sf in enumerate(iter_source_frames(renderer, video, order, pasteback=pasteback)):
        x_d = lip_keypoints(renderer, sf.source, lip_open[k:k + 1])
        yield sf.composite(renderer.render(sf.source, x_d, batch_size=1)[0], pasteback)


def driven_frames(renderer: Renderer, video: VideoPortrait, motion: SourceVideoMotion, options: AnimationOptions,
                  *, driving_eye: np.ndarray | None = None, driving_lip: np.ndarray | None = None,
                  eye_target: float | None = None, pasteback: bool = True) -> Iterator[np.ndarray]:
    """``drive VIDEO DRIVING``: output frame i is source frame i with the composed, smoothed motion ``motion``
    (:func:`lp_renderer.source_video.source_video_motion`) applied through Algorithm 1
    (:func:`lp_renderer.source_video.source_frame_keypoints`), pasted back into that frame.
    ``driving_eye`` (n, 2) / ``driving_lip`` (n,): the driving ratios for eye/lip retargeting; ``eye_target``: the
    source-video eye retargeting target (None: off)."""
    from lp_renderer.source_video import source_frame_keypoints, source_video_keypoints

    for sf in iter_source_frames(renderer, video, range(motion.n_frames), pasteback=pasteback):
        i = sf.index
        exp, rot = motion.frames(slice(i, i + 1))
        x_d = source_video_keypoints(sf.source.info, exp, rot, motion.region)
        x_d = source_frame_keypoints(renderer, sf.source, x_d, options,
                                     driving_eye_ratio=None if driving_eye is None else driving_eye[i:i + 1, 0],
                                     driving_lip_ratio=None if driving_lip is None else driving_lip[i:i + 1],
                                     eye_target=eye_target)
        yield sf.composite(renderer.render(sf.source, x_d, batch_size=1)[0], pasteback)


def audio_by_priority(source: Path, source_has_audio: bool, driving: Path | None, driving_has_audio: bool,
                      priority: str = "driving") -> Path | None:
    """Whose audio a ``drive VIDEO DRIVING`` result carries (LivePortrait's ``audio_priority`` rule): the driving
    video's when it has audio and ``priority`` is 'driving', or when the source has none; else the source video's;
    None when neither has audio."""
    if not (source_has_audio or driving_has_audio):
        return None
    if (driving_has_audio and priority == "driving") or not source_has_audio:
        return driving
    return source
