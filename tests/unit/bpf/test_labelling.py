"""The node label's worker, against a stand-in for the API (the real API server, RBAC and
admission policy: tests/e2e/test_chart.py)."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest

from cloudtaser.bpf import labelling
from cloudtaser.bpf.labelling import NodeLabel
from cloudtaser.engine.plans import AGENT_BACKEND_LABEL


class Refused(Exception):
    status = 503
    body = '{"kind": "Status", "message": "etcdserver: leader changed"}'


class FakeNodes:
    """The agent's API client (cloudtaser/kubeapi.KubeApi) on one node's labels: get and patch of
    /api/v1/nodes/n1; the first ``failures`` calls fail."""

    def __init__(self, labels: dict[str, str], failures: int = 0) -> None:
        self.labels = dict(labels)
        self.failures = failures
        self.patches: list[dict[str, Any]] = []
        self.written = threading.Event()

    def _maybe_fail(self) -> None:
        if self.failures:
            self.failures -= 1
            raise Refused()

    def get(self, path: str) -> Any:
        assert path == "/api/v1/nodes/n1"
        self._maybe_fail()
        return {"metadata": {"labels": dict(self.labels)} if self.labels else {}}

    def patch(self, path: str, body: dict[str, Any]) -> None:
        assert path == "/api/v1/nodes/n1"
        self._maybe_fail()
        self.patches.append(body)
        for key, value in body["metadata"]["labels"].items():
            if value is None:
                self.labels.pop(key, None)
            else:
                self.labels[key] = value
        self.written.set()


def test_apply_writes_only_a_difference_and_only_its_key() -> None:
    nodes = FakeNodes({"keep": "me", AGENT_BACKEND_LABEL: "tracepoint"})
    label = NodeLabel("n1", api=nodes)
    assert label.apply("lsm") is True
    assert nodes.patches == [{"metadata": {"labels": {AGENT_BACKEND_LABEL: "lsm"}}}]
    assert label.apply("lsm") is False and len(nodes.patches) == 1
    assert label.apply(None) is True
    assert nodes.labels == {"keep": "me"}
    assert label.apply(None) is False


def test_failures_are_one_warning_each_retried_until_written(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="cloudtaser.bpf.labelling")
    nodes = FakeNodes({}, failures=3)
    label = NodeLabel("n1", api=nodes, retry=0.01)
    label.start("lsm")
    assert nodes.written.wait(5)
    label.close()
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        f"node n1: label {AGENT_BACKEND_LABEL}=lsm not written (HTTP 503: etcdserver: leader "
        f"changed); retrying in {delay:g} s"
        for delay in (0.01, 0.02, 0.04)
    ]
    assert nodes.labels == {}  # close() removed it


def test_removal_gives_up_after_a_few_attempts(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="cloudtaser.bpf.labelling")
    nodes = FakeNodes({AGENT_BACKEND_LABEL: "lsm"}, failures=100)
    assert NodeLabel("n1", api=nodes, retry=0).remove() is False
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == labelling.CLOSE_ATTEMPTS
    assert lines[-1] == (
        f"node n1: label removal of {AGENT_BACKEND_LABEL} not written (HTTP 503: "
        "etcdserver: leader changed); giving up"
    )


def test_a_long_server_message_keeps_its_end() -> None:
    class Long(Exception):
        status = 403
        body = '{"message": "' + "x" * 300 + ' denied request: the reason"}'

    reason = labelling._reason(Long())
    assert reason.startswith("HTTP 403: ...x") and reason.endswith("denied request: the reason")
    assert labelling._reason(ConnectionResetError("http://host?token=t")) == "ConnectionResetError"
