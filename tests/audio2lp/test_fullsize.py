"""End to end with the full-size networks (official shapes, conformance-filled weights) on real files."""

from __future__ import annotations

import subprocess

import pytest

from audio2lp.api import Animator
from audio2lp.video_io import ffmpeg_exe, probe_video

pytestmark = [pytest.mark.slow, pytest.mark.realdata]


@pytest.fixture(scope="module")
def animator(filled_weights_dir):
    return Animator(filled_weights_dir, device="cpu", progress=False, batch_size=8)


def test_drive_full_size(animator, data_dir, tmp_path):
    """A real portrait driven by a real talking clip (cut to 8 frames in tmp): the mp4's frame count, fps
    and audio match the driving clip, and the frame is the full-resolution portrait."""
    clip = tmp_path / "clip.mp4"
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-i", str(data_dir / "talking/LivePortrait__d11.mp4"),
                    "-frames:v", "8", "-t", "0.32", "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac",
                    str(clip)], check=True)
    src = probe_video(clip)
    out = tmp_path / "out.mp4"
    res = animator.drive(data_dir / "portraits/JoyVASA__joyvasa_006.jpg", clip, out)
    info = probe_video(out)
    assert info.n_frames == src.n_frames == res.n_frames == 8
    assert info.fps == pytest.approx(src.fps)
    assert info.has_audio
    assert abs(info.duration - src.n_frames / src.fps) <= 1 / src.fps + 0.03
    assert (info.width, info.height) == (1080, 1080)
