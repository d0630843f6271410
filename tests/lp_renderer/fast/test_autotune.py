"""Per-layer kernel autotuning (lp_renderer.fast.autotune): every kernel is the plain convolution's maths, the
tuned renderer gives the untuned one's output, the cache is written once and read back, the switch turns it all
off, and a corrupt or foreign cache file is survived."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from torch import nn

from lp_renderer import Renderer, RendererConfig, RendererNetworks
from lp_renderer.fast import autotune
from lp_renderer.fast.autotune import KERNELS, AutotunedConv
from lp_renderer.fast.fft_conv import FFTConv3d
from lp_renderer.fast.nnpack import NNPACKConv2d, nnpack_usable

DEPTH_SPLIT_OFFERED = autotune.depth_split_offered


@pytest.fixture(autouse=True)
def kernel_cache_dir(tmp_path, monkeypatch):
    """A fresh cache dir and a fresh process state for every test; the switch on; the machine taken as quiet (the
    load average of a shared test machine must not decide whether a choice is timed again)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(autotune, "machine_busy", lambda: False)
    monkeypatch.setattr(autotune, "BUDGET_S", 600.0)  # nor whether the tuning budget runs out (a test sets its own)
    monkeypatch.setattr(autotune, "depth_split_offered", lambda: True)  # (only on CPUs without AVX-512 otherwise)
    monkeypatch.delenv(autotune.ENV_SWITCH, raising=False)
    autotune.reset()
    yield tmp_path / "cache" / "lp_renderer" / "kernels"
    autotune.reset()


@pytest.fixture
def timings(monkeypatch):
    """Counts the calls of the timing function."""
    calls = []
    real = autotune.measure

    def counted(fn, *args, **kwargs):
        calls.append(fn)
        return real(fn, *args, **kwargs)

    monkeypatch.setattr(autotune, "measure", counted)
    return calls


# (conv, input shape): one case per kernel's domain; small shapes
CASES = {
    "conv2d 3x3": (lambda: nn.Conv2d(5, 7, 3, padding=1), (2, 5, 9, 11)),
    "conv2d 1x1": (lambda: nn.Conv2d(6, 4, 1), (1, 6, 8, 8)),
    "conv2d 2x2 pad 1, no bias": (lambda: nn.Conv2d(3, 8, 2, padding=1, bias=False), (1, 3, 7, 7)),
    "conv2d 7x7 asymmetric pad": (lambda: nn.Conv2d(4, 2, (7, 5), padding=(3, 1)), (1, 4, 12, 10)),
    "conv2d stride 2": (lambda: nn.Conv2d(4, 6, 3, stride=2, padding=1), (2, 4, 10, 10)),
    "conv2d depthwise": (lambda: nn.Conv2d(6, 6, 7, padding=3, groups=6), (1, 6, 9, 9)),
    "conv3d 3x3x3 large map": (lambda: nn.Conv3d(3, 5, 3, padding=1), (2, 3, 4, 32, 32)),
    "conv3d 3x3x3 small map": (lambda: nn.Conv3d(4, 3, 3, padding=1), (1, 4, 3, 8, 8)),
    "conv3d 1x1x1": (lambda: nn.Conv3d(4, 3, 1), (1, 4, 3, 8, 8)),
    "conv3d 5x5x5 fft": (lambda: nn.Conv3d(3, 4, 5, padding=2), (1, 3, 4, 20, 20)),
}


def _layer(case: str) -> tuple[AutotunedConv, torch.Tensor]:
    make, shape = CASES[case]
    torch.manual_seed(0)
    conv = make().eval().requires_grad_(False)
    fft = FFTConv3d(conv, tile=8) if case.endswith("fft") else None
    return AutotunedConv(conv, fft=fft), torch.randn(shape)


def test_every_kernel_is_offered_somewhere():
    offered = {name for case in CASES for name in _layer(case)[0].kernels(_layer(case)[1])}
    expected = set(KERNELS) | {"fft"}
    if not nnpack_usable():
        expected -= {"nnpack", "nnpack-depth"}
    assert offered == expected


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_kernel_gives_the_plain_convolution(case):
    layer, x = _layer(case)
    with torch.no_grad():
        ref = layer.conv(x)
        names = layer.kernels(x)
        assert names[0] == "onednn" and len(names) >= 1
        for name in names:
            out = layer.run(name, x)
            assert out.shape == ref.shape and out.is_contiguous(), name
            assert torch.allclose(out, ref, atol=1e-5, rtol=1e-4), (name, float((out - ref).abs().max()))
        # the layer itself, tuned: the fastest kernel's output
        assert torch.allclose(layer(x), ref, atol=1e-5, rtol=1e-4)
        assert set(layer.chosen.values()) <= set(names)


def test_outside_the_fast_path_it_is_the_plain_layer(timings):
    layer, x = _layer("conv2d 3x3")
    with torch.no_grad():
        layer.conv.double()  # float64: the plain layer
        assert torch.equal(layer(x.double()), nn.functional.conv2d(x.double(), layer.weight, layer.bias, padding=1))
        layer.conv.float()
    x.requires_grad_(True)
    layer.conv.requires_grad_(True)
    out = layer(x)  # gradients wanted: the plain layer, differentiable
    out.sum().backward()
    assert x.grad is not None and not timings and not layer.chosen


def test_the_fastest_kernel_is_kept(monkeypatch):
    """With made-up timings the last kernel tried is the fastest: it is chosen, its output returned, recorded."""
    layer, x = _layer("conv2d 3x3")
    n = len(layer.kernels(x))
    assert n >= 3
    clock = iter(range(n, 0, -1))

    def fake(fn, runs=autotune.RUNS, prune_above=float("inf")):
        return float(next(clock)), fn()

    monkeypatch.setattr(autotune, "measure", fake)
    with torch.no_grad():
        out = layer(x)
    tried = [layer._untuned(x)] + [k for k in layer.kernels(x) if k != layer._untuned(x)]
    assert layer.chosen[tuple(x.shape)] == tried[-1]
    assert torch.allclose(out, layer.conv(x), atol=1e-5)
    entry = autotune.kernel_cache().entries[layer.signature(x)]
    assert entry["kernel"] == tried[-1] and len(entry["ms"]) == n


def test_slow_kernels_are_pruned_after_their_warm_up():
    calls = []

    def slow():
        calls.append(1)
        return torch.zeros(1)

    t, _ = autotune.measure(slow, runs=3, prune_above=-1.0)  # any warm-up is "too slow"
    assert len(calls) == 1 and t >= 0
    autotune.measure(slow, runs=3)
    assert len(calls) == 1 + 4


def _tiny(seed: int = 0, **kw) -> Renderer:
    return Renderer(RendererNetworks.random(RendererConfig.tiny(), seed=seed), device="cpu", **kw)


def _frame(r: Renderer) -> tuple[torch.Tensor, torch.Tensor]:
    """W's output (2, C, 64, 64) and G's images (2, 3, 512, 512) for a random source and two driving poses."""
    g = torch.Generator().manual_seed(0)
    img = (torch.rand(256, 256, 3, generator=g) * 255).to(torch.uint8).numpy()
    src = r.prepare_source(img)
    x_d = src.x_s + 0.02 * torch.randn(2, 21, 3, generator=g)
    warped = r.warp(src, x_d)["out"]
    return warped, r.decode(warped)


def _close(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]) -> None:
    """W to float rounding; the images to 1e-3 (a random tiny G saturates its sigmoid and amplifies rounding)."""
    assert torch.allclose(a[0], b[0], atol=1e-4, rtol=1e-4), float((a[0] - b[0]).abs().max())
    assert torch.allclose(a[1], b[1], atol=1e-3), float((a[1] - b[1]).abs().max())


def test_tuned_renderer_matches_the_untuned_one_and_caches_its_choices(kernel_cache_dir, timings, caplog):
    plain = _tiny(autotune=False)
    assert not plain.autotune and not any(isinstance(m, AutotunedConv) for m in plain.nets.modules())
    assert any(isinstance(m, NNPACKConv2d) for m in plain.nets.modules())  # exactly today's CPU layer set
    ref = _frame(plain)
    assert not timings
    assert not _tiny().autotune  # opt-in
    tuned = _tiny(autotune=True)
    assert tuned.autotune
    layers = [m for m in tuned.nets.modules() if isinstance(m, AutotunedConv)]
    assert sum(m.default == "nnpack" for m in layers) >= 4 and any(m.default == "fft" for m in layers)
    with caplog.at_level(logging.INFO, logger="lp_renderer.fast.autotune"):
        out = _frame(tuned)
    _close(out, ref)
    assert timings and "kernel autotuning: conv" in caplog.text
    files = list(kernel_cache_dir.glob("*.json"))
    assert files == [autotune.cache_path()]
    data = json.loads(files[0].read_text())
    assert data["machine"] == autotune.machine() and data["machine"]["threads"] == torch.get_num_threads()
    assert len(data["entries"]) >= 10 and all(e["kernel"] in (*KERNELS, "fft") for e in data["entries"].values())
    # a second renderer in a new process state reads the file and times nothing
    autotune.reset()
    timings.clear()
    again = _frame(_tiny(autotune=True))
    assert not timings
    _close(again, ref)


def test_the_switch_turns_tuning_off(monkeypatch, kernel_cache_dir, timings):
    monkeypatch.setenv(autotune.ENV_SWITCH, "0")
    r = _tiny(autotune=True)  # the environment wins
    assert not r.autotune and not any(isinstance(m, AutotunedConv) for m in r.nets.modules())
    _frame(r)
    assert not timings and not kernel_cache_dir.exists()
    monkeypatch.delenv(autotune.ENV_SWITCH)
    _frame(_tiny(autotune=False))
    assert not timings and not kernel_cache_dir.exists()
    # a layer built with tuning on, then the switch turned off: its fixed kernel, nothing timed
    layer, x = _layer("conv2d 3x3")
    layer.default = "nnpack" if nnpack_usable() else "onednn"
    monkeypatch.setenv(autotune.ENV_SWITCH, "off")
    with torch.no_grad():
        layer(x)
    assert not timings and layer.chosen[tuple(x.shape)] == layer.default


def test_autotune_goes_with_the_cpu_layer_set():
    assert not _tiny(layers="cuda").autotune and not _tiny(fold=False).autotune
    with pytest.raises(ValueError, match="autotune"):
        _tiny(layers="plain", autotune=True)


def test_out_of_budget_layers_keep_their_fixed_kernels(monkeypatch, kernel_cache_dir, timings):
    monkeypatch.setattr(autotune, "BUDGET_S", 0.0)
    r = _tiny(autotune=True)
    _frame(r)
    assert not timings and not kernel_cache_dir.exists()
    chosen = {m.default: set(m.chosen.values()) for m in r.nets.modules() if isinstance(m, AutotunedConv)}
    assert chosen["fft"] == {"fft"}
    if nnpack_usable():
        assert chosen["nnpack"] == {"nnpack"}


@pytest.mark.parametrize("content", ["{not json", json.dumps({"format": 1, "machine": {"cpu": "another"},
                                                               "entries": {"x": {"kernel": "native"}}}),
                                     json.dumps([1, 2, 3])])
def test_a_corrupt_or_foreign_cache_file_is_ignored_and_rewritten(content, kernel_cache_dir, timings, caplog):
    path = autotune.cache_path()
    path.parent.mkdir(parents=True)
    path.write_text(content)
    layer, x = _layer("conv2d 3x3")
    with caplog.at_level(logging.WARNING, logger="lp_renderer.fast.autotune"), torch.no_grad():
        out = layer(x)
    assert "corrupt or from another machine" in caplog.text
    assert torch.allclose(out, layer.conv(x), atol=1e-5) and timings
    data = json.loads(path.read_text())
    assert data["machine"] == autotune.machine() and list(data["entries"]) == [layer.signature(x)]
    assert not list(path.parent.glob(".kernels-*"))  # no temporary file left behind


def test_an_unwritable_cache_dir_keeps_the_choice_for_the_process(monkeypatch, tmp_path, timings, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setattr(autotune, "cache_dir", lambda: blocker / "kernels")  # a file where a folder should be
    layer, x = _layer("conv2d 1x1")
    with caplog.at_level(logging.WARNING, logger="lp_renderer.fast.autotune"), torch.no_grad():
        layer(x)
        n = len(timings)
        AutotunedConv(layer.conv)(x)  # another layer of the same signature: the in-memory choice
    assert "cannot be written" in caplog.text and n > 0 and len(timings) == n


def test_the_cache_key_names_the_machine():
    desc = autotune.machine()
    assert {"cpu", "isa", "torch", "capability", "threads"} <= set(desc)
    other = dict(desc, threads=desc["threads"] + 1)
    assert autotune.cache_path(other) != autotune.cache_path(desc)
    assert np.all([isinstance(f, str) for f in desc["isa"]])


def test_a_choice_timed_on_a_busy_machine_is_timed_again_when_it_is_quiet(monkeypatch, timings):
    layer, x = _layer("conv2d 1x1")
    monkeypatch.setattr(autotune, "machine_busy", lambda: True)
    with torch.no_grad():
        layer(x)
    n = len(timings)
    assert n > 0 and autotune.kernel_cache().entries[layer.signature(x)]["busy"]
    with torch.no_grad():
        AutotunedConv(layer.conv)(x)  # still busy: the recorded choice is the best there is
    assert len(timings) == n
    monkeypatch.setattr(autotune, "machine_busy", lambda: False)
    monkeypatch.setattr(autotune, "depth_split_offered", lambda: True)  # (only on CPUs without AVX-512 otherwise)
    with torch.no_grad():
        AutotunedConv(layer.conv)(x)
    assert len(timings) > n and not autotune.kernel_cache().entries[layer.signature(x)]["busy"]


def test_the_depth_split_is_offered_on_cpus_without_avx512(monkeypatch):
    layer, x = _layer("conv3d 3x3x3 large map")
    monkeypatch.setattr(autotune, "depth_split_offered", DEPTH_SPLIT_OFFERED)  # the real rule
    monkeypatch.setattr(autotune, "_cpu", lambda: ("an AVX2 CPU", ["avx", "avx2", "fma"], "AVX2"))
    assert ("nnpack-depth" in layer.kernels(x)) == nnpack_usable()
    monkeypatch.setattr(autotune, "_cpu", lambda: ("an AVX-512 CPU", ["avx", "avx2", "avx512f"], "AVX512"))
    assert "nnpack-depth" not in layer.kernels(x)


def test_the_native_kernel_is_not_tried_where_its_im2col_buffer_is_large():
    big = AutotunedConv(nn.Conv2d(64, 8, 3, padding=1))
    x = torch.empty(1, 64, 256, 256)  # 64 * 9 * 65536 floats of im2col: 151 MB
    assert "native" not in big.kernels(x) and "native" in big.kernels(x[:, :, :64, :64])
    assert "native" in AutotunedConv(nn.Conv2d(64, 8, 1)).kernels(x)  # 1x1: no buffer


def test_the_fixed_kernel_is_left_only_for_a_clear_win(monkeypatch):
    layer, x = _layer("conv2d 3x3")
    n = len(layer.kernels(x))
    times = iter([1.0] + [autotune.MARGIN + 0.01] * (n - 1))  # the others: faster, but not by the margin
    monkeypatch.setattr(autotune, "measure", lambda fn, runs=2, prune_above=0: (next(times), fn()))
    with torch.no_grad():
        layer(x)
    assert layer.chosen[tuple(x.shape)] == layer._untuned(x)


def test_concurrent_native_kernels_leave_onednn_on():
    """The ``native`` kernel turns oneDNN off for its call (a process-wide switch): calls on several threads at once
    must leave it as it was, and give the plain convolution's result."""
    import threading

    from lp_renderer.fast import autotune as at

    conv = nn.Conv2d(16, 8, 1)
    x = torch.randn(1, 16, 24, 24)
    want = conv(x)
    errors = []

    def run():
        for _ in range(50):
            if not torch.allclose(at._native(x, conv), want, atol=1e-5):
                errors.append("differs")

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert torch._C._get_mkldnn_enabled()


def test_autotuning_is_opt_in(monkeypatch):
    """Off by default; LP_RENDERER_AUTOTUNE=1 turns it on for renderers built without asking, =0 off for all."""
    assert not _tiny().autotune and _tiny(autotune=True).autotune
    monkeypatch.setenv(autotune.ENV_SWITCH, "1")
    assert _tiny().autotune and not _tiny(autotune=False).autotune
    monkeypatch.setenv(autotune.ENV_SWITCH, "0")
    assert not _tiny().autotune and not _tiny(autotune=True).autotune


def test_an_unknown_switch_value_is_named_once(monkeypatch, kernel_cache_dir, caplog):
    monkeypatch.setenv(autotune.ENV_SWITCH, "maybe")
    with caplog.at_level(logging.WARNING, logger="lp_renderer.fast.autotune"):
        assert not autotune.autotune_enabled() and autotune.autotune_enabled(True)  # taken as unset
        assert not autotune.switched_off()
    assert caplog.text.count("LP_RENDERER_AUTOTUNE=maybe is not understood") == 1
    for value, on in (("ON", True), (" yes ", True), ("Off", False), ("", False)):
        monkeypatch.setenv(autotune.ENV_SWITCH, value)
        assert autotune.autotune_enabled() is on
