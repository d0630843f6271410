"""The dense-motion network inside W: keypoints -> dense 3-D deformation and occlusion map."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import DenseMotionConfig
from .blocks import Hourglass, kp2gaussian, make_coordinate_grid


class DenseMotionNetwork(nn.Module):
    """Predicts how to warp the source feature volume so its keypoints land on the driving ones.

    Zero-order (translation-only) motion per keypoint plus a background identity, blended by a
    softmax mask predicted by a 3-D hourglass from keypoint heatmaps and pre-warped features.
    """

    def __init__(self, cfg: DenseMotionConfig, num_kp: int, feature_channel: int,
                 estimate_occlusion_map: bool = True):
        super().__init__()
        self.cfg = cfg
        self.num_kp = num_kp
        self.hourglass = Hourglass(cfg.block_expansion, (num_kp + 1) * (cfg.compress + 1), cfg.num_blocks,
                                   cfg.max_features)
        k = cfg.mask_kernel
        self.mask = nn.Conv3d(self.hourglass.out_filters, num_kp + 1, kernel_size=k, padding=k // 2)
        self.compress = nn.Conv3d(feature_channel, cfg.compress, kernel_size=1)
        self.norm = nn.BatchNorm3d(cfg.compress, affine=True)
        self.estimate_occlusion_map = estimate_occlusion_map
        if estimate_occlusion_map:
            self.occlusion = nn.Conv2d(self.hourglass.out_filters * cfg.reshape_depth, 1, kernel_size=7, padding=3)

    def compress_feature(self, feature: torch.Tensor) -> torch.Tensor:
        """(B, C, D, H, W) source feature -> (B, compress, D, H, W). Depends on the source only."""
        return F.relu(self.norm(self.compress(feature)))

    def sparse_motions(self, spatial: tuple[int, int, int], kp_driving: torch.Tensor,
                       kp_source: torch.Tensor) -> torch.Tensor:
        """Per-keypoint translations of the identity grid: (B, K+1, D, H, W, 3), background first."""
        b = kp_driving.shape[0]
        grid = make_coordinate_grid(spatial, kp_source)[None, None]  # (1, 1, D, H, W, 3)
        # same operation order as the official code: (grid - kp_d) + kp_s, (B, K, D, H, W, 3)
        driving_to_source = grid - kp_driving[:, :, None, None, None, :] + kp_source[:, :, None, None, None, :]
        return torch.cat([grid.expand(b, 1, *grid.shape[2:]), driving_to_source], dim=1)

    def deformed_features(self, compressed: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        """Warp the compressed feature (B or 1, c, D, H, W) with every sparse motion (B, K', D, H, W, 3):
        (B, K', c, D, H, W)."""
        _, c, d, h, w = compressed.shape
        b, k1 = sparse.shape[:2]
        feat = compressed.unsqueeze(1).expand(b, k1, c, d, h, w).reshape(b * k1, c, d, h, w)
        out = F.grid_sample(feat, sparse.reshape(b * k1, d, h, w, 3), align_corners=False)
        return out.view(b, k1, c, d, h, w)

    def heatmaps(self, spatial: tuple[int, int, int], kp_driving: torch.Tensor, kp_source: torch.Tensor,
                 gaussian_source: torch.Tensor | None = None) -> torch.Tensor:
        """Driving minus source Gaussians, zero background first: (B, K+1, 1, D, H, W)."""
        g_d = kp2gaussian(kp_driving, spatial, 0.01)
        g_s = kp2gaussian(kp_source, spatial, 0.01) if gaussian_source is None else gaussian_source
        heat = g_d - g_s  # (B, K, D, H, W)
        zeros = torch.zeros_like(heat[:, :1])
        return torch.cat([zeros, heat], dim=1).unsqueeze(2)

    def forward(self, feature: torch.Tensor, kp_driving: torch.Tensor, kp_source: torch.Tensor,
                compressed: torch.Tensor | None = None, gaussian_source: torch.Tensor | None = None,
                background: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """feature (B, C, D, H, W); kp_* (B, K, 3) in [-1, 1].

        ``compressed``, ``gaussian_source`` and ``background`` (the identity-warped compressed feature,
        (1, 1, c, D, H, W)) may be passed in when they were computed once for the source (they depend on
        nothing else). Returns ``deformation`` (B, D, H, W, 3), ``mask``
        (B, K+1, D, H, W) and ``occlusion_map`` (B, 1, H, W) in [0, 1].
        """
        if compressed is None:
            compressed = self.compress_feature(feature)
        b, _, d, h, w = compressed.shape
        if compressed.shape[0] != kp_driving.shape[0]:
            compressed = compressed.expand(kp_driving.shape[0], *compressed.shape[1:])
            b = kp_driving.shape[0]
        spatial = (d, h, w)
        sparse = self.sparse_motions(spatial, kp_driving, kp_source)  # (B, K+1, D, H, W, 3)
        if background is None:
            deformed = self.deformed_features(compressed, sparse)  # (B, K+1, c, D, H, W)
        else:  # the identity-warped source (channel 0) was computed once for the source
            deformed = torch.cat([background.expand(b, *background.shape[1:]),
                                  self.deformed_features(compressed, sparse[:, 1:])], dim=1)
        heat = self.heatmaps(spatial, kp_driving, kp_source, gaussian_source)  # (B, K+1, 1, D, H, W)
        x = torch.cat([heat, deformed], dim=2).view(b, -1, d, h, w)  # (B, (K+1)*(c+1), D, H, W)
        prediction = self.hourglass(x)  # (B, out_filters, D, H, W)
        mask = F.softmax(self.mask(prediction), dim=1)  # (B, K+1, D, H, W)
        # weighted sum of the sparse motions: (B, K+1, D, H, W, 3) * (B, K+1, D, H, W, 1) -> (B, D, H, W, 3)
        deformation = (sparse * mask.unsqueeze(-1)).sum(dim=1)
        out = {"mask": mask, "deformation": deformation}
        if self.estimate_occlusion_map:
            pred2d = prediction.reshape(b, -1, h, w)  # (B, out_filters*D, H, W)
            out["occlusion_map"] = torch.sigmoid(self.occlusion(pred2d))
        return out
