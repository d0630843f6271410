"""The held-out table of the default motion model: real video vs the model vs today's default vs a loudness
baseline, every figure of :mod:`training.landmarks.metrics`.

Columns (:func:`evaluate`), on the held-out speakers' clips:

- ``real``: the measured motion (the smoothed, normalised targets);
- ``model``: the shipped model's motion for seeds :data:`SEEDS` (figures averaged over seeds), with
  ``seed_r`` (how alike two seeds' heads are); ``model_open_pauses``: the same without the pause closure (lips);
- ``today`` / ``today_gated``: today's lip-sync model (shipped weights, its own 30 s-window features) without /
  with the mouth forced shut in silences > 200 ms, plus :func:`audio2lp.models.idle.idle_head_motion` (speaking =
  not closed) and :func:`~audio2lp.models.idle.blink_schedule` for the same seeds, as ``speak`` did before;
- ``loudness``: :class:`LoudnessBaseline`, a ridge regression of every channel on the loudness envelope fitted
  on the training clips (a deterministic regression: the frozen head the issue warns about).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np

from training.common import pearson
from training.landmarks import metrics as mm

__all__ = ["SEEDS", "LoudnessBaseline", "evaluate", "figures", "today_motion"]

SEEDS = (0, 1, 2)
LOUD_PAST, LOUD_AHEAD = 4, 2

Generator = Callable[[object, int], np.ndarray]  # (clip, seed) -> (T, 9) motion


def figures(clips, motions: Sequence[np.ndarray]) -> dict:
    """Aggregate figures of ``motions`` (one ``(T, 9)`` per clip) on the clips' valid frames, with the per-clip
    lip r."""
    from audio2lp.models.lipsync import silence_mask

    rows = [mm.clip_figures(m, c.valid, c.rms_db, c.motion[:, 0], silence_mask(c.rms_db))
            for c, m in zip(clips, motions)]
    out = mm.aggregate(rows)
    out["per_clip_lip_r"] = {c.name: round(float(r.get("lip_r", float("nan"))), 4) for c, r in zip(clips, rows)}
    return out


def _mean_over_seeds(figs: list[dict]) -> dict:
    out = dict(figs[0])
    for k, v in figs[0].items():
        if isinstance(v, (int, float)):
            out[k] = float(np.nanmean([f[k] for f in figs]))
    return out


def seed_difference(clips, gen: Generator) -> dict:
    """``seed_r``: mean per-clip Pearson r between the pitch and yaw of seeds 0 and 1 (1 = identical)."""
    rs = []
    for c in clips:
        a, b = gen(c, 0), gen(c, 1)
        for ch in (3, 4):
            rs.append(pearson(a[:, ch], b[:, ch]) if a[:, ch].std() > 1e-6 and b[:, ch].std() > 1e-6 else 1.0)
    return {"seed_r": float(np.mean(rs)) if rs else 1.0}


def stochastic_figures(clips, gen: Generator, seeds: Sequence[int] = SEEDS) -> dict:
    """Figures of ``gen`` averaged over ``seeds``, with :func:`seed_difference` (``gen`` is called once per clip and
    seed)."""
    memo: dict = {}

    def cached(c, s):
        if (c.name, s) not in memo:
            memo[(c.name, s)] = gen(c, s)
        return memo[(c.name, s)]

    out = _mean_over_seeds([figures(clips, [cached(c, s) for c in clips]) for s in seeds])
    out.update(seed_difference(clips, cached))
    return out


def today_motion(clip, lipsync_model, seed: int, gated: bool) -> np.ndarray:
    """Today's default motion ``(T, 9)`` for ``clip``: the lip-sync model (``gated``: closed in silences) + sway +
    blinks; translation still, scale 1."""
    from audio2lp.models.idle import blink_schedule, idle_head_motion
    from audio2lp.models.lipsync import silence_mask

    n = clip.n_frames
    pred = lipsync_model.predict(clip.lipsync_features, n, silence=silence_mask(clip.rms_db) if gated else None)
    m = np.zeros((n, 9), np.float32)
    m[:, 0] = pred.lip_open
    m[:, 1] = m[:, 2] = blink_schedule(n, seed=seed)
    m[:, 3:6] = idle_head_motion(n, speaking=~pred.closed, seed=seed)
    m[:, 8] = 1.0
    return m


class LoudnessBaseline:
    """Ridge regression of every motion channel on the loudness context (RMS dB re the clip's 95th percentile,
    floored at -60 dB, frames ``t - 4 .. t + 2``)."""

    def _x(self, clip) -> np.ndarray:
        db = np.maximum(clip.rms_db - np.percentile(clip.rms_db, 95), -60.0).astype(np.float64)
        p = np.concatenate([np.full(LOUD_PAST, db[0]), db, np.full(LOUD_AHEAD, db[-1])])
        n = db.shape[0]
        return np.stack([p[i:i + n] for i in range(LOUD_PAST + LOUD_AHEAD + 1)], 1)  # (T, 7)

    def fit(self, clips, lam: float = 1.0) -> LoudnessBaseline:
        X = np.concatenate([self._x(c)[c.valid] for c in clips])
        Y = np.concatenate([c.motion[c.valid] for c in clips]).astype(np.float64)
        self.mu, self.sd = X.mean(0), X.std(0) + 1e-6
        Xn = (X - self.mu) / self.sd
        self.ym = Y.mean(0)
        self.w = np.linalg.solve(Xn.T @ Xn + lam * np.eye(X.shape[1]), Xn.T @ (Y - self.ym))
        return self

    def predict(self, clip) -> np.ndarray:
        return (((self._x(clip) - self.mu) / self.sd) @ self.w + self.ym).astype(np.float32)


def split_facts(train, test) -> dict:
    """Counts of the split (clips, speakers, seconds) and the held-out clip names."""
    return {"train_clips": len(train), "test_clips": len(test),
            "train_speakers": len({c.speaker for c in train}), "test_speakers": len({c.speaker for c in test}),
            "train_seconds": round(sum(c.seconds for c in train), 1),
            "test_seconds": round(sum(c.seconds for c in test), 1),
            "test_speaker_ids": sorted({c.speaker for c in test}), "test_clip_names": [c.name for c in test]}


def evaluate(train, test, model_gen: Generator | None, *, open_pauses_gen: Callable | None = None,
             lipsync_model=None, seeds: Sequence[int] = SEEDS) -> dict:
    """The held-out table (see the module docstring) as a JSON-serialisable dict.

    ``train``/``test``: clips (:class:`training.landmarks.dataset.Clip`; ``test`` with ``lipsync_features`` when
    ``lipsync_model`` is given); ``model_gen(clip, seed) -> (T, 9)``: the model's motion; ``open_pauses_gen(clip)``:
    the model without the pause closure (optional)."""
    res: dict = {"split": split_facts(train, test), "seeds": list(seeds)}
    res["real"] = figures(test, [c.motion for c in test])
    if model_gen is not None:
        t0 = time.perf_counter()
        res["model"] = stochastic_figures(test, model_gen, seeds)
        res["model"]["generation_seconds"] = round(time.perf_counter() - t0, 1)
        if open_pauses_gen is not None:
            res["model_open_pauses"] = figures(test, [open_pauses_gen(c) for c in test])
    if lipsync_model is not None:
        for key, gated in (("today", False), ("today_gated", True)):
            res[key] = stochastic_figures(test, lambda c, s, g=gated: today_motion(c, lipsync_model, s, g), seeds)
    lb = LoudnessBaseline().fit(train)
    res["loudness"] = figures(test, [lb.predict(c) for c in test])
    res["loudness"]["seed_r"] = 1.0  # deterministic
    return res
