"""The five LivePortrait networks kept together (F, M, W, G and the stitching / retargeting MLPs).

Loading and saving them is :mod:`lp_renderer.weights` (``load_networks`` / ``save_networks``); this module does
not know about files.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..config import RendererConfig
from .appearance_extractor import AppearanceFeatureExtractor
from .motion_extractor import MotionExtractor
from .spade_decoder import SPADEDecoder
from .stitching import StitchingModules
from .warping_network import WarpingNetwork


class RendererNetworks(nn.Module):
    """Container; ``stitching`` is None when no stitching file was given."""

    def __init__(self, config: RendererConfig, with_stitching: bool = True):
        super().__init__()
        self.config = config
        self.appearance = AppearanceFeatureExtractor(config.appearance)
        self.motion = MotionExtractor(config.motion)
        self.warping = WarpingNetwork(config.warping)
        self.decoder = SPADEDecoder(config.decoder)
        self.stitching = StitchingModules(config.stitching) if with_stitching else None

    @classmethod
    def from_config(cls, config: RendererConfig, with_stitching: bool = True) -> RendererNetworks:
        return cls(config, with_stitching)

    @classmethod
    def random(cls, config: RendererConfig, seed: int = 0) -> RendererNetworks:
        """Randomly initialised networks (PyTorch default init, BatchNorm statistics perturbed so they
        are not identities) for tests and benchmarks. Deterministic for a seed."""
        g = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            nets = cls(config)
        for name, buf in nets.named_buffers():
            if name.endswith("running_mean"):
                buf.copy_(0.1 * torch.randn(buf.shape, generator=g))
            elif name.endswith("running_var"):
                buf.copy_(1.0 + 0.25 * torch.rand(buf.shape, generator=g))
        return nets.eval()

    def module_for(self, file_key: str, name: str) -> nn.Module:
        """The module that the state dict ``name`` of released file ``file_key`` loads into."""
        table = {"appearance_feature_extractor": self.appearance, "motion_extractor": self.motion,
                 "warping_module": self.warping, "spade_generator": self.decoder}
        if file_key in table:
            return table[file_key]
        if self.stitching is None:
            raise KeyError("this container was built without stitching networks")
        return getattr(self.stitching, name)

    def state_dicts_for_file(self, file_key: str) -> dict[str, dict[str, torch.Tensor]]:
        if file_key == "stitching_retargeting_module":
            return {n: getattr(self.stitching, n).state_dict() for n in ("stitching", "lip", "eye")}
        return {file_key: self.module_for(file_key, file_key).state_dict()}

    def config_dict_for_file(self, file_key: str) -> dict:
        field = {"appearance_feature_extractor": "appearance", "motion_extractor": "motion",
                 "warping_module": "warping", "spade_generator": "decoder",
                 "stitching_retargeting_module": "stitching"}[file_key]
        return dataclasses.asdict(getattr(self.config, field))
