"""What ``speak`` says with the face: the per-frame motion plan from speech (:class:`SpeechPlan`) and the driving
keypoints it gives for each frame."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from audio2lp.driving import info_to_motion, motion_to_info
from audio2lp.options import OptionError, literal
from lp_renderer.renderer import Renderer


def speech_plan(wav, n_frames, fps, *, device, motion_model, seed, style, blink, blink_rate, pose_scale, template,
                portrait, whisper_checkpoint, motion_noise=0.0, progress=True) -> SpeechPlan:
    """The per-frame motion of ``speak`` for 16 kHz ``wav``: full motion from ``motion_model`` (one sequence per face
    of ``portrait`` for a source-conditioned model), or the built-in lip-sync model's mouth with blinks and idle
    head motion (or the head motion of ``template``). Whisper and the models run on ``device``."""
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
    from audio2lp.models.idle import blink_schedule, idle_head_motion, pose_from_template
    from audio2lp.models.lipsync import load_lipsync_model

    lips = load_lipsync_model(device=device)
    lc = lips.config
    feats = whisper_encoder(lc.whisper_model, whisper_checkpoint, device).encode(wav, layers=lc.whisper_layers,
                                                                           progress=progress)
    pred = lips.predict(feats, n25, audio_16k=wav)  # the mouth also closes in silences > 200 ms
    lip = np.asarray(pred.lip_open, np.float32)
    speaking = ~np.asarray(pred.closed, bool)
    if fps != 25:
        lip = resample_motion(lip[:, None], 25, fps, n_frames)[:, 0]
        speaking = resample_motion(speaking[:, None].astype(np.float32), 25, fps, n_frames)[:, 0] > 0.5
    lip, speaking = lip[:n_frames], speaking[:n_frames]
    eye = None
    if blink:
        kwargs = {} if blink_rate is None else {"rate_per_min": blink_rate}
        eye = blink_schedule(n_frames, fps=fps, seed=seed, **kwargs)
    if template is not None:
        pose = pose_from_template(template, n_frames, fps=fps) * pose_scale
    else:
        pose = idle_head_motion(n_frames, fps=fps, speaking=speaking, seed=seed) * pose_scale
    return SpeechPlan("lipsync", n_frames, lip_open=lip, eye_open=eye, pose=pose)


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
    portrait's own), or lip-open ratios (T,), eye-open multipliers
    of the portrait's own eye ratios (T,) (None: eyes as in the photo) and head-pose offsets (T, 3) degrees."""

    mode: str
    n_frames: int
    motion: np.ndarray | None = None
    reference: np.ndarray | None = None
    lip_open: np.ndarray | None = None
    eye_open: np.ndarray | None = None
    pose: np.ndarray | None = None

    def keypoints(self, renderer: Renderer, pf, idx: np.ndarray, expression_scale: float = 1.0,
                  pose_scale: float = 1.0, face_index: int = 0):
        """Driving keypoints (B, 21, 3) of the frames ``idx`` for one portrait face ``pf`` (the
        ``face_index``-th of the portrait), stitched."""

        from lp_renderer.keypoints import relative_motion, transform_keypoints
        from lp_renderer.renderer import host_to_device

        src = pf.source
        dev = renderer.device
        b = len(idx)
        if self.motion is not None:
            from audio2lp.models.motion import EXP, POSE, SCALE, T

            ref = self.reference
            m = self.motion[min(face_index, len(self.motion) - 1)][idx].copy()
            m[:, EXP] = ref[EXP] + expression_scale * (m[:, EXP] - ref[EXP])
            for sl in (POSE, T):
                m[:, sl] = ref[sl] + pose_scale * (m[:, sl] - ref[sl])
            m[:, SCALE] = ref[SCALE] * (m[:, SCALE] / ref[SCALE]) ** pose_scale
            x_d = relative_motion(src.info, motion_to_info(m, device=dev), motion_to_info(ref[None], device=dev))
            return renderer.stitch(src.x_s, x_d)
        info = src.info
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
