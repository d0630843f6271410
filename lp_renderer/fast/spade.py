"""The SPADE decoder G with the same maths and much less work, for inference.

* :class:`SubpixelConv3x3` - a 3x3 convolution applied to a nearest-upsampled map equals, for each
  output phase, a 2x2 convolution of the low-resolution map with summed taps. SPADE resizes its
  64x64 label map to 128x128 and 256x256 before ``mlp_shared``; this computes those convolutions at
  64x64 (2.25x fewer MACs at 2x, 4x at 4x).
* :class:`FastSPADEDecoder` - the SPADE decoder with (a) every ``mlp_shared`` that reads the same label
  map merged into one convolution, (b) ``mlp_gamma`` and ``mlp_beta`` of each SPADE merged, (c) the
  1x1 shortcut ``conv_s`` folded into ``mlp_beta`` of its SPADE (``conv_s(n*(1+g) + b) =
  conv_s(n*(1+g)) + (conv_s o mlp_beta)(actv)``, both linear), (d) the sub-pixel convolutions above.

W's FFT mask convolution is :mod:`lp_renderer.fast.fft_conv`, the NNPACK convolutions
:mod:`lp_renderer.fast.nnpack`. All of it is exact up to float rounding (tested against the plain modules and
the official numerics).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..nets.blocks import SPADEResnetBlock
from ..nets.spade_decoder import SPADEDecoder


def _phase_taps(scale: int) -> list[tuple[int, list[list[int]]]]:
    """For each distinct output phase along one axis: (start offset in the padded low-res map,
    [kernel taps summed into low-res tap 0, into tap 1]).

    A 3x3 tap k of the high-res output at s*i + r reads low-res pixel i + floor((r + k - 1) / s).
    """
    phases = []
    for r in range(scale):
        offs = [(r + k - 1) // scale for k in range(3)]  # in {-1, 0, 1}
        start = min(offs) + 1  # index into the map padded by 1
        taps = [[kk for kk in range(3) if offs[kk] - min(offs) == j] for j in range(2)]
        phases.append((start, taps))
    return phases


class SubpixelConv3x3(nn.Module):
    """``conv3x3(upsample_nearest(x, scale))`` computed at low resolution.

    Input (B, C, h, w) -> (B, O, h*scale, w*scale). ``relu`` applies a ReLU (cheaper before the
    phases are interleaved). Phases with identical taps (e.g. r = 1 and 2 at scale 4) are computed once.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, scale: int, relu: bool = False):
        super().__init__()
        self.scale, self.relu = scale, relu
        phases = _phase_taps(scale)
        distinct: list[tuple[int, tuple]] = []
        self.phase_index: list[int] = []
        for start, taps in phases:
            key = (start, tuple(tuple(t) for t in taps))
            if key not in distinct:
                distinct.append(key)
            self.phase_index.append(distinct.index(key))
        self.starts = [s for s, _ in distinct]
        o = weight.shape[0]
        kernels = []
        for _sy, ty in distinct:
            for _sx, tx in distinct:
                k2 = weight.new_zeros(o, weight.shape[1], 2, 2)
                for jy in range(2):
                    for jx in range(2):
                        for ky in ty[jy]:
                            for kx in tx[jx]:
                                k2[:, :, jy, jx] += weight[:, :, ky, kx]
                kernels.append(k2)
        nd = len(distinct)
        self.n_distinct = nd
        # all phases' 2x2 kernels as one convolution of the map padded by 1: (nd*nd*O, C, 2, 2); a module of its
        # own so that the CPU's kernel autotuning (lp_renderer.fast.autotune) can pick how it runs
        self.conv = nn.Conv2d(weight.shape[1], nd * nd * o, 2, padding=1, dtype=weight.dtype, device=weight.device)
        with torch.no_grad():
            self.conv.weight.copy_(torch.cat(kernels))
            self.conv.bias.copy_((bias if bias is not None else weight.new_zeros(o)).repeat(nd * nd))
        self.conv.requires_grad_(False)
        self.out_channels = o

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        s, o, nd = self.scale, self.out_channels, self.n_distinct
        y = self.conv(x)  # (B, nd*nd*O, h+1, w+1)
        if self.relu:
            y = y.relu_()
        y = y.view(b, nd, nd, o, h + 1, w + 1)
        out = y.new_empty(b, o, h, s, w, s)  # phases written in place: (B, O, h, s_y, w, s_x)
        for ry in range(s):
            ay = self.phase_index[ry]
            sy = self.starts[ay]
            for rx in range(s):
                ax = self.phase_index[rx]
                sx = self.starts[ax]
                out[:, :, :, ry, :, rx] = y[:, ay, ax, :, sy:sy + h, sx:sx + w]
        return out.reshape(b, o, h * s, w * s)


def _cat_convs(convs: list[nn.Conv2d]) -> nn.Conv2d:
    """One Conv2d whose output channels are those of ``convs`` (same input, kernel, padding)."""
    first = convs[0]
    out = nn.Conv2d(first.in_channels, sum(c.out_channels for c in convs), first.kernel_size,
                    padding=first.padding, dtype=first.weight.dtype, device=first.weight.device)
    with torch.no_grad():
        out.weight.copy_(torch.cat([c.weight for c in convs]))
        out.bias.copy_(torch.cat([c.bias if c.bias is not None else c.weight.new_zeros(c.out_channels)
                                  for c in convs]))
    return out


def _instance_norm_(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """InstanceNorm2d without affine parameters, in place: (B, C, H, W) -> the same tensor, normalised."""
    var, mean = torch.var_mean(x, dim=(2, 3), keepdim=True, correction=0)  # (B, C, 1, 1) each
    return x.sub_(mean).mul_(var.add_(eps).rsqrt_())


class _FastSPADEBlock(nn.Module):
    """One SPADEResnetBlock with merged modulation convolutions; takes precomputed ``actv`` maps.

    ``low_memory`` (a learned-shortcut block on a large map, G's last one at 256x256): the block computes
    its own label-map activations (``shared``, sub-pixel, one SPADE at a time) and runs gamma and beta as
    separate convolutions, so that at most one 128-channel activation and one modulation map are alive at
    a time and the input is normalised in place. Same maths; about half the peak memory of the merged form
    (the merged 128 -> 512 convolution at 256x256 alone needs 134 MB of output and ~300 MB of NNPACK
    workspace).
    """

    def __init__(self, block: SPADEResnetBlock, low_memory: bool = False, scale: int = 1):
        super().__init__()
        self.learned_shortcut = block.learned_shortcut
        self.low_memory = low_memory
        self.conv_0, self.conv_1 = block.conv_0, block.conv_1
        self.c0, self.c1 = block.norm_0.mlp_gamma.out_channels, block.norm_1.mlp_gamma.out_channels
        if low_memory:
            if not block.learned_shortcut:
                raise ValueError("the low-memory SPADE block needs a learned shortcut (its input is normalised "
                                 "in place)")
            self.shared = nn.ModuleList(
                SubpixelConv3x3(n.mlp_shared[0].weight.detach(), n.mlp_shared[0].bias.detach(), scale, relu=True)
                for n in (block.norm_s, block.norm_0, block.norm_1))
            self.gamma_0, self.beta_0 = block.norm_0.mlp_gamma, block.norm_0.mlp_beta
        else:
            self.mod_0 = _cat_convs([block.norm_0.mlp_gamma, block.norm_0.mlp_beta])
        self.mod_1 = _cat_convs([block.norm_1.mlp_gamma, block.norm_1.mlp_beta])
        if self.learned_shortcut:
            conv_s = block.conv_s  # 1x1, no bias
            ws = conv_s.weight[:, :, 0, 0]  # (O, C)
            beta = block.norm_s.mlp_beta
            folded = nn.Conv2d(beta.in_channels, ws.shape[0], 3, padding=1, dtype=ws.dtype, device=ws.device)
            with torch.no_grad():
                folded.weight.copy_(torch.einsum("oc,cikl->oikl", ws.double(), beta.weight.double()))
                folded.bias.copy_(ws.double() @ beta.bias.double())
            self.cs = block.norm_s.mlp_gamma.out_channels
            if low_memory:
                self.gamma_s, self.beta_s = block.norm_s.mlp_gamma, folded
            else:
                self.mod_s = _cat_convs([block.norm_s.mlp_gamma, folded])
            self.conv_s = conv_s

    @staticmethod
    def _instance_norm(x: torch.Tensor) -> torch.Tensor:
        return F.instance_norm(x, eps=1e-5)

    def forward(self, x: torch.Tensor, actv: list[torch.Tensor] | None = None,
                seg: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, fin, H, W) -> (B, fout, H, W). ``actv``: the three (or two) label-map activations
        (B, 128, H, W) [norm_0, norm_1, norm_s]; in low-memory mode ``seg`` (B, label_nc, h, w) instead, and
        ``x`` is overwritten."""
        if self.low_memory:
            return self._forward_low_memory(x, seg)
        # The same operations as SPADEResnetBlock, in place on fresh tensors where possible: on the CPU
        # the large maps of the 256x256 block cost more in new allocations (page faults) than in arithmetic.
        normalized = self._instance_norm(x)
        if self.learned_shortcut:
            gs, bs_ = self.mod_s(actv[2]).split([self.cs, self.mod_s.out_channels - self.cs], dim=1)
            x_s = self.conv_s(gs.add_(1).mul_(normalized)).add_(bs_)  # conv_s(n * (1 + g)) + conv_s(beta)
            del gs, bs_
        else:
            x_s = x
        g0, b0 = self.mod_0(actv[0]).split([self.c0, self.c0], dim=1)
        dx = F.leaky_relu(b0.addcmul_(normalized, g0.add_(1)), 0.2, inplace=True)  # b + n * (1 + g)
        del g0, b0, normalized
        return self._second_half(dx, actv[1], x_s)

    def _second_half(self, dx: torch.Tensor, actv_1: torch.Tensor, x_s: torch.Tensor) -> torch.Tensor:
        dx = self.conv_0(dx)
        g1, b1 = self.mod_1(actv_1).split([self.c1, self.c1], dim=1)
        dx = F.leaky_relu(b1.addcmul_(self._instance_norm(dx), g1.add_(1)), 0.2, inplace=True)
        del g1
        return self.conv_1(dx).add_(x_s)

    def _forward_low_memory(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        normalized = _instance_norm_(x)  # x is not needed again (learned shortcut)
        del x
        a = self.shared[0](seg)  # norm_s: (B, 128, H, W)
        gs = self.gamma_s(a)
        x_s = self.conv_s(gs.add_(1).mul_(normalized))  # conv_s(n * (1 + g))
        del gs
        x_s.add_(self.beta_s(a))  # + conv_s(beta)
        a = self.shared[1](seg)  # norm_0
        g0 = self.gamma_0(a).add_(1).mul_(normalized)  # n * (1 + g)
        del normalized
        dx = F.leaky_relu(self.beta_0(a).add_(g0), 0.2, inplace=True)  # b + n * (1 + g)
        del g0
        a = self.shared[2](seg)  # norm_1
        return self._second_half(dx, a, x_s)


class FastSPADEDecoder(nn.Module):
    """Drop-in for a folded :class:`SPADEDecoder` (spectral norm already removed): same outputs."""

    def __init__(self, dec: SPADEDecoder):
        super().__init__()
        self.cfg = dec.cfg
        self.fc = dec.fc
        self.conv_img = dec.conv_img
        middle = dec.middle_blocks()
        self.middle = nn.ModuleList(_FastSPADEBlock(b) for b in middle)
        shared = [n.mlp_shared[0] for b in middle for n in (b.norm_0, b.norm_1)]
        self.middle_shared = _cat_convs(shared)  # label map at 64x64, all middle SPADEs at once
        self.hidden = shared[0].out_channels
        # up_0 (128x128) merged; up_1 (256x256, learned shortcut) in the low-memory form
        self.up_0 = _FastSPADEBlock(dec.up_0)
        convs = [dec.up_0.norm_0.mlp_shared[0], dec.up_0.norm_1.mlp_shared[0]] + \
            ([dec.up_0.norm_s.mlp_shared[0]] if dec.up_0.learned_shortcut else [])
        merged = _cat_convs(convs)
        self.up_0_shared = SubpixelConv3x3(merged.weight.detach(), merged.bias.detach(), 2, relu=True)
        self.up_1 = _FastSPADEBlock(dec.up_1, low_memory=dec.up_1.learned_shortcut, scale=4)
        if not self.up_1.low_memory:
            convs = [dec.up_1.norm_0.mlp_shared[0], dec.up_1.norm_1.mlp_shared[0]]
            merged = _cat_convs(convs)
            self.up_1_shared = SubpixelConv3x3(merged.weight.detach(), merged.bias.detach(), 4, relu=True)

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        """(B, 256, 64, 64) -> (B, 3, 512, 512) in [0, 1]."""
        seg = feature
        x = self.fc(feature)
        actv = F.relu(self.middle_shared(seg)).split(self.hidden, dim=1)  # 2 per middle block
        for i, block in enumerate(self.middle):
            x = block(x, [actv[2 * i], actv[2 * i + 1]])
        del actv
        x = F.interpolate(x, scale_factor=2, mode="nearest")  # (B, 512, 128, 128)
        x = self.up_0(x, list(self.up_0_shared(seg).split(self.hidden, dim=1)))
        x = F.interpolate(x, scale_factor=2, mode="nearest")  # (B, 256, 256, 256)
        if self.up_1.low_memory:
            x = self.up_1(x, seg=seg)
        else:
            x = self.up_1(x, list(self.up_1_shared(seg).split(self.hidden, dim=1)))
        x = self.conv_img(F.leaky_relu(x, 0.2))
        return torch.sigmoid(x)
