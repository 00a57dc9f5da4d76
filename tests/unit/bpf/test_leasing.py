"""The agent's node report: the Lease it writes says, in the engine's format, which policies
protect pods on this node and how many violations each had, continuing a predecessor's counts."""

from __future__ import annotations

import datetime
import json
from typing import Any

from cloudtaser.bpf.leasing import NodeReport
from cloudtaser.bpf.watching import PodPolicies
from cloudtaser.engine import reports
from tests.harness.documents import binding_doc, pod_doc, policy_doc

UID = "0b9f3c1e-7d2a-4c55-9e61-2f1d8c3b4a70"


def node(*policies: str) -> PodPolicies:
    """This node's protected pods as the agent lists them: one injected pod under
    ``policies`` (none: the default policy)."""
    pod = pod_doc("app-1", "team", labels={"app": "app"}, injected=True)
    pod["metadata"]["uid"] = UID
    docs = [
        pod,
        binding_doc("app", "team"),
        *(policy_doc(name, mode="enforce") for name in policies),
    ]
    for doc in docs:
        doc.pop("apiVersion")
    objects: dict[str, list[dict[str, Any]]] = {
        "Pod": [],
        "SecretBinding": [],
        "EnforcementPolicy": [],
        "Namespace": [],
    }
    for doc in docs:
        objects[doc.pop("kind")].append(doc)
    listed = PodPolicies(lambda: objects)
    listed.refresh()
    return listed


def lease(report: NodeReport) -> dict[str, Any]:
    """The Lease the report writes, as the API would hand it to the operator."""
    return dict(json.loads(json.dumps(report.body())))


def test_the_lease_names_the_policies_and_counts_each_violation() -> None:
    report = NodeReport(
        node("strict", "baseline"), "node-a", "cloudtaser-system", "lsm", api=object()
    )
    for uid in (UID, UID, "not-on-this-node", None):
        report.record(uid)
    before = datetime.datetime.now(datetime.UTC)
    body = lease(report)
    read = reports.decode(body)
    assert (body["metadata"]["name"], body["metadata"]["namespace"]) == (
        "cloudtaser-agent-node-a",
        "cloudtaser-system",
    )
    assert read.policies == ["baseline", "strict"]
    assert read.violations == {"baseline": 2, "strict": 2}
    assert (read.node, read.backend, read.duration) == ("node-a", "lsm", reports.DURATION)
    assert read.renewed is not None
    renewed = datetime.datetime.fromisoformat(read.renewed.replace("Z", "+00:00"))
    assert abs((renewed - before).total_seconds()) < 5


def test_a_pod_under_no_policy_reports_the_default_one() -> None:
    report = NodeReport(node(), "node-a", "cloudtaser-system", "tracepoint", api=object())
    report.record(UID)
    read = reports.decode(lease(report))
    assert (read.policies, read.violations) == (["default"], {"default": 1})


class Leases:
    """The agent's API client (cloudtaser/kubeapi.KubeApi) holding one Lease, as a restarted agent
    finds it."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body

    def get(self, path: str) -> dict[str, Any]:
        assert path == (
            "/apis/coordination.k8s.io/v1/namespaces/cloudtaser-system/leases/"
            "cloudtaser-agent-node-a"
        )
        return self.body


def test_a_restarted_agent_continues_the_counts_it_reads_back() -> None:
    old = reports.encode(
        reports.Report(
            node="node-a", policies=["baseline"], violations={"baseline": 5, "retired": 2}
        ),
        "cloudtaser-system",
    )
    report = NodeReport(node("baseline"), "node-a", "cloudtaser-system", "lsm", api=Leases(old))
    report._load()
    report.record(UID)
    assert reports.decode(lease(report)).violations == {"baseline": 6, "retired": 2}
