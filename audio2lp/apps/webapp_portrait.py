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


def applicable(kwargs: dict[str, Any], command: str, video: bool) -> tuple[dict[str, Any], list[str]]:
    """``kwargs`` without the settings ``command`` does not apply to a portrait video (``video``) or photo
    (:func:`audio2lp.api.options_not_for`), and the labels of those a person changed from their defaults (the form
    sends every control)."""
    from audio2lp.api import options_not_for

    drop = set(options_not_for(command, video))
    unused = []
    for name in drop & set(kwargs):
        value, default = kwargs[name], options.OPTIONS[name].default
        same = (value == default or isinstance(value, float) and isinstance(default, float)
                and math.isclose(value, default, rel_tol=1e-6, abs_tol=1e-12))
        if not same:
            unused.append(name)
    labels = [options.OPTIONS[n].label or n for n in kwargs if n in unused]  # in the form's order
    return {k: v for k, v in kwargs.items() if k not in drop}, labels


def unused_note(unused: list[str]) -> str:
    return f". Not used with this portrait: {', '.join(unused)}" if unused else ""
