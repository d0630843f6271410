"""The arithmetic of a frame against what this CPU can execute: how far exact fp32 kernels can take the renderer.

    python benchmarks/flops.py            # full-size networks (lp_fill weights when the conformance folder is there)
    python benchmarks/flops.py --quick    # the tiny config (a smoke run)

Prints: the FLOPs of one frame of W + G as the official code runs them (``fold=False``; counted by
``torch.utils.flop_counter.FlopCounterMode``, 2 FLOPs per multiply-add), per operator; the FLOP rate of oneDNN's
direct 3x3 convolution 512 -> 512 at 64x64 and of a 4096^3 MKL sgemm, both measured here with ``--threads``
threads; and from those the frame time a kernel running at the direct convolution's rate would need, against the
time the naive frame is measured to take in the same run. A ratio target ``--target`` (default 2.5) is then the
rate at which the frame's direct-convolution work would have to run, stated as a multiple of the measured rate.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def rate(fn, flops: float, rounds: int = 3) -> float:
    """FLOP/s of ``fn`` (the best of ``rounds`` after a warm-up)."""
    fn()
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return flops / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the tiny renderer config")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--target", type=float, default=2.5, help="the speed-up over the naive frame to check")
    args = ap.parse_args()

    import numpy as np
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from benchmarks.overhead import cpu_model
    from lp_renderer import Renderer, RendererConfig, RendererNetworks
    from lp_renderer.animation import driving_keypoints

    torch.set_num_threads(args.threads)
    cfg = RendererConfig.tiny() if args.quick else RendererConfig()
    r = Renderer(RendererNetworks.random(cfg, seed=0), device="cpu", fold=False, _owned=True)
    img = np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)
    with torch.no_grad():
        src = r.prepare_source(img)
        info = r.extract_motion(img[None])
        x_d = driving_keypoints(r, src, info, info)
        with FlopCounterMode(display=False) as fc:
            r.decode(r.warp(src, x_d)["out"])
        t0 = time.perf_counter()
        r.decode(r.warp(src, x_d)["out"])
        naive = time.perf_counter() - t0
    total = fc.get_total_flops()
    per_op = sorted(fc.get_flop_counts().get("Global", {}).items(), key=lambda kv: -kv[1])

    c = 64 if args.quick else 512
    x, w = torch.randn(1, c, 64, 64), torch.randn(c, c, 3, 3)
    with torch.no_grad():
        conv = rate(lambda: F.conv2d(x, w, padding=1), 2 * 64 * 64 * 9 * c * c)
    n = 1024 if args.quick else 4096
    a, b = torch.randn(n, n), torch.randn(n, n)
    gemm = rate(lambda: torch.mm(a, b), 2 * n**3)

    need = total / (naive / args.target)
    lines = [f"arithmetic of a frame: {'tiny' if args.quick else 'full-size'} networks, {cpu_model()}, "
             f"{os.cpu_count()} cores, {args.threads} torch threads, torch {torch.__version__}, load average "
             f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}", "",
             "| what | figure |", "|---|---|",
             f"| W + G of one frame, as the official code runs them | {total / 1e9:.1f} GFLOP |"]
    lines += [f"| of which {op} | {f / 1e9:.4g} GFLOP |" for op, f in per_op[:4]]
    lines += [f"| oneDNN direct 3x3 conv {c} -> {c} at 64x64 | {conv / 1e9:.0f} GFLOP/s |",
              f"| MKL sgemm {n}^3 | {gemm / 1e9:.0f} GFLOP/s |",
              f"| the naive frame (W + G), measured | {naive:.3f} s ({total / naive / 1e9:.0f} GFLOP/s, "
              f"{total / naive / conv:.0%} of the direct conv's rate) |",
              f"| the frame at the direct conv's rate | {total / conv:.3f} s |",
              f"| {args.target:g}x the naive frame | {naive / args.target:.3f} s: the frame's work at "
              f"{need / 1e9:.0f} GFLOP/s, {need / conv:.2f}x the direct conv's rate |", "",
              f"Command: `python benchmarks/flops.py{' --quick' if args.quick else ''}`"]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
