"""Speed of the default motion (speech -> per-frame motion): features + model, offline and streaming.

    python benchmarks/motion_speed.py                 # 10 s and 30 s of audio, 2 threads
    python benchmarks/motion_speed.py --quick         # 4 s, smoke run
    python benchmarks/motion_speed.py --threads 1     # one core

Everything is measured in this run on the shipped weights (``audio2lp/assets/landmark_motion.safetensors``, or
``--model``); the audio is a synthetic speech-like signal (the cost does not depend on the content). Figures are
frames of motion (25 per second of speech) made per second, and that as a multiple of real time (``x real time``
= seconds of speech per second), both per wall-clock second and per CPU second of this process (the CPU figures
are what the work costs when other jobs share the cores; with N threads, one wall second can hold N CPU seconds).
Rows:

- ``streaming features (offline, batched windows)``: :meth:`StreamingEncoder.encode` of the padded audio;
- ``lip-sync model (30 s-window features + predict)``: the lip the default blends in (today's lip-sync model);
- ``landmark model (generate)``: :meth:`LandmarkMotionModel.generate` given the features and the lip;
- ``offline chain``: the three above, what ``audio2lp motion`` / ``speak`` run on a whole file;
- ``streaming chain``: audio pushed in 80 ms chunks through :class:`FeatureStream` and :class:`MotionStream`
  (one window per encoder call, frame by frame; the lip-sync blend is not streamable and not included);
- baseline, same run: ``today (lip-sync model + sway + blinks)``, the previous default's motion.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FPS = 25


def speech_like(seconds: float, seed: int = 0) -> np.ndarray:
    """16 kHz float32 audio: a 120-200 Hz voiced buzz with formant-like harmonics, syllable-rate loudness and
    pauses."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000.0
    f0 = 150 + 40 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / 16000.0
    voice = sum(np.sin(k * phase) / k for k in range(1, 12))
    env = np.clip(np.sin(2 * np.pi * 4.0 * t), 0, None) * (np.sin(2 * np.pi * 0.25 * t) > -0.6)
    return (0.1 * voice * env + 0.003 * rng.standard_normal(t.size)).astype(np.float32)


def timed(fn, repeats: int):
    """``((wall s, CPU s of this process), result)`` of the fastest of ``repeats`` calls."""
    best, out = (float("inf"), float("inf")), None
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        t = (time.perf_counter() - t0, time.process_time() - c0)
        best = min(best, t)
    return best, out


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, nargs="+", default=None, help="audio lengths (default 10 30)")
    ap.add_argument("--quick", action="store_true", help="4 s of audio, one repeat")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2: the 2 CPU cores)")
    ap.add_argument("--repeats", type=int, default=2, help="best of N (default 2)")
    ap.add_argument("--chunk-ms", type=int, default=80, help="streaming chunk (default 80 ms)")
    ap.add_argument("--model", default=None, help="landmark motion weights (default: the shipped ones)")
    a = ap.parse_args(argv)
    seconds = [4.0] if a.quick else (a.seconds or [10.0, 30.0])
    repeats = 1 if a.quick else a.repeats
    from lp_renderer.fast.cpu_memory import request_huge_pages

    request_huge_pages()
    torch.set_num_threads(a.threads)

    from audio2lp.models.landmark_motion import load_landmark_motion
    from audio2lp.models.lipsync import load_lipsync_model
    from audio2lp.whisper.features import WhisperEncoder
    from audio2lp.whisper.stream import StreamingEncoder

    model = load_landmark_motion(a.model)
    lips = load_lipsync_model()
    whisper = WhisperEncoder(model.config.features.whisper_model)
    enc = StreamingEncoder(model.config.features, encoder=whisper)
    lip_enc = whisper if lips.config.whisper_model == model.config.features.whisper_model else \
        WhisperEncoder(lips.config.whisper_model)

    def lipsync_lip(audio, n):
        f = lip_enc.encode(audio, layers=lips.config.whisper_layers, progress=False)
        return lips.predict(f, n)

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"# motion speed: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
          f"{torch.__version__}, {a.threads} thread(s), load average {load} (other jobs share the cores); command: "
          f"python benchmarks/motion_speed.py {shlex.join(argv)}".rstrip())
    print(f"# model: {model.config.features}; lip-sync weight {model.lip_mix.lipsync_weight}")
    print("| audio | part | wall s | frames/s (wall) | x real time (wall) | CPU s | frames per CPU s | x real time per "
          "CPU s |")
    print("|---|---|---|---|---|---|---|---|")
    for sec in seconds:
        measure_length(sec, a, model, enc, lipsync_lip, repeats)


def measure_length(sec: float, a, model, enc, lipsync_lip, repeats: int) -> None:
    """The table rows of ``sec`` seconds of audio."""
    from audio2lp.models.idle import blink_schedule, idle_head_motion
    from audio2lp.models.landmark_motion import MotionStream, pad_audio

    audio = speech_like(sec)
    n = int(np.ceil(sec * FPS))

    def row(name, s):
        wall, cpu = s
        print(f"| {sec:.0f} s | {name} | {wall:.2f} | {n / wall:.0f} | {sec / wall:.1f}x | {cpu:.2f} | {n / cpu:.0f} | "
              f"{sec / cpu:.1f}x |")

    def add(*ts):
        return tuple(sum(x) for x in zip(*ts))

    t_feat, feats = timed(lambda: enc.encode(pad_audio(audio, model.config)), repeats)
    t_lip, pred = timed(lambda: lipsync_lip(audio, n), repeats)
    lip = pred.lip_open_raw if model.lip_mix.lipsync_weight > 0 else None
    t_gen, _ = timed(lambda: model.generate(feats, n, seed=0, lipsync_lip=lip), repeats)
    row("streaming features (offline, batched windows)", t_feat)
    row("lip-sync model (30 s-window features + predict)", t_lip)
    row("landmark model (generate)", t_gen)
    row("**offline chain** (features + lip-sync + model)", add(t_feat, t_lip, t_gen))

    def streaming():
        fs, ms = enc.stream(), MotionStream(model, 0)
        padded = pad_audio(audio, model.config)
        step = int(16000 * a.chunk_ms / 1000)
        made = 0
        for i in range(0, padded.size, step):
            made += ms.push(fs.push(padded[i:i + step]))[0].shape[0]
        made += ms.push(fs.flush())[0].shape[0]
        if made < n:
            ms.flush(n - made)

    t_stream, _ = timed(streaming, repeats)
    row(f"**streaming chain** ({a.chunk_ms} ms chunks, features + model)", t_stream)

    def today():
        p = lipsync_lip(audio, n)
        blink_schedule(n, seed=0)
        idle_head_motion(n, speaking=~p.closed, seed=0)

    t_today, _ = timed(today, repeats)
    row("baseline: today (lip-sync model + sway + blinks)", t_today)
    chain = add(t_feat, t_lip, t_gen)
    print(f"| {sec:.0f} s | time of the offline chain / time of today | {chain[0] / t_today[0]:.2f} | | | "
          f"{chain[1] / t_today[1]:.2f} | | |")

if __name__ == "__main__":
    main()
