"""Winograd F(4x4, 3x3) convolutions (lp_renderer.fast.winograd): the plain convolution's maths up to float rounding
for odd sizes, channels, paddings, batches, strides of the input and chunkings; the plain convolution itself
wherever the fast path does not apply; the layer-set rule (opt-in) and the autotuner's kernel."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lp_renderer import RendererConfig, RendererNetworks
from lp_renderer.fast import winograd
from lp_renderer.fast.autotune import KERNELS, AutotunedConv, autotune_network
from lp_renderer.fast.folding import fold_network
from lp_renderer.fast.nnpack import NNPACKConv2d, nnpack_conv2d, nnpack_usable
from lp_renderer.fast.winograd import WinogradConv2d, transform_weight, use_winograd, winograd_conv2d


def _reference(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    bias = conv.bias.double() if conv.bias is not None else None
    return F.conv2d(x.double(), conv.weight.double(), bias, padding=conv.padding)


def _close(y: torch.Tensor, ref: torch.Tensor) -> None:
    """Within F(4x4, 3x3)'s float32 rounding: a few 1e-6 of the output's scale (a wrong tile, transform or bias is
    off by the output's scale itself)."""
    assert y.dtype == torch.float32 and y.shape == ref.shape and y.is_contiguous()
    scale = ref.abs().max().item()
    err = (y.double() - ref).abs().max().item()
    assert err <= 2e-5 * max(scale, 1.0), (err, scale)


# (in, out, input (B, H, W), padding, bias)
SHAPES = [
    (5, 7, (1, 9, 11), 1, True),  # odd sizes: partial tiles in both axes
    (16, 8, (2, 13, 6), 1, True),  # batch
    (3, 4, (1, 4, 4), 1, False),  # one tile, no bias
    (4, 3, (1, 10, 7), 0, True),  # valid convolution
    (6, 5, (3, 17, 23), (1, 0), True),  # asymmetric padding
    (130, 129, (1, 12, 20), 1, True),  # channel counts past the layer-set rule, not multiples of 16
    (2, 2, (1, 1, 1), 1, True),  # a 1x1 map
]


@pytest.mark.parametrize("cin,cout,size,padding,bias", SHAPES)
def test_matches_conv2d(cin, cout, size, padding, bias):
    torch.manual_seed(cin * 100 + cout)
    conv = nn.Conv2d(cin, cout, 3, padding=padding, bias=bias).eval()
    x = torch.randn(size[0], cin, *size[1:])
    with torch.no_grad():
        _close(WinogradConv2d(conv)(x), _reference(x, conv))


def test_non_contiguous_and_channels_last_input():
    torch.manual_seed(1)
    conv = nn.Conv2d(6, 9, 3, padding=1).eval()
    base = torch.randn(2, 6, 19, 15)
    inputs = [base.transpose(2, 3), base[:, :, 1:-2, ::2], base.contiguous(memory_format=torch.channels_last),
              base[::2]]
    with torch.no_grad():
        for x in inputs:
            assert not x.is_contiguous() or x.shape[0] == 1
            _close(WinogradConv2d(conv)(x), _reference(x, conv))


@pytest.mark.parametrize("chunk_bytes", [1, 36 * 8 * 5 * 4 * 3, 2**30])
def test_chunks_of_tile_rows_agree(chunk_bytes):
    """One tile row per chunk, a few rows with a shorter last chunk, everything at once: the same output."""
    torch.manual_seed(2)
    conv = nn.Conv2d(8, 6, 3, padding=1).eval()
    x = torch.randn(2, 8, 37, 18)  # 10 tile rows of 5 tiles
    u = transform_weight(conv.weight)
    with torch.no_grad():
        y = winograd_conv2d(x, u, conv.bias, (1, 1), chunk_bytes=chunk_bytes, min_tiles=1)
        _close(y, _reference(x, conv))
        torch.testing.assert_close(y, winograd_conv2d(x, u, conv.bias, (1, 1)), rtol=0, atol=2e-5)
        # the weight transformed in blocks of output channels inside the loop (the layers' way), blocks of 1 to all
        for block in (1, 4, 6):
            yb = winograd_conv2d(x, None, conv.bias, (1, 1), chunk_bytes=chunk_bytes, min_tiles=1,
                                 weight=conv.weight, out_block=block)
            torch.testing.assert_close(yb, y, rtol=0, atol=2e-5)


def test_chunk_buffers_are_bounded(monkeypatch):
    """The per-chunk buffers follow ``chunk_bytes``, not the map size: the largest tensor allocated for a 64x256
    map with 1-row chunks is the output, not 36 copies of the input."""
    sizes = []
    real = torch.Tensor.new_empty

    def recording(self, *shape, **kw):
        t = real(self, *shape, **kw)
        sizes.append(t.numel())
        return t

    monkeypatch.setattr(torch.Tensor, "new_empty", recording)
    x = torch.randn(1, 4, 64, 256)
    u = transform_weight(torch.randn(4, 4, 3, 3))
    with torch.no_grad():
        winograd_conv2d(x, u, None, (1, 1), chunk_bytes=1, min_tiles=1)
    assert max(sizes) == 4 * 64 * 256  # the output; the chunk buffers hold one row of 64 tiles
    assert sorted(sizes)[-2] == 36 * 4 * 64
    # the weight transformed two output channels at a time: no buffer of the whole transformed weight (36 * 8 * 4)
    sizes.clear()
    with torch.no_grad():
        y = winograd_conv2d(x, None, None, (1, 1), chunk_bytes=1, min_tiles=1, weight=torch.randn(8, 4, 3, 3),
                            out_block=2)
    assert y.shape == (1, 8, 64, 256) and max(sizes) == 8 * 64 * 256
    assert sorted(sizes)[:-1] == sorted([36 * 4 * 64, 36 * 4 * 64, 36 * 2 * 64, 16 * 2 * 64, 36 * 2 * 4])


def test_plain_convolution_elsewhere():
    """float64, gradients and another device run the wrapped convolution itself."""
    torch.manual_seed(3)
    conv = nn.Conv2d(4, 5, 3, padding=1)
    layer = WinogradConv2d(conv)
    x64 = torch.randn(1, 4, 9, 9, dtype=torch.float64)
    conv64 = WinogradConv2d(nn.Conv2d(4, 5, 3, padding=1).double())
    with torch.no_grad():
        assert torch.equal(conv64(x64), conv64.conv(x64))
    x = torch.randn(1, 4, 9, 9, requires_grad=True)
    y = layer(x)
    assert y.grad_fn is not None
    assert torch.equal(y, conv(x))
    y.sum().backward()
    assert x.grad is not None and conv.weight.grad is not None
    meta = WinogradConv2d(nn.Conv2d(4, 5, 3, padding=1)).to("meta")
    with torch.no_grad():
        out = meta(torch.empty(1, 4, 9, 9, device="meta"))
    assert out.device.type == "meta" and out.shape == (1, 5, 9, 9)


@pytest.mark.skipif(not nnpack_usable(), reason="optional: NNPACK cannot run on this CPU")
def test_larger_maps_run_nnpack():
    torch.manual_seed(6)
    conv = nn.Conv2d(4, 5, 3, padding=1)
    layer = WinogradConv2d(conv, max_pixels=8 * 8)
    small, large = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 9)
    with torch.no_grad():
        assert torch.equal(layer(large), nnpack_conv2d(large, conv.weight, conv.bias, [1, 1]))
        _close(layer(small), _reference(small, conv))
        assert not torch.equal(layer(small), nnpack_conv2d(small, conv.weight, conv.bias, [1, 1]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="optional: no CUDA device here")
def test_cuda_runs_the_plain_convolution():
    conv = nn.Conv2d(4, 5, 3, padding=1).cuda()
    x = torch.randn(1, 4, 9, 9, device="cuda")
    with torch.no_grad():
        assert torch.equal(WinogradConv2d(conv)(x), conv(x))


@pytest.mark.parametrize("conv", [nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.Conv2d(4, 4, 3, groups=2),
                                  nn.Conv2d(4, 4, 3, dilation=2), nn.Conv2d(4, 4, 5, padding=2),
                                  nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"),
                                  nn.Conv2d(4, 4, 3, padding="same"), nn.Conv3d(4, 4, 3)])
def test_refuses_other_convolutions(conv):
    assert not WinogradConv2d.eligible(conv)
    with pytest.raises(ValueError):
        WinogradConv2d(conv)


def test_layer_set_rule_by_channels():
    big, small, mixed = nn.Conv2d(128, 256, 3, padding=1), nn.Conv2d(64, 64, 3, padding=1), \
        nn.Conv2d(512, 64, 3, padding=1)
    net = nn.Sequential(NNPACKConv2d(big), NNPACKConv2d(small), mixed, nn.Conv2d(256, 256, 1))
    assert use_winograd(net) == 1
    assert type(net[0]) is WinogradConv2d and net[0].conv is big and net[0].max_pixels == winograd.MAX_PIXELS
    assert type(net[1]) is NNPACKConv2d and net[2] is mixed and type(net[3]) is nn.Conv2d
    assert use_winograd(net) == 0  # wrapping twice changes nothing


def test_fold_network_uses_it_where_the_rule_says(monkeypatch):
    """With the rule lowered to the tiny config's channel counts, the folded W and G run their 3x3 layers by
    Winograd (by default: ``IN_LAYER_SET``) and give the output of the same networks folded with plain
    convolutions; ``winograd=False`` (or ``IN_LAYER_SET`` off) keeps NNPACK."""
    monkeypatch.setattr(winograd, "MIN_CHANNELS", 8)
    nets = RendererNetworks.random(RendererConfig.tiny(), seed=5).eval()
    assert winograd.IN_LAYER_SET
    fast = fold_network(nets)
    plain = fold_network(nets, winograd=False)
    monkeypatch.setattr(winograd, "IN_LAYER_SET", False)
    assert not any(isinstance(m, WinogradConv2d) for m in fold_network(nets).modules())
    reference = fold_network(nets, nnpack=False)
    assert sum(isinstance(m, WinogradConv2d) for m in fast.warping.modules()) >= 1
    assert sum(isinstance(m, WinogradConv2d) for m in fast.decoder.modules()) >= 3
    assert not any(isinstance(m, WinogradConv2d) for m in plain.modules())
    assert not any(isinstance(m, WinogradConv2d) for m in fast.motion.modules())  # W and G only
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 256, 256, generator=g)
    with torch.no_grad():
        f = reference.appearance(x)
        kp_s = 0.5 * torch.rand(1, 21, 3, generator=g) - 0.25
        kp_d = kp_s + 0.05 * torch.randn(1, 21, 3, generator=g)
        a = reference.warping(f, kp_d, kp_s, source_cache=reference.warping.source_cache(f, kp_s))
        b = fast.warping(f, kp_d, kp_s, source_cache=fast.warping.source_cache(f, kp_s))
        for k in ("out", "deformation", "occlusion_map"):
            torch.testing.assert_close(b[k], a[k], atol=1e-4, rtol=1e-4, msg=k)
        torch.testing.assert_close(fast.decoder(a["out"]), reference.decoder(a["out"]), atol=1e-3, rtol=1e-3)


def test_autotuner_offers_it_and_defaults_to_it(monkeypatch):
    torch.manual_seed(5)
    conv = nn.Conv2d(6, 7, 3, padding=1)
    x = torch.randn(1, 6, 11, 10)
    a = AutotunedConv(conv)
    assert "winograd" in a.kernels(x) and "winograd" in KERNELS
    with torch.no_grad():
        _close(a.run("winograd", x), _reference(x, conv))
        conv.weight.mul_(2)  # the transformed weight follows an in-place change of the weight
        _close(a.run("winograd", x), _reference(x, conv))
    assert "winograd" not in AutotunedConv(nn.Conv2d(6, 7, 3, stride=2)).kernels(x)
    monkeypatch.setattr(winograd, "MIN_CHANNELS", 4)
    net = nn.Sequential(nn.Conv2d(6, 7, 3, padding=1), nn.Conv2d(7, 2, 3, padding=1), nn.Conv2d(2, 2, 1))
    off = nn.Sequential(nn.Conv2d(6, 7, 3, padding=1))
    autotune_network(off, nnpack_in=(nn.Sequential,))  # the default layer set's choice: NNPACK
    assert off[0].default == "nnpack"
    autotune_network(net, nnpack_in=(nn.Sequential,), winograd=True)
    assert [m.default for m in net] == ["winograd", "nnpack", "onednn"]
    monkeypatch.setattr(winograd, "MAX_PIXELS", 64)
    assert net[0]._untuned(torch.randn(1, 6, 8, 8)) == "winograd"
    assert net[0]._untuned(torch.randn(1, 6, 8, 9)) == ("nnpack" if nnpack_usable() else "onednn")
