"""audio2lp: one portrait photo + speech (or a driving video) -> a talking-head video.

The renderer is :mod:`lp_renderer` (LivePortrait, official weights, official numerics); this package
adds audio (Whisper features -> motion), the video-driven path, the CLI and the Python API.
"""

__version__ = "0.1.0"

from .api import Animator, RenderResult  # noqa: E402

__all__ = ["Animator", "RenderResult", "__version__"]
