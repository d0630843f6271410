"""audio2lp: one portrait photo + speech (or a driving video) -> a talking-head video.

The renderer is :mod:`lp_renderer` (LivePortrait, official weights, official numerics); this package
adds audio (Whisper features -> motion), the video-driven path, the CLI and the Python API.
"""

__version__ = "0.1.0"

import lp_renderer  # noqa: E402, F401  (first: it sets the CPU allocator's huge pages before torch loads)

from .api import Animator, RenderResult  # noqa: E402

__all__ = ["Animator", "RenderResult", "__version__"]
