"""Which H.264 encoder writes the videos: libx264 on the CPU, or NVIDIA's NVENC where the machine has one.

On a GPU machine the renderer leaves the CPU little to do but paste-back and encoding, and libx264 at its default
preset is the largest part of that (``benchmarks/RESULTS.md``, "The work around the networks"). NVENC encodes on the
GPU's own encoder block. ``AUDIO2LP_VIDEO_ENCODER`` chooses:

- ``auto`` (default): ``h264_nvenc`` when ffmpeg can open it on this machine (an NVIDIA device is present and a
  one-frame test encode succeeds, checked once per process), else ``libx264``;
- ``libx264`` or ``h264_nvenc``: that one (``h264_nvenc`` where it cannot run: a :class:`~audio2lp.errors.VideoError`
  that says so when the writer is made).

:func:`encoder_args` maps the writer's quality (``crf``) and x264 preset onto the encoder's own controls: for NVENC
constant-quality VBR (``-rc vbr -cq CRF -b:v 0``, the same 0-51 scale) and the preset of similar speed (p1-p7).
The live stream (:mod:`audio2lp.media.stream_writer`) keeps libx264 (``zerolatency``: frames leave at once).
"""

from __future__ import annotations

import glob
import logging
import os
import sys
import threading

from audio2lp.errors import VideoError

from .ffmpeg import LimitExceeded, ffmpeg_exe, input_args, run_bounded

__all__ = ["ENV", "ENCODERS", "h264_encoder", "encoder_args", "nvenc_usable", "try_encode"]

logger = logging.getLogger(__name__)

ENV = "AUDIO2LP_VIDEO_ENCODER"
ENCODERS = ("libx264", "h264_nvenc")
#: x264 preset -> NVENC preset of about the same speed (p1 fastest .. p7 best)
_NVENC_PRESETS = {"ultrafast": "p1", "superfast": "p1", "veryfast": "p2", "faster": "p3", "fast": "p3",
                  "medium": "p4", "slow": "p5", "slower": "p6", "veryslow": "p7", "placebo": "p7"}
_PROBE_TIMEOUT = 20.0
_state: dict[str, bool] = {}
_lock = threading.Lock()


def _nvidia_device_present() -> bool:
    """An NVIDIA driver or device node is visible (Linux); elsewhere assume maybe and let the test encode decide."""
    if not sys.platform.startswith("linux"):
        return True
    return os.path.exists("/proc/driver/nvidia/version") or bool(glob.glob("/dev/nvidia[0-9]*"))


def nvenc_usable() -> bool:
    """Whether ffmpeg can encode H.264 with NVENC here: a one-frame test encode (cached for the process; machines
    without an NVIDIA device answer False at once, without running ffmpeg)."""
    with _lock:
        if "nvenc" not in _state:
            _state["nvenc"] = _nvidia_device_present() and _probe_nvenc()
        return _state["nvenc"]


def _probe_nvenc() -> bool:
    ok, why = try_encode("h264_nvenc")
    if not ok:
        logger.info("NVENC is not usable here (%s); encoding with libx264", why)
    return ok


def try_encode(codec: str) -> tuple[bool, str]:
    """Encode one black 256x256 frame with ``codec``, sent through a pipe as the writer sends frames: ``(it
    worked, ffmpeg's first error line)``."""
    cmd = [ffmpeg_exe(), "-hide_banner", "-v", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", "256x256",
           "-framerate", "25", *input_args("pipe:0"), "-c:v", codec, "-pix_fmt", "yuv420p", "-f", "null", "-"]
    try:
        rc, _, err = run_bounded(cmd, timeout=_PROBE_TIMEOUT, feed=bytes(256 * 256 * 3))
    except (LimitExceeded, OSError) as e:
        return False, str(e)
    lines = err.strip().splitlines()
    return rc == 0, lines[0] if lines else f"exit code {rc}"  # the first line names the cause


def h264_encoder() -> str:
    """The encoder :class:`~audio2lp.media.writer.VideoWriter` uses: ``libx264`` or ``h264_nvenc`` (see the module
    docstring). Raises VideoError for an unknown ``AUDIO2LP_VIDEO_ENCODER`` or a forced NVENC that cannot run."""
    want = os.environ.get(ENV, "").strip().lower() or "auto"
    if want == "auto":
        return "h264_nvenc" if nvenc_usable() else "libx264"
    if want not in ENCODERS:
        raise VideoError(f"{ENV}={want} is not a video encoder this tool uses; set it to auto, libx264 or "
                         f"h264_nvenc (or unset it).")
    if want == "h264_nvenc" and not nvenc_usable():
        raise VideoError(f"{ENV}=h264_nvenc, but ffmpeg cannot encode with NVENC on this machine (no NVIDIA GPU, "
                         f"driver or free encoder session); set it to auto or libx264.")
    return want


def encoder_args(codec: str, preset: str, crf: int) -> list[str]:
    """ffmpeg's video-encoder arguments for ``codec`` (:data:`ENCODERS`) at x264 ``preset`` and quality ``crf``
    (0-51, lower is better)."""
    if codec == "libx264":
        return ["-c:v", "libx264", "-preset", preset, "-crf", str(int(crf))]
    if codec == "h264_nvenc":  # -cq 0 means "automatic" to NVENC: the best quality asked for is 1
        return ["-c:v", "h264_nvenc", "-preset", _NVENC_PRESETS[preset], "-tune", "hq", "-rc", "vbr",
                "-cq", str(max(1, int(crf))), "-b:v", "0"]
    raise ValueError(f"codec must be one of {', '.join(ENCODERS)} (got {codec!r})")
