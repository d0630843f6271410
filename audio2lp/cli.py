"""The ``audio2lp`` command: a thin layer over :mod:`audio2lp.api` and friends.

Every subcommand is registered by an ``_add_<name>`` function and runs through ``_run_<name>``.
User-fixable problems (:class:`lp_renderer.errors.InputError`) print one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys

from lp_renderer.errors import InputError

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

log = logging.getLogger("audio2lp")


# ------------------------------------------------------------------------------------------ shared
def _add_common(p: argparse.ArgumentParser, renderer: bool = True) -> None:
    g = p.add_argument_group("runtime")
    if renderer:
        g.add_argument("--weights", metavar="DIR",
                       help="LivePortrait weights folder (official pretrained_weights layout); "
                            "default $AUDIO2LP_WEIGHTS or the cache folder (see `audio2lp weights`)")
        g.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                       help="where to run the networks (default: CUDA when available)")
        g.add_argument("--half", action=argparse.BooleanOptionalAction, default=None,
                       help="float16 for the warping and decoding networks (CUDA only; default on CUDA)")
        g.add_argument("--compile", action="store_true", help="torch.compile the warping and decoding networks")
        g.add_argument("--batch-size", type=int, default=None, metavar="N",
                       help="frames rendered together (default 8 on CUDA, 1 on the CPU)")
        g.add_argument("--face-backend", choices=["auto", "dlib", "insightface"], default="auto",
                       help="face detector/landmarks: dlib (built in) or insightface (needs buffalo_l "
                            "models); auto picks insightface when its models are present")
        g.add_argument("--insightface-dir", metavar="DIR",
                       help="folder with insightface's det_10g.onnx and 2d106det.onnx "
                            "(default $AUDIO2LP_INSIGHTFACE_DIR or WEIGHTS/insightface/models/buffalo_l)")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bars, warnings only")
    g.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def _face_arg(value: str):
    if value in ("largest", "all"):
        return value
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--face takes 'largest', 'all' or a face number, not {value!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError("--face numbers start at 0 (the largest face)")
    return n


def _animator(args):
    from .api import Animator

    return Animator(args.weights, device=None if args.device == "auto" else args.device, half=args.half,
                    compile=args.compile, face_backend=args.face_backend, insightface_dir=args.insightface_dir,
                    batch_size=args.batch_size, progress=not args.quiet)


# ------------------------------------------------------------------------------------------ drive
def _add_drive(sub) -> None:
    p = sub.add_parser(
        "drive", help="animate a portrait with the motion of a driving video, image or motion template",
        description="Animate PORTRAIT with the head, face and eye motion of DRIVING (a video in any container "
                    "ffmpeg reads, a single image, or a motion template .npz/.pkl). The first driving frame is "
                    "the reference: motion is applied relative to it, as in LivePortrait. The result is an "
                    "H.264 mp4 at the driving fps with the driving video's audio, pasted back into the portrait.")
    p.add_argument("portrait", help="the source photo (any size; jpg/png/webp/...)")
    p.add_argument("driving", help="driving video, image, or motion template (.npz from --save-template, or "
                                   "LivePortrait's .pkl)")
    p.add_argument("-o", "--output", required=True, help="output .mp4 (or an image when DRIVING is an image)")
    p.add_argument("--face", type=_face_arg, default="largest",
                   help="which face of the portrait to animate: largest (default), a number (0 = largest), "
                        "or all (each face, stitched in place); the driving video always uses its largest face")
    p.add_argument("--region", choices=["all", "exp", "pose", "lip", "eyes"], default="all",
                   help="which part of the driving motion to apply (default all)")
    p.add_argument("--multiplier", type=float, default=1.0, help="scale of the motion around the portrait's own "
                                                                 "pose and expression (default 1.0)")
    p.add_argument("--retarget-eyes", action="store_true",
                   help="drive eye opening by the driving face's eye-open ratio (eye retargeting network). As "
                        "in LivePortrait (Algorithm 1), retargeting replaces the driving expression and head "
                        "pose: the result is the portrait's own pose and expression plus the eye (and, with "
                        "--retarget-lip, lip) deltas")
    p.add_argument("--retarget-lip", action="store_true",
                   help="drive mouth opening by the driving face's lip-open ratio (lip retargeting network). "
                        "As in LivePortrait, retargeting replaces the driving expression and head pose: the "
                        "result is the portrait's own pose and expression plus the lip (and eye) deltas")
    p.add_argument("--no-stitching", dest="stitching", action="store_false",
                   help="skip the stitching network (implies --no-pasteback: one face's 512x512 crop)")
    p.add_argument("--no-pasteback", dest="pasteback", action="store_false",
                   help="write the 512x512 face crop instead of the full photo")
    p.add_argument("--concat", action="store_true", help="put the driving face crop beside the result")
    p.add_argument("--save-template", metavar="FILE.npz",
                   help="also save the driving motion as a template, to drive other portraits without the video")
    p.add_argument("--max-frames", type=int, metavar="N",
                   help="render only the first N driving frames (the audio is cut to match)")
    p.add_argument("--crf", type=int, default=18,
                   help="H.264 quality from 0 (best) to 51 (worst); default 18, visually lossless")
    _add_common(p)
    p.set_defaults(run=_run_drive)


def _run_drive(args) -> int:
    res = _animator(args).drive(args.portrait, args.driving, args.output, face=args.face, region=args.region,
                                multiplier=args.multiplier, stitching=args.stitching,
                                retarget_eyes=args.retarget_eyes, retarget_lip=args.retarget_lip,
                                pasteback=args.pasteback, concat=args.concat, save_template=args.save_template,
                                crf=args.crf, max_frames=args.max_frames)
    print(f"wrote {res.output} ({res.n_frames} frames, {res.fps:.3g} fps{', with audio' if res.has_audio else ''})")
    if res.template:
        print(f"wrote motion template {res.template}")
    return 0


# ------------------------------------------------------------------------------------------ speak
def _add_speak(sub) -> None:
    p = sub.add_parser(
        "speak", help="make a portrait say a speech recording",
        description="Make PORTRAIT say AUDIO. By default the built-in lip-sync model (trained on real talking "
                    "videos) opens and closes the mouth through LivePortrait's lip retargeting, with natural "
                    "blinks and subtle head motion; --motion-model uses a full audio-to-motion checkpoint from "
                    "`audio2lp train` instead. The mp4 lasts as long as the audio and carries it as AAC.")
    p.add_argument("portrait", help="the source photo (any size; jpg/png/webp/...)")
    p.add_argument("audio", help="speech: wav, flac, ogg, mp3, m4a/aac, or the audio track of a video")
    p.add_argument("-o", "--output", required=True, help="output .mp4")
    p.add_argument("--motion-model", metavar="CKPT",
                   help="audio-to-motion checkpoint (motion_model.safetensors from `audio2lp train`)")
    p.add_argument("--face", type=_face_arg, default="largest",
                   help="which face to animate: largest (default), a number (0 = largest), or all")
    p.add_argument("--fps", type=float, default=25.0, help="output frame rate (default 25)")
    p.add_argument("--expression-scale", type=float, default=1.0,
                   help="scale of the predicted expression around the portrait's own (--motion-model; default 1)")
    p.add_argument("--pose-scale", type=float, default=1.0,
                   help="scale of the head motion (0 = still head; default 1)")
    p.add_argument("--pose-from", metavar="TEMPLATE",
                   help="take the head motion from a motion template (.npz from `drive --save-template`, or .pkl)")
    p.add_argument("--blink-rate", type=float, metavar="PER_MIN",
                   help="average blinks per minute (default: natural, about 17)")
    p.add_argument("--no-blink", dest="blink", action="store_false", help="keep the eyes as in the photo")
    p.add_argument("--style", type=int, default=0, help="speaker/style id of the motion model (default 0)")
    p.add_argument("--seed", type=int, default=0,
                   help="random seed of the blinks and idle head motion, and of --motion-noise (default 0)")
    p.add_argument("--motion-noise", type=float, default=0.0, metavar="STD",
                   help="with --motion-model: noise (normalised units) on the frames fed back while generating, "
                        "for varied motion from the same audio (default 0: deterministic)")
    p.add_argument("--no-pasteback", dest="pasteback", action="store_false",
                   help="write the 512x512 face crop instead of the full photo")
    p.add_argument("--whisper-checkpoint", metavar="FILE",
                   help="openai-whisper checkpoint to use instead of the cached/converted one")
    p.add_argument("--crf", type=int, default=18, help="H.264 quality (lower is better; default 18)")
    _add_common(p)
    p.set_defaults(run=_run_speak)


def _run_speak(args) -> int:
    res = _animator(args).speak(args.portrait, args.audio, args.output, motion_model=args.motion_model,
                                face=args.face, fps=args.fps, expression_scale=args.expression_scale,
                                pose_scale=args.pose_scale, seed=args.seed, style=args.style, blink=args.blink,
                                blink_rate=args.blink_rate, pose_from=args.pose_from, pasteback=args.pasteback,
                                whisper_checkpoint=args.whisper_checkpoint, crf=args.crf,
                                motion_noise=args.motion_noise)
    print(f"wrote {res.output} ({res.n_frames} frames, {res.fps:.3g} fps, {res.extra['duration']:.2f} s, with audio)")
    return 0


# ------------------------------------------------------------------------------------------ weights
def _add_weights(sub) -> None:
    p = sub.add_parser("weights", help="get, import, check or convert the LivePortrait weights",
                       description="Manage the LivePortrait weights folder (official pretrained_weights layout).")
    wsub = p.add_subparsers(dest="weights_command", metavar="ACTION", required=True)
    from .weights_store import add_weights_download_parser, add_weights_import_parser

    add_weights_download_parser(wsub)
    add_weights_import_parser(wsub)
    c = wsub.add_parser("convert", help="convert an official weights folder to safetensors (pickle-free, faster)",
                        description="Load every official .pth file strictly and write .safetensors files next to "
                                    "them (or under --out in the same layout). They are preferred from then on.")
    c.add_argument("dir", nargs="?", help="weights folder (default: the configured one)")
    c.add_argument("--out", metavar="DIR", help="write the safetensors here instead of next to the .pth files")
    _add_common(c, renderer=False)
    c.set_defaults(run=_run_weights_convert)


def _run_weights_convert(args) -> int:
    from lp_renderer.weights import convert_to_safetensors, resolve_weights_dir

    for path in convert_to_safetensors(resolve_weights_dir(args.dir), args.out):
        print(f"wrote {path}")
    return 0


# ------------------------------------------------------------------------------------------ main
def _add_training(sub) -> None:
    from training.cli import add_prepare_parser, add_train_parser

    add_prepare_parser(sub)
    add_train_parser(sub)


def _add_app(sub) -> None:
    from .webapp import add_app_parser

    add_app_parser(sub)


def _add_doctor(sub) -> None:
    from .doctor import add_doctor_parser

    add_doctor_parser(sub)


def _add_serve(sub) -> None:
    from .server import add_serve_parser

    add_serve_parser(sub)


PARSERS = [_add_speak, _add_drive, _add_training, _add_weights, _add_doctor, _add_app, _add_serve]


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="audio2lp",
        description="Turn a portrait photo and speech (or a driving video) into a talking-head video with a "
                    "faithful LivePortrait renderer.")
    parser.add_argument("--version", action="version", version=f"audio2lp {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in PARSERS:
        add(sub)
    return parser


def _setup_logging(args) -> None:
    level = logging.DEBUG if getattr(args, "verbose", False) else \
        logging.WARNING if getattr(args, "quiet", False) else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s: %(message)s" if level > logging.DEBUG else
                        "%(asctime)s %(name)s %(levelname)s: %(message)s")
    for noisy in ("numba", "matplotlib", "PIL", "urllib3", "httpx", "h5py"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in ("prepare", "train"):  # their own logging (ranks under torchrun), messages and exit codes
        from training.cli import run_command

        return run_command(args)
    _setup_logging(args)
    try:
        return int(args.run(args) or 0)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted; no partial output was kept", file=sys.stderr)
        return EXIT_INTERRUPTED
    except MemoryError:
        print("error: out of memory; try a smaller --batch-size", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
