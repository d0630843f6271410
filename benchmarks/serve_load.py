"""Load test of `audio2lp serve` on loopback: valid and hostile uploads from concurrent clients.

    python benchmarks/serve_load.py                          # 50 requests, 8 clients, tiny random renderer
    python benchmarks/serve_load.py --requests 20 --clients 4

Starts the real service (`python -m audio2lp serve`, random weights of the tiny renderer config, 2 workers,
--max-duration 10) in its own process with its own temporary folder (TMPDIR) and jobs folder, then sends a
shuffled mix of requests from ``--clients`` threads:

    valid     speak (2 s of speech), drive (a 1 s video of the portrait), drive (a motion template)
    cancel    a valid speak, cancelled with DELETE while it runs
    hostile   a 60 s recording (small compressed file, over --max-duration), an upload over --max-upload-mb,
              a template zip bomb (112 MB unpacked from ~110 kB), a 20 s video with max_frames=10**9, a
              truncated mp4, a non-media file named .wav, an HLS playlist naming a URL (.m3u8)

and reports: every hostile request refused with a 4xx (and how fast: the limit asked for is 2 s), every valid job
done with a playable video, every cancelled job gone with its files, the server's RSS (before, peak, after),
and the files left in the jobs folder and the server's temporary folder after every job was deleted.
Exit code 1 when any of these fails.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _ffmpeg(*args: str) -> None:
    from audio2lp.media.ffmpeg import ffmpeg_exe

    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", *args], check=True)


def make_inputs(d: Path) -> dict[str, Path]:
    """Every upload of the test, written into ``d``."""
    import cv2
    import numpy as np

    from audio2lp.media.audio import load_audio, write_wav
    from audio2lp.media.writer import VideoWriter
    from audio2lp.models.motion import MOTION_DIM, SCALE, TEMPLATE_FORMAT, MotionTemplate, save_motion_template

    p: dict[str, Path] = {"portrait": ROOT / "examples" / "portrait.jpg"}
    speech = load_audio(ROOT / "examples" / "speech.flac")[:2 * 16000]
    p["speech"] = write_wav(d / "speech.wav", speech)
    face = cv2.cvtColor(cv2.imread(str(p["portrait"])), cv2.COLOR_BGR2RGB)
    with VideoWriter(d / "driving.mp4", 25) as w:
        for _ in range(25):
            w.write(face)
    p["driving"] = d / "driving.mp4"
    still = np.zeros((25, MOTION_DIM), np.float32)
    still[:, SCALE] = 1.0  # a still head at scale 1
    p["template"] = save_motion_template(d / "motion.npz", MotionTemplate(still))
    # hostile
    _ffmpeg("-f", "lavfi", "-i", "sine=frequency=200:sample_rate=16000:duration=60", "-c:a", "libopus", "-b:a", "8k",
            str(d / "long.ogg"))
    p["long_audio"] = d / "long.ogg"
    p["huge_audio"] = d / "huge.wav"
    with open(p["huge_audio"], "wb") as f:  # 24 MB: over --max-upload-mb 20
        f.write(np.random.default_rng(0).integers(0, 255, 24_000_000, np.uint8).tobytes())
    p["bomb"] = d / "bomb.npz"
    with zipfile.ZipFile(p["bomb"], "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, arr in (("format", np.array(TEMPLATE_FORMAT)), ("fps", np.array(25.0))):
            with z.open(f"{name}.npy", "w") as f:
                np.lib.format.write_array(f, arr)
        with z.open("motion.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False,
                                                     "shape": (400_000, MOTION_DIM)})
            zeros = bytes(1 << 20)
            for _ in range(400_000 * MOTION_DIM * 4 // len(zeros)):
                f.write(zeros)
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=128x128:rate=25:duration=20", "-c:v", "libx264", "-preset",
            "ultrafast", str(d / "long.mp4"))
    p["long_video"] = d / "long.mp4"
    data = p["driving"].read_bytes()
    p["truncated"] = d / "truncated.mp4"
    p["truncated"].write_bytes(data[: len(data) // 3])
    p["not_media"] = d / "notes.wav"
    p["not_media"].write_text("this is not audio\n" * 200)
    p["playlist"] = d / "list.m3u8"
    p["playlist"].write_text("#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nhttp://127.0.0.1:9/a.ts\n"
                             "#EXT-X-ENDLIST\n")
    return p


# kind -> (endpoint, second upload, form fields)
HOSTILE = {
    "oversized audio (60 s)": ("speak", "long_audio", {}),
    "upload over --max-upload-mb": ("speak", "huge_audio", {}),
    "template zip bomb": ("drive", "bomb", {}),
    "20 s video, max_frames=10**9": ("drive", "long_video", {"max_frames": str(10**9)}),
    "truncated mp4": ("drive", "truncated", {}),
    "non-media file": ("speak", "not_media", {}),
    "HLS playlist (.m3u8)": ("speak", "playlist", {}),
}
VALID = {
    "speak 2 s": ("speak", "speech", {"blink": "false"}),
    "drive 1 s video": ("drive", "driving", {}),
    "drive template": ("drive", "template", {}),
}


def _rss(pid: int) -> int:
    """Resident set size of ``pid`` in bytes (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _files_under(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=50)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import httpx

    from lp_renderer import RendererConfig, RendererNetworks
    from lp_renderer.weights import save_networks

    work = Path(tempfile.mkdtemp(prefix="serve-load-"))
    (work / "inputs").mkdir()
    inputs = make_inputs(work / "inputs")
    weights = work / "weights"
    save_networks(RendererNetworks.random(RendererConfig.tiny(), seed=0), weights)
    server_tmp, jobs_dir = work / "server-tmp", work / "jobs"
    server_tmp.mkdir()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    env = dict(os.environ, TMPDIR=str(server_tmp), PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "audio2lp", "serve", "--weights", str(weights), "--port", str(port), "-q",
           "--workers", str(args.workers), "--queue-size", "64", "--max-duration", "10", "--max-upload-mb", "20",
           "--job-timeout", "300", "--jobs-dir", str(jobs_dir)]
    log = open(work / "server.log", "w")
    server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300
        while True:
            if server.poll() is not None:
                sys.exit(f"the server exited:\n{(work / 'server.log').read_text()[-3000:]}")
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.time() < deadline, "the server did not start"
            time.sleep(0.2)
        return _run(args, url, server.pid, inputs, jobs_dir, server_tmp)
    finally:
        os.killpg(server.pid, signal.SIGINT)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()
        left = _files_under(server_tmp)
        print(f"after shutdown: {len(left)} file(s) left in the server's TMPDIR", *left)
        shutil.rmtree(work, ignore_errors=True)


def _run(args, url: str, pid: int, inputs: dict[str, Path], jobs_dir: Path, server_tmp: Path) -> int:
    import httpx

    rng = random.Random(args.seed)
    kinds = list(HOSTILE) + list(VALID) + ["cancel"]
    plan = [kinds[i % len(kinds)] for i in range(args.requests)]
    rng.shuffle(plan)
    rss_before = _rss(pid)
    samples: list[tuple[float, int]] = []  # (seconds since the mix started, RSS)
    stop = threading.Event()

    def post(c, kind):
        endpoint, key, data = HOSTILE.get(kind) or VALID.get(kind) or ("speak", "speech", {"blink": "false"})
        second = "audio" if endpoint == "speak" else "driving"
        files = {"portrait": (inputs["portrait"].name, inputs["portrait"].read_bytes()),
                 second: (inputs[key].name, inputs[key].read_bytes())}
        t = time.monotonic()
        r = c.post(f"/{endpoint}", files=files, data=data)
        return r, time.monotonic() - t

    def one(kind: str) -> dict:
        with httpx.Client(base_url=url, timeout=600) as c:
            r, dt = post(c, kind)
            out = {"kind": kind, "status": r.status_code, "seconds": dt, "ok": False}
            if kind in HOSTILE:
                out["ok"] = 400 <= r.status_code < 500
                out["detail"] = r.json().get("detail", "") if r.headers.get("content-type", "").startswith(
                    "application/json") else r.text[:200]
                return out
            if r.status_code != 202:
                out["detail"] = r.text[:300]
                return out
            job = r.json()["id"]
            if kind == "cancel":
                while (state := c.get(f"/jobs/{job}").json()["state"]) == "queued":
                    time.sleep(0.1)
                t = time.monotonic()
                d = c.delete(f"/jobs/{job}")
                out["status"] = f"{out['status']}, DELETE {d.status_code} ({state})"
                while c.get(f"/jobs/{job}").status_code != 404:
                    time.sleep(0.05)
                out["cancel_seconds"] = time.monotonic() - t
                out["ok"] = d.status_code in (202, 204) and not (jobs_dir / job).exists()
                return out
            while (s := c.get(f"/jobs/{job}").json())["state"] in ("queued", "running"):
                time.sleep(0.2)
            out["job_seconds"] = (s["finished"] or 0) - (s["started"] or 0)
            video = c.get(f"/jobs/{job}/video") if s["state"] == "done" else None
            out["ok"] = s["state"] == "done" and video is not None and video.status_code == 200 \
                and video.content[4:8] == b"ftyp"
            out["detail"] = s.get("error") or ""
            out["deleted"] = c.delete(f"/jobs/{job}").status_code == 204
            return out

    # warm-up (not counted): one job of each valid kind, so that every model is loaded once before the mix
    warm = [one(kind) for kind in VALID]
    assert all(r["ok"] for r in warm), warm
    rss_warm = _rss(pid)
    t0 = time.monotonic()

    def sample():
        while not stop.wait(0.1):
            samples.append((time.monotonic() - t0, _rss(pid)))

    threading.Thread(target=sample, daemon=True).start()
    with ThreadPoolExecutor(args.clients) as pool:
        results = list(pool.map(one, plan))
    wall = time.monotonic() - t0
    time.sleep(0.5)
    stop.set()
    quarters = [max((r for t, r in samples if q * wall / 4 <= t < (q + 1) * wall / 4), default=0) for q in range(4)]
    rss_after = _rss(pid)
    left = _files_under(jobs_dir)
    tmp_left = _files_under(server_tmp)

    mib = 1 << 20
    print(f"{len(results)} requests from {args.clients} clients, {args.workers} workers, tiny renderer: "
          f"{wall:.1f} s wall")
    failures = 0
    print("| request | n | status | ok | slowest answer (s) | median (s) |")
    print("|---|---|---|---|---|---|")
    for kind in list(HOSTILE) + list(VALID) + ["cancel"]:
        rs = [r for r in results if r["kind"] == kind]
        if not rs:
            continue
        times = sorted(r["seconds"] for r in rs)
        ok = sum(r["ok"] for r in rs)
        if kind in HOSTILE:
            ok = sum(r["ok"] and r["seconds"] < 2.0 for r in rs)
        failures += len(rs) - ok
        codes = ",".join(sorted({str(r["status"]) for r in rs}))
        print(f"| {kind} | {len(rs)} | {codes} | {ok}/{len(rs)} | {times[-1]:.2f} | {times[len(times) // 2]:.2f} |")
    jobs = [r["job_seconds"] for r in results if "job_seconds" in r]
    cancels = [r["cancel_seconds"] for r in results if "cancel_seconds" in r]
    if jobs:
        print(f"valid jobs: {len(jobs)}, render time per job median {sorted(jobs)[len(jobs) // 2]:.1f} s, "
              f"max {max(jobs):.1f} s")
    if cancels:
        print(f"cancellations: {len(cancels)}, DELETE until the job is gone: max {max(cancels):.2f} s")
    print(f"server RSS: {rss_before / mib:.0f} MiB at start, {rss_warm / mib:.0f} MiB after the warm-up (one job "
          f"of each valid kind), peak during the mix {max(r for _, r in samples) / mib:.0f} MiB (peak of each quarter "
          f"of the run: {', '.join(f'{q / mib:.0f}' for q in quarters)} MiB), {rss_after / mib:.0f} MiB after")
    print(f"files left in the jobs folder: {len(left)}; in the server's TMPDIR: {len(tmp_left)}")
    for r in results:
        if not r["ok"] or (r["kind"] in HOSTILE and r["seconds"] >= 2.0):
            print(f"  FAILED {r['kind']}: {r['status']} in {r['seconds']:.2f} s: {r.get('detail', '')}")
    if any(r["kind"] in HOSTILE for r in results):
        print("answers to hostile requests:")
        for kind in HOSTILE:
            r = next((r for r in results if r["kind"] == kind), None)
            if r is not None:
                print(f"  {kind}: {r['status']} {r.get('detail', '')[:160]}")
    return 1 if failures or left or tmp_left else 0


if __name__ == "__main__":
    sys.exit(main())
