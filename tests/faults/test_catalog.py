"""Every fault of the fault list, and the test that asserts its outcome. Most live in this
directory; a fault whose test already exists elsewhere (and really asserts the outcome) is
referenced here rather than duplicated — and this test fails if the reference goes stale.

| fault | expected outcome | test |
|---|---|---|
| OpenBao stopped | retries within the deadline, then one line naming "unreachable", exit 75, app not started; back within the deadline → delivered | test_openbao.py |
| OpenBao slow | below the deadline → delivered; above → one line at the deadline ("too slow"), exit 75, never a hang | test_openbao.py |
| wrong CA | "TLS failure (certificate verify failed)", exit 78, one connection, no retries | test_openbao.py |
| token no longer valid | "permission denied" at login, exit 78, one connection, no retries | test_openbao.py |
| API server restart during operator work | statuses and webhook scope converge; a fresh operator agrees byte for byte | test_operator_faults.py |
| operator SIGKILLed mid-reconcile | restarted operator converges; a fresh one agrees byte for byte | test_operator_faults.py |
| agent SIGKILLed and restarted under attack | zero successful reads of /proc/PID/environ in every phase | test_agent_restart.py |
| webhook down | only in-scope pods refused, others admitted | tests/e2e/test_injector.py (below) |
"""

from __future__ import annotations

import importlib

import pytest

ELSEWHERE = {
    "webhook down": "tests.e2e.test_injector::test_webhook_down_refuses_only_pods_in_scope",
}


@pytest.mark.parametrize("fault", sorted(ELSEWHERE))
def test_fault_tested_elsewhere_still_exists(fault: str) -> None:
    module, name = ELSEWHERE[fault].split("::")
    test = getattr(importlib.import_module(module), name, None)
    assert callable(test), f"{fault}: {ELSEWHERE[fault]} is gone; move or re-point the reference"
