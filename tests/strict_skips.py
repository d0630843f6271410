"""Strict skips (a pytest plugin, loaded by ``tests/conftest.py``).

With ``AUDIO2LP_STRICT_SKIPS=1`` (set by ``.ci/run``) a skip is a failure unless its reason starts with
``optional:``: in CI the shared data, the conformance cases, Whisper, espeak-ng and Chromium are all present, so a
skip there means tests silently stopped testing. Both kinds of skip are caught:

* a skip while a test runs (``pytest.skip`` in a test or a fixture, a ``skip``/``skipif`` mark): the test's report
  is turned into a failure;
* a skip while a module (or class) is collected (a module-level ``pytest.importorskip`` or
  ``pytest.skip(..., allow_module_level=True)``), which would otherwise hide every test of the module without
  naming one: the collector yields a single test, ``<skipped at collection>``, that fails with the reason.

Without the variable both are ordinary skips. ``tests/test_strict_skips.py`` runs both cases through pytester.
"""

from __future__ import annotations

import os

import pytest
from _pytest.reports import CollectReport

STRICT_ENV = "AUDIO2LP_STRICT_SKIPS"
OPTIONAL_PREFIX = "optional:"
COLLECTION_SKIP_NAME = "<skipped at collection>"


def strict() -> bool:
    return os.environ.get(STRICT_ENV) == "1"


def skip_reason(longrepr) -> str:
    """The reason of a skipped report (its ``longrepr`` is ``(path, line, "Skipped: reason")``)."""
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return reason.removeprefix("Skipped: ")


def allowed(reason: str) -> bool:
    return reason.startswith(OPTIONAL_PREFIX)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A test skipped while it runs fails in a strict run."""
    outcome = yield
    report = outcome.get_result()
    if not strict() or not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = skip_reason(report.longrepr)
    if allowed(reason):
        return
    report.outcome = "failed"
    report.longrepr = f"skipped in a strict run ({STRICT_ENV}=1): {reason}"


class SkippedAtCollection(pytest.Item):
    """Stands for the tests of a module (or class) that skipped while being collected; fails when run."""

    def __init__(self, *, reason: str, **kwargs):
        super().__init__(**kwargs)
        self.reason = reason

    def runtest(self) -> None:
        raise CollectionSkipped(self.reason)

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, CollectionSkipped):
            return (f"{self.parent.nodeid} skipped while being collected, in a strict run ({STRICT_ENV}=1), so none "
                    f"of its tests ran: {self.reason}")
        return super().repr_failure(excinfo, style)

    def reportinfo(self):
        return self.path, None, f"{self.parent.nodeid}: {COLLECTION_SKIP_NAME}"


class CollectionSkipped(Exception):
    pass


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """A module (or class) skipped while being collected yields one failing test in a strict run."""
    outcome = yield
    report = outcome.get_result()
    if not strict() or not report.skipped:
        return
    reason = skip_reason(report.longrepr)
    if allowed(reason):
        return
    item = SkippedAtCollection.from_parent(collector, name=COLLECTION_SKIP_NAME, reason=reason)
    outcome.force_result(CollectReport(report.nodeid, "passed", None, [item], report.sections))
