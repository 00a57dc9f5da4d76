"""The attack matrix reuses the kernel tests' agent fixtures and the e2e tests' stack ones."""

from __future__ import annotations

import pytest

from tests.attacks.matrix import RESULTS, render
from tests.e2e.conftest import demo_secret, kubectl, stack, token
from tests.kernel.conftest import agent_run, bpf_object

__all__ = ["agent_run", "bpf_object", "demo_secret", "kubectl", "stack", "token"]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The table vector -> result, after the tests, with or without -s."""
    if RESULTS:
        terminalreporter.write_sep("=", "attack matrix")
        for line in render(RESULTS).splitlines():
            terminalreporter.write_line(line)
