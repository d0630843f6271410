"""ONNX export of the renderer's networks, and a :class:`~lp_renderer.Renderer` that runs them with onnxruntime.

:func:`export_onnx` writes F, M, W, G and the stitching / eye / lip retargeting MLPs of loaded networks (the
official weights as :mod:`.weights` loads them) to one ``.onnx`` file each, batch dimension dynamic, with
spectral norm and BatchNorm folded into the convolutions (exact up to float rounding; the CPU's other rewrites -
FFT, NNPACK, the merged SPADE layers - are PyTorch-only and not exported: the plain layer set, see
:data:`lp_renderer.renderer.LAYER_SETS`). A ``manifest.json`` lists the files, inputs and outputs, and the
renderer configuration; ``neutral_exp.npy`` holds LivePortrait's neutral expression when the weights had it.

=============================  ===============================================  ===============================
file                           inputs                                           outputs
=============================  ===============================================  ===============================
``appearance.onnx`` (F)        image (B, 3, 256, 256) in [0, 1]                 feature (B, 32, 16, 64, 64)
``motion.onnx`` (M)            image (B, 3, 256, 256) in [0, 1]                 kp, exp, pitch, yaw, roll, t,
                                                                                scale (raw heads)
``warping.onnx`` (W)           feature (1 or B, 32, 16, 64, 64), kp_driving     out (B, 256, 64, 64),
                               (B, 21, 3), kp_source (1 or B, 21, 3)            deformation, occlusion_map
``decoder.onnx`` (G)           feature (B, 256, 64, 64)                         image (B, 3, 512, 512)
``stitching.onnx`` / ``eye``   x (B, n)                                         delta (B, m)
/ ``lip_retargeting.onnx``
=============================  ===============================================  ===============================

(Sizes of the official configuration.) :class:`OnnxRenderer` loads such a folder and runs every network with
onnxruntime (the TensorRT, CUDA and CPU execution providers, whichever are installed, in that order of
preference); the keypoint maths around them stay in PyTorch on the CPU. Both need the ``onnx`` extra
(``pip install -e ".[onnx]"``).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from .config import RendererConfig
from .errors import InputError
from .nets.networks import RendererNetworks
from .renderer import Renderer

FORMAT = "lp_renderer-onnx"
OPSET = 20  # GridSample on 5-D inputs (W's 3-D warp) needs opset 20
MOTION_OUTPUTS = ("kp", "exp", "pitch", "yaw", "roll", "t", "scale")
WARP_OUTPUTS = ("out", "deformation", "occlusion_map")
MLPS = {"stitching": "stitching.onnx", "eye": "eye_retargeting.onnx", "lip": "lip_retargeting.onnx"}
#: execution providers in order of preference (those not installed are left out)
PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


class _Motion(nn.Module):
    def __init__(self, m: nn.Module):
        super().__init__()
        self.m = m

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        raw = self.m(image)
        return tuple(raw[k] for k in MOTION_OUTPUTS)


class _Warp(nn.Module):
    """W with the source's feature and keypoints broadcast to the driving batch (so one source serves B frames)."""

    def __init__(self, w: nn.Module):
        super().__init__()
        self.w = w

    def forward(self, feature: torch.Tensor, kp_driving: torch.Tensor, kp_source: torch.Tensor):
        b = kp_driving.shape[0]
        out = self.w(feature.expand(b, -1, -1, -1, -1), kp_driving, kp_source.expand(b, -1, -1))
        return tuple(out[k] for k in WARP_OUTPUTS)


def _export(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str],
            batch_inputs: dict[str, str]) -> None:
    """One network to ``path`` (written beside it, then renamed: never a half-written file)."""
    import onnx

    axes = {name: {0: axis} for name, axis in batch_inputs.items()}
    axes.update({name: {0: "batch"} for name in outputs})
    tmp = path.with_name(path.name + ".tmp")
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # the TorchScript-based exporter (deprecated in favour of torch.export, which needs onnxscript and
            # guards W's shape checks): it writes W's broadcast over the batch and its 5-D grid_sample as they are
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            # InstanceNorm without running statistics normalises by the input's own in eval too: exported as is
            warnings.filterwarnings("ignore", message=".*instance_norm.*train=True", category=UserWarning)
            torch.onnx.export(module, args, str(tmp), input_names=inputs, output_names=outputs,
                              dynamic_axes=axes, opset_version=OPSET, do_constant_folding=True, dynamo=False)
        onnx.checker.check_model(str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def export_onnx(networks: RendererNetworks, out_dir: str | os.PathLike,
                neutral_exp: torch.Tensor | None = None) -> list[Path]:
    """Export ``networks`` (eval mode; they are copied, not changed) to ``out_dir``; returns the files written
    (``manifest.json`` last). Traced with batch 2; every batch size runs."""
    from .fast.folding import fold_network

    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    nets = fold_network(networks.eval(), fast_layers=False, fft_conv=False, nnpack=False).float()
    cfg = nets.config
    g = torch.Generator().manual_seed(0)
    image = torch.rand(2, 3, 256, 256, generator=g)
    with torch.no_grad():
        feature = nets.appearance(image[:1])
        kp_s = transform_source(nets, image[:1])
        warped = nets.warping(feature.expand(2, -1, -1, -1, -1), kp_s.expand(2, -1, -1),
                              kp_s.expand(2, -1, -1))["out"]
    written = []

    def put(name, module, args, inputs, outputs, batch_inputs):
        path = out / name
        _export(module, args, path, inputs, outputs, batch_inputs)
        written.append(path)

    put("appearance.onnx", nets.appearance, (image,), ["image"], ["feature"], {"image": "batch"})
    put("motion.onnx", _Motion(nets.motion), (image,), ["image"], list(MOTION_OUTPUTS), {"image": "batch"})
    put("warping.onnx", _Warp(nets.warping), (feature, kp_s.expand(2, -1, -1).clone(), kp_s),
        ["feature", "kp_driving", "kp_source"], list(WARP_OUTPUTS),
        {"feature": "source_batch", "kp_driving": "batch", "kp_source": "source_batch"})
    put("decoder.onnx", nets.decoder, (warped,), ["feature"], ["image"], {"feature": "batch"})
    mlps = {}
    if nets.stitching is not None:
        for key, name in MLPS.items():
            mlp = getattr(nets.stitching, key)
            put(name, mlp, (torch.randn(2, mlp.cfg.input_size, generator=g),), ["x"], ["delta"], {"x": "batch"})
            mlps[key] = name
    if neutral_exp is not None:
        np.save(out / "neutral_exp.npy", neutral_exp.detach().cpu().float().numpy())
        written.append(out / "neutral_exp.npy")
    manifest = {"format": FORMAT, "version": 1, "opset": OPSET, "config": json.loads(cfg.to_json()),
                "networks": {"appearance": "appearance.onnx", "motion": "motion.onnx", "warping": "warping.onnx",
                             "decoder": "decoder.onnx", **mlps},
                "motion_outputs": list(MOTION_OUTPUTS), "warp_outputs": list(WARP_OUTPUTS),
                "neutral_exp": "neutral_exp.npy" if neutral_exp is not None else None}
    tmp = out / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, out / "manifest.json")
    written.append(out / "manifest.json")
    return written


def transform_source(nets: RendererNetworks, image: torch.Tensor) -> torch.Tensor:
    """The source keypoints x_s (1, 21, 3) of an image, for tracing W with realistic inputs."""
    from .keypoints import motion_from_raw, transform_keypoints

    return transform_keypoints(motion_from_raw(nets.motion(image)))


def available_providers(device: str | None = None) -> list[str]:
    """The execution providers to use: ``device`` ``"cpu"`` -> the CPU's; ``"cuda"`` -> TensorRT and CUDA (an
    :class:`InputError` when neither is installed); None -> every installed one, best first."""
    import onnxruntime as ort

    have = set(ort.get_available_providers())
    if device == "cpu":
        return ["CPUExecutionProvider"]
    chosen = [p for p in PROVIDERS if p in have]
    if device == "cuda":
        if not any(p in have for p in PROVIDERS[:2]):
            raise InputError("onnxruntime has no CUDA or TensorRT execution provider here (install "
                             "onnxruntime-gpu), or run on the CPU.")
    return chosen


class _Session:
    """One ONNX network: torch tensors in (moved to the host), torch tensors out (on the CPU)."""

    def __init__(self, path: Path, providers: list[str], threads: int | None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), opts, providers=providers)
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]

    def __call__(self, *tensors: torch.Tensor) -> list[torch.Tensor]:
        feeds = {n: np.ascontiguousarray(t.detach().to("cpu", torch.float32).numpy())
                 for n, t in zip(self.inputs, tensors)}
        return [torch.from_numpy(a) for a in self.session.run(self.outputs, feeds)]


class OnnxRenderer(Renderer):
    """:class:`~lp_renderer.Renderer` with every network run by onnxruntime from a folder written by
    :func:`export_onnx` (same methods, same outputs up to float rounding; W has no per-source cache, the folded
    plain layers recompute it per frame). ``providers``: onnxruntime's execution providers (default: see
    :func:`available_providers`); ``threads``: onnxruntime's intra-op threads (default: its own choice)."""

    def __init__(self, onnx_dir: str | os.PathLike, providers: list[str] | None = None, threads: int | None = None):
        folder = Path(onnx_dir).expanduser()
        try:
            manifest = json.loads((folder / "manifest.json").read_text())
        except (OSError, ValueError):
            manifest = None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise InputError(f"{folder} is not an ONNX export of the renderer (no valid manifest.json); export the "
                             f"weights into it first (the `export onnx` command).")
        files = manifest["networks"]
        missing = [f for f in files.values() if not (folder / f).is_file()]
        if missing:
            raise InputError(f"{folder} lacks {', '.join(missing)}; export the weights into it again (the `export "
                             f"onnx` command).")
        self.onnx_dir = folder
        self.providers = list(providers) if providers is not None else available_providers()
        self.device = torch.device("cpu")  # where the tensors around the networks live
        self.half, self.folded, self.layers, self.decode_chunk = False, False, "onnxruntime", None
        self.config = RendererConfig.from_dict(manifest["config"])
        ne = manifest.get("neutral_exp")
        self.neutral_exp = torch.from_numpy(np.load(folder / ne)) if ne else None
        s = {k: _Session(folder / f, self.providers, threads) for k, f in files.items()}
        stitching = None
        if all(k in s for k in MLPS):
            stitching = SimpleNamespace(**{k: (lambda x, f=s[k]: f(x)[0]) for k in MLPS})
        self.nets = SimpleNamespace(
            appearance=lambda x: s["appearance"](x)[0],
            motion=lambda x: dict(zip(MOTION_OUTPUTS, s["motion"](x))),
            warping=None, decoder=None, stitching=stitching)
        self._warp = lambda feature, kp_d, kp_s, source_cache=None: dict(zip(WARP_OUTPUTS,
                                                                             s["warping"](feature, kp_d, kp_s)))
        self._decode = lambda x: s["decoder"](x)[0]
        self.sessions = s

    def session_providers(self) -> list[str]:
        """The execution providers onnxruntime actually uses (it falls back when one cannot start)."""
        return list(dict.fromkeys(p for s in self.sessions.values() for p in s.session.get_providers()))

    @classmethod
    def from_weights(cls, *args, **kwargs):
        """Not available: an OnnxRenderer loads an exported folder (``OnnxRenderer(onnx_dir)``)."""
        raise TypeError("OnnxRenderer loads an ONNX folder: OnnxRenderer(onnx_dir); export one with export_onnx")

    from_config = from_weights
