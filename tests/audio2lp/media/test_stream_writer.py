"""Progressive stream outputs (audio2lp/media/stream_writer.py): the fragmented mp4 plays while written and is
renamed when closed; an aborted one leaves its playable prefix; y4m frames are what ffmpeg reads."""

from __future__ import annotations

import io

import numpy as np

from audio2lp.media.probe import probe_video
from audio2lp.media.reader import read_frames
from audio2lp.media.stream_writer import FragmentedMp4Writer, Y4mWriter, partial_path


def _frame(i: int, h: int = 63, w: int = 80) -> tuple[np.ndarray, np.ndarray]:
    img = np.zeros((h, w, 3), np.uint8)
    img[:, : (i * 3) % w] = 200  # a bar that grows: frames differ
    return img, (0.3 * np.sin(np.arange(640) * 0.05 * (i + 1))).astype(np.float32)


def test_fragmented_mp4_plays_while_written_and_is_renamed(tmp_path):
    out = tmp_path / "live.mp4"
    w = FragmentedMp4Writer(out, (63, 80), crf=20)  # odd height: padded to even
    assert partial_path(out) == tmp_path / "live.partial.mp4"
    for i in range(40):
        w.write(*_frame(i))
        if i == 30:
            seen = 0
            for _ in range(50):  # ffmpeg writes the fragments of the first ~second meanwhile
                try:
                    seen = sum(1 for _ in read_frames(partial_path(out)))
                except Exception:  # noqa: BLE001 - not written yet
                    seen = 0
                if seen:
                    break
                import time

                time.sleep(0.2)
            assert seen >= 12 and not out.exists()
    w.close()
    assert out.is_file() and not partial_path(out).exists()
    info = probe_video(out, count_frames=True)
    assert info.n_frames == 40 and (info.width, info.height) == (80, 64) and info.has_audio
    frames = list(read_frames(out))
    assert frames[5][:63, 5].mean() > 150 > frames[5][:63, 40].mean()  # the bar of frame 5 (15 px)


def test_aborted_mp4_keeps_a_playable_prefix(tmp_path):
    out = tmp_path / "cut.mp4"
    w = FragmentedMp4Writer(out, (64, 80))
    for i in range(30):
        w.write(*_frame(i, 64))
    w.abort(keep=True)
    assert not out.exists() and sum(1 for _ in read_frames(partial_path(out))) == 30
    w = FragmentedMp4Writer(tmp_path / "gone.mp4", (64, 80))
    w.write(*_frame(0, 64))
    w.abort(keep=False)
    assert not list(tmp_path.glob("gone*"))


def test_y4m_frames(tmp_path):
    buf = io.BytesIO()
    w = Y4mWriter(buf, (64, 80))
    for i in range(3):
        w.write(_frame(i, 64)[0])
    w.close()
    data = buf.getvalue()
    assert data.startswith(b"YUV4MPEG2 W80 H64 F25:1 Ip A1:1 C444\n")
    path = tmp_path / "f.y4m"
    path.write_bytes(data)
    frames = list(read_frames(path))
    assert len(frames) == 3
    want = _frame(2, 64)[0].astype(int)
    assert np.abs(frames[2].astype(int) - want).max() <= 3  # BT.601 limited range there and back
