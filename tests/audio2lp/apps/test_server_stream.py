"""``WS /stream/ws`` of ``audio2lp serve`` (:mod:`audio2lp.apps.server_stream`): the protocol through Starlette's
TestClient websocket (frames' order and timestamps, the audio returned, formats, every error code, the idle
timeout, the length limit, the streams limit, back-pressure in both overflow modes), the page's files, and the
serve options."""

from __future__ import annotations

import io
import json
import threading
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from audio2lp.apps.server import ServeConfig, create_app  # noqa: E402
from audio2lp.apps.server_stream import AudioBuffer, Cancelled, StreamConfig  # noqa: E402
from lp_renderer.errors import InputError  # noqa: E402

SR, FPS = 16000, 25.0
SPF = SR // 25  # samples per frame


# ------------------------------------------------------------------------------------ the animator
class FakeStream:
    """The stream contract (stream_contract.md) without a renderer: a frame per 640 samples."""

    fps, sample_rate, lookahead_ms, frame_size = FPS, SR, 0, (48, 40)

    def __init__(self, chunks, delay: float, record: list):
        self.chunks, self.delay, self.record = iter(chunks), delay, record
        self.closed = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.closed = True

    def __iter__(self):
        from types import SimpleNamespace

        held, index = np.zeros(0, np.float32), 0
        for i, c in enumerate(self.chunks):
            c = np.asarray(c, np.float32)
            if c.ndim != 1:
                raise InputError(f"chunk {i} is not 1-D")
            self.record.append(len(c))
            held = np.concatenate([held, c])
            while len(held) >= SPF:
                time.sleep(self.delay)
                img = np.full((48, 40, 3), index % 256, np.uint8)
                yield SimpleNamespace(index=index, time=index / FPS, image=img, audio=held[:SPF].copy())
                held, index = held[SPF:], index + 1
        if len(held):
            audio = np.concatenate([held, np.zeros(SPF - len(held), np.float32)])
            yield SimpleNamespace(index=index, time=index / FPS, image=np.zeros((48, 40, 3), np.uint8), audio=audio)


class FakeAnimator:
    renderer = faces = None

    def __init__(self, delay: float = 0.0):
        self.delay, self.pulled, self.calls = delay, [], []

    def stream(self, portrait, chunks, *, lookahead_ms=None, **opts):
        from lp_renderer.image_io import load_image

        self.calls.append((portrait, lookahead_ms, opts))
        img = load_image(portrait)
        if img.mean() > 250:
            raise InputError(f"No face was found in {portrait.name}; use a photo with a visible face.")
        return FakeStream(chunks, self.delay, self.pulled)


@pytest.fixture
def animator():
    return FakeAnimator()


def portrait_bytes(value: int = 128) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def speech(seconds: float, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    rng = np.random.default_rng(seed)
    return (0.3 * np.sin(2 * np.pi * 220 * t) * (rng.random(len(t)) > 0.1)).astype(np.float32)


def s16(x: np.ndarray) -> bytes:
    return (np.clip(x, -1, 1) * 32767).round().astype("<i2").tobytes()


def client_for(animator, **stream):
    app = create_app(animator, ServeConfig(stream=StreamConfig(**stream)))
    return TestClient(app)


def read_all(ws, timeout_frames: int = 100000) -> tuple[list, dict]:
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
@pytest.mark.parametrize("fmt", ["s16le", "f32le"])
def test_frames_in_order_with_timestamps_and_audio(animator, fmt):
    import cv2

    x = speech(1.03)
    with client_for(animator) as client, client.websocket_connect("/stream/ws") as ws:
        ws.send_bytes(portrait_bytes())
        ws.send_text(start_message(format=fmt, audio=True, jpeg_quality=90, options={"seed": 3, "pose_scale": 0.5}))
        send_audio(ws, x, 333, fmt)  # sizes unrelated to a frame
        ws.send_text(json.dumps({"type": "end"}))
        messages, close = read_all(ws)
    assert close["code"] == 1000
    ready = messages[0][1]
    assert ready["type"] == "ready" and ready["fps"] == FPS and ready["sample_rate"] == SR
    frames = frames_of(messages, with_audio=True)
    n = len(frames)
    assert n == int(np.ceil(len(x) / SPF))
    assert [f[0]["index"] for f in frames] == list(range(n))
    assert [f[0]["time"] for f in frames] == pytest.approx([i / FPS for i in range(n)])
    img = cv2.imdecode(np.frombuffer(frames[0][1], np.uint8), cv2.IMREAD_COLOR)
    assert img.shape[:2] == (ready["height"], ready["width"])
    back = np.concatenate([np.frombuffer(a, "<i2") for _, _, a in frames]).astype(np.float32) / 32768
    assert all(f[0]["audio_samples"] == SPF for f in frames)
    assert np.abs(back[:len(x)] - x).max() < 2e-4 and not back[len(x):].any()  # the frames' audio, in sync
    end = messages[-1][1]
    assert end == {"type": "end", "frames": n, "seconds": pytest.approx(len(x) / SR), "dropped_seconds": 0}
    portrait, lookahead, opts = animator.calls[-1]
    assert opts["seed"] == 3 and opts["pose_scale"] == 0.5 and lookahead is None


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


@pytest.mark.parametrize("messages, code, words", [
    ((start_message(),), "bad_message", "send the portrait"),
    ((b"not an image",), "bad_portrait", "not an image"),
    ((portrait_bytes(), b"\x00\x01"), "bad_message", "start message"),
    ((portrait_bytes(), "{nope"), "bad_message", "not JSON"),
    ((portrait_bytes(), json.dumps({"type": "end"})), "bad_message", "expected the start message"),
    ((portrait_bytes(), start_message(format="mp3")), "bad_start", "format must be s16le or f32le"),
    ((portrait_bytes(), start_message(sample_rate=44100)), "bad_start", "sample_rate must be 16000"),
    ((portrait_bytes(), start_message(overflow="queue")), "bad_start", "overflow must be block or drop"),
    ((portrait_bytes(), start_message(jpeg_quality=0)), "bad_start", "jpeg_quality"),
    ((portrait_bytes(), start_message(options={"crf": 20})), "bad_options", "unknown option(s) crf"),
    ((portrait_bytes(), start_message(options={"fps": 0})), "bad_options", "fps must be between 1 and 120"),
    ((portrait_bytes(), start_message(options={"lookahead_ms": 900})), "bad_options", "lookahead_ms"),
    ((portrait_bytes(), start_message(), b"\x00\x01\x02"), "bad_audio", "not whole s16le samples"),
    ((portrait_bytes(), start_message(), bytes(2 * SR + 2)), "bad_audio", "at most 16000"),
    ((portrait_bytes(), start_message(format="f32le"), np.full(4, np.nan, "<f4").tobytes()), "bad_audio", "NaN"),
    ((portrait_bytes(), start_message(), s16(speech(0.1)), start_message()), "bad_message",
     "one stream per connection"),
    ((portrait_bytes(255), start_message(), s16(speech(0.1))), "bad_input", "No face was found"),
])
def test_errors_close_with_a_reason(animator, messages, code, words):
    with client_for(animator) as client:
        got, close = run_until_close(client, *messages)
    c, reason, close_code, close_reason = error_of(got, close)
    assert (c, close_code, close_reason) == (code, 1008, code) and words in reason, reason


def test_idle_timeout_closes_the_stream(animator):
    with client_for(animator, stream_idle_timeout=0.3) as client:
        t0 = time.monotonic()
        got, close = run_until_close(client, portrait_bytes(), start_message(), s16(speech(0.1)))
        took = time.monotonic() - t0
        assert error_of(got, close)[:3] == ("idle", "no audio for 0.3 s; the stream was closed (this server's "
                                                    "--stream-idle-timeout).", 1008)
        assert 0.3 <= took < 5
        got, close = run_until_close(client)  # no portrait either
        assert error_of(got, close)[0] == "idle" and "no portrait" in error_of(got, close)[1]


def test_too_long_renders_up_to_the_limit(animator):
    with client_for(animator, max_stream_seconds=1) as client, client.websocket_connect("/stream/ws") as ws:
        ws.send_bytes(portrait_bytes())
        ws.send_text(start_message())
        send_audio(ws, speech(1.5), 1600)
        got, close = read_all(ws)
    assert error_of(got, close)[0] == "too_long" and "1 s of audio" in error_of(got, close)[1]
    assert len(frames_of(got)) == 25  # exactly the first second
    assert sum(animator.pulled) == SR


def test_streams_limit_refuses_one_more(animator):
    with client_for(animator, max_streams=1) as client, client.websocket_connect("/stream/ws") as first:
        first.send_bytes(portrait_bytes())
        first.send_text(start_message())
        assert first.receive_json()["type"] == "ready"  # the first one runs
        got, close = run_until_close(client)
        code, reason, close_code, _ = error_of(got, close)
        assert (code, close_code) == ("busy", 1013) and "already runs 1 stream(s)" in reason
        first.send_text(json.dumps({"type": "end"}))
        messages, close = read_all(first)
        assert close["code"] == 1000
        with client.websocket_connect("/stream/ws") as again:  # the slot is free again
            again.send_bytes(portrait_bytes())
            again.send_text(start_message())
            assert again.receive_json()["type"] == "ready"
    disabled = client_for(animator, max_streams=0)
    with disabled as client:
        assert error_of(*run_until_close(client))[0] == "busy"


def test_client_leaving_stops_the_render(animator):
    slow = FakeAnimator(delay=0.05)
    with client_for(slow) as client:
        with client.websocket_connect("/stream/ws") as ws:
            ws.send_bytes(portrait_bytes())
            ws.send_text(start_message())
            send_audio(ws, speech(2.0), 1600)
            assert ws.receive_json()["type"] == "ready"
        deadline = time.monotonic() + 10
        while client.app.state.streams.running and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.app.state.streams.running == 0


# ------------------------------------------------------------------------------------ back-pressure
def test_drop_mode_keeps_the_buffer_bounded():
    slow = FakeAnimator(delay=0.04)  # 1 s of audio takes 1 s to render: 4x slower than it is sent below
    x = speech(6.0)
    with client_for(slow, stream_buffer=1) as client, client.websocket_connect("/stream/ws") as ws:
        ws.send_bytes(portrait_bytes())
        ws.send_text(start_message(overflow="drop"))
        for i in range(0, len(x), 1600):  # 100 ms every 25 ms
            ws.send_bytes(s16(x[i:i + 1600]))
            time.sleep(0.025)
        ws.send_text(json.dumps({"type": "end"}))
        got, close = read_all(ws)
    assert close["code"] == 1000
    end = got[-1][1]
    dropped = [m for k, m in got if k == "json" and m["type"] == "dropped"]
    assert dropped and end["dropped_seconds"] == pytest.approx(dropped[-1]["total_seconds"])
    assert end["dropped_seconds"] > 1
    assert end["seconds"] + end["dropped_seconds"] == pytest.approx(6.0)
    assert max(slow.pulled) <= SR  # the animator never got more than the buffer at once
    assert end["frames"] == len(frames_of(got)) == int(np.ceil(end["seconds"] * FPS))


def test_block_mode_renders_everything_without_buffering_it():
    slow = FakeAnimator(delay=0.01)
    x = speech(4.0)
    with client_for(slow, stream_buffer=1) as client, client.websocket_connect("/stream/ws") as ws:
        ws.send_bytes(portrait_bytes())
        ws.send_text(start_message(overflow="block"))
        send_audio(ws, x, 4000)  # as fast as the socket takes it
        ws.send_text(json.dumps({"type": "end"}))
        got, close = read_all(ws)
    end = got[-1][1]
    assert close["code"] == 1000 and end["dropped_seconds"] == 0 and end["seconds"] == pytest.approx(4.0)
    assert end["frames"] == len(frames_of(got)) == 100 and max(slow.pulled) <= SR


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
    with pytest.raises(Cancelled):
        list(b.chunks())


# ------------------------------------------------------------------------------------ options
def test_serve_options_reach_the_stream_config():
    from audio2lp.apps.cli import build_parser

    args = build_parser().parse_args(["serve", "--max-stream-seconds", "30", "--stream-idle-timeout", "2",
                                      "--max-streams", "3", "--stream-buffer", "4"])
    assert StreamConfig.from_args(args) == StreamConfig(30.0, 2.0, 3, 4.0)
    from audio2lp.options import OptionError

    with pytest.raises(OptionError, match="stream_buffer"):
        StreamConfig(stream_buffer=0.5)
