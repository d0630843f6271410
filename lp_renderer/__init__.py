"""lp_renderer: a faithful, fast re-implementation of the LivePortrait renderer.

Loads the official released checkpoints unchanged (strict) and reproduces the official numerics.
"""

from .config import RendererConfig
from .errors import InputError, NoFaceError, WeightsError
from .keypoints import KeypointInfo, relative_motion, transform_keypoints
from .networks import RendererNetworks
from .renderer import PreparedSource, Renderer

__all__ = ["InputError", "KeypointInfo", "NoFaceError", "PreparedSource", "Renderer", "RendererConfig",
           "RendererNetworks", "WeightsError", "relative_motion", "transform_keypoints"]
__version__ = "0.1.0"
