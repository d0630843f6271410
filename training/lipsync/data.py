"""The lip dataset: per 25 fps frame, how open the mouth is in a real talking video, with the audio.

For every video in a folder of talking-face clips (``$AUDIO2LP_TEST_DATA/talking``) this builds a
:class:`LipClip`:

- ``lip (T,)``: the lip-open ratio measured with dlib's 68 landmarks (:func:`lp_renderer.faces.lip_open_ratio`,
  calibrated to LivePortrait's 203-point definition, i.e. the scale its lip retargeting network expects).
  Faces are detected every ``detect_every`` frames and tracked in between. The ratio is measured on the
  video's own frames and linearly interpolated to the 25 fps times ``k / 25``; a variable-frame-rate video
  is first resampled to 25 fps by ffmpeg (by timestamp).
- ``eye (T, 2)``: the eye-open ratios of the same faces (calibrated), for reference.
- ``valid (T,)``: a face was found at (or next to) that frame.
- ``rms_db (T,)``: the loudness of the audio in each 40 ms frame, dB full scale.
- ``features (T50, D)``: Whisper encoder features of the clip's audio track at 50 Hz (two per frame).

``T = ceil(audio_seconds * 25)``: frame ``k`` shows time ``k / 25`` s and goes with audio
``[k * 40 ms, (k + 1) * 40 ms)``, i.e. Whisper tokens ``2k`` and ``2k + 1``.

Everything is cached per clip as ``.npz`` in a folder outside the repository (default
``~/.cache/audio2lp/lipsync-data``): the landmark pass is keyed by the video's name, size and modification
time; the features also by the Whisper model and layers. Data extracted from the shared clips must never be
committed, hence the cache lives outside the repository.

Speakers (:func:`speaker_of`): the clip's file name without extension, except the clips that show the
same person: ``EDTalk__uncrop_Obama`` and ``styletalk__Obama_clip2`` are both Barack Obama, and the two
``styletalk__feifeili_*`` clips are Fei-Fei Li. The eight GRID clips (``LipNet__*``; GRID sentence names
do not encode the speaker) and the nine VoxCeleb2 clips (``Talking-Face_PC-AVS__*``) were checked by eye
to show different people.

Run ``audio2lp-train lipsync-data --data $AUDIO2LP_TEST_DATA/talking`` to fill the cache (the trainer
does it by itself).
"""

from __future__ import annotations

import csv
import hashlib
import logging
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from audio2lp.media.atomic import atomic_output
from audio2lp.models.lipsync import frame_rms_db
from lp_renderer.errors import InputError

logger = logging.getLogger(__name__)

__all__ = [
    "FPS",
    "PAD_SECONDS",
    "PREP_VERSION",
    "VIDEO_SUFFIXES",
    "LipClip",
    "default_cache_dir",
    "speaker_of",
    "list_clips",
    "frame_count",
    "frame_rms_db",
    "measure_lip_track",
    "encode_features",
    "prepare_clip",
    "speed_variant",
    "build_dataset",
    "layers_key",
    "summary",
]

FPS = 25.0
PREP_VERSION = 2  # 2: tracked faces are verified (lp_renderer.faces.DlibBackend.track)
PAD_SECONDS = 1.0
"""Digital silence added before and after a clip's audio for :attr:`LipClip.features_padded` (25 frames)."""
VIDEO_SUFFIXES = (".mp4", ".mpg", ".mpeg", ".mov", ".mkv", ".webm", ".avi", ".m4v")

# Clips that show the same person under different names (checked by eye, see the module docstring).
_SPEAKER_RULES: tuple[tuple[re.Pattern, str], ...] = (
    (re.compile(r"obama", re.IGNORECASE), "barack_obama"),
    (re.compile(r"feifeili", re.IGNORECASE), "feifei_li"),
)


@dataclass
class LipClip:
    """One talking clip on the 25 fps grid (see the module docstring for the arrays)."""

    name: str
    speaker: str
    lip: np.ndarray  # (T,) float32, NaN where no face
    eye: np.ndarray  # (T, 2) float32, NaN where no face
    valid: np.ndarray  # (T,) bool
    rms_db: np.ndarray  # (T,) float32
    features: np.ndarray | None = None  # (T50, D) float32
    features_padded: np.ndarray | None = None  # (T50 + 100, D): the audio with PAD_SECONDS of zeros each side
    audio_seconds: float = 0.0
    video_fps: float = FPS
    meta: dict = field(default_factory=dict)

    @property
    def n_frames(self) -> int:
        return int(self.lip.shape[0])


def default_cache_dir() -> Path:
    """``user_cache_dir("audio2lp")/lipsync-data`` (``~/.cache/audio2lp/lipsync-data`` on Linux)."""
    import platformdirs

    return Path(platformdirs.user_cache_dir("audio2lp")) / "lipsync-data"


def speaker_of(name: str) -> str:
    """Speaker id of a clip from its file name (see the module docstring)."""
    stem = Path(name).stem
    for pattern, speaker in _SPEAKER_RULES:
        if pattern.search(stem):
            return speaker
    return stem


def list_clips(data_dir: str | os.PathLike) -> list[Path]:
    """The talking videos in ``data_dir``, sorted by name.

    When a ``MANIFEST.tsv`` sits in ``data_dir`` or its parent, only the videos it lists (with a speech
    track) are used; otherwise every video file in the folder.
    """
    folder = Path(data_dir)
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder; pass the folder of talking-face videos (e.g. "
                         f"$AUDIO2LP_TEST_DATA/talking).")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
    for manifest in (folder / "MANIFEST.tsv", folder.parent / "MANIFEST.tsv"):
        if manifest.is_file():
            listed = set()
            with open(manifest, encoding="utf-8", newline="") as f:
                for row in csv.DictReader(f, delimiter="\t"):
                    name = Path(row.get("file", "")).name
                    if row.get("speech", "yes").strip().lower() in ("yes", "true", "1"):
                        listed.add(name)
            in_manifest = [p for p in files if p.name in listed]
            if in_manifest:
                files = in_manifest
            break
    if not files:
        raise InputError(f"no video files found in {folder}; pass the folder of talking-face videos.")
    return files


def frame_count(audio_seconds: float, fps: float = FPS) -> int:
    """Frames of a ``fps`` video covering ``audio_seconds``: ``ceil(seconds * fps)`` (at least 1)."""
    return max(1, math.ceil(audio_seconds * fps - 1e-6))


def _interp_track(values: np.ndarray, ok: np.ndarray, src_fps: float, n_out: int, fps: float
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Resample a per-frame track (N, C) sampled at ``i / src_fps`` to ``k / fps``, k < n_out.

    Output frames whose two neighbouring source frames are not both valid (or that lie more than one
    source frame past the end) are NaN / invalid.
    """
    n_src = values.shape[0]
    t = np.arange(n_out) * (src_fps / fps)  # position in source frames
    i0 = np.floor(t).astype(np.int64)
    w = (t - i0)[:, None]
    i0c = np.clip(i0, 0, n_src - 1)
    i1c = np.clip(i0 + 1, 0, n_src - 1)
    out = values[i0c] * (1 - w) + values[i1c] * w
    exact = w[:, 0] < 1e-6
    valid = ok[i0c] & (ok[i1c] | exact) & (t <= n_src)  # at most one source frame past the end
    out = out.astype(np.float32)
    out[~valid] = np.nan
    return out, valid


def measure_lip_track(
    video: str | os.PathLike,
    n_frames: int,
    *,
    backend=None,
    fps: float = FPS,
    detect_every: int = 5,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Lip- and eye-open ratios of the largest face of ``video`` at the times ``k / fps``, k < n_frames.

    Returns ``(lip (n,), eye (n, 2), valid (n,), source_fps)``; lip and eye are calibrated ratios
    (float32, NaN where no face was found).
    """
    from tqdm.auto import tqdm

    from audio2lp.media.probe import probe_video
    from audio2lp.media.reader import read_frames
    from lp_renderer.faces import DlibBackend, eye_open_ratios, iter_faces_in_frames, lip_open_ratio

    info = probe_video(video)
    backend = backend if backend is not None else DlibBackend()
    if info.constant_frame_rate:
        frames, src_fps, total = read_frames(video, info=info), float(info.fps), info.n_frames
    else:  # variable frame rate: let ffmpeg put the frames on the 25 fps grid by timestamp
        frames, src_fps, total = read_frames(video, fps=fps, info=info), float(fps), None
    values, ok = [], []
    bar = tqdm(total=total, desc=f"landmarks {Path(video).stem[:24]}", unit="frame", disable=not progress,
               leave=False)
    try:
        for _, face in iter_faces_in_frames(backend, frames, "largest", detect_every=detect_every):
            if face is None:
                values.append((np.nan, np.nan, np.nan))
                ok.append(False)
            else:
                el, er = eye_open_ratios(face)
                values.append((lip_open_ratio(face), el, er))
                ok.append(True)
            bar.update(1)
    finally:
        bar.close()
    if not values:
        raise InputError(f"{video} has no video frames; pass a talking-face video.")
    arr = np.asarray(values, dtype=np.float64)
    okv = np.asarray(ok, dtype=bool)
    arr[~okv] = 0.0
    res, valid = _interp_track(arr, okv, src_fps, n_frames, fps)
    logger.debug("%s: face in %d of %d source frames", video, okv.sum(), okv.size)
    return res[:, 0], res[:, 1:3], valid, src_fps


def layers_key(layers) -> str:
    """A file-name friendly name of a Whisper ``layers`` choice (``"last"``, ``"2"``, ``"2-3"``)."""
    if isinstance(layers, str):
        return layers
    if isinstance(layers, (int, np.integer)):
        return str(int(layers))
    return "-".join(str(int(i)) for i in layers)


def encode_features(encoder, audio_16k: np.ndarray, layers) -> np.ndarray:
    """Whisper features ``(ceil(n / 320), D)`` float32 of ``audio_16k`` with ``encoder`` and ``layers``.

    ``layers`` may also be a list of layer choices (strings, ints or lists), whose features are
    concatenated along D.
    """
    if isinstance(layers, list) and layers and all(isinstance(x, (str, list, tuple)) for x in layers):
        return np.concatenate([encoder.encode(audio_16k, layers=_as_layers(x), progress=False)
                               for x in layers], axis=1)
    return encoder.encode(audio_16k, layers=_as_layers(layers), progress=False)


def _as_layers(x):
    return list(x) if isinstance(x, tuple) else x


def _file_key(path: Path) -> str:
    st = path.stat()
    raw = f"{path.name}|{st.st_size}|{st.st_mtime_ns}"
    return hashlib.sha1(raw.encode()).hexdigest()[:12]


def _save_npz_atomic(path: Path, **arrays) -> None:
    with atomic_output(path, make_folder=True) as tmp, open(tmp, "wb") as f:  # a file: numpy adds no ".npz"
        np.savez(f, **arrays)


def _load_npz(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError):
        logger.warning("ignoring the unreadable cache file %s", path)
        return None


def prepare_clip(
    video: str | os.PathLike,
    *,
    encoder=None,
    layers="middle",
    cache_dir: str | os.PathLike | None = None,
    backend=None,
    detect_every: int = 5,
    padded: bool = False,
    progress: bool = False,
) -> LipClip:
    """Build (or read from the cache) the :class:`LipClip` of one video.

    Args:
        video: a talking-face video with its speech track.
        encoder: a :class:`audio2lp.whisper.features.WhisperEncoder`; None skips the features.
        layers: Whisper layers for the features (see :func:`encode_features`).
        cache_dir: cache folder (default :func:`default_cache_dir`); ``False``-y paths are never used
            for the repository, pass a folder outside it.
        backend: face backend (default a new :class:`lp_renderer.faces.DlibBackend`).
        detect_every: run the detector every this many frames, track in between.
        padded: also compute :attr:`LipClip.features_padded` (the audio with :data:`PAD_SECONDS` of digital
            silence before and after; used to teach the model that silence means a closed mouth).
    """
    from audio2lp.media.audio import load_audio

    video = Path(video)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = _file_key(video)
    lm_path = cache / f"{video.stem}.{key}.v{PREP_VERSION}.d{int(detect_every)}.lips.npz"
    audio = load_audio(video)
    seconds = audio.shape[0] / 16000.0
    n = frame_count(seconds)

    data = _load_npz(lm_path)
    if data is None or int(data["lip"].shape[0]) != n:
        lip, eye, valid, src_fps = measure_lip_track(video, n, backend=backend, detect_every=detect_every,
                                                     progress=progress)
        data = {"lip": lip, "eye": eye, "valid": valid, "video_fps": np.float64(src_fps)}
        _save_npz_atomic(lm_path, **data)
    clip = LipClip(
        name=video.stem,
        speaker=speaker_of(video.name),
        lip=data["lip"].astype(np.float32),
        eye=data["eye"].astype(np.float32),
        valid=data["valid"].astype(bool),
        rms_db=frame_rms_db(audio, n),
        audio_seconds=seconds,
        video_fps=float(data["video_fps"]),
        meta={"file": video.name},
    )
    if encoder is not None:
        fkey = f"{encoder.model_name}.{_layers_name(layers)}"
        ft_path = cache / f"{video.stem}.{key}.v{PREP_VERSION}.{fkey}.feat.npz"
        fdata = _load_npz(ft_path)
        if fdata is None or (padded and "features_padded" not in fdata):
            fdata = {"features": encode_features(encoder, audio, layers).astype(np.float32)}
            if padded:
                pad = np.zeros(round(PAD_SECONDS * 16000), dtype=np.float32)
                fdata["features_padded"] = encode_features(encoder, np.concatenate([pad, audio, pad]),
                                                           layers).astype(np.float32)
            _save_npz_atomic(ft_path, **fdata)
        clip.features = fdata["features"].astype(np.float32)
        if padded:
            clip.features_padded = fdata["features_padded"].astype(np.float32)
    return clip


def speed_variant(
    clip: LipClip,
    video: str | os.PathLike,
    factor: float,
    *,
    encoder,
    layers="middle",
    cache_dir: str | os.PathLike | None = None,
) -> LipClip:
    """``clip`` played ``factor`` times faster (audio resampled, so the pitch moves too; the lip track is
    interpolated on the new time axis), with padded Whisper features: a training augmentation that imitates
    other voices and speaking rates. Cached like :func:`prepare_clip`."""
    import soxr

    from audio2lp.media.audio import load_audio

    video = Path(video)
    audio = load_audio(video)
    fast = soxr.resample(audio, 16000 * factor, 16000).astype(np.float32)
    n = frame_count(fast.shape[0] / 16000.0)
    pos = np.arange(n) * factor  # source frame of each new frame
    src = np.arange(clip.n_frames)
    i0 = np.clip(np.floor(pos).astype(np.int64), 0, clip.n_frames - 1)
    i1 = np.clip(i0 + 1, 0, clip.n_frames - 1)
    valid = clip.valid[i0] & clip.valid[i1] & (pos <= clip.n_frames - 1)
    lip = np.interp(pos, src, np.nan_to_num(clip.lip)).astype(np.float32)
    eye = np.stack([np.interp(pos, src, np.nan_to_num(clip.eye[:, j])) for j in range(2)], 1).astype(np.float32)
    lip[~valid] = np.nan
    eye[~valid] = np.nan
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    fkey = f"{encoder.model_name}.{_layers_name(layers)}"
    path = cache / f"{video.stem}.{_file_key(video)}.v{PREP_VERSION}.{fkey}.speed{factor:g}.feat.npz"
    fdata = _load_npz(path)
    if fdata is None:
        pad = np.zeros(round(PAD_SECONDS * 16000), dtype=np.float32)
        fdata = {"features": encode_features(encoder, fast, layers).astype(np.float32),
                 "features_padded": encode_features(encoder, np.concatenate([pad, fast, pad]), layers
                                                    ).astype(np.float32)}
        _save_npz_atomic(path, **fdata)
    return LipClip(
        name=f"{clip.name}@{factor:g}", speaker=clip.speaker, lip=lip, eye=eye, valid=valid,
        rms_db=frame_rms_db(fast, n), features=fdata["features"], features_padded=fdata["features_padded"],
        audio_seconds=fast.shape[0] / 16000.0, video_fps=clip.video_fps,
        meta={**clip.meta, "speed": float(factor)},
    )


def _layers_name(layers) -> str:
    if isinstance(layers, list) and layers and all(isinstance(x, (str, list, tuple)) for x in layers):
        return "+".join(layers_key(_as_layers(x)) for x in layers)
    return layers_key(layers)


def build_dataset(
    data_dir: str | os.PathLike,
    *,
    whisper_model: str | None = "tiny.en",
    layers="middle",
    cache_dir: str | os.PathLike | None = None,
    detect_every: int = 5,
    clips: Sequence[str] | None = None,
    padded: bool = False,
    speeds: Sequence[float] = (),
    progress: bool = True,
) -> list[LipClip]:
    """:func:`prepare_clip` for every clip of ``data_dir`` (or only the file names/stems in ``clips``).

    ``whisper_model=None`` skips the features (landmarks and loudness only). ``speeds``: also return
    :func:`speed_variant` clips for these factors (after all the original clips; names ``<clip>@<factor>``).
    """
    from tqdm.auto import tqdm

    files = list_clips(data_dir)
    if clips is not None:
        wanted = {Path(c).stem for c in clips}
        files = [f for f in files if f.stem in wanted]
    encoder = None
    if whisper_model:
        from audio2lp.whisper.features import WhisperEncoder

        encoder = WhisperEncoder(whisper_model)
    from lp_renderer.faces import DlibBackend

    backend = DlibBackend()
    out = []
    for f in tqdm(files, desc="lip dataset", unit="clip", disable=not progress):
        out.append(prepare_clip(f, encoder=encoder, layers=layers, cache_dir=cache_dir, backend=backend,
                                detect_every=detect_every, padded=padded, progress=False))
    if speeds and encoder is not None:
        variants = []
        for f, clip in tqdm(list(zip(files, out)), desc="speed variants", unit="clip", disable=not progress):
            variants += [speed_variant(clip, f, s, encoder=encoder, layers=layers, cache_dir=cache_dir)
                         for s in speeds]
        out += variants
    return out


def summary(clips: Iterable[LipClip]) -> list[dict]:
    rows = []
    for c in clips:
        v = c.lip[c.valid]
        rows.append({
            "clip": c.name, "speaker": c.speaker, "frames": c.n_frames, "seconds": round(c.audio_seconds, 3),
            "video_fps": round(c.video_fps, 3), "face_frac": round(float(c.valid.mean()), 3),
            "lip_p05": round(float(np.percentile(v, 5)), 4) if v.size else None,
            "lip_median": round(float(np.median(v)), 4) if v.size else None,
            "lip_p95": round(float(np.percentile(v, 95)), 4) if v.size else None,
        })
    return rows
