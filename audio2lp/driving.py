"""Driving motion: from a video (streamed: decode -> face -> smoothed crop), an image, or a template.

A driving source yields :class:`DrivingFrame` items in order; the renderer turns their crops into
motion with M in batches. Templates already hold motion (our ``.npz`` and the official ``.pkl``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch

from audio2lp.models.motion import EXP, PITCH, ROLL, SCALE, YAW, MotionTemplate, load_motion_template, pack_motion
from audio2lp.models.motion import T as T_SLICE
from audio2lp.portrait import is_image_path
from lp_renderer.crop import DRIVING_CROP, crop_face, iter_crops_for_frames
from lp_renderer.errors import InputError, NoFaceError
from lp_renderer.faces import FaceBackend, eye_open_ratios, iter_faces_in_frames, lip_open_ratio, select_faces
from lp_renderer.image_io import load_image
from lp_renderer.keypoints import KeypointInfo, rotation_to_degrees
from lp_renderer.renderer import host_to_device

if TYPE_CHECKING:
    from audio2lp.media.probe import VideoInfo

log = logging.getLogger(__name__)

TEMPLATE_SUFFIXES = {".npz", ".pkl"}


def info_to_motion(info: KeypointInfo) -> np.ndarray:
    """KeypointInfo (B) -> (B, 70) float32 motion (the canonical kp is not part of it)."""
    d = info.as_numpy()
    return pack_motion(d["exp"], d["pitch"], d["yaw"], d["roll"], d["t"], d["scale"])


def motion_to_info(motion: np.ndarray, kp: np.ndarray | None = None, device="cpu") -> KeypointInfo:
    """(B, 70) motion -> KeypointInfo (B). ``kp`` (21, 3) fills the canonical keypoints (unused by
    relative driving; zeros when not given)."""
    m = host_to_device(np.array(motion, dtype=np.float32), device)  # (B, 70); a copy, never a view
    b = m.shape[0]
    kp_t = torch.zeros(b, 21, 3, device=device) if kp is None else host_to_device(kp, device).expand(b, 21, 3)
    return KeypointInfo(kp=kp_t, exp=m[:, EXP].reshape(b, 21, 3), pitch=m[:, PITCH:PITCH + 1],
                        yaw=m[:, YAW:YAW + 1], roll=m[:, ROLL:ROLL + 1], t=m[:, T_SLICE],
                        scale=m[:, SCALE:SCALE + 1])


@dataclass
class DrivingFrame:
    """One driving frame: its 256x256 uint8 RGB crop (None for templates, which carry ``motion``
    instead), the landmark ratios (eye (2,) float32, lip) and the original ``HxWx3`` frame (None if not
    kept, and on frames where the face was lost). On lost frames the crop and ratios are those of the
    last frame with a face (of the first one for leading lost frames), so the motion holds still."""

    index: int
    crop_rgb: np.ndarray | None
    eye_ratio: np.ndarray | None
    lip_ratio: float | None
    motion: np.ndarray | None = None  # (70,) for templates
    frame: np.ndarray | None = None


@dataclass
class DrivingSource:
    """Where driving motion comes from. ``kind`` is 'video', 'image' or 'template'."""

    path: Path
    kind: str
    fps: float
    n_frames: int
    has_audio: bool = False
    template: MotionTemplate | None = None
    info: VideoInfo | None = None  # a video's probe result (probed once, reused by the frame reader)


def open_driving(path: str | os.PathLike, *, count_frames: bool | None = None,
                 max_template_frames: int | None = None, probe_timeout: float | None = None) -> DrivingSource:
    """Classify and validate the driving input (video, image, ``.npz`` / ``.pkl`` template). ``count_frames``: as
    :func:`audio2lp.media.probe.probe_video` (None: when cheap); ``max_template_frames``: the most frames a template
    may have (checked before it is loaded); ``probe_timeout``: seconds each ffmpeg run of the probe may take."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"driving input {p} does not exist; check the path.")
    if p.is_dir():
        raise InputError(f"driving input {p} is a folder; give a video, an image or a motion template.")
    suffix = p.suffix.lower()
    if suffix in (".npz", ".pkl"):
        load = load_motion_template if suffix == ".npz" else load_official_template
        tp = check_drivable_template(load(p, max_frames=max_template_frames), p)
        return DrivingSource(p, "template", tp.fps, tp.n_frames, template=tp)
    if is_image_path(p):
        return DrivingSource(p, "image", 25.0, 1)
    from audio2lp.media.probe import PROBE_TIMEOUT, probe_video

    info = probe_video(p, count_frames=count_frames, timeout=probe_timeout or PROBE_TIMEOUT)
    if info.n_frames <= 0:
        raise InputError(f"driving video {p} has no frames; give a video with at least one frame.")
    return DrivingSource(p, "video", info.fps, info.n_frames, has_audio=info.has_audio, info=info)


def check_drivable_template(tp: MotionTemplate, path: str | os.PathLike) -> MotionTemplate:
    """``tp`` if it can drive the renderer, else InputError: every frame's scale (column 69, LivePortrait's
    absolute head scale) must be > 0 (a scale of 0 collapses the keypoints to a point, and the first frame's scale
    divides the others in the relative mode)."""
    scale = tp.motion[:, SCALE]
    if (scale <= 0).any():
        bad = int(np.flatnonzero(scale <= 0)[0])
        raise InputError(f"{path}: the head scale (motion column {SCALE}) is {float(scale[bad]):g} at frame {bad}; "
                         f"it must be > 0 in every frame (a template written by `audio2lp drive --save-template` "
                         f"has scales near 1); fix or re-create the template.")
    return tp


def load_official_template(path: str | os.PathLike, *, max_frames: int | None = None) -> MotionTemplate:
    """Import LivePortrait's ``.pkl`` motion template with a restricted unpickler (plain containers and
    numpy arrays only), of at most ``max_frames`` frames (default
    :data:`audio2lp.models.motion.DEFAULT_MAX_TEMPLATE_FRAMES`). Rotation matrices are converted back to degrees."""
    from audio2lp.models.motion import DEFAULT_MAX_TEMPLATE_FRAMES
    from lp_renderer.safe_pickle import load_restricted_pickle

    data = load_restricted_pickle(path)
    if not isinstance(data, dict) or "motion" not in data or not isinstance(data["motion"], list) \
            or not data["motion"]:
        raise InputError(f"{path} is not a LivePortrait motion template (no 'motion' list of frames).")
    limit = DEFAULT_MAX_TEMPLATE_FRAMES if max_frames is None else int(max_frames)
    if len(data["motion"]) > limit:
        raise InputError(f"{path} holds {len(data['motion'])} frames; at most {limit} are accepted here; use a "
                         f"shorter template.")
    try:
        frames = data["motion"]
        rot = np.concatenate([np.asarray(f.get("R", f.get("R_d")), np.float32).reshape(1, 3, 3) for f in frames])
        exp = np.concatenate([np.asarray(f["exp"], np.float32).reshape(1, 21, 3) for f in frames])
        t = np.concatenate([np.asarray(f["t"], np.float32).reshape(1, 3) for f in frames])
        scale = np.concatenate([np.asarray(f["scale"], np.float32).reshape(1, 1) for f in frames])
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise InputError(f"{path}: a motion frame lacks R/exp/t/scale or has the wrong shape ({e}).") from None
    pitch, yaw, roll = (a.numpy()[:, 0] for a in rotation_to_degrees(torch.from_numpy(rot)))
    motion = pack_motion(exp, pitch, yaw, roll, t, scale[:, 0])
    n = motion.shape[0]
    eyes = data.get("c_eyes_lst", data.get("c_d_eyes_lst"))
    lips = data.get("c_lip_lst", data.get("c_d_lip_lst"))
    eye = np.asarray(eyes, np.float32).reshape(n, -1)[:, :2] if eyes is not None and len(eyes) == n else None
    lip = np.asarray(lips, np.float32).reshape(n, -1)[:, 0] if lips is not None and len(lips) == n else None
    fps = float(data.get("output_fps", 25))
    kp = np.asarray(frames[0]["kp"], np.float32).reshape(21, 3) if "kp" in frames[0] else None
    return MotionTemplate(motion, fps, eye, lip, kp)


def driving_crop(crop, frame: np.ndarray) -> np.ndarray:
    """The 256x256 crop the motion extractor sees for a driving frame (uint8 RGB (256, 256, 3)): the official
    driving path, a warp to 512 then a bilinear resize. ``audio2lp-train prepare`` uses it too, so the motion a
    model is trained on comes from the same pixels as the motion of ``drive``."""
    return crop.warp(frame, 256, resize=cv2.INTER_LINEAR)


def _face_ratios(face) -> tuple[np.ndarray, float]:
    return np.asarray(eye_open_ratios(face), np.float32), float(lip_open_ratio(face))


#: how often a tracked driving face is checked (see :func:`lp_renderer.faces.iter_faces_in_frames`)
VERIFY_EVERY = 5


def track_driving_faces(backend: FaceBackend, frames, which="largest"):
    """``(frame, face or None)`` for the frames of a driving video: detected once (and again after it was lost),
    tracked from the previous frame's landmarks in between, verified every :data:`VERIFY_EVERY` frames. The
    crops stay within a few pixels of per-frame detection (``tests/audio2lp/test_drive.py``) at a fraction of
    its cost (``benchmarks/overhead.py``)."""
    return iter_faces_in_frames(backend, frames, which, detect_every=None, verify_every=VERIFY_EVERY)


def iter_driving_frames(source: DrivingSource, backend: FaceBackend | None, *, which="largest",
                        keep_frames: bool = False, smooth_window: int = 5, max_frames: int | None = None,
                        progress: bool = False) -> Iterator[DrivingFrame]:
    """Yield the driving frames of ``source`` in order (streamed for videos; ``progress`` shows a bar of
    decoded and face-tracked frames).

    ``which`` picks the driving face (default the largest; independent of the portrait's ``--face``).
    Crops follow the official driving path: axis-aligned :data:`DRIVING_CROP` boxes (smoothed over
    ``smooth_window`` frames), warped to 512 and resized to 256 bilinearly. Frames where the face is lost
    hold the last good crop and ratios (see :class:`DrivingFrame`); their pixels are not kept, so a long
    stretch without a face costs no memory. Raises NoFaceError if no frame has a face."""
    if source.kind == "template":
        tp = source.template
        n = tp.n_frames if max_frames is None else min(tp.n_frames, max_frames)
        for i in range(n):
            yield DrivingFrame(i, None, None if tp.eye_ratio is None else tp.eye_ratio[i],
                               None if tp.lip_ratio is None else float(tp.lip_ratio[i]), motion=tp.motion[i])
        return
    if source.kind == "image":
        rgb = load_image(source.path)
        faces = backend.detect(rgb)
        if not faces:
            raise NoFaceError(f"No face was found in the driving image {source.path}; use a photo with a clearly "
                              f"visible, roughly frontal face.")
        face = select_faces(faces, "largest" if which == "all" else which, source=str(source.path))[0]
        crop = crop_face(face, **DRIVING_CROP)
        eye, lip = _face_ratios(face)
        yield DrivingFrame(0, driving_crop(crop, rgb), eye, lip,
                           frame=rgb if keep_frames else None)
        return
    from tqdm import tqdm

    from audio2lp.media.reader import FrameReader

    total = source.n_frames if max_frames is None else min(source.n_frames, max_frames)
    with FrameReader(source.path, max_frames=max_frames, info=source.info) as reader, \
            tqdm(reader, total=total, desc="faces", unit="frame", disable=not progress, position=1,
                 leave=False, dynamic_ncols=True) as frames:
        faces = track_driving_faces(backend, frames, "largest" if which == "all" else which)
        # payload: (index, frame or None where the face is lost, face); ratios are measured on the frame
        payloads = (((i, frame if face is not None else None, face), face)
                    for i, (frame, face) in enumerate(faces))
        held = None  # (crop, eye ratios, lip ratio) of the last frame with a face
        leading: list[int] = []  # frames before the first face (indices only)
        for (i, frame, face), crop in iter_crops_for_frames(payloads, window=smooth_window, **DRIVING_CROP):
            if face is None:
                if held is None:
                    leading.append(i)
                else:
                    yield DrivingFrame(i, *held)
                continue
            held = (driving_crop(crop, frame), *_face_ratios(face))
            for j in leading:
                yield DrivingFrame(j, *held)
            leading.clear()
            yield DrivingFrame(i, *held, frame=frame if keep_frames else None)


def extract_driving_motion(renderer, source: DrivingSource, backend: FaceBackend | None, *,
                           max_frames: int | None = None, batch_size: int = 8,
                           progress: bool = False) -> tuple[KeypointInfo, np.ndarray | None, np.ndarray | None]:
    """The motion of the driving frames, all at once (a first pass, for the smoother of a video portrait):
    KeypointInfo (N) on the renderer's device, eye-open ratios (N, 2) and lip-open ratios (N,) float32 (None when a
    template has none). Videos are streamed through M in batches of ``batch_size``; the crops are not kept."""
    if source.kind == "template":
        tp = source.template
        n = tp.n_frames if max_frames is None else min(tp.n_frames, max_frames)
        eye = None if tp.eye_ratio is None else np.asarray(tp.eye_ratio[:n], np.float32)
        lip = None if tp.lip_ratio is None else np.asarray(tp.lip_ratio[:n], np.float32)
        return motion_to_info(tp.motion[:n], device=renderer.device), eye, lip
    infos, eyes, lips, batch = [], [], [], []
    for fr in iter_driving_frames(source, backend, max_frames=max_frames, progress=progress):
        batch.append(fr.crop_rgb)
        eyes.append(fr.eye_ratio)
        lips.append(fr.lip_ratio)
        if len(batch) == batch_size:
            infos.append(renderer.extract_motion(np.stack(batch)))
            batch = []
    if batch:
        infos.append(renderer.extract_motion(np.stack(batch)))
    return KeypointInfo.cat(infos), np.asarray(eyes, np.float32), np.asarray(lips, np.float32)
