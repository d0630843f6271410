"""The speech-to-mouth model (audio2lp.models.lipsync): shapes, determinism, checkpoints, the shipped weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from audio2lp.models.lipsync import (
    FORMAT,
    LipPrediction,
    LipSync,
    LipSyncConfig,
    frames_for_samples,
    load_lipsync_model,
    read_lipsync_metadata,
    save_lipsync_model,
    tokens_to_frames,
)
from lp_renderer.errors import InputError, WeightsError

TINY = LipSyncConfig(in_dim=8, channels=8, kernel=3, dilations=(1, 2), linear_context=1, lip_scale=0.2,
                     closed_level=0.01)


def _tiny_model(seed: int = 0) -> LipSync:
    torch.manual_seed(seed)
    model = LipSync(TINY)
    with torch.no_grad():  # make the heads non-trivial
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def test_tokens_to_frames_pairs_pads_and_trims():
    x = torch.arange(5, dtype=torch.float32).reshape(1, 5, 1)
    y = tokens_to_frames(x, 3)
    assert y.shape == (1, 3, 2)
    assert y[0].tolist() == [[0, 1], [2, 3], [4, 4]]  # the last token repeats
    assert tokens_to_frames(x, 1)[0].tolist() == [[0, 1]]  # extra tokens dropped


def test_frames_for_samples():
    assert frames_for_samples(16000) == 25
    assert frames_for_samples(16001) == 26
    assert frames_for_samples(1) == 1
    assert frames_for_samples(640 * 7) == 7


def test_forward_shapes_and_receptive_field():
    model = _tiny_model()
    feats = torch.randn(3, 40, 8)
    lip, logit = model(feats, 20)
    assert lip.shape == (3, 20) and logit.shape == (3, 20)
    assert TINY.receptive_field == 3 + 1  # the convolutions (+-3) read the linear read-out (+-1)
    # a change at frame 10 only moves frames within the receptive field
    f2 = feats.clone()
    f2[:, 20:22] += 5.0
    lip2, _ = model(f2, 20)
    changed = (lip2 - lip).abs().amax(0) > 1e-6
    idx = torch.nonzero(changed).flatten()
    assert idx.min() >= 10 - TINY.receptive_field and idx.max() <= 10 + TINY.receptive_field


@pytest.mark.parametrize("linear_context", [0, 2])
def test_other_contexts_keep_the_receptive_field(linear_context):
    cfg = LipSyncConfig(in_dim=8, channels=8, kernel=3, dilations=(1, 2), linear_context=linear_context)
    torch.manual_seed(0)
    model = LipSync(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    feats = torch.randn(1, 60, 8)
    lip, _ = model(feats, 30)
    f2 = feats.clone()
    f2[:, 30:32] += 5.0  # frame 15
    lip2, _ = model(f2, 30)
    idx = torch.nonzero((lip2 - lip).abs()[0] > 1e-6).flatten()
    rf = cfg.receptive_field
    assert len(idx) > 0 and idx.min() >= 15 - rf and idx.max() <= 15 + rf
    with pytest.raises(ValueError, match="linear_context"):
        LipSyncConfig(linear_context=-1)


def test_config_of_the_design_search():
    """Files written during the design search carry its switches: they load when the switches describe the kept
    design (stacked, one network, no blending), and are refused otherwise."""
    kept = dict(TINY.to_dict(), stacked=True, members=1, blend=False, pool="concat")
    assert LipSyncConfig.from_dict(kept) == TINY
    for key, value in (("stacked", False), ("members", 2), ("blend", True)):
        with pytest.raises(ValueError, match=key):
            LipSyncConfig.from_dict(dict(kept, **{key: value}))
    with pytest.raises(ValueError, match="unknown config keys"):
        LipSyncConfig.from_dict(dict(TINY.to_dict(), surprise=1))


def test_linear_read_out_is_the_ridge_solution():
    """The closed-form fit of the linear branch equals ridge regression on the context-stacked features."""
    from training.lipsync.train import _context, fit_linear_branch

    rng = np.random.default_rng(0)
    cfg = LipSyncConfig(in_dim=6, channels=4, kernel=3, dilations=(1,), linear_context=1)
    model = LipSync(cfg)
    n = 80
    feats = rng.standard_normal((2 * n, 6)).astype(np.float32)
    model.set_feature_stats(feats.mean(0), feats.std(0))
    pairs = ((feats - feats.mean(0)) / feats.std(0)).reshape(n, 2, 6).mean(1)
    lip = (pairs @ rng.standard_normal(6) + 0.1 * rng.standard_normal(n)).astype(np.float32)
    mask = np.ones(n, np.float32)
    mask[:5] = 0
    closed = (rng.random(n) < 0.3).astype(np.float32)
    fit_linear_branch(model, [(feats, lip, mask, closed, n)], lam=3.0)
    X = _context(pairs, 1)
    for out, y, rows in ((0, lip, mask > 0), (1, closed, np.ones(n, bool))):
        Xr, yr = X[rows], y[rows].astype(np.float64)
        Xc = Xr - Xr.mean(0)
        w = np.linalg.solve(Xc.T @ Xc + 3.0 * np.eye(X.shape[1]), Xc.T @ (yr - yr.mean()))
        with torch.no_grad():
            got = model.linear(torch.from_numpy(pairs.T[None].astype(np.float32)))[0, out].numpy()
        want = X @ w + yr.mean() - Xr.mean(0) @ w
        assert np.allclose(got, want, atol=1e-4)


def test_predict_is_deterministic_and_well_formed():
    model = _tiny_model()
    feats = np.random.default_rng(0).standard_normal((101, 8)).astype(np.float32)
    a = model.predict(feats)
    b = model.predict(feats)
    assert isinstance(a, LipPrediction)
    assert a.n_frames == math.ceil(101 / 2) and a.fps == 25.0
    for name in ("lip_open", "closed_prob", "lip_open_raw"):
        arr = getattr(a, name)
        assert arr.dtype == np.float32 and arr.shape == (51,)
        assert np.array_equal(arr, getattr(b, name))
    assert a.closed.dtype == bool and np.array_equal(a.closed, a.closed_prob > 0.5)
    assert (a.lip_open_raw >= 0).all() and ((a.closed_prob >= 0) & (a.closed_prob <= 1)).all()
    # the ratio is the regression; a silence mask closes the mouth
    assert np.array_equal(a.lip_open, a.lip_open_raw)
    sil = np.zeros(51, bool)
    sil[10:20] = True
    g = model.predict(feats, silence=sil)
    assert (g.lip_open[sil] == TINY.closed_level).all() and g.closed[sil].all()
    assert np.array_equal(g.lip_open[~sil], a.lip_open[~sil])
    # explicit frame count: longer than the features (last token repeated) and shorter
    assert model.predict(feats, 60).n_frames == 60
    assert np.allclose(model.predict(feats, 30).lip_open[:20], a.lip_open[:20], atol=1e-5)
    # training mode is restored; dropout does not leak into predict
    model.train()
    assert np.array_equal(model.predict(feats).lip_open, a.lip_open)
    assert model.training


def test_predict_rejects_bad_features():
    model = _tiny_model()
    with pytest.raises(InputError, match="width"):
        model.predict(np.zeros((10, 7), np.float32))
    with pytest.raises(InputError):
        model.predict(np.zeros((0, 8), np.float32))
    bad = np.zeros((10, 8), np.float32)
    bad[3, 2] = np.nan
    with pytest.raises(InputError, match="NaN"):
        model.predict(bad)


def test_save_load_roundtrip(tmp_path):
    model = _tiny_model(3)
    model.set_feature_stats(np.full(8, 0.5), np.full(8, 2.0))
    path = save_lipsync_model(tmp_path / "m.safetensors", model, {"note": "test"})
    meta = read_lipsync_metadata(path)
    assert meta["config"] == TINY and meta["extra"] == {"note": "test"}
    loaded = load_lipsync_model(path)
    assert not loaded.training
    feats = np.random.default_rng(1).standard_normal((40, 8)).astype(np.float32)
    assert np.array_equal(loaded.predict(feats).lip_open, model.predict(feats).lip_open)


def test_load_errors(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        load_lipsync_model(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    with pytest.raises(WeightsError):
        load_lipsync_model(junk)
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(2)}, str(other), metadata={"format": "something-else"})
    with pytest.raises(WeightsError, match=FORMAT):
        load_lipsync_model(other)


def test_shipped_weights_load_and_are_small():
    model = load_lipsync_model()
    c = model.config
    assert c.whisper_model == "tiny.en" and c.in_dim == 384
    assert 0.1 < c.lip_scale < 0.5 and 0.0 <= c.closed_level < 0.03
    from audio2lp.models.lipsync import default_lipsync_path

    with default_lipsync_path() as p:
        assert p.stat().st_size < 5_000_000
    meta = read_lipsync_metadata()
    held = meta["extra"]["heldout"]
    assert held["mean_r_model"] > held["mean_r_loudness"] + 0.1
    assert held["mean_r_model"] > held["mean_r_probe"]  # the floor set by a linear probe (lipsync-notes)
    assert held["closed_rate_in_silence_gated"] > 0.95 and abs(held["best_lag_frames"]) <= 1
    # deterministic on any features of the right width
    feats = np.random.default_rng(0).standard_normal((60, 384)).astype(np.float32)
    assert np.array_equal(model.predict(feats).lip_open, model.predict(feats).lip_open)


@pytest.mark.realdata
def test_shipped_model_opens_the_mouth_for_speech_not_silence(data_dir):
    from audio2lp.media.audio import load_audio
    from audio2lp.whisper.features import WhisperEncoder

    speech = load_audio(data_dir / "speech" / "FaceFormer__test.wav")
    pad = np.zeros(32000, np.float32)  # 2 s of silence each side
    audio = np.concatenate([pad, speech, pad])
    model = load_lipsync_model()
    encoder = WhisperEncoder(model.config.whisper_model)
    n = frames_for_samples(audio.size)
    pred = model.predict(encoder.encode(audio, layers=model.config.whisper_layers), n, audio_16k=audio)
    assert pred.n_frames == n
    lead = 50  # frames of padding
    silence = np.r_[pred.lip_open[5:lead - 5], pred.lip_open[n - lead + 5:n - 5]]
    closed_sil = np.r_[pred.closed[5:lead - 5], pred.closed[n - lead + 5:n - 5]]
    talk = pred.lip_open[lead:n - lead]
    assert closed_sil.mean() > 0.95
    assert silence.max() < 0.05
    assert talk.mean() > 3 * silence.mean() + 0.03
    assert np.percentile(talk, 90) > 0.12  # the mouth really opens
    assert talk.std() > 0.03  # and moves
