"""audio2lp: one portrait photo + speech (or a driving video) -> a talking-head video.

The renderer is :mod:`lp_renderer` (LivePortrait, official weights, official numerics); this package adds audio
(Whisper features -> motion), the video-driven path, the Python API (:class:`Animator`) and the front doors
(:mod:`audio2lp.apps`). Importing the package imports nothing: ``Animator`` and ``RenderResult`` load on first use
(PEP 562), so a front door can set up the process before ``torch`` is imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Animator", "RenderResult", "__version__"]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from .api import Animator, RenderResult


def __getattr__(name: str) -> Any:
    if name in ("Animator", "RenderResult"):
        from . import api

        value = getattr(api, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
