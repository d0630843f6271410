"""`audio2lp speak` end to end (tiny renderer, small random motion model, real portrait and speech)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from audio2lp.api import Animator
from audio2lp.apps.cli import main
from audio2lp.media.audio import load_audio, write_wav
from audio2lp.media.probe import probe_video
from audio2lp.media.reader import read_frames
from audio2lp.models.motion import MotionStats
from audio2lp.models.motion_model import MotionModel, MotionModelConfig, save_motion_model

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
    mean = np.zeros(70, np.float32)  # relative motion: changes around the portrait's own pose and expression
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
    """The reference motion reproduces the source keypoints; scales act on deviations."""
    import dataclasses

    from audio2lp.portrait import prepare_portrait
    from audio2lp.speech import SpeechPlan

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
    plan = SpeechPlan("motion-model", 3, motion=motion[None], reference=ref)  # one sequence shared by the faces
    r = animator.renderer
    pf = pt.faces[0]
    # a closed mouth (an open one is closed first by lip retargeting: test_motion_model_path_closes_an_open_...)
    pf = dataclasses.replace(pf, source=dataclasses.replace(pf.source, lip_ratio=0.0))
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


# ------------------------------------------------------------------------------------------ built-in lip sync
LIP_KP = [6, 12, 14, 17, 19, 20]  # LivePortrait's lip keypoints
EYE_KP = [11, 13, 15, 16, 18]


def _moves(kp: np.ndarray, rows: list[int]) -> np.ndarray:
    """Per frame, how far the given keypoints are from where they are in the first frame."""
    return np.abs(kp[:, rows] - kp[:1, rows]).max(axis=(1, 2))


def test_speak_default_motion_from_the_cli(tiny_weights, tmp_path, capsys, rendered_keypoints):
    """The README's command: `audio2lp speak examples/portrait.jpg examples/speech.flac` with only renderer
    weights: the shipped landmark motion model moves the mouth with the speech and holds it in the silences."""
    from tests.conftest import REPO

    audio = REPO / "examples" / "speech.flac"
    out = tmp_path / "talk.mp4"
    rc = main(["speak", str(REPO / "examples" / "portrait.jpg"), str(audio), "-o", str(out),
               "--weights", str(tiny_weights), "--device", "cpu", "-q", "--no-blink", "--pose-scale", "0"])
    assert rc == 0, capsys.readouterr()
    wav = load_audio(audio)
    duration = len(wav) / 16000
    info = probe_video(out)
    assert info.fps == pytest.approx(25.0) and info.n_frames == round(duration * 25)
    assert info.has_audio and info.audio_codec == "aac" and abs(info.duration - duration) <= 1 / 25 + 0.03
    kp = np.concatenate(rendered_keypoints)
    assert kp.shape == (info.n_frames, 21, 3)
    # the clip starts and ends with 0.25 s of silence (6 frames): the mouth holds (nearly) still there (the model
    # reads up to 240 ms ahead; at the end it may stay as open as the last syllable left it, as real mouths often
    # do in a pause) and moves in speech
    lips = _moves(kp, LIP_KP)
    speech = lips[8:-8]
    assert lips[:3].max() < 0.25 * speech.max() and np.ptp(lips[-3:]) < 0.1 * speech.max()
    assert np.percentile(speech, 75) > max(5 * lips[:3].max(), 1e-4)  # well above the leading silence
    assert (np.diff(speech) != 0).mean() > 0.8  # it keeps moving, frame after frame


def test_speak_default_blinks_and_head_motion(animator, tmp_path, rendered_keypoints):
    """Blinks and head motion are on by default (also in silence); --no-blink and --pose-scale 0 keep eyes and
    head still."""
    from tests.conftest import REPO

    silent = write_wav(tmp_path / "silence.wav", np.zeros(6 * 16000, np.float32))  # 6 s, mouth closed
    portrait = REPO / "examples" / "portrait.jpg"

    def run(name, **kw):
        rendered_keypoints.clear()
        res = animator.speak(portrait, silent, tmp_path / f"{name}.mp4", pasteback=False, seed=3, **kw)
        kp = np.concatenate(rendered_keypoints)
        assert res.n_frames == kp.shape[0] == 150
        return kp[8:]  # after the pause gate has closed the mouth (a few frames: real mouths are not shut at once)

    still = run("still", blink=False, pose_scale=0.0)
    blinks = run("blinks", pose_scale=0.0)
    head = run("head", blink=False, pose_scale=1.0)
    assert np.abs(still - still[:1]).max() < 1e-5  # nothing moves in silence without blinks or head motion
    # blinks: the eye keypoints close briefly, 1-6 times in 5.7 s (real speakers: 15-35 a minute), 100-300 ms each
    eyes = _moves(blinks, EYE_KP)
    closed = eyes > 0.5 * eyes.max()
    starts = np.flatnonzero(np.diff(np.r_[0, closed.astype(int)]) == 1)
    assert eyes.max() > 1e-5 and 1 <= len(starts) <= 6  # (tiny random networks: small but clear deltas)
    assert closed.sum() <= 8 * len(starts)
    # head motion: every keypoint moves, smoothly
    moves = _moves(head, list(range(21)))
    assert moves.max() > 1e-3 and np.abs(np.diff(moves)).max() < 0.2 * moves.max()


def test_whisper_and_the_speech_models_are_loaded_once(tiny_weights, motion_ckpt, tmp_path, monkeypatch):
    """One Animator (as the HTTP service and the web app hold) loads Whisper, the lip-sync model and a motion model
    once, however many times it speaks."""
    import audio2lp.models.lipsync as lipsync
    import audio2lp.models.motion_model as motion_model
    from audio2lp.whisper import features

    loads = {"whisper": 0, "lipsync": 0, "motion": 0}

    def counting(module, name, key):
        original = getattr(module, name)

        def wrapper(*a, **k):
            loads[key] += 1
            return original(*a, **k)

        monkeypatch.setattr(module, name, wrapper)

    counting(features, "_load_encoder", "whisper")
    counting(lipsync, "load_lipsync_model", "lipsync")
    counting(motion_model, "load_motion_model", "motion")
    speech = write_wav(tmp_path / "s.wav", 0.1 * np.sin(np.arange(8000) / 5).astype(np.float32))
    portrait = __import__("tests.conftest", fromlist=["REPO"]).REPO / "examples" / "portrait.jpg"
    anim = Animator(tiny_weights, device="cpu", progress=False)
    for i in range(3):
        anim.speak(portrait, speech, tmp_path / f"lips{i}.mp4", blink=False, pose_scale=0)
    for i in range(2):
        anim.speak(portrait, speech, tmp_path / f"model{i}.mp4", motion_model=motion_ckpt)
    assert loads == {"whisper": 1, "lipsync": 1, "motion": 1}


# ------------------------------------------------------------------------------------------ issue 16.5
def _zero_motion_model(folder) -> str:
    """An untrained motion model: its zero head predicts no motion at all (delta 0 around the portrait)."""
    path = folder / "zero_motion_model.safetensors"
    if not path.exists():
        torch.manual_seed(0)
        save_motion_model(path, MotionModel(MotionModelConfig(d_model=32, n_layers=1, dropout=0.0)),
                          MotionStats.identity())
    return path


def _blink_starts(kp: np.ndarray) -> int:
    eyes = _moves(kp, EYE_KP)
    closed = eyes > 0.5 * eyes.max()
    return len(np.flatnonzero(np.diff(np.r_[0, closed.astype(int)]) == 1))


def test_motion_model_path_blinks_and_honours_the_blink_rate(animator, tmp_path, rendered_keypoints):
    """With --motion-model the eyes blink too (eye retargeting on top of the model's motion), --blink-rate sets how
    often, and --no-blink keeps them as the model moves them."""
    from tests.conftest import REPO

    silent = write_wav(tmp_path / "silence.wav", np.zeros(6 * 16000, np.float32))
    ckpt = _zero_motion_model(tmp_path)

    def run(name, **kw):
        rendered_keypoints.clear()
        res = animator.speak(REPO / "examples" / "portrait.jpg", silent, tmp_path / f"{name}.mp4", pasteback=False,
                             seed=3, motion_model=ckpt, **kw)
        assert res.extra["mode"] == "motion-model"
        return np.concatenate(rendered_keypoints)

    still = run("still", blink=False)
    assert np.abs(still - still[:1]).max() < 1e-5  # the zero model moves nothing
    blinks = run("blinks")
    assert np.abs(blinks[0] - still[0]).max() < 1e-5, "open eyes are the portrait's own: no offset between blinks"
    n_default = _blink_starts(blinks)
    assert _moves(blinks, EYE_KP).max() > 1e-5 and 1 <= n_default <= 3
    assert _blink_starts(run("often", blink_rate=60)) >= n_default + 2


@pytest.mark.parametrize("args, flag", [
    (["--style", "1"], "--style"),
    (["--motion-noise", "0.5"], "--motion-noise"),
    (["--no-blink", "--blink-rate", "30"], "--blink-rate"),
])
def test_speak_refuses_options_that_do_nothing(tiny_weights, tmp_path, capsys, args, flag):
    """An option that would be silently ignored on the path `speak` takes is an error naming it."""
    out = tmp_path / "o.mp4"
    code, err = _cli(["speak", "portrait.png", "speech.wav", "-o", str(out), "--weights", str(tiny_weights), "-q",
                      *args], capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and flag in err[0], err
    assert not out.exists()


def test_motion_model_path_closes_an_open_mouthed_portrait_first(animator):
    """Lip retargeting on the motion-model path: the model's lip motion is relative to a closed mouth, so a portrait
    whose mouth is open (lip ratio >= 0.03, LivePortrait's lip-normalisation threshold) is closed first."""
    import dataclasses

    from audio2lp.models.motion import NEUTRAL
    from audio2lp.portrait import prepare_portrait
    from audio2lp.speech import SpeechPlan
    from tests.conftest import REPO

    r = animator.renderer
    pf = prepare_portrait(r, animator.faces, REPO / "examples" / "portrait.jpg").faces[0]
    plan = SpeechPlan("motion-model", 2, motion=np.repeat(NEUTRAL[None, None], 2, 1), reference=NEUTRAL)
    x_s = pf.source.x_s
    closed = dataclasses.replace(pf, source=dataclasses.replace(pf.source, lip_ratio=0.01))
    opened = dataclasses.replace(pf, source=dataclasses.replace(pf.source, lip_ratio=0.2))
    base = r.stitch(x_s, x_s)
    torch.testing.assert_close(plan.keypoints(r, closed, np.arange(2)), base.expand(2, -1, -1))
    want = base + r.retarget_lip(x_s, np.array([[0.2, 0.0]], np.float32))
    torch.testing.assert_close(plan.keypoints(r, opened, np.arange(2)), want.expand(2, -1, -1))
