"""A front door (``audio2lp app`` / ``audio2lp serve``) run as a real process for the browser tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest


@contextlib.contextmanager
def served(cmd: list[str], url: str, log_path: Path, *, env: dict, cwd: Path, timeout: float = 180.0):
    """Start ``cmd`` in its own session (output to ``log_path``), wait until ``url`` answers 200 and yield; then
    stop the whole session (SIGTERM, SIGKILL after 20 s). Fails the test, with the log's end, when the process exits
    early or does not answer within ``timeout`` seconds."""
    with open(log_path, "wb") as log:
        server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                  start_new_session=True)
    try:
        t0 = time.monotonic()
        while True:
            if server.poll() is not None:
                pytest.fail(f"{cmd[3]} exited with {server.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() - t0 > timeout:
                pytest.fail(f"{cmd[3]} did not answer on {url} within {timeout:g} s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.3)
        yield server
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
