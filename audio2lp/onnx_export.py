"""The weights as ONNX files (``audio2lp export onnx``) and the onnxruntime backend of ``speak`` / ``drive``
(``--backend onnxruntime``): see :mod:`lp_renderer.onnx_backend` for what is exported and how it runs.

Without ``--onnx-dir`` the backend exports the weights once into ``<user cache dir>/audio2lp/onnx/<key>``, where
the key changes whenever a weights file changes (path, size, modification time), and reuses that folder.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path

from lp_renderer.errors import InputError

log = logging.getLogger(__name__)

ONNX_HINT = 'install the onnx extra (pip install -e ".[onnx]": onnx and onnxruntime)'


def _require_onnx(what: str) -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        raise InputError(f"{what} needs onnx and onnxruntime, which are not installed; {ONNX_HINT}.") from None


def export_weights(weights_dir: str | os.PathLike, out_dir: str | os.PathLike) -> list[Path]:
    """Load the weights of ``weights_dir`` (strictly, as the renderer does) and export them to ``out_dir``."""
    _require_onnx("exporting to ONNX")
    from lp_renderer.onnx_backend import export_onnx
    from lp_renderer.weights import load_networks, load_neutral_expression

    wdir = Path(weights_dir).expanduser()
    nets = load_networks(wdir)
    return export_onnx(nets, out_dir, neutral_exp=load_neutral_expression(wdir))


def cache_key(weights_dir: Path) -> str:
    """A key of the weights files (relative path, size, modification time) of ``weights_dir``."""
    h = hashlib.sha256(str(weights_dir.resolve()).encode())
    for p in sorted(weights_dir.rglob("*")):
        if p.is_file() and p.suffix in (".pth", ".safetensors", ".pkl", ".json") and "onnx" not in p.parts:
            st = p.stat()
            h.update(f"{p.relative_to(weights_dir)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def cached_export(weights_dir: str | os.PathLike) -> Path:
    """The ONNX folder of ``weights_dir`` in the cache, exported now when it is not there yet (into a temporary
    folder renamed when complete: an interrupted export leaves nothing half-written)."""
    from platformdirs import user_cache_dir

    wdir = Path(weights_dir).expanduser()
    out = Path(user_cache_dir("audio2lp")) / "onnx" / cache_key(wdir)
    if (out / "manifest.json").is_file():
        return out
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    log.info("exporting the weights of %s to ONNX once, into %s", wdir, out)
    try:
        export_weights(wdir, tmp)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def onnx_renderer(weights_dir: str | os.PathLike, onnx_dir: str | os.PathLike | None, device: str | None):
    """The :class:`~lp_renderer.onnx_backend.OnnxRenderer` of ``onnx_dir`` (or of the weights, exported into the
    cache once); ``device`` picks the execution providers (see
    :func:`lp_renderer.onnx_backend.available_providers`)."""
    _require_onnx("--backend onnxruntime")
    from lp_renderer.onnx_backend import OnnxRenderer, available_providers

    providers = available_providers(device)
    folder = Path(onnx_dir).expanduser() if onnx_dir is not None else cached_export(weights_dir)
    r = OnnxRenderer(folder, providers=providers)
    log.info("onnxruntime backend: %s with %s", folder, ", ".join(r.session_providers()))
    return r
