"""G: the SPADE decoder (warped features 64x64 -> RGB image 512x512)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import DecoderConfig
from .blocks import SPADEResnetBlock


class SPADEDecoder(nn.Module):
    """Input (B, 256, 64, 64) from W; output (B, 3, 512, 512) RGB in [0, 1] (upscale 2).

    The input is also the SPADE label map of every block. Convolutions of the residual blocks are
    spectral-normalised (``weight_orig``/``weight_u``/``weight_v`` in the state dict); in eval mode the
    effective weight is ``weight_orig / (u . (W v))`` and :func:`lp_renderer.fast.folding.fold_network`
    replaces it by a plain weight once at load time.
    """

    def __init__(self, cfg: DecoderConfig = DecoderConfig()):
        super().__init__()
        self.cfg = cfg
        ch = min(cfg.max_features, cfg.block_expansion * 2**cfg.num_down_blocks)
        self.fc = nn.Conv2d(ch, 2 * ch, kernel_size=3, padding=1)
        for i in range(cfg.num_middle_blocks):
            self.add_module(f"G_middle_{i}", SPADEResnetBlock(2 * ch, 2 * ch, ch, cfg.spade_hidden))
        self.up_0 = SPADEResnetBlock(2 * ch, ch, ch, cfg.spade_hidden)
        self.up_1 = SPADEResnetBlock(ch, cfg.out_channels, ch, cfg.spade_hidden)
        self.up = nn.Upsample(scale_factor=2)
        if cfg.upscale is None or cfg.upscale <= 1:
            self.conv_img = nn.Conv2d(cfg.out_channels, 3, kernel_size=3, padding=1)
        else:
            self.conv_img = nn.Sequential(
                nn.Conv2d(cfg.out_channels, 3 * cfg.upscale**2, kernel_size=3, padding=1),
                nn.PixelShuffle(upscale_factor=cfg.upscale))

    def middle_blocks(self) -> list[SPADEResnetBlock]:
        return [getattr(self, f"G_middle_{i}") for i in range(self.cfg.num_middle_blocks)]

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        seg = feature
        x = self.fc(feature)
        for block in self.middle_blocks():
            x = block(x, seg)
        x = self.up_0(self.up(x), seg)
        x = self.up_1(self.up(x), seg)
        x = self.conv_img(F.leaky_relu(x, 0.2))
        return torch.sigmoid(x)
