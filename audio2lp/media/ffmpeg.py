"""The one ffmpeg helper: where the binary is (the one ``imageio-ffmpeg`` ships; there is no system ffmpeg), how
its inputs are named, how its processes are started and stopped, and the one-sentence reason to give when it fails.

Every audio and video module runs ffmpeg through here. Every input goes through :func:`input_args`: ffmpeg may only
read local files and pipes (``-protocol_whitelist file,pipe``, which also binds whatever the input refers to, e.g. a
playlist's segments), and a path always goes through the ``file:`` protocol, so that a file name which looks like a
URL or a protocol (``tcp:host:port``, ``data:...``, ``concat:a|b``) is read as the file it is.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import os
import re
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
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


PROTOCOLS = "file,pipe"
"""The only protocols ffmpeg may use to read (see the module docstring)."""


def input_args(source: str | os.PathLike) -> list[str]:
    """The ffmpeg arguments that read ``source``: a local file (``file:`` + its path) or a pipe (``"pipe:0"``),
    with only the file and pipe protocols allowed. Input options (``-f``, ``-ss``, ...) go before these."""
    src = os.fspath(source)
    target = src if src in ("pipe:", "pipe:0") else "file:" + src
    return ["-protocol_whitelist", PROTOCOLS, "-i", target]


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


# ------------------------------------------------------------------------------------------ bounded runs
class LimitExceeded(Exception):
    """An ffmpeg run went past its time (``what == "time"``) or output (``"output"``) limit and was stopped; callers
    turn it into their own one-sentence error."""

    def __init__(self, what: str, limit: float):
        super().__init__(f"ffmpeg went past its {what} limit ({limit:g})")
        self.what, self.limit = what, limit


@dataclass(frozen=True)
class Budget:
    """What a block of work (e.g. one job of the HTTP service) may still spend: a deadline (``time.monotonic()``)
    and a cancellation flag; ``error()`` is raised in a run that crosses them."""

    deadline: float | None = None
    cancelled: threading.Event | None = None
    error: Callable[[], BaseException] = lambda: LimitExceeded("time", 0)

    def spent(self) -> bool:
        return (self.cancelled is not None and self.cancelled.is_set()) or \
            (self.deadline is not None and time.monotonic() >= self.deadline)

    def check(self) -> None:
        """Raise ``error()`` once the deadline has passed or the work was cancelled."""
        if self.spent():
            raise self.error()


_BUDGET: contextvars.ContextVar[Budget | None] = contextvars.ContextVar("audio2lp_ffmpeg_budget", default=None)


@contextlib.contextmanager
def budget(deadline: float | None = None, cancelled: threading.Event | None = None,
           error: Callable[[], BaseException] | None = None) -> Iterator[Budget]:
    """Bound every :func:`run_bounded` started in this block (in this thread or context) by ``deadline`` and
    ``cancelled``: the run is stopped and ``error()`` raised as soon as either is reached."""
    b = Budget(deadline, cancelled, error) if error is not None else Budget(deadline, cancelled)
    token = _BUDGET.set(b)
    try:
        yield b
    finally:
        _BUDGET.reset(token)


def current_budget() -> Budget | None:
    return _BUDGET.get()


_STEP = 0.05  # seconds between checks of the limits while ffmpeg runs
_STDERR_KEEP = 1 << 20  # characters of stderr kept from each end of a long log


def run_bounded(cmd: list[str], *, timeout: float, feed: bytes | None = None, capture: bool = False,
                max_output: int | None = None) -> tuple[int, bytes, str]:
    """Run ffmpeg to completion within ``timeout`` seconds (and the current :func:`budget`): returns
    ``(exit code, stdout (when ``capture``), stderr)``. ``feed`` is written to its stdin. Raises
    :class:`LimitExceeded` (the process killed and reaped) when it runs longer than ``timeout`` or writes more than
    ``max_output`` bytes to stdout, and the budget's error when the budget is spent first."""
    b = current_budget()
    if b is not None:
        b.check()
    with tempfile.TemporaryFile() as err:
        proc = popen(cmd, stdin=subprocess.PIPE if feed is not None else subprocess.DEVNULL,
                     stdout=subprocess.PIPE if capture else subprocess.DEVNULL, stderr=err)
        out = bytearray()
        too_much = threading.Event()

        def pump() -> None:
            assert proc.stdout is not None
            while chunk := proc.stdout.read(1 << 16):
                out.extend(chunk)
                if max_output is not None and len(out) > max_output:
                    too_much.set()
                    with contextlib.suppress(OSError):
                        proc.kill()
                    return

        def write() -> None:
            assert proc.stdin is not None
            with contextlib.suppress(OSError, ValueError):
                proc.stdin.write(feed)
                proc.stdin.close()

        helpers = ([threading.Thread(target=pump, daemon=True)] if capture else []) + \
            ([threading.Thread(target=write, daemon=True)] if feed is not None else [])
        for t in helpers:
            t.start()
        end = time.monotonic() + timeout
        try:
            while True:
                try:
                    proc.wait(timeout=_STEP)
                    break
                except subprocess.TimeoutExpired:
                    pass
                if too_much.is_set():
                    raise LimitExceeded("output", max_output)
                if b is not None:
                    b.check()
                if time.monotonic() >= end:
                    raise LimitExceeded("time", timeout)
            for t in helpers:
                t.join()
        except BaseException:
            stop_process(proc)
            for t in helpers:
                t.join(timeout=5)
            raise
        finally:
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    with contextlib.suppress(Exception):
                        stream.close()
        if too_much.is_set():
            raise LimitExceeded("output", max_output)
        return proc.returncode, bytes(out), _read_log(err)


def _read_log(fh: Any) -> str:
    """ffmpeg's stderr: all of it, or its first and last megabyte when it is longer."""
    size = fh.seek(0, os.SEEK_END)
    fh.seek(0)
    if size <= 2 * _STDERR_KEEP:
        return fh.read().decode("utf-8", "replace")
    head = fh.read(_STDERR_KEEP)
    fh.seek(size - _STDERR_KEEP)
    return (head + b"\n...\n" + fh.read()).decode("utf-8", "replace")


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
