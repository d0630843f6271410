"""ONNX export (:func:`lp_renderer.onnx_backend.export_onnx`) and the onnxruntime renderer against the PyTorch one.

Tiny random networks (the default run): every network stage-wise at batch 1 and 3 (the batch is dynamic) at
max |diff| <= 1e-4 * max(1, max |ref|) (G: 1e-3; random tiny decoders saturate the sigmoid, which amplifies float
rounding: measured 2e-4), and the rendered uint8 frames at max |diff| <= 1 level (float rounding of
the same folded maths). Full size (``slow``, ``conformance``): the filled official weights exported and run on the
conformance cases, stage-wise at the conformance tolerance (1e-3 * max(1, max |ref|)) from each stage's stored
inputs, and end to end at the conformance tolerance (uint8 mean <= 0.5, max <= 16).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lp_renderer import Renderer, RendererConfig, RendererNetworks
from lp_renderer.errors import InputError
from lp_renderer.keypoints import motion_from_raw, transform_keypoints
from lp_renderer.onnx_backend import MLPS, OnnxRenderer, available_providers, export_onnx


def close(ours: torch.Tensor, ref: torch.Tensor, rel: float, what: str) -> None:
    assert ours.shape == ref.shape, f"{what}: shape {tuple(ours.shape)} != {tuple(ref.shape)}"
    err = float((ours.double() - ref.double()).abs().max())
    tol = rel * max(1.0, float(ref.abs().max()))
    assert err <= tol, f"{what}: max abs diff {err:.3g} > {tol:.3g}"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    nets = RendererNetworks.random(RendererConfig.tiny(), seed=2)
    out = tmp_path_factory.mktemp("onnx_tiny")
    files = export_onnx(nets, out, neutral_exp=0.01 * torch.arange(63.0).view(1, 21, 3))
    return nets, out, files


@pytest.fixture(scope="module")
def pair(tiny):
    nets, out, _ = tiny
    return Renderer(nets, device="cpu", layers="plain"), OnnxRenderer(out, providers=["CPUExecutionProvider"])


def test_export_writes_every_network_and_a_manifest(tiny):
    nets, out, files = tiny
    names = [f.name for f in files]
    assert names[-1] == "manifest.json" and not list(out.glob("*.tmp"))
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["networks"]) == {"appearance", "motion", "warping", "decoder", *MLPS}
    assert all((out / f).is_file() and f in names for f in manifest["networks"].values())
    assert RendererConfig.from_dict(manifest["config"]) == nets.config
    import onnx

    m = onnx.load(str(out / "warping.onnx"))
    dims = {i.name: i.type.tensor_type.shape.dim[0].dim_param for i in m.graph.input}
    assert dims == {"feature": "source_batch", "kp_driving": "batch", "kp_source": "source_batch"}


@pytest.mark.parametrize("b", [1, 3])
def test_each_network_matches_pytorch(pair, b):
    r, o = pair
    g = torch.Generator().manual_seed(b)
    x = torch.rand(b, 3, 256, 256, generator=g)
    close(o.nets.appearance(x), r.nets.appearance(x), 1e-4, "F")
    raw_o, raw_r = o.nets.motion(x), r.nets.motion(x)
    assert set(raw_o) == set(raw_r)
    for k in raw_r:
        close(raw_o[k], raw_r[k], 1e-4, f"M {k}")
    with torch.no_grad():
        feature = r.nets.appearance(x[:1])
        x_s = transform_keypoints(motion_from_raw(r.nets.motion(x[:1])))
    x_d = x_s + 0.03 * torch.randn(b, 21, 3, generator=g)
    w_o = o._warp(feature, x_d, x_s)
    with torch.no_grad():
        w_r = r.nets.warping(feature.expand(b, -1, -1, -1, -1), x_d, x_s.expand(b, -1, -1))
    for k in ("out", "deformation", "occlusion_map"):
        close(w_o[k], w_r[k], 1e-4, f"W {k}")
    with torch.no_grad():
        close(o._decode(w_r["out"]), r.nets.decoder(w_r["out"]), 1e-3, "G")  # see the module docstring
        for k in MLPS:
            mlp = getattr(r.nets.stitching, k)
            z = torch.randn(b, mlp.cfg.input_size, generator=g)
            close(getattr(o.nets.stitching, k)(z), mlp(z), 1e-4, f"MLP {k}")


def test_rendered_frames_match_pytorch(pair):
    """The product's chain (prepare_source, extract_motion, Algorithm 1 with stitching, render) on both."""
    from lp_renderer.animation import AnimationOptions, driving_keypoints

    r, o = pair
    g = torch.Generator().manual_seed(7)
    img = (torch.rand(256, 256, 3, generator=g) * 255).to(torch.uint8).numpy()
    crops = (torch.rand(4, 256, 256, 3, generator=g) * 255).to(torch.uint8).numpy()
    outs = []
    for x in (r, o):
        src = x.prepare_source(img)
        info = x.extract_motion(crops)
        outs.append(x.render(src, driving_keypoints(x, src, info, info[0], AnimationOptions()), batch_size=4))
    diff = np.abs(outs[0].astype(np.int32) - outs[1].astype(np.int32))
    assert outs[1].shape == (4, 512, 512, 3) and diff.max() <= 1, (diff.max(), diff.mean())
    assert torch.equal(o.neutral_exp, 0.01 * torch.arange(63.0).view(1, 21, 3))


def test_a_folder_that_is_not_an_export_is_one_clear_error(tiny, tmp_path):
    with pytest.raises(InputError, match="not an ONNX export"):
        OnnxRenderer(tmp_path)
    _, out, _ = tiny
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text((out / "manifest.json").read_text())
    with pytest.raises(InputError, match="lacks appearance.onnx"):
        OnnxRenderer(broken)


def test_providers():
    assert available_providers("cpu") == ["CPUExecutionProvider"]
    assert available_providers()[-1] == "CPUExecutionProvider"
    import onnxruntime as ort

    if not {"CUDAExecutionProvider", "TensorrtExecutionProvider"} & set(ort.get_available_providers()):
        with pytest.raises(InputError, match="no CUDA or TensorRT execution provider"):
            available_providers("cuda")


# ------------------------------------------------------------------------------------------ full size
@pytest.fixture(scope="module")
def full(tmp_path_factory, request):
    from tests.lp_renderer.test_conformance import require_conformance_data

    require_conformance_data()
    from lp_renderer.weights import load_networks, load_neutral_expression

    wdir = request.getfixturevalue("filled_weights_dir")
    out = tmp_path_factory.mktemp("onnx_full")
    export_onnx(load_networks(wdir), out, neutral_exp=load_neutral_expression(wdir))
    return OnnxRenderer(out, providers=["CPUExecutionProvider"])


def _cases():
    from tests.lp_renderer.test_conformance import CASES

    return [c.name for c in CASES] or ["<no case_*.npz>"]


@pytest.mark.slow
@pytest.mark.conformance
@pytest.mark.parametrize("name", _cases())
def test_conformance_cases_stage_wise_and_end_to_end(full, name):
    """Each exported network from its stage's stored inputs against the official arrays, then the product's chain
    from the input images (as ``test_conformance.py::test_end_to_end``)."""
    from tests.lp_renderer.test_conformance import CASES, check_end_to_end
    from tests.lp_renderer.test_conformance import close as official

    case = dict(np.load(CASES[0].parent / name))
    x = torch.from_numpy(case["input_source_tensor"])
    official(full.appearance(x), case["F_feature_3d"], "F")
    raw = full.nets.motion(x)
    for head in ("kp", "exp", "pitch", "yaw", "roll", "t", "scale"):
        official(raw[head], case[f"M_src_raw_{head}"], f"M_src_raw_{head}")
    x_s, x_ef = torch.from_numpy(case["x_s"]), torch.from_numpy(case["x_d1_expression_friendly"])
    official(full.nets.stitching.stitching(torch.cat([x_s.reshape(1, -1), x_ef.reshape(1, -1)], 1)),
             case["stitch_raw_delta"], "stitch_raw_delta")
    official(full.retarget_eyes(x_s, case["input_eye_ratio"]), case["eye_delta"], "eye_delta")
    official(full.retarget_lip(x_s, case["input_lip_ratio"]), case["lip_delta"], "lip_delta")
    w = full._warp(torch.from_numpy(case["F_feature_3d"]), torch.from_numpy(case["x_d1_stitched"]), x_s)
    for k in ("out", "occlusion_map", "deformation"):
        official(w[k], case[f"W_{k}"], f"W_{k}")
    official(full.decode(torch.from_numpy(case["W_out"])), case["G_out"], "G_out")
    check_end_to_end(full, case)
