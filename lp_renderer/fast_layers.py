"""Inference-time replacements for the heaviest layers: the same maths with much less work.

* :class:`FFTConv3d` - W's ``mask`` convolution (142 -> 22 channels, 7x7x7 kernel over 16x64x64,
  ~70 GMAC, a third of W) as a tiled FFT convolution (overlap-save over 16x16 tiles in H and W, the
  full depth per tile). The weight spectra are computed once.
* :class:`SubpixelConv3x3` - a 3x3 convolution applied to a nearest-upsampled map equals, for each
  output phase, a 2x2 convolution of the low-resolution map with summed taps. SPADE resizes its
  64x64 label map to 128x128 and 256x256 before ``mlp_shared``; this computes those convolutions at
  64x64 (2.25x fewer MACs at 2x, 4x at 4x).
* :class:`FastSPADEDecoder` - the SPADE decoder with (a) every ``mlp_shared`` that reads the same label
  map merged into one convolution, (b) ``mlp_gamma`` and ``mlp_beta`` of each SPADE merged, (c) the
  1x1 shortcut ``conv_s`` folded into ``mlp_beta`` of its SPADE (``conv_s(n*(1+g) + b) =
  conv_s(n*(1+g)) + (conv_s o mlp_beta)(actv)``, both linear), (d) the sub-pixel convolutions above.
* :class:`NNPACKConv2d` - a stride-1 convolution computed on the CPU by NNPACK (bundled with PyTorch's
  CPU builds): Winograd F(6x6, 3x3) for 3x3 kernels (about 5x fewer multiplications than a direct
  convolution), FFT for larger ones. G's 3x3 convolutions and W's 2-D convolutions run 2.5-3x faster
  with it on a 2-core AVX2 CPU (``benchmarks/RESULTS.md``). Winograd rounds differently from a direct
  convolution (about 1e-5 relative here, well inside the conformance tolerance).

All of it is exact up to float rounding (tested against the plain modules and the official numerics).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import SPADEResnetBlock
from .spade_decoder import SPADEDecoder

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
            outs = [torch._nnpack_spatial_convolution(x[i:i + 1].contiguous(), w, bias, self.padding, [1, 1])
                    for i in range(x.shape[0])]
        except RuntimeError as exc:  # an unsupported CPU or an NNPACK failure: plain convolutions from now on
            log.warning("NNPACK convolution failed (%s); using PyTorch's direct convolutions", exc)
            _NNPACK_STATE["usable"] = False
            return self.conv(x)
        return outs[0] if len(outs) == 1 else torch.cat(outs)


def use_nnpack(module: nn.Module) -> int:
    """In place: wrap every eligible ``nn.Conv2d`` below ``module`` in :class:`NNPACKConv2d`. Returns the count."""
    n = 0
    for parent in list(module.modules()):
        if isinstance(parent, NNPACKConv2d):
            continue
        for name, child in list(parent.named_children()):
            if NNPACKConv2d.eligible(child):
                setattr(parent, name, NNPACKConv2d(child))
                n += 1
    return n


class FFTConv3d(nn.Module):
    """Stride-1, zero-padded ('same') Conv3d with an odd kernel, computed by tiled FFTs.

    Input (B, C, D, H, W) float32 -> (B, O, D, H, W). Weight spectra for a depth D (145 MB for W's mask
    convolution) are built for ``depth`` at construction when it is given (so the first frame does not pay
    for them), else on first use, and kept.
    ``max_batch`` bounds the working memory.
    """

    def __init__(self, conv: nn.Conv3d, tile: int = 16, max_batch: int = 2, tile_rows: int = 1,
                 depth: int | None = None):
        super().__init__()
        k = conv.kernel_size
        if not (k[0] == k[1] == k[2] and k[0] % 2 == 1 and conv.stride == (1, 1, 1)
                and conv.padding == (k[0] // 2,) * 3 and conv.groups == 1 and conv.dilation == (1, 1, 1)):
            raise ValueError("FFTConv3d replaces stride-1 'same' convolutions with an odd cubic kernel only")
        self.k = k[0]
        self.tile = tile
        self.max_batch = max_batch
        self.tile_rows = tile_rows
        self.register_buffer("weight", conv.weight.detach().clone(), persistent=False)
        self.register_buffer("bias", conv.bias.detach().clone() if conv.bias is not None
                             else torch.zeros(conv.out_channels), persistent=False)
        self._spectra: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        if depth is not None:
            self._weight_spectra(depth)

    def _weight_spectra(self, depth: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Real and imaginary parts of the conjugate weight spectra for inputs of depth ``depth``, each
        (nd * n * nf, C, O) float32, built a few output channels at a time (bounded transient memory)."""
        key = depth
        if key not in self._spectra or self._spectra[key][0].device != self.weight.device:
            self._spectra = {}  # drop spectra of another depth / device before building new ones
            o, c, k = self.weight.shape[0], self.weight.shape[1], self.k
            nd, n = depth + k - 1, self.tile + k - 1
            nf = n // 2 + 1
            real = torch.empty(nd, n, nf, c, o, device=self.weight.device, dtype=torch.float32)
            imag = torch.empty_like(real)
            w = torch.zeros(4, c, nd, n, n, device=self.weight.device, dtype=torch.float32)
            for o0 in range(0, o, 4):
                o1 = min(o, o0 + 4)
                w[:o1 - o0, :, :k, :k, :k] = self.weight[o0:o1].float()
                # correlation = IFFT(X * conj(FFT(w))): (o1-o0, C, nd, n, nf) -> (nd, n, nf, C, o1-o0)
                spec = torch.fft.rfftn(w[:o1 - o0], dim=(2, 3, 4)).permute(2, 3, 4, 1, 0)
                real[..., o0:o1] = spec.real
                imag[..., o0:o1] = spec.imag.neg()
            self._spectra = {key: (real.view(-1, c, o), imag.view(-1, c, o))}
        return self._spectra[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > self.max_batch:
            return torch.cat([self.forward(c) for c in x.split(self.max_batch)])
        with torch.autocast(device_type=x.device.type, enabled=False):  # spectra stay float32
            return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        b, c, d, h, w = x.shape
        k, t = self.k, self.tile
        p = k // 2
        th, tw = -(-h // t), -(-w // t)  # tiles per axis (ceil)
        n, nd = t + k - 1, d + k - 1
        # zero padding of the conv, plus extra rows / cols so the tiles cover H and W
        xp = F.pad(x, (p, p + th * t - w, p, p + th * t - h, p, p))  # (B, C, d+k-1, th*t+k-1, tw*t+k-1)
        tiles_all = xp.unfold(3, n, t).unfold(4, n, t)  # (B, C, nd, th, tw, n, n)
        wr, wi = self._weight_spectra(d)  # (f, C, O) each
        o = wr.shape[-1]
        out = x.new_empty(b, o, d, th * t, tw * t)
        # a few rows of tiles at a time bounds the spectra in flight (~4x less peak memory than all at once)
        for r0 in range(0, th, self.tile_rows):
            r1 = min(th, r0 + self.tile_rows)
            tr = r1 - r0
            tiles = tiles_all[:, :, :, r0:r1].permute(0, 3, 4, 1, 2, 5, 6)  # (B, tr, tw, C, nd, n, n)
            spec = torch.fft.rfftn(tiles, dim=(4, 5, 6))  # (B, tr, tw, C, nd, n, nf)
            nf = spec.shape[-1]
            spec = spec.permute(4, 5, 6, 0, 1, 2, 3).reshape(nd * n * nf, b * tr * tw, c)  # (f, tiles, C)
            xr, xi = spec.real.contiguous(), spec.imag.contiguous()
            del spec
            yr = torch.bmm(xr, wr).sub_(torch.bmm(xi, wi))  # (f, tiles, O)
            yi = torch.bmm(xr, wi).add_(torch.bmm(xi, wr))
            del xr, xi
            y = torch.complex(yr, yi).view(nd, n, nf, b, tr, tw, o).permute(3, 4, 5, 6, 0, 1, 2)  # (B,tr,tw,O,nd,n,nf)
            y = torch.fft.irfftn(y, s=(nd, n, n), dim=(4, 5, 6))[..., :d, :t, :t]  # valid part: (B,tr,tw,O,d,t,t)
            out[:, :, :, r0 * t:r1 * t] = y.permute(0, 3, 4, 1, 5, 2, 6).reshape(b, o, d, tr * t, tw * t)
        out = out[..., :h, :w]  # (B, O, d, H, W)
        return out.add_(self.bias.view(1, -1, 1, 1, 1)).to(dtype) if out.is_contiguous() else \
            (out + self.bias.view(1, -1, 1, 1, 1)).to(dtype)


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
        self.register_buffer("weight", torch.cat(kernels), persistent=False)  # (nd*nd*O, C, 2, 2)
        self.register_buffer("bias", (bias if bias is not None else weight.new_zeros(o)).repeat(nd * nd),
                             persistent=False)
        self.out_channels = o

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        s, o, nd = self.scale, self.out_channels, self.n_distinct
        y = F.conv2d(F.pad(x, (1, 1, 1, 1)), self.weight, self.bias)  # (B, nd*nd*O, h+1, w+1)
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
