"""lp_renderer: a faithful, fast re-implementation of the LivePortrait renderer.

Loads the official released checkpoints unchanged (strict) and reproduces the official numerics. Usable on its
own: it knows nothing of the application that drives it.

Importing the package imports nothing and changes no process state: the names below load their module on first
use (PEP 562), so a front door can call
:func:`lp_renderer.fast.cpu_memory.enable_cpu_memory_settings` before ``torch`` is imported.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "RendererConfig": ".config",
    "InputError": ".errors", "NoFaceError": ".errors", "WeightsError": ".errors",
    "KeypointInfo": ".keypoints", "relative_motion": ".keypoints", "transform_keypoints": ".keypoints",
    "RendererNetworks": ".nets.networks",
    "PreparedSource": ".renderer", "Renderer": ".renderer",
}
__all__ = ["InputError", "KeypointInfo", "NoFaceError", "PreparedSource", "Renderer", "RendererConfig",
           "RendererNetworks", "WeightsError", "relative_motion", "transform_keypoints"]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from .config import RendererConfig
    from .errors import InputError, NoFaceError, WeightsError
    from .keypoints import KeypointInfo, relative_motion, transform_keypoints
    from .nets.networks import RendererNetworks
    from .renderer import PreparedSource, Renderer


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
