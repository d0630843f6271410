"""Where the LivePortrait weights are, and getting them: :func:`download_weights` and :func:`import_weights` (the
library behind ``audio2lp weights download`` / ``import``, whose command line is :mod:`audio2lp.apps.weights_cmd`).

The weights folder is ``--weights`` / ``weights=`` when given, else ``$AUDIO2LP_WEIGHTS``, else
``<user cache dir>/audio2lp/weights`` (:func:`resolve_weights_dir`); the insightface models' folder is
``--insightface-dir`` when given, else ``$AUDIO2LP_INSIGHTFACE_DIR`` (:func:`resolve_insightface_dir`), else what
:mod:`lp_renderer.faces.insightface` finds. :func:`weights_hint` adds to the renderer's "weights missing" error
how to get them.

Both end with the weights folder in the official layout (see :data:`lp_renderer.weights.OFFICIAL_FILES`),
every file checked before it is put in place:

* its SHA-256 against :data:`OFFICIAL_SHA256` (the released files; a downloaded file that does not match is
  deleted, an imported one is accepted with a warning, as it may be the user's own fine-tune);
* a strict load into the network it belongs to (every key present, every shape as the network expects).

Downloads go through ``huggingface_hub`` and are resumable: bytes are appended to
``<weights>/.download/<file>.part`` and a later run continues from there (HTTP range requests). Only a file
that passed both checks is renamed into place, so an interrupted or failed run never leaves a half-written
or wrong weight file where the renderer would load it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from audio2lp.media.atomic import atomic_output
from audio2lp.options import OPTIONS
from lp_renderer.errors import WeightsError
from lp_renderer.weights import OFFICIAL_FILES, MissingWeightsError

log = logging.getLogger(__name__)

WEIGHTS_ENV = "AUDIO2LP_WEIGHTS"
INSIGHTFACE_DIR_ENV = "AUDIO2LP_INSIGHTFACE_DIR"


def default_weights_dir() -> Path:
    """``$AUDIO2LP_WEIGHTS`` if set, else ``<user cache dir>/audio2lp/weights``."""
    env = os.environ.get(WEIGHTS_ENV)
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("audio2lp")) / "weights"


def resolve_weights_dir(path: str | os.PathLike | None = None) -> Path:
    """An explicit weights folder wins over ``$AUDIO2LP_WEIGHTS`` and the cache default."""
    return Path(path).expanduser() if path is not None else default_weights_dir()


def resolve_insightface_dir(path: str | os.PathLike | None = None) -> Path | None:
    """An explicit insightface model folder, else ``$AUDIO2LP_INSIGHTFACE_DIR``, else None (the renderer's own
    search: the weights folder's ``insightface/models/buffalo_l``, then insightface's usual folder)."""
    if path is not None:
        return Path(path).expanduser()
    env = os.environ.get(INSIGHTFACE_DIR_ENV)
    return Path(env).expanduser() if env else None


def missing_weights_message(weights_dir: Path, missing: list[str]) -> str:
    """One sentence: which files are missing where, and the two ways to get them."""
    wdir = Path(weights_dir)
    target = "" if wdir == default_weights_dir() else f" --weights {wdir}"
    if not wdir.is_dir():
        what = f"the LivePortrait weights folder {wdir} does not exist"
    else:
        what = f"LivePortrait weights are missing in {wdir}: {', '.join(missing)}"
    return (f"{what}. Get them with `audio2lp weights download{target}` (from the Hugging Face hub), or "
            f"`audio2lp weights import DIR{target}` for a folder you already have (its pretrained_weights/ "
            f"layout); or point --weights / ${WEIGHTS_ENV} at a folder that has them.")


@contextlib.contextmanager
def weights_hint(weights: str | os.PathLike | None = None) -> Iterator[None]:
    """Turn the renderer's :class:`~lp_renderer.weights.MissingWeightsError` into one that says how to get the
    weights (``weights``: the folder as the user gave it, None for the default)."""
    try:
        yield
    except MissingWeightsError as e:
        raise WeightsError(missing_weights_message(e.weights_dir, e.missing)) from None


#: The Hugging Face repository of the official release, and its newer mirror.
DEFAULT_REPO = OPTIONS["repo"].default
MIRROR_REPOS = ("KlingTeam/LivePortrait",)
STAGING_DIR = ".download"


@dataclass(frozen=True)
class KnownFile:
    """What we know of one released file: its SHA-256 (None: unknown) and size in bytes (None: unknown)."""

    sha256: str | None
    size: int | None = None


#: SHA-256 of the five released files (``KwaiVGI/LivePortrait``, commit 6d116d1 "chore: upload weights",
#: July 2024; the files are unchanged in the KlingTeam/LivePortrait mirror). Sources, all public:
#:  - the hub's own file pages ("Git LFS Details - SHA256") of KwaiVGI/LivePortrait:
#:    appearance_feature_extractor.pth (blob/refs%2Fpr%2F3/...), spade_generator.pth (blob/0f49c88...),
#:    stitching_retargeting_module.pth (blob/2d03940...);
#:  - the LFS pointers (``oid sha256:`` + ``size``) in the commits that copied the release verbatim:
#:    huggingface.co/lytanshade/liveportrait commit fe5d9d9 (all four base models with sizes) and
#:    huggingface.co/camenduru/LivePortrait commit 3874282 ("thanks to KwaiVGI": appearance, motion);
#:    warping_module.pth is also listed with the same hash on jbilcke-hf/model-cocktail's file page, and
#:    tkmspl/LivePortrait ("Duplicate from KlingTeam/LivePortrait") shows the same appearance hash.
#: The exact byte size of stitching_retargeting_module.pth was not published (pages say "2.39 MB").
OFFICIAL_SHA256: dict[str, KnownFile] = {
    "appearance_feature_extractor": KnownFile(
        "5279bb8654293dbdf327030b397f107237dd9212fb11dd75b83dfb635211ceb5", 3387959),
    "motion_extractor": KnownFile(
        "251e6a94ad667a1d0c69526d292677165110ef7f0cf0f6d199f0e414e8aa0ca5", 112545506),
    "warping_module": KnownFile(
        "2f61a6f265fe344f14132364859a78bdbbc2068577170693da57fb96d636e282", 182180086),
    "spade_generator": KnownFile(
        "4780afc7909a9f84e24c01d73b31a555ef651521a1fe3b2429bd04534d992aee", 221813590),
    "stitching_retargeting_module": KnownFile(
        "3652d5a3f95099141a56986aaddec92fadf0a73c87a20fac9a2c07c32b28b611", None),
}

#: ``fetch(repo_id, filename, part_path, *, revision, endpoint, progress)``: download ``filename`` of the hub
#: repository into ``part_path``, continuing an existing partial file. Raises WeightsError when it cannot.
Fetcher = Callable[..., None]


@dataclass
class FileReport:
    """What happened to one weight file."""

    key: str
    path: Path  # where it is now (in the weights folder)
    action: str  # 'downloaded', 'present', 'copied', 'hard-linked', 'symlinked', 'missing'
    sha256: str | None = None
    hash_status: str = "unchecked"  # 'ok' | 'differs' | 'unknown' (no recorded hash) | 'unchecked'

    def describe(self) -> str:
        check = {"ok": "SHA-256 matches the official release",
                 "differs": "SHA-256 differs from the official release (loaded strictly: shapes fit)",
                 "unknown": "could not be hash-checked (no recorded SHA-256); loaded strictly: shapes fit",
                 "unchecked": "loaded strictly: shapes fit"}[self.hash_status]
        if self.action == "missing":
            return f"{OFFICIAL_FILES[self.key]}: missing"
        return f"{OFFICIAL_FILES[self.key]}: {self.action}; {check}"


@dataclass
class WeightsReport:
    """The result of :func:`download_weights` / :func:`import_weights`."""

    weights_dir: Path
    files: list[FileReport] = field(default_factory=list)
    converted: list[Path] = field(default_factory=list)
    extra_files: list[str] = field(default_factory=list)  # optional files placed besides the five networks

    @property
    def missing(self) -> list[str]:
        return [OFFICIAL_FILES[f.key] for f in self.files if f.action == "missing"]


# ------------------------------------------------------------------------------------------ checks
def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in 4 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


class _Verifier:
    """Strictly loads single weight files into the networks of one config (built once, on first use)."""

    def __init__(self, config=None):
        self.config = config
        self._nets = None

    def check(self, path: Path, key: str, shown: str | None = None) -> None:
        """Raise WeightsError unless ``path`` loads strictly into network ``key`` (``shown``: name in errors)."""
        from lp_renderer.config import RendererConfig
        from lp_renderer.nets.networks import RendererNetworks
        from lp_renderer.weights import load_state_dict_strict, read_weight_file

        if self._nets is None:
            self._nets = RendererNetworks.from_config(self.config or RendererConfig())
        lf = read_weight_file(path, key)
        label = shown or str(path)
        for name, sd in lf.state_dicts.items():
            load_state_dict_strict(self._nets.module_for(key, name), sd,
                                   label + (f" [{name}]" if len(lf.state_dicts) > 1 else ""))


def _short(h: str | None) -> str:
    return f"{h[:12]}..." if h else "unknown"


def _check_whole_folder(weights_dir: Path, config) -> None:
    """The final check: the folder loads with :func:`lp_renderer.weights.load_networks`, strictly."""
    from lp_renderer.weights import load_networks

    load_networks(weights_dir, config=config)


def _drop_stale_safetensors(pth: Path) -> None:
    """A converted .safetensors next to a replaced .pth would be loaded instead of it: remove it."""
    st = pth.with_suffix(".safetensors")
    if st.exists() or st.is_symlink():
        log.info("removing %s (it was converted from the file being replaced)", st)
        st.unlink()


# ------------------------------------------------------------------------------------------ download
def _is_network_error(exc: BaseException) -> bool:
    if isinstance(exc, (OSError, TimeoutError, ConnectionError)):
        return True
    mod = type(exc).__module__.split(".")[0]
    return mod in ("httpx", "httpx2", "httpcore", "httpcore2", "requests", "urllib3", "h11", "ssl", "socket")


def _hub_error(exc: BaseException, repo_id: str, filename: str, revision: str | None) -> WeightsError | None:
    """A one-sentence WeightsError for a hub failure, or None when ``exc`` is not one."""
    try:
        from huggingface_hub import errors as hf_errors
    except ImportError:  # pragma: no cover - very old huggingface_hub
        hf_errors = None
    where = f"{repo_id}" + (f"@{revision}" if revision else "")
    alt = ("or get the files another way (a machine with internet access, or a colleague) and run "
           "`audio2lp weights import DIR`")
    if hf_errors is not None:
        if isinstance(exc, getattr(hf_errors, "GatedRepoError", ())):
            return WeightsError(f"the Hugging Face repository {where} is gated; accept its terms on the hub and "
                                f"log in with `hf auth login`, {alt}.")
        if isinstance(exc, getattr(hf_errors, "RepositoryNotFoundError", ())):
            return WeightsError(f"the Hugging Face repository {where} was not found (or is private); check --repo "
                                f"(the official one is {DEFAULT_REPO}, mirrored at {', '.join(MIRROR_REPOS)}).")
        if isinstance(exc, getattr(hf_errors, "RevisionNotFoundError", ())):
            return WeightsError(f"revision {revision!r} does not exist in {repo_id}; check --revision.")
        if isinstance(exc, getattr(hf_errors, "EntryNotFoundError", ())) and \
                not isinstance(exc, getattr(hf_errors, "LocalEntryNotFoundError", ())):
            return WeightsError(f"{filename} is not in the Hugging Face repository {where}; is --repo a "
                                f"LivePortrait repository?")
        if isinstance(exc, getattr(hf_errors, "HfHubHTTPError", ())):
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return WeightsError(f"the Hugging Face hub refused {filename} from {where} ({first}); try again "
                                f"later, {alt}.")
    if _is_network_error(exc):
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return WeightsError(f"could not download {filename} from the Hugging Face hub ({where}): "
                            f"{type(exc).__name__}: {first[:200]}. Check the internet connection (or proxy, "
                            f"HF_ENDPOINT), then run the command again to resume, {alt}.")
    return None


def hub_fetch(repo_id: str, filename: str, part: Path, *, revision: str | None = None,
              endpoint: str | None = None, progress: bool = True) -> None:
    """Download ``filename`` of hub repository ``repo_id`` into ``part``, resuming a partial ``part``.

    Uses ``huggingface_hub`` for the URL, authentication headers (``HF_TOKEN`` / ``hf auth login``),
    the file's metadata and the transfer (which also retries and resumes within the run).
    """
    try:
        from huggingface_hub import get_hf_file_metadata, hf_hub_url
        from huggingface_hub.file_download import http_get
        from huggingface_hub.utils import build_hf_headers
    except ImportError:
        raise WeightsError("downloading the weights needs huggingface_hub; install it with "
                           "`pip install huggingface_hub`, or use `audio2lp weights import DIR`.") from None
    try:
        url = hf_hub_url(repo_id, filename, revision=revision, endpoint=endpoint)
        meta = get_hf_file_metadata(url)
        size = meta.size
        have = part.stat().st_size if part.is_file() else 0
        if size is not None and have > size:
            log.info("%s is longer than the file on the hub; starting it again", part)
            part.unlink()
            have = 0
        if size is not None and have == size:
            return
        if have:
            log.info("resuming %s at %.1f MB", filename, have / 1e6)
        headers = build_hf_headers()
        headers["Accept-Encoding"] = "identity"
        part.parent.mkdir(parents=True, exist_ok=True)
        with _hub_progress(progress), open(part, "ab") as f:
            http_get(meta.location or url, f, resume_size=have, headers=headers, expected_size=size,
                     displayed_filename=Path(filename).name)
    except WeightsError:
        raise
    except Exception as e:  # noqa: BLE001 - the network boundary: known failures become one sentence
        err = _hub_error(e, repo_id, filename, revision)
        if err is None:
            raise
        raise err from None


class _hub_progress:
    """Turn huggingface_hub's progress bars off for the duration (``progress=False``)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._was_disabled = None

    def __enter__(self):
        if not self.enabled:
            from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars

            self._was_disabled = are_progress_bars_disabled()
            disable_progress_bars()
        return self

    def __exit__(self, *exc):
        if not self.enabled and not self._was_disabled:
            from huggingface_hub.utils import enable_progress_bars

            enable_progress_bars()
        return False


def download_weights(weights_dir: str | os.PathLike | None = None, *, repo_id: str = DEFAULT_REPO,
                     revision: str | None = None, endpoint: str | None = None, force: bool = False,
                     safetensors: bool = False, progress: bool = True,
                     expected: Mapping[str, KnownFile] | None = None, config=None,
                     fetch: Fetcher | None = None) -> WeightsReport:
    """Download the five official files from the hub into ``weights_dir`` (default: the cache folder).

    Files already present are kept when they match their recorded SHA-256 (or, without a recorded hash,
    load strictly); ``force`` downloads them again. Each new file is checked (SHA-256 against ``expected``,
    default :data:`OFFICIAL_SHA256`; strict load into its network for ``config``, default the official
    sizes) before it is renamed into place; a file that fails is deleted and WeightsError says why.
    ``safetensors`` also writes pickle-free copies. ``fetch`` replaces the hub transfer (tests, mirrors).
    """
    dest = resolve_weights_dir(weights_dir)
    expected = OFFICIAL_SHA256 if expected is None else expected
    fetch = fetch or hub_fetch
    staging = dest / STAGING_DIR
    verifier = _Verifier(config)
    report = WeightsReport(dest)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WeightsError(f"cannot create the weights folder {dest} ({e.strerror}); choose another with "
                           f"--weights.") from None
    for key, rel in OFFICIAL_FILES.items():
        final = dest / rel
        known = expected.get(key) or KnownFile(None)
        if not force:
            kept = _keep_existing(final, key, known, verifier)
            if kept is not None:
                report.files.append(kept)
                continue
        part = staging / (rel + ".part")
        log.info("downloading %s from %s", rel, repo_id)
        fetch(repo_id, rel, part, revision=revision, endpoint=endpoint, progress=progress)
        if not part.is_file():
            raise WeightsError(f"the download of {rel} produced no file; run the command again.")
        digest = sha256_file(part)
        if known.sha256 is not None and digest != known.sha256:
            part.unlink()
            raise WeightsError(
                f"{rel} from {repo_id} has SHA-256 {_short(digest)}, not the official {_short(known.sha256)}; "
                f"the bad download was deleted. Run the command again; if it happens again the repository "
                f"holds a different file (check --repo; for weights you trust, use `audio2lp weights import`).")
        try:
            verifier.check(part, key, shown=f"{rel} from {repo_id}")
        except WeightsError as e:
            part.unlink()
            raise WeightsError(f"{e} The download was deleted; is --repo a LivePortrait (human) repository?") \
                from None
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(part, final)
        _drop_stale_safetensors(final)
        report.files.append(FileReport(key, final, "downloaded", digest,
                                       "ok" if known.sha256 is not None else "unknown"))
    _remove_empty_tree(staging)
    _check_whole_folder(dest, config)
    if safetensors:
        from lp_renderer.weights import convert_to_safetensors

        report.converted = convert_to_safetensors(dest, config=config)
    return report


def _keep_existing(final: Path, key: str, known: KnownFile, verifier: _Verifier) -> FileReport | None:
    """A report for a usable file already in place, or None when it must be (re)fetched."""
    st = final.with_suffix(".safetensors")
    if final.is_file():
        if known.sha256 is not None:
            digest = sha256_file(final)
            if digest == known.sha256:
                return FileReport(key, final, "present", digest, "ok")
            try:
                verifier.check(final, key)
            except WeightsError as e:
                log.warning("%s; downloading it again", e)
                return None
            log.warning("%s is not the official release file (SHA-256 %s) but loads strictly (a fine-tune?); kept, "
                        "--force replaces it", final, _short(digest))
            return FileReport(key, final, "present", digest, "differs")
        try:
            verifier.check(final, key)
        except WeightsError as e:
            log.warning("%s; downloading it again", e)
            return None
        return FileReport(key, final, "present", None, "unknown")
    if st.is_file():
        try:
            verifier.check(st, key)
        except WeightsError as e:
            log.warning("%s; downloading the official file", e)
            return None
        return FileReport(key, st, "present", None, "unchecked")
    return None


def _remove_empty_tree(root: Path) -> None:
    if not root.is_dir():
        return
    for d in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        try:
            d.rmdir()
        except OSError:
            pass
    try:
        root.rmdir()
    except OSError:
        pass


# ------------------------------------------------------------------------------------------ import
def _candidates(rel: str) -> list[str]:
    """Where a released file may sit below a user's folder, most specific layout first."""
    name = Path(rel).name
    inner = rel.split("/", 1)[1]  # below liveportrait/
    return [rel, f"pretrained_weights/{rel}", inner, name]


def locate_weight_files(src: str | os.PathLike) -> tuple[Path, dict[str, Path]]:
    """Find the released files in ``src``: a ``pretrained_weights/`` folder, its parent, its
    ``liveportrait/`` folder, or a folder that directly holds the files (``.pth``, or our ``.safetensors``).

    Returns (the layout root that matched, {network key: file}). Raises WeightsError when the four base
    models are not all found in one layout.
    """
    root = Path(src).expanduser()
    if not root.exists():
        raise WeightsError(f"{root} does not exist; give the folder that holds the LivePortrait weights "
                           f"(pretrained_weights/, or the five .pth files).")
    if not root.is_dir():
        raise WeightsError(f"{root} is a file; give the folder that holds the LivePortrait weights.")
    best: dict[str, Path] = {}
    for layout in range(4):
        found: dict[str, Path] = {}
        for key, rel in OFFICIAL_FILES.items():
            base = root / _candidates(rel)[layout]
            for cand in (base, base.with_suffix(".safetensors")):
                if cand.is_file():
                    found[key] = cand
                    break
        base_keys = [k for k in OFFICIAL_FILES if k != "stitching_retargeting_module"]
        if all(k in found for k in base_keys):
            return root, found
        if len(found) > len(best):
            best = found
    missing = [Path(OFFICIAL_FILES[k]).name for k in OFFICIAL_FILES if k not in best]
    raise WeightsError(f"{root} does not hold the LivePortrait weights (missing {', '.join(missing)}); give the "
                       f"pretrained_weights/ folder, its parent, or a folder with the five .pth files.")


def _place(src: Path, final: Path, mode: str) -> None:
    """Put ``src`` at ``final`` atomically by copy, hard link or symbolic link."""
    if mode not in _ACTION:  # pragma: no cover - guarded by the callers
        raise ValueError(f"unknown mode {mode!r}")
    with atomic_output(final, make_folder=True) as tmp:
        if mode == "copy":
            shutil.copyfile(src, tmp)
            return
        tmp.unlink()  # a link takes the temporary name itself
        if mode == "hardlink":
            try:
                os.link(src, tmp)
            except OSError as e:
                raise WeightsError(f"cannot hard-link {src} into {final.parent} ({e.strerror}); they are probably "
                                   f"on different drives: copy (the default) or use --symlink.") from None
        else:
            os.symlink(src.resolve(), tmp)


_ACTION = {"copy": "copied", "hardlink": "hard-linked", "symlink": "symlinked"}


def import_weights(src: str | os.PathLike, weights_dir: str | os.PathLike | None = None, *, mode: str = "copy",
                   safetensors: bool = False, expected: Mapping[str, KnownFile] | None = None,
                   config=None) -> WeightsReport:
    """Bring a weights folder the user already has into ``weights_dir`` (default: the cache folder).

    ``src`` may be ``pretrained_weights/``, its parent, or a folder holding the files directly (see
    :func:`locate_weight_files`). Every file is loaded strictly first (nothing is placed when one does not
    fit), its SHA-256 compared with the official release (a difference is reported, not refused: it may be
    a fine-tune), then copied (``mode='copy'``), hard-linked (``'hardlink'``) or symlinked (``'symlink'``)
    into the official layout. ``safetensors`` also writes pickle-free copies.
    """
    if mode not in _ACTION:
        raise ValueError(f"mode must be one of {sorted(_ACTION)}, not {mode!r}")
    expected = OFFICIAL_SHA256 if expected is None else expected
    dest = resolve_weights_dir(weights_dir)
    _, found = locate_weight_files(src)
    verifier = _Verifier(config)
    for key, path in found.items():
        try:
            verifier.check(path, key)
        except WeightsError as e:
            raise WeightsError(f"{e} Nothing was imported; is {src} the LivePortrait (human) release?") from None
    report = WeightsReport(dest)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WeightsError(f"cannot create the weights folder {dest} ({e.strerror}); choose another with "
                           f"--weights.") from None
    for key, rel in OFFICIAL_FILES.items():
        path = found.get(key)
        if path is None:
            report.files.append(FileReport(key, dest / rel, "missing"))
            continue
        final = dest / rel
        if path.suffix == ".safetensors":
            final = final.with_suffix(".safetensors")
        known = expected.get(key) or KnownFile(None)
        digest, status = None, "unchecked"
        if path.suffix == ".pth":
            if known.sha256 is None:
                status = "unknown"
            else:
                digest = sha256_file(path)
                status = "ok" if digest == known.sha256 else "differs"
                if status == "differs":
                    log.warning("%s is not the official release file (SHA-256 %s); importing it anyway, it loads "
                                "strictly", path, _short(digest))
        if final.exists() and os.path.samefile(path, final):
            report.files.append(FileReport(key, final, "present", digest, status))
            continue
        _place(path, final, mode)
        if final.suffix == ".pth":
            _drop_stale_safetensors(final)
        report.files.append(FileReport(key, final, _ACTION[mode], digest, status))
    _import_neutral_expression(Path(src).expanduser(), dest, mode, report)
    _check_whole_folder(dest, config)
    if safetensors:
        from lp_renderer.weights import convert_to_safetensors

        report.converted = convert_to_safetensors(dest, config=config)
    return report


def _import_neutral_expression(src: Path, dest: Path, mode: str, report: WeightsReport) -> None:
    """Also bring LivePortrait's ``lip_array.pkl`` (used when a single image drives the portrait) when ``src``
    has one: in the folder itself, one level up or down (``pretrained_weights/``), or where a checkout of the
    LivePortrait repository keeps it (``src/utils/resources/``). It is checked before it is placed."""
    from lp_renderer.weights import NEUTRAL_EXPRESSION_FILE, load_neutral_expression

    for folder in (src, src.parent, src / "pretrained_weights", src / "src" / "utils" / "resources",
                   src.parent / "src" / "utils" / "resources"):
        cand = folder / NEUTRAL_EXPRESSION_FILE
        if not cand.is_file():
            continue
        try:
            load_neutral_expression(folder)
        except WeightsError as e:
            log.warning("not importing %s: %s", cand, e)
            report.extra_files.append(f"{NEUTRAL_EXPRESSION_FILE}: not imported ({cand} is not a valid one)")
            return
        final = dest / NEUTRAL_EXPRESSION_FILE
        if final.exists() and os.path.samefile(cand, final):
            report.extra_files.append(f"{NEUTRAL_EXPRESSION_FILE}: present")
        else:
            _place(cand, final, mode)
            report.extra_files.append(f"{NEUTRAL_EXPRESSION_FILE}: {_ACTION[mode]} from {cand}")
        return
