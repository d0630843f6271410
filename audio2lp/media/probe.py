"""What a media file holds, from ffmpeg's own report: :func:`probe_video` returns a :class:`VideoInfo` (frame rate,
frame count, size, duration, audio); :func:`probe_media` the header of any media file (used for audio sources).

Every problem a user can fix raises :class:`audio2lp.errors.VideoError` (or the error class the caller asks
for) with one sentence that says what is wrong and what to do.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from fractions import Fraction
from pathlib import Path

from audio2lp.errors import VideoError

from .ffmpeg import LimitExceeded, display, ffmpeg_exe, input_args, passthrough_args, reason, run_bounded

logger = logging.getLogger(__name__)

COUNT_PIXEL_BUDGET = 1.5e9
""":func:`probe_video` counts frames exactly (by decoding) when ``width * height * frames`` is at
most this many pixels (about 3 s of decoding on 2 CPU cores, e.g. 700 frames of 1080p or 20 000
frames of 256x256); above it the count is estimated from duration and frame rate."""

PROBE_TIMEOUT = 600.0
"""Default time limit of one ffmpeg run of a probe, in seconds (a pathological file or a hung file system)."""
_IMAGE_DEMUXERS = re.compile(r"^(image2|tty|[\w]+_pipe)$")


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
    name = display(path)
    low = stderr.lower()
    if "no such file" in low:
        return error_cls(f"The {what} file {name} does not exist; check the path.")
    if "permission denied" in low:
        return error_cls(f"The {what} file {name} cannot be read (permission denied); "
                         "check its permissions.")
    article = "an" if what[0] in "aeiou" else "a"
    return error_cls(f"{name} is not {article} {what} file ffmpeg can read ({reason(stderr)}); "
                     f"check that it is a complete, undamaged {what} file or convert it to "
                     f"{'MP4 (H.264)' if what == 'video' else 'WAV'}.")


def _check_input_file(path: str | os.PathLike, error_cls: type[Exception], what: str) -> None:
    p = Path(path)
    if not p.exists():
        raise error_cls(f"The {what} file {display(path)} does not exist; check the path.")
    if p.is_dir():
        a = "an" if what[0] in "aeiou" else "a"
        raise error_cls(f"{display(path)} is a folder, not {a} {what} file; give the path of {a} {what} file.")
    if p.stat().st_size == 0:
        raise error_cls(f"The {what} file {display(path)} is empty; give a complete {what} file.")


def _run_probe(cmd: list[str], path: str | os.PathLike, error_cls: type[Exception], what: str,
               timeout: float = PROBE_TIMEOUT) -> tuple[int, str]:
    try:
        rc, _, err = run_bounded(cmd, timeout=timeout)
    except LimitExceeded as exc:
        raise error_cls(f"ffmpeg took more than {timeout:g} s to read {display(path)}; "
                        f"check that the {what} file is complete and on a working disk.") from exc
    except OSError as exc:  # pragma: no cover - broken install
        raise VideoError(f"Cannot run ffmpeg ({exc}); reinstall imageio-ffmpeg.") from exc
    return rc, err


def probe_media(path: str | os.PathLike, error_cls: type[Exception], what: str, *,
                timeout: float = PROBE_TIMEOUT) -> _Header:
    """Header of any media file, read by ffmpeg within ``timeout`` seconds without decoding anything: container,
    duration, streams (used for audio sources, and to check a duration before decoding)."""
    _check_input_file(path, error_cls, what)
    exe = ffmpeg_exe()
    _, err = _run_probe([exe, "-hide_banner", "-nostdin", *input_args(path)], path, error_cls, what, timeout)
    if "Input #0" not in err:
        raise _open_error(path, err, error_cls, what)
    return _parse_header(err)


def probe_video(path: str | os.PathLike, *, count_frames: bool | None = None,
                timeout: float = PROBE_TIMEOUT) -> VideoInfo:
    """Describe the video file at ``path`` (any container ffmpeg reads: mp4, mov, mkv, webm, avi,
    mpg, ...).

    Args:
        path: the video file.
        count_frames: True counts the frames exactly by decoding the whole video stream (about
            500 Mpixel/s on 2 cores), False estimates them from duration and frame rate, None
            (default) counts when that is cheap (:data:`COUNT_PIXEL_BUDGET`).
        timeout: seconds each ffmpeg run may take (VideoError after).

    Raises:
        VideoError: the file is missing, empty, a folder, not a video ffmpeg can read (corrupt,
            truncated, a text file), a still image, has no video stream, or has no frames.
    """
    _check_input_file(path, VideoError, "video")
    exe = ffmpeg_exe()
    src = os.fspath(path)
    # Decode one frame: showinfo gives the exact (rational) frame rate and the size after the
    # rotation the container asks for.
    base = [exe, "-hide_banner", "-nostdin", "-v", "verbose", *input_args(src)]
    one = ["-map", "0:V:0", "-vf", "showinfo", "-frames:v", "1", "-f", "null", "-"]
    rc, err = _run_probe(base + one, path, VideoError, "video", timeout)
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
        cmd = base + ["-map", "0:V:0", *passthrough_args(exe), "-f", "null", "-"]
        rc2, err2 = _run_probe(cmd, path, VideoError, "video", timeout)
        m2 = re.search(r"Output stream #0:0 \(video\): (\d+) frames? encoded", err2)
        if m2 is None:
            m2 = list(re.finditer(r"frame=\s*(\d+)", err2))[-1] if "frame=" in err2 else None
        if m2 is None:
            raise VideoError(f"Cannot count the frames of {src} ({reason(err2)}); "
                             "check that the video is complete or re-encode it to MP4 (H.264).")
        n_frames = int(m2.group(1))
        if rc2 != 0:
            logger.warning("ffmpeg reported an error after %d frames of %s: %s", n_frames, src,
                           reason(err2))
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
