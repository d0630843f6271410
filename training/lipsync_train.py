"""Train the speech-to-mouth model (:mod:`audio2lp.lipsync`) on real talking videos and measure it.

One command builds the dataset (cached outside the repository), trains on CPU with a fixed seed, evaluates
on held-out speakers and writes the shipped weights, the model card and the metrics::

    python -m training.lipsync_train --data $AUDIO2LP_TEST_DATA/talking --out audio2lp/assets --cv 4

Split: by speaker (:func:`training.lipsync_data.speaker_of`). The held-out speakers are the fixed list
:data:`HELD_OUT_SPEAKERS`: every speaker at positions 0 and 3 (mod 4) of the alphabetically sorted speaker
ids of the 32 clips of ``$AUDIO2LP_TEST_DATA/talking`` (15 speakers, ~87 s). Speakers not in the data are
ignored, speakers not in the list train.

Targets: the measured lip-open ratio divided by the clip's 95th percentile (removes differences in how wide
people open their mouths), so the network predicts in units of the training clips' median 95th percentile
(``lip_scale``, stored with the weights, which puts predictions on the absolute calibrated scale the lip
retargeting network needs). The closed-mouth head learns "silence": frames in energy-VAD silences longer
than 200 ms (:func:`silence_mask`) and the digital silence added around every clip (:data:`PAD_SECONDS`).
Training: the linear read-out (:func:`fit_linear_branch`) in closed form first, then the convolutions with
AdamW; loss: MSE on the normalised ratio + ``w_corr`` x (1 - Pearson r per crop) + ``w_bce`` x BCE on the
closed head.

Metrics on the held-out speakers (all from the same run):

- per-clip Pearson r between predicted and measured lip ratio (valid frames), and the mean over clips, for
  the model, for the loudness baseline (ridge regression on the clip's RMS dB relative to its 95th
  percentile, +-``BASELINE_CONTEXT`` frames of context, fitted on the training clips) and for a linear
  probe on the same Whisper features (ridge, +-2 frames);
- closed-mouth rate: the fraction of frames in silences longer than 200 ms where the mouth is closed, as
  ``speak`` renders it (network + energy gate) and from the network's closed-mouth head alone;
- lag: the shift L in -5..5 frames maximising the mean over clips of r(pred[t], measured[t + L]).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from audio2lp.lipsync import silence_mask
from lp_renderer.errors import InputError

logger = logging.getLogger(__name__)

__all__ = [
    "HELD_OUT_SPEAKERS",
    "BASELINE_CONTEXT",
    "TrainConfig",
    "silence_mask",
    "split_clips",
    "shift_targets",
    "estimate_offsets",
    "train_lipsync",
    "fit_linear_branch",
    "cross_validate",
    "LoudnessBaseline",
    "RidgeProbe",
    "pearson",
    "evaluate",
]

#: Speakers never used for training (see the module docstring for how they were chosen).
HELD_OUT_SPEAKERS = (
    "EAMM__M030_sad_3_001",
    "LipNet__brbk7n",
    "LipNet__lbax4n",
    "LipNet__pwij3p",
    "LipNet__sbia1a",
    "SadTalker__WDA_AlexandriaOcasioCortez_000",
    "Talking-Face_PC-AVS__00010",
    "Talking-Face_PC-AVS__00373",
    "Talking-Face_PC-AVS__00473",
    "Talking-Face_PC-AVS__731200067",
    "Talking-Face_PC-AVS__796100172",
    "lip-reading-deeplearning__sample_video",
    "styletalk__KristiNoem",
    "video-retalking__1",
    "video-retalking__2",
)
BASELINE_CONTEXT = 4  # +- frames of loudness context for the baseline
PROBE_CONTEXT = 2
MAX_LAG = 5
COMMAND = "python -m training.lipsync_train --data $AUDIO2LP_TEST_DATA/talking --out audio2lp/assets --cv 4"


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (the architecture is :class:`audio2lp.lipsync.LipSyncConfig`)."""

    steps: int = 1500
    batch: int = 16
    crop: int = 64  # frames per training crop
    lr: float = 2e-3
    weight_decay: float = 1e-2
    w_corr: float = 0.5
    w_bce: float = 0.3
    feature_noise: float = 0.1  # Gaussian noise on the normalised features
    closed_lip: float = 0.0  # also label frames with a measured ratio below this "closed" (0 = off)
    target_smooth: float = 0.0  # Gaussian smoothing (sigma, frames) of the measured ratio (landmark jitter)
    silence_target: bool = False  # the lip target in silences (and the padding) is a closed mouth
    pad_prob: float = 1.0  # probability that a training crop may include the digital-silence padding
    per_clip_norm: bool = True  # divide each clip's targets by its 95th percentile (else by lip_scale)
    ridge_lambda: float = 1e4  # L2 penalty of the closed-form fit of the linear branch (linear_context >= 0)
    train_linear: bool = False  # keep training the linear branch after its closed-form fit (else frozen)
    seed: int = 0


def _default_model_config():
    from audio2lp.lipsync import LipSyncConfig

    return LipSyncConfig(whisper_model="tiny.en", whisper_layers=2)  # the other defaults: see LipSyncConfig


DEFAULT_TRAIN_CONFIG = TrainConfig()
DEFAULT_MODEL_CONFIG = _default_model_config()


# ----------------------------------------------------------------------------------------------------
# labels and split


def split_clips(clips, held_out: Sequence[str] = HELD_OUT_SPEAKERS):
    """``(train, test)`` lists of clips, split by speaker."""
    held = set(held_out)
    return [c for c in clips if c.speaker not in held], [c for c in clips if c.speaker in held]


def shift_targets(clip, offset: int):
    """A copy of ``clip`` whose measured ratios are moved by ``offset`` frames: ``lip'[t] = lip[t + offset]``
    (frames moved in from outside the clip are invalid)."""
    if offset == 0:
        return clip
    n = clip.n_frames
    lip = np.full(n, np.nan, np.float32)
    eye = np.full((n, 2), np.nan, np.float32)
    valid = np.zeros(n, bool)
    src = np.arange(n) + offset
    ok = (src >= 0) & (src < n)
    lip[ok], eye[ok], valid[ok] = clip.lip[src[ok]], clip.eye[src[ok]], clip.valid[src[ok]]
    return dataclasses.replace(clip, lip=lip, eye=eye, valid=valid, meta={**clip.meta, "target_shift": int(offset)})


def estimate_offsets(clips, folds: int = 4, max_lag: int = 8, min_shift: int = 2) -> dict[str, int]:
    """Audio-video offsets of training clips, in frames, to correct before training.

    A linear probe (:class:`RidgeProbe`) is fitted in speaker-disjoint folds over ``clips``; for each clip
    the lag in ``-max_lag..max_lag`` that maximises r(prediction[t], measured[t + lag]) is compared with
    the median over all clips (the model's own latency); clips off by ``min_shift`` frames or more get
    ``offset = lag - median``, the others 0.
    """
    speakers = sorted({c.speaker for c in clips})
    best = {}
    for k in range(folds):
        held = set(speakers[k::folds])
        fit = [c for c in clips if c.speaker not in held and c.valid.any()]
        if not fit:
            continue
        probe = RidgeProbe().fit(fit)
        for c in clips:
            if c.speaker in held and c.valid.sum() >= 3:
                p = probe.predict(c)
                rs = {lag: _lagged_r(p, c.lip, c.valid, lag) for lag in range(-max_lag, max_lag + 1)}
                best[c.name] = max(rs, key=lambda lag: -1.0 if np.isnan(rs[lag]) else rs[lag])
    if not best:
        return {}
    median = int(np.median(list(best.values())))
    return {name: (lag - median if abs(lag - median) >= min_shift else 0) for name, lag in best.items()}


def _clip_scale(clip) -> float:
    v = clip.lip[clip.valid]
    return float(np.percentile(v, 95)) if v.size else float("nan")


# ----------------------------------------------------------------------------------------------------
# training


def _smoothed(lip: np.ndarray, valid: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing of the valid frames (normalised convolution; invalid frames stay as they are)."""
    if sigma <= 0:
        return lip
    from scipy.ndimage import gaussian_filter1d

    w = valid.astype(np.float64)
    num = gaussian_filter1d(np.where(valid, lip, 0.0), sigma, mode="nearest")
    den = gaussian_filter1d(w, sigma, mode="nearest")
    return np.where(valid & (den > 1e-6), num / np.maximum(den, 1e-6), lip).astype(np.float32)


def _training_arrays(clip, pad_frames: int, smooth: float = 0.0, silence_target: float | None = None,
                     scale: float | None = None):
    """Padded features and per-frame targets of one clip.

    Returns ``(features (T50 + 4 pad, D), normalised lip (T + 2 pad,), lip mask, closed label, measured lip, T)``.
    With ``silence_target`` (a normalised ratio), the lip target of silent frames (VAD silences and the
    padding) is that value instead of the measured ratio.
    """
    scale = _clip_scale(clip) if scale is None else scale
    n = clip.n_frames
    lip = np.where(clip.valid, _smoothed(clip.lip, clip.valid, smooth) / max(scale, 1e-3), 0.0).astype(np.float32)
    mask = clip.valid.astype(np.float32)
    closed = silence_mask(clip.rms_db)
    ones, z = np.ones(pad_frames, np.float32), np.zeros(pad_frames, np.float32)
    if silence_target is not None:
        lip = np.where(closed, silence_target, lip).astype(np.float32)
        mask = np.where(closed, 1.0, mask).astype(np.float32)
        lip = np.concatenate([ones * silence_target, lip, ones * silence_target])
        mask = np.concatenate([ones, mask, ones])
    else:
        lip, mask = np.concatenate([z, lip, z]), np.concatenate([z, mask, z])
    closed = closed.astype(np.float32)
    return (clip.features_padded, lip, mask, np.concatenate([ones, closed, ones]),
            np.concatenate([z, np.where(clip.valid, clip.lip, 1.0).astype(np.float32), z]), n)


def train_lipsync(train_clips, model_config=None, config: TrainConfig | None = None, *, progress: bool = True):
    """Train a :class:`audio2lp.lipsync.LipSync` on clips with ``features_padded`` (see
    :func:`training.lipsync_data.prepare_clip`). Deterministic for a given seed (one CPU thread)."""
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    from audio2lp.lipsync import LipSync, LipSyncConfig
    from training.lipsync_data import PAD_SECONDS

    cfg = config or TrainConfig()
    clips = [c for c in train_clips if c.valid.any()]
    if not clips or any(c.features_padded is None for c in clips):
        raise InputError("training needs clips with padded Whisper features; build them with padded=True.")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pad = round(PAD_SECONDS * 25)
        feats_all = np.concatenate([c.features for c in clips])
        scales = np.array([_clip_scale(c) for c in clips])
        lips = np.concatenate([c.lip[c.valid] for c in clips])
        closed_level = round(float(np.median(lips[lips < np.percentile(lips, 10)])), 4)
        lip_scale = float(np.median(scales))
        mc = model_config or LipSyncConfig()
        mc = dataclasses.replace(mc, in_dim=feats_all.shape[1], lip_scale=lip_scale, closed_level=closed_level)
        data = [_training_arrays(c, pad, cfg.target_smooth, closed_level / lip_scale if cfg.silence_target else None,
                                 None if cfg.per_clip_norm else lip_scale) for c in clips]
        model = LipSync(mc)
        model.set_feature_stats(feats_all.mean(0), feats_all.std(0))
        if model.linear is not None:
            fit_linear_branch(model, data, cfg.ridge_lambda)
            model.linear.requires_grad_(cfg.train_linear)
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.1)
        # sample clips in proportion to their length
        lengths = np.array([d[1].shape[0] for d in data], dtype=np.float64)
        prob = lengths / lengths.sum()
        L = cfg.crop
        history = []
        bar = tqdm(range(cfg.steps), desc="lip-sync training", unit="step", disable=not progress)
        for step in bar:
            idx = rng.choice(len(data), size=cfg.batch, p=prob)
            fb, yb, mb, cb, ab = [], [], [], [], []
            for i in idx:
                f, y, m, c, a, n_real = data[i]
                t = y.shape[0]
                if rng.random() < cfg.pad_prob or n_real <= L:
                    s = int(rng.integers(0, max(1, t - L + 1)))
                else:  # a crop inside the real audio
                    s = pad + int(rng.integers(0, n_real - L + 1))
                e = min(t, s + L)
                sl = slice(s, e)
                ff = f[2 * s: 2 * e]
                if ff.shape[0] < 2 * (e - s):
                    ff = np.concatenate([ff, np.repeat(ff[-1:], 2 * (e - s) - ff.shape[0], 0)])
                yy, mm, cc, aa = y[sl], m[sl], c[sl], a[sl]
                if e - s < L:  # short clip: pad with the mask off
                    k = L - (e - s)
                    ff = np.concatenate([ff, np.repeat(ff[-1:], 2 * k, 0)])
                    yy, cc, aa = (np.concatenate([v, np.repeat(v[-1:], k)]) for v in (yy, cc, aa))
                    mm = np.concatenate([mm, np.zeros(k, np.float32)])
                fb.append(ff)
                yb.append(yy)
                mb.append(mm)
                cb.append(cc)
                ab.append(aa)
            feats = torch.from_numpy(np.stack(fb))
            if cfg.feature_noise > 0:
                feats = feats + cfg.feature_noise * model.feat_std * torch.randn_like(feats)
            y, m, c = (torch.from_numpy(np.stack(v)) for v in (yb, mb, cb))
            if cfg.closed_lip > 0:
                c = torch.maximum(c, (torch.from_numpy(np.stack(ab)) < cfg.closed_lip).float() * m)
            lip, logit = model.forward_members(feats, L)  # (M, B, L): every member learns on its own
            k = lip.shape[0]
            y, m, c = (v.expand(k, -1, -1) for v in (y, m, c))
            msum = m.sum().clamp_min(1.0)
            loss = ((lip - y) ** 2 * m).sum() / msum
            if cfg.w_corr > 0:
                loss = loss + cfg.w_corr * (1 - _masked_pearson(lip.flatten(0, 1), y.flatten(0, 1),
                                                                m.flatten(0, 1))).mean()
            if cfg.w_bce > 0:
                loss = loss + cfg.w_bce * F.binary_cross_entropy_with_logits(logit, c)
            loss = loss * k  # members' losses add up
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            history.append(loss.item())
            if step % 50 == 0:
                bar.set_postfix(loss=f"{np.mean(history[-50:]):.3f}")
        bar.close()
    finally:
        torch.set_num_threads(old_threads)
    model.eval()
    return model, history


def fit_linear_branch(model, data, lam: float) -> None:
    """Closed-form ridge fit of ``model.linear``, the linear branch of :class:`audio2lp.lipsync.LipSync`.

    The branch sees the normalised Whisper features, the two tokens of each frame averaged, at frames
    ``t - k .. t + k`` (``k = config.linear_context``). Output 0 is fitted to the normalised lip target of
    :func:`train_lipsync` on the frames with a measured face, output 1 to the "mouth closed" label (silences
    and the digital-silence padding) on every frame; both with an intercept and penalty ``lam``. ``data``:
    the per-clip tuples of :func:`_training_arrays`. The dilated convolutions then learn what this linear
    read-out misses.
    """
    import torch

    k = model.config.linear_context
    mean = model.feat_mean.cpu().numpy().astype(np.float64)
    std = model.feat_std.cpu().numpy().astype(np.float64)
    xs, lips, masks, closed = [], [], [], []
    for feats, lip, mask, cl, _, _ in data:
        n = lip.shape[0]
        f = feats
        if f.shape[0] < 2 * n:
            f = np.concatenate([f, np.repeat(f[-1:], 2 * n - f.shape[0], 0)])
        f = ((f[:2 * n] - mean) / std).reshape(n, 2, -1).mean(1)  # (n, D)
        xs.append(_context(f, k))
        lips.append(lip)
        masks.append(mask > 0)
        closed.append(cl)
    X = np.concatenate(xs)
    weights, biases = [], []
    for y, rows in ((np.concatenate(lips), np.concatenate(masks)), (np.concatenate(closed), None)):
        Xr, yr = (X[rows], y[rows]) if rows is not None else (X, y)
        xm, ym = Xr.mean(0), float(yr.mean())
        Xc = Xr - xm
        w = np.linalg.solve(Xc.T @ Xc + lam * np.eye(X.shape[1]), Xc.T @ (yr.astype(np.float64) - ym))
        weights.append(w.reshape(2 * k + 1, -1).T)  # (D, 2k+1): kernel tap j reads frame t + j - k
        biases.append(ym - float(xm @ w))
    with torch.no_grad():
        model.linear.weight.copy_(torch.from_numpy(np.stack(weights)).float())
        model.linear.bias.copy_(torch.tensor(biases, dtype=torch.float32))


def _masked_pearson(a, b, m):
    """Pearson r per row of (B, T) tensors over the frames where ``m`` is 1 (rows with < 3 frames give 1)."""
    import torch

    n = m.sum(1).clamp_min(1.0)
    am = (a * m).sum(1, keepdim=True) / n[:, None]
    bm = (b * m).sum(1, keepdim=True) / n[:, None]
    da, db = (a - am) * m, (b - bm) * m
    cov = (da * db).sum(1)
    den = torch.sqrt((da * da).sum(1) * (db * db).sum(1) + 1e-8)
    r = cov / den
    ok = (m.sum(1) >= 3) & ((db * db).sum(1) > 1e-6)
    return torch.where(ok, r, torch.ones_like(r))


# ----------------------------------------------------------------------------------------------------
# baselines


def _context(x: np.ndarray, k: int) -> np.ndarray:
    """(T, D) -> (T, (2k+1) D): frames t-k..t+k (edges repeated)."""
    x = x.reshape(x.shape[0], -1)
    n = x.shape[0]
    p = np.concatenate([np.repeat(x[:1], k, 0), x, np.repeat(x[-1:], k, 0)])
    return np.concatenate([p[i:i + n] for i in range(2 * k + 1)], axis=1)


class _Ridge:
    def __init__(self, lam: float):
        self.lam = lam

    def fit(self, X: np.ndarray, y: np.ndarray):
        X = X.astype(np.float64)
        self.mu, self.sd = X.mean(0), X.std(0) + 1e-6
        Xn = (X - self.mu) / self.sd
        self.ym = float(y.mean())
        self.w = np.linalg.solve(Xn.T @ Xn + self.lam * np.eye(X.shape[1]), Xn.T @ (y - self.ym))
        return self

    def __call__(self, X: np.ndarray) -> np.ndarray:
        return (((X - self.mu) / self.sd) @ self.w + self.ym).astype(np.float32)


class LoudnessBaseline:
    """Ridge regression of the lip ratio on the loudness envelope alone: RMS dB per frame relative to the
    clip's 95th percentile (floored at -60 dB), +-``context`` frames."""

    def __init__(self, context: int = BASELINE_CONTEXT, lam: float = 1.0):
        self.context = context
        self.model = _Ridge(lam)

    def _x(self, clip) -> np.ndarray:
        db = np.maximum(clip.rms_db - np.percentile(clip.rms_db, 95), -60.0)
        return _context(db[:, None], self.context)

    def fit(self, clips) -> LoudnessBaseline:
        self.model.fit(np.concatenate([self._x(c)[c.valid] for c in clips]),
                       np.concatenate([c.lip[c.valid] for c in clips]))
        return self

    def predict(self, clip) -> np.ndarray:
        return self.model(self._x(clip))


class RidgeProbe:
    """Linear probe: ridge regression on Whisper features (token pairs averaged), +-``context`` frames."""

    def __init__(self, context: int = PROBE_CONTEXT, lam: float = 1e4):
        self.context = context
        self.model = _Ridge(lam)

    def _x(self, clip) -> np.ndarray:
        f, n = clip.features, clip.n_frames
        if f.shape[0] < 2 * n:
            f = np.concatenate([f, np.repeat(f[-1:], 2 * n - f.shape[0], 0)])
        return _context(f[:2 * n].reshape(n, 2, -1).mean(1), self.context)

    def fit(self, clips) -> RidgeProbe:
        self.model.fit(np.concatenate([self._x(c)[c.valid] for c in clips]),
                       np.concatenate([c.lip[c.valid] for c in clips]))
        return self

    def predict(self, clip) -> np.ndarray:
        return self.model(self._x(clip))


# ----------------------------------------------------------------------------------------------------
# metrics


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two 1-D arrays (0 when one is constant)."""
    a = np.asarray(a, np.float64) - np.mean(a)
    b = np.asarray(b, np.float64) - np.mean(b)
    d = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / d) if d > 0 else 0.0


def _lagged_r(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray, lag: int) -> float:
    """r(pred[t], gt[t + lag]) over valid frames."""
    n = pred.shape[0]
    if lag >= 0:
        p, g, v = pred[:n - lag], gt[lag:], valid[lag:]
    else:
        p, g, v = pred[-lag:], gt[:n + lag], valid[:n + lag]
    return pearson(p[v], g[v]) if v.sum() >= 3 else float("nan")


def evaluate(model, test_clips, baseline: LoudnessBaseline | None = None, probe: RidgeProbe | None = None) -> dict:
    """Held-out metrics (see the module docstring). Returns a JSON-serialisable dict.

    ``*_model`` figures are the network alone (:meth:`LipSync.predict` from the features); ``*_gated`` ones add
    the energy gate that ``predict_from_audio`` applies (mouth closed in silences > 200 ms).
    """
    per_clip = []
    lag_r = {lag: [] for lag in range(-MAX_LAG, MAX_LAG + 1)}
    sil_frames = sil_closed = sil_closed_gated = sil_gt_closed = 0
    for c in test_clips:
        v = c.valid
        if v.sum() < 3:
            continue
        sil = silence_mask(c.rms_db)
        pred = model.predict(c.features, c.n_frames)
        gated = model.predict(c.features, c.n_frames, silence=sil)
        row = {"clip": c.name, "speaker": c.speaker, "frames": int(v.sum()),
               "r_model": round(pearson(pred.lip_open[v], c.lip[v]), 4),
               "r_model_raw": round(pearson(pred.lip_open_raw[v], c.lip[v]), 4),
               "r_gated": round(pearson(gated.lip_open[v], c.lip[v]), 4)}
        if baseline is not None:
            row["r_loudness"] = round(pearson(baseline.predict(c)[v], c.lip[v]), 4)
        if probe is not None:
            row["r_probe"] = round(pearson(probe.predict(c)[v], c.lip[v]), 4)
        row["silence_frames"] = int(sil.sum())
        if sil.any():
            row["closed_in_silence"] = round(float(pred.closed[sil].mean()), 4)
            sil_frames += int(sil.sum())
            sil_closed += int(pred.closed[sil].sum())
            # as speak renders it: the mouth at the closed level (not only flagged "closed")
            sil_closed_gated += int((gated.closed[sil] & (gated.lip_open[sil] <= model.config.closed_level + 1e-6)
                                     ).sum())
            sil_gt_closed += int((c.lip[sil & v] < 0.03).sum())
        for lag in lag_r:
            lag_r[lag].append(_lagged_r(pred.lip_open, c.lip, v, lag))
        per_clip.append(row)
    mean_lag = {lag: float(np.nanmean(rs)) for lag, rs in lag_r.items()}
    best_lag = max(mean_lag, key=lambda k: mean_lag[k])

    def mean(key):
        return round(float(np.mean([r[key] for r in per_clip])), 4)

    out = {
        "clips": len(per_clip),
        "speakers": len({r["speaker"] for r in per_clip}),
        "mean_r_model": mean("r_model"),
        "mean_r_model_raw": mean("r_model_raw"),
        "mean_r_gated": mean("r_gated"),
        "closed_rate_in_silence": round(sil_closed / sil_frames, 4) if sil_frames else None,
        "closed_rate_in_silence_gated": round(sil_closed_gated / sil_frames, 4) if sil_frames else None,
        "measured_closed_rate_in_silence": round(sil_gt_closed / sil_frames, 4) if sil_frames else None,
        "silence_frames": sil_frames,
        "best_lag_frames": int(best_lag),
        "mean_r_by_lag": {str(k): round(v, 4) for k, v in mean_lag.items()},
        "per_clip": per_clip,
    }
    if baseline is not None:
        out["mean_r_loudness"] = mean("r_loudness")
    if probe is not None:
        out["mean_r_probe"] = mean("r_probe")
    return out


# ----------------------------------------------------------------------------------------------------
# the whole run: data, training, evaluation, weights, model card, metrics


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def results_markdown(metrics: dict, command: str = COMMAND) -> str:
    """The ``benchmarks/RESULTS.md`` section for a run (between markers, so a rerun replaces it)."""
    h = metrics["heldout"]
    lines = [
        MD_BEGIN,
        "## Lip sync (speech -> lip-open ratio), held-out speakers",
        "",
        f"Command: `{command}` (seed {metrics['seed']}, {metrics['train_seconds']:.0f} s of training on "
        f"{metrics['machine']}).",
        "",
        f"Data: {metrics['data']['clips']} real talking clips ({metrics['data']['speakers']} speakers); "
        f"trained on {metrics['data']['train_clips']} clips / {metrics['data']['train_speakers']} speakers, "
        f"evaluated on {h['clips']} clips of {h['speakers']} other speakers (`HELD_OUT_SPEAKERS`). Ground truth: "
        "dlib 68-point lip-open ratio calibrated to LivePortrait's definition, 25 fps. All rows are fitted on the "
        "same training clips and scored on the same held-out frames.",
        "",
        "| predictor | mean per-clip Pearson r |",
        "|---|---|",
        f"| lip-sync model (shipped weights) | **{_fmt(h['mean_r_model'])}** |",
        f"| lip-sync model + mouth closed in silences > 200 ms (what `speak` uses) | {_fmt(h['mean_r_gated'])} |",
        f"| linear probe on the same Whisper features (ridge, +-{PROBE_CONTEXT} frames, raw ratio) | "
        f"{_fmt(h.get('mean_r_probe'))} |",
        f"| loudness baseline (ridge on RMS dB, +-{BASELINE_CONTEXT} frames) | {_fmt(h.get('mean_r_loudness'))} |",
        "",
        f"- Mouth closed during silences > 200 ms (energy VAD, {h['silence_frames']} held-out frames): "
        f"**{_fmt(h['closed_rate_in_silence_gated'])}** as `speak` renders it; the network's own closed-mouth "
        f"head alone says closed in {_fmt(h['closed_rate_in_silence'])} of them (the measured mouths were "
        f"closed, ratio < 0.03, in {_fmt(h['measured_closed_rate_in_silence'])}).",
        f"- Lag of peak correlation: **{h['best_lag_frames']:+d} frames** (mean r by lag -5..5: "
        + ", ".join(f"{v:.3f}" for v in h["mean_r_by_lag"].values()) + ").",
        f"- Model design chosen by 4-fold speaker-disjoint cross-validation within the training speakers "
        f"(mean r {_fmt(metrics.get('cv', {}).get('mean_r_model'))}); the held-out speakers were not used for "
        "any choice.",
        "",
        "| held-out clip | frames | r model | r probe | r loudness |",
        "|---|---|---|---|---|",
    ]
    for r in h["per_clip"]:
        lines.append(f"| {r['clip']} | {r['frames']} | {r['r_model']:.3f} | {_fmt(r.get('r_probe'))} | "
                     f"{_fmt(r.get('r_loudness'))} |")
    lines += ["", MD_END, ""]
    return "\n".join(lines)


MD_BEGIN = "<!-- lipsync-results:begin -->"
MD_END = "<!-- lipsync-results:end -->"


def update_results_file(path: str | os.PathLike, section: str) -> Path:
    """Replace this trainer's section of ``path`` (between its markers), or append it; other sections stay."""
    path = Path(path)
    text = path.read_text(encoding="utf-8") if path.is_file() else "# Benchmark results\n\n"
    if MD_BEGIN in text and MD_END in text:
        a = text.index(MD_BEGIN)
        b = text.index(MD_END) + len(MD_END)
        text = text[:a] + section.rstrip("\n") + text[b:]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def model_card(metrics: dict, model_config, train_config: TrainConfig, n_params: int, size_bytes: int) -> str:
    h = metrics["heldout"]
    d = metrics["data"]
    mc = model_config
    cv = metrics.get("cv") or {}
    cv_line = (f"{cv['folds']}-fold speaker-disjoint cross-validation within the training speakers gave mean r "
               f"{_fmt(cv['mean_r_model'])} (linear probe {_fmt(cv['mean_r_probe'])})." if cv else
               "Run with `--cv 4` to add the cross-validation figures.")
    blend = (f"`lip_open = raw * (1 - p_closed) + {mc.closed_level:.3f} * p_closed`" if mc.blend else
             "`lip_open = raw`; `speak` sets it to the closed level in silences longer than 200 ms (energy VAD)")
    return f"""# Lip-sync model card (`lipsync.safetensors`)

Predicts, from speech, how open the mouth is in each 25 fps video frame: LivePortrait's lip-open ratio
(inner-lip gap at the mouth's middle / mouth-corner distance) on the scale its lip retargeting network
expects, plus the probability that the mouth is closed. Used by `audio2lp speak` when no motion model is
given. Code: `audio2lp/lipsync.py`; training: `training/lipsync_train.py`.

## Inputs and outputs
- Input: Whisper **{mc.whisper_model}** encoder features, `layers={mc.whisper_layers!r}` (the residual stream after
  block {mc.whisper_layers} of 4), 50 Hz, {mc.in_dim} dims; the two tokens of each frame are averaged.
- Output per frame: lip ratio (closed ~{mc.closed_level:.3f}, speech typically 0.05-0.3; `lip_scale` =
  {mc.lip_scale:.3f} is the median over training clips of a speaker's 95th percentile) and the closed-mouth
  probability; {blend}.
- Network: a linear 1-D convolution over +-{mc.linear_context} frames reads a lip ratio and a closed-mouth score
  from the normalised features (fitted in closed form, ridge lambda {train_config.ridge_lambda:g}); then
  {len(mc.dilations)} residual blocks of dilated 1-D convolutions ({mc.channels} channels, kernel {mc.kernel},
  dilations {list(mc.dilations)}) on those two signals correct the ratio and give the closed-mouth logit.
  Receptive field +-{mc.receptive_field} frames (+-{mc.receptive_field * 40} ms, non-causal). {n_params:,}
  parameters, {size_bytes / 1e6:.2f} MB.

## Data
{d['clips']} real talking-face clips with their own speech ({d['seconds']:.0f} s, {d['speakers']} speakers) from
`$AUDIO2LP_TEST_DATA/talking` (public GitHub repositories: GRID, VoxCeleb2, HDTF, MEAD and interview clips; see
that folder's MANIFEST.tsv; the data is not redistributed here). Per frame: dlib HOG + 68-point landmarks
(detection every 5 frames, verified tracking in between), lip ratio calibrated to LivePortrait's 203-point
definition, resampled to 25 fps. Targets are divided by each clip's 95th percentile; training clips whose
audio-video offset (found with a cross-validated linear probe) differs from the median by 2+ frames are
re-aligned ({', '.join(f'{k} {v:+d}' for k, v in metrics['offsets'].items() if v) or 'none'}). Every clip is
also seen with 1 s of digital silence before and after (mouth closed).

## Split
By speaker (clips of one person never straddle the split; the two Obama clips and the two Fei-Fei Li clips
count as one speaker each). Held out: {h['speakers']} speakers / {h['clips']} clips / {d['test_seconds']:.0f} s
(every speaker at positions 0 and 3 mod 4 of the sorted speaker ids: `HELD_OUT_SPEAKERS` in
`training/lipsync_train.py`). Training: {d['train_speakers']} speakers / {d['train_clips']} clips /
{d['train_seconds']:.0f} s. Nothing was tuned on the held-out speakers: the design (a linear read-out of
Whisper block 2 with +-2 frames, ridge lambda, convolutions on top, no blending) was chosen by cross-validation
within the training speakers. {cv_line}

## Metrics (held-out speakers)
| predictor | mean per-clip Pearson r |
|---|---|
| this model | **{_fmt(h['mean_r_model'])}** |
| this model + mouth closed in silences > 200 ms (what `speak` uses) | {_fmt(h['mean_r_gated'])} |
| linear probe, same features (ridge, +-{PROBE_CONTEXT} frames, raw ratio) | {_fmt(h.get('mean_r_probe'))} |
| loudness envelope baseline (ridge on RMS dB, +-{BASELINE_CONTEXT} frames) | {_fmt(h.get('mean_r_loudness'))} |

- Mouth closed in silences > 200 ms (energy VAD: 30 dB under the clip's 95th percentile frame RMS or under
  -60 dBFS), {h['silence_frames']} frames: {_fmt(h['closed_rate_in_silence_gated'])} as `speak` renders it;
  {_fmt(h['closed_rate_in_silence'])} from the network's closed-mouth head alone.
- Lag of peak correlation (search -5..5 frames): {h['best_lag_frames']:+d}.
- Per-clip figures: `lipsync_metrics.json`.

## Training
Seed {train_config.seed}: the linear read-out in closed form, then {train_config.steps} AdamW steps for the
convolutions (batch {train_config.batch} crops of {train_config.crop} frames, lr {train_config.lr}, one-cycle),
loss = MSE + {train_config.w_corr} x (1 - Pearson r) + {train_config.w_bce} x BCE(closed), CPU, one thread,
{metrics['train_seconds']:.0f} s.

Reproduce (needs the data folder; ~{metrics['total_seconds'] / 60:.0f} min on 2 CPU cores with an empty cache):

    {metrics['command']}

## Limitations
Small data (about {d['seconds'] / 60:.0f} minutes of speech, mostly English): expect plausible, not
phoneme-exact, mouth motion. The ratio scale comes from dlib landmarks calibrated geometrically to
LivePortrait's definition, not from LivePortrait's own landmark model. Real speakers often leave the mouth
slightly open in pauses; `speak` closes it there by design.
"""


def run(
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    model_config=None,
    train_config: TrainConfig | None = None,
    held_out: Sequence[str] = HELD_OUT_SPEAKERS,
    results_path: str | os.PathLike | None = None,
    cv_folds: int = 0,
    command: str = COMMAND,
    progress: bool = True,
) -> dict:
    """Build the data, train, evaluate, and write ``lipsync.safetensors``, ``LIPSYNC_MODEL_CARD.md`` and
    ``lipsync_metrics.json`` to ``out_dir`` (and this run's section of ``results_path``). Returns the metrics.

    ``cv_folds`` > 1 also reports speaker-disjoint cross-validation within the training speakers (the figure
    design choices are made on; the held-out speakers never are). ``command`` is recorded as the one that
    reproduces the run."""
    import torch

    from audio2lp.lipsync import save_lipsync_model
    from training.lipsync_data import build_dataset

    t_start = time.time()
    mc = model_config or DEFAULT_MODEL_CONFIG
    tc = train_config or DEFAULT_TRAIN_CONFIG
    clips = build_dataset(data_dir, whisper_model=mc.whisper_model, layers=mc.whisper_layers, cache_dir=cache_dir,
                          padded=True, progress=progress)
    train, test = split_clips(clips, held_out)
    if not train or not test:
        raise InputError(f"the speaker split of {data_dir} left {len(train)} training and {len(test)} held-out "
                         f"clips; pass the folder of talking videos the held-out speakers come from.")
    offsets = estimate_offsets(train)
    train_aligned = [shift_targets(c, offsets.get(c.name, 0)) for c in train]
    t0 = time.time()
    model, history = train_lipsync(train_aligned, mc, tc, progress=progress)
    train_seconds = time.time() - t0
    baseline = LoudnessBaseline().fit(train_aligned)
    probe = RidgeProbe().fit(train_aligned)
    heldout = evaluate(model, test, baseline, probe)
    cv = cross_validate(train_aligned, mc, tc, cv_folds, progress=progress) if cv_folds > 1 else None
    metrics = {
        "seed": tc.seed,
        "command": command,
        "cv": cv,
        "machine": f"{os.cpu_count()} CPU cores ({platform.machine()}), torch {torch.__version__}",
        "train_seconds": round(train_seconds, 1),
        "final_train_loss": round(float(np.mean(history[-50:])), 4),
        "data": {
            "clips": len(clips), "speakers": len({c.speaker for c in clips}),
            "seconds": round(sum(c.audio_seconds for c in clips), 1),
            "train_clips": len(train), "train_speakers": len({c.speaker for c in train}),
            "train_seconds": round(sum(c.audio_seconds for c in train), 1),
            "test_seconds": round(sum(c.audio_seconds for c in test), 1),
            "train_clip_names": [c.name for c in train], "heldout_clip_names": [c.name for c in test],
        },
        "offsets": {k: int(v) for k, v in sorted(offsets.items())},
        "model_config": model.config.to_dict(),
        "train_config": dataclasses.asdict(tc),
        "heldout": heldout,
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    extra = {k: metrics[k] for k in ("seed", "command", "train_config")}
    extra["heldout"] = {k: v for k, v in heldout.items() if k != "per_clip"}
    weights = save_lipsync_model(out / "lipsync.safetensors", model, extra)
    metrics["total_seconds"] = round(time.time() - t_start, 1)
    n_params = sum(p.numel() for p in model.parameters())
    _write_text(out / "LIPSYNC_MODEL_CARD.md", model_card(metrics, model.config, tc, n_params, weights.stat().st_size))
    _write_text(out / "lipsync_metrics.json", json.dumps(metrics, indent=1) + "\n")
    if results_path is not None:
        update_results_file(results_path, results_markdown(metrics))
    logger.info("held-out mean r: model %.3f, probe %.3f, loudness %.3f", heldout["mean_r_model"],
                heldout["mean_r_probe"], heldout["mean_r_loudness"])
    return metrics


def cross_validate(train_clips, model_config, train_config: TrainConfig, folds: int = 4, *,
                   progress: bool = False) -> dict:
    """Speaker-disjoint ``folds``-fold cross-validation within ``train_clips``: mean per-clip r of the model
    and of the linear probe on each fold's held-out speakers (speakers dealt to folds in sorted order)."""
    speakers = sorted({c.speaker for c in train_clips})
    rows = []
    for k in range(folds):
        held = set(speakers[k::folds])
        fit = [c for c in train_clips if c.speaker not in held]
        val = [c for c in train_clips if c.speaker in held]
        if not fit or not val:
            continue
        model, _ = train_lipsync(fit, model_config, train_config, progress=progress)
        h = evaluate(model, val, None, RidgeProbe().fit(fit))
        rows.append((h["mean_r_model"], h["mean_r_probe"]))
    if not rows:
        raise InputError(f"cross-validation needs at least {folds} training speakers.")
    return {"folds": len(rows), "mean_r_model": round(float(np.mean([r[0] for r in rows])), 4),
            "mean_r_probe": round(float(np.mean([r[1] for r in rows])), 4),
            "per_fold": [{"r_model": a, "r_probe": b} for a, b in rows]}


def _command_line(a) -> str:
    """The command that reproduces a run (data folder written as $AUDIO2LP_TEST_DATA/talking when it is that)."""
    data = str(a.data)
    shared = Path(os.environ.get("AUDIO2LP_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    with contextlib.suppress(OSError):
        if Path(a.data).resolve() == (shared / "talking").resolve():
            data = "$AUDIO2LP_TEST_DATA/talking"
    parts = ["python -m training.lipsync_train", "--data", data, "--out", str(a.out)]
    if a.seed != DEFAULT_TRAIN_CONFIG.seed:
        parts += ["--seed", str(a.seed)]
    if a.steps != DEFAULT_TRAIN_CONFIG.steps:
        parts += ["--steps", str(a.steps)]
    if a.held_out is not None:
        parts += ["--held-out", a.held_out]
    if a.cv:
        parts += ["--cv", str(a.cv)]
    return " ".join(parts)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.lipsync_train",
                                description="Train the speech-to-mouth model on real talking videos and measure it "
                                            "on held-out speakers.")
    p.add_argument("--data", required=True, help="folder of talking videos ($AUDIO2LP_TEST_DATA/talking)")
    p.add_argument("--out", default="audio2lp/assets", help="where to write lipsync.safetensors, the model card and "
                                                           "the metrics (default audio2lp/assets)")
    p.add_argument("--cache", default=None, help="dataset cache folder, outside the repository (default "
                                                 "~/.cache/audio2lp/lipsync-data)")
    p.add_argument("--results", default="benchmarks/RESULTS.md",
                   help="Markdown file whose lip-sync section is replaced (or appended); '' to skip")
    p.add_argument("--seed", type=int, default=DEFAULT_TRAIN_CONFIG.seed)
    p.add_argument("--steps", type=int, default=DEFAULT_TRAIN_CONFIG.steps)
    p.add_argument("--held-out", metavar="SPEAKERS",
                   help="comma-separated speaker ids to hold out (default: HELD_OUT_SPEAKERS, for the shared clips)")
    p.add_argument("--cv", type=int, default=0, metavar="FOLDS",
                   help="also cross-validate within the training speakers (e.g. 4; a few more minutes)")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    tc = dataclasses.replace(DEFAULT_TRAIN_CONFIG, seed=a.seed, steps=a.steps)
    try:
        held = HELD_OUT_SPEAKERS if a.held_out is None else tuple(x.strip() for x in a.held_out.split(",")
                                                                      if x.strip())
        m = run(a.data, a.out, cache_dir=a.cache, train_config=tc, held_out=held, results_path=a.results or None,
                cv_folds=a.cv, command=_command_line(a), progress=not a.no_progress)
    except InputError as e:
        print(f"error: {e}")
        return 2
    h = m["heldout"]
    print(f"held-out speakers: {h['speakers']} ({h['clips']} clips)")
    print(f"mean per-clip r: model {h['mean_r_model']:.3f} | linear probe {h['mean_r_probe']:.3f} | "
          f"loudness baseline {h['mean_r_loudness']:.3f}")
    print(f"mouth closed in silences > 200 ms: {h['closed_rate_in_silence_gated']} as speak renders it "
          f"({h['closed_rate_in_silence']} from the network alone); peak-correlation lag: {h['best_lag_frames']:+d} "
          f"frames")
    print(f"wrote {a.out}/lipsync.safetensors, LIPSYNC_MODEL_CARD.md, lipsync_metrics.json "
          f"in {m['total_seconds']:.0f} s")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
