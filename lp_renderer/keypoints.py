"""Implicit-keypoint maths of LivePortrait (paper Eq. 2 and Eq. 7, the expression-friendly multiplier).

Keypoints are row vectors: (B, 21, 3) in normalised [-1, 1] coordinates (x, y, z). Angles are degrees.
Everything here is pure tensor maths; the networks that consume it live in :mod:`lp_renderer.renderer`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields, replace

import numpy as np
import torch
import torch.nn.functional as F

#: Keypoint rows that move the lips / the eyes (as used by the official ``animation_region`` option).
LIP_INDICES = (6, 12, 14, 17, 19, 20)
EYE_INDICES = (11, 13, 15, 16, 18)
REGIONS = ("all", "exp", "pose", "lip", "eyes")

log = logging.getLogger(__name__)


#: Number of head-pose bins of M's pitch / yaw / roll heads (3 degrees each, -97.5 .. 97.5).
NUM_BINS = 66


def headpose_to_degrees(logits: torch.Tensor) -> torch.Tensor:
    """Pose-bin logits (B, 66) -> degrees (B,), the softmax expectation ``E[bin] * 3 - 97.5``.

    As the official ``headpose_pred_to_degree``, any tensor whose dim 1 is not :data:`NUM_BINS` (or
    that has fewer than two dims) is returned unchanged (already degrees), so calling it twice is harmless.
    """
    if logits.ndim < 2 or logits.shape[1] != NUM_BINS:
        return logits
    idx = torch.arange(NUM_BINS, dtype=torch.float32, device=logits.device)
    return torch.sum(F.softmax(logits, dim=1) * idx, dim=1) * 3 - 97.5


def rotation_matrix(pitch: torch.Tensor, yaw: torch.Tensor, roll: torch.Tensor) -> torch.Tensor:
    """Degrees, each (B,) or (B, 1) -> (B, 3, 3) matrix R with ``kp @ R`` = Rz Ry Rx applied to kp.

    Returns ``(Rz @ Ry @ Rx)^T`` exactly as the official ``get_rotation_matrix``.
    """
    x = pitch.reshape(-1, 1) / 180 * np.pi
    y = yaw.reshape(-1, 1) / 180 * np.pi
    z = roll.reshape(-1, 1) / 180 * np.pi
    b = x.shape[0]
    ones = torch.ones(b, 1, dtype=x.dtype, device=x.device)
    zeros = torch.zeros(b, 1, dtype=x.dtype, device=x.device)
    rot_x = torch.cat([ones, zeros, zeros, zeros, torch.cos(x), -torch.sin(x), zeros, torch.sin(x),
                       torch.cos(x)], dim=1).reshape(b, 3, 3)
    rot_y = torch.cat([torch.cos(y), zeros, torch.sin(y), zeros, ones, zeros, -torch.sin(y), zeros,
                       torch.cos(y)], dim=1).reshape(b, 3, 3)
    rot_z = torch.cat([torch.cos(z), -torch.sin(z), zeros, torch.sin(z), torch.cos(z), zeros, zeros, zeros,
                       ones], dim=1).reshape(b, 3, 3)
    return torch.bmm(torch.bmm(rot_z, rot_y), rot_x).permute(0, 2, 1)


def rotation_to_degrees(rotation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of :func:`rotation_matrix`: (B, 3, 3) -> pitch, yaw, roll in degrees, each (B, 1).

    Unique for |yaw| < 90 degrees (LivePortrait's pose range is within it for faces).
    """
    m = rotation.transpose(1, 2).double()  # Rz @ Ry @ Rx
    pitch = torch.atan2(m[:, 2, 1], m[:, 2, 2])
    yaw = torch.asin((-m[:, 2, 0]).clamp(-1, 1))
    roll = torch.atan2(m[:, 1, 0], m[:, 0, 0])
    return tuple((a * 180 / np.pi).float().reshape(-1, 1) for a in (pitch, yaw, roll))


@dataclass(frozen=True)
class KeypointInfo:
    """Motion of a batch of faces as M predicts it, post-processed.

    kp, exp: (B, 21, 3); pitch, yaw, roll: (B, 1) degrees; t: (B, 3) (tz unused by rendering);
    scale: (B, 1). All float32.
    """

    kp: torch.Tensor
    exp: torch.Tensor
    pitch: torch.Tensor
    yaw: torch.Tensor
    roll: torch.Tensor
    t: torch.Tensor
    scale: torch.Tensor

    @property
    def batch_size(self) -> int:
        return self.kp.shape[0]

    @property
    def rotation(self) -> torch.Tensor:
        """(B, 3, 3), see :func:`rotation_matrix`."""
        return rotation_matrix(self.pitch, self.yaw, self.roll)

    def map(self, fn) -> KeypointInfo:
        return KeypointInfo(**{f.name: fn(getattr(self, f.name)) for f in fields(self)})

    def __getitem__(self, idx) -> KeypointInfo:
        """Batch slice, keeping the batch dim (an int index gives batch size 1)."""
        if isinstance(idx, int):
            idx = slice(idx, idx + 1 if idx != -1 else None)
        return self.map(lambda t: t[idx])

    def to(self, *args, **kwargs) -> KeypointInfo:
        return self.map(lambda t: t.to(*args, **kwargs))

    @staticmethod
    def cat(items: list[KeypointInfo]) -> KeypointInfo:
        return KeypointInfo(**{f.name: torch.cat([getattr(i, f.name) for i in items]) for f in fields(KeypointInfo)})

    def replace(self, **kwargs) -> KeypointInfo:
        return replace(self, **kwargs)

    def as_numpy(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name).detach().cpu().numpy() for f in fields(self)}

    @staticmethod
    def from_numpy(d: dict[str, np.ndarray], device: str | torch.device = "cpu") -> KeypointInfo:
        return KeypointInfo(**{f.name: torch.as_tensor(np.asarray(d[f.name], dtype=np.float32), device=device)
                               for f in fields(KeypointInfo)})


def motion_from_raw(raw: dict[str, torch.Tensor]) -> KeypointInfo:
    """M's raw heads -> :class:`KeypointInfo` (pose in degrees, kp/exp reshaped to (B, 21, 3))."""
    b = raw["kp"].shape[0]
    return KeypointInfo(
        kp=raw["kp"].reshape(b, -1, 3),
        exp=raw["exp"].reshape(b, -1, 3),
        pitch=headpose_to_degrees(raw["pitch"]).reshape(b, 1),
        yaw=headpose_to_degrees(raw["yaw"]).reshape(b, 1),
        roll=headpose_to_degrees(raw["roll"]).reshape(b, 1),
        t=raw["t"],
        scale=raw["scale"],
    )


def transform_keypoints(info: KeypointInfo) -> torch.Tensor:
    """Paper Eq. 2: ``x = scale * (kp @ R + exp)``, then ``+ t`` on x and y only (tz is never applied).

    Returns (B, 21, 3).
    """
    x = info.kp @ info.rotation + info.exp
    x = x * info.scale[..., None]
    return torch.cat([x[..., :2] + info.t[:, None, :2], x[..., 2:]], dim=-1)


def compose_keypoints(kp: torch.Tensor, rotation: torch.Tensor, exp: torch.Tensor, scale: torch.Tensor,
                      t: torch.Tensor) -> torch.Tensor:
    """``scale * (kp @ R + exp) + t`` with t (B, 3) added to all three coordinates (the caller zeroes tz)."""
    return scale[..., None] * (kp @ rotation + exp) + t[:, None, :]


def relative_motion(source: KeypointInfo, driving: KeypointInfo, reference: KeypointInfo | None,
                    region: str = "all", neutral_exp: torch.Tensor | None = None) -> torch.Tensor:
    """Paper Eq. 7, the official relative mode: driving motion applied relative to a reference frame.

    ``source`` has batch 1 (or B); ``driving`` has batch B; ``reference`` (batch 1) is the first driving
    frame. ``region`` is one of :data:`REGIONS`. Returns x_d (B, 21, 3) before stitching::

        R   = (R_d R_d0^T) R_s          exp = exp_s + (exp_d - exp_d0)
        s   = s_s * s_d / s_d0           t   = t_s + (t_d - t_d0), tz = 0
        x_d = s * (kp_s R + exp) + t

    With ``reference=None`` (a single driving image) the source pose, scale and t are kept and, as
    the official code, ``exp = exp_s + (exp_d - neutral_exp)`` for the regions 'all', 'exp' and 'lip'
    (``neutral_exp``: LivePortrait's ``lip_array.pkl``, (1, 21, 3)) and ``exp_s + exp_d`` on the eye
    rows for 'eyes'. Without ``neutral_exp`` the source expression stands in for it (``exp = exp_d``), a
    documented deviation from the official output; a warning is logged once.
    """
    if region not in REGIONS:
        raise ValueError(f"region must be one of {REGIONS}, got {region!r}")
    b = driving.batch_size
    r_s = source.rotation.expand(b, 3, 3)
    exp_s = source.exp.expand(b, *source.exp.shape[1:])
    if region == "pose":
        full_exp = exp_s  # unused: 'pose' keeps the source expression
    elif reference is not None:
        full_exp = exp_s + (driving.exp - reference.exp)
    elif region == "eyes":
        full_exp = exp_s + driving.exp  # the official image-driving branch subtracts 0 here
    else:
        if neutral_exp is None:
            _warn_no_neutral_expression()
            neutral = source.exp
        else:
            neutral = neutral_exp.to(dtype=driving.exp.dtype, device=driving.exp.device).reshape(1, *exp_s.shape[1:])
        full_exp = exp_s + (driving.exp - neutral)
    if region in ("all", "exp"):
        delta = full_exp
    elif region == "lip":
        delta = exp_s.clone()
        delta[:, LIP_INDICES] = full_exp[:, LIP_INDICES]
    elif region == "eyes":
        delta = exp_s.clone()
        delta[:, EYE_INDICES] = full_exp[:, EYE_INDICES]
    else:
        delta = exp_s
    # a single driving image is its own reference: R_d R_d^T = I, s_d / s_d = 1, t_d - t_d = 0
    if region in ("all", "pose") and reference is not None:
        r_new = (driving.rotation @ reference.rotation.permute(0, 2, 1)) @ r_s
    else:
        r_new = r_s
    if region == "all" and reference is not None:
        scale = source.scale * (driving.scale / reference.scale)
    else:
        scale = source.scale.expand(b, 1)
    if region in ("all", "pose") and reference is not None:
        t = source.t + (driving.t - reference.t)
    else:
        t = source.t.expand(b, 3)
    t = torch.cat([t[:, :2], torch.zeros_like(t[:, 2:])], dim=1)  # tz zeroed
    return compose_keypoints(source.kp.expand(b, *source.kp.shape[1:]), r_new, delta, scale, t)


_warned_no_neutral = False


def _warn_no_neutral_expression() -> None:
    global _warned_no_neutral
    if not _warned_no_neutral:
        _warned_no_neutral = True
        log.warning("single-image driving without LivePortrait's neutral expression (lip_array.pkl): the "
                    "driving expression is applied as is, which differs from the official output; copy "
                    "lip_array.pkl from the LivePortrait repository's src/utils/resources/ into the "
                    "weights folder to match it.")


def motion_multiplier(x_s: torch.Tensor, x_d0: torch.Tensor) -> float:
    """The expression-friendly multiplier ``sqrt(hull volume(x_s)) / sqrt(hull volume(x_d0))``.

    x_s, x_d0: (1, 21, 3) or (21, 3). Uses scipy's ConvexHull as the official code.
    """
    from scipy.spatial import ConvexHull

    a = ConvexHull(x_s.detach().reshape(-1, 3).cpu().numpy()).volume
    b = ConvexHull(x_d0.detach().reshape(-1, 3).cpu().numpy()).volume
    return float(np.sqrt(a) / np.sqrt(b))


def expression_friendly(x_d: torch.Tensor, x_d0: torch.Tensor, x_s: torch.Tensor, multiplier: float) -> torch.Tensor:
    """``(x_d - x_d0) * multiplier + x_s`` (a no-op for relative motion from an image source)."""
    return (x_d - x_d0) * multiplier + x_s


def apply_stitching(x_d: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Add the stitching MLP's output (B, 3K+2) to x_d (B, K, 3): 3K offsets everywhere, (tx, ty) to x, y."""
    b, k, _ = x_d.shape
    out = x_d + delta[:, : 3 * k].reshape(b, k, 3)
    return torch.cat([out[..., :2] + delta[:, 3 * k: 3 * k + 2].reshape(b, 1, 2), out[..., 2:]], dim=-1)


def driving_multiplier(x_s: torch.Tensor, x_d: torch.Tensor, multiplier: float) -> torch.Tensor:
    """``x_s + (x_d - x_s) * multiplier``, applied last in the official pipeline."""
    return x_d if multiplier == 1.0 else x_s + (x_d - x_s) * multiplier
