"""M: the motion extractor, a ConvNeXt-V2 backbone with seven regression heads."""

from __future__ import annotations

import torch
from torch import nn

from ..config import MotionConfig
from .blocks import ConvNeXtBlock, LayerNorm2d


class ConvNeXtV2(nn.Module):
    """ConvNeXt-V2 (tiny by default) whose pooled features feed the keypoint / pose heads."""

    def __init__(self, cfg: MotionConfig = MotionConfig()):
        super().__init__()
        dims, depths = cfg.dims, cfg.depths
        self.downsample_layers = nn.ModuleList()
        self.downsample_layers.append(nn.Sequential(nn.Conv2d(cfg.in_chans, dims[0], kernel_size=4, stride=4),
                                                    LayerNorm2d(dims[0])))
        for i in range(len(dims) - 1):
            self.downsample_layers.append(nn.Sequential(LayerNorm2d(dims[i]),
                                                        nn.Conv2d(dims[i], dims[i + 1], kernel_size=2, stride=2)))
        self.stages = nn.ModuleList(nn.Sequential(*[ConvNeXtBlock(dims[i]) for _ in range(depths[i])])
                                    for i in range(len(dims)))
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        d = dims[-1]
        self.fc_kp = nn.Linear(d, 3 * cfg.num_kp)
        self.fc_scale = nn.Linear(d, 1)
        self.fc_pitch = nn.Linear(d, cfg.num_bins)
        self.fc_yaw = nn.Linear(d, cfg.num_bins)
        self.fc_roll = nn.Linear(d, cfg.num_bins)
        self.fc_t = nn.Linear(d, 3)
        self.fc_exp = nn.Linear(d, 3 * cfg.num_kp)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        for down, stage in zip(self.downsample_layers, self.stages):
            x = stage(down(x))
        x = self.norm(x.mean([-2, -1]))  # global average pool: (B, C, H, W) -> (B, C)
        return {"kp": self.fc_kp(x), "exp": self.fc_exp(x), "pitch": self.fc_pitch(x),
                "yaw": self.fc_yaw(x), "roll": self.fc_roll(x), "t": self.fc_t(x), "scale": self.fc_scale(x)}


class MotionExtractor(nn.Module):
    """M: image -> raw heads.

    Input (B, 3, 256, 256) RGB in [0, 1]. Output dict of raw head values: ``kp`` and ``exp`` (B, 63),
    ``pitch``/``yaw``/``roll`` (B, 66) bin logits, ``t`` (B, 3), ``scale`` (B, 1). Convert with
    :func:`lp_renderer.keypoints.motion_from_raw`.
    """

    def __init__(self, cfg: MotionConfig = MotionConfig()):
        super().__init__()
        self.cfg = cfg
        self.detector = ConvNeXtV2(cfg)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.detector(x)
