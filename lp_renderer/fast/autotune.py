"""Per-layer convolution kernel autotuning on the CPU, as cuDNN's benchmark mode does on GPUs.

The fastest exact way to run a convolution depends on the layer's shape and on the CPU (NNPACK's Winograd kernels
are AVX2 code, oneDNN's direct kernels use AVX-512 where there is one, PyTorch's own im2col + GEMM path wins some
1x1 and small-map layers). :class:`AutotunedConv` wraps an ``nn.Conv2d`` / ``nn.Conv3d``: the first time it sees an
input signature on the CPU in float32 with autograd off, it times every kernel that applies (:data:`KERNELS`,
warm-up then the min of a few runs, with the thread count in force), keeps the fastest (the layer's fixed kernel
unless another is :data:`MARGIN` faster), logs the choice (INFO) and
records it in a JSON file per machine under the user cache dir (:func:`cache_path`), so later processes time
nothing (a choice timed while the machine was busy is timed again by a process that finds it quiet). Anywhere else
(CUDA, float16 / float64, gradients) it is the plain convolution.

Kernels (all the same maths up to float rounding; tested against the plain convolution):

* ``onednn`` - ``F.conv2d`` / ``F.conv3d`` as PyTorch dispatches them (oneDNN's direct kernels on x86);
* ``native`` - PyTorch's own im2col + GEMM path (oneDNN switched off for the call; ungrouped; only where its
  im2col buffer stays under :data:`NATIVE_COLUMNS_BYTES`: elsewhere it is far behind and needs up to gigabytes);
* ``nnpack`` - NNPACK's Winograd / FFT kernels one image at a time (2-D, stride 1, ungrouped;
  :mod:`lp_renderer.fast.nnpack`);
* ``nnpack-depth`` - a 3-D convolution as a sum over kernel depth of NNPACK 2-D convolutions of the depth slices
  (3x3x3 kernels, stride 1, ungrouped, maps of at least 32x32: on smaller ones it is far behind; not on AVX-512
  CPUs, where it never wins);
* ``winograd`` - Winograd F(4x4, 3x3) with GEMM inner products (3x3 2-D, stride 1, ungrouped;
  :mod:`lp_renderer.fast.winograd`);
* ``fft`` - the tiled FFT of :mod:`lp_renderer.fast.fft_conv`, for the layers it was built for (W's 7x7x7 mask).

Opt-in (see :func:`autotune_enabled`): ``Renderer(autotune=True)`` or ``LP_RENDERER_AUTOTUNE=1``; off
(``LP_RENDERER_AUTOTUNE=0`` wins over everything), the layers run the fixed
choices of the CPU layer set (NNPACK for W's and G's 3x3-and-larger 2-D convolutions, Winograd on GEMMs for those
:func:`lp_renderer.fast.winograd.preferred` takes, the FFT for the mask, oneDNN for the rest). Tuning a process
stops after :data:`BUDGET_S` seconds (later layers keep their fixed choice and are tuned by a later process); a
kernel whose warm-up run is :data:`PRUNE` times slower than the best so far is not run
again.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import platform
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import winograd
from .nnpack import nnpack_conv2d, nnpack_usable
from .winograd import WinogradConv2d, winograd_conv2d

log = logging.getLogger(__name__)

ENV_SWITCH = "LP_RENDERER_AUTOTUNE"
#: seconds of tuning per process at most (the full-size renderer needs about 12 s on an idle 2-core machine, 48 s
#: under heavy load: benchmarks/RESULTS.md)
BUDGET_S = 45.0
#: timed runs after the warm-up; the kept figure is their minimum
RUNS = 2
#: a kernel whose warm-up takes this many times the best time so far is dropped without further runs
PRUNE = 2.0
#: another kernel replaces the layer's fixed one only when it takes less than this fraction of its time
MARGIN = 0.9
#: a warm-up longer than this (seconds) is followed by one timed run only
LONG_S = 0.1
#: the largest im2col buffer the ``native`` kernel is tried with (beyond it, it lost everywhere: up to 6 s and 1.8 GB
#: for W's 7x7 occlusion layer)
NATIVE_COLUMNS_BYTES = 64 * 2**20
CACHE_FORMAT = 1
#: ISA flags that decide which kernels are fast (part of the machine key)
_ISA_FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni",
              "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_bf16", "neon", "asimd", "sve")


def autotune_enabled(requested: bool | None = None) -> bool:
    """Whether to autotune: ``requested`` when given, else off unless ``LP_RENDERER_AUTOTUNE=1`` (or
    ``true``/``yes``/``on``); ``LP_RENDERER_AUTOTUNE=0`` (or ``false``/``no``/``off``) turns it off in every case.

    Opt-in: on this project's Xeon it gained nothing per frame, and with the kernels it chose on a quiet run the
    end-to-end conformance case differed from the official output by up to 20 levels at a pixel (the tolerance is
    16; the mean, 0.055, is within its 0.5): kernels that are each exact to float rounding still add up differently
    through the whole network (benchmarks/RESULTS.md)."""
    if switched_off():
        return False
    if requested is None:
        return _switch() in _ON
    return bool(requested)


_ON, _OFF = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _switch() -> str:
    """``LP_RENDERER_AUTOTUNE`` lower-cased; a value that is neither on nor off is logged once (and counts as
    unset: off unless a renderer asks for tuning)."""
    value = os.environ.get(ENV_SWITCH, "").strip().lower()
    if value and value not in _ON + _OFF and _STATE.get("warned_value") != value:
        _STATE["warned_value"] = value
        log.warning("%s=%s is not understood; use 1 (autotune) or 0 (never); taken as unset", ENV_SWITCH, value)
    return value


def switched_off() -> bool:
    """``LP_RENDERER_AUTOTUNE=0`` (or ``false``/``no``/``off``): no timing anywhere, even in renderers built with
    autotuning (their layers then keep their fixed kernels)."""
    return _switch() in _OFF


# ---------------------------------------------------------------------------------------------------- kernels
def _conv(x: torch.Tensor, c: nn.Module) -> torch.Tensor:
    fn = F.conv2d if x.dim() == 4 else F.conv3d
    return fn(x, c.weight, c.bias, c.stride, c.padding, c.dilation, c.groups)


_NATIVE_LOCK = threading.Lock()


def _native(x: torch.Tensor, c: nn.Module) -> torch.Tensor:
    # oneDNN off is process-wide: one such call at a time, so each restores the switch as it really was (two
    # overlapping calls could otherwise leave oneDNN off for good); another thread's convolution in that window
    # may take the same path (the same maths, only its speed changes)
    with _NATIVE_LOCK:
        was = torch._C._get_mkldnn_enabled()
        torch._C._set_mkldnn_enabled(False)
        try:
            return _conv(x, c)
        finally:
            torch._C._set_mkldnn_enabled(was)


def _bias(c: nn.Module) -> torch.Tensor:
    return c.bias if c.bias is not None else c.weight.new_zeros(c.weight.shape[0])


def _nnpack(x: torch.Tensor, c: nn.Module) -> torch.Tensor:
    return nnpack_conv2d(x, c.weight, _bias(c), list(c.padding))


def _nnpack_depth(x: torch.Tensor, c: nn.Module) -> torch.Tensor:
    """(B, C, D, H, W) -> (B, O, D', H', W'): every (padded) depth slice convolved in 2-D with all kd kernel slices
    at once (one NNPACK call per slice, kd*O outputs), then the kd partial maps summed with their depth shifts."""
    b, _, d, _, _ = x.shape
    o, ci, kd, kh, kw = c.weight.shape
    pd, ph, pw = c.padding
    xs = F.pad(x, (0, 0, 0, 0, pd, pd)).transpose(1, 2)  # (B, D + 2pd, C, H, W)
    dp = xs.shape[1]
    wk = c.weight.permute(2, 0, 1, 3, 4).reshape(kd * o, ci, kh, kw)  # (kd*O, C, kh, kw)
    y = nnpack_conv2d(xs.reshape(b * dp, ci, *xs.shape[3:]), wk, wk.new_zeros(kd * o), [ph, pw])
    y = y.view(b, dp, kd, o, *y.shape[2:])  # (B, D + 2pd, kd, O, H', W')
    dout = dp - kd + 1
    out = y[:, :dout, 0].clone()  # (B, D', O, H', W')
    for k in range(1, kd):
        out.add_(y[:, k:k + dout, k])
    del y
    out.add_(_bias(c).view(1, 1, -1, 1, 1))
    return out.transpose(1, 2).contiguous()  # (B, O, D', H', W')


def _winograd(x: torch.Tensor, c: nn.Module) -> torch.Tensor:
    return winograd_conv2d(x, None, c.bias, tuple(c.padding), weight=c.weight)


def _winograd_applies(c: nn.Module, x: torch.Tensor) -> bool:
    return WinogradConv2d.eligible(c)


def _stride1(c: nn.Module) -> bool:
    n = c.weight.dim() - 2
    return c.stride == (1,) * n and c.dilation == (1,) * n and c.groups == 1


def _nnpack_2d_applies(c: nn.Module, x: torch.Tensor) -> bool:
    return isinstance(c, nn.Conv2d) and _stride1(c) and nnpack_usable()


def depth_split_offered() -> bool:
    """Whether ``nnpack-depth`` is worth timing here: not on AVX-512 CPUs, where oneDNN's direct 3-D kernels were
    2.8-4x faster on every layer of W (``benchmarks/RESULTS.md``); on AVX2-only CPUs NNPACK's Winograd may win."""
    return "avx512f" not in _cpu()[1]


def _nnpack_depth_applies(c: nn.Module, x: torch.Tensor) -> bool:
    return (isinstance(c, nn.Conv3d) and _stride1(c) and c.kernel_size == (3, 3, 3)
            and x.shape[3] * x.shape[4] >= 32 * 32 and nnpack_usable() and depth_split_offered())


def _native_applies(c: nn.Module, x: torch.Tensor) -> bool:
    """Ungrouped, with an im2col buffer (C * kernel volume * output positions floats) under
    :data:`NATIVE_COLUMNS_BYTES`, or a 1x1 kernel (no buffer)."""
    if c.groups != 1:
        return False
    k = math.prod(c.kernel_size)
    positions = math.prod((n + 2 * p - d * (kk - 1) - 1) // s + 1
                          for n, p, d, kk, s in zip(x.shape[2:], c.padding, c.dilation, c.kernel_size, c.stride))
    return k == 1 or x.shape[1] * k * positions * x.element_size() <= NATIVE_COLUMNS_BYTES


#: name -> (applies(conv, x), run(x, conv)); ``fft`` is per layer (see :class:`AutotunedConv`)
KERNELS: dict[str, tuple[Callable[[nn.Module, torch.Tensor], bool], Callable[[torch.Tensor, nn.Module],
                                                                             torch.Tensor]]] = {
    "onednn": (lambda c, x: True, _conv),
    "native": (_native_applies, _native),
    "nnpack": (_nnpack_2d_applies, _nnpack),
    "nnpack-depth": (_nnpack_depth_applies, _nnpack_depth),
    "winograd": (_winograd_applies, _winograd),
}


# ---------------------------------------------------------------------------------------------------- the cache
def machine() -> dict:
    """What the choices depend on: CPU model, its ISA flags, torch's version and CPU capability, the thread count."""
    model, isa, capability = _cpu()
    return {"cpu": model, "isa": isa, "torch": torch.__version__, "capability": capability,
            "threads": torch.get_num_threads()}


@functools.lru_cache(maxsize=1)
def _cpu() -> tuple[str, list[str], str]:
    """(model name, the ISA flags of :data:`_ISA_FLAGS` it has, torch's CPU capability)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model == (platform.processor() or platform.machine()):
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        capability = "unknown"
    return model, sorted(flags.intersection(_ISA_FLAGS)), capability


def cache_dir() -> Path:
    """``<user cache dir>/lp_renderer/kernels`` (``$XDG_CACHE_HOME`` or ``~/.cache`` on Linux; platformdirs, as the
    front doors pick theirs; lp_renderer keeps a folder of its own, as it names no caller)."""
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("lp_renderer")) / "kernels"


def cache_path(desc: dict | None = None) -> Path:
    """The JSON file of this machine (:func:`machine`): one file per CPU model, ISA, torch version and threads."""
    desc = machine() if desc is None else desc
    digest = hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / f"{digest}.json"


class KernelCache:
    """The choices of one machine key: ``entries`` (layer key -> {"kernel", "ms"}) read from and written to
    ``path`` (atomically, merged with what another process wrote meanwhile)."""

    def __init__(self, desc: dict):
        self.desc, self.path = desc, cache_path(desc)
        self.entries: dict[str, dict] = self._read(warn=True)
        self.lock = threading.Lock()

    def _read(self, warn: bool) -> dict[str, dict]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as exc:
            if warn:
                log.warning("kernel cache %s cannot be read (%s); tuning again", self.path, exc)
            return {}
        try:
            data = json.loads(text)
            ok = (isinstance(data, dict) and data.get("format") == CACHE_FORMAT and data.get("machine") == self.desc
                  and isinstance(data.get("entries"), dict)
                  and all(isinstance(v, dict) and isinstance(v.get("kernel"), str) for v in data["entries"].values()))
        except ValueError:
            ok = False
        if not ok:
            if warn:
                log.warning("kernel cache %s is corrupt or from another machine; it is ignored and rewritten",
                            self.path)
            return {}
        return data["entries"]

    def get(self, key: str) -> str | None:
        """The recorded kernel, or None: none recorded, or recorded on a busy machine while this one is quiet (a
        choice timed while other processes took the cores is often wrong, so it is timed again)."""
        entry = self.entries.get(key)
        if not entry:
            return None
        if entry.get("busy") and not machine_busy():
            return None
        return entry["kernel"]

    def put(self, key: str, kernel: str, ms: dict[str, float], busy: bool = False) -> None:
        with self.lock:
            entry = {"kernel": kernel, "ms": {k: round(v, 3) for k, v in ms.items()}, "busy": busy}
            self.entries = {**self._read(warn=False), **self.entries, key: entry}
            data = {"format": CACHE_FORMAT, "machine": self.desc, "entries": self.entries}
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(prefix=".kernels-", suffix=".tmp", dir=self.path.parent)
                try:
                    with os.fdopen(fd, "w", encoding="utf-8") as f:
                        json.dump(data, f, indent=1, sort_keys=True)
                    os.replace(tmp, self.path)
                except BaseException:
                    Path(tmp).unlink(missing_ok=True)
                    raise
            except OSError as exc:  # a read-only home: the choice still holds for this process
                log.warning("kernel cache %s cannot be written (%s); choices are kept for this process only",
                            self.path, exc)


def machine_busy() -> bool:
    """Whether other work competes for the cores: the 1-minute load average above the core count (this process's
    own threads count in it, so a renderer alone on the machine is not busy)."""
    try:
        return os.getloadavg()[0] > (os.cpu_count() or 1) + 0.5
    except (AttributeError, OSError):
        return False


_CACHES: dict[str, KernelCache] = {}
_STATE = {"spent": 0.0, "warned_budget": False}
_LOCK = threading.Lock()


def kernel_cache() -> KernelCache:
    """The cache of the current machine key (thread count included), loaded once per process."""
    desc = machine()
    key = json.dumps(desc, sort_keys=True)
    with _LOCK:
        if key not in _CACHES or _CACHES[key].path != cache_path(desc):
            _CACHES[key] = KernelCache(desc)
        return _CACHES[key]


def tuning_seconds() -> float:
    """Seconds this process has spent timing kernels so far."""
    return _STATE["spent"]


def reset() -> None:
    """Forget the loaded caches and the tuning time spent (tests; a changed cache dir)."""
    with _LOCK:
        _CACHES.clear()
        _STATE.update(spent=0.0, warned_budget=False)
        _STATE.pop("warned_value", None)


def measure(fn: Callable[[], torch.Tensor], runs: int = RUNS, prune_above: float = float("inf"),
            ) -> tuple[float, torch.Tensor]:
    """Seconds of ``fn`` (a warm-up, then the minimum of ``runs`` runs, one run after a warm-up of more than
    :data:`LONG_S`; only the warm-up when it already took more than ``prune_above`` seconds) and its last output."""
    t0 = time.perf_counter()
    out = fn()
    best = time.perf_counter() - t0
    if best > prune_above:
        return best, out
    if best > LONG_S:
        runs = 1
    best = float("inf")
    for _ in range(runs):
        del out
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


# ---------------------------------------------------------------------------------------------------- the layer
class AutotunedConv(nn.Module):
    """Drop-in for an inference ``nn.Conv2d`` / ``nn.Conv3d`` with zero padding: runs each input signature with the
    kernel that was fastest for it on this machine (see the module docstring).

    Input (B, C, [D,] H, W) -> (B, O, [D',] H', W') as the convolution it wraps (``self.conv``). ``default``: the
    kernel used untuned (tuning off or out of budget); ``fft``: an :class:`lp_renderer.fast.fft_conv.FFTConv3d` of
    the same layer, offered as the ``fft`` kernel (its weight spectra are dropped when another kernel wins).
    """

    def __init__(self, conv: nn.Conv2d | nn.Conv3d, default: str = "onednn", fft: nn.Module | None = None,
                 tune: bool = True):
        super().__init__()
        if not self.eligible(conv):
            raise ValueError("AutotunedConv wraps zero-padded nn.Conv2d / nn.Conv3d layers with numeric padding")
        if default not in KERNELS and not (default == "fft" and fft is not None):
            raise ValueError(f"unknown default kernel {default!r}")
        self.conv, self.fft, self.default, self.tune = conv, fft, default, tune
        self.chosen: dict[tuple, str] = {}  # signature -> kernel, this layer
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size, self.stride, self.padding = conv.kernel_size, conv.stride, conv.padding

    @property
    def weight(self) -> torch.Tensor:
        return self.conv.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.conv.bias

    @staticmethod
    def eligible(conv: nn.Module) -> bool:
        return (type(conv) in (nn.Conv2d, nn.Conv3d) and conv.padding_mode == "zeros"
                and isinstance(conv.padding, tuple))

    def kernels(self, x: torch.Tensor) -> list[str]:
        """The kernels that apply to this layer and input, ``onednn`` first."""
        names = [n for n, (applies, _) in KERNELS.items() if applies(self.conv, x)]
        return names + (["fft"] if self.fft is not None else [])

    def run(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """The convolution of ``x`` with kernel ``name``."""
        if name == "fft":
            return self.fft(x)
        return KERNELS[name][1](x, self.conv)

    def _fast_path(self, x: torch.Tensor) -> bool:
        w = self.conv.weight
        return (x.device.type == "cpu" and x.dtype == torch.float32 and w.dtype == torch.float32
                and x.dim() == w.dim() and not (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad)))

    def signature(self, x: torch.Tensor) -> str:
        """The cache key: op, input shape, weight shape, stride, padding, dilation, groups, bias, dtype and the
        kernels on offer."""
        c = self.conv
        return json.dumps([f"conv{x.dim() - 2}d", list(x.shape), list(c.weight.shape), list(c.stride),
                           list(c.padding), list(c.dilation), c.groups, c.bias is not None, str(x.dtype),
                           self.kernels(x)], separators=(",", ":"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._fast_path(x):
            return self.conv(x)
        shape = tuple(x.shape)
        name = self.chosen.get(shape)
        if name is None:
            name, out = self._choose(x)
            self.chosen[shape] = name
            if self.fft is not None and "fft" not in self.chosen.values():
                self.fft._spectra = {}  # not used (a later input signature may rebuild them)
            if out is not None:
                return out
        try:
            return self.run(name, x)
        except RuntimeError as exc:  # NNPACK refusing this CPU at run time: oneDNN from now on
            if not name.startswith("nnpack"):
                raise
            log.warning("NNPACK convolution failed (%s); using PyTorch's direct convolution", exc)
            self.chosen[shape] = "onednn"
            return _conv(x, self.conv)

    def _untuned(self, x: torch.Tensor) -> str:
        names = self.kernels(x)
        if self.default == "winograd" and x.shape[2] * x.shape[3] > winograd.MAX_PIXELS:
            return "nnpack" if "nnpack" in names else "onednn"  # as WinogradConv2d in the fixed layer set
        return self.default if self.default in names else "onednn"

    @torch.compiler.disable  # timing is eager work (under torch.compile too)
    def _choose(self, x: torch.Tensor) -> tuple[str, torch.Tensor | None]:
        """The kernel for this input (from the cache, or timed now) and, when timed, the winner's output."""
        if not self.tune or switched_off():
            return self._untuned(x), None
        cache = kernel_cache()
        key = self.signature(x)
        name = cache.get(key)
        if name is not None and name in self.kernels(x):
            return name, None
        if _STATE["spent"] >= BUDGET_S:
            if not _STATE["warned_budget"]:
                _STATE["warned_budget"] = True
                log.info("kernel autotuning: the budget of %.0f s is spent; untuned layers keep their fixed "
                         "kernels this time", BUDGET_S)
            return self._untuned(x), None
        t0 = time.perf_counter()
        name, out, ms = self._tune(x)
        _STATE["spent"] += time.perf_counter() - t0
        log.info("kernel autotuning: conv%dd %s * %s -> %s (%s)", x.dim() - 2, tuple(x.shape),
                 tuple(self.conv.weight.shape), name,
                 ", ".join(f"{k} {v:.1f} ms" for k, v in sorted(ms.items(), key=lambda kv: kv[1])))
        busy = machine_busy()
        if busy:
            log.info("kernel autotuning: the machine is busy (load average %.1f on %d cores); this choice will be "
                     "timed again when it is quiet", os.getloadavg()[0], os.cpu_count() or 1)
        cache.put(key, name, ms, busy=busy)
        return name, out

    def _tune(self, x: torch.Tensor) -> tuple[str, torch.Tensor, dict[str, float]]:
        names = self.kernels(x)
        first = self._untuned(x)
        names.remove(first)
        best_name, best_out, ms = None, None, {}
        best = float("inf")
        for name in [first, *names]:  # the fixed choice first: it sets the bar the others are pruned against
            try:
                t, out = measure(lambda name=name: self.run(name, x), prune_above=PRUNE * best)
            except RuntimeError as exc:  # NNPACK can refuse a CPU or a shape: not a candidate here
                log.warning("kernel autotuning: %s failed on this layer (%s); not a candidate", name, exc)
                continue
            ms[name] = t * 1000
            # the fixed choice is left only for a clear win (a timing taken alone is noisy, and a layer in the
            # network runs between others)
            if t < (best * MARGIN if best_name == first else best):
                best_name, best_out, best = name, out, t
            del out
        return best_name, best_out, ms


def autotune_network(module: nn.Module, nnpack_in: tuple[type, ...] = (), winograd: bool = False) -> int:
    """In place: wrap every eligible ``nn.Conv2d`` / ``nn.Conv3d`` below ``module`` in :class:`AutotunedConv`
    (those already wrapped are left as they are). Layers inside modules of the types ``nnpack_in`` that
    :class:`lp_renderer.fast.nnpack.NNPACKConv2d` would take get ``nnpack`` as their untuned kernel, or ``winograd``
    where :func:`lp_renderer.fast.winograd.preferred` takes them (with ``winograd``): the fixed CPU layer set's
    choices. Returns the count of layers wrapped."""
    from .nnpack import NNPACKConv2d, wrap_layers
    from .winograd import preferred

    in_set = [c for m in module.modules() if isinstance(m, nnpack_in) for c in m.modules()]
    nnpack_layers = {id(c) for c in in_set if NNPACKConv2d.eligible(c)}
    winograd_layers = {id(c) for c in in_set if winograd and preferred(c)}

    def default(c: nn.Module) -> str:
        return "winograd" if id(c) in winograd_layers else "nnpack" if id(c) in nnpack_layers else "onednn"

    return wrap_layers(module, AutotunedConv, AutotunedConv.eligible, lambda c: AutotunedConv(c, default(c)))
