"""`audio2lp serve` against hostile or heavy requests: durations probed from headers before decoding (max_frames
does not get past them), template archives checked before loading, upload names that cannot pick an ffmpeg
demuxer, a wall-time limit per job, `DELETE /jobs/{id}` cancelling a running job, models loaded once and each
worker's thread count set without races."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from audio2lp.apps import serve_limits
from audio2lp.apps.server import create_app
from audio2lp.media.audio import write_wav
from audio2lp.models.motion import MOTION_DIM, MotionTemplate, save_motion_template
from tests.audio2lp.apps.test_server import StubAnimator, _wait, httpx, running
from tests.audio2lp.media.synthetic import make_video
from tests.audio2lp.models.test_motion import _bomb
from tests.conftest import REPO

PORTRAIT = REPO / "examples" / "portrait.jpg"


class BusyAnimator(StubAnimator):
    """A stub whose jobs render "batches" (a progress call every 20 ms) for ``seconds``, so that limits and
    cancellation are checked where the real Animator checks them."""

    def __init__(self, seconds: float = 30.0, n_frames: int = 1500):
        super().__init__(n_frames=n_frames)
        self.seconds = seconds
        self.started = threading.Event()
        self.stopped: list[BaseException] = []

    def _work(self, kind, output, kw):
        self.calls.append((kind, kw))
        self.started.set()
        cb = kw["progress_callback"]
        end = time.monotonic() + self.seconds
        done = 0
        try:
            while time.monotonic() < end:
                time.sleep(0.02)
                done = min(self.n_frames, done + 1)
                cb(done, self.n_frames)
        except BaseException as e:
            self.stopped.append(e)
            raise
        Path(output).write_bytes(b"\x00\x00\x00\x18ftypmp42fake")
        from audio2lp.api import RenderResult

        return RenderResult(Path(output), done, 25.0, True, extra={"duration": done / 25})


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    t = np.arange(3 * 16000) / 16000
    write_wav(d / "three.wav", (0.2 * np.sin(2 * np.pi * 220 * t)).astype(np.float32))
    write_wav(d / "one.wav", (0.2 * np.sin(2 * np.pi * 220 * t[:16000])).astype(np.float32))
    make_video(d / "two_seconds.mp4", 50, 25)
    make_video(d / "short.mp4", 10, 25)
    still = np.zeros((100, MOTION_DIM), np.float32)
    still[:, -1] = 1.0  # a still head at scale 1 (a scale of 0 is refused)
    save_motion_template(d / "long.npz", MotionTemplate(still, 25.0))
    save_motion_template(d / "ok.npz", MotionTemplate(still[:10], 25.0))
    _bomb(d / "bomb.npz", 400_000)  # 112 MB unpacked from a ~110 kB file
    return d


def _post(c, kind, second, data=None, name=None, portrait=PORTRAIT):
    key = "audio" if kind == "speak" else "driving"
    files = {"portrait": (portrait.name, portrait.read_bytes()), key: (name or second.name, second.read_bytes())}
    return c.post(f"/{kind}", files=files, data=data or {})


# ------------------------------------------------------------------------------------------ durations and sizes
def test_max_frames_does_not_get_past_the_duration_limit(media):
    stub = StubAnimator()
    with running(create_app(stub, max_duration=1.0)) as url, httpx.Client(base_url=url, timeout=30) as c:
        r = _post(c, "drive", media / "two_seconds.mp4", {"max_frames": str(10**9)})
        assert r.status_code == 400 and "lasts 2.0 s" in r.json()["detail"], r.text
        r = _post(c, "drive", media / "two_seconds.mp4")
        assert r.status_code == 400
        r = _post(c, "drive", media / "two_seconds.mp4", {"max_frames": "10"})  # 0.4 s of it: accepted
        assert r.status_code == 202 and r.json()["frames_total"] == 10, r.text
        assert _wait(c, r.json()["id"])["state"] == "done"
        assert stub.calls[-1][1]["max_frames"] == 10
        r = _post(c, "drive", media / "short.mp4")  # within the limit, no max_frames: the job is still capped
        assert r.status_code == 202, r.text
        assert _wait(c, r.json()["id"])["state"] == "done"
        assert stub.calls[-1][1]["max_frames"] == 25  # 1 s at 25 fps: the decoder never reads more


def test_long_audio_is_refused_from_its_header_before_decoding(media, monkeypatch):
    import audio2lp.media.audio as audio

    decoded = []
    original = audio._mono_resampled
    monkeypatch.setattr(audio, "_mono_resampled", lambda *a, **k: decoded.append(1) or original(*a, **k))
    stub = StubAnimator()
    with running(create_app(stub, max_duration=2.0)) as url, httpx.Client(base_url=url, timeout=30) as c:
        r = _post(c, "speak", media / "three.wav")
        assert r.status_code == 400 and "lasts 3.0 s" in r.json()["detail"] and "at most 2 s" in r.json()["detail"]
        assert decoded == []
        r = _post(c, "speak", media / "one.wav")
        assert r.status_code == 202 and decoded == [1]
    assert len(stub.calls) <= 1


def test_templates_are_limited_in_frames_and_checked_before_loading(media, monkeypatch):
    stub = StubAnimator()
    with running(create_app(stub, max_duration=2.0)) as url, httpx.Client(base_url=url, timeout=30) as c:
        r = _post(c, "drive", media / "long.npz")  # 100 frames at 25 fps = 4 s
        assert r.status_code == 400 and "4.0 s" in r.json()["detail"], r.text
        r = _post(c, "drive", media / "long.npz", {"max_frames": "40"})  # its first 1.6 s
        assert r.status_code == 202 and r.json()["frames_total"] == 40, r.text
        monkeypatch.setattr(np, "load", lambda *a, **k: pytest.fail("the bomb was loaded"))
        t = time.monotonic()
        r = _post(c, "drive", media / "bomb.npz", {"max_frames": "5"})
        assert r.status_code == 400 and "unpacks to 112.0 MB" in r.json()["detail"], r.text
        assert time.monotonic() - t < 10
        monkeypatch.undo()
        assert _post(c, "drive", media / "ok.npz").status_code == 202


def test_upload_names_cannot_choose_an_ffmpeg_demuxer(media):
    """A playlist or script suffix (.m3u8, .ffconcat, .mpd, ...) is not kept: the upload is stored under the kind's
    default suffix, so ffmpeg cannot be made to read it as a playlist of other files."""
    stored = []

    class Stub(StubAnimator):
        def speak(self, portrait, audio, output, **kw):
            stored.append(Path(audio).name)
            return super().speak(portrait, audio, output, **kw)

        def drive(self, portrait, driving, output, **kw):
            stored.append(Path(driving).name)
            return super().drive(portrait, driving, output, **kw)

    with running(create_app(Stub())) as url, httpx.Client(base_url=url, timeout=30) as c:
        for name in ("speech.m3u8", "speech.ffconcat", "speech.mpd", "speech.txt", "speech.flac"):
            r = _post(c, "speak", media / "one.wav", name=name)
            assert r.status_code == 202, r.text
            assert _wait(c, r.json()["id"])["state"] == "done"
        for name in ("motion.npz", "motion.m3u8"):
            r = _post(c, "drive", media / "short.mp4" if name.endswith("m3u8") else media / "ok.npz", name=name)
            assert r.status_code == 202, r.text
            assert _wait(c, r.json()["id"])["state"] == "done"
    assert stored == ["audio.wav"] * 4 + ["audio.flac", "driving.npz", "driving.mp4"]


def test_video_frame_size_is_limited(media, monkeypatch):
    monkeypatch.setattr(serve_limits, "MAX_VIDEO_PIXELS", 64 * 48 - 1)
    with running(create_app(StubAnimator())) as url, httpx.Client(base_url=url, timeout=30) as c:
        r = _post(c, "drive", media / "short.mp4")
        assert r.status_code == 400 and "64x48" in r.json()["detail"], r.text


# ------------------------------------------------------------------------------------------ running jobs
def test_a_job_that_runs_too_long_is_stopped(media, tmp_path):
    stub = BusyAnimator(seconds=60)
    app = create_app(stub, job_timeout=1.0, jobs_dir=tmp_path / "jobs")
    with running(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        r = _post(c, "speak", media / "one.wav")
        job = _wait(c, r.json()["id"], timeout=20)
        assert job["state"] == "failed" and "1 s" in job["error"] and "limit" in job["error"], job
        assert job["finished"] - job["started"] < 10
        assert stub.stopped  # the render loop was interrupted
        assert list((tmp_path / "jobs" / job["id"]).iterdir()) == []  # inputs removed, no output
        assert c.get("/health").json()["jobs"]["running"] == 0


def test_delete_cancels_a_running_job_and_frees_the_worker(media, tmp_path):
    stub = BusyAnimator(seconds=60)
    app = create_app(stub, workers=1, jobs_dir=tmp_path / "jobs")
    with running(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        first = _post(c, "speak", media / "one.wav").json()["id"]
        assert stub.started.wait(10)
        assert c.get(f"/jobs/{first}").json()["state"] == "running"
        t = time.monotonic()
        r = c.delete(f"/jobs/{first}")
        assert r.status_code in (202, 204), r.text
        deadline = time.monotonic() + 10
        while c.get(f"/jobs/{first}").status_code != 404:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert time.monotonic() - t < 10
        assert not (tmp_path / "jobs" / first).exists()
        assert stub.stopped
        stub.seconds = 0.1  # the worker is free: the next job runs to the end
        second = _post(c, "speak", media / "one.wav").json()["id"]
        assert _wait(c, second, timeout=20)["state"] == "done"


# ------------------------------------------------------------------------------------------ workers
def test_worker_thread_counts_are_not_raced(media, monkeypatch):
    """With two workers, one inside the scoped one-thread block of a small model while the other starts its first
    job: the second still runs with its own count (cores / workers), not the first one's temporary 1."""
    import torch

    from audio2lp.models.threads import torch_threads

    monkeypatch.setattr(serve_limits.os, "cpu_count", lambda: 4)
    inside, leave = threading.Event(), threading.Event()
    seen: dict[str, int] = {}

    class Stub(StubAnimator):
        def _work(self, kind, output, kw):
            if kind == "speak":
                with torch_threads(1):
                    inside.set()
                    assert leave.wait(20)
            else:
                assert inside.wait(20)
                seen["drive"] = torch.get_num_threads()
                leave.set()
            return super()._work(kind, output, kw)

    old = torch.get_num_threads()
    try:
        with running(create_app(Stub(), workers=2)) as url, httpx.Client(base_url=url, timeout=30) as c:
            a = _post(c, "speak", media / "one.wav").json()["id"]
            assert inside.wait(20)
            b = _post(c, "drive", media / "ok.npz").json()["id"]
            assert _wait(c, a)["state"] == "done" and _wait(c, b)["state"] == "done"
    finally:
        torch.set_num_threads(old)
    assert seen["drive"] == 2


def test_threads_option_sets_each_workers_count(media):
    import torch

    seen = []

    class Stub(StubAnimator):
        def _work(self, kind, output, kw):
            seen.append(torch.get_num_threads())
            return super()._work(kind, output, kw)

    old = torch.get_num_threads()
    try:
        with running(create_app(Stub(), workers=2, threads=3)) as url, httpx.Client(base_url=url, timeout=30) as c:
            ids = [_post(c, "drive", media / "ok.npz").json()["id"] for _ in range(3)]
            assert all(_wait(c, i)["state"] == "done" for i in ids)
    finally:
        torch.set_num_threads(old)
    assert seen == [3, 3, 3]


def test_a_job_cancelled_after_its_last_batch_is_forgotten_too(media, tmp_path):
    """DELETE while the job writes its file after the last progress check: the job ends, then is forgotten with its
    files (no 'done' job left behind a 202)."""
    gate = threading.Event()

    class Stub(StubAnimator):
        def _work(self, kind, output, kw):
            kw["progress_callback"](self.n_frames, self.n_frames)  # the last check
            self.mid.set()
            assert gate.wait(20)
            Path(output).write_bytes(b"\x00\x00\x00\x18ftypmp42fake")
            from audio2lp.api import RenderResult

            return RenderResult(Path(output), self.n_frames, 25.0, True)

    stub = Stub()
    with running(create_app(stub, jobs_dir=tmp_path / "jobs")) as url, httpx.Client(base_url=url, timeout=30) as c:
        job = _post(c, "speak", media / "one.wav").json()["id"]
        assert stub.mid.wait(20)
        assert c.delete(f"/jobs/{job}").status_code == 202
        gate.set()
        deadline = time.monotonic() + 10
        while c.get(f"/jobs/{job}").status_code != 404:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert not (tmp_path / "jobs" / job).exists()
