"""Synthetic videos for the media tests, made on the fly with the ffmpeg binary of imageio-ffmpeg (a moving white
square on black; a sine tone as audio), and a way to see ffmpeg child processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from audio2lp.media.ffmpeg import ffmpeg_exe, fps_fraction

EXE = ffmpeg_exe()
SQUARE = 8


def synthetic_frame(i: int, h: int, w: int) -> np.ndarray:
    """Black frame with a white SQUARExSQUARE square moving right by 2 px per frame."""
    f = np.zeros((h, w, 3), np.uint8)
    x = (2 * i) % max(1, w - SQUARE)
    y = (h - SQUARE) // 2
    f[y:y + SQUARE, x:x + SQUARE] = 255
    return f


def square_x(frame: np.ndarray) -> int:
    """Left edge of the bright square in a decoded frame."""
    cols = np.nonzero(frame.mean(axis=2).max(axis=0) > 128)[0]
    return int(cols[0]) if cols.size else -1


def make_video(path: Path, n: int, fps: float | str, w: int = 64, h: int = 48, *,
               vcodec: str = "libx264", pix_fmt: str = "yuv420p", audio: float | None = None,
               acodec: str = "aac", sr: int = 16000, extra: list[str] | None = None) -> Path:
    """Encode n synthetic frames (and optionally `audio` seconds of a 440 Hz tone)."""
    rate = str(fps_fraction(float(fps))) if not isinstance(fps, str) else fps
    cmd = [EXE, "-hide_banner", "-nostdin", "-y", "-v", "error",
           "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-framerate", rate, "-i", "pipe:0"]
    if audio is not None:
        cmd += ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate={sr}:duration={audio}",
                "-map", "0:v", "-map", "1:a", "-c:a", acodec]
    cmd += ["-c:v", vcodec, "-pix_fmt", pix_fmt] + (extra or []) + [str(path)]
    data = b"".join(synthetic_frame(i, h, w).tobytes() for i in range(n))
    subprocess.run(cmd, input=data, check=True, capture_output=True)
    return path


def audio_samples(path: Path, sr: int) -> int:
    """Number of samples of the first audio stream, decoded at its own rate `sr`."""
    out = subprocess.run([EXE, "-v", "error", "-i", str(path), "-map", "0:a:0", "-f", "s16le",
                          "-ac", "1", "-ar", str(sr), "-"], capture_output=True, check=True).stdout
    return len(out) // 2


def ffmpeg_children() -> list[tuple[int, str]]:
    """(pid, state) of this process's ffmpeg children, zombies included (Linux /proc)."""
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        comm = stat[stat.find("(") + 1:stat.rfind(")")]
        fields = stat[stat.rfind(")") + 2:].split()
        if int(fields[1]) == me and "ffmpeg" in comm:
            found.append((int(entry), fields[0]))
    return found


def wait_no_children(timeout: float = 5.0) -> list[tuple[int, str]]:
    end = time.monotonic() + timeout
    while True:
        kids = ffmpeg_children()
        if not kids or time.monotonic() > end:
            return kids
        time.sleep(0.05)


needs_proc = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc to find child processes")


def sine(seconds: float, sr: int = 16000) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
