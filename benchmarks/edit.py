"""`edit`: what a whole edit costs against what a slider change costs once the portrait is prepared (the web app's
Edit tab keeps the prepared portrait per upload, so a released slider only re-renders).

    python benchmarks/edit.py             # default (official) sizes, random weights, a real 1080x1080 portrait
    python benchmarks/edit.py --quick     # tiny renderer config: a smoke run of this script

Rows, in one run: ``cold`` = ``Animator.edit(path, ...)`` (image decode, face detection and landmarks, crop, F, M,
W's per-source cache, then the tab's keypoints, stitching, W, G, paste-back, PNG); ``prepare`` =
``Animator.portrait(path)`` alone; ``re-render`` = ``Animator.edit(prepared, ...)`` with other slider values. The
renderer is loaded (and warmed by one edit) before timing; each row is the median of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="tiny renderer config")
    ap.add_argument("--portrait", default="portraits/JoyVASA__joyvasa_006.jpg",
                    help="a photo, relative to $AUDIO2LP_TEST_DATA (default ../shared/data)")
    args = ap.parse_args()

    from lp_renderer.fast.cpu_memory import enable_cpu_memory_settings

    enable_cpu_memory_settings()  # before torch loads, as the command line does
    import torch

    from audio2lp.api import Animator
    from lp_renderer import RendererConfig, RendererNetworks
    from lp_renderer.weights import save_networks

    torch.set_num_threads(args.threads)
    data = Path(os.environ.get("AUDIO2LP_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    portrait = data / args.portrait
    if not portrait.is_file():
        sys.exit(f"{portrait} not found (set AUDIO2LP_TEST_DATA)")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cfg = RendererConfig.tiny() if args.quick else RendererConfig()
        save_networks(RendererNetworks.random(cfg, seed=0), tmp / "weights")
        anim = Animator(tmp / "weights", device="cpu", progress=False)
        anim.edit(portrait, tmp / "warm.png", smile=0.5)  # loads the networks and the face models

        def timed(fn) -> float:
            times = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            return statistics.median(times)

        cold = timed(lambda: anim.edit(portrait, tmp / "cold.png", smile=0.6, gaze_x=10))
        prepare = timed(lambda: anim.portrait(portrait, crop_scale=2.5))
        prepared = anim.portrait(portrait, crop_scale=2.5)
        rerender = timed(lambda: anim.edit(prepared, tmp / "again.png", smile=0.9, wink=12, yaw=-8))
    size = "tiny" if args.quick else "default (official)"
    print("| row | seconds | cold / row |\n|---|---|---|")
    for name, t in (("cold (a whole edit)", cold), ("prepare (once per upload)", prepare),
                    ("re-render (a slider change)", rerender)):
        print(f"| {name} | {t:.2f} | {cold / t:.2f}x |")
    print(f"\n{size} sizes, random weights, {args.threads} threads, torch {torch.__version__}, "
          f"{portrait.name}, median of {args.repeat}\ncommand: python benchmarks/edit.py "
          + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
