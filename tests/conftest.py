"""Shared test fixtures: where the shared conformance data and real test data live."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def conformance_dir() -> Path:
    return Path(os.environ.get("AUDIO2LP_CONFORMANCE_DIR", REPO.parent / "shared" / "conformance"))


def shared_data_dir() -> Path:
    return Path(os.environ.get("AUDIO2LP_TEST_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real test material ($AUDIO2LP_TEST_DATA, default ../shared/data); skips when absent."""
    d = shared_data_dir()
    if not (d / "MANIFEST.tsv").is_file():
        pytest.skip(f"real test data not found at {d} (set AUDIO2LP_TEST_DATA)")
    return d


@pytest.fixture(autouse=True)
def _torch_threads():
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield
