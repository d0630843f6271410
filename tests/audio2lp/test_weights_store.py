"""`audio2lp weights download` / `import`: a fake hub (tiny random networks in the official layout),
resume, hash and shape failures, the offline message, and a real HTTP transfer through huggingface_hub
against a small local server that speaks the hub's resolve protocol."""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import re
import socket
import threading
from pathlib import Path

import pytest

from audio2lp import weights_store as ws
from lp_renderer import RendererConfig, RendererNetworks
from lp_renderer.errors import WeightsError
from lp_renderer.weights import OFFICIAL_FILES, load_networks, save_networks

TINY = RendererConfig.tiny()
REPO = "KwaiVGI/LivePortrait"


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> Path:
    """A folder laid out like the hub repository, holding tiny random networks as official .pth files."""
    root = tmp_path_factory.mktemp("hub")
    save_networks(RendererNetworks.random(TINY, seed=1), root, official_layout_pth=True)
    return root


@pytest.fixture(scope="module")
def hashes(hub) -> dict[str, ws.KnownFile]:
    return {k: ws.KnownFile(_sha(hub / rel), (hub / rel).stat().st_size) for k, rel in OFFICIAL_FILES.items()}


class CopyFetch:
    """A fetcher that 'downloads' from a local hub folder, continuing partial files like the real one.
    ``fail_after``: bytes to transfer before a simulated connection loss (once)."""

    def __init__(self, hub: Path, fail_after: int | None = None, fail_on: str | None = None):
        self.hub, self.fail_after, self.fail_on = hub, fail_after, fail_on
        self.calls: list[tuple[str, int]] = []  # (filename, resumed from byte)
        self.transferred = 0

    def __call__(self, repo_id, filename, part: Path, *, revision=None, endpoint=None, progress=True):
        src = self.hub / filename
        have = part.stat().st_size if part.is_file() else 0
        self.calls.append((filename, have))
        part.parent.mkdir(parents=True, exist_ok=True)
        data = src.read_bytes()[have:]
        if self.fail_after is not None and (self.fail_on is None or filename == self.fail_on):
            n, self.fail_after = self.fail_after, None
            with open(part, "ab") as f:
                f.write(data[:n])
            self.transferred += n
            raise WeightsError(f"could not download {filename} (simulated connection loss)")
        with open(part, "ab") as f:
            f.write(data)
        self.transferred += len(data)


def _no_leftovers(dest: Path) -> None:
    assert not (dest / ws.STAGING_DIR).exists()
    assert not [p for p in dest.rglob("*") if ".part-" in p.name or p.suffix == ".part"]  # temporary files


def test_download_fresh_then_present(hub, hashes, tmp_path):
    dest = tmp_path / "w"
    fetch = CopyFetch(hub)
    rep = ws.download_weights(dest, expected=hashes, config=TINY, fetch=fetch, progress=False)
    assert [f.action for f in rep.files] == ["downloaded"] * 5
    assert all(f.hash_status == "ok" for f in rep.files)
    for rel in OFFICIAL_FILES.values():
        assert _sha(dest / rel) == _sha(hub / rel)
    load_networks(dest, config=TINY, require_stitching=True)
    _no_leftovers(dest)
    fetch2 = CopyFetch(hub)
    rep2 = ws.download_weights(dest, expected=hashes, config=TINY, fetch=fetch2, progress=False)
    assert fetch2.calls == [] and [f.action for f in rep2.files] == ["present"] * 5
    rep3 = ws.download_weights(dest, expected=hashes, config=TINY, fetch=fetch2, progress=False, force=True)
    assert len(fetch2.calls) == 5 and [f.action for f in rep3.files] == ["downloaded"] * 5


def test_download_resumes_after_interruption(hub, hashes, tmp_path):
    dest = tmp_path / "w"
    rel = OFFICIAL_FILES["warping_module"]
    size = (hub / rel).stat().st_size
    fetch = CopyFetch(hub, fail_after=1000, fail_on=rel)
    with pytest.raises(WeightsError, match="simulated"):
        ws.download_weights(dest, expected=hashes, config=TINY, fetch=fetch, progress=False)
    assert not (dest / rel).exists()  # nothing half-written where the renderer looks
    assert (dest / ws.STAGING_DIR / (rel + ".part")).stat().st_size == 1000
    fetch2 = CopyFetch(hub)
    rep = ws.download_weights(dest, expected=hashes, config=TINY, fetch=fetch2, progress=False)
    assert (rel, 1000) in fetch2.calls  # continued, not restarted
    resumed = [f for f in rep.files if f.key == "warping_module"][0]
    assert resumed.action == "downloaded" and resumed.hash_status == "ok"
    assert _sha(dest / rel) == hashes["warping_module"].sha256
    assert fetch2.transferred == sum((hub / r).stat().st_size for r in OFFICIAL_FILES.values()) - \
        (hub / OFFICIAL_FILES["appearance_feature_extractor"]).stat().st_size - \
        (hub / OFFICIAL_FILES["motion_extractor"]).stat().st_size - 1000
    assert size > 1000
    _no_leftovers(dest)


def test_download_replaces_truncated_file_and_bad_partial(hub, hashes, tmp_path):
    dest = tmp_path / "w"
    rel = OFFICIAL_FILES["spade_generator"]
    (dest / rel).parent.mkdir(parents=True)
    (dest / rel).write_bytes((hub / rel).read_bytes()[:500])  # an old, truncated copy in place
    (dest / ws.STAGING_DIR / "liveportrait" / "base_models").mkdir(parents=True)
    bad_part = dest / ws.STAGING_DIR / (OFFICIAL_FILES["motion_extractor"] + ".part")
    bad_part.write_bytes(b"garbage" * 10)  # a partial file that is not a prefix of the real one
    with pytest.raises(WeightsError, match="SHA-256") as e:
        ws.download_weights(dest, expected=hashes, config=TINY, fetch=CopyFetch(hub), progress=False)
    assert "deleted" in str(e.value)
    assert not bad_part.exists()
    assert not (dest / OFFICIAL_FILES["motion_extractor"]).exists()
    rep = ws.download_weights(dest, expected=hashes, config=TINY, fetch=CopyFetch(hub), progress=False)
    assert all(f.hash_status == "ok" for f in rep.files)
    assert _sha(dest / rel) == hashes["spade_generator"].sha256
    _no_leftovers(dest)


def test_download_keeps_a_different_file_that_loads(hub, hashes, tmp_path):
    """A present file that loads strictly but is not the release (a fine-tune?) is kept unless --force."""
    dest = tmp_path / "w"
    save_networks(RendererNetworks.random(TINY, seed=5), dest, official_layout_pth=True)
    rep = ws.download_weights(dest, expected=hashes, config=TINY, fetch=CopyFetch(hub), progress=False)
    assert [(f.action, f.hash_status) for f in rep.files] == [("present", "differs")] * 5
    rep = ws.download_weights(dest, expected=hashes, config=TINY, fetch=CopyFetch(hub), progress=False, force=True)
    assert [(f.action, f.hash_status) for f in rep.files] == [("downloaded", "ok")] * 5


def test_download_hash_mismatch(hub, hashes, tmp_path):
    dest = tmp_path / "w"
    wrong = dict(hashes)
    wrong["motion_extractor"] = ws.KnownFile("0" * 64)
    with pytest.raises(WeightsError) as e:
        ws.download_weights(dest, expected=wrong, config=TINY, fetch=CopyFetch(hub), progress=False)
    msg = str(e.value)
    assert "motion_extractor.pth" in msg and "SHA-256" in msg and "000000000000" in msg and "deleted" in msg
    assert "\n" not in msg
    assert not (dest / OFFICIAL_FILES["motion_extractor"]).exists()
    assert not list((dest / ws.STAGING_DIR).rglob("*.part"))
    assert (dest / OFFICIAL_FILES["appearance_feature_extractor"]).is_file()  # the good one before it stays


def test_download_shape_mismatch(tmp_path):
    """A file whose hash is as recorded but whose shapes do not fit the networks is refused and removed."""
    other = tmp_path / "otherhub"
    cfg = RendererConfig.tiny()
    import dataclasses

    big = dataclasses.replace(cfg, appearance=dataclasses.replace(cfg.appearance, block_expansion=16))
    save_networks(RendererNetworks.random(big, seed=2), other, official_layout_pth=True)
    expected = {k: ws.KnownFile(_sha(other / rel)) for k, rel in OFFICIAL_FILES.items()}
    dest = tmp_path / "w"
    with pytest.raises(WeightsError) as e:
        ws.download_weights(dest, expected=expected, config=TINY, fetch=CopyFetch(other), progress=False)
    msg = str(e.value)
    assert "appearance_feature_extractor.pth" in msg and "shape" in msg and "deleted" in msg
    assert not (dest / OFFICIAL_FILES["appearance_feature_extractor"]).exists()
    assert not list(dest.rglob("*.part"))


def test_download_without_recorded_hash_is_shape_checked(hub, hashes, tmp_path, capsys):
    partial = {k: v for k, v in hashes.items() if k != "stitching_retargeting_module"}
    rep = ws.download_weights(tmp_path / "w", expected=partial, config=TINY, fetch=CopyFetch(hub), progress=False)
    st = [f for f in rep.files if f.key == "stitching_retargeting_module"][0]
    assert st.hash_status == "unknown"
    from audio2lp.apps import weights_cmd

    weights_cmd._print_report(rep, "weights ready in")
    out = capsys.readouterr().out
    assert "could not be hash-checked" in out and "stitching_retargeting_module.pth" in out


def test_recorded_official_hashes_are_well_formed():
    assert set(ws.OFFICIAL_SHA256) == set(OFFICIAL_FILES)
    for known in ws.OFFICIAL_SHA256.values():
        assert known.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", known.sha256)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_offline_message(tmp_path):
    pytest.importorskip("huggingface_hub")
    dest = tmp_path / "w"
    with pytest.raises(WeightsError) as e:
        ws.download_weights(dest, endpoint=f"http://127.0.0.1:{_closed_port()}", config=TINY, progress=False)
    msg = str(e.value)
    assert "could not download liveportrait/base_models/appearance_feature_extractor.pth" in msg
    assert "internet connection" in msg and "audio2lp weights import DIR" in msg and "\n" not in msg
    assert not (dest / OFFICIAL_FILES["appearance_feature_extractor"]).exists()


# ------------------------------------------------------------------------------------------ real HTTP
class _HubHandler(http.server.BaseHTTPRequestHandler):
    """Serves ``/{owner}/{name}/resolve/{rev}/{path}`` from ``server.root`` like the hub (HEAD metadata,
    GET with Range). Records the Range headers it saw."""

    def _file(self) -> Path | None:
        m = re.fullmatch(r"/([^/]+)/([^/]+)/resolve/([^/]+)/(.+)", self.path)
        if not m:
            return None
        p = self.server.root / m.group(4)
        return p if p.is_file() else None

    def _headers(self, p: Path, status: int, length: int, extra: dict | None = None):
        self.send_response(status)
        self.send_header("X-Repo-Commit", "a" * 40)
        self.send_header("ETag", f'"{_sha(p)}"')
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()

    def do_HEAD(self):  # noqa: N802
        p = self._file()
        if p is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("X-Repo-Commit", "a" * 40)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self._headers(p, 200, p.stat().st_size)

    def do_GET(self):  # noqa: N802
        p = self._file()
        if p is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = p.read_bytes()
        rng = self.headers.get("Range")
        self.server.ranges.append(rng)
        start = 0
        if rng:
            start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
            body = data[start:]
            self._headers(p, 206, len(body), {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"})
        else:
            body = data
            self._headers(p, 200, len(body))
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def http_hub(hub):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HubHandler)
    server.root, server.ranges = hub, []
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield server, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_hub_fetch_resumes_over_http(hub, http_hub, tmp_path):
    pytest.importorskip("huggingface_hub")
    server, endpoint = http_hub
    rel = OFFICIAL_FILES["warping_module"]
    data = (hub / rel).read_bytes()
    part = tmp_path / "x.part"
    part.write_bytes(data[:777])
    ws.hub_fetch(REPO, rel, part, endpoint=endpoint, progress=False)
    assert part.read_bytes() == data
    assert server.ranges == ["bytes=777-"]
    ws.hub_fetch(REPO, rel, part, endpoint=endpoint, progress=False)  # complete already: no transfer
    assert server.ranges == ["bytes=777-"]
    with pytest.raises(WeightsError, match="not in the Hugging Face repository"):
        ws.hub_fetch(REPO, "liveportrait/nope.pth", tmp_path / "y.part", endpoint=endpoint, progress=False)


def test_download_over_http_end_to_end(hub, hashes, http_hub, tmp_path):
    pytest.importorskip("huggingface_hub")
    _, endpoint = http_hub
    dest = tmp_path / "w"
    rep = ws.download_weights(dest, endpoint=endpoint, expected=hashes, config=TINY, progress=False,
                              safetensors=True)
    assert all(f.hash_status == "ok" for f in rep.files) and len(rep.converted) == 5
    load_networks(dest, config=TINY, require_stitching=True)
    _no_leftovers(dest)


# ------------------------------------------------------------------------------------------ import
@pytest.mark.parametrize("layout", ["pretrained_weights", "parent", "flat", "liveportrait"])
def test_import_layouts(hub, hashes, tmp_path, layout):
    src = tmp_path / "src"
    for rel in OFFICIAL_FILES.values():
        target = {"pretrained_weights": src / rel, "parent": src / "pretrained_weights" / rel,
                  "flat": src / Path(rel).name, "liveportrait": src / rel.split("/", 1)[1]}[layout]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((hub / rel).read_bytes())
    dest = tmp_path / "dest"
    rep = ws.import_weights(src, dest, expected=hashes, config=TINY)
    assert [f.action for f in rep.files] == ["copied"] * 5 and all(f.hash_status == "ok" for f in rep.files)
    load_networks(dest, config=TINY, require_stitching=True)
    rep2 = ws.import_weights(dest, dest, expected=hashes, config=TINY)  # importing a folder into itself
    assert [f.action for f in rep2.files] == ["present"] * 5


def test_import_brings_lip_array_from_a_liveportrait_checkout(hub, hashes, tmp_path):
    import pickle

    import numpy as np

    from lp_renderer.weights import load_neutral_expression

    repo = tmp_path / "LivePortrait"  # a checkout: pretrained_weights/ next to src/utils/resources/
    for rel in OFFICIAL_FILES.values():
        (repo / "pretrained_weights" / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / "pretrained_weights" / rel).write_bytes((hub / rel).read_bytes())
    res = repo / "src" / "utils" / "resources"
    res.mkdir(parents=True)
    neutral = np.linspace(-0.1, 0.1, 63).reshape(1, 21, 3)
    (res / "lip_array.pkl").write_bytes(pickle.dumps(neutral, protocol=4))
    dest = tmp_path / "dest"
    rep = ws.import_weights(repo, dest, expected=hashes, config=TINY)
    assert any(line.startswith("lip_array.pkl: copied") for line in rep.extra_files)
    assert np.allclose(load_neutral_expression(dest).numpy(), neutral)
    # a broken one is reported and left out; the networks are still imported
    (res / "lip_array.pkl").write_bytes(pickle.dumps({"not": "an array"}))
    dest2 = tmp_path / "dest2"
    rep = ws.import_weights(repo, dest2, expected=hashes, config=TINY)
    assert [f.action for f in rep.files] == ["copied"] * 5
    assert "not imported" in rep.extra_files[0] and not (dest2 / "lip_array.pkl").exists()


@pytest.mark.parametrize("mode", ["hardlink", "symlink"])
def test_import_links(hub, hashes, tmp_path, mode):
    dest = tmp_path / "dest"
    rep = ws.import_weights(hub, dest, mode=mode, expected=hashes, config=TINY)
    for f in rep.files:
        src = hub / OFFICIAL_FILES[f.key]
        if mode == "hardlink":
            assert os.path.samefile(f.path, src) and not f.path.is_symlink()
        else:
            assert f.path.is_symlink() and f.path.resolve() == src.resolve()
    load_networks(dest, config=TINY)


def test_import_not_official_and_safetensors(hub, tmp_path):
    dest = tmp_path / "dest"
    (dest / "liveportrait" / "base_models").mkdir(parents=True)
    stale = (dest / OFFICIAL_FILES["warping_module"]).with_suffix(".safetensors")
    stale.write_bytes(b"stale")  # an old conversion that would shadow the imported .pth
    rep = ws.import_weights(hub, dest, config=TINY, safetensors=True)  # the real official hashes
    assert all(f.hash_status == "differs" for f in rep.files)
    assert len(rep.converted) == 5 and stale.read_bytes() != b"stale"
    load_networks(dest, config=TINY)


def test_import_refuses_bad_folders(hub, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "appearance_feature_extractor.pth").write_bytes((hub / OFFICIAL_FILES["appearance_feature_extractor"])
                                                           .read_bytes())
    with pytest.raises(WeightsError, match="missing motion_extractor.pth"):
        ws.import_weights(src, tmp_path / "d", config=TINY)
    with pytest.raises(WeightsError, match="does not exist"):
        ws.import_weights(tmp_path / "nope", tmp_path / "d", config=TINY)
    # shapes that do not fit: nothing is placed
    with pytest.raises(WeightsError, match="shape|key"):
        ws.import_weights(hub, tmp_path / "d2")  # official sizes expected, tiny files given
    assert not (tmp_path / "d2").exists() or not any((tmp_path / "d2").rglob("*.pth"))


# ------------------------------------------------------------------------------------------ CLI
def _run_cli(argv: list[str]) -> int:
    """Through `audio2lp`'s main, as the command line runs it."""
    from audio2lp.apps import cli

    return cli.main(argv)


def test_cli_download_and_import(hub, hashes, tmp_path, monkeypatch, capsys):
    fetch = CopyFetch(hub)
    monkeypatch.setattr(ws, "hub_fetch", fetch)
    monkeypatch.setattr(ws, "OFFICIAL_SHA256", hashes)
    # the commands check the files against the official sizes; these test files are tiny networks
    monkeypatch.setattr(ws, "download_weights", functools.partial(ws.download_weights, config=TINY))
    monkeypatch.setattr(ws, "import_weights", functools.partial(ws.import_weights, config=TINY))
    dest = tmp_path / "w"
    assert _run_cli(["weights", "download", "--weights", str(dest), "-q"]) == 0
    out = capsys.readouterr().out
    assert "weights ready in" in out and out.count("SHA-256 matches the official release") == 5
    assert f"--weights {dest}" in out
    dest2 = tmp_path / "w2"
    assert _run_cli(["weights", "import", str(dest), "--weights", str(dest2), "--symlink", "-q"]) == 0
    assert "symlinked" in capsys.readouterr().out
    assert _run_cli(["weights", "import", str(tmp_path / "nope"), "--weights", str(dest2)]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_cli_download_offline(tmp_path, monkeypatch, capsys):
    pytest.importorskip("huggingface_hub")
    real, endpoint = ws.hub_fetch, f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setattr(ws, "hub_fetch", lambda *a, endpoint=None, **k: real(*a, endpoint=endpoint_, **k))
    endpoint_ = endpoint
    code = _run_cli(["weights", "download", "--weights", str(tmp_path / "w"), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: could not download") and "weights import" in err


def test_weights_folder_and_the_hint(tmp_path, monkeypatch):
    """The folder: explicit > $AUDIO2LP_WEIGHTS > the cache; the renderer's missing-weights error gets how to get
    them (the renderer itself only names its parameter)."""
    from audio2lp.api import Animator

    monkeypatch.setenv("AUDIO2LP_WEIGHTS", str(tmp_path / "env"))
    assert ws.resolve_weights_dir(None) == tmp_path / "env" == ws.default_weights_dir()
    assert ws.resolve_weights_dir(tmp_path / "x") == tmp_path / "x"
    monkeypatch.setenv("AUDIO2LP_INSIGHTFACE_DIR", str(tmp_path / "ins"))
    assert ws.resolve_insightface_dir(None) == tmp_path / "ins"
    assert ws.resolve_insightface_dir(tmp_path / "arg") == tmp_path / "arg"
    with pytest.raises(WeightsError) as e:
        _ = Animator(tmp_path / "nowhere").renderer
    msg = str(e.value)
    assert "does not exist" in msg and f"audio2lp weights download --weights {tmp_path / 'nowhere'}" in msg
    with pytest.raises(WeightsError) as e:
        _ = Animator().renderer  # the default folder: no --weights in the hint
    assert "`audio2lp weights download`" in str(e.value) and "AUDIO2LP_WEIGHTS" in str(e.value)
