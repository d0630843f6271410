"""The Python API: :class:`Animator` orchestrates a run (portrait, driving motion or speech plan, renderer, video
writer); the work is done by :mod:`audio2lp.portrait`, :mod:`audio2lp.driving`, :mod:`audio2lp.speech`,
:mod:`lp_renderer` and :mod:`audio2lp.media`. Options are checked against :mod:`audio2lp.options`; the front doors
(:mod:`audio2lp.apps`) are thin layers over this class.

    from audio2lp import Animator
    anim = Animator(weights="~/liveportrait-weights")
    anim.drive("portrait.jpg", "driving.mp4", "out.mp4")
    anim.speak("portrait.jpg", "speech.wav", "talk.mp4")
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from audio2lp import options
from audio2lp.driving import DrivingFrame, info_to_motion, iter_driving_frames, motion_to_info, open_driving
from audio2lp.media.atomic import atomic_output, check_output_path
from audio2lp.media.queue import Prefetcher
from audio2lp.media.writer import VideoWriter
from audio2lp.models.motion import MotionTemplate, save_motion_template
from audio2lp.options import OptionError
from audio2lp.portrait import IMAGE_SUFFIXES, Portrait, prepare_portrait
from audio2lp.weights_store import resolve_insightface_dir, resolve_weights_dir, weights_hint
from lp_renderer.animation import AnimationOptions, driving_keypoints
from lp_renderer.errors import InputError
from lp_renderer.faces import FaceBackend, get_face_backend
from lp_renderer.renderer import Renderer

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv")


@dataclass
class RenderResult:
    """What a run produced."""

    output: Path
    n_frames: int
    fps: float
    has_audio: bool
    template: Path | None = None
    extra: dict = field(default_factory=dict)


ProgressCallback = Callable[[int, int], None]


class _Stage:
    """A one-step progress bar for a stage a person waits on without per-item progress (loading the audio,
    finishing the video file)."""

    def __init__(self, enabled: bool, desc: str):
        self.enabled, self.desc = enabled, desc

    def __enter__(self):
        from tqdm import tqdm

        self.bar = tqdm(total=1, desc=self.desc, unit="step", disable=not self.enabled, dynamic_ncols=True,
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}")
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.bar.update(1)
        self.bar.close()


class _Progress:
    """A tqdm bar (when enabled) plus an optional ``callback(done, total)``."""

    def __init__(self, enabled: bool, total: int, desc: str, callback: ProgressCallback | None = None):
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=desc, unit="frame", disable=not enabled, dynamic_ncols=True)
        self.total, self.done, self.callback = total, 0, callback

    def update(self, n: int) -> None:
        self.done += n
        self.bar.update(n)
        if self.callback is not None:
            self.callback(self.done, max(self.total, self.done))

    def close(self) -> None:
        self.bar.close()


class Animator:
    """Loads the renderer (once, lazily) and animates portraits.

    weights: the LivePortrait weights folder (official layout; default ``$AUDIO2LP_WEIGHTS`` or the
    cache folder, see :mod:`audio2lp.weights_store`). device: 'cuda', 'cpu' or None (CUDA when available).
    half: float16 for W and G
    (CUDA only; default on CUDA). compile: ``torch.compile`` W and G. face_backend: 'auto', 'dlib' or
    'insightface'. batch_size: frames rendered together (default 8 on CUDA, 1 on the CPU, where larger
    batches are not faster and cost memory: see benchmarks/RESULTS.md). progress: show progress bars.
    A ready :class:`~lp_renderer.Renderer` may be passed instead of weights (tests, notebooks).
    """

    def __init__(self, weights: str | os.PathLike | None = None, *, device: str | None = None,
                 half: bool | None = None, compile: bool = False, face_backend: str = "auto",
                 insightface_dir: str | os.PathLike | None = None, renderer: Renderer | None = None,
                 batch_size: int | None = None, progress: bool = True):
        batch_size = options.check_value("batch_size", batch_size)
        self.weights = weights
        self.device, self.half, self.compile = device, half, compile
        self.face_backend_name = face_backend
        self.insightface_dir = insightface_dir
        self._renderer = renderer
        self._faces: FaceBackend | None = None
        self._batch_size = batch_size
        self.progress = progress

    @property
    def batch_size(self) -> int:
        """Frames rendered together: as given, else 8 on CUDA and 1 on the CPU."""
        if self._batch_size is not None:
            return self._batch_size
        return 8 if self.renderer.device.type == "cuda" else 1

    @batch_size.setter
    def batch_size(self, value: int | None) -> None:
        self._batch_size = options.check_value("batch_size", value)

    @property
    def renderer(self) -> Renderer:
        if self._renderer is None:
            with weights_hint(self.weights):
                self._renderer = Renderer.from_weights(resolve_weights_dir(self.weights), device=self.device,
                                                       half=self.half, compile=self.compile)
        return self._renderer

    @property
    def faces(self) -> FaceBackend:
        """The face backend (created once). ``auto`` finds insightface models in ``insightface_dir``,
        ``$AUDIO2LP_INSIGHTFACE_DIR``, ``<weights folder>/insightface/models/buffalo_l`` or insightface's usual
        folder, where the weights folder is the configured one (``weights``, else ``$AUDIO2LP_WEIGHTS`` or the
        cache)."""
        if self._faces is None:
            weights_dir = resolve_weights_dir(self.weights)  # never raises, even if the folder is missing
            self._faces = get_face_backend(self.face_backend_name, resolve_insightface_dir(self.insightface_dir),
                                           weights_dir=weights_dir)
        return self._faces

    def portrait(self, image, face: str | int = "largest", pasteback: bool = True) -> Portrait:
        """Detect, crop and prepare the portrait's face(s) (done once per portrait)."""
        return prepare_portrait(self.renderer, self.faces, image, face, pasteback=pasteback)

    # ------------------------------------------------------------------------------------ drive
    def drive(self, portrait, driving: str | os.PathLike, output: str | os.PathLike, *,
              face: str | int = "largest", region: str = "all", multiplier: float = 1.0,
              stitching: bool = True, retarget_eyes: bool = False, retarget_lip: bool = False,
              pasteback: bool = True, concat: bool = False, save_template: str | os.PathLike | None = None,
              crf: int = 18, max_frames: int | None = None, audio: str | os.PathLike | None = None,
              progress_callback: ProgressCallback | None = None) -> RenderResult:
        """Animate ``portrait`` with the motion of ``driving`` (a video, an image, a motion template, or a motion
        file from :meth:`motion`).

        The first driving frame is the reference (relative motion, as the official pipeline). The output
        is an H.264 mp4 at the driving fps with the driving video's audio, pasted back into the portrait
        (or the 512x512 crop with ``pasteback=False``); an image when both driving and output are images.
        ``face`` picks the portrait's face(s); the driving video always uses its largest face.
        ``save_template`` writes the extracted motion as an ``.npz`` template for later use (committed
        together with the output: if either fails, neither is left). ``crf``: H.264 quality, 0-51.
        ``progress_callback(done_frames, total_frames)`` is called after every rendered batch.
        A motion file is rendered exactly as :meth:`speak` renders that motion, at its fps, with ``audio`` (a
        speech file) as its sound; ``region``, ``multiplier``, retargeting, ``concat`` and ``save_template`` do
        not apply to it.
        """
        from contextlib import ExitStack

        from audio2lp.speech_motion import is_speech_motion_file

        v = options.check(dict(face=face, region=region, multiplier=multiplier, crf=crf, max_frames=max_frames))
        face, region, multiplier, crf, max_frames = v["face"], v["region"], v["multiplier"], v["crf"], v["max_frames"]
        if is_speech_motion_file(driving):
            unused = [name for name, used in (("region", region != "all"), ("multiplier", multiplier != 1.0),
                                              ("retarget_eyes", retarget_eyes), ("retarget_lip", retarget_lip),
                                              ("concat", concat), ("save_template", save_template is not None))
                      if used]
            if unused:
                raise OptionError(unused[0], "{" + unused[0] + "} does not apply to a motion file (it already "
                                  "holds the motion to render); drop it.")
            if not stitching:
                raise OptionError("stitching", "a motion file is rendered with stitching, as speak renders it; "
                                  "drop {not_stitching}.")
            return self._drive_motion(portrait, driving, output, face=face, pasteback=pasteback, crf=crf,
                                      max_frames=max_frames, audio=audio, progress_callback=progress_callback)
        if audio is not None:
            raise OptionError("audio", "{audio} adds speech to a motion file; a driving video brings its own "
                              "audio. Drop {audio}.")
        anim_options = AnimationOptions(region=region, stitching=stitching, retarget_eyes=retarget_eyes,
                                        retarget_lip=retarget_lip, multiplier=multiplier)
        if not stitching and face == "all":
            raise OptionError("face", "{face} all pastes every face back into the photo, which needs stitching; drop "
                              "{not_stitching}, or pick one face with {face} N or {face} largest.")
        src = open_driving(driving)
        image_out = Path(output).suffix.lower() in IMAGE_SUFFIXES
        if image_out and src.kind != "image":
            raise InputError(f"{output} is an image file, but the driving input is a {src.kind}; write a video "
                             f"(.mp4).")
        out = check_output_path(output, sorted(IMAGE_SUFFIXES) if image_out else VIDEO_SUFFIXES)
        if save_template is not None:
            check_output_path(save_template, (".npz",))
            if src.kind == "template":
                raise OptionError("save_template", "{save_template} needs a driving video or image, not a template.")
        if concat and src.kind == "template":
            raise OptionError("concat", "{concat} shows the driving video beside the result; a template has no "
                              "frames.")
        if (retarget_eyes or retarget_lip) and src.kind == "template":
            tp = src.template
            if (retarget_eyes and tp.eye_ratio is None) or (retarget_lip and tp.lip_ratio is None):
                raise OptionError("retarget_eyes" if retarget_eyes else "retarget_lip",
                                  "this template has no eye/lip ratios, so {retarget_eyes}/{retarget_lip} cannot be "
                                  "used with it.")
        if pasteback and not stitching:
            log.warning("paste-back needs stitching (shoulders would not line up); writing the 512x512 crop")
            pasteback = False
        renderer = self.renderer
        backend = self.faces if src.kind != "template" else None
        pt = prepare_portrait(renderer, self.faces, portrait, face, pasteback=pasteback)
        n_total = src.n_frames if max_frames is None else min(src.n_frames, max_frames)
        # the portrait's --face does not apply to the driving video: it is driven by its largest face
        frames = iter_driving_frames(src, backend, keep_frames=concat, max_frames=max_frames,
                                     progress=self.progress)
        motions, eyes, lips = [], [], []
        state: dict = {}

        def render_batch(batch: list[DrivingFrame]) -> list[np.ndarray]:
            if batch[0].motion is not None:
                info = motion_to_info(np.stack([f.motion for f in batch]), device=renderer.device)
            else:
                info = renderer.extract_motion(np.stack([f.crop_rgb for f in batch]))
            if "reference" not in state:
                state["reference"] = info[0] if src.kind != "image" else None
            eye = np.stack([f.eye_ratio if f.eye_ratio is not None else np.full(2, np.nan, np.float32)
                            for f in batch])
            lip = np.array([f.lip_ratio if f.lip_ratio is not None else np.nan for f in batch], np.float32)
            if save_template is not None:
                motions.append(info_to_motion(info))
                eyes.append(eye)
                lips.append(lip)
            rendered = []
            for pf in pt.faces:
                x_d = driving_keypoints(renderer, pf.source, info, state["reference"], anim_options,
                                        driving_eye_ratio=eye[:, 0], driving_lip_ratio=lip)
                rendered.append(renderer.render(pf.source, x_d, batch_size=len(batch)))
            outs = []
            for j, fr in enumerate(batch):
                img = pt.composite([r[j] for r in rendered], pasteback=pasteback)
                if concat:
                    panel = fr.crop_rgb if fr.crop_rgb is not None else np.zeros((256, 256, 3), np.uint8)
                    h = img.shape[0]
                    img = np.concatenate([cv2.resize(panel, (h, h), interpolation=cv2.INTER_AREA), img], axis=1)
                outs.append(img)
            return outs

        def write_template(tmp: Path) -> None:
            eye = np.concatenate(eyes)
            lip = np.concatenate(lips)
            tp = MotionTemplate(np.concatenate(motions), src.fps, None if np.isnan(eye).any() else eye,
                                None if np.isnan(lip).any() else lip)
            save_motion_template(tmp, tp)

        written = 0
        bar = _Progress(self.progress, n_total, "render", progress_callback)
        # The template goes to a temporary file that is renamed only after the output was committed; any
        # failure before that (rendering, encoding, muxing, writing either file) leaves neither behind.
        with ExitStack() as commit_last:
            template_tmp = None if save_template is None else commit_last.enter_context(atomic_output(save_template))
            try:
                if image_out:
                    batch = list(frames)
                    img = render_batch(batch)[0]
                    if template_tmp is not None:
                        write_template(template_tmp)
                    _write_image_atomic(out, img)
                    written = 1
                    bar.update(1)
                else:
                    audio = src.path if src.kind == "video" and src.has_audio else None
                    with Prefetcher(frames, size=2 * self.batch_size) as pf_iter, \
                            VideoWriter(out, src.fps, crf=crf, audio=audio, audio_fit="video") as writer:
                        batch: list[DrivingFrame] = []
                        for fr in pf_iter:
                            batch.append(fr)
                            if len(batch) == self.batch_size:
                                for img in render_batch(batch):
                                    writer.write(img)
                                written += len(batch)
                                bar.update(len(batch))
                                batch = []
                        if batch:
                            for img in render_batch(batch):
                                writer.write(img)
                            written += len(batch)
                            bar.update(len(batch))
                        if written == 0:
                            raise InputError(f"the driving input {src.path} has no frames to render.")
                        if template_tmp is not None:
                            write_template(template_tmp)
            finally:
                bar.close()
        tpath = None if save_template is None else Path(save_template)
        if tpath is not None:
            log.info("wrote motion template %s (%d frames)", tpath, written)
        log.info("wrote %s (%d frames at %.3g fps)", out, written, src.fps)
        return RenderResult(out, written, src.fps, bool(not image_out and src.kind == "video" and src.has_audio),
                            tpath)


    # ------------------------------------------------------------------------------------ motion
    def motion(self, audio: str | os.PathLike, output: str | os.PathLike, *, fps: float = 25.0,
               expression_scale: float = 1.0, pose_scale: float = 1.0, seed: int = 0, blink: bool = True,
               blink_rate: float | None = None, pose_from: str | os.PathLike | None = None,
               whisper_checkpoint: str | os.PathLike | None = None) -> RenderResult:
        """Write the per-frame motion :meth:`speak` would render for ``audio`` with these options (without
        ``motion_model``) to ``output`` (``.npz``, :mod:`audio2lp.speech_motion`), without loading the renderer or
        any portrait. ``drive(portrait, output, ...)`` renders it; with the same options the frames are those of
        ``speak``."""
        from audio2lp.media.audio import load_audio
        from audio2lp.speech import speech_motion
        from audio2lp.speech_motion import save_speech_motion

        v = options.check(dict(fps=fps, expression_scale=expression_scale, pose_scale=pose_scale, seed=seed,
                               blink_rate=blink_rate))
        out = check_output_path(output, (".npz",))
        template = self._pose_template(pose_from)
        with _Stage(self.progress, "audio"):
            wav = load_audio(audio)
        n_frames = max(1, int(round(len(wav) / 16000 * v["fps"])))
        m = speech_motion(wav, n_frames, v["fps"], seed=v["seed"], pose_scale=v["pose_scale"],
                          expression_scale=v["expression_scale"], blink=blink, blink_rate=v["blink_rate"],
                          template=template, whisper_checkpoint=whisper_checkpoint, device=self.device or "cpu",
                          progress=self.progress)
        save_speech_motion(out, m)
        return RenderResult(out, m.n_frames, m.fps, False, extra={"duration": len(wav) / 16000})

    @staticmethod
    def _pose_template(pose_from):
        if pose_from is None:
            return None
        from audio2lp.driving import load_official_template
        from audio2lp.models.motion import load_motion_template

        return load_official_template(pose_from) if str(pose_from).lower().endswith(".pkl") \
            else load_motion_template(pose_from)

    def _drive_motion(self, portrait, path, output, *, face, pasteback, crf, max_frames, audio,
                      progress_callback) -> RenderResult:
        """``drive`` with a motion file from :meth:`motion`: the same render calls as :meth:`speak`."""
        from audio2lp.speech import SpeechPlan
        from audio2lp.speech_motion import load_speech_motion

        m = load_speech_motion(path)
        out = check_output_path(output, VIDEO_SUFFIXES)
        if audio is not None and not Path(audio).is_file():
            raise OptionError("audio", "{audio} " + options.literal(f"{audio} does not exist; check the path."))
        n_frames = m.n_frames if max_frames is None else min(m.n_frames, max_frames)
        plan = SpeechPlan("landmark", n_frames, landmark=m)
        renderer = self.renderer
        pt = prepare_portrait(renderer, self.faces, portrait, face, pasteback=pasteback)
        self._render_plan(renderer, pt, plan, out, m.fps, crf=crf, audio=audio, pasteback=pasteback,
                          progress_callback=progress_callback)
        log.info("wrote %s (%d frames at %g fps from the motion file %s)", out, n_frames, m.fps, path)
        return RenderResult(out, n_frames, m.fps, audio is not None)

    def _render_plan(self, renderer, pt, plan, out, fps, *, crf, audio, pasteback, progress_callback,
                     expression_scale: float = 1.0, pose_scale: float = 1.0) -> None:
        """Render every frame of ``plan`` for the faces of ``pt`` into the mp4 ``out`` (with ``audio`` if given)."""
        n_frames = plan.n_frames
        bar = _Progress(self.progress, n_frames, "render", progress_callback)
        try:
            with VideoWriter(out, fps, crf=crf, audio=None if audio is None else Path(audio),
                             audio_fit="video") as writer:
                for start in range(0, n_frames, self.batch_size):
                    idx = np.arange(start, min(n_frames, start + self.batch_size))
                    rendered = [renderer.render(pf.source, plan.keypoints(renderer, pf, idx, expression_scale,
                                                                          pose_scale, face_index=i),
                                                batch_size=len(idx))
                                for i, pf in enumerate(pt.faces)]
                    for j in range(len(idx)):
                        writer.write(pt.composite([r[j] for r in rendered], pasteback=pasteback))
                    bar.update(len(idx))
                bar.close()
                with _Stage(self.progress, "write"):  # the encoder's last frames and the audio mux
                    writer.close()
        finally:
            bar.close()

    # ------------------------------------------------------------------------------------ speak
    def speak(self, portrait, audio: str | os.PathLike, output: str | os.PathLike, *,
              motion_model: str | os.PathLike | None = None, face: str | int = "largest", fps: float = 25.0,
              expression_scale: float = 1.0, pose_scale: float = 1.0, seed: int = 0, style: int = 0,
              blink: bool = True, blink_rate: float | None = None, pose_from: str | os.PathLike | None = None,
              pasteback: bool = True, whisper_checkpoint: str | os.PathLike | None = None,
              crf: int = 18, motion_noise: float = 0.0,
              progress_callback: ProgressCallback | None = None) -> RenderResult:
        """Make ``portrait`` say ``audio``.

        With ``motion_model`` (a checkpoint from ``audio2lp-train train``) the model predicts the full motion
        (expression, head pose, translation, scale) and drives the renderer relative to the source:
        the dataset's mean motion maps to the portrait's own pose and expression; ``expression_scale`` and
        ``pose_scale`` scale the deviations; ``motion_noise`` (normalised units, default 0 = deterministic)
        perturbs the frames fed back during generation, seeded by ``seed``. Without it, the shipped landmark
        motion model (:func:`audio2lp.speech.speech_motion`, exactly what :meth:`motion` writes) drives the lips
        and eyes through LivePortrait's retargeting networks and the head (rotation, translation, scale) relative
        to the portrait's own pose: ``seed`` varies the head motion and the blinks (``blink``, ``blink_rate`` per
        minute), ``pose_scale`` scales the head motion (or takes it from the template ``pose_from``) and
        ``expression_scale`` the mouth's opening.
        The mp4 lasts as long as the audio (to the nearest frame) and carries the original audio as AAC.
        ``progress_callback(done_frames, total_frames)`` is called after every rendered batch.
        """
        from audio2lp.media.audio import load_audio
        from audio2lp.speech import speech_plan

        v = options.check(dict(face=face, fps=fps, expression_scale=expression_scale, pose_scale=pose_scale,
                               seed=seed, style=style, blink_rate=blink_rate, crf=crf, motion_noise=motion_noise))
        face, fps, expression_scale, pose_scale = v["face"], v["fps"], v["expression_scale"], v["pose_scale"]
        seed, style, blink_rate, crf, motion_noise = v["seed"], v["style"], v["blink_rate"], v["crf"], v["motion_noise"]
        if motion_model is not None and pose_from is not None:
            raise OptionError("pose_from", "{pose_from} takes the head motion from a template for the built-in "
                              "lip-sync model; it cannot be combined with {motion_model}, which predicts the head "
                              "motion itself.")
        out = check_output_path(output, VIDEO_SUFFIXES)
        template = self._pose_template(pose_from)
        if motion_model is not None:
            from audio2lp.models.motion_model import read_motion_model_metadata

            meta = read_motion_model_metadata(motion_model)  # fail fast on a bad checkpoint
            n_styles = meta["config"].n_styles
            if not 0 <= style < n_styles:
                raise OptionError("style", f"{{style}} must be between 0 and {n_styles - 1} for this motion model, "
                                  f"not {style}.")
        with _Stage(self.progress, "audio"):
            wav = load_audio(audio)
        duration = len(wav) / 16000
        n_frames = max(1, int(round(duration * fps)))
        renderer = self.renderer
        pt = prepare_portrait(renderer, self.faces, portrait, face, pasteback=pasteback)
        plan = speech_plan(wav, n_frames, fps, device=renderer.device, motion_model=motion_model, seed=seed,
                           style=style, blink=blink, blink_rate=blink_rate, pose_scale=pose_scale, template=template,
                           portrait=pt, whisper_checkpoint=whisper_checkpoint, motion_noise=motion_noise,
                           expression_scale=expression_scale, progress=self.progress)

        self._render_plan(renderer, pt, plan, out, fps, crf=crf, audio=audio, pasteback=pasteback,
                          progress_callback=progress_callback, expression_scale=expression_scale,
                          pose_scale=pose_scale)
        log.info("wrote %s (%d frames at %g fps, %.2f s of audio)", out, n_frames, fps, duration)
        return RenderResult(out, n_frames, fps, True, extra={"duration": duration, "mode": plan.mode})


def _write_image_atomic(path: Path, rgb: np.ndarray) -> None:
    with atomic_output(path) as tmp:
        ok = cv2.imwrite(str(tmp), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        if not ok:
            raise InputError(f"could not write the image {path}; use a .png or .jpg name.")
