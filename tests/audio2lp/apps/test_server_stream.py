"""``WS /stream/ws`` of ``audio2lp serve`` (:mod:`audio2lp.apps.server_stream`): the protocol through Starlette's
TestClient websocket (frames' order and timestamps, the audio returned, formats, every error code, the idle
timeout, the length limit, the streams limit, back-pressure in both overflow modes), the page's files, and the
serve options."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.audio2lp.apps.served import served

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from audio2lp.apps.server import ServeConfig, create_app  # noqa: E402
from audio2lp.apps.server_stream import AudioBuffer, Cancelled, StreamConfig, encode_jpeg  # noqa: E402

SR, FPS = 16000, 25.0
SPF = SR // 25  # samples per frame
PORTRAIT = "portraits/EAMM__14.png"
SPEECH = "speech/MakeItTalk__M6_04_16k.wav"


# ------------------------------------------------------------------------------------ the animator
@pytest.fixture(scope="module")
def animator(tiny_weights):
    """The real :class:`~audio2lp.api.Animator` with the tiny renderer, shared by the tests (the service shares one
    too); ``pulled`` records the size of every chunk its streams take."""
    from audio2lp.api import Animator

    class Recording(Animator):
        def stream(self, portrait, chunks, **kw):
            self.calls.append(kw)
            return super().stream(portrait, (self.pulled.append(len(c)) or c for c in chunks), **kw)

    a = Recording(tiny_weights, device="cpu", progress=False)
    a.pulled, a.calls = [], []
    return a


@pytest.fixture(scope="module")
def face(data_dir) -> bytes:
    """A real portrait's bytes (a face the tiny renderer's face detection finds)."""
    return (data_dir / PORTRAIT).read_bytes()


def portrait_bytes(value: int = 128) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def speech(seconds: float) -> np.ndarray:
    """The first ``seconds`` of a real speech clip when the data folder is there, else a buzz."""
    from tests.conftest import shared_data_dir

    path = shared_data_dir() / SPEECH
    if path.is_file():
        from audio2lp.media.audio import load_audio

        return load_audio(path)[:int(seconds * SR)]
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * 220 * t) * (np.sin(2 * np.pi * 3 * t) > 0)).astype(np.float32)


def s16(x: np.ndarray) -> bytes:
    return (np.clip(x, -1, 1) * 32767).round().astype("<i2").tobytes()


def client_for(animator, **stream):
    app = create_app(animator, ServeConfig(stream=StreamConfig(**stream)))
    return TestClient(app)


def read_all(ws) -> tuple[list, dict]:
    """Every message until the close: ``[(kind, payload)]`` (JSON dicts and bytes) and the close message."""
    out = []
    while True:
        msg = ws.receive()
        if msg["type"] == "websocket.close":
            return out, msg
        if msg.get("text") is not None:
            out.append(("json", json.loads(msg["text"])))
        else:
            out.append(("bytes", msg["bytes"]))


def start_message(**kw) -> str:
    return json.dumps({"type": "start", "format": "s16le", "sample_rate": 16000, **kw})


def send_audio(ws, x: np.ndarray, chunk: int, fmt: str = "s16le") -> None:
    for i in range(0, len(x), chunk):
        part = x[i:i + chunk]
        ws.send_bytes(s16(part) if fmt == "s16le" else part.astype("<f4").tobytes())


def error_of(messages: list, close: dict) -> tuple[str, str, int, str]:
    kind, last = messages[-1]
    assert kind == "json" and last["type"] == "error", messages[-3:]
    assert "Traceback" not in last["reason"]
    return last["code"], last["reason"], close.get("code"), close.get("reason")


def frames_of(messages: list, with_audio: bool = False) -> list[tuple[dict, bytes, bytes | None]]:
    frames, i = [], 0
    while i < len(messages):
        kind, m = messages[i]
        if kind == "json" and m["type"] == "frame":
            audio = messages[i + 2][1] if with_audio else None
            frames.append((m, messages[i + 1][1], audio))
            i += 3 if with_audio else 2
        else:
            i += 1
    return frames


# ------------------------------------------------------------------------------------ the protocol
@pytest.mark.realdata
@pytest.mark.parametrize("fmt, chunk", [("s16le", 333), ("f32le", 4000)])
def test_frames_in_order_with_timestamps_and_audio(animator, face, fmt, chunk):
    import cv2

    x = speech(0.43)
    with client_for(animator) as client, client.websocket_connect("/stream/ws") as ws:
        ws.send_bytes(face)
        ws.send_text(start_message(format=fmt, audio=True, jpeg_quality=90, options={"seed": 3, "pose_scale": 0.5}))
        send_audio(ws, x, chunk, fmt)  # sizes unrelated to a frame
        ws.send_text(json.dumps({"type": "end"}))
        messages, close = read_all(ws)
    assert close["code"] == 1000
    ready = messages[0][1]
    assert ready["type"] == "ready" and ready["fps"] == FPS and ready["sample_rate"] == SR
    assert ready["lookahead_ms"] == 240 and (ready["height"], ready["width"]) == (256, 256)  # the photo's size
    frames = frames_of(messages, with_audio=True)
    n = len(frames)
    assert n == round(len(x) / SPF) == 11  # as speak makes
    assert [f[0]["index"] for f in frames] == list(range(n))
    assert [f[0]["time"] for f in frames] == pytest.approx([i / FPS for i in range(n)])
    img = cv2.imdecode(np.frombuffer(frames[0][1], np.uint8), cv2.IMREAD_COLOR)
    assert img.shape == (256, 256, 3) and img.std() > 5
    back = np.concatenate([np.frombuffer(a, "<i2") for _, _, a in frames]).astype(np.float32) / 32768
    assert all(f[0]["audio_samples"] == SPF for f in frames)
    m = min(len(x), len(back))
    assert np.abs(back[:m] - x[:m]).max() < 2e-4 and not back[len(x):].any()  # each frame's own audio
    end = messages[-1][1]
    assert end == {"type": "end", "frames": n, "seconds": pytest.approx(len(x) / SR), "dropped_seconds": 0}
    assert animator.calls[-1] == {"seed": 3, "pose_scale": 0.5}


@pytest.mark.realdata
def test_frames_are_the_api_frames(animator, face, tmp_path):
    """What the socket carries is Animator.stream's frames (JPEG-compressed) for the start's options."""
    import cv2

    x = speech(0.2)
    opts = {"seed": 1, "blink": False, "smile": 0.5, "lookahead_ms": 300}
    with client_for(animator) as client, client.websocket_connect("/stream/ws") as ws:
        ws.send_bytes(face)
        ws.send_text(start_message(jpeg_quality=100, options=opts))
        send_audio(ws, x, 1600)
        ws.send_text(json.dumps({"type": "end"}))
        messages, close = read_all(ws)
    assert messages[0][1]["lookahead_ms"] == 300
    got = [j for _, j, _ in frames_of(messages)]
    (tmp_path / "p.png").write_bytes(face)
    with animator.stream(tmp_path / "p.png", [x], **opts) as s:  # the whole speech as one chunk
        want = [encode_jpeg(f.image, 100) for f in s]
    assert len(got) == len(want) == 5 and got == want  # the same frames, JPEG-encoded alike
    img = cv2.imdecode(np.frombuffer(got[-1], np.uint8), cv2.IMREAD_COLOR)
    assert img.shape == (256, 256, 3)


def test_page_and_scripts_are_served(animator):
    with client_for(animator) as client:
        page = client.get("/stream")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert '<script src="/stream/stream.js">' in page.text and 'type="file"' in page.text
        js = client.get("/stream/stream.js")
        assert js.status_code == 200 and "/stream/ws" in js.text and "getUserMedia" in js.text
        worklet = client.get("/stream/worklet.js")
        assert "registerProcessor('capture-16k'" in worklet.text and "sampleRate / 16000" in worklet.text


# ------------------------------------------------------------------------------------ errors
def run_until_close(client, *messages) -> tuple[list, dict]:
    with client.websocket_connect("/stream/ws") as ws:
        for m in messages:
            (ws.send_bytes if isinstance(m, bytes) else ws.send_text)(m)
        return read_all(ws)


IMAGE = portrait_bytes()


@pytest.mark.parametrize("messages, code, words", [
    ((start_message(),), "bad_message", "send the portrait"),
    ((b"not an image",), "bad_portrait", "not an image"),
    ((IMAGE, b"\x00\x01"), "bad_message", "start message"),
    ((IMAGE, "{nope"), "bad_message", "not JSON"),
    ((IMAGE, json.dumps({"type": "end"})), "bad_message", "expected the start message"),
    ((IMAGE, start_message(format="mp3")), "bad_start", "format must be s16le or f32le"),
    ((IMAGE, start_message(sample_rate=44100)), "bad_start", "sample_rate must be 16000"),
    ((IMAGE, start_message(overflow="queue")), "bad_start", "overflow must be block or drop"),
    ((IMAGE, start_message(jpeg_quality=0)), "bad_start", "jpeg_quality"),
    ((IMAGE, start_message(options=[1])), "bad_options", "JSON object"),
    ((IMAGE, start_message(options={"region": "lip"})), "bad_options", "unknown option(s) region"),
    ((IMAGE, start_message(options={"pose_scale": -1})), "bad_options", "pose_scale must be between 0 and 10"),
    ((IMAGE, start_message(options={"lookahead_ms": 900})), "bad_options", "lookahead_ms must be"),
    # refused by Animator.stream (before it loads anything)
    ((IMAGE, start_message(options={"lookahead_ms": 100})), "bad_options", "between 240 ms"),
    ((IMAGE, start_message(options={"fps": 30})), "bad_options", "fps does not apply to a stream"),
    ((IMAGE, start_message(options={"crf": 20})), "bad_options", "crf does not apply to a stream"),
    ((IMAGE, start_message(), s16(speech(0.1))), "bad_input", "No face was found"),  # a grey square
])
def test_errors_close_with_a_reason(animator, messages, code, words):
    with client_for(animator) as client:
        got, close = run_until_close(client, *messages)
    c, reason, close_code, close_reason = error_of(got, close)
    assert (c, close_code, close_reason) == (code, 1008, code) and words in reason, reason


@pytest.mark.realdata
@pytest.mark.parametrize("messages, code, words", [
    ((start_message(), b"\x00\x01\x02"), "bad_audio", "not whole s16le samples"),
    ((start_message(), bytes(2 * SR + 2)), "bad_audio", "at most 16000"),
    ((start_message(format="f32le"), np.full(4, np.nan, "<f4").tobytes()), "bad_audio", "NaN"),
    ((start_message(), s16(speech(0.1)), start_message()), "bad_message", "one stream per connection"),
    ((start_message(), s16(speech(0.1)), json.dumps({"type": "pause"})), "bad_message", "only audio"),
    ((start_message(), json.dumps({"type": "end"})), "bad_input", "ended without any samples"),
])
def test_errors_during_a_stream(animator, face, messages, code, words):
    with client_for(animator) as client:
        got, close = run_until_close(client, face, *messages)
    c, reason, close_code, close_reason = error_of(got, close)
    assert (c, close_code, close_reason) == (code, 1008, code) and words in reason, reason
    assert not frames_of(got) or code == "bad_message"


@pytest.mark.realdata
def test_a_short_buffer_takes_short_messages(animator, face):
    with client_for(animator, stream_buffer=0.1) as client:
        got, close = run_until_close(client, face, start_message(), s16(speech(0.2)))
    assert error_of(got, close)[:2] == ("bad_audio", "an audio message holds 3200 samples; send at most 1600 (0.1 s) "
                                                     "per message.")


@pytest.mark.realdata
def test_idle_timeout_closes_the_stream(animator, face):
    with client_for(animator, stream_idle_timeout=0.5) as client:
        t0 = time.monotonic()
        got, close = run_until_close(client, face, start_message(), s16(speech(0.1)))
        took = time.monotonic() - t0
        assert error_of(got, close)[:3] == ("idle", "no audio for 0.5 s; the stream was closed (this server's "
                                                    "--stream-idle-timeout).", 1008)
        assert 0.5 <= took < 30
        got, close = run_until_close(client)  # no portrait either
        assert error_of(got, close)[0] == "idle" and "no portrait" in error_of(got, close)[1]


@pytest.mark.realdata
def test_too_long_renders_up_to_the_limit(animator, face):
    del animator.pulled[:]
    with client_for(animator, max_stream_seconds=0.2) as client, client.websocket_connect("/stream/ws") as ws:
        ws.send_bytes(face)
        ws.send_text(start_message())
        send_audio(ws, speech(0.6), 1600)
        got, close = read_all(ws)
    code, reason, close_code, _ = error_of(got, close)
    assert (code, close_code) == ("too_long", 1008) and "limit of 0.2 s of audio" in reason
    assert len(frames_of(got)) == 5  # exactly the first 0.2 s
    assert sum(animator.pulled) == 0.2 * SR


@pytest.mark.realdata
def test_streams_limit_refuses_one_more(animator, face):
    with client_for(animator, max_streams=1) as client:
        with client.websocket_connect("/stream/ws") as first:
            first.send_bytes(face)
            first.send_text(start_message())
            assert first.receive_json()["type"] == "ready"  # the first one runs
            code, reason, close_code, _ = error_of(*run_until_close(client))
            assert (code, close_code) == ("busy", 1013) and "already runs 1 stream(s)" in reason
            first.send_bytes(s16(speech(0.12)))
            first.send_text(json.dumps({"type": "end"}))
            messages, close = read_all(first)
            assert close["code"] == 1000 and len(frames_of(messages)) == 3
        assert client.app.state.streams.running == 0  # the slot is free again
        with client.websocket_connect("/stream/ws") as again:
            again.send_bytes(face)
            again.send_text(start_message())
            assert again.receive_json()["type"] == "ready"
    with client_for(animator, max_streams=0) as client:
        assert error_of(*run_until_close(client))[0] == "busy"


@pytest.mark.realdata
def test_client_leaving_stops_the_render(animator, face):
    with client_for(animator) as client:
        with client.websocket_connect("/stream/ws") as ws:
            ws.send_bytes(face)
            ws.send_text(start_message())
            send_audio(ws, speech(3.0), 1600)
            assert ws.receive_json()["type"] == "ready"
            n = len(animator.pulled)
        deadline = time.monotonic() + 60
        while client.app.state.streams.running and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.app.state.streams.running == 0
    time.sleep(1)
    assert len(animator.pulled) <= n + 1  # nothing more was rendered


# ------------------------------------------------------------------------------------ back-pressure
@pytest.mark.realdata
def test_drop_mode_keeps_the_buffer_bounded(animator, face):
    """The renderer (tiny, on a CPU) is slower than real time: with a 0.2 s buffer, audio sent four times faster than
    real time is dropped, oldest first; the frames match the audio kept."""
    del animator.pulled[:]
    x = speech(1.6)
    with client_for(animator, stream_buffer=0.2) as client, client.websocket_connect("/stream/ws") as ws:
        ws.send_bytes(face)
        ws.send_text(start_message(overflow="drop"))
        assert ws.receive_json()["type"] == "ready"
        for i in range(0, len(x), 640):  # 40 ms every 10 ms
            ws.send_bytes(s16(x[i:i + 640]))
            time.sleep(0.01)
        ws.send_text(json.dumps({"type": "end"}))
        got, close = read_all(ws)
    assert close["code"] == 1000
    end = got[-1][1]
    dropped = [m for k, m in got if k == "json" and m["type"] == "dropped"]
    assert dropped and end["dropped_seconds"] == pytest.approx(dropped[-1]["total_seconds"])
    assert end["dropped_seconds"] > 0.4 and end["seconds"] + end["dropped_seconds"] == pytest.approx(1.6)
    assert max(animator.pulled) <= 0.2 * SR  # the animator never got more than the buffer at once
    assert end["frames"] == len(frames_of(got)) == round(end["seconds"] * FPS)


@pytest.mark.realdata
def test_block_mode_renders_everything_without_buffering_it(animator, face):
    del animator.pulled[:]
    x = speech(0.6)
    with client_for(animator, stream_buffer=0.2) as client, client.websocket_connect("/stream/ws") as ws:
        ws.send_bytes(face)
        ws.send_text(start_message(overflow="block"))
        send_audio(ws, x, 1600)  # as fast as the socket takes it
        ws.send_text(json.dumps({"type": "end"}))
        got, close = read_all(ws)
    end = got[-1][1]
    assert close["code"] == 1000 and end["dropped_seconds"] == 0 and end["seconds"] == pytest.approx(0.6)
    assert end["frames"] == len(frames_of(got)) == 15 and max(animator.pulled) <= 0.2 * SR
    assert sum(animator.pulled) == len(x)


@pytest.mark.realdata
def test_block_mode_over_a_real_socket(animator, face):
    """uvicorn and the README's client (websockets, a sender thread): in block mode the server stops reading while
    its 0.2 s buffer is full (the rest waits in the socket's queues), every sample is rendered, nothing
    deadlocks."""
    pytest.importorskip("websockets")
    from websockets.sync.client import connect

    from tests.audio2lp.apps.test_server import running

    x, sent, frames, last = speech(1.0), [], [], None
    del animator.pulled[:]
    app = create_app(animator, ServeConfig(stream=StreamConfig(stream_buffer=0.2)))
    with running(app) as base, connect(base.replace("http:", "ws:") + "/stream/ws", open_timeout=30) as c:
        c.send(face)
        c.send(start_message(options={"seed": 1}))

        def send():
            for i in range(0, len(x), 800):
                c.send(s16(x[i:i + 800]))
                sent.append(time.monotonic())
            c.send(json.dumps({"type": "end"}))

        sender = threading.Thread(target=send)
        sender.start()
        for msg in c:
            if isinstance(msg, bytes):
                frames.append(time.monotonic())
            elif json.loads(msg)["type"] in ("end", "error"):
                last = json.loads(msg)
                break
        sender.join(30)
    assert last == {"type": "end", "frames": 25, "seconds": 1.0, "dropped_seconds": 0} and len(frames) == 25
    assert sum(animator.pulled) == len(x) and max(animator.pulled) <= 0.2 * SR and len(sent) == 20


def test_audio_buffer_drops_the_oldest_or_waits():
    b = AudioBuffer(10, drop=True)
    b.push(np.arange(6, dtype=np.float32))
    assert b.push(np.arange(6, 12, dtype=np.float32)) == 2 and b.free == 0 and b.dropped == 2
    b.end()
    assert np.concatenate(list(b.chunks())).tolist() == list(range(2, 12))
    b = AudioBuffer(10, drop=False)
    b.push(np.ones(4, np.float32))
    assert b.free == 6
    got = []

    def pull():
        try:
            got.extend(b.chunks())
        except Cancelled:
            got.append("cancelled")

    t = threading.Thread(target=pull)
    t.start()
    time.sleep(0.05)
    b.cancel()
    t.join(5)
    assert not t.is_alive() and got[-1] == "cancelled"


# ------------------------------------------------------------------------------------ options
def test_serve_options_reach_the_stream_config():
    from audio2lp.apps.cli import build_parser
    from audio2lp.options import OptionError

    args = build_parser().parse_args(["serve", "--max-stream-seconds", "30", "--stream-idle-timeout", "2",
                                      "--max-streams", "3", "--stream-buffer", "4"])
    assert StreamConfig.from_args(args) == StreamConfig(30.0, 2.0, 3, 4.0)
    with pytest.raises(OptionError, match="stream_buffer"):
        StreamConfig(stream_buffer=0.05)


def test_internal_errors_are_logged_not_sent(animator, monkeypatch, caplog):
    def broken(portrait, chunks, **kw):
        raise RuntimeError("a bug")

    monkeypatch.setattr(animator, "stream", broken)
    with client_for(animator) as client:
        got, close = run_until_close(client, IMAGE, start_message())
    code, reason, close_code, _ = error_of(got, close)
    assert (code, close_code) == ("internal", 1011) and reason == "internal error (RuntimeError); see the server log."
    assert "a bug" in caplog.text  # the traceback goes to the log


# ------------------------------------------------------------------------------------ the page in a browser
WEB = Path(__file__).resolve().parents[3] / "tests" / "web"


def _no_browser() -> str | None:
    """Why Chromium cannot be driven here (None: it can)."""
    chromium = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    for missing, why in ((shutil.which("node") is None, "node is not installed"),
                         (not Path(chromium).is_file(), f"Chromium not found at {chromium} (apt-get install chromium)"),
                         (not (WEB / "node_modules" / "playwright-core").is_dir(),
                          "playwright-core is not installed (run `npm ci` in tests/web)")):
        if missing:
            return why
    return None


@pytest.mark.slow
@pytest.mark.realdata
def test_page_in_browser(tiny_weights, data_dir, tmp_path):
    """``audio2lp serve`` (tiny renderer) and its page in headless Chromium, whose fake microphone plays a real speech
    clip: frames come back while the page is still sending the microphone's audio; Stop ends the stream."""
    from audio2lp.media.ffmpeg import ffmpeg_exe

    missing = _no_browser()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"the browser test must run in CI, but {missing}")
        pytest.skip(missing)
    wav = tmp_path / "mic.wav"  # what Chromium's fake capture reads: 16-bit PCM WAV
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-i", str(data_dir / SPEECH), "-t", "6", "-ac", "1", "-ar",
                    "48000", "-c:a", "pcm_s16le", str(wav)], check=True)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1",
           "PYTHONUNBUFFERED": "1"}
    log_path = tmp_path / "serve.log"
    cmd = [sys.executable, "-m", "audio2lp", "serve", "--weights", str(tiny_weights), "--device", "cpu", "--host",
           "127.0.0.1", "--port", str(port), "--stream-buffer", "1"]
    with served(cmd, base + "/health", log_path, env=env, cwd=tmp_path):
        shot = Path(os.environ.get("AUDIO2LP_ARTIFACTS", WEB.parents[1] / "artifacts")) / "stream_page.png"
        shot.parent.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(["node", str(WEB / "stream_page.mjs"), base + "/stream", str(data_dir / PORTRAIT),
                               str(wav), str(shot)], cwd=WEB, capture_output=True, text=True, timeout=900,
                              env={**env, "MIN_FRAMES": "5"})
        lines = proc.stdout.strip().splitlines()
        report = json.loads(lines[-1]) if lines else {}
        assert proc.returncode == 0, (f"the browser run failed: {report.get('error') or proc.stderr[-3000:]}\n"
                                      f"serve log:\n{log_path.read_text()[-3000:]}")
    assert report["emptyError"] == "Pick a portrait photo first."
    assert report["blocked"] == [] and report["consoleErrors"] == [], report
    ready, final = report["ready"], report["final"]
    assert (ready["fps"], ready["width"], ready["height"], ready["overflow"]) == (25, 256, 256, "drop")
    frames = final["frames"]
    assert [f["index"] for f in frames] == list(range(len(frames)))
    assert [f["time"] for f in frames] == pytest.approx([i / 25 for i in range(len(frames))])
    assert final["peak"] > 0.05  # the fake microphone carried the speech
    # frames arrived while the audio was still being sent: the page kept sending after frames had come back
    live = [f for f in frames if not f["endSent"]]
    assert len(live) >= 5 and live[-1]["sentSamples"] >= live[0]["sentSamples"] + SR
    assert report["beforeStop"]["view"] == {"w": 256, "h": 256}  # the <img> shows the frames
    end = final["end"]
    assert end["frames"] == len(frames) and final["state"] == "done"
    assert end["seconds"] + end["dropped_seconds"] == pytest.approx(final["sentSamples"] / SR, abs=1e-3)
    print(f"first {len(live)} frames while speaking; {end['frames']} frames, {end['seconds']:.1f} s rendered, "
          f"{end['dropped_seconds']:.1f} s dropped; screenshot {shot}")


def test_a_stopping_service_takes_no_stream(animator):
    with client_for(animator) as client:
        client.app.state.jobs._stop.set()  # what the shutdown sets first
        code, reason, close_code, _ = error_of(*run_until_close(client))
    assert (code, close_code) == ("stopping", 1013) and "try again later" in reason
