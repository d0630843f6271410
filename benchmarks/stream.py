"""Streaming (``Animator.stream``): latency, look-ahead, non-render time per frame, real-time factor, memory.

    python benchmarks/stream.py                       # tiny renderer and the full-size one (lp_fill weights)
    python benchmarks/stream.py --renderers tiny      # one of them
    python benchmarks/stream.py --minutes 10          # long run: the motion stream over 10 minutes of speech
    python benchmarks/stream.py --minutes 1 --render  # long run of the whole stream (tiny renderer)

Speech: a real clip from ``$AUDIO2LP_TEST_DATA/speech`` (looped to the length asked), fed in ``--chunk-ms`` chunks
as fast as the stream pulls them (so the figures are compute, not waiting). For each renderer:

* first-chunk -> first-frame delay (wall) and the audio the stream had pulled when frame 0 came out: in real time
  the first frame can come at ``that audio's duration + its compute``;
* the algorithmic look-ahead (``stream.lookahead_ms``);
* per frame: non-render time (features, motion models: ``stream.timings['motion_s']``) and render time (keypoints,
  W, G, paste-back), wall and CPU (process CPU time of the same spans, all threads);
* the real-time factor (wall time / speech duration) and what a GPU would need: with the non-render time ``m``
  per frame left on the CPU, real time at 25 fps needs the renderer to make ``1 / (0.04 - m)`` frames per second
  (from the CPU time of that work, i.e. on an idle core, and from its wall time here; nan: ``m`` alone is over
  40 ms).

The full-size renderer takes seconds per frame on a CPU, so its run stops after ``--full-frames`` frames (the
figures are per frame). ``--minutes N`` pushes N minutes of speech through the motion stream (everything but the
renderer, which keeps no state between frames) and prints its buffer sizes, time per minute and RSS each minute:
bounded state, flat per-chunk work. Prints a Markdown table and the command.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import resource
import shlex
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _rss_mib() -> tuple[float, float]:
    """(current, peak) resident memory of this process, MiB."""
    cur = 0.0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                cur = int(line.split()[1]) / 1024
    return cur, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _gpu_fps(m: float) -> float:
    """Renderer frames per second needed for 25 fps when ``m`` seconds per frame go to everything else."""
    return 1 / (0.04 - m) if m < 0.04 else float("nan")


def speech(seconds: float):
    import numpy as np

    from audio2lp.media.audio import load_audio

    data = Path(os.environ.get("AUDIO2LP_TEST_DATA", REPO.parent / "shared" / "data"))
    wav = load_audio(data / "speech" / "MakeItTalk__M6_04_16k.wav")
    n = int(seconds * 16000)
    return np.tile(wav, n // len(wav) + 1)[:n]


def renderer_weights(kind: str, root: Path) -> Path:
    if kind == "tiny":
        from lp_renderer import RendererConfig, RendererNetworks
        from lp_renderer.weights import save_networks

        save_networks(RendererNetworks.random(RendererConfig.tiny(), seed=0), root)
        return root
    spec = importlib.util.spec_from_file_location("render_bench", REPO / "benchmarks" / "render.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.write_filled_weights(root)


def run_renderer(kind: str, args) -> dict:
    import numpy as np

    from audio2lp.api import Animator

    root = Path(tempfile.mkdtemp(prefix=f"stream-{kind}-"))
    anim = Animator(renderer_weights(kind, root), device="cpu", progress=False)
    wav = speech(args.seconds)
    step = int(args.chunk_ms * 16)
    pulled = {"n": 0, "t0": None}

    def chunks():
        for i in range(0, len(wav), step):
            if pulled["t0"] is None:
                pulled["t0"] = time.perf_counter()
            pulled["n"] = min(i + step, len(wav))
            yield wav[i:i + step]

    portrait = Path(os.environ.get("AUDIO2LP_TEST_DATA", REPO.parent / "shared" / "data")) / "portraits" / \
        "EAMM__14.png"
    limit = args.full_frames if kind == "full" else None
    anim.speech_models.landmark()  # models load before the clock starts, as in a service that keeps them
    s = anim.stream(portrait, chunks())
    first = audio_first = None
    wall0, cpu0 = time.perf_counter(), time.process_time()
    frames = 0
    for _frame in s:
        if first is None:
            first, audio_first = time.perf_counter() - pulled["t0"], pulled["n"] / 16000
        frames += 1
        if limit is not None and frames >= limit:
            break
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    t = dict(s.timings)
    s.close()
    m = t["motion_s"] / frames
    return dict(kind=kind, frames=frames, first=first, audio_first=audio_first, lookahead=s.lookahead_ms,
                motion=m, render=t["render_s"] / frames, motion_cpu=t["motion_cpu_s"] / frames,
                render_cpu=t["render_cpu_s"] / frames, rtf=wall / (frames / 25), cpu_rtf=cpu / (frames / 25),
                gpu_fps=_gpu_fps(m), gpu_fps_cpu=_gpu_fps(t["motion_cpu_s"] / frames), size=s.frame_size,
                peak=_rss_mib()[1], speech=len(wav) / 16000 if limit is None else frames / 25,
                silent=float(np.mean(wav == 0)))


def long_render_run(minutes: float, chunk_ms: float) -> None:
    """The whole stream (tiny renderer, paste-back) over ``minutes`` of speech: RSS every 10 s of speech."""
    from audio2lp.api import Animator

    root = Path(tempfile.mkdtemp(prefix="stream-long-"))
    anim = Animator(renderer_weights("tiny", root), device="cpu", progress=False)
    wav = speech(minutes * 60)
    step = int(chunk_ms * 16)
    portrait = Path(os.environ.get("AUDIO2LP_TEST_DATA", REPO.parent / "shared" / "data")) / "portraits" / \
        "EAMM__14.png"
    print("| speech s | frames | wall s | RSS MiB | peak RSS MiB | buffer sizes |")
    print("|---|---|---|---|---|---|")
    t0 = time.perf_counter()
    with anim.stream(portrait, (wav[i:i + step] for i in range(0, len(wav), step))) as s:
        for f in s:
            if (f.index + 1) % 250 == 0:
                cur, peak = _rss_mib()
                sizes = ", ".join(f"{k} {v}" for k, v in s._motion.state_sizes().items())
                print(f"| {(f.index + 1) / 25:.0f} | {f.index + 1} | {time.perf_counter() - t0:.0f} | {cur:.0f} | "
                      f"{peak:.0f} | {sizes} |", flush=True)


def long_run(minutes: float, chunk_ms: float) -> None:
    from audio2lp.streaming import SpeechMotionStream

    wav = speech(60.0)
    s = SpeechMotionStream(seed=0)
    step = int(chunk_ms * 16)
    print("| minute | frames | wall s for this minute | CPU s | RSS MiB | peak RSS MiB | buffer sizes |")
    print("|---|---|---|---|---|---|---|")
    frames = 0
    for minute in range(1, int(minutes) + 1):
        w0, c0 = time.perf_counter(), time.process_time()
        for i in range(0, len(wav), step):
            frames += len(s.push(wav[i:i + step]))
        cur, peak = _rss_mib()
        sizes = ", ".join(f"{k} {v}" for k, v in s.state_sizes().items())
        print(f"| {minute} | {frames} | {time.perf_counter() - w0:.1f} | {time.process_time() - c0:.1f} | "
              f"{cur:.0f} | {peak:.0f} | {sizes} |", flush=True)
    frames += len(s.finish())
    print(f"\n{frames} frames for {minutes:g} minutes of speech (expected {round(minutes * 60 * 25)})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--renderers", default="tiny,full")
    ap.add_argument("--seconds", type=float, default=4.0, help="speech per run (default 4)")
    ap.add_argument("--full-frames", type=int, default=6, help="frames the full-size renderer makes (default 6)")
    ap.add_argument("--chunk-ms", type=float, default=20.0)
    ap.add_argument("--minutes", type=float, default=0.0, help="long run of the motion stream instead")
    ap.add_argument("--render", action="store_true", help="with --minutes: the whole stream, tiny renderer")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    print(f"# {platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, torch "
          f"{torch.__version__}, {args.threads} threads")
    if args.minutes and args.render:
        long_render_run(args.minutes, args.chunk_ms)
    elif args.minutes:
        long_run(args.minutes, args.chunk_ms)
    else:
        rows = [run_renderer(k, args) for k in args.renderers.split(",")]
        print("| renderer | frame size | frames | first chunk -> first frame (wall) | audio pulled for frame 0 | "
              "look-ahead | non-render / frame (wall, CPU) | render / frame (wall, CPU) | real-time factor (wall, "
              "CPU) | renderer fps needed for real time (with the non-render time, CPU; wall) | peak RSS |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['kind']} | {r['size'][1]}x{r['size'][0]} | {r['frames']} | {r['first']:.2f} s | "
                  f"{r['audio_first'] * 1000:.0f} ms | {r['lookahead']} ms | {r['motion'] * 1000:.0f} ms, "
                  f"{r['motion_cpu'] * 1000:.0f} ms | {r['render']:.3f} s, {r['render_cpu']:.3f} s | "
                  f"{r['rtf']:.2f}, {r['cpu_rtf']:.2f} | {r['gpu_fps_cpu']:.0f}; {r['gpu_fps']:.0f} | "
                  f"{r['peak']:.0f} MiB |")
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}; command: python benchmarks/stream.py "
          f"{shlex.join(sys.argv[1:])}")


if __name__ == "__main__":
    main()
