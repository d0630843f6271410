"""The ``audio2lp`` command: a thin layer over :class:`audio2lp.Animator` and friends.

Every subcommand is registered by an ``add_*_parser`` function (here, or in the module of its front door) whose
options come from :mod:`audio2lp.options`, and runs through its ``run`` function. User-fixable problems
(:class:`lp_renderer.errors.InputError`) print one ``error:`` line and exit with code 2. Training has its own
command, ``audio2lp-train`` (:mod:`training.cli`).
"""

from __future__ import annotations

import argparse
import sys

from audio2lp.apps import doctor, server, webapp, weights_cmd
from audio2lp.apps.frontdoor import EXIT_USAGE, add_arguments, animator, prepare_process, run, setup_logging


# ------------------------------------------------------------------------------------------ drive
def add_drive_parser(sub) -> None:
    p = sub.add_parser(
        "drive", help="animate a portrait with the motion of a driving video, image or motion template",
        description="Animate PORTRAIT with the head, face and eye motion of DRIVING (a video in any container "
                    "ffmpeg reads, a single image, or a motion template .npz/.pkl). The first driving frame is "
                    "the reference: motion is applied relative to it, as in LivePortrait. The result is an "
                    "H.264 mp4 at the driving fps with the driving video's audio, pasted back into the portrait. "
                    "The driving video always uses its largest face.")
    p.add_argument("portrait", help="the source photo (any size; jpg/png/webp/...)")
    p.add_argument("driving", help="driving video, image, motion template (.npz from --save-template, or "
                                   "LivePortrait's .pkl), or motion file (.npz from `audio2lp motion`)")
    p.add_argument("-o", "--output", required=True, help="output .mp4 (or an image when DRIVING is an image)")
    add_arguments(p, "drive")
    p.set_defaults(run=run_drive)


def run_drive(args) -> int:
    res = animator(args).drive(args.portrait, args.driving, args.output, face=args.face, region=args.region,
                               multiplier=args.multiplier, stitching=args.stitching,
                               retarget_eyes=args.retarget_eyes, retarget_lip=args.retarget_lip,
                               pasteback=args.pasteback, concat=args.concat, save_template=args.save_template,
                               crf=args.crf, max_frames=args.max_frames, audio=args.audio)
    print(f"wrote {res.output} ({res.n_frames} frames, {res.fps:.3g} fps{', with audio' if res.has_audio else ''})")
    if res.template:
        print(f"wrote motion template {res.template}")
    return 0


# ------------------------------------------------------------------------------------------ speak
def add_speak_parser(sub) -> None:
    p = sub.add_parser(
        "speak", help="make a portrait say a speech recording",
        description="Make PORTRAIT say AUDIO. By default the built-in landmark motion model (a FaceFormer-style "
                    "transformer trained on real talking videos) moves the lips, eyes and head through "
                    "LivePortrait's retargeting and pose controls (`audio2lp motion` writes that motion to a file); "
                    "--motion-model uses a full audio-to-motion checkpoint from `audio2lp-train train` instead. "
                    "The mp4 lasts as long as the audio and carries it as AAC.")
    p.add_argument("portrait", help="the source photo (any size; jpg/png/webp/...)")
    p.add_argument("audio", help="speech: wav, flac, ogg, mp3, m4a/aac, or the audio track of a video")
    p.add_argument("-o", "--output", required=True, help="output .mp4")
    add_arguments(p, "speak")
    p.set_defaults(run=run_speak)


def run_speak(args) -> int:
    res = animator(args).speak(args.portrait, args.audio, args.output, motion_model=args.motion_model,
                               face=args.face, fps=args.fps, expression_scale=args.expression_scale,
                               pose_scale=args.pose_scale, seed=args.seed, style=args.style, blink=args.blink,
                               blink_rate=args.blink_rate, pose_from=args.pose_from, pasteback=args.pasteback,
                               whisper_checkpoint=args.whisper_checkpoint, crf=args.crf,
                               motion_noise=args.motion_noise)
    print(f"wrote {res.output} ({res.n_frames} frames, {res.fps:.3g} fps, {res.extra['duration']:.2f} s, with audio)")
    return 0


# ------------------------------------------------------------------------------------------ motion
def add_motion_parser(sub) -> None:
    p = sub.add_parser(
        "motion", help="write the per-frame motion speak would render for a speech recording (.npz)",
        description="Write the motion `speak` renders by default for AUDIO (same options, same seed: the same "
                    "frames), without loading the renderer or a portrait: fps, lip_open (T,), eyes_open (T, 2), "
                    "pitch/yaw/roll (T,) in degrees relative to the portrait's pose, tx/ty (T,) in head sizes and "
                    "scale (T,). Inspect or edit it, then render it with `audio2lp drive PORTRAIT MOTION.npz "
                    "--audio AUDIO`.")
    p.add_argument("audio", help="speech: wav, flac, ogg, mp3, m4a/aac, or the audio track of a video")
    p.add_argument("-o", "--output", required=True, help="output .npz")
    add_arguments(p, "motion")
    p.set_defaults(run=run_motion)


def run_motion(args) -> int:
    from audio2lp.api import Animator

    res = Animator(progress=not args.quiet).motion(
        args.audio, args.output, fps=args.fps, expression_scale=args.expression_scale, pose_scale=args.pose_scale,
        seed=args.seed, blink=args.blink, blink_rate=args.blink_rate, pose_from=args.pose_from,
        whisper_checkpoint=args.whisper_checkpoint)
    print(f"wrote {res.output} ({res.n_frames} frames, {res.fps:.3g} fps, {res.extra['duration']:.2f} s)")
    return 0


# ------------------------------------------------------------------------------------------ main
PARSERS = [add_speak_parser, add_motion_parser, add_drive_parser, weights_cmd.add_weights_parser,
           doctor.add_doctor_parser, webapp.add_app_parser, server.add_serve_parser]


def build_parser() -> argparse.ArgumentParser:
    from audio2lp import __version__

    parser = argparse.ArgumentParser(
        prog="audio2lp",
        description="Turn a portrait photo and speech (or a driving video) into a talking-head video with a "
                    "faithful LivePortrait renderer. Training: `audio2lp-train`.")
    parser.add_argument("--version", action="version", version=f"audio2lp {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in PARSERS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    prepare_process()
    args = build_parser().parse_args(argv)
    setup_logging(args)
    return run(lambda: args.run(args))


__all__ = ["EXIT_USAGE", "build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
