"""Loads the test harness: every shared fixture and helper lives in a module of tests/harness/.

A test module or conftest imports only from tests.harness, never from another test module or
conftest, and nothing from benchmarks (tests/test_layout.py checks it). Fixtures shared by more
than one suite are defined in the plugins below (pytest allows ``pytest_plugins`` only in this
top-level conftest); a suite's own conftest keeps only what its directory bounds: a
package-scoped fixture (tests/e2e/node) or a hook of that suite (tests/attacks).
"""

from __future__ import annotations

import pytest

# Helpers moved here from conftests and test modules keep pytest's detailed assert messages.
pytest.register_assert_rewrite("tests.harness")

pytest_plugins = [
    "tests.harness.documents",  # docs: the SecretBinding / EnforcementPolicy / Pod builders
    "tests.harness.stack",  # stack, kubectl, token, demo_secret: the local real stack
    "tests.harness.agents",  # bpf_object(_path), agent_run, launched, spawn_victim: BPF agent
    "tests.harness.faults",  # outage, bao_proxy: a component taken down, a slow OpenBao
    "tests.harness.interposer",  # library, served, target, deliver: the interposer builds
    "tests.harness.attack_apps",  # wrapped_app: the attack matrix's wrapped target
    "tests.harness.fake_apiserver",  # api_ca, fake_api, fake_api_client: HTTPS, faked API
]
