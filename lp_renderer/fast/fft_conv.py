"""W's ``mask`` convolution (142 -> 22 channels, 7x7x7 kernel over 16x64x64, ~70 GMAC, a third of W) as a tiled FFT
convolution: :class:`FFTConv3d` (overlap-save over 16x16 tiles in H and W, the full depth per tile). The weight
spectra are computed once. Exact up to float rounding (tested against the plain convolution).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


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
