"""Speed of motion generation: cached windowed decoding vs FaceFormer's uncached loop.

    python benchmarks/motion.py            # 10 s, 60 s and 600 s of audio (a few minutes)
    python benchmarks/motion.py --quick    # smoke run: 2 s and 6 s

Random Whisper-like features at 50 Hz with the tiny.en width (384) and the default
MotionModelConfig. The uncached loop recomputes the whole prefix for every frame, so its time grows
as T^2; it is skipped for the longest input and estimated from the two shorter ones
(t = a*T^2 + b*T through both points).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from audio2lp.motion_model import MotionModel, MotionModelConfig  # noqa: E402


def timed(fn, repeats: int = 1) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run with 2 s and 6 s of audio")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads for the uncached loop (default 1: on a shared 2-core machine two "
                         "threads made it up to 40x slower, which would inflate the speed-up)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    seconds = (2, 6) if args.quick else (10, 60, 600)
    uncached_max = seconds[1]  # the uncached loop runs for the two shorter inputs only

    torch.manual_seed(0)
    cfg = MotionModelConfig(audio_dim=384, whisper_model="tiny.en")
    model = MotionModel(cfg).eval()
    torch.nn.init.normal_(model.head.weight, std=0.1)  # (speed does not depend on it)
    gen_kw = dict(window=250, overlap=25, context=50)
    print(f"motion model: d_model={cfg.d_model} n_heads={cfg.n_heads} n_layers={cfg.n_layers} "
          f"audio_dim={cfg.audio_dim} ({sum(p.numel() for p in model.parameters()):,} parameters); "
          f"cached: window={gen_kw['window']} overlap={gen_kw['overlap']} context={gen_kw['context']}")
    print(f"torch {torch.__version__}, intra-op threads {torch.get_num_threads()} "
          f"(the cached per-frame loop always runs on 1)")
    model.generate(torch.randn(100, 384))  # warm-up (first calls are slow)
    model.generate_uncached(torch.randn(20, 384))

    rows, unc = [], {}
    feats = {s: torch.randn(50 * s, 384) for s in seconds}
    for s in seconds:  # all cached runs first, so that the peak RSS is theirs
        tc = timed(lambda f=feats[s]: model.generate(f, **gen_kw), repeats=3 if s <= 60 else 1)
        rows.append([s, 25 * s, tc, None, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024])
    for row in rows:
        if row[0] <= uncached_max:
            row[3] = unc[row[1]] = timed(lambda f=feats[row[0]]: model.generate_uncached(f))

    (n1, t1), (n2, t2) = sorted(unc.items())[:2]
    a = (t2 / n2 - t1 / n1) / (n2 - n1)  # t/T = a*T + b
    b = t1 / n1 - a * n1
    print(f"{'audio':>6} {'frames':>7} {'cached s':>9} {'cached fps':>11} {'uncached s':>11} {'uncached fps':>13} "
          f"{'speed-up':>9} {'peak RSS MB':>12}")
    for s, n, tc, tu, rss in rows:
        est = tu is None
        tu = tu if tu is not None else a * n * n + b * n
        mark = "~" if est else " "
        print(f"{s:>5}s {n:>7} {tc:>9.2f} {n / tc:>11.0f} {mark}{tu:>10.1f} {mark}{n / tu:>12.1f} "
              f"{mark}{tu / tc:>8.0f}x {rss:>12.0f}")
    print("peak RSS: of the whole process after the cached run of that length (cached runs go first).")
    if any(r[3] is None for r in rows):
        print(f"~ = estimated, not run: the uncached loop for {seconds[-1]} s would take about "
              f"{(a * rows[-1][1] ** 2 + b * rows[-1][1]) / 60:.0f} min (t = a*T^2 + b*T fitted to the "
              f"{seconds[0]} s and {seconds[1]} s runs).")
    print("cached fps measured best of 3 (1 run for the longest); uncached 1 run.")


if __name__ == "__main__":
    main()
