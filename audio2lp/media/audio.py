"""Audio input: load any speech file as 16 kHz mono float32, and write 16-bit WAV files.

Every file goes through one path: it is decoded at its own sample rate and channel count
(by libsndfile through :mod:`soundfile`, or by the ffmpeg binary that ships with
``imageio-ffmpeg`` for formats libsndfile does not read, such as AAC/M4A and video
containers), then averaged to mono and resampled with soxr. The same recording therefore
gives the same samples whatever container it comes in.

Problems a user can fix raise :class:`audio2lp.errors.AudioError` with one sentence that
says what is wrong and what to do.
"""

from __future__ import annotations

import io
import logging
import math
import os
import re
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from audio2lp.errors import AudioError

from .atomic import atomic_output
from .ffmpeg import LimitExceeded, ffmpeg_exe, input_args, run_bounded
from .probe import probe_media

__all__ = [
    "SAMPLE_RATE",
    "DEFAULT_MIN_DURATION",
    "load_audio",
    "audio_duration",
    "write_wav",
]

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
"""Sample rate (Hz) of everything :func:`load_audio` returns by default (Whisper's rate)."""

DEFAULT_MIN_DURATION = 1.0 / 25.0
"""Shortest accepted input (seconds): one frame of a 25 fps video."""

# Containers libsndfile never reads: go straight to ffmpeg for these.
_FFMPEG_FIRST = {
    ".m4a", ".m4b", ".aac", ".mp4", ".m4v", ".mov", ".webm", ".mkv", ".mka", ".avi", ".wmv",
    ".wma", ".3gp", ".3g2", ".ts", ".mts", ".flv", ".amr", ".ac3", ".opus",
}
_BLOCK_FRAMES = 1 << 18  # frames decoded per block (~5 s at 48 kHz)
DECODE_TIMEOUT = 3600.0
"""Default time limit of one decode in seconds (a pathological file or a hung disk); ``timeout=`` lowers it."""
_HEADER_TIMEOUT = 30.0  # seconds to read a header for max_duration
_SLACK = 0.05  # seconds a duration may exceed max_duration (container rounding, AAC priming)
# ffmpeg's name for single-image inputs ("png_pipe", "jpeg_pipe", "image2", ...).
_IMAGE_DEMUXER = re.compile(r"Input #0, ([\w,]*_pipe|image2)\b")


def load_audio(
    path: str | os.PathLike,
    sr: int = SAMPLE_RATE,
    *,
    min_duration: float = DEFAULT_MIN_DURATION,
    max_duration: float | None = None,
    timeout: float | None = None,
) -> np.ndarray:
    """Load an audio (or video) file as mono float32 samples at ``sr`` Hz.

    Args:
        path: wav, flac, ogg, mp3, aiff, ... (read by libsndfile) or m4a, aac, mp4, mov, webm,
            mkv and anything else ffmpeg decodes (the first audio stream is used).
        sr: output sample rate in Hz.
        min_duration: shortest accepted duration in seconds (default one 25 fps frame).
            Digital silence is accepted; zero samples never are.
        max_duration: longest accepted duration in seconds (None: any). The header's duration is checked before
            anything is decoded, and decoding stops once the audio is longer, whatever the header says.
        timeout: seconds the decoding may take (default :data:`DECODE_TIMEOUT`).

    Returns:
        ``np.ndarray`` of shape ``(n,)``, dtype float32, values in [-1, 1]. Channels are
        averaged; the signal is resampled with soxr (high quality) when its rate is not ``sr``.

    Raises:
        AudioError: the file is missing, not decodable audio, a video without an audio
            stream, empty, shorter than ``min_duration``, longer than ``max_duration``, or takes longer than
            ``timeout`` to decode.
    """
    path = _check_path(path)
    if sr <= 0:
        raise ValueError(f"sr must be positive, got {sr}")
    audio = _decode_mono(path, sr, max_duration, DECODE_TIMEOUT if timeout is None else float(timeout))
    if max_duration is not None and audio.size > (max_duration + _SLACK) * sr:
        raise _too_long(path, max_duration)
    if audio.size == 0:
        raise AudioError(f"{path} contains no audio samples; pass a file with recorded speech.")
    if not np.all(np.isfinite(audio)):
        raise AudioError(
            f"{path} contains invalid (NaN or infinite) samples; re-export it as 16-bit WAV."
        )
    min_samples = max(1, math.ceil(min_duration * sr - 1e-6))
    if audio.size < min_samples:
        raise AudioError(
            f"{path} lasts only {audio.size / sr:.3f} s; the audio must last at least "
            f"{min_duration:.3f} s (one video frame)."
        )
    np.clip(audio, -1.0, 1.0, out=audio)
    return audio


def audio_duration(path: str | os.PathLike) -> float:
    """Duration of an audio file in seconds.

    Read from the header when libsndfile knows the format (fast), otherwise by decoding
    the file with ffmpeg. Raises :class:`AudioError` as :func:`load_audio` does, except that
    empty or very short files are not an error here.
    """
    path = _check_path(path)
    if path.suffix.lower() not in _FFMPEG_FIRST:
        try:
            info = sf.info(str(path))
            if info.samplerate > 0 and info.frames >= 0:
                return info.frames / info.samplerate
        except (sf.LibsndfileError, RuntimeError, TypeError):
            pass
    data = _ffmpeg_decode(path)
    with sf.SoundFile(io.BytesIO(data)) as f:
        n = sum(len(b) for b in f.blocks(blocksize=_BLOCK_FRAMES, dtype="float32", always_2d=True))
        return n / f.samplerate


def write_wav(path: str | os.PathLike, audio: np.ndarray, sr: int = SAMPLE_RATE) -> Path:
    """Write ``audio`` as a 16-bit PCM WAV file, atomically (temporary file + rename).

    Args:
        path: destination; its folder must exist.
        audio: float samples in [-1, 1] (clipped), shape ``(n,)`` for mono or
            ``(n, channels)``.
        sr: sample rate in Hz.

    Returns:
        The destination path.
    """
    path = Path(path)
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim not in (1, 2):
        raise ValueError(f"audio must have shape (n,) or (n, channels), got {audio.shape}")
    audio = np.clip(audio, -1.0, 1.0)
    with atomic_output(path) as tmp:
        sf.write(tmp, audio, int(sr), subtype="PCM_16", format="WAV")
    return path


# --------------------------------------------------------------------------------------------
# internals


def _check_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise AudioError(f"Audio file {path} does not exist; check the path.")
    if path.is_dir():
        raise AudioError(f"{path} is a folder, not an audio file; pass the path of a file.")
    if path.stat().st_size == 0:
        raise AudioError(f"{path} is empty (0 bytes); pass a file with recorded speech.")
    return path


def _too_long(path: Path, max_duration: float, seconds: float | None = None) -> AudioError:
    if seconds is not None:
        return AudioError(f"{path} lasts {seconds:.1f} s; at most {max_duration:g} s is accepted here; use a shorter "
                          f"recording.")
    return AudioError(f"{path} is longer than {max_duration:g} s; at most {max_duration:g} s is accepted here; use a "
                      f"shorter recording.")


def _bounded(blocks: Iterable[np.ndarray], path: Path, rate: int, max_duration: float | None,
             deadline: float, timeout: float) -> Iterator[np.ndarray]:
    """``blocks`` of ``(frames, channels)``, stopped with AudioError past ``max_duration`` or the deadline."""
    limit = None if max_duration is None else (max_duration + _SLACK) * rate
    frames = 0
    for block in blocks:
        frames += len(block)
        if limit is not None and frames > limit:
            raise _too_long(path, max_duration)
        if time.monotonic() > deadline:
            raise AudioError(f"decoding {path} took more than {timeout:g} s; convert it to WAV and try again.")
        yield block


def _decode_mono(path: Path, sr: int, max_duration: float | None = None,
                 timeout: float = DECODE_TIMEOUT) -> np.ndarray:
    """Decode ``path`` to mono float32 at ``sr`` within ``timeout`` seconds, refusing more than ``max_duration``
    seconds (from the header first); no validation of the result."""
    deadline = time.monotonic() + timeout
    if path.suffix.lower() not in _FFMPEG_FIRST:
        try:
            with sf.SoundFile(str(path)) as f:
                logger.debug("reading %s with libsndfile (%s, %d Hz, %d ch)",
                             path, f.format, f.samplerate, f.channels)
                if max_duration is not None and f.frames > (max_duration + _SLACK) * f.samplerate:
                    raise _too_long(path, max_duration, f.frames / f.samplerate)
                blocks = f.blocks(blocksize=_BLOCK_FRAMES, dtype="float32", always_2d=True)
                audio = _mono_resampled(_bounded(blocks, path, f.samplerate, max_duration, deadline, timeout),
                                        f.samplerate, sr)
            if audio.size:
                return audio
            logger.debug("libsndfile read no samples from %s; trying ffmpeg", path)
        except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
            logger.debug("libsndfile cannot read %s (%s); trying ffmpeg", path, exc)
    max_bytes = None
    if max_duration is not None:
        head = probe_media(path, AudioError, "audio", timeout=min(timeout, _HEADER_TIMEOUT))
        if head.duration is not None and head.duration > max_duration + _SLACK:
            raise _too_long(path, max_duration, head.duration)
        # float32 samples of max_duration (+1 s) at the header's rate and channel count (+1 MiB of WAV header)
        max_bytes = int((max_duration + 1) * (head.audio_sample_rate or 48000) * (head.audio_channels or 2) * 4) \
            + (1 << 20)
    data = _ffmpeg_decode(path, timeout=timeout, deadline=deadline,
                          max_seconds=None if max_duration is None else max_duration + 1, max_bytes=max_bytes)
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            return _mono_resampled(
                f.blocks(blocksize=_BLOCK_FRAMES, dtype="float32", always_2d=True),
                f.samplerate, sr)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:  # pragma: no cover
        raise AudioError(
            f"ffmpeg decoded {path} but its output is unreadable ({exc}); convert the file to WAV."
        ) from exc


def _mono_resampled(blocks: Iterable[np.ndarray], in_sr: int, sr: int) -> np.ndarray:
    """Average channels and resample a stream of ``(frames, channels)`` float32 blocks."""
    stream = None if in_sr == sr else soxr.ResampleStream(in_sr, sr, 1, dtype="float32")
    parts: list[np.ndarray] = []
    for block in blocks:
        mono = block.mean(axis=1, dtype=np.float32) if block.shape[1] > 1 else block[:, 0]
        mono = np.ascontiguousarray(mono, dtype=np.float32)
        parts.append(mono if stream is None else stream.resample_chunk(mono))
    if stream is not None:
        parts.append(stream.resample_chunk(np.zeros(0, np.float32), last=True))
    if not parts:
        return np.zeros(0, np.float32)
    return np.concatenate(parts).astype(np.float32, copy=False)


def _ffmpeg_decode(path: Path, *, timeout: float = DECODE_TIMEOUT, deadline: float | None = None,
                   max_seconds: float | None = None, max_bytes: int | None = None) -> bytes:
    """Decode the first audio stream of ``path`` to a float32 WAV byte string (native rate): at most
    ``max_seconds`` of it, within ``timeout`` seconds (or by ``deadline``, ``time.monotonic()``, when the time
    started earlier); more than ``max_bytes`` of output is an AudioError."""
    cmd = [
        ffmpeg_exe(AudioError), "-nostdin", "-hide_banner", "-loglevel", "info",
        *input_args(path), "-map", "0:a:0", "-vn", "-sn", "-dn",
    ]
    if max_seconds is not None:
        cmd += ["-t", f"{max_seconds:.3f}"]
    cmd += ["-c:a", "pcm_f32le", "-f", "wav", "pipe:1"]
    logger.debug("decoding %s with ffmpeg", path)
    try:
        left = timeout if deadline is None else max(0.0, deadline - time.monotonic())
        returncode, stdout, err = run_bounded(cmd, timeout=left, capture=True, max_output=max_bytes)
    except LimitExceeded as exc:
        if exc.what == "time":
            raise AudioError(f"decoding {path} took more than {timeout:g} s; convert it to WAV and try "
                             f"again.") from None
        raise AudioError(f"{path} decodes to more audio than its header announces; convert it to WAV and try "
                         f"again.") from None
    except OSError as exc:
        raise AudioError(f"Cannot run ffmpeg to decode {path} ({exc}); reinstall imageio-ffmpeg.") from exc
    if returncode == 0 and len(stdout) > 0:
        return stdout
    logger.debug("ffmpeg failed on %s (code %d): %s", path, returncode, err[-2000:])
    if "matches no streams" in err:
        if _IMAGE_DEMUXER.search(err):
            raise AudioError(f"{path} is an image, not an audio file; pass a speech recording.")
        if "Video:" in err:
            raise AudioError(
                f"{path} is a video without an audio stream; pass a file that contains speech."
            )
        raise AudioError(f"{path} has no audio stream; pass a file that contains speech.")
    raise AudioError(
        f"{path} is not a readable audio file; convert it to WAV, FLAC or MP3 and try again."
    )

