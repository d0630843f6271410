"""`speak`'s default motion when the renderer is on CUDA: the streaming Whisper windows run there too
(:func:`audio2lp.whisper.stream.whisper_device`), so a GPU machine's CPU does none of the encoder's work.

The CUDA tests are marked ``gpu`` and skip as optional where there is no CUDA device (every machine of this project
so far). Tolerances against the CPU's features: relative 1e-2 of the features' scale (TF32 convolutions on Ampere
and later, other kernels per batch size); the motion rows within 0.02 of the CPU's (the lip ratio, eyes and scale are
O(0.1-1), angles in degrees within 0.5; the lip's 98th percentile, since the pause gate may close the mouth a
frame earlier or later).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from audio2lp.media.audio import load_audio
from audio2lp.speech import SpeechModels, speech_motion
from audio2lp.speech_motion import SERIES
from audio2lp.streaming import SpeechMotionStream
from audio2lp.whisper.stream import StreamingEncoder, whisper_device

SPEECH = "speech/MakeItTalk__M6_04_16k.wav"
ANGLES = ("pitch", "yaw", "roll")


def test_whisper_runs_on_the_renderers_cuda_device_else_the_cpu():
    assert whisper_device("cuda") == torch.device("cuda")
    assert whisper_device(torch.device("cuda", 1)) == torch.device("cuda", 1)
    for other in ("cpu", torch.device("cpu"), "mps", "meta"):
        assert whisper_device(other) == torch.device("cpu")


def test_speak_asks_for_whisper_where_whisper_device_says(monkeypatch):
    """speech_motion loads its streaming encoder for whisper_device(device) (here: a CUDA request is recorded,
    then refused before any work, since this machine has none)."""
    asked = []

    class Stop(Exception):
        pass

    def fake_whisper(self, name, checkpoint, device):
        asked.append(torch.device(device))
        raise Stop

    monkeypatch.setattr(SpeechModels, "whisper", fake_whisper)
    for device in ("cpu", "cuda"):
        with pytest.raises(Stop):
            speech_motion(np.zeros(16000, np.float32), 25, 25, device=device, progress=False, models=SpeechModels())
    assert asked == [torch.device("cpu"), torch.device("cuda")]


@pytest.fixture(scope="module")
def wav(data_dir):
    return load_audio(data_dir / SPEECH)[: 4 * 16000]


@pytest.mark.gpu
@pytest.mark.realdata
def test_streaming_features_on_cuda_match_the_cpu(cuda, wav):
    models = SpeechModels()
    cfg = models.landmark().config.features
    cpu = StreamingEncoder(cfg, models.whisper(cfg.whisper_model, None, "cpu")).encode(wav)
    gpu = StreamingEncoder(cfg, models.whisper(cfg.whisper_model, None, cuda)).encode(wav)
    assert gpu.dtype == np.float32 and gpu.shape == cpu.shape
    assert np.abs(gpu - cpu).max() <= 1e-2 * np.abs(cpu).max()


@pytest.mark.gpu
@pytest.mark.realdata
def test_speak_and_stream_motion_on_cuda_match_the_cpu(cuda, wav):
    n = round(len(wav) / 16000 * 25)
    want = speech_motion(wav, n, 25, seed=3, progress=False, device="cpu")
    got = speech_motion(wav, n, 25, seed=3, progress=False, device=cuda)
    s = SpeechMotionStream(seed=3, device=cuda)
    rows = np.concatenate([s.push(wav[i:i + 320]) for i in range(0, len(wav), 320)] + [s.finish()])
    streamed = dict(zip(SERIES, (rows[:, 0], rows[:, 1:3], rows[:, 3], rows[:, 4], rows[:, 5], rows[:, 6],
                                 rows[:, 7], rows[:, 8])))
    for k in SERIES:
        tol = 0.5 if k in ANGLES else 0.02
        for a, b in ((getattr(got, k), getattr(want, k)), (streamed[k], getattr(got, k))):
            diff = np.abs(a - b)
            # the pause gate may close the lip a frame earlier or later: the lip's 98th percentile
            assert (np.percentile(diff, 98) if k == "lip_open" else diff.max()) <= tol, k
