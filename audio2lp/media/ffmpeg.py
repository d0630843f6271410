"""The one ffmpeg helper: where the binary is (the one ``imageio-ffmpeg`` ships; there is no system ffmpeg), how
its processes are started and stopped, and the one-sentence reason to give when it fails.

Every audio and video module runs ffmpeg through here.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import subprocess
from fractions import Fraction
from typing import Any

from audio2lp.errors import VideoError

logger = logging.getLogger(__name__)


def ffmpeg_exe(error: type[Exception] = VideoError) -> str:
    """Path of the ffmpeg binary shipped with ``imageio-ffmpeg`` (or ``$IMAGEIO_FFMPEG_EXE``); ``error`` is the
    class raised when there is none (:class:`~audio2lp.errors.AudioError` for audio)."""
    try:
        import imageio_ffmpeg
    except ImportError as exc:  # pragma: no cover - imageio-ffmpeg is a dependency
        raise error("Reading and writing audio and video needs ffmpeg; install it with "
                    "`pip install imageio-ffmpeg`.") from exc
    try:
        return imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError as exc:  # pragma: no cover - broken install
        raise error(f"imageio-ffmpeg has no usable ffmpeg binary ({exc}); "
                         "reinstall it with `pip install --force-reinstall imageio-ffmpeg`.") from exc


@functools.lru_cache(maxsize=4)
def ffmpeg_major(exe: str) -> int:
    """Major version of ``exe`` (99 when it cannot be told, e.g. a git build)."""
    try:
        out = subprocess.run([exe, "-hide_banner", "-version"], capture_output=True, timeout=30,
                             stdin=subprocess.DEVNULL).stdout.decode("utf-8", "replace")
    except (OSError, subprocess.TimeoutExpired):  # pragma: no cover
        return 99
    m = re.search(r"version \D*(\d+)\.(\d+)", out)
    return int(m.group(1)) if m else 99


def passthrough_args(exe: str) -> list[str]:
    """Output options that keep every decoded frame as it is (no duplication, no dropping)."""
    # -fps_mode appeared in ffmpeg 5.1; older builds only know -vsync.
    return ["-vsync", "passthrough"] if ffmpeg_major(exe) < 6 else ["-fps_mode", "passthrough"]


def stderr_tail(fh: Any, limit: int = 4000) -> str:
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


def reason(stderr: str) -> str:
    """The most telling part of ffmpeg's error output, for a one-sentence message."""
    for known in _KNOWN_REASONS:
        if known in stderr:
            return known
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "rror" in ln or "nvalid" in ln or "failed" in ln.lower():
            return re.sub(r"^\[[^\]]*\]\s*", "", ln)[:300]
    return re.sub(r"^\[[^\]]*\]\s*", "", lines[-1])[:300] if lines else "no message"


def popen(cmd: list[str], **kw: Any) -> subprocess.Popen:
    logger.debug("running %s", subprocess.list2cmdline(cmd))
    # A new session: Ctrl-C in the terminal reaches Python only, and we stop ffmpeg ourselves.
    return subprocess.Popen(cmd, start_new_session=True, **kw)


def stop_process(proc: subprocess.Popen | None, *, kill: bool = True) -> None:
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


def fps_fraction(fps: float) -> Fraction:
    """Exact rational frame rate: NTSC rates (29.97, 23.976, 59.94, ...) become N*1000/1001."""
    for base in (24, 30, 48, 60, 120, 240):
        ntsc = Fraction(base * 1000, 1001)
        if abs(fps - float(ntsc)) < 0.0051:
            return ntsc
    frac = Fraction(fps).limit_denominator(1001)
    if abs(float(frac) - fps) > 1e-6:
        frac = Fraction(fps).limit_denominator(1_000_000)
    return frac


def display(path: str | os.PathLike) -> str:
    return os.fspath(path)
