"""Live streaming in ``audio2lp serve``: ``WS /stream/ws`` (speech in as it arrives, frames out as they are made,
:meth:`audio2lp.api.Animator.stream`) and the microphone page ``GET /stream``.

The protocol, one stream per connection:

client -> server
    1. a binary message: the portrait (JPEG, PNG, WebP or BMP bytes; at most ``--max-upload-mb``);
    2. a text message, the start: ``{"type": "start", "format": "s16le" | "f32le", "sample_rate": 16000,
       "options": {...}, "overflow": "drop" | "block", "audio": false, "jpeg_quality": 85}``. ``options`` are
       speak's service options (the fields of ``POST /speak``: ``seed``, ``pose_scale``, ``blink``, the sliders,
       ...; checked by :mod:`audio2lp.options`), plus ``lookahead_ms``; those that do not apply to a stream
       (``fps``, ``crf``, ``style``) are refused with the reason. A stream always makes speak's default motion
       (the server's ``--motion-model`` is for ``POST /speak``);
    3. binary messages: audio, mono 16 kHz PCM little-endian in the start's format, any size up to one second
       (and up to ``--stream-buffer``);
    4. a text message ``{"type": "end"}``: the end of the speech.

server -> client
    * ``{"type": "ready", "fps", "sample_rate", "lookahead_ms", "width", "height", "max_seconds", "idle_timeout",
      "buffer_seconds", "overflow"}`` once the portrait is prepared (audio may be sent before it);
    * per frame, in order: ``{"type": "frame", "index", "time", "audio_samples"}`` then a binary message, the JPEG
      (``time`` = index / fps, seconds of the speech the frame shows), then, when the start asked for ``"audio":
      true``, a binary message with the frame's audio (s16le, ``audio_samples`` samples: [time, time + 1/fps));
    * ``{"type": "dropped", "seconds", "total_seconds"}`` when audio was dropped (``"overflow": "drop"``);
    * ``{"type": "end", "frames", "seconds", "dropped_seconds"}`` after the last frame, then a normal close (1000);
    * on a problem, ``{"type": "error", "code", "reason"}`` then a close with that code as the reason (1008 for
      the client's problems, 1013 busy / stopping, 1011 an internal error). Codes: ``busy`` (``--max-streams``
      streams already run), ``bad_message`` (a message out of order or not JSON), ``bad_portrait``, ``bad_start``
      (format, rate, ``overflow``, ...), ``bad_options`` (a speak option's name or value), ``bad_audio`` (a chunk
      that is not whole samples or longer than 1 s), ``bad_input`` (the animator refused the input: no face, ...),
      ``idle`` (no audio for ``--stream-idle-timeout`` seconds: the stream stops at once), ``too_long`` (the audio
      passed ``--max-stream-seconds``: the audio up to the limit is rendered and its frames sent first),
      ``stopping`` (the service shuts down), ``internal``.

Back-pressure. The renderer is slower than real time on a CPU: each stream holds at most ``--stream-buffer``
seconds of audio that the animator has not taken yet, and at most :data:`FRAME_QUEUE` encoded frames that the
socket has not sent yet (a client that does not read its frames stalls the renderer, which fills the audio
buffer). When audio arrives and the buffer is full, the start's ``overflow`` decides: ``"drop"`` (for a live
microphone: the oldest audio not yet taken is dropped, so the head stays at most the buffer behind the speaker; a
``dropped`` message says how much; the frames carry their own audio, ``"audio": true``, for a client that wants
to play what was rendered) or ``"block"`` (the default, for speech that must be rendered whole, e.g. from a TTS
engine or a file: the server stops reading the socket until there is room, so the WebSocket server's own
message queue (uvicorn's ``ws_max_queue``, 32 messages) and the TCP window fill and the sender's sends wait; the
idle timer does not run meanwhile).

Sharing the renderer. Every stream runs in its own thread on the service's one :class:`~audio2lp.api.Animator`,
next to the job workers, as the workers share it among themselves (the networks are only read); at most
``--max-streams`` streams run at once (one more is refused with ``busy``), each with the torch thread count of a
job worker. Streams and jobs share the CPU: a stream with ``"drop"`` keeps its latency bounded while a job runs,
with ``"block"`` it renders more slowly.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import io
import json
import logging
import shutil
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from audio2lp import options
from audio2lp.apps.serve_limits import set_thread_count, threads_per_worker
from audio2lp.options import API, OptionError
from lp_renderer.errors import InputError

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
FORMATS = {"s16le": np.dtype("<i2"), "f32le": np.dtype("<f4")}
OVERFLOW = ("block", "drop")
FRAME_QUEUE = 8
"""Encoded frames a stream holds for its socket (the renderer waits when they are not sent)."""
MAX_CHUNK_SECONDS = 1.0
"""Longest audio message (when ``--stream-buffer`` is longer)."""
#: the page's files (package data)
PAGE_FILES = {"": ("stream.html", "text/html; charset=utf-8"), "stream.js": ("stream.js", "text/javascript"),
              "worklet.js": ("worklet.js", "text/javascript")}
_CLIENT, _BUSY, _INTERNAL = 1008, 1013, 1011


@dataclass(frozen=True)
class StreamConfig:
    """Limits of the streams of ``audio2lp serve`` (the ``serve`` options of the same names)."""

    max_stream_seconds: float = 600.0  # longest stream, in seconds of audio
    stream_idle_timeout: float = 10.0  # seconds without audio after which a stream is closed
    max_streams: int = 2  # streams running at once (0: streaming is off)
    stream_buffer: float = 5.0  # seconds of audio held for the renderer per stream

    def __post_init__(self):
        for name in ("max_stream_seconds", "stream_idle_timeout", "max_streams", "stream_buffer"):
            object.__setattr__(self, name, options.check_value(name, getattr(self, name)))

    @classmethod
    def from_args(cls, args) -> StreamConfig:
        return cls(**{name: getattr(args, name) for name in cls.__dataclass_fields__})


class StreamError(Exception):
    """A stream stops with ``code`` and ``reason`` (sent to the client) and the close code ``close``."""

    def __init__(self, code: str, reason: str, close: int = _CLIENT):
        super().__init__(reason)
        self.code, self.reason, self.close = code, reason, close


class Cancelled(Exception):
    """The stream's session stopped; its render thread leaves."""


# ------------------------------------------------------------------------------------------ audio buffer
class AudioBuffer:
    """The audio a stream holds for the animator, at most ``capacity`` samples; thread-safe. The async receiver
    pushes; the render thread pulls through :meth:`chunks` (blocking), the animator's chunk iterable."""

    def __init__(self, capacity: int, drop: bool):
        self.capacity, self.drop = int(capacity), drop
        self._chunks: deque[np.ndarray] = deque()
        self._held = 0
        self._cond = threading.Condition()
        self._ended = self._cancelled = False
        self.dropped = 0  # samples dropped so far
        self.taken = 0  # samples the animator has taken

    @property
    def free(self) -> int:
        with self._cond:
            return self.capacity - self._held

    def push(self, samples: np.ndarray) -> int:
        """Add ``samples`` (float32, at most ``capacity``); in drop mode the oldest held audio makes room (returns
        the samples dropped). In block mode the caller waits for :attr:`free` first."""
        dropped = 0
        with self._cond:
            while self.drop and self._chunks and self._held + len(samples) > self.capacity:
                over = self._held + len(samples) - self.capacity
                head = self._chunks[0]
                if len(head) <= over:
                    self._chunks.popleft()
                    n = len(head)
                else:
                    self._chunks[0] = head[over:]
                    n = over
                self._held -= n
                dropped += n
            self._chunks.append(samples)
            self._held += len(samples)
            self.dropped += dropped
            self._cond.notify_all()
        return dropped

    def end(self) -> None:
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    def cancel(self) -> None:
        with self._cond:
            self._cancelled = True
            self._cond.notify_all()

    def chunks(self):
        """Everything held so far at each step (waits for audio); ends after :meth:`end` once empty; raises
        :class:`Cancelled` after :meth:`cancel`."""
        while True:
            with self._cond:
                while not (self._chunks or self._ended or self._cancelled):
                    self._cond.wait()
                if self._cancelled:
                    raise Cancelled()
                if not self._chunks:
                    return
                out = np.concatenate(list(self._chunks)) if len(self._chunks) > 1 else self._chunks[0]
                self._chunks.clear()
                self._held = 0
                self.taken += len(out)
            yield out


# ------------------------------------------------------------------------------------------ start message
def streamed_options() -> set[str]:
    """The option names a start message may set: speak's service options (the fields of ``POST /speak``) and
    ``lookahead_ms``. :meth:`~audio2lp.api.Animator.stream` itself refuses, with the reason, those that do not apply
    to a stream (``fps``, ``crf``, ``style``)."""
    return {o.name for o in options.options_for("speak") if o.service} | {"lookahead_ms"}


def parse_start(text: str) -> dict:
    """The start message checked: ``{"format", "overflow", "audio", "jpeg_quality", "options"}``; raises
    :class:`StreamError`."""
    try:
        msg = json.loads(text)
    except ValueError:
        raise StreamError("bad_message", "the start message is not JSON; send {\"type\": \"start\", ...}.") from None
    if not isinstance(msg, dict) or msg.get("type") != "start":
        raise StreamError("bad_message", "expected the start message ({\"type\": \"start\", ...}) after the "
                                         "portrait.")
    fmt = msg.get("format", "s16le")
    if fmt not in FORMATS:
        raise StreamError("bad_start", f"format must be s16le or f32le (16 kHz mono PCM), not {fmt!r}.")
    if msg.get("sample_rate", SAMPLE_RATE) != SAMPLE_RATE:
        raise StreamError("bad_start", f"sample_rate must be 16000 (resample the audio to 16 kHz first), not "
                                       f"{msg.get('sample_rate')!r}.")
    overflow = msg.get("overflow", "block")
    if overflow not in OVERFLOW:
        raise StreamError("bad_start", f"overflow must be block or drop, not {overflow!r}.")
    quality = msg.get("jpeg_quality", 85)
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise StreamError("bad_start", f"jpeg_quality must be a whole number from 1 to 100, not {quality!r}.")
    opts = msg.get("options", {})
    if not isinstance(opts, dict):
        raise StreamError("bad_options", "options must be a JSON object of speak options.")
    allowed = streamed_options()
    unknown = sorted(set(opts) - allowed)
    if unknown:
        raise StreamError("bad_options", f"unknown option(s) {', '.join(unknown)}; a stream takes "
                                         f"{', '.join(sorted(allowed))}.")
    try:
        values = options.check(opts)
    except OptionError as e:
        raise StreamError("bad_options", e.describe(API)) from None
    return {"format": fmt, "overflow": overflow, "audio": bool(msg.get("audio", False)), "jpeg_quality": quality,
            "options": values}


def save_portrait(data: bytes, folder: Path) -> Path:
    """The portrait message written to ``folder`` under its format's suffix; :class:`StreamError` when it is not
    an image."""
    from PIL import Image, UnidentifiedImageError

    suffixes = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp"}
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format
            im.verify()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        fmt = None
    if fmt not in suffixes:
        raise StreamError("bad_portrait", "the portrait is not an image this server can read; send a JPEG, PNG or "
                                          "WebP photo as the first (binary) message.")
    path = folder / ("portrait" + suffixes[fmt])
    path.write_bytes(data)
    return path


def decode_audio(data: bytes, fmt: str, max_samples: int) -> np.ndarray:
    """One audio message as float32 samples in [-1, 1]; :class:`StreamError` when it is not whole samples or longer
    than ``max_samples``."""
    dtype = FORMATS[fmt]
    if len(data) % dtype.itemsize:
        raise StreamError("bad_audio", f"an audio message of {len(data)} bytes is not whole {fmt} samples "
                                       f"({dtype.itemsize} bytes each).")
    if len(data) > max_samples * dtype.itemsize:
        raise StreamError("bad_audio", f"an audio message holds {len(data) // dtype.itemsize} samples; send at "
                                       f"most {max_samples} ({max_samples / SAMPLE_RATE:g} s) per message.")
    x = np.frombuffer(data, dtype)
    if fmt == "s16le":
        return x.astype(np.float32) / 32768.0
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise StreamError("bad_audio", "the audio holds NaN or infinite samples.")
    return x


def encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    """``rgb``: uint8 (H, W, 3) RGB -> JPEG bytes."""
    import cv2

    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


# ------------------------------------------------------------------------------------------ one stream
class StreamHub:
    """The streams of one service: how many run, their limits, the shared animator."""

    def __init__(self, animator, config: StreamConfig, *, threads: int, max_upload_bytes: int,
                 stopping=lambda: False):
        self.animator, self.config, self.threads = animator, config, threads
        self.max_upload_bytes = max_upload_bytes
        self.stopping = stopping
        self._running = 0
        self._lock = threading.Lock()

    @property
    def running(self) -> int:
        with self._lock:
            return self._running

    def acquire(self) -> bool:
        with self._lock:
            if self._running >= self.config.max_streams:
                return False
            self._running += 1
            return True

    def release(self) -> None:
        with self._lock:
            self._running -= 1


class StreamSession:
    """One connection's stream: the receiver (portrait, start, audio -> :class:`AudioBuffer`), the render thread
    (``animator.stream`` -> JPEGs in a bounded queue) and the sender (the queue -> the socket)."""

    def __init__(self, hub: StreamHub, ws, disconnect: type[Exception]):
        self.hub, self.ws, self.disconnect = hub, ws, disconnect
        cfg = hub.config
        self.idle = cfg.stream_idle_timeout
        self.max_samples = int(round(cfg.max_stream_seconds * SAMPLE_RATE))
        self.received = 0
        self.truncated = False
        self.buffer: AudioBuffer | None = None
        self.cancelled = threading.Event()

    # -- receiving
    async def _receive(self, timeout: float, what: str) -> dict:
        try:
            msg = await asyncio.wait_for(self.ws.receive(), timeout)
        except asyncio.TimeoutError:
            raise StreamError("idle", f"no {what} for {self.idle:g} s; the stream was closed (this server's "
                                      f"--stream-idle-timeout).") from None
        if msg["type"] == "websocket.disconnect":
            raise self.disconnect()
        return msg

    async def _receive_audio(self, fmt: str) -> None:
        last = time.monotonic()
        buf = self.buffer
        longest = min(buf.capacity, int(MAX_CHUNK_SECONDS * SAMPLE_RATE))  # samples in one message
        while True:
            msg = await self._receive(max(0.0, last + self.idle - time.monotonic()), "audio")
            if self.hub.stopping():
                raise StreamError("stopping", "the service is stopping; the stream was closed.", _BUSY)
            if msg.get("text") is not None:
                try:
                    end = json.loads(msg["text"]).get("type") == "end"
                except (ValueError, AttributeError):
                    end = False
                if not end:
                    raise StreamError("bad_message", "after the start message only audio (binary) and "
                                                     "{\"type\": \"end\"} may be sent; one stream per connection.")
                buf.end()
                return
            samples = decode_audio(msg.get("bytes") or b"", fmt, longest)
            room = self.max_samples - self.received
            if len(samples) > room:
                samples, self.truncated = samples[:room], True
            self.received += len(samples)
            if not buf.drop:
                while buf.free < len(samples):  # back-pressure: stop reading the socket until there is room
                    if self.cancelled.is_set():
                        return
                    await asyncio.sleep(0.02)
            if len(samples):
                buf.push(samples)
            if self.truncated:
                buf.end()
                return
            last = time.monotonic()

    # -- rendering (its own thread)
    def _render(self, loop, out: asyncio.Queue, portrait: Path, start: dict) -> None:
        def put(item) -> None:
            if self.cancelled.is_set():
                raise Cancelled()
            try:
                fut = asyncio.run_coroutine_threadsafe(out.put(item), loop)
            except RuntimeError:  # the loop is closed: the service stopped
                raise Cancelled() from None
            while True:
                try:
                    return fut.result(timeout=0.2)
                except TimeoutError:
                    if self.cancelled.is_set():
                        fut.cancel()
                        raise Cancelled() from None

        hub = self.hub
        try:
            set_thread_count(hub.threads)
            with hub.animator.stream(portrait, self.buffer.chunks(), **start["options"]) as stream:
                h, w = stream.frame_size
                put(("ready", {"fps": stream.fps, "sample_rate": stream.sample_rate,
                               "lookahead_ms": stream.lookahead_ms, "width": w, "height": h}))
                for frame in stream:
                    if self.cancelled.is_set():
                        raise Cancelled()
                    jpeg = encode_jpeg(frame.image, start["jpeg_quality"])
                    audio = None
                    if start["audio"]:
                        audio = (np.clip(frame.audio, -1, 1) * 32767).round().astype("<i2").tobytes()
                    put(("frame", frame.index, frame.time, jpeg, audio, len(frame.audio)))
            put(("done", None))
        except Cancelled:
            return
        except Exception as e:  # noqa: BLE001 - a bug ends this stream only; it is logged with its traceback
            if self.cancelled.is_set():  # the session ended first (e.g. its portrait folder is gone): nobody listens
                return
            if isinstance(e, OptionError):  # an option the animator refuses for a stream
                err = StreamError("bad_options", e.describe(API))
            elif isinstance(e, InputError):  # no face, ...
                err = StreamError("bad_input", str(e))
            else:
                log.exception("stream failed with an internal error")
                err = StreamError("internal", f"internal error ({type(e).__name__}); see the server log.", _INTERNAL)
            self._put_error(put, err)

    @staticmethod
    def _put_error(put, err: StreamError) -> None:
        with contextlib.suppress(Cancelled):
            put(("error", err))

    # -- sending
    async def _send_frames(self, out: asyncio.Queue, start: dict) -> dict:
        buf, sent_drop, frames = self.buffer, 0, 0
        while True:
            item = await out.get()
            kind = item[0]
            if kind == "error":
                raise item[1]
            if buf.dropped != sent_drop:
                await self.ws.send_text(json.dumps({"type": "dropped", "seconds": (buf.dropped - sent_drop) /
                                                    SAMPLE_RATE, "total_seconds": buf.dropped / SAMPLE_RATE}))
                sent_drop = buf.dropped
            if kind == "ready":
                c = self.hub.config
                await self.ws.send_text(json.dumps({"type": "ready", **item[1], "max_seconds": c.max_stream_seconds,
                                                    "idle_timeout": c.stream_idle_timeout,
                                                    "buffer_seconds": c.stream_buffer,
                                                    "overflow": start["overflow"]}))
            elif kind == "frame":
                _, index, t, jpeg, audio, n_audio = item
                await self.ws.send_text(json.dumps({"type": "frame", "index": int(index), "time": float(t),
                                                    "audio_samples": int(n_audio) if audio is not None else 0}))
                await self.ws.send_bytes(jpeg)
                if audio is not None:
                    await self.ws.send_bytes(audio)
                frames += 1
            else:  # done
                return {"frames": frames, "seconds": buf.taken / SAMPLE_RATE, "dropped_seconds": buf.dropped /
                        SAMPLE_RATE}

    # -- the whole session
    async def run(self) -> None:
        folder = None
        tasks: list[asyncio.Task] = []
        try:
            msg = await self._receive(self.idle, "portrait")
            data = msg.get("bytes")
            if data is None:
                raise StreamError("bad_message", "send the portrait (the image file's bytes) as the first, binary "
                                                 "message.")
            if len(data) > self.hub.max_upload_bytes:
                raise StreamError("bad_portrait", f"the portrait is larger than this server's limit of "
                                                  f"{self.hub.max_upload_bytes / 1e6:g} MB.")
            folder = Path(tempfile.mkdtemp(prefix="audio2lp-stream-"))
            portrait = save_portrait(data, folder)
            msg = await self._receive(self.idle, "start message")
            if msg.get("text") is None:
                raise StreamError("bad_message", "send the start message (JSON text) after the portrait.")
            start = parse_start(msg["text"])
            cfg = self.hub.config
            self.buffer = AudioBuffer(int(cfg.stream_buffer * SAMPLE_RATE), drop=start["overflow"] == "drop")
            out: asyncio.Queue = asyncio.Queue(maxsize=FRAME_QUEUE)
            loop = asyncio.get_running_loop()
            threading.Thread(target=self._render, args=(loop, out, portrait, start), name="audio2lp-stream",
                             daemon=True).start()
            receiver = asyncio.create_task(self._receive_audio(start["format"]))
            sender = asyncio.create_task(self._send_frames(out, start))
            tasks = [receiver, sender]
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if receiver.done():
                receiver.result()  # its error, if any, stops the stream at once
            summary = await sender
            if self.truncated:
                raise StreamError("too_long", f"the stream passed this server's limit of {cfg.max_stream_seconds:g} "
                                              f"s of audio (--max-stream-seconds); the frames up to it were sent.")
            await self.ws.send_text(json.dumps({"type": "end", **summary}))
            await self.ws.close(1000)
        except StreamError as e:
            await self._stop(tasks)
            await self._fail(e)
        except (self.disconnect, OSError):
            log.info("stream: the client left")
        except Exception as e:  # noqa: BLE001 - never a traceback to the client
            log.exception("stream failed with an internal error")
            await self._stop(tasks)
            await self._fail(StreamError("internal", f"internal error ({type(e).__name__}); see the server log.",
                                         _INTERNAL))
        finally:
            await self._stop(tasks)
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)

    async def _stop(self, tasks: list[asyncio.Task]) -> None:
        """Stop the render thread and the receiver / sender (before an error is sent)."""
        self.cancelled.set()
        if self.buffer is not None:
            self.buffer.cancel()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _fail(self, e: StreamError) -> None:
        log.info("stream stopped: %s (%s)", e.code, e.reason)
        with contextlib.suppress(Exception):  # the client may have gone
            await self.ws.send_text(json.dumps({"type": "error", "code": e.code, "reason": e.reason}))
            await self.ws.close(e.close, e.code)


# ------------------------------------------------------------------------------------------ routes
def add_stream_routes(app, animator, config, *, stopping) -> StreamHub:
    """``WS /stream/ws`` and the page (``GET /stream``, its scripts) on ``app``; ``config``: the
    :class:`~audio2lp.apps.server.ServeConfig` (its ``stream`` limits, ``max_upload_mb``, ``threads``, ``workers``);
    ``stopping()``: True once the service shuts down."""
    import torch
    from fastapi import WebSocketDisconnect
    from fastapi.responses import Response

    hub = StreamHub(animator, config.stream, threads=threads_per_worker(config.threads, config.workers,
                                                                        torch.get_num_threads()),
                    max_upload_bytes=config.max_upload_bytes, stopping=stopping)
    app.state.streams = hub
    if importlib.util.find_spec("websockets") is None and importlib.util.find_spec("wsproto") is None:
        log.warning("uvicorn has no WebSocket library: WS /stream/ws (the live stream and its page) needs one; "
                    "pip install websockets (in the serve extra).")

    async def stream_ws(ws):  # a plain Starlette route: the socket is the only argument
        await ws.accept()
        session = StreamSession(hub, ws, WebSocketDisconnect)
        if hub.stopping():
            return await session._fail(StreamError("stopping", "the service is stopping; try again later.", _BUSY))
        if not hub.acquire():
            return await session._fail(StreamError(
                "busy", f"this server already runs {hub.config.max_streams} stream(s) (--max-streams); try again "
                        f"later.", _BUSY))
        try:
            await session.run()
        finally:
            hub.release()

    app.router.add_websocket_route("/stream/ws", stream_ws)

    def page(name: str):
        file, media = PAGE_FILES[name]
        body = resources.files("audio2lp.apps").joinpath("stream_page", file).read_bytes()
        return Response(body, media_type=media, headers={"Cache-Control": "no-cache"})

    app.get("/stream", summary="The microphone page: a portrait, your voice, the talking head live",
            response_class=Response)(lambda: page(""))
    app.get("/stream/stream.js", include_in_schema=False)(lambda: page("stream.js"))
    app.get("/stream/worklet.js", include_in_schema=False)(lambda: page("worklet.js"))
    return hub
