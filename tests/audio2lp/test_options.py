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


@pytest.mark.parametrize("method", ["speak", "drive", "motion"])
def test_animator_keywords_are_the_schema_names(method):
    """Every option of speak / drive / motion is a keyword of Animator's method of the same name (and the other way
    round, except the inputs and the progress hook)."""
    inputs = {"speak": {"portrait", "audio"}, "drive": {"portrait", "driving"}, "motion": {"audio"}}[method]
    params = set(inspect.signature(getattr(Animator, method)).parameters) - inputs - {
        "self", "output", "progress_callback"}
    schema = {o.name for o in options.options_for(method)} - {
        "weights", "device", "half", "compile", "batch_size", "face_backend", "insightface_dir", "quiet", "verbose"}
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
])
def test_ranges_and_their_messages(name, value, problem):
    with pytest.raises(OptionError) as e:
        check_value(name, value)
    o = OPTIONS[name]
    assert e.value.option == name
    assert e.value.describe(CLI) == f"{o.cli_flag} {problem}."
    assert e.value.describe(API) == str(e.value) == f"{name} {problem}."
    assert e.value.describe(WEB) == f"{o.label} {problem}."


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
