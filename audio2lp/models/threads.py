"""Scoped torch thread counts for the small models.

A small model's operations are far too small to gain from threads, and on a busy CPU each parallel region can
stall for milliseconds; the lip-sync model and the motion model's frame-by-frame loop therefore run on one
intra-op thread. :func:`torch_threads` sets the count for a block and restores it after: the only place outside
the front doors (:mod:`audio2lp.apps`) that touches torch's thread count, and it always gives it back.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Temporarily set torch's intra-op thread count (process-wide) to ``n`` and restore it."""
    old = torch.get_num_threads()
    if old == n:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
