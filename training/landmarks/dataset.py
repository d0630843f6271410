"""The default motion model's data: every talking clip with its measured motion, loudness and Whisper features.

- Clips: :func:`training.lipsync.data.list_clips` of the data folder (``MANIFEST.tsv`` when present).
- Speakers (:func:`speaker_table`): ``SPEAKERS.tsv`` (in the talking folder or beside it) names the person in each
  clip it lists; other clips use :func:`training.lipsync.data.speaker_of`. :data:`SPEAKER_ALIASES` joins ids that
  are one person (``MEAD_M030`` is the person of ``EAMM__M030_sad_3_001``, the data README says so).
- Held-out speakers (:func:`held_out_speakers`), a fixed rule decided before any result: every speaker today's
  lip-sync model held out (:data:`training.lipsync.train.HELD_OUT_SPEAKERS`, so it never saw any held-out
  speaker) plus the speakers ``SPEAKERS.tsv`` adds (clips the lip-sync model never saw) at positions 0 mod
  :data:`NEW_SPEAKER_STRIDE` of their sorted ids. Speakers of the older clips that today's model trained on stay
  in training: holding them out would score today's model on speakers it has seen.
- Features: the streaming Whisper encoder of the model (:class:`audio2lp.whisper.stream.StreamingEncoder`) over
  the audio with :func:`pad_tokens_for` tokens of digital silence before and after (whole blocks and frames, so
  the real tokens equal those of an unpadded run); and for today's lip-sync model its own 30 s-window features.
  Both cached per clip and configuration.
- Audio offsets (:func:`estimate_offsets`): the lip-sync trainer's estimator
  (:func:`training.lipsync.train.estimate_offsets`, a cross-validated linear probe; clips off the median lag by
  2+ frames) on the training clips, whose motion is then shifted (:func:`shift`). Held-out clips are scored as
  recorded, as in the lip-sync model card.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from training.landmarks import measure
from training.lipsync.data import _file_key, _load_npz, _save_npz_atomic, frame_count, list_clips
from training.lipsync.data import speaker_of as file_speaker_of

logger = logging.getLogger(__name__)

__all__ = ["Clip", "build_clips", "estimate_offsets", "held_out_speakers", "measure_all", "pad_tokens_for",
           "shift", "speaker_table"]

FPS = 25.0
TOKENS_PER_FRAME = 2
SAMPLES_PER_TOKEN = 320
PAD_SECONDS = 1.0
SPEAKER_ALIASES = {"MEAD_M030": "EAMM__M030_sad_3_001"}
NEW_SPEAKER_STRIDE = 4
FEATURES_VERSION = 2


@dataclass
class Clip:
    """One talking clip on the 25 fps grid.

    ``motion (T, 9)`` float32 normalised (:data:`training.landmarks.measure.CHANNELS`, NaN where invalid), ``raw
    (T, 9)`` before normalisation, ``valid (T,)`` bool, ``rms_db (T,)`` loudness, ``audio (S,)`` 16 kHz,
    ``features (T50, D)`` the streaming features of the real audio, ``features_padded (T50 + 2 pad, D)`` with
    ``pad_tokens`` tokens of silence each side, ``lipsync_features`` (30 s windows, for today's lip-sync model).
    """

    name: str
    speaker: str
    audio: np.ndarray
    motion: np.ndarray
    raw: np.ndarray
    valid: np.ndarray
    rms_db: np.ndarray
    features: np.ndarray | None = None
    features_padded: np.ndarray | None = None
    pad_tokens: int = 0
    lipsync_features: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    @property
    def n_frames(self) -> int:
        return int(self.motion.shape[0])

    @property
    def seconds(self) -> float:
        return self.audio.shape[0] / 16000.0

    @property
    def lip(self) -> np.ndarray:
        """The measured calibrated lip ratio (the lip-sync trainer's name; its offset estimator reads it)."""
        return self.raw[:, measure.LIP]


def _speakers_file(data_dir: Path) -> Path | None:
    for path in (data_dir / "SPEAKERS.tsv", data_dir.parent / "SPEAKERS.tsv"):
        if path.is_file():
            return path
    return None


def speaker_table(data_dir: str | os.PathLike) -> dict[str, str]:
    """Clip stem -> speaker id of every clip ``SPEAKERS.tsv`` lists (columns ``file``, ``speaker_id``; aliases
    applied)."""
    path = _speakers_file(Path(data_dir))
    out: dict[str, str] = {}
    if path is not None:
        with open(path, encoding="utf-8", newline="") as f:
            for row in csv.DictReader(f, delimiter="\t"):
                sid = (row.get("speaker_id") or "").strip()
                if sid and row.get("file"):
                    out[Path(row["file"]).stem] = SPEAKER_ALIASES.get(sid, sid)
    return out


def speaker_of(stem: str, table: dict[str, str]) -> str:
    return table.get(stem) or file_speaker_of(stem)


def held_out_speakers(data_dir: str | os.PathLike) -> tuple[str, ...]:
    """The held-out speaker ids of the data folder (see the module docstring)."""
    from training.lipsync.train import HELD_OUT_SPEAKERS

    table = speaker_table(data_dir)
    present = {f.stem for f in list_clips(data_dir)}
    speakers = {speaker_of(stem, table) for stem in present}
    new = sorted({s for stem, s in table.items() if stem in present} - set(HELD_OUT_SPEAKERS))
    return tuple(sorted((set(HELD_OUT_SPEAKERS) & speakers) | set(new[::NEW_SPEAKER_STRIDE])))


def pad_tokens_for(block: int) -> int:
    """Tokens of silence padding around a clip: :data:`PAD_SECONDS` rounded up to whole encoder blocks of
    ``block`` tokens and whole frames."""
    unit = block * TOKENS_PER_FRAME // math.gcd(block, TOKENS_PER_FRAME)
    return int(math.ceil(PAD_SECONDS * 50 / unit) * unit)


def _measure_one(args: tuple[str, str]) -> str:
    from audio2lp.media.audio import load_audio

    video, cache = args
    measure.clip_motion(video, frame_count(load_audio(video).shape[0] / 16000.0), cache)
    return Path(video).name


def measure_all(videos: Sequence[Path], cache_dir: str | os.PathLike, workers: int = 2,
                progress: bool = True) -> None:
    """Landmarks and signals of every video into ``cache_dir`` (``workers`` processes, longest clips first)."""
    from tqdm.auto import tqdm

    todo = [str(v) for v in videos
            if not measure._cache_path(Path(v), Path(cache_dir), "sig", measure.SIGNAL_VERSION).is_file()]
    if not todo:
        return
    todo.sort(key=lambda v: -Path(v).stat().st_size)
    bar = tqdm(total=len(todo), desc="landmarks", unit="clip", disable=not progress)
    work = [(v, str(cache_dir)) for v in todo]
    try:
        if workers <= 1:
            for _ in map(_measure_one, work):
                bar.update(1)
        else:
            import multiprocessing as mp

            with mp.get_context("spawn").Pool(workers) as pool:
                for _ in pool.imap_unordered(_measure_one, work):
                    bar.update(1)
    finally:
        bar.close()


def _stream_key(config) -> str:
    layers = "-".join(map(str, config.layers)) + ("cat" if getattr(config, "combine", "mean") == "concat" else "")
    return (f"{config.whisper_model}.w{config.window}.b{config.block}.l{config.lookahead}.{layers}"
            f".v{FEATURES_VERSION}")


def stream_features(video: Path, audio: np.ndarray, encoder, cache_dir: Path) -> tuple[np.ndarray, int]:
    """Padded streaming features ``(T50 + 2 pad, D)`` float32 of ``audio`` and ``pad`` (cached)."""
    config = encoder.config
    path = cache_dir / f"{video.stem}.{_file_key(video)}.{_stream_key(config)}.feat.npz"
    data = _load_npz(path)
    if data is None:
        pad = pad_tokens_for(config.block)
        z = np.zeros(pad * SAMPLES_PER_TOKEN, np.float32)
        feats = encoder.encode(np.concatenate([z, audio, z]))
        data = {"features": np.asarray(feats, np.float32), "pad": np.int64(pad)}
        _save_npz_atomic(path, **data)
    return data["features"], int(data["pad"])


def lipsync_features(video: Path, audio: np.ndarray, encoder, layers, cache_dir: Path) -> np.ndarray:
    """Today's lip-sync model's features (``WhisperEncoder.encode`` with its layers, 30 s windows; cached)."""
    path = cache_dir / f"{video.stem}.{_file_key(video)}.full30.feat.npz"
    data = _load_npz(path)
    if data is None:
        data = {"features": encoder.encode(audio, layers=layers, progress=False).astype(np.float32),
                "pad": np.int64(0)}
        _save_npz_atomic(path, **data)
    return data["features"]


def build_clips(data_dir: str | os.PathLike, cache_dir: str | os.PathLike, *, stream_encoder=None,
                lipsync: bool = False, names: Sequence[str] | None = None, workers: int = 2,
                progress: bool = True) -> list[Clip]:
    """Every clip of ``data_dir`` (or those whose stems are in ``names``) with its measured motion (landmarks
    measured with ``workers`` processes when not cached), loudness, and with ``stream_encoder`` its streaming
    features, with ``lipsync`` the features of today's lip-sync model."""
    from tqdm.auto import tqdm

    from audio2lp.media.audio import load_audio
    from audio2lp.models.lipsync import frame_rms_db

    cache = Path(cache_dir)
    files = list_clips(data_dir)
    if names is not None:
        wanted = set(names)
        files = [f for f in files if f.stem in wanted]
    measure_all(files, cache, workers, progress)
    table = speaker_table(data_dir)
    lip_encoder = lip_layers = None
    if lipsync:
        from audio2lp.models.lipsync import read_lipsync_metadata
        from audio2lp.whisper.features import WhisperEncoder

        lc = read_lipsync_metadata()["config"]
        lip_encoder, lip_layers = WhisperEncoder(lc.whisper_model), lc.whisper_layers
    clips = []
    for f in tqdm(files, desc="clips", unit="clip", disable=not progress):
        audio = load_audio(f)
        n = frame_count(audio.shape[0] / 16000.0)
        cm = measure.clip_motion(f, n, cache)
        clip = Clip(f.stem, speaker_of(f.stem, table), audio, cm.motion, cm.raw, cm.valid, frame_rms_db(audio, n),
                    meta={"file": f.name, "video_fps": cm.video_fps})
        if stream_encoder is not None:
            fp, pad = stream_features(f, audio, stream_encoder, cache)
            t50 = -(-audio.shape[0] // SAMPLES_PER_TOKEN)
            clip.features_padded, clip.pad_tokens, clip.features = fp, pad, fp[pad:pad + t50]
        if lip_encoder is not None:
            clip.lipsync_features = lipsync_features(f, audio, lip_encoder, lip_layers, cache)
        clips.append(clip)
    return clips


def shift(clip: Clip, offset: int) -> Clip:
    """``clip`` with its motion moved by ``offset`` frames: ``motion'[t] = motion[t + offset]`` (frames from outside
    the clip are invalid)."""
    if offset == 0:
        return clip
    n = clip.n_frames
    src = np.arange(n) + offset
    ok = (src >= 0) & (src < n)
    motion, raw = np.full_like(clip.motion, np.nan), np.full_like(clip.raw, np.nan)
    valid = np.zeros(n, bool)
    motion[ok], raw[ok], valid[ok] = clip.motion[src[ok]], clip.raw[src[ok]], clip.valid[src[ok]]
    return dataclasses.replace(clip, motion=motion, raw=raw, valid=valid, meta={**clip.meta, "offset": int(offset)})


def estimate_offsets(clips: Sequence[Clip]) -> dict[str, int]:
    """Audio offsets (frames) of ``clips`` by the lip-sync trainer's estimator on their streaming features."""
    from training.lipsync.train import estimate_offsets as lip_offsets

    return lip_offsets([c for c in clips if c.valid.sum() >= 3])
