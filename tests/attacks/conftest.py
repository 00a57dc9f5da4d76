"""The attack matrix's table, printed at the end of the session (with or without -s).

Its fixtures (the kernel tests' agent, the e2e tests' stack, ``wrapped_app``) are plugins of
tests/harness, loaded by tests/conftest.py.
"""

from __future__ import annotations

import pytest

from tests.harness.attack_matrix import RESULTS, render


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The table vector -> result, after the tests, with or without -s."""
    if RESULTS:
        terminalreporter.write_sep("=", "attack matrix")
        for line in render(RESULTS).splitlines():
            terminalreporter.write_line(line)
