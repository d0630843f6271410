"""Per-stage and per-frame render time and peak memory: the naive path against the optimised one, in one run.

    python benchmarks/render.py                  # default (official) sizes with filled weights (see below)
    python benchmarks/render.py --weights DIR    # real weights (same cost; the numbers are data-independent)
    python benchmarks/render.py --random         # default sizes, random weights (no conformance folder needed)
    python benchmarks/render.py --quick          # tiny config, random weights: a smoke run of this script

Weights: by default, when the conformance folder (``$AUDIO2LP_CONFORMANCE_DIR``, default
``../shared/conformance``) is present, its ``lp_fill.py`` weights are written in the official release
layout (``liveportrait/base_models/*.pth``, the stitching dict with ``module.`` keys) to a temporary
folder and loaded with ``Renderer.from_weights``, exactly as ``tests/conftest.py::filled_weights_dir``
does; without that folder the script falls back to random weights and says so.

A frame is what the drive loop does per driving frame: M on the driving crop, Algorithm 1 with the
default options (``lp_renderer.animation.driving_keypoints``: relative motion, expression-friendly,
stitching MLP), W, G. The source preparation runs once per source and is reported separately (F alone,
and the whole ``prepare_source``: F, M and W's per-source cache). Each path runs in a child process of
its own so its peak RSS is its own:

* naive     - the networks as loaded (spectral norm and BatchNorm evaluated every call, no per-source
              cache, direct convolutions), batch 1: what the official code does;
* optimised - the default Renderer with per-layer kernel autotuning opted in (``LP_RENDERER_AUTOTUNE=1``; folded,
              fast layers, autotuning
              (``lp_renderer.fast.autotune``, tuned in this run: the child starts with an empty kernel cache, and the
              "tuning" column is the seconds its first frame spent timing kernels), per-source cache, the
              allocator settings of ``lp_renderer.fast.cpu_memory``, opted in as the CLI does), batch 1 and 8;
* optimised-no-autotune - the same at batch 1 with ``LP_RENDERER_AUTOTUNE=0`` (the default Renderer): the CPU layer
              set's fixed kernels
              (NNPACK for W's and G's 3x3-and-larger 2-D convolutions but Winograd on GEMMs for G's 3x3 layers with
              >= 128 channels on 64x64 maps, the FFT mask convolution, oneDNN elsewhere);
* optimised-no-winograd - the default Renderer at batch 1 (no autotuning) without the Winograd GEMM kernel of
              ``lp_renderer.fast.winograd`` in its fixed layer set (``IN_LAYER_SET`` off): NNPACK for G's 3x3 layers
              with >= 128 channels on 64x64 maps too, as before that kernel.
* optimised-default-malloc - the same at batch 1 with the allocator's defaults (what those settings buy).
* onnxruntime - the networks exported to ONNX (``lp_renderer.onnx_backend.export_onnx``: folded, plain layers,
              no per-source cache) and run by onnxruntime's CPU execution provider with the same threads,
              batch 1 (``audio2lp speak/drive --backend onnxruntime``); the export is not timed, but its
              peak memory (the PyTorch networks, tracing) is in that row's peak RSS.

``--paths`` picks some of them (default all; the naive one always runs first: it is the baseline).

The naive path also runs with the allocator's defaults, as the official code would.

Threads default to 2 (``--threads``); fp32 on the CPU. The output ends with a Markdown table and the
exact command, ready for ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import platform
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

STAGES = ("M", "stitch", "W", "G")


def conformance_dir() -> Path:
    return Path(os.environ.get("AUDIO2LP_CONFORMANCE_DIR", REPO.parent / "shared" / "conformance"))


def write_filled_weights(root: Path) -> Path:
    """lp_fill's weights in the official release layout under ``root`` (as tests/conftest.py does)."""
    import importlib.util

    from lp_renderer.weights import write_official_pth

    spec = importlib.util.spec_from_file_location("lp_fill", conformance_dir() / "lp_fill.py")
    lp_fill = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lp_fill)
    files = {key: lp_fill.state_dict_for(key) for key in
             ("appearance_feature_extractor", "motion_extractor", "warping_module", "spade_generator")}
    files["stitching_retargeting_module"] = {n: lp_fill.state_dict_for(n) for n in ("stitching", "lip", "eye")}
    return write_official_pth(root, files)


def child(args) -> dict:
    # the allocator settings as the command line opts in: huge pages before torch loads, the glibc settings when
    # the folded renderer is built (the naive and default-malloc runs turn both off in their environment)
    from lp_renderer.fast.cpu_memory import enable_cpu_memory_settings

    enable_cpu_memory_settings()
    import numpy as np
    import torch

    from lp_renderer import Renderer, RendererConfig, RendererNetworks
    from lp_renderer.animation import driving_keypoints

    torch.set_num_threads(args.threads)
    fold = args.mode != "naive"
    if args.mode == "optimised-no-winograd":
        from lp_renderer.fast import winograd

        winograd.IN_LAYER_SET = False
    if args.mode == "onnxruntime":
        r = onnx_renderer(args)
    elif args.weights:
        r = Renderer.from_weights(args.weights, device="cpu", fold=fold)
    else:
        cfg = RendererConfig.tiny() if args.quick else RendererConfig()
        r = Renderer(RendererNetworks.random(cfg, seed=0), device="cpu", fold=fold, _owned=True)
    rng = np.random.default_rng(0)
    src_img = rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)
    b = args.batch
    n_batches = max(1, args.frames // b)
    drv = rng.integers(0, 255, (b, 256, 256, 3), dtype=np.uint8)
    t = dict.fromkeys(STAGES, 0.0)

    def timed(key, fn):
        t0 = time.perf_counter()
        out = fn()
        t[key] += time.perf_counter() - t0
        return out

    from lp_renderer.fast.autotune import kernel_cache, tuning_seconds

    with torch.no_grad():
        # warm-up (first-call allocations, FFT plans, weight spectra, kernel autotuning), at the batch measured
        t0 = time.perf_counter()
        src = r.prepare_source(src_img)
        ref = r.extract_motion(drv[:1])
        info = r.extract_motion(drv)
        r.decode(r.warp(src, driving_keypoints(r, src, info, ref))["out"])
        first_use = time.perf_counter() - t0
        t0 = time.perf_counter()
        r.appearance(src_img)
        f_once = time.perf_counter() - t0
        t0 = time.perf_counter()
        src = r.prepare_source(src_img)
        prepare_once = time.perf_counter() - t0
        for _ in range(n_batches):
            info = timed("M", lambda: r.extract_motion(drv))
            x_d = timed("stitch", lambda info=info: driving_keypoints(r, src, info, ref))
            warped = timed("W", lambda x_d=x_d: r.warp(src, x_d)["out"])
            timed("G", lambda warped=warped: r.decode(warped))
    frames = n_batches * b
    per_frame = {k: v / frames for k, v in t.items()}
    per_frame["total"] = sum(per_frame.values())
    return {"mode": args.mode, "batch": b, "frames": frames, "F_once": f_once, "prepare_once": prepare_once,
            "tuning": tuning_seconds(), "first_use": first_use, "kernels": chosen_kernels(r),
            "timed": kernel_cache().entries if getattr(r, "autotune", False) else {},
            "per_frame": per_frame, "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def chosen_kernels(r) -> dict[str, int]:
    """How many layer calls run each kernel (autotuned renderers; empty otherwise)."""
    from collections import Counter

    from lp_renderer.fast.autotune import AutotunedConv

    nets = getattr(r, "nets", None)
    return dict(Counter(k for m in (nets.modules() if nets is not None else ()) if isinstance(m, AutotunedConv)
                        for k in m.chosen.values()))


def onnx_renderer(args):
    """The weights (or the random networks) exported to a temporary folder, loaded by onnxruntime (CPU)."""
    from lp_renderer import RendererConfig, RendererNetworks
    from lp_renderer.onnx_backend import OnnxRenderer, export_onnx
    from lp_renderer.weights import load_networks, load_neutral_expression

    tmp = tempfile.mkdtemp(prefix="lp_onnx_")
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    if args.weights:
        export_onnx(load_networks(args.weights), tmp, neutral_exp=load_neutral_expression(args.weights))
    else:
        export_onnx(RendererNetworks.random(RendererConfig.tiny() if args.quick else RendererConfig(), seed=0), tmp)
    return OnnxRenderer(tmp, providers=["CPUExecutionProvider"], threads=args.threads)


PATHS = ("naive", "optimised", "optimised-no-autotune", "optimised-batch8", "optimised-default-malloc", "onnxruntime",
         "optimised-no-winograd")


def run_children(args, weights: str | None) -> list[dict]:
    runs = [("naive", 1, args.frames), ("optimised", 1, args.frames), ("optimised-no-autotune", 1, args.frames),
            ("optimised", 8, 16), ("optimised-default-malloc", 1, args.frames), ("onnxruntime", 1, args.frames),
            ("optimised-no-winograd", 1, args.frames)]
    wanted = {"naive", *args.paths.split(",")} if args.paths else set(PATHS)
    runs = [r for r in runs if (r[0] if r[1] == 1 else f"{r[0]}-batch{r[1]}") in wanted]
    results = []
    for mode, batch, frames in runs:
        env = dict(os.environ, XDG_CACHE_HOME=tempfile.mkdtemp(prefix="render_bench_cache_"))  # tuned in this run
        atexit.register(shutil.rmtree, env["XDG_CACHE_HOME"], ignore_errors=True)
        if mode not in ("optimised", "optimised-no-autotune", "optimised-no-winograd", "onnxruntime"):
            # the official code runs with the allocator's defaults (lp_renderer.fast.cpu_memory)
            env.update({"THP_MEM_ALLOC_ENABLE": "0", "LP_RENDERER_MALLOC_TUNING": "0"})
        env["LP_RENDERER_AUTOTUNE"] = "0" if mode in ("naive", "optimised-no-autotune", "optimised-no-winograd") \
            else "1"
        cmd = [sys.executable, __file__, "--child", "--mode", mode, "--batch", str(batch), "--frames", str(frames),
               "--threads", str(args.threads)] + (["--quick"] if args.quick else []) + \
              (["--weights", weights] if weights else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            sys.exit(f"error: the {mode} batch-{batch} run failed:\n{proc.stderr.strip()}")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return results


def report(args, results: list[dict], weights_label: str) -> str:
    import torch

    naive = results[0]["per_frame"]["total"]
    lines = [f"render benchmark: {'tiny' if args.quick else 'default (official)'} config, {weights_label}, "
             f"fp32 CPU, {args.threads} threads, {os.cpu_count()} cores, torch {torch.__version__}, "
             f"Python {platform.python_version()}", f"CPU: {cpu_label()}; {load_label()}", ""]
    lines.append(f"{'path':<31}{'M':>7}{'stitch':>7}{'W':>7}{'G':>7}{'frame':>7}{'naive/this':>11}"
                 f"{'F':>6}{'prepare':>8}{'tuning':>7}{'1st use':>8}{'peak RSS':>11}")
    for r in results:
        pf = r["per_frame"]
        lines.append(f"{r['mode'] + ' batch ' + str(r['batch']):<31}" + "".join(f"{pf[k]:7.3f}" for k in STAGES)
                     + f"{pf['total']:7.3f}{naive / pf['total']:10.2f}x{r['F_once']:6.2f}{r['prepare_once']:8.2f}"
                     + f"{r['tuning']:7.1f}{r['first_use']:8.1f}{r['peak_rss_gib']:7.2f} GiB")
    lines += ["", "seconds per frame (M, stitch = Algorithm 1 keypoints incl. the stitching MLP, W, G, frame = "
              "their sum); F and prepare (F + M + W's per-source cache) in seconds, once per source; tuning = "
              "seconds spent timing kernels (once per machine, cached), 1st use = the warm-up frame incl. "
              "prepare_source and tuning.", "",
              "Markdown for benchmarks/RESULTS.md:", "",
              "| path | M | stitching | W | G | per frame | naive / this | F (once) | prepare_source (once) "
              "| kernel tuning (once) | first frame | peak RSS |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        pf = r["per_frame"]
        lines.append(f"| {r['mode']} batch {r['batch']} | " + " | ".join(f"{pf[k]:.3f} s" for k in STAGES)
                     + f" | {pf['total']:.3f} s | {naive / pf['total']:.2f}x | {r['F_once']:.2f} s"
                     f" | {r['prepare_once']:.2f} s | {r['tuning']:.1f} s | {r['first_use']:.1f} s"
                     f" | {r['peak_rss_gib']:.2f} GiB |")
    for r in results:
        if r.get("kernels"):
            lines.append(f"- kernels chosen by {r['mode']} batch {r['batch']} (layers per kernel): "
                         + ", ".join(f"{k} {n}" for k, n in sorted(r["kernels"].items(), key=lambda kv: -kv[1])))
    cmd = shlex.join(["python", "benchmarks/render.py", *sys.argv[1:]])
    env = f"AUDIO2LP_CONFORMANCE_DIR={shlex.quote(str(conformance_dir()))} " \
        if "AUDIO2LP_CONFORMANCE_DIR" in os.environ else ""
    lines += ["", f"Command: `{env}{cmd}` ({weights_label}; {os.cpu_count()} cores, {args.threads} threads, "
              f"torch {torch.__version__})"]
    return "\n".join(lines)


def cpu_label() -> str:
    """The CPU model (``lscpu``'s Model name, from /proc/cpuinfo) and its widest vector ISA."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    isa = "AVX-512" if "avx512f" in flags else "AVX2 (no AVX-512)" if "avx2" in flags else "no AVX2"
    return f"{model}, {isa}"


def load_label() -> str:
    try:
        return "load average {:.2f} {:.2f} {:.2f} at the end".format(*os.getloadavg())
    except OSError:
        return "load average unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--weights", help="a weights folder (official layout or safetensors)")
    src.add_argument("--random", action="store_true", help="random weights instead of the filled ones")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--frames", type=int, default=3, help="frames per batch-1 path (batch 8 renders 2 batches)")
    ap.add_argument("--quick", action="store_true", help="tiny config, random weights: a smoke run")
    ap.add_argument("--json", help="also write the results here (with every timed kernel of the autotuned paths)")
    ap.add_argument("--paths", help=f"comma-separated paths to run (default all: {','.join(PATHS)})")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="optimised", help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    if args.quick and args.weights:
        ap.error("--quick uses the tiny config with random weights; it cannot be combined with --weights")
    if args.weights:
        results, label = run_children(args, args.weights), f"weights from {args.weights}"
    elif args.quick or args.random:
        results, label = run_children(args, None), "random weights"
    elif (conformance_dir() / "lp_fill.py").is_file():
        with tempfile.TemporaryDirectory(prefix="lp_filled_weights_") as tmp:
            print(f"writing lp_fill weights ({conformance_dir()}) in the official layout to {tmp} ...",
                  file=sys.stderr)
            write_filled_weights(Path(tmp))
            results = run_children(args, tmp)
        label = "lp_fill weights (official layout, Renderer.from_weights)"
    else:
        print(f"note: no conformance folder at {conformance_dir()} (AUDIO2LP_CONFORMANCE_DIR); using random "
              f"weights (same cost)", file=sys.stderr)
        results, label = run_children(args, None), "random weights"
    print(report(args, results, label))
    if args.json:
        Path(args.json).write_text(json.dumps({"weights": label, "results": results}, indent=1))


if __name__ == "__main__":
    main()
