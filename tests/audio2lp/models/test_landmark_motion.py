"""Tests of audio2lp.models.landmark_motion and .processes: the cached stream equals the teacher-forced forward,
chunking and seeds, the fitted processes, checkpoints."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from audio2lp.models.landmark_motion import (
    CHANNELS,
    EYES,
    HEAD,
    LIP,
    LandmarkMotionConfig,
    LandmarkMotionModel,
    MotionStream,
    gaussian_nll,
    load_landmark_motion,
    read_landmark_motion_metadata,
    save_landmark_motion,
)
from audio2lp.models.processes import BlinkProcess, HeadNoise, LipMix, PauseClosure
from audio2lp.whisper.stream import StreamConfig
from lp_renderer.errors import WeightsError

D = 24


def small_config(**kw) -> LandmarkMotionConfig:
    base = dict(features=StreamConfig(window=20, block=2, lookahead=2, layers=(1,)), feat_dim=D, pad_tokens=12,
                d_model=16, n_heads=2, n_layers=2, max_context=10, period=5, smooth_tau=0.0)
    base.update(kw)
    return LandmarkMotionConfig(**base)


HEAD_NOISE = HeadNoise(a1=(1.5,) * 6, a2=(-0.56,) * 6, sigma=(0.1,) * 6, burn_in=20)
BLINKS = BlinkProcess(log_interval_mu=0.3, log_interval_sigma=0.5, min_interval=0.25, durations=(5, 6, 7),
                      depths=(0.6, 0.7), shape=(0.0, 0.5, 1.0, 0.5, 0.0))
CLOSURE = PauseClosure(on=0.5, off=0.2, hold=2, ramp_close=2, ramp_open=1, level=0.01, score=1)


def random_model(config=None, processes=True, seed=0) -> LandmarkMotionModel:
    torch.manual_seed(seed)
    kw = dict(head_noise=HEAD_NOISE, blinks=BLINKS, closure=CLOSURE, lip_mix=LipMix(0.25)) if processes else {}
    m = LandmarkMotionModel(config or small_config(), **kw)
    with torch.no_grad():  # a trained-looking model: non-zero head and read-out, non-trivial stats
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.3)
        m.readout.weight.normal_(0, 0.1)
        m.motion_mean.copy_(torch.linspace(0.1, 1.0, len(CHANNELS)))
        m.motion_std.copy_(torch.linspace(0.5, 2.0, len(CHANNELS)))
        m.feat_mean.normal_()
        m.feat_std.uniform_(0.5, 2.0)
    return m.eval()


def padded_feats(config, n_frames, seed=0) -> np.ndarray:
    n = 2 * n_frames + 2 * config.pad_tokens
    return np.random.default_rng(seed).standard_normal((n, config.feat_dim)).astype(np.float32)


def test_config_round_trip_and_checks():
    c = small_config(feedback=(3, 4))
    assert LandmarkMotionConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    with pytest.raises(ValueError, match="unknown"):
        LandmarkMotionConfig.from_dict({**c.to_dict(), "colour": 1})
    with pytest.raises(ValueError, match="pad_tokens"):
        small_config(pad_tokens=3)
    with pytest.raises(ValueError, match="feedback"):
        small_config(feedback=(0, 1))


def test_default_lookahead_is_within_300_ms():
    c = LandmarkMotionConfig()
    assert c.lookahead_ms() <= 300 - 40  # counted from the end of the frame's own 40 ms
    assert c.lookahead_ms() >= c.features.max_lookahead_ms - 40


def test_cached_stream_equals_teacher_forced_forward():
    """The sliding KV cache and the one-frame step give the forward pass's numbers (past max_context too)."""
    c = small_config()
    m = random_model(c, processes=False)
    n = 37  # > max_context: the sliding window drops keys
    feats = padded_feats(c, n)
    raw, scores = MotionStream(m, seed=0).push(feats)
    assert raw.shape[0] >= n
    raw = raw[:n]
    norm = (torch.as_tensor(raw, dtype=torch.float64) - m.motion_mean.double()) / m.motion_std.double()
    prev = torch.cat([torch.zeros(1, 1, len(CHANNELS)), norm[None, :-1].float()], 1)  # the frame before each
    start = c.pad_tokens - 2 * c.margin
    x = torch.as_tensor(feats[start:start + 2 * (c.margin + n + c.lookahead_frames)])[None]
    with torch.no_grad():
        mean, log_std, ro = m(x, prev)
    want = mean[0].double() * m.motion_std.double() + m.motion_mean.double()
    np.testing.assert_allclose(raw, want.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(scores[:n], ro[0, :, 1:].numpy(), rtol=1e-4, atol=1e-4)
    assert log_std.shape == mean.shape == (1, n, len(CHANNELS))


def test_attention_window_is_causal_and_bounded():
    """Changing a frame's fed-back motion changes no earlier frame, nor frames max_context or more later."""
    c = small_config()
    m = random_model(c, processes=False)
    n = 40
    feats = torch.as_tensor(padded_feats(c, n))[None, c.pad_tokens - 2 * c.margin:][:, :2 * (c.margin + n + 2)]
    prev = torch.randn(1, n, len(CHANNELS))
    with torch.no_grad():
        a = m(feats, prev)[0]
        prev2 = prev.clone()
        prev2[0, 10] += 5.0  # the input of token 10
        b = m(feats, prev2)[0]
    diff = (a - b).abs().amax(-1)[0]
    assert diff[:10].max() == 0
    assert diff[10] > 0
    # token 10 is seen by frames 10..19 in the first layer, and through them by frames up to 28 in the second
    reach = 10 + c.n_layers * (c.max_context - 1)
    assert diff[reach] > 0 and diff[reach + 1:].max() == 0


def test_stream_chunking_seeds_and_processes():
    c = small_config(smooth_tau=2.0)
    m = random_model(c)
    n = 60
    feats = padded_feats(c, n)
    lips = np.linspace(0.0, 0.3, n).astype(np.float32)
    a = m.generate(feats, n, seed=1, lipsync_lip=lips)
    assert a.shape == (n, len(CHANNELS)) and np.isfinite(a).all()
    np.testing.assert_array_equal(a, m.generate(feats, n, seed=1, lipsync_lip=lips))
    # any chunking of the tokens gives the same frames
    for step in (1, 3, 17):
        s = MotionStream(m, seed=1)
        outs = [s.push(feats[i:i + step]) for i in range(0, feats.shape[0], step)]
        raw = np.concatenate([o[0] for o in outs])
        sc = np.concatenate([o[1] for o in outs])
        more = s.flush(n - raw.shape[0]) if raw.shape[0] < n else (raw[:0], sc[:0])
        raw, sc = np.concatenate([raw, more[0]])[:n], np.concatenate([sc, more[1]])[:n]
        raw[:, LIP] = m.finish_lip(raw[:, LIP], sc, lips)
        np.testing.assert_array_equal(raw, a)
    b = m.generate(feats, n, seed=2, lipsync_lip=lips)
    np.testing.assert_array_equal(a[:, LIP], b[:, LIP])  # the lip does not depend on the seed
    for ch in HEAD:
        assert np.abs(a[:, ch] - b[:, ch]).mean() > 1e-3
    # eyes come from the blink process (multipliers <= 1, equal for both eyes), not from the network
    assert np.array_equal(a[:, EYES[0]], a[:, EYES[1]]) and a[:, EYES[0]].max() <= 1.0
    assert a[:, EYES[0]].min() < 0.6
    # without the processes the head is the network's mean: seeds agree
    m.head_noise = m.blinks = None
    np.testing.assert_array_equal(m.generate(feats, n, seed=1), m.generate(feats, n, seed=2))


def test_flush_makes_frames_past_the_tokens():
    c = small_config()
    m = random_model(c)
    feats = padded_feats(c, 10)
    out = m.generate(feats, 25, seed=0)
    assert out.shape == (25, len(CHANNELS)) and np.isfinite(out).all()
    with pytest.raises(ValueError, match="at least one"):
        MotionStream(m).flush(3)


def test_lip_mix_and_pause_closure():
    ro = np.full(20, 0.2)
    ls = np.full(20, 0.4)
    assert np.allclose(LipMix(0.25).mix(ro, ls), 0.25)
    assert np.allclose(LipMix(0.25).mix(ro, None), 0.2)
    with pytest.raises(ValueError):
        LipMix(1.5)
    scores = np.zeros((20, 2))
    scores[5:12, 1] = 1.0  # a pause
    out = CLOSURE.apply(ro, scores)
    assert np.allclose(out[:6], 0.2)  # hold 2: the gate closes from the second frame above `on`
    assert abs(out[9] - CLOSURE.level) < 1e-9  # fully closed after ramp_close frames
    assert np.allclose(out[13:], 0.2)  # open again after the pause (ramp_open 1)
    assert np.allclose(CLOSURE.apply(ro, np.zeros((20, 2))), 0.2)  # no pause, no closing


def test_lip_conditioned_pause_closure():
    """With ``lip_below`` only the pause frames whose lip is already below it close; the rest keep their lip."""
    import dataclasses

    gate = dataclasses.replace(CLOSURE, hold=1, ramp_close=1, ramp_open=1, lip_below=0.1)
    lip = np.array([0.2, 0.05, 0.2, 0.05, 0.15, 0.02, 0.2])
    scores = np.zeros((7, 2))
    scores[1:6, 1] = 1.0  # a pause over frames 1-5
    out = gate.apply(lip, scores)
    np.testing.assert_allclose(out, [0.2, gate.level, 0.2, gate.level, 0.15, gate.level, 0.2])
    assert PauseClosure.from_dict(gate.to_dict()) == gate and PauseClosure.from_dict(CLOSURE.to_dict()) == CLOSURE
    with pytest.raises(ValueError, match="lip_below"):
        dataclasses.replace(gate, lip_below=0.0)


def test_blink_rate_and_head_noise():
    b = BLINKS.with_rate(30.0)
    assert abs(b.rate_per_min - BLINKS.rate_per_min) < 1e-9 and abs(b.rate_scale * b.rate_per_min - 30) < 1e-6
    eyes = b.sample(25 * 600, seed=0)
    onsets = np.flatnonzero((eyes[1:] < 0.95) & (eyes[:-1] >= 0.95))
    assert 22 < len(onsets) / 10 < 36  # about 30 per minute (min_interval and durations shift it a little)
    np.testing.assert_array_equal(eyes, b.sample(25 * 600, seed=0))
    with pytest.raises(ValueError):
        BLINKS.with_rate(0)
    s1, s2 = HEAD_NOISE.stream(0), HEAD_NOISE.stream(0)
    x = np.array([s1.next() for _ in range(2000)])
    np.testing.assert_array_equal(x[:5], np.array([s2.next() for _ in range(5)]))
    assert 0.2 < x.std() < 5
    # AR(2): the lag-1 autocorrelation of the fitted process is a1 / (1 - a2)
    r1 = np.corrcoef(x[1:, 0], x[:-1, 0])[0, 1]
    assert abs(r1 - 1.5 / 1.56) < 0.05


def test_gaussian_nll_weights():
    mean = torch.zeros(1, 4, 2)
    log_std = torch.zeros(1, 4, 2)
    target = torch.ones(1, 4, 2)
    w = torch.ones(1, 4, 2)
    assert float(gaussian_nll(mean, log_std, target, w)) == pytest.approx(0.5)
    w[..., 1] = 0
    target[..., 1] = 100.0
    assert float(gaussian_nll(mean, log_std, target, w)) == pytest.approx(0.5)


def test_save_load_round_trip(tmp_path):
    m = random_model()
    path = save_landmark_motion(tmp_path / "m.safetensors", m, {"note": "test"})
    m2 = load_landmark_motion(path)
    assert m2.config == m.config and m2.closure == CLOSURE and m2.blinks == BLINKS and m2.head_noise == HEAD_NOISE
    assert m2.lip_mix == LipMix(0.25) and m2.extra == {"note": "test"}
    feats = padded_feats(m.config, 20)
    np.testing.assert_array_equal(m.generate(feats, 20, seed=5), m2.generate(feats, 20, seed=5))
    meta = read_landmark_motion_metadata(path)
    assert meta["config"] == m.config and meta["lip_mix"] == LipMix(0.25)


def test_load_errors(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        load_landmark_motion(tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsError, match="not a readable"):
        load_landmark_motion(bad)
    from lp_renderer.weights import write_safetensors

    m = random_model()
    other = write_safetensors(tmp_path / "other.safetensors", m.state_dict(), {"format": "something-else"})
    with pytest.raises(WeightsError, match="format"):
        load_landmark_motion(other)
    path = save_landmark_motion(tmp_path / "nan.safetensors", m)
    with torch.no_grad():
        m.head.weight[0, 0] = float("nan")
    save_landmark_motion(path, m)
    with pytest.raises(WeightsError, match="NaN"):
        load_landmark_motion(path)
    # a checkpoint whose config does not match its tensors
    m = random_model()
    meta_cfg = dataclasses.replace(m.config, d_model=32)
    write_safetensors(tmp_path / "mismatch.safetensors", m.state_dict(),
                      {"format": "audio2lp-landmark-motion-v1", "config": json.dumps(meta_cfg.to_dict())})
    with pytest.raises(WeightsError):
        load_landmark_motion(tmp_path / "mismatch.safetensors")


def test_shipped_weights_load_and_generate():
    m = load_landmark_motion()
    c = m.config
    assert c.features.whisper_model == "tiny.en" and c.feat_dim == 384
    feats = np.zeros((2 * 30 + 2 * c.pad_tokens, c.feat_dim), np.float32)
    out = m.generate(feats, 30, seed=0)
    assert out.shape == (30, len(CHANNELS)) and np.isfinite(out).all()
