"""End to end with the full-size networks (official shapes, conformance-filled weights) on real files."""

from __future__ import annotations

import subprocess

import pytest

from audio2lp.api import Animator
from audio2lp.media.ffmpeg import ffmpeg_exe
from audio2lp.media.probe import probe_video

pytestmark = [pytest.mark.slow, pytest.mark.realdata]


@pytest.fixture(scope="module")
def animator(filled_weights_dir):
    return Animator(filled_weights_dir, device="cpu", progress=False, batch_size=8)


def test_drive_full_size(animator, data_dir, tmp_path):
    """A real portrait driven by a real talking clip (cut to 8 frames in tmp, of which ``max_frames`` renders
    the first 2: the reference frame and one moved frame; a full-size frame takes ~20 s on 2 idle CPU
    cores): the mp4 has exactly the rendered frames at the driving fps, the driving audio cut to the
    rendered duration, and the full-resolution portrait."""
    clip = tmp_path / "clip.mp4"
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-i", str(data_dir / "talking/LivePortrait__d11.mp4"),
                    "-frames:v", "8", "-t", "0.32", "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac",
                    str(clip)], check=True)
    src = probe_video(clip)
    assert src.n_frames == 8 and src.has_audio
    out = tmp_path / "out.mp4"
    res = animator.drive(data_dir / "portraits/JoyVASA__joyvasa_006.jpg", clip, out, max_frames=2)
    info = probe_video(out)
    assert info.n_frames == res.n_frames == 2
    assert info.fps == pytest.approx(src.fps)
    assert info.has_audio and res.has_audio
    assert info.audio_sample_rate == src.audio_sample_rate
    # the audio is trimmed to the 2 rendered frames (the container duration follows the longer stream)
    assert abs(info.duration - 2 / src.fps) <= 1 / src.fps + 0.03, info.duration
    pcm = subprocess.run([ffmpeg_exe(), "-v", "error", "-i", str(out), "-vn", "-ac", "1", "-ar", "16000", "-f", "s16le",
                          "-"], capture_output=True, check=True).stdout
    assert abs(len(pcm) / 2 / 16000 - 2 / src.fps) < 0.01, len(pcm) / 2 / 16000
    assert (info.width, info.height) == (1080, 1080)
