"""Portrait editing: the official image-retargeting tab's sliders as keypoint maths (spec sections 8.2 and 10).

The official Gradio app edits a still portrait with seventeen sliders (``gradio_pipeline.py`` of the official
code, ``execute_image_retargeting``). :class:`PortraitEdit` holds their values, checked against the official
ranges (:data:`SLIDERS`); the maths:

1. :func:`expression_offsets` / :func:`apply_expression_offsets`: each expression slider adds fixed per-keypoint
   offsets (coefficient x value) to the source expression ``exp_s`` (21, 3), in the official order: gaze, smile,
   wink, eyebrow, pouting, pursing, grin, lip close<->open, mov_x (negated), mov_y; a slider at 0 adds nothing.
   Gaze horizontal and eyebrow have a ``> 0`` and a ``<= 0`` branch with different keypoints and coefficients.
2. :func:`edit_keypoints`: the tab's composition (``gradio_pipeline.py`` line 312)::

       R_d_new = (R(p_s + dp, y_s + dy, r_s + dr) @ R_s^T) @ R_s
       x_d     = mov_z * scale_s * (x_c_s @ R_d_new + (exp_s + offsets)) + t_s     # t_s keeps tz here

   Unlike everywhere else in LivePortrait, ``t_s`` is added with its z component (an official quirk, kept).
3. :func:`edited_keypoints`: plus eye / lip retargeting towards the target ratios (each only when its slider
   differs from the source's own ratio rounded to 2 decimals, the tab's initial value; eyes: the mean of both),
   then stitching. The deltas are computed from the unedited source keypoints ``x_s``, as the official tab does.

:func:`edited_info` is the same edit applied to motion parameters (expression + offsets, pose + the relative
angles, scale x mov_z), for animations that move relative to an edited portrait: the driving / speech pipeline
then composes keypoints its own way (Eq. 2: tz dropped).

Importing this module does not import torch (the slider table is read by option schemas before torch loads).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import numpy as np

from .errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .keypoints import KeypointInfo
    from .renderer import PreparedSource, Renderer

__all__ = ["EXPRESSION_SLIDERS", "OFFSETS", "SLIDERS", "PortraitEdit", "Slider", "apply_expression_offsets",
           "edit_keypoints", "edited_info", "edited_keypoints", "expression_offsets", "offset_terms",
           "source_ratio_targets"]


@dataclass(frozen=True)
class Slider:
    """One slider of the official tab: its range (inclusive), neutral value (None: "the source's own", for the
    target ratios) and the official label."""

    name: str
    minimum: float
    maximum: float
    neutral: float | None
    official: str


#: The official tab's sliders and ranges (``app.py``), in its order.
SLIDERS: dict[str, Slider] = {s.name: s for s in [
    Slider("eye_ratio", 0.0, 0.8, None, "target eyes-open ratio"),
    Slider("lip_ratio", 0.0, 0.8, None, "target lip-open ratio"),
    Slider("pitch", -15.0, 15.0, 0.0, "relative pitch"),
    Slider("yaw", -25.0, 25.0, 0.0, "relative yaw"),
    Slider("roll", -15.0, 15.0, 0.0, "relative roll"),
    Slider("mov_x", -0.19, 0.19, 0.0, "x-axis movement"),
    Slider("mov_y", -0.19, 0.19, 0.0, "y-axis movement"),
    Slider("mov_z", 0.9, 1.2, 1.0, "z-axis movement"),
    Slider("pouting", -0.09, 0.09, 0.0, "pouting (lip_variation_zero)"),
    Slider("pursing", -20.0, 15.0, 0.0, "pursing (lip_variation_one)"),
    Slider("grin", 0.0, 15.0, 0.0, "grin (lip_variation_two)"),
    Slider("lip_open", -90.0, 120.0, 0.0, "lip close <-> open (lip_variation_three)"),
    Slider("smile", -0.3, 1.3, 0.0, "smile"),
    Slider("wink", 0.0, 39.0, 0.0, "wink"),
    Slider("eyebrow", -30.0, 30.0, 0.0, "eyebrow"),
    Slider("gaze_x", -30.0, 30.0, 0.0, "eye gaze (horizontal) (eyeball_direction_x)"),
    Slider("gaze_y", -63.0, 63.0, 0.0, "eye gaze (vertical) (eyeball_direction_y)"),
]}

#: The sliders that add per-keypoint expression offsets (:data:`OFFSETS`).
EXPRESSION_SLIDERS = ("gaze_x", "gaze_y", "smile", "wink", "eyebrow", "pouting", "pursing", "grin", "lip_open",
                      "mov_x", "mov_y")

X, Y, Z = 0, 1, 2

#: The official offsets (spec section 10), in the official order of application: (slider, branch, value
#: transform, ((kp, axis, coefficient), ...)). The amount added to ``exp[kp, axis]`` is ``coefficient * v``
#: where ``v`` is the slider value after the transform: ``"v"`` as is, ``"-v"`` negated (mov_x),
#: ``"-v/2"`` (gaze vertical's blink term); ``branch`` is ``"pos"`` (value > 0), ``"nonpos"`` (value <= 0) or
#: ``"any"``.
OFFSETS: tuple[tuple[str, str, str, tuple[tuple[int, int, float], ...]], ...] = (
    ("gaze_x", "pos", "v", ((11, X, 0.0007), (15, X, 0.001))),
    ("gaze_x", "nonpos", "v", ((11, X, 0.001), (15, X, 0.0007))),
    ("gaze_y", "any", "v", ((11, Y, -0.001), (15, Y, -0.001))),
    ("gaze_y", "any", "-v/2", ((11, Y, -0.001), (13, Y, 0.0003), (15, Y, -0.001), (16, Y, 0.0003))),
    ("smile", "any", "v", ((20, Y, -0.01), (14, Y, -0.02), (17, Y, 0.0065), (17, Z, 0.003), (13, Y, -0.00275),
                           (16, Y, -0.00275), (3, Y, -0.0035), (7, Y, -0.0035))),
    ("wink", "any", "v", ((11, Y, 0.001), (13, Y, -0.0003), (17, X, 0.0003), (17, Y, 0.0003), (3, Y, -0.0003))),
    ("eyebrow", "pos", "v", ((1, Y, 0.001), (2, Y, -0.001))),
    ("eyebrow", "nonpos", "v", ((1, X, -0.001), (2, X, 0.001), (1, Y, 0.0003), (2, Y, -0.0003))),
    ("pouting", "any", "v", ((19, X, 1.0),)),
    ("pursing", "any", "v", ((14, Y, 0.001), (3, Y, -0.0005), (7, Y, -0.0005), (17, Z, -0.0005))),
    ("grin", "any", "v", ((20, Z, -0.001), (20, Y, -0.001), (14, Y, -0.001))),
    ("lip_open", "any", "v", ((19, Y, 0.001), (19, Z, 0.0001), (17, Y, -0.0001))),
    ("mov_x", "any", "-v", ((5, X, 1.0),)),
    ("mov_y", "any", "v", ((5, Y, 1.0),)),
)


@dataclass(frozen=True)
class PortraitEdit:
    """The slider values of the official image-retargeting tab (ranges: :data:`SLIDERS`).

    eye_ratio / lip_ratio: target eyes-open / lip-open ratios (0-0.8; None: the source's own, no retargeting).
    pitch / yaw / roll: degrees added to the source's head pose. mov_x / mov_y: offsets of expression row 5
    (moves the face sideways / vertically; mov_x is negated, as in the official code); mov_z: scale multiplier
    (0.9-1.2). The others add the expression offsets of :data:`OFFSETS`. Values outside a range raise
    :class:`InputError` naming the slider.
    """

    eye_ratio: float | None = None
    lip_ratio: float | None = None
    pitch: float = 0.0
    yaw: float = 0.0
    roll: float = 0.0
    mov_x: float = 0.0
    mov_y: float = 0.0
    mov_z: float = 1.0
    pouting: float = 0.0
    pursing: float = 0.0
    grin: float = 0.0
    lip_open: float = 0.0
    smile: float = 0.0
    wink: float = 0.0
    eyebrow: float = 0.0
    gaze_x: float = 0.0
    gaze_y: float = 0.0

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            s = SLIDERS[f.name]
            if v is None and s.neutral is None:
                continue
            try:
                ok = not isinstance(v, bool) and math.isfinite(float(v)) and s.minimum <= float(v) <= s.maximum
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise InputError(f"{f.name} must be between {s.minimum:g} and {s.maximum:g}, not {v!r}.")
            object.__setattr__(self, f.name, float(v))

    @property
    def moves_pose(self) -> bool:
        """Whether the head pose or the scale change (pitch, yaw, roll, mov_z)."""
        return (self.pitch, self.yaw, self.roll, self.mov_z) != (0.0, 0.0, 0.0, 1.0)

    @property
    def is_neutral(self) -> bool:
        """True when nothing changes (every slider neutral, no target ratio)."""
        return all(getattr(self, f.name) == SLIDERS[f.name].neutral for f in fields(self))


def offset_terms(edit: PortraitEdit) -> list[tuple[int, int, np.float32]]:
    """The official increments of ``edit``, in the order the official code adds them: ``(kp, axis, amount)`` with
    ``amount = float32(float32(v) * coefficient)``, as the official float32 tensor arithmetic computes it (a
    slider at 0 contributes nothing)."""
    out = []
    for name, branch, transform, terms in OFFSETS:
        v = np.float32(getattr(edit, name))
        if v == 0 or (branch == "pos" and not v > 0) or (branch == "nonpos" and v > 0):
            continue
        v = -v if transform == "-v" else -v / np.float32(2) if transform == "-v/2" else v
        out.extend((kp, axis, np.float32(v * np.float32(c))) for kp, axis, c in terms)
    return out


def expression_offsets(edit: PortraitEdit) -> np.ndarray:
    """The expression offsets of ``edit``: (21, 3) float32, indexed ``[kp, axis]`` (axis 0 = x, 1 = y, 2 = z); the
    sum of :func:`offset_terms` accumulated in the official order."""
    delta = np.zeros((21, 3), np.float32)
    for kp, axis, amount in offset_terms(edit):
        delta[kp, axis] += amount
    return delta


def apply_expression_offsets(exp: torch.Tensor, edit: PortraitEdit) -> torch.Tensor:
    """``exp`` (B, 21, 3) float32 plus the offsets of ``edit``, added one term at a time in the official order (so
    the float32 result is bit-identical to the official in-place additions). Returns a new tensor."""
    out = exp.clone()
    for kp, axis, amount in offset_terms(edit):
        out[:, kp, axis] += float(amount)
    return out


def edited_info(info: KeypointInfo, edit: PortraitEdit) -> KeypointInfo:
    """Motion parameters (batch B) with ``edit`` applied: expression + offsets, pitch / yaw / roll + the relative
    angles (degrees), scale x mov_z; ``kp`` and ``t`` unchanged. The target ratios are not motion parameters
    and are ignored here."""
    if edit.is_neutral:
        return info
    return info.replace(exp=apply_expression_offsets(info.exp, edit), pitch=info.pitch + edit.pitch,
                        yaw=info.yaw + edit.yaw, roll=info.roll + edit.roll, scale=info.scale * edit.mov_z)


def edit_keypoints(info: KeypointInfo, edit: PortraitEdit) -> torch.Tensor:
    """The official tab's composition (module docstring, step 2) for the source motion ``info`` (batch B):
    ``x_d = mov_z * scale_s * (x_c_s @ R_d_new + exp_s + offsets) + t_s`` with t_s's z kept. Returns x_d
    (B, 21, 3) float32, before retargeting and stitching."""
    from .keypoints import rotation_matrix

    r_s = info.rotation  # (B, 3, 3)
    r_d_user = rotation_matrix(info.pitch + edit.pitch, info.yaw + edit.yaw, info.roll + edit.roll)
    r_d_new = (r_d_user @ r_s.permute(0, 2, 1)) @ r_s
    delta = apply_expression_offsets(info.exp, edit)
    scale = (edit.mov_z * info.scale)[..., None]  # (B, 1) -> (B, 1, 1)
    return scale * (info.kp @ r_d_new + delta) + info.t[:, None, :]


def source_ratio_targets(source: PreparedSource) -> tuple[float | None, float | None]:
    """The tab's initial eye / lip slider values for ``source``: its eyes-open ratio (mean of both eyes) and
    lip-open ratio, rounded to 2 decimals (None where the source has no ratios)."""
    eye = None if source.eye_ratios is None else round(float(np.mean(source.eye_ratios)), 2)
    lip = None if source.lip_ratio is None else round(float(source.lip_ratio), 2)
    return eye, lip


def edited_keypoints(renderer: Renderer, source: PreparedSource, edit: PortraitEdit,
                     stitching: bool = True) -> torch.Tensor:
    """The tab's driving keypoints for ``source`` (batch 1): :func:`edit_keypoints`, plus the eye retargeting
    delta ``R_eye(x_s, [left, right, eye_ratio])`` when ``eye_ratio`` is set and differs from the source's
    rounded ratio (:func:`source_ratio_targets`), plus ``R_lip(x_s, [lip, lip_ratio])`` likewise, then stitching
    (``S(x_s, x_d)``) when ``stitching``. Returns x_d (1, 21, 3) float32 on the source's device."""
    x_d = edit_keypoints(source.info, edit)
    eye_now, lip_now = source_ratio_targets(source)
    if edit.eye_ratio is not None and edit.eye_ratio != eye_now:
        if source.eye_ratios is None:
            raise InputError("a target eyes-open ratio needs the portrait's eye landmarks; they are missing.")
        left, right = source.eye_ratios
        x_d = x_d + renderer.retarget_eyes(source.x_s, np.array([[left, right, edit.eye_ratio]], np.float32))
    if edit.lip_ratio is not None and edit.lip_ratio != lip_now:
        if source.lip_ratio is None:
            raise InputError("a target lip-open ratio needs the portrait's mouth landmarks; they are missing.")
        x_d = x_d + renderer.retarget_lip(source.x_s, np.array([[source.lip_ratio, edit.lip_ratio]], np.float32))
    if stitching:
        x_d = renderer.stitch(source.x_s, x_d)
    return x_d
