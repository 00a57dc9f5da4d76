"""The node report's format: what an agent's Lease says to the operator.

Why a Lease: the operator needs "which nodes enforce policy P" and "how many violations of P",
and many agents must never write one shared status (lost updates, conflicts). Each agent owns
``cloudtaser-agent-<node>`` in the operator's namespace, renews it (a dead agent's report
expires with the Lease), and writes three annotations:

- ``cloudtaser.io/policies``: the EnforcementPolicies that protect at least one pod on this node
  (JSON list, sorted);
- ``cloudtaser.io/violations``: violations per policy since the Lease was created (JSON object).
  A restarted agent continues the counts it reads back, so they never go backwards;
- ``cloudtaser.io/backend``: the agent's enforcement backend (lsm or tracepoint).

This module is the format only, shared by both sides so they cannot disagree: the agent keeps
its Lease with it (bpf/cloudtaser/bpf/leasing.py), the operator reads every Lease with it
(operator/cloudtaser/operator/listing.py) and adds them up into each policy's
``nodesEnforcing`` and ``violations`` (operator/cloudtaser/operator/statuses.py). Nothing
secret is reported: names and counts only. The caller brings the clock: a report carries its
renewal time as the text the Lease holds (``RENEW_TIME_FORMAT``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

PREFIX = "cloudtaser-agent-"
LABELS = {"app.kubernetes.io/name": "cloudtaser", "app.kubernetes.io/component": "agent-report"}
SELECTOR = ",".join(f"{k}={v}" for k, v in LABELS.items())  # the operator's label selector
POLICIES = "cloudtaser.io/policies"
VIOLATIONS = "cloudtaser.io/violations"
BACKEND = "cloudtaser.io/backend"
DURATION = 60  # seconds a report stays valid without renewal (the Lease's leaseDurationSeconds)
RENEW_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"  # spec.renewTime: a MicroTime, always UTC


def lease_name(node: str) -> str:
    """The Lease one node's agent owns."""
    return f"{PREFIX}{node}"[:253]


@dataclass(frozen=True)
class Report:
    """What one node's agent says: the policies it enforces, its violations by policy, and
    when it last said so (``renewed``: spec.renewTime; None when the Lease has none)."""

    node: str
    policies: list[str] = field(default_factory=list)
    violations: dict[str, int] = field(default_factory=dict)
    backend: str = ""
    renewed: str | None = None
    duration: float = DURATION


def encode(report: Report, namespace: str) -> dict[str, Any]:
    """The whole Lease an agent writes (create, or merge-patch: it is the only writer)."""
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": lease_name(report.node),
            "namespace": namespace,
            "labels": LABELS,
            "annotations": {
                POLICIES: json.dumps(sorted(report.policies)),
                VIOLATIONS: json.dumps(dict(sorted(report.violations.items()))),
                BACKEND: report.backend,
            },
        },
        "spec": {
            "holderIdentity": report.node,
            "leaseDurationSeconds": int(report.duration),
            "renewTime": report.renewed,
        },
    }


def decode(lease: dict[str, Any]) -> Report:
    """A Lease (as the API serialises it) read back. Malformed annotations read as nothing
    reported (one broken agent must not break every policy's status); a malformed renewal
    time as never renewed."""
    notes = (lease.get("metadata") or {}).get("annotations") or {}
    spec = lease.get("spec") or {}
    renewed = spec.get("renewTime")
    duration = spec.get("leaseDurationSeconds")
    node = spec.get("holderIdentity")
    backend = notes.get(BACKEND)
    policies, violations = _reported(notes)
    return Report(
        node=node if isinstance(node, str) else "",
        policies=policies,
        violations=violations,
        backend=backend if isinstance(backend, str) else "",
        renewed=renewed if isinstance(renewed, str) else None,
        duration=float(duration) if isinstance(duration, (int, float)) and duration else DURATION,
    )


def _reported(notes: dict[str, Any]) -> tuple[list[str], dict[str, int]]:
    """(policies enforced, violations by policy), or nothing when either is malformed."""
    try:
        policies = json.loads(notes.get(POLICIES, "[]"))
        violations = json.loads(notes.get(VIOLATIONS, "{}"))
    except (TypeError, ValueError):
        return [], {}
    if not isinstance(policies, list) or not isinstance(violations, dict):
        return [], {}
    return (
        [p for p in policies if isinstance(p, str)],
        {
            k: v
            for k, v in violations.items()
            if isinstance(k, str) and isinstance(v, int) and v >= 0
        },
    )
