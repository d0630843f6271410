"""The autoregressive audio -> motion model: masks, PPE, cached inference, windows, checkpoints, training."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from audio2lp.models.motion import MotionStats
from audio2lp.models.motion_model import (
    FORMAT,
    MotionModel,
    MotionModelConfig,
    alibi_slopes,
    alignment_mask,
    load_motion_model,
    periodic_causal_bias,
    periodic_positional_encoding,
    read_motion_model_metadata,
    save_motion_model,
    scheduled_sampling_inputs,
)
from lp_renderer.errors import InputError, WeightsError

INF = float("-inf")


@pytest.fixture(autouse=True)
def _one_thread():
    """These networks are tiny: one thread is fastest, and with two on a busy 2-core machine each parallel
    region can stall (measured: 100 training steps 0.24 s with 1 thread, 5-33 s with 2)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def tiny(seed=0, **kw) -> MotionModel:
    """A small model with a random (not zero) output head, so outputs depend on everything."""
    torch.manual_seed(seed)
    cfg = dict(audio_dim=16, d_model=32, n_heads=4, n_layers=2, dropout=0.0, n_styles=3)
    model = MotionModel(MotionModelConfig(**{**cfg, **kw}))
    torch.nn.init.normal_(model.head.weight, std=0.3)
    torch.nn.init.normal_(model.head.bias, std=0.1)
    return model.eval()


def feats(n_tokens, dim=16, seed=0, batch=None):
    g = torch.Generator().manual_seed(seed)
    shape = (n_tokens, dim) if batch is None else (batch, n_tokens, dim)
    return torch.randn(shape, generator=g)


# -- masks and positional encoding -----------------------------------------------------------------


def test_alibi_slopes():
    assert alibi_slopes(4) == [1 / 4, 1 / 16, 1 / 64, 1 / 256]
    assert alibi_slopes(2) == [1 / 16, 1 / 256]
    assert alibi_slopes(8)[0] == 1 / 2 and len(alibi_slopes(6)) == 6


def test_self_attention_bias_by_hand():
    # T=6, period 2, two heads with slopes 1/16 and 1/256: -floor((i-j)/2) * slope, -inf above the diagonal
    steps = [[0, INF, INF, INF, INF, INF],
             [0, 0, INF, INF, INF, INF],
             [-1, 0, 0, INF, INF, INF],
             [-1, -1, 0, 0, INF, INF],
             [-2, -1, -1, 0, 0, INF],
             [-2, -2, -1, -1, 0, 0]]
    expected = torch.tensor([[[v * m for v in row] for row in steps] for m in (1 / 16, 1 / 256)])
    got = periodic_causal_bias(6, 2, 2)
    assert got.shape == (2, 6, 6) and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_alignment_mask_by_hand():
    o = 0.0
    # 3 frames, 6 tokens: frame i sees tokens 2i and 2i+1
    torch.testing.assert_close(alignment_mask(3, 6), torch.tensor([
        [o, o, INF, INF, INF, INF],
        [INF, INF, o, o, INF, INF],
        [INF, INF, INF, INF, o, o]]), rtol=0, atol=0)
    # audio shorter than 2T: indices clamp to the last token, every row keeps an allowed key
    torch.testing.assert_close(alignment_mask(3, 4), torch.tensor([
        [o, o, INF, INF],
        [INF, INF, o, o],
        [INF, INF, INF, o]]), rtol=0, atol=0)
    torch.testing.assert_close(alignment_mask(3, 3), torch.tensor([
        [o, o, INF],
        [INF, INF, o],
        [INF, INF, o]]), rtol=0, atol=0)
    assert alignment_mask(2, 7)[:, 4:].eq(INF).all()  # extra audio tokens are never seen


def test_ppe_varies_within_a_period_and_repeats():
    d, p = 128, 25
    pe = periodic_positional_encoding(3 * p + 7, d, p)
    assert pe.shape == (3 * p + 7, d)
    dist = torch.cdist(pe[:p], pe[:p]) + torch.eye(p) * 1e9
    assert dist.min() > 0.1  # every frame of a period has its own encoding (not pe[T] for all frames)
    torch.testing.assert_close(pe[p:2 * p], pe[:p], rtol=0, atol=1e-5)
    torch.testing.assert_close(pe[2 * p + 7], pe[7], rtol=0, atol=1e-5)
    torch.testing.assert_close(periodic_positional_encoding(10, d, p, start=40), pe[40:50], rtol=0, atol=1e-5)
    assert pe[3, 0] == pytest.approx(math.sin(3.0)) and pe[3, 1] == pytest.approx(math.cos(3.0))
    # and the model adds a different encoding to each token (no length limit: 3 periods + 7)
    model = tiny()
    x = model.embed(torch.zeros(1, 3 * p + 6, 70), torch.zeros(1, model.config.d_model), 0, True)[0]
    assert (torch.cdist(x[:p], x[:p]) + torch.eye(p) * 1e9).min() > 0.1
    torch.testing.assert_close(x[p + 3], x[3])


# -- training forward ----------------------------------------------------------------------------


def test_teacher_forcing_shapes_and_start():
    model = tiny()
    out = model(feats(40, batch=2), torch.randn(2, 20, 70), style=torch.tensor([0, 2]))
    assert out.shape == (2, 20, 70) and out.dtype == torch.float32
    fresh = MotionModel(MotionModelConfig(audio_dim=16, d_model=32, n_heads=4, n_layers=1))
    assert fresh(feats(10, batch=1), torch.randn(1, 5, 70), 0).abs().max() == 0  # zero head: the mean motion
    # output i must not depend on motion_in[i:] (the model shifts its input by one frame)
    m = torch.randn(1, 12, 70)
    m2 = m.clone()
    m2[:, 6:] += 5
    a = feats(24, batch=1)
    torch.testing.assert_close(model(a, m, 0)[:, :7], model(a, m2, 0)[:, :7])
    assert not torch.allclose(model(a, m, 0)[:, 7], model(a, m2, 0)[:, 7])


def test_batch_equals_per_sample_and_padding():
    model = tiny()
    B, T = 3, 17
    audio, motion = feats(2 * T, batch=B), torch.randn(B, T, 70)
    style = torch.tensor([0, 1, 2])
    batched = model(audio, motion, style)
    for b in range(B):
        single = model(audio[b:b + 1], motion[b:b + 1], style[b:b + 1])
        torch.testing.assert_close(batched[b:b + 1], single, rtol=0, atol=1e-5)
    # a sequence padded at the end (motion and audio) keeps the outputs of its real frames
    padded = model(F.pad(audio[:1], (0, 0, 0, 10)), F.pad(motion[:1], (0, 0, 0, 5)), 0)
    torch.testing.assert_close(padded[:, :T], model(audio[:1], motion[:1], 0), rtol=0, atol=1e-5)


def test_scheduled_sampling_inputs():
    gt, pred = torch.zeros(4, 50, 70), torch.ones(4, 50, 70, requires_grad=True)
    assert scheduled_sampling_inputs(gt, pred, 0.0).eq(0).all()
    assert scheduled_sampling_inputs(gt, pred, 1.0).eq(1).all()
    mixed = scheduled_sampling_inputs(gt, pred, 0.3, torch.Generator().manual_seed(0))
    frac = mixed[..., 0].mean().item()
    assert 0.2 < frac < 0.4 and not mixed.requires_grad
    assert (mixed.amin(-1) == mixed.amax(-1)).all()  # whole frames are swapped, not single numbers


def test_tiny_model_overfits_a_short_sequence():
    torch.manual_seed(0)
    model = MotionModel(MotionModelConfig(audio_dim=8, d_model=32, n_heads=2, n_layers=1, dropout=0.0))
    T = 40
    audio = torch.randn(1, 2 * T, 8)
    pairs = audio.view(1, T, 2 * 8)  # (1, T, 16): the two tokens of each frame
    target = torch.tanh(pairs @ torch.randn(16, 70)) + 0.3 * torch.sin(torch.arange(T)[:, None] / 3.0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(300):
        loss = F.mse_loss(model(audio, target, 0), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 10, (losses[0], losses[-1])


# -- inference ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_tokens", [120, 119])  # 60 frames; odd: the last frame sees one token
def test_cached_equals_uncached(n_tokens):
    model = tiny()
    a = feats(n_tokens)
    cached = model.generate(a, style=1, window=None)
    assert cached.shape == (60, 70) and cached.dtype == np.float32
    np.testing.assert_allclose(cached, model.generate_uncached(a, style=1), rtol=0, atol=1e-5)
    # with windows, priming and cross-fades, in a batch with per-sample styles
    ab = feats(n_tokens, batch=2, seed=1)
    kw = dict(style=torch.tensor([0, 2]), window=20, overlap=5, context=8)
    cw = model.generate(ab, **kw)
    assert cw.shape == (2, 60, 70)
    np.testing.assert_allclose(cw, model.generate_uncached(ab, **kw), rtol=0, atol=1e-5)
    assert np.abs(cw[0] - model.generate(ab[0], **dict(kw, style=0))).max() < 1e-5


def test_cached_equals_uncached_past_the_audio():
    model = tiny()
    kw = dict(style=2, n_frames=60, window=20, overlap=5, context=8)  # the last windows start past the audio
    a = feats(49)
    np.testing.assert_allclose(model.generate(a, **kw), model.generate_uncached(a, **kw), rtol=0, atol=1e-5)


def test_teacher_forcing_matches_generation():
    """Fed its own generated frames, the training forward reproduces them: both paths agree."""
    model = tiny()
    a = feats(60)
    gen = model.generate(a, window=None)
    tf = model(a[None], torch.from_numpy(gen)[None], 0)[0]
    np.testing.assert_allclose(tf.detach().numpy(), gen, rtol=0, atol=1e-5)


def _window_starts(n, window, overlap):
    starts, s = [], 0
    while min(s + window, n) < n:
        s = min(s + window, n) - overlap
        starts.append(s)
    return starts


def _jumps(y, starts, overlap):
    """Largest frame-to-frame change into the seam frames (each window's start .. start+overlap) and
    into all other frames (inside windows)."""
    jump = np.abs(np.diff(y, axis=0)).max(axis=1)  # jump[g - 1] = |y[g] - y[g - 1]|
    seam = np.zeros(len(jump), bool)
    for s in starts:
        seam[s - 1:s + overlap] = True
    return jump[seam].max(), jump[~seam].max()


def test_window_stitching_has_no_seams():
    """Checks: with the cross-fade, no jump between neighbouring frames at a window seam is larger than
    the largest jump inside the windows. The model is built to make that fail without a cross-fade: it is
    not autoregressive (motion input ignored) and depends strongly and smoothly on the position in its
    sequence (its positional encoding is replaced by a slow ramp), so a window that restarts at position
    0 (primed with 25 frames) disagrees with the previous window by far more than a frame-to-frame step;
    the test first asserts that the hard cut (overlap 0) does show that seam."""
    torch.manual_seed(0)
    model = MotionModel(MotionModelConfig(audio_dim=8, d_model=16, n_heads=4, n_layers=1, dropout=0.0,
                                          period=1000)).eval()
    with torch.no_grad():
        torch.nn.init.normal_(model.head.weight, std=0.3)
        pos = torch.arange(1000.0)[:, None]
        model.ppe.copy_(3 * torch.randn(16) + 3 * torch.tanh(pos / 40) * torch.randn(16))
        model.motion_enc.weight.zero_()
        model.motion_enc.bias.zero_()
    n, window, context = 400, 100, 25
    t = torch.arange(2 * n)[:, None] / 50.0  # token times in seconds; slow, smooth "audio"
    audio = torch.sin(2 * math.pi * torch.tensor([0.1, 0.15, 0.2, 0.12, 0.05, 0.3, 0.25, 0.08]) * t
                      + torch.arange(8.0))
    hard = model.generate(audio, window=window, overlap=0, context=context)
    seam, inside = _jumps(hard, _window_starts(n, window, 0), 0)
    assert seam > 3 * inside, (seam, inside)  # the case is hard enough to fail
    overlap = 25
    y = model.generate(audio, window=window, overlap=overlap, context=context)
    seam, inside = _jumps(y, _window_starts(n, window, overlap), overlap)
    assert seam <= inside, (seam, inside)


def test_generation_defaults_long_audio_and_determinism():
    model = tiny(dropout=0.3).train()  # generate switches dropout off and restores the mode
    a = feats(1301)  # 651 frames: three default windows
    y1 = model.generate(a, style=2)
    assert y1.shape == (651, 70) and np.isfinite(y1).all() and model.training
    np.testing.assert_array_equal(y1, model.generate(a, style=2, seed=123))
    n1 = model.generate(a, noise=0.5, seed=1)
    np.testing.assert_array_equal(n1, model.generate(a, noise=0.5, seed=1))
    assert np.abs(n1 - model.generate(a, noise=0.5, seed=2)).max() > 1e-3
    stats = MotionStats(np.arange(70.0), np.full(70, 2.0))
    np.testing.assert_allclose(model.generate(a, style=2, stats=stats), y1 * 2 + np.arange(70.0), atol=1e-5)
    assert model.generate(a, n_frames=700).shape == (700, 70)  # frames past the audio see its last token


def test_input_errors():
    model = tiny()
    with pytest.raises(InputError, match="width 384"):
        model.generate(torch.zeros(10, 384))
    with pytest.raises(InputError, match="out of range"):
        model.generate(feats(10), style=3)
    with pytest.raises(InputError, match="empty"):
        model.generate(torch.zeros(0, 16))
    with pytest.raises(ValueError, match="overlap"):
        model.generate(feats(10), window=5, overlap=5)


# -- checkpoints -------------------------------------------------------------------------------------


def test_config_dict():
    cfg = MotionModelConfig(audio_dim=512, whisper_model="base", n_styles=4)
    assert MotionModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="unknown"):
        MotionModelConfig.from_dict({"d_modle": 3})
    with pytest.raises(ValueError, match="type"):
        MotionModelConfig.from_dict({"n_layers": 2.5})
    with pytest.raises(ValueError):
        MotionModelConfig(d_model=30, n_heads=4)


def test_save_load_round_trip(tmp_path):
    model = tiny(whisper_model="tiny.en")
    stats = MotionStats.from_data(np.random.default_rng(0).normal(size=(50, 70)))
    path = save_motion_model(tmp_path / "m.safetensors", model, stats, extra={"epoch": 3})
    loaded, st = load_motion_model(path)
    assert st == stats and loaded.config == model.config and not loaded.training
    a = feats(30)
    np.testing.assert_array_equal(loaded.generate(a, style=1), model.generate(a, style=1))
    meta = read_motion_model_metadata(path)
    assert meta["extra"] == {"epoch": 3} and meta["config"].whisper_model == "tiny.en"


def _rewrite(src, dst, tensors=None, **meta_changes):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata())
        t = {k: f.get_tensor(k) for k in f.keys()}
    meta.update(meta_changes)
    save_file(tensors if tensors is not None else t, str(dst), metadata=meta)
    return dst


def test_bad_checkpoints(tmp_path):
    model = tiny()
    good = save_motion_model(tmp_path / "good.safetensors", model, MotionStats.identity())
    cfg = model.config.to_dict()
    with pytest.raises(WeightsError, match="does not exist"):
        load_motion_model(tmp_path / "nope.safetensors")
    (tmp_path / "trunc.safetensors").write_bytes(good.read_bytes()[:200])
    with pytest.raises(WeightsError, match="not a readable safetensors"):
        load_motion_model(tmp_path / "trunc.safetensors")
    torch.save(model.state_dict(), tmp_path / "pickled.pt")
    with pytest.raises(WeightsError, match="pickle"):
        load_motion_model(tmp_path / "pickled.pt")
    with pytest.raises(WeightsError, match="has format"):
        load_motion_model(_rewrite(good, tmp_path / "fmt.safetensors", format="other"))
    more_layers = json.dumps({**cfg, "n_layers": 3})
    with pytest.raises(WeightsError, match=r"bad1.safetensors: missing key 'blocks\.2\."):
        load_motion_model(_rewrite(good, tmp_path / "bad1.safetensors", config=more_layers))
    wider = json.dumps({**cfg, "audio_dim": 512})
    with pytest.raises(WeightsError, match="'audio_norm.weight' has shape"):
        load_motion_model(_rewrite(good, tmp_path / "bad2.safetensors", config=wider))
    with pytest.raises(WeightsError, match="metadata entry 'config'"):
        load_motion_model(_rewrite(good, tmp_path / "bad3.safetensors", config=json.dumps({**cfg, "x": 1})))
    with pytest.raises(WeightsError, match="metadata entry 'stats'"):
        load_motion_model(_rewrite(good, tmp_path / "bad4.safetensors", stats="{"))
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    sd["head.bias"][0] = float("nan")
    with pytest.raises(WeightsError, match="NaN"):
        load_motion_model(_rewrite(good, tmp_path / "nan.safetensors", tensors=sd))
    assert FORMAT in good.read_bytes()[:4000].decode("latin-1")


# -- issue 16: the windows speak uses, relative motion, no source conditioning ---------------------------------


def test_rollout_is_generate_with_the_windows_the_model_was_trained_for():
    """`rollout` is what `speak` and the trainer's validation both run: `generate` with the model's own window,
    overlap and context (stored in its config by the trainer)."""
    model = tiny(window=20, overlap=5, context=8)
    a = feats(130)
    np.testing.assert_array_equal(model.rollout(a, style=1),
                                  model.generate(a, style=1, window=20, overlap=5, context=8))
    assert not np.array_equal(model.rollout(a, style=1), model.generate(a, style=1, window=None))
    cfg = MotionModelConfig(window=300, overlap=30, context=60)
    assert MotionModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="overlap"):
        MotionModelConfig(window=20, overlap=20)


def test_source_conditioning_is_gone():
    """`source_cond` could never be trained; it is removed (a model conditioned on the portrait's absolute pose and
    expression would reopen the identity channel that per-clip targets close)."""
    with pytest.raises(ValueError, match="unknown config field 'source_cond'"):
        MotionModelConfig.from_dict({"source_cond": True})
    model = tiny()
    assert not any("source" in k for k in model.state_dict())
    with pytest.raises(TypeError):
        model.generate(feats(10), 0, torch.zeros(70))


def test_model_files_of_an_older_version_are_refused(tmp_path):
    """Version 1 files predict absolute motion around the dataset mean; read as relative motion they would put a
    training speaker's pose on every portrait, so they are refused with a clear message."""
    good = save_motion_model(tmp_path / "good.safetensors", tiny(), MotionStats.identity())
    assert FORMAT == "audio2lp-motion-model-v2"
    old = _rewrite(good, tmp_path / "old.safetensors", format="audio2lp-motion-model-v1")
    with pytest.raises(WeightsError, match=r"older version of audio2lp-train.*absolute.*train it again"):
        load_motion_model(old)
    with pytest.raises(WeightsError, match="older version"):
        read_motion_model_metadata(old)
