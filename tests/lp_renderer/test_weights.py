"""Weight loading: official layout, safetensors, strictness, refusal of pickle code, clear errors."""

from __future__ import annotations

import logging
import os
import pickle

import numpy as np
import pytest
import torch

from lp_renderer import InputError, Renderer, RendererConfig, RendererNetworks, WeightsError
from lp_renderer.weights import (
    OFFICIAL_FILES,
    STITCHING_SUBDICTS,
    MissingWeightsError,
    convert_to_safetensors,
    load_networks,
    load_neutral_expression,
    missing_weight_files,
    rename_keys,
    save_networks,
    weight_file,
)

TINY = RendererConfig.tiny()


@pytest.fixture(scope="module")
def tiny_nets():
    return RendererNetworks.random(TINY, seed=3)


def _same_weights(a: RendererNetworks, b: RendererNetworks):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_official_layout_roundtrip(tiny_nets, tmp_path):
    save_networks(tiny_nets, tmp_path, official_layout_pth=True)
    raw = torch.load(tmp_path / OFFICIAL_FILES["stitching_retargeting_module"], weights_only=True)
    assert set(raw) == set(STITCHING_SUBDICTS.values())
    assert all(k.startswith("module.") for k in raw["retarget_eye"])
    loaded = load_networks(tmp_path, config=TINY)
    _same_weights(tiny_nets, loaded)


def test_safetensors_carry_config(tiny_nets, tmp_path):
    save_networks(tiny_nets, tmp_path)
    assert not list(tmp_path.rglob("*.pth"))
    loaded = load_networks(tmp_path)  # config comes from the files
    assert loaded.config == TINY
    _same_weights(tiny_nets, loaded)


def test_convert_official_folder_to_safetensors(tiny_nets, tmp_path):
    save_networks(tiny_nets, tmp_path, official_layout_pth=True)
    written = convert_to_safetensors(tmp_path, config=TINY)
    assert len(written) == 5 and all(p.suffix == ".safetensors" and p.is_file() for p in written)
    for p in tmp_path.rglob("*.pth"):
        p.unlink()
    _same_weights(tiny_nets, load_networks(tmp_path))


def test_renderer_from_weights(tiny_nets, tmp_path):
    save_networks(tiny_nets, tmp_path)
    r = Renderer.from_weights(tmp_path, device="cpu")
    assert r.has_stitching and r.config == TINY


def test_safetensors_format_tag(tiny_nets, tmp_path):
    """Files carry the renderer's own tag; those written with the application's name in front load the same."""
    from safetensors import safe_open

    from lp_renderer.weights import FORMAT, write_safetensors

    save_networks(tiny_nets, tmp_path)
    path = next(tmp_path.rglob("motion_extractor.safetensors"))
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    assert meta["format"] == FORMAT == "lp-renderer-v1"
    write_safetensors(path, tensors, {**meta, "format": "app-renderer-v1"})
    _same_weights(tiny_nets, load_networks(tmp_path))
    write_safetensors(path, tensors, {**meta, "format": "something-else"})
    with pytest.raises(WeightsError, match="format 'something-else'"):
        load_networks(tmp_path)


def test_missing_files_are_named(tiny_nets, tmp_path):
    save_networks(tiny_nets, tmp_path, official_layout_pth=True)
    (tmp_path / OFFICIAL_FILES["warping_module"]).unlink()
    assert missing_weight_files(tmp_path) == [OFFICIAL_FILES["warping_module"]]
    with pytest.raises(WeightsError) as e:
        load_networks(tmp_path, config=TINY)
    msg = str(e.value)
    assert "warping_module.pth" in msg and "weights_dir" in msg and "pretrained_weights" in msg
    assert isinstance(e.value, MissingWeightsError) and e.value.missing == [OFFICIAL_FILES["warping_module"]]


def test_missing_folder(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        load_networks(tmp_path / "nope")


def test_stitching_file_optional(tiny_nets, tmp_path):
    save_networks(tiny_nets, tmp_path, official_layout_pth=True)
    (tmp_path / OFFICIAL_FILES["stitching_retargeting_module"]).unlink()
    nets = load_networks(tmp_path, config=TINY)
    assert nets.stitching is None
    with pytest.raises(WeightsError, match="stitching_retargeting_module"):
        load_networks(tmp_path, config=TINY, require_stitching=True)


def test_pickle_code_is_refused(tiny_nets, tmp_path):
    save_networks(tiny_nets, tmp_path, official_layout_pth=True)
    path = tmp_path / OFFICIAL_FILES["motion_extractor"]
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    sd = torch.load(path, weights_only=True)
    sd["evil"] = Evil()
    torch.save(sd, path)
    with pytest.raises(WeightsError, match="pickle"):
        load_networks(tmp_path, config=TINY)
    assert not marker.exists()


def test_wrong_shape_names_file_and_key(tiny_nets, tmp_path):
    save_networks(tiny_nets, tmp_path, official_layout_pth=True)
    path = tmp_path / OFFICIAL_FILES["spade_generator"]
    sd = torch.load(path, weights_only=True)
    sd["fc.bias"] = torch.zeros(3)
    torch.save(sd, path)
    with pytest.raises(WeightsError) as e:
        load_networks(tmp_path, config=TINY)
    assert "spade_generator.pth" in str(e.value) and "'fc.bias'" in str(e.value)


@pytest.mark.parametrize("change", ["missing", "unexpected"])
def test_missing_or_unexpected_key(tiny_nets, tmp_path, change):
    save_networks(tiny_nets, tmp_path, official_layout_pth=True)
    path = tmp_path / OFFICIAL_FILES["appearance_feature_extractor"]
    sd = torch.load(path, weights_only=True)
    if change == "missing":
        del sd["second.bias"]
    else:
        sd["extra.weight"] = torch.zeros(1)
    torch.save(sd, path)
    with pytest.raises(WeightsError, match=f"{change} key '(second.bias|extra.weight)'"):
        load_networks(tmp_path, config=TINY)


def test_full_size_file_into_default_config_is_strict(tiny_nets, tmp_path):
    """Tiny files loaded as if official: the error names the file and the first offending key."""
    save_networks(tiny_nets, tmp_path, official_layout_pth=True)
    with pytest.raises(WeightsError, match="appearance_feature_extractor.pth: missing key 'resblocks_3d.3dr1"):
        load_networks(tmp_path)
    path = tmp_path / OFFICIAL_FILES["appearance_feature_extractor"]
    sd = {k: v for k, v in torch.load(path, weights_only=True).items()}
    full = RendererNetworks(RendererConfig(), with_stitching=False).appearance.state_dict()
    sd.update({k: v for k, v in full.items() if k not in sd})
    torch.save(sd, path)
    with pytest.raises(WeightsError, match="key 'first.conv.weight' has shape \\(8, 3, 3, 3\\), the network "
                                           "expects \\(64, 3, 3, 3\\)"):
        load_networks(tmp_path)


def test_corrupt_file(tiny_nets, tmp_path):
    save_networks(tiny_nets, tmp_path, official_layout_pth=True)
    (tmp_path / OFFICIAL_FILES["warping_module"]).write_bytes(b"\x00garbage" * 10)
    with pytest.raises(WeightsError, match="warping_module.pth is not a readable"):
        load_networks(tmp_path, config=TINY)
    (tmp_path / OFFICIAL_FILES["warping_module"]).write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(WeightsError, match="warping_module.pth"):
        load_networks(tmp_path, config=TINY)


def test_flattened_stitching_keys(tiny_nets, tmp_path):
    """Third-party flattened files (``retarget_shoulder_module.mlp.0.bias``) load too."""
    save_networks(tiny_nets, tmp_path, official_layout_pth=True)
    path = tmp_path / OFFICIAL_FILES["stitching_retargeting_module"]
    raw = torch.load(path, weights_only=True)
    flat = {f"{sub}_module.{k.removeprefix('module.')}": v for sub, sd in raw.items() for k, v in sd.items()}
    torch.save(flat, path)
    _same_weights(tiny_nets, load_networks(tmp_path, config=TINY))


def test_half_precision_cpu_refused(tiny_nets):
    with pytest.raises(ValueError, match="CUDA"):
        Renderer(tiny_nets, device="cpu", half=True)


def test_tiny_renderer_outputs(tiny_nets):
    r = Renderer(tiny_nets, device="cpu")
    rng = np.random.default_rng(0)
    src = r.prepare_source(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8))
    assert src.feature.shape == (1, 16, 2, 64, 64) and src.x_s.shape == (1, 21, 3)
    frames = r.render(src, src.x_s.repeat(3, 1, 1), batch_size=2)
    assert frames.shape == (3, 512, 512, 3) and frames.dtype == np.uint8
    # frame 2 was rendered in a batch of its own: batching changes rounding only
    assert np.abs(frames[0].astype(int) - frames[2]).max() <= 1


def test_rename_keys():
    t = torch.zeros(1)
    assert rename_keys({"module.mlp.0.weight": t, "a.module.b": t}) == {"mlp.0.weight": t, "a.b": t}
    flat = {"retarget_shoulder_module.mlp.0.bias": t, "retarget_mouth.module.mlp.0.bias": t, "other": t,
            "retarget_shoulder_module.note": "not a tensor"}
    assert rename_keys(flat, ("retarget_shoulder_module.", "retarget_shoulder.")) == {"mlp.0.bias": t}
    assert rename_keys(flat, ("retarget_mouth.",)) == {"mlp.0.bias": t}


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64, torch.int32])
def test_dtype_mismatch_names_file_and_key(tiny_nets, tmp_path, dtype):
    save_networks(tiny_nets, tmp_path, official_layout_pth=True)
    path = tmp_path / OFFICIAL_FILES["warping_module"]
    sd = torch.load(path, weights_only=True)
    key = next(k for k, v in sd.items() if (v.dtype == torch.int64) == (dtype == torch.int32))
    sd[key] = sd[key].to(dtype)
    torch.save(sd, path)
    with pytest.raises(WeightsError) as e:
        load_networks(tmp_path, config=TINY)
    msg = str(e.value)
    assert "warping_module.pth" in msg and f"key '{key}' has dtype {str(dtype).removeprefix('torch.')}" in msg


def test_newer_of_pth_and_safetensors_is_loaded(tmp_path, caplog):
    """A leftover .safetensors does not shadow a newer .pth (and the reverse); the file loaded is logged."""
    old, new = RendererNetworks.random(TINY, seed=1), RendererNetworks.random(TINY, seed=2)
    save_networks(old, tmp_path)  # safetensors
    save_networks(new, tmp_path, official_layout_pth=True)
    pths, sts = sorted(tmp_path.rglob("*.pth")), sorted(tmp_path.rglob("*.safetensors"))
    assert len(pths) == len(sts) == 5
    for p in sts:
        os.utime(p, (1_000_000, 1_000_000))
    for p in pths:
        os.utime(p, (2_000_000, 2_000_000))
    assert weight_file(tmp_path, "spade_generator").suffix == ".pth"
    with caplog.at_level(logging.INFO, logger="lp_renderer.weights"):
        _same_weights(new, load_networks(tmp_path, config=TINY))
    messages = [r.getMessage() for r in caplog.records]
    assert any("spade_generator.pth is newer than" in m and r.levelno == logging.WARNING
               for m, r in zip(messages, caplog.records))
    assert any(m.startswith("loading ") and m.endswith("motion_extractor.pth") for m in messages)
    for p in sts:  # a fresh conversion wins again (a tie goes to the safetensors file too)
        os.utime(p, (2_000_000, 2_000_000))
    assert weight_file(tmp_path, "spade_generator").suffix == ".safetensors"
    _same_weights(old, load_networks(tmp_path))


def test_neutral_expression_file(tmp_path):
    assert load_neutral_expression(tmp_path) is None
    arr = np.random.default_rng(0).standard_normal((1, 21, 3))
    (tmp_path / "lip_array.pkl").write_bytes(pickle.dumps(arr, protocol=2))
    got = load_neutral_expression(tmp_path)
    assert got.dtype == torch.float32 and torch.allclose(got, torch.from_numpy(arr).float())
    (tmp_path / "lip_array.pkl").write_bytes(pickle.dumps(np.zeros((1, 21, 3), np.int64), protocol=4))
    with pytest.raises(WeightsError, match="int64 array"):
        load_neutral_expression(tmp_path)


def test_to_tensor_validates_float_tensors(tiny_nets):
    r = Renderer(tiny_nets, device="cpu")
    ok = torch.rand(2, 3, 256, 256)
    assert r.to_tensor(ok).shape == (2, 3, 256, 256)
    with pytest.raises(InputError, match=r"\(B, 3, 256, 256\), not \(2, 256, 256, 3\)"):
        r.to_tensor(torch.rand(2, 256, 256, 3))
    with pytest.raises(InputError, match=r"\(B, 3, 256, 256\), not \(3, 256, 256\)"):
        r.to_tensor(torch.rand(3, 256, 256))
    with pytest.raises(InputError, match=r"values in \[0, 1\].* to 255"):
        r.to_tensor(ok * 255)
    with pytest.raises(InputError, match=r"values in \[0, 1\]"):
        r.to_tensor(torch.full((1, 3, 256, 256), float("nan")))
    with pytest.raises(InputError, match="uint8"):
        r.to_tensor(np.zeros((256, 256, 3), np.float32))
    with pytest.raises(InputError, match="RGB images"):
        r.to_tensor(np.zeros((256, 256, 4), np.uint8))

