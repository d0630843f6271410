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
        assert torch.allclose(nets.decoder(a["out"]), folded.decoder(a["out"]), atol=1e-5)


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
