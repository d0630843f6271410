"""Shared test fixtures: where the shared conformance data and real test data live."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lp_renderer.weights import save_networks

REPO = Path(__file__).resolve().parents[1]


def conformance_dir() -> Path:
    return Path(os.environ.get("AUDIO2LP_CONFORMANCE_DIR", REPO.parent / "shared" / "conformance"))


def shared_data_dir() -> Path:
    return Path(os.environ.get("AUDIO2LP_TEST_DATA", REPO.parent / "shared" / "data"))


# strict skips (AUDIO2LP_STRICT_SKIPS=1): tests/strict_skips.py
pytest_plugins = ("tests.strict_skips",)


MIN_PORTRAITS = 30  # the data folder has 39 portraits; fewer means it was emptied or moved


def manifest_files(data: Path, folder: str, minimum: int = 1) -> list[Path]:
    """The files MANIFEST.tsv lists in ``data/folder``, sorted. Skips (a failure in a strict run) when the data
    folder is absent; fails when a listed file is missing or fewer than ``minimum`` are listed, so that a test
    looping over them cannot pass on an empty folder."""
    import csv

    manifest = data / "MANIFEST.tsv"
    if not manifest.is_file():
        pytest.skip(f"real test data not found at {data} (set AUDIO2LP_TEST_DATA)")
    with open(manifest, newline="", encoding="utf-8") as f:
        listed = [row["file"] for row in csv.DictReader(f, delimiter="\t") if row["file"].startswith(folder + "/")]
    files = [data / name for name in sorted(listed)]
    missing = [str(p) for p in files if not p.is_file()]
    assert not missing, f"files listed in {manifest} are missing: {missing[:5]}"
    assert len(files) >= minimum, f"{manifest} lists {len(files)} files in {folder}/, expected at least {minimum}"
    return files


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real test material ($AUDIO2LP_TEST_DATA, default ../shared/data); skips when absent."""
    d = shared_data_dir()
    if not (d / "MANIFEST.tsv").is_file():
        pytest.skip(f"real test data not found at {d} (set AUDIO2LP_TEST_DATA)")
    return d


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """Random weights of the tiny renderer config saved as safetensors (config in the metadata)."""
    from lp_renderer import RendererConfig, RendererNetworks

    root = tmp_path_factory.mktemp("tiny_weights")
    save_networks(RendererNetworks.random(RendererConfig.tiny(), seed=0), root)
    return root


def torch_threads_per_test() -> int:
    """Torch threads for a test: 2 where there are cores for them, fewer when pytest-xdist runs workers side by side
    (2 workers on 2 cores: 1 thread each; more threads than cores only makes OpenMP's threads wait on each other)."""
    cores = os.cpu_count() or 1
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    return max(1, min(2, cores // max(1, workers)))


@pytest.fixture(scope="session")
def cuda():
    """The CUDA device; the ``gpu`` tests that ask for it skip as optional where there is none."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("optional: no CUDA device here (the gpu tests run where there is one)")
    return torch.device("cuda")


@pytest.fixture(autouse=True)
def _torch_threads():
    import torch

    torch.set_num_threads(torch_threads_per_test())
    yield


def load_lp_fill():
    """The conformance folder's ``lp_fill`` module (deterministic official-shaped weights), or None."""
    import importlib.util
    import sys

    path = conformance_dir() / "lp_fill.py"
    if not path.is_file():
        return None
    if "lp_fill" not in sys.modules:
        spec = importlib.util.spec_from_file_location("lp_fill", path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules["lp_fill"] = mod
        spec.loader.exec_module(mod)
    return sys.modules["lp_fill"]


def lp_fill_files(lp_fill) -> dict:
    """Every official file's state dicts filled by ``lp_fill`` (the argument of ``write_official_pth``)."""
    files = {key: lp_fill.state_dict_for(key) for key in
             ("appearance_feature_extractor", "motion_extractor", "warping_module", "spade_generator")}
    files["stitching_retargeting_module"] = {n: lp_fill.state_dict_for(n) for n in ("stitching", "lip", "eye")}
    return files


@pytest.fixture(scope="session")
def filled_weights_dir(tmp_path_factory) -> Path:
    """Full-size weights filled by the conformance rule, written exactly in the official release layout
    (``liveportrait/base_models/*.pth`` and the stitching dict with ``module.`` keys)."""
    from lp_renderer.weights import write_official_pth

    lp_fill = load_lp_fill()
    if lp_fill is None:
        pytest.skip(f"conformance data not found at {conformance_dir()} (set AUDIO2LP_CONFORMANCE_DIR)")
    root = tmp_path_factory.mktemp("pretrained_weights")
    write_official_pth(root, lp_fill_files(lp_fill))
    return root
