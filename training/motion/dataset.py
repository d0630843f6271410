"""A prepared training dataset: one safetensors shard per clip plus ``manifest.json``.

Layout of a dataset folder::

    DATASET/manifest.json          dataset facts, per-clip entries, skipped inputs, damaged shards, motion stats
    DATASET/shards/<id>.safetensors one clip, all arrays at 25 fps (frame i <-> Whisper tokens 2i, 2i+1)
    DATASET/skipped/<id>.json      why an input was skipped (so a re-run does not retry it unchanged)

A shard holds the tensors

* ``motion``    float32 (T, 70)  absolute LivePortrait motion (:mod:`audio2lp.models.motion`) per 25 fps frame;
* ``audio``     float16 (2T, D)  Whisper encoder features at 50 Hz (D = 384 for tiny / tiny.en);
* ``eye_ratio`` float32 (T, 2)   eye-open ratios from the landmarks (optional);
* ``lip_ratio`` float32 (T,)     lip-open ratio from the landmarks (optional);
* ``face``      uint8   (T,)     1 where a face was detected in that frame, 0 where it was lost (optional: all 1);

and JSON metadata ``format``, ``meta`` (source path, size, mtime, frames, duration, speaker, flags, ``av_offset``:
the audio/video offset in frames that ``prepare`` measured and removed, the input key that detects changed inputs)
and ``settings`` (Whisper model and layers, face backend, renderer weights fingerprint, offset estimate: what makes
motion and features comparable between clips). Motion frame ``i`` is paired with Whisper tokens ``2i, 2i+1``: the
audio spoken at that frame (``prepare`` has already shifted one against the other by ``av_offset``).

How the trainer reads a clip (:meth:`Dataset.window`):

* **Frames without a face are masked**, never held: a frame whose face was lost, and the two frames on each side of
  it (:func:`valid_frames`), is left out of the loss, the statistics, the clip's reference and the lip direction.
  (Holding the last good crop, as ``drive`` does, would train the model on frozen faces.) The decoder still reads
  something sane there as its "previous frame": the valid frames on either side, linearly interpolated.
* **Targets are relative to the clip** (:func:`clip_reference`): each frame as a change from the clip's own
  reference, the per-dimension median over its valid frames (head pose, translation, scale, expression), except
  that the 18 lip-keypoint dims take the median of the clip's most closed mouths (the 20 % of valid frames with the
  lowest lip-open ratio), so the model's lip motion opens a closed mouth. A speaker's resting pose and mouth
  therefore never reach the model, and ``speak`` applies its output around the portrait's own pose and expression.

The manifest is rebuilt from the shards (:func:`build_manifest`), so it can always be recreated after a crash. It
holds per clip the reference and the number of valid frames, and the statistics of the relative motion over the
valid frames of all clips. Arrays are never pickled.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from audio2lp.media.atomic import atomic_output
from audio2lp.models.motion import LIP_DIMS, MOTION_DIM, MotionStats, to_relative
from audio2lp.whisper.features import parse_whisper_layers
from lp_renderer.errors import InputError
from training.common import write_text_atomic

log = logging.getLogger(__name__)

__all__ = [
    "DATASET_FORMAT", "SHARD_FORMAT", "FPS", "ClipData", "Dataset", "parse_whisper_layers", "settings_key",
    "valid_frames", "clip_reference", "write_shard", "read_shard", "read_shard_meta", "build_manifest",
    "write_manifest", "write_dataset", "load_dataset",
]

# v2: shards aligned by their audio/video offset, faceless frames masked, relative targets and their statistics
DATASET_FORMAT = "audio2lp-dataset-v2"
SHARD_FORMAT = "audio2lp-shard-v2"
OLD_SHARD_FORMATS = ("audio2lp-shard-v1",)
MASK_MARGIN = 2  # frames masked on each side of a frame without a face
CLOSED_FRACTION = 0.2  # share of a clip's valid frames whose mouths set the lip reference
FPS = 25.0
MANIFEST = "manifest.json"
SHARDS = "shards"
SKIPPED = "skipped"
PRELOAD_LIMIT = 1 << 30  # bytes


def settings_key(settings: dict) -> str:
    """A short hash of the dataset settings (clips are only comparable when these match)."""
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def valid_frames(face: np.ndarray | None, n: int | None = None, margin: int = MASK_MARGIN) -> np.ndarray:
    """bool ``(T,)``: the frames that train, i.e. more than ``margin`` frames away from any frame without a face.

    face: ``(T,)`` face flags (nonzero = found), or None (every one of ``n`` frames has a face).
    """
    if face is None:
        return np.ones(int(n), bool)
    lost = np.asarray(face).reshape(-1) == 0
    if not lost.any():
        return np.ones(lost.shape[0], bool)
    near = lost.copy()
    for k in range(1, margin + 1):
        near[k:] |= lost[:-k]
        near[:-k] |= lost[k:]
    return ~near


def clip_reference(motion: np.ndarray, valid: np.ndarray, lip_ratio: np.ndarray | None = None,
                   closed_fraction: float = CLOSED_FRACTION) -> np.ndarray:
    """The reference frame of a clip, float32 ``(70,)`` (module docstring): the per-dimension median of
    ``motion (T, 70)`` over the ``valid`` frames (all frames when none is valid); the lip-keypoint dims over the
    ``closed_fraction`` of valid frames with the lowest finite ``lip_ratio (T,)`` when the clip has ratios."""
    m = np.asarray(motion, np.float32)
    v = np.asarray(valid, bool)
    if not v.any():
        v = np.ones(m.shape[0], bool)
    ref = np.median(m[v], axis=0).astype(np.float32)
    if lip_ratio is not None:
        lip = np.asarray(lip_ratio, np.float32)
        ok = v & np.isfinite(lip)
        if ok.any():
            idx = np.flatnonzero(ok)
            k = max(1, int(round(closed_fraction * idx.size)))
            closed = idx[np.argsort(lip[idx], kind="stable")[:k]]
            ref[list(LIP_DIMS)] = np.median(m[closed][:, list(LIP_DIMS)], axis=0)
    return ref


def _fill_invalid(m: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``m (T, C)`` with its invalid frames replaced by the valid ones on either side, linearly interpolated (held
    at the ends; zeros when no frame is valid)."""
    if valid.all():
        return m
    if not valid.any():
        return np.zeros_like(m)
    t = np.arange(m.shape[0])
    idx = np.flatnonzero(valid)
    return np.stack([np.interp(t, idx, m[idx, c]) for c in range(m.shape[1])], axis=1).astype(m.dtype)


@dataclass
class ClipData:
    """The arrays of one clip at 25 fps (see the module docstring for shapes and dtypes)."""

    motion: np.ndarray
    audio: np.ndarray
    eye_ratio: np.ndarray | None = None
    lip_ratio: np.ndarray | None = None
    face: np.ndarray | None = None

    def __post_init__(self):
        self.motion = np.ascontiguousarray(self.motion, dtype=np.float32)
        T = self.motion.shape[0]
        if self.motion.ndim != 2 or self.motion.shape[1] != MOTION_DIM or T < 1:
            raise ValueError(f"motion must be (T, {MOTION_DIM}) with T >= 1, got {self.motion.shape}")
        self.audio = np.asarray(self.audio)
        if self.audio.ndim != 2 or self.audio.shape[0] < 2 * T:
            raise ValueError(f"audio must be (>= 2T, D) = (>= {2 * T}, D), got {self.audio.shape}")
        self.audio = np.ascontiguousarray(self.audio[:2 * T])
        if self.eye_ratio is not None:
            self.eye_ratio = np.ascontiguousarray(self.eye_ratio, dtype=np.float32).reshape(T, 2)
        if self.lip_ratio is not None:
            self.lip_ratio = np.ascontiguousarray(self.lip_ratio, dtype=np.float32).reshape(T)
        if self.face is not None:
            self.face = np.ascontiguousarray(self.face, dtype=np.uint8).reshape(T)

    @property
    def n_frames(self) -> int:
        return int(self.motion.shape[0])


def write_shard(path: str | os.PathLike, clip: ClipData, meta: dict, settings: dict) -> Path:
    """Write one clip as safetensors (audio stored as float16), atomically (temp name + rename)."""
    from safetensors.numpy import save_file

    path = Path(path)
    tensors = {"motion": clip.motion, "audio": clip.audio.astype(np.float16)}
    for name in ("eye_ratio", "lip_ratio", "face"):
        a = getattr(clip, name)
        if a is not None:
            tensors[name] = a
    header = {"format": SHARD_FORMAT, "meta": json.dumps(meta, sort_keys=True),
              "settings": json.dumps(settings, sort_keys=True)}
    with atomic_output(path) as tmp:
        save_file(tensors, str(tmp), metadata=header)
    return path


class _OldShard(InputError):
    """A shard of an older format (redone by ``prepare``, left out of the manifest)."""


def _open_error(path: Path, e: Exception) -> InputError:
    return InputError(f"dataset shard {path} is unreadable ({e}); delete it and run `audio2lp-train prepare` again.")


def read_shard_meta(path: str | os.PathLike) -> tuple[dict, dict]:
    """``(meta, settings)`` of a shard, without reading its arrays."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="numpy") as f:
            header = f.metadata() or {}
        if header.get("format") in OLD_SHARD_FORMATS:
            raise _OldShard(f"dataset shard {path} was made by an older version of audio2lp-train prepare; run "
                            f"`audio2lp-train prepare` again to redo it.")
        if header.get("format") != SHARD_FORMAT:
            raise ValueError(f"format {header.get('format')!r}, expected {SHARD_FORMAT!r}")
        return json.loads(header["meta"]), json.loads(header["settings"])
    except InputError:
        raise
    except Exception as e:  # safetensors errors, OSError, KeyError, JSON errors
        raise _open_error(path, e) from None


def read_shard(path: str | os.PathLike) -> tuple[ClipData, dict]:
    """All arrays of a shard (audio converted to float32) and its meta."""
    from safetensors import safe_open

    path = Path(path)
    meta, _ = read_shard_meta(path)
    try:
        with safe_open(str(path), framework="numpy") as f:
            arrays = {k: f.get_tensor(k) for k in f.keys()}
        clip = ClipData(arrays["motion"], arrays["audio"].astype(np.float32), arrays.get("eye_ratio"),
                        arrays.get("lip_ratio"), arrays.get("face"))
    except Exception as e:
        raise _open_error(path, e) from None
    return clip, meta


def _read_arrays(path: Path, names: Sequence[str]) -> dict[str, np.ndarray | None]:
    """The arrays ``names`` of a shard (None for optional ones it lacks)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            keys = set(f.keys())
            return {k: f.get_tensor(k) if k in keys else None for k in names}
    except Exception as e:
        raise _open_error(path, e) from None


# -- manifest ---------------------------------------------------------------------------------------


def build_manifest(root: str | os.PathLike, settings: dict, *, speakers: dict[str, str | None] | None = None
                   ) -> dict:
    """Scan ``root/shards`` and ``root/skipped`` and return the manifest dict (not written).

    Only shards made with ``settings`` are listed (others are ignored with a warning). A shard that cannot be
    read (truncated or damaged on disk) is left out with a warning and listed under ``damaged``; ``audio2lp
    prepare`` redoes it when its video is among the inputs again. ``speakers`` maps a clip id to a speaker that
    overrides the one stored in its shard (a new ``--speakers`` table). Each clip's reference and number of valid
    frames are listed with it; the motion stats are those of the relative motion over the valid frames of all listed
    clips.
    """
    root = Path(root)
    key = settings_key(settings)
    clips, damaged, stale = [], [], 0

    def good_motions():  # lists the readable clips and yields their relative valid motion, one at a time (stats)
        nonlocal stale
        for shard in sorted((root / SHARDS).glob("*.safetensors")):
            try:
                meta, s = read_shard_meta(shard)
                if settings_key(s) != key:
                    stale += 1
                    continue
                a = _read_arrays(shard, ("motion", "face", "lip_ratio"))
                motion = a["motion"]
                if motion is None or motion.ndim != 2 or motion.shape[1] != MOTION_DIM or \
                        motion.shape[0] != meta.get("frames"):
                    shape = None if motion is None else motion.shape
                    raise _open_error(shard, ValueError(f"motion of shape {shape} for {meta.get('frames')} frames"))
            except _OldShard:
                stale += 1
                continue
            except InputError as e:
                log.warning("%s It is left out of the dataset.", e)
                damaged.append({"shard": f"{SHARDS}/{shard.name}", "reason": str(e)})
                continue
            valid = valid_frames(a["face"], motion.shape[0])
            ref = clip_reference(motion, valid, a["lip_ratio"])
            entry = {k: meta.get(k) for k in ("id", "source", "frames", "duration", "speaker", "src_fps", "flags")}
            entry["shard"] = f"{SHARDS}/{shard.name}"
            entry["av_offset"] = int(meta.get("av_offset", 0))
            entry["valid_frames"] = int(valid.sum())
            entry["reference"] = [float(x) for x in ref]
            if speakers is not None and entry["id"] in speakers:
                entry["speaker"] = speakers[entry["id"]]
            clips.append(entry)
            yield to_relative(motion[valid], ref)

    try:
        stats = MotionStats.from_data(good_motions()).to_dict()
    except ValueError:  # no frames: no readable clip with a face made with these settings
        stats = None
    if stale:
        log.warning("%d shard(s) in %s were made with other settings (Whisper model / layers, face backend, "
                    "weights or an older version) and are not part of the dataset", stale, root / SHARDS)
    skipped = []
    for rec in sorted((root / SKIPPED).glob("*.json")):
        try:
            r = json.loads(rec.read_text(encoding="utf-8"))
            skipped.append({"source": r["source"], "reason": r["reason"]})
        except (OSError, ValueError, KeyError):
            continue
    names = sorted({c["speaker"] for c in clips if c["speaker"] is not None})
    return {"format": DATASET_FORMAT, "fps": FPS, "motion_dim": MOTION_DIM, "settings": settings,
            "whisper_model": settings.get("whisper_model"), "whisper_layers": settings.get("whisper_layers"),
            "audio_dim": settings.get("audio_dim"), "n_clips": len(clips),
            "n_frames": int(sum(c["frames"] for c in clips)), "speakers": names, "stats": stats,
            "clips": clips, "skipped": skipped, "damaged": damaged}


def write_manifest(root: str | os.PathLike, manifest: dict) -> Path:
    path = Path(root) / MANIFEST
    write_text_atomic(path, json.dumps(manifest, indent=1))
    return path


def write_dataset(root: str | os.PathLike, clips: Iterable[tuple[str, ClipData, str | None]], settings: dict
                  ) -> Path:
    """Write a dataset from arrays you already have: ``(clip id, ClipData, speaker or None)`` items.

    ``settings`` must hold at least ``whisper_model``, ``whisper_layers`` (text) and ``audio_dim``. Used for
    synthetic datasets and for motion from other sources. Returns the manifest path.
    """
    root = Path(root)
    (root / SHARDS).mkdir(parents=True, exist_ok=True)
    for cid, clip, speaker in clips:
        if clip.audio.shape[1] != settings["audio_dim"]:
            raise ValueError(f"clip {cid}: audio width {clip.audio.shape[1]} != audio_dim {settings['audio_dim']}")
        meta = {"id": cid, "source": cid, "frames": clip.n_frames, "duration": clip.n_frames / FPS,
                "speaker": speaker, "src_fps": FPS, "flags": {}, "av_offset": 0}
        write_shard(root / SHARDS / f"{cid}.safetensors", clip, meta, settings)
    return write_manifest(root, build_manifest(root, settings))


# -- reading for training -----------------------------------------------------------------------------


class Dataset:
    """A prepared dataset opened for training: the manifest, the clips, windows of their arrays.

    ``preload=None`` keeps every clip in memory when the shards take less than 1 GB, else windows are
    read from the shards on demand (safetensors slices, only the needed rows). Clips with fewer than two valid
    frames are left out.
    """

    def __init__(self, root: str | os.PathLike, preload: bool | None = None):
        self.root = Path(root)
        path = self.root / MANIFEST
        if not self.root.is_dir():
            raise InputError(f"dataset folder {self.root} does not exist; create it with `audio2lp-train prepare`.")
        if not path.is_file():
            raise InputError(f"{self.root} has no {MANIFEST}; it is not a prepared dataset (run "
                             f"`audio2lp-train prepare VIDEOS -o {self.root}` first).")
        try:
            m = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise InputError(f"{path} is unreadable ({e}); run `audio2lp-train prepare` again to rebuild it.") from None
        fmt = m.get("format") if isinstance(m, dict) else None
        if isinstance(fmt, str) and fmt.startswith("audio2lp-dataset-") and fmt != DATASET_FORMAT:
            raise InputError(f"{self.root} was prepared by an older version of audio2lp-train ({fmt}: its clips are "
                             f"not aligned by their audio/video offset and its targets are absolute); run "
                             f"`audio2lp-train prepare` with the same videos and -o {self.root} again.")
        if fmt != DATASET_FORMAT:
            raise InputError(f"{path} is not an audio2lp dataset manifest (format {DATASET_FORMAT}); run "
                             f"`audio2lp-train prepare` again.")
        self.manifest = m
        self.clips: list[dict] = [c for c in m["clips"] if c["frames"] >= 2 and c.get("valid_frames", 0) >= 2]
        if not self.clips or m.get("stats") is None:
            raise InputError(f"the dataset {self.root} has no usable clips (all inputs were skipped or the folder "
                             f"is empty); prepare more videos with `audio2lp-train prepare`.")
        for c in self.clips:
            if not (self.root / c["shard"]).is_file():
                raise InputError(f"shard {c['shard']} listed in {path} is missing; run `audio2lp-train prepare` again.")
        self.stats = MotionStats.from_dict(m["stats"])
        self.audio_dim = int(m["audio_dim"])
        self._refs = [np.asarray(c["reference"], np.float32) for c in self.clips]
        if preload is None:
            size = sum((self.root / c["shard"]).stat().st_size for c in self.clips)
            preload = size < PRELOAD_LIMIT
        self.preload = preload
        self._cache: dict[int, ClipData] = {}
        if preload:
            for i in range(len(self.clips)):
                self._cache[i] = self._read(i)

    def __len__(self) -> int:
        return len(self.clips)

    @property
    def whisper_model(self) -> str:
        return self.manifest["whisper_model"]

    @property
    def whisper_layers(self) -> str:
        return self.manifest["whisper_layers"]

    def frames(self, i: int) -> int:
        return int(self.clips[i]["frames"])

    def speaker(self, i: int) -> str | None:
        return self.clips[i].get("speaker")

    def reference(self, i: int) -> np.ndarray:
        """The reference frame (70,) of clip ``i``: absolute motion = ``from_relative(window motion, reference)``."""
        return self._refs[i]

    def fingerprint(self) -> str:
        """A short hash of what training reads: the settings, the statistics and every clip's shard, frame count,
        reference and file size (processes that train together must agree on it)."""
        h = hashlib.sha1(json.dumps({"settings": self.manifest.get("settings"), "stats": self.manifest["stats"]},
                                    sort_keys=True).encode())
        for c in self.clips:
            size = (self.root / c["shard"]).stat().st_size
            h.update(json.dumps([c["shard"], c["frames"], c["reference"], size]).encode())
        return h.hexdigest()[:16]

    def _read(self, i: int) -> ClipData:
        clip, _ = read_shard(self.root / self.clips[i]["shard"])
        return clip

    def clip(self, i: int) -> ClipData:
        """All arrays of clip ``i`` (audio float32; motion absolute)."""
        return self._cache[i] if i in self._cache else self._read(i)

    def window(self, i: int, start: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(motion (n', 70), audio (2n', D), valid (n',))`` of clip ``i`` from frame ``start``,
        ``n' = min(n, T - start)``: float32 motion relative to the clip's reference (invalid frames filled from
        their valid neighbours, see the module docstring), float32 audio, bool valid frames."""
        T = self.frames(i)
        end = min(start + n, T)
        lo, hi = max(0, start - MASK_MARGIN), min(T, end + MASK_MARGIN)  # the face flags that decide the mask
        if i in self._cache:
            c = self._cache[i]
            motion, audio = c.motion[start:end], c.audio[2 * start:2 * end].astype(np.float32, copy=False)
            face = None if c.face is None else c.face[lo:hi]
        else:
            from safetensors import safe_open

            with safe_open(str(self.root / self.clips[i]["shard"]), framework="numpy") as f:
                motion = np.asarray(f.get_slice("motion")[start:end], np.float32)
                audio = np.asarray(f.get_slice("audio")[2 * start:2 * end], np.float32)
                face = np.asarray(f.get_slice("face")[lo:hi]) if "face" in f.keys() else None
        valid = valid_frames(face, hi - lo)[start - lo:start - lo + end - start]
        rel = _fill_invalid(to_relative(motion, self._refs[i]), valid)
        return rel, audio, valid

    def lip_direction(self, indices: Sequence[int] | None = None, max_frames: int = 200_000) -> np.ndarray:
        """A (70,) unit vector over the normalised lip dims whose projection measures mouth opening.

        The least-squares map from the normalised relative lip-keypoint dims to the landmarks' lip-open ratio over
        the valid frames of the clips ``indices`` (default all) when the clips have ratios that vary; else the first
        principal direction of the lip dims. Its sign makes a larger projection mean a more open mouth (or, for the
        principal direction, a positive sum of weights).
        """
        idx = list(range(len(self))) if indices is None else list(indices)
        X, y, n = [], [], 0
        for i in idx:
            c = self.clip(i)
            valid = valid_frames(c.face, c.n_frames)
            X.append(self.stats.normalize(to_relative(c.motion[valid], self._refs[i]))[:, list(LIP_DIMS)])
            y.append(c.lip_ratio[valid] if c.lip_ratio is not None else np.full(int(valid.sum()), np.nan, np.float32))
            n += int(valid.sum())
            if n >= max_frames:
                break
        return lip_direction_from(np.concatenate(X), np.concatenate(y))


def lip_direction_from(lip_dims: np.ndarray, lip_ratio: np.ndarray) -> np.ndarray:
    """See :meth:`Dataset.lip_direction`: ``lip_dims`` (N, 18) normalised, ``lip_ratio`` (N,) (NaN = unknown)."""
    X = np.asarray(lip_dims, np.float64)
    X = X - X.mean(0)
    y = np.asarray(lip_ratio, np.float64)
    w = None
    ok = np.isfinite(y)
    if ok.sum() >= 10 and np.std(y[ok]) > 1e-6:
        yc = y[ok] - y[ok].mean()
        Xo = X[ok]
        w = np.linalg.solve(Xo.T @ Xo + 1e-3 * len(yc) * np.eye(X.shape[1]), Xo.T @ yc)
    if w is None or not np.isfinite(w).all() or np.linalg.norm(w) < 1e-12:
        _, _, vt = np.linalg.svd(X, full_matrices=False)
        w = vt[0]
        if w.sum() < 0:
            w = -w
    full = np.zeros(MOTION_DIM)
    full[list(LIP_DIMS)] = w / (np.linalg.norm(w) + 1e-12)
    return full.astype(np.float32)


def load_dataset(root: str | os.PathLike, preload: bool | None = None) -> Dataset:
    return Dataset(root, preload)
