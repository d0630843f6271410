"""Load-time folding (spectral norm -> weight, BatchNorm -> conv) keeps the outputs."""

from __future__ import annotations

import os
import platform

import numpy as np
import pytest
import torch

from lp_renderer import Renderer, RendererConfig, RendererNetworks
from lp_renderer.fast.folding import fold_network


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
    from lp_renderer.fast.fft_conv import FFTConv3d
    from lp_renderer.fast.spade import SubpixelConv3x3

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


def test_cpu_decoder_runs_a_batch_in_chunks_with_the_same_result():
    nets = RendererNetworks.random(RendererConfig.tiny(), seed=3)
    # fixed kernels: autotuning may pick other kernels for other batch sizes (the same maths, other rounding)
    r = Renderer(nets, device="cpu", fold=True, autotune=False)
    assert r.decode_chunk == 1  # the CPU default: G one image at a time
    assert Renderer(nets, device="cpu", fold=False).decode_chunk is None
    src = r.prepare_source(np.random.default_rng(5).integers(0, 255, (256, 256, 3), dtype=np.uint8))
    x_d = src.x_s + 0.02 * torch.randn(3, 21, 3, generator=torch.Generator().manual_seed(4))
    warped = r.warp(src, x_d)["out"]  # (3, C, 64, 64)
    outs = {}
    for chunk in (1, 2, None):
        r.decode_chunk = chunk
        outs[chunk] = r.decode(warped)
    assert outs[None].shape[0] == 3
    for chunk in (1, 2):
        assert outs[chunk].shape == outs[None].shape
        assert torch.allclose(outs[chunk], outs[None], atol=1e-5)


def test_nnpack_convolutions_match_direct_ones():
    """NNPACK's Winograd / FFT convolutions (the CPU default for W and G) agree with PyTorch's direct ones,
    per image in a batch, and fall back to the plain convolution where they do not apply."""
    from lp_renderer.fast.nnpack import NNPACKConv2d, nnpack_usable, use_nnpack

    g = torch.Generator().manual_seed(3)
    for k, cin, cout, size in ((3, 64, 96, 37), (7, 40, 1, 32)):
        conv = torch.nn.Conv2d(cin, cout, k, padding=k // 2).eval()
        fast = NNPACKConv2d(conv)
        x = torch.randn(3, cin, size, size + 3, generator=g)
        with torch.no_grad():
            ref = torch.nn.functional.conv2d(x.double(), conv.weight.double(), conv.bias.double(), padding=k // 2)
            out = fast(x)
            assert out.shape == ref.shape
            scale = float(ref.abs().max())
            assert float((out.double() - ref).abs().max()) <= 5e-5 * scale, k  # Winograd rounding
            # float64 (and anything NNPACK does not take) is the plain convolution, bit for bit
            conv64 = torch.nn.Conv2d(cin, cout, k, padding=k // 2).double()
            conv64.load_state_dict(conv.state_dict())
            assert torch.equal(NNPACKConv2d(conv64)(x.double()), conv64(x.double()))
    # with gradients on, the plain convolution (NNPACK's inference mode has no backward)
    conv = torch.nn.Conv2d(4, 5, 3, padding=1)
    x = torch.randn(1, 4, 9, 9, requires_grad=True)
    NNPACKConv2d(conv)(x).sum().backward()
    assert x.grad is not None
    # eligibility: 3x3 and larger stride-1 convolutions only
    seq = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.Conv2d(4, 4, 1),
                              torch.nn.Conv2d(4, 4, 3, stride=2, padding=1))
    assert use_nnpack(seq) == 1 and isinstance(seq[0], NNPACKConv2d) and type(seq[1]) is torch.nn.Conv2d
    assert use_nnpack(seq) == 0  # idempotent
    if platform.machine() in ("x86_64", "AMD64"):
        assert nnpack_usable(), "PyTorch's x86 CPU builds ship NNPACK; without it the fast path is off"


def test_default_renderer_uses_nnpack_on_cpu():
    from lp_renderer.fast.autotune import AutotunedConv
    from lp_renderer.fast.nnpack import NNPACKConv2d

    r = Renderer(RendererNetworks.random(RendererConfig.tiny(), seed=1), device="cpu", autotune=False)
    n = sum(isinstance(m, NNPACKConv2d) for m in r.nets.modules())
    assert n >= 4  # W's 3x3 and 7x7 convolutions and G's
    assert not any(isinstance(m, NNPACKConv2d) for m in r.nets.motion.modules())
    # autotuned: the same layers have NNPACK as their untuned kernel (M's do not)
    r = Renderer(RendererNetworks.random(RendererConfig.tiny(), seed=1), device="cpu", autotune=True)
    assert sum(isinstance(m, AutotunedConv) and m.default == "nnpack" for m in r.nets.modules()) == n
    assert not any(isinstance(m, AutotunedConv) and m.default == "nnpack" for m in r.nets.motion.modules())


def test_allocator_settings(monkeypatch):
    import subprocess
    import sys

    from lp_renderer.fast import cpu_memory

    # importing lp_renderer changes nothing; a front door opts in (before torch) and the user may opt out
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    show = "print(os.environ.get('THP_MEM_ALLOC_ENABLE'))"
    apply = "from lp_renderer.fast.cpu_memory import enable_cpu_memory_settings as a; a()"
    for code, extra, expected in (
            (f"import os, lp_renderer, torch; {show}", {}, "None"),
            (f"import os; {apply}; {show}", {}, "1"),
            (f"import os; {apply}; {show}", {"THP_MEM_ALLOC_ENABLE": "0"}, "0"),
            (f"import os, torch; from lp_renderer.fast.cpu_memory import request_huge_pages as r; r(); {show}", {},
             "None")):  # too late once torch is loaded: nothing is set
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**env, **extra},
                             check=True)
        assert out.stdout.strip() == expected, code
    # the glibc settings: nothing unless the program opted in; opt-out respected, applied once otherwise
    monkeypatch.setattr(cpu_memory, "_state", {})
    assert cpu_memory.apply_if_enabled() is False and "applied" not in cpu_memory._state
    monkeypatch.setattr(cpu_memory, "_state", {"enabled": True})
    monkeypatch.setenv(cpu_memory.TUNING_ENV, "0")
    assert cpu_memory.apply_malloc_settings() is False
    monkeypatch.setattr(cpu_memory, "_state", {})
    monkeypatch.delenv(cpu_memory.TUNING_ENV)
    applied = cpu_memory.apply_malloc_settings()
    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        assert applied is True
    assert cpu_memory.apply_malloc_settings() is applied


def test_low_memory_spade_block_matches_the_plain_block():
    """G's last block runs in the low-memory form (own label-map convolutions, gamma and beta apart,
    input normalised in place); it must compute what SPADEResnetBlock computes."""
    from lp_renderer.fast.spade import _FastSPADEBlock
    from lp_renderer.nets.blocks import SPADEResnetBlock

    torch.manual_seed(0)
    block = SPADEResnetBlock(16, 8, label_nc=6, hidden=12).eval()
    for m in block.modules():
        for hook in list(m._forward_pre_hooks.values()):
            if type(hook).__name__ == "SpectralNorm":
                torch.nn.utils.remove_spectral_norm(m)
                break
    x = torch.randn(2, 16, 32, 32)
    seg = torch.randn(2, 6, 8, 8)
    with torch.no_grad():
        ref = block(x, seg)
        fast = _FastSPADEBlock(block, low_memory=True, scale=4)
        out = fast(x.clone(), seg=seg)
    assert out.shape == ref.shape
    assert (out - ref).abs().max() <= 1e-5 * ref.abs().max()
    with pytest.raises(ValueError, match="learned shortcut"):
        _FastSPADEBlock(SPADEResnetBlock(8, 8, label_nc=6, hidden=12).eval(), low_memory=True, scale=4)
