"""Reading video through ffmpeg: :func:`read_frames` streams ``HxWx3`` uint8 RGB frames with bounded memory;
:class:`FrameReader` does the same with decoding in a background thread (:mod:`audio2lp.media.queue`), so that
decoding overlaps with the consumer's work. Frames are the decoded frames as stored in the file (ffmpeg
``-fps_mode passthrough``: no frame is duplicated or dropped), after the rotation the container asks for; pass
``fps=`` to resample a variable-frame-rate video to a constant rate. Probing is :mod:`audio2lp.media.probe`.

Every problem a user can fix raises :class:`audio2lp.errors.VideoError` with one sentence that says what is wrong
and what to do.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import subprocess
import tempfile
from collections.abc import Iterator

import numpy as np

from audio2lp.errors import VideoError

from .ffmpeg import (
    ffmpeg_exe,
    fps_fraction,
    input_args,
    passthrough_args,
    popen,
    reason,
    stderr_tail,
    stop_process,
)
from .probe import VideoInfo, probe_video
from .queue import Prefetcher

__all__ = ["FrameReader", "read_frames"]

logger = logging.getLogger(__name__)



class _Decoder:
    """One ffmpeg process decoding a video stream to raw RGB frames on its stdout."""

    def __init__(self, info: VideoInfo, max_frames: int | None, fps: float | None, start: float = 0.0):
        exe = ffmpeg_exe()
        self.info = info
        self.shape = (info.height, info.width, 3)
        self.frame_bytes = info.height * info.width * 3
        self.frames = 0
        self._stderr = tempfile.TemporaryFile()
        cmd = [exe, "-hide_banner", "-nostdin", "-v", "error"]
        if start > 0:
            cmd += ["-ss", f"{start:.6f}"]  # input seeking: decoding starts at the first frame at or after it
        cmd += [*input_args(info.path), "-map", "0:V:0"]
        if fps is not None:
            cmd += ["-vf", f"fps={fps_fraction(fps)}"]
        cmd += passthrough_args(exe)
        if max_frames is not None:
            cmd += ["-frames:v", str(int(max_frames))]
        cmd += ["-pix_fmt", "rgb24", "-s", f"{info.width}x{info.height}", "-f", "rawvideo", "pipe:1"]
        try:
            self.proc = popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=self._stderr, bufsize=1 << 20)
        except OSError as exc:  # pragma: no cover - broken install
            self._stderr.close()
            raise VideoError(f"Cannot run ffmpeg ({exc}); reinstall imageio-ffmpeg.") from exc

    def read(self) -> np.ndarray | None:
        """Next frame, or None at the end of the stream."""
        buf = np.empty(self.shape, dtype=np.uint8)
        view = memoryview(buf).cast("B")
        got = 0
        stdout = self.proc.stdout
        assert stdout is not None
        while got < self.frame_bytes:
            n = stdout.readinto(view[got:])
            if not n:
                break
            got += n
        if got == 0:
            return None
        if got < self.frame_bytes:
            self.finish(partial=True)
        self.frames += 1
        return buf

    def finish(self, partial: bool = False) -> None:
        """Reap ffmpeg after the end of its output; raise if decoding failed."""
        try:
            rc = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:  # pragma: no cover - ffmpeg hung after closing stdout
            rc = -1
        err = stderr_tail(self._stderr)
        src = self.info.path
        if rc != 0 or partial:
            if rc != 0:
                logger.debug("ffmpeg exited with code %s decoding %s: %s", rc, src, err)
            raise VideoError(f"Decoding {src} failed after {self.frames} frames ({reason(err)}); "
                             "the file may be damaged: re-encode it to MP4 (H.264) and try again.")
        if err:
            logger.debug("ffmpeg messages while decoding %s: %s", src, err)
        if self.frames == 0:
            raise VideoError(f"{src} contains no video frames that can be decoded; "
                             "give a video with at least one frame.")

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.kill()

    def close(self) -> None:
        stop_process(self.proc)
        with contextlib.suppress(Exception):
            self._stderr.close()


def _iter_decoder(dec: _Decoder) -> Iterator[np.ndarray]:
    try:
        while True:
            frame = dec.read()
            if frame is None:
                dec.finish()
                return
            yield frame
    finally:
        dec.close()


def _check_read_args(max_frames: int | None, fps: float | None, start: float = 0.0) -> None:
    if not (math.isfinite(start) and start >= 0):
        raise ValueError(f"start must be >= 0 seconds (got {start})")
    if max_frames is not None and int(max_frames) < 1:
        raise ValueError(f"max_frames must be at least 1 (got {max_frames})")
    if fps is not None and not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number (got {fps})")


def read_frames(path: str | os.PathLike, max_frames: int | None = None, *,
                fps: float | None = None, info: VideoInfo | None = None,
                start: float = 0.0) -> Iterator[np.ndarray]:
    """Iterate over the frames of a video as ``(H, W, 3)`` uint8 RGB arrays (a new array each).

    Memory stays bounded (one frame plus the pipe buffer). The file is probed before this
    returns, so a missing or unreadable file raises here, not at the first ``next()``. Breaking
    out of the loop and dropping (or ``.close()``-ing) the iterator stops ffmpeg.

    Args:
        path: the video file.
        max_frames: stop after this many frames (None: all).
        fps: resample to this constant frame rate (frames are duplicated or dropped by
            timestamp); None keeps the decoded frames as stored.
        info: a :class:`VideoInfo` of ``path`` already probed (skips probing again).
        start: begin at the first frame at or after this time (seconds from the start; ffmpeg's input
            seeking, exact to the frame for constant-rate files; callers that need a given frame index
            check what they got, e.g. :class:`audio2lp.video_portrait.SourceFrames`).

    Raises:
        VideoError: as :func:`probe_video`; also when decoding fails midway, and (during
            iteration) when the video yields no frame.
    """
    _check_read_args(max_frames, fps, start)
    info = info or probe_video(path, count_frames=False)
    return _iter_decoder(_Decoder(info, max_frames, fps, start))


class FrameReader(Prefetcher):
    """Decode a video in a background thread; iterate to get ``(H, W, 3)`` uint8 RGB frames.

    Up to ``queue_size`` decoded frames wait in a bounded queue, so decoding overlaps with the
    consumer's work while memory stays bounded. An exception in the decoding thread (e.g. a
    :class:`VideoError` for a file damaged midway) is raised in the consumer at the frame where it
    happened. :meth:`close` (or leaving the ``with`` block, or dropping the reader) stops ffmpeg
    at once and reaps it, even when the consumer stops early.

    Example::

        with FrameReader("driving.mp4") as reader:
            fps = reader.info.fps
            for frame in reader:
                ...

    Attributes:
        info: the :class:`VideoInfo` of the file (probed when the reader is created; the frame
            count is exact only when counting was cheap).
        frames_read: frames handed to the consumer so far.
    """

    def __init__(self, path: str | os.PathLike, max_frames: int | None = None, *,
                 fps: float | None = None, queue_size: int = 8, info: VideoInfo | None = None,
                 start: float = 0.0):
        _check_read_args(max_frames, fps, start)
        if queue_size < 1:
            raise ValueError(f"queue_size must be at least 1 (got {queue_size})")
        self.info = info or probe_video(path)
        self.frames_read = 0
        decoder = _Decoder(self.info, max_frames, fps, start)
        super().__init__(_iter_decoder(decoder), queue_size, name="audio2lp-frame-reader", on_stop=decoder.kill)

    def __next__(self) -> np.ndarray:
        frame = super().__next__()
        self.frames_read += 1
        return frame
