"""The work around the networks: `drive` and `speak` per frame with the networks replaced by no-ops.

    python benchmarks/overhead.py                   # drive (d11, 512x512 25 fps) onto a 624x624 portrait, speak 10 s
    python benchmarks/overhead.py --frames 100      # fewer driving frames
    python benchmarks/overhead.py --only drive      # one command

On a GPU the networks take ~13 ms a frame (the paper); whatever the CPU does around them bounds the frame rate. This
script measures exactly that on real files of ``$AUDIO2LP_TEST_DATA`` (default ``../shared/data``): the renderer is
:class:`NullRenderer`, whose M returns a cached :class:`~lp_renderer.keypoints.KeypointInfo` (after the crops were
turned into the network's input tensor, as M's caller does) and whose W + G return one constant 512x512 frame
(converted to uint8 as rendered frames are). Everything else is the product's code: decoding, face detection and
tracking, crops and eye / lip ratios, Algorithm 1 with the stitching MLP (real size, random weights), paste-back,
encoding and muxing; for speak the audio and the default motion (Whisper features, motion models, blinks).

Per stage (each timed alone, over the same frames, one after another) and the whole command (``Animator.drive`` /
``Animator.speak`` end to end, stages overlapped as the product runs them), in ms per frame: wall time and CPU time
(this process plus its ffmpeg children). The wall figure of the whole command is the one that bounds a GPU run; the
CPU figure is less sensitive to other load on the machine. The Animator runs as on a GPU: the CUDA default batch of 8
(``--batch-size``) and speak's default motion made in a background thread while frames render
(``Animator.motion_in_background``; ``--serial-motion``: before rendering, as on the CPU). ``--null-whisper`` also
replaces the Whisper encoder (its streaming windows and the lip-sync model's 30 s windows) by a null network giving
zero features: on a CUDA renderer it runs on the GPU (:func:`audio2lp.whisper.stream.whisper_device`), so it is
network time there, not the CPU's (the motion then made from zeros costs the same as from real features).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DRIVING = "talking/LivePortrait__d11.mp4"
PORTRAIT = "portraits/LivePortrait__d19.jpg"


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


class Clock:
    """Wall and CPU time (this process and its reaped children) of a block."""

    def __enter__(self):
        self.w0, self.c0 = time.perf_counter(), self._cpu()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.w0, self._cpu() - self.c0

    @staticmethod
    def _cpu() -> float:
        s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def null_renderer():
    """A :class:`Renderer` whose M, W and G are no-ops (see the module docstring); F runs once (tiny networks)."""
    import torch

    from lp_renderer import Renderer, RendererConfig, RendererNetworks

    class NullRenderer(Renderer):
        def prepare_source(self, image, eye_ratios=None, lip_ratio=None):
            src = super().prepare_source(image, eye_ratios, lip_ratio)
            self._cached = src.info
            # the constant "rendered" frame: the source crop itself at 512x512 (real image content to encode)
            self._frame = torch.nn.functional.interpolate(src.image, size=(512, 512), mode="bilinear")
            return src

        @torch.no_grad()
        def extract_motion(self, images):
            if self._cached is None:  # the source itself (prepare_source, once)
                return super().extract_motion(images)
            x = self.to_tensor(images)  # the crops become M's input, as for the real M
            return self._cached.map(lambda t: t.expand(x.shape[0], *t.shape[1:]))

        @torch.no_grad()
        def warp_decode(self, source, x_d):
            return self._frame.expand(x_d.shape[0], -1, -1, -1)

    nets = RendererNetworks.random(RendererConfig.tiny(), seed=0)  # stitching MLPs are the official size
    r = NullRenderer(nets, device="cpu", _owned=True)
    r._cached = None
    return r


def portrait_624(data: Path, tmp: Path) -> Path:
    import cv2

    img = cv2.imread(str(data / PORTRAIT))
    out = tmp / "portrait_624.png"
    cv2.imwrite(str(out), cv2.resize(img, (624, 624), interpolation=cv2.INTER_AREA))
    return out


def stages_drive(anim, portrait: Path, video: Path, n: int, tmp: Path) -> dict[str, Clock]:
    """Each stage of drive alone over the first ``n`` frames of ``video``."""
    import numpy as np

    from audio2lp import driving as drv
    from audio2lp.media.reader import FrameReader
    from audio2lp.media.writer import VideoWriter
    from lp_renderer.animation import AnimationOptions, driving_keypoints
    from lp_renderer.crop import DRIVING_CROP, iter_crops_for_frames
    from lp_renderer.faces import iter_faces_in_frames
    from lp_renderer.renderer import to_uint8

    r = anim.renderer
    pt = anim.portrait(str(portrait))
    t = {}
    with Clock() as t["decode"]:
        frames = list(FrameReader(video, max_frames=n))
    track = getattr(drv, "track_driving_faces", None)  # the tracker of iter_driving_frames, when it has one
    with Clock() as t["face detection / tracking"]:
        faces = list(track(anim.faces, iter(frames)) if track else iter_faces_in_frames(anim.faces, iter(frames)))
    with Clock() as t["crop + eye/lip ratios"]:
        payloads = (((i, fr, f), f) for i, (fr, f) in enumerate(faces))
        crops = [(c.warp(fr, 256, resize=drv.cv2.INTER_LINEAR), drv._face_ratios(f))
                 for (i, fr, f), c in iter_crops_for_frames(payloads, window=5, **DRIVING_CROP)]
    b = anim.batch_size
    batches = [crops[i:i + b] for i in range(0, len(crops), b)]
    src = pt.faces[0].source
    rendered = []
    with Clock() as t["M input + Algorithm 1 + to_uint8"]:
        ref = None
        for batch in batches:
            info = r.extract_motion(np.stack([c for c, _ in batch]))
            ref = info[0] if ref is None else ref
            x_d = driving_keypoints(r, src, info, ref, AnimationOptions())
            rendered.extend(to_uint8(r.warp_decode(src, x_d)))
    with Clock() as t["paste-back"]:
        out = [pt.composite([img]) for img in rendered]
    with Clock() as t["encode + mux"], VideoWriter(tmp / "stage.mp4", 25, audio=video, audio_fit="video") as w:
        for img in out:
            w.write(img)
    return t


def stages_speak(anim, portrait: Path, wav: Path, tmp: Path) -> tuple[dict[str, Clock], int]:
    import numpy as np

    from audio2lp.media.audio import load_audio
    from audio2lp.media.writer import VideoWriter
    from audio2lp.speech import speech_plan
    from lp_renderer.renderer import to_uint8

    r = anim.renderer
    pt = anim.portrait(str(portrait))
    t = {}
    with Clock() as t["audio load"]:
        audio = load_audio(wav)
    n = max(1, int(round(len(audio) / 16000 * 25)))
    with Clock() as t["speech motion (Whisper features, default motion model, blinks)"]:
        plan = speech_plan(audio, n, 25.0, device=r.device, motion_model=None, seed=0, style=0, blink=True,
                           blink_rate=None, pose_scale=1.0, template=None, whisper_checkpoint=None,
                           progress=False, models=anim.speech_models)
    rendered = []
    with Clock() as t["keypoints (retargeting, stitching) + to_uint8"]:
        pf = pt.faces[0]
        for s in range(0, n, anim.batch_size):
            idx = np.arange(s, min(n, s + anim.batch_size))
            rendered.extend(to_uint8(r.warp_decode(pf.source, plan.keypoints(r, pf, idx))))
    with Clock() as t["paste-back"]:
        out = [pt.composite([img]) for img in rendered]
    with Clock() as t["encode + mux"], VideoWriter(tmp / "stage.mp4", 25, audio=wav, audio_fit="video") as w:
        for img in out:
            w.write(img)
    return t, n


def null_whisper() -> None:
    """Replace the Whisper encoder's work by a null network (zero features of the right shape), process-wide."""
    import numpy as np
    import torch

    from audio2lp.streaming import _SharedPassEncoder
    from audio2lp.whisper.features import WhisperEncoder, num_tokens
    from audio2lp.whisper.stream import StreamingEncoder

    def blocks(self, x):  # (B, window, D) -> (B, block, self.dim): the shared pass's dim is 2 D
        return np.zeros((x.shape[0], self.config.block, self.dim), np.float32)

    StreamingEncoder._stem = lambda self, chunk: torch.zeros(1, self.config.window, self.whisper.dim)
    StreamingEncoder._blocks = _SharedPassEncoder._blocks = blocks
    WhisperEncoder.encode = lambda self, audio, *a, **k: np.zeros((num_tokens(len(audio)), self.dim), np.float32)


def table(title: str, stages: dict[str, Clock], total: Clock, n: int) -> list[str]:
    lines = [f"| {title} | wall ms/frame | CPU ms/frame |", "|---|---|---|"]
    for k, c in stages.items():
        lines.append(f"| {k} | {1e3 * c.wall / n:.2f} | {1e3 * c.cpu / n:.2f} |")
    lines.append(f"| sum of the stages | {1e3 * sum(c.wall for c in stages.values()) / n:.2f} | "
                 f"{1e3 * sum(c.cpu for c in stages.values()) / n:.2f} |")
    lines.append(f"| **whole command** (stages overlapped, {n} frames) | **{1e3 * total.wall / n:.2f}** | "
                 f"{1e3 * total.cpu / n:.2f} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=None, help="driving frames (default: the whole video, 225)")
    ap.add_argument("--seconds", type=float, default=10.0, help="seconds of speech for speak (default 10)")
    ap.add_argument("--batch-size", type=int, default=8, help="frames per batch (default 8, the CUDA default)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", choices=("drive", "speak"))
    ap.add_argument("--serial-motion", action="store_true",
                    help="speak makes its motion before rendering (the CPU renderer's default) instead of in the "
                         "background (the GPU default, which these null networks stand for)")
    ap.add_argument("--null-whisper", action="store_true",
                    help="the Whisper encoder as a null network too (on a CUDA renderer it runs on the GPU)")
    ap.add_argument("--face-backend", default="dlib", choices=("dlib", "insightface", "auto"))
    args = ap.parse_args()

    from lp_renderer.fast.cpu_memory import enable_cpu_memory_settings

    enable_cpu_memory_settings()
    import torch

    from audio2lp.api import Animator
    from audio2lp.media.probe import probe_video

    torch.set_num_threads(args.threads)
    if args.null_whisper:
        null_whisper()
    data = Path(os.environ.get("AUDIO2LP_TEST_DATA", REPO.parent / "shared" / "data"))
    if not (data / DRIVING).is_file():
        sys.exit(f"real test data not found at {data} (set AUDIO2LP_TEST_DATA)")
    lines = [f"overhead benchmark: networks replaced by no-ops{' (Whisper too)' if args.null_whisper else ''}; "
             f"{cpu_model()}, {os.cpu_count()} cores, "
             f"{args.threads} torch threads, batch {args.batch_size}, torch {torch.__version__}, "
             f"Python {platform.python_version()}, load average before the run "
             f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", ""]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        portrait = portrait_624(data, tmp)
        anim = Animator(renderer=null_renderer(), face_backend=args.face_backend, batch_size=args.batch_size,
                        progress=False)
        anim.motion_in_background = not args.serial_motion  # as on a GPU (the CPU is free while frames render)
        anim.faces  # noqa: B018 - load the face models before timing
        anim.speech_models.landmark()  # and the speech models (a service keeps them loaded)
        if args.only in (None, "drive"):
            video = data / DRIVING
            n = min(args.frames or 10**9, probe_video(video).n_frames)
            stages = stages_drive(anim, portrait, video, n, tmp)
            with Clock() as total:
                res = anim.drive(str(portrait), video, tmp / "drive.mp4", max_frames=n)
            assert res.n_frames == n
            lines += [f"drive: {DRIVING} (512x512, 25 fps) onto {PORTRAIT} resized to 624x624, {n} frames", ""]
            lines += table("drive stage", stages, total, n) + [""]
        if args.only in (None, "speak"):
            from benchmarks.speak import real_speech

            wav = real_speech(sorted((data / "speech").glob("*.wav")), args.seconds, tmp / "speech.wav")
            stages, n = stages_speak(anim, portrait, wav, tmp)
            with Clock() as total:
                res = anim.speak(str(portrait), wav, tmp / "speak.mp4")
            assert res.n_frames == n
            lines += [f"speak: {args.seconds:g} s of real speech ({PORTRAIT} resized to 624x624), {n} frames", ""]
            lines += table("speak stage", stages, total, n) + [""]
    lines += [f"Command: `{shlex.join(['python', 'benchmarks/overhead.py', *sys.argv[1:]])}`; load average after "
              f"the run {' '.join(f'{x:.2f}' for x in os.getloadavg())}"]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
