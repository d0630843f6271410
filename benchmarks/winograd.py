"""Per-layer times of W's and G's convolutions at full size: Winograd F(4x4, 3x3) on GEMMs
(``lp_renderer.fast.winograd``) against NNPACK and oneDNN, in one run.

    python benchmarks/winograd.py                 # default (official) sizes, random weights (times do not
                                                  # depend on the values), 2 threads
    python benchmarks/winograd.py --quick         # tiny config: a smoke run of this script

One frame of the folded renderer (plain convolutions) runs with a hook on every ``nn.Conv2d`` / ``nn.Conv3d`` of
W and G, which records each distinct layer signature (input shape, weight shape, padding, stride), its calls per
frame and one real input. Each signature is then timed with every kernel of ``lp_renderer.fast.autotune`` that
applies (``AutotunedConv.run``, the autotuner's own kernels), the kernels interleaved round by round and the
minimum kept (the machine is shared: a round-robin minimum is the least noisy figure). ``old`` is the kernel the
fixed CPU layer set uses without Winograd (``lp_renderer.fast.winograd.IN_LAYER_SET`` off: NNPACK for
3x3-and-larger 2-D layers, oneDNN otherwise), ``new`` the one it uses with it (the default: ``winograd`` where
``preferred`` takes the layer and the map is at most ``MAX_PIXELS``); the totals weight each signature by its calls
per frame. ``winograd-kept`` is the Winograd kernel with its transformed weight computed once (the layers transform
it per call: kept, it costs 4x the weight's memory).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def collect(quick: bool) -> tuple[dict, list]:
    """{signature: [conv, input, calls]} of W's and G's convolutions in one frame, in call order."""
    import numpy as np
    import torch
    from torch import nn

    from lp_renderer import Renderer, RendererConfig, RendererNetworks
    from lp_renderer.animation import driving_keypoints

    cfg = RendererConfig.tiny() if quick else RendererConfig()
    r = Renderer(RendererNetworks.random(cfg, seed=0), device="cpu", fold=True, _owned=True)
    seen: dict = {}

    def hook(mod, args):
        x = args[0]
        c = mod.conv if hasattr(mod, "conv") else mod
        key = (tuple(x.shape), tuple(c.weight.shape), tuple(c.padding), tuple(c.stride), c.groups)
        if key in seen:
            seen[key][2] += 1
        else:
            seen[key] = [c, x.detach().clone(), 1]

    handles = []
    for net in (r.nets.warping, r.nets.decoder):
        inner = {id(m.conv) for m in net.modules() if type(m).__name__ in ("NNPACKConv2d", "WinogradConv2d")}
        handles += [m for m in net.modules() if id(m) not in inner and (
            type(m) in (nn.Conv2d, nn.Conv3d) or type(m).__name__ in ("NNPACKConv2d", "WinogradConv2d"))]
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)
    with torch.no_grad():
        src = r.prepare_source(img)
        info = r.extract_motion(img[None])
        x_d = driving_keypoints(r, src, info, info)
        hs = [m.register_forward_pre_hook(hook) for m in handles]
        r.decode(r.warp(src, x_d)["out"])
        for h in hs:
            h.remove()
    return seen, handles


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=4, help="timed rounds per kernel (after one warm-up)")
    ap.add_argument("--quick", action="store_true", help="tiny config: a smoke run")
    ap.add_argument("--renderer-memory", action="store_true",
                    help="the allocator settings of the CLI and benchmarks/render.py (lp_renderer.fast.cpu_memory: "
                         "huge pages, 1 MiB mmap threshold); default: the allocator's defaults")
    args = ap.parse_args()
    if args.renderer_memory:
        from lp_renderer.fast.cpu_memory import enable_cpu_memory_settings

        enable_cpu_memory_settings()  # before torch loads; the glibc part when the renderer is built
    import torch

    torch.set_num_threads(args.threads)
    from lp_renderer.fast import winograd
    from lp_renderer.fast.autotune import AutotunedConv
    from lp_renderer.fast.nnpack import NNPACKConv2d

    seen, _ = collect(args.quick)
    rows, tot = [], {"old": 0.0, "new": 0.0, "onednn": 0.0}
    names = ("onednn", "nnpack", "winograd", "winograd-kept")
    with torch.no_grad():
        for key, (conv, x, calls) in seen.items():
            a = AutotunedConv(conv)
            ks = [k for k in names if k in a.kernels(x)]
            run = {k: (lambda k=k, a=a, x=x: a.run(k, x)) for k in ks}
            if "winograd" in ks:  # the same with the transformed weight kept (not done: 4x the weight's memory)
                u = winograd.transform_weight(conv.weight)
                run["winograd-kept"] = lambda u=u, x=x, c=conv: winograd.winograd_conv2d(x, u, c.bias, tuple(c.padding))
            best = dict.fromkeys(run, float("inf"))
            for fn in run.values():
                fn()  # warm-up (NNPACK's init, first-touch of buffers)
            for _ in range(args.rounds):
                for k, fn in run.items():
                    t0 = time.perf_counter()
                    fn()
                    best[k] = min(best[k], time.perf_counter() - t0)
            old = "nnpack" if NNPACKConv2d.eligible(conv) and "nnpack" in ks else "onednn"
            new = "winograd" if winograd.preferred(conv) and x.shape[2] * x.shape[3] <= winograd.MAX_PIXELS else old
            tot["old"] += calls * best[old]
            tot["new"] += calls * best[new]
            tot["onednn"] += calls * best["onednn"]
            rows.append((key, calls, best, old, new))
    print(f"per-layer conv times, {'tiny' if args.quick else 'default (official)'} config, fp32 CPU, "
          f"{args.threads} threads, torch {torch.__version__}, "
          f"{'the renderer allocator settings' if args.renderer_memory else 'default allocator'}")
    print(f"CPU: {_cpu()}; load average {'{:.2f} {:.2f} {:.2f}'.format(*os.getloadavg())} at the end\n")
    print("| input (B, C, [D,] H, W) | weight | calls/frame | onednn ms | nnpack ms | winograd ms | winograd, weight "
          "kept ms | fixed -> rule | fixed / rule |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (xs, ws, *_), calls, best, old, new in rows:
        ms = [f"{best[k] * 1000:.1f}" if k in best else "-" for k in names]
        print(f"| {xs} | {ws} | {calls} | " + " | ".join(ms) + f" | {old} -> {new} | "
              f"{best[old] / best[new]:.2f}x |")
    print(f"\nper frame (calls x time, these layers): onednn everywhere {tot['onednn']:.3f} s, the fixed set "
          f"without Winograd {tot['old']:.3f} s, with the Winograd rule (the default) {tot['new']:.3f} s "
          f"(without / with {tot['old'] / tot['new']:.2f}x)")
    print(f"\nCommand: `{shlex.join(['python', 'benchmarks/winograd.py', *sys.argv[1:]])}`")


def _cpu() -> str:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from render import cpu_label

    return cpu_label()


if __name__ == "__main__":
    main()
