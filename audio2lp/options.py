"""The one option schema: every option of every command, defined once.

Each :class:`Option` holds its Python name (the keyword of :class:`audio2lp.Animator`'s methods and the field of the
HTTP service's forms), its kind, default, range or choices, help text, web-app label and the commands that use it.
Everything else is generated from it or checked by it:

* the command line (:mod:`audio2lp.apps.cli`): :func:`audio2lp.apps.frontdoor.add_arguments` adds a command's
  options to its parser;
* the HTTP service (:mod:`audio2lp.apps.server`): the form fields of ``POST /speak`` and ``POST /drive``;
* the web app (:mod:`audio2lp.apps.webapp`): each control's range, default and label;
* :class:`audio2lp.Animator` and the service's limits: :func:`check` validates values (ranges, whole numbers,
  choices) and raises :class:`OptionError`;
* which speak path an option acts on: ``speak_modes`` (:data:`SPEAK_MODES`); :func:`check_speak_mode` refuses an
  option set on a path where it would do nothing (Animator.speak calls it), so changing what a path does or adding
  one only edits these declarations.

Adding an option is adding one :class:`Option` to :data:`OPTIONS` (and using the value where it matters).

An :class:`OptionError` names options through placeholders, ``{fps}`` for the option and ``{not_pasteback}`` for
its "off" form; each front door fills them in its own terms (:meth:`OptionError.describe`): ``--fps`` and
``--no-pasteback`` on the command line, ``fps`` and ``pasteback=false`` in the HTTP service and the Python API,
the control's label in the web app. Values interpolated into a message go through :func:`literal`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lp_renderer.editing import SLIDERS
from lp_renderer.errors import InputError

__all__ = ["OPTIONS", "SLIDER_NAMES", "SPEAK_MODES", "Option", "OptionError", "check", "check_speak_mode",
           "check_value", "describe", "literal", "options_for", "parse_face", "sliders_for"]

#: how each front door names an option: the Python API and the HTTP service use the Python name
API, CLI, WEB = "api", "cli", "web"
#: the paths of ``speak``: the built-in motion ("lipsync": the default landmark model, its lips blended with the
#: lip-sync model's), or a motion model (``motion_model``)
SPEAK_MODES = ("lipsync", "motion-model")
_MODE_NAMES = {"lipsync": "the built-in motion (without {motion_model})", "motion-model": "{motion_model}"}


@dataclass(frozen=True)
class Option:
    """One option.

    ``kind``: ``"float"``, ``"int"``, ``"bool"``, ``"str"`` (with ``choices``), ``"path"`` or ``"face"``
    (``"largest"``, ``"all"`` or a face number). ``minimum`` / ``maximum``: the valid range (inclusive; None: open).
    ``nullable``: None is a valid value (it means "the default behaviour", e.g. natural blinks). ``units``: named
    after a range in messages. ``hint``: appended to a range message. ``commands``: where it appears.
    ``flag``: the command-line flag (default ``--name-with-dashes``; booleans that default to True get
    ``--no-...``). ``metavar``: the command line's placeholder. ``label``: the web app's control; ``ui_range``: the
    range its slider shows (within the valid range), ``ui_step`` its step, ``ui_info`` its hint. ``service``: a
    field of the HTTP service's speak / drive / edit forms. ``speak_modes``: the speak paths (:data:`SPEAK_MODES`)
    it acts on (None: all); elsewhere a value other than its default is refused (:func:`check_speak_mode`).
    ``requires``: a boolean option that must be on for this one to act (e.g. ``blink_rate`` needs ``blink``).
    ``refused_by``: commands whose command line accepts the flag only to refuse it with ``refusal`` (an
    :class:`OptionError` template), for an option that cannot apply there although its siblings do.
    """

    name: str
    kind: str
    default: Any
    help: str
    commands: tuple[str, ...]
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] | None = None
    nullable: bool = False
    units: str = ""
    hint: str = ""
    flag: str | None = None
    metavar: str | None = None
    label: str = ""
    ui_range: tuple[float, float] | None = None
    ui_step: float | None = None
    ui_info: str = ""
    service: bool = False
    speak_modes: tuple[str, ...] | None = None
    requires: str | None = None
    refused_by: tuple[str, ...] = ()
    refusal: str = ""

    @property
    def cli_flag(self) -> str:
        if self.flag is not None:
            return self.flag
        base = "--" + self.name.replace("_", "-")
        return "--no-" + self.name.replace("_", "-") if self.kind == "bool" and self.default is True else base

    def title(self, style: str) -> str:
        """The option's name in a front door's terms."""
        if style == CLI:
            return self.cli_flag
        if style == WEB:
            return self.label or self.name
        return self.name

    def off(self, style: str) -> str:
        """How a front door says "turned off" for a boolean option."""
        if style == CLI:
            return "--no-" + self.name.replace("_", "-")
        if style == WEB:
            return f"turning {self.label or self.name} off"
        return f"{self.name}=false"


_SPEAK, _DRIVE = ("speak",), ("drive",)
_MOTION_MODEL, _LIPSYNC = ("motion-model",), ("lipsync",)
_SPEAK_MOTION = ("speak", "motion")  # speak's default motion, also written by `audio2lp motion`
_RENDER = ("speak", "drive", "edit", "serve", "app")  # commands that build an Animator
_LOGGING = ("speak", "drive", "edit", "motion", "serve", "app", "doctor", "weights")
_SLIDE = ("edit", "speak", "drive")  # the portrait-editing sliders: edit, and constant offsets on speak / drive
_ANIMATED = "{%s} edits a still portrait (audio2lp edit); speak and drive move the eyes and lips themselves"


def _slider(name: str, help: str, label: str, step: float, commands: tuple[str, ...] = _SLIDE, **kw) -> Option:
    """A slider of the official image-retargeting tab: range and neutral value from
    :data:`lp_renderer.editing.SLIDERS` (the official ones)."""
    s = SLIDERS[name]
    text = kw.pop("default_text", None)
    help = f"{help}, {s.minimum:g} to {s.maximum:g} " + (f"(default: {text})" if text else f"(default {s.neutral:g})")
    return Option(name, "float", s.neutral, help, commands, minimum=s.minimum, maximum=s.maximum,
                  nullable=s.neutral is None, label=label, ui_step=step, service=True, **kw)


OPTIONS: dict[str, Option] = {o.name: o for o in [
    # ---------------------------------------------------------------------------------- speak
    Option("motion_model", "path", None, "audio-to-motion checkpoint (motion_model.safetensors from `audio2lp-train "
           "train`) instead of the built-in lip-sync model", ("speak", "serve", "app"), metavar="CKPT",
           label="the motion model"),
    Option("face", "face", "largest", "which face of the portrait to animate: largest (default), a number "
           "(0 = largest), or all (each face, stitched in place)", ("speak", "drive", "edit"), metavar="FACE",
           label="Face", ui_info="largest, all, or a face number (0 = largest)", service=True),
    Option("fps", "float", 25.0, "output frame rate", _SPEAK_MOTION, minimum=1, maximum=120, label="Frames per second",
           ui_step=1, service=True),
    Option("expression_scale", "float", 1.0, "scale of the mouth's opening (with --motion-model: of the predicted "
           "expression around the portrait's own)", _SPEAK_MOTION, minimum=0, maximum=10, label="Expression scale",
           ui_range=(0, 2), ui_step=0.05, ui_info="mouth opening", service=True),
    Option("pose_scale", "float", 1.0, "scale of the head motion (0 = still head)", _SPEAK_MOTION, minimum=0,
           maximum=10, label="Head motion scale", ui_range=(0, 2), ui_step=0.05, ui_info="0 = still head",
           service=True),
    Option("pose_from", "path", None, "take the head motion from a motion template (.npz from `drive "
           "--save-template`, or .pkl); built-in motion only (a motion model predicts the head motion)", _SPEAK_MOTION,
           metavar="TEMPLATE", label="Head motion template", speak_modes=_LIPSYNC),
    Option("blink_rate", "float", None, "average blinks per minute (default: the rate learnt from real speakers; "
           "0 = no blinks)", _SPEAK_MOTION, minimum=0, maximum=120, nullable=True, units="blinks per minute",
           metavar="PER_MIN", label="Blinks per minute", ui_info="empty = as real speakers blink", service=True,
           requires="blink"),
    Option("blink", "bool", True, "keep the eyes as in the photo (no blinks)", _SPEAK_MOTION, label="Blink",
           ui_info="default motion only", service=True),
    Option("style", "int", 0, "speaker/style id of the motion model", _SPEAK, minimum=0, label="Style",
           ui_info="speaker/style id of the motion model", service=True, speak_modes=_MOTION_MODEL),
    Option("seed", "int", 0, "random seed of the head motion and the blinks (and of --motion-noise)", _SPEAK_MOTION,
           minimum=0, label="Seed", ui_info="head motion, blinks and sampling", service=True),
    Option("motion_noise", "float", 0.0, "with --motion-model: noise (normalised units) on the frames fed back "
           "while generating, for varied motion from the same audio (0: deterministic)", _SPEAK, minimum=0,
           metavar="STD", label="Motion noise", speak_modes=_MOTION_MODEL),
    Option("whisper_checkpoint", "path", None, "openai-whisper checkpoint to use instead of the cached/converted one",
           _SPEAK_MOTION, metavar="FILE", label="Whisper checkpoint"),
    # ---------------------------------------------------------------------------------- drive
    Option("region", "str", "all", "which part of the driving motion to apply", _DRIVE,
           choices=("all", "exp", "pose", "lip", "eyes"), label="Region",
           ui_info="which part of the driving motion to apply", service=True),
    Option("multiplier", "float", 1.0, "scale of the motion around the portrait's own pose and expression", _DRIVE,
           minimum=0, maximum=10, label="Motion multiplier", ui_range=(0, 2), ui_step=0.05, service=True),
    Option("retarget_eyes", "bool", False, "drive eye opening by the driving face's eye-open ratio (eye retargeting "
           "network). As in LivePortrait (Algorithm 1), retargeting replaces the driving expression and head pose: "
           "the result is the portrait's own pose and expression plus the eye (and, with --retarget-lip, lip) "
           "deltas", _DRIVE, label="Eye retargeting", ui_info="eye opening follows the driving face", service=True),
    Option("retarget_lip", "bool", False, "drive mouth opening by the driving face's lip-open ratio (lip retargeting "
           "network). As in LivePortrait, retargeting replaces the driving expression and head pose: the result is "
           "the portrait's own pose and expression plus the lip (and eye) deltas", _DRIVE, label="Lip retargeting",
           ui_info="mouth opening follows the driving face", service=True),
    Option("stitching", "bool", True, "skip the stitching network (implies --no-pasteback: one face's 512x512 "
           "crop)", ("drive", "edit"), label="Stitching", ui_info="off implies no paste back", service=True),
    Option("concat", "bool", False, "put the driving face crop beside the result", _DRIVE,
           label="Show the driving face", ui_info="the driving crop beside the result", service=True),
    Option("save_template", "path", None, "also save the driving motion as a template, to drive other portraits "
           "without the video", _DRIVE, metavar="FILE.npz", label="Save motion template",
           ui_info="to drive other portraits without the video"),
    Option("audio", "path", None, "speech to put in the video when DRIVING is a motion file from `audio2lp motion`",
           _DRIVE, metavar="SPEECH", label="Speech for a motion file"),
    Option("max_frames", "int", None, "render only the first N driving frames (the audio is cut to match)", _DRIVE,
           minimum=1, nullable=True, metavar="N", label="Max frames", service=True),
    # ---------------------------------------------------------------------------------- drive, a video portrait
    Option("driving_smooth_observation_variance", "float", 3e-7, "when the portrait is a video: observation "
           "variance of the Kalman smoother over the transferred expression and rotation (LivePortrait's "
           "--driving_smooth_observation_variance; larger = smoother, 0 = none; default 3e-7)", _DRIVE, minimum=0,
           maximum=1e-2, metavar="V", label="Motion smoothing (portrait video)", ui_range=(0, 1e-5), ui_step=1e-7,
           ui_info="portrait video only; larger = smoother, 0 = none", service=True),
    Option("source_video_eye_retargeting", "bool", False, "when the portrait is a video: keep its eyes as open as "
           "in its first frame (LivePortrait's --flag_source_video_eye_retargeting)", _DRIVE,
           label="Keep the eyes of the first frame", ui_info="portrait video only", service=True),
    Option("audio_priority", "str", "driving", "when the portrait is a video: whose audio the result carries when "
           "both videos have one (LivePortrait's --audio_priority; the other one's when only it has audio)", _DRIVE,
           choices=("driving", "source"), label="Audio from",
           ui_info="portrait video only: the driving or the portrait video's sound", service=True),
    # ---------------------------------------------------------------------------------- both
    Option("max_portrait_size", "int", 1280, "larger portraits are scaled down (bilinear) so that their longer side "
           "is this many pixels, and both sides are rounded down to even, as in LivePortrait; the pasted-back video "
           "has that size (default 1280; 0: no cap)", ("speak", "drive"), minimum=0, metavar="PIXELS",
           label="Largest portrait side"),
    Option("pasteback", "bool", True, "write the 512x512 face crop instead of the full photo", _SLIDE,
           label="Paste back", ui_info="off: the 512x512 face crop", service=True),
    Option("crf", "int", 18, "H.264 quality from 0 (best) to 51 (worst); 18 is visually lossless",
           ("speak", "drive"), minimum=0, maximum=51, hint="18 (the default) is visually lossless",
           label="Video quality (CRF)", service=True),
    # ---------------------------------------------------------------------------------- streaming (speak -)
    Option("lookahead_ms", "int", None, "streaming (SPEECH '-' and Animator.stream): audio a frame waits for past its "
           "own 40 ms (default: the default motion's minimum, 240 ms; at most 300; more gives the lip more context)",
           ("speak",), minimum=0, maximum=300, nullable=True, units="ms", metavar="MS", label="Look-ahead (ms)"),
    Option("input_format", "str", "f32le", "streaming: the raw 16 kHz mono PCM read from standard input when SPEECH "
           "is '-': f32le (float32, default) or s16le (16-bit)", ("speak",), choices=("f32le", "s16le"),
           label="Input sample format"),
    Option("output_format", "str", None, "streaming: what to write; mp4 (fragmented, playable while written; the "
           "default for a file) or y4m (YUV4MPEG2 frames and nothing else, the default for '-o -', e.g. "
           "`| ffmpeg -i - out.mp4`)", ("speak",), choices=("mp4", "y4m"), nullable=True,
           label="Output format"),
    # ---------------------------------------------------------------------------------- edit (+ speak, drive)
    Option("crop_scale", "float", 2.5, "size of the face crop relative to the face (default 2.5, as the official "
           "editing tab; speak and drive use 2.3)", ("edit",), minimum=1.8, maximum=3.2, metavar="SCALE",
           label="Crop scale", ui_step=0.05, service=True),
    _slider("eye_ratio", "target eyes-open ratio (eye retargeting)", "Target eyes-open ratio", 0.01, ("edit",),
            default_text="the portrait's own", metavar="RATIO", refused_by=("speak", "drive"),
            refusal=_ANIMATED % "eye_ratio" + " (use {wink} or {gaze_y} there)."),
    _slider("lip_ratio", "target lip-open ratio (lip retargeting)", "Target lip-open ratio", 0.01, ("edit",),
            default_text="the portrait's own", metavar="RATIO", refused_by=("speak", "drive"),
            refusal=_ANIMATED % "lip_ratio" + " (use {lip_open} there)."),
    _slider("pitch", "degrees added to the head's pitch", "Relative pitch", 1, metavar="DEG"),
    _slider("yaw", "degrees added to the head's yaw", "Relative yaw", 1, metavar="DEG"),
    _slider("roll", "degrees added to the head's roll", "Relative roll", 1, metavar="DEG"),
    _slider("mov_x", "horizontal movement", "X-axis movement", 0.01, metavar="V"),
    _slider("mov_y", "vertical movement", "Y-axis movement", 0.01, metavar="V"),
    _slider("mov_z", "z-axis movement: scale of the face", "Z-axis movement", 0.01, metavar="V"),
    _slider("pouting", "pouting", "Pouting", 0.01, metavar="V"),
    _slider("pursing", "pursing", "Pursing", 0.01, metavar="V"),
    _slider("grin", "grin", "Grin", 0.01, metavar="V"),
    _slider("lip_open", "lips close (< 0) or open (> 0)", "Lip close <-> open", 1, metavar="V"),
    _slider("smile", "smile", "Smile", 0.01, metavar="V"),
    _slider("wink", "wink", "Wink", 0.01, metavar="V"),
    _slider("eyebrow", "eyebrows", "Eyebrow", 0.01, metavar="V"),
    _slider("gaze_x", "eye gaze, horizontal", "Eye gaze (horizontal)", 0.01, metavar="V"),
    _slider("gaze_y", "eye gaze, vertical", "Eye gaze (vertical)", 0.01, metavar="V"),
    # ---------------------------------------------------------------------------------- runtime
    Option("weights", "path", None, "LivePortrait weights folder (official pretrained_weights layout); default "
           "$AUDIO2LP_WEIGHTS or the cache folder (see `audio2lp weights`)",
           _RENDER + ("doctor", "weights", "export onnx"), metavar="DIR", label="the weights folder"),
    Option("device", "str", "auto", "where to run the networks (default: CUDA when available)", _RENDER,
           choices=("auto", "cpu", "cuda"), label="Device"),
    Option("half", "bool", None, "float16 for the warping and decoding networks (CUDA only; default on CUDA)",
           _RENDER, nullable=True, label="Half precision"),
    Option("compile", "bool", False, "torch.compile the warping and decoding networks", _RENDER, label="Compile"),
    Option("backend", "str", "pytorch", "run the networks with PyTorch or with onnxruntime (TensorRT, CUDA or CPU "
           "execution provider, whichever is installed and matches --device; needs the onnx extra)", ("speak", "drive"),
           choices=("pytorch", "onnxruntime"), label="Backend"),
    Option("onnx_dir", "path", None, "with --backend onnxruntime: a folder written by `audio2lp export onnx` (default: "
           "the weights, exported once into the cache folder)", ("speak", "drive"), metavar="DIR",
           label="the ONNX folder"),
    Option("batch_size", "int", None, "frames rendered together (default 8 on CUDA, 1 on the CPU)", _RENDER,
           minimum=1, nullable=True, metavar="N", label="--batch-size (when starting the app)"),
    Option("face_backend", "str", "auto", "face detector/landmarks: dlib (built in) or insightface (needs the "
           "insightface package and the buffalo_l models); auto picks insightface when both are there", _RENDER,
           choices=("auto", "dlib", "insightface"), label="Face backend"),
    Option("insightface_dir", "path", None, "folder with insightface's det_10g.onnx and 2d106det.onnx (default "
           "$AUDIO2LP_INSIGHTFACE_DIR, WEIGHTS/insightface/models/buffalo_l or ~/.insightface/models/buffalo_l)",
           _RENDER + ("doctor",), metavar="DIR", label="the insightface folder"),
    Option("quiet", "bool", False, "no progress bars, warnings only", _LOGGING, flag="-q", label="Quiet"),
    Option("verbose", "bool", False, "debug logging", _LOGGING, flag="-v", label="Verbose"),
    # ---------------------------------------------------------------------------------- weights
    Option("repo", "str", "KwaiVGI/LivePortrait", "Hugging Face repository of the official weights (default "
           "KwaiVGI/LivePortrait; mirror: KlingTeam/LivePortrait)", ("weights download",), metavar="OWNER/NAME",
           label="Repository"),
    # ---------------------------------------------------------------------------------- serve / app
    Option("host", "str", "127.0.0.1", "address to listen on (default 127.0.0.1: this computer only; 0.0.0.0 for "
           "every interface)", ("serve", "app"), label="Host"),
    Option("port", "int", None, "TCP port (serve: default 8000; app: default 7860, 0 = any free port)",
           ("serve", "app"), minimum=0, maximum=65535, nullable=True, label="Port"),
    Option("workers", "int", 1, "jobs rendered at the same time (default 1: on a CPU one job uses every core)",
           ("serve",), minimum=1, label="Workers"),
    Option("queue_size", "int", 8, "jobs that may wait for a worker; more are refused with 429 (default 8)",
           ("serve",), minimum=0, metavar="N", label="Queue size"),
    Option("max_upload_mb", "float", 200.0, "largest request (all uploaded files together) in MB; larger ones get "
           "413 (default 200)", ("serve",), minimum=0, metavar="MB", hint="it must be positive",
           label="Largest upload"),
    Option("max_duration", "float", 600.0, "longest accepted audio, driving or portrait video in seconds (default 600)",
           ("serve",), minimum=0, metavar="SECONDS", hint="it must be positive", label="Longest input"),
    Option("ttl", "float", 3600.0, "how long finished jobs and their videos are kept, in seconds (default 3600)",
           ("serve",), minimum=0, metavar="SECONDS", hint="it must be positive", label="Time to live"),
    Option("job_timeout", "float", 3600.0, "longest a job may render, in seconds; a job that takes longer fails "
           "(default 3600)", ("serve",), minimum=0, metavar="SECONDS", hint="it must be positive",
           label="Job time limit"),
    Option("threads", "int", None, "torch threads of each worker (default: the CPU cores divided by --workers)",
           ("serve",), minimum=1, nullable=True, metavar="N", label="Threads per worker"),
    Option("jobs_dir", "path", None, "folder for job inputs and results (default: a temporary folder removed at "
           "exit)", ("serve",), metavar="DIR", label="Jobs folder"),
    Option("max_stream_seconds", "float", 600.0, "longest live stream (WebSocket /stream/ws) in seconds of audio; "
           "the audio past it is not rendered and the stream ends with too_long (default 600)", ("serve",),
           minimum=0.1, metavar="SECONDS", label="Longest stream"),
    Option("stream_idle_timeout", "float", 10.0, "a live stream that sends no audio for this many seconds is closed "
           "(default 10)", ("serve",), minimum=0.1, metavar="SECONDS", label="Stream idle timeout"),
    Option("max_streams", "int", 2, "live streams running at once; one more is refused with busy (default 2; 0 "
           "turns streaming off)", ("serve",), minimum=0, metavar="N", label="Streams at once"),
    Option("stream_buffer", "float", 5.0, "seconds of audio a live stream holds for the renderer; when it is full "
           "the start message's overflow drops the oldest audio or stops reading the socket (default 5)",
           ("serve",), minimum=0.1, maximum=600, metavar="SECONDS", label="Stream buffer"),
    Option("output_dir", "path", None, "keep every result in this folder (default: a temporary folder removed on "
           "exit)", ("app",), metavar="DIR", label="Output folder"),
    Option("open_browser", "bool", False, "open the page in a browser", ("app",), flag="--open",
           label="Open a browser"),
]}

#: options whose value must be strictly above their minimum (sizes and durations)
_POSITIVE = {"max_upload_mb", "max_duration", "ttl", "job_timeout"}


def options_for(command: str) -> list[Option]:
    """The options of ``command``, in the schema's order."""
    return [o for o in OPTIONS.values() if command in o.commands]


#: the names of the portrait-editing sliders (:data:`lp_renderer.editing.SLIDERS`), in the official tab's order
SLIDER_NAMES = tuple(SLIDERS)


def sliders_for(command: str) -> list[str]:
    """The names of the editing sliders ``command`` takes (``edit``: all; ``speak`` / ``drive``: all but the target
    ratios)."""
    return [o.name for o in options_for(command) if o.name in SLIDERS]


# ------------------------------------------------------------------------------------------ errors
def literal(text: Any) -> str:
    """``text`` made safe to put into an :class:`OptionError` template (braces doubled)."""
    return str(text).replace("{", "{{").replace("}", "}}")


class _Names(Mapping):
    def __init__(self, style: str):
        self.style = style

    def __getitem__(self, key: str) -> str:
        if key.startswith("not_") and key[4:] in OPTIONS:
            return OPTIONS[key[4:]].off(self.style)
        return OPTIONS[key].title(self.style)

    def __iter__(self):
        return iter(OPTIONS)

    def __len__(self) -> int:
        return len(OPTIONS)


def describe(template: str, style: str) -> str:
    """``template`` with its option placeholders in the terms of ``style`` (``"cli"``, ``"api"`` or ``"web"``)."""
    return template.format_map(_Names(style))


class OptionError(InputError):
    """A user-fixable problem with the value of option ``option``. ``template`` names options as ``{name}`` (and
    ``{not_name}`` for a boolean turned off); ``str()`` is the Python API's wording, :meth:`describe` any front
    door's."""

    def __init__(self, option: str, template: str):
        if option not in OPTIONS:
            raise KeyError(f"unknown option {option!r}")
        self.option, self.template = option, template
        super().__init__(describe(template, API))

    def describe(self, style: str) -> str:
        return describe(self.template, style)


# ------------------------------------------------------------------------------------------ values
def parse_face(value: Any) -> str | int:
    """A face choice from any front door: ``"largest"``, ``"all"`` or a face number (int >= 0)."""
    if isinstance(value, bool):
        raise OptionError("face", "{face} takes 'largest', 'all' or a face number, not " + literal(repr(value)))
    if isinstance(value, int):
        n = value
    else:
        text = "largest" if value is None or str(value).strip() == "" else str(value).strip().lower()
        if text in ("largest", "all"):
            return text
        try:
            n = int(text)
        except ValueError:
            raise OptionError("face", "{face} takes 'largest', 'all' or a face number, not "
                              + literal(repr(value))) from None
    if n < 0:
        raise OptionError("face", "{face} numbers start at 0 (the largest face)")
    return n


def _number(o: Option, value: Any) -> float | int:
    whole = o.kind == "int"
    try:
        if isinstance(value, bool):
            raise TypeError
        v = float(value)
        ok = math.isfinite(v) and (not whole or v.is_integer())
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        what = "a whole number" if whole else "a number"
        raise OptionError(o.name, "{" + o.name + "} must be " + what + ", not " + literal(value) + _hint(o))
    return int(v) if whole else v


def _hint(o: Option) -> str:
    return f"; {literal(o.hint)}." if o.hint else "."


def _range_error(o: Option, value: Any) -> OptionError:
    lo, hi = o.minimum, o.maximum
    name = "{" + o.name + "}"
    fmt = (lambda x: f"{int(x)}") if o.kind == "int" else (lambda x: f"{x:g}")
    units = f" {o.units}" if o.units else ""
    if o.name in _POSITIVE:
        text = f"{name} must be positive"
    elif o.kind == "int" and hi is not None:
        text = f"{name} must be a whole number from {fmt(lo)} to {fmt(hi)}{units}"
    elif o.kind == "int":
        text = f"{name} must be at least {fmt(lo)}" if lo != 0 else f"{name} must be 0 or more"
    elif hi is not None:
        text = f"{name} must be between {fmt(lo)} and {fmt(hi)}{units}"
    else:
        text = f"{name} must be a non-negative number" if lo == 0 else f"{name} must be at least {fmt(lo)}"
    return OptionError(o.name, text + ", not " + literal(value) + (_hint(o) if o.name not in _POSITIVE else "."))


def check_value(name: str, value: Any) -> Any:
    """``value`` of option ``name`` checked and normalised (ints for whole numbers, a face choice, ...); raises
    :class:`OptionError`."""
    o = OPTIONS[name]
    if value is None and (o.nullable or o.default is None):
        return None
    if o.kind == "face":
        return parse_face(value)
    if o.kind in ("float", "int"):
        v = _number(o, value)
        if (o.minimum is not None and (v < o.minimum or (name in _POSITIVE and v <= o.minimum))) or \
                (o.maximum is not None and v > o.maximum):
            raise _range_error(o, value)
        return v
    if o.kind == "bool":
        return bool(value)
    if o.choices is not None and value not in o.choices:
        raise OptionError(name, "{" + name + "} must be one of " + literal(", ".join(o.choices)) + ", not "
                          + literal(repr(value)) + ".")
    return value


def check_speak_mode(mode: str, values: Mapping[str, Any]) -> None:
    """Refuse the options of ``values`` that would do nothing on the speak path ``mode`` (:data:`SPEAK_MODES`): an
    option whose ``speak_modes`` leave ``mode`` out, or whose ``requires`` option is off, set to anything but its
    default. Raises :class:`OptionError` naming the option."""
    if mode not in SPEAK_MODES:
        raise ValueError(f"unknown speak mode {mode!r}; known: {SPEAK_MODES}")
    for name, value in values.items():
        o = OPTIONS.get(name)
        if o is None or value is None or value == o.default:
            continue
        if o.speak_modes is not None and mode not in o.speak_modes:
            where = " or ".join(_MODE_NAMES[m] for m in o.speak_modes)
            raise OptionError(name, "{" + name + "} does nothing with " + _MODE_NAMES[mode] + "; it acts with "
                              + where + " only: drop it" + ("." if mode != "lipsync" else ", or add {motion_model}."))
        if o.requires is not None and values.get(o.requires, OPTIONS[o.requires].default) is False:
            raise OptionError(name, "{" + name + "} does nothing with {not_" + o.requires + "}; drop one of them.")


def check(values: Mapping[str, Any]) -> dict[str, Any]:
    """Every ``name: value`` of ``values`` checked with :func:`check_value` (names not in the schema pass as
    they are)."""
    return {k: check_value(k, v) if k in OPTIONS else v for k, v in values.items()}
