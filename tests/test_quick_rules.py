"""The quick-test rules of tests/conftest.py: an unmarked test that starts a process, or runs long, fails."""

from __future__ import annotations

import pytest

from tests.conftest import QUICK_TEST_LIMIT_S

pytest_plugins = ["pytester"]


@pytest.mark.slow  # inner tests run past the quick limit
def test_unmarked_tests_may_not_start_processes_or_run_long(pytester: pytest.Pytester) -> None:
    pytester.makeconftest("from tests.conftest import *  # noqa: F403 - the same hooks and fixtures\n")
    pytester.makepyfile(f"""
        import multiprocessing
        import subprocess
        import time

        import pytest

        def test_starts_a_program():
            subprocess.run(["true"], check=True)

        def test_starts_a_python_process():
            process = multiprocessing.get_context("spawn").Process(target=print)
            process.start()
            process.join()

        def test_runs_long():
            deadline = time.process_time() + {QUICK_TEST_LIMIT_S} + 0.3
            while time.process_time() < deadline:
                pass

        def test_waits_long_on_nothing():
            time.sleep({QUICK_TEST_LIMIT_S} + 0.3)  # wall time alone: a busy machine's, not the test's fault

        def test_quick_and_alone():
            assert sum(range(10)) == 45

        @pytest.mark.slow
        def test_marked_slow_starts_a_program():
            subprocess.run(["true"], check=True)
    """)
    passed, _, failed = pytester.inline_run("-p", "no:cacheprovider").listoutcomes()
    assert {report.head_line for report in passed} == {"test_quick_and_alone", "test_marked_slow_starts_a_program",
                                                         "test_waits_long_on_nothing"}
    reasons = {report.head_line: str(report.longrepr) for report in failed}
    assert set(reasons) == {"test_starts_a_program", "test_starts_a_python_process", "test_runs_long"}
    assert all("mark it @pytest.mark.slow" in reason for reason in reasons.values()), reasons
    assert f"over the {QUICK_TEST_LIMIT_S:g} s of a quick test" in reasons["test_runs_long"]
