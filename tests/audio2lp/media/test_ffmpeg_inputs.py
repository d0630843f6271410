"""ffmpeg reads local files only: every input audio2lp hands it goes through the ``file:`` protocol (so a file name
that looks like a URL or a protocol is a file name) or a pipe, with ``-protocol_whitelist file,pipe`` (so a
playlist cannot make ffmpeg fetch a URL)."""

from __future__ import annotations

import socket
import subprocess
import threading

import numpy as np
import pytest

from audio2lp.errors import AudioError
from audio2lp.media.audio import load_audio
from audio2lp.media.probe import probe_media, probe_video
from audio2lp.media.reader import read_frames
from audio2lp.media.writer import VideoWriter
from tests.audio2lp.media.synthetic import EXE, make_video


@pytest.fixture
def tcp_listener():
    """A loopback TCP port that counts the connections made to it (and closes each at once)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.settimeout(0.2)
    connections: list[tuple] = []
    stop = threading.Event()

    def accept():
        while not stop.is_set():
            try:
                conn, addr = sock.accept()
            except OSError:
                continue
            connections.append(addr)
            conn.close()

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield sock.getsockname()[1], connections
    stop.set()
    t.join(5)
    sock.close()


def test_a_file_named_like_a_network_address_is_read_as_a_file(tcp_listener, tmp_path, monkeypatch):
    """A local file called ``tcp:127.0.0.1:PORT`` (given relative, as a user may on the command line) is read as the
    file it is; ffmpeg opens no connection."""
    port, connections = tcp_listener
    monkeypatch.chdir(tmp_path)
    name = f"tcp:127.0.0.1:{port}"
    make_video(tmp_path / "talk.m4a", 3, 25, audio=1.0, extra=["-vn", "-f", "mp4"])
    (tmp_path / "talk.m4a").rename(tmp_path / name)
    assert abs(len(load_audio(name)) / 16000 - 1.0) < 0.05
    assert probe_media(name, AudioError, "audio").has_audio
    assert connections == []


def test_file_names_that_look_like_protocols_are_files(tmp_path, monkeypatch):
    """A local file called ``data:...`` or ``subfile:...`` is read as the file it is."""
    monkeypatch.chdir(tmp_path)
    make_video(tmp_path / "data:clip.mp4", 6, 25, audio=0.5)
    make_video(tmp_path / "subfile:talk.m4a", 3, 25, audio=1.0, extra=["-vn"])
    assert probe_video("data:clip.mp4").n_frames == 6
    assert len(list(read_frames("data:clip.mp4"))) == 6
    assert probe_media("subfile:talk.m4a", AudioError, "audio").has_audio
    assert abs(len(load_audio("subfile:talk.m4a")) / 16000 - 1.0) < 0.05
    with VideoWriter(tmp_path / "out.mp4", 25, audio="subfile:talk.m4a") as w:
        for _ in range(5):
            w.write(np.zeros((32, 32, 3), np.uint8))
    assert probe_video(tmp_path / "out.mp4").has_audio


@pytest.fixture
def ffmpeg_commands(monkeypatch):
    """Every ffmpeg command line started (through subprocess.Popen, which subprocess.run uses too)."""
    seen: list[list[str]] = []
    original = subprocess.Popen.__init__

    def record(self, args, *a, **kw):
        if isinstance(args, (list, tuple)) and args and args[0] == EXE:
            seen.append([str(x) for x in args])
        original(self, args, *a, **kw)

    monkeypatch.setattr(subprocess.Popen, "__init__", record)
    return seen


def _inputs(cmd: list[str]) -> list[tuple[list[str], str]]:
    """(the options before each ``-i``, its argument)."""
    out, start = [], 0
    for k, arg in enumerate(cmd):
        if arg == "-i":
            out.append((cmd[start:k], cmd[k + 1]))
            start = k + 2
    return out


def test_every_input_audio2lp_hands_ffmpeg_is_local(tiny_weights, tmp_path, ffmpeg_commands):
    """A drive with a driving video (probe, decode, audio mux) and a speak with an m4a (probe, decode, mux): every
    ``-i`` has the protocol whitelist and a ``file:`` or ``pipe:`` argument."""
    from audio2lp.api import Animator
    from tests.conftest import REPO

    portrait = REPO / "examples" / "portrait.jpg"
    import cv2

    face = cv2.cvtColor(cv2.imread(str(portrait)), cv2.COLOR_BGR2RGB)
    driving = tmp_path / "driving.mp4"
    with VideoWriter(driving, 25, audio=np.zeros(8000, np.float32)) as w:
        for _ in range(4):
            w.write(face)
    speech = tmp_path / "speech.m4a"
    subprocess.run([EXE, "-v", "error", "-i", str(REPO / "examples" / "speech.flac"), "-t", "1", "-c:a", "aac",
                    str(speech)], check=True)
    ffmpeg_commands.clear()
    anim = Animator(tiny_weights, device="cpu", progress=False, batch_size=4)
    anim.drive(portrait, driving, tmp_path / "drive.mp4")
    anim.speak(portrait, speech, tmp_path / "speak.mp4", blink=False, pose_scale=0)
    with_inputs = [c for c in ffmpeg_commands if "-i" in c]
    assert len(with_inputs) >= 6, ffmpeg_commands
    for cmd in with_inputs:
        for before, target in _inputs(cmd):
            assert "-protocol_whitelist" in before, cmd
            assert before[before.index("-protocol_whitelist") + 1] == "file,pipe", cmd
            assert target.startswith(("file:", "pipe:")), cmd
