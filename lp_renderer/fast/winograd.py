"""Winograd F(4x4, 3x3) convolutions whose inner products are batched GEMMs (``torch.bmm``: MKL / oneDNN sgemm,
AVX-512 where the CPU has it), for the CPU renderer.

:class:`WinogradConv2d` replaces a stride-1, zero-padded 3x3 ``nn.Conv2d`` (ungrouped, undilated) at inference:
its weight is transformed, ``U = G g G^T`` (36, O, C) (on each call, :data:`OUT_BLOCK` output channels at a time:
kept, it would take four times the weight's memory); each input tile of 6x6 (stride 4) is
transformed ``V = B^T d B``, the 36 products ``U[k] @ V[k]`` are one ``torch.bmm``, and ``Y = A^T M A`` gives the
4x4 output tiles; both transforms are GEMMs too (the tiles flattened, times a Kronecker product of the 1-D
transforms), which measured far faster than sums of strided slices. 2.25 multiplications per output against 9 for a
direct convolution. NNPACK (:mod:`.nnpack`) does the same with F(6x6, 3x3) in AVX2 code; on the AVX-512 Xeon of
``benchmarks/RESULTS.md`` the GEMM form here ran G's 3x3 layers with many channels on 64x64 maps 1.1-1.4x faster
than NNPACK, and G 6-23% faster per frame, so the renderer's CPU layer set uses it for them (:func:`use_winograd`,
:data:`IN_LAYER_SET`); the opt-in autotuner offers it for every 3x3 layer. It rounds differently from a direct
convolution (float32; a few 1e-6 of the output's scale, tested against ``F.conv2d``).

Memory: the transforms run over a few rows of tiles at a time (:data:`CHUNK_BYTES` of transformed input and of
products per chunk), so the transient memory is bounded whatever the map size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .nnpack import NNPACKConv2d

#: whether the fixed CPU layer set (``fold_network`` with ``nnpack``, the renderer's "cpu" layers) uses
#: :func:`use_winograd`: on. On the 2-core AVX-512 Xeon of ``benchmarks/RESULTS.md``, with the weight transformed
#: in blocks of output channels, G ran 6-23% faster per frame in 3 runs of 3 (same-run pairs; peak RSS unchanged),
#: and conformance passes with it
IN_LAYER_SET = True
#: the rule of :func:`preferred`: 3x3 layers with at least this many input and output channels
#: (below it the transforms cost more than the GEMM saves: ``benchmarks/RESULTS.md``)
MIN_CHANNELS = 128
#: ... and only on maps of at most this many pixels; larger maps go to the layer's NNPACK kernel (at 128x128 and
#: 256x256 NNPACK measured 5-35% faster, at 64x64 it was 1.1-1.5x slower: ``benchmarks/RESULTS.md``)
MAX_PIXELS = 64 * 64  # (the rule of use_winograd)
#: bytes of transformed input (and as many of products) per chunk of tile rows
CHUNK_BYTES = 32 * 2**20
#: tiles per chunk at least (the GEMMs' column count; fewer measured far slower)
MIN_TILES = 256
#: output channels per block when the weight is transformed inside the loop
OUT_BLOCK = 128

# F(4x4, 3x3): Y = A^T [(G g G^T) * (B^T d B)] A (Lavin & Gray 2016)
_G = torch.tensor([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                   [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], dtype=torch.float64)
_BT = torch.tensor([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                    [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], dtype=torch.float64)
_AT = torch.tensor([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
                   dtype=torch.float64)
#: the 2-D transforms as matrices over flattened tiles: V = (B^T kron B^T) d (36, 36); Y = (A^T kron A^T) M (16, 36)
_TB = torch.kron(_BT, _BT).float()
_TA = torch.kron(_AT, _AT).float()
_KG = torch.kron(_G, _G).float()  # (36, 9): U = (G kron G) g over flattened 3x3 kernels


def transform_weight(weight: torch.Tensor) -> torch.Tensor:
    """(O, C, 3, 3) float32 -> U (36, O, C) float32 contiguous: ``G g G^T`` per (O, C) pair, as one GEMM.

    Four times the weight's size (38 MB for a 512 -> 512 layer; kept for all of G's layers, ~0.75 GB), so the layers
    transform theirs on each call, a block of output channels at a time (:func:`winograd_conv2d` with ``weight``)."""
    o, c = weight.shape[:2]
    u = weight.new_empty(36, o * c)
    return torch.mm(_KG.to(weight.device), weight.detach().reshape(o * c, 9).t(), out=u).view(36, o, c)


def winograd_conv2d(x: torch.Tensor, u: torch.Tensor | None, bias: torch.Tensor | None, padding: tuple[int, int],
                    chunk_bytes: int = CHUNK_BYTES, min_tiles: int = MIN_TILES, weight: torch.Tensor | None = None,
                    out_block: int = OUT_BLOCK) -> torch.Tensor:
    """A stride-1 zero-padded 3x3 convolution by Winograd F(4x4, 3x3).

    x (B, C, H, W) float32 (any strides), u (36, O, C) from :func:`transform_weight` or None with ``weight``
    (O, C, 3, 3) given: then the weight is transformed ``out_block`` output channels at a time, inside the loop (a
    small buffer instead of 4x the weight), bias (O,) or None, padding (ph, pw) -> (B, O, H + 2ph - 2, W + 2pw - 2)
    float32 contiguous. Images one at a time, tile rows in chunks of about ``chunk_bytes`` of transformed input or
    products, but ``min_tiles`` tiles at least. The three steps are GEMMs: the input tiles (one copy of the
    overlapping 6x6 windows) times ``B^T kron B^T``, the 36 products (``torch.bmm``), and the products times
    ``A^T kron A^T`` (plus the bias).
    """
    b, c, h, w = x.shape
    o = u.shape[1] if u is not None else weight.shape[0]
    ob = o if u is not None else min(o, out_block)  # output channels per product block
    ph, pw = padding
    ho, wo = h + 2 * ph - 2, w + 2 * pw - 2
    th, tw = -(-ho // 4), -(-wo // 4)  # tiles per axis (ceil)
    rows = max(-(-min_tiles // tw), chunk_bytes // (36 * max(c, ob) * tw * 4))
    rows = max(1, min(th, rows))  # tile rows per chunk
    out = x.new_empty(b, o, th * 4, tw * 4)
    tb, ta = _TB.to(x.device), _TA.to(x.device)
    kg = _KG.to(x.device)
    # flat buffers of one chunk (a shorter last chunk takes a contiguous prefix): input tiles, transformed input,
    # products and output tiles of one block of output channels, that block's transformed weight
    d, v = x.new_empty(c * rows * tw * 36), x.new_empty(36 * c * rows * tw)
    m, y = x.new_empty(36 * ob * rows * tw), x.new_empty(16 * ob * rows * tw)
    ub = x.new_empty(36 * ob * c) if u is None else None
    w9 = weight.detach().reshape(o * c, 9) if u is None else None  # (O * C, 9) flattened kernels
    for i in range(b):
        # zero padding of the conv plus what completes the last tiles: (C, 4 th + 2, 4 tw + 2)
        xp = F.pad(x[i], (pw, 4 * tw + 2 - w - pw, ph, 4 * th + 2 - h - ph))
        oi = out[i].view(o, th, 4, tw, 4)  # (O, th, 4, tw, 4)
        for r0 in range(0, th, rows):
            nr = min(rows, th - r0)
            n = nr * tw
            dc = d[:c * n * 36].view(c, nr, tw, 6, 6)
            dc.copy_(xp[:, 4 * r0:4 * (r0 + nr) + 2].unfold(1, 6, 4).unfold(2, 6, 4))  # (C, nr, tw, 6, 6)
            vc = torch.mm(tb, dc.view(c * n, 36).t(), out=v[:36 * c * n].view(36, c * n))  # (36, C * n)
            for o0 in range(0, o, ob):
                k = min(ob, o - o0)
                if u is None:  # this block's U: (36, 9) @ (9, k * C) -> (36, k, C)
                    uk = torch.mm(kg, w9[o0 * c:(o0 + k) * c].t(), out=ub[:36 * k * c].view(36, k * c))
                    uk = uk.view(36, k, c)
                else:
                    uk = u[:, o0:o0 + k]
                mc = torch.bmm(uk, vc.view(36, c, n), out=m[:36 * k * n].view(36, k, n))  # (36, k, n)
                yv = y[:16 * k * n].view(16, k * n)
                if bias is None:
                    yc = torch.mm(ta, mc.view(36, k * n), out=yv)  # (16, k * n)
                else:  # the bias of each output channel, repeated over its n tiles, added by the GEMM
                    yc = torch.addmm(bias[o0:o0 + k].repeat_interleave(n).view(1, k * n), ta, mc.view(36, k * n),
                                     out=yv)
                # (4, 4, k, nr, tw) -> (k, nr, 4, tw, 4)
                oi[o0:o0 + k, r0:r0 + nr].copy_(yc.view(4, 4, k, nr, tw).permute(2, 3, 0, 4, 1))
    if th * 4 != ho or tw * 4 != wo:
        out = out[:, :, :ho, :wo].contiguous()
    return out


class WinogradConv2d(nn.Module):
    """Drop-in for an inference-only, stride-1, zero-padded, ungrouped 3x3 ``nn.Conv2d``.

    Input (B, C, H, W) -> (B, O, H', W'), as the convolution it replaces (kept as ``self.conv``). On the CPU in
    float32 with autograd off it runs :func:`winograd_conv2d` (the weight transformed on each call, a block of
    output channels at a time), for
    maps of at most ``max_pixels`` pixels; larger maps run ``NNPACKConv2d`` (the fixed CPU layer set's kernel
    before this one). Anywhere else (CUDA, float16 / float64, gradients) it is the plain convolution.
    """

    def __init__(self, conv: nn.Conv2d, max_pixels: int | None = None):
        super().__init__()
        if not self.eligible(conv):
            raise ValueError("WinogradConv2d replaces stride-1, zero-padded, ungrouped 3x3 convolutions only")
        self.conv = conv
        self.max_pixels = max_pixels
        self._large = [NNPACKConv2d(conv)]  # (a list: not a second registered copy of the convolution)
        self.padding = tuple(conv.padding)
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels

    @staticmethod
    def eligible(conv: nn.Module) -> bool:
        """Stride-1, zero-padded, ungrouped, undilated 3x3 ``nn.Conv2d`` (any channel counts)."""
        return (type(conv) is nn.Conv2d and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
                and conv.dilation == (1, 1) and conv.groups == 1 and conv.padding_mode == "zeros"
                and isinstance(conv.padding, tuple))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.conv.weight
        if (x.device.type != "cpu" or x.dtype != torch.float32 or w.dtype != torch.float32
                or x.dim() != 4
                or (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad))):
            return self.conv(x)
        if self.max_pixels is not None and x.shape[2] * x.shape[3] > self.max_pixels:
            return self._large[0](x)
        return winograd_conv2d(x, None, self.conv.bias, self.padding, weight=w)


def preferred(conv: nn.Module) -> bool:
    """The rule of :func:`use_winograd` (the fixed CPU layer set's when :data:`IN_LAYER_SET`): an eligible 3x3
    layer (or one wrapped in ``NNPACKConv2d``) with at least :data:`MIN_CHANNELS` input and output channels (and, at
    run time, maps of at most :data:`MAX_PIXELS`). A rule by shape: on the AVX-512 Xeon of ``benchmarks/RESULTS.md``
    such layers at 64x64, timed alone, ran 1.0-1.4x faster than NNPACK; with fewer channels or larger maps NNPACK
    was faster."""
    conv = conv.conv if type(conv) is NNPACKConv2d else conv
    return WinogradConv2d.eligible(conv) and min(conv.in_channels, conv.out_channels) >= MIN_CHANNELS


def use_winograd(module: nn.Module) -> int:
    """In place: replace every layer below ``module`` that :func:`preferred` takes (plain or NNPACK-wrapped) by a
    :class:`WinogradConv2d` of its convolution (maps above :data:`MAX_PIXELS` keep NNPACK). Returns the count."""
    n = 0
    for parent in list(module.modules()):
        if isinstance(parent, (WinogradConv2d, NNPACKConv2d)):  # their own convolution stays as it is
            continue
        for name, child in list(parent.named_children()):
            if preferred(child):
                setattr(parent, name, WinogradConv2d(child.conv if type(child) is NNPACKConv2d else child,
                                                     max_pixels=MAX_PIXELS))
                n += 1
    return n


