"""Speed of motion generation: cached windowed decoding vs FaceFormer's uncached loop.

    python benchmarks/motion.py            # 10 s, 60 s and 600 s of audio (uncached: tens of minutes)
    python benchmarks/motion.py --quick    # smoke run in seconds: 1 s, 2 s and 10 s

Random Whisper-like features at 50 Hz with the tiny.en width (384) and the default MotionModelConfig.
Everything in the table is measured in this run; nothing is estimated.

* cached: :meth:`MotionModel.generate` (key/value cache, 250-frame windows) over all frames.
* uncached: :meth:`MotionModel.generate_uncached`, FaceFormer's loop, which re-runs the decoder over the
  whole prefix for every frame (one window). Frame ``t`` costs O(t) (O(t^2) attention), so a full 600 s
  run (15000 frames) would take hours and, for its last frames, ~10 GB just for the attention weights and
  masks (4 heads x 15000 frames x 30000 audio tokens, float32). So the uncached loop runs over at most
  ``--uncached-frames`` frames (default 1500 = the first 60 s): for a longer input it is timed over its
  first N frames and frames/s is N / time. Those are its cheapest frames, so that uncached frames/s is an
  upper bound and the speed-up a lower bound; the table says how many frames were timed.
  ``--uncached-frames 0`` runs the uncached loop over every frame.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shlex
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from audio2lp.models.motion_model import MotionModel, MotionModelConfig  # noqa: E402

FPS = 25  # motion frames per second of audio
TOKENS = 50  # Whisper tokens per second of audio


def timed(fn, repeats: int = 1) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="smoke run in seconds: 1 s, 2 s and 10 s of audio, uncached over at most 50 frames")
    ap.add_argument("--seconds", type=float, nargs="+", default=None,
                    help="audio durations to measure (default 10 60 600; --quick: 1 2 10)")
    ap.add_argument("--uncached-frames", type=int, default=None,
                    help="time the uncached loop over at most this many (first) frames of each input; 0 = all "
                         "(default 1500, --quick: 50)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads for the uncached loop (default 1: on a shared 2-core machine two "
                         "threads made it up to 40x slower, which would inflate the speed-up)")
    args = ap.parse_args(argv)
    seconds = args.seconds or ([1, 2, 10] if args.quick else [10, 60, 600])
    cap = args.uncached_frames if args.uncached_frames is not None else (50 if args.quick else 1500)
    if cap < 0 or any(s <= 0 for s in seconds):
        ap.error("--uncached-frames must be >= 0 and --seconds > 0")
    torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    cfg = MotionModelConfig(audio_dim=384, whisper_model="tiny.en")
    model = MotionModel(cfg).eval()
    torch.nn.init.normal_(model.head.weight, std=0.1)  # (speed does not depend on it)
    gen_kw = dict(window=250, overlap=25, context=50)
    model.generate(torch.randn(100, 384))  # warm-up (first calls are slow)
    model.generate_uncached(torch.randn(20, 384))

    rows = []
    feats = {s: torch.randn(round(TOKENS * s), 384) for s in seconds}
    for s in seconds:  # all cached runs first, so that the peak RSS is theirs
        n = -(-feats[s].shape[0] // 2)
        tc = timed(lambda f=feats[s]: model.generate(f, **gen_kw), repeats=3 if s <= 60 else 1)
        rows.append(dict(s=s, n=n, tc=tc, rss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
    for r in rows:
        r["nu"] = r["n"] if cap == 0 else min(r["n"], cap)
        r["tu"] = timed(lambda f=feats[r["s"]], k=r["nu"]: model.generate_uncached(f, n_frames=k))

    cmd = "python benchmarks/motion.py" + "".join(" " + shlex.quote(a) for a in argv)
    print(f"Command: `{cmd}`")
    print()
    print(f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, "
          f"torch {torch.__version__}; uncached loop on {torch.get_num_threads()} intra-op thread(s), the cached "
          f"per-frame loop always on 1. Motion model: d_model={cfg.d_model}, n_heads={cfg.n_heads}, "
          f"n_layers={cfg.n_layers}, audio_dim={cfg.audio_dim} ({sum(p.numel() for p in model.parameters()):,} "
          f"parameters); cached windows: {gen_kw['window']} frames, overlap {gen_kw['overlap']}, context "
          f"{gen_kw['context']}.")
    print()
    print("| audio | frames | cached s | cached frames/s | uncached frames timed | uncached s | uncached frames/s "
          "| speed-up (cached / uncached frames/s) | peak RSS MB |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        fc, fu = r["n"] / r["tc"], r["nu"] / r["tu"]
        partial = r["nu"] < r["n"]
        timed_txt = f"first {r['nu']} of {r['n']}" if partial else f"all {r['n']}"
        bound = "≥ " if partial else ""
        ratio = fc / fu
        print(f"| {r['s']:g} s | {r['n']} | {r['tc']:.2f} | {fc:.0f} | {timed_txt} | {r['tu']:.2f} | "
              f"{'≤ ' if partial else ''}{fu:.1f} | {bound}{ratio:.{1 if ratio < 10 else 0}f}x | {r['rss']:.0f} |")
    print()
    print("cached: best of 3 runs (1 run above 60 s of audio), all frames. uncached: 1 run; where it was timed over "
          "the first N frames only, its frames/s is N / time: the first frames are its cheapest (each frame "
          "re-decodes the whole prefix), so it is an upper bound (≤) and the speed-up a lower bound (≥). "
          "peak RSS: of the whole process after the cached run of that length (cached runs go first).")


if __name__ == "__main__":
    main()
