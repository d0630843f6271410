"""Load-time folding (spectral norm -> weight, BatchNorm -> conv) keeps the outputs."""

from __future__ import annotations

import numpy as np
import torch

from lp_renderer import Renderer, RendererConfig, RendererNetworks
from lp_renderer.folding import fold_network


def test_folded_networks_agree():
    nets = RendererNetworks.random(RendererConfig.tiny(), seed=5)
    folded = fold_network(nets)
    n_bn = sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in nets.modules())
    n_bn_folded = sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    assert n_bn_folded < n_bn  # something was folded ...
    assert not any("weight_orig" in k for k in folded.state_dict())  # ... and spectral norm is gone
    assert any("weight_orig" in k for k in nets.state_dict())  # the original is untouched
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 256, 256, generator=g)
    with torch.no_grad():
        assert torch.allclose(folded.appearance(x), nets.appearance(x), atol=1e-5, rtol=1e-4)
        f = nets.appearance(x[:1])
        kp_s = 0.5 * torch.rand(1, 21, 3, generator=g) - 0.25
        kp_d = kp_s + 0.05 * torch.randn(1, 21, 3, generator=g)
        a = nets.warping(f, kp_d, kp_s)
        b = folded.warping(f, kp_d, kp_s, source_cache=folded.warping.source_cache(f, kp_s))
        for k in ("out", "deformation", "occlusion_map"):
            assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4), k
    # The decoder's rewrites (merged and sub-pixel convolutions, conv_s folded into mlp_beta) are exact
    # algebra: in float64 they agree to rounding. (Random tiny decoders saturate the sigmoid with huge
    # logits, so float32 comparisons there would measure conditioning, not correctness.)
    nets64 = nets.double()
    folded64 = fold_network(nets64)
    assert type(folded64.decoder).__name__ == "FastSPADEDecoder"
    w = a["out"].double()
    with torch.no_grad():
        assert torch.allclose(nets64.decoder(w), folded64.decoder(w), atol=1e-9, rtol=0)


def test_subpixel_and_fft_convolutions_are_exact():
    from lp_renderer.fast_layers import FFTConv3d, SubpixelConv3x3

    g = torch.Generator().manual_seed(0)
    for scale in (2, 3, 4):
        x = torch.randn(2, 5, 7, 9, dtype=torch.float64, generator=g)
        w = torch.randn(6, 5, 3, 3, dtype=torch.float64, generator=g)
        b = torch.randn(6, dtype=torch.float64, generator=g)
        ref = torch.nn.functional.conv2d(torch.nn.functional.interpolate(x, scale_factor=scale), w, b, padding=1)
        assert torch.allclose(SubpixelConv3x3(w, b, scale)(x), ref, atol=1e-12), scale
        assert torch.allclose(SubpixelConv3x3(w, b, scale, relu=True)(x), ref.relu(), atol=1e-12), scale
    conv = torch.nn.Conv3d(6, 4, 7, padding=3)
    x = torch.randn(3, 6, 5, 19, 21, generator=g)  # H, W not multiples of the tile, batch > max_batch
    with torch.no_grad():
        assert torch.allclose(FFTConv3d(conv, tile=8)(x), conv(x), atol=1e-5)


def test_folded_renderer_matches_naive():
    nets = RendererNetworks.random(RendererConfig.tiny(), seed=7)
    fast = Renderer(nets, device="cpu", fold=True)
    naive = Renderer(nets, device="cpu", fold=False)
    img = np.random.default_rng(1).integers(0, 255, (256, 256, 3), dtype=np.uint8)
    sf, sn = fast.prepare_source(img), naive.prepare_source(img)
    assert torch.allclose(sf.x_s, sn.x_s, atol=1e-6)
    x_d = sf.x_s + 0.02 * torch.randn(4, 21, 3, generator=torch.Generator().manual_seed(2))
    a = fast.render(sf, x_d, batch_size=4)
    b = naive.render(sn, x_d, batch_size=1)
    assert np.abs(a.astype(int) - b).max() <= 1
