"""`audio2lp speak` end to end (tiny renderer, small random motion model, real portrait and speech)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from audio2lp.api import Animator
from audio2lp.audio import load_audio, write_wav
from audio2lp.cli import main
from audio2lp.motion import MotionStats
from audio2lp.motion_model import MotionModel, MotionModelConfig, save_motion_model
from audio2lp.video_io import probe_video, read_frames

PORTRAIT = "portraits/EAMM__14.png"
SPEECH = "speech/MakeItTalk__M6_04_16k.wav"


def small_motion_model(seed: int = 0) -> MotionModel:
    """A small motion model with a random (not zero-initialised) output head, so the motion it predicts changes
    with the audio and over time (the zero head of an untrained model always predicts the mean motion)."""
    torch.manual_seed(seed)
    model = MotionModel(MotionModelConfig(d_model=32, n_layers=1, n_styles=2, dropout=0.0))
    torch.nn.init.normal_(model.head.weight, std=0.3)
    torch.nn.init.normal_(model.head.bias, std=0.1)
    return model


@pytest.fixture(scope="module")
def motion_ckpt(tmp_path_factory):
    model = small_motion_model()
    mean = np.zeros(70, np.float32)
    mean[69] = 1.5
    std = np.full(70, 0.01, np.float32)
    std[63:66] = 3.0
    path = tmp_path_factory.mktemp("mm") / "motion_model.safetensors"
    save_motion_model(path, model, MotionStats(mean, std))
    return path


@pytest.fixture(scope="module")
def animator(tiny_weights):
    return Animator(tiny_weights, device="cpu", progress=False, batch_size=8)


@pytest.mark.realdata
@pytest.mark.parametrize("fps", [25.0, 30.0])
def test_speak_with_motion_model(animator, motion_ckpt, data_dir, tmp_path, fps):
    speech = data_dir / SPEECH
    duration = 4.877  # MANIFEST duration of the clip
    if fps != 25.0:  # a 1.3 s cut of the same clip (written to tmp) keeps the second case short
        speech = write_wav(tmp_path / "cut.wav", load_audio(speech)[: int(1.3 * 16000)])
        duration = 1.3
    out = tmp_path / "talk.mp4"
    res = animator.speak(data_dir / PORTRAIT, speech, out, motion_model=motion_ckpt, fps=fps, style=1)
    info = probe_video(out)
    assert info.fps == pytest.approx(fps)
    assert abs(info.n_frames / fps - duration) <= 1 / fps
    assert info.has_audio and abs(info.duration - duration) <= 1 / fps + 0.03
    assert res.extra["mode"] == "motion-model"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert res.n_frames == info.n_frames
    # The speech is muxed in as AAC and lasts as long as the input audio (decoded, to within one frame).
    assert info.audio_codec == "aac"
    assert abs(len(load_audio(out)) / 16000 - len(load_audio(speech)) / 16000) <= 1 / fps
    # The predicted motion moves the face: frames differ over time, far more than video coding noise.
    frames = np.stack(list(read_frames(out))).astype(np.float32)
    assert len(frames) == info.n_frames
    change = np.abs(frames - frames[0]).mean(axis=(1, 2, 3))  # mean |frame t - frame 0|, grey levels
    assert change.max() > 1.0, change
    assert np.count_nonzero(change > 0.25) >= len(frames) // 2, change


def test_speak_keypoints_follow_the_motion(animator, motion_ckpt):
    """The reference (dataset mean) motion reproduces the source keypoints; scales act on deviations."""
    from audio2lp.api import SpeechPlan
    from audio2lp.portrait import prepare_portrait

    rng = np.random.default_rng(0)
    img = np.zeros((256, 256, 3), np.uint8)

    class OneFace:
        def detect(self, image):
            from lp_renderer.faces import Face

            pts = rng.uniform(90, 160, (68, 2)).astype(np.float32)
            pts[36:42] = [(100, 110)] * 6
            pts[42:48] = [(150, 110)] * 6
            pts[48], pts[54] = (110, 170), (140, 170)
            return [Face((80.0, 80.0, 170.0, 190.0), 1.0, pts, "dlib68")]

    pt = prepare_portrait(animator.renderer, OneFace(), img)
    ref = np.zeros(70, np.float32)
    ref[69] = 1.5
    motion = np.repeat(ref[None], 3, 0)
    motion[1, 63] += 10.0  # pitch +10 degrees
    plan = SpeechPlan("motion-model", 3, motion=motion, reference=ref)
    r = animator.renderer
    pf = pt.faces[0]
    x = plan.keypoints(r, pf, np.arange(3))
    still = plan.keypoints(r, pf, np.arange(3), pose_scale=0.0)
    assert torch.allclose(x[0], r.stitch(pf.source.x_s, pf.source.x_s)[0], atol=1e-5)
    assert not torch.allclose(x[1], x[0], atol=1e-3)
    assert torch.allclose(still[1], still[0], atol=1e-5)


def _cli(args, capsys):
    code = main(args)
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.realdata
def test_speak_bad_inputs(tiny_weights, motion_ckpt, data_dir, tmp_path, capsys):
    portrait = str(data_dir / PORTRAIT)
    speech = str(data_dir / SPEECH)
    png_as_wav = tmp_path / "fake.wav"
    png_as_wav.write_bytes((data_dir / PORTRAIT).read_bytes())
    empty = tmp_path / "empty.wav"
    write_wav(empty, np.zeros(0, np.float32))
    short = tmp_path / "short.wav"
    write_wav(short, np.zeros(160, np.float32))  # 10 ms < one frame
    base = ["speak", "--weights", str(tiny_weights), "-q"]
    cases = [
        ([portrait, str(png_as_wav), "-o", str(tmp_path / "a.mp4")], "fake.wav"),
        ([portrait, str(empty), "-o", str(tmp_path / "b.mp4")], "empty.wav"),
        ([portrait, str(short), "-o", str(tmp_path / "c.mp4")], "short"),
        ([portrait, str(tmp_path / "none.wav"), "-o", str(tmp_path / "d.mp4")], "none.wav"),
        ([portrait, speech, "-o", str(tmp_path / "nofolder" / "e.mp4")], "nofolder"),
        ([portrait, speech, "-o", str(tmp_path / "f.mp4"), "--motion-model", str(motion_ckpt), "--style", "5"],
         "--style"),
        ([portrait, speech, "-o", str(tmp_path / "g.mp4"), "--motion-model", str(tmp_path / "x.safetensors")],
         "x.safetensors"),
        ([portrait, speech, "-o", str(tmp_path / "h.mp4"), "--fps", "0"], "--fps"),
        ([portrait, speech, "-o", str(tmp_path / "i.mp4"), "--pose-scale", "-1"], "--pose-scale"),
        ([portrait, speech, "-o", str(tmp_path / "j.mp4"), "--motion-model", str(motion_ckpt), "--pose-from",
          str(tmp_path / "t.npz")], "--pose-from"),
    ]
    for args, needle in cases:
        code, err = _cli(base + args, capsys)
        assert code == 2, (args, err)
        assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], (args, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.wav", "fake.wav", "short.wav"]
