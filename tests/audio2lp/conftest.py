"""Fixtures shared by the tests of audio2lp's commands."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def rendered_keypoints(monkeypatch):
    """Records the driving keypoints every render call gets: a list of (B, 21, 3) arrays."""
    from lp_renderer.renderer import Renderer

    seen: list[np.ndarray] = []
    original = Renderer.render

    def spy(self, source, x_d, *args, **kwargs):
        seen.append(x_d.detach().cpu().numpy().copy())
        return original(self, source, x_d, *args, **kwargs)

    monkeypatch.setattr(Renderer, "render", spy)
    return seen
