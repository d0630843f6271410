"""The half-precision path (CUDA float16 autocast for W and G, warp maths in float32) exercised on the CPU
with bfloat16 autocast: the same code runs and the warp grid stays float32."""

from __future__ import annotations

import numpy as np
import torch

from lp_renderer import Renderer, RendererConfig


def test_warp_and_decode_under_autocast():
    r = Renderer.from_config(RendererConfig.tiny(), seed=2, device="cpu")
    img = np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)
    src = r.prepare_source(img)
    x_d = src.x_s + 0.01 * torch.randn(2, 21, 3, generator=torch.Generator().manual_seed(0))
    ref = r.warp(src, x_d)
    ref_img = r.decode(ref["out"])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = r.warp(src, x_d)
        img_lp = r.decode(out["out"])
    assert out["deformation"].dtype == torch.float32  # the warp grid is never computed in low precision
    assert img_lp.dtype == torch.float32
    assert torch.allclose(out["deformation"], ref["deformation"], atol=5e-2)
    # (random tiny decoders saturate the sigmoid, so bfloat16 image error says little about real weights)
    assert torch.isfinite(img_lp).all() and img_lp.min() >= 0 and img_lp.max() <= 1
    assert img_lp.shape == ref_img.shape
