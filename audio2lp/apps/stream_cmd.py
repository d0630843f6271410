"""``audio2lp speak PORTRAIT - -o OUT``: speech from standard input (raw 16 kHz mono PCM, ``--input-format``), video
written as it is made (:meth:`audio2lp.Animator.stream`).

Outputs (``--output-format``): ``mp4`` (default for a file): a fragmented MP4 that plays while it is written,
growing as ``OUT.partial.mp4`` and renamed to ``OUT.mp4`` when the speech ends; a stopped run (Ctrl-C, a broken
input) leaves ``OUT.partial.mp4``, a playable prefix. ``y4m`` (default for ``-o -``): YUV4MPEG2 frames on
standard output, e.g. ``... | audio2lp speak me.jpg - -o - | ffmpeg -i - out.mkv``; ``-o - --output-format mp4``
writes the fragmented MP4 itself to standard output. Messages go to standard error.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np

from audio2lp.apps.frontdoor import EXIT_INTERRUPTED, animator, sliders
from audio2lp.errors import InputError, VideoError
from audio2lp.options import OptionError

log = logging.getLogger(__name__)

#: bytes per sample and the scale to float of each --input-format
FORMATS = {"f32le": (4, "<f4", 1.0), "s16le": (2, "<i2", 1.0 / 32768.0)}
READ_SAMPLES = 640  # at most one frame of audio per read, so frames follow the speech closely


def pcm_chunks(stream, fmt: str):
    """Float32 chunks from the raw PCM ``stream`` (a binary file object) as it arrives; a sample split between
    reads is joined; a partial sample at the end is an InputError."""
    width, dtype, scale = FORMATS[fmt]
    read = getattr(stream, "read1", stream.read)
    rest = b""
    while True:
        data = read(READ_SAMPLES * width)
        if not data:
            break
        data = rest + data
        n = len(data) // width * width
        rest = data[n:]
        if n:
            x = np.frombuffer(data[:n], dtype=dtype).astype(np.float32)
            yield x * np.float32(scale) if scale != 1.0 else x
    if rest:
        raise InputError(f"standard input ended in the middle of a sample ({len(rest)} bytes left over); send whole "
                         f"{fmt} samples (16 kHz mono).")


def check_not_streaming(args) -> None:
    """The streaming options are refused when SPEECH is a file."""
    for name in ("lookahead_ms", "output_format"):
        if getattr(args, name) is not None:
            raise OptionError(name, "{" + name + "} is for a stream: give '-' as SPEECH to read it from standard "
                              "input, or drop it.")
    if args.input_format != "f32le":
        raise OptionError("input_format", "{input_format} is for a stream: give '-' as SPEECH to read raw PCM from "
                          "standard input, or drop it.")
    if args.output == "-":
        raise InputError("-o - writes a stream to standard output; give '-' as SPEECH too (raw PCM on standard "
                         "input), or name an .mp4 file.")


def run_speak_stream(args) -> int:
    """``audio2lp speak PORTRAIT - -o OUT``."""
    from audio2lp.media.atomic import check_output_path
    from audio2lp.media.stream_writer import FragmentedMp4Writer, Y4mWriter, partial_path

    to_stdout = args.output == "-"
    fmt = args.output_format or ("y4m" if to_stdout or str(args.output).lower().endswith(".y4m") else "mp4")
    if not to_stdout:
        check_output_path(args.output, (".mp4",) if fmt == "mp4" else (".y4m",))
    if sys.stdin is None or sys.stdin.isatty():
        raise InputError("SPEECH '-' reads raw 16 kHz mono PCM from standard input; pipe it in, e.g. `ffmpeg -i "
                         "talk.wav -f f32le -ac 1 -ar 16000 - | audio2lp speak me.jpg - -o talk.mp4`.")
    anim = animator(args)  # Animator.stream refuses speak's options a stream cannot take (fps, motion_model, ...)
    stream = anim.stream(args.portrait, pcm_chunks(sys.stdin.buffer, args.input_format),
                         lookahead_ms=args.lookahead_ms, fps=args.fps, motion_model=args.motion_model,
                         pose_from=args.pose_from, style=args.style, motion_noise=args.motion_noise,
                         face=args.face, expression_scale=args.expression_scale,
                         pose_scale=args.pose_scale, seed=args.seed, blink=args.blink, blink_rate=args.blink_rate,
                         pasteback=args.pasteback, whisper_checkpoint=args.whisper_checkpoint,
                         max_portrait_size=args.max_portrait_size, **sliders(args, "speak"))
    out = sys.stdout.buffer if to_stdout else Path(args.output)
    h, w = stream.frame_size
    writer = None
    try:
        with stream:
            for frame in stream:
                if writer is None:
                    writer = (Y4mWriter(out, (h, w)) if fmt == "y4m" and to_stdout
                              else Y4mWriter(open(partial_path(out), "wb"), (h, w)) if fmt == "y4m"
                              else FragmentedMp4Writer(out, (h, w), stream.fps, crf=args.crf))
                writer.write(frame.image, frame.audio)
        if writer is None:
            raise InputError("no frames were made; send 16 kHz mono PCM on standard input.")
        writer.close()
        if fmt == "y4m" and not to_stdout:
            writer.out.close()
            partial_path(out).replace(out)
    except KeyboardInterrupt:
        kept = writer is not None and writer.frames and not to_stdout
        if writer is not None:
            writer.abort(keep=True)
        print(f"interrupted; the first {writer.frames / stream.fps:.2f} s are in {partial_path(out)}" if kept
              else "interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BaseException as e:
        if writer is not None:
            writer.abort(keep=True)
            if not to_stdout and writer.frames:
                print(f"the first {writer.frames / stream.fps:.2f} s are in {partial_path(out)}", file=sys.stderr)
        if isinstance(e, BrokenPipeError):
            raise VideoError("the program reading standard output stopped; the stream ended early.") from None
        raise
    print(f"wrote {'standard output' if to_stdout else out} ({writer.frames} frames, {stream.fps:g} fps, "
          f"{writer.frames / stream.fps:.2f} s{', with audio' if fmt == 'mp4' else ''}; look-ahead "
          f"{stream.lookahead_ms} ms)", file=sys.stderr if to_stdout else sys.stdout)
    return 0
