"""The portrait's size: like the official pipeline, the longer side is capped (1280 px by default, bilinear) and
both sides rounded down to a multiple of 2 before faces are found; the pasted-back output has that size.
``--max-portrait-size`` raises the cap (0: none)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from audio2lp.api import Animator
from audio2lp.apps.cli import main
from audio2lp.portrait import prepare_portrait
from lp_renderer.image_io import load_image
from tests.conftest import REPO

PORTRAIT = REPO / "examples" / "portrait.jpg"


@pytest.fixture(scope="module")
def big_portrait(tmp_path_factory):
    """The example portrait (512x512) scaled to 3001x2001 (W x H), in the middle of a wider canvas."""
    img = cv2.imread(str(PORTRAIT))
    face = cv2.resize(img, (2001, 2001), interpolation=cv2.INTER_CUBIC)
    canvas = np.full((2001, 3001, 3), 90, np.uint8)
    canvas[:, 500:2501] = face
    path = tmp_path_factory.mktemp("big") / "big.png"
    cv2.imwrite(str(path), canvas)
    return path


@pytest.fixture(scope="module")
def animator(tiny_weights):
    return Animator(tiny_weights, device="cpu", progress=False)


def test_the_portrait_is_capped_like_the_official_pipeline(animator, big_portrait):
    pt = animator.portrait(big_portrait)
    # long side 3001 -> 1280, short side int(2001 * 1280 / 3001) = 853 -> 852 (even)
    assert pt.image.shape == (852, 1280, 3)
    expected = cv2.resize(load_image(big_portrait), (1280, 853), interpolation=cv2.INTER_LINEAR)[:852]
    assert np.array_equal(pt.image, expected)
    raised = animator.portrait(big_portrait, max_portrait_size=4000)
    assert raised.image.shape == (2000, 3000, 3)  # not scaled; trailing row and column dropped (even sizes)
    assert prepare_portrait(animator.renderer, animator.faces, big_portrait, max_size=0).image.shape == (2000, 3000, 3)
    small = animator.portrait(PORTRAIT)
    assert small.image.shape == (512, 512, 3)


def test_cli_output_has_the_capped_size_and_the_option_raises_it(tiny_weights, big_portrait, tmp_path, capsys):
    base = ["drive", str(big_portrait), str(PORTRAIT), "--weights", str(tiny_weights), "-q"]
    assert main(base + ["-o", str(tmp_path / "capped.png")]) == 0, capsys.readouterr()
    assert cv2.imread(str(tmp_path / "capped.png")).shape == (852, 1280, 3)
    assert main(base + ["-o", str(tmp_path / "raised.png"), "--max-portrait-size", "3500"]) == 0
    assert cv2.imread(str(tmp_path / "raised.png")).shape == (2000, 3000, 3)
    assert main(base + ["-o", str(tmp_path / "bad.png"), "--max-portrait-size", "-5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --max-portrait-size"), err
