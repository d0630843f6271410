"""What ``speak`` says with the face: the per-frame motion plan from speech (:class:`SpeechPlan`) and the driving
keypoints it gives for each frame."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

import numpy as np

from audio2lp.driving import motion_to_info
from audio2lp.options import OptionError, literal
from audio2lp.speech_motion import SpeechMotion, speech_motion_keypoints
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

    def landmark(self, path=None):
        """The default motion model (:mod:`audio2lp.models.landmark_motion`; ``path`` None: the shipped weights)."""
        from audio2lp.models.landmark_motion import load_landmark_motion

        key = ("landmark", None if path is None else os.path.abspath(path))
        return self._get(key, lambda: load_landmark_motion(path))

    def motion(self, path, device):
        """A motion model checkpoint and its stats (loaded again when the file changes)."""
        from audio2lp.models.motion_model import load_motion_model

        st = os.stat(path)
        key = ("motion", os.path.abspath(path), st.st_mtime_ns, st.st_size, str(device))
        return self._get(key, lambda: load_motion_model(path, device=device))


def speech_plan(wav, n_frames, fps, *, device, motion_model, seed, style, blink, blink_rate, pose_scale, template,
                whisper_checkpoint, motion_noise=0.0, expression_scale=1.0, progress=True,
                models: SpeechModels | None = None) -> SpeechPlan:
    """The per-frame motion of ``speak`` for 16 kHz ``wav``: the relative motion of ``motion_model`` (one sequence
    shared by the faces) with natural blinks (``blink``, ``blink_rate``, seeded by ``seed``), or the default
    :func:`speech_motion` (the landmark motion model: lips, eyes, head; or the head motion of ``template``).
    Whisper and the models run on ``device``; they come from ``models`` (loaded there once; default: loaded for
    this call)."""
    models = models or SpeechModels()
    if motion_model is None:
        motion = speech_motion(wav, n_frames, fps, seed=seed, pose_scale=pose_scale,
                               expression_scale=expression_scale, blink=blink, blink_rate=blink_rate,
                               template=template, whisper_checkpoint=whisper_checkpoint, device=device,
                               progress=progress, models=models)
        return SpeechPlan("landmark", n_frames, landmark=motion)
    from audio2lp.models.idle import blink_schedule
    from audio2lp.models.motion import NEUTRAL, from_relative, resample_motion

    eye = None
    if blink:
        kwargs = {} if blink_rate is None else {"rate_per_min": blink_rate}
        eye = blink_schedule(n_frames, fps=fps, seed=seed, **kwargs)
    n25 = max(1, int(round(len(wav) / 16000 * 25)))
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


def speech_motion(wav, n_frames, fps, *, seed=0, pose_scale=1.0, expression_scale=1.0, blink=True, blink_rate=None,
                  template=None, whisper_checkpoint=None, device="cpu", progress=True, model=None,
                  models: SpeechModels | None = None) -> SpeechMotion:
    """The default motion of ``speak`` for 16 kHz ``wav``: ``n_frames`` frames at ``fps``
    (:class:`audio2lp.speech_motion.SpeechMotion`; what ``audio2lp motion`` writes).

    The landmark motion model (:mod:`audio2lp.models.landmark_motion`; ``model``: a loaded one or a checkpoint path,
    default the shipped weights) makes lips, eyes and head at 25 fps from streaming Whisper features; its lip is
    blended with the built-in lip-sync model's (:class:`audio2lp.models.processes.LipMix`, weight from the
    checkpoint) and gated in pauses. ``seed`` drives the head process and the blinks. ``blink`` False (or
    ``blink_rate`` 0) keeps the eyes as in the photo; ``blink_rate`` rescales the fitted blink process to that many
    per minute. ``template``: head rotation from a motion template instead (no translation or scale change).
    ``pose_scale`` scales the head's deviations (angles, translation, log scale), ``expression_scale`` the lip's
    deviation from the closed level. Whisper (2 s windows) runs on ``device`` when it is CUDA, else on the CPU
    (:func:`audio2lp.whisper.stream.whisper_device`); the lip-sync model on ``device``.
    ``models``: where Whisper and the lip-sync model come from (loaded once there; default: loaded for this call).
    """
    from audio2lp.models.idle import pose_from_template
    from audio2lp.models.landmark_motion import TOKENS_PER_FRAME, pad_audio
    from audio2lp.models.motion import resample_motion
    from audio2lp.whisper.stream import StreamingEncoder, whisper_device

    models = models or SpeechModels()
    model = landmark_model_for(models, model, blink, blink_rate)
    c = model.config
    n25 = max(1, int(round(len(wav) / 16000 * 25)))
    whisper = models.whisper(c.features.whisper_model, whisper_checkpoint, whisper_device(device))
    lipsync_lip = offline_lipsync_lip(models, model, wav, n25, device=device, whisper_checkpoint=whisper_checkpoint,
                                      progress=progress)
    need = c.pad_tokens + TOKENS_PER_FRAME * (n25 + c.lookahead_frames)  # the tokens the n25 frames read
    feats = StreamingEncoder(c.features, whisper).encode(pad_audio(wav, c), n_tokens=need, progress=progress)
    m = model.generate(feats, n25, seed=seed, lipsync_lip=lipsync_lip)  # (n25, 9)
    series = finish_motion_rows(model, m, expression_scale=expression_scale, pose_scale=pose_scale,
                                template_pose=None if template is None else pose_from_template(template, n25, 25.0))
    series = resample_motion(series, 25, fps, n_frames) if fps != 25 or n25 != n_frames else series
    cols = dict(lip_open=series[:, 0], eyes_open=series[:, 1:3], pitch=series[:, 3], yaw=series[:, 4],
                roll=series[:, 5], tx=series[:, 6], ty=series[:, 7], scale=series[:, 8])
    return SpeechMotion(fps=float(fps), seed=int(seed), **{k: np.ascontiguousarray(v) for k, v in cols.items()})


def landmark_model_for(models: SpeechModels, model, blink: bool, blink_rate: float | None):
    """A shallow copy of the landmark motion model (``model``: a loaded one, a checkpoint path, or None for the
    shipped weights, from ``models``) with its blink process set by ``blink`` / ``blink_rate`` (per minute; 0 or
    ``blink`` False: no blinks)."""
    import copy

    from audio2lp.models.landmark_motion import LandmarkMotionModel

    model = copy.copy(model if isinstance(model, LandmarkMotionModel) else models.landmark(model))
    if not blink or blink_rate == 0:
        model.blinks = None
    elif blink_rate is not None and model.blinks is not None:
        model.blinks = model.blinks.with_rate(blink_rate)
    return model


def closed_lip_level(model) -> float:
    """The closed-mouth lip ratio of a landmark motion model: its pause gate's level, else the lip-sync model's."""
    from audio2lp.models.lipsync import read_lipsync_metadata

    return model.closure.level if model.closure is not None else read_lipsync_metadata()["config"].closed_level


def offline_lipsync_lip(models: SpeechModels, model, wav, n25: int, *, device, whisper_checkpoint,
                        progress: bool = False) -> np.ndarray | None:
    """The lip-sync model's lip ``(n25,)`` (raw, before its silence closing: the pause gate decides) for the default
    motion ``model``'s :class:`~audio2lp.models.processes.LipMix`, from Whisper features of the whole clip; None
    when the mix does not use it. Its Whisper encoder runs on ``device`` (or shares the motion's encoder)."""
    import torch

    from audio2lp.whisper.stream import whisper_device

    if model.lip_mix.lipsync_weight <= 0:
        return None
    lips = models.lipsync(device)
    lc = lips.config
    wdev = whisper_device(device)
    whisper = models.whisper(model.config.features.whisper_model, whisper_checkpoint, wdev)
    same = lc.whisper_model == whisper.model_name and torch.device(device) == wdev
    enc = whisper if same else models.whisper(lc.whisper_model, whisper_checkpoint, device)
    feats = enc.encode(wav, layers=lc.whisper_layers, progress=progress)
    return lips.predict(feats, n25).lip_open_raw


def finish_motion_rows(model, m: np.ndarray, *, expression_scale: float, pose_scale: float,
                       template_pose: np.ndarray | None = None, closed: float | None = None) -> np.ndarray:
    """The default motion's rows ``(n, 9)`` float32 (lip, eyes l/r, pitch, yaw, roll, tx, ty, scale) from the
    landmark motion model's output ``m`` ``(n, 9)`` (:meth:`LandmarkMotionModel.generate` or a
    :class:`~audio2lp.streaming.SpeechMotionStream`'s rows): the lip's deviation from the closed level scaled by
    ``expression_scale``, the eyes kept only with blinks on, the head (or ``template_pose`` ``(n, 3)`` degrees)
    scaled by ``pose_scale``. Row by row (offline and streamed rows give the same bits)."""
    from audio2lp.models.landmark_motion import EYES, HEAD, LIP

    m = np.asarray(m).astype(np.float64)
    n = m.shape[0]
    closed = closed_lip_level(model) if closed is None else closed
    lip = np.maximum(closed + expression_scale * (m[:, LIP] - closed), 0.0)
    eyes = m[:, list(EYES)] if model.blinks is not None else np.ones((n, 2))
    head = m[:, list(HEAD)]  # pitch, yaw, roll, tx, ty, scale
    if template_pose is not None:
        head = np.zeros_like(head)
        head[:, :3] = template_pose
        head[:, 5] = 1.0
    head[:, :5] *= pose_scale
    head[:, 5] = np.exp(pose_scale * np.log(np.maximum(head[:, 5], 1e-3)))
    return np.column_stack([lip, eyes, head]).astype(np.float32)  # (n, 9)


def lip_open_series(plan: SpeechPlan) -> np.ndarray:
    """The lip-open ratio of every frame (T,) float32 that ``plan`` gives the mouth: what dubbing a video (``speak
    VIDEO SPEECH``) sets each source frame's mouth to. A plan that moves the mouth another way supplies its series
    here."""
    if plan.landmark is None:
        raise ValueError(f"a {plan.mode!r} speech plan has no lip-open series")
    plan.wait()
    return np.asarray(plan.landmark.lip_open, np.float32)


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
    the reference, and eye-open multipliers of the portrait's own eye ratios (T,) for blinks, None: no blinks), or
    the default ``landmark`` motion (:class:`audio2lp.speech_motion.SpeechMotion`: lip, eyes and head through
    LivePortrait's retargeting and pose controls; its scales are already applied)."""

    mode: str
    n_frames: int
    motion: np.ndarray | None = None
    reference: np.ndarray | None = None
    landmark: SpeechMotion | None = None
    eye_open: np.ndarray | None = None
    #: the default motion still being made in the background (:class:`audio2lp.streaming.BackgroundSpeechMotion`):
    #: ``landmark``'s rows fill in order, and :meth:`keypoints` waits for the rows it reads
    pending: object | None = None

    def wait(self, n_rows: int | None = None) -> None:
        """Return once the first ``n_rows`` rows (None: all) of a plan made in the background are in; raises what
        the background work raised."""
        if self.pending is not None:
            self.pending.wait(self.n_frames if n_rows is None else n_rows)

    def close(self) -> None:
        """Stop background work (if any) and wait for it to end."""
        if self.pending is not None:
            self.pending.close()

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
        :mod:`training.motion.dataset`). The default plan: :func:`audio2lp.speech_motion.speech_motion_keypoints`."""
        if self.landmark is not None:
            self.wait(int(np.max(idx)) + 1)
            return speech_motion_keypoints(renderer, pf, self.landmark, idx, edit=edit)
        from audio2lp.models.motion import EXP, POSE, SCALE, T
        from lp_renderer.keypoints import relative_motion

        src = pf.source
        dev = renderer.device
        info = src.info if edit is None else edited_info(src.info, edit)
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
