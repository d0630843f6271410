"""The renderer's layer sets (``Renderer(layers=...)``): each device's default, every set on the CPU, torch.compile on
the CPU, and how rendered frames leave the device. The full-size comparisons with the official numerics are in
test_conformance.py (the CUDA set in float32, bfloat16 and float16 on the CPU) and test_gpu.py (on CUDA)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lp_renderer import Renderer, RendererConfig, RendererNetworks
from lp_renderer import renderer as renderer_module
from lp_renderer.fast.autotune import AutotunedConv
from lp_renderer.fast.fft_conv import FFTConv3d
from lp_renderer.fast.nnpack import NNPACKConv2d
from lp_renderer.fast.spade import FastSPADEDecoder
from lp_renderer.nets.spade_decoder import SPADEDecoder


def _kinds(r: Renderer) -> set[type]:
    return {type(m) for m in r.nets.modules()}


def _inputs(r: Renderer, b: int = 3):
    g = torch.Generator().manual_seed(0)
    img = (torch.rand(256, 256, 3, generator=g) * 255).to(torch.uint8).numpy()
    src = r.prepare_source(img)
    return src, src.x_s + 0.02 * torch.randn(b, 21, 3, generator=g)


def test_default_layer_set_follows_the_device(monkeypatch):
    monkeypatch.delenv("LP_RENDERER_AUTOTUNE", raising=False)  # the test run turns autotuning off (tests/conftest.py)
    assert renderer_module.default_layers(torch.device("cpu")) == "cpu"
    assert renderer_module.default_layers(torch.device("cuda")) == "cuda"
    r = Renderer.from_config(RendererConfig.tiny(), device="cpu", autotune=False)
    assert r.layers == "cpu" and r.decode_chunk == 1
    assert {FFTConv3d, NNPACKConv2d, FastSPADEDecoder} <= _kinds(r)
    # with kernel autotuning (the default unless LP_RENDERER_AUTOTUNE=0) the same kernels are among each layer's choices
    r = Renderer.from_config(RendererConfig.tiny(), device="cpu", autotune=True)
    assert {FFTConv3d, AutotunedConv, FastSPADEDecoder} <= _kinds(r) and NNPACKConv2d not in _kinds(r)
    with pytest.raises(ValueError, match="layers must be one of"):
        Renderer.from_config(RendererConfig.tiny(), device="cpu", layers="gpu")


def test_every_layer_set_runs_on_the_cpu_and_agrees():
    """The CUDA set (the rewritten SPADE decoder, no FFT / NNPACK layers, G on the whole batch) and the plain set
    (folded original modules) give the CPU set's output: W to float rounding, G compared in float64 (random tiny
    decoders saturate the sigmoid, so float32 there measures conditioning, not correctness)."""
    nets = RendererNetworks.random(RendererConfig.tiny(), seed=3)
    rs = {k: Renderer(nets, device="cpu", layers=k) for k in ("cpu", "cuda", "plain")}
    assert FFTConv3d not in _kinds(rs["cuda"]) and NNPACKConv2d not in _kinds(rs["cuda"])
    assert FastSPADEDecoder in _kinds(rs["cuda"]) and rs["cuda"].decode_chunk is None
    assert SPADEDecoder in _kinds(rs["plain"]) and FastSPADEDecoder not in _kinds(rs["plain"])
    src, x_d = _inputs(rs["cpu"])
    ref = rs["cpu"].warp(src, x_d)
    for k in ("cuda", "plain"):
        s, _ = _inputs(rs[k])
        out = rs[k].warp(s, x_d)
        for key in ("out", "deformation", "occlusion_map"):
            assert torch.allclose(out[key], ref[key], atol=1e-4, rtol=1e-4), (k, key)
    w = ref["out"].double()
    g = {k: Renderer(nets.double(), device="cpu", layers=k).decode(w) for k in ("cpu", "cuda", "plain")}
    assert torch.allclose(g["cuda"], g["cpu"], atol=1e-9) and torch.allclose(g["plain"], g["cpu"], atol=1e-9)


def test_render_copies_each_batch_off_the_device_once(monkeypatch):
    """The render loop converts and moves frames once per batch (one ``to_uint8`` call, which on CUDA is one
    uint8 copy into pinned memory and one wait), not once per frame."""
    r = Renderer.from_config(RendererConfig.tiny(), device="cpu", layers="cuda")
    src, x_d = _inputs(r, b=10)
    calls = []
    real = renderer_module.to_uint8
    monkeypatch.setattr(renderer_module, "to_uint8", lambda t: calls.append(t.shape[0]) or real(t))
    out = r.render(src, x_d, batch_size=4)
    assert out.shape == (10, 512, 512, 3) and out.dtype == np.uint8
    assert calls == [4, 4, 2]


def test_to_uint8_truncates_like_the_official_code():
    x = torch.tensor([0.0, 0.5, 1.0, 1.5, -0.2, 254.9 / 255, 0.999999]).view(1, 1, 1, 7).expand(1, 3, 1, 7)
    out = renderer_module.to_uint8(x)
    assert out.shape == (1, 1, 7, 3)
    assert out[0, 0, :, 0].tolist() == [0, 127, 255, 255, 0, 254, 254]


def test_to_uint8_gives_contiguous_rgb_pixels():
    """(B, 3, H, W) planes -> (B, H, W, 3) C-contiguous pixels (what paste-back and the encoder read without a
    copy), each channel in its place, for float32 and float64 and strided input."""
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        x = (torch.rand(3, 3, 9, 14, generator=g, dtype=dtype) * 1.4 - 0.2)[:, :, ::2]  # strided
        want = (x.permute(0, 2, 3, 1).clamp(0, 1).numpy() * 255).astype(np.uint8)
        out = renderer_module.to_uint8(x)
        assert out.flags.c_contiguous and out.shape == (3, 5, 14, 3)
        assert np.array_equal(out, want)


@pytest.mark.slow
def test_compile_on_the_cpu():
    """``compile=True`` (torch.compile of W and G, inductor: needs a C++ compiler) gives the uncompiled output, for
    the CUDA layer set (what CUDA compiles) on a tiny config; in float64, where the agreement is to rounding (random
    tiny decoders saturate the sigmoid, so float32 would measure conditioning)."""
    nets = RendererNetworks.random(RendererConfig.tiny(), seed=1).double()
    eager = Renderer(nets, device="cpu", layers="cuda")
    compiled = Renderer(nets, device="cpu", layers="cuda", compile=True)
    assert compiled._warp is not compiled.nets.warping and compiled._decode is not compiled.nets.decoder
    g = torch.Generator().manual_seed(0)
    feature = torch.rand(1, 16, 2, 64, 64, generator=g, dtype=torch.float64)
    x_s = 0.5 * torch.rand(1, 21, 3, generator=g, dtype=torch.float64) - 0.25
    x_d = x_s + 0.02 * torch.randn(2, 21, 3, generator=g, dtype=torch.float64)
    with torch.no_grad():
        ref = eager.nets.warping(feature, x_d, x_s.expand(2, -1, -1))
        out = compiled._warp(feature, x_d, x_s.expand(2, -1, -1))
        for key in ("out", "deformation", "occlusion_map"):
            assert torch.allclose(out[key], ref[key], atol=1e-9), key
        assert torch.allclose(compiled._decode(ref["out"]), eager.nets.decoder(ref["out"]), atol=1e-9)


def test_expression_friendly_multiplier_is_computed_once_per_reference(monkeypatch):
    """The expression-friendly multiplier needs the keypoints on the host (a convex hull): computed once per source
    and driving reference, not once per batch (on CUDA each computation waits for the device)."""
    from lp_renderer import animation

    r = Renderer.from_config(RendererConfig.tiny(), device="cpu")
    src, _ = _inputs(r)
    g = torch.Generator().manual_seed(1)
    crops = (torch.rand(6, 256, 256, 3, generator=g) * 255).to(torch.uint8).numpy()
    info = r.extract_motion(crops)
    reference = info[0]
    calls = []
    real = animation.motion_multiplier
    monkeypatch.setattr(animation, "motion_multiplier", lambda *a: calls.append(1) or real(*a))
    first = animation.driving_keypoints(r, src, info[0:3], reference)
    second = animation.driving_keypoints(r, src, info[3:6], reference)
    assert len(calls) == 1
    whole = animation.driving_keypoints(r, src, info, info[0])  # another reference object: computed again
    assert len(calls) == 2
    assert torch.allclose(torch.cat([first, second]), whole, atol=1e-6)
