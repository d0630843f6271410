"""Tests of audio2lp.media.audio: loading every format to 16 kHz mono float32, and clear errors."""

from __future__ import annotations

import csv
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from audio2lp.errors import AudioError
from audio2lp.media.audio import (
    DEFAULT_MIN_DURATION,
    SAMPLE_RATE,
    audio_duration,
    ffmpeg_exe,
    load_audio,
    write_wav,
)
from lp_renderer.errors import InputError

REPO = Path(__file__).resolve().parents[3]
DATA = Path(os.environ.get("AUDIO2LP_TEST_DATA", REPO.parent / "shared" / "data"))
SPEECH = DATA / "speech"
SPEECH_FILES = sorted(p for p in SPEECH.glob("*") if p.is_file()) if SPEECH.is_dir() else []


def _manifest_durations() -> dict[str, float]:
    out = {}
    with open(DATA / "MANIFEST.tsv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            if row.get("duration_s"):
                out[row["file"]] = float(row["duration_s"])
    return out


def _signal(sr: int, seconds: float = 1.5, channels: int = 2) -> np.ndarray:
    """A speech-like test signal: harmonics under a 3 Hz envelope, different per channel."""
    t = np.arange(int(seconds * sr)) / sr
    cols = []
    for c in range(channels):
        ph = 1.0 * c
        env = 0.5 * (1 + np.sin(2 * np.pi * 3 * t + ph))
        cols.append(0.3 * env * (np.sin(2 * np.pi * 220 * t) + 0.5 * np.sin(2 * np.pi * 660 * t + ph)
                                 + 0.25 * np.sin(2 * np.pi * 1500 * t)))
    return np.stack(cols, axis=1).astype(np.float32)


def _expected(sig: np.ndarray, sr: int) -> np.ndarray:
    return soxr.resample(sig.mean(axis=1), sr, SAMPLE_RATE).astype(np.float32)


def _ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg_exe(), "-nostdin", "-y", "-hide_banner", "-loglevel", "error", *args],
                   check=True, capture_output=True)


def _snr_db(x: np.ndarray, ref: np.ndarray) -> float:
    n = min(len(x), len(ref))
    return float(10 * np.log10(np.sum(ref[:n] ** 2) / np.sum((x[:n] - ref[:n]) ** 2)))


def _check_basic(x: np.ndarray) -> None:
    assert isinstance(x, np.ndarray)
    assert x.dtype == np.float32
    assert x.ndim == 1
    assert np.all(np.isfinite(x))
    assert float(np.abs(x).max()) <= 1.0


# ------------------------------------------------------------------------------------------
# real files


@pytest.mark.realdata
@pytest.mark.parametrize("path", SPEECH_FILES or [None], ids=lambda p: p.name if p else "no-data")
def test_real_speech_files_load(path):
    if path is None:
        pytest.skip(f"real speech clips not found in {SPEECH} (set AUDIO2LP_TEST_DATA)")
    x = load_audio(path)
    _check_basic(x)
    assert np.abs(x).max() > 0.01  # real speech, not silence
    expected = _manifest_durations().get(f"speech/{path.name}")
    if expected is None:
        pytest.skip(f"{path.name} has no duration in MANIFEST.tsv")
    # AAC drops its encoder priming (the manifest counts it): 44 ms on the m4a clip.
    assert abs(len(x) / SAMPLE_RATE - expected) < 0.1
    assert abs(audio_duration(path) - expected) < 0.1


# ------------------------------------------------------------------------------------------
# generated files in every format


@pytest.mark.parametrize(
    ("fmt", "sr", "channels", "subtype"),
    [
        ("wav", 44100, 2, "PCM_16"),
        ("wav", 16000, 1, "PCM_16"),
        ("wav", 8000, 1, "PCM_U8"),
        ("wav", 48000, 6, "PCM_24"),
        ("wav", 22050, 2, "FLOAT"),
        ("flac", 48000, 1, None),
        ("flac", 44100, 2, None),
    ],
)
def test_lossless_formats_give_the_same_signal(tmp_path, fmt, sr, channels, subtype):
    sig = _signal(sr, channels=channels)
    path = tmp_path / f"x.{fmt}"
    sf.write(path, sig, sr, subtype=subtype)
    x = load_audio(path)
    _check_basic(x)
    ref = _expected(sig, sr)
    assert len(x) == len(ref) == int(1.5 * SAMPLE_RATE)
    tol = 2e-2 if subtype == "PCM_U8" else 1e-3
    assert np.abs(x - ref).max() < tol


@pytest.mark.parametrize("fmt", ["ogg", "mp3"])
def test_lossy_formats_via_soundfile(tmp_path, fmt):
    if fmt.upper() not in sf.available_formats():
        pytest.skip(f"this libsndfile cannot write {fmt}")
    sr = 44100
    sig = _signal(sr)
    path = tmp_path / f"x.{fmt}"
    sf.write(path, sig, sr)
    x = load_audio(path)
    _check_basic(x)
    ref = _expected(sig, sr)
    assert abs(len(x) - len(ref)) <= 160
    assert _snr_db(x, ref) > 20


@pytest.mark.parametrize(
    ("name", "codec_args"),
    [
        ("x.m4a", ["-c:a", "aac", "-b:a", "128k"]),
        ("x.webm", ["-c:a", "libopus"]),
        ("x.mkv", ["-c:a", "libvorbis"]),
        ("x.aac", ["-c:a", "aac"]),
    ],
)
def test_ffmpeg_formats(tmp_path, name, codec_args):
    sr = 44100
    sig = _signal(sr)
    src = tmp_path / "src.wav"
    sf.write(src, sig, sr, subtype="PCM_16")
    path = tmp_path / name
    _ffmpeg("-i", str(src), *codec_args, str(path))
    x = load_audio(path)
    _check_basic(x)
    ref = _expected(sig, sr)
    # Raw ADTS .aac has no edit list, so its priming samples (up to 2048) are not trimmed.
    slack = 2048 * SAMPLE_RATE // sr + 160 if name.endswith(".aac") else 160
    assert abs(len(x) - len(ref)) <= slack
    if not name.endswith(".aac"):
        assert _snr_db(x, ref) > 20


def test_video_with_audio_uses_its_audio_stream(tmp_path):
    sr = 48000
    sig = _signal(sr)
    src = tmp_path / "src.wav"
    sf.write(src, sig, sr, subtype="PCM_16")
    video = tmp_path / "talk.mp4"
    _ffmpeg("-f", "lavfi", "-i", "color=c=gray:s=64x64:r=25:d=1.5", "-i", str(src),
            "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(video))
    x = load_audio(video)
    _check_basic(x)
    ref = _expected(sig, sr)
    assert abs(len(x) - len(ref)) <= 320
    assert _snr_db(x, ref) > 20
    assert abs(audio_duration(video) - 1.5) < 0.05


def test_mp3_content_with_wrong_extension(tmp_path):
    """libsndfile detects the real format, whatever the extension says."""
    sig = _signal(16000, channels=1)
    path = tmp_path / "really_wav.mp3"
    sf.write(path, sig, 16000, subtype="PCM_16", format="WAV")
    x = load_audio(path)
    assert np.abs(x - sig[:, 0]).max() < 1e-3


def test_other_target_rate(tmp_path):
    sig = _signal(44100, channels=1)
    path = tmp_path / "x.wav"
    sf.write(path, sig, 44100, subtype="FLOAT")
    x = load_audio(path, sr=22050)
    assert len(x) == int(1.5 * 22050)
    assert np.abs(x - soxr.resample(sig[:, 0], 44100, 22050)).max() < 1e-4


def test_digital_silence_is_allowed(tmp_path):
    path = tmp_path / "silence.wav"
    sf.write(path, np.zeros(16000, np.float32), 16000, subtype="PCM_16")
    x = load_audio(path)
    assert x.shape == (16000,)
    assert not x.any()


def test_loud_float_input_is_clipped(tmp_path):
    path = tmp_path / "loud.wav"
    sf.write(path, np.full(1600, 3.0, np.float32), 16000, subtype="FLOAT")
    x = load_audio(path)
    assert x.max() == 1.0


# ------------------------------------------------------------------------------------------
# errors


def _assert_audio_error(path, *words, **kwargs):
    with pytest.raises(AudioError) as info:
        load_audio(path, **kwargs)
    msg = str(info.value)
    assert isinstance(info.value, InputError)
    assert str(path) in msg
    for w in words:
        assert w in msg.lower(), msg
    assert msg.count(". ") == 0  # one sentence
    return msg


def test_missing_file(tmp_path):
    _assert_audio_error(tmp_path / "nope.wav", "does not exist", "check the path")


def test_folder_instead_of_file(tmp_path):
    _assert_audio_error(tmp_path, "folder")


def test_zero_byte_file(tmp_path):
    p = tmp_path / "empty.wav"
    p.write_bytes(b"")
    _assert_audio_error(p, "empty")


def test_wav_without_samples(tmp_path):
    p = tmp_path / "nosamples.wav"
    sf.write(p, np.zeros((0, 1), np.float32), 16000, subtype="PCM_16")
    assert p.stat().st_size > 0
    _assert_audio_error(p, "no audio samples")


def test_random_bytes_renamed_wav(tmp_path):
    p = tmp_path / "noise.wav"
    p.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    _assert_audio_error(p, "not a readable audio file", "convert")


def test_png_renamed_wav(tmp_path):
    from PIL import Image

    p = tmp_path / "photo.wav"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(p, format="PNG")
    _assert_audio_error(p, "image", "not an audio file")


def test_text_file(tmp_path):
    p = tmp_path / "notes.mp3"
    p.write_text("hello, this is not audio\n" * 20)
    _assert_audio_error(p, "not a readable audio file")


def test_video_without_audio(tmp_path):
    p = tmp_path / "silent.mp4"
    _ffmpeg("-f", "lavfi", "-i", "color=c=black:s=64x64:r=25:d=1", "-c:v", "libx264",
            "-pix_fmt", "yuv420p", str(p))
    _assert_audio_error(p, "video without an audio stream")


def test_shorter_than_one_frame(tmp_path):
    p = tmp_path / "blip.wav"
    n = int(SAMPLE_RATE * DEFAULT_MIN_DURATION) - 16  # just under 40 ms
    sf.write(p, np.full(n, 0.1, np.float32), SAMPLE_RATE, subtype="PCM_16")
    _assert_audio_error(p, "at least 0.040 s")
    # The minimum is a parameter.
    assert load_audio(p, min_duration=0.01).shape == (n,)
    # Exactly one frame is enough.
    sf.write(p, np.full(640, 0.1, np.float32), SAMPLE_RATE, subtype="PCM_16")
    assert load_audio(p).shape == (640,)


def test_missing_file_duration(tmp_path):
    with pytest.raises(AudioError):
        audio_duration(tmp_path / "nope.flac")


# ------------------------------------------------------------------------------------------
# writing


def test_write_wav_round_trip_and_atomic(tmp_path):
    sig = _signal(SAMPLE_RATE, channels=1)[:, 0] * 3.0  # clipped on write
    p = write_wav(tmp_path / "out.wav", sig)
    assert p == tmp_path / "out.wav"
    info = sf.info(p)
    assert (info.samplerate, info.channels, info.subtype) == (SAMPLE_RATE, 1, "PCM_16")
    x = load_audio(p)
    assert np.abs(x - np.clip(sig, -1, 1)).max() < 1e-4
    assert sorted(q.name for q in tmp_path.iterdir()) == ["out.wav"]  # no temporary left
    stereo = write_wav(tmp_path / "st.wav", np.zeros((800, 2), np.float32), sr=8000)
    assert sf.info(stereo).channels == 2
    assert audio_duration(stereo) == pytest.approx(0.1)


# ------------------------------------------------------------------------------------------
# bounds: duration from the header before decoding, at most max_duration decoded, a time limit


def _encode(path: Path, seconds: float, *codec: str) -> Path:
    _ffmpeg("-f", "lavfi", "-i", f"sine=frequency=330:sample_rate=48000:duration={seconds}", *codec, str(path))
    return path


@pytest.mark.parametrize("name, codec", [("long.wav", ()), ("long.m4a", ("-c:a", "aac"))])
def test_max_duration_is_checked_from_the_header_before_decoding(tmp_path, monkeypatch, name, codec):
    import audio2lp.media.audio as audio

    path = _encode(tmp_path / name, 3.0, *codec)
    decoded = []
    original = audio._mono_resampled
    monkeypatch.setattr(audio, "_mono_resampled", lambda *a, **k: decoded.append(1) or original(*a, **k))
    with pytest.raises(AudioError, match=r"lasts 3\.0 s; .*at most 1 s"):
        load_audio(path, max_duration=1.0)
    assert decoded == []  # refused from the header: nothing was decoded
    assert abs(len(load_audio(path, max_duration=5.0)) / SAMPLE_RATE - 3.0) < 0.05
    assert decoded == [1]


def test_a_header_that_understates_the_length_does_not_get_past_max_duration(tmp_path):
    """Two Opus streams chained in one file: the header says 1 s (the last stream), decoding gives 21 s."""
    first = _encode(tmp_path / "a.opus", 20.0, "-c:a", "libopus")
    second = _encode(tmp_path / "b.opus", 1.0, "-c:a", "libopus")
    chained = tmp_path / "chained.opus"
    chained.write_bytes(first.read_bytes() + second.read_bytes())
    assert len(load_audio(chained)) / SAMPLE_RATE > 20  # unbounded: all of it
    with pytest.raises(AudioError, match="longer than 5 s"):
        load_audio(chained, max_duration=5.0)


def test_decoding_has_a_time_limit(tmp_path, monkeypatch):
    """An ffmpeg that hangs is stopped after ``timeout`` seconds (here a stand-in that sleeps)."""
    import time

    import audio2lp.media.audio as audio
    import audio2lp.media.probe as probe

    path = _encode(tmp_path / "speech.m4a", 1.0, "-c:a", "aac")
    hang = tmp_path / "ffmpeg"
    hang.write_text("#!/bin/sh\nexec sleep 60\n")
    hang.chmod(0o755)
    monkeypatch.setattr(audio, "ffmpeg_exe", lambda *a, **k: str(hang))
    monkeypatch.setattr(probe, "ffmpeg_exe", lambda *a, **k: str(hang))
    t = time.monotonic()
    with pytest.raises(AudioError, match=r"more than 0\.5 s"):
        load_audio(path, timeout=0.5)
    assert time.monotonic() - t < 30  # stopped long before the stand-in would have finished
