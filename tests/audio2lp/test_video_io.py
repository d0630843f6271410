"""Tests of audio2lp.video_io: probing, streaming reads, the threaded reader, the H.264 writer with
audio muxing, and atomic outputs. Videos are made on the fly in tmp_path with the ffmpeg binary
of imageio-ffmpeg (a moving white square on black; a sine tone as audio)."""

from __future__ import annotations

import csv
import gc
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from audio2lp import video_io
from audio2lp.errors import AudioError, InputError, VideoError
from audio2lp.video_io import (
    FrameReader,
    VideoInfo,
    VideoWriter,
    atomic_output,
    check_output_path,
    probe_video,
    read_frames,
)

EXE = video_io.ffmpeg_exe()
SQUARE = 8


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------


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
    rate = str(video_io._fps_fraction(float(fps))) if not isinstance(fps, str) else fps
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


# ------------------------------------------------------------------------------------------
# probing and reading
# ------------------------------------------------------------------------------------------

CONTAINERS = [
    # suffix, video codec, pixel format, audio codec, extra options
    (".mp4", "libx264", "yuv420p", "aac", []),
    (".mov", "libx264", "yuv420p", "aac", []),
    (".mkv", "libx264", "yuv420p", "aac", []),
    (".avi", "mpeg4", "yuv420p", "libmp3lame", []),
    (".webm", "libvpx", "yuv420p", "libopus", ["-deadline", "realtime", "-cpu-used", "8"]),
    (".mpg", "mpeg1video", "yuv420p", "mp2", []),
]


@pytest.mark.parametrize("suffix,vcodec,pix_fmt,acodec,extra", CONTAINERS, ids=[c[0] for c in CONTAINERS])
def test_probe_and_read_containers(tmp_path, suffix, vcodec, pix_fmt, acodec, extra):
    sr = 48000 if acodec == "libopus" else 44100 if acodec in ("mp2", "libmp3lame") else 16000
    path = make_video(tmp_path / f"v{suffix}", 15, 25, 64, 48, vcodec=vcodec, pix_fmt=pix_fmt,
                      audio=0.6, acodec=acodec, sr=sr, extra=extra)
    info = probe_video(path)
    assert isinstance(info, VideoInfo)
    assert info.fps == pytest.approx(25.0, abs=1e-6)
    assert (info.n_frames, info.n_frames_exact) == (15, True)
    assert (info.width, info.height) == (64, 48)
    assert info.has_audio and info.audio_sample_rate == sr and info.audio_channels == 1
    assert info.audio_codec == {"libmp3lame": "mp3", "libopus": "opus"}.get(acodec, acodec)
    # the container's duration: some containers count the audio encoder's priming and padding
    # (AAC in Matroska: +1024 samples = +0.064 s at 16 kHz; MP3 in AVI: +0.04 s)
    assert 0.58 <= info.duration <= 0.68
    frames = list(read_frames(path))
    assert len(frames) == 15
    assert all(f.shape == (48, 64, 3) and f.dtype == np.uint8 for f in frames)
    # the square moves 2 px per frame
    assert [square_x(f) for f in frames[:5]] == pytest.approx([0, 2, 4, 6, 8], abs=1)


@pytest.mark.parametrize("fps", [25.0, 30.0, 29.97, 23.976, 12.5])
def test_probe_frame_rates(tmp_path, fps):
    path = make_video(tmp_path / "v.mp4", 20, fps)
    info = probe_video(path)
    assert info.fps == pytest.approx(float(video_io._fps_fraction(fps)), rel=1e-9)
    assert info.n_frames == 20 and info.constant_frame_rate
    if fps == 29.97:
        assert info.fps == pytest.approx(30000 / 1001, rel=1e-12)


def test_probe_odd_size_and_no_audio(tmp_path):
    path = make_video(tmp_path / "odd.mkv", 7, 30, 33, 27, pix_fmt="yuv444p")
    info = probe_video(path)
    assert (info.width, info.height, info.n_frames) == (33, 27, 7)
    assert not info.has_audio and info.audio_sample_rate is None and info.audio_channels is None
    assert info.audio_codec is None
    frames = list(read_frames(path))
    assert len(frames) == 7 and frames[0].shape == (27, 33, 3)


def test_probe_estimate_when_not_counting(tmp_path):
    path = make_video(tmp_path / "v.mp4", 25, 25)
    info = probe_video(path, count_frames=False)
    assert not info.n_frames_exact and info.n_frames == 25
    assert probe_video(path, count_frames=True).n_frames_exact


def test_probe_rotation_metadata_swaps_size(tmp_path):
    src = make_video(tmp_path / "v.mp4", 5, 25, 64, 48)
    rotated = tmp_path / "rot.mp4"
    subprocess.run([EXE, "-v", "error", "-y", "-display_rotation", "90", "-i", str(src), "-c", "copy",
                    str(rotated)], check=True, capture_output=True)
    info = probe_video(rotated)
    assert (info.width, info.height) == (48, 64)
    frames = list(read_frames(rotated))
    assert frames[0].shape == (64, 48, 3) and len(frames) == 5


def test_read_max_frames_and_resample(tmp_path):
    path = make_video(tmp_path / "v.mp4", 20, 25)
    assert len(list(read_frames(path, max_frames=6))) == 6
    assert len(list(read_frames(path, fps=12.5))) == 10
    with pytest.raises(ValueError):
        read_frames(path, max_frames=0)


@needs_proc
def test_read_frames_generator_closed_early_leaves_no_process(tmp_path):
    path = make_video(tmp_path / "v.mp4", 60, 25, 320, 240)
    gen = read_frames(path)
    next(gen)
    assert ffmpeg_children()
    gen.close()
    assert wait_no_children() == []


@pytest.mark.parametrize("maker", ["missing", "random", "text_mp4", "text_txt", "empty", "folder",
                                   "zero_frames", "audio_only", "image"])
def test_bad_inputs_raise_video_error(tmp_path, maker):
    p = tmp_path / "bad.mp4"
    if maker == "random":
        p.write_bytes(np.random.default_rng(0).integers(0, 256, 40000, dtype=np.uint8).tobytes())
    elif maker == "text_mp4":
        p.write_text("this is not a video\n" * 20)
    elif maker == "text_txt":
        p = tmp_path / "notes.txt"
        p.write_text("this is not a video\n" * 20)
    elif maker == "empty":
        p.write_bytes(b"")
    elif maker == "folder":
        p.mkdir()
    elif maker == "zero_frames":
        p = tmp_path / "zero.avi"
        subprocess.run([EXE, "-v", "error", "-y", "-f", "lavfi", "-i", "color=c=red:s=64x48:r=25",
                        "-frames:v", "0", "-c:v", "mpeg4", str(p)], check=True, capture_output=True)
    elif maker == "audio_only":
        p = tmp_path / "audio.m4a"
        subprocess.run([EXE, "-v", "error", "-y", "-f", "lavfi", "-i", "sine=duration=0.5",
                        "-c:a", "aac", str(p)], check=True, capture_output=True)
    elif maker == "image":
        p = tmp_path / "still.png"
        subprocess.run([EXE, "-v", "error", "-y", "-f", "lavfi", "-i", "color=c=red:s=64x48",
                        "-frames:v", "1", str(p)], check=True, capture_output=True)
    with pytest.raises(VideoError) as err:
        probe_video(p)
    msg = str(err.value)
    assert str(p) in msg and ";" in msg and "\n" not in msg  # one sentence: what is wrong; what to do
    assert isinstance(err.value, InputError)
    with pytest.raises(VideoError):
        read_frames(p)  # raises at the call, before iterating
    with pytest.raises(VideoError):
        FrameReader(p)


def test_error_messages_are_specific(tmp_path):
    with pytest.raises(VideoError, match="does not exist"):
        probe_video(tmp_path / "nope.mp4")
    p = tmp_path / "zero.avi"
    subprocess.run([EXE, "-v", "error", "-y", "-f", "lavfi", "-i", "color=c=red:s=64x48:r=25",
                    "-frames:v", "0", "-c:v", "mpeg4", str(p)], check=True, capture_output=True)
    with pytest.raises(VideoError, match="no video frames"):
        probe_video(p)
    a = tmp_path / "audio.m4a"
    subprocess.run([EXE, "-v", "error", "-y", "-f", "lavfi", "-i", "sine=duration=0.5", "-c:a", "aac",
                    str(a)], check=True, capture_output=True)
    with pytest.raises(VideoError, match="no video stream"):
        probe_video(a)
    r = tmp_path / "r.mp4"
    r.write_bytes(b"\x00\x01garbage" * 1000)
    with pytest.raises(VideoError, match="not a video file ffmpeg can read"):
        probe_video(r)


# ------------------------------------------------------------------------------------------
# FrameReader (background thread)
# ------------------------------------------------------------------------------------------


def test_frame_reader_matches_read_frames(tmp_path):
    path = make_video(tmp_path / "v.mkv", 30, 30, 80, 60)
    expected = list(read_frames(path))
    with FrameReader(path, queue_size=3) as reader:
        assert reader.info.n_frames == 30 and reader.info.fps == pytest.approx(30.0)
        got = list(reader)
    assert reader.frames_read == 30
    assert len(got) == 30 and all(np.array_equal(a, b) for a, b in zip(got, expected, strict=True))
    assert list(reader) == []  # exhausted; iterating again is harmless


def test_frame_reader_max_frames(tmp_path):
    path = make_video(tmp_path / "v.mp4", 30, 25)
    with FrameReader(path, max_frames=4) as reader:
        assert len(list(reader)) == 4


@needs_proc
def test_frame_reader_early_close_stops_ffmpeg(tmp_path):
    # 300 frames of 320x240 with a queue of 2: the decoder thread is blocked on the full queue
    path = make_video(tmp_path / "v.mp4", 300, 25, 320, 240)
    reader = FrameReader(path, queue_size=2)
    first = next(reader)
    assert first.shape == (240, 320, 3)
    time.sleep(0.2)
    assert ffmpeg_children()
    t0 = time.monotonic()
    reader.close()
    assert time.monotonic() - t0 < 5
    assert wait_no_children() == []
    with pytest.raises(StopIteration):
        next(reader)
    reader.close()  # idempotent


@needs_proc
def test_frame_reader_break_in_with_block_and_dropped_reader(tmp_path):
    path = make_video(tmp_path / "v.mp4", 200, 25, 160, 120)
    with FrameReader(path, queue_size=2) as reader:
        for i, _ in enumerate(reader):
            if i == 3:
                break
    assert wait_no_children() == []
    reader = FrameReader(path, queue_size=2)
    next(reader)
    del reader
    gc.collect()
    assert wait_no_children() == []


@needs_proc
def test_frame_reader_propagates_thread_errors(tmp_path, monkeypatch):
    path = make_video(tmp_path / "v.mp4", 40, 25)
    real_read = video_io._Decoder.read

    def failing_read(self):
        if self.frames == 3:
            raise RuntimeError("decoder exploded")
        return real_read(self)

    monkeypatch.setattr(video_io._Decoder, "read", failing_read)
    reader = FrameReader(path, queue_size=2)
    got = []
    with pytest.raises(RuntimeError, match="decoder exploded"):
        for frame in reader:
            got.append(frame)
    assert len(got) == 3
    assert wait_no_children() == []


def test_frame_reader_reports_decoding_failure_as_video_error(tmp_path):
    path = make_video(tmp_path / "v.mp4", 10, 25)
    info = probe_video(path)
    path.write_bytes(b"replaced by garbage after probing" * 100)  # ffmpeg now fails
    with pytest.raises(VideoError, match="failed after 0 frames"):
        list(FrameReader(path, info=info))
    with pytest.raises(VideoError, match="failed after 0 frames"):
        list(read_frames(path, info=info))


# ------------------------------------------------------------------------------------------
# VideoWriter
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fps,n,w,h", [(25.0, 50, 64, 48), (30.0, 31, 65, 49), (29.97, 60, 81, 64)])
def test_writer_roundtrip(tmp_path, fps, n, w, h):
    out = tmp_path / "out.mp4"
    with VideoWriter(out, fps) as writer:
        for i in range(n):
            writer.write(synthetic_frame(i, h, w))
    assert writer.frames_written == n
    info = probe_video(out)
    assert info.n_frames == n and info.codec == "h264" and not info.has_audio
    assert info.fps == pytest.approx(float(video_io._fps_fraction(fps)), rel=1e-9)
    assert (info.width, info.height) == (w + w % 2, h + h % 2)  # odd sizes padded
    frames = list(read_frames(out))
    assert [square_x(f) for f in frames[:4]] == pytest.approx([0, 2, 4, 6], abs=1)
    if w % 2:
        # the padding column repeats the last column (black here, not a coloured border)
        assert np.abs(frames[0][:, -1].astype(int) - frames[0][:, -2].astype(int)).max() < 20
    assert sorted(os.listdir(tmp_path)) == ["out.mp4"]
    # faststart: the moov atom comes before mdat
    head = out.read_bytes()[:4096]
    assert head.find(b"moov") != -1 and (head.find(b"mdat") == -1 or head.find(b"moov") < head.find(b"mdat"))


def test_writer_crop_option(tmp_path):
    out = tmp_path / "out.mp4"
    with VideoWriter(out, 25, even_size="crop") as writer:
        for i in range(5):
            writer.write(synthetic_frame(i, 49, 65))
    info = probe_video(out)
    assert (info.width, info.height) == (64, 48)


@pytest.mark.parametrize("fps,n,audio_seconds", [(25.0, 50, 2.5), (25.0, 50, 1.2), (29.97, 45, 1.5),
                                                 (30.0, 31, 1.0)])
def test_writer_numpy_audio_fits_video(tmp_path, fps, n, audio_seconds):
    out = tmp_path / "talk.mp4"
    with VideoWriter(out, fps, audio=sine(audio_seconds), audio_sample_rate=16000) as writer:
        for i in range(n):
            writer.write(synthetic_frame(i, 48, 64))
    info = probe_video(out)
    assert info.has_audio and info.audio_sample_rate == 16000 and info.n_frames == n
    assert info.audio_codec == "aac"
    video_duration = n / float(video_io._fps_fraction(fps))
    audio_duration = audio_samples(out, 16000) / 16000
    assert abs(audio_duration - video_duration) <= 1.0 / fps  # within one frame ...
    assert abs(audio_duration - video_duration) <= 1.0 / 16000  # ... in fact to the sample
    assert sorted(os.listdir(tmp_path)) == ["talk.mp4"]


def test_writer_speak_case_output_matches_audio_duration(tmp_path):
    """speak: n_frames = round(audio_duration * fps) gives an output within a frame of the audio."""
    speech = sine(2.345)
    fps = 25.0
    n = round(len(speech) / 16000 * fps)
    out = tmp_path / "speak.mp4"
    with VideoWriter(out, fps, audio=speech) as writer:
        for i in range(n):
            writer.write(synthetic_frame(i, 32, 32))
    got = audio_samples(out, 16000) / 16000
    assert abs(got - len(speech) / 16000) <= 1 / fps
    assert abs(probe_video(out).n_frames / fps - len(speech) / 16000) <= 1 / fps


def test_writer_audio_from_driving_video(tmp_path):
    drv = make_video(tmp_path / "drv.mkv", 40, 25, audio=1.6, sr=44100)  # 1.6 s of audio
    # drive: the output keeps the driving video's frame count; audio trimmed to 30 frames ...
    out = tmp_path / "short.mp4"
    with VideoWriter(out, 25, audio=drv) as writer:
        for f in read_frames(drv, max_frames=30):
            writer.write(f)
    assert audio_samples(out, 44100) == round(30 / 25 * 44100)
    # ... or padded with silence to 60 frames
    out2 = tmp_path / "long.mp4"
    with VideoWriter(out2, 25, audio=drv) as writer:
        for i in range(60):
            writer.write(synthetic_frame(i, 48, 64))
    assert audio_samples(out2, 44100) == round(60 / 25 * 44100)
    # audio_start skips into the source; "shortest" never pads
    out3 = tmp_path / "shortest.mp4"
    with VideoWriter(out3, 25, audio=drv, audio_fit="shortest", audio_start=1.0) as writer:
        for i in range(60):
            writer.write(synthetic_frame(i, 48, 64))
    assert audio_samples(out3, 44100) / 44100 == pytest.approx(0.6, abs=0.05)
    assert sorted(os.listdir(tmp_path)) == ["drv.mkv", "long.mp4", "short.mp4", "shortest.mp4"]


def test_writer_audio_source_without_audio_gives_silent_video(tmp_path, caplog):
    silent = make_video(tmp_path / "silent.mp4", 5, 25)
    out = tmp_path / "out.mp4"
    with VideoWriter(out, 25, audio=silent) as writer:
        assert not writer.has_audio
        for i in range(5):
            writer.write(synthetic_frame(i, 48, 64))
    assert not probe_video(out).has_audio
    assert "no audio stream" in caplog.text


def test_writer_bad_audio_source_fails_early(tmp_path):
    with pytest.raises(AudioError, match="does not exist"):
        VideoWriter(tmp_path / "o.mp4", 25, audio=tmp_path / "missing.wav")
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"nothing to hear here" * 50)
    with pytest.raises(AudioError):
        VideoWriter(tmp_path / "o.mp4", 25, audio=junk)
    assert sorted(os.listdir(tmp_path)) == ["junk.wav"]


def test_writer_rejects_bad_frames_and_args(tmp_path):
    with pytest.raises(ValueError):
        VideoWriter(tmp_path / "o.mp4", 0)
    with pytest.raises(ValueError):
        VideoWriter(tmp_path / "o.mp4", 25, crf=60)
    with pytest.raises(ValueError):
        VideoWriter(tmp_path / "o.mp4", 25, audio=np.zeros((10, 2, 2), np.float32))
    with VideoWriter(tmp_path / "o.mp4", 25) as writer:
        with pytest.raises(ValueError, match="uint8"):
            writer.write(np.zeros((8, 8, 3), np.float32))
        with pytest.raises(ValueError, match="RGB"):
            writer.write(np.zeros((8, 8), np.uint8))
        writer.write(np.zeros((8, 8, 3), np.uint8))
        with pytest.raises(ValueError, match="same size"):
            writer.write(np.zeros((10, 8, 3), np.uint8))
    assert probe_video(tmp_path / "o.mp4").n_frames == 1


def test_writer_copies_frames(tmp_path):
    """A frame buffer reused by the caller right after write() must not change what is encoded."""
    out = tmp_path / "o.mp4"
    buf = np.zeros((48, 64, 3), np.uint8)
    with VideoWriter(out, 25, queue_size=16) as writer:
        for i in range(10):
            buf[:] = synthetic_frame(i, 48, 64)
            writer.write(buf)
    assert [square_x(f) for f in read_frames(out)] == pytest.approx([2 * i for i in range(10)], abs=1)


# ------------------------------------------------------------------------------------------
# atomic outputs and early validation
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("exc_type", [RuntimeError, KeyboardInterrupt])
@needs_proc
def test_writer_exception_leaves_nothing(tmp_path, exc_type):
    out = tmp_path / "out.mp4"
    with pytest.raises(exc_type):
        with VideoWriter(out, 25, audio=sine(1.0)) as writer:
            for i in range(10):
                writer.write(synthetic_frame(i, 48, 64))
            raise exc_type("stop")
    assert os.listdir(tmp_path) == []
    assert wait_no_children() == []


@pytest.mark.parametrize("exc_type", [RuntimeError, KeyboardInterrupt])
def test_writer_exception_keeps_previous_output(tmp_path, exc_type):
    out = tmp_path / "out.mp4"
    out.write_bytes(b"previous result")
    with pytest.raises(exc_type):
        with VideoWriter(out, 25) as writer:
            writer.write(synthetic_frame(0, 48, 64))
            raise exc_type("stop")
    assert out.read_bytes() == b"previous result"
    assert os.listdir(tmp_path) == ["out.mp4"]


@needs_proc
def test_writer_reports_encoder_death(tmp_path):
    out = tmp_path / "out.mp4"
    with pytest.raises(VideoError, match="Encoding .* failed"):
        with VideoWriter(out, 25, queue_size=1) as writer:
            writer.write(synthetic_frame(0, 240, 320))
            os.kill(writer._state.proc.pid, 9)
            for i in range(1, 200):
                writer.write(synthetic_frame(i, 240, 320))
    assert os.listdir(tmp_path) == []
    assert wait_no_children() == []


def test_writer_replaces_existing_output(tmp_path):
    out = tmp_path / "out.mp4"
    out.write_bytes(b"old")
    with VideoWriter(out, 25) as writer:
        writer.write(synthetic_frame(0, 48, 64))
    assert probe_video(out).n_frames == 1
    assert os.listdir(tmp_path) == ["out.mp4"]


def test_writer_abort_and_no_frames(tmp_path):
    out = tmp_path / "out.mp4"
    writer = VideoWriter(out, 25)
    writer.write(synthetic_frame(0, 48, 64))
    writer.abort()
    assert os.listdir(tmp_path) == []
    with pytest.raises(RuntimeError, match="no frame"):
        with VideoWriter(out, 25):
            pass
    assert os.listdir(tmp_path) == []


def test_writer_without_context_manager(tmp_path):
    out = tmp_path / "out.mp4"
    writer = VideoWriter(out, 25)
    for i in range(3):
        writer.write(synthetic_frame(i, 48, 64))
    assert writer.close() == out
    assert writer.close() == out  # idempotent
    assert probe_video(out).n_frames == 3


@pytest.mark.parametrize("exc_type", [ValueError, KeyboardInterrupt])
def test_atomic_output(tmp_path, exc_type):
    out = tmp_path / "result.mp4"
    with atomic_output(out) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".mp4" and tmp.name.startswith(".result.mp4.part-")
        assert tmp.exists() and not out.exists()
        tmp.write_bytes(b"done")
    assert out.read_bytes() == b"done" and os.listdir(tmp_path) == ["result.mp4"]
    with pytest.raises(exc_type):
        with atomic_output(out) as tmp:
            tmp.write_bytes(b"partial")
            raise exc_type("interrupted")
    assert out.read_bytes() == b"done" and os.listdir(tmp_path) == ["result.mp4"]


def test_missing_output_folder_fails_before_work(tmp_path):
    missing = tmp_path / "no" / "such" / "out.mp4"
    for call in (lambda: check_output_path(missing), lambda: VideoWriter(missing, 25)):
        with pytest.raises(VideoError, match="output folder .* does not exist"):
            call()
    with pytest.raises(VideoError, match="does not exist"):
        with atomic_output(missing):
            pytest.fail("the block must not run")
    assert not (tmp_path / "no").exists()


def test_check_output_path(tmp_path):
    assert check_output_path(tmp_path / "a.mp4") == tmp_path / "a.mp4"
    assert check_output_path(tmp_path / "a.MP4") == tmp_path / "a.MP4"
    with pytest.raises(VideoError, match=r"must end in \.mp4"):
        check_output_path(tmp_path / "a.avi")
    assert check_output_path(tmp_path / "a.avi", suffixes=None).name == "a.avi"
    assert check_output_path(tmp_path / "a.mkv", suffixes=(".mp4", ".mkv")).name == "a.mkv"
    (tmp_path / "d.mp4").mkdir()
    with pytest.raises(VideoError, match="is a folder"):
        check_output_path(tmp_path / "d.mp4")
    assert sorted(os.listdir(tmp_path)) == ["d.mp4"]  # the write probe is removed


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="optional: root can write anywhere")
def test_unwritable_output_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(VideoError, match="Cannot write"):
            check_output_path(ro / "out.mp4")
    finally:
        ro.chmod(0o700)


def test_unwritable_output_folder_simulated(tmp_path, monkeypatch):
    def denied(folder, name):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(video_io, "_create_exclusive", denied)
    for call in (lambda: check_output_path(tmp_path / "o.mp4"), lambda: VideoWriter(tmp_path / "o.mp4", 25)):
        with pytest.raises(VideoError, match=r"Cannot write to the output folder .*\(Permission denied\)"):
            call()


def test_fps_fraction():
    from fractions import Fraction

    assert video_io._fps_fraction(29.97) == Fraction(30000, 1001)
    assert video_io._fps_fraction(30000 / 1001) == Fraction(30000, 1001)
    assert video_io._fps_fraction(23.976) == Fraction(24000, 1001)
    assert video_io._fps_fraction(59.94) == Fraction(60000, 1001)
    assert video_io._fps_fraction(25) == 25
    assert video_io._fps_fraction(12.5) == Fraction(25, 2)


# ------------------------------------------------------------------------------------------
# real files
# ------------------------------------------------------------------------------------------

REAL = ["lip-reading-deeplearning__sample_video.mp4", "LipNet__bbaf2n.mpg", "Talking-Face_PC-AVS__00010.mp4",
        "styletalk__feifeili_clip1.mp4", "video-retalking__1.mp4", "SadTalker__WDA_AlexandriaOcasioCortez_000.mp4"]


def _manifest(data_dir: Path) -> dict[str, dict[str, str]]:
    with open(data_dir / "MANIFEST.tsv", newline="") as fh:
        return {row["file"]: row for row in csv.DictReader(fh, delimiter="\t")}


@pytest.mark.realdata
@pytest.mark.parametrize("name", REAL)
def test_real_videos_match_manifest(data_dir, name):
    path = data_dir / "talking" / name
    if not path.is_file():
        pytest.skip(f"{path} not found")
    row = _manifest(data_dir)[f"talking/{name}"]
    info = probe_video(path)
    assert info.fps == pytest.approx(float(row["fps"]), abs=0.01)
    assert info.duration == pytest.approx(float(row["duration_s"]), abs=0.02)
    assert (info.width, info.height) == (int(row["width"]), int(row["height"]))
    assert info.has_audio and info.audio_sample_rate == int(row["audio_sr"])
    assert info.audio_channels == int(row["channels"])
    assert info.n_frames_exact
    assert sum(1 for _ in read_frames(path)) == info.n_frames
    # n_frames agrees with duration * fps to within two frames (the container duration may
    # include a longer audio track)
    assert abs(info.n_frames - info.duration * info.fps) <= 2


@pytest.mark.realdata
def test_real_drive_case_keeps_driving_audio(data_dir, tmp_path):
    drv = data_dir / "talking" / "Talking-Face_PC-AVS__00010.mp4"
    if not drv.is_file():
        pytest.skip(f"{drv} not found")
    info = probe_video(drv)
    out = tmp_path / "drive.mp4"
    with FrameReader(drv) as reader, VideoWriter(out, reader.info.fps, audio=drv) as writer:
        for frame in reader:
            writer.write(frame[::2, ::2])
    got = probe_video(out)
    assert got.n_frames == info.n_frames and got.fps == pytest.approx(info.fps)
    assert abs(audio_samples(out, 16000) / 16000 - info.n_frames / info.fps) <= 1 / info.fps
