"""LivePortrait's motion extractor M alone, for ``prepare`` (the other networks are not needed), and the device
it and Whisper run on."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from lp_renderer.errors import InputError, WeightsError

__all__ = ["MotionExtractorOnly", "resolve_device"]


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a CUDA device is present, else ``cpu``; ``cuda`` without CUDA is an InputError."""
    import torch

    if device not in ("auto", "cpu", "cuda"):
        raise InputError(f"--device must be auto, cpu or cuda, got {device!r}.")
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was given but no CUDA device is available here; use --device auto or cpu.")
    return "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)


def _file_fingerprint(path: Path) -> str:
    """Size plus a hash of the first and last MiB: cheap, and survives copying the weights elsewhere."""
    h = hashlib.sha1()
    size = path.stat().st_size
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        if size > 2 << 20:
            f.seek(size - (1 << 20))
            h.update(f.read())
    return f"{size}-{h.hexdigest()[:16]}"



class MotionExtractorOnly:
    """LivePortrait's M loaded alone from a weights folder (the other networks are not needed to prepare data).

    ``__call__(crops)``: uint8 RGB crops (B, 256, 256, 3) -> float32 motion (B, 70).
    """

    def __init__(self, weights_dir: str | os.PathLike | None = None, device: str = "cpu"):
        import torch

        from audio2lp.weights_store import missing_weights_message, resolve_weights_dir
        from lp_renderer.config import RendererConfig
        from lp_renderer.nets.motion_extractor import MotionExtractor
        from lp_renderer.weights import OFFICIAL_FILES, load_state_dict_strict, read_weight_file, weight_file

        wdir = resolve_weights_dir(weights_dir)
        path = weight_file(wdir, "motion_extractor")
        if path is None:
            raise WeightsError(missing_weights_message(wdir, [OFFICIAL_FILES["motion_extractor"]]))
        lf = read_weight_file(path, "motion_extractor")
        cfg = RendererConfig.from_dict({"motion": lf.config}).motion if lf.config else RendererConfig().motion
        net = MotionExtractor(cfg)
        load_state_dict_strict(net, lf.state_dicts["motion_extractor"], str(path))
        self.net = net.eval().to(device)
        self.device = torch.device(device)
        self.path = path
        self.fingerprint = _file_fingerprint(path)

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        import torch

        from audio2lp.driving import info_to_motion
        from lp_renderer.keypoints import motion_from_raw

        x = torch.from_numpy(np.ascontiguousarray(crops)).to(self.device).float().div_(255.0).permute(0, 3, 1, 2)
        with torch.inference_mode():
            raw = self.net(x.contiguous())
            info = motion_from_raw({k: v.float() for k, v in raw.items()})
        return info_to_motion(info)
