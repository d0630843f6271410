"""Load-time folding for inference (eval mode only): the maths is unchanged, the work is not.

* Spectral norm: in eval mode the effective weight is ``weight_orig / sigma(u, v)`` with fixed u, v;
  it is computed once and stored as a plain weight.
* BatchNorm directly after a convolution is folded into that convolution's weight and bias
  (``SameBlock2d``, ``DownBlock2d/3d``, ``UpBlock3d``, the hourglass output, W's ``compress``, and the
  second norm of each pre-activation ``ResBlock3d``). Pre-activation norms that follow a sum stay.

:func:`fold_network` works on a deep copy by default; the original modules keep their state-dict
layout, so the official files still load into them.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..nets.blocks import DownBlock2d, DownBlock3d, HourglassDecoder, ResBlock3d, SameBlock2d, UpBlock3d
from ..nets.dense_motion import DenseMotionNetwork


def fold_bn_into_conv(conv: nn.Conv2d | nn.Conv3d, bn: nn.BatchNorm2d | nn.BatchNorm3d) -> None:
    """In place: conv <- bn(conv(.)) using the running statistics (eval-mode BatchNorm)."""
    with torch.no_grad():
        w = conv.weight.double()
        b = conv.bias.double() if conv.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
        std = torch.sqrt(bn.running_var.double() + bn.eps)
        gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(std)
        beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(std)
        scale = gamma / std
        shape = (-1,) + (1,) * (w.ndim - 1)
        conv.weight.copy_((w * scale.view(shape)).to(conv.weight.dtype))
        new_bias = (b - bn.running_mean.double()) * scale + beta
        if conv.bias is None:
            conv.bias = nn.Parameter(new_bias.to(conv.weight.dtype))
        else:
            conv.bias.copy_(new_bias.to(conv.bias.dtype))


def _remove_spectral_norm(module: nn.Module) -> bool:
    for hook in list(module._forward_pre_hooks.values()):
        if type(hook).__name__ == "SpectralNorm":
            nn.utils.remove_spectral_norm(module)
            return True
    return False


def fold_network(module: nn.Module, fast_layers: bool = True, fft_conv: bool = True,
                 inplace: bool = False, nnpack: bool = True, autotune: bool = False,
                 winograd: bool | None = None) -> nn.Module:
    """A folded deep copy of ``module`` (which must be in eval mode), or ``module`` itself folded in
    place when ``inplace`` (saves a copy of the weights at load time).

    ``fast_layers`` also swaps in the exact-but-cheaper layers of :mod:`lp_renderer.fast.spade`
    (merged SPADE convolutions, sub-pixel label-map convolutions); ``fft_conv`` computes W's 7x7x7
    mask convolution by FFT (a win on CPUs; GPUs have fast direct convolutions); ``nnpack`` computes W's
    and G's 2-D convolutions (3x3 and larger) with NNPACK's Winograd / FFT kernels when they run on the CPU
    in float32 (:class:`lp_renderer.fast.nnpack.NNPACKConv2d`; elsewhere they stay plain convolutions);
    ``winograd`` (with ``nnpack``; default :data:`lp_renderer.fast.winograd.IN_LAYER_SET`, on) computes those of
    them with many channels on small maps (:func:`lp_renderer.fast.winograd.preferred`) by
    :class:`lp_renderer.fast.winograd.WinogradConv2d` instead.
    ``autotune`` (with ``fast_layers``) instead wraps every convolution in
    :class:`lp_renderer.fast.autotune.AutotunedConv`, which times the exact kernels that apply on first use and
    keeps the fastest per layer shape on this machine (the mask's FFT and, with ``nnpack``, NNPACK among them; they
    are its choices while untuned).
    """
    if module.training:
        raise ValueError("folding is only valid for modules in eval mode")
    if winograd is None:
        from . import winograd as _winograd

        winograd = _winograd.IN_LAYER_SET
    if not inplace:
        module = copy.deepcopy(module)
    for m in list(module.modules()):
        _remove_spectral_norm(m)
        if isinstance(m, (SameBlock2d, DownBlock2d, DownBlock3d, UpBlock3d, HourglassDecoder)) and \
                isinstance(m.norm, nn.modules.batchnorm._BatchNorm):
            fold_bn_into_conv(m.conv, m.norm)
            m.norm = nn.Identity()
        elif isinstance(m, DenseMotionNetwork) and isinstance(m.norm, nn.modules.batchnorm._BatchNorm):
            fold_bn_into_conv(m.compress, m.norm)
            m.norm = nn.Identity()
        elif isinstance(m, ResBlock3d) and isinstance(m.norm2, nn.modules.batchnorm._BatchNorm):
            fold_bn_into_conv(m.conv1, m.norm2)
            m.norm2 = nn.Identity()
    if fast_layers:
        from ..nets.spade_decoder import SPADEDecoder
        from .fft_conv import FFTConv3d
        from .spade import FastSPADEDecoder

        for parent in list(module.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, SPADEDecoder):
                    setattr(parent, name, FastSPADEDecoder(child))
                elif fft_conv and isinstance(child, DenseMotionNetwork):
                    fft = FFTConv3d(child.mask, depth=child.cfg.reshape_depth)
                    if autotune:
                        from .autotune import AutotunedConv

                        fft = AutotunedConv(child.mask, default="fft", fft=fft)
                    child.mask = fft
        if autotune:
            from ..nets.warping_network import WarpingNetwork
            from .autotune import autotune_network

            autotune_network(module, nnpack_in=(WarpingNetwork, FastSPADEDecoder) if nnpack else (),
                             winograd=nnpack and winograd)
        elif nnpack:
            from ..nets.warping_network import WarpingNetwork
            from .nnpack import use_nnpack
            from .winograd import use_winograd

            for m in list(module.modules()):
                if isinstance(m, (WarpingNetwork, FastSPADEDecoder)):
                    use_nnpack(m)
                    if winograd:
                        use_winograd(m)
    return module.eval()
