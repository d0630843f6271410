"""Make a portrait and a speech recording, then run `speak` and `drive` through the Python API.

Nothing has to be downloaded besides the LivePortrait weights (see `audio2lp weights download`):

* the portrait is scikit-image's astronaut photo (``skimage.data.astronaut()``, shipped with scikit-image),
  or ``--portrait FILE``;
* the speech is synthesised with espeak-ng when it is installed (``apt install espeak-ng``), or taken from
  ``--wav FILE``; without either, a speech-like test tone is used (the mouth still moves, but do not expect
  lip sync);
* ``drive`` replays the head and face motion of ``--driving VIDEO``, or by default of the ``speak`` result.

    python examples/make_inputs_and_run.py --weights path/to/pretrained_weights --out demo/

Writes ``portrait.png``, ``speech.wav``, ``talk.mp4`` (speak), ``driven.mp4`` and ``motion.npz`` (drive) into
``--out``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

TEXT = ("Hello! I am an astronaut, and this is my first talking picture. "
        "The words you hear move my lips, my eyes blink, and my head moves a little.")


def make_portrait(out: Path, given: str | None) -> Path:
    if given:
        return Path(given)
    try:
        from skimage import data
    except ImportError:
        sys.exit("error: the default portrait comes from scikit-image; `pip install scikit-image`, or pass "
                 "--portrait FILE.")
    from PIL import Image

    path = out / "portrait.png"
    Image.fromarray(data.astronaut()).save(path)
    print(f"portrait: {path} (scikit-image's astronaut photo)")
    return path


def speech_like_tone(seconds: float = 4.0, sr: int = 16000) -> np.ndarray:
    """A vowel-like buzz (120 Hz voice, two formants) switched on and off like syllables (~4 per second)."""
    t = np.arange(int(seconds * sr)) / sr
    voice = sum(np.sin(2 * np.pi * 120 * k * t) / k for k in range(1, 25))
    formants = 0.6 * np.sin(2 * np.pi * 700 * t) + 0.4 * np.sin(2 * np.pi * 1200 * t)
    syllables = np.clip(np.sin(2 * np.pi * 4 * t), 0, None) ** 0.5 * (np.sin(2 * np.pi * 0.4 * t) > -0.7)
    sig = voice * (0.5 + 0.5 * formants) * syllables
    return (0.3 * sig / np.abs(sig).max()).astype(np.float32)


def make_speech(out: Path, wav: str | None, text: str) -> Path:
    if wav:
        return Path(wav)
    path = out / "speech.wav"
    exe = shutil.which("espeak-ng") or shutil.which("espeak")
    if exe:
        subprocess.run([exe, "-v", "en-us", "-s", "150", "-w", str(path), text], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print(f"speech:   {path} (espeak-ng: {text[:50]}...)")
        return path
    from audio2lp.media.audio import write_wav

    print("note: espeak-ng is not installed (apt install espeak-ng), and no --wav was given; using a speech-like "
          "test tone instead, so the mouth moves but there are no words to lip-sync.")
    write_wav(path, speech_like_tone())
    print(f"speech:   {path} (test tone)")
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", help="LivePortrait weights folder (default $AUDIO2LP_WEIGHTS or the cache folder)")
    p.add_argument("--motion-model", help="audio-to-motion checkpoint for speak (default: the built-in motion "
                                          "model)")
    p.add_argument("--out", default="audio2lp-demo", help="output folder (default audio2lp-demo)")
    p.add_argument("--portrait", help="use this photo instead of the astronaut")
    p.add_argument("--wav", help="use this speech recording instead of synthesising one")
    p.add_argument("--text", default=TEXT, help="what espeak-ng says")
    p.add_argument("--driving", help="driving video for drive (default: the speak result)")
    p.add_argument("--max-frames", type=int, help="drive only the first N frames")
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: CUDA when available")
    args = p.parse_args(argv)

    from audio2lp import Animator
    from lp_renderer.errors import InputError

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        portrait = make_portrait(out, args.portrait)
        speech = make_speech(out, args.wav, args.text)
        anim = Animator(args.weights, device=args.device)  # one renderer for both runs
        talk = anim.speak(portrait, speech, out / "talk.mp4", motion_model=args.motion_model)
        print(f"speak:    {talk.output} ({talk.n_frames} frames at {talk.fps:g} fps, "
              f"{talk.extra['duration']:.2f} s, {talk.extra['mode']})")
        driving = Path(args.driving) if args.driving else talk.output
        driven = anim.drive(portrait, driving, out / "driven.mp4", save_template=out / "motion.npz",
                            max_frames=args.max_frames)
        print(f"drive:    {driven.output} ({driven.n_frames} frames driven by {driving.name}; "
              f"motion template {driven.template})")
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
