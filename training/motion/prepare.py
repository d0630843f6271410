"""``audio2lp-train prepare``: talking-head videos -> a training dataset (:mod:`training.motion.dataset`).

For each video, in a worker process (spawn context; each worker builds its own face backend, loads
LivePortrait's motion extractor M, the Whisper encoder and the built-in lip-sync model once, and runs torch with one
thread; M, Whisper and the lip-sync model run on ``device``: CUDA when present with ``auto``):

1. probe it; skip it without an audio track or when shorter than ``min_seconds``;
2. Whisper encoder features of its audio track at 50 Hz (``whisper_model`` / ``whisper_layers``);
3. decode the frames (variable-frame-rate files are first made constant-rate by ffmpeg), detect and follow
   the face, crop it exactly as the driving path of ``audio2lp drive`` does (official driving crop, smoothed over 5
   frames, warped to 512 and resized to 256 bilinearly: :func:`audio2lp.driving.driving_crop`), run M on the
   256x256 crops in batches -> 70-number motion per frame; eye / lip open ratios from the landmarks; the face flag
   per frame. Where the face is lost M still runs on whatever the crop shows: those frames (and two neighbours
   each side) are masked out of training by the dataset (:func:`training.motion.dataset.valid_frames`), not held;
4. resample motion, ratios and the face flag to 25 fps by linear interpolation (when the video is not
   25 fps);
5. measure the clip's audio/video offset (:mod:`training.motion.av_offset`): the lag between the mouth the built-in
   lip-sync model predicts from the audio (its own lag is 0 frames on held-out speakers, see its model card) and
   the measured lip-open ratio, found by the lag search of the lip-sync trainer (:func:`training.common.best_lag`,
   -8..8 frames, shifts under 2 frames and unclear peaks (r < 0.3) count as 0). Shift video against audio by it
   (:func:`apply_av_offset`) so motion frame ``i`` is paired with the audio spoken at frame ``i``; store it as
   ``av_offset`` in the shard (and the manifest); then cut everything to ``T = min(video frames, audio tokens / 2)``;
6. write the shard under a temporary name and rename it (a crash never leaves half a shard).

Inputs are skipped, with the reason in the report and in ``DATASET/skipped/``, when they are unreadable,
have no audio, no face (or a face in fewer than ``min_face_fraction`` of the frames) or are too short.
A re-run skips every input whose shard (or skip record) matches its size and modification time and the
settings (format version, Whisper model and layers, face backend, M weights, the offset estimate and its lip-sync
model); changed inputs and changed settings are redone. The manifest is
rebuilt from the shards' own metadata during and at the end of each run, with the motion statistics.
A shard that cannot be read (damaged on disk) is left out of the manifest with a warning, never aborting the
run. Its clip is prepared again when its video is among the inputs.

Measured on this 2-core machine (see the report in the issue): one worker per core, each single-threaded,
is faster than one process with two threads, because dlib's detector and ffmpeg are single-threaded and
small torch ops gain nothing from a second thread.
"""

from __future__ import annotations

import concurrent.futures as cf
import csv
import hashlib
import json
import logging
import multiprocessing
import os
import re
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from audio2lp.models.motion import resample_motion
from audio2lp.whisper.features import format_whisper_layers, parse_whisper_layers
from lp_renderer.errors import InputError, NoFaceError
from training.common import write_text_atomic

from .av_offset import apply_av_offset, estimate_av_offset, offset_settings
from .dataset import (
    FPS,
    SHARDS,
    SKIPPED,
    ClipData,
    build_manifest,
    read_shard_meta,
    settings_key,
    valid_frames,
    write_manifest,
    write_shard,
)
from .extractor import MotionExtractorOnly, resolve_device

log = logging.getLogger(__name__)

__all__ = ["VIDEO_SUFFIXES", "PrepareOptions", "PrepareReport", "MotionExtractorOnly", "find_videos",
           "read_speakers_csv", "clip_id", "prepare_dataset", "process_video", "resolve_device", "estimate_av_offset",
           "apply_av_offset"]

FORMAT = 2  # settings["format"]: 2 = offsets applied, bilinear crops, face flags for masking (v1 shards are redone)
VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".m4v", ".flv", ".wmv", ".ts"}


@dataclass
class PrepareOptions:
    """Settings of :func:`prepare_dataset` (the CLI options of ``audio2lp-train prepare``)."""

    weights_dir: str | None = None  # LivePortrait weights folder (only M is loaded); default as `audio2lp drive`
    face_backend: str = "auto"  # auto | dlib | insightface
    insightface_dir: str | None = None
    whisper_model: str = "tiny.en"
    whisper_layers: str = "middle"  # text form, see training.motion.dataset.parse_whisper_layers
    whisper_checkpoint: str | None = None  # explicit Whisper checkpoint (.pt or CTranslate2 folder)
    workers: int = 1  # worker processes; 0 runs everything in this process
    min_seconds: float = 2.0  # shorter clips (after alignment) are skipped
    min_face_fraction: float = 0.5  # skip clips whose face is found in fewer frames than this
    batch_size: int = 16  # crops per M batch
    device: str = "auto"  # auto (CUDA when present) | cpu | cuda: where M, Whisper and the lip-sync model run
    speakers_csv: str | None = None  # CSV with columns path (or file) and speaker
    speaker_from_folder: int = 0  # 1: the video's folder name is its speaker, 2: the folder above, ...
    retry_skipped: bool = False  # retry inputs skipped before even if they did not change
    progress: bool = True


@dataclass
class PrepareReport:
    dataset: Path
    manifest: Path
    prepared: list[str] = field(default_factory=list)  # sources processed by this run
    reused: int = 0  # inputs whose shard was already there
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (source, reason) of this run's inputs
    damaged: list[tuple[str, str]] = field(default_factory=list)  # (shard, reason): unreadable, left out
    n_clips: int = 0  # clips in the dataset (all runs)
    n_frames: int = 0
    video_seconds: float = 0.0  # seconds of video processed by this run
    wall_seconds: float = 0.0


# -- inputs ---------------------------------------------------------------------------------------------


def find_videos(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Video files among ``inputs``: files as given, folders searched recursively by extension. Sorted, unique."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in VIDEO_SUFFIXES)
        elif p.exists():
            out.append(p)
        else:
            raise InputError(f"input {p} does not exist; check the path.")
    seen, unique = set(), []
    for p in out:
        key = str(p.absolute())
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def read_speakers_csv(path: str | os.PathLike) -> dict[str, str]:
    """``{path or file name: speaker}`` from a CSV with a header naming the columns ``path`` (or ``file``) and
    ``speaker``. Paths may be absolute, relative to the CSV's folder, or bare file names.

    Every row is keyed by its full path. It is also keyed by its bare file name, so that videos elsewhere can
    match it. That is done only when the file name is unambiguous: a name that is in several rows with
    different speakers (``00001.mp4`` in VoxCeleb's layout) matches by full path only, with a warning.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"speaker table {p} does not exist; check --speakers.")
    try:
        with open(p, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"speaker table {p} is not a readable CSV ({e}); save it as UTF-8 CSV.") from None
    cols = {c.strip().lower(): c for c in (rows[0].keys() if rows else [])}
    pcol = cols.get("path") or cols.get("file")
    scol = cols.get("speaker")
    if not rows or pcol is None or scol is None:
        raise InputError(f"speaker table {p} needs a header with the columns 'path' (or 'file') and 'speaker' and at "
                         f"least one row; fix the CSV.")
    table: dict[str, str] = {}
    by_name: dict[str, set[str]] = {}
    for r in rows:
        key, spk = (r.get(pcol) or "").strip(), (r.get(scol) or "").strip()
        if not key or not spk:
            continue
        q = Path(key).expanduser()
        full = q if q.is_absolute() else p.parent / q
        table[str(full.absolute())] = spk
        table[str(full.resolve())] = spk
        by_name.setdefault(q.name, set()).add(spk)
    ambiguous = sorted(name for name, spks in by_name.items() if len(spks) > 1)
    if ambiguous:
        log.warning("speaker table %s: %d file name(s) are in several rows with different speakers (e.g. %s); "
                    "those rows match videos by their full path only, not by file name", p, len(ambiguous),
                    ", ".join(ambiguous[:3]))
    for name, spks in by_name.items():
        if len(spks) == 1:
            table.setdefault(name, next(iter(spks)))
    return table


def _speaker_for(video: Path, table: dict[str, str] | None, level: int) -> str | None:
    if table:
        for key in (str(video.absolute()), str(video.resolve()), video.name):
            if key in table:
                return table[key]
    if level > 0:
        parents = video.absolute().parents
        if len(parents) >= level:
            return parents[level - 1].name
    return None


def clip_id(video: Path) -> str:
    """A stable id for a video: its file stem (sanitised) and a hash of its absolute path."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", video.stem)[:60] or "clip"
    return f"{stem}-{hashlib.sha1(str(video.absolute()).encode()).hexdigest()[:10]}"


def _input_fingerprint(video: Path) -> dict:
    st = video.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


# -- one clip -----------------------------------------------------------------------------------------------


class _Skip(Exception):
    """A clip is skipped; ``persistent``: the input itself is at fault (not retried unless it changes)."""

    def __init__(self, reason: str, persistent: bool = True):
        super().__init__(reason)
        self.reason = reason
        self.persistent = persistent


@dataclass
class _Tools:
    backend: object
    motion: MotionExtractorOnly
    whisper: object
    layers: object
    lipsync: object  # the built-in lip-sync model (audio2lp.models.lipsync.LipSync): the offset estimate
    lipsync_whisper: object  # the Whisper encoder of its features (``whisper`` when it is the same model)


_TOOLS: _Tools | None = None


def _build_tools(opts: PrepareOptions) -> _Tools:
    from audio2lp.models.lipsync import load_lipsync_model
    from audio2lp.weights_store import resolve_insightface_dir
    from audio2lp.whisper.features import WhisperEncoder
    from lp_renderer.faces import get_face_backend

    device = resolve_device(opts.device)
    backend = get_face_backend(opts.face_backend, resolve_insightface_dir(opts.insightface_dir),
                               weights_dir=opts.weights_dir)
    motion = MotionExtractorOnly(opts.weights_dir, device=device)
    whisper = WhisperEncoder(opts.whisper_model, opts.whisper_checkpoint, device=device)
    lipsync = load_lipsync_model(device=device)
    lip_model = lipsync.config.whisper_model
    lip_whisper = whisper if whisper.model_name == lip_model else WhisperEncoder(lip_model, device=device)
    return _Tools(backend, motion, whisper, parse_whisper_layers(opts.whisper_layers), lipsync, lip_whisper)


def _init_worker(opts_dict: dict) -> None:
    """The set-up of a worker process of the pool (its own process state: one torch thread, warnings only)."""
    global _TOOLS
    import torch

    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)
    _TOOLS = _build_tools(PrepareOptions(**opts_dict))


def process_video(video: Path, tools: _Tools, opts: PrepareOptions) -> tuple[ClipData, dict]:
    """Arrays and facts of one video (see the module docstring). Raises ``_Skip`` with the reason to skip it."""
    from audio2lp.driving import driving_crop, track_driving_faces
    from audio2lp.errors import AudioError, VideoError
    from audio2lp.media.audio import load_audio
    from audio2lp.media.probe import probe_video
    from audio2lp.media.reader import FrameReader
    from lp_renderer.crop import DRIVING_CROP, iter_crops_for_frames
    from lp_renderer.faces import eye_open_ratios, lip_open_ratio

    try:
        info = probe_video(video)
    except VideoError as e:
        raise _Skip(f"unreadable video: {e}") from None
    if not info.has_audio:
        raise _Skip("no audio track")
    if info.duration < opts.min_seconds:
        raise _Skip(f"too short ({info.duration:.2f} s < {opts.min_seconds:g} s)")
    try:
        audio = load_audio(video)
    except AudioError as e:
        raise _Skip(f"unreadable audio: {e}") from None
    feats = tools.whisper.encode(audio, layers=tools.layers, progress=False)  # (L, D)

    fps_arg = None if info.constant_frame_rate else info.fps
    src_fps = float(info.fps)
    motion, eyes, lips, found = [], [], [], []
    crops: list[np.ndarray] = []

    def flush():
        if crops:
            motion.append(tools.motion(np.stack(crops)))
            crops.clear()

    last_ratio = None
    try:
        with FrameReader(video, fps=fps_arg, info=info) as reader:
            faces = track_driving_faces(tools.backend, reader, "largest")  # as drive tracks a driving video
            payloads = (((frame, face), face) for frame, face in faces)
            for (frame, face), crop in iter_crops_for_frames(payloads, window=5, **DRIVING_CROP):
                if face is not None:
                    last_ratio = (eye_open_ratios(face), lip_open_ratio(face))
                eyes.append(last_ratio[0] if last_ratio else (np.nan, np.nan))
                lips.append(last_ratio[1] if last_ratio else np.nan)
                found.append(face is not None)
                crops.append(driving_crop(crop, frame))
                if len(crops) >= opts.batch_size:
                    flush()
            flush()
    except NoFaceError:
        raise _Skip("no face found in any frame") from None
    except VideoError as e:
        raise _Skip(f"video decoding failed: {e}") from None
    motion = np.concatenate(motion) if motion else np.zeros((0, 70), np.float32)
    n_src = motion.shape[0]
    if n_src < 2:
        raise _Skip(f"too short ({n_src} frame(s))")
    eyes_a = np.asarray(eyes, np.float32)
    lips_a = np.asarray(lips, np.float32)
    first = int(np.argmax(found))  # leading frames before the first face take its ratios
    eyes_a[:first], lips_a[:first] = eyes_a[first], lips_a[first]
    face_frac = float(np.mean(found))
    if face_frac < opts.min_face_fraction:
        raise _Skip(f"face found in only {100 * face_frac:.0f}% of the frames (< {100 * opts.min_face_fraction:.0f}%)")

    n25 = max(1, round(n_src * FPS / src_fps))
    resampled = abs(src_fps - FPS) > 1e-3
    if resampled:
        motion = resample_motion(motion, src_fps, FPS, n25)
        eyes_a = resample_motion(eyes_a, src_fps, FPS, n25)
        lips_a = resample_motion(lips_a, src_fps, FPS, n25)
        face_a = resample_motion(np.asarray(found, np.float32), src_fps, FPS, n25) >= 0.5
    else:
        face_a = np.asarray(found)
    if not np.isfinite(motion).all():
        raise _Skip("the motion extractor returned NaN or infinite values", persistent=False)
    audio_minus_video = round(feats.shape[0] / 50.0 - n_src / src_fps, 3)
    lc = tools.lipsync.config  # the offset: the lip-sync model's mouth from the audio against the measured one
    same = tools.lipsync_whisper is tools.whisper and \
        tools.whisper._layer_indices(tools.layers) == tools.whisper._layer_indices(lc.whisper_layers)
    lip_feats = feats if same else tools.lipsync_whisper.encode(audio, layers=lc.whisper_layers, progress=False)
    pred = tools.lipsync.predict(lip_feats, n25).lip_open
    offset, lag, r = estimate_av_offset(pred, lips_a, valid_frames(face_a.astype(np.uint8)))
    frames, feats = apply_av_offset({"motion": motion, "eye_ratio": eyes_a, "lip_ratio": lips_a,
                                     "face": face_a.astype(np.uint8)}, feats, offset)
    T = min(frames["motion"].shape[0], feats.shape[0] // 2)
    if T < opts.min_seconds * FPS:
        raise _Skip(f"too short after aligning video and audio ({T / FPS:.2f} s < {opts.min_seconds:g} s)")
    clip = ClipData(frames["motion"][:T], feats[:2 * T], frames["eye_ratio"][:T], frames["lip_ratio"][:T],
                    frames["face"][:T])
    flags = {"face_fraction": round(face_frac, 4), "resampled_from_fps": round(src_fps, 4) if resampled else None,
             "variable_frame_rate": not info.constant_frame_rate,
             "audio_minus_video_s": audio_minus_video,
             "av_lag": int(lag), "av_offset_r": None if not np.isfinite(r) else round(r, 3)}
    facts = {"frames": T, "duration": T / FPS, "src_fps": src_fps, "flags": flags, "av_offset": int(offset),
             "video": {"width": info.width, "height": info.height, "frames": n_src, "seconds": n_src / src_fps}}
    return clip, facts


def _run_task(task: dict) -> dict:
    """Worker entry: process one video, write its shard (or skip record) and return a small summary."""
    opts = PrepareOptions(**task["opts"])
    video = Path(task["source"])
    t0 = time.time()
    try:
        tools = _TOOLS if _TOOLS is not None else task["tools"]
        clip, facts = process_video(video, tools, opts)
        meta = {"id": task["id"], "source": task["source"], "speaker": task["speaker"], "input": task["input"],
                **facts}
        write_shard(task["shard"], clip, meta, task["settings"])
        Path(task["skip_record"]).unlink(missing_ok=True)
        return {"status": "ok", "source": task["source"], "frames": facts["frames"],
                "video_seconds": facts["video"]["seconds"], "seconds": time.time() - t0}
    except _Skip as s:
        reason, persistent = s.reason, s.persistent
    except InputError as e:  # e.g. a face backend or Whisper problem raised for this input
        reason, persistent = f"{type(e).__name__}: {e}", False
    except Exception as e:  # a bug or an odd file: report it, keep going, retry on the next run
        log.debug("failed on %s:\n%s", video, traceback.format_exc())
        reason, persistent = f"error ({type(e).__name__}: {e})", False
    if persistent:
        rec = {"source": task["source"], "reason": reason, "input": task["input"],
               "settings_key": settings_key(task["settings"])}
        write_text_atomic(Path(task["skip_record"]), json.dumps(rec, indent=1))
    return {"status": "skipped", "source": task["source"], "reason": reason, "seconds": time.time() - t0}


# -- the whole data set ------------------------------------------------------------------------------------


def _settings(opts: PrepareOptions, tools: _Tools) -> dict:
    return {"format": FORMAT, "fps": FPS, "whisper_model": opts.whisper_model,
            "whisper_layers": format_whisper_layers(opts.whisper_layers), "audio_dim": int(tools.whisper.dim),
            "face_backend": getattr(tools.backend, "kind", type(tools.backend).__name__),
            "motion_extractor": tools.motion.fingerprint, "av_offset": offset_settings(tools.lipsync)}


def _is_done(shard: Path, skip: Path, fp: dict, key: str, retry_skipped: bool) -> str | None:
    """'ok' when the shard matches the input and settings, 'skipped' when a skip record does, else None."""
    if shard.is_file():
        try:
            meta, s = read_shard_meta(shard)
            if meta.get("input") == fp and settings_key(s) == key:
                return "ok"
        except InputError:
            pass
    if skip.is_file() and not retry_skipped:
        try:
            rec = json.loads(skip.read_text(encoding="utf-8"))
            if rec.get("input") == fp and rec.get("settings_key") == key:
                return "skipped:" + rec.get("reason", "")
        except (OSError, ValueError):
            pass
    return None


def prepare_dataset(videos: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
                    options: PrepareOptions | None = None) -> PrepareReport:
    """Turn ``videos`` (files or folders) into the dataset ``out_dir`` (created; see the module docstring).

    Raises InputError when no video is found, the weights / Whisper model / face backend are unavailable or
    the options are invalid. Bad individual videos never raise: they are listed in ``report.skipped``.
    With ``workers >= 1`` the workers are spawned processes, so a script calling this must guard its entry
    point with ``if __name__ == "__main__":`` (as for any spawn-based multiprocessing).
    """
    opts = options or PrepareOptions()
    if opts.workers < 0:
        raise InputError(f"--workers must be >= 0, got {opts.workers}.")
    if opts.min_seconds <= 0:
        raise InputError(f"--min-seconds must be > 0, got {opts.min_seconds}.")
    if not 0 <= opts.min_face_fraction <= 1:
        raise InputError(f"--min-face-fraction must be in [0, 1], got {opts.min_face_fraction}.")
    parse_whisper_layers(opts.whisper_layers)
    files = find_videos(videos)
    if not files:
        raise InputError(f"no video files were found in {', '.join(map(str, videos)) or 'the inputs'} "
                         f"(looked for {', '.join(sorted(VIDEO_SUFFIXES))}); give video files or folders with videos.")
    table = read_speakers_csv(opts.speakers_csv) if opts.speakers_csv else None
    root = Path(out_dir)
    if root.exists() and not root.is_dir():
        raise InputError(f"{root} is a file; give a folder for the dataset.")
    (root / SHARDS).mkdir(parents=True, exist_ok=True)
    (root / SKIPPED).mkdir(exist_ok=True)
    for stale in (root / SHARDS).glob(".*.part-*"):  # left by a crashed run (see audio2lp.media.atomic)
        stale.unlink(missing_ok=True)

    t0 = time.time()
    tools = _build_tools(opts)  # validates weights, Whisper and the face backend before any work
    try:
        tools.whisper._layer_indices(tools.layers)
    except ValueError as e:
        raise InputError(f"--whisper-layers {opts.whisper_layers!r} does not fit Whisper {opts.whisper_model} "
                         f"({e}).") from None
    settings = _settings(opts, tools)
    key = settings_key(settings)
    report = PrepareReport(root, root / "manifest.json")
    speakers: dict[str, str | None] = {}
    tasks = []
    for v in files:
        cid = clip_id(v)
        speaker = _speaker_for(v, table, opts.speaker_from_folder)
        speakers[cid] = speaker
        shard, skip = root / SHARDS / f"{cid}.safetensors", root / SKIPPED / f"{cid}.json"
        fp = _input_fingerprint(v)
        done = _is_done(shard, skip, fp, key, opts.retry_skipped)
        if done == "ok":
            report.reused += 1
            continue
        if done is not None:
            report.skipped.append((str(v), done.split(":", 1)[1] + " (recorded by an earlier run)"))
            continue
        tasks.append({"source": str(v.absolute()), "id": cid, "speaker": speaker, "input": fp, "shard": str(shard),
                      "skip_record": str(skip), "settings": settings, "opts": asdict(opts)})
    log.info("%d video(s): %d already prepared, %d skipped before, %d to do", len(files), report.reused,
             len(report.skipped), len(tasks))

    from tqdm.auto import tqdm

    bar = tqdm(total=len(files), initial=len(files) - len(tasks), desc="prepare", unit="clip",
               disable=not opts.progress, dynamic_ncols=True)
    last_manifest = time.time()

    def on_result(res: dict):
        nonlocal last_manifest
        if res["status"] == "ok":
            report.prepared.append(res["source"])
            report.video_seconds += res["video_seconds"]
        else:
            report.skipped.append((res["source"], res["reason"]))
            log.warning("skipped %s: %s", res["source"], res["reason"])
        bar.update(1)
        bar.set_postfix(ok=len(report.prepared) + report.reused, skipped=len(report.skipped))
        if time.time() - last_manifest > 120:
            write_manifest(root, build_manifest(root, settings, speakers=speakers))
            last_manifest = time.time()

    try:
        if opts.workers == 0 or len(tasks) == 0:
            for task in tasks:
                on_result(_run_task({**task, "tools": tools}))
        else:
            del tools  # the parent's copies are not needed while the workers run
            _run_pool(tasks, opts, on_result)
    finally:
        bar.close()
        manifest = build_manifest(root, settings, speakers=speakers)
        write_manifest(root, manifest)
    report.damaged = [(d["shard"], d["reason"]) for d in manifest["damaged"]]
    report.n_clips = manifest["n_clips"]
    report.n_frames = manifest["n_frames"]
    report.wall_seconds = time.time() - t0
    return report


def _run_pool(tasks: list[dict], opts: PrepareOptions, on_result) -> None:
    """Run ``tasks`` in ``opts.workers`` spawned processes, at most two per worker in flight.

    A worker that dies (e.g. a native crash on a damaged file) breaks the pool. The clips that were in flight
    are then retried one at a time in a pool of their own, so that the one that kills its worker again is
    reported as skipped and the others are prepared; then the pool is rebuilt for the rest.
    """
    ctx = multiprocessing.get_context("spawn")

    def pool(n: int) -> cf.ProcessPoolExecutor:
        return cf.ProcessPoolExecutor(n, mp_context=ctx, initializer=_init_worker, initargs=(asdict(opts),))

    pending = list(reversed(tasks))
    suspects: list[dict] = []
    n_workers = min(opts.workers, len(tasks))
    while pending or suspects:
        if suspects:
            t = suspects.pop()
            with pool(1) as p:
                try:
                    res = p.submit(_run_task, t).result()
                except cf.process.BrokenProcessPool:
                    res = {"status": "skipped", "source": t["source"], "reason": "the worker process crashed on it"}
            on_result(res)
            continue
        with pool(n_workers) as p:
            running: dict[cf.Future, dict] = {}
            try:
                while pending or running:
                    while pending and len(running) < 2 * n_workers:
                        t = pending.pop()
                        running[p.submit(_run_task, t)] = t
                    done, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
                    broken = False
                    for fut in done:
                        t = running.pop(fut)
                        try:
                            res = fut.result()
                        except cf.process.BrokenProcessPool:
                            broken = True
                            suspects.append(t)
                            continue
                        on_result(res)
                    if broken:
                        suspects.extend(running.values())
                        running.clear()
                        log.warning("a worker process died; retrying the %d clip(s) it may have been working on "
                                    "one by one", len(suspects))
                        break
            except BaseException:
                for fut in running:
                    fut.cancel()
                raise
