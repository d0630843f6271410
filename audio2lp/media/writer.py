"""Writing video through ffmpeg: :class:`VideoWriter` encodes H.264 (libx264, or NVENC on an NVIDIA GPU:
:mod:`audio2lp.media.encoders`; yuv420p, ``-movflags +faststart``)
from frames fed one by one, encoding in a background thread (:mod:`audio2lp.media.queue`), and can mux an AAC
audio track at the end, trimmed or padded to the video's duration. Odd frame sizes are **padded** by one pixel on
the right and/or bottom, repeating the last column/row (``even_size="crop"`` drops it instead), because yuv420p
needs even dimensions.

The output is written to a hidden temporary file in the destination folder and renamed onto the destination only
on success (:mod:`audio2lp.media.atomic`), so an error or Ctrl-C never leaves a partial file. Every problem a user
can fix raises :class:`audio2lp.errors.VideoError` (or :class:`audio2lp.errors.AudioError` for the audio track)
with one sentence that says what is wrong and what to do.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import subprocess
import tempfile
import threading
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from audio2lp.errors import AudioError, VideoError

from .atomic import AtomicFile, check_output_path
from .encoders import ENCODERS, encoder_args, h264_encoder
from .ffmpeg import (
    LimitExceeded,
    ffmpeg_exe,
    fps_fraction,
    input_args,
    popen,
    reason,
    run_bounded,
    stderr_tail,
    stop_process,
)
from .probe import probe_media
from .queue import BackgroundQueue

__all__ = ["VideoWriter"]

logger = logging.getLogger(__name__)

_MUX_TIMEOUT = 600.0
_X264_PRESETS = (
    "ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
    "placebo",
)
_AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)
_WRITER_SUFFIXES = (".mp4", ".mov", ".mkv")
_FASTSTART_SUFFIXES = (".mp4", ".mov")


class _WriterState:
    """The encoding thread and its ffmpeg process (apart from VideoWriter, for the finalizer)."""

    def __init__(self, proc: subprocess.Popen, stderr: Any, in_shape: tuple[int, int],
                 out_shape: tuple[int, int], queue_size: int):
        self.proc = proc
        self.stderr = stderr
        self.in_shape = in_shape
        self.out_shape = out_shape
        self.queue = BackgroundQueue(queue_size)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self.run, name="audio2lp-video-writer", daemon=True)

    def run(self) -> None:
        (h, w), (oh, ow) = self.in_shape, self.out_shape
        stdin = self.proc.stdin
        assert stdin is not None
        try:
            while True:
                try:
                    frame = self.queue.get()
                except queue.Empty:
                    if self.queue.stopped:
                        return
                    continue
                if frame is None or self.queue.stopped:
                    return
                if (oh, ow) != (h, w):
                    if oh > h or ow > w:
                        frame = np.pad(frame, ((0, oh - h), (0, ow - w), (0, 0)), mode="edge")
                    else:
                        frame = np.ascontiguousarray(frame[:oh, :ow])
                stdin.write(memoryview(frame).cast("B"))
        except BaseException as exc:  # noqa: BLE001 - reported by VideoWriter.write/close
            self.error = exc

    def put(self, frame: np.ndarray | None) -> bool:
        return self.queue.put(frame, alive=self.thread.is_alive)

    def kill(self) -> None:
        self.queue.stop()
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.kill()
        self.queue.stop()
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            self.thread.join(timeout=30)
        stop_process(self.proc)
        with contextlib.suppress(Exception):
            self.stderr.close()


def _abort_all(parts: list[AtomicFile], state: _WriterState | None) -> None:
    if state is not None:
        state.kill()
    for part in parts:
        part.discard()


class VideoWriter:
    """Write an H.264 MP4 frame by frame, optionally with an AAC audio track; atomically.

    Frames (``(H, W, 3)`` uint8 RGB, all the same size) are copied, queued (bounded) and encoded
    by ffmpeg (``codec``: libx264 or h264_nvenc, default :func:`~audio2lp.media.encoders.h264_encoder`; yuv420p,
    quality ``crf``, ``-movflags +faststart``) in a background thread, so encoding overlaps with rendering.
    Odd sizes are padded to even by repeating the last column/row (``even_size="pad"``, default) or cropped by
    one pixel (``"crop"``).

    Audio (``audio``): a path to an audio file or to a video whose first audio stream is used
    (e.g. the driving video), or a float numpy array (``(n,)`` mono or ``(n, channels)``, values
    in [-1, 1]) at ``audio_sample_rate`` Hz. It is encoded to AAC after the last frame, starting
    ``audio_start`` seconds into the source, and made to fit the video by ``audio_fit``:

    - ``"video"`` (default): trimmed or padded with silence to exactly the video's duration
      ``n_frames / fps`` (to the sample; the mp4 edit list keeps the AAC padding out).
    - ``"shortest"``: cut to the shorter of audio and video (``-shortest``).
    - ``"none"``: kept whole.

    A source file without an audio stream gives a silent video and a logged warning.

    The output goes to a hidden ``.NAME.part-XXXXXXXX.mp4`` next to ``path`` and is renamed onto
    ``path`` by :meth:`close` (or leaving the ``with`` block normally); on any exception,
    KeyboardInterrupt included, or :meth:`abort`, nothing is left behind. The path is validated
    when the writer is created, before any frame is rendered.

    Example::

        with VideoWriter("out.mp4", fps=25, audio=speech, audio_sample_rate=16000) as w:
            for frame in frames:
                w.write(frame)

    Raises:
        VideoError: bad output path or an encoder that cannot run here (at creation), ffmpeg failing while
            encoding or muxing.
        AudioError: the audio source file is missing or unreadable (at creation).
        ValueError: bad arguments or frames (wrong dtype, shape, or a size change).
    """

    def __init__(self, path: str | os.PathLike, fps: float, *, crf: int = 18, preset: str = "medium",
                 audio: str | os.PathLike | np.ndarray | None = None, audio_sample_rate: int = 16000,
                 audio_fit: str = "video", audio_start: float = 0.0, audio_bitrate: str = "128k",
                 even_size: str = "pad", queue_size: int = 8, codec: str | None = None):
        fps = float(fps)
        if not (math.isfinite(fps) and fps > 0):
            raise ValueError(f"fps must be a positive number (got {fps})")
        if not 0 <= int(crf) <= 51:
            raise ValueError(f"crf must be between 0 and 51 (got {crf})")
        if preset not in _X264_PRESETS:
            raise ValueError(f"preset must be one of {', '.join(_X264_PRESETS)} (got {preset!r})")
        if audio_fit not in ("video", "shortest", "none"):
            raise ValueError(f"audio_fit must be 'video', 'shortest' or 'none' (got {audio_fit!r})")
        if even_size not in ("pad", "crop"):
            raise ValueError(f"even_size must be 'pad' or 'crop' (got {even_size!r})")
        if not (math.isfinite(audio_start) and audio_start >= 0):
            raise ValueError(f"audio_start must be >= 0 seconds (got {audio_start})")
        if queue_size < 1:
            raise ValueError(f"queue_size must be at least 1 (got {queue_size})")
        if codec is not None and codec not in ENCODERS:
            raise ValueError(f"codec must be one of {', '.join(ENCODERS)} (got {codec!r})")
        self.path = check_output_path(path, _WRITER_SUFFIXES)
        self.codec = codec or h264_encoder()
        self.fps = fps
        self.crf = int(crf)
        self.preset = preset
        self.audio_fit = audio_fit
        self.audio_start = float(audio_start)
        self.audio_bitrate = audio_bitrate
        self.even_size = even_size
        self.queue_size = queue_size
        self.frames_written = 0
        self.frame_size: tuple[int, int] | None = None  # (height, width) of the input frames
        self._rate = fps_fraction(fps)
        self._audio_array: np.ndarray | None = None
        self._audio_path: str | None = None
        self._audio_sr = int(audio_sample_rate)
        self._parts: list[AtomicFile] = []
        self._out: AtomicFile | None = None
        self._video_tmp: AtomicFile | None = None
        self._state: _WriterState | None = None
        self._finished = False
        self._prepare_audio(audio)
        self._finalizer = weakref.finalize(self, _abort_all, self._parts, None)

    # -- audio ---------------------------------------------------------------------------------

    def _prepare_audio(self, audio: str | os.PathLike | np.ndarray | None) -> None:
        if audio is None:
            return
        if isinstance(audio, np.ndarray):
            if self._audio_sr <= 0:
                raise ValueError(f"audio_sample_rate must be positive (got {self._audio_sr})")
            arr = np.asarray(audio)
            if arr.ndim == 1:
                arr = arr[:, None]
            if arr.ndim != 2 or not 1 <= arr.shape[1] <= 8:
                raise ValueError(f"audio must have shape (n,) or (n, channels) (got {audio.shape})")
            if not np.issubdtype(arr.dtype, np.floating):
                raise ValueError(f"audio must be a float array with values in [-1, 1] (got {arr.dtype})")
            arr = np.ascontiguousarray(np.clip(np.nan_to_num(arr), -1.0, 1.0), dtype=np.float32)
            self._audio_array = arr.copy() if arr is audio else arr
            return
        head = probe_media(audio, AudioError, "audio")
        if not head.has_audio:
            logger.warning("%s has no audio stream; the output video will be silent", os.fspath(audio))
            return
        self._audio_path = os.fspath(audio)
        self._audio_sr = head.audio_sample_rate or 48000

    @property
    def has_audio(self) -> bool:
        """True when an audio track will be muxed."""
        return self._audio_array is not None or self._audio_path is not None

    # -- lifecycle -----------------------------------------------------------------------------

    def open(self) -> VideoWriter:
        """Create the temporary output file(s); called by ``with`` and by the first write."""
        if self._out is None:
            if self._finished:
                raise RuntimeError("this VideoWriter is already closed")
            self._out = AtomicFile(self.path)
            self._parts.append(self._out)
            if self.has_audio:
                self._video_tmp = AtomicFile(self.path, tag="video")
                self._parts.append(self._video_tmp)
        return self

    def __enter__(self) -> VideoWriter:
        return self.open()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _start_encoder(self, h: int, w: int) -> None:
        if self.even_size == "pad":
            oh, ow = h + h % 2, w + w % 2
        else:
            oh, ow = h - h % 2, w - w % 2
            if oh == 0 or ow == 0:
                raise ValueError(f"frames of {w}x{h} are too small to crop to an even size")
        if (oh, ow) != (h, w):
            logger.info("frame size %dx%d is odd; %s to %dx%d for yuv420p", w, h,
                        "padding" if self.even_size == "pad" else "cropping", ow, oh)
        assert self._out is not None
        target = self._video_tmp.tmp if self._video_tmp is not None else self._out.tmp
        exe = ffmpeg_exe()
        cmd = [exe, "-hide_banner", "-nostdin", "-y", "-v", "error",
               "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{ow}x{oh}",
               "-framerate", str(self._rate), *input_args("pipe:0"),
               "-map", "0:v:0", *encoder_args(self.codec, self.preset, self.crf), "-pix_fmt", "yuv420p"]
        if self._video_tmp is None and self.path.suffix.lower() in _FASTSTART_SUFFIXES:
            cmd += ["-movflags", "+faststart"]
        cmd.append(os.fspath(target))
        stderr = tempfile.TemporaryFile()
        try:
            proc = popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=stderr,
                          bufsize=0)
        except OSError as exc:  # pragma: no cover - broken install
            stderr.close()
            raise VideoError(f"Cannot run ffmpeg ({exc}); reinstall imageio-ffmpeg.") from exc
        self._state = _WriterState(proc, stderr, (h, w), (oh, ow), self.queue_size)
        self._finalizer.detach()
        self._finalizer = weakref.finalize(self, _abort_all, self._parts, self._state)
        self._state.thread.start()

    def _encoder_error(self) -> VideoError:
        state = self._state
        assert state is not None
        with contextlib.suppress(Exception):
            state.proc.wait(timeout=30)
        err = stderr_tail(state.stderr)
        logger.debug("ffmpeg encoder output: %s", err)
        rc = state.proc.returncode
        if err:
            why = reason(err)
        elif rc is not None and rc < 0:
            why = f"ffmpeg was stopped by signal {-rc}"
        else:
            why = str(state.error or f"ffmpeg exit code {rc}")
        return VideoError(f"Encoding {self.path} failed ({why}); "
                          "check free disk space and that the output folder is writable.")

    def write(self, frame: np.ndarray) -> None:
        """Queue one ``(H, W, 3)`` uint8 RGB frame (blocks while the queue is full)."""
        if self._finished:
            raise RuntimeError("this VideoWriter is already closed")
        if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] != 3:
            shape = getattr(frame, "shape", None)
            raise ValueError(f"frames must be (H, W, 3) RGB arrays (got shape {shape})")
        if frame.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 (got {frame.dtype}); convert with "
                             "np.clip(x, 0, 255).astype(np.uint8)")
        h, w = frame.shape[:2]
        self.open()
        if self._state is None:
            self.frame_size = (h, w)
            self._start_encoder(h, w)
        elif (h, w) != self.frame_size:
            raise ValueError(f"all frames must have the same size: got {w}x{h} after "
                             f"{self.frame_size[1]}x{self.frame_size[0]}")
        state = self._state
        assert state is not None
        if state.error is not None or not state.put(np.array(frame, dtype=np.uint8, order="C")):
            raise self._encoder_error()
        self.frames_written += 1

    @property
    def duration(self) -> float:
        """Duration of the video written so far (seconds): ``frames_written / fps``."""
        return float(self.frames_written / self._rate)

    def close(self) -> Path:
        """Finish encoding, mux the audio, rename onto the destination; return its path.

        On failure everything is cleaned up and the exception is raised.
        """
        if self._finished:
            return self.path
        try:
            if self.frames_written == 0 or self._state is None:
                raise RuntimeError("VideoWriter.close(): no frame was written")
            state = self._state
            if not state.put(None):
                raise self._encoder_error()
            state.thread.join()
            if state.error is not None:
                raise self._encoder_error()
            assert state.proc.stdin is not None
            state.proc.stdin.close()
            rc = state.proc.wait()
            if rc != 0:
                raise self._encoder_error()
            state.kill()  # reaps and closes; the process has already exited
            if self.has_audio:
                self._mux_audio()
            assert self._out is not None
            path = self._out.commit()
        except BaseException:
            self.abort()
            raise
        self._finished = True
        self._finalizer.detach()
        if self._video_tmp is not None:
            self._video_tmp.discard()
        logger.debug("wrote %s (%d frames at %s fps)", path, self.frames_written, self._rate)
        return path

    def abort(self) -> None:
        """Stop encoding and delete every temporary file; the destination is left untouched."""
        self._finished = True
        self._finalizer()

    # -- muxing --------------------------------------------------------------------------------

    def _mux_audio(self) -> None:
        assert self._out is not None and self._video_tmp is not None
        exe = ffmpeg_exe()
        video_duration = self.frames_written / self._rate  # exact Fraction
        cmd = [exe, "-hide_banner", "-nostdin", "-y", "-v", "error", *input_args(self._video_tmp.tmp)]
        feed: bytes | None = None
        sr = self._audio_sr
        if self._audio_array is not None:
            arr = self._audio_array[int(round(self.audio_start * sr)):]
            if self.audio_fit == "video":
                n = int(round(video_duration * sr))
                if len(arr) >= n:
                    arr = arr[:n]
                else:
                    arr = np.concatenate([arr, np.zeros((n - len(arr), arr.shape[1]), np.float32)])
            if len(arr) == 0:
                logger.warning("the audio is empty after audio_start=%s s; the output video will be "
                               "silent", self.audio_start)
                self._copy_video_only()
                return
            feed = np.ascontiguousarray(arr, dtype="<f4").tobytes()
            cmd += ["-f", "f32le", "-ar", str(sr), "-ac", str(arr.shape[1]), *input_args("pipe:0")]
            filters: list[str] = []
        else:
            assert self._audio_path is not None
            if self.audio_start > 0:
                cmd += ["-ss", f"{self.audio_start:.6f}"]
            cmd += input_args(self._audio_path)
            filters = ["asetpts=PTS-STARTPTS"]
            if self.audio_fit == "video":
                n = int(round(video_duration * sr))
                filters += [f"apad=whole_len={n}", f"atrim=end_sample={n}"]
        if sr not in _AAC_RATES:
            filters.append("aresample=48000")
        cmd += ["-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy", "-c:a", "aac", "-b:a", self.audio_bitrate]
        if filters:
            cmd += ["-af", ",".join(filters)]
        if self.audio_fit == "shortest":
            cmd += ["-shortest"]
        if self.path.suffix.lower() in _FASTSTART_SUFFIXES:
            cmd += ["-movflags", "+faststart"]
        cmd.append(os.fspath(self._out.tmp))
        self._run_mux(cmd, feed)

    def _copy_video_only(self) -> None:
        assert self._out is not None and self._video_tmp is not None
        cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-y", "-v", "error",
               *input_args(self._video_tmp.tmp), "-map", "0:v:0", "-c", "copy"]
        if self.path.suffix.lower() in _FASTSTART_SUFFIXES:
            cmd += ["-movflags", "+faststart"]
        self._run_mux(cmd + [os.fspath(self._out.tmp)], None)

    def _run_mux(self, cmd: list[str], feed: bytes | None) -> None:
        try:
            rc, _, err = run_bounded(cmd, timeout=_MUX_TIMEOUT, feed=feed)
        except LimitExceeded:
            raise VideoError(f"Adding the audio track to {self.path} took more than {_MUX_TIMEOUT:g} s; check that "
                             "the audio source is a complete, readable file.") from None
        if rc != 0:
            logger.debug("ffmpeg mux output: %s", err[-4000:])
            raise VideoError(f"Adding the audio track to {self.path} failed ({reason(err)}); "
                             "check that the audio source is a complete, readable file.")
