"""`audio2lp edit` (the official image-retargeting tab) end to end, and the same sliders as constant offsets on
`speak` and `drive`, checked at the keypoint level with a tiny renderer (the keypoints handed to the renderer)."""

from __future__ import annotations

import shlex

import cv2
import numpy as np
import pytest

from audio2lp.api import Animator
from audio2lp.apps.cli import main
from audio2lp.media.audio import write_wav
from audio2lp.options import OPTIONS, sliders_for
from lp_renderer.editing import PortraitEdit, edit_keypoints, expression_offsets
from lp_renderer.keypoints import transform_keypoints
from lp_renderer.renderer import Renderer
from tests.conftest import REPO

PORTRAIT = "portraits/EDTalk__uncrop_face.jpg"  # a whole photo (1024x840), not a face crop
EXAMPLE = REPO / "examples" / "portrait.jpg"


@pytest.fixture(scope="module")
def animator(tiny_weights):
    return Animator(tiny_weights, device="cpu", progress=False, batch_size=8)


@pytest.fixture
def no_stitching_network(monkeypatch):
    """Stitching as the identity, so that keypoint differences are exactly what the sliders add."""
    monkeypatch.setattr(Renderer, "stitch", lambda self, x_s, x_d: x_d)


def _cli(args, capsys):
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err.strip().splitlines()


# ------------------------------------------------------------------------------------------ ranges
@pytest.mark.parametrize("name", sliders_for("edit") + ["crop_scale"])
def test_out_of_range_sliders_are_refused_by_the_cli(name, tmp_path, capsys):
    o = OPTIONS[name]
    out = tmp_path / "out.png"
    for bad in (o.minimum - 0.01 * (o.maximum - o.minimum), o.maximum + 0.01 * (o.maximum - o.minimum)):
        code, err = _cli(["edit", EXAMPLE, "-o", out, "--weights", tmp_path / "none", o.cli_flag, bad], capsys)
        assert code == 2 and len(err) == 1, err
        assert err[0].startswith(f"error: {o.cli_flag} must be between {o.minimum:g} and {o.maximum:g}, not "), err
    assert not list(tmp_path.iterdir())  # nothing written, not even a weights folder


@pytest.mark.parametrize("command", ["speak", "drive"])
def test_speak_and_drive_check_and_refuse_sliders(command, tmp_path, capsys):
    second = tmp_path / ("a.wav" if command == "speak" else "d.mp4")
    base = [command, EXAMPLE, second, "-o", tmp_path / "o.mp4", "--weights", tmp_path / "none"]
    code, err = _cli(base + ["--smile", "1.5"], capsys)
    assert code == 2 and err == ["error: --smile must be between -0.3 and 1.3, not 1.5."]
    code, err = _cli(base + ["--gaze-y", "-64"], capsys)
    assert code == 2 and err == ["error: --gaze-y must be between -63 and 63, not -64.0."]
    # the target ratios edit a still portrait; an animation drives eyes and lips itself
    code, err = _cli(base + ["--eye-ratio", "0.3"], capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith("error: --eye-ratio edits a still portrait (audio2lp "
                                                            "edit)") and "--wink" in err[0], err
    code, err = _cli(base + ["--lip-ratio", "0.3"], capsys)
    assert code == 2 and len(err) == 1 and "--lip-open" in err[0], err
    assert not list(tmp_path.iterdir())


def test_api_checks_sliders_with_the_schema(animator, tmp_path):
    from audio2lp.options import OptionError

    with pytest.raises(OptionError, match=r"^wink must be between 0 and 39, not -1\.$"):
        animator.edit(EXAMPLE, tmp_path / "o.png", wink=-1)
    with pytest.raises(OptionError, match=r"^mov_z must be between 0.9 and 1.2"):
        animator.speak(EXAMPLE, tmp_path / "a.wav", tmp_path / "o.mp4", mov_z=2)
    with pytest.raises(OptionError, match=r"^crop_scale must be between 1.8 and 3.2"):
        animator.edit(EXAMPLE, tmp_path / "o.png", crop_scale=1.0)
    with pytest.raises(TypeError):
        animator.speak(EXAMPLE, tmp_path / "a.wav", tmp_path / "o.mp4", eye_ratio=0.3)  # edit only
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------ edit
def test_edit_composes_the_tabs_keypoints_and_pastes_back(animator, tmp_path, rendered_keypoints, capsys):
    """The keypoints rendered are the tab's composition of the portrait's motion; the face is pasted back into the
    full-resolution photo (the 512 crop without paste-back); the crop follows --crop-scale (2.5 by default)."""
    photo = cv2.cvtColor(cv2.imread(str(EXAMPLE)), cv2.COLOR_BGR2RGB)
    out = tmp_path / "smile.png"
    code, err = _cli(["edit", EXAMPLE, "-o", out, "--weights", animator.weights, "--device", "cpu", "-q",
                      "--no-stitching", "--smile", "0.6", "--gaze-x", "10", "--pitch", "5"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["smile.png"]  # written atomically
    assert cv2.imread(str(out)).shape == (512, 512, 3)  # no stitching: the crop (as drive)
    edit = PortraitEdit(smile=0.6, gaze_x=10, pitch=5)
    pt = animator.portrait(EXAMPLE, crop_scale=2.5)
    src = pt.faces[0].source
    np.testing.assert_allclose(rendered_keypoints[-1], edit_keypoints(src.info, edit).numpy(), atol=1e-6)
    res = animator.edit(pt, tmp_path / "plain.png", stitching=False)  # a prepared portrait: renders only
    plain = rendered_keypoints[-1]
    np.testing.assert_allclose(plain, edit_keypoints(src.info, PortraitEdit()).numpy(), atol=1e-6)
    assert res.extra["source_ratios"] == [(round(float(np.mean(src.eye_ratios)), 2), round(src.lip_ratio, 2))]
    # stitched and pasted back into the photo, whose pixels outside the crop are untouched
    res = animator.edit(EXAMPLE, tmp_path / "pasted.png", smile=0.6)
    img = cv2.cvtColor(cv2.imread(str(res.output)), cv2.COLOR_BGR2RGB)
    assert img.shape == photo.shape
    x0, y0, x1, y1 = pt.faces[0].crop.region(photo.shape)
    outside = np.ones(photo.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    assert outside.any() and np.array_equal(img[outside], photo[outside])
    jpg = animator.edit(pt, tmp_path / "pasted.jpg", smile=0.6).output  # any format OpenCV writes
    assert cv2.imread(str(jpg)).shape == photo.shape
    # the official tab's crop scale (2.5) by default; speak and drive keep 2.3
    wide, usual = pt.faces[0].crop.size, animator.portrait(EXAMPLE).faces[0].crop.size
    assert wide / usual == pytest.approx(2.5 / 2.3)


def test_target_ratios_retarget_only_when_they_change(animator, tmp_path, rendered_keypoints, no_stitching_network):
    pt = animator.portrait(EXAMPLE, crop_scale=2.5)
    src = pt.faces[0].source
    eye, lip = (round(float(np.mean(src.eye_ratios)), 2), round(src.lip_ratio, 2))
    animator.edit(pt, tmp_path / "a.png", pasteback=False)
    animator.edit(pt, tmp_path / "b.png", pasteback=False, eye_ratio=eye, lip_ratio=lip)  # the tab's initial values
    animator.edit(pt, tmp_path / "c.png", pasteback=False, eye_ratio=0.8 if eye < 0.5 else 0.1)
    animator.edit(pt, tmp_path / "d.png", pasteback=False, lip_ratio=0.5 if lip < 0.3 else 0.0)
    a, b, c, d = (k[0] for k in rendered_keypoints[-4:])
    assert np.array_equal(a, b)
    eyes, lips = np.abs(c - a).max(axis=1), np.abs(d - a).max(axis=1)  # per keypoint
    assert eyes.max() > 1e-4 and lips.max() > 1e-4
    target = 0.8 if eye < 0.5 else 0.1
    want = animator.renderer.retarget_eyes(src.x_s, np.array([[*src.eye_ratios, target]], np.float32))
    np.testing.assert_allclose(c - a, want.numpy()[0], atol=1e-6)


# ------------------------------------------------------------------------------------------ speak / drive
def test_speak_smile_and_gaze_are_constant_keypoint_offsets(animator, tmp_path, capsys, rendered_keypoints,
                                                           no_stitching_network):
    """`speak --smile 0.4 --gaze-x 5`: every frame's keypoints are the plain run's plus the tab's offsets (scaled
    by the portrait's scale, as Eq. 2 scales the expression); --pitch adds to the head pose."""
    silent = write_wav(tmp_path / "silence.wav", np.zeros(8000, np.float32))  # 0.5 s: 12-13 frames
    common = ["--weights", animator.weights, "--device", "cpu", "-q", "--no-blink", "--pose-scale", "0",
              "--batch-size", "8"]
    assert main(["speak", str(EXAMPLE), str(silent), "-o", str(tmp_path / "plain.mp4"), *map(str, common)]) == 0
    plain = np.concatenate(rendered_keypoints)
    rendered_keypoints.clear()
    code, err = _cli(["speak", EXAMPLE, silent, "-o", tmp_path / "smile.mp4", *common, "--smile", "0.4",
                      "--gaze-x", "5"], capsys)
    assert code == 0, err
    smile = np.concatenate(rendered_keypoints)
    assert smile.shape == plain.shape and len(plain) >= 12
    src = animator.portrait(EXAMPLE).faces[0].source
    want = float(src.info.scale) * expression_offsets(PortraitEdit(smile=0.4, gaze_x=5))
    np.testing.assert_allclose(smile - plain, np.broadcast_to(want, smile.shape), atol=2e-6)
    assert min(abs(want[14, 1]), abs(want[20, 1]), abs(want[11, 0]), abs(want[15, 0])) > 1e-3  # mouth and eyes
    # the head-pose sliders add to the pose: --pitch 6 = Eq. 2 with the pitch + 6
    rendered_keypoints.clear()
    animator.speak(EXAMPLE, silent, tmp_path / "pitch.mp4", blink=False, pose_scale=0, pitch=6)
    pitch = np.concatenate(rendered_keypoints)
    info = src.info
    moved = transform_keypoints(info.replace(pitch=info.pitch + 6)) - transform_keypoints(info)
    np.testing.assert_allclose(pitch - plain, np.broadcast_to(moved.numpy(), pitch.shape), atol=2e-6)


def test_drive_gaze_is_a_constant_offset_on_the_driven_expression(animator, tmp_path, capsys, rendered_keypoints):
    """`drive --gaze-x 10` on a motion template: each frame's keypoints are the plain run's plus the gaze offsets,
    scaled by that frame's Eq. 7 scale (stitching off, so the difference is exactly the offsets')."""
    from audio2lp.models.motion import MotionTemplate, pack_motion, save_motion_template

    rng = np.random.default_rng(0)
    n = 4
    exp = 0.02 * rng.standard_normal((n, 21, 3)).astype(np.float32)
    pose = rng.uniform(-8, 8, (3, n)).astype(np.float32)
    t = 0.02 * rng.standard_normal((n, 3)).astype(np.float32)
    scale = (1.5 + 0.05 * rng.standard_normal(n)).astype(np.float32)
    template = tmp_path / "motion.npz"
    save_motion_template(template, MotionTemplate(pack_motion(exp, *pose, t, scale), 25.0, None, None))
    common = ["--weights", animator.weights, "--device", "cpu", "-q", "--no-stitching", "--batch-size", "8"]
    assert _cli(["drive", EXAMPLE, template, "-o", tmp_path / "plain.mp4", *common], capsys)[0] == 0
    plain = np.concatenate(rendered_keypoints)
    rendered_keypoints.clear()
    code, err = _cli(["drive", EXAMPLE, template, "-o", tmp_path / "gaze.mp4", *common, "--gaze-x", "10"], capsys)
    assert code == 0, err
    gaze = np.concatenate(rendered_keypoints)
    assert gaze.shape == plain.shape == (n, 21, 3)
    s_s = float(animator.portrait(EXAMPLE).faces[0].source.info.scale)
    want = (s_s * scale / scale[0])[:, None, None] * expression_offsets(PortraitEdit(gaze_x=10))[None]
    np.testing.assert_allclose(gaze - plain, want, atol=2e-6)
    assert np.abs(want[:, [11, 15], 0]).min() > 5e-3  # the eyes' x moved, in every frame
    # with stitching (the default) the sliders still move the keypoints
    rendered_keypoints.clear()
    animator.drive(EXAMPLE, template, tmp_path / "stitched.mp4", gaze_x=10, pasteback=False)
    stitched = np.concatenate(rendered_keypoints)
    rendered_keypoints.clear()
    animator.drive(EXAMPLE, template, tmp_path / "stitched0.mp4", pasteback=False)
    assert np.abs(stitched - np.concatenate(rendered_keypoints))[:, [11, 15], 0].min() > 1e-3


# ------------------------------------------------------------------------------------------ real data, README
@pytest.mark.realdata
def test_edit_a_real_portrait_from_the_cli(tiny_weights, data_dir, tmp_path, capsys):
    """A portrait of the shared data edited by the command line (tiny random networks): the output has the photo's
    size, is the photo outside the face, and differs from the unedited render inside it."""
    from lp_renderer.image_io import load_image

    photo = load_image(data_dir / PORTRAIT)
    base = ["edit", data_dir / PORTRAIT, "--weights", tiny_weights, "--device", "cpu", "-q"]
    assert _cli(base + ["-o", tmp_path / "plain.png"], capsys)[0] == 0
    code, err = _cli(base + ["-o", tmp_path / "edited.png", "--smile", "1", "--wink", "20", "--yaw", "-15"], capsys)
    assert code == 0, err
    plain, edited = (cv2.cvtColor(cv2.imread(str(tmp_path / f)), cv2.COLOR_BGR2RGB) for f in ("plain.png",
                                                                                              "edited.png"))
    assert edited.shape == photo.shape
    changed = np.abs(edited.astype(int) - plain).max(axis=2) > 0
    assert changed.mean() > 0.01
    # the face's crop (at the tab's 2.5) bounds every change; outside it the photo is untouched
    crop = Animator(tiny_weights, device="cpu", progress=False).portrait(data_dir / PORTRAIT, crop_scale=2.5)
    x0, y0, x1, y1 = crop.faces[0].crop.region(photo.shape)
    inside = np.zeros(photo.shape[:2], bool)
    inside[y0:y1, x0:x1] = True
    assert (~inside).mean() > 0.05  # (a real test: part of the photo is outside the face's crop)
    assert not changed[~inside].any() and np.array_equal(edited[~inside], photo[~inside])


def test_readme_edit_one_liner(tiny_weights, tmp_path, capsys):
    """The README's `audio2lp edit` command runs as written (with tiny weights added, and the output in tmp)."""
    lines = [ln for ln in (REPO / "README.md").read_text().splitlines() if "`audio2lp edit examples/" in ln]
    assert lines, "the README shows `audio2lp edit examples/...`"
    cmd = shlex.split("examples/" + lines[0].split("`audio2lp edit examples/", 1)[1].split("`", 1)[0])
    i = cmd.index("-o")
    out = tmp_path / cmd[i + 1]
    cmd[i + 1] = str(out)
    cmd[0] = str(REPO / cmd[0])
    code, err = _cli(["edit", *cmd, "--weights", tiny_weights, "--device", "cpu", "-q"], capsys)
    assert code == 0 and out.is_file(), err
    assert any(c.startswith(("--smile", "--gaze")) for c in cmd)


@pytest.mark.slow
@pytest.mark.realdata
def test_edit_full_size(filled_weights_dir, data_dir, tmp_path, rendered_keypoints):
    """One edit end to end with the full-size networks (conformance-filled weights, official layout): expression,
    pose and movement sliders and both target ratios (the retargeting MLPs), stitching, and paste-back into the
    1080x1080 photo."""
    from lp_renderer.editing import edited_keypoints
    from lp_renderer.image_io import load_image

    portrait = data_dir / "portraits/JoyVASA__joyvasa_006.jpg"
    photo = load_image(portrait)
    anim = Animator(filled_weights_dir, device="cpu", progress=False)
    sliders = dict(smile=0.8, wink=10, gaze_x=-12, eyebrow=-8, lip_open=30, yaw=8, mov_z=1.05, eye_ratio=0.15,
                   lip_ratio=0.3)
    res = anim.edit(portrait, tmp_path / "edited.png", **sliders)
    img = cv2.cvtColor(cv2.imread(str(res.output)), cv2.COLOR_BGR2RGB)
    assert img.shape == photo.shape == (1080, 1080, 3)
    pt = anim.portrait(portrait, crop_scale=2.5)
    want = edited_keypoints(anim.renderer, pt.faces[0].source, PortraitEdit(**sliders))
    np.testing.assert_allclose(rendered_keypoints[-1], want.numpy(), atol=1e-5)
    x0, y0, x1, y1 = pt.faces[0].crop.region(photo.shape)
    outside = np.ones(photo.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    assert outside.mean() > 0.05 and np.array_equal(img[outside], photo[outside])
    assert np.abs(img[y0:y1, x0:x1].astype(int) - photo[y0:y1, x0:x1]).mean() > 1
