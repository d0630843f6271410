"""Train the speech-to-mouth model (:mod:`audio2lp.models.lipsync`) on real talking videos and measure it.

One command builds the dataset (cached outside the repository), trains on CPU with a fixed seed, evaluates
on held-out speakers and writes the shipped weights, the model card and the metrics::

    audio2lp-train lipsync --data $AUDIO2LP_TEST_DATA/talking --out audio2lp/assets --cv 4

Split: by speaker (:func:`training.lipsync.data.speaker_of`). The held-out speakers are the fixed list
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

Metrics on the held-out speakers: :mod:`training.lipsync.evaluate`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from audio2lp.models.lipsync import silence_mask
from lp_renderer.errors import InputError
from training.common import best_lag, split_by_speaker, write_text_atomic
from training.lipsync.evaluate import (
    LoudnessBaseline,
    RidgeProbe,
    _context,
    evaluate,
    model_card,
    results_markdown,
    update_results_file,
)

logger = logging.getLogger(__name__)

__all__ = [
    "HELD_OUT_SPEAKERS",
    "LipSyncTrainConfig",
    "silence_mask",
    "shift_targets",
    "estimate_offsets",
    "train_lipsync",
    "fit_linear_branch",
    "cross_validate",
    "evaluate_shipped",
    "run",
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
COMMAND = "audio2lp-train lipsync --data $AUDIO2LP_TEST_DATA/talking --out audio2lp/assets --cv 4"


@dataclass(frozen=True)
class LipSyncTrainConfig:
    """Optimisation settings (the architecture is :class:`audio2lp.models.lipsync.LipSyncConfig`)."""

    steps: int = 1500
    batch: int = 16
    crop: int = 64  # frames per training crop
    lr: float = 2e-3
    weight_decay: float = 1e-2
    w_corr: float = 0.5
    w_bce: float = 0.3
    feature_noise: float = 0.1  # Gaussian noise on the normalised features
    ridge_lambda: float = 1e4  # L2 penalty of the closed-form fit of the linear branch
    seed: int = 0


def _default_model_config():
    from audio2lp.models.lipsync import LipSyncConfig

    return LipSyncConfig(whisper_model="tiny.en", whisper_layers=2)  # the other defaults: see LipSyncConfig


DEFAULT_TRAIN_CONFIG = LipSyncTrainConfig()
DEFAULT_MODEL_CONFIG = _default_model_config()


# ----------------------------------------------------------------------------------------------------
# labels and split


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
                best[c.name] = best_lag(p, c.lip, c.valid, max_lag)[0]
    if not best:
        return {}
    median = int(np.median(list(best.values())))
    return {name: (lag - median if abs(lag - median) >= min_shift else 0) for name, lag in best.items()}


def _clip_scale(clip) -> float:
    v = clip.lip[clip.valid]
    return float(np.percentile(v, 95)) if v.size else float("nan")


# ----------------------------------------------------------------------------------------------------
# training


def _training_arrays(clip, pad_frames: int):
    """Padded features and per-frame targets of one clip.

    Returns ``(features (T50 + 4 pad, D), normalised lip (T + 2 pad,), lip mask, closed label, T)``: the lip target
    is the measured ratio over the clip's 95th percentile, the closed label the VAD silences and the padding.
    """
    scale = _clip_scale(clip)
    n = clip.n_frames
    lip = np.where(clip.valid, clip.lip / max(scale, 1e-3), 0.0).astype(np.float32)
    mask = clip.valid.astype(np.float32)
    closed = silence_mask(clip.rms_db).astype(np.float32)
    ones, z = np.ones(pad_frames, np.float32), np.zeros(pad_frames, np.float32)
    return (clip.features_padded, np.concatenate([z, lip, z]), np.concatenate([z, mask, z]),
            np.concatenate([ones, closed, ones]), n)


def train_lipsync(train_clips, model_config=None, config: LipSyncTrainConfig | None = None, *, progress: bool = True):
    """Train a :class:`audio2lp.models.lipsync.LipSync` on clips with ``features_padded`` (see
    :func:`training.lipsync.data.prepare_clip`). Deterministic for a given seed (one CPU thread)."""
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    from audio2lp.models.lipsync import LipSync, LipSyncConfig
    from audio2lp.models.threads import torch_threads
    from training.lipsync.data import PAD_SECONDS

    cfg = config or LipSyncTrainConfig()
    clips = [c for c in train_clips if c.valid.any()]
    if not clips or any(c.features_padded is None for c in clips):
        raise InputError("training needs clips with padded Whisper features; build them with padded=True.")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    with torch_threads(1):
        pad = round(PAD_SECONDS * 25)
        feats_all = np.concatenate([c.features for c in clips])
        scales = np.array([_clip_scale(c) for c in clips])
        lips = np.concatenate([c.lip[c.valid] for c in clips])
        closed_level = round(float(np.median(lips[lips < np.percentile(lips, 10)])), 4)
        lip_scale = float(np.median(scales))
        mc = model_config or LipSyncConfig()
        mc = dataclasses.replace(mc, in_dim=feats_all.shape[1], lip_scale=lip_scale, closed_level=closed_level)
        data = [_training_arrays(c, pad) for c in clips]
        model = LipSync(mc)
        model.set_feature_stats(feats_all.mean(0), feats_all.std(0))
        fit_linear_branch(model, data, cfg.ridge_lambda)
        model.linear.requires_grad_(False)  # the closed-form fit stays
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
            fb, yb, mb, cb = [], [], [], []
            for i in idx:
                f, y, m, c, _ = data[i]
                t = y.shape[0]
                rng.random()  # drawn as in the run that made the shipped weights (same crops, same model)
                s = int(rng.integers(0, max(1, t - L + 1)))  # a crop that may include the digital-silence padding
                e = min(t, s + L)
                sl = slice(s, e)
                ff = f[2 * s: 2 * e]
                if ff.shape[0] < 2 * (e - s):
                    ff = np.concatenate([ff, np.repeat(ff[-1:], 2 * (e - s) - ff.shape[0], 0)])
                yy, mm, cc = y[sl], m[sl], c[sl]
                if e - s < L:  # short clip: pad with the mask off
                    k = L - (e - s)
                    ff = np.concatenate([ff, np.repeat(ff[-1:], 2 * k, 0)])
                    yy, cc = (np.concatenate([v, np.repeat(v[-1:], k)]) for v in (yy, cc))
                    mm = np.concatenate([mm, np.zeros(k, np.float32)])
                fb.append(ff)
                yb.append(yy)
                mb.append(mm)
                cb.append(cc)
            feats = torch.from_numpy(np.stack(fb))
            if cfg.feature_noise > 0:
                feats = feats + cfg.feature_noise * model.feat_std * torch.randn_like(feats)
            y, m, c = (torch.from_numpy(np.stack(v)) for v in (yb, mb, cb))
            lip, logit = model(feats, L)  # (B, L) each
            msum = m.sum().clamp_min(1.0)
            loss = ((lip - y) ** 2 * m).sum() / msum
            if cfg.w_corr > 0:
                loss = loss + cfg.w_corr * (1 - _masked_pearson(lip, y, m)).mean()
            if cfg.w_bce > 0:
                loss = loss + cfg.w_bce * F.binary_cross_entropy_with_logits(logit, c)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            history.append(loss.item())
            if step % 50 == 0:
                bar.set_postfix(loss=f"{np.mean(history[-50:]):.3f}")
        bar.close()
    model.eval()
    return model, history


def fit_linear_branch(model, data, lam: float) -> None:
    """Closed-form ridge fit of ``model.linear``, the linear branch of :class:`audio2lp.models.lipsync.LipSync`.

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
    for feats, lip, mask, cl, _ in data:
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
# the whole run: data, training, evaluation, weights, model card, metrics


def run(
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    model_config=None,
    train_config: LipSyncTrainConfig | None = None,
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

    from audio2lp.models.lipsync import save_lipsync_model

    t_start = time.time()
    mc = model_config or DEFAULT_MODEL_CONFIG
    tc = train_config or DEFAULT_TRAIN_CONFIG
    clips, train, train_aligned, test, offsets = _split_and_align(data_dir, mc, cache_dir, held_out, progress)
    t0 = time.time()
    model, history = train_lipsync(train_aligned, mc, tc, progress=progress)
    train_seconds = time.time() - t0
    heldout = _evaluate_with_baselines(model, train_aligned, test)
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
    card = model_card(metrics, model.config, tc, n_params, weights.stat().st_size)
    write_text_atomic(out / "LIPSYNC_MODEL_CARD.md", card)
    write_text_atomic(out / "lipsync_metrics.json", json.dumps(metrics, indent=1) + "\n")
    if results_path is not None:
        update_results_file(results_path, results_markdown(metrics, command))
    logger.info("held-out mean r: model %.3f, probe %.3f, loudness %.3f", heldout["mean_r_model"],
                heldout["mean_r_probe"], heldout["mean_r_loudness"])
    return metrics


def _split_and_align(data_dir, mc, cache_dir, held_out, progress, train_names=None):
    """``(all clips, train, train re-aligned by estimate_offsets, held-out, offsets)`` of the clips in
    ``data_dir`` (the data cache built when empty), split by speaker; ``train_names``: only these training clips
    (all must be there)."""
    from training.lipsync.data import build_dataset

    clips = build_dataset(data_dir, whisper_model=mc.whisper_model, layers=mc.whisper_layers, cache_dir=cache_dir,
                          padded=True, progress=progress)
    train, test = split_by_speaker(clips, held_out)
    if train_names is not None:
        missing = sorted(set(train_names) - {c.name for c in train})
        if missing:
            raise InputError(f"{data_dir} lacks the training clips {', '.join(missing)}; pass the folder the model "
                             f"was trained on.")
        train = [c for c in train if c.name in set(train_names)]
    if not train or not test:
        raise InputError(f"the speaker split of {data_dir} left {len(train)} training and {len(test)} held-out "
                         f"clips; pass the folder of talking videos the held-out speakers come from.")
    offsets = estimate_offsets(train)
    train_aligned = [shift_targets(c, offsets.get(c.name, 0)) for c in train]
    return clips, train, train_aligned, test, offsets


def _evaluate_with_baselines(model, train_aligned, test) -> dict:
    """:func:`evaluate` on ``test`` with the loudness baseline and the linear probe fitted on ``train_aligned``."""
    return evaluate(model, test, LoudnessBaseline().fit(train_aligned), RidgeProbe().fit(train_aligned))


def evaluate_shipped(data_dir: str | os.PathLike, model_path: str | os.PathLike | None = None, *,
                     cache_dir: str | os.PathLike | None = None, held_out: Sequence[str] = HELD_OUT_SPEAKERS,
                     train_names: Sequence[str] | None = None, progress: bool = False) -> dict:
    """The held-out figures of a trained model (default: the shipped weights) recomputed from ``data_dir``,
    exactly as :func:`run` measured them (same split, training targets re-aligned by :func:`estimate_offsets`,
    baselines fitted on the training speakers; ``train_names``: only these training clips, e.g. the keys of the
    metrics' ``offsets``, when the folder has grown since), without training. Returns
    ``{"heldout": ..., "offsets": ...}`` to compare with ``lipsync_metrics.json``. Builds the data cache when it
    is empty (minutes)."""
    from audio2lp.models.lipsync import load_lipsync_model

    model = load_lipsync_model(model_path)
    mc = model.config
    _, _, train_aligned, test, offsets = _split_and_align(data_dir, mc, cache_dir, held_out, progress, train_names)
    return {"heldout": _evaluate_with_baselines(model, train_aligned, test),
            "offsets": {k: int(v) for k, v in sorted(offsets.items())}}


def cross_validate(train_clips, model_config, train_config: LipSyncTrainConfig, folds: int = 4, *,
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


def command_line(a) -> str:
    """The command that reproduces a run (data folder written as $AUDIO2LP_TEST_DATA/talking when it is that)."""
    data = str(a.data)
    shared = Path(os.environ.get("AUDIO2LP_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    with contextlib.suppress(OSError):
        if Path(a.data).resolve() == (shared / "talking").resolve():
            data = "$AUDIO2LP_TEST_DATA/talking"
    parts = ["audio2lp-train lipsync", "--data", data, "--out", str(a.out)]
    if a.seed != DEFAULT_TRAIN_CONFIG.seed:
        parts += ["--seed", str(a.seed)]
    if a.steps != DEFAULT_TRAIN_CONFIG.steps:
        parts += ["--steps", str(a.steps)]
    if a.held_out is not None:
        parts += ["--held-out", a.held_out]
    if a.cv:
        parts += ["--cv", str(a.cv)]
    return " ".join(parts)
