"""Motion measured on a real talking video from dlib's 68 face landmarks, per 25 fps frame (no renderer weights).

Per source frame (:func:`landmark_track`, cached per video):

- the 68 landmarks of the largest face (:class:`lp_renderer.faces.DlibBackend`, detection every
  :data:`DETECT_EVERY` frames, verified tracking in between: the pass the lip-sync data uses, so ``lip`` is the
  series today's lip-sync model is trained and scored on).

From them (:func:`raw_signals`):

- ``lip``: :func:`lp_renderer.faces.lip_open_ratio`; ``eye_l``, ``eye_r``: :func:`~lp_renderer.faces.eye_open_ratios`
  (both calibrated to LivePortrait's 203-point definitions);
- ``pitch``, ``yaw``, ``roll`` (degrees): ``cv2.solvePnP`` of a generic 3-D 68-point face (:data:`FACE_MODEL_3D`,
  OpenFace's mean face) on rigid points only, pinhole camera with focal length = the frame's long side.
  Yaw, roll, centre and size come from :data:`RIGID_POINTS`; pitch from :data:`PITCH_POINTS` (no jaw line: dlib's
  jaw points slide as the mouth opens, which leaked the lip into pitch: r -0.22 with them, -0.13 without).
  Angles use LivePortrait's decomposition ``R = Rz(roll) Ry(yaw) Rx(pitch)`` in camera axes (x right, y down,
  z away from the camera); each solve starts from the previous frame's pose;
- ``cx``, ``cy`` (px): projection of the model origin (a head centre that stays put when the head turns);
  ``size`` (px): ``focal * 100 / tz`` (does not shrink with yaw).

On the 25 fps grid (:func:`clip_motion`; frame ``k`` = time ``k / 25`` s):

- linear interpolation from the video's frame times; a frame is valid when a face is on both neighbouring
  source frames, and every invalid frame invalidates :data:`INVALID_MARGIN` neighbours each side;
- Gaussian smoothing of the head channels where the landmarks jitter (:data:`SMOOTH_SIGMA`, over valid frames
  only; each sigma's residual matches the channel's white-noise floor). Lip and eye ratios stay raw;
- per-clip normalisation so that no speaker's identity leaks out: angles minus the clip median; ``tx``, ``ty`` =
  (centre - median centre) / median size; ``scale`` = size / median size; eyes = ratio / median ratio (a
  multiplier of the portrait's own eye ratio); ``lip`` = ratio / the clip's 95th percentile x :data:`LIP_SCALE`
  (the lip-sync model's convention, an absolute ratio for the lip retargeting).

The per-clip audio offset is estimated and applied by :mod:`training.landmarks.dataset`.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lp_renderer.errors import InputError
from training.lipsync.data import _file_key, _interp_track, _load_npz, _save_npz_atomic

logger = logging.getLogger(__name__)

__all__ = ["CHANNELS", "ClipMotion", "clip_motion", "erode_valid", "euler_lp", "head_pose", "landmark_track",
           "measure_video", "normalise", "raw_signals"]

FPS = 25.0
LANDMARK_VERSION = 1  # of the landmark pass (slow); bump to re-detect
SIGNAL_VERSION = 2  # of the signals computed from the landmarks (fast)
DETECT_EVERY = 5
INVALID_MARGIN = 2

#: Channel names of the measured motion vector, in order.
CHANNELS = ("lip", "eye_l", "eye_r", "pitch", "yaw", "roll", "tx", "ty", "scale")
LIP, EYE_L, EYE_R, PITCH, YAW, ROLL, TX, TY, SCALE = range(9)
ANGLES = slice(PITCH, ROLL + 1)

#: Gaussian sigma (25 fps frames) per channel, 0 = raw. Chosen on the training speakers: each head channel's
#: white-noise floor (robust std of the second difference / sqrt 6: pitch 0.58 deg, yaw 0.26, roll 0.24) and the
#: sigma whose residual matches it; each keeps > 94 % of the power below 2 Hz.
SMOOTH_SIGMA = {"lip": 0.0, "eye_l": 0.0, "eye_r": 0.0, "pitch": 1.5, "yaw": 1.25, "roll": 1.5,
                "tx": 1.0, "ty": 1.0, "scale": 1.25}
#: The lip-sync model's ``lip_scale``: normalised lips are ``ratio / p95(clip) * LIP_SCALE``.
LIP_SCALE = 0.245

#: OpenFace's mean 3-D face for the iBUG 68 points (x right, y down, z away from the camera; ~ millimetres).
FACE_MODEL_3D = np.array([
    [-73.393523, -29.801432, 47.667532], [-72.775014, -10.949766, 45.909403], [-70.533638, 7.929818, 44.84258],
    [-66.850058, 26.07428, 43.141114], [-59.790187, 42.56439, 38.635298], [-48.368973, 56.48108, 30.750622],
    [-34.121101, 67.246992, 18.456453], [-17.875411, 75.056892, 3.609035], [0.098749, 77.061286, -0.881698],
    [17.477031, 74.758448, 5.181201], [32.648966, 66.929021, 19.176563], [46.372358, 56.311389, 30.77057],
    [57.34348, 42.419126, 37.628629], [64.388482, 25.45588, 40.886309], [68.212038, 6.990805, 42.281449],
    [70.486405, -11.666193, 44.142567], [71.375822, -30.365191, 47.140426], [-61.119406, -49.361602, 14.254422],
    [-51.287588, -58.769795, 7.268147], [-37.8048, -61.996155, 0.442051], [-24.022754, -61.033399, -6.606501],
    [-11.635713, -56.686759, -11.967398], [12.056636, -57.391033, -12.051204], [25.106256, -61.902186, -7.315098],
    [38.338588, -62.777713, -1.022953], [51.191007, -59.302347, 5.349435], [60.053851, -50.190255, 11.615746],
    [0.65394, -42.19379, -13.380835], [0.804809, -30.993721, -21.150853], [0.992204, -19.944596, -29.284036],
    [1.226783, -8.414541, -36.94806], [-14.772472, 2.598255, -20.132003], [-7.180239, 4.751589, -23.536684],
    [0.55592, 6.5629, -25.944448], [8.272499, 4.661005, -23.695741], [15.214351, 2.643046, -20.858157],
    [-46.04729, -37.471411, 7.037989], [-37.674688, -42.73051, 3.021217], [-27.883856, -42.711517, 1.353629],
    [-19.648268, -36.754742, -0.111088], [-28.272965, -35.134493, -0.147273], [-38.082418, -34.919043, 1.476612],
    [19.265868, -37.032306, -0.665746], [27.894191, -43.342445, 0.24766], [37.437529, -43.110822, 1.696435],
    [45.170805, -38.086515, 4.894163], [38.196454, -35.532024, 0.282961], [28.764989, -35.484289, -1.172675],
    [-28.916267, 28.612716, -2.24031], [-17.533194, 22.172187, -15.934335], [-6.68459, 19.029051, -22.611355],
    [0.381001, 20.721118, -23.748437], [8.375443, 19.03546, -22.721995], [18.876618, 22.394109, -15.610679],
    [28.794412, 28.079924, -3.217393], [19.057574, 36.298248, -14.987997], [8.956375, 39.634575, -22.554245],
    [0.381549, 40.395647, -23.591626], [-7.428895, 39.836405, -22.406106], [-18.160634, 36.677899, -15.121907],
    [-24.37749, 28.677771, -4.785684], [-6.897633, 25.475976, -20.893742], [0.340663, 26.014269, -22.220479],
    [8.444722, 25.326198, -21.02552], [24.474473, 28.323008, -5.712776], [8.449166, 30.596216, -20.671489],
    [0.205322, 31.408738, -21.90367], [-7.198266, 30.844876, -20.328022]], dtype=np.float64)

#: Landmarks that move rigidly with the skull: jaw line near the ears, nose bridge and base, eye corners.
RIGID_POINTS = (0, 1, 2, 14, 15, 16, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 39, 42, 45)
#: Pitch from a second solve without the jaw line (see the module docstring).
PITCH_POINTS = (27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 39, 42, 45)
SIZE_UNITS = 100.0  # model units whose apparent size is ``size`` (~ the outer eye-corner distance)


def _cache_path(video: Path, cache_dir: Path, what: str, version: int) -> Path:
    return cache_dir / f"{video.stem}.{_file_key(video)}.v{version}.{what}.npz"


def landmark_track(video: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> dict:
    """68 landmarks of the largest face in every source frame of ``video`` (cached in ``cache_dir`` if given).

    Returns ``{"landmarks": (N, 68, 2) float32 (NaN where no face), "fps": source fps, "width", "height"}``. A
    variable-frame-rate video is put on the 25 fps grid by ffmpeg first, as the lip-sync data does.
    """
    from audio2lp.media.probe import probe_video
    from audio2lp.media.reader import read_frames
    from lp_renderer.faces import DlibBackend, iter_faces_in_frames

    video = Path(video)
    path = _cache_path(video, Path(cache_dir), "lmk", LANDMARK_VERSION) if cache_dir else None
    data = _load_npz(path) if path else None
    if data is not None:
        return data
    info = probe_video(video)
    if info.constant_frame_rate:
        frames, fps = read_frames(video, info=info), float(info.fps)
    else:
        frames, fps = read_frames(video, fps=FPS, info=info), FPS
    lmks = [np.full((68, 2), np.nan, np.float32) if face is None else face.landmarks68.astype(np.float32)
            for _, face in iter_faces_in_frames(DlibBackend(), frames, "largest", detect_every=DETECT_EVERY)]
    if not lmks:
        raise InputError(f"{video} has no video frames; pass a talking-face video.")
    data = {"landmarks": np.stack(lmks), "fps": np.float64(fps), "width": np.int64(info.width),
            "height": np.int64(info.height)}
    if path:
        _save_npz_atomic(path, **data)
    return data


def euler_lp(rot: np.ndarray) -> tuple[float, float, float]:
    """``(pitch, yaw, roll)`` degrees of a 3x3 rotation ``rot = Rz(roll) @ Ry(yaw) @ Rx(pitch)`` (LivePortrait's
    order; yaw in [-90, 90])."""
    pitch = math.atan2(rot[2, 1], rot[2, 2])
    yaw = math.asin(max(-1.0, min(1.0, -rot[2, 0])))
    roll = math.atan2(rot[1, 0], rot[0, 0])
    return math.degrees(pitch), math.degrees(yaw), math.degrees(roll)


def _solve(obj: np.ndarray, img: np.ndarray, cam: np.ndarray, guess):
    import cv2

    if guess is None:
        ok, rvec, tvec = cv2.solvePnP(obj, img, cam, None, flags=cv2.SOLVEPNP_SQPNP)
    else:
        ok, rvec, tvec = cv2.solvePnP(obj, img, cam, None, guess[0].copy(), guess[1].copy(), useExtrinsicGuess=True,
                                      flags=cv2.SOLVEPNP_ITERATIVE)
    return (rvec, tvec) if ok and tvec[2, 0] > 0 else None


def camera_matrix(width: int, height: int) -> np.ndarray:
    """The pinhole camera assumed for a ``width`` x ``height`` frame: focal = long side, centred."""
    f = float(max(width, height))
    return np.array([[f, 0, width / 2.0], [0, f, height / 2.0], [0, 0, 1]], np.float64)


def head_pose(landmarks: np.ndarray, width: int, height: int) -> np.ndarray:
    """Head pose per frame from ``landmarks (N, 68, 2)`` pixels: ``(N, 6)`` float64 pitch, yaw, roll (deg), cx, cy
    (px), size (px); NaN rows where the landmarks are NaN (see the module docstring)."""
    import cv2

    cam = camera_matrix(width, height)
    f = cam[0, 0]
    sets = (list(RIGID_POINTS), list(PITCH_POINTS))
    out = np.full((landmarks.shape[0], 6), np.nan)
    guess = [None, None]
    for i, lm in enumerate(landmarks):
        if not np.isfinite(lm).all():
            guess = [None, None]
            continue
        guess = [_solve(FACE_MODEL_3D[pts], lm[pts].astype(np.float64), cam, g) for pts, g in zip(sets, guess)]
        if guess[0] is None or guess[1] is None:
            guess = [None, None]
            continue
        rvec, tvec = guess[0]
        tz = float(tvec[2, 0])
        _, out[i, 1], out[i, 2] = euler_lp(cv2.Rodrigues(rvec)[0])
        out[i, 0] = euler_lp(cv2.Rodrigues(guess[1][0])[0])[0]
        out[i, 3] = f * tvec[0, 0] / tz + cam[0, 2]
        out[i, 4] = f * tvec[1, 0] / tz + cam[1, 2]
        out[i, 5] = f * SIZE_UNITS / tz
    return out


def raw_signals(landmarks: np.ndarray, width: int, height: int) -> np.ndarray:
    """``(N, 9)`` float64 per source frame: lip, eye_l, eye_r (calibrated ratios), pitch, yaw, roll (deg), cx, cy,
    size (px); NaN where no face."""
    from lp_renderer.faces import Face, eye_open_ratios, lip_open_ratio

    out = np.full((landmarks.shape[0], 9), np.nan)
    for i, lm in enumerate(landmarks):
        if np.isfinite(lm).all():
            face = Face((0, 0, 1, 1), 1.0, lm, "dlib68")
            out[i, 0] = lip_open_ratio(face)
            out[i, 1:3] = eye_open_ratios(face)
    out[:, 3:] = head_pose(landmarks, width, height)
    return out


def erode_valid(valid: np.ndarray, margin: int = INVALID_MARGIN) -> np.ndarray:
    """``valid (T,)`` with ``margin`` frames on each side of every invalid frame also invalid."""
    bad = ~np.asarray(valid, bool)
    out = bad.copy()
    for k in range(1, margin + 1):
        out[k:] |= bad[:-k]
        out[:-k] |= bad[k:]
    return ~out


def smooth_valid(x: np.ndarray, valid: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing (``sigma`` frames) of ``x (T,)`` over the valid frames only (normalised convolution);
    NaN on invalid frames."""
    if sigma <= 0:
        return np.where(valid, x, np.nan)
    from scipy.ndimage import gaussian_filter1d

    num = gaussian_filter1d(np.where(valid, x, 0.0), sigma, mode="nearest")
    den = gaussian_filter1d(valid.astype(np.float64), sigma, mode="nearest")
    return np.where(valid & (den > 1e-6), num / np.maximum(den, 1e-6), np.nan)


def normalise(raw: np.ndarray, valid: np.ndarray, smooth: dict | None = None) -> tuple[np.ndarray, dict]:
    """Smoothed, per-clip-normalised channels ``(T, 9)`` from raw grid values ``(T, 9)`` (see the module
    docstring), NaN on invalid frames, and the clip's neutral (medians, lip p95)."""
    sig = SMOOTH_SIGMA if smooth is None else smooth
    x = np.stack([smooth_valid(raw[:, c], valid, sig[name]) for c, name in enumerate(CHANNELS)], 1)
    out = np.full_like(x, np.nan)
    if valid.sum() < 3:
        return out, {}
    med = np.median(x[valid], axis=0)
    p95 = float(np.percentile(raw[valid, LIP], 95))
    size = med[SCALE]
    out[:, LIP] = raw[:, LIP] / max(p95, 1e-3) * LIP_SCALE
    out[:, EYE_L] = x[:, EYE_L] / max(med[EYE_L], 1e-3)
    out[:, EYE_R] = x[:, EYE_R] / max(med[EYE_R], 1e-3)
    out[:, ANGLES] = x[:, ANGLES] - med[ANGLES]
    out[:, TX] = (x[:, TX] - med[TX]) / size
    out[:, TY] = (x[:, TY] - med[TY]) / size
    out[:, SCALE] = x[:, SCALE] / size
    out[~valid] = np.nan
    return out, {"lip_p95": p95, **{f"median_{n}": float(med[i]) for i, n in enumerate(CHANNELS)}}


@dataclass
class ClipMotion:
    """Measured motion of one video on the 25 fps grid: ``motion (T, 9)`` float32 normalised :data:`CHANNELS`
    (NaN where invalid); ``raw (T, 9)`` float32 before smoothing and normalisation (ratios, degrees, pixels);
    ``valid (T,)`` bool; ``neutral``: the clip's medians."""

    name: str
    motion: np.ndarray
    raw: np.ndarray
    valid: np.ndarray
    video_fps: float
    neutral: dict = field(default_factory=dict)

    @property
    def n_frames(self) -> int:
        return int(self.motion.shape[0])

    def to_npz_dict(self) -> dict:
        """The ``audio2lp motion`` file layout (``fps``, ``lip_open``, ``eyes_open``, angles, ``tx``, ``ty``,
        ``scale``) plus ``valid``; invalid frames hold the previous valid value (the clip's neutral before the
        first)."""
        m = self.motion.astype(np.float64)
        neutral = np.array([LIP_SCALE * 0.5, 1, 1, 0, 0, 0, 0, 0, 1], np.float64)
        filled = np.empty_like(m)
        last = neutral
        for t in range(m.shape[0]):
            last = m[t] if self.valid[t] else last
            filled[t] = last
        f = filled.astype(np.float32)
        return {"fps": np.float32(FPS), "lip_open": f[:, LIP], "eyes_open": f[:, EYE_L:EYE_R + 1],
                "pitch": f[:, PITCH], "yaw": f[:, YAW], "roll": f[:, ROLL], "tx": f[:, TX], "ty": f[:, TY],
                "scale": f[:, SCALE], "valid": self.valid.copy()}


def clip_motion(video: str | os.PathLike, n_frames: int, cache_dir: str | os.PathLike | None = None,
                smooth: dict | None = None) -> ClipMotion:
    """The measured motion of ``video`` on ``n_frames`` 25 fps frames (``ceil(audio seconds * 25)``); landmarks and
    signals are cached in ``cache_dir`` when given."""
    video = Path(video)
    lm = landmark_track(video, cache_dir)
    path = _cache_path(video, Path(cache_dir), "sig", SIGNAL_VERSION) if cache_dir else None
    cached = _load_npz(path) if path else None
    if cached is None:
        cached = {"signals": raw_signals(lm["landmarks"], int(lm["width"]), int(lm["height"]))}
        if path:
            _save_npz_atomic(path, **cached)
    sig = cached["signals"]
    ok = np.isfinite(sig).all(1)
    raw, valid = _interp_track(np.where(ok[:, None], sig, 0.0), ok, float(lm["fps"]), n_frames, FPS)
    raw = raw.astype(np.float64)
    valid = erode_valid(valid)
    raw[~valid] = np.nan
    motion, neutral = normalise(raw, valid, smooth)
    logger.debug("%s: %d of %d frames valid", video.name, valid.sum(), n_frames)
    return ClipMotion(video.stem, motion.astype(np.float32), raw.astype(np.float32), valid, float(lm["fps"]), neutral)


def measure_video(video: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> ClipMotion:
    """:func:`clip_motion` of any talking video over its audio's length (its video's length when it has no
    audio track)."""
    from audio2lp.media.audio import load_audio
    from audio2lp.media.probe import probe_video

    video = Path(video)
    info = probe_video(video)
    seconds = load_audio(video).shape[0] / 16000.0 if info.has_audio else info.n_frames / info.fps
    cm = clip_motion(video, max(1, math.ceil(seconds * FPS - 1e-6)), cache_dir)
    if not cm.valid.any():
        raise InputError(f"no face was found in {video}; pass a video with one visible, roughly frontal face.")
    return cm
