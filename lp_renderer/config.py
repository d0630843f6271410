"""Architecture sizes of the LivePortrait networks as frozen dataclasses.

``RendererConfig()`` equals the official release (``src/config/models.yaml``); ``RendererConfig.tiny()``
runs the very same code paths with a handful of channels so unit tests stay fast on a CPU.
Our own checkpoints carry the config (as JSON in the safetensors metadata), so a file always
rebuilds the network it was saved from.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field


@dataclass(frozen=True)
class AppearanceConfig:
    """F: image -> 3-D appearance feature volume."""

    image_channel: int = 3
    block_expansion: int = 64
    num_down_blocks: int = 2
    max_features: int = 512
    reshape_channel: int = 32
    reshape_depth: int = 16
    num_resblocks: int = 6


@dataclass(frozen=True)
class MotionConfig:
    """M: ConvNeXt-V2 image -> canonical keypoints, pose, expression, translation and scale."""

    in_chans: int = 3
    depths: tuple[int, ...] = (3, 3, 9, 3)
    dims: tuple[int, ...] = (96, 192, 384, 768)
    num_kp: int = 21
    num_bins: int = 66


@dataclass(frozen=True)
class DenseMotionConfig:
    """The dense-motion part of W (keypoint heatmaps, 3-D hourglass, masks, occlusion)."""

    block_expansion: int = 32
    max_features: int = 1024
    num_blocks: int = 5
    reshape_depth: int = 16
    compress: int = 4
    mask_kernel: int = 7


@dataclass(frozen=True)
class WarpingConfig:
    """W: warps the source feature volume from source to driving keypoints."""

    num_kp: int = 21
    block_expansion: int = 64
    max_features: int = 512
    num_down_blocks: int = 2
    reshape_channel: int = 32
    estimate_occlusion_map: bool = True
    dense_motion: DenseMotionConfig = field(default_factory=DenseMotionConfig)


@dataclass(frozen=True)
class DecoderConfig:
    """G: SPADE decoder, warped features (64x64) -> image (512x512 with upscale 2)."""

    upscale: int = 2
    block_expansion: int = 64
    max_features: int = 512
    num_down_blocks: int = 2
    out_channels: int = 64
    spade_hidden: int = 128
    num_middle_blocks: int = 6


@dataclass(frozen=True)
class MLPConfig:
    """One stitching / retargeting MLP: Linear-ReLU-...-Linear."""

    input_size: int
    hidden_sizes: tuple[int, ...]
    output_size: int


@dataclass(frozen=True)
class StitchingConfig:
    """S (stitching) and the lip / eye retargeting MLPs."""

    stitching: MLPConfig = MLPConfig(126, (128, 128, 64), 65)
    lip: MLPConfig = MLPConfig(65, (128, 128, 64), 63)
    eye: MLPConfig = MLPConfig(66, (256, 256, 128, 128, 64), 63)


@dataclass(frozen=True)
class RendererConfig:
    """All five networks. The default equals the official release."""

    appearance: AppearanceConfig = field(default_factory=AppearanceConfig)
    motion: MotionConfig = field(default_factory=MotionConfig)
    warping: WarpingConfig = field(default_factory=WarpingConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    stitching: StitchingConfig = field(default_factory=StitchingConfig)

    @classmethod
    def tiny(cls) -> RendererConfig:
        """Same code paths, few channels: for fast tests only (outputs are meaningless)."""
        return cls(
            appearance=AppearanceConfig(block_expansion=8, max_features=32, reshape_channel=16,
                                        reshape_depth=2, num_resblocks=1),
            motion=MotionConfig(depths=(1, 1, 1, 1), dims=(8, 8, 16, 16)),
            warping=WarpingConfig(block_expansion=8, max_features=32, reshape_channel=16,
                                  dense_motion=DenseMotionConfig(block_expansion=4, max_features=16,
                                                                 num_blocks=3, reshape_depth=2,
                                                                 compress=1, mask_kernel=3)),
            decoder=DecoderConfig(block_expansion=8, max_features=32, out_channels=8, spade_hidden=8,
                                  num_middle_blocks=1),
        )

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> RendererConfig:
        """Inverse of ``dataclasses.asdict``; unknown keys are an error."""
        return _from_dict(cls, d)

    @classmethod
    def from_json(cls, s: str) -> RendererConfig:
        return cls.from_dict(json.loads(s))


def _from_dict(tp, d):
    if not dataclasses.is_dataclass(tp):
        return tuple(d) if isinstance(d, list) else d
    names = {f.name: f for f in dataclasses.fields(tp)}
    unknown = set(d) - set(names)
    if unknown:
        raise ValueError(f"unknown {tp.__name__} fields: {sorted(unknown)}")
    kwargs = {}
    for name, f in names.items():
        if name not in d:
            continue
        sub = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        kwargs[name] = _from_dict(type(sub), d[name]) if dataclasses.is_dataclass(sub) else (
            tuple(d[name]) if isinstance(d[name], list) else d[name])
    return tp(**kwargs)
