"""The Python API: :class:`Animator` orchestrates a run (portrait, driving motion or speech plan, renderer, video
writer); the work is done by :mod:`audio2lp.portrait`, :mod:`audio2lp.driving`, :mod:`audio2lp.speech`,
:mod:`lp_renderer` and :mod:`audio2lp.media`. Options are checked against :mod:`audio2lp.options`; the front doors
(:mod:`audio2lp.apps`) are thin layers over this class. The file is longer than 600 lines because it is the whole
public surface in one class (speak, drive, edit, motion and their photo and video variants), each method only
checking its options and wiring the stages together.

    from audio2lp import Animator
    anim = Animator(weights="~/liveportrait-weights")
    anim.drive("portrait.jpg", "driving.mp4", "out.mp4")
    anim.speak("portrait.jpg", "speech.wav", "talk.mp4")
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from audio2lp import options
from audio2lp.driving import DrivingFrame, info_to_motion, iter_driving_frames, motion_to_info, open_driving
from audio2lp.media.atomic import atomic_output, check_output_path
from audio2lp.media.queue import Prefetcher, Worker
from audio2lp.media.writer import VideoWriter
from audio2lp.models.motion import MotionTemplate, save_motion_template
from audio2lp.options import OptionError, literal
from audio2lp.portrait import IMAGE_SUFFIXES, Portrait, check_crop_output, prepare_portrait
from audio2lp.speech import SpeechModels, speech_plan
from audio2lp.video_portrait import is_video_portrait
from audio2lp.weights_store import resolve_insightface_dir, resolve_weights_dir, weights_hint
from lp_renderer.animation import AnimationOptions, driving_keypoints
from lp_renderer.editing import PortraitEdit
from lp_renderer.errors import InputError
from lp_renderer.faces import FaceBackend, get_face_backend
from lp_renderer.renderer import DeviceUnavailable, Renderer, resolve_device

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv")
#: what ``edit`` writes (the formats OpenCV encodes)
EDIT_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


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


def _device_error(e: DeviceUnavailable, device: str | None) -> OptionError:
    """A missing GPU in the terms of the option that asked for it."""
    if e.option == "half":
        if torch.cuda.is_available():
            return OptionError("half", "{half} runs on CUDA only, but the CPU was chosen; drop {half} or use {device} "
                               "cuda.")
        return OptionError("half", "{half} (float16) needs a CUDA GPU, and none is available here; drop {half} (on "
                           "the CPU the networks run in float32).")
    if not torch.cuda.is_available():
        return OptionError("device", "{device} cuda needs a CUDA GPU, and none is available here (or PyTorch was "
                           "installed without CUDA support); use {device} cpu, or {device} auto to use a GPU only "
                           "when there is one.")
    return OptionError("device", "{device} " + literal(f"{device}: {e}"))


def _gpu_memory_guard(method):
    """Running out of GPU memory inside ``method`` becomes an :class:`OptionError` saying what to do (a smaller
    batch size, freeing the GPU, or the CPU) instead of PyTorch's traceback."""

    @functools.wraps(method)
    def guarded(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except torch.cuda.OutOfMemoryError as e:
            log.debug("out of GPU memory: %s", e)
        # outside the except block: the failed frames and their GPU tensors can be freed before the cache is emptied
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        raise self._out_of_memory()

    return guarded


class Animator:
    """Loads the renderer (once, lazily) and animates portraits.

    weights: the LivePortrait weights folder (official layout; default ``$AUDIO2LP_WEIGHTS`` or the
    cache folder, see :mod:`audio2lp.weights_store`). device: 'cuda', 'cpu' or None (CUDA when available).
    half: float16 for W and G
    (CUDA only; default on CUDA). compile: ``torch.compile`` W and G. face_backend: 'auto', 'dlib' or
    'insightface'. batch_size: frames rendered together (default 8 on CUDA, 1 on the CPU, where larger
    batches are not faster and cost memory: see benchmarks/RESULTS.md). progress: show progress bars.
    A ready :class:`~lp_renderer.Renderer` may be passed instead of weights (tests, notebooks). backend:
    ``"pytorch"`` or ``"onnxruntime"`` (the networks exported to ONNX, from ``onnx_dir`` or exported into the cache
    once: :mod:`audio2lp.onnx_export`).
    """

    def __init__(self, weights: str | os.PathLike | None = None, *, device: str | None = None,
                 half: bool | None = None, compile: bool = False, face_backend: str = "auto",
                 insightface_dir: str | os.PathLike | None = None, renderer: Renderer | None = None,
                 batch_size: int | None = None, progress: bool = True, backend: str = "pytorch",
                 onnx_dir: str | os.PathLike | None = None):
        batch_size = options.check_value("batch_size", batch_size)
        if renderer is None:
            try:
                resolve_device(device, half)  # a missing GPU is reported now, before anything loads
            except DeviceUnavailable as e:
                raise _device_error(e, device) from None
        self.backend = options.check_value("backend", backend)
        if backend == "onnxruntime" and (compile or half):
            raise options.OptionError("backend", "{backend} onnxruntime runs the exported float32 networks; it "
                                      "cannot be combined with {compile} or {half}.")
        self.onnx_dir = onnx_dir
        self.weights = weights
        self.device, self.half, self.compile = device, half, compile
        self.face_backend_name = face_backend
        self.insightface_dir = insightface_dir
        self._renderer = renderer
        self._faces: FaceBackend | None = None
        self._batch_size = batch_size
        self.progress = progress
        self.speech_models = SpeechModels()  # Whisper and the speech models, loaded once for every speak
        self._motion_in_background: bool | None = None

    @property
    def motion_in_background(self) -> bool:
        """Whether ``speak`` makes its default motion in a background thread while the portrait is prepared and
        frames render (the rows are the same bits either way): as set, else on when the renderer runs on a GPU
        (the CPU is then free while frames render) and off on the CPU (the renderer needs every core there)."""
        if self._motion_in_background is not None:
            return self._motion_in_background
        dev = getattr(self.renderer, "device", None)
        return dev is not None and torch.device(dev).type != "cpu"

    @motion_in_background.setter
    def motion_in_background(self, value: bool | None) -> None:
        self._motion_in_background = None if value is None else bool(value)

    @property
    def batch_size(self) -> int:
        """Frames rendered together: as given, else 8 on CUDA and 1 on the CPU."""
        if self._batch_size is not None:
            return self._batch_size
        return 8 if self.renderer.device.type == "cuda" else 1

    @batch_size.setter
    def batch_size(self, value: int | None) -> None:
        self._batch_size = options.check_value("batch_size", value)

    def _out_of_memory(self) -> OptionError:
        n = self._batch_size
        if n is None and self._renderer is not None:
            n = self.batch_size
        if n is None:
            return OptionError("batch_size", "the GPU ran out of memory; use a smaller {batch_size}, free the GPU's "
                               "memory (close other programs that use it), or use {device} cpu.")
        if n > 1:
            return OptionError("batch_size", f"the GPU ran out of memory rendering {n} frames at a time; use a smaller "
                               f"{{batch_size}} (e.g. {n // 2}) or free the GPU's memory (close other programs that "
                               f"use it).")
        return OptionError("device", "the GPU ran out of memory even rendering one frame at a time; free the GPU's "
                           "memory (close other programs that use it) or use {device} cpu.")

    @property
    def renderer(self) -> Renderer:
        if self._renderer is None and self.backend == "onnxruntime":
            from audio2lp.onnx_export import onnx_renderer

            with weights_hint(self.weights):
                self._renderer = onnx_renderer(resolve_weights_dir(self.weights), self.onnx_dir, self.device)
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

    def portrait(self, image, face: str | int = "largest", pasteback: bool = True,
                 max_portrait_size: int = 1280, crop_scale: float | None = None) -> Portrait:
        """Load the portrait (longer side scaled down to ``max_portrait_size`` pixels, sides rounded down to even),
        detect, crop and prepare its face(s) (done once per portrait; :meth:`edit` takes the result, so that several
        edits of one photo share it). ``crop_scale``: the crop's size relative to the face (default 2.3, as speak
        and drive)."""
        face = options.check_value("face", face)
        max_portrait_size = options.check_value("max_portrait_size", max_portrait_size)
        crop_scale = None if crop_scale is None else options.check_value("crop_scale", crop_scale)
        return prepare_portrait(self.renderer, self.faces, image, face, pasteback=pasteback,
                                max_size=max_portrait_size, crop_scale=crop_scale)

    # ------------------------------------------------------------------------------------ drive
    @_gpu_memory_guard
    def drive(self, portrait, driving: str | os.PathLike, output: str | os.PathLike, *,
              face: str | int = "largest", region: str = "all", multiplier: float = 1.0,
              stitching: bool = True, retarget_eyes: bool = False, retarget_lip: bool = False,
              pasteback: bool = True, concat: bool = False, save_template: str | os.PathLike | None = None,
              crf: int = 18, max_frames: int | None = None, max_portrait_size: int = 1280,
              pitch: float = 0.0, yaw: float = 0.0, roll: float = 0.0, mov_x: float = 0.0, mov_y: float = 0.0,
              mov_z: float = 1.0, pouting: float = 0.0, pursing: float = 0.0, grin: float = 0.0,
              lip_open: float = 0.0, smile: float = 0.0, wink: float = 0.0, eyebrow: float = 0.0,
              gaze_x: float = 0.0, gaze_y: float = 0.0,
              driving_smooth_observation_variance: float = 3e-7, source_video_eye_retargeting: bool = False,
              audio_priority: str = "driving",
              audio: str | os.PathLike | None = None,
              progress_callback: ProgressCallback | None = None) -> RenderResult:
        """Animate ``portrait`` with the motion of ``driving`` (a video, an image, a motion template, or a motion
        file from :meth:`motion`).

        The first driving frame is the reference (relative motion, as the official pipeline). The output
        is an H.264 mp4 at the driving fps with the driving video's audio, pasted back into the portrait
        (or the 512x512 crop with ``pasteback=False``); an image when both driving and output are images.
        ``face`` picks the portrait's face(s); the driving video always uses its largest face.
        ``save_template`` writes the extracted motion as an ``.npz`` template for later use (committed
        together with the output: if either fails, neither is left). ``crf``: H.264 quality, 0-51.
        ``max_portrait_size``: a larger portrait is scaled down to this longer side first (as the official
        pipeline; 0: no cap), so the pasted-back output has that size.
        ``progress_callback(done_frames, total_frames)`` is called after every rendered batch.
        The editing sliders (``smile``, ``gaze_x``, ``pitch``, ... as :meth:`edit`, without the target ratios) are
        constant offsets: the driving motion is applied relative to the portrait edited by them (see
        :mod:`lp_renderer.animation`), so they add to the driven expression and pose in every frame.

        ``portrait`` may be a video (LivePortrait's source-video mode): every frame of it is a source, the driving
        expression and rotation are transferred to it relative to the first driving frame and smoothed
        (``driving_smooth_observation_variance``, 0 = none), each frame keeps its own scale and position, and the
        result is pasted back into the video's frames at its frame rate, as long as the shorter of the two.
        ``source_video_eye_retargeting`` keeps the eyes as open as in its first frame; ``audio_priority``
        ('driving' or 'source') picks whose audio the result carries when both have one. The driving input is then
        a video or a template.
        A motion file is rendered exactly as :meth:`speak` renders that motion, at its fps, with ``audio`` (a
        speech file) as its sound; ``region``, ``multiplier``, retargeting, ``concat`` and ``save_template`` do
        not apply to it.
        """
        from contextlib import ExitStack

        from audio2lp.speech_motion import is_speech_motion_file

        edit = _sliders("drive", locals())
        v = options.check(dict(face=face, region=region, multiplier=multiplier, crf=crf, max_frames=max_frames,
                               max_portrait_size=max_portrait_size,
                               driving_smooth_observation_variance=driving_smooth_observation_variance,
                               audio_priority=audio_priority))
        face, region, multiplier, crf, max_frames = v["face"], v["region"], v["multiplier"], v["crf"], v["max_frames"]
        video_portrait = is_video_portrait(portrait)
        if not video_portrait:
            check_portrait_options("drive", locals(), video=False)
        if is_speech_motion_file(driving) and not video_portrait:
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
                                      max_frames=max_frames, audio=audio, progress_callback=progress_callback,
                                      max_portrait_size=v["max_portrait_size"], edit=edit)
        if audio is not None:
            raise OptionError("audio", "{audio} adds speech to a motion file; a driving video brings its own "
                              "audio. Drop {audio}.")
        anim_options = AnimationOptions(region=region, stitching=stitching, retarget_eyes=retarget_eyes,
                                        retarget_lip=retarget_lip, multiplier=multiplier)
        _check_stitching(face, stitching)
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
        pasteback = _pasteback_needs_stitching(pasteback, stitching)
        if video_portrait:
            check_portrait_options("drive", locals(), video=True)
            if image_out or src.kind == "image":
                raise InputError("a portrait video is driven by a driving video or a motion template, and gives a "
                                 "video: give a driving video (or .npz/.pkl template) and an .mp4 output.")
            return self._drive_video(
                Path(portrait), src, out, face=face, anim_options=anim_options, pasteback=pasteback, concat=concat,
                save_template=save_template, crf=crf, max_frames=max_frames,
                variance=v["driving_smooth_observation_variance"], eye_retargeting=source_video_eye_retargeting,
                audio_priority=v["audio_priority"], progress_callback=progress_callback)
        renderer = self.renderer
        backend = self.faces if src.kind != "template" else None
        pt = prepare_portrait(renderer, self.faces, portrait, face, pasteback=pasteback,
                              max_size=v["max_portrait_size"])
        n_total = src.n_frames if max_frames is None else min(src.n_frames, max_frames)
        # the portrait's --face does not apply to the driving video: it is driven by its largest face
        frames = iter_driving_frames(src, backend, keep_frames=concat, max_frames=max_frames,
                                     progress=self.progress)
        motions, eyes, lips = [], [], []
        state: dict = {}

        def render_batch(batch: list[DrivingFrame]) -> tuple[list[np.ndarray], list[np.ndarray | None]]:
            """The rendered 512x512 crops of a batch (one (B, 512, 512, 3) array per portrait face) and the
            driving crops to show beside them (``concat``)."""
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
                                        driving_eye_ratio=eye[:, 0], driving_lip_ratio=lip, edit=edit)
                rendered.append(renderer.render(pf.source, x_d, batch_size=len(batch)))
            return rendered, [fr.crop_rgb if concat else None for fr in batch]

        def compose(rendered: list[np.ndarray], panels: list[np.ndarray | None]) -> list[np.ndarray]:
            """The output frames of a batch: paste-back (and the driving crop beside it with ``concat``)."""
            outs = []
            for j, panel in enumerate(panels):
                img = pt.composite([r[j] for r in rendered], pasteback=pasteback)
                if concat:
                    panel = panel if panel is not None else np.zeros((256, 256, 3), np.uint8)
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
                    img = compose(*render_batch(batch))[0]
                    if template_tmp is not None:
                        write_template(template_tmp)
                    _write_image_atomic(out, img)
                    written = 1
                    bar.update(1)
                else:
                    audio = src.path if src.kind == "video" and src.has_audio else None
                    # decoding and face tracking run ahead in one thread, paste-back and encoding behind in others,
                    # so this thread only feeds the renderer
                    with Prefetcher(frames, size=2 * self.batch_size) as pf_iter, \
                            VideoWriter(out, src.fps, crf=crf, audio=audio, audio_fit="video") as writer, \
                            Worker(lambda item: [writer.write(img) for img in compose(*item)], size=2,
                                   name="audio2lp-paste-back") as sink:
                        batch: list[DrivingFrame] = []
                        for fr in pf_iter:
                            batch.append(fr)
                            if len(batch) == self.batch_size:
                                sink.put(render_batch(batch))
                                written += len(batch)
                                bar.update(len(batch))
                                batch = []
                        if batch:
                            sink.put(render_batch(batch))
                            written += len(batch)
                            bar.update(len(batch))
                        sink.close()
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
                          progress=self.progress, models=self.speech_models)
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
                      progress_callback, max_portrait_size: int = 1280,
                      edit: PortraitEdit | None = None) -> RenderResult:
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
        pt = prepare_portrait(renderer, self.faces, portrait, face, pasteback=pasteback, max_size=max_portrait_size)
        self._render_plan(renderer, pt, plan, out, m.fps, crf=crf, audio=audio, pasteback=pasteback,
                          progress_callback=progress_callback, edit=edit)
        log.info("wrote %s (%d frames at %g fps from the motion file %s)", out, n_frames, m.fps, path)
        return RenderResult(out, n_frames, m.fps, audio is not None)

    def _render_plan(self, renderer, pt, plan, out, fps, *, crf, audio, pasteback, progress_callback,
                     expression_scale: float = 1.0, pose_scale: float = 1.0, edit: PortraitEdit | None = None) -> None:
        """Render every frame of ``plan`` for the faces of ``pt`` into the mp4 ``out`` (with ``audio`` if given);
        ``edit``: constant slider offsets."""
        n_frames = plan.n_frames
        bar = _Progress(self.progress, n_frames, "render", progress_callback)
        try:
            def compose_and_write(rendered: list[np.ndarray]) -> None:
                for j in range(len(rendered[0])):
                    writer.write(pt.composite([r[j] for r in rendered], pasteback=pasteback))

            # paste-back and encoding run in threads of their own while the next batch renders
            with VideoWriter(out, fps, crf=crf, audio=None if audio is None else Path(audio),
                             audio_fit="video") as writer, \
                    Worker(compose_and_write, size=2, name="audio2lp-paste-back") as sink:
                for start in range(0, n_frames, self.batch_size):
                    idx = np.arange(start, min(n_frames, start + self.batch_size))
                    sink.put([renderer.render(pf.source, plan.keypoints(renderer, pf, idx, expression_scale,
                                                                        pose_scale, face_index=i, edit=edit),
                                              batch_size=len(idx))
                              for i, pf in enumerate(pt.faces)])
                    bar.update(len(idx))
                sink.close()
                bar.close()
                with _Stage(self.progress, "write"):  # the encoder's last frames and the audio mux
                    writer.close()
        finally:
            bar.close()

    # ------------------------------------------------------------------------------------ speak
    @_gpu_memory_guard
    def speak(self, portrait, audio: str | os.PathLike, output: str | os.PathLike, *,
              motion_model: str | os.PathLike | None = None, face: str | int = "largest", fps: float = 25.0,
              expression_scale: float = 1.0, pose_scale: float = 1.0, seed: int = 0, style: int = 0,
              blink: bool = True, blink_rate: float | None = None, pose_from: str | os.PathLike | None = None,
              pasteback: bool = True, whisper_checkpoint: str | os.PathLike | None = None,
              crf: int = 18, motion_noise: float = 0.0, max_portrait_size: int = 1280,
              pitch: float = 0.0, yaw: float = 0.0, roll: float = 0.0, mov_x: float = 0.0, mov_y: float = 0.0,
              mov_z: float = 1.0, pouting: float = 0.0, pursing: float = 0.0, grin: float = 0.0,
              lip_open: float = 0.0, smile: float = 0.0, wink: float = 0.0, eyebrow: float = 0.0,
              gaze_x: float = 0.0, gaze_y: float = 0.0,
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
        ``expression_scale`` the mouth's opening. An option that would do nothing on the path taken is refused
        (OptionError, see :func:`audio2lp.options.check_speak_mode`).
        The mp4 lasts as long as the audio (to the nearest frame) and carries the original audio as AAC.
        ``max_portrait_size``: as for :meth:`drive`.
        ``progress_callback(done_frames, total_frames)`` is called after every rendered batch.
        The editing sliders (``smile``, ``gaze_x``, ``pitch``, ... as :meth:`edit`, without the target ratios) are
        constant offsets: the generated motion is applied relative to the portrait edited by them (expression +
        offsets, head pose + angles, scale x ``mov_z``), so a talking head can smile or look aside throughout.

        ``portrait`` may be a video (dubbing): the person in it says ``audio``. Every output frame keeps its source
        frame's head pose, eyes and expression, and the mouth follows the speech (the lip-sync model's opening,
        set relative to each frame's own, so the video's own mouth motion is replaced); the output has the video's
        size and frame rate and lasts as long as the audio (the video plays forward and backward as often as
        needed, or is cut). ``face`` (one face, followed through the video), ``seed``, ``pasteback``,
        ``whisper_checkpoint`` and ``crf`` apply; the options of the photo's motion do not.
        """
        from audio2lp.media.audio import load_audio

        edit = _sliders("speak", locals())
        v = options.check(dict(face=face, fps=fps, expression_scale=expression_scale, pose_scale=pose_scale,
                               seed=seed, style=style, blink_rate=blink_rate, crf=crf, motion_noise=motion_noise,
                               max_portrait_size=max_portrait_size))
        face, fps, expression_scale, pose_scale = v["face"], v["fps"], v["expression_scale"], v["pose_scale"]
        seed, style, blink_rate, crf, motion_noise = v["seed"], v["style"], v["blink_rate"], v["crf"], v["motion_noise"]
        if is_video_portrait(portrait):
            check_portrait_options("speak", locals(), video=True)
            return self._speak_video(Path(portrait), audio, output, face=face, seed=seed, pasteback=pasteback,
                                     crf=crf, whisper_checkpoint=whisper_checkpoint,
                                     progress_callback=progress_callback)
        options.check_speak_mode("lipsync" if motion_model is None else "motion-model",
                                 dict(v, blink=blink, pose_from=pose_from, whisper_checkpoint=whisper_checkpoint))
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
        plan = None
        if motion_model is None and self.motion_in_background:  # made while the portrait is prepared and the first
            from audio2lp.streaming import start_speech_plan  # frames render

            plan = start_speech_plan(wav, n_frames, fps, template=template, seed=seed, pose_scale=pose_scale,
                                     expression_scale=expression_scale, blink=blink, blink_rate=blink_rate,
                                     whisper_checkpoint=whisper_checkpoint, device=renderer.device,
                                     models=self.speech_models)
        try:
            pt = prepare_portrait(renderer, self.faces, portrait, face, pasteback=pasteback,
                                  max_size=v["max_portrait_size"])
            if plan is None:
                plan = speech_plan(wav, n_frames, fps, device=renderer.device, motion_model=motion_model, seed=seed,
                                   style=style, blink=blink, blink_rate=blink_rate, pose_scale=pose_scale,
                                   template=template, whisper_checkpoint=whisper_checkpoint, motion_noise=motion_noise,
                                   expression_scale=expression_scale, progress=self.progress,
                                   models=self.speech_models)
            self._render_plan(renderer, pt, plan, out, fps, crf=crf, audio=audio, pasteback=pasteback,
                              progress_callback=progress_callback, expression_scale=expression_scale,
                              pose_scale=pose_scale, edit=edit)
        finally:
            if plan is not None:
                plan.close()
        log.info("wrote %s (%d frames at %g fps, %.2f s of audio)", out, n_frames, fps, duration)
        return RenderResult(out, n_frames, fps, True, extra={"duration": duration, "mode": plan.mode})

    # ------------------------------------------------------------------------------------ stream
    #: speak options a stream cannot take (the default motion at 25 fps only), with why
    _NOT_STREAMED = {"motion_model": "a motion model generates the whole clip at once",
                     "fps": "a stream is 25 fps (the default motion's own rate)",
                     "pose_from": "a motion template's head motion is not streamed yet",
                     "style": "it acts with a motion model only", "motion_noise": "it acts with a motion model only",
                     "crf": "a stream hands out frames, not an mp4", "progress_callback": "a stream yields frames"}

    def stream(self, portrait, chunks, *, lookahead_ms: int | None = None, **speak_options):
        """Make ``portrait`` say speech that arrives in chunks: a :class:`~audio2lp.streaming.SpeakStream` of
        frames, each as soon as it is rendered (see :mod:`audio2lp.streaming`).

        ``chunks``: any iterable of 16 kHz mono float32 arrays of any sizes, pulled lazily as the stream needs
        audio (its end is the end of the speech). ``lookahead_ms``: the fixed look-ahead (None: the default
        motion's minimum, 240 ms for the shipped model; at most 300). ``speak_options``: as :meth:`speak` for a
        photo (``face``, ``seed``, ``expression_scale``, ``pose_scale``, ``blink``, ``blink_rate``, ``pasteback``,
        ``whisper_checkpoint``, ``max_portrait_size`` and the editing sliders). The frames equal ``speak``'s for the
        same speech and options, except the lip within :data:`audio2lp.streaming.LIP_TOLERANCE`. Bad portraits and
        options raise before the first chunk is pulled::

            with animator.stream("portrait.jpg", chunks) as s:
                for frame in s:
                    show(frame.image, frame.audio)
        """
        import inspect

        from audio2lp.streaming import SpeakStream, SpeechMotionStream

        params = inspect.signature(Animator.speak).parameters
        for name in speak_options:
            if name not in params or name in ("self", "portrait", "audio", "output"):
                raise InputError(f"{name} is not an option of speak; drop it.")
            if name in self._NOT_STREAMED and speak_options[name] != params[name].default:
                why = self._NOT_STREAMED[name]
                if name in options.OPTIONS:
                    raise OptionError(name, "{" + name + "} does not apply to a stream: " + why + "; drop it.")
                raise InputError(f"{name} does not apply to a stream: {why}; drop it.")
        values = {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}
        values.update(speak_options)
        edit = _sliders("speak", values)
        v = options.check({k: values[k] for k in ("face", "expression_scale", "pose_scale", "seed", "blink_rate",
                                                  "max_portrait_size")})
        options.check_speak_mode("lipsync", dict(v, blink=values["blink"]))
        if is_video_portrait(portrait):
            raise InputError(f"{portrait} is a video; a stream animates a photo (dub a video with speak).")
        lookahead_ms = options.check_value("lookahead_ms", lookahead_ms)
        renderer = self.renderer
        motion = SpeechMotionStream(seed=v["seed"], pose_scale=v["pose_scale"], expression_scale=v["expression_scale"],
                                    blink=values["blink"], blink_rate=v["blink_rate"],
                                    whisper_checkpoint=values["whisper_checkpoint"], device=renderer.device,
                                    lookahead_ms=lookahead_ms, models=self.speech_models)
        pt = prepare_portrait(renderer, self.faces, portrait, v["face"], pasteback=values["pasteback"],
                              max_size=v["max_portrait_size"])
        return SpeakStream(renderer, pt, chunks, motion, pasteback=values["pasteback"], edit=edit)

    # ------------------------------------------------------------------------------------ edit
    def edit(self, portrait, output: str | os.PathLike, *, face: str | int = "largest", crop_scale: float = 2.5,
             stitching: bool = True, pasteback: bool = True, eye_ratio: float | None = None,
             lip_ratio: float | None = None,
             pitch: float = 0.0, yaw: float = 0.0, roll: float = 0.0, mov_x: float = 0.0, mov_y: float = 0.0,
             mov_z: float = 1.0, pouting: float = 0.0, pursing: float = 0.0, grin: float = 0.0,
             lip_open: float = 0.0, smile: float = 0.0, wink: float = 0.0, eyebrow: float = 0.0,
             gaze_x: float = 0.0, gaze_y: float = 0.0,
             progress_callback: ProgressCallback | None = None) -> RenderResult:
        """Edit ``portrait``'s expression and head pose with the sliders of LivePortrait's image-retargeting tab
        and write the image ``output`` (.png, .jpg, .webp, ...; written to a temporary file, then renamed).

        The sliders have the official ranges (:data:`lp_renderer.editing.SLIDERS`; out of range:
        :class:`~audio2lp.options.OptionError`): ``eye_ratio`` / ``lip_ratio`` target eyes-open / lip-open ratios
        (0-0.8; None keeps the portrait's own; as in the tab, retargeting applies only when the value differs from
        the portrait's ratio rounded to 2 decimals); ``pitch`` / ``yaw`` / ``roll`` degrees added to the head pose;
        ``mov_x`` / ``mov_y`` movement and ``mov_z`` scale; ``pouting``, ``pursing``, ``grin``, ``lip_open``,
        ``smile``, ``wink``, ``eyebrow``, ``gaze_x``, ``gaze_y``: the tab's per-keypoint expression offsets. The
        keypoints are composed as the tab composes them (:func:`lp_renderer.editing.edited_keypoints`), stitched
        (``stitching``), rendered, and the face is pasted back into the photo at its full resolution
        (``pasteback=False``: the 512x512 crop). ``crop_scale``: 2.5, the tab's default (speak and drive use 2.3).
        ``portrait`` may also be a :class:`~audio2lp.portrait.Portrait` from :meth:`portrait` (its faces and crop
        were chosen when it was prepared; ``face`` and ``crop_scale`` are then not used): editing it again only
        renders. The result's ``extra["source_ratios"]`` holds each face's own (eye, lip) ratios as the tab
        rounds them.
        """
        from lp_renderer.editing import edited_keypoints, source_ratio_targets

        edit = _sliders("edit", locals(), keep_neutral=True)
        v = options.check(dict(face=face, crop_scale=crop_scale))
        prepared = isinstance(portrait, Portrait)
        _check_stitching("all" if prepared and len(portrait.faces) > 1 else v["face"], stitching)
        out = check_output_path(output, EDIT_SUFFIXES)
        pasteback = _pasteback_needs_stitching(pasteback, stitching)
        renderer = self.renderer
        pt = portrait if prepared else prepare_portrait(renderer, self.faces, portrait, v["face"], pasteback=pasteback,
                                                        crop_scale=v["crop_scale"])
        check_crop_output(len(pt.faces), pasteback)
        bar = _Progress(self.progress, len(pt.faces), "render", progress_callback)
        rendered = []
        try:
            for pf in pt.faces:
                x_d = edited_keypoints(renderer, pf.source, edit, stitching=stitching)
                rendered.append(renderer.render(pf.source, x_d, batch_size=1)[0])
                bar.update(1)
        finally:
            bar.close()
        img = pt.composite(rendered, pasteback=pasteback)
        _write_image_atomic(out, img)
        log.info("wrote %s (%dx%d)", out, img.shape[1], img.shape[0])
        return RenderResult(out, 1, 0.0, False,
                            extra={"source_ratios": [source_ratio_targets(pf.source) for pf in pt.faces]})


    def _speak_video(self, video: Path, audio, output, *, face, seed: int, pasteback: bool, crf: int,
                     whisper_checkpoint, progress_callback: ProgressCallback | None) -> RenderResult:
        """Dubbing (see :meth:`speak`): the video's frames, the speech's mouth."""
        from audio2lp.media.audio import load_audio
        from audio2lp.media.probe import probe_video
        from audio2lp.speech import lip_open_series, speech_plan
        from audio2lp.video_portrait import dubbed_frames, track_video_portrait

        out = check_output_path(output, VIDEO_SUFFIXES)
        info = probe_video(video)
        with _Stage(self.progress, "audio"):
            wav = load_audio(audio)
        duration = len(wav) / 16000
        n_frames = max(1, int(round(duration * info.fps)))  # the speech's length at the video's frame rate
        renderer = self.renderer
        tracked = track_video_portrait(video, self.faces, face, max_frames=n_frames, info=info,
                                       progress=self.progress)
        plan = speech_plan(wav, n_frames, info.fps, device=renderer.device, motion_model=None, seed=seed, style=0,
                           blink=False, blink_rate=None, pose_scale=0.0, template=None,
                           whisper_checkpoint=whisper_checkpoint, progress=self.progress, models=self.speech_models)
        frames = dubbed_frames(renderer, tracked, lip_open_series(plan), pasteback=pasteback)
        self._encode(out, info.fps, frames, n_frames, crf=crf, audio=Path(audio), progress_callback=progress_callback)
        log.info("wrote %s (%d frames at %g fps from %d video frames, %.2f s of audio)", out, n_frames, info.fps,
                 tracked.n_frames, duration)
        return RenderResult(out, n_frames, info.fps, True, extra={"duration": duration, "mode": "dubbing",
                                                                  "source_frames": tracked.n_frames})

    def _drive_video(self, video: Path, src, out: Path, *, face, anim_options: AnimationOptions, pasteback: bool,
                     concat: bool, save_template, crf: int, max_frames: int | None, variance: float,
                     eye_retargeting: bool, audio_priority: str,
                     progress_callback: ProgressCallback | None) -> RenderResult:
        """Video-to-video (see :meth:`drive`): LivePortrait's source-video mode."""
        from contextlib import ExitStack

        from audio2lp.driving import extract_driving_motion
        from audio2lp.media.probe import probe_video
        from audio2lp.video_portrait import audio_by_priority, driven_frames, source_motion, track_video_portrait
        from lp_renderer.source_video import eye_retargeting_target, source_video_motion

        info = probe_video(video)
        renderer = self.renderer
        backend = self.faces if src.kind != "template" else None
        n_driving = src.n_frames if max_frames is None else min(src.n_frames, max_frames)
        tracked = track_video_portrait(video, self.faces, face, max_frames=n_driving, info=info,
                                       progress=self.progress)
        driving, eye, lip = extract_driving_motion(renderer, src, backend, max_frames=min(n_driving, tracked.n_frames),
                                                   batch_size=max(8, self.batch_size), progress=self.progress)
        n = min(tracked.n_frames, driving.batch_size)  # the shorter of the two
        source = source_motion(renderer, tracked, n, batch_size=max(8, self.batch_size), progress=self.progress)
        motion = source_video_motion(source, driving[:n], driving[0], region=anim_options.region,
                                     observation_variance=variance)
        frames = driven_frames(renderer, tracked, motion, anim_options, driving_eye=eye, driving_lip=lip,
                               eye_target=eye_retargeting_target(tracked.eye_ratios[0]) if eye_retargeting else None,
                               pasteback=pasteback)
        if concat:
            from audio2lp.driving import iter_driving_frames

            panels = (fr.crop_rgb for fr in iter_driving_frames(src, backend, max_frames=n))
            frames = (np.concatenate([cv2.resize(p, (img.shape[0],) * 2, interpolation=cv2.INTER_AREA), img], axis=1)
                      for img, p in zip(frames, panels))
        audio = audio_by_priority(video, info.has_audio, src.path if src.kind == "video" else None,
                                  src.kind == "video" and src.has_audio, audio_priority)

        def write_template(tmp: Path) -> None:
            ratios = (None if eye is None else eye[:n], None if lip is None else lip[:n])
            save_motion_template(tmp, MotionTemplate(info_to_motion(driving[:n]), src.fps, *ratios))

        with ExitStack() as commit_last:  # as drive(): the template is committed only after the video
            template_tmp = None if save_template is None else commit_last.enter_context(atomic_output(save_template))
            written = self._encode(out, info.fps, frames, n, crf=crf, audio=audio, progress_callback=progress_callback,
                                   before_close=None if template_tmp is None else lambda: write_template(template_tmp))
        log.info("wrote %s (%d frames at %g fps; audio from %s)", out, written, info.fps, audio)
        return RenderResult(out, written, info.fps, audio is not None,
                            None if save_template is None else Path(save_template),
                            extra={"mode": "source-video", "audio_from": None if audio is None else str(audio)})

    def _encode(self, out: Path, fps: float, frames, total: int, *, crf: int, audio,
                progress_callback: ProgressCallback | None, before_close=None) -> int:
        """Write ``frames`` (an iterator of HxWx3 uint8) to ``out`` with ``audio`` fitted to the video; returns how
        many frames were written. ``before_close()`` runs after the last frame, before the file is committed."""
        written = 0
        bar = _Progress(self.progress, total, "render", progress_callback)
        try:
            with VideoWriter(out, fps, crf=crf, audio=audio, audio_fit="video") as writer:
                for img in frames:
                    writer.write(img)
                    written += 1
                    bar.update(1)
                bar.close()
                if before_close is not None:
                    before_close()
                with _Stage(self.progress, "write"):  # the encoder's last frames and the audio mux
                    writer.close()
        finally:
            bar.close()
        return written


def _sliders(command: str, values: dict, keep_neutral: bool = False) -> PortraitEdit | None:
    """The editing sliders ``command`` takes, read from ``values`` (a method's ``locals()``) and checked against
    the schema, as a :class:`~lp_renderer.editing.PortraitEdit` (None when all are neutral, unless
    ``keep_neutral``)."""
    edit = PortraitEdit(**options.check({k: values[k] for k in options.sliders_for(command)}))
    return edit if keep_neutral or not edit.is_neutral else None


def _check_stitching(face, stitching: bool) -> None:
    if not stitching and face == "all":
        raise OptionError("face", "{face} all pastes every face back into the photo, which needs stitching; drop "
                          "{not_stitching}, or pick one face with {face} N or {face} largest.")


def _pasteback_needs_stitching(pasteback: bool, stitching: bool) -> bool:
    if pasteback and not stitching:
        log.warning("paste-back needs stitching (shoulders would not line up); writing the 512x512 crop")
        return False
    return pasteback


    # ------------------------------------------------------------------------------------ a portrait video
#: the options of a command that apply to one kind of portrait only: by (command, the portrait is a video), those
#: that do not apply to it, and the refusal (an OptionError template naming the option as ``{%s}``)
_NOT_FOR_PORTRAIT = {
    ("speak", True): (("motion_model", "fps", "expression_scale", "pose_scale", "pose_from", "blink", "blink_rate",
                       "style", "motion_noise", *options.sliders_for("speak")),
                      "{%s} does not apply when the portrait is a video: dubbing keeps the video's own head motion, "
                      "eyes and frame rate and moves only the mouth; leave it out."),
    ("drive", True): (tuple(options.sliders_for("drive")), "{%s} offsets a portrait photo; a portrait video keeps "
                      "each frame's own face (video-to-video): leave it out."),
    ("drive", False): (("driving_smooth_observation_variance", "source_video_eye_retargeting", "audio_priority"),
                       "{%s} applies only when the portrait is a video; leave it out for a photo."),
}


def options_not_for(command: str, video: bool) -> tuple[str, ...]:
    """The options ``command`` does not apply to a portrait video (``video``) or photo (the web app leaves them out)."""
    return _NOT_FOR_PORTRAIT.get((command, video), ((), ""))[0]


def check_portrait_options(command: str, values: dict, video: bool) -> None:
    """OptionError for the first option of ``values`` (name -> value; others are ignored) that ``command`` does not
    apply to a portrait video (``video``) or photo, when it is not at its default. :meth:`Animator.speak` and
    :meth:`Animator.drive` call it; the HTTP service calls it before it queues a job."""
    names, template = _NOT_FOR_PORTRAIT.get((command, video), ((), ""))
    _refuse_changed({n: values[n] for n in names if n in values}, template)


def _refuse_changed(values: dict, template: str) -> None:
    """OptionError for the first option of ``values`` not at its default (``template`` names it as ``{%s}``)."""
    for name, value in values.items():
        if value != options.OPTIONS[name].default:
            raise OptionError(name, template % name)


def _write_image_atomic(path: Path, rgb: np.ndarray) -> None:
    with atomic_output(path) as tmp:
        ok = cv2.imwrite(str(tmp), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        if not ok:
            raise InputError(f"could not write the image {path}; use a .png or .jpg name.")
