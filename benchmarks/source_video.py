"""Dubbing a video (`speak VIDEO SPEECH`): peak memory against the video's length, and time per frame.

    python benchmarks/source_video.py                 # tiny renderer: the default cases below
    python benchmarks/source_video.py --full          # also a short run with the full-size (official) networks
    python benchmarks/source_video.py --cases 5:5     # one case: SOURCE_SECONDS:SPEECH_SECONDS[@FPS]

The source is a real 512x512 talking clip from $AUDIO2LP_TEST_DATA (default ../shared/data) looped with ffmpeg to
the length wanted (at 25 fps, or resampled to @FPS: a 2-minute source at 5 fps is 600 frames, which a loaded
2-core machine renders in reasonable time), the speech real clips concatenated, both written to a temporary folder
(never kept). Each case
runs in its own process, so each peak RSS (ru_maxrss) is that run's own: tracking the face through the video,
Whisper and the lip-sync model, and rendering every output frame (decode, crop, F, M, W's per-source work, W, G,
paste-back, encode). Renderer weights are random (the cost does not depend on their values). The claim measured:
memory does not grow with the video's length (a 120 s source peaks where a 24 s one does at the same frame rate),
also when the video plays back and forth (speech longer than the video).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CLIP = "talking/LivePortrait__d11.mp4"  # 512x512, 25 fps, 9 s


def data_dir() -> Path:
    return Path(os.environ.get("AUDIO2LP_TEST_DATA", REPO.parent / "shared" / "data"))


def make_inputs(tmp: Path, source_s: float, speech_s: float, fps: float | None = None) -> tuple[Path, Path]:
    import numpy as np

    from audio2lp.media.audio import load_audio, write_wav
    from audio2lp.media.ffmpeg import ffmpeg_exe

    video = tmp / f"source_{source_s:g}s_{fps or 25:g}fps.mp4"
    if not video.is_file():
        rate = [] if fps is None else ["-vf", f"fps={fps:g}"]
        subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-stream_loop", "-1", "-i", str(data_dir() / CLIP),
                        "-t", f"{source_s}", "-an", *rate, "-c:v", "libx264", "-preset", "veryfast", "-crf", "20",
                        str(video)], check=True)
    chunks, total = [], 0
    for f in sorted((data_dir() / "speech").glob("*.wav")):
        a = load_audio(f)
        chunks.append(a)
        total += len(a)
        if total >= speech_s * 16000:
            break
    while total < speech_s * 16000:  # not enough clips: repeat them
        chunks += chunks
        total *= 2
    speech = write_wav(tmp / f"speech_{speech_s:g}s.wav", np.concatenate(chunks)[: int(speech_s * 16000)])
    return video, speech


def run_one(args) -> None:
    """One dub in this process; prints a JSON line with its figures."""
    import torch

    from lp_renderer.fast.cpu_memory import enable_cpu_memory_settings

    enable_cpu_memory_settings()
    from audio2lp.api import Animator
    from audio2lp.media.probe import probe_video

    torch.set_num_threads(args.threads)
    anim = Animator(args.weights, device="cpu", progress=False)
    anim.renderer  # noqa: B018 - load the weights
    anim.faces  # noqa: B018
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    done = []
    t0 = time.perf_counter()

    def progress(d, n):
        done.append(time.perf_counter())
        if d % 250 == 0 or d == n:  # a heartbeat for long runs (the parent shows it)
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(f"  frame {d}/{n}, {done[-1] - t0:.0f} s, peak RSS so far {rss:.0f} MB", file=sys.stderr, flush=True)

    res = anim.speak(args.video, args.speech, args.out, progress_callback=progress)
    total = time.perf_counter() - t0
    info = probe_video(args.out)
    render = done[-1] - done[0] if len(done) > 1 else float("nan")
    print(json.dumps({"frames": res.n_frames, "source_frames": res.extra["source_frames"], "total_s": total,
                      "render_s_per_frame": render / max(1, len(done) - 1), "before_first_frame_s": done[0] - t0,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "rss_after_loading_mb": rss_loaded, "width": info.width, "fps": info.fps}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="*", default=["24:24@5", "120:120@5", "8:8", "4:12"],
                    help="SOURCE_SECONDS:SPEECH_SECONDS[@FPS] runs with the tiny renderer (default 24:24@5 "
                         "120:120@5 8:8 4:12; without @FPS the clip's 25 fps)")
    ap.add_argument("--full", nargs="?", const="0.8:0.8", default=None, metavar="SOURCE:SPEECH",
                    help="also a full-size run (default 0.8 s of video and of speech: 20 frames)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--run-one", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--weights", help=argparse.SUPPRESS)
    ap.add_argument("--video", help=argparse.SUPPRESS)
    ap.add_argument("--speech", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.run_one:
        return run_one(args)
    if not (data_dir() / CLIP).is_file():
        sys.exit(f"real test data not found at {data_dir()} (set AUDIO2LP_TEST_DATA)")
    from lp_renderer import RendererConfig, RendererNetworks
    from lp_renderer.weights import save_networks

    rows = []
    with tempfile.TemporaryDirectory(prefix="audio2lp-bench-") as tmp:
        tmp = Path(tmp)
        runs = [("tiny", c) for c in args.cases] + ([("full-size", args.full)] if args.full else [])
        for kind, case in runs:
            weights = tmp / kind
            if not weights.is_dir():
                cfg = RendererConfig.tiny() if kind == "tiny" else RendererConfig()
                save_networks(RendererNetworks.random(cfg, seed=0), weights)
            lengths, _, rate = case.partition("@")
            source_s, speech_s = (float(x) for x in lengths.split(":"))
            video, speech = make_inputs(tmp, source_s, speech_s, float(rate) if rate else None)
            cmd = [sys.executable, __file__, "--run-one", "--threads", str(args.threads), "--weights", str(weights),
                   "--video", str(video), "--speech", str(speech), "--out", str(tmp / "out.mp4")]
            print(f"{kind} {case}: running", file=sys.stderr, flush=True)
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)  # its stderr (heartbeats) passes through
            if proc.returncode != 0:
                sys.exit(f"the {kind} {case} run failed (its messages are above)")
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            row.update(kind=kind, source_s=source_s, speech_s=speech_s)
            rows.append(row)
            print(f"{kind} {case}: {json.dumps(row)}", file=sys.stderr, flush=True)
    print("| renderer | source video | speech | output frames | pingpong | peak RSS | RSS after loading | "
          "render s/frame | total |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['kind']} | {r['source_s']:g} s at {r['fps']:g} fps, {r['source_frames']} frames "
              f"{r['width']}x{r['width']} | "
              f"{r['speech_s']:g} s | {r['frames']} | {'yes' if r['frames'] > r['source_frames'] else 'no'} | "
              f"{r['peak_rss_mb']:.0f} MB | {r['rss_after_loading_mb']:.0f} MB | {r['render_s_per_frame']:.2f} | "
              f"{r['total_s']:.0f} s |")
    for fps in sorted({r["fps"] for r in rows if r["kind"] == "tiny"}):
        tiny = [r for r in rows if r["kind"] == "tiny" and r["fps"] == fps]
        short = min(tiny, key=lambda r: r["source_s"])
        for r in tiny:
            if r is not short:
                ratio = r["peak_rss_mb"] / short["peak_rss_mb"]
                print(f"\npeak RSS {r['source_s']:g} s / {short['source_s']:g} s source at {fps:g} fps "
                      f"({r['frames']} / {short['frames']} output frames): {ratio:.2f}x")


if __name__ == "__main__":
    main()
