"""Streaming Whisper features: the encoder over short sliding windows with a fixed look-ahead.

Whisper's encoder normally reads 30 s windows, so each token depends on up to 30 s of future audio. Here the
50 Hz tokens are made in blocks of ``block`` tokens. Block ``b`` (tokens ``b*block .. (b+1)*block - 1``) is cut
from the encoder's output for a window of ``window`` tokens of audio that *ends* ``lookahead`` tokens after
the block::

    window audio = samples [e - window*320, e),   e = ((b + 1) * block + lookahead) * 320
    block tokens = window tokens [window - lookahead - block, window - lookahead)

Samples before 0 and after the end of the audio are zeros (digital silence). The window's log-mel is
Whisper's (``whisper.log_mel_spectrogram`` of the window alone, dynamic-range clamp included), positions start
at 0 in every window, and there is no 30 s padding. A token depends on audio at most
``(block + lookahead - 1) * 20 ms`` past the end of its own 20 ms (:attr:`StreamConfig.max_lookahead_ms`) and
on ``window * 20 ms`` of audio in all: work and memory per block are bounded.

The features are residual-stream states ``layers`` (0 = convolutions + positions, k = after encoder block k)
of the block's tokens, averaged. Blocks after the last wanted layer are not run, and the last one runs its
queries and MLP for the block's tokens only (keys and values from the whole window): the same numbers as the
full block for those tokens, at a fraction of the cost.

:meth:`StreamingEncoder.encode` (offline, whole clip, windows batched) and :class:`FeatureStream` (chunks as
they arrive) give bit-identical features. On the CPU only the two convolutions round differently when run on
a batch (measured: up to 4e-6), and so do matrix products of a few rows (the last block's queries); full
transformer blocks (100 rows per window) give the same bits for a window whatever the batch. So each window's
log-mel, convolutions and last-block queries run alone, and the full blocks run on a batch of windows. The
encoder runs on one torch thread (:mod:`audio2lp.models.threads`): a 2 s window is small, and on a busy 2-core
machine a second thread made it up to 60x slower (measured). On a CUDA encoder (:func:`whisper_device`: where
``speak`` and streams put it when the renderer is on CUDA) the windows run on the GPU and only the block features
come back to the host; there the bit-for-bit agreement of batched and single windows is not promised (cuBLAS may
pick other kernels per batch size), only agreement to float rounding (``tests/audio2lp/test_gpu_motion.py``).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from audio2lp.models.threads import torch_threads

from .features import SAMPLES_PER_TOKEN, WhisperEncoder

__all__ = ["StreamConfig", "StreamingEncoder", "FeatureStream", "whisper_device"]

log = logging.getLogger(__name__)


def whisper_device(device) -> torch.device:
    """Where the streaming encoder runs for a renderer/models ``device``: that CUDA device, else the CPU (every
    other device, e.g. ``"mps"``, keeps the encoder on the CPU, where its features are tested bit for bit)."""
    d = torch.device(device)
    return d if d.type == "cuda" else torch.device("cpu")


@dataclass(frozen=True)
class StreamConfig:
    """How the streaming features are made; stored with every model trained on them.

    ``window``, ``block``, ``lookahead`` are in 50 Hz tokens (20 ms); ``layers`` are residual-stream indices
    (:meth:`WhisperEncoder.encode` convention: 0 = conv + positions, k = after block k), averaged."""

    whisper_model: str = "tiny.en"
    window: int = 100  # 2 s of audio per encoder call
    block: int = 4  # tokens emitted per window (80 ms)
    lookahead: int = 6  # tokens of audio after the block (120 ms)
    layers: tuple[int, ...] = (2, 3)

    def __post_init__(self) -> None:
        if self.block < 1 or self.lookahead < 0 or self.window < self.block + self.lookahead + 1:
            raise ValueError(f"need block >= 1, lookahead >= 0 and window > block + lookahead, got {self}")
        if not self.layers or any(int(i) < 0 for i in self.layers):
            raise ValueError(f"layers must be non-negative block indices, got {self.layers}")

    @property
    def max_lookahead_ms(self) -> int:
        """Audio (ms) a token may depend on past the end of its own 20 ms (the first token of a block)."""
        return 20 * (self.block + self.lookahead - 1)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["layers"] = list(self.layers)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> StreamConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ValueError."""
        d = dict(d)
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown StreamConfig fields {sorted(unknown)}")
        if "layers" in d:
            d["layers"] = tuple(int(i) for i in d["layers"])
        return cls(**d)


class StreamingEncoder:
    """Whisper encoder run block by block over sliding windows (see the module docstring).

    Args:
        config: the window geometry and layers.
        encoder: a loaded :class:`WhisperEncoder` of ``config.whisper_model`` (default: load it the usual way,
            :func:`audio2lp.whisper.features.resolve_whisper_checkpoint`).
    """

    def __init__(self, config: StreamConfig | None = None, encoder: WhisperEncoder | None = None):
        self.config = c = config or StreamConfig()
        self.whisper = encoder if encoder is not None else WhisperEncoder(c.whisper_model)
        self._wanted = sorted(set(c.layers))
        if self._wanted[-1] > self.whisper.n_layers:
            raise ValueError(f"layers must be in 0..{self.whisper.n_layers}, got {c.layers}")
        self.dim = self.whisper.dim
        self._silent: np.ndarray | None = None  # the block of an all-zero window

    # -- one window ---------------------------------------------------------------------------------------

    def window_audio(self, audio: np.ndarray, b: int) -> np.ndarray:
        """Samples ``(window * 320,)`` float32 of block ``b``'s window; zeros outside ``audio``."""
        c = self.config
        wlen = c.window * SAMPLES_PER_TOKEN
        e = ((b + 1) * c.block + c.lookahead) * SAMPLES_PER_TOKEN
        s = e - wlen
        chunk = np.zeros(wlen, np.float32)
        lo, hi = max(s, 0), min(e, audio.shape[0])
        if hi > lo:
            chunk[lo - s:hi - s] = audio[lo:hi]
        return chunk

    def _stem(self, chunk: np.ndarray) -> torch.Tensor:
        """Log-mel, convolutions and positions of one window: ``(1, window, D)`` (always batch 1: bit-exact)."""
        import whisper

        enc = self.whisper._encoder
        audio = torch.from_numpy(chunk).to(enc.conv1.weight.device)  # the encoder's device (CPU or CUDA)
        mel = whisper.log_mel_spectrogram(audio, n_mels=self.whisper.n_mels)[None]  # (1, 80, 2W)
        x = F.gelu(enc.conv2(F.gelu(enc.conv1(mel)))).permute(0, 2, 1)  # (1, W, D)
        return x + enc.positional_embedding[: x.shape[1]].to(x.dtype)

    def _layer_states(self, x: torch.Tensor, layers: list[int]) -> dict[int, torch.Tensor]:
        """Encoder blocks on stems ``(B, window, D)`` -> the block tokens' residual-stream states ``(B, block, D)``
        at each of ``layers`` (sorted); the last of them runs its queries and MLP for the block's tokens only."""
        c = self.config
        enc = self.whisper._encoder
        lo, hi = c.window - c.lookahead - c.block, c.window - c.lookahead
        last = layers[-1]
        states = {0: x[:, lo:hi]} if 0 in layers else {}
        for i, blk in enumerate(enc.blocks[:last], start=1):
            if i < last:
                x = blk(x)
                if i in layers:
                    states[i] = x[:, lo:hi]
            else:  # the last block needed: queries and MLP of the block's tokens only, one window at a time
                kv = blk.attn_ln(x)  # (B, W, D)
                q = [x[j:j + 1, lo:hi] for j in range(x.shape[0])]  # B x (1, block, D)
                q = [qj + blk.attn(blk.attn_ln(qj), xa=kv[j:j + 1])[0] for j, qj in enumerate(q)]
                states[i] = torch.cat([qj + blk.mlp(blk.mlp_ln(qj)) for qj in q])
        return states

    @staticmethod
    def _average(states: list[torch.Tensor]) -> torch.Tensor:
        return states[0] if len(states) == 1 else torch.stack(states).sum(0) / len(states)

    def _blocks(self, x: torch.Tensor) -> np.ndarray:
        """Encoder blocks on stems ``(B, window, D)`` -> the block tokens' features ``(B, block, D)`` float32."""
        states = self._layer_states(x, self._wanted)
        return self._average([states[i] for i in self._wanted]).float().cpu().numpy()

    @torch.inference_mode()
    def encode_blocks(self, audio: np.ndarray, first_block: int, n_blocks: int, batch_size: int = 8,
                      progress: bool = False) -> np.ndarray:
        """Tokens of blocks ``first_block .. first_block + n_blocks - 1``: ``(n_blocks * block, D)`` float32.

        ``audio`` (n,) 16 kHz float32 must hold every sample those windows read (zeros are assumed outside
        it; negative block indices read before sample 0). The values do not depend on ``batch_size``."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        with torch_threads(1):
            return self._encode_blocks(audio, first_block, n_blocks, batch_size, progress)

    def _encode_blocks(self, audio, first_block, n_blocks, batch_size, progress) -> np.ndarray:
        c = self.config
        out = np.empty((n_blocks * c.block, self.dim), np.float32)
        todo = []  # (block index in out, chunk) of windows that are not all zero
        for i in range(n_blocks):
            chunk = self.window_audio(audio, first_block + i)
            if chunk.any():
                todo.append((i, chunk))
            else:  # digital silence: the same output every time
                if self._silent is None:
                    self._silent = self._blocks(self._stem(chunk))[0]
                out[i * c.block:(i + 1) * c.block] = self._silent
        with tqdm(total=len(todo), desc="Whisper (streaming windows)", unit="window",
                  disable=not progress or len(todo) < 2 * batch_size, dynamic_ncols=True) as bar:
            for s in range(0, len(todo), batch_size):
                part = todo[s:s + batch_size]
                feats = self._blocks(torch.cat([self._stem(ch) for _, ch in part]))  # (b, block, D)
                for (i, _), f in zip(part, feats):
                    out[i * c.block:(i + 1) * c.block] = f
                bar.update(len(part))
        return out

    def n_tokens(self, n_samples: int) -> int:
        """Tokens of ``n_samples`` of audio: ``ceil(n / 320)``."""
        return -(-int(n_samples) // SAMPLES_PER_TOKEN)

    def encode(self, audio_16k: np.ndarray, batch_size: int = 8, n_tokens: int | None = None,
               progress: bool = False) -> np.ndarray:
        """Features ``(ceil(n / 320), D)`` float32 of a whole clip (16 kHz mono ``(n,)``), exactly as
        :class:`FeatureStream` makes them; with ``n_tokens`` only the first ``n_tokens`` of them (later blocks are
        not encoded)."""
        audio = np.asarray(audio_16k, np.float32).reshape(-1)
        n_tok = self.n_tokens(audio.shape[0]) if n_tokens is None else min(n_tokens, self.n_tokens(audio.shape[0]))
        n_blocks = -(-n_tok // self.config.block)
        return self.encode_blocks(audio, 0, n_blocks, batch_size, progress)[:n_tok]

    def stream(self, batch_size: int = 8) -> FeatureStream:
        """A new :class:`FeatureStream` on this encoder."""
        return FeatureStream(self, batch_size)


class FeatureStream:
    """Incremental features: :meth:`push` 16 kHz audio chunks, get every token whose window is complete.

    Keeps at most one window of audio (plus one block). :meth:`flush` ends the stream (zeros after the end).
    The concatenated outputs equal :meth:`StreamingEncoder.encode` of the whole audio, bit for bit, whatever
    the chunk sizes.
    """

    def __init__(self, encoder: StreamingEncoder, batch_size: int = 8):
        self.enc, self.batch_size = encoder, batch_size
        c = encoder.config
        self._step = c.block * SAMPLES_PER_TOKEN
        self.buf = np.zeros(0, np.float32)  # audio from sample self.offset on
        self.offset = 0  # a multiple of self._step
        self.n_samples = 0
        self.next_block = 0

    def _run(self, n_blocks: int) -> np.ndarray:
        c = self.enc.config
        if n_blocks <= 0:
            return np.zeros((0, self.enc.dim), np.float32)
        # block indices relative to self.offset (sample 0 of self.buf)
        out = self.enc.encode_blocks(self.buf, self.next_block - self.offset // self._step, n_blocks,
                                     self.batch_size)
        self.next_block += n_blocks
        first_needed = ((self.next_block + 1) * c.block + c.lookahead - c.window) * SAMPLES_PER_TOKEN
        drop = max(0, (first_needed - self.offset) // self._step * self._step)
        if drop:
            self.buf = self.buf[drop:]
            self.offset += drop
        return out

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Add 16 kHz samples ``(k,)``; returns the new tokens ``(m, D)`` float32 (``m`` a multiple of ``block``,
        maybe 0)."""
        c = self.enc.config
        x = np.asarray(samples, np.float32).reshape(-1)
        self.buf = np.concatenate([self.buf, x])
        self.n_samples += x.shape[0]
        # block b is complete once samples < ((b + 1) * block + lookahead) * 320 are in
        ready = max(0, (self.n_samples // SAMPLES_PER_TOKEN - c.lookahead) // c.block - self.next_block)
        return self._run(ready)

    def flush(self) -> np.ndarray:
        """End of the audio: the remaining tokens, up to ``ceil(n / 320)`` in all."""
        c = self.enc.config
        n_tok = self.enc.n_tokens(self.n_samples)
        before = self.next_block * c.block
        out = self._run(-(-n_tok // c.block) - self.next_block)
        return out[:max(0, n_tok - before)]
