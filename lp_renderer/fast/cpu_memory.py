"""Memory-allocation settings that make the renderer's large tensors cheap to allocate on the CPU (opt-in).

Nothing here runs on import, and nothing applies unless the program opts in: a front door (a command line, a
service, a benchmark) that renders on the CPU calls :func:`enable_cpu_memory_settings` first thing, before
``torch`` is imported; a library user may do the same.

A frame allocates and frees a few GB in tensors of 10-130 MB. Each of them is a fresh ``mmap`` whose
4 KB pages the kernel faults in and zeroes on first touch; on a 2-core machine that cost more than the
arithmetic of the element-wise layers and a fifth of W (``benchmarks/RESULTS.md``). Two settings keep
the cost down and the peak memory no higher than the official code's:

* ``THP_MEM_ALLOC_ENABLE=1`` makes PyTorch's CPU allocator ask for transparent huge pages (2 MB) for
  large tensors: 512x fewer page faults. PyTorch reads it once, at its first allocation, so it must be in
  the environment before ``torch`` is imported: :func:`request_huge_pages` sets it unless it is already set
  (``THP_MEM_ALLOC_ENABLE=0`` opts out). Without effect when ``torch`` was
  imported first, or when the kernel has transparent huge pages off.
* glibc ``mallopt``: blocks of 1 MiB and more are always ``mmap``-ed (``M_MMAP_THRESHOLD`` fixed at
  1 MiB instead of glibc's sliding threshold, which climbs to 32 MB after the first large free and then
  serves the 10-32 MB tensors from the heap, where they fragment it and the process keeps its peak heap),
  and the heap below that is not trimmed back to the kernel after every free (``M_TRIM_THRESHOLD`` 1 GiB).
  With huge pages the faults of a fresh mapping cost little, and a freed tensor goes back to the kernel at
  once, so the peak RSS of a frame stays near the sum of the tensors alive at the same time. It is
  process-wide; once enabled, the first folded CPU :class:`lp_renderer.Renderer` applies it before it folds
  (after its weights are loaded, as the figures of ``benchmarks/RESULTS.md`` were measured), once
  (``LP_RENDERER_MALLOC_TUNING=0`` opts out).

Neither changes any result. This module must not import torch.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

log = logging.getLogger(__name__)

THP_ENV = "THP_MEM_ALLOC_ENABLE"
TUNING_ENV = "LP_RENDERER_MALLOC_TUNING"
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers (malloc.h)
MMAP_THRESHOLD = 1 << 20  # bytes: from this size up, a block is its own mapping
TRIM_THRESHOLD = 1 << 30  # bytes of free heap top kept before glibc returns it
_state: dict[str, bool] = {}


def request_huge_pages() -> None:
    """Set ``THP_MEM_ALLOC_ENABLE=1`` unless the user set it (effective only before ``torch`` is imported)."""
    if "torch" not in sys.modules:
        os.environ.setdefault(THP_ENV, "1")


def apply_malloc_settings() -> bool:
    """Apply the glibc settings above once per process. Returns whether they are in effect (False on
    non-glibc systems, or when ``LP_RENDERER_MALLOC_TUNING=0``)."""
    if "applied" in _state:
        return _state["applied"]
    applied = False
    if os.environ.get(TUNING_ENV, "1") != "0" and sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            applied = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
            applied = bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)) and applied
        except (OSError, AttributeError):  # not glibc (musl, ...): nothing to tune
            applied = False
    if applied:
        log.debug("glibc malloc: blocks >= %d bytes mmapped, heap trimmed above %d bytes",
                  MMAP_THRESHOLD, TRIM_THRESHOLD)
    _state["applied"] = applied
    return applied


def enable_cpu_memory_settings() -> None:
    """Opt in to both settings above: huge pages now (effective when ``torch`` is not imported yet), the glibc
    settings when the first folded CPU renderer is built (:func:`apply_if_enabled`)."""
    request_huge_pages()
    _state["enabled"] = True


def apply_if_enabled() -> bool:
    """The glibc settings, if the program opted in with :func:`enable_cpu_memory_settings` (called by a folded CPU
    renderer before it folds). Returns whether they are in effect."""
    return apply_malloc_settings() if _state.get("enabled") else False
