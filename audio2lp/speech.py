"""What ``speak`` says with the face: the per-frame motion plan from speech (:class:`SpeechPlan`) and the driving
keypoints it gives for each frame."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

import numpy as np

from audio2lp.driving import motion_to_info
from audio2lp.options import OptionError, literal
from lp_renderer.editing import PortraitEdit, edited_info
from lp_renderer.renderer import Renderer

#: a portrait whose lip-open ratio is at least this has its mouth closed before the motion model's lip motion is
#: applied (LivePortrait's ``lip_normalize_threshold``, used by its ``flag_normalize_lip``)
LIP_NORMALIZE_THRESHOLD = 0.03


class SpeechModels:
    """The models ``speak`` uses (Whisper encoders, the lip-sync model, motion models), each loaded once and kept:
    an :class:`~audio2lp.api.Animator` holds one, so that a program (the HTTP service, the web app, a notebook)
    does not reload them for every call. Thread-safe: a model is loaded by one thread while the others wait, then
    shared (inference only; it changes no state of the model)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._models: dict[tuple, object] = {}
        self.loads: dict[str, int] = {}  # how many times each kind of model was loaded (for tests and logs)

    def _get(self, key: tuple, load):
        with self._lock:
            if key not in self._models:
                self._models[key] = load()
                self.loads[key[0]] = self.loads.get(key[0], 0) + 1
            return self._models[key]

    def whisper(self, model_name: str, checkpoint, device):
        """The Whisper encoder a model was trained with (see :func:`whisper_encoder`)."""
        key = ("whisper", model_name, None if checkpoint is None else os.path.abspath(checkpoint), str(device))
        return self._get(key, lambda: whisper_encoder(model_name, checkpoint, device))

    def lipsync(self, device):
        """The shipped lip-sync model."""
        from audio2lp.models.lipsync import load_lipsync_model

        return self._get(("lipsync", str(device)), lambda: load_lipsync_model(device=device))

    def motion(self, path, device):
        """A motion model checkpoint and its stats (loaded again when the file changes)."""
        from audio2lp.models.motion_model import load_motion_model

        st = os.stat(path)
        key = ("motion", os.path.abspath(path), st.st_mtime_ns, st.st_size, str(device))
        return self._get(key, lambda: load_motion_model(path, device=device))


def speech_plan(wav, n_frames, fps, *, device, motion_model, seed, style, blink, blink_rate, pose_scale, template,
                whisper_checkpoint, motion_noise=0.0, progress=True,
                models: SpeechModels | None = None) -> SpeechPlan:
    """The per-frame motion of ``speak`` for 16 kHz ``wav``: the relative motion of ``motion_model`` (one sequence
    shared by the faces), or the built-in lip-sync model's mouth with idle head motion (or the head motion of
    ``template``); natural blinks on both paths (``blink``, ``blink_rate``, seeded by ``seed``). Whisper and the
    models run on ``device``; they come from ``models`` (loaded there once; default: loaded for this call)."""
    from audio2lp.models.idle import blink_schedule
    from audio2lp.models.motion import resample_motion

    models = models or SpeechModels()
    eye = None
    if blink:
        kwargs = {} if blink_rate is None else {"rate_per_min": blink_rate}
        eye = blink_schedule(n_frames, fps=fps, seed=seed, **kwargs)
    n25 = max(1, int(round(len(wav) / 16000 * 25)))
    if motion_model is not None:
        from audio2lp.models.motion import NEUTRAL, from_relative

        model, stats = models.motion(motion_model, device)
        cfg = model.config
        feats = models.whisper(cfg.whisper_model, whisper_checkpoint, device).encode(
            wav, layers=cfg.whisper_layers, progress=progress)
        # the call the trainer's validation scores (training.motion.trainer.Trainer.validate)
        delta = model.rollout(feats, style=style, n_frames=n25, noise=motion_noise, seed=seed, stats=stats,
                              progress=progress)
        if fps != 25:
            delta = resample_motion(delta, 25, fps, n_frames)
        motion = from_relative(delta[:n_frames], NEUTRAL)  # the change around "no change"; see SpeechPlan
        return SpeechPlan("motion-model", n_frames, motion=motion[None], reference=NEUTRAL.copy(), eye_open=eye)
    from audio2lp.models.idle import idle_head_motion, pose_from_template

    lips = models.lipsync(device)
    lc = lips.config
    feats = models.whisper(lc.whisper_model, whisper_checkpoint, device).encode(wav, layers=lc.whisper_layers,
                                                                              progress=progress)
    pred = lips.predict(feats, n25, audio_16k=wav)  # the mouth also closes in silences > 200 ms
    lip = np.asarray(pred.lip_open, np.float32)
    speaking = ~np.asarray(pred.closed, bool)
    if fps != 25:
        lip = resample_motion(lip[:, None], 25, fps, n_frames)[:, 0]
        speaking = resample_motion(speaking[:, None].astype(np.float32), 25, fps, n_frames)[:, 0] > 0.5
    lip, speaking = lip[:n_frames], speaking[:n_frames]
    if template is not None:
        pose = pose_from_template(template, n_frames, fps=fps) * pose_scale
    else:
        pose = idle_head_motion(n_frames, fps=fps, speaking=speaking, seed=seed) * pose_scale
    return SpeechPlan("lipsync", n_frames, lip_open=lip, eye_open=eye, pose=pose)


def lip_open_series(plan: SpeechPlan) -> np.ndarray:
    """The lip-open ratio of every frame (T,) float32 that ``plan`` gives the mouth: what dubbing a video (``speak
    VIDEO SPEECH``) sets each source frame's mouth to. A plan that moves the mouth another way supplies its series
    here."""
    if plan.lip_open is None:
        raise ValueError(f"a {plan.mode!r} speech plan has no lip-open series")
    return np.asarray(plan.lip_open, np.float32)


def whisper_encoder(model_name: str, checkpoint, device):
    """The Whisper encoder a motion or lip-sync model was trained with (``checkpoint`` overrides where its
    weights come from, but must hold the same model)."""
    from audio2lp.whisper.features import WhisperEncoder

    enc = WhisperEncoder(model_name, checkpoint, device=device)
    if checkpoint is not None and enc.model_name != model_name:
        raise OptionError("whisper_checkpoint", "{whisper_checkpoint} " + literal(
            f"{checkpoint} holds Whisper {enc.model_name}, but the model was trained on Whisper {model_name} "
            f"features; give a {model_name} checkpoint."))
    return enc


@dataclass
class SpeechPlan:
    """Per-frame motion for speak: either full motion from a motion model (``motion`` (F, T, 70): one sequence per
    face, or F = 1 shared by all faces, and the ``reference`` motion that maps onto the portrait's own; the motion
    model's plan is :data:`audio2lp.models.motion.NEUTRAL` changed by the model's relative motion, with ``NEUTRAL`` as
    the reference), or lip-open ratios (T,) and head-pose offsets (T, 3) degrees; on both, eye-open multipliers of
    the portrait's own eye ratios (T,) for blinks (None: no blinks)."""

    mode: str
    n_frames: int
    motion: np.ndarray | None = None
    reference: np.ndarray | None = None
    lip_open: np.ndarray | None = None
    eye_open: np.ndarray | None = None
    pose: np.ndarray | None = None

    def keypoints(self, renderer: Renderer, pf, idx: np.ndarray, expression_scale: float = 1.0,
                  pose_scale: float = 1.0, face_index: int = 0, edit: PortraitEdit | None = None):
        """Driving keypoints (B, 21, 3) of the frames ``idx`` for one portrait face ``pf`` (the
        ``face_index``-th of the portrait), stitched. ``edit``: constant slider offsets; the motion is applied
        relative to the portrait edited by them (its expression + offsets, pose + angles, scale x mov_z; see
        :func:`lp_renderer.editing.edited_info`), while stitching and retargeting see the real source.

        Motion-model plans: the motion relative to ``reference`` (deviations scaled by ``expression_scale`` and
        ``pose_scale``) applied around the portrait's own pose and expression, plus the blinks. Lip retargeting
        closes a portrait's open mouth first (lip ratio >= :data:`LIP_NORMALIZE_THRESHOLD`, added after stitching as
        LivePortrait's ``flag_normalize_lip`` does): the model's lip motion is relative to a closed mouth (see
        :mod:`training.motion.dataset`)."""

        from lp_renderer.keypoints import relative_motion, transform_keypoints
        from lp_renderer.renderer import host_to_device

        src = pf.source
        dev = renderer.device
        b = len(idx)
        info = src.info if edit is None else edited_info(src.info, edit)
        if self.motion is not None:
            from audio2lp.models.motion import EXP, POSE, SCALE, T

            ref = self.reference
            m = self.motion[min(face_index, len(self.motion) - 1)][idx].copy()
            m[:, EXP] = ref[EXP] + expression_scale * (m[:, EXP] - ref[EXP])
            for sl in (POSE, T):
                m[:, sl] = ref[sl] + pose_scale * (m[:, sl] - ref[sl])
            m[:, SCALE] = ref[SCALE] * (m[:, SCALE] / ref[SCALE]) ** pose_scale
            x_d = relative_motion(info, motion_to_info(m, device=dev), motion_to_info(ref[None], device=dev))
            x_d = renderer.stitch(src.x_s, x_d + self._blinks(renderer, src, idx))
            if src.lip_ratio is not None and src.lip_ratio >= LIP_NORMALIZE_THRESHOLD:
                x_d = x_d + renderer.retarget_lip(src.x_s, np.array([[src.lip_ratio, 0.0]], np.float32))
            return x_d
        pose = host_to_device(self.pose[idx], dev)  # (B, 3) degrees
        posed = info.replace(kp=info.kp.expand(b, -1, -1), exp=info.exp.expand(b, -1, -1),
                             pitch=info.pitch + pose[:, :1], yaw=info.yaw + pose[:, 1:2], roll=info.roll + pose[:, 2:3],
                             t=info.t.expand(b, -1), scale=info.scale.expand(b, -1))
        x_d = transform_keypoints(posed)
        lip_s = src.lip_ratio if src.lip_ratio is not None else 0.0
        lip = np.column_stack([np.full(b, lip_s), self.lip_open[idx]]).astype(np.float32)
        x_d = x_d + renderer.retarget_lip(src.x_s, lip)
        if self.eye_open is not None:
            left, right = src.eye_ratios if src.eye_ratios is not None else (0.35, 0.35)
            target = 0.5 * (left + right) * self.eye_open[idx]
            eyes = np.column_stack([np.full(b, left), np.full(b, right), target]).astype(np.float32)
            x_d = x_d + renderer.retarget_eyes(src.x_s, eyes)
        return renderer.stitch(src.x_s, x_d)

    def _blinks(self, renderer: Renderer, src, idx: np.ndarray):
        """The blinks on top of a motion model's motion, (B, 21, 3) or 0: the eye retargeting delta towards the
        portrait's eye ratio times the eye-open multiplier, minus the delta at the portrait's own ratio (so open
        eyes leave the model's motion exactly as it is)."""
        if self.eye_open is None:
            return 0.0
        mult = np.asarray(self.eye_open[idx], np.float32)
        left, right = src.eye_ratios if src.eye_ratios is not None else (0.35, 0.35)
        mean = 0.5 * (left + right)
        rows = np.column_stack([np.full(len(idx) + 1, left), np.full(len(idx) + 1, right),
                                np.r_[mean, mean * mult]]).astype(np.float32)
        delta = renderer.retarget_eyes(src.x_s, rows)  # (B + 1, 21, 3); row 0: the portrait's own eyes
        return delta[1:] - delta[:1]
