"""`audio2lp drive` end to end: real portraits and talking videos, templates, bad input."""

from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
import pytest

from audio2lp.api import Animator
from audio2lp.apps.cli import main
from audio2lp.driving import load_official_template, motion_to_info
from audio2lp.media.ffmpeg import ffmpeg_exe
from audio2lp.media.probe import probe_video
from audio2lp.media.reader import read_frames
from audio2lp.models.motion import load_motion_template
from lp_renderer.errors import InputError, NoFaceError

PORTRAIT = "portraits/EAMM__14.png"
VIDEO = "talking/LipNet__bbaf2n.mpg"


@pytest.fixture(scope="module")
def animator(tiny_weights):
    return Animator(tiny_weights, device="cpu", progress=False, batch_size=4)


def zero_frame_video(dst):
    """An mp4 whose header declares a video stream but whose frames are gone (the mdat emptied)."""
    import struct

    full = dst.with_name("full_" + dst.name)
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-f", "lavfi", "-i", "color=c=gray:s=64x64:d=0.4",
                    "-c:v", "libx264", "-movflags", "+faststart", str(full)], check=True)
    data = full.read_bytes()
    full.unlink()
    i = 0
    while data[i + 4:i + 8] != b"mdat":
        i += struct.unpack(">I", data[i:i + 4])[0]
    dst.write_bytes(data[:i] + struct.pack(">I4s", 8, b"mdat"))
    return dst


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
def test_failed_template_leaves_no_video(animator, data_dir, tmp_path, monkeypatch):
    """The template and the video are committed together: if writing the template fails, no mp4 is
    left either (and no temporary files)."""
    import audio2lp.api as api

    clip = cut_clip(data_dir / VIDEO, tmp_path / "clip.mp4", 0.2)

    def broken(path, template):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(api, "save_motion_template", broken)
    with pytest.raises(OSError, match="space"):
        animator.drive(data_dir / PORTRAIT, clip, tmp_path / "out.mp4", save_template=tmp_path / "t.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]


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
    # the two crops overlap; each face keeps its own centre (the masks share the overlap)
    red, blue = np.zeros((512, 512, 3), np.uint8), np.zeros((512, 512, 3), np.uint8)
    red[..., 0], blue[..., 2] = 255, 255
    assert ((pt.faces[0].mask.full() > 0) & (pt.faces[1].mask.full() > 0)).any()
    out = pt.composite([red, blue])
    for pf, colour in zip(pt.faces, ((255, 0, 0), (0, 0, 255))):
        x, y = (int(round(v)) for v in pf.face.eye_center)
        assert tuple(out[y, x]) == colour
    clip = cut_clip(data_dir / VIDEO, tmp_path / "clip.mp4", 0.2)
    res = animator.drive(tmp_path / "group.png", clip, tmp_path / "o.mp4", face="all")
    assert res.n_frames == probe_video(clip).n_frames
    # --face N picks the portrait's face; the one-person driving video still drives with its own face
    res = animator.drive(tmp_path / "group.png", clip, tmp_path / "f1.mp4", face=1)
    assert res.n_frames == probe_video(clip).n_frames
    with pytest.raises(InputError, match="out of range"):
        animator.drive(tmp_path / "group.png", clip, tmp_path / "p.mp4", face=5)
    with pytest.raises(InputError, match="needs stitching"):
        animator.drive(tmp_path / "group.png", clip, tmp_path / "q.mp4", face="all", stitching=False)
    assert not (tmp_path / "p.mp4").exists() and not (tmp_path / "q.mp4").exists()


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
    zero = zero_frame_video(tmp_path / "zero.mp4")
    bad_jpg = tmp_path / "bad.jpg"
    bad_jpg.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg" * 20)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes((data_dir / PORTRAIT).read_bytes()[:2000])
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
        ([portrait, str(zero), "-o", str(tmp_path / "i.mp4")], "no video frames"),
        ([str(bad_jpg), video, "-o", str(tmp_path / "j.mp4")], "bad.jpg"),
        ([str(truncated), video, "-o", str(tmp_path / "k.mp4")], "truncated.png"),
    ]
    for args, needle in cases:
        code, err = _run_cli(base + args, capsys)
        assert code == 2, (args, err)
        assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], (args, err)
        assert "Traceback" not in "\n".join(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jpg", "blank.png", "corrupt.mp4", "notes.txt",
                                                          "truncated.png", "zero.mp4"]


@pytest.mark.realdata
@pytest.mark.parametrize("option, needle", [
    (["--crf", "99"], "--crf"), (["--crf", "-1"], "--crf"),
    (["--multiplier", "nan"], "--multiplier"), (["--multiplier", "inf"], "--multiplier"),
    (["--multiplier", "-1"], "--multiplier"),
    (["--batch-size", "0"], "--batch-size"), (["--batch-size", "-4"], "--batch-size"),
    (["--max-frames", "0"], "--max-frames"), (["--max-frames", "-3"], "--max-frames"),
    (["--face", "all", "--no-stitching"], "needs stitching"),
])
def test_cli_bad_numbers(tiny_weights, data_dir, tmp_path, capsys, option, needle):
    """Out-of-range numeric options: one error line naming the option, exit 2, nothing written."""
    out = tmp_path / "o.mp4"
    code, err = _run_cli(["drive", str(data_dir / PORTRAIT), str(data_dir / VIDEO), "-o", str(out),
                          "--weights", str(tiny_weights), "-q", *option], capsys)
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err
    assert list(tmp_path.iterdir()) == []


def test_speak_rejects_bad_crf(tiny_weights, tmp_path):
    with pytest.raises(InputError, match="^crf must be a whole number from 0 to 51, not 52") as e:
        Animator(tiny_weights, progress=False).speak(np.zeros((64, 64, 3), np.uint8), tmp_path / "a.wav",
                                                     tmp_path / "o.mp4", crf=52)
    assert e.value.describe("cli").startswith("--crf must be")


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
    """A driving video where the face is missing on some frames (blank frames at the start and in the
    middle) renders every frame; the lost frames hold the last good crop and ratios (the first good one
    at the start), so the rendered motion holds still there."""
    from audio2lp.driving import iter_driving_frames, open_driving
    from audio2lp.media.writer import VideoWriter

    frames = list(read_frames(cut_clip(data_dir / VIDEO, tmp_path / "clip.mp4", 0.4)))
    lost = (0, 1, 5, 6, 7)
    for i in lost:
        frames[i] = np.zeros_like(frames[i])  # face lost
    with VideoWriter(tmp_path / "lost.mp4", 25, crf=0) as w:
        for f in frames:
            w.write(f)
    drv = list(iter_driving_frames(open_driving(tmp_path / "lost.mp4"), animator.faces))
    assert [d.index for d in drv] == list(range(len(frames)))
    for i, src in ((0, 2), (1, 2), (5, 4), (6, 4), (7, 4)):
        assert np.array_equal(drv[i].crop_rgb, drv[src].crop_rgb), i
        assert drv[i].crop_rgb.mean() > 40  # a face crop, not the blank frame
        np.testing.assert_array_equal(drv[i].eye_ratio, drv[src].eye_ratio)
        assert drv[i].lip_ratio == drv[src].lip_ratio
    assert not np.array_equal(drv[8].crop_rgb, drv[4].crop_rgb)  # tracking resumes after the gap
    res = animator.drive(data_dir / PORTRAIT, tmp_path / "lost.mp4", tmp_path / "o.mp4", crf=0)
    assert res.n_frames == len(frames)
    out = list(read_frames(tmp_path / "o.mp4"))
    for i, src in ((0, 2), (1, 2), (5, 4), (6, 4), (7, 4)):
        assert np.abs(out[i].astype(int) - out[src]).max() <= 2, i


@pytest.mark.realdata
def test_faceless_driving_video_fails_clearly(animator, data_dir, tmp_path):
    """No frame with a face: NoFaceError at the end, nothing written (the faceless frames are not kept in
    memory while waiting for a face)."""
    from audio2lp.media.writer import VideoWriter

    with VideoWriter(tmp_path / "blank.mp4", 25) as w:
        for _ in range(6):
            w.write(np.full((64, 64, 3), 100, np.uint8))
    with pytest.raises(NoFaceError, match="any frame"):
        animator.drive(data_dir / PORTRAIT, tmp_path / "blank.mp4", tmp_path / "o.mp4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blank.mp4"]


@pytest.mark.realdata
def test_cli_drive_subprocess(tiny_weights, data_dir, tmp_path):
    """The installed entry point: exit code 0, output written, one summary line on stdout."""
    clip = cut_clip(data_dir / VIDEO, tmp_path / "clip.mp4", 0.2)
    out = tmp_path / "o.mp4"
    r = subprocess.run([sys.executable, "-m", "audio2lp", "drive", str(data_dir / PORTRAIT), str(clip), "-o", str(out),
                        "--weights", str(tiny_weights), "-q"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert out.is_file() and r.stdout.startswith("wrote ")


def test_auto_face_backend_looks_in_the_default_weights_folder(tmp_path, monkeypatch):
    """Without --weights, `auto` still finds insightface models under the default weights folder (and a
    missing folder is no error: it falls back to dlib)."""
    import audio2lp.api as api
    from lp_renderer.faces import DlibBackend

    seen = {}

    def fake_backend(name, insightface_dir=None, *, weights_dir=None):
        seen.update(name=name, weights_dir=weights_dir)
        return DlibBackend()

    monkeypatch.setenv("AUDIO2LP_WEIGHTS", str(tmp_path / "default_weights"))
    monkeypatch.setattr(api, "get_face_backend", fake_backend)
    assert isinstance(Animator(progress=False).faces, DlibBackend)
    assert seen == {"name": "auto", "weights_dir": tmp_path / "default_weights"}
    monkeypatch.undo()
    monkeypatch.setenv("AUDIO2LP_WEIGHTS", str(tmp_path / "missing"))
    monkeypatch.delenv("AUDIO2LP_INSIGHTFACE_DIR", raising=False)
    assert isinstance(Animator(progress=False).faces, DlibBackend)


@pytest.mark.realdata
def test_driving_crops_follow_the_official_path(animator, data_dir, tmp_path, monkeypatch):
    """Driving crops: DRIVING_CROP box, warped to 512 then resized to 256 bilinearly (official); the driving
    video is probed once."""
    import cv2

    import audio2lp.media.probe as vio
    from audio2lp.driving import iter_driving_frames, open_driving
    from lp_renderer.crop import DRIVING_CROP, crop_face
    from lp_renderer.image_io import load_image

    image = data_dir / "portraits/EAMM__21.png"
    (fr,) = iter_driving_frames(open_driving(image), animator.faces)
    rgb = load_image(image)
    crop = crop_face(animator.faces.detect(rgb)[0], **DRIVING_CROP)
    np.testing.assert_array_equal(fr.crop_rgb, crop.warp(rgb, 256, resize=cv2.INTER_LINEAR))

    calls = []
    real_probe = vio.probe_video
    monkeypatch.setattr(vio, "probe_video", lambda *a, **k: calls.append(a) or real_probe(*a, **k))
    frames = list(iter_driving_frames(open_driving(data_dir / VIDEO), animator.faces, max_frames=2))
    assert len(frames) == 2 and len(calls) == 1


@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.parametrize("video", ["talking/LivePortrait__d11.mp4", "talking/MimicTalk__May_5s.mp4",
                                   "talking/SadTalker__WDA_BobMenendez_000.mp4"])
def test_tracked_driving_crops_match_per_frame_detection(data_dir, video):
    """The driving crops of the tracked face (detected once, landmarks re-fitted from frame to frame, verified every
    few frames: what drive does) stay within a few pixels of the crops of per-frame detection (what drive did
    before, at ~20x the cost): both smoothed over 5 frames as drive smooths them. Measured on these 60-frame clips:
    centres within 3.1 px (mean 0.4-1.1 px) and sizes within 2.0% of crops 550-670 px wide; a tracker that drifted
    or lagged would fail."""
    from audio2lp.driving import track_driving_faces
    from lp_renderer.crop import DRIVING_CROP, crop_face, smooth_crops
    from lp_renderer.faces import DlibBackend, faces_in_frames

    backend = DlibBackend(cnn_fallback=False)
    frames = list(read_frames(data_dir / video, max_frames=60))
    detected = faces_in_frames(backend, frames)  # detect_every=1: per-frame detection
    tracked = [face for _, face in track_driving_faces(backend, iter(frames))]
    assert all(f is not None for f in detected) and all(f is not None for f in tracked)
    a = smooth_crops([crop_face(f, **DRIVING_CROP) for f in detected], window=5)
    b = smooth_crops([crop_face(f, **DRIVING_CROP) for f in tracked], window=5)
    centre = np.array([np.hypot(p.center[0] - q.center[0], p.center[1] - q.center[1]) for p, q in zip(a, b)])
    size = np.array([abs(p.size - q.size) / p.size for p, q in zip(a, b)])
    assert centre.max() <= 4.0 and size.max() <= 0.025, (centre.max(), size.max())


@pytest.mark.parametrize("kind", ["npz", "pkl"])
def test_template_with_a_zero_or_negative_scale_is_a_clean_error(tiny_weights, tmp_path, capsys, kind):
    """A template whose scale column is 0 (all frames, or one) or negative: one error line, exit 2, no output
    (it used to end in an internal error: NaN keypoints from dividing by the first frame's scale)."""
    from audio2lp.driving import open_driving
    from audio2lp.models.motion import MOTION_DIM, SCALE, MotionTemplate, save_motion_template
    from tests.conftest import REPO

    def write(name, scale):
        m = np.zeros((4, MOTION_DIM), np.float32)
        m[:, SCALE] = scale
        path = tmp_path / f"{name}.{kind}"
        if kind == "npz":
            return save_motion_template(path, MotionTemplate(m, 25.0))
        frames = [{"scale": m[i:i + 1, SCALE:SCALE + 1], "R": np.eye(3, dtype=np.float32)[None],
                   "exp": np.zeros((1, 21, 3), np.float32), "t": np.zeros((1, 3), np.float32)} for i in range(4)]
        path.write_bytes(pickle.dumps({"motion": frames, "output_fps": 25}, protocol=4))
        return path

    assert open_driving(write("fine", [1.0, 1.1, 0.9, 1.0])).n_frames == 4
    base = ["drive", str(REPO / "examples" / "portrait.jpg"), "--weights", str(tiny_weights), "--device", "cpu", "-q"]
    for name, scale, needle in (("zeros", 0.0, "is 0 at frame 0"), ("one_zero", [1.0, 1.0, 0.0, 1.0], "frame 2"),
                                ("negative", [-1.0, 1.0, 1.0, 1.0], "is -1 at frame 0")):
        path = write(name, scale)
        with pytest.raises(InputError, match="head scale"):
            open_driving(path)
        out = tmp_path / f"{name}.mp4"
        code, err = _run_cli(base + [str(path), "-o", str(out)], capsys)
        assert code == 2, (name, err)
        assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0] and "> 0" in err[0], (name, err)
        assert not out.exists()
