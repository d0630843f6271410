"""A video as the source: LivePortrait's source-video mode at the keypoint level (the official pipeline's
"source is a video" branch, ``live_portrait_pipeline.py`` of the reference commit, lines 192-239 and 274-307).

Every source frame i is its own source (its own canonical keypoints, expression, pose, scale, translation and
appearance). With a driving sequence paired frame by frame (relative mode, driving frame 0 the reference)::

    exp_i = exp_s_i + (exp_d_i - exp_d_0)                 then smoothed over i (Kalman smoother)
    R_i   = (R_d_i @ R_d_0^T) @ R_s_i                     then smoothed over i ('all' and 'pose' only)
    delta = exp_s_i, with the entries of :func:`expression_mask` taken from exp_i
    x_d_i = scale_s_i * (kp_s_i @ R + delta) + t_s_i      (tz = 0; R = R_i, or R_s_i for 'exp'/'lip'/'eyes')

so the source frame keeps its own scale and translation. The smoother (:func:`kalman_smooth`) is pykalman's
``KalmanFilter(initial_state_mean=obs[0], transition_covariance=1e-5 I, observation_covariance=v I).smooth``
as the official ``src/utils/filter.py`` calls it (identity transition and observation matrices, initial state
covariance I). Algorithm 1 then runs per frame (:func:`source_frame_keypoints`): stitching, or the retargeting
branch, and, with ``--flag_source_video_eye_retargeting``, an eye delta towards the first frame's eye opening
(:func:`eye_retargeting_target`) added after stitching; the driving multiplier last. The official
expression-friendly step is not applied to a video source.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .animation import AnimationOptions, retargeted_keypoints
from .keypoints import EYE_INDICES, LIP_INDICES, REGIONS, KeypointInfo, compose_keypoints, driving_multiplier
from .renderer import PreparedSource, Renderer

#: the official ``--driving_smooth_observation_variance`` default
OBSERVATION_VARIANCE = 3e-7
#: the official smoother's ``process_variance`` (transition covariance 1e-5 I)
TRANSITION_VARIANCE = 1e-5
#: below this mean eye-open ratio the first source frame counts as blinking (``source_video_eye_retargeting_threshold``)
EYE_OPEN_THRESHOLD = 0.18
#: the eye-open target used instead when the first frame is blinking
EYE_OPEN_FALLBACK = 0.39

#: keypoint rows whose whole expression comes from exp_i in the regions 'all' and 'exp'
EXP_ROWS = (1, 2, 6, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20)
#: single (row, axis) entries that come from exp_i too: [3:5, y], [5, z], [8, z], [9, y:z]
EXP_ENTRIES = ((3, 1), (4, 1), (5, 2), (8, 2), (9, 1), (9, 2))


def expression_mask(region: str) -> np.ndarray:
    """(21, 3) bool: the entries of the expression a source frame takes from the composed (driving) sequence in
    ``region``; the others keep the source frame's own expression."""
    if region not in REGIONS:
        raise ValueError(f"region must be one of {REGIONS}, got {region!r}")
    mask = np.zeros((21, 3), bool)
    if region in ("all", "exp"):
        mask[list(EXP_ROWS)] = True
        for row, axis in EXP_ENTRIES:
            mask[row, axis] = True
    elif region == "lip":
        mask[list(LIP_INDICES)] = True
    elif region == "eyes":
        mask[list(EYE_INDICES)] = True
    return mask


def kalman_smooth(observations: np.ndarray, observation_variance: float = OBSERVATION_VARIANCE,
                  transition_variance: float = TRANSITION_VARIANCE) -> np.ndarray:
    """Rauch-Tung-Striebel smoothed means of a random walk observed directly: (T, ...) -> (T, ...) float64.

    The model is pykalman's ``KalmanFilter`` with identity transition and observation matrices, no offsets,
    transition covariance ``transition_variance * I``, observation covariance ``observation_variance * I``,
    initial state mean ``observations[0]`` and initial state covariance ``I`` (pykalman's default). With
    diagonal covariances every dimension is the same scalar filter, so the gains are computed once for all of
    them (pykalman's ``pinv`` of a zero variance is 0, kept here). ``observation_variance=0`` returns the
    observations unchanged.
    """
    z = np.asarray(observations, dtype=np.float64)
    shape = z.shape
    t_len = shape[0]
    if t_len == 0:
        return z.copy()
    z = z.reshape(t_len, -1)  # (T, D)
    r, q = float(observation_variance), float(transition_variance)
    if not (np.isfinite(r) and np.isfinite(q) and r >= 0 and q >= 0):
        raise ValueError(f"variances must be finite and non-negative, got {r} and {q}")
    p_pred = np.empty(t_len)  # P(x_t | z_0..t-1), the same for every dimension
    p_filt = np.empty(t_len)  # P(x_t | z_0..t)
    m_filt = np.empty_like(z)
    mean, var = z[0], 1.0
    for t in range(t_len):
        if t > 0:
            mean, var = m_filt[t - 1], p_filt[t - 1] + q
        p_pred[t] = var
        gain = var / (var + r) if var + r > 0 else 0.0
        m_filt[t] = mean + gain * (z[t] - mean)
        p_filt[t] = var - gain * var
    smoothed = m_filt.copy()
    for t in range(t_len - 2, -1, -1):
        gain = p_filt[t] / p_pred[t + 1] if p_pred[t + 1] > 0 else 0.0
        smoothed[t] = m_filt[t] + gain * (smoothed[t + 1] - m_filt[t])  # the prediction of t+1 is m_filt[t]
    return smoothed.reshape(shape)


@dataclass(frozen=True)
class SourceVideoMotion:
    """The smoothed driving sequence of a video source, one entry per output frame: ``exp`` (T, 21, 3) float32
    (exp_s_i + exp_d_i - exp_d_0, smoothed) and ``rotation`` (T, 3, 3) float32 (R_d_i R_d_0^T R_s_i, smoothed;
    None where the region keeps every source frame's own rotation). ``region`` as
    :data:`lp_renderer.keypoints.REGIONS`."""

    exp: torch.Tensor
    rotation: torch.Tensor | None
    region: str

    @property
    def n_frames(self) -> int:
        return self.exp.shape[0]

    def frames(self, idx) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(exp, rotation)`` of the frames ``idx`` (a slice or index array)."""
        return self.exp[idx], None if self.rotation is None else self.rotation[idx]


def source_video_motion(source: KeypointInfo, driving: KeypointInfo, reference: KeypointInfo | None = None, *,
                        region: str = "all",
                        observation_variance: float = OBSERVATION_VARIANCE) -> SourceVideoMotion:
    """Compose and smooth the motion of a video source (module docstring).

    source: the T source frames' motion; driving: the T driving frames' motion (paired by index); reference:
    the driving reference frame (batch 1; default ``driving[0]``). ``observation_variance``: the smoother's
    observation variance (0: no smoothing).
    """
    if region not in REGIONS:
        raise ValueError(f"region must be one of {REGIONS}, got {region!r}")
    n = source.batch_size
    if driving.batch_size != n:
        raise ValueError(f"source and driving must have the same number of frames, got {n} and "
                         f"{driving.batch_size}")
    device = source.exp.device
    driving = driving.to(device)
    reference = driving[0] if reference is None else reference.to(device)
    exp = (source.exp + (driving.exp - reference.exp)).cpu().numpy()  # (T, 21, 3)
    exp = kalman_smooth(exp.reshape(n, -1), observation_variance).reshape(n, 21, 3)
    rotation = None
    if region in ("all", "pose"):
        rot = (driving.rotation @ reference.rotation.transpose(1, 2)) @ source.rotation  # (T, 3, 3)
        rotation = kalman_smooth(rot.cpu().numpy().reshape(n, 9), observation_variance).reshape(n, 3, 3)
        rotation = torch.as_tensor(rotation, dtype=torch.float32, device=device)
    return SourceVideoMotion(torch.as_tensor(exp, dtype=torch.float32, device=device), rotation, region)


def source_video_keypoints(source: KeypointInfo, exp: torch.Tensor, rotation: torch.Tensor | None,
                           region: str = "all") -> torch.Tensor:
    """x_d (B, 21, 3) of B source frames from their composed motion (``exp`` (B, 21, 3), ``rotation``
    (B, 3, 3) or None; from :meth:`SourceVideoMotion.frames`), before stitching: the expression entries of
    :func:`expression_mask` from ``exp``, the rest, the scale and the translation (tz = 0) of each source frame;
    the rotation from ``rotation`` for 'all' and 'pose', else the source frame's own."""
    b = source.batch_size
    mask = torch.as_tensor(expression_mask(region), device=source.exp.device)
    delta = torch.where(mask, exp.to(source.exp), source.exp)
    if region in ("all", "pose"):
        if rotation is None:
            raise ValueError(f"region {region!r} needs the composed rotation")
        rot = rotation.to(source.exp)
    else:
        rot = source.rotation
    t = torch.cat([source.t[:, :2], torch.zeros_like(source.t[:, 2:])], dim=1)  # tz zeroed
    return compose_keypoints(source.kp, rot.expand(b, 3, 3), delta, source.scale, t)


def eye_retargeting_target(eye_ratios: tuple[float, float] | np.ndarray) -> float:
    """The eye-open target of ``--flag_source_video_eye_retargeting``: the mean of the first source frame's two
    eye-open ratios, or :data:`EYE_OPEN_FALLBACK` when it is below :data:`EYE_OPEN_THRESHOLD` (a blink)."""
    target = float(np.mean(np.asarray(eye_ratios, np.float64)[:2]))
    return EYE_OPEN_FALLBACK if target < EYE_OPEN_THRESHOLD else target


def source_frame_keypoints(renderer: Renderer, source: PreparedSource, x_d: torch.Tensor,
                           options: AnimationOptions = AnimationOptions(), *,
                           driving_eye_ratio: np.ndarray | None = None, driving_lip_ratio: np.ndarray | None = None,
                           eye_target: float | None = None) -> torch.Tensor:
    """Algorithm 1 for one source frame of a video (batch B of the same frame): x_d (B, 21, 3) from
    :func:`source_video_keypoints` -> final driving keypoints.

    Without retargeting: stitching (``options.stitching``), then, when ``eye_target`` is given (the official
    ``flag_source_video_eye_retargeting``), ``+ R_eyes(x_s, [c_s_L, c_s_R, eye_target])`` with the frame's own
    ratios. With eye or lip retargeting: :func:`~lp_renderer.animation.retargeted_keypoints` (the composed
    motion is dropped, as the official relative mode does), then stitching. The driving multiplier last."""
    x_s = source.x_s
    b = x_d.shape[0]
    if options.retarget_eyes or options.retarget_lip:
        x_d = retargeted_keypoints(renderer, source, options, b, driving_eye_ratio, driving_lip_ratio)
        if options.stitching:
            x_d = renderer.stitch(x_s, x_d)
    else:
        if options.stitching:
            x_d = renderer.stitch(x_s, x_d)
        if eye_target is not None:
            left, right = source.eye_ratios if source.eye_ratios is not None else (eye_target, eye_target)
            ratios = np.tile(np.array([[left, right, eye_target]], np.float32), (b, 1))
            x_d = x_d + renderer.retarget_eyes(x_s, ratios)
    return driving_multiplier(x_s, x_d, options.multiplier)


def lip_keypoints(renderer: Renderer, source: PreparedSource, lip_open: np.ndarray,
                  stitching: bool = True) -> torch.Tensor:
    """The mouth of ``source`` set to the lip-open ratios ``lip_open`` (B,), everything else as in the source:
    ``x_s + R_lip(x_s, [c_s_lip, lip_open])``, stitched (B, 21, 3). For a video frame this replaces the frame's
    own mouth opening (``c_s_lip`` is the frame's) rather than adding to it."""
    lip_open = np.asarray(lip_open, np.float32).reshape(-1)
    x_d = retargeted_keypoints(renderer, source, AnimationOptions(retarget_lip=True), len(lip_open),
                               driving_lip_ratio=lip_open)
    return renderer.stitch(source.x_s, x_d) if stitching else x_d
