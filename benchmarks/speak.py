"""End-to-end `speak`: seconds of speech in, mp4 out, frames per second overall.

    python benchmarks/speak.py                       # 10 s of real speech, default (official) sizes
    python benchmarks/speak.py --seconds 2 --quick   # tiny renderer, a smoke run

Uses random full-size renderer weights (the cost does not depend on the values), the built-in lip-sync
model, a real portrait and real speech from $AUDIO2LP_TEST_DATA (default ../shared/data), and reports
the wall time of every stage: audio + Whisper + lip-sync, portrait preparation, rendering + writing.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def real_speech(files, seconds: float, path: Path) -> Path:
    """Real speech: ``files`` (wav) concatenated until they last ``seconds``, written to ``path``."""
    import numpy as np

    from audio2lp.media.audio import load_audio, write_wav

    chunks, total = [], 0
    for f in files:
        a = load_audio(f)
        chunks.append(a)
        total += len(a)
        if total >= seconds * 16000:
            break
    return write_wav(path, np.concatenate(chunks)[: int(seconds * 16000)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0, help="speech duration (default 10)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=None,
                    help="frames rendered together (default: the Animator's, 1 on the CPU)")
    ap.add_argument("--quick", action="store_true", help="tiny renderer config")
    ap.add_argument("--weights", help="a real weights folder instead of random full-size weights")
    args = ap.parse_args()

    import torch

    # the CPU memory settings, opted in where this benchmark always did (its figures in RESULTS.md): after torch
    # is loaded, so the glibc settings apply when the renderer is built and huge pages stay off
    from lp_renderer.fast.cpu_memory import enable_cpu_memory_settings

    enable_cpu_memory_settings()
    from audio2lp.api import Animator
    from audio2lp.media.probe import probe_video
    from lp_renderer import RendererConfig, RendererNetworks
    from lp_renderer.weights import save_networks

    torch.set_num_threads(args.threads)
    data = Path(os.environ.get("AUDIO2LP_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    portrait = data / "portraits/EAMM__14.png"
    speech_files = sorted((data / "speech").glob("*.wav"))
    if not portrait.is_file() or not speech_files:
        sys.exit(f"real test data not found at {data} (set AUDIO2LP_TEST_DATA)")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        wav = real_speech(speech_files, args.seconds, tmp / "speech.wav")
        weights = args.weights
        if weights is None:
            weights = tmp / "weights"
            cfg = RendererConfig.tiny() if args.quick else RendererConfig()
            save_networks(RendererNetworks.random(cfg, seed=0), weights)
        anim = Animator(weights, device="cpu", progress=False, batch_size=args.batch_size)
        t0 = time.perf_counter()
        anim.renderer  # noqa: B018 - load the weights
        t_load = time.perf_counter() - t0
        done_at = []
        t0 = time.perf_counter()
        res = anim.speak(portrait, wav, tmp / "out.mp4",
                         progress_callback=lambda d, n: done_at.append((time.perf_counter(), d)))
        t_total = time.perf_counter() - t0
        first = done_at[0][0] - t0 if done_at else float("nan")
        info = probe_video(res.output)
    n = res.n_frames
    print(f"speak benchmark: {args.seconds:g} s of speech, {'tiny' if args.quick else 'default (official)'} "
          f"renderer, fp32 CPU, {args.threads} threads, batch {anim.batch_size}")
    print(f"  weights load          {t_load:8.2f} s")
    print(f"  until first batch     {first:8.2f} s   (audio, Whisper, lip-sync, portrait, first render)")
    print(f"  total                 {t_total:8.2f} s   for {n} frames -> {n / t_total:.3f} frames/s overall "
          f"({t_total / n:.2f} s/frame)")
    print(f"  output                {info.n_frames} frames, {info.fps:g} fps, {info.duration:.2f} s, "
          f"audio {'yes' if info.has_audio else 'no'}")
    print(f"  peak RSS              {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
