"""``audio2lp-train`` (also ``python -m training``): the training front door.

* ``prepare``: talking-head videos -> a dataset for the audio-to-motion model (:mod:`training.motion.prepare`);
* ``train``: train the audio-to-motion model (:mod:`training.motion.trainer`; under ``torchrun`` for several
  processes);
* ``lipsync``: train and measure the built-in lip-sync model (:mod:`training.lipsync.train`);
* ``lipsync-data``: fill the lip-sync data cache and print a line per clip (:mod:`training.lipsync.data`);
* ``default-motion``: train and measure the default motion model from the data folder, one command
  (:mod:`training.landmarks.train`);
* ``measure-motion``: the motion measured from a talking video's face landmarks, as a motion file
  (:mod:`training.landmarks.measure`).

Only this module (with :mod:`audio2lp.apps`) parses arguments, prints, exits and configures logging.
"""

from __future__ import annotations

import argparse
import os
import sys

from lp_renderer.errors import InputError

__all__ = ["COMMANDS", "add_prepare_parser", "add_train_parser", "run_command", "run_prepare", "run_train"]


def _positive_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {n}")
    return n


def _nonneg_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {n}")
    return n


def _logging_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("output")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bars, warnings only")
    g.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def _default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


# ------------------------------------------------------------------------------------------ prepare
def add_prepare_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``prepare`` to an argparse subparsers object; it sets ``run=run_prepare``."""
    p = subparsers.add_parser(
        "prepare", help="turn talking-head videos into a training dataset for the audio-to-motion model",
        description="Turn talking-head videos (one speaking, roughly frontal face with its own audio track) into a "
                    "training dataset: per 25 fps frame the LivePortrait motion (70 numbers, from the motion "
                    "extractor M on the face crop, as `audio2lp drive` crops it), the eye and lip open ratios from "
                    "the landmarks, whether the face was found (frames without it are masked out of training), and "
                    "the Whisper encoder features of the audio (50 Hz, two per frame). Each clip's audio/video offset "
                    "is measured (with the built-in lip-sync model) and removed. Videos at other frame rates are "
                    "resampled to 25 fps. Writes one shard per clip (safetensors) and DATASET/manifest.json with "
                    "per-clip facts, the skipped inputs with their reasons and the motion statistics. Re-running "
                    "skips clips already done (a changed file is redone); an interrupted run loses at most the "
                    "clips in progress.",
        epilog="example: audio2lp-train prepare videos/ -o data/hdtf --speaker-from-folder 1 --workers 4")
    p.add_argument("videos", nargs="+", metavar="VIDEO",
                   help="video files or folders (searched recursively for .mp4 .mov .mkv .webm .avi .mpg ...)")
    p.add_argument("-o", "--output", required=True, metavar="DATASET",
                   help="dataset folder (created; an existing dataset is extended / resumed)")
    g = p.add_argument_group("models")
    g.add_argument("--weights", metavar="DIR",
                   help="LivePortrait weights folder; only the motion extractor is used. Default $AUDIO2LP_WEIGHTS "
                        "or the cache folder (see `audio2lp weights`)")
    g.add_argument("--face-backend", choices=["auto", "dlib", "insightface"], default="auto",
                   help="face detector/landmarks (default auto: insightface when its models are present, else dlib)")
    g.add_argument("--insightface-dir", metavar="DIR",
                   help="folder with insightface's det_10g.onnx and 2d106det.onnx")
    g.add_argument("--whisper", default="tiny.en", metavar="NAME",
                   help="Whisper model for the audio features (default tiny.en; base works too); stored in the "
                        "dataset and in the trained model, so `speak` uses the same")
    g.add_argument("--whisper-layers", default="middle", metavar="LAYERS",
                   help="which encoder states: middle (default; block n/2, predicts the mouth best), last (after the "
                        "final LayerNorm), mean (all blocks), a block number like 2, or a list like 2,3 (averaged)")
    g.add_argument("--whisper-checkpoint", metavar="PATH",
                   help="explicit Whisper checkpoint (.pt) or CTranslate2 folder instead of looking it up by name")
    g = p.add_argument_group("clips")
    g.add_argument("--speakers", metavar="CSV",
                   help="CSV with a header and the columns path (or file) and speaker; paths may be absolute, "
                        "relative to the CSV or bare file names. Used for speaker styles and the validation split")
    g.add_argument("--speaker-from-folder", type=_nonneg_int, default=0, metavar="LEVEL",
                   help="take the speaker from a folder name: 1 = the folder holding the video, 2 = the folder above "
                        "it (VoxCeleb's id/video/clip.mp4 layout), ...; default 0 (no speaker unless --speakers)")
    g.add_argument("--min-seconds", type=float, default=2.0, metavar="S",
                   help="skip clips shorter than S seconds (after aligning video and audio; default 2)")
    g.add_argument("--min-face-fraction", type=float, default=0.5, metavar="F",
                   help="skip clips whose face is found in fewer than this share of the frames (default 0.5)")
    g.add_argument("--retry-skipped", action="store_true",
                   help="retry inputs an earlier run skipped even if they did not change")
    g = p.add_argument_group("runtime")
    g.add_argument("--workers", type=_nonneg_int, default=_default_workers(), metavar="N",
                   help="worker processes, each decoding, detecting faces and running M and Whisper on one clip "
                        f"with one thread (default {_default_workers()}: one per core up to 4; 0 = in this process)")
    g.add_argument("--batch-size", type=_positive_int, default=16, metavar="N",
                   help="face crops per motion-extractor batch (default 16)")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="where the motion extractor, Whisper and the lip-sync model run (default auto: CUDA when "
                        "present); face detection and decoding stay on the CPU")
    _logging_args(p)
    p.set_defaults(run=run_prepare)
    return p


def run_prepare(args) -> int:
    from .motion.prepare import PrepareOptions, prepare_dataset

    opts = PrepareOptions(weights_dir=args.weights, face_backend=args.face_backend,
                          insightface_dir=args.insightface_dir, whisper_model=args.whisper,
                          whisper_layers=args.whisper_layers, whisper_checkpoint=args.whisper_checkpoint,
                          workers=args.workers, min_seconds=args.min_seconds,
                          min_face_fraction=args.min_face_fraction, batch_size=args.batch_size, device=args.device,
                          speakers_csv=args.speakers, speaker_from_folder=args.speaker_from_folder,
                          retry_skipped=args.retry_skipped, progress=not args.quiet)
    rep = prepare_dataset(args.videos, args.output, opts)
    total = len(rep.prepared) + rep.reused + len(rep.skipped)
    print(f"{total} video(s): {len(rep.prepared)} prepared ({rep.video_seconds:.1f} s of video in "
          f"{rep.wall_seconds:.1f} s), {rep.reused} already done, {len(rep.skipped)} skipped")
    for source, reason in rep.skipped:
        print(f"  skipped {source}: {reason}")
    for shard, reason in rep.damaged:
        print(f"  left out {shard}: {reason}")
    if rep.n_clips == 0:
        raise InputError(f"the dataset {rep.dataset} has no usable clip (every input was skipped, see above); give "
                         f"talking-head videos with a visible face and an audio track.")
    print(f"dataset {rep.dataset}: {rep.n_clips} clip(s), {rep.n_frames} frames ({rep.n_frames / 25 / 60:.1f} min "
          f"at 25 fps); manifest {rep.manifest}")
    return 0


# ------------------------------------------------------------------------------------------ train
def add_train_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``train`` to an argparse subparsers object; it sets ``run=run_train``."""
    p = subparsers.add_parser(
        "train", help="train the audio-to-motion model on a prepared dataset",
        description="Train the audio-to-motion model (FaceFormer-style, Whisper features -> 70-number LivePortrait "
                    "motion) on a dataset made by `audio2lp-train prepare`. Windows of data.context + data.window "
                    "frames (the longest sequence one generation window of `speak` decodes) are drawn from the "
                    "training speakers' clips, as changes from each clip's own resting pose and mouth; frames without "
                    "a face (and two neighbours each side) are masked out. The loss is a weighted MSE on all 70 "
                    "numbers (lip keypoints weighted higher) plus a velocity loss, with scheduled sampling ramping "
                    "towards autoregressive rollout; validation rolls the model out exactly as `speak` does. "
                    "Writes RUN/config.yaml, RUN/checkpoints/step-*.pt (atomically, every "
                    "run.checkpoint_every steps and at the end), RUN/metrics.csv, TensorBoard events in "
                    "RUN/tensorboard, RUN/curves.png, and at the end RUN/motion_model.safetensors for "
                    "`audio2lp speak --motion-model`. Several processes: `torchrun --nproc-per-node N -m training "
                    "train ...` (DistributedDataParallel; NCCL on GPUs, gloo on CPU; data.batch_size is the total "
                    "over all processes; RUN and the config are read and written by rank 0 only, so they need to "
                    "exist only on its machine, while every machine needs the same DATASET (checked); an error in "
                    "one process ends them all).",
        epilog="example: audio2lp-train train data/hdtf -o runs/a --config examples/train_config.yaml "
               "--set optim.lr=1e-4")
    p.add_argument("dataset", metavar="DATASET", help="dataset folder written by `audio2lp-train prepare`")
    p.add_argument("-o", "--output", required=True, metavar="RUN", help="run folder (created)")
    p.add_argument("--config", metavar="FILE",
                   help="training config, YAML or TOML (see examples/train_config.yaml); default: built-in defaults")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override one config value, e.g. --set optim.lr=1e-4 --set data.window=50 (repeatable)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest checkpoint in RUN (a fresh start when RUN has none). Without "
                        "--config it uses RUN/config.yaml, with any --set / shortcut options on top. The config must "
                        "match the run's, except that --steps may raise schedule.steps (the learning-rate schedule "
                        "is then recomputed over the new length). Without --resume, a RUN that holds checkpoints is "
                        "an error")
    g = p.add_argument_group("shortcuts for common config values")
    g.add_argument("--steps", type=_positive_int, metavar="N", help="schedule.steps")
    g.add_argument("--batch-size", type=_positive_int, metavar="N", help="data.batch_size (total over processes)")
    g.add_argument("--seed", type=int, metavar="N", help="run.seed")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], help="run.device")
    g.add_argument("--threads", type=_nonneg_int, metavar="N",
                   help="run.num_threads: torch threads per process (default 1; 0 = torch's default)")
    _logging_args(p)
    p.set_defaults(run=run_train)
    return p


def _train_config(args):
    """The config of ``train``: --config (or on --resume RUN/config.yaml, else the defaults), then --set and the
    shortcut options."""
    from pathlib import Path

    from .motion.config import apply_overrides, load_config

    saved = Path(args.output) / "config.yaml"
    cfg = load_config(saved if args.config is None and args.resume and saved.is_file() else args.config)
    sets = list(args.overrides)
    for flag, key in (("steps", "schedule.steps"), ("batch_size", "data.batch_size"), ("seed", "run.seed"),
                      ("device", "run.device"), ("threads", "run.num_threads")):
        if getattr(args, flag) is not None:
            sets.append(f"{key}={getattr(args, flag)}")
    return apply_overrides(cfg, sets) if sets else cfg


def run_train(args) -> int:
    import importlib.util

    missing = [m for m in ("yaml", "tensorboard", "matplotlib") if importlib.util.find_spec(m) is None]
    if missing:
        raise InputError(f"training needs {', '.join(missing)}; install the train extra: "
                         f'pip install "audio2lp[train]"')
    from .motion.trainer import train

    cfg = _train_config(args)
    res = train(args.dataset, args.output, cfg, resume=args.resume, progress=not args.quiet)
    if int(os.environ.get("RANK", "0")) == 0:
        val = ", ".join(f"{k} {v:.4g}" for k, v in res.metrics.items())
        print(f"wrote {res.model_path} after {res.steps} steps" + (f" ({val})" if val else ""))
    return 0


# ------------------------------------------------------------------------------------------ lipsync
def add_lipsync_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``lipsync`` (train and measure the built-in lip-sync model)."""
    from .lipsync.train import DEFAULT_TRAIN_CONFIG

    p = subparsers.add_parser(
        "lipsync", help="train the built-in lip-sync model on real talking videos and measure it",
        description="Train the speech-to-mouth model on real talking videos and measure it on held-out speakers; "
                    "write lipsync.safetensors, LIPSYNC_MODEL_CARD.md and lipsync_metrics.json.")
    p.add_argument("--data", required=True, help="folder of talking videos ($AUDIO2LP_TEST_DATA/talking)")
    p.add_argument("--out", default="audio2lp/assets", help="where to write lipsync.safetensors, the model card and "
                                                           "the metrics (default audio2lp/assets)")
    p.add_argument("--cache", default=None, help="dataset cache folder, outside the repository (default "
                                                 "~/.cache/audio2lp/lipsync-data)")
    p.add_argument("--results", default="benchmarks/RESULTS.md",
                   help="Markdown file whose lip-sync section is replaced (or appended); '' to skip")
    p.add_argument("--seed", type=int, default=DEFAULT_TRAIN_CONFIG.seed,
                   help=f"random seed of the training (default {DEFAULT_TRAIN_CONFIG.seed})")
    p.add_argument("--steps", type=int, default=DEFAULT_TRAIN_CONFIG.steps,
                   help=f"optimiser steps (default {DEFAULT_TRAIN_CONFIG.steps})")
    p.add_argument("--held-out", metavar="SPEAKERS",
                   help="comma-separated speaker ids to hold out (default: HELD_OUT_SPEAKERS, for the shared clips)")
    p.add_argument("--cv", type=int, default=0, metavar="FOLDS",
                   help="also cross-validate within the training speakers (e.g. 4; a few more minutes)")
    p.add_argument("--no-progress", dest="quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=run_lipsync, verbose=False)
    return p


def run_lipsync(args) -> int:
    import dataclasses

    from .lipsync.train import DEFAULT_TRAIN_CONFIG, HELD_OUT_SPEAKERS, command_line, run

    tc = dataclasses.replace(DEFAULT_TRAIN_CONFIG, seed=args.seed, steps=args.steps)
    held = HELD_OUT_SPEAKERS if args.held_out is None else tuple(x.strip() for x in args.held_out.split(",")
                                                                 if x.strip())
    m = run(args.data, args.out, cache_dir=args.cache, train_config=tc, held_out=held,
            results_path=args.results or None, cv_folds=args.cv, command=command_line(args),
            progress=not args.quiet)
    h = m["heldout"]
    print(f"held-out speakers: {h['speakers']} ({h['clips']} clips)")
    print(f"mean per-clip r: model {h['mean_r_model']:.3f} | linear probe {h['mean_r_probe']:.3f} | "
          f"loudness baseline {h['mean_r_loudness']:.3f}")
    print(f"mouth closed in silences > 200 ms: {h['closed_rate_in_silence_gated']} as speak renders it "
          f"({h['closed_rate_in_silence']} from the network alone); peak-correlation lag: {h['best_lag_frames']:+d} "
          f"frames")
    print(f"wrote {args.out}/lipsync.safetensors, LIPSYNC_MODEL_CARD.md, lipsync_metrics.json "
          f"in {m['total_seconds']:.0f} s")
    return 0


def add_lipsync_data_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``lipsync-data`` (fill the lip-sync data cache)."""
    p = subparsers.add_parser(
        "lipsync-data", help="measure the lip-sync training data (landmarks, loudness, Whisper features) into the "
                             "cache and print one JSON line per clip",
        description="Measure every talking clip of --data for the lip-sync trainer (lip and eye ratios from the "
                    "landmarks, loudness, Whisper features) into the cache, outside the repository, and print one "
                    "JSON line of facts per clip. `audio2lp-train lipsync` does this by itself.")
    p.add_argument("--data", required=True, help="folder of talking-face videos ($AUDIO2LP_TEST_DATA/talking)")
    p.add_argument("--cache", default=None, help="cache folder (default ~/.cache/audio2lp/lipsync-data)")
    p.add_argument("--whisper", default="tiny.en", help="Whisper model for the features ('' = none)")
    p.add_argument("--layers", default="middle", help="Whisper layers: last, middle, mean, or ints like 2,3")
    p.add_argument("--detect-every", type=int, default=5,
                   help="run the face detector every N frames, tracking in between (default 5)")
    p.add_argument("--no-progress", dest="quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=run_lipsync_data, verbose=False)
    return p


def run_lipsync_data(args) -> int:
    import json

    from audio2lp.whisper.features import parse_whisper_layers

    from .lipsync.data import build_dataset, summary

    clips = build_dataset(args.data, whisper_model=args.whisper or None, layers=parse_whisper_layers(args.layers),
                          cache_dir=args.cache, detect_every=args.detect_every, progress=not args.quiet)
    for row in summary(clips):
        print(json.dumps(row))
    return 0


# ------------------------------------------------------------------------------------------ default-motion
def add_default_motion_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``default-motion`` (train and measure the default landmark motion model)."""
    from .landmarks.train import DefaultMotionTrainConfig

    d = DefaultMotionTrainConfig()
    p = subparsers.add_parser(
        "default-motion", help="train the default motion model (speech -> lips, eyes, head) on real talking videos",
        description="From the talking videos of --data, with no other step: measure the motion per 25 fps frame "
                    "from face landmarks (lip and eye ratios, head rotation, translation and scale), split by "
                    "speaker (SPEAKERS.tsv), fit and train the FaceFormer-style landmark motion model, choose the "
                    "lip blend and pause closure by cross-validation on the training speakers, evaluate on the "
                    "held-out speakers and write landmark_motion.safetensors, LANDMARK_MOTION_MODEL_CARD.md and "
                    "landmark_motion_metrics.json.",
        epilog="example: audio2lp-train default-motion --data ../shared/data/talking -o audio2lp/assets")
    p.add_argument("--data", required=True, metavar="DIR",
                   help="folder of talking videos with speech ($AUDIO2LP_TEST_DATA/talking; a data folder holding "
                        "talking/ works too)")
    p.add_argument("-o", "--output", required=True, metavar="DIR",
                   help="where to write the weights, the model card and the figures (audio2lp/assets ships them)")
    p.add_argument("--cache", metavar="DIR", help="cache of landmarks and features, outside the repository "
                                                  "(default ~/.cache/audio2lp/default-motion-data)")
    p.add_argument("--steps", type=_positive_int, default=d.steps, help=f"transformer steps (default {d.steps})")
    p.add_argument("--seed", type=int, default=d.seed, help=f"training seed (default {d.seed})")
    p.add_argument("--workers", type=_positive_int, default=2, metavar="N",
                   help="processes measuring landmarks (default 2)")
    p.add_argument("--results", default="benchmarks/RESULTS.md", metavar="FILE",
                   help="Markdown file whose default-motion quality section is replaced (or appended); '' to skip")
    p.add_argument("--no-progress", dest="quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=run_default_motion, verbose=False)
    return p


def _talking_folder(path: str):
    from pathlib import Path

    p = Path(path)
    if not p.is_dir():
        raise InputError(f"--data {path} is not a folder; pass the folder of talking videos (e.g. "
                         f"$AUDIO2LP_TEST_DATA/talking).")
    return p / "talking" if (p / "talking").is_dir() else p


def run_default_motion(args) -> int:
    import dataclasses

    from .landmarks.train import DefaultMotionTrainConfig, run

    tc = dataclasses.replace(DefaultMotionTrainConfig(), steps=args.steps, seed=args.seed)
    command = "audio2lp-train default-motion --data $AUDIO2LP_TEST_DATA/talking -o audio2lp/assets"
    if args.steps != DefaultMotionTrainConfig.steps or args.seed != DefaultMotionTrainConfig.seed:
        command += f" --steps {args.steps} --seed {args.seed}"
    res = run(_talking_folder(args.data), args.output, cache_dir=args.cache, train_config=tc, workers=args.workers,
              command=command, results_path=args.results or None, progress=not args.quiet)
    m, t, s = res["model"], res["today"], res["split"]
    print(f"held out: {s['test_clips']} clips, {s['test_speakers']} speakers; trained on {s['train_clips']} clips, "
          f"{s['train_speakers']} speakers")
    print(f"lip r at lag 0: model {m['lip_r']:.3f} | today's lip-sync model {t['lip_r']:.3f}; closed in pauses: "
          f"model {m.get('sil_closed', float('nan')):.3f} | real {res['real'].get('sil_closed', float('nan')):.3f}")
    print(f"lip blend {res['facts']['blend']:.2f}; blinks/min model {m['blink_rate']:.1f} | real "
          f"{res['real']['blink_rate']:.1f}; seeds' head r {m['seed_r']:.3f}")
    print(f"wrote {args.output}/landmark_motion.safetensors, LANDMARK_MOTION_MODEL_CARD.md, "
          f"landmark_motion_metrics.json in {res['timing']['total_seconds']:.0f} s")
    return 0


def add_measure_motion_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``measure-motion`` (a talking video's landmark motion as a motion file)."""
    p = subparsers.add_parser(
        "measure-motion", help="measure a talking video's motion from its face landmarks into a motion file",
        description="Measure per 25 fps frame the lip-open ratio, both eye-open multipliers, pitch/yaw/roll "
                    "(degrees, relative to the clip's median) and head translation and scale of the largest face "
                    "of VIDEO, as the default motion model is trained on, and write them as a motion file "
                    "(fps, lip_open, eyes_open, pitch, yaw, roll, tx, ty, scale, valid).",
        epilog="example: audio2lp-train measure-motion talking.mp4 -o measured.npz")
    p.add_argument("video", metavar="VIDEO", help="a talking-face video")
    p.add_argument("-o", "--output", required=True, metavar="MOTION.npz", help="motion file to write")
    p.set_defaults(run=run_measure_motion, verbose=False, quiet=False)
    return p


def run_measure_motion(args) -> int:
    from pathlib import Path

    import numpy as np

    from audio2lp.media.atomic import atomic_output

    from .landmarks.measure import measure_video

    if not Path(args.video).is_file():
        raise InputError(f"{args.video} does not exist; pass a talking-face video file.")
    if not args.output.endswith(".npz"):
        raise InputError(f"the output {args.output} must end in .npz")
    cm = measure_video(args.video)
    with atomic_output(args.output, make_folder=True) as tmp, open(tmp, "wb") as f:
        np.savez(f, **cm.to_npz_dict())
    print(f"wrote {args.output}: {cm.n_frames} frames at 25 fps, face in {cm.valid.mean():.0%} of them")
    return 0


# ------------------------------------------------------------------------------------------ running
def run_command(args) -> int:
    """Run a parsed ``prepare`` / ``train`` command as a CLI: logging, exit codes, messages.

    Every command of ``audio2lp-train`` (and ``python -m training``) comes here. Under torchrun
    (``RANK`` set) log lines carry the rank and ranks other than 0 show warnings only and no progress bars.
    ``InputError`` prints ``error: ...`` and returns 2. Ctrl-C returns 130; finished clips and checkpoints are
    kept.
    """
    import logging

    rank = int(os.environ.get("RANK", "0"))
    level = logging.DEBUG if args.verbose else logging.WARNING if (args.quiet or rank != 0) else logging.INFO
    logging.basicConfig(level=level, format=f"[rank {rank}] %(levelname)s: %(message)s" if "RANK" in os.environ
                        else "%(levelname)s: %(message)s")
    for noisy in ("numba", "matplotlib", "PIL", "urllib3", "httpx", "h5py"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if rank != 0:
        args.quiet = True
    try:
        return int(args.run(args) or 0)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished clips and checkpoints are kept (re-run the command, with --resume for train, "
              "to continue)", file=sys.stderr)
        return 130
    except MemoryError:
        print("error: out of memory; try a smaller --batch-size", file=sys.stderr)
        return 1


COMMANDS = ("prepare", "train", "lipsync", "lipsync-data", "default-motion", "measure-motion")


# ------------------------------------------------------------------------------------------ audio2lp-train
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="audio2lp-train",
                                     description="Prepare datasets for and train audio2lp's models: the "
                                                 "audio-to-motion model (prepare, train) and the built-in lip-sync "
                                                 "model (lipsync).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_prepare_parser(sub)
    add_train_parser(sub)
    add_lipsync_parser(sub)
    add_lipsync_data_parser(sub)
    add_default_motion_parser(sub)
    add_measure_motion_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """``audio2lp-train COMMAND ...`` (also ``python -m training``; use that form under torchrun)."""
    from lp_renderer.fast.cpu_memory import request_huge_pages

    request_huge_pages()  # before torch loads, as the audio2lp command does (prepare runs M on the CPU)
    return run_command(build_parser().parse_args(argv))
