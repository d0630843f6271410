"""`audio2lp serve`: a real uvicorn server on loopback (in a thread), driven with httpx.

Fast tests use a stub animator (controllable, no rendering) with real upload validation; the realdata
tests run speak and drive end to end with tiny random renderer weights and a tiny random motion model."""

from __future__ import annotations

import contextlib
import importlib.util
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
if importlib.util.find_spec("python_multipart") is None and importlib.util.find_spec("multipart") is None:
    pytest.skip("python-multipart is not installed (pip install \"audio2lp[serve]\")", allow_module_level=True)
httpx = pytest.importorskip("httpx")

from audio2lp.api import RenderResult  # noqa: E402
from audio2lp.apps.server import ServeConfig, create_app  # noqa: E402
from audio2lp.media.audio import write_wav  # noqa: E402
from lp_renderer.weights import save_networks  # noqa: E402

PORTRAIT = "portraits/EAMM__14.png"
SPEECH = "speech/MakeItTalk__M6_04_16k.wav"
TALKING = "talking/Talking-Face_PC-AVS__00010.mp4"
VIDEO_PORTRAIT = "talking/deep_avsr__00008.mp4"  # 160x160 at 25 fps, someone talking


@contextlib.contextmanager
def running(app):
    """Serve ``app`` with uvicorn on a free loopback port in a thread; yields the base URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    t = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    t.start()
    deadline = time.time() + 30
    while not server.started:
        assert time.time() < deadline and t.is_alive(), "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        t.join(timeout=30)
        sock.close()


class StubAnimator:
    """Quacks like Animator (the renderer and face backend "loaded", speak and drive with ``progress_callback``):
    writes a small file as the 'video'. ``gate`` (an Event) holds jobs until set; ``fail`` makes speak raise the
    given exception."""

    renderer = faces = None

    def __init__(self, gate: threading.Event | None = None, n_frames: int = 5):
        self.gate, self.n_frames = gate, n_frames
        self.fail: Exception | None = None
        self.calls: list[tuple[str, dict]] = []
        self.portraits: list[Path | None] = []  # the portrait file of each speak / drive call
        self.mid = threading.Event()  # set once a job has reported some progress

    def _work(self, kind, output, kw):
        self.calls.append((kind, kw))
        cb = kw.get("progress_callback")
        if cb:
            cb(1, self.n_frames)
        self.mid.set()
        if self.gate is not None:
            assert self.gate.wait(30)
        if self.fail is not None:
            raise self.fail
        if cb:
            cb(self.n_frames, self.n_frames)
        Path(output).write_bytes(b"\x00\x00\x00\x18ftypmp42fake")
        return RenderResult(Path(output), self.n_frames, 25.0, True, extra={"duration": self.n_frames / 25})

    def speak(self, portrait, audio, output, **kw):
        self.portraits.append(Path(portrait))
        return self._work("speak", output, kw)

    def drive(self, portrait, driving, output, **kw):
        self.portraits.append(Path(portrait))
        return self._work("drive", output, kw)

    def edit(self, portrait, output, **kw):
        self.calls.append(("edit", kw))
        if self.fail is not None:
            raise self.fail
        import cv2

        cv2.imwrite(str(output), np.full((40, 30, 3), 77, np.uint8))
        return RenderResult(Path(output), 1, 0.0, False)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """Small synthetic uploads: a PNG, one second of a tone as WAV, a text file, a short mp4."""
    import cv2

    d = tmp_path_factory.mktemp("uploads")
    img = np.full((96, 96, 3), 128, np.uint8)
    cv2.circle(img, (48, 48), 30, (200, 170, 150), -1)
    cv2.imwrite(str(d / "face.png"), img)
    t = np.arange(16000) / 16000
    write_wav(d / "tone.wav", (0.2 * np.sin(2 * np.pi * 220 * t)).astype(np.float32))
    (d / "notes.txt").write_text("this is not an image, nor audio, nor video\n" * 20)
    from audio2lp.media.writer import VideoWriter

    with VideoWriter(d / "clip.mp4", 25.0) as w:
        for i in range(10):
            w.write(np.full((64, 64, 3), 10 * i, np.uint8))
    with VideoWriter(d / "portrait.mov", 20.0) as w:  # a portrait video: 6 frames at 20 fps
        for i in range(6):
            w.write(np.full((48, 64, 3), 20 * i, np.uint8))
    import subprocess

    from audio2lp.media.ffmpeg import ffmpeg_exe

    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-f", "lavfi", "-i", "color=c=red:s=64x64:r=25", "-frames:v",
                    "0", "-c:v", "mpeg4", str(d / "zero.avi")], check=True)  # a video stream without frames
    return {"portrait": d / "face.png", "audio": d / "tone.wav", "text": d / "notes.txt", "video": d / "clip.mp4",
            "portrait_video": d / "portrait.mov", "zero": d / "zero.avi"}


def _files(**named: Path) -> dict:
    return {k: (p.name, p.read_bytes()) for k, p in named.items()}


def _wait(client: httpx.Client, job_id: str, timeout: float = 120) -> dict:
    deadline = time.time() + timeout
    while True:
        r = client.get(f"/jobs/{job_id}")
        assert r.status_code == 200, r.text
        js = r.json()
        if js["state"] in ("done", "failed"):
            return js
        assert time.time() < deadline, f"job still {js['state']}"
        time.sleep(0.05)


# ------------------------------------------------------------------------------------------ fast tier
def test_speak_job_lifecycle_with_progress(inputs, tmp_path):
    gate = threading.Event()
    stub = StubAnimator(gate)
    app = create_app(stub, ServeConfig(jobs_dir=tmp_path / "jobs"), motion_model=None)
    with running(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        r = c.post("/speak", files=_files(portrait=inputs["portrait"], audio=inputs["audio"]),
                   data={"fps": "30", "blink": "false", "face": "0", "seed": "3"})
        assert r.status_code == 202, r.text
        js = r.json()
        assert js["state"] == "queued" and r.headers["location"] == f"/jobs/{js['id']}"
        assert js["frames_total"] == 30  # one second of audio at 30 fps, known before the job runs
        assert stub.mid.wait(10)
        mid = c.get(f"/jobs/{js['id']}").json()
        assert mid["state"] == "running" and mid["frames_done"] == 1 and mid["frames_total"] == 5
        assert c.get(f"/jobs/{js['id']}/video").status_code == 409
        gate.set()
        done = _wait(c, js["id"])
        assert done["state"] == "done" and done["frames_done"] == done["frames_total"] == 5
        assert done["progress"] == 1.0 and done["video_url"] == f"/jobs/{js['id']}/video"
        v = c.get(done["video_url"])
        assert v.status_code == 200 and v.headers["content-type"] == "video/mp4" and b"ftyp" in v.content
        kind, kw = stub.calls[0]
        assert kind == "speak" and kw["fps"] == 30 and kw["blink"] is False and kw["face"] == 0 and kw["seed"] == 3
        assert not (tmp_path / "jobs" / js["id"] / "audio.wav").exists()  # inputs removed once finished
        h = c.get("/health").json()
        assert h["status"] == "ok" and h["jobs"]["done"] == 1
        assert c.delete(f"/jobs/{js['id']}").status_code == 204
        assert c.get(f"/jobs/{js['id']}").status_code == 404
        assert not (tmp_path / "jobs" / js["id"]).exists()


def test_forms_come_from_the_option_schema(inputs):
    """Every service option of speak and drive is a form field with the schema's default and range; a value out of
    range gets 422 with the option named as the service names it."""
    from audio2lp.options import options_for

    app = create_app(StubAnimator())
    spec = app.openapi()["components"]["schemas"]
    for kind in ("speak", "drive", "edit"):
        fields = next(v["properties"] for k, v in spec.items() if k.startswith(f"Body_{kind}"))
        for o in options_for(kind):
            assert (o.name in fields) == o.service, (kind, o.name)
    speak = next(v["properties"] for k, v in spec.items() if k.startswith("Body_speak"))
    assert speak["fps"]["default"] == 25.0 and speak["fps"]["maximum"] == 120
    with running(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        r = c.post("/speak", files=_files(portrait=inputs["portrait"], audio=inputs["audio"]), data={"crf": "52"})
        assert r.status_code == 422


def test_drive_job_and_failures(inputs):
    stub = StubAnimator()
    with running(create_app(stub)) as url, httpx.Client(base_url=url, timeout=30) as c:
        r = c.post("/drive", files=_files(portrait=inputs["portrait"], driving=inputs["video"]),
                   data={"region": "lip", "max_frames": "4", "concat": "true"})
        assert r.status_code == 202, r.text
        assert r.json()["frames_total"] == 4
        assert _wait(c, r.json()["id"])["state"] == "done"
        assert stub.calls[-1][1]["region"] == "lip" and stub.calls[-1][1]["concat"] is True
        from lp_renderer.errors import NoFaceError

        stub.fail = NoFaceError("No face was found in the portrait; use a photo with a visible face.")
        r = c.post("/drive", files=_files(portrait=inputs["portrait"], driving=inputs["video"]))
        failed = _wait(c, r.json()["id"])
        assert failed["state"] == "failed" and failed["error"].startswith("No face was found")
        v = c.get(f"/jobs/{r.json()['id']}/video")
        assert v.status_code == 409 and "No face" in v.json()["detail"]
        stub.fail = RuntimeError("boom")
        r = c.post("/drive", files=_files(portrait=inputs["portrait"], driving=inputs["video"]))
        failed = _wait(c, r.json()["id"])
        assert failed["state"] == "failed" and "internal error" in failed["error"]
        assert c.get("/health").json()["status"] == "ok"  # the worker survived


def test_video_portrait_jobs(inputs, motion_ckpt):
    """A portrait video is accepted by speak (dubbing: the speech's length at the video's frame rate, never the
    server's motion model) and drive (the shorter of the two videos), whatever name it was sent under."""
    stub = StubAnimator()
    app = create_app(stub, motion_model=motion_ckpt)
    with running(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        r = c.post("/speak", files=_files(portrait=inputs["portrait_video"], audio=inputs["audio"]))
        assert r.status_code == 202, r.text
        assert r.json()["frames_total"] == 20  # one second of speech at the video's 20 fps
        assert _wait(c, r.json()["id"])["state"] == "done"
        kind, kw = stub.calls[-1]
        assert kind == "speak" and kw["motion_model"] is None and kw["fps"] == 25  # fps: the (unused) default
        assert stub.portraits[-1].name == "portrait.mov"
        r = c.post("/speak", files=_files(portrait=inputs["portrait"], audio=inputs["audio"]))  # a photo: as before
        assert r.json()["frames_total"] == 25 and _wait(c, r.json()["id"])["state"] == "done"
        assert stub.calls[-1][1]["motion_model"] == motion_ckpt and stub.portraits[-1].name == "portrait.png"
        r = c.post("/drive", files=_files(portrait=inputs["portrait_video"], driving=inputs["video"]))
        assert r.status_code == 202, r.text
        assert r.json()["frames_total"] == 6  # the portrait video's 6 frames, shorter than the driving video's 10
        assert _wait(c, r.json()["id"])["state"] == "done" and stub.portraits[-1].suffix == ".mov"
        r = c.post("/drive", files=_files(portrait=inputs["portrait_video"], driving=inputs["video"]),
                   data={"max_frames": "4", "audio_priority": "source"})
        assert r.json()["frames_total"] == 4 and _wait(c, r.json()["id"])["state"] == "done"
        assert stub.calls[-1][1]["max_frames"] == 4 and stub.calls[-1][1]["audio_priority"] == "source"
        # a video sent without a name it can be told by is probed by its content, and kept as a video
        r = c.post("/speak", files={"portrait": ("blob", inputs["portrait_video"].read_bytes()),
                                    "audio": ("a.wav", inputs["audio"].read_bytes())})
        assert r.status_code == 202 and r.json()["frames_total"] == 20, r.text
        assert _wait(c, r.json()["id"])["state"] == "done" and stub.portraits[-1].name == "portrait.mp4"
        # what does not apply to the portrait sent: 422 naming the field, before a job is queued
        n = len(stub.calls)
        r = c.post("/speak", files=_files(portrait=inputs["portrait_video"], audio=inputs["audio"]), data={"fps": "30"})
        assert r.status_code == 422 and r.json()["detail"].startswith("fps does not apply when the portrait is a video")
        r = c.post("/drive", files=_files(portrait=inputs["portrait_video"], driving=inputs["video"]),
                   data={"smile": "0.5"})
        assert r.status_code == 422 and r.json()["detail"].startswith("smile offsets a portrait photo")
        r = c.post("/drive", files=_files(portrait=inputs["portrait"], driving=inputs["video"]),
                   data={"audio_priority": "source"})
        assert r.status_code == 422 and r.json()["detail"] == ("audio_priority applies only when the portrait is a "
                                                              "video; leave it out for a photo.")
        assert len(stub.calls) == n == 5 and len(list(app.state.jobs.root.iterdir())) == 5  # no folder left


def test_bad_video_portraits(inputs, tmp_path):
    """A portrait that is neither a photo nor a usable video, too long (to drive), frameless, at an absurd frame
    rate (to dub), or a video where a photo is needed: a 400 that says which and what to send; nothing is queued."""
    stub = StubAnimator()
    with running(create_app(stub, max_duration=0.25)) as url, httpx.Client(base_url=url, timeout=30) as c:
        def post(kind, portrait, second, data=None, name=None):
            files = _files(portrait=portrait, **({"audio": second} if kind == "speak" else {"driving": second}))
            if name is not None:
                files["portrait"] = (name, portrait.read_bytes())
            return c.post(f"/{kind}", files=files, data=data or {})

        r = post("speak", inputs["text"], inputs["audio"])
        assert r.status_code == 400, r.text
        assert r.json()["detail"].startswith("the portrait is neither an image nor a video this server can read")
        r = post("drive", inputs["text"], inputs["video"], name="clip.mp4")
        assert r.status_code == 400 and r.json()["detail"].startswith("the portrait video cannot be used: ")
        assert "/tmp" not in r.json()["detail"] and "MP4" in r.json()["detail"]  # no server path; what to send
        r = post("speak", inputs["zero"], inputs["audio"])
        assert r.status_code == 400 and "the portrait video cannot be used" in r.json()["detail"]
        assert "no video frames" in r.json()["detail"]
        r = post("drive", inputs["portrait_video"], inputs["video"])
        assert r.status_code == 400 and "portrait video lasts 0.3 s" in r.json()["detail"]
        assert "max_frames to use its beginning" in r.json()["detail"]  # drive's output is the shorter of the two
        r = post("drive", inputs["portrait_video"], inputs["portrait"], {"max_frames": "4"})
        assert r.status_code == 400 and "not a driving image" in r.json()["detail"]
        r = c.post("/edit", files=_files(portrait=inputs["portrait_video"]))
        assert r.status_code == 400 and r.json()["detail"].startswith("the portrait must be a photo here")
        assert stub.calls == []
        r = post("drive", inputs["portrait_video"], inputs["video"], {"max_frames": "4"})  # 0.2 s and 0.16 s
        assert r.status_code == 202 and r.json()["frames_total"] == 4 and _wait(c, r.json()["id"])["state"] == "done"
        # dubbing reads only the frames the speech needs: the audio's limit bounds it, not the video's length
        short = write_wav(tmp_path / "short.wav", np.zeros(3200, np.float32))  # 0.2 s
        r = post("speak", inputs["portrait_video"], inputs["audio"])  # 1 s of speech: over the limit
        assert r.status_code == 400 and "the audio upload lasts 1.0 s" in r.json()["detail"], r.text
        r = post("speak", inputs["portrait_video"], short)  # 0.3 s of video, the limit is 0.25 s
        assert r.status_code == 202, r.text
        assert r.json()["frames_total"] == 4 and _wait(c, r.json()["id"])["state"] == "done"  # 0.2 s at 20 fps
        from audio2lp.media.writer import VideoWriter

        with VideoWriter(tmp_path / "fast.mp4", 500.0) as w:  # a frame rate no dub should render at
            for i in range(3):
                w.write(np.full((48, 64, 3), 20 * i, np.uint8))
        r = post("speak", tmp_path / "fast.mp4", short)
        assert r.status_code == 400 and r.json()["detail"] == (
            "the portrait video's frame rate is 500 fps; this server dubs videos of at most 120 fps; send one at a "
            "usual frame rate."), r.text


def test_bad_uploads(inputs):
    stub = StubAnimator()
    with running(create_app(stub)) as url, httpx.Client(base_url=url, timeout=30) as c:
        r = c.post("/speak", files=_files(portrait=inputs["text"], audio=inputs["audio"]))
        assert r.status_code == 400 and "portrait is neither an image nor a video" in r.json()["detail"]
        r = c.post("/edit", files=_files(portrait=inputs["text"]))
        assert r.status_code == 400 and "portrait is not an image" in r.json()["detail"]
        r = c.post("/speak", files=_files(portrait=inputs["portrait"], audio=inputs["text"]))
        assert r.status_code == 400 and r.json()["detail"].startswith("the audio cannot be used")
        assert str(Path("/")) + "tmp" not in r.json()["detail"]  # server paths are not echoed
        r = c.post("/drive", files=_files(portrait=inputs["portrait"], driving=inputs["text"]))
        assert r.status_code == 400 and "driving" in r.json()["detail"]
        r = c.post("/speak", files=_files(portrait=inputs["portrait"]))
        assert r.status_code == 422  # audio missing
        r = c.post("/speak", files=_files(portrait=inputs["portrait"], audio=inputs["audio"]), data={"fps": "500"})
        assert r.status_code == 422
        r = c.post("/speak", files=_files(portrait=inputs["portrait"], audio=inputs["audio"]), data={"face": "left"})
        assert r.status_code == 422 and "face" in r.json()["detail"]
        r = c.post("/drive", files=_files(portrait=inputs["portrait"], driving=inputs["video"]),
                   data={"region": "ears"})
        assert r.status_code == 422
        r = c.post("/speak", files={"portrait": ("p.png", b""), "audio": ("a.wav", inputs["audio"].read_bytes())})
        assert r.status_code == 400 and "empty" in r.json()["detail"]
        assert c.get("/jobs/nope").status_code == 404
        assert stub.calls == []


def test_upload_limit(inputs):
    stub = StubAnimator()
    with running(create_app(stub, max_upload_mb=0.05)) as url, httpx.Client(base_url=url, timeout=30) as c:
        big = np.zeros(64000, np.float32)  # 128 kB of 16-bit samples
        wav = inputs["audio"].parent / "big.wav"
        write_wav(wav, big)
        r = c.post("/speak", files=_files(portrait=inputs["portrait"], audio=wav))
        assert r.status_code == 413 and "limit of 0.05 MB" in r.json()["detail"]

        def chunks():  # no Content-Length: the limit is enforced while the body is read
            body, boundary = _multipart(portrait=inputs["portrait"], audio=wav)
            for i in range(0, len(body), 4096):
                yield body[i:i + 4096]

        _, boundary = _multipart(portrait=inputs["portrait"], audio=wav)
        r = c.post("/speak", content=chunks(), headers={"content-type": f"multipart/form-data; boundary={boundary}"})
        assert r.status_code == 413
        small = c.post("/speak", files=_files(portrait=inputs["portrait"], audio=inputs["audio"]))
        assert small.status_code == 202
    assert len(stub.calls) <= 1


def _multipart(**named: Path) -> tuple[bytes, str]:
    boundary = "audio2lpboundary"
    out = b""
    for k, p in named.items():
        out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"; filename=\"{p.name}\"\r\n"
                f"Content-Type: application/octet-stream\r\n\r\n").encode() + p.read_bytes() + b"\r\n"
    return out + f"--{boundary}--\r\n".encode(), boundary


def test_queue_full_gives_429(inputs):
    gate = threading.Event()
    stub = StubAnimator(gate)
    app = create_app(stub, workers=1, queue_size=1)
    with running(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        files = _files(portrait=inputs["portrait"], audio=inputs["audio"])
        first = c.post("/speak", files=files)
        assert first.status_code == 202
        assert stub.mid.wait(10)  # running
        second = c.post("/speak", files=files)
        assert second.status_code == 202 and c.get(f"/jobs/{second.json()['id']}").json()["state"] == "queued"
        third = c.post("/speak", files=files)
        assert third.status_code == 429 and "queue is full" in third.json()["detail"]
        assert third.headers.get("retry-after")
        gate.set()
        assert _wait(c, first.json()["id"])["state"] == "done"
        assert _wait(c, second.json()["id"])["state"] == "done"
        assert c.post("/speak", files=files).status_code == 202  # room again


def test_results_expire(inputs, tmp_path):
    stub = StubAnimator()
    jobs_dir = tmp_path / "jobs"
    with running(create_app(stub, ttl=1.5, jobs_dir=jobs_dir)) as url, httpx.Client(base_url=url, timeout=30) as c:
        r = c.post("/speak", files=_files(portrait=inputs["portrait"], audio=inputs["audio"]))
        job_id = r.json()["id"]
        done = _wait(c, job_id)
        assert done["expires"] == pytest.approx(done["finished"] + 1.5)
        assert c.get(f"/jobs/{job_id}/video").status_code == 200
        time.sleep(max(0.0, done["finished"] + 1.7 - time.time()))
        assert c.get(f"/jobs/{job_id}").status_code == 404
        assert c.get(f"/jobs/{job_id}/video").status_code == 404
        deadline = time.time() + 5
        while (jobs_dir / job_id).exists():  # the janitor removes the folder even without a request
            assert time.time() < deadline
            time.sleep(0.05)


def test_temporary_jobs_dir_is_removed_at_shutdown(inputs):
    app = create_app(StubAnimator())
    root = app.state.jobs.root
    with running(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        _wait(c, c.post("/speak", files=_files(portrait=inputs["portrait"], audio=inputs["audio"])).json()["id"])
        assert any(root.iterdir())
    assert not root.exists()


def test_edit_answers_with_the_image(inputs, tmp_path):
    """POST /edit runs as a job of the pool and answers with the PNG; the sliders are form fields of the schema;
    out-of-range values get 422 naming the field; an input that cannot be edited 400; a bug 500."""
    stub = StubAnimator()
    app = create_app(stub, jobs_dir=tmp_path / "jobs")
    spec = app.openapi()["components"]["schemas"]
    fields = next(v["properties"] for k, v in spec.items() if k.startswith("Body_edit"))
    assert fields["smile"]["minimum"] == -0.3 and fields["smile"]["maximum"] == 1.3 and fields["smile"]["default"] == 0
    assert fields["crop_scale"]["default"] == 2.5 and "eye_ratio" in fields and "fps" not in fields
    speak = next(v["properties"] for k, v in spec.items() if k.startswith("Body_speak"))
    assert "gaze_x" in speak and "eye_ratio" not in speak  # constant offsets on speak; the target ratios: edit only
    with running(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        r = c.post("/edit", files=_files(portrait=inputs["portrait"]), data={"smile": "0.5", "gaze_x": "-10"})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "image/png" and r.content.startswith(b"\x89PNG")
        import cv2

        assert cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_COLOR).shape == (40, 30, 3)
        kind, kw = stub.calls[-1]
        assert kind == "edit" and kw["smile"] == 0.5 and kw["gaze_x"] == -10 and kw["crop_scale"] == 2.5
        assert kw["eye_ratio"] is None and kw["mov_z"] == 1.0 and kw["pasteback"] is True
        assert not any((tmp_path / "jobs").iterdir())  # the job and its files are gone once answered
        assert c.get("/health").json()["jobs"] == {"queued": 0, "running": 0, "done": 0, "failed": 0}
        for field, value, bound in (("smile", "1.4", {"le": 1.3}), ("eye_ratio", "0.9", {"le": 0.8}),
                                    ("crop_scale", "1", {"ge": 1.8}), ("wink", "-1", {"ge": 0})):
            r = c.post("/edit", files=_files(portrait=inputs["portrait"]), data={field: value})
            assert r.status_code == 422, (field, r.text)
            detail = r.json()["detail"][0]
            assert detail["loc"] == ["body", field] and detail["ctx"] == bound, r.text
        r = c.post("/speak", files=_files(portrait=inputs["portrait"], audio=inputs["audio"]), data={"gaze_x": "31"})
        assert r.status_code == 422
        r = c.post("/edit", files=_files(portrait=inputs["text"]))
        assert r.status_code == 400 and "portrait is not an image" in r.json()["detail"]
        n = len(stub.calls)
        from lp_renderer.errors import NoFaceError

        stub.fail = NoFaceError("No face was found in the portrait; use a photo with a visible face.")
        r = c.post("/edit", files=_files(portrait=inputs["portrait"]))
        assert r.status_code == 400 and "No face was found" in r.json()["detail"]
        stub.fail = RuntimeError("boom")
        r = c.post("/edit", files=_files(portrait=inputs["portrait"]))
        assert r.status_code == 500 and "internal error" in r.json()["detail"]
        assert len(stub.calls) == n + 2 and not any((tmp_path / "jobs").iterdir())


# ------------------------------------------------------------------------------------------ real rendering
@pytest.fixture(scope="module")
def tiny_animator(tmp_path_factory):
    from audio2lp.api import Animator
    from lp_renderer import RendererConfig, RendererNetworks

    root = tmp_path_factory.mktemp("tiny_weights")
    save_networks(RendererNetworks.random(RendererConfig.tiny(), seed=0), root)
    return Animator(root, device="cpu", progress=False, batch_size=8)


@pytest.fixture(scope="module")
def motion_ckpt(tmp_path_factory):
    import torch

    from audio2lp.models.motion import MotionStats
    from audio2lp.models.motion_model import MotionModel, MotionModelConfig, save_motion_model

    torch.manual_seed(0)
    model = MotionModel(MotionModelConfig(d_model=32, n_layers=1))
    mean = np.zeros(70, np.float32)
    mean[69] = 1.5
    std = np.full(70, 0.01, np.float32)
    path = tmp_path_factory.mktemp("mm") / "motion_model.safetensors"
    save_motion_model(path, model, MotionStats(mean, std))
    return path


@pytest.mark.realdata
def test_real_speak_and_drive_with_concurrent_polling(tiny_animator, motion_ckpt, data_dir, tmp_path):
    from audio2lp.media.audio import load_audio
    from audio2lp.media.probe import probe_video

    speech = write_wav(tmp_path / "cut.wav", load_audio(data_dir / SPEECH)[: int(1.2 * 16000)])
    app = create_app(tiny_animator, motion_model=motion_ckpt, workers=1, queue_size=4)
    with running(app) as url, httpx.Client(base_url=url, timeout=60) as c:
        s = c.post("/speak", files=_files(portrait=data_dir / PORTRAIT, audio=speech), data={"fps": "25"})
        assert s.status_code == 202, s.text
        d = c.post("/drive", files=_files(portrait=data_dir / PORTRAIT, driving=data_dir / TALKING),
                   data={"max_frames": "12"})
        assert d.status_code == 202, d.text
        seen: dict[str, list[dict]] = {s.json()["id"]: [], d.json()["id"]: []}
        errors: list[BaseException] = []

        def poll(job_id):
            try:
                with httpx.Client(base_url=url, timeout=60) as pc:
                    seen[job_id].append(_wait(pc, job_id, timeout=600))
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=poll, args=(j,)) for j in seen for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(700)
        assert not errors
        for job_id, results in seen.items():
            assert len(results) == 3 and all(r["state"] == "done" for r in results), results
            video = c.get(f"/jobs/{job_id}/video")
            assert video.status_code == 200
            out = tmp_path / f"{job_id}.mp4"
            out.write_bytes(video.content)
            info = probe_video(out)
            assert info.n_frames == results[0]["n_frames"]
        speak_res = seen[s.json()["id"]][0]
        assert speak_res["n_frames"] == 30 and speak_res["has_audio"]
        assert seen[d.json()["id"]][0]["n_frames"] == 12


@pytest.mark.realdata
def test_real_edit(tiny_animator, data_dir):
    """A real portrait edited through POST /edit (tiny random networks): the PNG has the photo's size and differs
    from the unedited one; --no-pasteback's crop is 512x512."""
    import cv2

    from lp_renderer.image_io import load_image

    photo = load_image(data_dir / PORTRAIT)
    with running(create_app(tiny_animator)) as url, httpx.Client(base_url=url, timeout=300) as c:
        images = []
        for data in ({}, {"smile": "1.0", "wink": "20", "pitch": "-10"}, {"pasteback": "false"}):
            r = c.post("/edit", files=_files(portrait=data_dir / PORTRAIT), data=data)
            assert r.status_code == 200, r.text
            images.append(cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_COLOR))
    assert images[0].shape == images[1].shape == photo.shape and images[2].shape == (512, 512, 3)
    assert np.abs(images[0].astype(int) - images[1]).max() > 10


@pytest.mark.realdata
def test_real_video_portrait_speak_and_drive(tiny_animator, motion_ckpt, data_dir, tmp_path):
    """A real talking video as the portrait (tiny random networks): POST /speak re-voices it with another person's
    speech (the video's size and frame rate, as long as the speech, with the speech as its sound; the server's
    motion model is not used), POST /drive drives it with another video (the shorter length, the driving sound)."""
    from audio2lp.media.audio import load_audio
    from audio2lp.media.probe import probe_video
    from tests.audio2lp.test_drive import cut_clip

    video = cut_clip(data_dir / VIDEO_PORTRAIT, tmp_path / "portrait.mp4", 0.4)  # 160x160 at 25 fps, 10 frames
    driving = cut_clip(data_dir / TALKING, tmp_path / "driving.mp4", 0.24)
    speech = write_wav(tmp_path / "speech.wav", load_audio(data_dir / SPEECH)[: int(0.6 * 16000)])
    src, drv = probe_video(video), probe_video(driving)
    app = create_app(tiny_animator, motion_model=motion_ckpt)
    with running(app) as url, httpx.Client(base_url=url, timeout=60) as c:
        s = c.post("/speak", files=_files(portrait=video, audio=speech))
        assert s.status_code == 202, s.text
        d = c.post("/drive", files=_files(portrait=video, driving=driving))
        assert d.status_code == 202, d.text
        results = {}
        for name, r in (("speak", s), ("drive", d)):
            js = _wait(c, r.json()["id"], timeout=600)
            assert js["state"] == "done", js
            out = tmp_path / f"{name}.mp4"
            out.write_bytes(c.get(js["video_url"]).content)
            results[name] = js, probe_video(out), out
    js, info, out = results["speak"]
    n = round(0.6 * src.fps)  # the speech's length at the video's frame rate: ping-pong past the video's end
    assert js["mode"] == "dubbing" and js["n_frames"] == js["frames_total"] == info.n_frames == n > src.n_frames
    assert (info.width, info.height, info.fps) == (src.width, src.height, pytest.approx(src.fps))
    assert info.has_audio and abs(len(load_audio(out)) / 16000 - 0.6) <= 1 / src.fps
    js, info, out = results["drive"]
    n = min(src.n_frames, drv.n_frames)
    assert js["mode"] == "source-video" and js["n_frames"] == js["frames_total"] == info.n_frames == n
    assert (info.width, info.height, info.fps) == (src.width, src.height, pytest.approx(src.fps))
    assert info.has_audio and js["has_audio"]  # the driving video's sound (audio_priority 'driving')
