"""The web app (`audio2lp app`): the handlers without a browser, and the real page in headless Chromium.

The browser test starts the app on a free localhost port in a subprocess and runs tests/web/drive_app.mjs
(playwright-core with Debian's chromium): it uploads a portrait and a speech clip, presses Speak and checks
that a playable mp4 appears; then, in the Edit tab, it uploads the portrait, drags a slider and checks that the
edited image is re-rendered; then, in the Drive tab, it drives a portrait video (by itself). Screenshots go to
$AUDIO2LP_ARTIFACTS (default artifacts/ at the repo root).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.audio2lp.apps.served import served

gr = pytest.importorskip("gradio", reason='the web app needs Gradio (pip install -e ".[app]")')

from audio2lp.apps.webapp import AppHandlers, add_app_parser, build_app, page_message  # noqa: E402
from audio2lp.options import OptionError  # noqa: E402
from lp_renderer.errors import InputError  # noqa: E402
from lp_renderer.weights import save_networks  # noqa: E402

REPO = Path(__file__).resolve().parents[3]
WEB = REPO / "tests" / "web"
PORTRAIT = "portraits/EAMM__14.png"
SPEECH = "speech/MakeItTalk__M6_04_16k.wav"
VIDEO = "talking/LipNet__bbaf2n.mpg"
VIDEO_PORTRAIT = "talking/deep_avsr__00008.mp4"  # 160x160 at 25 fps, someone talking
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


def artifacts_dir() -> Path:
    d = Path(os.environ.get("AUDIO2LP_ARTIFACTS", REPO / "artifacts"))
    d.mkdir(parents=True, exist_ok=True)
    return d


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    from lp_renderer import RendererConfig, RendererNetworks

    root = tmp_path_factory.mktemp("tiny_weights")
    save_networks(RendererNetworks.random(RendererConfig.tiny(), seed=0), root)
    return root


@pytest.fixture(scope="module")
def motion_ckpt(tmp_path_factory):
    import torch

    from audio2lp.models.motion import MotionStats
    from audio2lp.models.motion_model import MotionModel, MotionModelConfig, save_motion_model

    torch.manual_seed(0)
    mean = np.zeros(70, np.float32)
    mean[69] = 1.5
    std = np.full(70, 0.01, np.float32)
    std[63:66] = 3.0
    path = tmp_path_factory.mktemp("mm") / "motion_model.safetensors"
    save_motion_model(path, MotionModel(MotionModelConfig(d_model=32, n_layers=1)), MotionStats(mean, std))
    return path


@pytest.fixture(scope="module")
def short_speech(data_dir, tmp_path_factory):
    """The first second of a real speech clip (written to tmp, never committed)."""
    from audio2lp.media.audio import load_audio, write_wav

    return write_wav(tmp_path_factory.mktemp("speech") / "speech_1s.wav",
                     load_audio(data_dir / SPEECH)[:16000])


class StubAnimator:
    """Records calls; raises ``error`` when given."""

    def __init__(self, error: Exception | None = None):
        self.error = error
        self.calls = []

    def speak(self, portrait, audio, output, **kw):
        return self._call("speak", portrait, audio, output, kw)

    def drive(self, portrait, driving, output, **kw):
        return self._call("drive", portrait, driving, output, kw)

    def portrait(self, image, face="largest", pasteback=True, crop_scale=None):
        from types import SimpleNamespace

        self.calls.append(("portrait", image, face, crop_scale, None))
        if self.error is not None:
            raise self.error
        source = SimpleNamespace(eye_ratios=(0.30, 0.32), lip_ratio=0.052)
        return SimpleNamespace(faces=[SimpleNamespace(source=source)], image=image)

    def edit(self, portrait, output, **kw):
        from audio2lp.api import RenderResult

        self.calls.append(("edit", portrait, None, Path(output), kw))
        Path(output).write_bytes(b"png")
        return RenderResult(Path(output), 1, 0.0, False)

    def _call(self, name, a, b, output, kw):
        from audio2lp.api import RenderResult

        self.calls.append((name, a, b, Path(output), kw))
        if self.error is not None:
            raise self.error
        cb = kw.get("progress_callback")
        if cb is not None:
            cb(5, 10)
            cb(10, 10)
        Path(output).write_bytes(b"")
        extra = {"duration": 0.4}
        if Path(a).suffix == ".mp4":  # a portrait video: what the Animator tells of dubbing / video-to-video
            extra = {**extra, "mode": "dubbing", "source_frames": 6} if name == "speak" else \
                {"mode": "source-video", "audio_from": b if kw.get("audio_priority") != "source" else a}
        return RenderResult(Path(output), 10, 25.0, True, template=kw.get("save_template"), extra=extra)


class Progress:
    def __init__(self):
        self.calls = []

    def __call__(self, progress, desc=None, total=None, unit="steps"):
        self.calls.append((progress, desc, unit))


# ------------------------------------------------------------------------------------ fast: no browser
def test_page_message_names_uploads_and_controls(tmp_path):
    up = "/tmp/gradio/ab12/me.png"
    msg = page_message(f"No face was found in {up}; use a photo ...", {up: "me.png"})
    assert msg == "No face was found in me.png; use a photo ..."
    # an option's problem names the page's control (no rewriting of command-line flags)
    anim = StubAnimator(OptionError("retarget_eyes", "this template has no eye/lip ratios, so {retarget_eyes}/"
                                                     "{retarget_lip} cannot be used with it."))
    with pytest.raises(gr.Error) as e:
        AppHandlers(anim, output_dir=tmp_path).drive("/up/p.png", "/up/d.mp4")
    assert "so Eye retargeting/Lip retargeting cannot be used" in e.value.message
    with pytest.raises(gr.Error) as e:
        AppHandlers(StubAnimator(), output_dir=tmp_path).speak("/up/p.png", "/up/s.wav", fps=500)
    assert e.value.message == "Frames per second must be between 1 and 120, not 500."


def test_speak_handler_passes_the_settings_and_reports_progress(tmp_path):
    anim = StubAnimator()
    h = AppHandlers(anim, output_dir=tmp_path, motion_model=tmp_path / "mm.safetensors")
    assert h.motion_choices == ["Motion model (mm.safetensors)", "Built-in motion"]
    prog = Progress()
    video, info = h.speak("/up/p.png", "/up/s.wav", h.motion_choices[0], "1", 30, 0.5, 0.0, False, 12, 3.0, 0,
                          None, True, progress=prog)
    name, portrait, audio, out, kw = anim.calls[0]
    assert (name, portrait, audio) == ("speak", "/up/p.png", "/up/s.wav")
    assert Path(video) == out and out.parent.parent == tmp_path and out.suffix == ".mp4"
    assert kw["motion_model"] == tmp_path / "mm.safetensors" and kw["face"] == 1 and kw["fps"] == 30
    assert kw["expression_scale"] == 0.5 and kw["pose_scale"] == 0 and kw["blink"] is False
    assert kw["blink_rate"] == 12 and kw["seed"] == 3 and isinstance(kw["seed"], int) and kw["pose_from"] is None
    assert "10 frames at 25 fps" in info
    assert prog.calls[0][0] == 0.0 and ((5, 10), "Rendering", "frames") in prog.calls
    # the built-in motion; a Gradio FileData-like dict for the upload; a head-motion template
    h.speak({"path": "/up/q.png"}, "/up/s.wav", "Built-in motion", "largest", 25, 1, 1, True, None, 0, 0,
            "/up/t.npz", True)
    _, portrait, _, out2, kw = anim.calls[1]
    assert portrait == "/up/q.png" and kw["motion_model"] is None and kw["blink_rate"] is None
    assert kw["expression_scale"] == 1.0 and kw["style"] == 0
    assert kw["pose_from"] == "/up/t.npz" and out2.parent != out.parent


def test_drive_handler_passes_the_settings(tmp_path):
    anim = StubAnimator()
    h = AppHandlers(anim, output_dir=tmp_path)
    video, template, info = h.drive("/up/p.png", "/up/d.mp4", None, "all", "lip", 1.5, True, True, False, False,
                                    True, True)
    name, _, driving, out, kw = anim.calls[0]
    assert driving == "/up/d.mp4" and kw["face"] == "all" and kw["region"] == "lip" and kw["multiplier"] == 1.5
    assert kw["retarget_eyes"] and not kw["retarget_lip"] and kw["concat"] and not kw["pasteback"]
    assert kw["save_template"] == out.with_suffix(".npz") and template == str(out.with_suffix(".npz"))
    h.drive("/up/p.png", None, "/up/t.npz")
    assert anim.calls[1][2] == "/up/t.npz" and anim.calls[1][4]["save_template"] is None


@pytest.mark.parametrize(("call", "expected"), [
    (lambda h: h.speak(None, "/up/s.wav"), "Upload a portrait photo (or a portrait video) first."),
    (lambda h: h.speak("/up/p.png", "/up/s.wav", portrait_video="/up/v.mp4"), "either a portrait photo or a portrait "
                                                                               "video, not both"),
    (lambda h: h.drive(None, "/up/d.mp4"), "Upload a portrait photo (or a portrait video) first."),
    (lambda h: h.speak("/up/p.png", None), "Upload or record a speech clip first."),
    (lambda h: h.speak("/up/p.png", "/up/s.wav", face="left"), "Face takes 'largest', 'all' or a face number"),
    (lambda h: h.speak("/up/p.png", "/up/s.wav", seed=1.5), "Seed must be a whole number"),
    (lambda h: h.speak("/up/p.png", "/up/s.wav", motion="Motion model (x)"), "Motion must be one of"),
    (lambda h: h.drive("/up/p.png"), "Upload a driving video (or a motion template) first."),
    (lambda h: h.drive("/up/p.png", "/up/d.mp4", "/up/t.npz"), "either a driving video or a motion template"),
    (lambda h: h.drive("/up/p.png", "/up/d.mp4", region="nose"), "Region must be one of"),
])
def test_handlers_check_inputs_before_rendering(tmp_path, call, expected):
    anim = StubAnimator()
    with pytest.raises(gr.Error) as e:
        call(AppHandlers(anim, output_dir=tmp_path))
    assert expected in e.value.message and e.value.title == "Cannot make the video"
    assert not anim.calls


def test_input_errors_become_page_messages(tmp_path):
    anim = StubAnimator(InputError("No face was found in /tmp/gradio/x/me.png; use a photo with a face."))
    with pytest.raises(gr.Error) as e:
        AppHandlers(anim, output_dir=tmp_path).speak("/tmp/gradio/x/me.png", "/tmp/gradio/y/s.wav")
    assert e.value.message == "No face was found in me.png; use a photo with a face."
    anim = StubAnimator(RuntimeError("boom"))
    with pytest.raises(gr.Error) as e:
        AppHandlers(anim, output_dir=tmp_path).speak("/up/p.png", "/up/s.wav")
    assert e.value.title == "Internal error" and "RuntimeError: boom" in e.value.message
    assert "Traceback" not in e.value.message


def test_edit_handler_prepares_once_and_renders_on_each_change(tmp_path):
    """The Edit tab: a portrait is prepared once per upload, face and crop scale; each slider change only renders.
    The ratio sliders start at the portrait's own ratios (rounded as the official tab), which mean "unchanged"."""
    anim = StubAnimator()
    h = AppHandlers(anim, output_dir=tmp_path)
    portrait = tmp_path / "me.png"
    portrait.write_bytes(b"not read by the stub")
    assert h.edit_prepare(str(portrait)) == (0.31, 0.05)
    image, info = h.edit(str(portrait), "largest", 2.5, True, True, eye_ratio=0.31, lip_ratio=0.05, smile=0.5)
    image2, _ = h.edit(str(portrait), "largest", 2.5, True, False, eye_ratio=0.45, lip_ratio=0.05, gaze_x=-7,
                       pitch=3)
    prepared = [c for c in anim.calls if c[0] == "portrait"]
    edits = [c for c in anim.calls if c[0] == "edit"]
    assert len(prepared) == 1 and prepared[0][2:4] == ("largest", 2.5)  # prepared once, at the tab's crop scale
    assert edits[0][1] is edits[1][1]  # the same prepared portrait, rendered twice
    kw = edits[0][4]
    assert kw["smile"] == 0.5 and kw["eye_ratio"] is None and kw["lip_ratio"] is None and kw["pasteback"]
    kw = edits[1][4]
    assert kw["eye_ratio"] == 0.45 and kw["lip_ratio"] is None and kw["gaze_x"] == -7 and kw["pitch"] == 3
    assert not kw["pasteback"] and "smile" not in kw  # (the Animator's default)
    assert Path(image).suffix == ".png" and Path(image).parent.parent == tmp_path and image != image2
    assert info == "Edited: Smile"
    h.edit(str(portrait), "0", 2.8, True, True, smile=0.1)  # another face or crop scale: prepared again
    assert len([c for c in anim.calls if c[0] == "portrait"]) == 2
    with pytest.raises(gr.Error) as e:
        h.edit(str(portrait), "largest", 2.5, True, True, smile=2)
    assert e.value.message == "Smile must be between -0.3 and 1.3, not 2."
    assert e.value.title == "Cannot edit the portrait"
    with pytest.raises(gr.Error) as e:
        h.edit(None, smile=0.2)
    assert e.value.message == "Upload a portrait photo first."
    with pytest.raises(gr.Error) as e:
        AppHandlers(StubAnimator(InputError(f"No face was found in {portrait}; use a photo.")),
                    output_dir=tmp_path).edit_prepare(str(portrait))
    assert e.value.message == "No face was found in me.png; use a photo."


def test_speak_and_drive_handlers_pass_the_sliders(tmp_path):
    anim = StubAnimator()
    h = AppHandlers(anim, output_dir=tmp_path)
    h.speak("/up/p.png", "/up/s.wav", smile=0.4, gaze_x=5)
    h.drive("/up/p.png", "/up/d.mp4", yaw=-10, mov_z=1.1)
    assert anim.calls[0][4]["smile"] == 0.4 and anim.calls[0][4]["gaze_x"] == 5
    assert anim.calls[1][4]["yaw"] == -10 and anim.calls[1][4]["mov_z"] == 1.1
    with pytest.raises(gr.Error) as e:
        h.speak("/up/p.png", "/up/s.wav", wink=40)
    assert e.value.message == "Wink must be between 0 and 39, not 40."


def test_handlers_with_a_portrait_video(tmp_path):
    """Speak and Drive take a portrait video instead of the photo: dubbing gets only the settings that apply to it
    (the photo's motion settings and offsets are not used, and the summary names those that were changed); drive
    gets the portrait video's settings, and with a photo they are not used."""
    anim = StubAnimator()
    h = AppHandlers(anim, output_dir=tmp_path, motion_model=tmp_path / "mm.safetensors")
    _, info = h.speak(None, "/up/s.wav", h.motion_choices[0], "1", 25, 1.0, 1.0, True, None, 7, 0, None, False,
                      portrait_video={"path": "/up/me.mp4"})
    name, portrait, audio, out, kw = anim.calls[-1]
    assert (name, portrait, audio) == ("speak", "/up/me.mp4", "/up/s.wav") and out.name == "me-speak.mp4"
    assert kw.keys() == {"face", "seed", "pasteback"}  # the video's own motion; none of the photo's settings
    assert (kw["face"], kw["seed"], kw["pasteback"]) == (1, 7, False)
    assert info == "Re-voiced the video: 10 frames at 25 fps (0.40 s of the new speech; 6 video frames)"
    _, info = h.speak(None, "/up/s.wav", "Built-in motion", fps=30, pose_scale=0.5, smile=0.4,
                      portrait_video="/up/me.mp4")
    assert anim.calls[-1][4].keys() == {"face", "seed", "pasteback"}
    assert info.endswith("Not used with this portrait: Frames per second, Head motion scale, Smile"), info
    # drive: the portrait video's settings go to the Animator; the constant offsets are not used with it
    _, _, info = h.drive(None, "/up/d.mp4", None, portrait_video="/up/me.mp4", driving_smooth_observation_variance=1e-6,
                         source_video_eye_retargeting=True, audio_priority="source", region="exp", yaw=10)
    name, portrait, driving, _, kw = anim.calls[-1]
    assert (name, portrait, driving, kw["region"]) == ("drive", "/up/me.mp4", "/up/d.mp4", "exp")
    assert kw["driving_smooth_observation_variance"] == 1e-6 and kw["source_video_eye_retargeting"] is True
    assert kw["audio_priority"] == "source" and "yaw" not in kw
    assert info == ("Drove each frame of the video: 10 frames at 25 fps, with the portrait video's sound. Not used "
                    "with this portrait: Relative yaw")
    # a photo: the portrait video's settings are not passed (the slider's 3e-7 may come back as 3.0000000000000004e-7)
    _, _, info = h.drive("/up/p.png", "/up/d.mp4", None, driving_smooth_observation_variance=3 * 1e-7, yaw=10)
    kw = anim.calls[-1][4]
    assert "audio_priority" not in kw and "driving_smooth_observation_variance" not in kw and kw["yaw"] == 10
    assert "Not used" not in info


def test_build_app_has_the_tabs_and_endpoints(tmp_path):
    from audio2lp.options import OPTIONS, sliders_for

    app = build_app(StubAnimator(), motion_model=tmp_path / "mm.safetensors", output_dir=tmp_path)
    cfg = app.get_config_file()
    labels = {c["props"].get("label") for c in cfg["components"]}
    assert {"Speak", "Drive", "Edit", "Portrait", "Speech", "Driving video", "Result", "Edited portrait"} <= labels
    ids = {c["props"].get("elem_id") for c in cfg["components"]}
    assert {"speak-button", "speak-video", "drive-button", "drive-video", "edit-portrait", "edit-result"} <= ids
    assert {"speak-portrait-video", "drive-portrait-video"} <= ids  # a photo or a video as the portrait
    public = {d.get("api_name") for d in cfg["dependencies"] if d.get("api_visibility", "public") == "public"}
    assert public == {"speak", "drive", "edit"}
    # every slider of the Edit tab (and the offsets of Speak / Drive) from the schema: range, step, label
    props = {c["props"].get("elem_id"): c["props"] for c in cfg["components"]}
    for tab, names in (("edit", sliders_for("edit")), ("speak", sliders_for("speak")), ("drive", sliders_for("drive"))):
        for name in names:
            p, o = props[f"{tab}-{name.replace('_', '-')}"], OPTIONS[name]
            assert (p["minimum"], p["maximum"], p["step"], p["label"]) == (o.minimum, o.maximum, o.ui_step, o.label)
    # each Edit slider re-renders when it is released
    sliders = {c["id"]: c["props"]["elem_id"] for c in cfg["components"] if str(c["props"].get("elem_id")).startswith(
        "edit-") and c.get("type") == "slider"}
    released = {t[0] for d in cfg["dependencies"] for t in d["targets"] if t[1] == "release"}
    assert len(sliders) == len(sliders_for("edit")) and set(sliders) <= released
    assert app.audio2lp_handlers.output_dir == tmp_path


def test_app_parser():
    import argparse

    parser = argparse.ArgumentParser()
    add_app_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["app", "--weights", "w", "--port", "0", "--motion-model", "m.safetensors",
                              "--device", "cpu"])
    assert (args.host, args.port, args.weights, args.motion_model, args.device) == ("127.0.0.1", 0, "w",
                                                                                    "m.safetensors", "cpu")
    assert callable(args.run)


# ------------------------------------------------------------------------------------ real renders, no browser
@pytest.mark.realdata
def test_handlers_render_real_inputs(tiny_weights, motion_ckpt, data_dir, short_speech, tmp_path):
    from audio2lp.api import Animator
    from audio2lp.media.ffmpeg import ffmpeg_exe
    from audio2lp.media.probe import probe_video

    h = AppHandlers(Animator(tiny_weights, device="cpu", progress=False), output_dir=tmp_path / "out",
                    motion_model=motion_ckpt)
    prog = Progress()
    video, info = h.speak(str(data_dir / PORTRAIT), str(short_speech), progress=prog)
    v = probe_video(video)
    assert v.n_frames == 25 and v.has_audio and "25 frames" in info
    assert prog.calls[-1][0] == (25, 25)

    clip = tmp_path / "drive.mp4"
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-i", str(data_dir / VIDEO), "-t", "0.3", "-c:v", "libx264",
                    "-preset", "ultrafast", "-c:a", "aac", str(clip)], check=True)
    video, template, info = h.drive(str(data_dir / PORTRAIT), str(clip), None, save_template=True, progress=prog)
    assert probe_video(video).n_frames == probe_video(clip).n_frames
    assert template and Path(template).is_file()
    with pytest.raises(gr.Error) as e:  # a photo without a face, as the page shows it
        blank = tmp_path / "blank.png"
        import cv2

        cv2.imwrite(str(blank), np.full((200, 200, 3), 128, np.uint8))
        h.speak(str(blank), str(short_speech))
    assert e.value.message.startswith("No face was found in blank.png")


@pytest.mark.realdata
def test_handlers_render_a_real_portrait_video(tiny_weights, data_dir, short_speech, tmp_path):
    """A real talking video as the portrait of the Speak tab (re-voiced with another person's speech: the video's
    size and frame rate, the speech's length) and of the Drive tab (driven by another video: the shorter length)."""
    from audio2lp.api import Animator
    from audio2lp.media.audio import load_audio, write_wav
    from audio2lp.media.probe import probe_video
    from tests.audio2lp.test_drive import cut_clip

    h = AppHandlers(Animator(tiny_weights, device="cpu", progress=False), output_dir=tmp_path / "out")
    video = cut_clip(data_dir / VIDEO_PORTRAIT, tmp_path / "me.mp4", 0.4)  # 160x160 at 25 fps
    src = probe_video(video)
    speech = write_wav(tmp_path / "speech.wav", load_audio(short_speech)[:8000])  # 0.5 s
    prog = Progress()
    out, info = h.speak(None, str(speech), portrait_video=str(video), progress=prog, fps=30)
    v = probe_video(out)
    n = round(0.5 * src.fps)
    assert (v.width, v.height, v.n_frames, v.has_audio) == (src.width, src.height, n, True)
    assert info == (f"Re-voiced the video: {n} frames at 25 fps (0.50 s of the new speech; {src.n_frames} video "
                    f"frames). Not used with this portrait: Frames per second")
    assert prog.calls[-1][0] == (n, n)
    driving = cut_clip(data_dir / VIDEO, tmp_path / "driving.mp4", 0.24)
    out, template, info = h.drive(None, str(driving), None, portrait_video=str(video), audio_priority="source")
    v = probe_video(out)
    n = min(src.n_frames, probe_video(driving).n_frames)
    assert (v.width, v.height, v.n_frames) == (src.width, src.height, n) and template is None
    assert info == f"Drove each frame of the video: {n} frames at 25 fps, with the portrait video's sound"


@pytest.mark.realdata
def test_edit_handler_renders_a_real_portrait(tiny_weights, data_dir, tmp_path):
    """The Edit tab's handlers on a real portrait: the sliders start at its own ratios; the face is detected once,
    every slider change renders a new PNG of the photo's size."""
    import cv2

    from audio2lp.api import Animator

    anim = Animator(tiny_weights, device="cpu", progress=False)
    detections = []
    faces = anim.faces
    detect = faces.detect
    faces.detect = lambda image: detections.append(1) or detect(image)
    h = AppHandlers(anim, output_dir=tmp_path / "out")
    eye, lip = h.edit_prepare(str(data_dir / PORTRAIT))
    assert 0 < eye < 0.8 and 0 <= lip < 0.8 and round(eye, 2) == eye
    prog = Progress()
    first, _ = h.edit(str(data_dir / PORTRAIT), eye_ratio=eye, lip_ratio=lip, progress=prog)
    second, info = h.edit(str(data_dir / PORTRAIT), eye_ratio=eye, lip_ratio=lip, smile=1.0, gaze_y=30)
    assert len(detections) == 1 and prog.calls[-1][0] == (1, 1)
    a, b = cv2.imread(first), cv2.imread(second)
    assert a.shape == b.shape == cv2.imread(str(data_dir / PORTRAIT)).shape
    assert np.abs(a.astype(int) - b).max() > 10 and info == "Edited: Smile, Eye gaze (vertical)"


# ------------------------------------------------------------------------------------ the page in a browser
def _browser_tools() -> str | None:
    """Why the browser test cannot run here, or None."""
    if shutil.which("node") is None:
        return "node is not installed"
    if not Path(CHROMIUM).is_file():
        return f"Chromium not found at {CHROMIUM} (apt-get install chromium)"
    if not (WEB / "node_modules" / "playwright-core").is_dir():
        return "playwright-core is not installed (run `npm ci` in tests/web)"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.realdata
def test_webapp_in_browser(tiny_weights, motion_ckpt, data_dir, short_speech, tmp_path):
    missing = _browser_tools()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"the browser test must run in CI, but {missing}")
        pytest.skip(missing)
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_TEMP_DIR": str(tmp_path / "gradio"),
           "HF_HUB_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE", "NO_PROXY": "127.0.0.1,localhost",
           "no_proxy": "127.0.0.1,localhost", "PYTHONUNBUFFERED": "1"}
    log_path = tmp_path / "server.log"
    cmd = [sys.executable, "-m", "audio2lp", "app", "--weights", str(tiny_weights), "--motion-model", str(motion_ckpt),
           "--host", "127.0.0.1", "--port", str(port), "--device", "cpu", "--output-dir", str(tmp_path / "out")]
    t0 = time.monotonic()
    with served(cmd, url, log_path, env=env, cwd=tmp_path):
        started = time.monotonic() - t0
        shot = artifacts_dir() / "webapp_speak.png"
        from tests.audio2lp.test_drive import cut_clip

        video = cut_clip(data_dir / VIDEO_PORTRAIT, tmp_path / "me.mp4", 0.2)  # the Drive tab's portrait video
        proc = subprocess.run(["node", str(WEB / "drive_app.mjs"), url, str(data_dir / PORTRAIT), str(short_speech),
                               str(shot), str(video)], cwd=WEB, capture_output=True, text=True, timeout=900,
                              env={**os.environ, "CHROMIUM": CHROMIUM, "NO_PROXY": "127.0.0.1,localhost"})
        lines = proc.stdout.strip().splitlines()
        report = json.loads(lines[-1]) if lines else {}
        assert proc.returncode == 0, (f"the browser run failed: {report.get('error') or proc.stderr[-3000:]}\n"
                                      f"server log:\n{log_path.read_text()[-3000:]}")
    v = report["video"]
    assert v["box"] == "ftyp" and v["duration"] == pytest.approx(1.0, abs=0.1) and v["readyState"] >= 2
    assert v["width"] > 0 and v["height"] > 0 and v["played"]
    assert report["emptyError"].endswith("Upload a portrait photo (or a portrait video) first.")
    texts = report["progressTexts"]  # e.g. "Rendering - 32.0%", "8/25 frames"
    assert any("Rendering" in t for t in texts) and any(re.fullmatch(r"\d+/25 frames", t) for t in texts), texts
    assert report["blocked"] == [], f"the page tried to reach other hosts: {report['blocked']}"
    edit = report["edit"]  # the Edit tab: a slider released -> the portrait re-rendered
    assert 0 < edit["eyeRatio"] <= 0.8 and 0 <= edit["lipRatio"] <= 0.8  # the portrait's own ratios
    assert edit["smile"] > 0.5 and edit["after"]["src"] != edit["before"]["src"] and edit["png"] == "PNG"
    assert (edit["after"]["width"], edit["after"]["height"]) == (256, 256)  # the photo's size (pasted back)
    assert edit["info"].startswith("Edited: Smile")
    drove = report["driveVideo"]  # the Drive tab with a portrait video: each of its 5 frames driven
    assert drove["box"] == "ftyp" and drove["info"].startswith("Drove each frame of the video: 5 frames at 25 fps")
    assert shot.is_file()
    print(f"app ready in {started:.1f} s, render {report['renderSeconds']:.1f} s; screenshots in {shot.parent}")
