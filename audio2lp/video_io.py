"""Video input and output through the ffmpeg binary that ships with ``imageio-ffmpeg``.

Reading
    :func:`probe_video` returns a :class:`VideoInfo` (frame rate, frame count, size, duration,
    audio). :func:`read_frames` streams ``HxWx3`` uint8 RGB frames with bounded memory;
    :class:`FrameReader` does the same with decoding in a background thread, so that decoding
    overlaps with the consumer's work. Frames are the decoded frames as stored in the file
    (ffmpeg ``-fps_mode passthrough``: no frame is duplicated or dropped), after the rotation the
    container asks for; pass ``fps=`` to resample a variable-frame-rate video to a constant rate.

Writing
    :class:`VideoWriter` encodes H.264 (libx264, yuv420p, ``-movflags +faststart``) from frames
    fed one by one, encoding in a background thread, and can mux an AAC audio track at the end,
    trimmed or padded to the video's duration. Odd frame sizes are **padded** by one pixel on the
    right and/or bottom, repeating the last column/row (``even_size="crop"`` drops it instead),
    because yuv420p needs even dimensions.

Outputs are written to a hidden temporary file in the destination folder and renamed onto the
destination only on success (:func:`atomic_output`), so an error or Ctrl-C never leaves a partial
file. :func:`check_output_path` validates a destination before any expensive work.

Every problem a user can fix raises :class:`audio2lp.errors.VideoError` (or
:class:`audio2lp.errors.AudioError` for the audio track) with one sentence that says what is
wrong and what to do.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import os
import queue
import re
import secrets
import subprocess
import tempfile
import threading
import weakref
from collections.abc import Iterator, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from audio2lp.errors import AudioError, VideoError

__all__ = [
    "VideoInfo",
    "probe_video",
    "read_frames",
    "FrameReader",
    "VideoWriter",
    "atomic_output",
    "check_output_path",
    "ffmpeg_exe",
    "COUNT_PIXEL_BUDGET",
]

logger = logging.getLogger(__name__)

COUNT_PIXEL_BUDGET = 1.5e9
""":func:`probe_video` counts frames exactly (by decoding) when ``width * height * frames`` is at
most this many pixels (about 3 s of decoding on 2 CPU cores, e.g. 700 frames of 1080p or 20 000
frames of 256x256); above it the count is estimated from duration and frame rate."""

_PROBE_TIMEOUT = 600.0  # seconds; only reached on a pathological file or a hung file system
_MUX_TIMEOUT = 600.0
_X264_PRESETS = (
    "ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
    "placebo",
)
_AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)
_WRITER_SUFFIXES = (".mp4", ".mov", ".mkv")
_FASTSTART_SUFFIXES = (".mp4", ".mov")
_IMAGE_DEMUXERS = re.compile(r"^(image2|tty|[\w]+_pipe)$")


# --------------------------------------------------------------------------------------------
# ffmpeg binary and helpers
# --------------------------------------------------------------------------------------------


def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary shipped with ``imageio-ffmpeg`` (or ``$IMAGEIO_FFMPEG_EXE``)."""
    try:
        import imageio_ffmpeg
    except ImportError as exc:  # pragma: no cover - imageio-ffmpeg is a dependency
        raise VideoError("Reading and writing video needs ffmpeg; install it with "
                         "`pip install imageio-ffmpeg`.") from exc
    try:
        return imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError as exc:  # pragma: no cover - broken install
        raise VideoError(f"imageio-ffmpeg has no usable ffmpeg binary ({exc}); "
                         "reinstall it with `pip install --force-reinstall imageio-ffmpeg`.") from exc


@functools.lru_cache(maxsize=4)
def _ffmpeg_major(exe: str) -> int:
    """Major version of ``exe`` (99 when it cannot be told, e.g. a git build)."""
    try:
        out = subprocess.run([exe, "-hide_banner", "-version"], capture_output=True, timeout=30,
                             stdin=subprocess.DEVNULL).stdout.decode("utf-8", "replace")
    except (OSError, subprocess.TimeoutExpired):  # pragma: no cover
        return 99
    m = re.search(r"version \D*(\d+)\.(\d+)", out)
    return int(m.group(1)) if m else 99


def _passthrough_args(exe: str) -> list[str]:
    """Output options that keep every decoded frame as it is (no duplication, no dropping)."""
    # -fps_mode appeared in ffmpeg 5.1; older builds only know -vsync.
    return ["-vsync", "passthrough"] if _ffmpeg_major(exe) < 6 else ["-fps_mode", "passthrough"]


def _stderr_tail(fh: Any, limit: int = 4000) -> str:
    """Last lines ffmpeg wrote to the temporary file ``fh`` (for logs and error messages)."""
    try:
        fh.flush()
        size = fh.seek(0, os.SEEK_END)
        fh.seek(max(0, size - limit))
        return fh.read().decode("utf-8", "replace").strip()
    except (OSError, ValueError):
        return ""


_KNOWN_REASONS = (
    "moov atom not found", "Invalid data found when processing input", "No space left on device",
    "Permission denied", "No such file or directory", "End of file", "Invalid argument",
)


def _reason(stderr: str) -> str:
    """The most telling part of ffmpeg's error output, for a one-sentence message."""
    for known in _KNOWN_REASONS:
        if known in stderr:
            return known
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "rror" in ln or "nvalid" in ln or "failed" in ln.lower():
            return re.sub(r"^\[[^\]]*\]\s*", "", ln)[:300]
    return re.sub(r"^\[[^\]]*\]\s*", "", lines[-1])[:300] if lines else "no message"


def _popen(cmd: list[str], **kw: Any) -> subprocess.Popen:
    logger.debug("running %s", subprocess.list2cmdline(cmd))
    # A new session: Ctrl-C in the terminal reaches Python only, and we stop ffmpeg ourselves.
    return subprocess.Popen(cmd, start_new_session=True, **kw)


def _stop_process(proc: subprocess.Popen | None, *, kill: bool = True) -> None:
    """Kill ``proc`` (if asked and still running) and reap it, so no zombie is left."""
    if proc is None:
        return
    if kill and proc.poll() is None:
        with contextlib.suppress(OSError):
            proc.kill()
    with contextlib.suppress(Exception):
        proc.wait(timeout=30)
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.close()


def _fps_fraction(fps: float) -> Fraction:
    """Exact rational frame rate: NTSC rates (29.97, 23.976, 59.94, ...) become N*1000/1001."""
    for base in (24, 30, 48, 60, 120, 240):
        ntsc = Fraction(base * 1000, 1001)
        if abs(fps - float(ntsc)) < 0.0051:
            return ntsc
    frac = Fraction(fps).limit_denominator(1001)
    if abs(float(frac) - fps) > 1e-6:
        frac = Fraction(fps).limit_denominator(1_000_000)
    return frac


def _display(path: str | os.PathLike) -> str:
    return os.fspath(path)


# --------------------------------------------------------------------------------------------
# Probing
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe_video` found out about a video file.

    Attributes:
        path: the file, as given.
        fps: frames per second. The exact rational rate when the file is constant-rate
            (``30000/1001`` gives 29.97002997...), else the average rate.
        n_frames: number of frames :func:`read_frames` yields (without ``fps=``).
        n_frames_exact: True when ``n_frames`` was counted by decoding the whole stream, False when
            it is ``round(duration * fps)`` (large files, see :data:`COUNT_PIXEL_BUDGET`).
        width, height: size of the frames :func:`read_frames` yields (after container rotation).
        duration: duration in seconds as the container reports it (10 ms resolution; the longest
            stream, audio included), or ``n_frames / fps`` when the container does not say.
        has_audio: the file has at least one audio stream.
        audio_sample_rate: sample rate (Hz) of the first audio stream, None without audio.
        audio_channels: channel count of the first audio stream, None without audio or unknown.
        audio_codec: ffmpeg's name of the first audio stream's codec (``"aac"``, ``"mp3"``, ``"opus"``,
            ``"pcm_s16le"``, ...), None without audio.
        codec: ffmpeg's name of the video codec (``"h264"``, ``"mpeg4"``, ``"vp9"``, ...).
        container: ffmpeg's name of the demuxer (``"mov,mp4,m4a,3gp,3g2,mj2"``, ``"matroska,webm"``).
        constant_frame_rate: False when the average rate differs from the stream's nominal rate
            (a variable-frame-rate recording, e.g. from a phone or a screen recorder).
    """

    path: str
    fps: float
    n_frames: int
    n_frames_exact: bool
    width: int
    height: int
    duration: float
    has_audio: bool
    audio_sample_rate: int | None
    audio_channels: int | None
    codec: str
    container: str
    constant_frame_rate: bool
    audio_codec: str | None = None


@dataclasses.dataclass
class _Header:
    container: str = ""
    duration: float | None = None
    video_codec: str | None = None
    video_size: tuple[int, int] | None = None
    avg_fps: float | None = None
    has_video: bool = False
    has_audio: bool = False
    audio_sample_rate: int | None = None
    audio_channels: int | None = None
    audio_codec: str | None = None


_STREAM_RE = re.compile(
    r"^\s*Stream #0:\d+(?:\[[^\]]*\])?(?:\([^)]*\))?: (Video|Audio|Subtitle|Data|Attachment): (.*)$"
)
_CHANNEL_NAMES = {"mono": 1, "stereo": 2, "2.1": 3, "3.0": 3, "quad": 4, "4.0": 4, "5.0": 5,
                  "5.1": 6, "5.1(side)": 6, "6.1": 7, "7.1": 8}


def _parse_rate(value: str, suffix: str) -> float:
    return float(value) * (1000.0 if suffix == "k" else 1.0)


def _parse_header(text: str) -> _Header:
    """Parse the ``Input #0`` section that ffmpeg prints to stderr."""
    head = _Header()
    in_input = False
    for line in text.splitlines():
        if line.startswith("Input #0, "):
            in_input = True
            m = re.match(r"Input #0, (.*), from '", line)
            head.container = m.group(1) if m else ""
            continue
        if not in_input:
            continue
        if line.startswith(("Output #", "Stream mapping:")) or line.startswith("[") and "Output" in line:
            break
        m = re.search(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)", line)
        if m:
            head.duration = int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))
            continue
        m = _STREAM_RE.match(line)
        if not m:
            continue
        kind, rest = m.groups()
        if kind == "Video" and not head.has_video and "(attached pic)" not in rest:
            head.has_video = True
            head.video_codec = rest.split(",", 1)[0].split(" ", 1)[0].strip()
            size = re.search(r", (\d+)x(\d+)[, \n]", rest + "\n")
            if size:
                head.video_size = (int(size.group(1)), int(size.group(2)))
            fps = re.search(r"([\d.]+)(k?) fps", rest)
            if fps:
                head.avg_fps = _parse_rate(*fps.groups())
        elif kind == "Audio" and not head.has_audio:
            head.has_audio = True
            head.audio_codec = rest.split(",", 1)[0].split(" ", 1)[0].strip() or None
            sr = re.search(r"(\d+) Hz", rest)
            head.audio_sample_rate = int(sr.group(1)) if sr else None
            fields = [f.strip() for f in rest.split(",")]
            for f in fields:
                if f in _CHANNEL_NAMES:
                    head.audio_channels = _CHANNEL_NAMES[f]
                    break
                ch = re.fullmatch(r"(\d+) channels(?: \(.*\))?", f)
                if ch:
                    head.audio_channels = int(ch.group(1))
                    break
    return head


def _open_error(path: str | os.PathLike, stderr: str, error_cls: type[Exception],
                what: str = "video") -> Exception:
    """The error to raise when ffmpeg cannot open ``path`` at all."""
    name = _display(path)
    low = stderr.lower()
    if "no such file" in low:
        return error_cls(f"The {what} file {name} does not exist; check the path.")
    if "permission denied" in low:
        return error_cls(f"The {what} file {name} cannot be read (permission denied); "
                         "check its permissions.")
    article = "an" if what[0] in "aeiou" else "a"
    return error_cls(f"{name} is not {article} {what} file ffmpeg can read ({_reason(stderr)}); "
                     f"check that it is a complete, undamaged {what} file or convert it to "
                     f"{'MP4 (H.264)' if what == 'video' else 'WAV'}.")


def _check_input_file(path: str | os.PathLike, error_cls: type[Exception], what: str) -> None:
    p = Path(path)
    if not p.exists():
        raise error_cls(f"The {what} file {_display(path)} does not exist; check the path.")
    if p.is_dir():
        a = "an" if what[0] in "aeiou" else "a"
        raise error_cls(f"{_display(path)} is a folder, not {a} {what} file; give the path of {a} {what} file.")
    if p.stat().st_size == 0:
        raise error_cls(f"The {what} file {_display(path)} is empty; give a complete {what} file.")


def _run_probe(cmd: list[str], path: str | os.PathLike, error_cls: type[Exception], what: str,
               timeout: float = _PROBE_TIMEOUT) -> tuple[int, str]:
    logger.debug("running %s", subprocess.list2cmdline(cmd))
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, timeout=timeout, start_new_session=True)
    except subprocess.TimeoutExpired as exc:
        raise error_cls(f"ffmpeg took more than {timeout:.0f} s to read {_display(path)}; "
                        f"check that the {what} file is complete and on a working disk.") from exc
    except OSError as exc:  # pragma: no cover - broken install
        raise VideoError(f"Cannot run ffmpeg ({exc}); reinstall imageio-ffmpeg.") from exc
    return proc.returncode, proc.stderr.decode("utf-8", "replace")


def _probe_media(path: str | os.PathLike, error_cls: type[Exception], what: str) -> _Header:
    """Header of any media file (no decoding); used for audio sources."""
    _check_input_file(path, error_cls, what)
    exe = ffmpeg_exe()
    _, err = _run_probe([exe, "-hide_banner", "-nostdin", "-i", os.fspath(path)], path, error_cls, what)
    if "Input #0" not in err:
        raise _open_error(path, err, error_cls, what)
    return _parse_header(err)


def probe_video(path: str | os.PathLike, *, count_frames: bool | None = None) -> VideoInfo:
    """Describe the video file at ``path`` (any container ffmpeg reads: mp4, mov, mkv, webm, avi,
    mpg, ...).

    Args:
        path: the video file.
        count_frames: True counts the frames exactly by decoding the whole video stream (about
            500 Mpixel/s on 2 cores), False estimates them from duration and frame rate, None
            (default) counts when that is cheap (:data:`COUNT_PIXEL_BUDGET`).

    Raises:
        VideoError: the file is missing, empty, a folder, not a video ffmpeg can read (corrupt,
            truncated, a text file), a still image, has no video stream, or has no frames.
    """
    _check_input_file(path, VideoError, "video")
    exe = ffmpeg_exe()
    src = os.fspath(path)
    # Decode one frame: showinfo gives the exact (rational) frame rate and the size after the
    # rotation the container asks for.
    base = [exe, "-hide_banner", "-nostdin", "-v", "verbose", "-i", src]
    one = ["-map", "0:V:0", "-vf", "showinfo", "-frames:v", "1", "-f", "null", "-"]
    rc, err = _run_probe(base + one, path, VideoError, "video")
    if "Input #0" not in err:
        raise _open_error(path, err, VideoError)
    head = _parse_header(err)
    if _IMAGE_DEMUXERS.match(head.container):
        raise VideoError(f"{src} is a still image or text, not a video; give a video file "
                         "(mp4, mov, mkv, webm, avi, ...).")
    if not head.has_video:
        raise VideoError(f"{src} has no video stream; give a file that contains video.")
    frame = re.search(r"\bn:\s*0\b.*?\bs:(\d+)x(\d+)", err)
    if frame is None:
        if rc != 0 and "frames decoded" not in err and "Task finished" not in err:
            raise _open_error(path, err, VideoError)
        raise VideoError(f"{src} contains no video frames that can be decoded; "
                         "give a video with at least one frame.")
    width, height = int(frame.group(1)), int(frame.group(2))

    rate: Fraction | None = None
    m = re.search(r"config in time_base: \S+, frame_rate: (\d+)/(\d+)", err)
    if m and int(m.group(1)) > 0 and int(m.group(2)) > 0:
        rate = Fraction(int(m.group(1)), int(m.group(2)))
    avg = head.avg_fps
    cfr = True
    if rate is not None and (avg is None or abs(float(rate) - avg) <= 0.0051 * max(1.0, avg / 100)):
        fps = float(rate)
    elif avg:
        fps = avg
        cfr = rate is None
        if rate is not None:
            logger.debug("%s: average frame rate %.3f differs from the nominal %s (variable frame "
                         "rate)", src, avg, rate)
    else:
        fps = 0.0

    duration = head.duration
    estimate = round(duration * fps) if duration and fps else None
    if count_frames is None:
        count_frames = estimate is None or width * height * estimate <= COUNT_PIXEL_BUDGET
    n_frames: int | None = None
    if count_frames:
        cmd = base + ["-map", "0:V:0", *_passthrough_args(exe), "-f", "null", "-"]
        rc2, err2 = _run_probe(cmd, path, VideoError, "video")
        m2 = re.search(r"Output stream #0:0 \(video\): (\d+) frames? encoded", err2)
        if m2 is None:
            m2 = list(re.finditer(r"frame=\s*(\d+)", err2))[-1] if "frame=" in err2 else None
        if m2 is None:
            raise VideoError(f"Cannot count the frames of {src} ({_reason(err2)}); "
                             "check that the video is complete or re-encode it to MP4 (H.264).")
        n_frames = int(m2.group(1))
        if rc2 != 0:
            logger.warning("ffmpeg reported an error after %d frames of %s: %s", n_frames, src,
                           _reason(err2))
        if n_frames == 0:
            raise VideoError(f"{src} contains no video frames that can be decoded; "
                             "give a video with at least one frame.")
    if fps <= 0:
        if n_frames and duration:
            fps = n_frames / duration
        else:
            logger.warning("%s: frame rate unknown, assuming 25 fps", src)
            fps = 25.0
    exact = n_frames is not None
    if n_frames is None:
        n_frames = max(1, estimate if estimate is not None else 1)
    if not duration:
        duration = n_frames / fps
    return VideoInfo(
        path=src, fps=fps, n_frames=n_frames, n_frames_exact=exact, width=width, height=height,
        duration=float(duration), has_audio=head.has_audio,
        audio_sample_rate=head.audio_sample_rate if head.has_audio else None,
        audio_channels=head.audio_channels if head.has_audio else None,
        codec=head.video_codec or "", container=head.container, constant_frame_rate=cfr,
        audio_codec=head.audio_codec if head.has_audio else None,
    )


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


class _Decoder:
    """One ffmpeg process decoding a video stream to raw RGB frames on its stdout."""

    def __init__(self, info: VideoInfo, max_frames: int | None, fps: float | None):
        exe = ffmpeg_exe()
        self.info = info
        self.shape = (info.height, info.width, 3)
        self.frame_bytes = info.height * info.width * 3
        self.frames = 0
        self._stderr = tempfile.TemporaryFile()
        cmd = [exe, "-hide_banner", "-nostdin", "-v", "error", "-i", info.path, "-map", "0:V:0"]
        if fps is not None:
            cmd += ["-vf", f"fps={_fps_fraction(fps)}"]
        cmd += _passthrough_args(exe)
        if max_frames is not None:
            cmd += ["-frames:v", str(int(max_frames))]
        cmd += ["-pix_fmt", "rgb24", "-s", f"{info.width}x{info.height}", "-f", "rawvideo", "pipe:1"]
        try:
            self.proc = _popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
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
        err = _stderr_tail(self._stderr)
        src = self.info.path
        if rc != 0 or partial:
            if rc != 0:
                logger.debug("ffmpeg exited with code %s decoding %s: %s", rc, src, err)
            raise VideoError(f"Decoding {src} failed after {self.frames} frames ({_reason(err)}); "
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
        _stop_process(self.proc)
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


def _check_read_args(max_frames: int | None, fps: float | None) -> None:
    if max_frames is not None and int(max_frames) < 1:
        raise ValueError(f"max_frames must be at least 1 (got {max_frames})")
    if fps is not None and not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number (got {fps})")


def read_frames(path: str | os.PathLike, max_frames: int | None = None, *,
                fps: float | None = None, info: VideoInfo | None = None) -> Iterator[np.ndarray]:
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

    Raises:
        VideoError: as :func:`probe_video`; also when decoding fails midway, and (during
            iteration) when the video yields no frame.
    """
    _check_read_args(max_frames, fps)
    info = info or probe_video(path, count_frames=False)
    return _iter_decoder(_Decoder(info, max_frames, fps))


_END = object()


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


class _ReaderState:
    """Everything the decoding thread touches (kept apart from :class:`FrameReader`, so that a
    reader dropped without ``close()`` is garbage-collected and its finalizer stops ffmpeg)."""

    def __init__(self, decoder: _Decoder, queue_size: int):
        self.decoder = decoder
        self.queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, name="audio2lp-frame-reader", daemon=True)

    def put(self, item: object) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                frame = self.decoder.read()
                if frame is None:
                    self.decoder.finish()
                    self.put(_END)
                    return
                if not self.put(frame):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer thread
            if not self.stop.is_set():
                self.put(_Failure(exc))

    def shutdown(self) -> None:
        self.stop.set()
        self.decoder.kill()
        with contextlib.suppress(queue.Empty):
            while True:
                self.queue.get_nowait()
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            self.thread.join(timeout=30)
        self.decoder.close()


class FrameReader:
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
                 fps: float | None = None, queue_size: int = 8, info: VideoInfo | None = None):
        _check_read_args(max_frames, fps)
        if queue_size < 1:
            raise ValueError(f"queue_size must be at least 1 (got {queue_size})")
        self.info = info or probe_video(path)
        self.frames_read = 0
        self._done = False
        self._state = _ReaderState(_Decoder(self.info, max_frames, fps), queue_size)
        self._finalizer = weakref.finalize(self, _ReaderState.shutdown, self._state)
        self._state.thread.start()

    def __iter__(self) -> FrameReader:
        return self

    def __next__(self) -> np.ndarray:
        if self._done:
            raise StopIteration
        state = self._state
        while True:
            try:
                item = state.queue.get(timeout=0.1)
                break
            except queue.Empty:
                if not state.thread.is_alive() and state.queue.empty():
                    self._done = True
                    self.close()
                    raise RuntimeError("the frame reader thread stopped without a result") from None
        if item is _END:
            self._done = True
            self.close()
            raise StopIteration
        if isinstance(item, _Failure):
            self._done = True
            self.close()
            raise item.exc
        self.frames_read += 1
        return item  # type: ignore[return-value]

    def close(self) -> None:
        """Stop decoding and ffmpeg now; safe to call more than once."""
        self._done = True
        self._finalizer()

    def __enter__(self) -> FrameReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------------------------
# Output paths
# --------------------------------------------------------------------------------------------


def _output_folder(path: Path) -> Path:
    folder = path.absolute().parent
    if not folder.exists():
        raise VideoError(f"The output folder {folder} does not exist; create it or choose another "
                         "output path.")
    if not folder.is_dir():
        raise VideoError(f"{folder} is not a folder; choose an output path inside an existing folder.")
    if path.is_dir():
        raise VideoError(f"The output path {path} is a folder; give a file name such as "
                         f"{path / 'out.mp4'}.")
    return folder


def _create_exclusive(folder: Path, name: str) -> Path:
    """Create an empty file ``folder/name`` (mode 0666 minus umask); fail if it exists."""
    target = folder / name
    fd = os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    os.close(fd)
    return target


def check_output_path(path: str | os.PathLike,
                      suffixes: Sequence[str] | None = (".mp4",)) -> Path:
    """Validate an output file path before any expensive work and return it as a Path.

    Checks that the suffix is one of ``suffixes`` (case-insensitive; None accepts any), that the
    path is not a folder, that its folder exists, and that a file can be created there (by
    creating and removing a hidden probe file).

    Raises:
        VideoError: with one sentence saying what is wrong and what to do.
    """
    p = Path(path).expanduser()
    if suffixes:
        allowed = tuple(s.lower() for s in suffixes)
        if p.suffix.lower() not in allowed:
            names = " or ".join(allowed)
            raise VideoError(f"The output file {p.name or p} must end in {names}; choose a name "
                             f"like {(p.stem or 'output') + allowed[0]}.")
    folder = _output_folder(p)
    try:
        probe = _create_exclusive(folder, f".{p.name}.writetest-{secrets.token_hex(4)}")
        probe.unlink()
    except OSError as exc:
        raise VideoError(f"Cannot write to the output folder {folder} ({exc.strerror or exc}); "
                         "choose a folder you can write to.") from exc
    return p


class _AtomicFile:
    """A hidden temporary file next to ``path``, renamed onto ``path`` by :meth:`commit`."""

    def __init__(self, path: str | os.PathLike, tag: str = "part"):
        self.path = Path(path).expanduser()
        folder = _output_folder(self.path)
        name = f".{self.path.name}.{tag}-{secrets.token_hex(4)}{self.path.suffix}"
        try:
            self.tmp = _create_exclusive(folder, name)
        except OSError as exc:
            raise VideoError(f"Cannot write to the output folder {folder} ({exc.strerror or exc}); "
                             "choose a folder you can write to.") from exc

    def commit(self) -> Path:
        os.replace(self.tmp, self.path)
        return self.path

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self.tmp.unlink()


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the same folder as ``path`` (``.NAME.part-XXXXXXXX.SUFFIX``, with
    the same suffix so ffmpeg picks the right muxer); it is renamed onto ``path`` when the block
    ends normally and deleted when it raises (KeyboardInterrupt included).

    The temporary file already exists (empty) when the block starts; write over it (ffmpeg
    needs ``-y``).

    Raises:
        VideoError: the folder of ``path`` is missing or not writable, or ``path`` is a folder.
    """
    part = _AtomicFile(path)
    try:
        yield part.tmp
    except BaseException:
        part.discard()
        raise
    try:
        part.commit()
    except BaseException:
        part.discard()
        raise


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


class _WriterState:
    """The encoding thread and its ffmpeg process (apart from VideoWriter, for the finalizer)."""

    def __init__(self, proc: subprocess.Popen, stderr: Any, in_shape: tuple[int, int],
                 out_shape: tuple[int, int], queue_size: int):
        self.proc = proc
        self.stderr = stderr
        self.in_shape = in_shape
        self.out_shape = out_shape
        self.queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self.run, name="audio2lp-video-writer", daemon=True)

    def run(self) -> None:
        (h, w), (oh, ow) = self.in_shape, self.out_shape
        stdin = self.proc.stdin
        assert stdin is not None
        try:
            while True:
                try:
                    frame = self.queue.get(timeout=0.1)
                except queue.Empty:
                    if self.stop.is_set():
                        return
                    continue
                if frame is None or self.stop.is_set():
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
        while self.thread.is_alive() and not self.stop.is_set():
            try:
                self.queue.put(frame, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def kill(self) -> None:
        self.stop.set()
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.kill()
        with contextlib.suppress(queue.Empty):
            while True:
                self.queue.get_nowait()
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            self.thread.join(timeout=30)
        _stop_process(self.proc)
        with contextlib.suppress(Exception):
            self.stderr.close()


def _abort_all(parts: list[_AtomicFile], state: _WriterState | None) -> None:
    if state is not None:
        state.kill()
    for part in parts:
        part.discard()


class VideoWriter:
    """Write an H.264 MP4 frame by frame, optionally with an AAC audio track; atomically.

    Frames (``(H, W, 3)`` uint8 RGB, all the same size) are copied, queued (bounded) and encoded
    by ffmpeg (libx264, yuv420p, ``-crf`` ``crf``, ``-movflags +faststart``) in a background
    thread, so encoding overlaps with rendering. Odd sizes are padded to even by repeating the
    last column/row (``even_size="pad"``, default) or cropped by one pixel (``"crop"``).

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
        VideoError: bad output path (at creation), ffmpeg failing while encoding or muxing.
        AudioError: the audio source file is missing or unreadable (at creation).
        ValueError: bad arguments or frames (wrong dtype, shape, or a size change).
    """

    def __init__(self, path: str | os.PathLike, fps: float, *, crf: int = 18, preset: str = "medium",
                 audio: str | os.PathLike | np.ndarray | None = None, audio_sample_rate: int = 16000,
                 audio_fit: str = "video", audio_start: float = 0.0, audio_bitrate: str = "128k",
                 even_size: str = "pad", queue_size: int = 8):
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
        self.path = check_output_path(path, _WRITER_SUFFIXES)
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
        self._rate = _fps_fraction(fps)
        self._audio_array: np.ndarray | None = None
        self._audio_path: str | None = None
        self._audio_sr = int(audio_sample_rate)
        self._parts: list[_AtomicFile] = []
        self._out: _AtomicFile | None = None
        self._video_tmp: _AtomicFile | None = None
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
        head = _probe_media(audio, AudioError, "audio")
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
            self._out = _AtomicFile(self.path)
            self._parts.append(self._out)
            if self.has_audio:
                self._video_tmp = _AtomicFile(self.path, tag="video")
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
               "-framerate", str(self._rate), "-i", "pipe:0",
               "-map", "0:v:0", "-c:v", "libx264", "-preset", self.preset, "-crf", str(self.crf),
               "-pix_fmt", "yuv420p"]
        if self._video_tmp is None and self.path.suffix.lower() in _FASTSTART_SUFFIXES:
            cmd += ["-movflags", "+faststart"]
        cmd.append(os.fspath(target))
        stderr = tempfile.TemporaryFile()
        try:
            proc = _popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=stderr,
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
        err = _stderr_tail(state.stderr)
        logger.debug("ffmpeg encoder output: %s", err)
        rc = state.proc.returncode
        if err:
            reason = _reason(err)
        elif rc is not None and rc < 0:
            reason = f"ffmpeg was stopped by signal {-rc}"
        else:
            reason = str(state.error or f"ffmpeg exit code {rc}")
        return VideoError(f"Encoding {self.path} failed ({reason}); "
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
        cmd = [exe, "-hide_banner", "-nostdin", "-y", "-v", "error", "-i", os.fspath(self._video_tmp.tmp)]
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
            cmd += ["-f", "f32le", "-ar", str(sr), "-ac", str(arr.shape[1]), "-i", "pipe:0"]
            filters: list[str] = []
        else:
            assert self._audio_path is not None
            if self.audio_start > 0:
                cmd += ["-ss", f"{self.audio_start:.6f}"]
            cmd += ["-i", self._audio_path]
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
               "-i", os.fspath(self._video_tmp.tmp), "-map", "0:v:0", "-c", "copy"]
        if self.path.suffix.lower() in _FASTSTART_SUFFIXES:
            cmd += ["-movflags", "+faststart"]
        self._run_mux(cmd + [os.fspath(self._out.tmp)], None)

    def _run_mux(self, cmd: list[str], feed: bytes | None) -> None:
        with tempfile.TemporaryFile() as stderr:
            proc = _popen(cmd, stdin=subprocess.PIPE if feed is not None else subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=stderr)
            try:
                proc.communicate(feed, timeout=_MUX_TIMEOUT)
            except BaseException:
                _stop_process(proc)
                raise
            _stop_process(proc, kill=False)
            if proc.returncode != 0:
                err = _stderr_tail(stderr)
                logger.debug("ffmpeg mux output: %s", err)
                raise VideoError(f"Adding the audio track to {self.path} failed ({_reason(err)}); "
                                 "check that the audio source is a complete, readable file.")
