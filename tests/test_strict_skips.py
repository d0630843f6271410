"""The strict mode of the test suite (``AUDIO2LP_STRICT_SKIPS=1``, see ``tests/strict_skips.py``), run through
pytester with the repository's own ``tests/conftest.py``: a skip while collecting and a skip while running each
fail in a strict run and stay skips otherwise; a reason starting with ``optional:`` is allowed."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

MODULES = {
    "test_module_skip": """
        import pytest
        pytest.skip("the service extra is not installed", allow_module_level=True)

        def test_hidden():
            pass
    """,
    "test_module_importorskip": """
        import pytest
        pytest.importorskip("audio2lp_no_such_module")

        def test_hidden_too():
            pass
    """,
    "test_in_test_skip": """
        import pytest

        def test_skips():
            pytest.skip("real test data not found")

        @pytest.mark.skipif(True, reason="a skip mark")
        def test_marked():
            pass
    """,
    "test_optional": """
        import pytest
        pytest.importorskip("audio2lp_no_such_module", reason="optional: an extra nobody needs")

        def test_optional_hidden():
            pass
    """,
    "test_optional_in_test": """
        import pytest

        def test_optional_skip():
            pytest.skip("optional: a tool CI does not install")
    """,
    "test_plain": """
        def test_runs():
            assert True
    """,
}


@pytest.fixture
def suite(pytester):
    pytester.makeconftest("from tests.conftest import *  # noqa: F403 - the repository's hooks and plugins\n")
    pytester.makepyfile(**MODULES)
    return pytester


def test_strict_run_fails_skips_at_collection_and_in_tests(suite, monkeypatch):
    monkeypatch.setenv("AUDIO2LP_STRICT_SKIPS", "1")
    result = suite.runpytest("-rA", "-p", "no:cacheprovider")
    outcomes = result.parseoutcomes()
    # the two modules that skip while being collected fail once each (their tests are hidden), the in-test skip and
    # the skip mark (an error: it skips in the setup phase) fail, the optional skips stay skips, and collection goes
    # on: the plain test runs
    assert outcomes.get("failed", 0) + outcomes.get("errors", 0) == 4, result.stdout.str()
    assert outcomes.get("skipped") == 2 and outcomes.get("passed") == 1, result.stdout.str()
    text = result.stdout.str()
    assert "test_module_skip.py::<skipped at collection>" in text
    assert "test_module_importorskip.py::<skipped at collection>" in text
    assert "the service extra is not installed" in text and "audio2lp_no_such_module" in text
    assert "skipped in a strict run" in text and "real test data not found" in text
    assert "test_hidden" not in text.replace("test_hidden_too", "")  # the hidden tests are not claimed to run
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_without_strict_mode_skips_stay_skips(suite, monkeypatch):
    monkeypatch.delenv("AUDIO2LP_STRICT_SKIPS", raising=False)
    result = suite.runpytest("-rA", "-p", "no:cacheprovider")
    outcomes = result.parseoutcomes()
    assert "failed" not in outcomes, result.stdout.str()
    assert outcomes.get("skipped") == 6 and outcomes.get("passed") == 1, result.stdout.str()
    assert result.ret == pytest.ExitCode.OK
