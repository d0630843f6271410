"""The audio2lp Python API in a few lines: one Animator (the renderer loads once), then speak and drive.

    python examples/api_example.py portrait.jpg speech.wav --weights pretrained_weights
    python examples/api_example.py portrait.jpg speech.wav --driving driving.mp4 --out results/
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from audio2lp import Animator
from lp_renderer.errors import InputError  # every user-fixable problem: bad input, missing weights, no face


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="speak (and drive) with the audio2lp API")
    p.add_argument("portrait", help="a photo with a face")
    p.add_argument("audio", help="a speech recording (wav, mp3, m4a, ...)")
    p.add_argument("--driving", help="also animate the portrait with this driving video")
    p.add_argument("--weights", help="LivePortrait weights folder (default $AUDIO2LP_WEIGHTS or the cache)")
    p.add_argument("--motion-model", help="audio-to-motion checkpoint (default: the built-in motion model)")
    p.add_argument("--out", default=".", help="output folder")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    anim = Animator(weights=args.weights, progress=True)
    try:
        # The portrait says the audio: an mp4 as long as the audio, with the audio as its soundtrack.
        talk = anim.speak(args.portrait, args.audio, out / "talk.mp4", motion_model=args.motion_model,
                          pose_scale=0.8, seed=1)
        print(f"{talk.output}: {talk.n_frames} frames at {talk.fps:g} fps, {talk.extra['duration']:.2f} s")

        if args.driving:
            # The portrait performs the driving video; the motion is also kept as a reusable template.
            driven = anim.drive(args.portrait, args.driving, out / "driven.mp4", save_template=out / "motion.npz")
            print(f"{driven.output}: {driven.n_frames} frames; motion template {driven.template}")
    except InputError as e:  # says what is wrong and what to do, in one sentence
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
