"""The ``audio2lp`` command: a thin layer over :class:`audio2lp.Animator` and friends.

Every subcommand is registered by an ``add_*_parser`` function (here, or in the module of its front door) whose
options come from :mod:`audio2lp.options`, and runs through its ``run`` function. User-fixable problems
(:class:`lp_renderer.errors.InputError`) print one ``error:`` line and exit with code 2. Training has its own
command, ``audio2lp-train`` (:mod:`training.cli`).
"""

from __future__ import annotations

import argparse
import sys

from audio2lp.apps import doctor, export_cmd, server, stream_cmd, webapp, weights_cmd
from audio2lp.apps.frontdoor import (
    EXIT_USAGE,
    add_arguments,
    animator,
    prepare_process,
    refuse_options,
    run,
    setup_logging,
    sliders,
)

SLIDERS_EPILOG = ("The portrait-editing sliders (--smile, --gaze-x, --pitch, ... as `audio2lp edit`, without the "
                  "target eye/lip ratios) are constant offsets added in every frame, relative to the portrait.")


# ------------------------------------------------------------------------------------------ drive
def add_drive_parser(sub) -> None:
    p = sub.add_parser(
        "drive", help="animate a portrait (photo or video) with the motion of a driving video, image or template",
        description="Animate PORTRAIT with the head, face and eye motion of DRIVING (a video in any container "
                    "ffmpeg reads, a single image, or a motion template .npz/.pkl). The first driving frame is "
                    "the reference: motion is applied relative to it, as in LivePortrait. The result is an "
                    "H.264 mp4 at the driving fps with the driving video's audio, pasted back into the portrait. "
                    "The driving video always uses its largest face. When PORTRAIT is a video (LivePortrait's "
                    "video-to-video mode), each of its frames is driven by the driving frame of the same number "
                    "(expression and rotation, smoothed; each frame keeps its own position and size), the result "
                    "has the portrait video's size and frame rate and lasts as long as the shorter video, and "
                    "--audio-priority says whose sound it carries. DRIVING may also be a motion file from "
                    "`audio2lp motion` (rendered as speak renders it; --audio adds the speech).", epilog=SLIDERS_EPILOG)
    p.add_argument("portrait", help="the source photo (any size; jpg/png/webp/...) or a video of a face")
    p.add_argument("driving", help="driving video, image, motion template (.npz from --save-template, or "
                                   "LivePortrait's .pkl), or motion file (.npz from `audio2lp motion`)")
    p.add_argument("-o", "--output", required=True, help="output .mp4 (or an image when DRIVING is an image)")
    add_arguments(p, "drive")
    p.set_defaults(run=run_drive)


def run_drive(args) -> int:
    refuse_options(args, "drive")
    res = animator(args).drive(args.portrait, args.driving, args.output, face=args.face, region=args.region,
                               multiplier=args.multiplier, stitching=args.stitching,
                               retarget_eyes=args.retarget_eyes, retarget_lip=args.retarget_lip,
                               pasteback=args.pasteback, concat=args.concat, save_template=args.save_template,
                               crf=args.crf, max_frames=args.max_frames,
                               max_portrait_size=args.max_portrait_size, **sliders(args, "drive"),
                               driving_smooth_observation_variance=args.driving_smooth_observation_variance,
                               source_video_eye_retargeting=args.source_video_eye_retargeting,
                               audio_priority=args.audio_priority, audio=args.audio)
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
                    "The mp4 lasts as long as the audio and carries it as AAC. "
                    "When PORTRAIT is a video (dubbing), the person in it says AUDIO: every frame keeps its head "
                    "pose, eyes and expression and only the mouth follows the speech; the result has the video's "
                    "size and frame rate, and the video plays forward and backward as often as the speech needs "
                    "(or is cut). --face, --seed, --crf and --no-pasteback apply there; the photo's motion options "
                    "do not. AUDIO '-' streams: raw 16 kHz mono PCM (--input-format) is read from standard input "
                    "and the video is written as it is made: a fragmented mp4 (OUT.partial.mp4 until the input "
                    "ends, then OUT.mp4; playable while written) or, with -o -, y4m frames on standard output "
                    "(--output-format), e.g. `ffmpeg -i talk.wav -f f32le -ac 1 -ar 16000 - | audio2lp speak "
                    "me.jpg - -o - | ffmpeg -i - out.mkv`.",
        epilog=SLIDERS_EPILOG)
    p.add_argument("portrait", help="the source photo (any size; jpg/png/webp/...) or a video of a face (dubbing)")
    p.add_argument("audio", help="speech: wav, flac, ogg, mp3, m4a/aac, or the audio track of a video; '-': raw PCM "
                                 "from standard input (streaming)")
    p.add_argument("-o", "--output", required=True, help="output .mp4 ('-': standard output, with AUDIO '-')")
    add_arguments(p, "speak")
    p.set_defaults(run=run_speak)


def run_speak(args) -> int:
    refuse_options(args, "speak")
    if args.audio == "-":
        return stream_cmd.run_speak_stream(args)
    stream_cmd.check_not_streaming(args)
    res = animator(args).speak(args.portrait, args.audio, args.output, motion_model=args.motion_model,
                               face=args.face, fps=args.fps, expression_scale=args.expression_scale,
                               pose_scale=args.pose_scale, seed=args.seed, style=args.style, blink=args.blink,
                               blink_rate=args.blink_rate, pose_from=args.pose_from, pasteback=args.pasteback,
                               whisper_checkpoint=args.whisper_checkpoint, crf=args.crf,
                               motion_noise=args.motion_noise, max_portrait_size=args.max_portrait_size,
                               **sliders(args, "speak"))
    print(f"wrote {res.output} ({res.n_frames} frames, {res.fps:.3g} fps, {res.extra['duration']:.2f} s, with audio)")
    return 0


# ------------------------------------------------------------------------------------------ edit
def add_edit_parser(sub) -> None:
    p = sub.add_parser(
        "edit", help="edit a portrait's expression and head pose (smile, gaze, wink, pose, ...) into an image",
        description="Edit PORTRAIT with the sliders of LivePortrait's image-retargeting tab (official ranges and "
                    "per-keypoint offsets): target eye and lip ratios, relative pitch/yaw/roll, movement, pouting, "
                    "pursing, grin, lip close/open, smile, wink, eyebrow and eye gaze. The edited face is stitched "
                    "and pasted back into the photo at its full resolution. Example: audio2lp edit me.jpg -o "
                    "smile.png --smile 0.6 --gaze-x 10")
    p.add_argument("portrait", help="the photo (any size; jpg/png/webp/...)")
    p.add_argument("-o", "--output", required=True, help="output image (.png, .jpg, .webp, ...)")
    add_arguments(p, "edit")
    p.set_defaults(run=run_edit)


def run_edit(args) -> int:
    res = animator(args).edit(args.portrait, args.output, face=args.face, crop_scale=args.crop_scale,
                              stitching=args.stitching, pasteback=args.pasteback, **sliders(args, "edit"))
    print(f"wrote {res.output}")
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
PARSERS = [add_speak_parser, add_motion_parser, add_drive_parser, add_edit_parser, weights_cmd.add_weights_parser,
           doctor.add_doctor_parser, webapp.add_app_parser, server.add_serve_parser, export_cmd.add_export_parser]


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
