"""The default motion of ``speak`` as data: :class:`SpeechMotion` (per-frame lip, eyes and head), its ``.npz`` file
(written by ``audio2lp motion``, rendered by ``audio2lp drive PORTRAIT MOTION.npz``) and how it drives the renderer
through LivePortrait's own controls (:func:`speech_motion_keypoints`).

The file holds ``fps`` (scalar), ``lip_open (T,)`` (lip-open ratio for the lip retargeting network),
``eyes_open (T, 2)`` (multipliers of the portrait's own eye-open ratios, image-left and image-right eye; 1 = as in
the photo), ``pitch``, ``yaw``, ``roll`` ``(T,)`` (degrees relative to the portrait's pose), ``tx``, ``ty`` ``(T,)``
(head offset in head sizes, x right, y down) and ``scale (T,)`` (head size relative to the portrait's), all float32,
plus ``format`` and ``seed``. Any tool may edit the arrays; :func:`load_speech_motion` checks them.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lp_renderer.errors import InputError

__all__ = ["FORMAT", "SERIES", "SpeechMotion", "save_speech_motion", "load_speech_motion", "is_speech_motion_file",
           "speech_motion_keypoints", "HEAD_SIZE_KP"]

log = logging.getLogger(__name__)

FORMAT = "audio2lp-speech-motion-v1"
SERIES = ("lip_open", "eyes_open", "pitch", "yaw", "roll", "tx", "ty", "scale")
#: One head size (the measured unit of ``tx``/``ty``: the projection of 100 mm of a generic head, about 0.7 of the
#: 68-landmark face box's width) in LivePortrait's keypoint units, where the source crop (2.3 face boxes wide) spans
#: 2 units: ``2 / 2.3 * 0.714``.
HEAD_SIZE_KP = 2.0 / 2.3 * 100.0 / 140.0


@dataclass(frozen=True)
class SpeechMotion:
    """Per-frame motion at ``fps``: ``lip_open (T,)``, ``eyes_open (T, 2)``, ``pitch``/``yaw``/``roll (T,)`` degrees,
    ``tx``/``ty (T,)`` head sizes, ``scale (T,)``; float32 numpy arrays (see the module docstring)."""

    fps: float
    lip_open: np.ndarray
    eyes_open: np.ndarray
    pitch: np.ndarray
    yaw: np.ndarray
    roll: np.ndarray
    tx: np.ndarray
    ty: np.ndarray
    scale: np.ndarray
    seed: int = 0

    @property
    def n_frames(self) -> int:
        return int(self.lip_open.shape[0])

    def arrays(self) -> dict[str, np.ndarray]:
        """The file's arrays (float32 series, ``fps``, ``seed``, ``format``)."""
        d = {k: np.asarray(getattr(self, k), np.float32) for k in SERIES}
        d.update(fps=np.float32(self.fps), seed=np.int64(self.seed), format=np.array(FORMAT))
        return d

    def eyes_move(self) -> bool:
        """False when every eye multiplier is exactly 1 (eyes as in the photo: no eye retargeting at all)."""
        return bool((self.eyes_open != 1.0).any())


def _bad(path, what: str) -> InputError:
    return InputError(f"{path} is not a usable motion file: {what}; write it with `audio2lp motion` (or fix it).")


def check_speech_motion(data: dict, source: str | os.PathLike = "the motion") -> SpeechMotion:
    """:class:`SpeechMotion` from arrays (a loaded npz), with every key, shape and value checked; raises
    InputError naming what is wrong."""
    missing = [k for k in ("fps",) + SERIES if k not in data]
    if missing:
        raise _bad(source, f"it lacks {', '.join(missing)}")
    try:
        fps = float(np.asarray(data["fps"]).reshape(()))
    except (TypeError, ValueError):
        raise _bad(source, f"fps must be one number, got shape {np.shape(data['fps'])}") from None
    if not (np.isfinite(fps) and 1.0 <= fps <= 120.0):
        raise _bad(source, f"fps must be between 1 and 120, got {fps:g}")
    out = {}
    n = None
    for k in SERIES:
        a = np.asarray(data[k])
        if a.dtype.kind not in "fiu":
            raise _bad(source, f"'{k}' must hold numbers, got {a.dtype}")
        want = (a.shape[0] if a.ndim else -1, 2) if k == "eyes_open" else (a.shape[0] if a.ndim else -1,)
        if a.ndim != len(want) or a.shape != want:
            raise _bad(source, f"'{k}' must have shape {'(T, 2)' if k == 'eyes_open' else '(T,)'}, got {a.shape}")
        if n is None:
            n = a.shape[0]
        elif a.shape[0] != n:
            raise _bad(source, f"'{k}' has {a.shape[0]} frames but 'lip_open' has {n}")
        if not np.isfinite(a).all():
            raise _bad(source, f"'{k}' contains NaN or infinite values")
        out[k] = a.astype(np.float32)
    if n == 0:
        raise _bad(source, "it has no frames")
    if (out["lip_open"] < 0).any() or (out["eyes_open"] < 0).any():
        raise _bad(source, "'lip_open' and 'eyes_open' must be >= 0")
    if (out["scale"] <= 0).any():
        raise _bad(source, "'scale' must be > 0")
    seed = int(np.asarray(data["seed"]).reshape(())) if "seed" in data and np.size(data["seed"]) == 1 else 0
    return SpeechMotion(fps=fps, seed=seed, **out)


def save_speech_motion(path: str | os.PathLike, motion: SpeechMotion) -> Path:
    """Write ``motion`` as an ``.npz`` atomically. Returns the path."""
    from audio2lp.media.atomic import atomic_output

    path = Path(path)
    with atomic_output(path) as tmp, open(tmp, "wb") as f:  # a file object: numpy does not append ".npz"
        np.savez(f, **motion.arrays())
    log.info("wrote motion %s (%d frames at %g fps)", path, motion.n_frames, motion.fps)
    return path


def is_speech_motion_file(path: str | os.PathLike) -> bool:
    """True for an ``.npz`` that holds any per-frame series of a speech motion (and is not a motion template)."""
    p = Path(path)
    if p.suffix.lower() != ".npz" or not p.is_file():
        return False
    try:
        with np.load(p, allow_pickle=False) as z:
            names = set(z.files)
    except Exception:  # noqa: BLE001 - not readable as npz: the template loader reports it
        return False
    return "motion" not in names and bool(names & set(SERIES))


def load_speech_motion(path: str | os.PathLike) -> SpeechMotion:
    """Read and check a motion file (never unpickles); InputError with one sentence on any problem."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"motion file {path} does not exist; check the path.")
    from audio2lp.models.motion import read_plain_npz

    return check_speech_motion(read_plain_npz(path, "motion file", "write it with `audio2lp motion` or numpy.savez "
                                                                  "of plain arrays"), path)


def speech_motion_keypoints(renderer, pf, motion: SpeechMotion, idx: np.ndarray, eyes: bool | None = None,
                            edit=None):
    """Driving keypoints ``(B, 21, 3)`` of frames ``idx`` (B,) for one portrait face ``pf``, stitched.

    LivePortrait's own controls: the portrait's pose plus ``pitch/yaw/roll``, its translation plus
    ``(tx, ty) * HEAD_SIZE_KP`` (the source crop puts every face at the same size), its scale times ``scale``;
    then the lip retargeting delta for ``[portrait lip ratio, lip_open]`` and (when ``eyes``, default
    :meth:`SpeechMotion.eyes_move`: the whole file, so every batch agrees) the eye retargeting delta for
    ``[left, right, mean(left * eyes_open_l, right * eyes_open_r)]``; then stitching. ``edit``
    (:class:`~lp_renderer.editing.PortraitEdit`): constant slider offsets; the motion is applied around the portrait
    edited by them, while retargeting and stitching see the real source.
    """
    from lp_renderer.editing import edited_info
    from lp_renderer.keypoints import transform_keypoints
    from lp_renderer.renderer import host_to_device

    src = pf.source
    dev = renderer.device
    info = src.info if edit is None else edited_info(src.info, edit)
    b = len(idx)

    def col(name):  # (B, 1) float32 on the renderer's device
        return host_to_device(np.asarray(getattr(motion, name)[idx], np.float32), dev)[:, None]

    t = info.t.expand(b, -1).clone()  # (B, 3); the crop fixes the face's size, so a head size is HEAD_SIZE_KP
    t[:, 0] = t[:, 0] + col("tx")[:, 0] * HEAD_SIZE_KP
    t[:, 1] = t[:, 1] + col("ty")[:, 0] * HEAD_SIZE_KP
    posed = info.replace(kp=info.kp.expand(b, -1, -1), exp=info.exp.expand(b, -1, -1),
                         pitch=info.pitch + col("pitch"), yaw=info.yaw + col("yaw"), roll=info.roll + col("roll"),
                         t=t, scale=info.scale.expand(b, -1) * col("scale"))
    x_d = transform_keypoints(posed)
    lip_s = src.lip_ratio if src.lip_ratio is not None else 0.0
    lip = np.column_stack([np.full(b, lip_s), motion.lip_open[idx]]).astype(np.float32)
    x_d = x_d + renderer.retarget_lip(src.x_s, lip)
    if motion.eyes_move() if eyes is None else eyes:
        left, right = src.eye_ratios if src.eye_ratios is not None else (0.35, 0.35)
        e = motion.eyes_open[idx]
        target = 0.5 * (left * e[:, 0] + right * e[:, 1])
        ratios = np.column_stack([np.full(b, left), np.full(b, right), target]).astype(np.float32)
        x_d = x_d + renderer.retarget_eyes(src.x_s, ratios)
    return renderer.stitch(src.x_s, x_d)
