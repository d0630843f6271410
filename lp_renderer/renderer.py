"""The renderer: source preparation (computed once), motion extraction, stitching / retargeting, W + G.

    renderer = Renderer.from_weights("~/weights")           # official release layout
    src = renderer.prepare_source(crop_rgb_256)              # F, M, x_s, W's per-source work
    info = renderer.extract_motion(driving_crops)            # M on a batch of 256x256 crops
    x_d = driving_keypoints(renderer, src, info, info[0])    # Algorithm 1 (lp_renderer.animation)
    frames = renderer.render(src, x_d)                       # (B, 512, 512, 3) uint8
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from .config import RendererConfig
from .errors import InputError
from .keypoints import KeypointInfo, apply_stitching, motion_from_raw, transform_keypoints
from .nets.networks import RendererNetworks

log = logging.getLogger(__name__)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class DeviceUnavailable(InputError):
    """``device`` or ``half`` asks for hardware this machine does not have; ``option`` says which
    (``"device"`` or ``"half"``)."""

    def __init__(self, option: str, message: str):
        super().__init__(message)
        self.option = option


def resolve_device(device: str | torch.device | None = None, half: bool | None = None) -> tuple[torch.device, bool]:
    """The device and precision a :class:`Renderer` runs with: ``device`` (None: CUDA when available, else the CPU)
    and ``half`` (None: on CUDA). The one place where they are checked; raises :class:`DeviceUnavailable` when CUDA
    is asked for (as the device, or by ``half``) and there is none."""
    dev = torch.device(device) if device is not None else default_device()
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailable("device", "CUDA was requested, but no CUDA GPU is available (or this PyTorch build "
                                              "has no CUDA support); run on the CPU.")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise DeviceUnavailable("device", f"CUDA device {dev.index} was requested, but this machine has {count} "
                                              f"GPU(s) (0..{count - 1}); pick one of them.")
    if half is None:
        half = dev.type == "cuda"
    if half and dev.type != "cuda":
        raise DeviceUnavailable("half", "half precision (float16) runs on CUDA only; on the CPU the networks run in "
                                        "float32, so leave half precision off.")
    return dev, bool(half)
#: The layer sets of a folded renderer (all fold spectral norm and BatchNorm; same maths up to float rounding):
#: ``"cpu"`` - the rewritten SPADE decoder (:mod:`.fast.spade`), W's mask convolution by FFT (:mod:`.fast.fft_conv`)
#: and W's and G's 2-D convolutions by NNPACK (:mod:`.fast.nnpack`) or, for G's 3x3 layers with many channels on
#: small maps, Winograd on GEMMs (:mod:`.fast.winograd`), G one image at a time: the CPU's default;
#: ``"cuda"`` - the rewritten SPADE decoder only (GPUs have fast direct convolutions): every other device's default;
#: ``"plain"`` - the folded original modules (what ONNX export writes).
LAYER_SETS = ("cpu", "cuda", "plain")


def default_layers(device: torch.device) -> str:
    """The layer set a device uses by default: ``"cpu"`` on the CPU, ``"cuda"`` on any other device."""
    return "cpu" if torch.device(device).type == "cpu" else "cuda"


@dataclass
class PreparedSource:
    """Everything that depends only on the source image, computed once and reused for every frame.

    image: (1, 3, 256, 256) float32 in [0, 1]; feature: f_s (1, C, D, 64, 64); info: the source's
    motion (batch 1); x_s: source keypoints (1, 21, 3); warp_cache: W's per-source tensors.
    eye_ratios (left, right) and lip_ratio are the source's landmark ratios when known (needed by
    eye / lip retargeting).
    """

    image: torch.Tensor
    feature: torch.Tensor
    info: KeypointInfo
    x_s: torch.Tensor
    warp_cache: dict[str, torch.Tensor] = field(default_factory=dict)
    eye_ratios: tuple[float, float] | None = None
    lip_ratio: float | None = None
    #: values derived from this source and a driving reference, computed once per reference (keyed by the
    #: reference object's id, which the entry keeps alive): see :func:`lp_renderer.animation.driving_keypoints`
    derived: dict = field(default_factory=dict, repr=False, compare=False)


class Renderer:
    """LivePortrait's networks on one device, with the official numerics.

    ``half`` (CUDA only) runs W and G under float16 autocast with the keypoint and warp maths in
    float32; on CPU everything is float32. ``fold`` replaces spectral-norm and BatchNorm layers by
    plain convolutions once (eval mode only; same outputs; see :mod:`lp_renderer.fast`; the process-wide
    allocator settings of :mod:`lp_renderer.fast.cpu_memory` are the caller's choice). ``layers`` picks the
    layer set of a folded renderer (:data:`LAYER_SETS`; default: the one of the device, ``"cpu"`` on the CPU,
    ``"cuda"`` elsewhere), so that any set can run on any device (tests run the CUDA set on the CPU).
    ``autotune`` (the ``"cpu"`` set only; opt-in: default off unless ``LP_RENDERER_AUTOTUNE=1``) picks each
    convolution's fastest exact kernel on this machine on first use and caches the choice
    (:mod:`lp_renderer.fast.autotune`); off, the CPU set runs its fixed kernels. ``neutral_exp``
    (1, 21, 3) is LivePortrait's neutral expression (``lip_array.pkl``), used when a single image drives the
    portrait; without it that case deviates from the official output (see
    :func:`lp_renderer.keypoints.relative_motion`).
    """

    def __init__(self, networks: RendererNetworks, device: str | torch.device | None = None,
                 half: bool | None = None, fold: bool = True, compile: bool = False,
                 neutral_exp: torch.Tensor | None = None, _owned: bool = False, layers: str | None = None,
                 autotune: bool | None = None):
        self.device, self.half = resolve_device(device, half)
        self.config: RendererConfig = networks.config
        networks = networks.eval()
        if layers is None:
            layers = default_layers(self.device)
        if layers not in LAYER_SETS:
            raise ValueError(f"layers must be one of {', '.join(LAYER_SETS)}, not {layers!r}")
        self.layers = layers if fold else "unfolded"
        if autotune and self.layers != "cpu":
            raise ValueError(f"autotune picks CPU kernels for the folded 'cpu' layer set, not {self.layers!r}")
        from .fast.autotune import autotune_enabled

        self.autotune = self.layers == "cpu" and autotune_enabled(autotune)
        if fold:
            from .fast.folding import fold_network

            if layers == "cpu":
                from .fast.cpu_memory import apply_if_enabled

                apply_if_enabled()  # only when the program opted in (lp_renderer.fast.cpu_memory)
            networks = fold_network(networks, fast_layers=layers != "plain", fft_conv=layers == "cpu",
                                    nnpack=layers == "cpu", inplace=_owned, autotune=self.autotune)
        self.nets = networks.to(self.device)
        self.folded = fold
        self.neutral_exp = None if neutral_exp is None else \
            torch.as_tensor(neutral_exp, dtype=torch.float32).reshape(1, -1, 3).to(self.device)
        self._warp = self.nets.warping
        self._decode = self.nets.decoder
        # images per G call (None: the whole batch); see decode()
        self.decode_chunk: int | None = 1 if fold and layers == "cpu" else None
        if compile:
            self._warp = torch.compile(self.nets.warping)
            self._decode = torch.compile(self.nets.decoder)

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_weights(cls, weights_dir: str | Path, device=None, half: bool | None = None,
                     fold: bool = True, compile: bool = False, require_stitching: bool = False,
                     layers: str | None = None, autotune: bool | None = None) -> Renderer:
        """Load the official release (or our safetensors) from ``weights_dir`` (see :mod:`.weights`), and
        ``lip_array.pkl`` (the neutral expression) when the folder has it."""
        from .weights import load_networks, load_neutral_expression

        wdir = Path(weights_dir).expanduser()
        nets = load_networks(wdir, require_stitching=require_stitching)
        return cls(nets, device=device, half=half, fold=fold, compile=compile,
                   neutral_exp=load_neutral_expression(wdir), _owned=True, layers=layers, autotune=autotune)

    @classmethod
    def from_config(cls, config: RendererConfig, seed: int = 0, **kwargs) -> Renderer:
        """Random weights (tests, benchmarks)."""
        return cls(RendererNetworks.random(config, seed), _owned=True, **kwargs)

    @property
    def has_stitching(self) -> bool:
        return self.nets.stitching is not None

    def _autocast(self):
        if self.half:
            return torch.autocast(device_type="cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    # ---------------------------------------------------------------- inputs
    def to_tensor(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """RGB uint8 (H, W, 3) or (B, H, W, 3) -> (B, 3, 256, 256) float32 in [0, 1] on the device.

        Images that are not 256x256 are resized with ``cv2.resize`` (bilinear), as the official code does.
        A float tensor must already be (B, 3, 256, 256) with values in [0, 1]; it is passed through.
        Anything else raises :class:`InputError`.
        """
        if isinstance(images, torch.Tensor) and images.dtype.is_floating_point:
            if images.ndim != 4 or tuple(images.shape[1:]) != (3, 256, 256):
                raise InputError(f"a float image tensor must be (B, 3, 256, 256), not {tuple(images.shape)}; "
                                 f"pass RGB uint8 images (H, W, 3) to have them resized.")
            if images.numel() and not (torch.isfinite(images).all() and images.min() >= 0 and images.max() <= 1):
                raise InputError("a float image tensor must hold values in [0, 1] (RGB / 255); got values "
                                 f"from {float(images.min()):.3g} to {float(images.max()):.3g}.")
            return images.to(self.device, torch.float32)
        arr = np.asarray(images)
        if arr.dtype != np.uint8:
            raise InputError(f"images must be RGB uint8 arrays (or float tensors (B, 3, 256, 256) in [0, 1]), "
                             f"not {arr.dtype}.")
        if arr.ndim == 3:
            arr = arr[None]
        if arr.ndim != 4 or arr.shape[-1] != 3:
            raise InputError(f"expected RGB images (H, W, 3) or (B, H, W, 3), got shape {arr.shape}.")
        if arr.shape[1:3] != (256, 256):
            arr = np.stack([cv2.resize(a, (256, 256)) for a in arr])
        # channels first while still uint8 (a quarter of the bytes to move), one host -> device copy
        x = torch.from_numpy(np.ascontiguousarray(arr.transpose(0, 3, 1, 2)))  # (B, H, W, 3) -> (B, 3, H, W)
        if self.device.type == "cuda":
            x = x.pin_memory().to(self.device, non_blocking=True)
        else:
            x = x.to(self.device)
        return x.float().div_(255.0)  # in [0, 1] exactly as x / 255

    # ---------------------------------------------------------------- networks
    @torch.no_grad()
    def extract_motion(self, images) -> KeypointInfo:
        """M on a batch of crops (see :meth:`to_tensor`) -> :class:`KeypointInfo` (float32)."""
        x = self.to_tensor(images)
        with self._autocast():
            raw = self.nets.motion(x)
        return motion_from_raw({k: v.float() for k, v in raw.items()})

    @torch.no_grad()
    def appearance(self, images) -> torch.Tensor:
        """F: (1, 3, 256, 256) -> f_s (1, C, D, 64, 64) float32."""
        with self._autocast():
            return self.nets.appearance(self.to_tensor(images)).float()

    @torch.no_grad()
    def prepare_source(self, image, eye_ratios: tuple[float, float] | None = None,
                       lip_ratio: float | None = None) -> PreparedSource:
        """Compute and cache everything that depends only on the source crop (256x256 RGB)."""
        x = self.to_tensor(image)
        if x.shape[0] != 1:
            raise InputError(f"prepare_source takes one image, not a batch of {x.shape[0]}.")
        feature = self.appearance(x)
        info = self.extract_motion(x)
        x_s = transform_keypoints(info)
        cache = self.nets.warping.source_cache(feature, x_s) if self.folded else {}
        return PreparedSource(x, feature, info, x_s, cache, eye_ratios, lip_ratio)

    @torch.no_grad()
    def stitch(self, x_s: torch.Tensor, x_d: torch.Tensor) -> torch.Tensor:
        """Stitching (paper Sec. 3.2): x_d (B, 21, 3) -> x_d + S(x_s, x_d). No-op without weights."""
        if self.nets.stitching is None:
            return x_d
        b = x_d.shape[0]
        x_s = x_s.expand(b, *x_s.shape[1:])
        delta = self.nets.stitching.stitching(torch.cat([x_s.reshape(b, -1), x_d.reshape(b, -1)], dim=1))
        return apply_stitching(x_d, delta)

    def _retarget(self, mlp, x_s: torch.Tensor, ratios: torch.Tensor) -> torch.Tensor:
        ratios = host_to_device(ratios, self.device) if not isinstance(ratios, torch.Tensor) else \
            ratios.to(self.device, torch.float32)
        b = ratios.shape[0]
        x_s = x_s.expand(b, *x_s.shape[1:])
        delta = mlp(torch.cat([x_s.reshape(b, -1), ratios.reshape(b, -1)], dim=1))
        return delta.reshape(b, -1, 3)

    @torch.no_grad()
    def retarget_eyes(self, x_s: torch.Tensor, ratios) -> torch.Tensor:
        """Eye retargeting delta (B, 21, 3); ratios (B, 3) = [source left, source right, driving]."""
        self._require_stitching("eye retargeting")
        return self._retarget(self.nets.stitching.eye, x_s, ratios)

    @torch.no_grad()
    def retarget_lip(self, x_s: torch.Tensor, ratios) -> torch.Tensor:
        """Lip retargeting delta (B, 21, 3); ratios (B, 2) = [source lip, driving lip]."""
        self._require_stitching("lip retargeting")
        return self._retarget(self.nets.stitching.lip, x_s, ratios)

    def _require_stitching(self, what: str) -> None:
        if self.nets.stitching is None:
            from .errors import WeightsError

            raise WeightsError(f"{what} needs liveportrait/retargeting_models/stitching_retargeting_module.pth, "
                               f"which was not found in the weights folder.")

    @torch.no_grad()
    def warp(self, source: PreparedSource, x_d: torch.Tensor) -> dict[str, torch.Tensor]:
        """W for a batch of driving keypoints x_d (B, 21, 3): ``out`` (B, 256, 64, 64) and friends."""
        b = x_d.shape[0]
        x_s = source.x_s.expand(b, *source.x_s.shape[1:])
        with self._autocast():
            return self._warp(source.feature, x_d.float(), x_s, source_cache=source.warp_cache or None)

    @torch.no_grad()
    def decode(self, warped: torch.Tensor) -> torch.Tensor:
        """G: (B, 256, 64, 64) -> (B, 3, 512, 512) float32 in [0, 1].

        With the CPU fast layers G runs one image at a time (``decode_chunk``): its convolutions already
        run per image there (NNPACK), and a batch of 512x512 activations (0.5 GB per tensor at B = 8) only
        thrashes the caches and the allocator, so a batch still gains in M and W and loses nothing in G.
        Every layer of G is per-sample, so the result is the same.
        """
        with self._autocast():
            if self.decode_chunk is None or warped.shape[0] <= self.decode_chunk:
                return self._decode(warped).float()
            parts = [self._decode(warped[i: i + self.decode_chunk]).float()  # (chunk, 3, H, W)
                     for i in range(0, warped.shape[0], self.decode_chunk)]
            return torch.cat(parts)  # (B, 3, H, W)

    @torch.no_grad()
    def warp_decode(self, source: PreparedSource, x_d: torch.Tensor) -> torch.Tensor:
        """W then G: x_d (B, 21, 3) -> images (B, 3, 512, 512) float32 in [0, 1]."""
        return self.decode(self.warp(source, x_d)["out"])

    @torch.no_grad()
    def render(self, source: PreparedSource, x_d: torch.Tensor, batch_size: int = 8) -> np.ndarray:
        """Render driving keypoints x_d (N, 21, 3) float32 -> (N, 512, 512, 3) uint8, in batches of ``batch_size``.

        ``x_d`` are the final driving keypoints (after relative motion, stitching and retargeting, e.g. from
        :func:`lp_renderer.animation.driving_keypoints`), not motion parameters. The float -> uint8
        conversion truncates (``* 255`` then ``astype``), as the official code.
        """
        outs = []
        for i in range(0, x_d.shape[0], batch_size):
            img = self.warp_decode(source, x_d[i: i + batch_size].to(self.device))
            outs.append(to_uint8(img))
        return np.concatenate(outs) if outs else np.zeros((0, 512, 512, 3), np.uint8)


def host_to_device(array, device: str | torch.device) -> torch.Tensor:
    """A host array (any shape, cast to float32) on ``device``, copied without waiting for the device: a plain
    ``torch.as_tensor(..., device=cuda)`` synchronises the stream, i.e. waits for every queued kernel."""
    return torch.as_tensor(np.asarray(array, dtype=np.float32)).to(device, non_blocking=True)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) float in [0, 1] -> (B, H, W, 3) uint8, truncating like the official ``parse_output``.

    On an accelerator the conversion runs there and the batch comes back in one copy of the uint8 pixels (a
    quarter of the float bytes) into pinned memory; the result is the same bytes as the CPU path (float32
    ``x * 255`` truncated either way).
    """
    if images.device.type != "cuda":
        # one image at a time through a reused buffer (cache-sized, no fresh allocation per operation), then
        # interleaved by OpenCV into a C-contiguous (B, H, W, 3): paste-back and the encoder read it without a copy
        x = images.detach().cpu()
        x = x if x.dtype in (torch.float32, torch.float64) else x.float()
        b, c, h, w = x.shape
        out = np.empty((b, h, w, c), np.uint8)
        buf = torch.empty((c, h, w), dtype=x.dtype)
        for i in range(b):
            torch.clamp(x[i], 0, 1, out=buf).mul_(255)
            cv2.merge(list(buf.to(torch.uint8).numpy()), dst=out[i])  # (3, H, W) planes -> (H, W, 3)
        return out
    u8 = (images.clamp(0, 1) * 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()  # (B, H, W, 3) on the device
    host = torch.empty(u8.shape, dtype=torch.uint8, pin_memory=True)
    host.copy_(u8, non_blocking=True)
    torch.cuda.current_stream(images.device).synchronize()  # the one wait for the device per batch
    return host.numpy()
