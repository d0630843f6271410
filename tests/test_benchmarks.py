"""The benchmark scripts still run against the code they measure (a renamed argument once broke one silently)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.realdata
def test_overhead_benchmark_runs(data_dir):
    """benchmarks/overhead.py on a few frames: both tables, every stage, the whole commands."""
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "overhead.py"), "--frames", "12", "--seconds",
                          "1", "--threads", "1"], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "AUDIO2LP_TEST_DATA": str(data_dir)})
    assert out.returncode == 0, out.stderr[-3000:]
    for row in ("| decode |", "| face detection / tracking |", "| paste-back |", "| encode + mux |",
                "| speech motion (Whisper features, default motion model, blinks) |"):
        assert row in out.stdout, out.stdout
    assert out.stdout.count("**whole command**") == 2


@pytest.mark.realdata
def test_overhead_benchmark_with_a_null_whisper(data_dir):
    """--null-whisper: speak's Whisper windows as a null network (on a CUDA renderer they run on the GPU)."""
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "overhead.py"), "--only", "speak", "--seconds",
                          "1", "--threads", "1", "--null-whisper"], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "AUDIO2LP_TEST_DATA": str(data_dir)})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "(Whisper too)" in out.stdout and out.stdout.count("**whole command**") == 1


def test_winograd_benchmark_runs():
    """benchmarks/winograd.py on the tiny config: the per-layer table with every kernel column and the totals."""
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "winograd.py"), "--quick", "--rounds", "1",
                          "--threads", "1"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "| onednn ms | nnpack ms | winograd ms | winograd, weight kept ms |" in out.stdout, out.stdout
    assert out.stdout.count("| (1, ") >= 20 and "without / with" in out.stdout, out.stdout


def test_flops_benchmark_runs():
    """benchmarks/flops.py on the tiny config: the frame's FLOPs (all convolutions), the measured rates, the bound."""
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "flops.py"), "--quick", "--threads", "1"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    for row in ("| W + G of one frame, as the official code runs them |", "| of which aten.convolution |",
                "| oneDNN direct 3x3 conv", "| MKL sgemm", "| 2.5x the naive frame |"):
        assert row in out.stdout, out.stdout
