"""S and R: the stitching MLP and the eye / lip retargeting MLPs (same class, different sizes)."""

from __future__ import annotations

import torch
from torch import nn

from ..config import MLPConfig, StitchingConfig


class StitchingRetargetingNetwork(nn.Module):
    """Linear-ReLU-...-Linear. Keys ``mlp.0``, ``mlp.2``, ... as released."""

    def __init__(self, cfg: MLPConfig):
        super().__init__()
        self.cfg = cfg
        layers: list[nn.Module] = []
        sizes = [cfg.input_size, *cfg.hidden_sizes]
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), nn.ReLU(inplace=True)]
        layers.append(nn.Linear(sizes[-1], cfg.output_size))
        self.mlp = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


class StitchingModules(nn.Module):
    """The three MLPs of ``stitching_retargeting_module.pth``: ``stitching``, ``lip`` and ``eye``."""

    def __init__(self, cfg: StitchingConfig = StitchingConfig()):
        super().__init__()
        self.cfg = cfg
        self.stitching = StitchingRetargetingNetwork(cfg.stitching)
        self.lip = StitchingRetargetingNetwork(cfg.lip)
        self.eye = StitchingRetargetingNetwork(cfg.eye)
