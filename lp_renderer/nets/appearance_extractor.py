"""F: the appearance feature extractor (image -> 3-D feature volume)."""

from __future__ import annotations

import torch
from torch import nn

from ..config import AppearanceConfig
from .blocks import DownBlock2d, ResBlock3d, SameBlock2d


class AppearanceFeatureExtractor(nn.Module):
    """Maps a source image to the feature volume f_s that W warps.

    Input (B, 3, 256, 256) float32 RGB in [0, 1]; output (B, reshape_channel, reshape_depth, 64, 64),
    1x32x16x64x64 for the official sizes.
    """

    def __init__(self, cfg: AppearanceConfig = AppearanceConfig()):
        super().__init__()
        self.cfg = cfg
        self.first = SameBlock2d(cfg.image_channel, cfg.block_expansion)
        self.down_blocks = nn.ModuleList(
            DownBlock2d(min(cfg.max_features, cfg.block_expansion * 2**i),
                        min(cfg.max_features, cfg.block_expansion * 2 ** (i + 1)))
            for i in range(cfg.num_down_blocks))
        out_features = min(cfg.max_features, cfg.block_expansion * 2**cfg.num_down_blocks)
        self.second = nn.Conv2d(out_features, cfg.max_features, kernel_size=1)
        self.resblocks_3d = nn.Sequential()
        for i in range(cfg.num_resblocks):
            self.resblocks_3d.add_module(f"3dr{i}", ResBlock3d(cfg.reshape_channel))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.first(x)
        for block in self.down_blocks:
            out = block(out)
        out = self.second(out)  # (B, max_features, H, W)
        b, _, h, w = out.shape
        out = out.view(b, self.cfg.reshape_channel, self.cfg.reshape_depth, h, w)  # (B, C, D, H, W)
        return self.resblocks_3d(out)
