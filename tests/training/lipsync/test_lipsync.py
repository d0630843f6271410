"""The lip dataset (training.lipsync.data), the lip-sync trainer (training.lipsync.train) and its evaluation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.common import pearson, split_by_speaker
from training.lipsync.data import (
    FPS,
    PAD_SECONDS,
    _interp_track,
    frame_count,
    frame_rms_db,
    list_clips,
    prepare_clip,
    speaker_of,
)
from training.lipsync.evaluate import LoudnessBaseline, update_results_file
from training.lipsync.train import HELD_OUT_SPEAKERS, estimate_offsets, shift_targets, silence_mask

GRID_CLIP = "LipNet__bbaf2n.mpg"


def test_speaker_ids_group_the_same_person():
    assert speaker_of("EDTalk__uncrop_Obama.mp4") == speaker_of("styletalk__Obama_clip2.mp4") == "barack_obama"
    assert speaker_of("styletalk__feifeili_clip1.mp4") == speaker_of("styletalk__feifeili_clip2_short.mp4")
    assert speaker_of("LipNet__bbaf2n.mpg") != speaker_of("LipNet__sbia1a.mpg")
    assert speaker_of("talking/video-retalking__1.mp4") == "video-retalking__1"


def test_frame_count_and_rms():
    assert frame_count(3.0) == 75 and frame_count(3.001) == 76 and frame_count(0.0) == 1
    sr = 16000
    t = np.arange(sr) / sr
    audio = np.zeros(2 * sr, np.float32)
    audio[:sr] = 0.5 * np.sin(2 * np.pi * 220 * t)
    db = frame_rms_db(audio, 50)
    assert db.shape == (50,) and db.dtype == np.float32
    assert np.allclose(db[:25], 20 * np.log10(0.5 / np.sqrt(2)), atol=0.1)
    assert np.all(db[25:] == -100.0)


def test_interpolation_from_30fps_to_25fps():
    n_src = 30
    values = np.arange(n_src, dtype=np.float64)[:, None]  # value = source frame index
    ok = np.ones(n_src, bool)
    ok[12] = False
    out, valid = _interp_track(values, ok, 30.0, 25, 25.0)
    # frame k at time k/25 sits at source position k * 30 / 25
    expect = np.arange(25) * 1.2
    assert np.allclose(out[valid, 0], expect[valid], atol=1e-5)
    assert not valid[10]  # k = 10 sits exactly on the missing source frame 12
    assert valid.sum() == 24  # no other frame lies between source frames 11 and 13
    assert np.isnan(out[~valid]).all()


def test_silence_mask_needs_more_than_200ms():
    db = np.full(100, -20.0)
    db[10:15] = -90  # 5 frames = 200 ms: not counted
    db[40:46] = -90  # 6 frames = 240 ms
    m = silence_mask(db)
    assert not m[10:15].any() and m[40:46].all() and m.sum() == 6


def test_update_results_file_keeps_other_sections(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text("# Results\n\n## Someone else's section\nkeep me\n")
    update_results_file(path, "<!-- lipsync-results:begin -->\nfirst\n<!-- lipsync-results:end -->\n")
    update_results_file(path, "<!-- lipsync-results:begin -->\nsecond\n<!-- lipsync-results:end -->\n")
    text = path.read_text()
    assert "keep me" in text and "second" in text and "first" not in text
    assert text.count("lipsync-results:begin") == 1


def _fake_clip(name, speaker, lip, rms_db=None, feats=None):
    from training.lipsync.data import LipClip

    n = lip.shape[0]
    return LipClip(name=name, speaker=speaker, lip=lip.astype(np.float32), eye=np.zeros((n, 2), np.float32),
                   valid=np.ones(n, bool), rms_db=(rms_db if rms_db is not None else np.zeros(n)).astype(np.float32),
                   features=feats)


def test_split_shift_and_loudness_baseline():
    rng = np.random.default_rng(0)
    clips = []
    for i, spk in enumerate(["a", "b", HELD_OUT_SPEAKERS[0]]):
        env = np.convolve(rng.random(200), np.ones(5) / 5, mode="same")
        db = -40 + 30 * env
        clips.append(_fake_clip(f"c{i}", spk, 0.3 * env, db))
    train, test = split_by_speaker(clips, HELD_OUT_SPEAKERS)
    assert [c.speaker for c in test] == [HELD_OUT_SPEAKERS[0]] and len(train) == 2
    base = LoudnessBaseline().fit(train)
    assert pearson(base.predict(test[0]), test[0].lip) > 0.95  # lip is a function of loudness here
    s = shift_targets(clips[0], 3)
    assert np.allclose(s.lip[:-3], clips[0].lip[3:]) and not s.valid[-3:].any()


def test_estimate_offsets_finds_a_shifted_clip():
    rng = np.random.default_rng(1)
    clips = []
    for i in range(8):
        feats = np.repeat(rng.standard_normal((300, 6)), 2, axis=0).astype(np.float32)  # 50 Hz
        lip = feats[::2] @ rng.standard_normal(6) * 0 + feats[::2, 0]
        if i == 5:
            lip = np.r_[np.zeros(4), lip[:-4]]  # the video lags the audio by 4 frames
        clips.append(_fake_clip(f"c{i}", f"s{i}", lip, feats=feats))
    off = estimate_offsets(clips, folds=4)
    assert off["c5"] == 4
    assert all(v == 0 for k, v in off.items() if k != "c5")


@pytest.mark.realdata
def test_list_clips_uses_the_manifest(data_dir):
    clips = list_clips(data_dir / "talking")
    assert len(clips) >= 30 and all(p.suffix in (".mp4", ".mpg") for p in clips)
    speakers = {speaker_of(p.name) for p in clips}
    assert set(HELD_OUT_SPEAKERS) <= speakers


@pytest.mark.realdata
def test_prepare_clip_on_a_real_grid_clip(data_dir, tmp_path):
    from audio2lp.media.audio import load_audio
    from audio2lp.whisper.features import WhisperEncoder, num_tokens

    video = data_dir / "talking" / GRID_CLIP
    enc = WhisperEncoder("tiny.en")
    clip = prepare_clip(video, encoder=enc, layers=2, cache_dir=tmp_path, padded=True)
    seconds = load_audio(video).shape[0] / 16000
    n = clip.n_frames
    assert abs(n - math.ceil(seconds * FPS)) <= 1
    assert abs(n - 75) <= 1  # the video: 75 frames at 25 fps
    assert clip.speaker == "LipNet__bbaf2n"
    assert clip.valid.mean() > 0.95
    lip = clip.lip[clip.valid]
    assert lip.min() < 0.05 and lip.max() > 0.12 and lip.std() > 0.02  # the mouth opens and closes
    assert clip.eye.shape == (n, 2) and np.nanmedian(clip.eye) > 0.15
    assert clip.rms_db.shape == (n,)
    assert clip.features.shape == (num_tokens(round(seconds * 16000)), 384)
    assert abs(clip.features.shape[0] - 2 * n) <= 1
    pad_tokens = round(PAD_SECONDS * 50)
    assert clip.features_padded.shape[0] == clip.features.shape[0] + 2 * pad_tokens
    # GRID sentences start and end in silence with a closed mouth; the speech in the middle opens it
    sil = silence_mask(clip.rms_db)
    assert sil.any() and np.nanmean(clip.lip[sil]) < np.nanmean(clip.lip[~sil])
    # the second call reads the cache and gives the same arrays
    files = sorted(p.name for p in tmp_path.iterdir())
    again = prepare_clip(video, encoder=enc, layers=2, cache_dir=tmp_path, padded=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == files
    assert np.array_equal(again.lip, clip.lip, equal_nan=True)
    assert np.array_equal(again.features, clip.features)


@pytest.mark.realdata
@pytest.mark.slow
def test_prepare_clip_resamples_a_30fps_clip(data_dir, tmp_path):
    video = data_dir / "talking" / "styletalk__feifeili_clip1.mp4"
    clip = prepare_clip(video, cache_dir=tmp_path)  # no encoder: landmarks and loudness only
    assert clip.video_fps == pytest.approx(30.0)
    assert abs(clip.n_frames - math.ceil(10.008 * FPS)) <= 1
    assert clip.valid.mean() > 0.95 and clip.features is None
    assert np.nanstd(clip.lip) > 0.03


@pytest.mark.realdata
def test_the_documented_training_command_runs_end_to_end(data_dir, tmp_path, capsys):
    """`audio2lp-train lipsync` on four real GRID clips (three train, one held out), a few steps:
    it writes loadable weights, the model card, the metrics and its RESULTS.md section, with every figure."""
    import json

    from audio2lp.models.lipsync import load_lipsync_model
    from training.cli import main as training_main

    clips = tmp_path / "talking"
    clips.mkdir()
    names = ["LipNet__bbaf2n", "LipNet__lbbc2a", "LipNet__lwbsza", "LipNet__sbia1a"]
    for name in names:
        (clips / f"{name}.mpg").symlink_to(data_dir / "talking" / f"{name}.mpg")
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\n## Render\nkept\n")
    out = tmp_path / "assets"
    rc = training_main(["lipsync", "--data", str(clips), "--out", str(out), "--cache", str(tmp_path / "cache"),
                        "--results", str(results), "--steps", "20", "--cv", "3", "--held-out", "LipNet__sbia1a",
                        "--no-progress"])
    assert rc == 0, capsys.readouterr()
    model = load_lipsync_model(out / "lipsync.safetensors")
    assert model.config.linear_context >= 0 and 0.01 < model.config.lip_scale < 0.6
    metrics = json.loads((out / "lipsync_metrics.json").read_text())
    h = metrics["heldout"]
    assert h["clips"] == 1 and h["per_clip"][0]["clip"] == "LipNet__sbia1a"
    for key in ("mean_r_model", "mean_r_gated", "mean_r_probe", "mean_r_loudness", "best_lag_frames"):
        assert h[key] is not None and math.isfinite(h[key]), key
    assert metrics["cv"]["folds"] == 3 and metrics["data"]["train_clips"] == 3
    card = (out / "LIPSYNC_MODEL_CARD.md").read_text()
    assert f"{h['mean_r_model']:.3f}" in card and "--held-out LipNet__sbia1a --cv 3" in card
    assert "audio2lp-train lipsync --data" in card
    text = results.read_text()
    assert "kept" in text and f"**{h['mean_r_model']:.3f}**" in text and "LipNet__sbia1a" in text


R_TOLERANCE = 0.005  # Pearson r: the card rounds to 3 decimals; a re-run on another machine may differ in the 4th
RATE_TOLERANCE = 0.01  # closed-mouth rates (195 silence frames: one frame is 0.005)


def _card_figure(card: str, pattern: str) -> float:
    import re

    m = re.search(pattern, card)
    assert m, f"the model card no longer says {pattern!r}"
    return float(m.group(1))


@pytest.mark.realdata
@pytest.mark.slow
def test_shipped_model_card_figures_are_recomputed_from_the_weights_and_the_data(data_dir):
    """The held-out figures of LIPSYNC_MODEL_CARD.md and lipsync_metrics.json, recomputed from the shipped weights
    and the data folder (same split, alignment and baselines as the trainer; no training). Builds the lip-sync data
    cache when it is empty (several minutes on 2 cores)."""
    import json
    from importlib.resources import files

    from training.lipsync.train import evaluate_shipped

    assets = files("audio2lp") / "assets"
    metrics = json.loads((assets / "lipsync_metrics.json").read_text())
    card = (assets / "LIPSYNC_MODEL_CARD.md").read_text()
    want = metrics["heldout"]
    got = evaluate_shipped(data_dir / "talking", train_names=list(metrics["offsets"]))  # the clips it trained on
    h = got["heldout"]
    assert got["offsets"] == metrics["offsets"]
    assert h["clips"] == want["clips"] and h["speakers"] == want["speakers"]
    assert [r["clip"] for r in h["per_clip"]] == [r["clip"] for r in want["per_clip"]]
    for key in ("mean_r_model", "mean_r_gated", "mean_r_probe", "mean_r_loudness"):
        assert h[key] == pytest.approx(want[key], abs=R_TOLERANCE), key
    for got_clip, want_clip in zip(h["per_clip"], want["per_clip"]):
        assert got_clip["r_model"] == pytest.approx(want_clip["r_model"], abs=2 * R_TOLERANCE), got_clip["clip"]
    assert h["silence_frames"] == want["silence_frames"] and h["best_lag_frames"] == want["best_lag_frames"]
    for key in ("closed_rate_in_silence", "closed_rate_in_silence_gated", "measured_closed_rate_in_silence"):
        assert h[key] == pytest.approx(want[key], abs=RATE_TOLERANCE), key
    # the card says the same, the by-construction 1.000 with the network's own closed-mouth figure beside it
    assert _card_figure(card, r"\| this model \| \*\*(\d\.\d{3})\*\* \|") == pytest.approx(h["mean_r_model"],
                                                                                         abs=R_TOLERANCE)
    assert _card_figure(card, r"what `speak` uses\) \| (\d\.\d{3}) \|") == pytest.approx(h["mean_r_gated"],
                                                                                         abs=R_TOLERANCE)
    assert _card_figure(card, r"linear probe[^|]*\| (\d\.\d{3}) \|") == pytest.approx(h["mean_r_probe"],
                                                                                     abs=R_TOLERANCE)
    assert _card_figure(card, r"loudness envelope[^|]*\| (\d\.\d{3}) \|") == pytest.approx(h["mean_r_loudness"],
                                                                                          abs=R_TOLERANCE)
    assert _card_figure(card, r"(\d\.\d{3}) by construction") == h["closed_rate_in_silence_gated"] == 1.0
    assert _card_figure(card, r"network's own closed-mouth head[^\d]*(\d\.\d{3})") == pytest.approx(
        h["closed_rate_in_silence"], abs=RATE_TOLERANCE)
    assert 0.5 < h["closed_rate_in_silence"] < 1.0  # the network's own figure is a real measurement
