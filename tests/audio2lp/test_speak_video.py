"""`audio2lp speak VIDEO SPEECH` (dubbing) end to end on real clips: a talking video re-voiced with another person's
speech (tiny renderer; one short full-size run marked slow)."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from audio2lp.api import Animator
from audio2lp.apps.cli import main
from audio2lp.media.audio import load_audio, write_wav
from audio2lp.media.ffmpeg import ffmpeg_exe
from audio2lp.media.probe import probe_video
from audio2lp.media.reader import read_frames
from audio2lp.video_portrait import pingpong_indices, track_video_portrait
from lp_renderer.crop import paste_mask
from tests.audio2lp.test_drive import cut_clip

SOURCE = "talking/V-Express__RD_Radio10_0_clip_0.mp4"  # 512x512 at 29.97 fps, a man talking
SPEECH = "speech/dreamtalk__spanish1.wav"  # someone else
SMALL = "talking/deep_avsr__00008.mp4"  # 160x160 at 25 fps


@pytest.fixture(scope="module")
def animator(tiny_weights):
    return Animator(tiny_weights, device="cpu", progress=False)


def speech_cut(data_dir, path, seconds):
    return write_wav(path, load_audio(data_dir / SPEECH)[: int(seconds * 16000)])


@pytest.fixture
def dub_spy(monkeypatch):
    """Records, per rendered frame, the source frame's index, its own lip ratio and the lip target set."""
    import lp_renderer.source_video as sv
    from audio2lp import video_portrait

    seen = {"index": [], "lip_s": [], "target": []}
    real_lip, real_read = sv.lip_keypoints, video_portrait.SourceFrames.read

    def lip(renderer, source, lip_open, stitching=True):
        seen["lip_s"].append(source.lip_ratio)
        seen["target"].extend(np.asarray(lip_open).tolist())
        return real_lip(renderer, source, lip_open, stitching)

    def read(self, indices):
        for i, frame in real_read(self, indices):
            seen["index"].append(i)
            yield i, frame

    monkeypatch.setattr(sv, "lip_keypoints", lip)
    monkeypatch.setattr(video_portrait.SourceFrames, "read", read)
    return seen


@pytest.mark.realdata
def test_dub_longer_speech_pingpongs(animator, data_dir, tmp_path, dub_spy):
    """Speech longer than the video: the output has the video's size and frame rate, the speech's duration and audio;
    the video plays forward and back (source frames in ping-pong order, pasted back into those frames); every frame's
    mouth is set to the speech's lip opening at the video's frame rate, relative to that frame's own lip ratio."""
    from audio2lp.speech import lip_open_series, speech_plan

    clip = cut_clip(data_dir / SOURCE, tmp_path / "clip.mp4", 0.35)
    src = probe_video(clip)
    speech = speech_cut(data_dir, tmp_path / "speech.wav", 0.6)
    out = tmp_path / "dub.mp4"
    res = animator.speak(clip, speech, out, crf=0)
    info = probe_video(out)
    n_out = round(0.6 * src.fps)
    assert src.fps == pytest.approx(30000 / 1001) and src.n_frames < n_out
    assert (info.width, info.height) == (src.width, src.height) == (512, 512)
    assert info.fps == pytest.approx(src.fps) and info.n_frames == res.n_frames == n_out
    assert info.has_audio and info.audio_codec == "aac" and abs(info.duration - 0.6) <= 1 / src.fps + 0.03
    assert abs(len(load_audio(out)) / 16000 - 0.6) <= 1 / src.fps  # the speech, not the video's own sound
    assert res.extra["mode"] == "dubbing" and res.extra["source_frames"] == src.n_frames
    order = pingpong_indices(src.n_frames, n_out)
    assert dub_spy["index"] == order.tolist()
    assert order.max() == src.n_frames - 1 and order[-1] < order.max()  # it did turn back
    # the mouth: the speech's lip series at the video's frame rate, each frame's own lip ratio as the source's
    tracked = track_video_portrait(clip, animator.faces)
    plan = speech_plan(load_audio(speech), n_out, src.fps, device="cpu", motion_model=None, seed=0, style=0,
                       blink=False, blink_rate=None, pose_scale=0.0, template=None,
                       whisper_checkpoint=None, progress=False)
    np.testing.assert_allclose(dub_spy["target"], lip_open_series(plan), atol=1e-6)
    np.testing.assert_allclose(dub_spy["lip_s"], tracked.lip_ratios[order], atol=1e-6)
    # pasted back into the right source frame: away from the face the pixels are that frame's
    source_frames = list(read_frames(clip))
    outs = list(read_frames(out))
    for k in range(n_out):
        i = order[k]
        keep = paste_mask(tracked.crop(i), source_frames[i].shape).full() == 0
        diff = np.abs(outs[k].astype(int) - source_frames[i])[keep]
        assert keep.sum() > 1000 and diff.mean() < 2.0, (k, i, diff.mean())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.realdata
def test_dub_shorter_speech_cuts_the_video_from_the_cli(tiny_weights, data_dir, tmp_path, capsys):
    """The README's command with a speech shorter than the video: the video is cut to the speech."""
    clip = cut_clip(data_dir / SMALL, tmp_path / "clip.mp4", 1.0)
    speech = speech_cut(data_dir, tmp_path / "speech.wav", 0.5)
    out = tmp_path / "dub.mp4"
    rc = main(["speak", str(clip), str(speech), "-o", str(out), "--weights", str(tiny_weights), "--device", "cpu",
               "-q", "--seed", "3", "--face", "0", "--crf", "23"])
    assert rc == 0, capsys.readouterr()
    assert "wrote" in capsys.readouterr().out
    info, src = probe_video(out), probe_video(clip)
    assert (info.width, info.height, info.fps) == (src.width, src.height, src.fps) == (160, 160, 25.0)
    assert info.n_frames == round(0.5 * 25) < src.n_frames and info.has_audio


@pytest.mark.realdata
def test_dub_options_that_do_not_apply(tiny_weights, data_dir, tmp_path, capsys):
    """Photo-only options are refused with one error line; nothing is written."""
    clip = cut_clip(data_dir / SMALL, tmp_path / "clip.mp4", 0.2)
    speech = speech_cut(data_dir, tmp_path / "speech.wav", 0.3)
    (tmp_path / "t.npz").write_bytes(b"")
    base = ["speak", str(clip), str(speech), "-o", str(tmp_path / "o.mp4"), "--weights", str(tiny_weights), "-q"]
    for extra, needle in ((["--pose-from", str(tmp_path / "t.npz")], "--pose-from"), (["--fps", "30"], "--fps"),
                          (["--no-blink"], "--no-blink"), (["--pose-scale", "0"], "--pose-scale"),
                          (["--motion-model", str(tmp_path / "m.safetensors")], "--motion-model"),
                          (["--face", "all"], "--face")):
        assert main(base + extra) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], (extra, err)
    assert "does not apply when the portrait is a video" in err[0] or "--face" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4", "speech.wav", "t.npz"]


@pytest.mark.slow
@pytest.mark.realdata
def test_dub_full_size(filled_weights_dir, data_dir, tmp_path):
    """Full-size networks (conformance-filled weights): a 3-frame 512x512 dub renders at the video's size."""
    clip = tmp_path / "clip.mp4"
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-i", str(data_dir / "talking/LivePortrait__d11.mp4"),
                    "-frames:v", "2", "-c:v", "libx264", "-preset", "ultrafast", "-an", str(clip)], check=True)
    speech = speech_cut(data_dir, tmp_path / "speech.wav", 3 / 25)
    out = tmp_path / "dub.mp4"
    res = Animator(filled_weights_dir, device="cpu", progress=False).speak(clip, speech, out)
    info = probe_video(out)
    assert res.n_frames == info.n_frames == 3 and (info.width, info.height) == (512, 512) and info.has_audio
