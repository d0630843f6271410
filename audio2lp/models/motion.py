"""The 70-number motion vector that audio2lp predicts, one per video frame.

Layout of one frame (LivePortrait's motion extractor outputs, JoyVASA's order)::

    [0:63)   exp      expression offsets of the 21 keypoints, row-major (kp0.x, kp0.y, kp0.z, kp1.x, ...)
    63       pitch    head pose in degrees
    64       yaw
    65       roll
    [66:69)  t        translation (tx, ty, tz); LivePortrait never applies tz
    69       scale

Motion is stored as float32 numpy arrays of shape ``(T, 70)``. Models work on normalised motion
(:class:`MotionStats`, per dimension zero mean / unit std). A *motion template* is a clip of motion
saved as ``.npz`` (:func:`save_motion_template` / :func:`load_motion_template`).

*Relative* motion (:func:`to_relative`) is motion as a change from a reference frame, in the same layout:
expression, angles and translation minus the reference's, scale as the ratio to the reference's minus 1. The
audio-to-motion model predicts relative motion (training targets are relative to each clip's own resting pose and
mouth); ``speak`` applies it to a portrait as :data:`NEUTRAL` + delta with :data:`NEUTRAL` as the reference of
LivePortrait's relative mode, so the portrait keeps its own pose and expression and moves by the delta.
"""

from __future__ import annotations

import logging
import math
import os
import struct
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lp_renderer.errors import InputError

log = logging.getLogger(__name__)

__all__ = [
    "MOTION_DIM", "N_KP", "EXP", "PITCH", "YAW", "ROLL", "POSE", "T", "SCALE",
    "LIP_ROWS", "EYE_ROWS", "LIP_DIMS", "EYE_DIMS", "TEMPLATE_FORMAT",
    "NEUTRAL", "pack_motion", "unpack_motion", "to_relative", "from_relative", "MotionStats", "resample_motion",
    "MotionTemplate", "save_motion_template", "load_motion_template",
]

MOTION_DIM = 70
N_KP = 21
EXP = slice(0, 63)
PITCH, YAW, ROLL = 63, 64, 65
POSE = slice(63, 66)
T = slice(66, 69)
SCALE = 69
LIP_ROWS = (6, 12, 14, 17, 19, 20)
EYE_ROWS = (11, 13, 15, 16, 18)
#: indices into the 70-vector of the exp dims of the lip keypoints (18) and of the eye keypoints (15)
LIP_DIMS = tuple(3 * r + c for r in LIP_ROWS for c in range(3))
EYE_DIMS = tuple(3 * r + c for r in EYE_ROWS for c in range(3))
TEMPLATE_FORMAT = "audio2lp-motion-v1"
#: "no change": zero expression, angles and translation, scale 1 (read-only float32 (70,))
NEUTRAL = np.zeros(MOTION_DIM, np.float32)
NEUTRAL[SCALE] = 1.0
NEUTRAL.flags.writeable = False


def pack_motion(exp, pitch, yaw, roll, t, scale) -> np.ndarray:
    """Pack LivePortrait motion into ``(..., 70)`` float32.

    Args:
        exp: ``(..., 21, 3)`` or ``(..., 63)``. pitch, yaw, roll: ``(...)`` or ``(..., 1)``, degrees.
        t: ``(..., 3)``. scale: ``(...)`` or ``(..., 1)``. ``...`` is usually ``(T,)``; arrays or tensors.
    """
    exp = np.asarray(exp, dtype=np.float32)
    lead = exp.shape[:-2] if exp.shape[-2:] == (N_KP, 3) else exp.shape[:-1]
    exp = exp.reshape(*lead, 63)

    def col(x, width, name):
        x = np.asarray(x, dtype=np.float32)
        if width == 1 and x.shape == lead:
            x = x[..., None]
        if x.shape != (*lead, width):
            raise ValueError(f"{name} has shape {x.shape}, expected {(*lead, width)} to match exp {(*lead, 63)}")
        return x

    parts = [exp, col(pitch, 1, "pitch"), col(yaw, 1, "yaw"), col(roll, 1, "roll"), col(t, 3, "t"),
             col(scale, 1, "scale")]
    return np.concatenate(parts, axis=-1)


def unpack_motion(m) -> dict:
    """Split ``(..., 70)`` motion (numpy array or torch tensor) into its parts.

    Returns a dict with ``exp (..., 21, 3)``, ``pitch``, ``yaw``, ``roll`` ``(...)`` in degrees,
    ``t (..., 3)`` and ``scale (...)``, of the input's type (views where possible).
    """
    if m.shape[-1] != MOTION_DIM:
        raise ValueError(f"motion has shape {tuple(m.shape)}; the last axis must be {MOTION_DIM}")
    lead = tuple(m.shape[:-1])
    return {"exp": m[..., EXP].reshape(*lead, N_KP, 3), "pitch": m[..., PITCH], "yaw": m[..., YAW],
            "roll": m[..., ROLL], "t": m[..., T], "scale": m[..., SCALE]}


def to_relative(motion, reference) -> np.ndarray:
    """Motion ``(..., 70)`` as a change from ``reference`` ``(70,)`` (module docstring): float32 ``(..., 70)``.
    The reference's scale must be positive."""
    m = np.asarray(motion, np.float32)
    ref = np.asarray(reference, np.float32).reshape(MOTION_DIM)
    out = m - ref
    out[..., SCALE] = m[..., SCALE] / ref[SCALE] - 1.0
    return out


def from_relative(delta, reference) -> np.ndarray:
    """Inverse of :func:`to_relative`: ``reference`` changed by ``delta`` ``(..., 70)``, float32 ``(..., 70)``."""
    d = np.asarray(delta, np.float32)
    ref = np.asarray(reference, np.float32).reshape(MOTION_DIM)
    out = d + ref
    out[..., SCALE] = ref[SCALE] * (1.0 + d[..., SCALE])
    return out


@dataclass(frozen=True, eq=False)
class MotionStats:
    """Per-dimension mean and std of motion, for normalising model inputs and outputs.

    ``mean`` and ``std`` are read-only float32 arrays of shape ``(70,)``; ``std > 0``.
    """

    mean: np.ndarray
    std: np.ndarray

    def __post_init__(self):
        for name in ("mean", "std"):
            a = np.array(getattr(self, name), dtype=np.float32).reshape(-1)
            if a.shape != (MOTION_DIM,) or not np.isfinite(a).all():
                raise ValueError(f"MotionStats.{name} must hold {MOTION_DIM} finite numbers, got shape {a.shape}")
            a.flags.writeable = False
            object.__setattr__(self, name, a)
        if (self.std <= 0).any():
            raise ValueError("MotionStats.std must be positive")

    @classmethod
    def identity(cls) -> MotionStats:
        return cls(np.zeros(MOTION_DIM), np.ones(MOTION_DIM))

    @classmethod
    def from_data(cls, arrays: np.ndarray | Iterable[np.ndarray], min_std: float = 1e-3) -> MotionStats:
        """Stats over all frames of one ``(T, 70)`` array or an iterable of them (streamed, float64 sums).

        ``std`` is floored at ``min_std`` so that dims that hardly move (or never, in small data sets)
        do not blow up when normalised.
        """
        if isinstance(arrays, np.ndarray):
            arrays = [arrays]
        n, s, s2 = 0, np.zeros(MOTION_DIM), np.zeros(MOTION_DIM)
        for a in arrays:
            a = np.asarray(a, dtype=np.float64).reshape(-1, MOTION_DIM)
            n += a.shape[0]
            s += a.sum(0)
            s2 += (a * a).sum(0)
        if n == 0:
            raise ValueError("MotionStats.from_data needs at least one frame")
        mean = s / n
        std = np.sqrt(np.maximum(s2 / n - mean * mean, 0.0))
        return cls(mean, np.maximum(std, min_std))

    def _cast(self, m):
        if isinstance(m, np.ndarray):
            return self.mean.astype(m.dtype, copy=False), self.std.astype(m.dtype, copy=False)
        import torch

        return (torch.tensor(self.mean, dtype=m.dtype, device=m.device),
                torch.tensor(self.std, dtype=m.dtype, device=m.device))

    def normalize(self, m):
        """``(m - mean) / std`` for ``(..., 70)`` numpy arrays or torch tensors."""
        mean, std = self._cast(m)
        return (m - mean) / std

    def denormalize(self, m):
        """``m * std + mean``, the inverse of :meth:`normalize`."""
        mean, std = self._cast(m)
        return m * std + mean

    def to_dict(self) -> dict:
        return {"mean": [float(x) for x in self.mean], "std": [float(x) for x in self.std]}

    @classmethod
    def from_dict(cls, d: dict) -> MotionStats:
        """Inverse of :meth:`to_dict`; raises ValueError if a key is missing or the values are invalid."""
        missing = {"mean", "std"} - set(d)
        if missing:
            raise ValueError(f"MotionStats dict lacks {sorted(missing)}")
        return cls(np.asarray(d["mean"], dtype=np.float32), np.asarray(d["std"], dtype=np.float32))

    def __eq__(self, other):
        return (isinstance(other, MotionStats) and np.array_equal(self.mean, other.mean)
                and np.array_equal(self.std, other.std))

    __hash__ = None


def resample_motion(m: np.ndarray, src_fps: float, dst_fps: float, n_frames: int | None = None) -> np.ndarray:
    """Resample per-frame values ``(T, ...)`` from ``src_fps`` to ``dst_fps`` by linear interpolation in time.

    Frame ``k`` is taken to sit at time ``k / fps``. The result has ``n_frames`` frames, by default
    ``round(T * dst_fps / src_fps)`` (the same duration, at least 1); times past the last input frame
    hold its value. Works for motion ``(T, 70)`` and for eye / lip ratios alike. Returns float32.
    """
    m = np.asarray(m, dtype=np.float32)
    if m.ndim == 0 or m.shape[0] == 0:
        raise ValueError("resample_motion needs at least one frame")
    if not (src_fps > 0 and dst_fps > 0 and math.isfinite(src_fps) and math.isfinite(dst_fps)):
        raise ValueError(f"frame rates must be positive, got {src_fps} and {dst_fps}")
    n_in = m.shape[0]
    n = max(1, round(n_in * dst_fps / src_fps)) if n_frames is None else int(n_frames)
    if n == n_in and src_fps == dst_fps:
        return m.copy()
    x = np.minimum(np.arange(n) * (src_fps / dst_fps), n_in - 1)  # positions in input frames
    i0 = np.floor(x).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w = (x - i0).astype(np.float32).reshape(-1, *([1] * (m.ndim - 1)))
    return (m[i0] * (1 - w) + m[i1] * w).astype(np.float32)


@dataclass(frozen=True, eq=False)
class MotionTemplate:
    """A motion clip: ``motion (T, 70)`` at ``fps``, with the optional per-frame eye-open ratios
    ``eye_ratio (T, 2)``, lip-open ratio ``lip_ratio (T,)`` and the canonical keypoints ``kp (21, 3)``
    of the face it was taken from. Arrays are float32; invalid values raise InputError.
    """

    motion: np.ndarray
    fps: float = 25.0
    eye_ratio: np.ndarray | None = None
    lip_ratio: np.ndarray | None = None
    kp: np.ndarray | None = None

    def __post_init__(self):
        _validate_template(self)

    @property
    def n_frames(self) -> int:
        return int(self.motion.shape[0])

    def resample(self, fps: float) -> MotionTemplate:
        """The same clip at another frame rate (linear interpolation of every per-frame array)."""
        n = max(1, round(self.n_frames * fps / self.fps))

        def rs(a):
            return None if a is None else resample_motion(a, self.fps, fps, n)

        return MotionTemplate(rs(self.motion), float(fps), rs(self.eye_ratio), rs(self.lip_ratio), self.kp)


def _validate_template(tp: MotionTemplate) -> None:
    """Coerce the arrays of ``tp`` to float32 of the documented shapes, or raise InputError."""
    def fix(name, value):
        object.__setattr__(tp, name, value)

    try:
        motion = np.asarray(tp.motion, dtype=np.float32)
        fps = float(np.asarray(tp.fps).reshape(()))
    except (TypeError, ValueError) as e:
        raise InputError(f"motion or fps is not numeric ({e}); re-create the template.") from None
    if motion.ndim != 2 or motion.shape[1] != MOTION_DIM or motion.shape[0] == 0:
        raise InputError(f"motion has shape {motion.shape}, expected (frames, {MOTION_DIM}) with at "
                         f"least one frame; re-create the template with audio2lp.")
    if not np.isfinite(motion).all():
        raise InputError("motion contains NaN or infinite values; re-create the template.")
    if not (math.isfinite(fps) and fps > 0):
        raise InputError(f"fps is {fps}, it must be a positive number; re-create the template.")
    fix("motion", motion)
    fix("fps", fps)
    n = motion.shape[0]
    for name, shape in (("eye_ratio", (n, 2)), ("lip_ratio", (n,)), ("kp", (N_KP, 3))):
        a = getattr(tp, name)
        if a is None:
            continue
        try:
            a = np.asarray(a, dtype=np.float32)
        except (TypeError, ValueError):
            raise InputError(f"{name} is not numeric; re-create the template.") from None
        if a.size != math.prod(shape):
            raise InputError(f"{name} has shape {a.shape}, expected {shape}; re-create the template.")
        if not np.isfinite(a).all():
            raise InputError(f"{name} contains NaN or infinite values; re-create the template.")
        fix(name, a.reshape(shape))


def save_motion_template(path: str | os.PathLike, template: MotionTemplate) -> Path:
    """Write ``template`` as an ``.npz`` (format ``audio2lp-motion-v1``), atomically. Returns the path."""
    path = Path(path)
    arrays = {"format": np.array(TEMPLATE_FORMAT), "motion": template.motion,
              "fps": np.array(template.fps, dtype=np.float64)}
    for name in ("eye_ratio", "lip_ratio", "kp"):
        if getattr(template, name) is not None:
            arrays[name] = getattr(template, name)
    if not path.parent.is_dir():
        raise InputError(f"cannot write {path}: the folder {path.parent} does not exist; create it first.")
    from audio2lp.media.atomic import atomic_output

    with atomic_output(path) as tmp, open(tmp, "wb") as f:  # a file object: numpy does not append ".npz"
        np.savez(f, **arrays)
    log.info("wrote motion template %s (%d frames at %g fps)", path, template.n_frames, template.fps)
    return path


DEFAULT_MAX_TEMPLATE_FRAMES = 1_000_000
"""Frames a template may have unless the caller says otherwise (about 11 hours at 25 fps)."""
_MAX_MEMBERS = 16  # arrays an .npz template may hold (it has at most six)
_PER_FRAME_KEYS = ("motion", "eye_ratio", "lip_ratio")


def _zip_member_count(path: Path) -> int:
    """The member count an archive's end record announces (read before the directory itself is parsed; a zip64
    count counts as too many)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        f.seek(max(0, size - (1 << 16) - 22))
        tail = f.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) < at + 22:
        raise InputError(f"{path} is not a complete .npz file; re-create the template.")
    total = struct.unpack("<H", tail[at + 10: at + 12])[0]
    return _MAX_MEMBERS + 1 if total == 0xFFFF else total


def _check_archive(path: Path, max_frames: int) -> None:
    """Refuse an .npz before anything is unpacked: too many members, a member that unpacks to more than a template
    of ``max_frames`` frames holds (a zip bomb), an array whose header claims more than the member holds, holds
    objects, or has more than ``max_frames`` frames."""
    n = _zip_member_count(path)
    if n > _MAX_MEMBERS:
        raise InputError(f"{path} has {n} members; a motion template has at most six; give a motion template written "
                         f"by audio2lp.")
    limit = max_frames * MOTION_DIM * 8 + (1 << 16)  # float64 at worst, plus the headers
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            if info.file_size > limit:
                raise InputError(f"{path}: {info.filename} unpacks to {info.file_size / 1e6:.1f} MB, more than a "
                                 f"template of {max_frames} frames holds; give a motion template written by audio2lp.")
            if not info.filename.endswith(".npy"):
                continue
            with z.open(info) as f:
                try:
                    version = np.lib.format.read_magic(f)
                    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                        np.lib.format.read_array_header_2_0
                    shape, _, dtype = read(f)
                except ValueError as e:
                    raise InputError(f"{path}: {info.filename} is not a numpy array ({e}); re-create the "
                                     f"template.") from None
            if dtype.hasobject:
                raise InputError(f"{path} holds pickled objects, which are refused for safety; re-create the "
                                 f"template with audio2lp.")
            nbytes = math.prod(shape) * dtype.itemsize
            if nbytes > info.file_size:
                raise InputError(f"{path}: {info.filename} claims {shape} ({nbytes / 1e6:.1f} MB) but holds "
                                 f"{info.file_size} bytes; the file is damaged: re-create the template.")
            if info.filename[:-4] in _PER_FRAME_KEYS and shape and shape[0] > max_frames:
                raise InputError(f"{path} holds {shape[0]} frames; at most {max_frames} are accepted here; use a "
                                 f"shorter template.")


def read_plain_npz(path: Path, what: str, remedy: str) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` file ``path`` (a ``what``), never unpickling; InputError ending in ``remedy``
    when it is not a zip, holds pickled objects or cannot be read."""
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":
            raise InputError(f"{path} is not an .npz file; give a {what} written by audio2lp.")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except ValueError as e:
        if "pickle" in str(e):
            raise InputError(f"{path} holds pickled objects, which are refused for safety; {remedy}.") from None
        raise InputError(f"{path} is not a readable .npz {what} ({e}); {remedy}.") from None
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise InputError(f"{path} is not a readable .npz {what} ({e}); {remedy}.") from None


def load_motion_template(path: str | os.PathLike, *, max_frames: int | None = None) -> MotionTemplate:
    """Read and validate a template written by :func:`save_motion_template` (never unpickles). The archive is
    checked before anything is unpacked (member sizes and array headers; see :func:`_check_archive`): at most
    ``max_frames`` frames (default :data:`DEFAULT_MAX_TEMPLATE_FRAMES`)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"motion template {path} does not exist; check the path.")
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":
            raise InputError(f"{path} is not an .npz file; give a motion template written by audio2lp.")
    try:
        _check_archive(path, DEFAULT_MAX_TEMPLATE_FRAMES if max_frames is None else int(max_frames))
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise InputError(f"{path} is not a readable .npz motion template ({e}); re-create it.") from None
    data = read_plain_npz(path, "motion template", "re-create the template with audio2lp")
    fmt = str(data["format"]) if "format" in data else None
    if fmt != TEMPLATE_FORMAT:
        raise InputError(f"{path} has format {fmt!r}, expected {TEMPLATE_FORMAT!r}; is it an audio2lp motion "
                         f"template?")
    for key in ("motion", "fps"):
        if key not in data:
            raise InputError(f"{path} lacks the key '{key}'; re-create the template.")
    try:
        return MotionTemplate(data["motion"], data["fps"], data.get("eye_ratio"), data.get("lip_ratio"),
                              data.get("kp"))
    except InputError as e:
        raise InputError(f"{path}: {e}") from None
