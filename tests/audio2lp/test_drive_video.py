"""`audio2lp drive VIDEO DRIVING` (LivePortrait's source-video mode) end to end on real clips: one talking video driven
by another (tiny renderer; one short full-size run marked slow). The keypoint maths is tested in
tests/lp_renderer/test_source_video.py."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import torch

from audio2lp.api import Animator
from audio2lp.apps.cli import main
from audio2lp.media.audio import load_audio
from audio2lp.media.ffmpeg import ffmpeg_exe
from audio2lp.media.probe import probe_video
from audio2lp.models.motion import load_motion_template
from tests.audio2lp.test_drive import cut_clip

SOURCE = "talking/deep_avsr__00008.mp4"  # 160x160, 25 fps, 16 kHz audio
DRIVING = "talking/LipNet__bbaf2n.mpg"  # 360x288, 25 fps, 44.1 kHz audio
PORTRAIT = "portraits/EAMM__14.png"


@pytest.fixture(scope="module")
def animator(tiny_weights):
    return Animator(tiny_weights, device="cpu", progress=False)


def audio_match(a, b) -> float:
    """Correlation of the first 0.2 s (at most) of two recordings (16 kHz mono)."""
    x, y = load_audio(a), load_audio(b)
    n = min(3200, len(x), len(y))
    return float(np.corrcoef(x[:n], y[:n])[0, 1])


@pytest.fixture(scope="module")
def clips(data_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    return cut_clip(data_dir / SOURCE, d / "source.mp4", 0.4), cut_clip(data_dir / DRIVING, d / "driving.mp4", 0.28)


@pytest.fixture
def render_spy(monkeypatch):
    """The driving keypoints of every rendered frame and the composed motion."""
    import lp_renderer.source_video as sv

    seen = {"x_d": [], "motion": []}
    real_motion, real_frame = sv.source_video_motion, sv.source_frame_keypoints

    def motion(*args, **kwargs):
        m = real_motion(*args, **kwargs)
        seen["motion"].append((args, kwargs, m))
        return m

    def frame(renderer, source, x_d, *args, **kwargs):
        out = real_frame(renderer, source, x_d, *args, **kwargs)
        seen["x_d"].append((source, x_d.clone(), out.clone()))
        return out

    monkeypatch.setattr(sv, "source_video_motion", motion)
    monkeypatch.setattr(sv, "source_frame_keypoints", frame)
    return seen


@pytest.mark.realdata
def test_video_driven_by_video(animator, clips, tmp_path, render_spy):
    """Output length = the shorter clip, at the source's fps and size, the driving audio by default; the smoother
    gets source frame i's motion and driving frame i's; frame 0 reproduces the source frame's own keypoints."""
    source, driving = clips
    s, d = probe_video(source), probe_video(driving)
    out = tmp_path / "out.mp4"
    res = animator.drive(source, driving, out, save_template=tmp_path / "t.npz", crf=0)
    info = probe_video(out)
    n = min(s.n_frames, d.n_frames)
    assert d.n_frames < s.n_frames and res.n_frames == info.n_frames == n
    assert info.fps == pytest.approx(s.fps) and (info.width, info.height) == (s.width, s.height)
    assert info.has_audio and res.extra["audio_from"] == str(driving)
    assert audio_match(out, driving) > 0.9 > abs(audio_match(out, source))
    assert abs(info.duration - n / s.fps) <= 1 / s.fps + 0.03
    assert load_motion_template(tmp_path / "t.npz").n_frames == n
    ((args, kwargs, motion),) = render_spy["motion"]
    assert args[0].batch_size == args[1].batch_size == n and kwargs["observation_variance"] == pytest.approx(3e-7)
    assert len(render_spy["x_d"]) == n
    src0, x_d0, _ = render_spy["x_d"][0]
    # frame 0: driving frame 0 is the reference, so the composed (smoothed) motion is close to the frame's own
    torch.testing.assert_close(x_d0, src0.x_s, atol=5e-3, rtol=0)
    # the smoothed sequence moves less from frame to frame than the raw one
    raw = (args[0].exp + args[1].exp - args[1].exp[:1]).reshape(n, -1)
    assert (motion.exp.reshape(n, -1).diff(dim=0).abs().mean() < raw.diff(dim=0).abs().mean())


@pytest.mark.realdata
def test_audio_priority_and_options_from_the_cli(tiny_weights, clips, data_dir, tmp_path, capsys):
    """--audio-priority source takes the portrait video's sound; a driving video without sound gives the source's
    anyway; photo-only and video-only option mistakes are one error line."""
    source, driving = clips
    base = ["drive", "--weights", str(tiny_weights), "--device", "cpu", "-q"]
    out = tmp_path / "a.mp4"
    assert main(base + [str(source), str(driving), "-o", str(out), "--audio-priority", "source",
                        "--driving-smooth-observation-variance", "0", "--source-video-eye-retargeting",
                        "--region", "exp", "--concat"]) == 0
    info = probe_video(out)
    assert info.has_audio and audio_match(out, source) > 0.9 > abs(audio_match(out, driving))
    assert info.width == 2 * info.height == 2 * 160  # --concat: the driving crop beside the result
    silent = tmp_path / "silent.mp4"
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-i", str(driving), "-an", "-c:v", "copy", str(silent)],
                   check=True)
    out2 = tmp_path / "b.mp4"
    assert main(base + [str(source), str(silent), "-o", str(out2), "--max-frames", "3"]) == 0
    assert probe_video(out2).n_frames == 3 and audio_match(out2, source) > 0.9
    capsys.readouterr()
    portrait = str(data_dir / PORTRAIT)
    for args, needle in (([portrait, str(driving), "--audio-priority", "source"], "--audio-priority"),
                         ([portrait, str(driving), "--source-video-eye-retargeting"], "--source-video-eye"),
                         ([str(source), portrait], "driving video"),
                         ([str(source), str(driving), "--face", "all"], "--face"),
                         ([str(source), str(driving), "--driving-smooth-observation-variance", "-1"],
                          "--driving-smooth-observation-variance")):
        assert main(base + args + ["-o", str(tmp_path / "x.mp4")]) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], (args, err)
    assert not (tmp_path / "x.mp4").exists()


@pytest.mark.realdata
def test_video_driven_by_template(animator, clips, tmp_path):
    """A motion template drives a portrait video like its video does (no audio from a template: the source's)."""
    source, driving = clips
    animator.drive(source, driving, tmp_path / "a.mp4", save_template=tmp_path / "t.npz", crf=0, max_frames=4)
    res = animator.drive(source, tmp_path / "t.npz", tmp_path / "b.mp4", crf=0)
    assert res.n_frames == 4 and res.extra["audio_from"] == str(source)
    from audio2lp.media.reader import read_frames

    fa, fb = list(read_frames(tmp_path / "a.mp4")), list(read_frames(tmp_path / "b.mp4"))
    assert len(fa) == len(fb) == 4 and max(np.abs(x.astype(int) - y).max() for x, y in zip(fa, fb)) <= 2


@pytest.mark.slow
@pytest.mark.realdata
def test_drive_video_full_size(filled_weights_dir, data_dir, tmp_path):
    """Full-size networks (conformance-filled weights): a 512x512 video driven by another for 2 frames."""
    source = tmp_path / "source.mp4"
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-i", str(data_dir / "talking/LivePortrait__d11.mp4"),
                    "-frames:v", "2", "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", str(source)],
                   check=True)
    driving = cut_clip(data_dir / DRIVING, tmp_path / "driving.mp4", 0.2)
    out = tmp_path / "out.mp4"
    res = Animator(filled_weights_dir, device="cpu", progress=False).drive(source, driving, out)
    info = probe_video(out)
    assert res.n_frames == info.n_frames == 2 and (info.width, info.height) == (512, 512) and info.has_audio
