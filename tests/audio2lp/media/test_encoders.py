"""The H.264 encoder choice (audio2lp/media/encoders.py): libx264, or NVENC where ffmpeg can open it;
``AUDIO2LP_VIDEO_ENCODER`` forces one, and a bad value or an NVENC that cannot run is a clear error before any
frame is rendered."""

from __future__ import annotations

import numpy as np
import pytest

from audio2lp.apps.cli import main
from audio2lp.errors import VideoError
from audio2lp.media import encoders
from audio2lp.media.encoders import ENV, encoder_args, h264_encoder, nvenc_usable, try_encode
from audio2lp.media.probe import probe_video
from audio2lp.media.writer import VideoWriter


@pytest.fixture
def nvenc(monkeypatch):
    """Set what the (cached) NVENC check answers: ``nvenc(True)``."""
    monkeypatch.delenv(ENV, raising=False)
    return lambda usable: monkeypatch.setitem(encoders._state, "nvenc", usable)


def test_auto_picks_nvenc_only_where_it_runs(nvenc, monkeypatch):
    nvenc(False)
    assert h264_encoder() == "libx264"
    nvenc(True)
    assert h264_encoder() == "h264_nvenc"
    for value, want in (("libx264", "libx264"), (" AUTO ", "h264_nvenc"), ("", "h264_nvenc")):
        monkeypatch.setenv(ENV, value)
        assert h264_encoder() == want


def test_bad_or_unusable_encoder_is_a_clear_error_before_any_file(nvenc, monkeypatch, tmp_path):
    nvenc(False)
    monkeypatch.setenv(ENV, "x265")
    with pytest.raises(VideoError, match="AUDIO2LP_VIDEO_ENCODER=x265 is not a video encoder .* auto, libx264 or "
                                         "h264_nvenc"):
        VideoWriter(tmp_path / "a.mp4", 25)
    monkeypatch.setenv(ENV, "h264_nvenc")
    with pytest.raises(VideoError, match="cannot encode with NVENC on this machine .* set it to auto or libx264"):
        VideoWriter(tmp_path / "b.mp4", 25)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="codec must be one of"):
        VideoWriter(tmp_path / "c.mp4", 25, codec="mpeg4")


def test_the_cli_says_what_to_set(nvenc, monkeypatch, tiny_weights, tmp_path, capsys):
    from tests.conftest import REPO

    monkeypatch.setenv(ENV, "hevc")
    out = tmp_path / "talk.mp4"
    code = main(["speak", str(REPO / "examples" / "portrait.jpg"), str(REPO / "examples" / "speech.flac"), "-o",
                 str(out), "--weights", str(tiny_weights), "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and "AUDIO2LP_VIDEO_ENCODER=hevc" in err[0]
    assert not out.exists()


def test_encoder_arguments():
    assert encoder_args("libx264", "medium", 18) == ["-c:v", "libx264", "-preset", "medium", "-crf", "18"]
    nv = encoder_args("h264_nvenc", "medium", 18)
    assert nv[:4] == ["-c:v", "h264_nvenc", "-preset", "p4"] and nv[nv.index("-cq") + 1] == "18"
    assert nv[nv.index("-rc") + 1] == "vbr" and nv[nv.index("-b:v") + 1] == "0"  # constant quality, no bitrate cap
    assert encoder_args("h264_nvenc", "ultrafast", 0)[3] == "p1"
    assert encoder_args("h264_nvenc", "veryslow", 0)[-3] == "1"  # cq 0 is NVENC's "automatic"
    with pytest.raises(ValueError):
        encoder_args("mpeg4", "medium", 18)


def test_the_test_encode_is_a_real_encode():
    """The check's ffmpeg command is well formed (libx264 passes it) and fails for an encoder that is not there."""
    assert try_encode("libx264") == (True, "exit code 0")
    ok, why = try_encode("no_such_encoder")
    assert not ok and "encoder" in why.lower() and "no_such_encoder" in why


def test_the_writer_uses_the_chosen_encoder(nvenc, tmp_path):
    nvenc(False)
    with VideoWriter(tmp_path / "a.mp4", 25) as w:
        assert w.codec == "libx264"
        for i in range(3):
            w.write(np.full((32, 48, 3), 40 * i, np.uint8))
    assert probe_video(tmp_path / "a.mp4").n_frames == 3


@pytest.mark.gpu
def test_nvenc_writes_a_playable_video(tmp_path):
    if not nvenc_usable():
        pytest.skip("optional: ffmpeg cannot encode with NVENC here (no NVIDIA GPU with an encoder)")
    frames = [np.full((64, 96, 3), 30 * i, np.uint8) for i in range(5)]
    with VideoWriter(tmp_path / "nv.mp4", 25) as w:
        assert w.codec == "h264_nvenc"
        for f in frames:
            w.write(f)
    info = probe_video(tmp_path / "nv.mp4")
    assert (info.n_frames, info.width, info.height) == (5, 96, 64)
