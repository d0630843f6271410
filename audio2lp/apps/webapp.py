"""The web app: ``audio2lp app`` serves a local Gradio page with a "Speak", a "Drive" and an "Edit" tab.

It runs on the same :class:`~audio2lp.api.Animator` as the command line. The page needs no internet
(no analytics, no share tunnel, no web fonts). Gradio is an optional dependency (``pip install
"audio2lp[app]"``); this module imports it only when the app is built.

    from audio2lp import Animator
    from audio2lp.apps.webapp import build_app, launch_app
    launch_app(build_app(Animator("pretrained_weights")), port=7860)

The portrait of Speak and Drive is a photo or a video (dubbing, video-to-video: :mod:`audio2lp.apps.webapp_portrait`).
The Edit tab has the sliders of LivePortrait's image-retargeting tab (from :mod:`audio2lp.options`, like every
control); the portrait is prepared once per upload (cached), and releasing a slider only re-renders. Speak and Drive
offer the same sliders (without the target ratios) as constant offsets.

The handlers (:class:`AppHandlers`) are plain functions of file paths and settings, so they can be
tested without a browser; user-fixable problems come out of them as ``gradio.Error`` with the
:class:`~lp_renderer.errors.InputError` message, worded for the page (an option's problem names the control's
label, from :mod:`audio2lp.options`, like every control's range and default).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from audio2lp import options
from audio2lp.apps.frontdoor import add_arguments, prepare_process, run, setup_logging
from audio2lp.apps.frontdoor import animator as animator_from_args
from audio2lp.apps.webapp_portrait import applicable, one_portrait, unused_note
from audio2lp.options import WEB, OptionError, check_value
from lp_renderer.errors import InputError

log = logging.getLogger(__name__)

BUILTIN_MOTION = "Built-in motion"
FACE_CHOICES = ["largest", "all", "0", "1", "2", "3"]
TEMPLATE_TYPES = [".npz", ".pkl"]
PREPARED_PORTRAITS = 4  # prepared portraits the Edit tab keeps (per upload, face and crop scale)
EDIT_ROWS = (("eye_ratio", "lip_ratio", "pitch", "yaw", "roll", "mov_x", "mov_y", "mov_z"),
             ("pouting", "pursing", "grin", "lip_open", "smile"), ("wink", "eyebrow", "gaze_x", "gaze_y"))


def _require_gradio():
    try:
        import gradio as gr
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise InputError('the web app needs Gradio; install it with: pip install "audio2lp[app]"') from e
    return gr


def _path(value: Any) -> str | None:
    """A Gradio file value (a path, a FileData-like dict or object, or None) as a path string."""
    if value is None or value == "":
        return None
    if isinstance(value, dict):
        value = value.get("path") or value.get("name")
    elif not isinstance(value, (str, os.PathLike)):
        value = getattr(value, "path", None) or getattr(value, "name", None)
    return None if value is None else os.fspath(value)


class AppHandlers:
    """What the page's buttons do, without the page.

    ``animator``: the :class:`~audio2lp.api.Animator` to render with. ``output_dir``: where results are
    written (one file per run; default a temporary folder removed when the process exits).
    ``motion_model``: an audio-to-motion checkpoint offered on the Speak tab (default: only the built-in
    motion). Runs are serialised (one render at a time).
    """

    def __init__(self, animator, output_dir: str | os.PathLike | None = None,
                 motion_model: str | os.PathLike | None = None):
        self.animator = animator
        if output_dir is None:
            output_dir = tempfile.mkdtemp(prefix="audio2lp-app-")
            atexit.register(shutil.rmtree, output_dir, True)
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.motion_model = Path(motion_model) if motion_model is not None else None
        self._lock = threading.Lock()
        self._prepared: OrderedDict[tuple, tuple[Any, tuple[float | None, float | None]]] = OrderedDict()

    # ------------------------------------------------------------------------------ choices
    @property
    def motion_choices(self) -> list[str]:
        return ([self.motion_model_label] if self.motion_model else []) + [BUILTIN_MOTION]

    @property
    def motion_model_label(self) -> str | None:
        return f"Motion model ({self.motion_model.name})" if self.motion_model else None

    # ------------------------------------------------------------------------------ speak
    def speak(self, portrait, audio, motion: str | None = None, face: Any = "largest", fps: float = 25.0,
              expression_scale: float = 1.0, pose_scale: float = 1.0, blink: bool = True,
              blink_rate: float | None = None, seed: Any = 0, style: Any = 0, pose_from=None,
              pasteback: bool = True, progress: Callable | None = None, portrait_video=None,
              **sliders) -> tuple[str, str]:
        """Make ``portrait`` say ``audio``; returns (the mp4's path, a one-line summary). ``sliders``: the editing
        sliders as constant offsets (``smile=0.4``, ...; see :meth:`audio2lp.Animator.speak`).

        ``portrait_video`` instead of ``portrait``: dubbing, the person in the video says ``audio`` (its frames,
        the speech's mouth); the settings of a photo's motion do not apply to it and are not used (the summary
        names those that were changed). ``motion``: one of :attr:`motion_choices` (default: the motion model when
        there is one). ``progress``: a ``gradio.Progress`` (or any callable taking ``(done, total)`` or a fraction,
        and ``desc=``). Raises ``gradio.Error`` with a readable message for user-fixable problems."""
        audio_p, pose_p = _path(audio), _path(pose_from)
        names = {p: Path(p).name for p in (_path(portrait), _path(portrait_video), audio_p, pose_p) if p}
        with _page_errors(names):
            portrait_p = one_portrait(_path(portrait), _path(portrait_video))
            if audio_p is None:
                raise InputError("Upload or record a speech clip first.")
            if motion in (None, ""):
                motion = self.motion_choices[0]
            if motion not in self.motion_choices:
                raise InputError(f"Motion must be one of {', '.join(self.motion_choices)}, not {motion!r}.")
            motion_model = self.motion_model if motion == self.motion_model_label else None
            empty = (None, "")
            kwargs = options.check(dict(face=face, fps=fps, expression_scale=expression_scale, pose_scale=pose_scale,
                                        seed=0 if seed in empty else seed, style=0 if style in empty else style,
                                        blink=blink, blink_rate=None if blink_rate in empty else blink_rate,
                                        pasteback=pasteback))
            kwargs.update(motion_model=motion_model, pose_from=pose_p if motion_model is None else None,
                          **_sliders("speak", sliders))
            if motion_model is None:  # the form sends every control; the motion model's style is not the user's here
                kwargs.update(style=options.OPTIONS["style"].default)
            unused = []
            if _path(portrait_video) is not None:  # dubbing: the video's head, eyes and frame rate, the speech's mouth
                kwargs["motion_model"] = None  # (the Motion choice is for a photo)
                kwargs, unused = applicable(kwargs, "speak", video=True)
            out = self._new_output(portrait_p, "speak", ".mp4")
            res = self._run(self.animator.speak, (portrait_p, audio_p, out), kwargs, progress)
            secs = res.extra.get("duration", res.n_frames / res.fps)
            summary = f"{res.n_frames} frames at {res.fps:g} fps ({secs:.2f} s, with audio)"
            if res.extra.get("mode") == "dubbing":
                summary = (f"Re-voiced the video: {res.n_frames} frames at {res.fps:.4g} fps ({secs:.2f} s of the new "
                           f"speech; {res.extra['source_frames']} video frames)")
            return str(res.output), summary + unused_note(unused)

    # ------------------------------------------------------------------------------ drive
    def drive(self, portrait, driving_video=None, driving_template=None, face: Any = "largest",
              region: str = "all", multiplier: float = 1.0, stitching: bool = True, retarget_eyes: bool = False,
              retarget_lip: bool = False, pasteback: bool = True, concat: bool = False,
              save_template: bool = False, progress: Callable | None = None, portrait_video=None,
              driving_smooth_observation_variance: float = 3e-7, source_video_eye_retargeting: bool = False,
              audio_priority: str = "driving", **sliders) -> tuple[str, str | None, str]:
        """Animate ``portrait`` with a driving video (or a motion template); returns (the mp4's path, the
        saved motion template's path or None, a one-line summary). Errors and ``sliders`` as :meth:`speak`.
        ``portrait_video`` instead of ``portrait``: video-to-video, each of its frames takes the driving motion
        (``driving_smooth_observation_variance``, ``source_video_eye_retargeting`` and ``audio_priority`` apply to
        it only; the constant offsets apply to a photo only: what does not apply is not used, and the summary
        names what was changed)."""
        portrait_p, video_p, tmpl_p = _path(portrait), _path(driving_video), _path(driving_template)
        names = {p: Path(p).name for p in (portrait_p, _path(portrait_video), video_p, tmpl_p) if p}
        with _page_errors(names):
            portrait_p = one_portrait(portrait_p, _path(portrait_video))
            if video_p is None and tmpl_p is None:
                raise InputError("Upload a driving video (or a motion template) first.")
            if video_p is not None and tmpl_p is not None:
                raise InputError("Give either a driving video or a motion template, not both; clear one of them.")
            kwargs = options.check(dict(face=face, region=region, multiplier=multiplier, stitching=stitching,
                                        retarget_eyes=retarget_eyes, retarget_lip=retarget_lip, pasteback=pasteback,
                                        concat=concat, **_sliders("drive", sliders),
                                        driving_smooth_observation_variance=driving_smooth_observation_variance,
                                        source_video_eye_retargeting=source_video_eye_retargeting,
                                        audio_priority=audio_priority))
            kwargs, unused = applicable(kwargs, "drive", video=_path(portrait_video) is not None)
            out = self._new_output(portrait_p, "drive", ".mp4")
            kwargs["save_template"] = out.with_suffix(".npz") if save_template else None
            res = self._run(self.animator.drive, (portrait_p, video_p or tmpl_p, out), kwargs, progress)
            audio = ", with audio" if res.has_audio else ""
            summary = f"{res.n_frames} frames at {res.fps:.3g} fps{audio}"
            if res.extra.get("mode") == "source-video":
                own = Path(res.extra.get("audio_from") or "") == Path(portrait_p)
                whose = "the portrait video's" if own else "the driving video's"
                audio = f", with {whose} sound" if res.has_audio else ", without sound"
                summary = f"Drove each frame of the video: {res.n_frames} frames at {res.fps:.4g} fps{audio}"
            summary += unused_note(unused)
            return str(res.output), (str(res.template) if res.template else None), summary

    # ------------------------------------------------------------------------------ edit
    def edit_prepare(self, portrait, face: Any = "largest", crop_scale: float = 2.5) -> tuple[float | None,
                                                                                               float | None]:
        """Prepare ``portrait`` for editing (once per upload, face and crop scale; kept for the next renders) and
        return its own eyes-open and lip-open ratios as the official tab rounds them (the ratio sliders' initial
        values; None when unknown)."""
        path = _path(portrait)
        with _page_errors({path: Path(path).name} if path else {}, "Cannot edit the portrait"):
            if path is None:
                raise InputError("Upload a portrait photo first.")
            return self._prepare(path, face, crop_scale)[1]

    def edit(self, portrait, face: Any = "largest", crop_scale: float = 2.5, stitching: bool = True,
             pasteback: bool = True, progress: Callable | None = None, **sliders) -> tuple[str, str]:
        """Edit ``portrait`` with the sliders (``smile=0.5``, ``eye_ratio=0.4``, ...; see
        :meth:`audio2lp.Animator.edit`); returns (the PNG's path, a one-line summary). The prepared portrait is
        reused (:meth:`edit_prepare`), so a slider change only renders. A target ratio equal to the portrait's own
        (the slider's initial value) leaves it unchanged."""
        path = _path(portrait)
        with _page_errors({path: Path(path).name} if path else {}, "Cannot edit the portrait"):
            if path is None:
                raise InputError("Upload a portrait photo first.")
            values = options.check(dict(stitching=stitching, pasteback=pasteback, **_sliders("edit", sliders)))
            prepared, own = self._prepare(path, face, crop_scale)
            for name, mine in zip(("eye_ratio", "lip_ratio"), own):
                if values.get(name) is not None and mine is not None and round(values[name], 2) == mine:
                    values[name] = None  # still at the portrait's own: no retargeting (for every face)
            out = self._new_output(path, "edit", ".png")
            res = self._run(self.animator.edit, (prepared, out), values, progress)
            changed = [options.OPTIONS[n].label for n in options.SLIDER_NAMES
                       if values.get(n) not in (None, options.OPTIONS[n].default)]
            return str(res.output), "Edited: " + (", ".join(changed) or "nothing (the sliders are neutral)")

    def _prepare(self, path: str, face: Any, crop_scale: float):
        """The prepared portrait of ``path`` (cached) and its own rounded (eye, lip) ratios."""
        from lp_renderer.editing import source_ratio_targets

        face, crop_scale = check_value("face", face), check_value("crop_scale", crop_scale)
        try:
            st = os.stat(path)
            stamp = (st.st_mtime_ns, st.st_size)
        except OSError:  # the Animator says what is wrong with the file
            stamp = None
        key = (os.path.abspath(path), stamp, face, crop_scale)
        with self._lock:  # the upload's prepare and a slider's render may run at once
            if key in self._prepared:
                self._prepared.move_to_end(key)
                return self._prepared[key]
            prepared = self.animator.portrait(path, face=face, crop_scale=crop_scale)
            entry = (prepared, source_ratio_targets(prepared.faces[0].source))
            self._prepared[key] = entry
            while len(self._prepared) > PREPARED_PORTRAITS:
                self._prepared.popitem(last=False)
            return entry

    # ------------------------------------------------------------------------------ helpers
    def _new_output(self, portrait: str, kind: str, suffix: str) -> Path:
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(portrait).stem)[:40] or "portrait"
        run = Path(tempfile.mkdtemp(prefix=time.strftime("%Y%m%d-%H%M%S-"), dir=self.output_dir))
        return run / f"{stem}-{kind}{suffix}"

    def _run(self, method: Callable, args: tuple, kwargs: dict, progress: Callable | None):
        if progress is not None:
            progress(0.0, desc="Loading the models and finding the face")

            def on_frames(done: int, total: int) -> None:
                progress((int(done), int(total)), desc="Rendering", unit="frames")

            kwargs = {**kwargs, "progress_callback": on_frames}
        with self._lock:
            return method(*args, **kwargs)


def _sliders(command: str, values: dict[str, Any]) -> dict[str, Any]:
    """The editing sliders given to a handler, checked: only those ``command`` takes."""
    unknown = set(values) - set(options.sliders_for(command))
    if unknown:
        raise TypeError(f"{command} takes no {', '.join(sorted(unknown))}")
    return options.check(values)


@contextlib.contextmanager
def _page_errors(names: dict[str, str], title: str = "Cannot make the video"):
    """InputError (and memory errors, and bugs) -> gradio.Error with a message worded for the page."""
    try:
        yield
    except InputError as e:
        gr = _require_gradio()
        log.info("input problem: %s", e)
        text = e.describe(WEB) if isinstance(e, OptionError) else str(e)
        raise gr.Error(page_message(text, names), title=title, print_exception=False) from e
    except MemoryError as e:
        gr = _require_gradio()
        raise gr.Error("Out of memory; start the app with a smaller --batch-size.", title="Out of memory",
                       print_exception=False) from e
    except Exception as e:
        gr = _require_gradio()
        if isinstance(e, gr.Error):
            raise
        log.exception("the render failed")
        raise gr.Error(f"Something went wrong inside audio2lp ({type(e).__name__}: {e}). This is a bug; the "
                       f"server log has the details.", title="Internal error", print_exception=False) from e


def page_message(message: str, names: dict[str, str] | None = None) -> str:
    """An InputError message worded for the page: uploaded files' temporary paths become their names (options are
    already named by their controls' labels, see :meth:`audio2lp.options.OptionError.describe`)."""
    for path, name in sorted((names or {}).items(), key=lambda kv: -len(kv[0])):
        message = message.replace(path, name)
    return message[:1].upper() + message[1:]


def _slider_control(gr, name: str, tab: str):
    """The slider of editing option ``name`` (range, step, default and label from :mod:`audio2lp.options`); the
    target ratios start at their minimum until a portrait sets them to its own."""
    o = options.OPTIONS[name]
    return gr.Slider(o.minimum, o.maximum, value=o.default if o.default is not None else o.minimum, step=o.ui_step,
                     label=o.label, elem_id=f"{tab}-{name.replace('_', '-')}", min_width=200)


def _control(gr, name: str, **overrides):
    """The Gradio control of option ``name``: its kind, range, default and label from :mod:`audio2lp.options`."""
    o = options.OPTIONS[name]
    kw: dict[str, Any] = {"label": o.label}
    if o.ui_info:
        kw["info"] = o.ui_info
    kw.update(overrides)
    if o.kind == "bool":
        return gr.Checkbox(value=bool(o.default), **kw)
    if o.kind == "face":
        return gr.Dropdown(FACE_CHOICES, value=o.default, allow_custom_value=True, **kw)
    if o.choices is not None:
        return gr.Dropdown(list(o.choices), value=o.default, **kw)
    if o.nullable or (o.minimum is None or o.maximum is None) and o.ui_range is None:
        bounds = {k: v for k, v in (("minimum", o.minimum), ("maximum", o.maximum)) if v is not None}
        return gr.Number(value=o.default, precision=0 if o.kind == "int" else None, **bounds, **kw)
    lo, hi = o.ui_range or (o.minimum, o.maximum)
    step = o.ui_step or (1 if o.kind == "int" else 0.05)
    return gr.Slider(lo, hi, value=o.default, step=step, **kw)


# ---------------------------------------------------------------------------------------- the page
def build_app(animator, *, motion_model: str | os.PathLike | None = None,
              output_dir: str | os.PathLike | None = None, title: str = "audio2lp"):
    """The Gradio ``Blocks`` of the app (not launched). Launch it with :func:`launch_app` (offline-safe
    settings) or ``app.launch(...)``. ``animator``, ``motion_model`` and ``output_dir`` as
    :class:`AppHandlers`."""
    gr = _require_gradio()
    h = AppHandlers(animator, output_dir=output_dir, motion_model=motion_model)
    # the sliders: constant offsets on Speak and Drive, the image-retargeting tab's on Edit
    speak_offsets, drive_offsets, edits = (options.sliders_for(c) for c in ("speak", "drive", "edit"))

    def speak(portrait, portrait_video, audio, motion, face, fps, expression_scale, pose_scale, blink, blink_rate,
              seed, style, pose_from, pasteback, *values, progress=gr.Progress()):
        return h.speak(portrait, audio, motion, face, fps, expression_scale, pose_scale, blink, blink_rate, seed,
                       style, pose_from, pasteback, progress=progress, portrait_video=portrait_video,
                       **dict(zip(speak_offsets, values)))

    def drive(portrait, portrait_video, driving_video, driving_template, face, region, multiplier, stitching,
              retarget_eyes, retarget_lip, pasteback, concat, save_template, smoothing, first_eyes, audio_from,
              *values, progress=gr.Progress()):
        video, template, summary = h.drive(portrait, driving_video, driving_template, face, region, multiplier,
                                           stitching, retarget_eyes, retarget_lip, pasteback, concat,
                                           save_template, progress=progress, portrait_video=portrait_video,
                                           driving_smooth_observation_variance=smoothing,
                                           source_video_eye_retargeting=first_eyes, audio_priority=audio_from,
                                           **dict(zip(drive_offsets, values)))
        return video, gr.update(value=template, visible=template is not None), summary

    def edit_prepare(portrait, face, crop_scale):
        if _path(portrait) is None:  # cleared
            return gr.update(), gr.update()
        return tuple(gr.update() if v is None else v for v in h.edit_prepare(portrait, face, crop_scale))

    def edit(portrait, face, crop_scale, stitching, pasteback, *values, progress=gr.Progress()):
        if _path(portrait) is None:  # a slider moved before a portrait was uploaded: nothing to render yet
            return gr.update(), "Upload a portrait photo first."
        return h.edit(portrait, face, crop_scale, stitching, pasteback, progress=progress, **dict(zip(edits, values)))

    def neutral():
        return [options.OPTIONS[n].default if options.OPTIONS[n].default is not None else gr.update() for n in edits]

    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(3600, 24 * 3600)) as app:
        gr.Markdown(f"# {title}\nA portrait photo (or a video) and speech (or a driving video) → a talking-head video, "
                    "rendered with LivePortrait on this computer.")
        with gr.Tabs():
            with gr.Tab("Speak", id="speak", elem_id="speak-tab"):
                with gr.Row():
                    with gr.Column():
                        s_portrait = gr.Image(label="Portrait", type="filepath", format="png",
                                              sources=["upload", "clipboard"], elem_id="speak-portrait",
                                              height=320)
                        s_portrait_video = gr.Video(label="…or a portrait video to re-voice (dubbing)",
                                                    sources=["upload"], elem_id="speak-portrait-video", height=240)
                        s_audio = gr.Audio(label="Speech", type="filepath", sources=["upload", "microphone"],
                                           elem_id="speak-audio")
                        with gr.Group():
                            s_motion = gr.Radio(h.motion_choices, value=h.motion_choices[0], label="Motion",
                                                visible=len(h.motion_choices) > 1, elem_id="speak-motion")
                            s_face = _control(gr, "face")
                            s_pose_scale = _control(gr, "pose_scale")
                            s_expr = _control(gr, "expression_scale")
                            s_blink = _control(gr, "blink")
                        with gr.Accordion("More settings", open=False):
                            s_fps = _control(gr, "fps")
                            s_blink_rate = _control(gr, "blink_rate")
                            s_seed = _control(gr, "seed")
                            s_style = _control(gr, "style", visible=motion_model is not None)
                            s_pose_from = gr.File(label=f"{options.OPTIONS['pose_from'].label} (.npz/.pkl, "
                                                  "built-in motion only)", file_types=TEMPLATE_TYPES,
                                                  type="filepath")
                            s_pasteback = _control(gr, "pasteback")
                        with gr.Accordion("Expression (constant offsets, portrait photo)", open=False):
                            s_offsets = [_slider_control(gr, n, "speak") for n in speak_offsets]
                        s_button = gr.Button("Speak", variant="primary", elem_id="speak-button")
                    with gr.Column():
                        s_video = gr.Video(label="Result", interactive=False, buttons=["download"],
                                           elem_id="speak-video", height=480)
                        s_info = gr.Markdown(elem_id="speak-info")
                s_button.click(speak, [s_portrait, s_portrait_video, s_audio, s_motion, s_face, s_fps, s_expr,
                                       s_pose_scale, s_blink, s_blink_rate, s_seed, s_style, s_pose_from, s_pasteback,
                                       *s_offsets],
                               [s_video, s_info], api_name="speak", concurrency_id="render", concurrency_limit=1,
                               show_progress_on=[s_video])

            with gr.Tab("Drive", id="drive", elem_id="drive-tab"):
                with gr.Row():
                    with gr.Column():
                        d_portrait = gr.Image(label="Portrait", type="filepath", format="png",
                                              sources=["upload", "clipboard"], elem_id="drive-portrait",
                                              height=320)
                        d_portrait_video = gr.Video(label="…or a portrait video (each frame is driven)",
                                                    sources=["upload"], elem_id="drive-portrait-video", height=240)
                        d_video = gr.Video(label="Driving video", sources=["upload"], elem_id="drive-driving")
                        d_template = gr.File(label="…or a motion template (.npz/.pkl)", file_types=TEMPLATE_TYPES,
                                             type="filepath", elem_id="drive-template")
                        with gr.Group():
                            d_face = _control(gr, "face")
                            d_region = _control(gr, "region")
                            d_mult = _control(gr, "multiplier")
                        with gr.Accordion("More settings", open=False):
                            d_eyes = _control(gr, "retarget_eyes")
                            d_lip = _control(gr, "retarget_lip")
                            d_stitch = _control(gr, "stitching")
                            d_pasteback = _control(gr, "pasteback")
                            d_concat = _control(gr, "concat")
                            d_save = gr.Checkbox(value=False, label=options.OPTIONS["save_template"].label,
                                                 info=options.OPTIONS["save_template"].ui_info)
                        with gr.Accordion("Portrait video", open=False):
                            d_smoothing = _control(gr, "driving_smooth_observation_variance")
                            d_first_eyes = _control(gr, "source_video_eye_retargeting")
                            d_audio_from = _control(gr, "audio_priority")
                        with gr.Accordion("Expression (constant offsets, portrait photo)", open=False):
                            d_offsets = [_slider_control(gr, n, "drive") for n in drive_offsets]
                        d_button = gr.Button("Drive", variant="primary", elem_id="drive-button")
                    with gr.Column():
                        d_out = gr.Video(label="Result", interactive=False, buttons=["download"],
                                         elem_id="drive-video", height=480)
                        d_template_out = gr.File(label="Motion template", visible=False, interactive=False,
                                                 elem_id="drive-template-out")
                        d_info = gr.Markdown(elem_id="drive-info")
                d_button.click(drive, [d_portrait, d_portrait_video, d_video, d_template, d_face, d_region, d_mult,
                                       d_stitch, d_eyes, d_lip, d_pasteback, d_concat, d_save, d_smoothing,
                                       d_first_eyes, d_audio_from, *d_offsets],
                               [d_out, d_template_out, d_info], api_name="drive", concurrency_id="render",
                               concurrency_limit=1, show_progress_on=[d_out])

            with gr.Tab("Edit", id="edit", elem_id="edit-tab"):
                with gr.Row():
                    with gr.Column():
                        e_portrait = gr.Image(label="Portrait", type="filepath", format="png",
                                              sources=["upload", "clipboard"], elem_id="edit-portrait", height=320)
                        with gr.Accordion("Settings", open=False):
                            e_face = _control(gr, "face")
                            e_crop = _control(gr, "crop_scale")
                            e_stitch = _control(gr, "stitching")
                            e_pasteback = _control(gr, "pasteback")
                        e_reset = gr.Button("Reset the sliders", elem_id="edit-reset")
                    with gr.Column():
                        e_result = gr.Image(label="Edited portrait", type="filepath", interactive=False,
                                            elem_id="edit-result", height=480)
                        e_info = gr.Markdown(elem_id="edit-info")
                gr.Markdown("Move a slider and release it: the edit re-renders (the portrait is prepared once).")
                made = {}
                for row in EDIT_ROWS:  # ratios, head and movement; mouth; eyes (as the official tab groups them)
                    with gr.Row():
                        made.update((n, _slider_control(gr, n, "edit")) for n in row)
                e_sliders = [made[n] for n in edits]
                e_inputs = [e_portrait, e_face, e_crop, e_stitch, e_pasteback, *e_sliders]
                # one public API endpoint ("edit"); the other events render the same way, privately
                render = {"fn": edit, "inputs": e_inputs, "outputs": [e_result, e_info], "concurrency_id": "render",
                          "concurrency_limit": 1, "show_progress_on": [e_result], "api_visibility": "private"}
                prepare = {"fn": edit_prepare, "inputs": [e_portrait, e_face, e_crop],
                           "outputs": [e_sliders[edits.index("eye_ratio")], e_sliders[edits.index("lip_ratio")]],
                           "api_visibility": "private"}
                e_sliders[0].release(**{**render, "api_visibility": "public"}, api_name="edit")
                for slider in e_sliders[1:]:
                    slider.release(**render)
                e_portrait.upload(**prepare).then(**render)
                e_face.change(**prepare).then(**render)
                e_crop.release(**prepare).then(**render)
                for control in (e_stitch, e_pasteback):
                    control.change(**render)
                e_reset.click(neutral, None, e_sliders, api_visibility="private").then(**prepare).then(**render)
    app.queue(default_concurrency_limit=1)
    app.audio2lp_handlers = h  # for tests and embedding
    return app


def launch_app(app, *, host: str = "127.0.0.1", port: int | None = None, open_browser: bool = False,
               quiet: bool = True, block: bool = True):
    """Serve ``app`` locally with offline-safe settings: no share tunnel, no analytics, client-side
    rendering (no Node server), no run history, and results readable from the app's output folder."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    h = getattr(app, "audio2lp_handlers", None)
    allowed = [str(h.output_dir)] if h is not None else None
    return app.launch(server_name=host, server_port=port, share=False, inbrowser=open_browser, quiet=quiet,
                      ssr_mode=False, pwa=False, mcp_server=False, run_history=False, allowed_paths=allowed,
                      prevent_thread_lock=not block, show_error=False)


# ---------------------------------------------------------------------------------------- CLI
def add_app_parser(sub) -> None:
    """Register the ``audio2lp app`` subcommand on ``sub`` (an argparse subparsers object)."""
    p = sub.add_parser(
        "app", help="serve the web app (Speak, Drive and Edit tabs) on this computer",
        description="Serve a local web page with three tabs: Speak (a portrait photo and a speech clip or a "
                    "microphone recording -> a talking-head video, or a portrait video re-voiced), Drive (a portrait "
                    "photo or video and a driving video or motion template) and Edit (a portrait's expression and "
                    "head pose with live sliders). It renders with the same engine as `audio2lp speak`, `drive` and "
                    "`edit`, "
                    "needs no internet, and is reachable only from this computer unless --host says otherwise. "
                    'Needs Gradio: pip install "audio2lp[app]".')
    add_arguments(p, "app", defaults={"port": 7860})
    p.set_defaults(run=_run_app)


def _run_app(args) -> int:
    port = check_value("port", args.port)
    _require_gradio()
    if args.motion_model is not None:
        from audio2lp.models.motion_model import read_motion_model_metadata

        read_motion_model_metadata(args.motion_model)  # fail before serving on a bad checkpoint
    animator = animator_from_args(args)
    animator.renderer  # noqa: B018 - load the weights now: a bad --weights fails here, not on the first click
    animator.faces  # noqa: B018
    app = build_app(animator, motion_model=args.motion_model, output_dir=args.output_dir)
    port = port or _free_port(args.host)
    try:
        launch_app(app, host=args.host, port=port, open_browser=args.open_browser, block=False)
    except OSError as e:
        raise InputError(f"cannot serve on {args.host}:{port} ({e}); pick another --port (0 = any free port).") from e
    print(f"audio2lp app: serving on http://{_url_host(args.host)}:{port} (Ctrl+C to stop)", flush=True)
    with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
        signal.signal(signal.SIGTERM, signal.default_int_handler)  # `kill` stops it cleanly, like Ctrl+C
    app.block_thread()
    return 0


def _url_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else f"[{host}]" if ":" in host else host


def _free_port(host: str) -> int:
    import socket

    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    """``python -m audio2lp.apps.webapp ...``: the same as ``audio2lp app ...``."""
    prepare_process()
    parser = argparse.ArgumentParser(prog="audio2lp")
    add_app_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["app", *(argv if argv is not None else sys.argv[1:])])
    setup_logging(args)
    return run(lambda: args.run(args), interrupted="", interrupt_code=0)


if __name__ == "__main__":
    raise SystemExit(main())
