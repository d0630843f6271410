"""The portrait of the web app's Speak and Drive tabs: a photo or a video (:mod:`audio2lp.apps.webapp`).

A tab has both uploads; exactly one is used. The form sends every control, including those that apply only to the
other kind of portrait (a photo's motion settings and constant offsets, a portrait video's smoothing and audio
choice): :func:`applicable` keeps the settings that apply, and the summary line names the changed ones that were
not used (:func:`unused_note`).
"""

from __future__ import annotations

import math
from typing import Any

from audio2lp import options
from lp_renderer.errors import InputError


def one_portrait(photo: str | None, video: str | None) -> str:
    """The portrait of a Speak or Drive run: the photo or the video, exactly one of them."""
    if photo is None and video is None:
        raise InputError("Upload a portrait photo (or a portrait video) first.")
    if photo is not None and video is not None:
        raise InputError("Give either a portrait photo or a portrait video, not both; clear one of them.")
    return photo or video


def applicable(kwargs: dict[str, Any], keep) -> tuple[dict[str, Any], list[str]]:
    """``kwargs`` reduced to the names in ``keep`` (the settings that apply to this kind of portrait), and the labels
    of the dropped ones a person changed from their defaults (the form sends every control)."""
    unused = []
    for name, value in kwargs.items():
        if name in keep or name not in options.OPTIONS:
            continue
        default = options.OPTIONS[name].default
        same = (value == default or isinstance(value, float) and isinstance(default, float)
                and math.isclose(value, default, rel_tol=1e-6, abs_tol=1e-12))
        if not same:
            unused.append(options.OPTIONS[name].label or name)
    return {k: v for k, v in kwargs.items() if k in keep or k not in options.OPTIONS}, unused


def unused_note(unused: list[str]) -> str:
    return f". Not used with this portrait: {', '.join(unused)}" if unused else ""
