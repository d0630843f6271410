"""A portrait that is a video (audio2lp.video_portrait): ping-pong order, reading frames in any order with bounded
memory (checked against the frames decoded once), tracking with lost frames, the audio priority rule."""

from __future__ import annotations

import numpy as np
import pytest

from audio2lp.api import Animator
from audio2lp.media.reader import read_frames
from audio2lp.media.writer import VideoWriter
from audio2lp.video_portrait import (
    SourceFrames,
    _runs,
    audio_by_priority,
    is_video_portrait,
    pingpong_indices,
    track_video_portrait,
)
from lp_renderer.errors import NoFaceError
from tests.audio2lp.test_drive import cut_clip

TALKING = "talking/deep_avsr__00008.mp4"  # 160x160, 25 fps, with audio
MPG = "talking/LipNet__bbaf2n.mpg"  # MPEG-PS, 360x288


@pytest.fixture(scope="module")
def animator(tiny_weights):
    return Animator(tiny_weights, device="cpu", progress=False)


def test_pingpong_indices():
    assert pingpong_indices(4, 3).tolist() == [0, 1, 2]  # the video is cut
    assert pingpong_indices(4, 12).tolist() == [0, 1, 2, 3, 2, 1, 0, 1, 2, 3, 2, 1]
    assert pingpong_indices(2, 5).tolist() == [0, 1, 0, 1, 0]
    assert pingpong_indices(1, 3).tolist() == [0, 0, 0]
    assert pingpong_indices(3, 0).tolist() == []
    seq = pingpong_indices(7, 100)
    assert np.abs(np.diff(seq)).max() == 1  # no jump, and no frame shown twice in a row (no stall at the turns)
    assert (np.diff(seq) != 0).all() and seq.min() == 0 and seq.max() == 6
    with pytest.raises(ValueError):
        pingpong_indices(0, 3)


def test_runs_split_forward_and_backward():
    assert list(_runs([0, 1, 2, 3, 2, 1, 0, 1])) == [(0, 3, 1), (2, 0, -1), (1, 1, 1)]
    assert list(_runs([5])) == [(5, 5, 1)]
    assert list(_runs([3, 7, 6])) == [(3, 3, 1), (7, 6, -1)]
    assert list(_runs([])) == []


def test_is_video_portrait(tmp_path):
    assert is_video_portrait("a.mp4") and is_video_portrait(tmp_path / "b.mov")
    assert not is_video_portrait("a.JPG") and not is_video_portrait(np.zeros((4, 4, 3), np.uint8))


def test_audio_priority_rule(tmp_path):
    s, d = tmp_path / "s.mp4", tmp_path / "d.mp4"
    assert audio_by_priority(s, True, d, True, "driving") == d
    assert audio_by_priority(s, True, d, True, "source") == s
    assert audio_by_priority(s, False, d, True, "source") == d  # the source has none: the driving's anyway
    assert audio_by_priority(s, True, d, False, "driving") == s  # the driving has none: the source's
    assert audio_by_priority(s, True, None, False, "driving") == s  # a template has no audio
    assert audio_by_priority(s, False, d, False, "driving") is None


@pytest.mark.realdata
@pytest.mark.parametrize("name", [TALKING, MPG])
def test_frames_in_pingpong_order_match_a_plain_decode(animator, data_dir, tmp_path, name):
    """Frames read forward and backward (blocks of 3 frames, so several seeks) are exactly the frames decoded in
    one go, for an mp4 (seeking lands on known frames) and the original MPEG-PS file."""
    clip = data_dir / name if name.endswith(".mpg") else cut_clip(data_dir / name, tmp_path / "clip.mp4", 1.6)
    tracked = track_video_portrait(clip, animator.faces, max_frames=40)
    frames = list(read_frames(clip, max_frames=40))
    assert tracked.n_frames == len(frames) == 40
    order = pingpong_indices(40, 100)
    reader = SourceFrames(tracked, block_bytes=3 * frames[0].nbytes)
    assert reader.block == 3
    got = 0
    for k, (i, frame) in enumerate(reader.read(order)):
        assert i == order[k]
        assert np.array_equal(frame, frames[i]), (k, i)
        got += 1
    assert got == 100
    if name.endswith(".mp4"):
        assert reader.seeks > 0  # the backward blocks were reached by seeking, not by decoding from the start


@pytest.mark.realdata
def test_tracking_holds_lost_frames(animator, data_dir, tmp_path):
    """Frames without a face (blank at the start and in the middle) hold the last good crop and ratios (the first
    good ones at the start); a video without any face fails clearly."""
    frames = list(read_frames(cut_clip(data_dir / TALKING, tmp_path / "clip.mp4", 0.4)))
    for i in (0, 1, 5, 6):
        frames[i] = np.zeros_like(frames[i])
    with VideoWriter(tmp_path / "lost.mp4", 25, crf=0) as w:
        for f in frames:
            w.write(f)
    tracked = track_video_portrait(tmp_path / "lost.mp4", animator.faces)
    assert tracked.n_frames == len(frames) and tracked.n_lost == 4
    for i, src in ((0, 2), (1, 2), (5, 4), (6, 4)):
        assert tracked.eye_ratios[i].tolist() == tracked.eye_ratios[src].tolist()
        assert tracked.lip_ratios[i] == tracked.lip_ratios[src]
    assert np.abs(tracked.crops[:2, :3] - tracked.crops[2, :3]).max() < 5  # near the first good crop (pixels)
    with VideoWriter(tmp_path / "blank.mp4", 25) as w:
        for _ in range(4):
            w.write(np.full((64, 64, 3), 90, np.uint8))
    with pytest.raises(NoFaceError, match="portrait video"):
        track_video_portrait(tmp_path / "blank.mp4", animator.faces)
