"""Measuring the lip-sync model on held-out speakers (:func:`evaluate`) against two baselines, and writing what
was measured: the ``benchmarks/RESULTS.md`` section and the model card.

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

import os
from pathlib import Path

import numpy as np

from audio2lp.models.lipsync import silence_mask
from training.common import lagged_r, pearson, write_text_atomic

BASELINE_CONTEXT = 4  # +- frames of loudness context for the baseline
PROBE_CONTEXT = 2
MAX_LAG = 5

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
            lag_r[lag].append(lagged_r(pred.lip_open, c.lip, v, lag))
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


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def results_markdown(metrics: dict, command: str) -> str:
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
    return write_text_atomic(path, text)


def model_card(metrics: dict, model_config, train_config, n_params: int, size_bytes: int) -> str:
    h = metrics["heldout"]
    d = metrics["data"]
    mc = model_config
    cv = metrics.get("cv") or {}
    cv_line = (f"{cv['folds']}-fold speaker-disjoint cross-validation within the training speakers gave mean r "
               f"{_fmt(cv['mean_r_model'])} (linear probe {_fmt(cv['mean_r_probe'])})." if cv else
               "Run with `--cv 4` to add the cross-validation figures.")
    blend = "`lip_open = raw`; `speak` sets it to the closed level in silences longer than 200 ms (energy VAD)"
    return f"""# Lip-sync model card (`lipsync.safetensors`)

Predicts, from speech, how open the mouth is in each 25 fps video frame: LivePortrait's lip-open ratio
(inner-lip gap at the mouth's middle / mouth-corner distance) on the scale its lip retargeting network
expects, plus the probability that the mouth is closed. Used by `audio2lp speak` when no motion model is
given. Code: `audio2lp/models/lipsync.py`; training: `training/lipsync/train.py`.

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
`training/lipsync/train.py`). Training: {d['train_speakers']} speakers / {d['train_clips']} clips /
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
  -60 dBFS), {h['silence_frames']} frames: {_fmt(h['closed_rate_in_silence_gated'])} by construction as `speak`
  renders it (it closes the mouth there); the network's own closed-mouth head alone:
  {_fmt(h['closed_rate_in_silence'])} (measured mouths closed, ratio < 0.03:
  {_fmt(h['measured_closed_rate_in_silence'])}).
- Lag of peak correlation (search -5..5 frames): {h['best_lag_frames']:+d}.
- Per-clip figures: `lipsync_metrics.json`.
- Checked: `pytest -m slow tests/training/lipsync/test_lipsync.py -k recomputed` recomputes these figures from
  the shipped weights and the data folder (same split, training clips and baselines; no training).

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
