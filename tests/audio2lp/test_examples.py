"""The scripts in examples/ run (in a subprocess, with tiny random renderer weights and a tiny random motion
model standing in for the built-in lip-sync model)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lp_renderer.weights import save_networks
from tests.conftest import REPO

EXAMPLES = REPO / "examples"
PORTRAIT = "portraits/EAMM__14.png"
SPEECH = "speech/MakeItTalk__M6_04_16k.wav"
TALKING = "talking/Talking-Face_PC-AVS__00010.mp4"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    import torch

    from audio2lp.models.motion import MotionStats
    from audio2lp.models.motion_model import MotionModel, MotionModelConfig, save_motion_model
    from lp_renderer import RendererConfig, RendererNetworks

    root = tmp_path_factory.mktemp("tiny")
    save_networks(RendererNetworks.random(RendererConfig.tiny(), seed=0), root / "weights")
    torch.manual_seed(0)
    mean = np.zeros(70, np.float32)
    mean[69] = 1.5
    save_motion_model(root / "mm.safetensors", MotionModel(MotionModelConfig(d_model=32, n_layers=1)),
                      MotionStats(mean, np.full(70, 0.01, np.float32)))
    return {"weights": root / "weights", "motion_model": root / "mm.safetensors"}


def _run(script: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS="2", PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, str(EXAMPLES / script), *args], cwd=cwd, env=env, capture_output=True,
                       text=True, timeout=1200, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, f"{script} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def _load_example(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_speech_fallback_without_espeak(tmp_path, monkeypatch, capsys):
    mod = _load_example("make_inputs_and_run")
    monkeypatch.setattr(mod.shutil, "which", lambda name: None)
    path = mod.make_speech(tmp_path, None, "ignored")
    assert "espeak-ng is not installed" in capsys.readouterr().out
    from audio2lp.media.audio import load_audio

    wav = load_audio(path)
    assert 3.5 < len(wav) / 16000 < 4.5 and 0.05 < np.abs(wav).max() <= 0.31


@pytest.mark.slow
def test_make_inputs_and_run(tiny, tmp_path):
    pytest.importorskip("skimage")
    from audio2lp.media.probe import probe_video

    r = _run("make_inputs_and_run.py", ["--weights", str(tiny["weights"]), "--motion-model", str(tiny["motion_model"]),
                                        "--out", "demo", "--text", "Hello there.", "--max-frames", "5",
                                        "--device", "cpu"], tmp_path)
    demo = tmp_path / "demo"
    assert "speak:" in r.stdout and "drive:" in r.stdout
    for name in ("portrait.png", "speech.wav", "talk.mp4", "driven.mp4", "motion.npz"):
        assert (demo / name).is_file(), name
    talk = probe_video(demo / "talk.mp4")
    assert talk.has_audio and talk.n_frames >= 10
    assert probe_video(demo / "driven.mp4").n_frames == 5


@pytest.mark.realdata
def test_api_example(tiny, data_dir, tmp_path):
    from audio2lp.media.audio import load_audio, write_wav
    from audio2lp.media.probe import probe_video
    from audio2lp.media.reader import read_frames
    from audio2lp.media.writer import VideoWriter

    speech = write_wav(tmp_path / "speech.wav", load_audio(data_dir / SPEECH)[:16000])
    clip = tmp_path / "driving.mp4"
    with VideoWriter(clip, 25.0) as w:
        for frame in read_frames(data_dir / TALKING, max_frames=6):
            w.write(frame)
    _run("api_example.py", [str(data_dir / PORTRAIT), str(speech), "--driving", str(clip), "--out", "res",
                            "--weights", str(tiny["weights"]), "--motion-model", str(tiny["motion_model"])], tmp_path)
    res = tmp_path / "res"
    assert probe_video(res / "talk.mp4").n_frames == 25
    assert probe_video(res / "driven.mp4").n_frames == 6
    assert (res / "motion.npz").is_file()
