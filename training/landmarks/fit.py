"""Closed-form and statistical fits of the default motion model, all on the training speakers only.

- :func:`fit_blinks`: the blink renewal process (rate, log-normal interval spread, durations, depths, mean
  shape) of the blinks :func:`training.landmarks.metrics.detect_blinks` finds in the training speakers' eyes;
- :func:`fit_head_noise`: a Yule-Walker AR(2) process per head channel of their normalised head motion;
- :func:`silence_lip_level`: their median normalised lip in energy-VAD pauses (the read-out's target in the
  digital silence around every clip);
- :func:`choose_lip_blend`: the lip blend weight (lip-sync model vs read-out) and the pause closure, by
  speaker-disjoint cross-validation (see its docstring).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np

from training.common import pearson
from training.landmarks import metrics as mm

logger = logging.getLogger(__name__)

__all__ = ["BLEND_GRID", "PAUSE_RULES", "choose_lip_blend", "fit_blinks", "fit_head_noise", "silence_lip_level"]

LIP = 0
HEAD_CHANNELS = (3, 4, 5, 6, 7, 8)
#: Blend weights of the lip-sync model tried by :func:`choose_lip_blend` (0 = read-out only).
BLEND_GRID = tuple(round(0.05 * i, 2) for i in range(21))
#: Pause-gate forms tried by :func:`choose_lip_blend`: the read-out score (0 silence, 1 closed), frames above the
#: threshold before closing (``hold``), the hysteresis ``delta`` and the closing/opening ramps in frames; the
#: threshold ``on`` is fitted. Then the lip-conditioned forms: a fixed silence-score threshold ``on`` and a fitted
#: ``lip_below`` (only the pause frames whose lip is already below it close; see
#: :class:`audio2lp.models.processes.PauseClosure`).
PAUSE_RULES = tuple({"score": s, "hold": h, "delta": d, "ramp_close": rc, "ramp_open": ro}
                    for s in (0, 1) for h in (1, 4) for d in (0.0, 0.1) for rc, ro in ((1, 1), (3, 2), (4, 2))) + \
    tuple({"score": 0, "hold": 1, "delta": 0.0, "ramp_close": 1, "ramp_open": 1, "on": on, "fit": "lip_below"}
          for on in (0.3, 0.5, 0.7))
#: Closed fractions in pauses each rule is fitted to on the training clips, as multiples of the real one.
CLOSED_TARGETS = (0.5, 0.6, 0.8, 1.0)
#: The closed fraction a candidate must reach out of fold, as multiples of the real one (the issue's tolerance).
CLOSED_TOLERANCE = (0.5, 2.0)


def fit_blinks(clips) -> dict:
    """The blink process of ``clips`` (their ``motion`` eye multipliers and ``valid``) as a dict:
    ``log_interval_mu``, ``log_interval_sigma`` (intervals log-normal, mean = 1 / rate), ``min_interval`` (s),
    ``durations`` (frames, + 2 open-eye shoulder frames), ``depths`` (1 - the lowest multiplier), ``shape`` (16
    samples of the mean closure profile, 0..1), and the fitted ``rate_per_min``."""
    durations, depths, shapes, intervals = [], [], [], []
    minutes = 0.0
    for c in clips:
        eye = np.nan_to_num(c.motion[:, 1:3].mean(1), nan=1.0)
        events = mm.detect_blinks(eye, c.valid)
        minutes += c.valid.sum() / mm.FPS / 60.0
        for a, b in events:
            seg = 1.0 - eye[a - 1:b + 1]  # the closure with one open frame each side
            depth = float(seg.max())
            durations.append(b - a)
            depths.append(depth)
            shapes.append(np.interp(np.linspace(0, 1, 16), np.linspace(0, 1, seg.size), np.clip(seg / depth, 0, 1)))
        intervals += list(np.diff([a for a, _ in events]) / mm.FPS)
    if not durations:
        raise ValueError("no blink was found in the training clips' eye ratios")
    rate = len(durations) / max(minutes, 1e-9)
    sigma = float(np.std(np.log(intervals))) if len(intervals) > 2 else 0.5
    shape = np.mean(shapes, 0)
    shape = (shape - shape.min()) / max(shape.max() - shape.min(), 1e-6)
    return {"log_interval_mu": float(np.log(60.0 / rate) - sigma ** 2 / 2), "log_interval_sigma": sigma,
            "min_interval": 0.25, "durations": [int(d) + 2 for d in durations],
            "depths": [round(float(d), 3) for d in depths], "shape": [round(float(v), 4) for v in shape],
            "rate_per_min": round(rate, 3)}


def fit_head_noise(clips, motion_mean: np.ndarray, motion_std: np.ndarray) -> dict:
    """Yule-Walker AR(2) per head channel (:data:`HEAD_CHANNELS`) of the clips' normalised motion over their valid
    runs: ``{"a1": [6], "a2": [6], "sigma": [6]}`` (``sigma`` for unit stationary variance; 0 for a channel that
    never moves)."""
    a1s, a2s, sigmas = [], [], []
    for ch in HEAD_CHANNELS:
        r = np.zeros(3)
        for c in clips:
            for a, b in mm.runs(c.valid):
                x = (c.motion[a:b, ch].astype(np.float64) - motion_mean[ch]) / motion_std[ch]
                if x.size >= 10:
                    r += [(x * x).sum(), (x[1:] * x[:-1]).sum(), (x[2:] * x[:-2]).sum()]
        if r[0] <= 1e-12:
            a1s.append(0.0)
            a2s.append(0.0)
            sigmas.append(0.0)
            continue
        p1, p2 = r[1] / r[0], r[2] / r[0]
        a1 = p1 * (1 - p2) / (1 - p1 ** 2)
        a2 = (p2 - p1 ** 2) / (1 - p1 ** 2)
        a1s.append(round(float(a1), 6))
        a2s.append(round(float(a2), 6))
        sigmas.append(round(float(np.sqrt(max(1.0 - a1 * p1 - a2 * p2, 1e-8))), 6))
    return {"a1": a1s, "a2": a2s, "sigma": sigmas}


def silence_lip_level(clips) -> float:
    """Median normalised lip of ``clips`` in energy-VAD pauses longer than 200 ms (0 when they have none)."""
    from audio2lp.models.lipsync import silence_mask

    vals = np.concatenate([c.motion[silence_mask(c.rms_db) & c.valid, LIP] for c in clips])
    return float(np.median(vals)) if vals.size else 0.0


def _mean_r(preds: dict, clips) -> float:
    rs = [pearson(preds[c.name][c.valid], c.motion[c.valid, LIP]) for c in clips if c.valid.sum() >= 10]
    return float(np.mean(rs)) if rs else float("nan")


def _pause_frames(clips) -> dict[str, np.ndarray]:
    from audio2lp.models.lipsync import silence_mask

    return {c.name: silence_mask(c.rms_db) & c.valid for c in clips}


def _real_closure(clips, pauses) -> tuple[float, float, int]:
    """``(closed fraction, median closed lip, pause frames)`` of the measured lip in the clips' pause frames."""
    real = np.concatenate([np.nan_to_num(c.motion[pauses[c.name], LIP]) for c in clips])
    closed = real[real < mm.CLOSED_RATIO]
    return (float(closed.size / real.size) if real.size else 0.0,
            float(np.median(closed)) if closed.size else float("nan"), int(real.size))


def _fit_gate(clips, blend, scores, pauses, apply_gate, rule: dict, closed_target: float, level: float) -> dict:
    """The gate ``params`` of ``rule`` whose threshold (``on``, or ``lip_below`` for the lip-conditioned rules) is
    bisected so that the gated lip of ``clips`` is closed in ``closed_target`` of their pause frames."""
    key = rule.get("fit", "on")
    if key == "on":
        col = np.concatenate([scores[c.name][:, rule["score"]] for c in clips])
    else:
        col = np.concatenate([blend[c.name] for c in clips])
    lo, hi = float(np.quantile(col, 0.01)), float(np.quantile(col, 0.999))
    base = {k: v for k, v in rule.items() if k != "fit"}

    def params_at(x: float) -> dict:
        x = round(x, 6)
        p = {**base, "level": round(level, 6)}
        if key == "on":
            return {**p, "on": x, "off": round(x - rule["delta"], 6)}
        return {**p, "off": round(rule["on"] - rule["delta"], 6), "lip_below": max(x, 1e-6)}

    for _ in range(12):
        mid = 0.5 * (lo + hi)
        too_many = _closed_fraction(clips, blend, scores, pauses, apply_gate, params_at(mid)) > closed_target
        if key == "on":  # a higher threshold closes less
            lo, hi = (mid, hi) if too_many else (lo, mid)
        else:  # a higher lip_below closes more
            lo, hi = (lo, mid) if too_many else (mid, hi)
    return params_at(0.5 * (lo + hi))


def _gated(clips, blend, scores, apply_gate, params) -> dict:
    return {c.name: apply_gate(blend[c.name], scores[c.name], params) for c in clips}


def _closed_fraction(clips, blend, scores, pauses, apply_gate, params, gated=None) -> float:
    g = gated or _gated(clips, blend, scores, apply_gate, params)
    return float((np.concatenate([g[c.name][pauses[c.name]] for c in clips]) < mm.CLOSED_RATIO).mean())


def _speaker_folds(clips, folds: int) -> list[set[str]]:
    speakers = sorted({c.speaker for c in clips})
    return [set(speakers[f::folds]) for f in range(min(folds, len(speakers)))]


def choose_lip_blend(clips, readout_oof: dict[str, np.ndarray], lipsync_lip: dict[str, np.ndarray],
                     apply_gate: Callable[[np.ndarray, np.ndarray, dict], np.ndarray],
                     scores: dict[str, np.ndarray], grid: Sequence[float] = BLEND_GRID,
                     rules: Sequence[dict] = PAUSE_RULES, targets: Sequence[float] = CLOSED_TARGETS,
                     folds: int = 4) -> dict:
    """The lip blend weight and pause closure, chosen on ``clips`` (training speakers only).

    ``readout_oof[name] (T,)``: the read-out's lip from a fit that did not see the clip's speaker;
    ``lipsync_lip[name] (T,)``: today's lip-sync model's lip (not closed in silences); ``clips``: only clips of
    speakers neither had seen, with their measured (offset-corrected) lip. ``apply_gate(lip (T,), scores (T, k),
    params) -> lip`` is the product's pause closure, ``params`` one of ``rules`` with ``on``, ``off`` and ``level``
    added; ``scores[name] (T, k)``: its scores for a clip (the rule's ``score`` picks the column).

    1. Weight ``w`` (lip = ``w`` lip-sync + ``(1 - w)`` read-out): the grid value with the highest mean per-clip r
       at lag 0.
    2. Closure, by nested speaker-disjoint cross-validation (``folds`` folds of these clips' speakers): a
       candidate is a rule of ``rules`` and a target of ``targets``. For each fold, the rule's threshold is fitted
       on the other folds' clips so that their gated lip is closed in ``target`` x their real fraction of pause
       frames (energy-VAD silences > 200 ms) below :data:`~training.landmarks.metrics.CLOSED_RATIO` (``level``: the
       median of their real closed pause frames), then applied to the fold's clips. Out of fold, a candidate
       costs ``mean r without gate - mean r with gate`` (per clip, lag 0) and closes a pooled fraction of the pause
       frames. Chosen: the least costly candidate whose out-of-fold closed fraction is within
       :data:`CLOSED_TOLERANCE` of the real one (none: the one closest to it in ratio), refitted on all clips.
       (Fitting thresholds on the same clips they are scored on picks gates that do not transfer to new
       speakers: that selection closed 0.17x the real fraction out of fold.)
    Returns ``{"weight", "closure": {...} | None, "cv": {...}}`` (``cv``: every figure tried).
    """
    clips = [c for c in clips if c.valid.sum() >= 10 and c.name in readout_oof and c.name in lipsync_lip]
    if not clips:
        raise ValueError("no clip to choose the lip blend on")
    r_by_w = {}
    for w in grid:
        r_by_w[w] = _mean_r({c.name: w * lipsync_lip[c.name] + (1 - w) * readout_oof[c.name] for c in clips}, clips)
    weight = max(r_by_w, key=lambda k: (r_by_w[k], -abs(k - 0.5)))
    blend = {c.name: weight * lipsync_lip[c.name] + (1 - weight) * readout_oof[c.name] for c in clips}
    pauses = _pause_frames(clips)
    target, level, n_pause_frames = _real_closure(clips, pauses)
    cv = {"clips": len(clips), "speakers": len({c.speaker for c in clips}),
          "r_by_weight": {str(k): round(v, 4) for k, v in r_by_w.items()}, "pause_frames": n_pause_frames,
          "real_closed_in_pauses": round(target, 4) if n_pause_frames else None}
    if target <= 0:
        return {"weight": weight, "closure": None, "cv": cv}

    folds_ = _speaker_folds(clips, folds)
    in_fold = [[c for c in clips if c.speaker in held] for held in folds_]
    out_fold = [[c for c in clips if c.speaker not in held] for held in folds_]
    fold_real = [_real_closure(cs, pauses) for cs in out_fold]
    r_plain = {c.name: pearson(blend[c.name][c.valid], c.motion[c.valid, LIP]) for c in clips}
    usable = [f for f, (frac, lev, _) in enumerate(fold_real) if frac > 0 and np.isfinite(lev)]
    scored = [c for f in usable for c in in_fold[f]]
    if not scored:
        return {"weight": weight, "closure": None, "cv": cv}
    real_oof = _real_closure(scored, pauses)[0]
    tried = []
    for rule in rules:
        for mult in targets:
            r_gated, closed, n_pause = [], 0, 0
            for f in usable:
                te, tr, (frac, lev, _) = in_fold[f], out_fold[f], fold_real[f]
                p = _fit_gate(tr, blend, scores, pauses, apply_gate, rule, mult * frac, lev)
                g = _gated(te, blend, scores, apply_gate, p)
                r_gated += [pearson(g[c.name][c.valid], c.motion[c.valid, LIP]) for c in te]
                pm = np.concatenate([g[c.name][pauses[c.name]] for c in te])
                closed += int((pm < mm.CLOSED_RATIO).sum())
                n_pause += pm.size
            cost = float(np.mean([r_plain[c.name] for c in scored]) - np.mean(r_gated))
            tried.append({"rule": {k: v for k, v in rule.items()}, "target": mult, "oof_cost": round(cost, 4),
                          "oof_closed": round(closed / max(n_pause, 1), 4), "oof_real_closed": round(real_oof, 4),
                          "oof_ratio": round(closed / max(n_pause, 1) / max(real_oof, 1e-9), 3)})
    lo_tol, hi_tol = CLOSED_TOLERANCE
    ok = [t for t in tried if lo_tol <= t["oof_ratio"] <= hi_tol]
    best = min(ok, key=lambda t: t["oof_cost"]) if ok else \
        min(tried, key=lambda t: abs(np.log(max(t["oof_ratio"], 1e-6))))
    params = _fit_gate(clips, blend, scores, pauses, apply_gate, best["rule"], best["target"] * target, level)
    g = _gated(clips, blend, scores, apply_gate, params)
    chosen_r = _mean_r(g, clips)
    no_gate = r_by_w[weight]
    cv.update(no_gate_r=round(no_gate, 4), rules=tried, target_closed=round(target, 4), folds=len(folds_),
              chosen_closed=round(_closed_fraction(clips, blend, scores, pauses, apply_gate, params, g), 4),
              chosen_r=round(chosen_r, 4), chosen_oof=best)
    logger.info("lip blend %.2f (r %.3f); pause closure %s (out of fold: costs r %.4f, closes %.3fx the real "
                "fraction; refitted: r %.3f, closed %.3f of pause frames, real %.3f)", weight, no_gate, params,
                best["oof_cost"], best["oof_ratio"], chosen_r, cv["chosen_closed"], target)
    return {"weight": weight, "closure": params, "cv": cv}
