"""Progressive outputs for streams (:meth:`audio2lp.Animator.stream`): a fragmented MP4 that plays while it is
written, and YUV4MPEG2 (y4m) frames for piping into another program.

:class:`FragmentedMp4Writer` runs ffmpeg with two pipes (raw RGB frames, 16 kHz float32 audio) and writes H.264 +
AAC as a fragmented MP4 (``empty_moov``, one fragment per second: a key frame every 25 frames), to a file or to a
file object such as standard output. A file is written as ``NAME.partial.mp4`` next to the target and renamed onto
it when the stream ends normally; if the run is stopped, ``NAME.partial.mp4`` stays: a playable prefix (every
complete fragment), clearly named as unfinished. The audio goes through a thread of its own so that neither pipe
can block the other (ffmpeg reads the two inputs at its own pace).

:class:`Y4mWriter` writes the frames as ``YUV4MPEG2`` (4:4:4, BT.601 limited range, 25 fps), which ffmpeg, mpv and
x264 read from a pipe with no further options; the audio is not in it (it is the caller's input).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import BinaryIO

import numpy as np

from audio2lp.errors import VideoError
from audio2lp.media.ffmpeg import ffmpeg_exe, popen, reason, stderr_tail, stop_process

__all__ = ["FragmentedMp4Writer", "Y4mWriter", "partial_path"]

log = logging.getLogger(__name__)


def partial_path(path: str | os.PathLike) -> Path:
    """Where a stream's MP4 grows until it is complete: ``NAME.partial.mp4`` beside ``NAME.mp4``."""
    p = Path(path)
    return p.with_name(p.stem + ".partial" + p.suffix)


class FragmentedMp4Writer:
    """H.264 (``crf``, ``veryfast``, ``zerolatency``) + AAC fragmented MP4 of ``(H, W, 3)`` uint8 RGB frames at
    ``fps`` with 16 kHz mono float32 audio; ``target``: a path (written as :func:`partial_path` until
    :meth:`close`) or a binary file object (e.g. ``sys.stdout.buffer``). :meth:`write` a frame and its audio;
    :meth:`close` finishes (and renames); :meth:`abort` stops and keeps the playable prefix of a file."""

    def __init__(self, target: str | os.PathLike | BinaryIO, size: tuple[int, int], fps: float = 25.0, *,
                 crf: int = 18, sample_rate: int = 16000):
        self.h, self.w = size  # odd sizes are padded to even (the last row/column repeated) for yuv420p
        self.path = None if hasattr(target, "write") else Path(target)
        self.partial = None if self.path is None else partial_path(self.path)
        self.frames = 0
        out = target.fileno() if self.path is None else None
        self._stderr = tempfile.TemporaryFile()
        r_audio, self._w_audio = os.pipe()
        cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
               "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{self.w + self.w % 2}x{self.h + self.h % 2}",
               "-r", f"{fps:g}",
               "-thread_queue_size", "64", "-i", "pipe:0",
               "-f", "f32le", "-ar", str(sample_rate), "-ac", "1", "-thread_queue_size", "64",
               "-i", f"pipe:{r_audio}",
               "-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency", "-crf", str(int(crf)),
               "-pix_fmt", "yuv420p", "-g", str(max(1, round(fps))), "-c:a", "aac", "-b:a", "128k",
               "-movflags", "+frag_keyframe+empty_moov+default_base_moof", "-frag_duration", "500000",
               "-flush_packets", "1", "-f", "mp4",
               "pipe:1" if self.path is None else "file:" + str(self.partial)]
        try:
            self.proc = popen(cmd, stdin=subprocess.PIPE, stdout=out if out is not None else subprocess.DEVNULL,
                              stderr=self._stderr, pass_fds=(r_audio,))
        finally:
            os.close(r_audio)
        # ffmpeg keeps its inputs in step (it waits for audio before reading more video), so each pipe is written
        # by a thread of its own: the audio (small) never waits behind a video frame; the video queue is bounded
        self._audio: queue.Queue = queue.Queue()
        self._video: queue.Queue = queue.Queue(maxsize=8)
        self._threads = [threading.Thread(target=self._feed, args=(q, f), name=f"audio2lp-stream-{n}", daemon=True)
                         for q, f, n in ((self._audio, os.fdopen(self._w_audio, "wb"), "audio"),
                                         (self._video, self.proc.stdin, "video"))]
        for t in self._threads:
            t.start()

    def _feed(self, q: queue.Queue, f) -> None:
        """Write the queue's items to the pipe ``f`` until None; then close it (end of that input)."""
        try:
            while (item := q.get()) is not None:
                f.write(item)
                f.flush()
        except (BrokenPipeError, OSError):
            while q.get() is not None:  # ffmpeg stopped: drain, so the writer never blocks
                pass
        finally:
            with contextlib.suppress(BrokenPipeError, OSError):
                f.close()

    def _failed(self) -> VideoError:
        return VideoError(f"ffmpeg could not write the stream ({reason(stderr_tail(self._stderr))}).")

    def write(self, image: np.ndarray, audio: np.ndarray) -> None:
        """One frame ``(H, W, 3)`` uint8 RGB and its audio ``(n,)`` float32."""
        if image.shape != (self.h, self.w, 3) or image.dtype != np.uint8:
            raise ValueError(f"frames must be ({self.h}, {self.w}, 3) uint8, got {image.shape} {image.dtype}")
        if self.proc.poll() is not None:
            raise self._failed()
        if self.h % 2 or self.w % 2:
            image = np.pad(image, ((0, self.h % 2), (0, self.w % 2), (0, 0)), mode="edge")
        self._audio.put(np.ascontiguousarray(audio, np.float32).tobytes())
        self._video.put(np.ascontiguousarray(image).tobytes())
        self.frames += 1

    def _end_inputs(self, timeout: float | None = None) -> None:
        for q in (self._audio, self._video):
            q.put(None)
        for t in self._threads:
            t.join(timeout)

    def close(self) -> None:
        """Finish the file (and rename ``NAME.partial.mp4`` onto ``NAME.mp4``)."""
        self._end_inputs()
        if self.proc.wait() != 0:
            raise self._failed()
        self._stderr.close()
        if self.partial is not None:
            os.replace(self.partial, self.path)

    def abort(self, keep: bool = True) -> None:
        """Stop: ffmpeg finishes the fragments it has (``keep``: the partial file stays, else it is removed)."""
        self._end_inputs(timeout=30)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        stop_process(self.proc)
        if self.partial is not None and (not keep or self.frames == 0):
            with contextlib.suppress(OSError):
                self.partial.unlink()


class Y4mWriter:
    """YUV4MPEG2 4:4:4 frames (BT.601, limited range) to a binary file object; the header is written with the
    first frame."""

    _M = np.array([[65.481, 128.553, 24.966], [-37.797, -74.203, 112.0], [112.0, -93.786, -18.214]]) / 255.0

    def __init__(self, out: BinaryIO, size: tuple[int, int], fps: int = 25):
        self.out, (self.h, self.w), self.fps = out, size, fps
        self.frames = 0

    def write(self, image: np.ndarray, audio: np.ndarray | None = None) -> None:
        """One ``(H, W, 3)`` uint8 RGB frame (``audio`` is ignored: y4m carries none)."""
        if self.frames == 0:
            self.out.write(f"YUV4MPEG2 W{self.w} H{self.h} F{self.fps}:1 Ip A1:1 C444\n".encode())
        yuv = image.astype(np.float32) @ self._M.T.astype(np.float32) + np.array([16, 128, 128], np.float32)
        planes = np.clip(np.rint(yuv), 0, 255).astype(np.uint8).transpose(2, 0, 1)  # (3, H, W): Y, Cb, Cr
        self.out.write(b"FRAME\n" + planes.tobytes())
        self.out.flush()
        self.frames += 1

    def close(self) -> None:
        self.out.flush()

    def abort(self, keep: bool = True) -> None:
        with contextlib.suppress(OSError):
            self.out.flush()
