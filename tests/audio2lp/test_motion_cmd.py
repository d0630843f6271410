"""`audio2lp motion` and `audio2lp drive PORTRAIT MOTION.npz`: the default motion of speak as a file, rendered with the
same frames as speak (tiny renderer, the shipped landmark motion model, real Whisper tiny.en)."""

from __future__ import annotations

import numpy as np
import pytest

from audio2lp.api import Animator
from audio2lp.apps.cli import main
from audio2lp.media.audio import load_audio, write_wav
from audio2lp.media.reader import read_frames
from audio2lp.speech_motion import SERIES, load_speech_motion
from tests.conftest import REPO

PORTRAIT = REPO / "examples" / "portrait.jpg"


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    """1.6 s of the example speech (short: every test encodes it)."""
    wav = load_audio(REPO / "examples" / "speech.flac")[: int(1.6 * 16000)]
    return write_wav(tmp_path_factory.mktemp("speech") / "speech.wav", wav)


@pytest.fixture(scope="module")
def animator(tiny_weights):
    return Animator(tiny_weights, device="cpu", progress=False, batch_size=4)


def _motion(args, capsys, tmp_path, name="m.npz"):
    out = tmp_path / name
    rc = main(["motion", *map(str, args), "-o", str(out), "-q"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "wrote" in captured.out
    return out


def test_motion_cli_writes_the_series(speech, tmp_path, capsys, monkeypatch):
    # the renderer is never loaded
    from lp_renderer.renderer import Renderer

    monkeypatch.setattr(Renderer, "from_weights", classmethod(lambda *a, **k: pytest.fail("renderer loaded")))
    path = _motion([speech, "--seed", "1"], capsys, tmp_path)
    with np.load(path) as z:
        data = {k: z[k] for k in z.files}
    n = round(1.6 * 25)
    assert float(data["fps"]) == 25.0 and data["fps"].shape == ()
    for k in SERIES:
        assert data[k].dtype == np.float32 and data[k].shape == ((n, 2) if k == "eyes_open" else (n,)), k
        assert np.isfinite(data[k]).all()
    assert data["lip_open"].std() > 0.005  # the mouth moves with the speech
    for k in ("pitch", "yaw", "roll"):
        assert 0.05 < data[k].std() < 20  # degrees
    # same seed: the same file; another seed: another head, the same lips
    again = load_speech_motion(_motion([speech, "--seed", "1"], capsys, tmp_path, "again.npz"))
    other = load_speech_motion(_motion([speech, "--seed", "2"], capsys, tmp_path, "other.npz"))
    first = load_speech_motion(path)
    for k in SERIES:
        np.testing.assert_array_equal(getattr(again, k), getattr(first, k))
    np.testing.assert_array_equal(other.lip_open, first.lip_open)
    assert np.abs(other.yaw - first.yaw).mean() > 0.1


def test_motion_options(speech, tmp_path, capsys):
    still = load_speech_motion(_motion([speech, "--pose-scale", "0", "--no-blink", "--expression-scale", "0"], capsys,
                                       tmp_path, "still.npz"))
    for k in ("pitch", "yaw", "roll", "tx", "ty"):
        assert np.abs(getattr(still, k)).max() == 0
    assert np.all(still.scale == 1) and np.all(still.eyes_open == 1)
    assert np.ptp(still.lip_open) < 1e-6  # expression scale 0: the mouth stays at the closed level
    no_blinks = load_speech_motion(_motion([speech, "--blink-rate", "0"], capsys, tmp_path, "nb.npz"))
    assert np.all(no_blinks.eyes_open == 1) and no_blinks.yaw.std() > 0.05
    at30 = load_speech_motion(_motion([speech, "--fps", "30"], capsys, tmp_path, "at30.npz"))
    assert at30.fps == 30 and at30.n_frames == round(1.6 * 30)


def test_blink_rate_changes_the_blinks():
    from audio2lp.speech import speech_motion

    wav = np.zeros(20 * 16000, np.float32)  # 20 s of silence: only the blinks and the head matter

    def blinks(rate):
        eyes = speech_motion(wav, 500, 25.0, seed=4, blink_rate=rate, progress=False).eyes_open[:, 0]
        return int(((eyes[1:] < 0.9) & (eyes[:-1] >= 0.9)).sum())

    few, many = blinks(6.0), blinks(60.0)
    assert few <= 5 and many >= 10


@pytest.mark.parametrize("fps", [25.0, 30.0])
def test_speak_equals_motion_then_drive(animator, speech, tmp_path, rendered_keypoints, fps):
    """speak and motion + drive --audio render the same keypoints and write the same frames."""
    opts = dict(seed=3, pose_scale=1.5, expression_scale=0.8, fps=fps)
    res = animator.speak(PORTRAIT, speech, tmp_path / "speak.mp4", pasteback=False, **opts)
    kp_speak = np.concatenate(rendered_keypoints)
    rendered_keypoints.clear()
    motion = tmp_path / "motion.npz"
    Animator(progress=False).motion(speech, motion, **opts)
    res2 = animator.drive(PORTRAIT, motion, tmp_path / "drive.mp4", pasteback=False, audio=speech)
    kp_drive = np.concatenate(rendered_keypoints)
    assert res.n_frames == res2.n_frames == kp_speak.shape[0] == round(1.6 * fps) and res2.has_audio
    assert res2.fps == fps
    np.testing.assert_array_equal(kp_drive, kp_speak)
    a, b = list(read_frames(res.output)), list(read_frames(res2.output))
    assert len(a) == len(b) == res.n_frames
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    # the head and the mouth move: the keypoints are not those of a still portrait
    assert np.abs(kp_speak - kp_speak[:1]).max() > 1e-3


def test_drive_motion_file_from_the_cli(tiny_weights, speech, tmp_path, capsys):
    motion = _motion([speech, "--seed", "5"], capsys, tmp_path)
    out = tmp_path / "out.mp4"
    rc = main(["drive", str(PORTRAIT), str(motion), "-o", str(out), "--audio", str(speech), "--weights",
               str(tiny_weights), "--device", "cpu", "-q", "--max-frames", "10"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "10 frames" in captured.out and "with audio" in captured.out and out.is_file()


def _bad_npz(path, **arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


def test_bad_motion_files(tiny_weights, speech, tmp_path, capsys):
    n = 10
    good = dict(fps=np.float32(25), lip_open=np.full(n, 0.1, np.float32), eyes_open=np.ones((n, 2), np.float32),
                pitch=np.zeros(n, np.float32), yaw=np.zeros(n, np.float32), roll=np.zeros(n, np.float32),
                tx=np.zeros(n, np.float32), ty=np.zeros(n, np.float32), scale=np.ones(n, np.float32))
    nan_yaw = dict(good, yaw=np.full(n, np.nan, np.float32))
    cases = {
        "missing": ({k: v for k, v in good.items() if k != "roll"}, "lacks roll"),
        "eyes_shape": (dict(good, eyes_open=np.ones(n, np.float32)), "'eyes_open' must have shape (T, 2)"),
        "length": (dict(good, pitch=np.zeros(n + 1, np.float32)), "'pitch' has 11 frames"),
        "nan": (nan_yaw, "NaN"),
        "fps": (dict(good, fps=np.float32(0)), "fps must be between"),
        "scale": (dict(good, scale=np.zeros(n, np.float32)), "'scale' must be > 0"),
        "pickle": (dict(good, lip_open=np.array([object()] * n, dtype=object)), "pickled"),
    }
    base = ["drive", str(PORTRAIT), "--weights", str(tiny_weights), "--device", "cpu", "-q"]
    for name, (arrays, needle) in cases.items():
        path = _bad_npz(tmp_path / f"{name}.npz", **arrays)
        out = tmp_path / f"{name}.mp4"
        rc = main(base + [str(path), "-o", str(out)])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2, (name, err)
        assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], (name, err)
        assert not out.exists()
    good_path = _bad_npz(tmp_path / "good.npz", **good)
    for extra, needle in ((["--region", "exp"], "--region"), (["--retarget-lip"], "--retarget-lip"),
                          (["--no-stitching"], "--no-stitching"), (["--audio", str(tmp_path / "x.wav")], "x.wav")):
        rc = main(base + [str(good_path), "-o", str(tmp_path / "g.mp4"), *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and needle in err[0], (extra, err)
    # --audio belongs to motion files only
    rc = main(base + [str(REPO / "examples" / "portrait.jpg"), "-o", str(tmp_path / "i.png"), "--audio", str(speech)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and "--audio" in err[0]
    # motion: bad output suffix, missing audio
    for args, needle in (([str(speech), "-o", str(tmp_path / "m.mp4")], ".npz"),
                         ([str(tmp_path / "none.wav"), "-o", str(tmp_path / "m.npz")], "none.wav"),
                         ([str(speech), "-o", str(tmp_path / "m.npz"), "--blink-rate", "-1"], "--blink-rate")):
        rc = main(["motion", *args, "-q"])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and needle in err[0], (args, err)
    assert not (tmp_path / "m.npz").exists()
