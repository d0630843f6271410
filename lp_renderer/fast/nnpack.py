"""NNPACK convolutions on the CPU: :class:`NNPACKConv2d` computes a stride-1 convolution with NNPACK (bundled with
PyTorch's CPU builds): Winograd F(6x6, 3x3) for 3x3 kernels (about 5x fewer multiplications than a direct
convolution), FFT for larger ones. G's 3x3 convolutions and W's 2-D convolutions run 2.5-3x faster with it on a
2-core AVX2 CPU (``benchmarks/RESULTS.md``). Winograd rounds differently from a direct convolution (about 1e-5
relative here, well inside the conformance tolerance).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)
_NNPACK_STATE: dict[str, bool] = {}


def nnpack_usable() -> bool:
    """Whether NNPACK convolutions can run here (PyTorch built with NNPACK and a CPU it supports).

    ``torch.backends.nnpack.is_available()`` also initialises NNPACK, which must happen before its
    first convolution. The answer is cached; a failed convolution turns it off for the process.
    """
    if "usable" not in _NNPACK_STATE:
        try:
            _NNPACK_STATE["usable"] = bool(torch.backends.nnpack.is_available())
        except (AttributeError, RuntimeError):
            _NNPACK_STATE["usable"] = False
    return _NNPACK_STATE["usable"]


class NNPACKConv2d(nn.Module):
    """Drop-in for an inference-only, stride-1, zero-padded ``nn.Conv2d`` (no groups or dilation).

    Input (B, C, H, W) -> (B, O, H', W'), as the convolution it replaces. On the CPU in float32 with
    autograd off it calls NNPACK one image at a time (NNPACK's single-image mode is its fast one; its
    batched mode is slower than oneDNN); anywhere else (CUDA, float64, gradients, no NNPACK) it is the
    plain convolution.
    """

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        if not self._stride1_zero_padded(conv):
            raise ValueError("NNPACKConv2d replaces stride-1, zero-padded, ungrouped convolutions only")
        self.conv = conv
        self.padding = list(conv.padding)
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels

    @staticmethod
    def _stride1_zero_padded(conv: nn.Conv2d) -> bool:
        return (conv.stride == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
                and conv.padding_mode == "zeros" and isinstance(conv.padding, tuple))

    @staticmethod
    def eligible(conv: nn.Module) -> bool:
        """3x3 and larger stride-1 convolutions (1x1 ones are plain matrix products; oneDNN does them well)."""
        return type(conv) is nn.Conv2d and NNPACKConv2d._stride1_zero_padded(conv) and min(conv.kernel_size) >= 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.conv.weight
        if (x.device.type != "cpu" or x.dtype != torch.float32 or w.dtype != torch.float32
                or (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad)) or not nnpack_usable()):
            return self.conv(x)
        bias = self.conv.bias if self.conv.bias is not None else w.new_zeros(w.shape[0])
        try:
            return nnpack_conv2d(x, w, bias, self.padding)
        except RuntimeError as exc:  # an unsupported CPU or an NNPACK failure: plain convolutions from now on
            log.warning("NNPACK convolution failed (%s); using PyTorch's direct convolutions", exc)
            _NNPACK_STATE["usable"] = False
            return self.conv(x)


def nnpack_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, padding: list[int]) -> torch.Tensor:
    """A stride-1 zero-padded 2-D convolution by NNPACK, one image at a time (its fast mode): x (B, C, H, W),
    weight (O, C, kh, kw), bias (O,) float32 on the CPU -> (B, O, H', W'). Raises RuntimeError where NNPACK cannot
    run."""
    outs = [torch._nnpack_spatial_convolution(x[i:i + 1].contiguous(), weight, bias, padding, [1, 1])
            for i in range(x.shape[0])]
    return outs[0] if len(outs) == 1 else torch.cat(outs)


def use_nnpack(module: nn.Module) -> int:
    """In place: wrap every eligible ``nn.Conv2d`` below ``module`` in :class:`NNPACKConv2d`. Returns the count."""
    return wrap_layers(module, NNPACKConv2d, NNPACKConv2d.eligible, NNPACKConv2d)


def wrap_layers(module: nn.Module, wrapper: type, eligible, make) -> int:
    """In place: replace every child ``c`` below ``module`` with ``eligible(c)`` by ``make(c)``, not looking inside
    modules of type ``wrapper`` (so wrapping twice changes nothing). Returns the count."""
    n = 0
    for parent in list(module.modules()):
        if isinstance(parent, wrapper):
            continue
        for name, child in list(parent.named_children()):
            if eligible(child):
                setattr(parent, name, make(child))
                n += 1
    return n
