"""audio2lp.media.writer and .atomic: the H.264 writer with audio muxing, atomic outputs, early validation."""

from __future__ import annotations

import os
from fractions import Fraction

import numpy as np
import pytest

import audio2lp.media.atomic as atomic_module
from audio2lp.errors import AudioError, VideoError
from audio2lp.media.atomic import atomic_output, check_output_path
from audio2lp.media.ffmpeg import fps_fraction
from audio2lp.media.probe import probe_video
from audio2lp.media.reader import read_frames
from audio2lp.media.writer import VideoWriter

from .synthetic import audio_samples, make_video, needs_proc, sine, square_x, synthetic_frame, wait_no_children

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
    assert info.fps == pytest.approx(float(fps_fraction(fps)), rel=1e-9)
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
    video_duration = n / float(fps_fraction(fps))
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

    monkeypatch.setattr(atomic_module, "_create_exclusive", denied)
    for call in (lambda: check_output_path(tmp_path / "o.mp4"), lambda: VideoWriter(tmp_path / "o.mp4", 25)):
        with pytest.raises(VideoError, match=r"Cannot write to the output folder .*\(Permission denied\)"):
            call()


def test_fps_fraction():

    assert fps_fraction(29.97) == Fraction(30000, 1001)
    assert fps_fraction(30000 / 1001) == Fraction(30000, 1001)
    assert fps_fraction(23.976) == Fraction(24000, 1001)
    assert fps_fraction(59.94) == Fraction(60000, 1001)
    assert fps_fraction(25) == 25
    assert fps_fraction(12.5) == Fraction(25, 2)
