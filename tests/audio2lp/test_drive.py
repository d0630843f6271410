"""`audio2lp drive` end to end: real portraits and talking videos, templates, bad input."""

from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
import pytest

from audio2lp.api import Animator
from audio2lp.cli import main
from audio2lp.driving import load_official_template, motion_to_info
from audio2lp.motion import load_motion_template
from audio2lp.video_io import ffmpeg_exe, probe_video, read_frames
from lp_renderer.errors import InputError, NoFaceError

PORTRAIT = "portraits/EAMM__14.png"
VIDEO = "talking/LipNet__bbaf2n.mpg"


@pytest.fixture(scope="module")
def animator(tiny_weights):
    return Animator(tiny_weights, device="cpu", progress=False, batch_size=4)


def cut_clip(src, dst, seconds: float):
    """A short copy of a real clip (video + audio) for tests; written to tmp, never committed."""
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-i", str(src), "-t", str(seconds), "-c:v", "libx264",
                    "-preset", "ultrafast", "-c:a", "aac", str(dst)], check=True)
    return dst


@pytest.mark.realdata
def test_drive_real_video_matches_driving_clip(animator, data_dir, tmp_path):
    clip = cut_clip(data_dir / VIDEO, tmp_path / "clip.mp4", 0.6)
    info_in = probe_video(clip)
    out = tmp_path / "out.mp4"
    res = animator.drive(data_dir / PORTRAIT, clip, out, save_template=tmp_path / "t.npz")
    info = probe_video(out)
    assert info.n_frames == info_in.n_frames == res.n_frames
    assert info.fps == pytest.approx(info_in.fps)
    assert info.has_audio and res.has_audio
    assert info.width == 256 and info.height == 256  # pasted back into the 256x256 portrait
    tp = load_motion_template(tmp_path / "t.npz")
    assert tp.n_frames == info_in.n_frames and tp.eye_ratio.shape == (tp.n_frames, 2)
    assert not list(tmp_path.glob(".*part*"))  # no temp files left behind


@pytest.mark.realdata
def test_drive_from_template_equals_drive_from_video(animator, data_dir, tmp_path):
    """Motion saved with --save-template renders the same frames without the video."""
    clip = cut_clip(data_dir / VIDEO, tmp_path / "clip.mp4", 0.4)
    a, b = tmp_path / "a.mp4", tmp_path / "b.mp4"
    animator.drive(data_dir / PORTRAIT, clip, a, save_template=tmp_path / "t.npz", crf=0)
    animator.drive(data_dir / PORTRAIT, tmp_path / "t.npz", b, crf=0)
    fa, fb = list(read_frames(a)), list(read_frames(b))
    assert len(fa) == len(fb) > 0
    assert max(np.abs(x.astype(int) - y).max() for x, y in zip(fa, fb)) <= 2
    assert not probe_video(b).has_audio


@pytest.mark.realdata
def test_official_pkl_template(animator, data_dir, tmp_path):
    """LivePortrait's .pkl layout (rotation matrices) imports through the restricted unpickler."""
    from lp_renderer.keypoints import rotation_matrix

    clip = cut_clip(data_dir / VIDEO, tmp_path / "clip.mp4", 0.3)
    animator.drive(data_dir / PORTRAIT, clip, tmp_path / "a.mp4", save_template=tmp_path / "t.npz")
    tp = load_motion_template(tmp_path / "t.npz")
    info = motion_to_info(tp.motion)
    rot = rotation_matrix(info.pitch, info.yaw, info.roll).numpy()
    official = {"n_frames": tp.n_frames, "output_fps": 25,
                "motion": [{"scale": info.scale[i:i + 1].numpy(), "R": rot[i:i + 1], "exp": info.exp[i:i + 1].numpy(),
                            "t": info.t[i:i + 1].numpy(), "kp": np.zeros((1, 21, 3), np.float32),
                            "x_s": np.zeros((1, 21, 3), np.float32)} for i in range(tp.n_frames)],
                "c_eyes_lst": [tp.eye_ratio[i:i + 1] for i in range(tp.n_frames)],
                "c_lip_lst": [tp.lip_ratio[i:i + 1, None] for i in range(tp.n_frames)]}
    pkl = tmp_path / "official.pkl"
    pkl.write_bytes(pickle.dumps(official, protocol=4))
    imported = load_official_template(pkl)
    np.testing.assert_allclose(imported.motion, tp.motion, atol=2e-3)
    np.testing.assert_allclose(imported.lip_ratio, tp.lip_ratio, atol=1e-6)
    res = animator.drive(data_dir / PORTRAIT, pkl, tmp_path / "b.mp4", retarget_lip=True)
    assert res.n_frames == tp.n_frames


@pytest.mark.realdata
def test_drive_image_to_image_and_concat(animator, data_dir, tmp_path):
    out = tmp_path / "out.png"
    res = animator.drive(data_dir / PORTRAIT, data_dir / "portraits/EAMM__21.png", out)
    assert out.is_file() and res.n_frames == 1
    clip = cut_clip(data_dir / VIDEO, tmp_path / "clip.mp4", 0.2)
    res = animator.drive(data_dir / PORTRAIT, clip, tmp_path / "c.mp4", concat=True, pasteback=False)
    info = probe_video(tmp_path / "c.mp4")
    assert (info.width, info.height) == (1024, 512)


@pytest.mark.realdata
def test_drive_all_faces(animator, data_dir, tmp_path):
    """--face all animates every face of a group photo (two portraits side by side)."""
    from lp_renderer.image_io import load_image

    a, b = load_image(data_dir / PORTRAIT), load_image(data_dir / "portraits/MakeItTalk__anne.jpg")
    group = np.concatenate([a, b], axis=1)
    import cv2

    cv2.imwrite(str(tmp_path / "group.png"), cv2.cvtColor(group, cv2.COLOR_RGB2BGR))
    pt = animator.portrait(tmp_path / "group.png", "all")
    assert len(pt.faces) == 2
    clip = cut_clip(data_dir / VIDEO, tmp_path / "clip.mp4", 0.2)
    res = animator.drive(tmp_path / "group.png", clip, tmp_path / "o.mp4", face="all")
    assert res.n_frames == probe_video(clip).n_frames
    with pytest.raises(InputError, match="out of range"):
        animator.drive(tmp_path / "group.png", clip, tmp_path / "p.mp4", face=5)


def _run_cli(args, capsys):
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


@pytest.mark.realdata
def test_cli_bad_inputs(tiny_weights, data_dir, tmp_path, capsys):
    portrait = str(data_dir / PORTRAIT)
    video = str(data_dir / VIDEO)
    blank = tmp_path / "blank.png"
    import cv2

    cv2.imwrite(str(blank), np.full((300, 300, 3), 127, np.uint8))
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x01 not a video " * 100)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    base = ["drive", "--weights", str(tiny_weights), "-q"]
    cases = [
        ([blank.as_posix(), video, "-o", str(tmp_path / "a.mp4")], "No face"),
        ([portrait, str(corrupt), "-o", str(tmp_path / "b.mp4")], "corrupt.mp4"),
        ([portrait, str(text), "-o", str(tmp_path / "c.mp4")], "notes.txt"),
        ([portrait, video, "-o", str(tmp_path / "missing" / "d.mp4")], "missing"),
        ([portrait, str(tmp_path / "nope.mp4"), "-o", str(tmp_path / "e.mp4")], "does not exist"),
        ([str(tmp_path / "nope.png"), video, "-o", str(tmp_path / "f.mp4")], "nope.png"),
        ([portrait, video, "-o", str(tmp_path / "g.mp4"), "--weights", str(tmp_path / "noweights")], "weights"),
        ([portrait, video, "-o", str(tmp_path / "h.avi")], ".mp4"),
    ]
    for args, needle in cases:
        code, err = _run_cli(base + args, capsys)
        assert code == 2, (args, err)
        assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], (args, err)
        assert "Traceback" not in "\n".join(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blank.png", "corrupt.mp4", "notes.txt"]


def test_zero_frame_video(animator, tmp_path):
    from audio2lp.errors import VideoError

    empty = tmp_path / "empty.mp4"
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-t", "0.5",
                    str(empty)], check=True)
    with pytest.raises((VideoError, InputError)):
        animator.drive(np.zeros((64, 64, 3), np.uint8), empty, tmp_path / "o.mp4")
    assert not (tmp_path / "o.mp4").exists()


def test_portrait_without_face(animator, tmp_path):
    with pytest.raises(NoFaceError):
        animator.portrait(np.full((200, 200, 3), 90, np.uint8))


@pytest.mark.realdata
def test_lost_face_frames_hold_last_crop(animator, data_dir, tmp_path):
    """A driving video where the face disappears for some frames still renders every frame."""
    frames = list(read_frames(cut_clip(data_dir / VIDEO, tmp_path / "clip.mp4", 0.4)))
    for i in (3, 4, 5):
        frames[i] = np.zeros_like(frames[i])  # face lost
    from audio2lp.video_io import VideoWriter

    with VideoWriter(tmp_path / "lost.mp4", 25) as w:
        for f in frames:
            w.write(f)
    res = animator.drive(data_dir / PORTRAIT, tmp_path / "lost.mp4", tmp_path / "o.mp4")
    assert res.n_frames == len(frames)


@pytest.mark.realdata
def test_cli_drive_subprocess(tiny_weights, data_dir, tmp_path):
    """The installed entry point: exit code 0, output written, one summary line on stdout."""
    clip = cut_clip(data_dir / VIDEO, tmp_path / "clip.mp4", 0.2)
    out = tmp_path / "o.mp4"
    r = subprocess.run([sys.executable, "-m", "audio2lp", "drive", str(data_dir / PORTRAIT), str(clip), "-o", str(out),
                        "--weights", str(tiny_weights), "-q"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert out.is_file() and r.stdout.startswith("wrote ")
