"""`audio2lp speak PORTRAIT - -o OUT`: raw PCM on standard input, video out as it is made (tiny renderer, the
repository's example portrait and speech)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from audio2lp.apps.cli import main
from audio2lp.media.audio import load_audio
from audio2lp.media.probe import probe_video
from audio2lp.media.reader import read_frames
from tests.conftest import REPO

PORTRAIT = REPO / "examples" / "portrait.jpg"
SECONDS = 1.2  # 30 frames: the tiny renderer is slow on a shared CPU


@pytest.fixture(scope="module")
def speech():
    return load_audio(REPO / "examples" / "speech.flac")[: int(SECONDS * 16000)]


class _Stdin:
    def __init__(self, data: bytes, tty: bool = False):
        self.buffer, self._tty = io.BytesIO(data), tty

    def isatty(self):
        return self._tty


class _Stdout:
    def __init__(self):
        self.buffer = io.BytesIO()

    def write(self, text):  # print() of other messages
        return len(text)

    def flush(self):
        pass


def _plays_soon(proc, partial, timeout: float = 900) -> bool:
    """True once ``partial`` holds a frame ffmpeg decodes, while ``proc`` runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if partial.is_file() and partial.stat().st_size > 2000:
            try:
                if any(True for _ in read_frames(partial)):
                    return True
            except Exception:  # noqa: BLE001 - the first fragment is still being written
                pass
        time.sleep(2)
    return False


def _cli(tiny_weights, *extra):
    return ["speak", str(PORTRAIT), "-", "--weights", str(tiny_weights), "--device", "cpu", "-q", *extra]


def test_fragmented_mp4_is_playable_while_written(tiny_weights, speech, tmp_path):
    """A real pipe: the partial file plays (whole fragments) before the input ends; at the end it becomes OUT.mp4
    with every frame and the audio."""
    out = tmp_path / "live.mp4"
    partial = tmp_path / "live.partial.mp4"
    pcm = (np.clip(speech, -1, 1) * 32767).astype("<i2").tobytes()
    cmd = [sys.executable, "-m", "audio2lp", *_cli(tiny_weights, "-o", str(out), "--input-format", "s16le")]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
    hold = len(pcm) - 2 * int(0.2 * 16000)  # all but the last 0.2 s first
    proc.stdin.write(pcm[:hold])
    proc.stdin.flush()
    assert _plays_soon(proc, partial) and not out.exists(), "the partial mp4 should play while the input is open"
    stdout, stderr = proc.communicate(input=pcm[hold:], timeout=900)
    assert proc.returncode == 0, stderr.decode()
    assert out.is_file() and not partial.exists()
    info = probe_video(out, count_frames=True)
    assert info.n_frames == round(SECONDS * 25) and info.n_frames_exact
    # the AAC track ends on a whole AAC frame (1024 samples): up to 64 ms past the last video frame
    assert info.has_audio and info.audio_codec == "aac" and SECONDS <= info.duration <= SECONDS + 0.07
    # decoded, the AAC encoder's priming and padding (a fragmented mp4 has no edit list to hide them): <= 2 frames
    assert SECONDS <= len(load_audio(out)) / 16000 <= SECONDS + 2 * 1024 / 16000
    assert b"look-ahead 240 ms" in stdout


def test_y4m_to_stdout(tiny_weights, speech, tmp_path, monkeypatch):
    stdout = _Stdout()
    monkeypatch.setattr(sys, "stdin", _Stdin(speech.astype("<f4").tobytes()))
    monkeypatch.setattr(sys, "stdout", stdout)
    rc = main(_cli(tiny_weights, "-o", "-", "--no-pasteback", "--lookahead-ms", "280"))
    monkeypatch.undo()
    assert rc == 0
    data = stdout.buffer.getvalue()
    header, _, body = data.partition(b"\n")
    assert header == b"YUV4MPEG2 W512 H512 F25:1 Ip A1:1 C444"
    frame = len(b"FRAME\n") + 3 * 512 * 512
    assert len(body) == round(SECONDS * 25) * frame and body[:6] == b"FRAME\n"
    y4m = tmp_path / "frames.y4m"
    y4m.write_bytes(data)  # ffmpeg reads it as it is
    frames = list(read_frames(y4m))
    assert len(frames) == round(SECONDS * 25) and frames[0].shape == (512, 512, 3)


def _run_error(argv, capsys, monkeypatch, stdin: _Stdin):
    monkeypatch.setattr(sys, "stdin", stdin)
    rc = main(argv)
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and "Traceback" not in err, err
    return err


def test_stream_errors(tiny_weights, tmp_path, capsys, monkeypatch):
    out = tmp_path / "x.mp4"
    pcm = np.zeros(1600, "<f4").tobytes()
    assert "standard input" in _run_error(_cli(tiny_weights, "-o", str(out)), capsys, monkeypatch,
                                          _Stdin(b"", tty=True))
    assert "--fps" in _run_error(_cli(tiny_weights, "-o", str(out), "--fps", "30"), capsys, monkeypatch,
                                 _Stdin(pcm))
    assert "--lookahead-ms" in _run_error(_cli(tiny_weights, "-o", str(out), "--lookahead-ms", "100"), capsys,
                                          monkeypatch, _Stdin(pcm))
    assert "without any samples" in _run_error(_cli(tiny_weights, "-o", str(out)), capsys, monkeypatch,
                                               _Stdin(b""))
    assert "middle of a sample" in _run_error(_cli(tiny_weights, "-o", str(out), "--input-format", "s16le"),
                                              capsys, monkeypatch, _Stdin(b"\x01"))
    assert ".mp4" in _run_error(_cli(tiny_weights, "-o", str(tmp_path / "x.avi")), capsys, monkeypatch,
                                _Stdin(pcm))
    speech_file = str(REPO / "examples" / "speech.flac")
    for extra in (["--lookahead-ms", "260"], ["--input-format", "s16le"], ["--output-format", "y4m"]):
        argv = ["speak", str(PORTRAIT), speech_file, "-o", str(out), "--weights", str(tiny_weights), *extra]
        assert "stream" in _run_error(argv, capsys, monkeypatch, _Stdin(pcm))
    argv = ["speak", str(PORTRAIT), speech_file, "-o", "-", "--weights", str(tiny_weights)]
    assert "standard output" in _run_error(argv, capsys, monkeypatch, _Stdin(pcm))
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_interrupted_stream_keeps_a_playable_prefix(tiny_weights, speech, tmp_path):
    """Ctrl-C in the middle: OUT.partial.mp4 stays (the frames made so far, playable); OUT.mp4 is not made."""
    import signal

    out = tmp_path / "cut.mp4"
    partial = tmp_path / "cut.partial.mp4"
    cmd = [sys.executable, "-m", "audio2lp", *_cli(tiny_weights, "-o", str(out))]
    # Ctrl-C as in a terminal: a shell's background job (e.g. CI started with `&`) inherits SIGINT ignored, and
    # Python then keeps ignoring it; give the command the default disposition so it gets its KeyboardInterrupt.
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO,
                            env=dict(os.environ, PYTHONPATH=str(REPO)),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    proc.stdin.write(speech[: int(0.9 * 16000)].astype("<f4").tobytes())  # fits in the pipe; the input stays open
    proc.stdin.flush()
    assert _plays_soon(proc, partial), "no playable partial file"
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr.decode()
    assert b"interrupted; the first" in stderr and not out.exists()
    assert len(list(read_frames(partial))) > 0
