"""The one place that loads (and saves) renderer weights.

Two layouts are understood, both rooted at a weights folder ``DIR``:

* the official release, unchanged::

      DIR/liveportrait/base_models/{appearance_feature_extractor,motion_extractor,
                                    warping_module,spade_generator}.pth
      DIR/liveportrait/retargeting_models/stitching_retargeting_module.pth

  (the last one is a dict of ``retarget_shoulder`` / ``retarget_mouth`` / ``retarget_eye`` state
  dicts whose keys may carry ``module.``);
* safetensors files with the same stems next to them (``*.safetensors``), written by
  :func:`convert_to_safetensors` or :func:`save_safetensors`. They load without pickle at all and
  carry the network's config, so they also hold our small test networks. When both a ``.pth`` and a
  ``.safetensors`` file are present the newer one is loaded (the safetensors file on a tie), and the
  file loaded for each network is logged.

Optionally ``DIR/lip_array.pkl``, LivePortrait's neutral expression (copy it from the LivePortrait
repository's ``src/utils/resources/``; it is not part of the weights release). It is only used when
a single image drives the portrait (see :func:`lp_renderer.keypoints.relative_motion`) and is read with
a restricted unpickler that accepts plain numpy arrays only.

``.pth`` files are always read with ``torch.load(..., weights_only=True)``: a file that needs pickle
code execution is refused. Every load is strict (names, shapes and dtypes: the official files are
float32, with int64 BatchNorm counters); errors name the file and the first offending key.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .config import RendererConfig
from .errors import WeightsError

log = logging.getLogger(__name__)

#: network key -> path of the released file, relative to the weights folder
OFFICIAL_FILES = {
    "appearance_feature_extractor": "liveportrait/base_models/appearance_feature_extractor.pth",
    "motion_extractor": "liveportrait/base_models/motion_extractor.pth",
    "warping_module": "liveportrait/base_models/warping_module.pth",
    "spade_generator": "liveportrait/base_models/spade_generator.pth",
    "stitching_retargeting_module": "liveportrait/retargeting_models/stitching_retargeting_module.pth",
}
#: our MLP name -> key of its sub-dict in the released stitching_retargeting_module.pth
STITCHING_SUBDICTS = {"stitching": "retarget_shoulder", "lip": "retarget_mouth", "eye": "retarget_eye"}
#: LivePortrait's neutral expression (``src/utils/resources/lip_array.pkl``), optional, in the weights folder
NEUTRAL_EXPRESSION_FILE = "lip_array.pkl"
#: the ``format`` tag of our safetensors files; files written before the renderer was its own package carry its
#: application's name in front of ``-renderer-v1`` and load the same (see :func:`_known_format`)
FORMAT = "lp-renderer-v1"
_FORMAT_SUFFIX = "-renderer-v1"


def weight_file(weights_dir: Path, key: str) -> Path | None:
    """The file to load for network ``key``: the official .pth or its .safetensors copy, whichever is newer
    (the safetensors file when both have the same modification time); None if neither exists."""
    pth = Path(weights_dir) / OFFICIAL_FILES[key]
    st = pth.with_suffix(".safetensors")
    if st.is_file() and pth.is_file():
        return pth if pth.stat().st_mtime > st.stat().st_mtime else st
    if st.is_file():
        return st
    if pth.is_file():
        return pth
    return None


def missing_weight_files(weights_dir: str | os.PathLike, include_stitching: bool = True) -> list[str]:
    """Relative paths of the released files that are missing (neither .pth nor .safetensors present)."""
    keys = [k for k in OFFICIAL_FILES if include_stitching or k != "stitching_retargeting_module"]
    return [OFFICIAL_FILES[k] for k in keys if weight_file(Path(weights_dir), k) is None]


class MissingWeightsError(WeightsError):
    """The weights folder does not exist, or files of the release are missing in it. ``weights_dir`` and
    ``missing`` (paths relative to it) let an application add how to get them."""

    def __init__(self, weights_dir: Path, missing: list[str]):
        self.weights_dir, self.missing = Path(weights_dir), list(missing)
        if not self.weights_dir.is_dir():
            what = f"the LivePortrait weights folder {self.weights_dir} (weights_dir) does not exist"
        else:
            what = f"LivePortrait weights are missing in {self.weights_dir} (weights_dir): {', '.join(self.missing)}"
        super().__init__(f"{what}; give the folder of the official release (its pretrained_weights/ layout).")


def _known_format(fmt: str | None) -> bool:
    return fmt is None or fmt == FORMAT or fmt.endswith(_FORMAT_SUFFIX)


def rename_keys(state_dict: dict, prefixes: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """The single place where checkpoint key names are adapted to our modules.

    * with ``prefixes``, only the tensors whose key starts with one of them are kept, with the prefix
      removed: how one MLP is picked out of a flattened stitching file
      (``retarget_shoulder_module.mlp.0.bias`` -> ``mlp.0.bias``);
    * ``module.`` (left by DataParallel/DDP) is then removed anywhere in a key, as the official loader does.
    """
    if prefixes:
        picked = {}
        for k, v in state_dict.items():
            for prefix in prefixes:
                if isinstance(v, torch.Tensor) and k.startswith(prefix):
                    picked[k[len(prefix):]] = v
                    break
        state_dict = picked
    return {k.replace("module.", ""): v for k, v in state_dict.items()}


def _torch_load(path: Path) -> dict:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        globals_ = [line.strip() for line in str(e).splitlines() if "Unsupported global" in line]
        if globals_:
            raise WeightsError(f"{path} needs pickle code execution to load ({globals_[0].rstrip('.')}); it "
                               f"is refused for safety. Use the official release files or safetensors.") from None
        raise WeightsError(f"{path} is not a readable PyTorch checkpoint (corrupt or truncated); "
                           f"download it again.") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise WeightsError(f"{path} is not a readable PyTorch checkpoint ({type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else 'truncated'}); download it again.") from None
    if not isinstance(obj, dict):
        raise WeightsError(f"{path} holds a {type(obj).__name__}, not a state dict; is it the right file?")
    return obj


def read_safetensors(path: str | os.PathLike, with_tensors: bool = True,
                     remedy: str = "convert or download it again") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors (CPU; none unless ``with_tensors``) and the string metadata of a safetensors file; WeightsError
    ending in ``remedy`` when it cannot be read. The one safetensors reader, for the renderer and for the
    small models stored beside it."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            return ({k: f.get_tensor(k) for k in f.keys()} if with_tensors else {}), meta
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"{path} is not a readable safetensors file ({e}); {remedy}.") from None


def _safetensors_load(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    return read_safetensors(path)


def _stitching_subdicts(path: Path, obj: dict) -> dict[str, dict[str, torch.Tensor]]:
    """Split a stitching checkpoint into {'stitching','lip','eye'} state dicts."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for ours, released in STITCHING_SUBDICTS.items():
        if released in obj and isinstance(obj[released], dict):
            out[ours] = rename_keys(obj[released])
            continue
        if ours in obj and isinstance(obj[ours], dict):
            out[ours] = rename_keys(obj[ours])
            continue
        # flattened: "<prefix>.mlp.0.weight" with prefix in (retarget_shoulder[_module], stitching, ...)
        sub = rename_keys(obj, (f"{released}_module.", f"{released}.", f"{ours}."))
        if not sub:
            raise WeightsError(f"{path} has no '{released}' part (keys found: {sorted(obj)[:6]}...); "
                               f"is it stitching_retargeting_module.pth?")
        out[ours] = sub
    return out


def load_state_dict_strict(module: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Strict load with an error naming ``source`` and the first missing / unexpected / mis-shaped /
    mis-typed key. Dtypes must match exactly (a float16 or float64 file is refused, not cast)."""
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    if missing:
        raise WeightsError(f"{source}: missing key '{missing[0]}' ({len(missing)} missing); "
                           f"the file does not match this network.")
    if unexpected:
        raise WeightsError(f"{source}: unexpected key '{unexpected[0]}' ({len(unexpected)} unexpected); "
                           f"the file does not match this network.")
    for k, t in own.items():
        if tuple(state_dict[k].shape) != tuple(t.shape):
            raise WeightsError(f"{source}: key '{k}' has shape {tuple(state_dict[k].shape)}, the network "
                               f"expects {tuple(t.shape)}.")
        if state_dict[k].dtype != t.dtype:
            raise WeightsError(f"{source}: key '{k}' has dtype {str(state_dict[k].dtype).removeprefix('torch.')}, "
                               f"the network expects {str(t.dtype).removeprefix('torch.')}; use the official "
                               f"release files (or their safetensors conversion) unchanged.")
    module.load_state_dict(state_dict, strict=True)


@dataclass
class LoadedFile:
    """State dict(s) read from one file, with the config stored in it (safetensors only)."""

    path: Path
    state_dicts: dict[str, dict[str, torch.Tensor]]  # network key -> state dict
    config: dict | None


def read_weight_file(path: Path, key: str) -> LoadedFile:
    """Read network ``key`` (or the three stitching MLPs) from a .pth or .safetensors file."""
    path = Path(path)
    if path.suffix == ".safetensors":
        tensors, meta = _safetensors_load(path)
        if not _known_format(meta.get("format")):
            raise WeightsError(f"{path} has format {meta.get('format')!r}; expected {FORMAT!r}.")
        config = json.loads(meta["config"]) if "config" in meta else None
        if key == "stitching_retargeting_module":
            return LoadedFile(path, _stitching_subdicts(path, tensors), config)
        return LoadedFile(path, {key: rename_keys(tensors)}, config)
    obj = _torch_load(path)
    if key == "stitching_retargeting_module":
        return LoadedFile(path, _stitching_subdicts(path, obj), None)
    if "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    return LoadedFile(path, {key: rename_keys(obj)}, None)


def write_safetensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """Write ``tensors`` (moved to the CPU, made contiguous) with string ``metadata`` as a safetensors file,
    atomically (a temporary file in the same folder, renamed). Every safetensors file of the project is
    written here."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def save_safetensors(path: Path, state_dicts: dict[str, dict[str, torch.Tensor]], config: dict | None) -> None:
    """Write one network (or the stitching trio, as ``stitching.* / lip.* / eye.*``) atomically."""
    flat: dict[str, torch.Tensor] = {}
    if len(state_dicts) == 1:
        (sd,) = state_dicts.values()
        flat = dict(sd)
    else:
        for name, sd in state_dicts.items():
            flat.update({f"{name}.{k}": v for k, v in sd.items()})
    meta = {"format": FORMAT}
    if config is not None:
        meta["config"] = json.dumps(config, sort_keys=True)
    write_safetensors(path, flat, meta)


def write_official_pth(weights_dir: str | os.PathLike, files: dict[str, dict]) -> Path:
    """Write ``.pth`` files shaped exactly like the official release into ``weights_dir``.

    ``files`` maps a key of :data:`OFFICIAL_FILES` to its state dict; for ``"stitching_retargeting_module"``
    to ``{"stitching": sd, "lip": sd, "eye": sd}``, saved as the released dict of ``retarget_shoulder`` /
    ``retarget_mouth`` / ``retarget_eye`` with ``module.``-prefixed keys. Returns ``weights_dir``.
    """
    root = Path(weights_dir)
    for key, obj in files.items():
        if key == "stitching_retargeting_module":
            obj = {STITCHING_SUBDICTS[n]: {f"module.{k}": v for k, v in sd.items()} for n, sd in obj.items()}
        path = root / OFFICIAL_FILES[key]
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(obj, path)
    return root


def save_networks(networks, weights_dir: str | os.PathLike, official_layout_pth: bool = False) -> Path:
    """Write every network of ``networks`` (:class:`lp_renderer.RendererNetworks`) to ``weights_dir`` in the released
    layout: safetensors files with their config, or ``.pth`` files shaped exactly like the official release when
    ``official_layout_pth``. Returns ``weights_dir``."""
    root = Path(weights_dir)
    for key, rel in OFFICIAL_FILES.items():
        if key == "stitching_retargeting_module" and networks.stitching is None:
            continue
        sds = networks.state_dicts_for_file(key)
        if official_layout_pth:
            write_official_pth(root, {key: sds if key == "stitching_retargeting_module" else sds[key]})
        else:
            save_safetensors((root / rel).with_suffix(".safetensors"), sds, networks.config_dict_for_file(key))
    return root


def convert_to_safetensors(weights_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                           config: RendererConfig | None = None) -> list[Path]:
    """Convert an official folder to safetensors (faster, pickle-free loading).

    Each file is loaded into its network first, so only files that load strictly are converted.
    The ``.safetensors`` files are written next to the ``.pth`` files (or under ``out_dir`` in the same
    layout) and are preferred by :func:`load_networks` from then on.
    """
    src = Path(weights_dir)
    dst = Path(out_dir) if out_dir is not None else src
    missing = [OFFICIAL_FILES[k] for k in OFFICIAL_FILES if not (src / OFFICIAL_FILES[k]).is_file()]
    if missing:
        raise WeightsError(f"cannot convert {src}: missing {', '.join(missing)}.")
    nets = load_networks(src, config=config, prefer_safetensors=False)
    written = []
    for key in OFFICIAL_FILES:
        out = (dst / OFFICIAL_FILES[key]).with_suffix(".safetensors")
        save_safetensors(out, nets.state_dicts_for_file(key), nets.config_dict_for_file(key))
        written.append(out)
        log.info("wrote %s", out)
    return written


def load_networks(weights_dir: str | os.PathLike, config: RendererConfig | None = None,
                  prefer_safetensors: bool = True, require_stitching: bool = False):
    """Build the five networks and load them strictly from ``weights_dir``.

    Official .pth files imply the official config; safetensors files carry theirs (``config`` may
    override). Without a stitching file the stitching / retargeting MLPs are ``None`` (stitching then
    becomes a no-op, as in the official code) unless ``require_stitching``.
    Returns :class:`lp_renderer.nets.networks.RendererNetworks` in eval mode on the CPU.
    """
    from .nets.networks import RendererNetworks

    wdir = Path(weights_dir)
    if not wdir.is_dir():
        raise MissingWeightsError(wdir, list(OFFICIAL_FILES.values()))
    missing = missing_weight_files(wdir, include_stitching=require_stitching)
    if missing:
        raise MissingWeightsError(wdir, missing)
    files: dict[str, LoadedFile] = {}
    for key in OFFICIAL_FILES:
        path = weight_file(wdir, key) if prefer_safetensors else (
            (wdir / OFFICIAL_FILES[key]) if (wdir / OFFICIAL_FILES[key]).is_file() else weight_file(wdir, key))
        if path is None:
            continue
        stale = path.with_suffix(".safetensors")
        if prefer_safetensors and path.suffix == ".pth" and stale.is_file():  # weight_file: the .pth is newer
            log.warning("%s is newer than %s, so the .pth is loaded; convert the folder to safetensors again to "
                        "refresh the copy (or delete it).", path, stale)
        log.info("loading %s", path)
        files[key] = read_weight_file(path, key)
    if config is None:
        config = _config_from_files(files)
    nets = RendererNetworks.from_config(config, with_stitching="stitching_retargeting_module" in files)
    for key, lf in files.items():
        for name, sd in lf.state_dicts.items():
            module = nets.module_for(key, name)
            load_state_dict_strict(module, sd, f"{lf.path}" + (f" [{name}]" if len(lf.state_dicts) > 1 else ""))
    log.info("loaded renderer weights from %s", wdir)
    return nets.eval()


def _config_from_files(files: dict[str, LoadedFile]) -> RendererConfig:
    """Merge per-file configs (safetensors metadata); files without one use the official sizes."""
    base = RendererConfig()
    parts = {}
    field_for = {"appearance_feature_extractor": "appearance", "motion_extractor": "motion",
                 "warping_module": "warping", "spade_generator": "decoder",
                 "stitching_retargeting_module": "stitching"}
    for key, lf in files.items():
        if lf.config is not None:
            parts[field_for[key]] = lf.config
    if not parts:
        return base
    d = json.loads(base.to_json())
    d.update(parts)
    return RendererConfig.from_dict(d)


def load_neutral_expression(weights_dir: str | os.PathLike) -> torch.Tensor | None:
    """LivePortrait's neutral expression ``DIR/lip_array.pkl`` as a (1, 21, 3) float32 tensor, or None when
    the file is absent.

    The official code subtracts it from the driving expression when a single image drives the portrait.
    It is not part of the weights release: copy ``src/utils/resources/lip_array.pkl`` of the LivePortrait
    repository into the weights folder. Read with a restricted unpickler (numpy arrays only, no code runs).
    """
    import numpy as np

    from .errors import InputError
    from .safe_pickle import load_restricted_pickle

    path = Path(weights_dir) / NEUTRAL_EXPRESSION_FILE
    if not path.is_file():
        return None
    try:
        obj = load_restricted_pickle(path, max_bytes=1 << 20)
    except InputError as e:
        detail = str(e).split(";")[0].rstrip(".")
        raise WeightsError(f"{detail}; it should be LivePortrait's neutral expression: copy lip_array.pkl "
                           f"again from the LivePortrait repository's src/utils/resources/, or delete it.") from None
    if not isinstance(obj, np.ndarray) or obj.dtype.kind != "f" or obj.size != 63 or \
            not np.isfinite(obj).all():
        what = f"a {obj.dtype} array of shape {obj.shape}" if isinstance(obj, np.ndarray) else \
            f"a {type(obj).__name__}"
        raise WeightsError(f"{path} holds {what}, not LivePortrait's 1x21x3 float neutral expression; copy "
                           f"lip_array.pkl again from the LivePortrait repository's src/utils/resources/ "
                           f"or delete it.")
    log.info("loaded the neutral expression %s", path)
    return torch.from_numpy(np.asarray(obj, dtype=np.float32).reshape(1, 21, 3))
