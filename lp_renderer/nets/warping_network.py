"""W: the warping network (dense motion + 3-D warp of the feature volume + 2-D projection)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import WarpingConfig
from .blocks import SameBlock2d, kp2gaussian, make_coordinate_grid
from .dense_motion import DenseMotionNetwork


class WarpingNetwork(nn.Module):
    """Warps f_s from source keypoints x_s to driving keypoints x_d.

    Inputs: feature (B, 32, 16, 64, 64), kp_driving / kp_source (B, 21, 3) in [-1, 1].
    Output dict: ``out`` (B, 256, 64, 64) (the SPADE decoder's input), ``deformation``
    (B, 16, 64, 64, 3) and ``occlusion_map`` (B, 1, 64, 64).
    """

    def __init__(self, cfg: WarpingConfig = WarpingConfig()):
        super().__init__()
        self.cfg = cfg
        self.dense_motion_network = DenseMotionNetwork(cfg.dense_motion, cfg.num_kp, cfg.reshape_channel,
                                                       cfg.estimate_occlusion_map)
        out_ch = cfg.block_expansion * 2**cfg.num_down_blocks
        self.third = SameBlock2d(cfg.max_features, out_ch, lrelu=True)
        self.fourth = nn.Conv2d(out_ch, out_ch, kernel_size=1)

    def forward(self, feature: torch.Tensor, kp_driving: torch.Tensor, kp_source: torch.Tensor,
                source_cache: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """``source_cache`` (from :meth:`source_cache`) skips work that depends on the source only."""
        cache = source_cache or {}
        dense = self.dense_motion_network(feature, kp_driving, kp_source, compressed=cache.get("compressed"),
                                          gaussian_source=cache.get("gaussian_source"),
                                          background=cache.get("background"))
        b = kp_driving.shape[0]
        if feature.shape[0] != b:
            feature = feature.expand(b, *feature.shape[1:])
        out = F.grid_sample(feature, dense["deformation"], align_corners=False)  # (B, C, D, H, W)
        bs, c, d, h, w = out.shape
        out = self.fourth(self.third(out.view(bs, c * d, h, w)))  # (B, C*D, H, W) -> (B, 256, H, W)
        occlusion = dense.get("occlusion_map")
        if occlusion is not None:
            out = out * occlusion
        return {"out": out, "deformation": dense["deformation"], "occlusion_map": occlusion}

    @torch.no_grad()
    def source_cache(self, feature: torch.Tensor, kp_source: torch.Tensor) -> dict[str, torch.Tensor]:
        """Everything inside W that depends only on the source: its compressed feature volume, its
        keypoint Gaussians and the identity-warped (background) channel of the deformed features.
        feature (1, C, D, H, W), kp_source (1, K, 3)."""
        dm = self.dense_motion_network
        compressed = dm.compress_feature(feature)
        spatial = tuple(compressed.shape[2:])
        identity = make_coordinate_grid(spatial, compressed)[None, None]  # (1, 1, D, H, W, 3)
        return {"compressed": compressed, "gaussian_source": kp2gaussian(kp_source, spatial, 0.01),
                "background": dm.deformed_features(compressed, identity)}

