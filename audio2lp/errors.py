"""Exceptions of the audio2lp package.

All user-fixable problems derive from :class:`lp_renderer.errors.InputError` so that the
CLI, the web app and the HTTP service report them the same way.
"""

from __future__ import annotations

from lp_renderer.errors import InputError, NoFaceError, WeightsError

__all__ = ["InputError", "NoFaceError", "WeightsError", "AudioError", "VideoError"]


class AudioError(InputError):
    """The audio input is missing, unreadable, empty or too short."""


class VideoError(InputError):
    """A video input is unreadable or has no frames, or an output cannot be written."""
