"""Per-frame render time and peak memory: the naive path against the optimised one, in one run.

    python benchmarks/render.py                  # default (official) sizes, random weights
    python benchmarks/render.py --weights DIR    # real weights (same speed; numbers are data-independent)
    python benchmarks/render.py --quick          # tiny config, a smoke run

A frame is what the drive loop does per driving frame: M on the driving crop, relative motion and
stitching, W, G. F runs once per source and is reported separately. Each path runs in a child
process of its own so its peak RSS is its own:

* naive     - the networks as loaded (spectral norm and BatchNorm evaluated every call, no per-source
              cache, direct convolutions), batch 1: what the official code does;
* optimised - the default Renderer (folded, fast layers, per-source cache), batch 1 and batch 8.

Threads default to 2 (``--threads``); fp32 on the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def child(args) -> dict:
    import numpy as np
    import torch

    from lp_renderer import Renderer, RendererConfig, RendererNetworks
    from lp_renderer.keypoints import relative_motion

    torch.set_num_threads(args.threads)
    cfg = RendererConfig.tiny() if args.quick else RendererConfig()
    fold = args.mode != "naive"
    if args.weights:
        r = Renderer.from_weights(args.weights, device="cpu", fold=fold)
    else:
        r = Renderer(RendererNetworks.random(cfg, seed=0), device="cpu", fold=fold, _owned=True)
    rng = np.random.default_rng(0)
    src_img = rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)
    b = args.batch
    n_batches = args.frames // b if b > 1 else args.frames
    drv = rng.integers(0, 255, (b, 256, 256, 3), dtype=np.uint8)
    t = {"F": 0.0, "M": 0.0, "stitch": 0.0, "W": 0.0, "G": 0.0}

    def timed(key, fn):
        t0 = time.perf_counter()
        out = fn()
        t[key] += time.perf_counter() - t0
        return out

    with torch.no_grad():
        # warm-up (first-call allocations, FFT plans, weight spectra)
        src = r.prepare_source(src_img)
        ref = r.extract_motion(drv[:1])
        r.decode(r.warp(src, r.stitch(src.x_s, relative_motion(src.info, ref, ref)))["out"])
        t0 = time.perf_counter()
        src = r.prepare_source(src_img)
        if not fold:
            src.warp_cache = {}
        t["F"] = time.perf_counter() - t0
        for _ in range(n_batches):
            info = timed("M", lambda: r.extract_motion(drv))
            x_d = timed("stitch", lambda info=info: r.stitch(src.x_s, relative_motion(src.info, info, ref)))
            warped = timed("W", lambda x_d=x_d: r.warp(src, x_d)["out"])
            timed("G", lambda warped=warped: r.decode(warped))
    frames = n_batches * b
    per_frame = {k: v / frames for k, v in t.items() if k != "F"}
    per_frame["total"] = sum(per_frame.values())
    return {"mode": args.mode, "batch": b, "frames": frames, "F_once": t["F"], "per_frame": per_frame,
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", help="official weights folder (default: random weights, same cost)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--frames", type=int, default=3, help="frames per batch-1 path (batch 8 renders 2 batches)")
    ap.add_argument("--quick", action="store_true", help="tiny config smoke run")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="optimised", help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    runs = [("naive", 1, args.frames), ("optimised", 1, args.frames), ("optimised", 8, 16)]
    results = []
    for mode, batch, frames in runs:
        cmd = [sys.executable, __file__, "--child", "--mode", mode, "--batch", str(batch), "--frames", str(frames),
               "--threads", str(args.threads)] + (["--quick"] if args.quick else []) + \
              (["--weights", args.weights] if args.weights else [])
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=dict(os.environ)).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
    base = results[0]["per_frame"]["total"]
    print(f"render benchmark: {'tiny' if args.quick else 'default (official)'} config, fp32 CPU, "
          f"{args.threads} threads, {os.cpu_count()} cores")
    print(f"{'path':<22}{'M':>8}{'stitch':>8}{'W':>8}{'G':>8}{'total':>9}{'speed-up':>10}{'peak RSS':>11}")
    for r in results:
        pf = r["per_frame"]
        name = f"{r['mode']} batch {r['batch']}"
        print(f"{name:<22}{pf['M']:8.3f}{pf['stitch']:8.4f}{pf['W']:8.3f}{pf['G']:8.3f}{pf['total']:9.3f}"
              f"{base / pf['total']:9.2f}x{r['peak_rss_gib']:9.2f} GiB")
    print("seconds per frame; F (once per source): " +
          ", ".join(f"{r['mode']} b{r['batch']} {r['F_once']:.2f} s" for r in results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
