"""Train the default motion model (:mod:`audio2lp.models.landmark_motion`) on the talking clips and measure it: the
one command ``audio2lp-train default-motion --data DATA -o OUT`` (:func:`run`).

Steps, from an empty cache with no hand steps:

1. measure every clip (:mod:`training.landmarks.measure`, 2 processes) and encode its audio with the model's
   streaming Whisper encoder (1 s of digital silence before and after) and with today's lip-sync model's encoder;
2. split by speaker (:func:`training.landmarks.dataset.held_out_speakers`) and shift the training clips' motion by
   their audio offset (the lip-sync trainer's estimator);
3. fit the lip read-out in closed form (:func:`fit_readout`: ridge on the normalised features of frames ``t -
   past .. t + ahead``; outputs: the normalised lip, with the training speakers' median pause lip as the target in
   the padding; a silence score; a "closed" score = measured lip below 0.03);
4. choose the lip blend weight and the pause closure by speaker-disjoint cross-validation on the training
   speakers (:func:`training.landmarks.fit.choose_lip_blend`, on out-of-fold read-outs);
5. train the transformer with teacher forcing on random crops: Gaussian negative log-likelihood of the eye and head
   channels, noise on the fed-back frames and on the features (:func:`train_transformer`);
6. fit the blink process and the AR(2) head process (:mod:`training.landmarks.fit`);
7. save the weights, evaluate on the held-out speakers (:mod:`training.landmarks.evaluate`, reported once) and write
   the model card and the figures (:mod:`training.landmarks.card`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lp_renderer.errors import InputError
from training.common import split_by_speaker, write_text_atomic
from training.landmarks import dataset as ds
from training.landmarks import fit
from training.landmarks import metrics as mm

logger = logging.getLogger(__name__)

__all__ = ["COMMAND", "DefaultMotionTrainConfig", "fit_readout", "readout_of", "run", "train_model",
           "train_transformer"]

COMMAND = "audio2lp-train default-motion --data $AUDIO2LP_TEST_DATA/talking -o audio2lp/models/data"
WEIGHTS_NAME = "landmark_motion.safetensors"
CARD_NAME = "LANDMARK_MOTION_MODEL_CARD.md"
METRICS_NAME = "landmark_motion_metrics.json"
READOUT_OUTPUTS = ("lip", "silence", "closed")


@dataclass(frozen=True)
class DefaultMotionTrainConfig:
    """Optimisation settings of the default motion model (the architecture is the model's config)."""

    steps: int = 1500
    batch: int = 8
    crop: int = 100  # frames per training crop
    lr: float = 2e-3
    weight_decay: float = 1e-2
    input_noise: float = 0.1  # std (normalised units) of the noise on the fed-back frames
    feature_noise: float = 0.1  # std (in feature stds) of the noise on the Whisper features
    ridge_lambda: float = 3e4  # of the lip read-out (chosen by speaker-disjoint CV in the prototype)
    cv_folds: int = 4  # speaker-disjoint folds for the lip blend and the pause closure
    seed: int = 0


# ------------------------------------------------------------------------------------------------ read-out


def _frame_feats(fp: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``(T50p, D)`` padded tokens -> ``(ceil(T50p / 2), D)`` normalised, token pairs averaged."""
    x = (fp - mean) / std
    if x.shape[0] % 2:
        x = np.concatenate([x, x[-1:]])
    return x.reshape(x.shape[0] // 2, 2, -1).mean(1)  # (F, 2, D) -> (F, D)


def _readout_rows(model, clip, silence_lip: float, with_padding: bool = True):
    """Design matrix ``X (rows, k D)`` of the read-out for one clip and per output of :data:`READOUT_OUTPUTS` a
    target and a mask ``(rows,)``. Rows: the clip's frames and, ``with_padding``, the padding frames whose whole
    context lies in the padded features (lip target ``silence_lip``, silence target 1, no "closed" target)."""
    from audio2lp.models.lipsync import silence_mask

    c = model.config
    k = c.readout_past + c.readout_ahead + 1
    pf = clip.pad_tokens // ds.TOKENS_PER_FRAME
    ff = _frame_feats(clip.features_padded, model.feat_mean.numpy(), model.feat_std.numpy())  # (pf + T + pf, D)
    n = clip.n_frames
    first, last = (-pf + c.readout_past, n + pf - c.readout_ahead) if with_padding else (0, n)
    idx = np.arange(first, last)
    X = np.concatenate([ff[np.clip(idx + pf + j - c.readout_past, 0, ff.shape[0] - 1)] for j in range(k)], 1)
    inside = (idx >= 0) & (idx < n)
    ii = idx[inside]
    valid = np.zeros(idx.shape[0], bool)
    valid[inside] = clip.valid[ii]
    lip_mean, lip_std = float(model.motion_mean[0]), float(model.motion_std[0])
    measured = np.zeros(idx.shape[0])
    measured[inside] = np.nan_to_num(clip.motion[ii, 0])
    lip = np.where(inside, (measured - lip_mean) / lip_std, (silence_lip - lip_mean) / lip_std)
    sil = np.ones(idx.shape[0])
    sil[inside] = silence_mask(clip.rms_db)[ii]
    closed = (measured < mm.CLOSED_RATIO).astype(np.float64)
    return X, {"lip": (lip, valid | ~inside), "silence": (sil, np.ones(idx.shape[0], bool)),
               "closed": (closed, valid)}


def fit_readout(model, clips, silence_lip: float, lam: float) -> None:
    """Closed-form ridge fit of ``model.readout`` (one output per :data:`READOUT_OUTPUTS`, each on its own rows;
    the lip in normalised units)."""
    import torch
    from scipy.linalg import cho_factor, cho_solve

    k = model.config.readout_past + model.config.readout_ahead + 1
    rows = [_readout_rows(model, c, silence_lip) for c in clips]
    X = np.concatenate([r[0] for r in rows]).astype(np.float64)
    W, B = [], []
    for name in READOUT_OUTPUTS:
        y = np.concatenate([r[1][name][0] for r in rows])
        m = np.concatenate([r[1][name][1] for r in rows])
        Xr, yr = X[m], y[m]
        xm, ym = Xr.mean(0), float(yr.mean())
        Xc = Xr - xm
        w = cho_solve(cho_factor(Xc.T @ Xc + lam * np.eye(X.shape[1])), Xc.T @ (yr - ym))
        W.append(w.reshape(k, -1).T)  # (D, k): tap j reads frame t - past + j
        B.append(ym - float(xm @ w))
    with torch.no_grad():
        model.readout.weight.copy_(torch.from_numpy(np.stack(W)).float())
        model.readout.bias.copy_(torch.tensor(B, dtype=torch.float32))


def readout_of(model, clip) -> np.ndarray:
    """The read-out ``(T, 3)`` of a clip's frames: lip (denormalised), silence and closed scores."""
    X, _ = _readout_rows(model, clip, 0.0, with_padding=False)
    w = model.readout.weight.detach().numpy().astype(np.float64)  # (3, D, k)
    out = X.astype(np.float64) @ w.transpose(0, 2, 1).reshape(w.shape[0], -1).T + model.readout.bias.numpy()
    out[:, 0] = out[:, 0] * float(model.motion_std[0]) + float(model.motion_mean[0])
    return out


# ------------------------------------------------------------------------------------------------ transformer


def _crop(data, rng, n_ctx: int, ahead: int, pf: int, crop: int, n_ch: int):
    """One training crop: padded features, targets, mask and the fed-back previous frames."""
    fp, y, v = data
    n = y.shape[0]
    s = int(rng.integers(0, max(1, n - crop + 1)))
    e = min(n, s + crop)
    f = fp[2 * (pf + s - n_ctx):2 * (pf + e + ahead)]
    need = 2 * (crop + n_ctx + ahead)
    if f.shape[0] < need:
        f = np.concatenate([f, np.repeat(f[-1:], need - f.shape[0], 0)])
    prev = np.concatenate([y[s - 1:s] if s > 0 else np.zeros((1, n_ch), np.float32), y[s:e - 1]])
    yy, vv = y[s:e], v[s:e]
    if e - s < crop:
        k = crop - (e - s)
        yy, vv = np.concatenate([yy, np.zeros((k, n_ch), np.float32)]), np.concatenate([vv, np.zeros(k, np.float32)])
        prev = np.concatenate([prev, np.zeros((k, n_ch), np.float32)])
    return f, yy, vv, prev


def train_transformer(model, clips, tc: DefaultMotionTrainConfig, progress: bool = True) -> list[float]:
    """Teacher-forced training of ``model``'s transformer on ``clips`` (Gaussian NLL of the eye and head channels,
    masked to valid frames); returns the loss per step."""
    import torch
    from tqdm.auto import tqdm

    c = model.config
    rng = np.random.default_rng(tc.seed)
    torch.manual_seed(tc.seed)
    n_ctx = max(c.audio_past, c.readout_past)
    ahead = c.lookahead_frames
    pf = c.pad_tokens // ds.TOKENS_PER_FRAME
    mean, std = model.motion_mean.numpy(), model.motion_std.numpy()
    n_ch = mean.shape[0]
    data = [(cl.features_padded.astype(np.float32),
             np.where(cl.valid[:, None], (np.nan_to_num(cl.motion) - mean) / std, 0.0).astype(np.float32),
             cl.valid.astype(np.float32)) for cl in clips]
    prob = np.array([d[1].shape[0] for d in data], np.float64)
    prob /= prob.sum()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=tc.lr, total_steps=tc.steps, pct_start=0.1)
    hist: list[float] = []
    model.train()
    bar = tqdm(range(tc.steps), desc="motion transformer", disable=not progress, mininterval=5)
    for step in bar:
        batch = [_crop(data[i], rng, n_ctx, ahead, pf, tc.crop, n_ch) for i in rng.choice(len(data), tc.batch, p=prob)]
        feats, y, m, prev = (torch.from_numpy(np.stack(x)) for x in zip(*batch))
        feats = feats + tc.feature_noise * model.feat_std * torch.randn_like(feats)
        prev = prev + tc.input_noise * torch.randn_like(prev)
        mu, log_std, _ = model(feats, prev)  # (B, T, C) each: every crop starts with the start token
        nll = 0.5 * ((y[..., 1:] - mu[..., 1:]) / log_std[..., 1:].exp()) ** 2 + log_std[..., 1:]
        loss = (nll.mean(-1) * m).sum() / m.sum().clamp_min(1.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        hist.append(float(loss.item()))
        if step % 100 == 0:
            bar.set_postfix(loss=f"{np.mean(hist[-100:]):.3f}")
    model.eval()
    return hist


# ------------------------------------------------------------------------------------------------ the model


def _closure_of(params: dict):
    from audio2lp.models.landmark_motion import PauseClosure

    names = {f.name for f in dataclasses.fields(PauseClosure)}
    return PauseClosure(**{k: v for k, v in params.items() if k in names})


def _lipsync_lips(lipsync_model, clips) -> dict[str, np.ndarray]:
    """Today's lip-sync model's lip (not closed in silences) per clip name."""
    return {c.name: lipsync_model.predict(c.lipsync_features, c.n_frames).lip_open_raw.astype(np.float64)
            for c in clips if c.lipsync_features is not None}


def out_of_fold_readouts(model, clips, silence_lip: float, lam: float, folds: int) -> dict[str, np.ndarray]:
    """Per clip the read-out ``(T, 3)`` of a fit without the clip's speaker (``folds`` speaker-disjoint folds)."""
    speakers = sorted({c.speaker for c in clips})
    out = {}
    for f in range(folds):
        held = set(speakers[f::folds])
        part = copy.deepcopy(model)
        fit_readout(part, [c for c in clips if c.speaker not in held], silence_lip, lam)
        out.update({c.name: readout_of(part, c) for c in clips if c.speaker in held})
    return out


def train_model(clips, config, tc: DefaultMotionTrainConfig, *, lipsync_model=None,
                blend_clips: set[str] | None = None, progress: bool = True):
    """Every fit of the model on the training ``clips`` (offset-corrected, with streaming features; with
    ``lipsync_features`` for the lip blend). ``blend_clips``: names of the clips today's lip-sync model never saw,
    on which the blend weight and the pause closure are chosen (see :func:`training.landmarks.fit.choose_lip_blend`);
    without ``lipsync_model`` the lip is the read-out alone, with the pause closure chosen the same way.
    Returns ``(model, facts)``."""
    import torch

    from audio2lp.models.landmark_motion import BlinkProcess, HeadNoise, LandmarkMotionModel, LipMix

    clips = [c for c in clips if c.valid.sum() >= 10]
    if len({c.speaker for c in clips}) < tc.cv_folds:
        raise InputError(f"training needs clips of at least {tc.cv_folds} speakers, got "
                         f"{len({c.speaker for c in clips})}; add talking videos to the data folder.")
    torch.manual_seed(tc.seed)
    config = dataclasses.replace(config, feat_dim=int(clips[0].features.shape[1]))
    model = LandmarkMotionModel(config)
    feats = np.concatenate([c.features for c in clips])
    mot = np.concatenate([c.motion[c.valid] for c in clips])
    with torch.no_grad():
        model.feat_mean.copy_(torch.from_numpy(feats.mean(0)))
        model.feat_std.copy_(torch.from_numpy(feats.std(0)).clamp_min(1e-3))
        model.motion_mean.copy_(torch.from_numpy(mot.mean(0)).float())
        model.motion_std.copy_(torch.from_numpy(mot.std(0)).float().clamp_min(1e-4))
    sil_lip = fit.silence_lip_level(clips)
    fit_readout(model, clips, sil_lip, tc.ridge_lambda)

    oof = out_of_fold_readouts(model, clips, sil_lip, tc.ridge_lambda, tc.cv_folds)
    chosen_on = [c for c in clips if blend_clips is None or c.name in blend_clips]
    if lipsync_model is not None:
        lips = _lipsync_lips(lipsync_model, chosen_on)
        grid = fit.BLEND_GRID
    else:
        lips, grid = {c.name: oof[c.name][:, 0] for c in chosen_on}, (0.0,)
    choice = fit.choose_lip_blend(chosen_on, {k: v[:, 0] for k, v in oof.items()}, lips,
                                  lambda lip, sc, p: _closure_of(p).apply(lip, sc),
                                  {k: v[:, 1:] for k, v in oof.items()}, grid=grid)
    choice["cv"]["folds"] = tc.cv_folds
    model.lip_mix = LipMix(lipsync_weight=float(choice["weight"]))
    model.closure = _closure_of(choice["closure"]) if choice["closure"] else None
    blinks = fit.fit_blinks(clips)
    blink_rate = blinks.pop("rate_per_min")
    model.blinks = BlinkProcess.from_dict(blinks)
    noise = fit.fit_head_noise(clips, model.motion_mean.numpy(), model.motion_std.numpy())
    model.head_noise = HeadNoise.from_dict(noise)

    hist = train_transformer(model, clips, tc, progress)
    facts = {"silence_lip": round(sil_lip, 4), "final_nll": round(float(np.mean(hist[-100:])), 4),
             "blend": choice["weight"], "closure": choice["closure"], "cv": choice["cv"],
             "training_blink_rate_per_min": round(blink_rate, 2)}
    return model, facts


# ------------------------------------------------------------------------------------------------ the command


def default_cache_dir() -> Path:
    """``user_cache_dir("audio2lp")/default-motion-data`` (``~/.cache/audio2lp/default-motion-data`` on Linux)."""
    import platformdirs

    return Path(platformdirs.user_cache_dir("audio2lp")) / "default-motion-data"


def _machine() -> str:
    import torch

    return f"{os.cpu_count()} CPU cores ({platform.machine()}), torch {torch.__version__}, 1 training thread"


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished children (the landmark workers)."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def model_generators(model, lipsync_model):
    """``(gen(clip, seed), open_pauses_gen(clip))`` of the model for :func:`training.landmarks.evaluate.evaluate`:
    the product's motion for a clip (its padded streaming features and today's lip-sync model's lip)."""
    lip_memo: dict = {}

    def lip(c):
        if lipsync_model is None or model.lip_mix.lipsync_weight == 0.0:
            return None
        if c.name not in lip_memo:
            lip_memo[c.name] = _lipsync_lips(lipsync_model, [c])[c.name]
        return lip_memo[c.name]

    def gen(c, seed):
        return model.generate(c.features_padded, c.n_frames, seed=seed, lipsync_lip=lip(c))

    open_model = copy.copy(model)
    open_model.closure = None

    def gen_open(c):
        return open_model.generate(c.features_padded, c.n_frames, seed=0, lipsync_lip=lip(c))

    return gen, (gen_open if model.closure is not None else None)


def load_data(data_dir, cache_dir, stream_config, *, workers: int = 2, progress: bool = True):
    """``(train, test, offsets, held)``: the clips of ``data_dir`` with streaming and lip-sync features, split by
    speaker, the training clips shifted by their audio offsets."""
    from audio2lp.whisper.stream import StreamingEncoder

    enc = StreamingEncoder(stream_config)
    clips = ds.build_clips(data_dir, cache_dir, stream_encoder=enc, lipsync=True, workers=workers,
                           progress=progress)
    held = ds.held_out_speakers(data_dir)
    train, test = split_by_speaker(clips, held)
    if not train or not test:
        raise InputError(f"{data_dir}: the split by speaker left {len(train)} training and {len(test)} held-out "
                         f"clips; the data folder needs clips of several speakers.")
    offsets = ds.estimate_offsets(train)
    return [ds.shift(c, offsets.get(c.name, 0)) for c in train], test, offsets, held


def run(data_dir: str | os.PathLike, out_dir: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None,
        train_config: DefaultMotionTrainConfig | None = None, workers: int = 2, command: str = COMMAND,
        results_path: str | os.PathLike | None = None, progress: bool = True) -> dict:
    """The one command: data -> fits -> weights -> held-out figures -> card (see the module docstring). Writes
    ``OUT/landmark_motion.safetensors``, ``OUT/LANDMARK_MOTION_MODEL_CARD.md`` and ``OUT/landmark_motion_metrics.json``;
    with ``results_path``, replaces the quality section of that Markdown file (``benchmarks/RESULTS.md``). Returns the
    results dict."""
    from audio2lp.models.landmark_motion import LandmarkMotionConfig, save_landmark_motion
    from audio2lp.models.lipsync import load_lipsync_model
    from audio2lp.models.threads import torch_threads
    from audio2lp.whisper.stream import StreamConfig
    from training.landmarks import card as card_mod
    from training.landmarks.evaluate import evaluate

    tc = train_config or DefaultMotionTrainConfig()
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    out = Path(out_dir)
    empty_cache = not cache.is_dir() or not any(cache.iterdir())
    load_before = [round(x, 2) for x in os.getloadavg()]
    t0 = time.perf_counter()
    stream = StreamConfig()
    with torch_threads(1):
        train, test, offsets, held = load_data(data_dir, cache, stream, workers=workers, progress=progress)
        t_data = time.perf_counter() - t0
        config = LandmarkMotionConfig(features=stream, pad_tokens=ds.pad_tokens_for(stream.block))
        lipsync_model = load_lipsync_model()
        blend_clips = set(ds.speaker_table(data_dir)) & {c.name for c in train}
        t1 = time.perf_counter()
        model, facts = train_model(train, config, tc, lipsync_model=lipsync_model, blend_clips=blend_clips,
                                   progress=progress)
        t_train = time.perf_counter() - t1
        extra = {"train_config": dataclasses.asdict(tc), "offsets": {k: v for k, v in offsets.items() if v},
                 "held_out_speakers": list(held), "train_clips": [c.name for c in train], **facts,
                 "command": command, "machine": _machine()}
        weights = save_landmark_motion(out / WEIGHTS_NAME, model, extra)
        t2 = time.perf_counter()
        gen, gen_open = model_generators(model, lipsync_model)
        res = evaluate(train, test, gen, open_pauses_gen=gen_open, lipsync_model=lipsync_model)
        t_eval = time.perf_counter() - t2
    timing = {"data_seconds": round(t_data, 1), "train_seconds": round(t_train, 1), "eval_seconds": round(t_eval, 1),
              "total_seconds": round(time.perf_counter() - t0, 1), "empty_cache": empty_cache,
              "cpu_seconds": round(_cpu_seconds(), 1), "load_before": load_before,
              "load_after": [round(x, 2) for x in os.getloadavg()]}
    res["timing"] = timing
    res["facts"] = {**facts, "offsets": extra["offsets"], "params": sum(p.numel() for p in model.parameters()),
                    "size_bytes": weights.stat().st_size, "machine": extra["machine"], "timing": timing,
                    "train_config": extra["train_config"], "stream": stream.to_dict()}
    summary = {k: round(float(res["model"][k]), 4) for k in ("lip_r", "sil_closed", "blink_rate", "seed_r")}
    summary["today_lip_r"] = round(float(res["today"]["lip_r"]), 4)
    save_landmark_motion(weights, model, {**extra, "heldout": summary, "timing": timing})
    res["facts"]["size_bytes"] = weights.stat().st_size
    write_text_atomic(out / METRICS_NAME, json.dumps(res, indent=1, sort_keys=True) + "\n")
    write_text_atomic(out / CARD_NAME, card_mod.model_card(res, res["facts"], command))
    if results_path:
        card_mod.update_results(results_path, card_mod.results_section(res, command))
    logger.info("wrote %s, %s and %s in %.0f s", weights, CARD_NAME, METRICS_NAME, timing["total_seconds"])
    return res
