"""`audio2lp export onnx` and `--backend onnxruntime` on speak / drive, from the command line, against the PyTorch
backend on the same (tiny random) weights: the frames the renderer hands to paste-back differ by at most 1 level
(float rounding of the same folded maths; the networks themselves are compared in
tests/lp_renderer/test_onnx_backend.py, at full size on the conformance cases)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from audio2lp.apps.cli import main
from audio2lp.media.audio import load_audio, write_wav
from audio2lp.media.probe import probe_video
from lp_renderer.onnx_backend import OnnxRenderer
from lp_renderer.renderer import Renderer
from tests.conftest import REPO


@pytest.fixture(scope="module")
def onnx_dir(tiny_weights, tmp_path_factory):
    out = tmp_path_factory.mktemp("exported") / "onnx"
    assert main(["export", "onnx", str(out), "--weights", str(tiny_weights)]) == 0
    return out


@pytest.fixture
def rendered(monkeypatch):
    """The uint8 frames each renderer class returns from ``render`` (what paste-back receives)."""
    seen: dict[str, list[np.ndarray]] = {}
    original = Renderer.render

    def spy(self, source, x_d, *args, **kwargs):
        out = original(self, source, x_d, *args, **kwargs)
        seen.setdefault(type(self).__name__, []).append(out)
        return out

    monkeypatch.setattr(Renderer, "render", spy)
    return seen


def test_export_onnx_from_the_cli(onnx_dir, tiny_weights, capsys):
    manifest = json.loads((onnx_dir / "manifest.json").read_text())
    assert sorted(manifest["networks"]) == ["appearance", "decoder", "eye", "lip", "motion", "stitching", "warping"]
    assert isinstance(OnnxRenderer(onnx_dir), OnnxRenderer)


def test_speak_with_onnxruntime_matches_pytorch(onnx_dir, tiny_weights, tmp_path, rendered, capsys):
    audio = write_wav(tmp_path / "speech.wav", load_audio(REPO / "examples" / "speech.flac")[: 16000])
    common = [str(REPO / "examples" / "portrait.jpg"), str(audio), "--weights", str(tiny_weights), "--device", "cpu",
              "-q", "--seed", "1", "--no-pasteback"]
    assert main(["speak", *common, "-o", str(tmp_path / "pt.mp4")]) == 0, capsys.readouterr()
    assert main(["speak", *common, "-o", str(tmp_path / "ort.mp4"), "--backend", "onnxruntime",
                 "--onnx-dir", str(onnx_dir)]) == 0, capsys.readouterr()
    pt, ort = np.concatenate(rendered["Renderer"]), np.concatenate(rendered["OnnxRenderer"])
    assert pt.shape == ort.shape == (25, 512, 512, 3)
    assert np.abs(pt.astype(np.int32) - ort.astype(np.int32)).max() <= 1
    assert probe_video(tmp_path / "ort.mp4").n_frames == 25


@pytest.mark.realdata
def test_drive_with_onnxruntime_exports_into_the_cache_once(tiny_weights, data_dir, tmp_path, rendered, capsys,
                                                            monkeypatch):
    """Without --onnx-dir the weights are exported once into the cache folder and reused."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    video = data_dir / "talking" / "LipNet__bbaf2n.mpg"
    common = [str(data_dir / "portraits" / "EAMM__14.png"), str(video), "--weights", str(tiny_weights), "--device",
              "cpu", "-q", "--max-frames", "3"]
    for name in ("ort1", "ort2"):
        assert main(["drive", *common, "-o", str(tmp_path / f"{name}.mp4"), "--backend", "onnxruntime"]) == 0, \
            capsys.readouterr()
    assert main(["drive", *common, "-o", str(tmp_path / "pt.mp4")]) == 0
    folders = list((tmp_path / "cache" / "audio2lp" / "onnx").iterdir())
    assert len(folders) == 1 and (folders[0] / "manifest.json").is_file()
    ort, pt = np.concatenate(rendered["OnnxRenderer"][:3]), np.concatenate(rendered["Renderer"])
    assert ort.shape == pt.shape == (3, 512, 512, 3)
    assert np.abs(pt.astype(np.int32) - ort.astype(np.int32)).max() <= 1
    assert probe_video(tmp_path / "ort2.mp4").n_frames == 3


def test_backend_errors_are_one_line(tiny_weights, tmp_path, capsys):
    base = ["speak", str(REPO / "examples" / "portrait.jpg"), str(REPO / "examples" / "speech.flac"), "-o",
            str(tmp_path / "o.mp4"), "--weights", str(tiny_weights), "-q", "--backend", "onnxruntime"]
    for extra, needle in [(["--onnx-dir", str(tmp_path)], "not an ONNX export"),
                          (["--compile"], "cannot be combined with --compile")]:
        assert main(base + extra) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err
    assert not (tmp_path / "o.mp4").exists()
    assert main(["export", "onnx", str(tmp_path / "x"), "--weights", str(tmp_path / "none")]) == 2
    assert "error: " in capsys.readouterr().err
