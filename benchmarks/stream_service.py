"""The live stream of ``audio2lp serve`` (``WS /stream/ws``) against ``Animator.stream`` called directly: what the
service adds (JPEG encoding, the socket, the threads between them) to the delay of the first frame and to the time
per frame, measured in the same run with the same speech, portrait and renderer.

    python benchmarks/stream_service.py                 # tiny renderer, 2 s of real speech, 3 runs each
    python benchmarks/stream_service.py --seconds 4 --runs 5

Both sides get the speech in 100 ms chunks as fast as they take it (the service in block mode, over a real
loopback socket with uvicorn and the websockets client), so the figures are compute, not waiting for speech; the
clock starts at the first chunk, after the portrait is prepared, on both sides.
Prints a Markdown table (medians over the runs) and the command.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = Path(os.environ.get("AUDIO2LP_TEST_DATA", REPO.parent / "shared" / "data"))
CHUNK = 1600  # 100 ms


def direct(animator, portrait: Path, x) -> tuple[float, float, int]:
    """(first-chunk -> first-frame seconds, seconds per frame after the first, frames) of Animator.stream."""
    t = {}

    def chunks():
        for i in range(0, len(x), CHUNK):
            t.setdefault("first", time.perf_counter())
            yield x[i:i + CHUNK]

    times = []
    with animator.stream(portrait, chunks()) as s:
        for _ in s:
            times.append(time.perf_counter())
    return times[0] - t["first"], (times[-1] - times[0]) / max(1, len(times) - 1), len(times)


def served(url: str, portrait: Path, x) -> tuple[float, float, int]:
    """The same over WS /stream/ws: first audio message sent -> first JPEG received, seconds per frame after it.
    The audio goes out once the server says ``ready`` (the portrait prepared), as ``direct`` pulls its first chunk
    only once ``Animator.stream`` has prepared the portrait."""
    from websockets.sync.client import connect

    pcm = (x.clip(-1, 1) * 32767).round().astype("<i2")
    times, t = [], {}
    with connect(url, open_timeout=60, max_size=None) as c:
        c.send(portrait.read_bytes())
        c.send(json.dumps({"type": "start", "format": "s16le", "sample_rate": 16000, "overflow": "block"}))

        def send():
            for i in range(0, len(pcm), CHUNK):
                t.setdefault("first", time.perf_counter())
                c.send(pcm[i:i + CHUNK].tobytes())
            c.send(json.dumps({"type": "end"}))

        sender = threading.Thread(target=send)
        for msg in c:
            if isinstance(msg, str) and json.loads(msg)["type"] == "ready":
                sender.start()
            elif isinstance(msg, bytes):
                times.append(time.perf_counter())
            elif json.loads(msg)["type"] in ("end", "error"):
                assert json.loads(msg)["type"] == "end", msg
                break
        sender.join()
    return times[0] - t["first"], (times[-1] - times[0]) / max(1, len(times) - 1), len(times)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=2.0, help="speech per run (default 2)")
    p.add_argument("--runs", type=int, default=3, help="runs of each (default 3; medians are reported)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = p.parse_args()

    import torch
    import uvicorn

    from audio2lp.api import Animator
    from audio2lp.apps.server import ServeConfig, create_app
    from audio2lp.media.audio import load_audio
    from lp_renderer import RendererConfig, RendererNetworks
    from lp_renderer.weights import save_networks

    torch.set_num_threads(args.threads)
    weights = Path(tempfile.mkdtemp(prefix="a2lp-bench-"))
    save_networks(RendererNetworks.random(RendererConfig.tiny(), seed=0), weights)
    animator = Animator(weights, device="cpu", progress=False)
    portrait = DATA / "portraits" / "EAMM__14.png"
    x = load_audio(DATA / "speech" / "MakeItTalk__M6_04_16k.wav")[:int(args.seconds * 16000)]

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(animator, ServeConfig(threads=args.threads)),
                                           log_level="warning"))
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    url = f"ws://127.0.0.1:{sock.getsockname()[1]}/stream/ws"

    direct(animator, portrait, x[:CHUNK * 4])  # warm-up: models loaded, caches filled
    rows = {"direct": [], "served": []}
    for _ in range(args.runs):  # interleaved, so both see the same machine load
        rows["direct"].append(direct(animator, portrait, x))
        rows["served"].append(served(url, portrait, x))
    server.should_exit = True

    med = {k: [statistics.median(r[i] for r in v) for i in range(3)] for k, v in rows.items()}
    print(f"Tiny renderer, {args.seconds:g} s of real speech in 100 ms chunks, torch threads {args.threads}, "
          f"medians of {args.runs} runs\n")
    print("| path | first chunk -> first frame (s) | s per frame after it | frames |")
    print("|---|---|---|---|")
    for k, (first, per, n) in med.items():
        label = "Animator.stream" if k == "direct" else "WS /stream/ws (uvicorn, loopback, JPEG q85)"
        print(f"| {label} | {first:.3f} | {per:.4f} | {n:.0f} |")
    d, s = med["direct"], med["served"]
    print(f"\nservice / direct: first frame {s[0] / d[0]:.2f}x, per frame {s[1] / d[1]:.2f}x "
          f"(+{(s[1] - d[1]) * 1000:.1f} ms per frame)")
    print(f"\nCommand: `{shlex.join(['python', 'benchmarks/' + Path(__file__).name, *sys.argv[1:]])}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
