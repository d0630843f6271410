"""The default motion model's trainer learns what synthetic data says (training.landmarks.train / fit)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from training.common import pearson
from training.landmarks import dataset as ds
from training.landmarks import fit
from training.landmarks import metrics as mm
from training.landmarks.train import DefaultMotionTrainConfig, readout_of, train_model

PAD = 52


def _synthetic_clips(n_clips: int, seconds: float, seed: int, dim: int = 16):
    """Clips of random 50 Hz features whose motion depends on them in a known way: the lip is linear in the frame's
    features, the yaw a smooth process pushed by feature 2, one 5-frame blink every 2 s (30 per minute)."""
    rng = np.random.default_rng(seed)
    clips = []
    for i in range(n_clips):
        n = int(seconds * 25)
        tok = rng.standard_normal((2 * n + 2 * PAD, dim)).astype(np.float32)
        fr = tok.reshape(-1, 2, dim).mean(1)[PAD // 2: PAD // 2 + n]  # (n, dim): the frames' features
        motion = np.zeros((n, 9), np.float32)
        motion[:, 0] = 0.15 + 0.05 * fr[:, 0] + 0.03 * fr[:, 1]
        yaw = np.zeros(n)
        for t in range(1, n):
            yaw[t] = 0.9 * yaw[t - 1] + 0.5 * fr[t, 2]
        motion[:, 4] = yaw
        eye = np.ones(n)
        for start in range(10, n - 10, 50):
            eye[start:start + 5] = [0.8, 0.5, 0.3, 0.5, 0.8]
        motion[:, 1] = motion[:, 2] = eye
        motion[:, 8] = 1.0
        clips.append(ds.Clip(f"syn{i}", f"spk{i}", np.zeros(int(seconds * 16000), np.float32), motion, motion.copy(),
                             np.ones(n, bool), np.full(n, -20.0, np.float32), tok[PAD:PAD + 2 * n], tok, PAD))
    return clips


def test_model_learns_synthetic():
    from audio2lp.models.landmark_motion import LandmarkMotionConfig
    from audio2lp.whisper.stream import StreamConfig

    torch.manual_seed(0)
    train, test = _synthetic_clips(8, 16.0, 0), _synthetic_clips(3, 12.0, 1)
    cfg = LandmarkMotionConfig(features=StreamConfig(block=4, lookahead=6), pad_tokens=PAD, smooth_tau=0.0)
    tc = DefaultMotionTrainConfig(steps=200, crop=60, batch=8, lr=3e-3, ridge_lambda=10.0)
    model, facts = train_model(train, cfg, tc, progress=False)
    model.head_noise = None  # the learned mean alone
    yaw_r = []
    for c in test:
        g = model.generate(c.features_padded, c.n_frames, seed=0)
        assert pearson(g[:, 0], c.motion[:, 0]) > 0.9  # the lip: the linear answer
        assert pearson(readout_of(model, c)[:, 0], c.motion[:, 0]) > 0.9
        yaw_r.append(pearson(g[:, 4], c.motion[:, 4]))
    # the driven yaw, generated frame by frame from the audio alone (an untrained model gives r ~ 0; this short run
    # reaches ~0.5, more steps more)
    assert np.mean(yaw_r) > 0.35
    assert facts["training_blink_rate_per_min"] == pytest.approx(30.0, rel=0.1)
    assert model.blinks.rate_per_min == pytest.approx(30.0, rel=0.15)
    e = model.blinks.sample(25 * 60, seed=3)
    assert 20 <= len(mm.detect_blinks(e, np.ones_like(e, bool))) <= 40
    assert facts["blend"] == 0.0 and model.closure is None  # no lip-sync model, no pause in the data


def test_head_noise_fit_recovers_an_ar2():
    rng = np.random.default_rng(0)
    n = 20000
    x = np.zeros(n)
    for t in range(2, n):
        x[t] = 1.5 * x[t - 1] - 0.6 * x[t - 2] + rng.standard_normal()
    motion = np.zeros((n, 9), np.float32)
    motion[:, 3:] = x[:, None]
    clip = ds.Clip("ar", "s", np.zeros(16000, np.float32), motion, motion, np.ones(n, bool), np.zeros(n))
    hn = fit.fit_head_noise([clip], np.zeros(9), np.ones(9) * x.std())
    assert hn["a1"][0] == pytest.approx(1.5, abs=0.03) and hn["a2"][0] == pytest.approx(-0.6, abs=0.03)
    from audio2lp.models.landmark_motion import HeadNoise

    s = HeadNoise.from_dict(hn).stream(1)
    assert np.std([s.next()[0] for _ in range(20000)]) == pytest.approx(1.0, rel=0.15)  # unit variance


def _lip_clips(seed: int, n_clips: int = 8, n: int = 600):
    """Clips with a measured lip, pauses (loudness -60 dB in 1 s stretches) where 25 % of the frames are closed."""
    rng = np.random.default_rng(seed)
    clips = []
    for i in range(n_clips):
        lip = 0.15 + 0.08 * np.sin(np.arange(n) / 3.0 + i) * rng.uniform(0.5, 1.5, n)
        rms = np.full(n, -20.0)
        for a in range(50, n - 50, 150):
            rms[a:a + 25] = -70.0
            lip[a:a + 25] = 0.1
            lip[a + 10:a + 16] = 0.01  # closed for 6 of the 25 pause frames
        motion = np.zeros((n, 9), np.float32)
        motion[:, 0] = lip
        clips.append(ds.Clip(f"c{i}", f"s{i}", np.zeros(16000, np.float32), motion, motion.copy(), np.ones(n, bool),
                             rms))
    return clips


def test_lip_blend_and_pause_closure_choice():
    from audio2lp.models.landmark_motion import PauseClosure

    clips = _lip_clips(0)
    rng = np.random.default_rng(1)
    truth = {c.name: c.motion[:, 0].astype(np.float64) for c in clips}
    readout = {k: v + 0.05 * rng.standard_normal(v.size) for k, v in truth.items()}
    good = {k: v + 0.05 * rng.standard_normal(v.size) for k, v in truth.items()}  # as good as the read-out
    useless = {k: 0.15 + 0.05 * rng.standard_normal(v.size) for k, v in truth.items()}
    # a "closed" score that is high in the real closed frames (the gate has something to find)
    scores = {c.name: np.stack([(c.rms_db < -60).astype(float), (truth[c.name] < 0.03) + 0.3 * rng.random(
        c.n_frames)], 1) for c in clips}

    def gate(lip, sc, p):
        return PauseClosure(**{k: v for k, v in p.items() if k != "delta"}).apply(lip, sc)

    rules = [r for r in fit.PAUSE_RULES if r["hold"] == 1 and r["delta"] == 0.0]
    assert fit.choose_lip_blend(clips, readout, useless, gate, scores, rules=rules)["weight"] <= 0.1
    both = fit.choose_lip_blend(clips, readout, good, gate, scores, rules=rules)
    assert 0.35 <= both["weight"] <= 0.65  # two equally noisy estimates: about half each
    cv = both["cv"]
    assert cv["real_closed_in_pauses"] == pytest.approx(6 / 25, abs=0.01)
    best = cv["chosen_oof"]  # chosen on speakers its threshold was not fitted on (nested CV) ...
    assert len(cv["rules"]) == len(rules) * len(fit.CLOSED_TARGETS) and cv["folds"] == 4
    assert 0.5 <= best["oof_ratio"] <= 2.0 and best["oof_cost"] == min(
        t["oof_cost"] for t in cv["rules"] if 0.5 <= t["oof_ratio"] <= 2.0)
    # ... and refitted on all clips: closes the chosen multiple of the real fraction of pause frames
    assert cv["chosen_closed"] == pytest.approx(best["target"] * 6 / 25, abs=0.05)
    assert both["closure"]["level"] == pytest.approx(0.01)
    # a lip-conditioned rule (silence score, the lip below a fitted threshold) closes the right frames too
    lip_rules = [r for r in fit.PAUSE_RULES if r.get("fit") == "lip_below"]
    lipc = fit.choose_lip_blend(clips, readout, good, gate, scores, rules=lip_rules, targets=(1.0,))
    assert lipc["closure"]["lip_below"] > 0 and lipc["cv"]["chosen_closed"] == pytest.approx(6 / 25, abs=0.05)


def test_train_model_needs_speakers():
    from audio2lp.models.landmark_motion import LandmarkMotionConfig
    from audio2lp.whisper.stream import StreamConfig
    from lp_renderer.errors import InputError

    clips = [dataclasses.replace(c, speaker="one") for c in _synthetic_clips(3, 4.0, 0)]
    with pytest.raises(InputError, match="at least 4 speakers"):
        train_model(clips, LandmarkMotionConfig(features=StreamConfig(block=4), pad_tokens=PAD),
                    DefaultMotionTrainConfig(steps=1), progress=False)
