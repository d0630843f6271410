"""What ``speak`` says with the face: the per-frame motion plan from speech (:class:`SpeechPlan`) and the driving
keypoints it gives for each frame."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from audio2lp.driving import info_to_motion, motion_to_info
from audio2lp.options import OptionError, literal
from audio2lp.speech_motion import SpeechMotion, speech_motion_keypoints
from lp_renderer.renderer import Renderer


def speech_plan(wav, n_frames, fps, *, device, motion_model, seed, style, blink, blink_rate, pose_scale, template,
                portrait, whisper_checkpoint, motion_noise=0.0, expression_scale=1.0, progress=True) -> SpeechPlan:
    """The per-frame motion of ``speak`` for 16 kHz ``wav``: full motion from ``motion_model`` (one sequence per face
    of ``portrait`` for a source-conditioned model), or the default :func:`speech_motion` (the landmark motion
    model: lips, eyes, head; or the head motion of ``template``). Whisper and the models run on ``device``."""
    from audio2lp.models.motion import resample_motion

    n25 = max(1, int(round(len(wav) / 16000 * 25)))
    if motion_model is not None:
        from audio2lp.models.motion_model import load_motion_model

        model, stats = load_motion_model(motion_model, device=device)
        cfg = model.config
        feats = whisper_encoder(cfg.whisper_model, whisper_checkpoint, device).encode(
            wav, layers=cfg.whisper_layers, progress=progress)
        # a model conditioned on the portrait makes each face's own motion; otherwise the faces share it
        sources = [None]
        if cfg.source_cond:
            sources = [stats.normalize(info_to_motion(pf.source.info.to("cpu"))[0]) for pf in portrait.faces]
        motions = []
        for source in sources:
            motion = model.generate(feats, style=style, source=source, n_frames=n25, noise=motion_noise,
                                    seed=seed, stats=stats, progress=progress)
            if fps != 25:
                motion = resample_motion(motion, 25, fps, n_frames)
            motions.append(motion[:n_frames])
        return SpeechPlan("motion-model", n_frames, motion=np.stack(motions),
                          reference=np.asarray(stats.mean, np.float32))
    motion = speech_motion(wav, n_frames, fps, seed=seed, pose_scale=pose_scale, expression_scale=expression_scale,
                           blink=blink, blink_rate=blink_rate, template=template,
                           whisper_checkpoint=whisper_checkpoint, device=device, progress=progress)
    return SpeechPlan("landmark", n_frames, landmark=motion)


def speech_motion(wav, n_frames, fps, *, seed=0, pose_scale=1.0, expression_scale=1.0, blink=True, blink_rate=None,
                  template=None, whisper_checkpoint=None, device="cpu", progress=True, model=None) -> SpeechMotion:
    """The default motion of ``speak`` for 16 kHz ``wav``: ``n_frames`` frames at ``fps``
    (:class:`audio2lp.speech_motion.SpeechMotion`; what ``audio2lp motion`` writes).

    The landmark motion model (:mod:`audio2lp.models.landmark_motion`; ``model``: a loaded one or a checkpoint path,
    default the shipped weights) makes lips, eyes and head at 25 fps from streaming Whisper features; its lip is
    blended with the built-in lip-sync model's (:class:`audio2lp.models.processes.LipMix`, weight from the
    checkpoint) and gated in pauses. ``seed`` drives the head process and the blinks. ``blink`` False (or
    ``blink_rate`` 0) keeps the eyes as in the photo; ``blink_rate`` rescales the fitted blink process to that many
    per minute. ``template``: head rotation from a motion template instead (no translation or scale change).
    ``pose_scale`` scales the head's deviations (angles, translation, log scale), ``expression_scale`` the lip's
    deviation from the closed level. Whisper runs on the CPU (2 s windows); the lip-sync model on ``device``.
    """
    import copy

    import torch

    from audio2lp.models.idle import pose_from_template
    from audio2lp.models.landmark_motion import (
        EYES,
        HEAD,
        LIP,
        TOKENS_PER_FRAME,
        LandmarkMotionModel,
        load_landmark_motion,
        pad_audio,
    )
    from audio2lp.models.lipsync import load_lipsync_model, read_lipsync_metadata
    from audio2lp.models.motion import resample_motion
    from audio2lp.whisper.stream import StreamingEncoder

    model = copy.copy(model if isinstance(model, LandmarkMotionModel) else load_landmark_motion(model))
    c = model.config
    n25 = max(1, int(round(len(wav) / 16000 * 25)))
    if not blink or blink_rate == 0:
        model.blinks = None
    elif blink_rate is not None and model.blinks is not None:
        model.blinks = model.blinks.with_rate(blink_rate)
    whisper = whisper_encoder(c.features.whisper_model, whisper_checkpoint, "cpu")
    lipsync_lip = None
    if model.lip_mix.lipsync_weight > 0:
        lips = load_lipsync_model(device=device)
        lc = lips.config
        same = lc.whisper_model == whisper.model_name and torch.device(device).type == "cpu"
        enc = whisper if same else whisper_encoder(lc.whisper_model, whisper_checkpoint, device)
        feats = enc.encode(wav, layers=lc.whisper_layers, progress=progress)
        lipsync_lip = lips.predict(feats, n25).lip_open_raw  # without its silence closing: the pause gate decides
    need = c.pad_tokens + TOKENS_PER_FRAME * (n25 + c.lookahead_frames)  # the tokens the n25 frames read
    feats = StreamingEncoder(c.features, whisper).encode(pad_audio(wav, c), n_tokens=need, progress=progress)
    m = model.generate(feats, n25, seed=seed, lipsync_lip=lipsync_lip).astype(np.float64)  # (n25, 9)
    closed = model.closure.level if model.closure is not None else read_lipsync_metadata()["config"].closed_level
    lip = np.maximum(closed + expression_scale * (m[:, LIP] - closed), 0.0)
    eyes = m[:, list(EYES)] if model.blinks is not None else np.ones((n25, 2))
    head = m[:, list(HEAD)]  # pitch, yaw, roll, tx, ty, scale
    if template is not None:
        head = np.zeros_like(head)
        head[:, :3] = pose_from_template(template, n25, fps=25.0)
        head[:, 5] = 1.0
    head[:, :5] *= pose_scale
    head[:, 5] = np.exp(pose_scale * np.log(np.maximum(head[:, 5], 1e-3)))
    series = np.column_stack([lip, eyes, head]).astype(np.float32)  # (n25, 9)
    series = resample_motion(series, 25, fps, n_frames) if fps != 25 or n25 != n_frames else series
    cols = dict(lip_open=series[:, 0], eyes_open=series[:, 1:3], pitch=series[:, 3], yaw=series[:, 4],
                roll=series[:, 5], tx=series[:, 6], ty=series[:, 7], scale=series[:, 8])
    return SpeechMotion(fps=float(fps), seed=int(seed), **{k: np.ascontiguousarray(v) for k, v in cols.items()})


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
    """Per-frame motion for speak: either full motion from a motion model (``motion`` (F, T, 70): one
    sequence per face, or F = 1 shared by all faces; and the ``reference`` motion that maps onto the
    portrait's own), or the default ``landmark`` motion (:class:`audio2lp.speech_motion.SpeechMotion`: lip, eyes
    and head through LivePortrait's retargeting and pose controls; its scales are already applied)."""

    mode: str
    n_frames: int
    motion: np.ndarray | None = None
    reference: np.ndarray | None = None
    landmark: SpeechMotion | None = None

    def keypoints(self, renderer: Renderer, pf, idx: np.ndarray, expression_scale: float = 1.0,
                  pose_scale: float = 1.0, face_index: int = 0):
        """Driving keypoints (B, 21, 3) of the frames ``idx`` for one portrait face ``pf`` (the
        ``face_index``-th of the portrait), stitched."""
        if self.landmark is not None:
            return speech_motion_keypoints(renderer, pf, self.landmark, idx)
        from audio2lp.models.motion import EXP, POSE, SCALE, T
        from lp_renderer.keypoints import relative_motion

        dev = renderer.device
        ref = self.reference
        m = self.motion[min(face_index, len(self.motion) - 1)][idx].copy()
        m[:, EXP] = ref[EXP] + expression_scale * (m[:, EXP] - ref[EXP])
        for sl in (POSE, T):
            m[:, sl] = ref[sl] + pose_scale * (m[:, sl] - ref[sl])
        m[:, SCALE] = ref[SCALE] * (m[:, SCALE] / ref[SCALE]) ** pose_scale
        x_d = relative_motion(pf.source.info, motion_to_info(m, device=dev), motion_to_info(ref[None], device=dev))
        return renderer.stitch(pf.source.x_s, x_d)
