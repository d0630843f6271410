"""audio2lp.media.probe and .reader: probing, streaming reads, the threaded frame reader; real files."""

from __future__ import annotations

import csv
import gc
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

import audio2lp.media.reader as reader_module
from audio2lp.errors import InputError, VideoError
from audio2lp.media.ffmpeg import fps_fraction
from audio2lp.media.probe import VideoInfo, probe_video
from audio2lp.media.reader import FrameReader, read_frames
from audio2lp.media.writer import VideoWriter

from .synthetic import EXE, audio_samples, ffmpeg_children, make_video, needs_proc, square_x, wait_no_children

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
    assert info.fps == pytest.approx(float(fps_fraction(fps)), rel=1e-9)
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
    real_read = reader_module._Decoder.read

    def failing_read(self):
        if self.frames == 3:
            raise RuntimeError("decoder exploded")
        return real_read(self)

    monkeypatch.setattr(reader_module._Decoder, "read", failing_read)
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
