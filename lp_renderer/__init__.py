"""lp_renderer: a faithful, fast re-implementation of the LivePortrait renderer.

Loads the official released checkpoints unchanged (strict) and reproduces the official numerics.
"""

from .cpu_memory import request_huge_pages

request_huge_pages()  # before torch is imported (see lp_renderer.cpu_memory)

from .config import RendererConfig  # noqa: E402
from .errors import InputError, NoFaceError, WeightsError  # noqa: E402
from .keypoints import KeypointInfo, relative_motion, transform_keypoints  # noqa: E402
from .networks import RendererNetworks  # noqa: E402
from .renderer import PreparedSource, Renderer  # noqa: E402

__all__ = ["InputError", "KeypointInfo", "NoFaceError", "PreparedSource", "Renderer", "RendererConfig",
           "RendererNetworks", "WeightsError", "relative_motion", "transform_keypoints"]
__version__ = "0.1.0"
