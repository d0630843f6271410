"""Learning must be shown: a short CPU run learns a known function of real speech.

Targets are computed from the audio of the real speech clips in ``$AUDIO2LP_TEST_DATA/speech``; inputs are real
Whisper tiny.en features (middle layer, what ``audio2lp-train prepare`` stores by default):

* lip opening (the 18 lip-keypoint dims along a fixed random direction) = the loudness (RMS dB) of each 40 ms
  frame, smoothed over 3 frames and standardised;
* head yaw (degrees) = a slow function of the loudness: the same dB curve low-passed with a 0.6 s Hann window.

The model is trained on 4/5 of the clips and rolled out autoregressively as ``speak`` does (``rollout``) on the
held-out fifth; its output is relative to each clip's own reference (:func:`training.motion.dataset.clip_reference`).
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from audio2lp.models.motion import LIP_DIMS, MOTION_DIM, SCALE, YAW, to_relative
from audio2lp.models.motion_model import MotionModel, load_motion_model
from training.common import pearson
from training.motion.config import MotionTrainConfig, apply_overrides
from training.motion.dataset import ClipData, clip_reference, write_dataset
from training.motion.trainer import train

pytestmark = pytest.mark.realdata

SAMPLES_PER_FRAME = 640  # 40 ms at 16 kHz


@pytest.fixture(scope="session")
def speech_features(data_dir):
    """(name, 16 kHz audio, Whisper tiny.en middle-layer features) of every speech clip, once per session."""
    from audio2lp.errors import WeightsError
    from audio2lp.media.audio import load_audio
    from audio2lp.whisper.features import WhisperEncoder

    try:
        enc = WhisperEncoder("tiny.en")
    except WeightsError as e:
        pytest.skip(f"Whisper tiny.en is not available: {e}")
    out = []
    for f in sorted((data_dir / "speech").iterdir()):
        audio = load_audio(f)
        out.append((f.stem, audio, enc.encode(audio, layers="middle", progress=False)))
    return out


def _loudness_targets(audio: np.ndarray, T: int) -> tuple[np.ndarray, np.ndarray]:
    a = np.pad(audio, (0, max(0, T * SAMPLES_PER_FRAME - len(audio))))[:T * SAMPLES_PER_FRAME]
    db = np.clip(10 * np.log10((a.reshape(T, SAMPLES_PER_FRAME) ** 2).mean(1) + 1e-8), -60, 0)
    lip = np.convolve(np.pad(db, 1, mode="edge"), np.ones(3) / 3, mode="valid")
    k = np.hanning(15)
    slow = np.convolve(np.pad(db, 7, mode="edge"), k / k.sum(), mode="valid")
    return lip, slow


def test_short_cpu_run_learns_a_known_function_of_speech(speech_features, tmp_path):
    rng = np.random.default_rng(0)
    pattern = (rng.normal(size=len(LIP_DIMS)) * 0.01).astype(np.float32)
    raw = []
    for name, audio, feats in speech_features:
        T = feats.shape[0] // 2
        raw.append((name, feats, *_loudness_targets(audio, T)))
    lips = np.concatenate([r[2] for r in raw])
    slows = np.concatenate([r[3] for r in raw])
    clips = []
    for name, feats, lip, slow in raw:
        m = np.zeros((lip.shape[0], MOTION_DIM), np.float32)
        m[:, list(LIP_DIMS)] = ((lip - lips.mean()) / lips.std())[:, None] * pattern
        m[:, YAW] = 5.0 * (slow - slows.mean()) / slows.std()
        m[:, SCALE] = 1.0
        clips.append((name.replace(".", "_"), ClipData(m, feats), None))
    held = {c[0] for c in clips[::5]}
    assert len(held) >= 6
    ds = write_dataset(tmp_path / "ds", [c for c in clips if c[0] not in held],
                       {"whisper_model": "tiny.en", "whisper_layers": "middle", "audio_dim": 384}).parent

    cfg = apply_overrides(MotionTrainConfig(), [
        "model.d_model=64", "model.n_layers=2", "model.dropout=0.0", "data.window=40", "data.context=10",
        "data.overlap=5", "data.batch_size=16",
        "data.val_fraction=0", "schedule.steps=600", "schedule.warmup_steps=30", "optim.lr=2e-3",
        "sampling.start_step=100", "sampling.ramp_steps=300", "sampling.max_prob=0.5", "run.checkpoint_every=600",
        "run.log_every=100", "run.val_every=0", "run.progress=false", "run.tensorboard=false", "run.num_threads=1"])
    t0 = time.time()
    res = train(ds, tmp_path / "run", cfg, progress=False)
    train_s = time.time() - t0
    model, stats = load_motion_model(res.model_path)
    torch.manual_seed(0)
    untrained = MotionModel(model.config).eval()
    torch.nn.init.normal_(untrained.head.weight, std=0.05)  # else its zero head predicts a constant (corr 0)

    def held_out_corr(m):
        lp, lt, yp, yt = [], [], [], []
        for cid, c, _ in clips:
            if cid in held:
                out = m.rollout(c.audio, 0, stats=stats)  # as speak runs it; relative motion, LivePortrait units
                rel = to_relative(c.motion, clip_reference(c.motion, np.ones(c.n_frames, bool)))
                lp.append(out[:, list(LIP_DIMS)] @ pattern)
                lt.append(rel[:, list(LIP_DIMS)] @ pattern)
                yp.append(out[:, YAW])
                yt.append(rel[:, YAW])
        return (pearson(np.concatenate(lp), np.concatenate(lt)), pearson(np.concatenate(yp), np.concatenate(yt)))

    lip_corr, yaw_corr = held_out_corr(model)
    lip0, yaw0 = held_out_corr(untrained)
    print(f"\nsynthetic learning: {train_s:.1f} s training; held-out corr lip {lip_corr:.3f} yaw {yaw_corr:.3f}; "
          f"untrained lip {lip0:.3f} yaw {yaw0:.3f}")
    assert lip_corr >= 0.9, lip_corr
    assert yaw_corr >= 0.9, yaw_corr
    assert abs(lip0) < 0.6 and abs(yaw0) < 0.6, (lip0, yaw0)  # random features already track loudness a little
