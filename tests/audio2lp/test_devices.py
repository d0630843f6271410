"""Devices the machine does not have (`--half` or `--device cuda` without CUDA) and running out of GPU memory: one
`error:` line saying what to do, exit code 2, no traceback, nothing written. This machine has no GPU; running out
of GPU memory is simulated by making the render call raise PyTorch's out-of-memory error."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from audio2lp.api import Animator
from audio2lp.apps.cli import main
from audio2lp.options import OptionError
from lp_renderer import RendererConfig, RendererNetworks
from lp_renderer.errors import InputError
from lp_renderer.renderer import Renderer
from tests.conftest import REPO

PORTRAIT = REPO / "examples" / "portrait.jpg"

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="optional: these cases need a machine without CUDA")


def _cli(argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def _one_error_line(code, err, *needles):
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("error: "), err
    for needle in needles:
        assert needle in err[0], err
    assert "Traceback" not in err[0]


@pytest.mark.parametrize("flags, needles", [
    (["--half"], ["--half", "CUDA", "drop --half"]),
    (["--device", "cuda"], ["--device cuda", "CUDA", "--device cpu"]),
    (["--device", "cuda", "--half"], ["--device cuda", "--device cpu"]),
])
@pytest.mark.parametrize("command", ["speak", "drive"])
def test_cli_device_without_cuda_is_one_error_line(tiny_weights, tmp_path, capsys, command, flags, needles):
    out = tmp_path / "out.mp4"
    second = REPO / "examples" / ("speech.flac" if command == "speak" else "portrait.jpg")
    code, err = _cli([command, str(PORTRAIT), str(second), "-o", str(out), "--weights", str(tiny_weights), "-q",
                      *flags], capsys)
    _one_error_line(code, err, *needles)
    assert list(tmp_path.iterdir()) == []


def test_api_and_renderer_report_a_missing_gpu_as_input_errors():
    with pytest.raises(OptionError, match="half") as e:
        Animator("unused", half=True)
    assert e.value.option == "half" and e.value.describe("cli").startswith("--half")
    with pytest.raises(OptionError) as e:
        Animator("unused", device="cuda")
    assert e.value.option == "device" and "--device cpu" in e.value.describe("cli")
    nets = RendererNetworks.random(RendererConfig.tiny(), seed=0)
    with pytest.raises(InputError, match="CUDA"):
        Renderer(nets, device="cpu", half=True)
    with pytest.raises(InputError, match="CUDA"):
        Renderer(nets, device="cuda")


def _out_of_memory(*args, **kwargs):
    raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 7.79 GiB total "
                                      "capacity; 6.10 GiB already allocated)")


def test_gpu_out_of_memory_while_rendering_is_one_error_line(tiny_weights, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(Renderer, "render", _out_of_memory)
    out = tmp_path / "out.png"
    code, err = _cli(["drive", str(PORTRAIT), str(PORTRAIT), "-o", str(out), "--weights", str(tiny_weights), "-q",
                      "--batch-size", "4"], capsys)
    _one_error_line(code, err, "out of memory", "--batch-size", "4")
    assert list(tmp_path.iterdir()) == []


def test_gpu_out_of_memory_at_batch_size_one_suggests_the_cpu(tiny_weights, tmp_path, monkeypatch):
    monkeypatch.setattr(Renderer, "render", _out_of_memory)
    anim = Animator(tiny_weights, device="cpu", progress=False, batch_size=1)
    with pytest.raises(OptionError) as e:
        anim.drive(PORTRAIT, PORTRAIT, tmp_path / "out.png")
    assert "out of memory" in str(e.value) and "--device cpu" in e.value.describe("cli")
    assert list(tmp_path.iterdir()) == []


def test_gpu_out_of_memory_outside_rendering_is_one_error_line(tiny_weights, tmp_path, capsys, monkeypatch):
    """Out of GPU memory anywhere else (here: loading the networks) is still one error line and exit 2."""
    monkeypatch.setattr(Renderer, "from_weights", classmethod(_out_of_memory))
    code, err = _cli(["drive", str(PORTRAIT), str(PORTRAIT), "-o", str(tmp_path / "o.png"), "--weights",
                      str(tiny_weights), "-q"], capsys)
    _one_error_line(code, err, "out of memory", "--batch-size", "--device cpu")
    assert np.all([not p.exists() for p in tmp_path.iterdir()])
