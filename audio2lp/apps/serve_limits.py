"""The limits of ``audio2lp serve`` that are not routes: the checks of the uploads (:class:`Uploads`: a portrait photo
or video, the audio, the driving input), which upload names are kept (a name cannot choose an ffmpeg demuxer), how
much of a driving input a job may use (``max_frames`` never gets past the duration limit), how a running job is
stopped (its wall-time limit, ``DELETE /jobs/{id}``), and each worker's torch thread count.

A job is stopped where it can stop cleanly: every ffmpeg run in the worker's thread is bounded by the job's
:func:`audio2lp.media.ffmpeg.budget` (killed at the deadline or on cancellation), and the render loop checks the
job after every batch through the progress callback. Whisper encoding and face detection are not interrupted;
the job stops at its next check after them.
"""

from __future__ import annotations

import dataclasses
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from audio2lp.media.ffmpeg import budget
from lp_renderer.errors import InputError

if TYPE_CHECKING:
    from audio2lp.media.probe import VideoInfo

AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac", ".aif", ".aiff",
                            ".caf", ".wma", ".amr", ".ac3", ".webm", ".mp4", ".mov", ".mkv", ".3gp"})
VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".mts",
                            ".flv", ".wmv", ".3gp", ".gif"})
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
TEMPLATE_SUFFIXES = frozenset({".npz", ".pkl"})
#: the suffixes an upload of each kind keeps; any other name (a playlist ``.m3u8``, an ``.ffconcat`` script, ...)
#: is stored under the kind's default suffix, so that ffmpeg never picks a demuxer from a name the client chose
ALLOWED_SUFFIXES = {"portrait": IMAGE_SUFFIXES | VIDEO_SUFFIXES, "audio": AUDIO_SUFFIXES,
                    "driving": VIDEO_SUFFIXES | IMAGE_SUFFIXES | TEMPLATE_SUFFIXES}
MAX_VIDEO_PIXELS = 3840 * 2160
"""Largest accepted frame of a driving or portrait video (4K UHD)."""
PORTRAIT_TYPES = "a JPEG, PNG or WebP photo"
PORTRAIT_VIDEO_TYPES = "an MP4, MOV, WebM or MKV video"
UPLOAD_DECODE_TIMEOUT = 120.0
"""Seconds the check of one upload may decode or probe."""
MAX_FPS = 120.0
"""Frame rate used to turn the duration limit into a template frame limit (the highest output rate)."""


def upload_suffix(kind: str, filename: str | None, default: str) -> str:
    """The suffix an upload of ``kind`` is stored under: its own when it is a known one, else ``default``."""
    s = Path(filename or "").suffix.lower()
    return s if s in ALLOWED_SUFFIXES[kind] else default


def max_template_frames(max_duration: float) -> int:
    """Frames a driving template may hold (checked in the archive before it is loaded)."""
    return max(1, math.ceil(max_duration * MAX_FPS))


def driving_frames(n_frames: int, fps: float, max_frames: int | None, max_duration: float) -> tuple[int, int]:
    """``(frames the job renders, the max_frames it runs with)`` for a driving input of ``n_frames`` at ``fps``:
    ``max_frames`` may shorten the input, never lengthen what the duration limit allows, and the job is always
    capped at ``max_duration`` seconds of frames (a header may understate the length). Raises ValueError with
    the reason when the frames used last longer than ``max_duration``."""
    used = n_frames if max_frames is None else min(n_frames, max_frames)
    if used / max(fps, 1e-6) > max_duration + 1e-6:
        raise ValueError(f"lasts {used / max(fps, 1e-6):.1f} s")
    cap = max(1, math.floor(max_duration * fps + 1e-6))
    return min(used, cap), min(cap, max_frames) if max_frames is not None else cap


class JobStopped(Exception):
    """A running job was stopped: cancelled (``DELETE``) or past its wall-time limit."""

    def __init__(self, message: str, *, cancelled: bool):
        super().__init__(message)
        self.cancelled = cancelled


class JobControl:
    """The stop conditions of one job: its deadline (set when it starts) and its cancellation flag."""

    def __init__(self):
        self.cancelled = threading.Event()
        self.deadline: float | None = None
        self.timeout: float | None = None

    def start(self, timeout: float) -> None:
        self.timeout, self.deadline = timeout, time.monotonic() + timeout

    def error(self) -> JobStopped:
        if self.cancelled.is_set():
            return JobStopped("the job was cancelled.", cancelled=True)
        return JobStopped(f"the job ran longer than this server's limit of {self.timeout:g} s and was stopped; "
                          f"send a shorter input (or start the server with a larger --job-timeout).", cancelled=False)

    def check(self) -> None:
        """Raise :class:`JobStopped` once the job is cancelled or past its deadline."""
        if self.cancelled.is_set() or (self.deadline is not None and time.monotonic() >= self.deadline):
            raise self.error()

    def bounded(self):
        """A context in which every ffmpeg run of this thread stops with :class:`JobStopped` when the job does."""
        return budget(self.deadline, self.cancelled, self.error)

    def checked(self, callback: Callable[[int, int], None]) -> Callable[[int, int], None]:
        """``callback`` (a progress callback) that first stops the job when it is cancelled or out of time."""
        def cb(done: int, total: int) -> None:
            self.check()
            callback(done, total)
        return cb


def threads_per_worker(threads: int | None, workers: int, default: int) -> int:
    """The torch thread count of each worker: ``threads`` when given, else the CPU cores shared among the workers
    (one worker: ``default``, torch's own count)."""
    if threads is not None:
        return int(threads)
    if workers <= 1:
        return default
    return max(1, (os.cpu_count() or 1) // workers)


def set_thread_count(n: int) -> None:
    """Set the torch thread count of the calling worker thread. Each thread keeps its own OpenMP count once set,
    so a worker that sets its own before every job is not affected by another thread's scoped change (e.g. the
    small models' one-thread blocks) and affects no other worker."""
    import torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


@dataclass
class PortraitUpload:
    """A checked portrait upload: its file, and for a video its header (``info``; None for a photo) and the number of
    its frames a job may use (``n_frames``; 1 for a photo)."""

    path: Path
    info: VideoInfo | None = None
    n_frames: int = 1

    @property
    def is_video(self) -> bool:
        return self.info is not None


class Uploads:
    """Saving uploads into a job folder (size-limited) and checking them before a job is queued (400)."""

    def __init__(self, config, too_large: str, fastapi):
        """``config``: the :class:`~audio2lp.apps.server.ServeConfig`; ``fastapi``: the module (for its errors)."""
        self.config, self.too_large, self.http = config, too_large, fastapi.HTTPException

    def save(self, upload, folder: Path, stem: str, default_suffix: str) -> Path:
        path = folder / (stem + upload_suffix(stem, upload.filename, default_suffix))
        size = 0
        with open(path, "wb") as f:
            while chunk := upload.file.read(1 << 20):
                size += len(chunk)
                if size > self.config.max_upload_bytes:
                    raise self.http(413, self.too_large)
                f.write(chunk)
        if size == 0:
            raise self.http(400, f"the {stem} upload is empty; send the file's contents.")
        return path

    def check_portrait(self, path: Path, *, videos: bool = False, max_frames: int | None = None,
                       trimmable: bool = False, any_length: bool = False) -> PortraitUpload:
        """The saved portrait upload: a photo (it decodes), or with ``videos`` a video (its header probed, no
        decoding: it has frames, at most :data:`MAX_VIDEO_PIXELS` a frame, and the frames a job may use of it, the
        first ``max_frames`` when given, last at most the duration limit; ``trimmable``: the form has
        ``max_frames``, which the message then suggests; ``any_length``: no duration limit on the video, for dubbing,
        which reads only the frames the speech needs and whose length the audio's limit bounds). An upload stored
        under an image name that is not an image is probed as a video too (renamed ``portrait.mp4`` when it is
        one). 400 otherwise."""
        from audio2lp.media.probe import probe_video
        from audio2lp.video_portrait import is_video_portrait
        from lp_renderer.image_io import load_image

        info = None
        if not is_video_portrait(path):
            try:
                load_image(path)
                return PortraitUpload(path)
            except InputError:
                if not videos:
                    raise self.http(400, f"the portrait is not an image this server can read; send "
                                         f"{PORTRAIT_TYPES}.") from None
            try:  # a video sent under an image's name (or none): ffmpeg reads it by its content
                info = probe_video(path, count_frames=False, timeout=UPLOAD_DECODE_TIMEOUT)
            except InputError:
                raise self.http(400, f"the portrait is neither an image nor a video this server can read; send "
                                     f"{PORTRAIT_TYPES} or {PORTRAIT_VIDEO_TYPES}.") from None
            path = path.rename(path.with_suffix(".mp4"))  # the Animator takes a non-image name for a video
            info = dataclasses.replace(info, path=str(path))
        elif not videos:
            raise self.http(400, f"the portrait must be a photo here; send {PORTRAIT_TYPES}.")
        return self.check_portrait_video(path, max_frames, trimmable, info=info, any_length=any_length)

    def check_portrait_video(self, path: Path, max_frames: int | None = None, trimmable: bool = False, *,
                             info: VideoInfo | None = None, any_length: bool = False) -> PortraitUpload:
        """A portrait video: probed from its header within :data:`UPLOAD_DECODE_TIMEOUT` (unless ``info`` is its
        probe already); 400 when it cannot be read, has no frames, has frames over :data:`MAX_VIDEO_PIXELS` or is
        longer than the duration limit (unless ``any_length``)."""
        from audio2lp.media.probe import probe_video

        limit = self.config.max_duration
        try:
            info = info or probe_video(path, count_frames=False, timeout=UPLOAD_DECODE_TIMEOUT)
        except InputError as e:
            reason = str(e).replace(str(path), "the portrait upload")
            raise self.http(400, f"the portrait video cannot be used: {reason} Send {PORTRAIT_VIDEO_TYPES} (or "
                                 f"{PORTRAIT_TYPES}).") from None
        if info.n_frames <= 0:
            raise self.http(400, "the portrait video has no frames; send a video with at least one frame.")
        if info.width * info.height > MAX_VIDEO_PIXELS:
            raise self.http(400, f"the portrait video's frames are {info.width}x{info.height}; this server accepts "
                                 f"at most {MAX_VIDEO_PIXELS} pixels per frame; send a smaller video.")
        if any_length:  # dubbing: as many frames as the speech at the video's rate, which must be a sane one
            if not 0 < info.fps <= MAX_FPS:
                raise self.http(400, f"the portrait video's frame rate is {info.fps:g} fps; this server dubs videos "
                                     f"of at most {MAX_FPS:g} fps; send one at a usual frame rate.")
            return PortraitUpload(path, info, info.n_frames)
        try:
            used, _ = driving_frames(info.n_frames, info.fps, max_frames, limit)
        except ValueError as e:
            more = " (or max_frames to use its beginning)" if trimmable else ""
            raise self.http(400, f"the portrait video {e}; this server accepts at most {limit:g} s: send a shorter "
                                 f"video{more}.") from None
        return PortraitUpload(path, info, used)

    def check_audio(self, path: Path) -> float:
        from audio2lp.media.audio import load_audio

        try:  # the header's duration first, then a decode bounded in time and length
            wav = load_audio(path, max_duration=self.config.max_duration, timeout=UPLOAD_DECODE_TIMEOUT)
        except InputError as e:
            reason = str(e).replace(str(path), "the audio upload")
            raise self.http(400, f"the audio cannot be used: {reason}") from None
        seconds = len(wav) / 16000
        if seconds > self.config.max_duration:
            raise self.http(400, f"the audio lasts {seconds:.1f} s; this server accepts at most "
                                 f"{self.config.max_duration:g} s.")
        return seconds

    def check_driving(self, path: Path, max_frames: int | None, *, image: bool = True) -> tuple[int, int | None]:
        """``(frames the job renders, the max_frames it runs with)``: the video's length from its header (no
        decoding), a template's archive checked before it is loaded; 400 past the limits, and for a driving image
        when ``image`` is False (a portrait video is driven by a video or a template)."""
        from audio2lp.driving import open_driving

        limit = self.config.max_duration
        try:
            src = open_driving(path, count_frames=False, max_template_frames=max_template_frames(limit),
                               probe_timeout=UPLOAD_DECODE_TIMEOUT)
        except InputError as e:
            reason = str(e).replace(str(path), "the driving upload")
            raise self.http(400, f"the driving input cannot be used: {reason}") from None
        if src.kind == "image":
            if not image:
                raise self.http(400, "the portrait is a video, which is driven by a driving video or a motion "
                                     "template (.npz/.pkl), not a driving image; send one of those (or a portrait "
                                     "photo).")
            return 1, max_frames
        if src.info is not None and src.info.width * src.info.height > MAX_VIDEO_PIXELS:
            raise self.http(400, f"the driving video's frames are {src.info.width}x{src.info.height}; this server "
                                 f"accepts at most {MAX_VIDEO_PIXELS} pixels per frame; send a smaller video.")
        try:
            return driving_frames(src.n_frames, src.fps, max_frames, limit)
        except ValueError as e:
            raise self.http(400, f"the driving {src.kind} {e}; this server accepts at most {limit:g} s (send "
                                 f"max_frames to use its beginning).") from None
