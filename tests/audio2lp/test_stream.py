"""`Animator.stream` (audio2lp/streaming.py): streamed frames against `speak`'s, chunk sizes, look-ahead and
back-pressure, errors, early close, bounded state. Tiny renderer, the shipped motion models, real speech."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from audio2lp.api import Animator
from audio2lp.errors import AudioError, InputError
from audio2lp.media.audio import load_audio, write_wav
from audio2lp.models.processes import LipMix
from audio2lp.options import OptionError
from audio2lp.speech import SpeechModels, speech_motion
from audio2lp.speech_motion import SERIES
from audio2lp.streaming import LIP_TOLERANCE, BackgroundSpeechMotion, SpeechMotionStream

PORTRAIT = "portraits/EAMM__14.png"
SPEECH = "speech/MakeItTalk__M6_04_16k.wav"
SPEECHES = ("speech/EAMM__sample2.mp3", "speech/EchoMimic__mei.wav")
#: speak's options in the bit-exact tests; blinks off: with blinks on, speak skips the eye retargeting in a clip
#: without a blink and the stream cannot know that in advance (the blink test has one)
EXACT = dict(seed=4, pose_scale=1.5, blink=False)


def chunked(wav: np.ndarray, sizes, log: list | None = None):
    """``wav`` in chunks: ``sizes`` an int (samples) or a random generator of sizes; ``log`` records every pull
    (the samples pulled so far)."""
    i, rng = 0, np.random.default_rng(5)
    while i < len(wav):
        n = sizes if isinstance(sizes, int) else int(rng.integers(1, 12000))
        yield wav[i:i + n].copy()
        i += n
        if log is not None:
            log.append(min(i, len(wav)))


def speak_frames(animator: Animator, portrait, wav, tmp_path, **options) -> list[np.ndarray]:
    """The frames ``speak`` hands to its video writer (before H.264), for ``wav``."""
    import audio2lp.api as api

    frames = []
    real_write = api.VideoWriter.write
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(api.VideoWriter, "write", lambda self, f: (frames.append(f.copy()), real_write(self, f))[1])
        animator.speak(portrait, write_wav(tmp_path / "speech.wav", wav), tmp_path / "talk.mp4", **options)
    return frames


@pytest.fixture(scope="module")
def animator(tiny_weights):
    return Animator(tiny_weights, device="cpu", progress=False, batch_size=1)


@pytest.fixture(scope="module")
def exact_animator(tiny_weights):
    """An Animator whose default motion has no lip-sync blend (LipMix weight 0): everything it does is covered by
    the look-ahead, so the stream must equal speak bit for bit."""
    anim = Animator(tiny_weights, device="cpu", progress=False, batch_size=1)
    no_mix = copy.copy(anim.speech_models.landmark())
    no_mix.lip_mix = LipMix(0.0)
    anim.speech_models._models[("landmark", None)] = no_mix
    return anim


@pytest.fixture(scope="module")
def speech(data_dir):
    """0.8 s of real speech (20 frames: the tiny renderer is slow on a shared CPU)."""
    return load_audio(data_dir / SPEECH)[: int(0.8 * 16000)]


@pytest.fixture(scope="module")
def exact_reference(exact_animator, data_dir, speech, tmp_path_factory):
    return speak_frames(exact_animator, data_dir / PORTRAIT, speech, tmp_path_factory.mktemp("speak"), **EXACT)


@pytest.mark.realdata
@pytest.mark.parametrize("sizes", [pytest.param(16, marks=pytest.mark.slow), 320,
                                   pytest.param(16000, marks=pytest.mark.slow),
                                   pytest.param("random", marks=pytest.mark.slow)], ids=["1ms", "20ms", "1s", "random"])
def test_stream_equals_speak_bit_for_bit(exact_animator, exact_reference, data_dir, speech, sizes):
    """Frames, their audio and timing; the chunk sizes' effect on the motion is also tested without the renderer
    (test_streamed_motion_is_speaks_whatever_the_chunks)."""
    want = exact_reference
    with exact_animator.stream(data_dir / PORTRAIT, chunked(speech, sizes), **EXACT) as s:
        assert (s.fps, s.sample_rate, s.lookahead_ms) == (25.0, 16000, 240)
        got = list(s)
    assert s.frame_size == want[0].shape[:2]
    assert len(got) == len(want) == round(len(speech) / 16000 * 25)
    for f, w in zip(got, want):
        assert f.image.dtype == np.uint8 and f.image.shape == w.shape
        assert np.array_equal(f.image, w), f"frame {f.index} differs from speak's"
    assert [f.index for f in got] == list(range(len(got)))
    assert [f.time for f in got] == [i / 25 for i in range(len(got))]
    audio = np.concatenate([f.audio for f in got])  # the speech back, 640 samples a frame, zero-padded at the end
    assert all(f.audio.dtype == np.float32 and f.audio.shape == (640,) for f in got)
    n = min(len(audio), len(speech))
    assert np.array_equal(audio[:n], speech[:n]) and not audio[n:].any()
    # the motion moves the face (a test of a still face would pass on anything)
    assert np.abs(got[-5].image.astype(int) - got[0].image.astype(int)).mean() > 0.5


@pytest.mark.slow
@pytest.mark.realdata
def test_stream_with_blinks_and_sliders_equals_speak(exact_animator, data_dir, speech, tmp_path):
    """A blink in the clip (speak then retargets the eyes, as the stream always does with blinks on), and an
    editing slider as a constant offset."""
    opts = dict(seed=3, smile=0.5, blink_rate=60.0)
    eyes = speech_motion(speech, 20, 25, seed=3, blink_rate=60.0, progress=False).eyes_open
    assert (eyes < 0.9).any(), "the clip must hold a blink for this test"
    want = speak_frames(exact_animator, data_dir / PORTRAIT, speech, tmp_path, **opts)
    got = [f.image for f in exact_animator.stream(data_dir / PORTRAIT, chunked(speech, 640), **opts)]
    assert len(got) == len(want)
    assert all(np.array_equal(a, b) for a, b in zip(got, want))


@pytest.mark.realdata
def test_streamed_motion_is_speaks_whatever_the_chunks(exact_animator, data_dir):
    """Without the lip-sync blend, the motion rows equal speak's (speech_motion's) bit for bit for 1 ms, 20 ms,
    1 s and random chunks, at the default and the largest look-ahead."""
    wav = load_audio(data_dir / SPEECH)[: 3 * 16000]
    models = exact_animator.speech_models
    m = speech_motion(wav, 75, 25, seed=6, progress=False, models=models)
    want = np.column_stack([m.lip_open, m.eyes_open, m.pitch, m.yaw, m.roll, m.tx, m.ty, m.scale])
    for sizes in (16, 320, 16000, "random"):
        for lookahead_ms in (None, 300):
            s = SpeechMotionStream(seed=6, models=models, lookahead_ms=lookahead_ms)
            rows = np.concatenate([s.push(c) for c in chunked(wav, sizes)] + [s.finish()])
            assert np.array_equal(rows, want), (sizes, lookahead_ms)


@pytest.mark.realdata
@pytest.mark.parametrize("name", SPEECHES)
def test_streamed_motion_matches_speak_within_the_lip_tolerance(data_dir, name):
    """With the shipped model (its lip-sync blend is not causal offline): every channel but the lip is
    bit-identical; the lip is within LIP_TOLERANCE of speak's and follows it closely, whatever the chunks."""
    wav = load_audio(data_dir / name)[: 6 * 16000]
    n = round(len(wav) / 16000 * 25)
    m = speech_motion(wav, n, 25, seed=2, progress=False)
    want = np.column_stack([m.lip_open, m.eyes_open, m.pitch, m.yaw, m.roll, m.tx, m.ty, m.scale])
    results = []
    for sizes in (16, 320, 16000, "random"):
        s = SpeechMotionStream(seed=2)
        if s.model.lip_mix.lipsync_weight == 0:
            pytest.skip("optional: the shipped model has no lip-sync blend; the bit-exact tests cover everything")
        rows = np.concatenate([s.push(c) for c in chunked(wav, sizes)] + [s.finish()])
        assert rows.shape == want.shape
        assert np.array_equal(rows[:, 1:], want[:, 1:])
        assert np.abs(rows[:, 0] - want[:, 0]).max() <= LIP_TOLERANCE
        assert np.corrcoef(rows[:, 0], want[:, 0])[0, 1] > 0.95
        results.append(rows)
    assert all(np.array_equal(r, results[0]) for r in results)  # chunking never changes the stream


@pytest.mark.realdata
@pytest.mark.parametrize("seconds,options", [(4.877, dict(seed=0)), (3.0, dict(seed=3, blink=False, pose_scale=0.7)),
                                             (0.31, dict(seed=1, blink_rate=40.0, expression_scale=1.3))])
def test_background_motion_is_speech_motions_bit_for_bit(data_dir, seconds, options):
    """speak's default motion made in the background (row by row, while the portrait is prepared and frames render)
    equals speech_motion's whole-clip computation bit for bit, with the shipped model's lip-sync blend."""
    wav = load_audio(data_dir / SPEECHES[1])[: int(seconds * 16000)]
    n = round(len(wav) / 16000 * 25)
    opts = dict(dict(pose_scale=1.0, expression_scale=1.0, blink=True, blink_rate=None), **options)
    want = speech_motion(wav, n, 25, progress=False, **opts)
    bg = BackgroundSpeechMotion(wav, whisper_checkpoint=None, device="cpu", models=SpeechModels(), **opts)
    bg.wait(n)
    bg.close()
    for k in SERIES:
        assert np.array_equal(getattr(bg.motion, k), getattr(want, k)), k
    assert bg.motion.eyes_move() == want.eyes_move()


@pytest.mark.realdata
def test_speak_with_the_motion_in_background_gives_the_same_frames(animator, data_dir, speech, tmp_path):
    """Animator.motion_in_background (the default on a GPU, off on the CPU): speak's frames are the same bits, with
    the shipped model's lip-sync blend and blinks on."""
    assert animator.motion_in_background is False  # a CPU renderer
    opts = dict(seed=3, blink_rate=60.0, pose_scale=1.3)
    want = speak_frames(animator, data_dir / PORTRAIT, speech, tmp_path, **opts)
    animator.motion_in_background = True
    try:
        got = speak_frames(animator, data_dir / PORTRAIT, speech, tmp_path, **opts)
    finally:
        animator.motion_in_background = None
    assert len(got) == len(want) == 20
    assert all(np.array_equal(a, b) for a, b in zip(got, want))
    assert np.abs(got[-5].astype(int) - got[0].astype(int)).mean() > 0.5  # the face moves


def test_background_motion_errors_reach_the_renderer_and_close_stops_it(monkeypatch):
    """A failure in the background thread is raised where the rows are waited for; close() ends the thread."""
    import audio2lp.streaming as streaming

    def broken(*a, **k):
        raise ValueError("lip-sync failed")

    monkeypatch.setattr(streaming, "offline_lipsync_lip", broken)
    wav = np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32)
    bg = BackgroundSpeechMotion(wav, seed=0, pose_scale=1.0, expression_scale=1.0, blink=True, blink_rate=None,
                                whisper_checkpoint=None, device="cpu", models=SpeechModels())
    with pytest.raises(ValueError, match="lip-sync failed"):
        bg.wait(5)
    bg.close()
    assert not bg._thread.is_alive()
    monkeypatch.undo()
    bg = BackgroundSpeechMotion(np.zeros(16000 * 20, np.float32), seed=0, pose_scale=1.0, expression_scale=1.0,
                                blink=False, blink_rate=None, whisper_checkpoint=None, device="cpu",
                                models=SpeechModels())
    bg.close()  # long before the 500 rows are made
    assert not bg._thread.is_alive() and bg._done < bg.n_frames


@pytest.mark.slow
@pytest.mark.realdata
def test_stream_frames_with_the_shipped_model(animator, data_dir, speech, tmp_path):
    """The shipped model end to end: same number and size of frames as speak, images close to speak's."""
    portrait = data_dir / PORTRAIT
    want = speak_frames(animator, portrait, speech, tmp_path)
    got = [f.image for f in animator.stream(portrait, chunked(speech, 320))]
    assert len(got) == len(want) and got[0].shape == want[0].shape
    diff = [np.abs(a.astype(int) - b.astype(int)).mean() for a, b in zip(got, want)]
    assert max(diff) < 2.0  # grey levels; only the mouth's opening may differ a little


@pytest.mark.realdata
@pytest.mark.parametrize("lookahead_ms", [None, 280])
def test_frames_come_as_soon_as_the_lookahead_allows(animator, data_dir, speech, lookahead_ms):
    """Back-pressure: the stream pulls a chunk only when it needs audio for the next frame, so after frame k
    it holds at most the look-ahead plus one chunk (and the feature block) past that frame's end."""
    pulled: list[int] = []
    chunk = 320
    s = animator.stream(data_dir / PORTRAIT, chunked(speech, chunk, pulled), lookahead_ms=lookahead_ms,
                        pasteback=False)
    assert not pulled  # nothing read before the first frame is asked for
    assert s.lookahead_ms == (240 if lookahead_ms is None else lookahead_ms) and s.frame_size == (512, 512)
    for f in s:
        end_of_frame = (f.index + 1) * 640
        if pulled[-1] < len(speech):
            assert pulled[-1] <= end_of_frame + s.lookahead_ms * 16 + chunk, f"frame {f.index} read too far ahead"
            # and the look-ahead is needed: one chunk less and the frame could not have been made
            assert pulled[-1] > end_of_frame + s.lookahead_ms * 16 - 80 * 16 - chunk
        if f.index == 10:
            break
    s.close()


def test_stream_checks_options_before_reading_audio(animator, tmp_path):
    pulled = []

    def chunks():
        pulled.append(1)
        yield np.zeros(320, np.float32)

    portrait = tmp_path / "missing.png"
    with pytest.raises(InputError):
        animator.stream(portrait, chunks())
    for bad in (dict(seed=-1), dict(fps=30.0), dict(motion_model="m.safetensors"), dict(crf=20),
                dict(pose_from="t.npz"), dict(lookahead_ms=100), dict(lookahead_ms=400), dict(smile=9.0),
                dict(colour="red"), dict(style=1)):
        with pytest.raises(InputError):
            animator.stream(portrait, chunks(), **bad)
    with pytest.raises(OptionError, match="lookahead_ms"):
        animator.stream(portrait, chunks(), lookahead_ms=200)
    assert not pulled


@pytest.mark.realdata
def test_bad_chunks_are_named(animator, data_dir):
    ok = np.zeros(320, np.float32)
    for bad, what in ((np.zeros((2, 160), np.float32), "chunk 2 has shape"), ("loud", "chunk 2 is not"),
                      (np.array([np.nan], np.float32), "chunk 2 contains NaN")):
        s = animator.stream(data_dir / PORTRAIT, iter([ok, ok, bad, ok]), pasteback=False)
        with pytest.raises(InputError, match=what):
            list(s)
        assert list(s) == []  # closed by the error
    with pytest.raises(AudioError, match="without any samples"):
        list(animator.stream(data_dir / PORTRAIT, iter([np.zeros(0, np.float32)]), pasteback=False))


@pytest.mark.realdata
def test_early_close_stops_and_releases_the_source(animator, data_dir, speech):
    state = {"closed": False, "pulled": 0}

    def source():
        try:
            for c in chunked(speech, 320):
                state["pulled"] += 1
                yield c
        finally:
            state["closed"] = True

    with animator.stream(data_dir / PORTRAIT, source(), pasteback=False) as s:
        first = [next(s) for _ in range(3)]
    assert [f.index for f in first] == [0, 1, 2]
    assert state["closed"] and state["pulled"] < len(speech) // 320
    with pytest.raises(StopIteration):
        next(s)


@pytest.mark.realdata
def test_state_stays_bounded(data_dir):
    """No buffer of the motion stream is larger in seconds 10-40 than in seconds 0-10 (a 10-minute run with the
    renderer, with its memory, is benchmarks/stream.py --minutes 10)."""
    wav = load_audio(data_dir / SPEECH)
    s = SpeechMotionStream(seed=0)
    early, late, pushed = {}, {}, 0
    while pushed < 40 * 16000:
        for c in chunked(wav, 1000):
            s.push(c)
            pushed += len(c)
            seen = early if pushed < 10 * 16000 else late
            for k, v in s.state_sizes().items():
                seen[k] = max(seen.get(k, 0), v)
    assert all(late[k] <= early[k] for k in early), (early, late)
    assert late["kv_cache"] <= s.config.max_context and late["motion_frames_kept"] <= 8
    assert late["feature_audio"] <= (s.config.features.window + s.config.features.block + 4) * 320
