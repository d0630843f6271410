"""audio2lp.options: one definition per option, read by the command line, the service, the web app and Animator."""

from __future__ import annotations

import argparse
import inspect

import pytest

from audio2lp import options
from audio2lp.api import Animator
from audio2lp.apps.frontdoor import add_arguments, message
from audio2lp.options import API, CLI, OPTIONS, WEB, OptionError, check, check_value, parse_face


def test_every_option_is_complete():
    for o in OPTIONS.values():
        assert o.help.strip() and o.label.strip() and o.commands, o.name
        assert o.kind in ("float", "int", "bool", "str", "path", "face"), o.name
        if o.default is not None and o.kind in ("float", "int"):
            assert check_value(o.name, o.default) == o.default, o.name  # defaults are valid values
        if o.ui_range is not None:
            assert o.minimum <= o.ui_range[0] <= o.ui_range[1] <= o.maximum, o.name


@pytest.mark.parametrize("method", ["speak", "drive", "edit", "motion"])
def test_animator_keywords_are_the_schema_names(method):
    """Every option of speak / drive / edit / motion is a keyword of Animator's method of the same name (and the other
    way round, except the inputs and the progress hook)."""
    inputs = {"speak": {"portrait", "audio"}, "drive": {"portrait", "driving"}, "edit": {"portrait"},
              "motion": {"audio"}}[method]
    params = set(inspect.signature(getattr(Animator, method)).parameters) - inputs - {
        "self", "output", "progress_callback"}
    schema = {o.name for o in options.options_for(method)} - {
        "weights", "device", "half", "compile", "batch_size", "face_backend", "insightface_dir", "quiet", "verbose",
        "backend", "onnx_dir"}
    if method == "speak":  # the streaming options: Animator.stream's look-ahead, the command line's stdin/stdout
        schema -= {"lookahead_ms", "input_format", "output_format"}
        assert "lookahead_ms" in inspect.signature(Animator.stream).parameters
    assert params == schema


def test_cli_parsers_come_from_the_schema():
    p = argparse.ArgumentParser()
    add_arguments(p, "speak")
    args = p.parse_args(["--fps", "30", "--no-blink", "--face", "2", "--blink-rate", "10"])
    assert (args.fps, args.blink, args.face, args.blink_rate, args.crf) == (30.0, False, 2, 10.0, 18)
    with pytest.raises(SystemExit):
        p.parse_args(["--face", "left"])
    p = argparse.ArgumentParser()
    add_arguments(p, "drive")
    args = p.parse_args(["--no-stitching", "--region", "lip", "--max-frames", "4"])
    assert (args.stitching, args.region, args.max_frames, args.pasteback) == (False, "lip", 4, True)


@pytest.mark.parametrize("name,value,problem", [
    ("fps", 500, "must be between 1 and 120, not 500"),
    ("fps", "fast", "must be a number, not fast"),
    ("crf", 60, "must be a whole number from 0 to 51, not 60; 18 (the default) is visually lossless"),
    ("crf", 18.5, "must be a whole number, not 18.5; 18 (the default) is visually lossless"),
    ("blink_rate", 200, "must be between 0 and 120 blinks per minute, not 200"),
    ("motion_noise", -1, "must be a non-negative number, not -1"),
    ("batch_size", 0, "must be at least 1, not 0"),
    ("queue_size", -1, "must be 0 or more, not -1"),
    ("ttl", 0, "must be positive, not 0"),
    ("region", "ears", "must be one of all, exp, pose, lip, eyes, not 'ears'"),
    ("smile", 1.31, "must be between -0.3 and 1.3, not 1.31"),
    ("gaze_y", -64, "must be between -63 and 63, not -64"),
    ("eye_ratio", 0.81, "must be between 0 and 0.8, not 0.81"),
    ("crop_scale", 3.3, "must be between 1.8 and 3.2, not 3.3"),
])
def test_ranges_and_their_messages(name, value, problem):
    with pytest.raises(OptionError) as e:
        check_value(name, value)
    o = OPTIONS[name]
    assert e.value.option == name
    assert e.value.describe(CLI) == f"{o.cli_flag} {problem}."
    assert e.value.describe(API) == str(e.value) == f"{name} {problem}."
    assert e.value.describe(WEB) == f"{o.label} {problem}."


def test_sliders_are_the_renderers_official_ones():
    """Each editing slider is defined once here, with the range and neutral value of lp_renderer.editing.SLIDERS;
    edit takes all of them, speak and drive all but the target ratios (which they refuse)."""
    from audio2lp.options import sliders_for
    from lp_renderer.editing import SLIDERS

    for name, s in SLIDERS.items():
        o = OPTIONS[name]
        assert (o.minimum, o.maximum, o.default, o.kind, o.service) == (s.minimum, s.maximum, s.neutral, "float", True)
        assert f"{s.minimum:g} to {s.maximum:g}" in o.help and o.ui_step
    assert sliders_for("edit") == list(SLIDERS)
    assert sliders_for("speak") == sliders_for("drive") == [n for n in SLIDERS if n not in ("eye_ratio", "lip_ratio")]
    for name in ("eye_ratio", "lip_ratio"):
        assert OPTIONS[name].refused_by == ("speak", "drive")


def test_values_are_normalised():
    assert check(dict(fps="30", crf=20.0, face="1", blink_rate=None, seed="7")) == \
        dict(fps=30.0, crf=20, face=1, blink_rate=None, seed=7)
    assert parse_face(" ALL ") == "all" and parse_face(None) == "largest" and parse_face(3) == 3
    for bad in ("-1", "first", "1.5", True):
        with pytest.raises(OptionError):
            parse_face(bad)


def test_messages_name_options_in_each_front_doors_terms():
    e = OptionError("face", "{face} all pastes every face back, which needs stitching; drop {not_stitching}.")
    assert e.describe(CLI) == "--face all pastes every face back, which needs stitching; drop --no-stitching."
    assert e.describe(API) == "face all pastes every face back, which needs stitching; drop stitching=false."
    assert e.describe(WEB) == "Face all pastes every face back, which needs stitching; drop turning Stitching off."
    assert message(e) == e.describe(CLI)
    assert options.literal("a {b} c") == "a {{b}} c"
    with pytest.raises(KeyError):
        OptionError("no_such_option", "x")


def test_animator_checks_with_the_schema():
    anim = Animator(renderer=object())
    with pytest.raises(OptionError, match="^fps must be between 1 and 120"):
        anim.speak("p.png", "a.wav", "o.mp4", fps=0)
    with pytest.raises(OptionError, match="^batch_size must be at least 1"):
        Animator(batch_size=0)


def test_speak_options_declare_the_paths_they_act_on():
    """Each speak option says on which speak path (mode) it does something; `check_speak_mode` refuses the others,
    so a later change of the default path only edits these declarations."""
    for o in options.options_for("speak"):
        assert o.speak_modes is None or (o.speak_modes and set(o.speak_modes) <= set(options.SPEAK_MODES)), o.name
    assert OPTIONS["style"].speak_modes == OPTIONS["motion_noise"].speak_modes == ("motion-model",)
    assert OPTIONS["expression_scale"].speak_modes is None  # the default motion scales the mouth's opening with it
    assert OPTIONS["pose_from"].speak_modes == ("lipsync",)
    assert OPTIONS["blink"].speak_modes is None and OPTIONS["blink_rate"].speak_modes is None


@pytest.mark.parametrize("mode, values, flag", [
    ("lipsync", dict(style=1), "--style"),
    ("lipsync", dict(motion_noise=0.2), "--motion-noise"),
    ("motion-model", dict(pose_from="t.npz"), "--pose-from"),
    ("motion-model", dict(blink=False, blink_rate=20.0), "--blink-rate"),
])
def test_options_that_do_nothing_on_the_path_are_refused(mode, values, flag):
    with pytest.raises(OptionError) as e:
        options.check_speak_mode(mode, values)
    assert flag in e.value.describe(CLI) and "\n" not in str(e.value)
    defaults = dict(style=0, motion_noise=0.0, expression_scale=1.0, pose_from=None, blink=True, blink_rate=None,
                    pose_scale=1.0, seed=0)
    for m in options.SPEAK_MODES:
        options.check_speak_mode(m, defaults)  # the defaults are fine everywhere
