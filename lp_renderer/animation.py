"""Algorithm 1 of the paper as the official pipeline runs it: driving motion -> driving keypoints x_d.

For each driving frame i (relative mode, image source)::

    x_d = Eq. 7 (source, driving_i, driving_0, region)     # driving_0 = None for a single image
    x_d = (x_d - x_d0) * multiplier + x_s                  # expression-friendly (driving videos only)
    if no retargeting:  x_d = S(x_s, x_d) if stitching
    else:               x_d = x_s + R_eyes(...) + R_lip(...);  x_d = S(x_s, x_d) if stitching
    x_d = x_s + (x_d - x_s) * driving_multiplier

With eye or lip retargeting on, the official relative mode discards the driving pose and
expression (x_d starts again from x_s); we keep that behaviour.

An optional :class:`~lp_renderer.editing.PortraitEdit` (the image-retargeting tab's sliders, without the target
ratios) edits the source's motion first (:func:`~lp_renderer.editing.edited_info`): the driving motion is then
applied relative to the edited portrait, which also takes the place of x_s as the centre of the
expression-friendly and driving multipliers and as the start of retargeting; stitching and the retargeting deltas
still see the real x_s. The offsets are thus constant on top of the driven expression and pose.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .editing import PortraitEdit, edited_info
from .errors import InputError
from .keypoints import (
    REGIONS,
    KeypointInfo,
    driving_multiplier,
    expression_friendly,
    motion_multiplier,
    relative_motion,
    transform_keypoints,
)
from .renderer import PreparedSource, Renderer


@dataclass(frozen=True)
class AnimationOptions:
    """Options of the video-driven animation (names follow the official CLI flags).

    region: which part of the driving motion is applied ('all', 'exp', 'pose', 'lip', 'eyes').
    stitching: apply the stitching network (keeps shoulders in place; needed for paste-back).
    retarget_eyes / retarget_lip: drive eyes / lips by the driving frames' landmark ratios through
    the retargeting networks instead of by keypoint motion.
    multiplier: scales the motion around the source keypoints (1.0 = as driven).
    expression_friendly: the official default driving option.
    """

    region: str = "all"
    stitching: bool = True
    retarget_eyes: bool = False
    retarget_lip: bool = False
    multiplier: float = 1.0
    expression_friendly: bool = True

    def __post_init__(self):
        if self.region not in REGIONS:
            raise InputError(f"--region must be one of {', '.join(REGIONS)}, not {self.region!r}.")
        if not np.isfinite(self.multiplier) or self.multiplier < 0:
            raise InputError(f"--multiplier must be a non-negative number, not {self.multiplier}.")


def _reference_multiplier(source: PreparedSource, reference: KeypointInfo, x_d0: torch.Tensor) -> float:
    """:func:`motion_multiplier` of the source and the reference frame, computed once per (source, reference): it
    needs the keypoints on the host (a convex hull), which on a GPU would wait for the device on every batch."""
    key = ("motion_multiplier", id(reference))
    hit = source.derived.get(key)
    if hit is None or hit[0] is not reference:
        hit = source.derived[key] = (reference, motion_multiplier(source.x_s, x_d0))
    return hit[1]


def driving_keypoints(renderer: Renderer, source: PreparedSource, driving: KeypointInfo,
                      reference: KeypointInfo | None, options: AnimationOptions = AnimationOptions(),
                      driving_eye_ratio: np.ndarray | None = None,
                      driving_lip_ratio: np.ndarray | None = None,
                      edit: PortraitEdit | None = None) -> torch.Tensor:
    """Driving keypoints x_d (B, 21, 3) for a batch of driving frames.

    driving: motion of B driving frames; reference: the first driving frame (batch 1), or None for a
    single driving image (its expression is then taken relative to ``renderer.neutral_exp``, LivePortrait's
    ``lip_array.pkl``, when the weights folder has it; see :func:`relative_motion`).
    driving_eye_ratio (B,) / driving_lip_ratio (B,): landmark ratios of the driving frames, required when
    the matching retargeting option is on (and the source's own ratios must be set on ``source``).
    edit: constant slider offsets (module docstring; its target ratios must be None).
    """
    device = source.x_s.device
    driving = driving.to(device)
    x_s = source.x_s
    base, x_base = source.info, x_s
    if edit is not None and not edit.is_neutral:
        if edit.eye_ratio is not None or edit.lip_ratio is not None:
            raise InputError("target eye / lip ratios edit a still portrait; an animation drives eyes and lips "
                             "itself (use eye / lip retargeting instead).")
        base = edited_info(source.info, edit)
        x_base = transform_keypoints(base)
    x_d = relative_motion(base, driving, reference.to(device) if reference is not None else None,
                          options.region, neutral_exp=renderer.neutral_exp)
    if options.expression_friendly and reference is not None:
        x_d0 = relative_motion(base, reference.to(device), reference.to(device), options.region)
        mult = (_reference_multiplier(source, reference, x_d0) if x_base is x_s
                else motion_multiplier(x_base, x_d0))  # an edited portrait: its own multiplier
        x_d = expression_friendly(x_d, x_d0, x_base, mult)
    if options.retarget_eyes or options.retarget_lip:
        x_d = retargeted_keypoints(renderer, source, options, x_d.shape[0], driving_eye_ratio, driving_lip_ratio,
                                   base=x_base)
    if options.stitching:
        x_d = renderer.stitch(x_s, x_d)
    return driving_multiplier(x_base, x_d, options.multiplier)


def retargeted_keypoints(renderer: Renderer, source: PreparedSource, options: AnimationOptions, batch: int,
                         driving_eye_ratio: np.ndarray | None = None,
                         driving_lip_ratio: np.ndarray | None = None,
                         base: torch.Tensor | None = None) -> torch.Tensor:
    """Algorithm 1's retargeting branch in relative mode: ``x_s + R_eyes(x_s, [c_s_eyes, c_d_eye]) +
    R_lip(x_s, [c_s_lip, c_d_lip])`` (B, 21, 3), each delta only when its option is on; the driving pose and
    expression are not used (as the official code). Before stitching.

    driving_eye_ratio (B,) / driving_lip_ratio (B,): the target ratios; the source's own ratios come from
    ``source`` (``eye_ratios``, ``lip_ratio``). base (1, 21, 3): the keypoints the deltas are added to (default
    ``x_s``; the edited portrait's keypoints when slider offsets apply); the networks always see the real ``x_s``.
    """
    x_s = source.x_s
    start = x_s if base is None else base
    x_d = start.expand(batch, *start.shape[1:]).clone()
    if options.retarget_eyes:
        if source.eye_ratios is None or driving_eye_ratio is None:
            raise InputError("eye retargeting needs eye-open ratios of the source and driving faces "
                             "(landmarks); they are missing.")
        ratios = np.column_stack([np.full(batch, source.eye_ratios[0]), np.full(batch, source.eye_ratios[1]),
                                  np.asarray(driving_eye_ratio, dtype=np.float32).reshape(batch)])
        x_d = x_d + renderer.retarget_eyes(x_s, ratios.astype(np.float32))
    if options.retarget_lip:
        if source.lip_ratio is None or driving_lip_ratio is None:
            raise InputError("lip retargeting needs lip-open ratios of the source and driving faces "
                             "(landmarks); they are missing.")
        ratios = np.column_stack([np.full(batch, source.lip_ratio),
                                  np.asarray(driving_lip_ratio, dtype=np.float32).reshape(batch)])
        x_d = x_d + renderer.retarget_lip(x_s, ratios.astype(np.float32))
    return x_d
