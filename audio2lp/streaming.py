"""Streaming speak: speech in as it arrives, frames out as they are made (:meth:`audio2lp.Animator.stream`).

Two layers:

- :class:`SpeechMotionStream`: 16 kHz audio pushed in chunks of any size -> the rows of the default motion
  (:func:`audio2lp.speech.speech_motion`'s lip, eyes, head) at 25 fps, each as soon as the audio it depends on is
  in. It feeds the same pieces the offline path uses, in the same order: :class:`~audio2lp.whisper.stream.FeatureStream`
  over the audio padded with the model's digital silence (incremental, bounded window), the landmark model's
  :class:`~audio2lp.models.landmark_motion.MotionStream` (sliding key/value cache), the blink and head processes
  (seeded streams), :class:`~audio2lp.models.processes.LipMix` and the causal pause gate. Memory is bounded: every
  buffer keeps a fixed number of frames or tokens (:meth:`SpeechMotionStream.state_sizes`).
- :class:`SpeakStream`: the iterator :meth:`Animator.stream` returns; it pulls audio chunks only when it needs
  them to make the next frame (back-pressure: nothing is read ahead of the renderer), renders each frame
  (LivePortrait's retargeting, stitching, paste-back, exactly as ``speak``) and hands it out with its 40 ms of audio.

What is exact and what is not (``speak`` is the reference):

- Features, the transformer's read-out lip and scores, head, eyes (blinks), the pause gate: bit-identical to
  ``speak``, whatever the chunk sizes (the look-ahead covers their context).
- The lip-sync model's lip, blended into the lip by :class:`LipMix` (its weight is read from the checkpoint),
  is not causal offline: it reads Whisper features of 30 s windows (each token sees the whole window) through
  dilated convolutions that see ``receptive_field`` frames (720 ms) on both sides. The stream runs the same
  lip-sync network on the streaming Whisper features (the motion model's window geometry, the lip-sync model's
  layers) and, for frame ``i``, on the frames up to ``i + lipsync_ahead`` only, as if the speech ended there
  (``lipsync_ahead`` is the largest number of frames the look-ahead allows). So the streamed lip differs from
  ``speak``'s by a bounded amount: :data:`LIP_TOLERANCE` (lip-open ratio), checked by the tests on real speech.
  The lip-sync model's Whisper layers come from the motion features' own encoder pass (one pass for both).
- ``speak`` skips the eye retargeting altogether when no blink falls in the whole clip; the stream cannot know
  that in advance and retargets the eyes whenever blinks are on (at the portrait's own eye ratio between
  blinks), so with blinks on, a clip too short for a blink differs slightly. With ``blink=False`` both skip it.

Look-ahead: a frame (40 ms) is made once the audio up to :attr:`SpeechMotionStream.lookahead_ms` past its end is
in (240 ms for the shipped model: the streaming features' block and window look-ahead plus the model's two
frames; the ``lookahead_ms`` parameter may raise it up to 300 ms, which gives the lip-sync model more context).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from audio2lp.errors import AudioError
from audio2lp.options import OptionError
from audio2lp.speech import SpeechModels, closed_lip_level, finish_motion_rows, landmark_model_for, offline_lipsync_lip
from audio2lp.speech_motion import SpeechMotion, speech_motion_keypoints
from audio2lp.whisper.stream import StreamingEncoder, whisper_device
from lp_renderer.errors import InputError

__all__ = ["SAMPLE_RATE", "FPS", "MAX_LOOKAHEAD_MS", "LIP_TOLERANCE", "StreamFrame", "SpeechMotionStream",
           "SpeakStream", "min_lookahead_ms", "BackgroundSpeechMotion", "start_speech_plan"]

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
FPS = 25.0
SAMPLES_PER_FRAME = 640  # 16 kHz / 25 fps
MAX_LOOKAHEAD_MS = 300
#: The largest difference (lip-open ratio, the lip retargeting's input; speech moves it between ~0.05 and ~0.3)
#: between a streamed lip and ``speak``'s, for the shipped model at the default look-ahead, that the tests accept:
#: the lip-sync model's part (see the module docstring). Everything else is bit-identical.
LIP_TOLERANCE = 0.05


class _SharedPassEncoder(StreamingEncoder):
    """A :class:`~audio2lp.whisper.stream.StreamingEncoder` whose tokens are ``(n, 2 D)``: the motion model's
    features (exactly as its own encoder makes them) and, from the same encoder pass, the average of the states at
    ``extra`` layers (the lip-sync model's), side by side. ``extra`` must not go past the motion's last layer (so
    the motion's pass, and its bits, are unchanged)."""

    def __init__(self, config, whisper, extra: tuple[int, ...]):
        super().__init__(config, whisper)
        self._extra = sorted(set(extra))
        if self._extra[-1] > self._wanted[-1]:
            raise ValueError(f"extra layers {extra} go past the motion features' last layer {self._wanted[-1]}")
        self._union = sorted(set(self._wanted) | set(self._extra))
        self.dim = 2 * self.whisper.dim

    def _blocks(self, x: torch.Tensor) -> np.ndarray:
        """Stems ``(B, window, D)`` -> ``(B, block, 2 D)`` float32: motion features, lip-sync features."""
        st = self._layer_states(x, self._union)
        main = self._average([st[i] for i in self._wanted])
        return torch.cat([main, self._average([st[i] for i in self._extra])], -1).float().cpu().numpy()


def _lookahead_ms(config, frames: int) -> int:
    """The look-ahead (ms) of the landmark model ``config`` when a frame also reads ``frames`` frames ahead."""
    c = dataclasses.replace(config, audio_ahead=max(config.audio_ahead, frames))
    return c.lookahead_ms()


def min_lookahead_ms(models: SpeechModels | None = None) -> int:
    """The smallest look-ahead (ms) the shipped default motion streams with."""
    return (models or SpeechModels()).landmark().config.lookahead_ms()


@dataclass(frozen=True)
class StreamFrame:
    """One streamed frame: ``index`` (0, 1, ...), ``time`` (s, ``index / fps``), ``image`` ``(H, W, 3)`` uint8
    RGB (pasted back like ``speak``'s frames), ``audio`` ``(640,)`` float32: the 16 kHz samples of
    ``[time, time + 1 / fps)`` (zero-padded after the end of the speech)."""

    index: int
    time: float
    image: np.ndarray
    audio: np.ndarray


class SpeechMotionStream:
    """The default motion of ``speak`` (:func:`audio2lp.speech.speech_motion` at 25 fps) from audio in chunks.

    :meth:`push` 16 kHz float32 samples and get the rows ``(n, 9)`` float32 (lip, eye l/r, pitch, yaw, roll, tx,
    ty, scale; :class:`~audio2lp.speech_motion.SpeechMotion`'s series) of the frames now complete; :meth:`finish`
    at the end of the speech gives the rest, ``max(1, round(seconds * 25))`` rows in all, as ``speak`` makes.
    Options as :func:`~audio2lp.speech.speech_motion`; ``lookahead_ms`` None: the model's minimum
    (:attr:`lookahead_ms` holds the value used). ``lipsync_lip`` ``(n,)``: the lip-sync model's lip of every frame,
    made beforehand from the whole speech (:func:`~audio2lp.speech.offline_lipsync_lip`, when the speech is known in
    advance): the rows are then ``speak``'s bit for bit (no :data:`LIP_TOLERANCE`)."""

    def __init__(self, *, seed: int = 0, pose_scale: float = 1.0, expression_scale: float = 1.0, blink: bool = True,
                 blink_rate: float | None = None, whisper_checkpoint=None, device="cpu",
                 lookahead_ms: int | None = None, models: SpeechModels | None = None, model=None,
                 lipsync_lip: np.ndarray | None = None):
        from audio2lp.models.landmark_motion import MotionStream
        from audio2lp.whisper.features import SAMPLES_PER_TOKEN

        models = models or SpeechModels()
        self.model = m = landmark_model_for(models, model, blink, blink_rate)
        c = self.config = m.config
        self.expression_scale, self.pose_scale = float(expression_scale), float(pose_scale)
        self.closed = closed_lip_level(m)
        least = c.lookahead_ms()
        if lookahead_ms is None:
            lookahead_ms = least
        if not least <= lookahead_ms <= MAX_LOOKAHEAD_MS:
            raise OptionError("lookahead_ms", "{lookahead_ms} must be between " + f"{least} ms (what the motion "
                                              f"model needs) and {MAX_LOOKAHEAD_MS} ms, not {lookahead_ms}.")
        self.lipsync_ahead = c.lookahead_frames  # frames past frame i the lip-sync model reads
        while _lookahead_ms(c, self.lipsync_ahead + 1) <= lookahead_ms:
            self.lipsync_ahead += 1
        self.lookahead_ms = int(lookahead_ms)
        wdev = whisper_device(device)  # the renderer's CUDA device, else the CPU
        whisper = models.whisper(c.features.whisper_model, whisper_checkpoint, wdev)
        self._pad = np.zeros(c.pad_tokens * SAMPLES_PER_TOKEN, np.float32)
        self.lips = self.lip_features = None
        self._shared = False  # True: one encoder pass makes the motion's and the lip-sync model's features
        self._offline_lip = None if lipsync_lip is None or m.lip_mix.lipsync_weight <= 0 else np.asarray(lipsync_lip)
        if m.lip_mix.lipsync_weight > 0 and self._offline_lip is None:
            self.lips = models.lipsync(device)
            lc = self.lips.config
            layers = lc.whisper_layers
            layers = (int(layers),) if isinstance(layers, (int, np.integer)) else tuple(int(i) for i in layers)
            self._lip_reach = lc.receptive_field  # frames the lip-sync network reads before a frame
            if lc.whisper_model == whisper.model_name and max(layers) <= max(c.features.layers):
                self._shared = True
                self.features = _SharedPassEncoder(c.features, whisper, layers).stream()
            else:
                enc = models.whisper(lc.whisper_model, whisper_checkpoint, wdev)
                geometry = dataclasses.replace(c.features, whisper_model=lc.whisper_model, layers=layers)
                self.lip_features = StreamingEncoder(geometry, enc).stream()
        if not self._shared:
            self.features = StreamingEncoder(c.features, whisper).stream()
        self.motion = MotionStream(m, seed)
        self.gate = m.closure.stream() if m.closure is not None else None
        self.n_samples = 0
        self.n_frames: int | None = None  # known at the end
        self.frames_out = 0
        self._rows: deque = deque()  # (readout row (9,), scores (k,)) of motion frames waiting for the lip-sync lip
        self._motion_frames = 0  # motion frames made (indices 0 .. _motion_frames - 1)
        self._lip_tok = np.zeros((0, 0), np.float32)  # lip-sync tokens (raw audio indices _lip_tok0 ..)
        self._lip_tok0 = 0
        self._lip_skip = c.pad_tokens  # leading padding tokens still to drop from the lip-sync features
        self._push_padded(self._pad)

    # -- input ----------------------------------------------------------------------------------------------

    def _tokens(self, tokens: np.ndarray, lip_tokens: np.ndarray | None = None) -> None:
        if self._shared:  # (n, 2 D): the motion's features, then the lip-sync model's
            d = tokens.shape[1] // 2
            tokens, lip_tokens = tokens[:, :d], tokens[:, d:]
        self._motion_tokens(tokens)
        if lip_tokens is not None:
            self._lip_tokens(lip_tokens)

    def _push_padded(self, x: np.ndarray) -> None:
        self._tokens(self.features.push(x), None if self.lip_features is None else self.lip_features.push(x))

    def _motion_tokens(self, tokens: np.ndarray) -> None:
        if len(tokens):
            raw, scores = self.motion.push(tokens)
            self._rows.extend(zip(raw, scores))
            self._motion_frames += raw.shape[0]

    def _lip_tokens(self, tokens: np.ndarray) -> None:
        skip = min(self._lip_skip, len(tokens))
        self._lip_skip -= skip
        tokens = tokens[skip:]
        if not len(tokens):
            return
        self._lip_tok = tokens if self._lip_tok.size == 0 else np.concatenate([self._lip_tok, tokens])
        keep = 2 * (self._lip_reach + self.lipsync_ahead + 2)  # the tokens the next frames read (bounded)
        first = min(2 * max(0, self.frames_out - self._lip_reach), self._lip_tok0 + len(self._lip_tok) - keep)
        drop = max(0, first - self._lip_tok0)
        if drop:
            self._lip_tok = self._lip_tok[drop:]
            self._lip_tok0 += drop

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Add 16 kHz float32 samples ``(k,)``; returns the rows ``(n, 9)`` float32 now complete."""
        if self.n_frames is not None:
            raise RuntimeError("SpeechMotionStream.push after finish")
        x = np.asarray(samples, np.float32).reshape(-1)
        self.n_samples += x.shape[0]
        self._push_padded(x)
        return self._drain()

    def finish(self) -> np.ndarray:
        """End of the speech: the remaining rows ``(n, 9)`` float32."""
        if self.n_frames is not None:
            return np.zeros((0, 9), np.float32)
        self.n_frames = max(1, int(round(self.n_samples / SAMPLE_RATE * FPS)))
        self._push_padded(self._pad)
        self._tokens(self.features.flush(), None if self.lip_features is None else self.lip_features.flush())
        self._lip_total = -(-self.n_samples // 320)  # the tokens of the speech itself (as speak encodes it)
        if self._motion_frames < self.n_frames:
            raw, scores = self.motion.flush(self.n_frames - self._motion_frames)
            self._rows.extend(zip(raw, scores))
            self._motion_frames += raw.shape[0]
        return self._drain()

    # -- output ---------------------------------------------------------------------------------------------

    def _lipsync_lip(self, i: int) -> float | None:
        """The lip-sync model's lip of frame ``i`` (raw, before the blend), or None when its features are not in
        yet. Frames ``max(0, i - reach) .. i + lipsync_ahead`` as if the speech ended there; at the end of the
        speech, the last frames see the end as ``speak`` does."""
        a, b = max(0, i - self._lip_reach), i + self.lipsync_ahead + 1
        have = self._lip_tok0 + len(self._lip_tok)
        if self.n_frames is not None:
            b = min(b, self.n_frames)
            have = min(have, self._lip_total)
        elif have < 2 * b:
            return None
        feats = self._lip_tok[2 * a - self._lip_tok0: min(2 * b, have) - self._lip_tok0]
        return float(self.lips.predict(feats, b - a).lip_open_raw[i - a])

    def _drain(self) -> np.ndarray:
        out = []
        limit = self.n_frames if self.n_frames is not None else self._motion_frames
        while self._rows and self.frames_out < limit:
            i = self.frames_out
            raw, scores = self._rows[0]
            lipsync = None
            if self._offline_lip is not None:
                lipsync = self._offline_lip[i]  # its own dtype: the blend then sees speak's bits
            elif self.lips is not None:
                lipsync = self._lipsync_lip(i)
                if lipsync is None:
                    break
            self._rows.popleft()
            m = self.model
            lip = m.lip_mix.mix(np.array([raw[0]], np.float64),
                                None if lipsync is None else np.array([lipsync]))[0]  # a float32 stays float32
            if self.gate is not None:
                lip = self.gate.next(float(lip), float(np.float64(scores[m.closure.score])))
            row = raw.copy()
            row[0] = np.float32(max(lip, 0.0))
            out.append(row)
            self.frames_out += 1
        if self.n_frames is not None and self.frames_out >= self.n_frames:
            self._rows.clear()
        if not out:
            return np.zeros((0, 9), np.float32)
        return finish_motion_rows(self.model, np.stack(out), expression_scale=self.expression_scale,
                                  pose_scale=self.pose_scale, closed=self.closed)

    def state_sizes(self) -> dict[str, int]:
        """The sizes of every buffer that could grow with the stream (tests check they stay bounded)."""
        ms = self.motion
        sizes = {"feature_audio": len(self.features.buf), "motion_frames_kept": len(ms.ff),
                 "kv_cache": max((0 if k.k is None else k.k.shape[2]) for k in ms.caches),
                 "waiting_rows": len(self._rows), "lip_tokens": len(self._lip_tok)}
        if self.lip_features is not None:
            sizes["lip_feature_audio"] = len(self.lip_features.buf)
        return sizes


class SpeakStream:
    """The iterator of :meth:`audio2lp.Animator.stream` (see the module docstring): iterate for
    :class:`StreamFrame` s; :attr:`fps`, :attr:`sample_rate`, :attr:`lookahead_ms`, :attr:`frame_size`;
    :meth:`close` (or a ``with`` block) stops early and releases the audio source and the state.

    ``timings``: seconds (wall, and process CPU time ``*_cpu_s``) spent so far making the motion (features,
    models: everything but rendering) and rendering (keypoints, warping, decoding, paste-back), and the frames
    made."""

    fps = FPS
    sample_rate = SAMPLE_RATE

    def __init__(self, renderer, portrait, chunks: Iterable, motion: SpeechMotionStream, *, pasteback: bool,
                 edit=None):
        self._renderer, self._pt, self._motion = renderer, portrait, motion
        self._pasteback, self._edit = pasteback, edit
        self._eyes = motion.model.blinks is not None
        self.lookahead_ms = motion.lookahead_ms
        if pasteback:
            self.frame_size = tuple(int(v) for v in portrait.image.shape[:2])
        else:
            self.frame_size = (512, 512)
        try:
            self._chunks: Iterator | None = iter(chunks)
        except TypeError:
            raise InputError(f"the audio chunks must be an iterable of arrays, got {type(chunks).__name__}.") from None
        self._rows: deque = deque()
        self._audio = np.zeros(0, np.float32)  # samples from frame _next's start on
        self._next = 0
        self._n_chunks = 0
        self._ended = self._closed = self._busy = False
        self.timings = {"motion_s": 0.0, "render_s": 0.0, "motion_cpu_s": 0.0, "render_cpu_s": 0.0, "frames": 0}

    def __iter__(self) -> SpeakStream:
        return self

    def __enter__(self) -> SpeakStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop: no more frames; the chunk iterator is closed (if it has ``close``) and the state released. May be
        called from another thread while a frame is being made: the iteration then ends after it."""
        self._closed = True
        if not self._busy:
            self._release()

    def _release(self) -> None:
        chunks, self._chunks = self._chunks, None
        self._motion = self._pt = self._renderer = None
        self._rows.clear()
        self._audio = np.zeros(0, np.float32)
        if chunks is not None and hasattr(chunks, "close"):
            with contextlib.suppress(ValueError):  # a generator running in another thread: it ends with the stream
                chunks.close()

    def _timed(self, key: str, fn, *a):
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            return fn(*a)
        finally:
            self.timings[key + "_s"] += time.perf_counter() - t0
            self.timings[key + "_cpu_s"] += time.process_time() - c0

    def _pull(self) -> None:
        """Read one chunk (or the end) and push it into the motion stream."""
        try:
            chunk = next(self._chunks)
        except StopIteration:
            self._ended = True
            if self._motion.n_samples == 0:
                raise AudioError("the audio stream ended without any samples; send 16 kHz mono float32 "
                                 "chunks.") from None
            self._rows.extend(self._timed("motion", self._motion.finish))
            return
        k = self._n_chunks
        self._n_chunks += 1
        try:
            x = np.asarray(chunk, dtype=np.float32)
        except (TypeError, ValueError):
            raise InputError(f"audio chunk {k} is not an array of numbers ({type(chunk).__name__}); send 1-D float32 "
                             f"arrays of 16 kHz mono samples.") from None
        if x.ndim != 1:
            raise InputError(f"audio chunk {k} has shape {x.shape}; send 1-D float32 arrays of 16 kHz mono samples.")
        if not np.isfinite(x).all():
            raise InputError(f"audio chunk {k} contains NaN or infinite values.")
        self._audio = np.concatenate([self._audio, x])
        self._rows.extend(self._timed("motion", self._motion.push, x))

    def __next__(self) -> StreamFrame:
        if self._closed:
            self._release()
            raise StopIteration
        self._busy = True
        try:
            return self._next_frame()
        except BaseException:
            self._closed = True
            raise
        finally:
            self._busy = False
            if self._closed:
                self._release()

    def _next_frame(self) -> StreamFrame:
        while not self._rows and not self._ended and not self._closed:
            self._pull()
        if not self._rows or self._closed:
            self._closed = True
            raise StopIteration
        row = self._rows.popleft()
        image = self._timed("render", self._render, row)
        self.timings["frames"] += 1
        audio = np.zeros(SAMPLES_PER_FRAME, np.float32)
        part = self._audio[:SAMPLES_PER_FRAME]
        audio[:len(part)] = part
        self._audio = self._audio[SAMPLES_PER_FRAME:]
        frame = StreamFrame(self._next, self._next / self.fps, image, audio)
        self._next += 1
        return frame

    def _render(self, row: np.ndarray) -> np.ndarray:
        """One motion row (9,) -> the output frame, as ``speak`` renders a frame (a batch of one)."""
        r = row[None]
        one = SpeechMotion(fps=FPS, lip_open=r[:, 0], eyes_open=r[:, 1:3], pitch=r[:, 3], yaw=r[:, 4], roll=r[:, 5],
                           tx=r[:, 6], ty=r[:, 7], scale=r[:, 8])
        idx = np.arange(1)
        rendered = [self._renderer.render(pf.source, speech_motion_keypoints(self._renderer, pf, one, idx,
                                                                             eyes=self._eyes, edit=self._edit),
                                          batch_size=1)
                    for pf in self._pt.faces]
        return self._pt.composite([r[0] for r in rendered], pasteback=self._pasteback)


class BackgroundSpeechMotion:
    """``speak``'s default motion made in a background thread, row by row, while the portrait is prepared and the
    first frames render (:func:`start_speech_plan`). The rows are :func:`~audio2lp.speech.speech_motion`'s bit for
    bit: the same :class:`SpeechMotionStream` pieces, fed the whole speech, with the lip-sync model's lip made
    beforehand from the whole speech (``lipsync_lip``). ``motion`` is the :class:`SpeechMotion` being filled: its
    eye series is known in advance (the blink process does not depend on the speech), the other rows are valid up
    to :meth:`wait`'s count. The thread runs the small models on one torch thread (a per-thread setting: the
    renderer keeps its threads)."""

    #: audio pushed per step (s): the Whisper windows of one step go through the encoder in batches
    STEP_S = 1.0

    def __init__(self, wav: np.ndarray, *, seed: int, pose_scale: float, expression_scale: float, blink: bool,
                 blink_rate: float | None, whisper_checkpoint, device, models: SpeechModels):
        self._wav = np.asarray(wav, np.float32).reshape(-1)
        self.n_frames = n = max(1, int(round(len(self._wav) / SAMPLE_RATE * FPS)))
        self._kw = dict(seed=seed, pose_scale=pose_scale, expression_scale=expression_scale, blink=blink,
                        blink_rate=blink_rate, whisper_checkpoint=whisper_checkpoint, device=device, models=models)
        self._model = model = landmark_model_for(models, None, blink, blink_rate)  # errors surface in the caller
        eyes = np.ones((n, 2), np.float32)
        if model.blinks is not None:
            eyes[:] = model.blinks.sample(n, seed)[:, None]
        z = np.zeros(n, np.float32)
        self.motion = SpeechMotion(fps=FPS, lip_open=z.copy(), eyes_open=eyes, pitch=z.copy(), yaw=z.copy(),
                                   roll=z.copy(), tx=z.copy(), ty=z.copy(), scale=np.ones(n, np.float32), seed=seed)
        self._done = 0
        self._error: BaseException | None = None
        self._stop = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="audio2lp-speech-motion", daemon=True)
        self._thread.start()

    def _store(self, rows: np.ndarray) -> None:
        m, a = self.motion, self._done
        b = min(self.n_frames, a + rows.shape[0])
        rows = rows[:b - a]
        m.lip_open[a:b], m.pitch[a:b], m.yaw[a:b], m.roll[a:b] = rows[:, 0], rows[:, 3], rows[:, 4], rows[:, 5]
        m.tx[a:b], m.ty[a:b], m.scale[a:b] = rows[:, 6], rows[:, 7], rows[:, 8]
        m.eyes_open[a:b] = rows[:, 1:3]  # the values put there in advance
        with self._cond:
            self._done = b
            self._cond.notify_all()

    def _run(self) -> None:
        from audio2lp.models.threads import torch_threads

        try:
            with torch_threads(1):  # this thread's own setting (see the class docstring)
                self._make_rows()
        except BaseException as e:  # noqa: BLE001 - handed to the thread that waits for the rows
            with self._cond:
                self._error = e
                self._cond.notify_all()

    def _make_rows(self) -> None:
        kw = self._kw
        lip = offline_lipsync_lip(kw["models"], self._model, self._wav, self.n_frames, device=kw["device"],
                                  whisper_checkpoint=kw["whisper_checkpoint"])
        s = SpeechMotionStream(lipsync_lip=lip, **kw)
        step = int(self.STEP_S * SAMPLE_RATE)
        for i in range(0, len(self._wav), step):
            if self._stop:
                return
            self._store(s.push(self._wav[i:i + step]))
        if not self._stop:
            self._store(s.finish())

    def wait(self, n_rows: int) -> None:
        """Block until the first ``n_rows`` rows are in; re-raises the background thread's error."""
        n_rows = min(int(n_rows), self.n_frames)
        with self._cond:
            while self._done < n_rows and self._error is None:
                if not self._thread.is_alive() and self._done < n_rows:
                    self._error = RuntimeError(f"the speech motion ended after {self._done} of {self.n_frames} rows")
                    break
                self._cond.wait(0.5)
            if self._error is not None and self._done < n_rows:
                raise self._error

    def close(self) -> None:
        """Stop making rows (after the current step) and wait for the thread."""
        self._stop = True
        self._thread.join()


def start_speech_plan(wav: np.ndarray, n_frames: int, fps: float, *, template, **kw):
    """``speak``'s default-motion :class:`~audio2lp.speech.SpeechPlan` with its rows made in the background
    (:class:`BackgroundSpeechMotion`), or None where only the whole-clip computation applies (another frame rate
    than the motion's 25 fps, or a head-motion template): the caller then uses :func:`~audio2lp.speech.speech_plan`.
    The plan's :meth:`~audio2lp.speech.SpeechPlan.close` must be called when rendering ends."""
    from audio2lp.speech import SpeechPlan

    if template is not None or fps != FPS or n_frames != max(1, int(round(len(wav) / SAMPLE_RATE * FPS))):
        return None
    bg = BackgroundSpeechMotion(wav, **kw)
    return SpeechPlan("landmark", n_frames, landmark=bg.motion, pending=bg)
