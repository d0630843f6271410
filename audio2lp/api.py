"""The Python API. The command line (``audio2lp.cli``) is a thin layer over :class:`Animator`.

    from audio2lp import Animator
    anim = Animator(weights="~/liveportrait-weights")
    anim.drive("portrait.jpg", "driving.mp4", "out.mp4")
    anim.speak("portrait.jpg", "speech.wav", "talk.mp4")
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from lp_renderer.animation import AnimationOptions, driving_keypoints
from lp_renderer.errors import InputError
from lp_renderer.faces import FaceBackend, get_face_backend
from lp_renderer.renderer import Renderer

from .driving import DrivingFrame, Prefetcher, info_to_motion, iter_driving_frames, motion_to_info, open_driving
from .motion import MotionTemplate, save_motion_template
from .portrait import IMAGE_SUFFIXES, Portrait, prepare_portrait

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


def _progress_bar(enabled: bool, total: int | None, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="frame", disable=not enabled, dynamic_ncols=True)


class Animator:
    """Loads the renderer (once, lazily) and animates portraits.

    weights: the LivePortrait weights folder (official layout; default ``$AUDIO2LP_WEIGHTS`` or the
    cache folder). device: 'cuda', 'cpu' or None (CUDA when available). half: float16 for W and G
    (CUDA only; default on CUDA). compile: ``torch.compile`` W and G. face_backend: 'auto', 'dlib' or
    'insightface'. batch_size: frames rendered together. progress: show progress bars.
    A ready :class:`~lp_renderer.Renderer` may be passed instead of weights (tests, notebooks).
    """

    def __init__(self, weights: str | os.PathLike | None = None, *, device: str | None = None,
                 half: bool | None = None, compile: bool = False, face_backend: str = "auto",
                 insightface_dir: str | os.PathLike | None = None, renderer: Renderer | None = None,
                 batch_size: int = 8, progress: bool = True):
        if batch_size < 1:
            raise InputError(f"--batch-size must be at least 1, not {batch_size}.")
        self.weights = weights
        self.device, self.half, self.compile = device, half, compile
        self.face_backend_name = face_backend
        self.insightface_dir = insightface_dir
        self._renderer = renderer
        self._faces: FaceBackend | None = None
        self.batch_size = batch_size
        self.progress = progress

    @property
    def renderer(self) -> Renderer:
        if self._renderer is None:
            self._renderer = Renderer.from_weights(self.weights, device=self.device, half=self.half,
                                                   compile=self.compile)
        return self._renderer

    @property
    def faces(self) -> FaceBackend:
        if self._faces is None:
            weights_dir = None
            if self.weights is not None:
                weights_dir = self.weights
            self._faces = get_face_backend(self.face_backend_name, self.insightface_dir, weights_dir=weights_dir)
        return self._faces

    def portrait(self, image, face: str | int = "largest", pasteback: bool = True) -> Portrait:
        """Detect, crop and prepare the portrait's face(s) (done once per portrait)."""
        return prepare_portrait(self.renderer, self.faces, image, face, pasteback=pasteback)

    # ------------------------------------------------------------------------------------ drive
    def drive(self, portrait, driving: str | os.PathLike, output: str | os.PathLike, *,
              face: str | int = "largest", region: str = "all", multiplier: float = 1.0,
              stitching: bool = True, retarget_eyes: bool = False, retarget_lip: bool = False,
              pasteback: bool = True, concat: bool = False, save_template: str | os.PathLike | None = None,
              crf: int = 18, max_frames: int | None = None) -> RenderResult:
        """Animate ``portrait`` with the motion of ``driving`` (a video, an image, or a motion template).

        The first driving frame is the reference (relative motion, as the official pipeline). The output
        is an H.264 mp4 at the driving fps with the driving video's audio, pasted back into the portrait
        (or the 512x512 crop with ``pasteback=False``); an image when both driving and output are images.
        ``save_template`` writes the extracted motion as an ``.npz`` template for later use.
        """
        from .video_io import check_output_path

        options = AnimationOptions(region=region, stitching=stitching, retarget_eyes=retarget_eyes,
                                   retarget_lip=retarget_lip, multiplier=multiplier)
        src = open_driving(driving)
        image_out = Path(output).suffix.lower() in IMAGE_SUFFIXES
        if image_out and src.kind != "image":
            raise InputError(f"{output} is an image file, but the driving input is a {src.kind}; write a video "
                             f"(.mp4).")
        out = check_output_path(output, sorted(IMAGE_SUFFIXES) if image_out else VIDEO_SUFFIXES)
        if save_template is not None:
            check_output_path(save_template, (".npz",))
            if src.kind == "template":
                raise InputError("--save-template needs a driving video or image, not a template.")
        if concat and src.kind == "template":
            raise InputError("--concat shows the driving video beside the result; a template has no frames.")
        if max_frames is not None and max_frames < 1:
            raise InputError(f"--max-frames must be at least 1, not {max_frames}.")
        if (retarget_eyes or retarget_lip) and src.kind == "template":
            tp = src.template
            if (retarget_eyes and tp.eye_ratio is None) or (retarget_lip and tp.lip_ratio is None):
                raise InputError("this template has no eye/lip ratios, so --retarget-eyes/--retarget-lip cannot "
                                 "be used with it.")
        if pasteback and not stitching:
            log.warning("paste-back needs stitching (shoulders would not line up); writing the 512x512 crop")
            pasteback = False
        renderer = self.renderer
        backend = self.faces if src.kind != "template" else None
        pt = prepare_portrait(renderer, self.faces, portrait, face, pasteback=pasteback)
        n_total = src.n_frames if max_frames is None else min(src.n_frames, max_frames)
        frames = iter_driving_frames(src, backend, which=face if face != "all" else "largest",
                                     keep_frames=concat, max_frames=max_frames)
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
                x_d = driving_keypoints(renderer, pf.source, info, state["reference"], options,
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

        written = 0
        bar = _progress_bar(self.progress, n_total, "render")
        try:
            if image_out:
                batch = list(frames)
                img = render_batch(batch)[0]
                _write_image_atomic(out, img)
                written = 1
                bar.update(1)
            else:
                from .video_io import VideoWriter

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
        finally:
            bar.close()
        tpath = None
        if save_template is not None:
            eye = np.concatenate(eyes)
            lip = np.concatenate(lips)
            tp = MotionTemplate(np.concatenate(motions), src.fps, None if np.isnan(eye).any() else eye,
                                None if np.isnan(lip).any() else lip)
            tpath = save_motion_template(save_template, tp)
        log.info("wrote %s (%d frames at %.3g fps)", out, written, src.fps)
        return RenderResult(out, written, src.fps, bool(not image_out and src.kind == "video" and src.has_audio),
                            tpath)


def _write_image_atomic(path: Path, rgb: np.ndarray) -> None:
    from .video_io import atomic_output

    with atomic_output(path) as tmp:
        ok = cv2.imwrite(str(tmp), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        if not ok:
            raise InputError(f"could not write the image {path}; use a .png or .jpg name.")
