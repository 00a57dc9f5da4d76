"""The node report's format: the Lease an agent writes, read back the way the operator reads it."""

from __future__ import annotations

import json

from cloudtaser.engine import reports
from cloudtaser.engine.reports import Report, decode, encode, lease_name

RENEWED = "2026-11-27T12:00:00.000000Z"


def test_a_report_reads_back_as_written() -> None:
    report = Report(
        node="node-a",
        policies=["baseline", "strict"],
        violations={"baseline": 2, "strict": 0},
        backend="lsm",
        renewed=RENEWED,
    )
    lease = encode(report, "cloudtaser-system")
    assert lease["metadata"]["name"] == "cloudtaser-agent-node-a"
    assert lease["metadata"]["namespace"] == "cloudtaser-system"
    assert lease["spec"] == {
        "holderIdentity": "node-a",
        "leaseDurationSeconds": 60,
        "renewTime": RENEWED,
    }
    assert decode(json.loads(json.dumps(lease))) == report


def test_the_lease_says_sorted_json_under_the_documented_keys() -> None:
    lease = encode(
        Report(
            node="n",
            policies=["strict", "baseline"],
            violations={"strict": 4, "baseline": 1},
            backend="tracepoint",
        ),
        "ns",
    )
    notes = lease["metadata"]["annotations"]
    assert notes == {
        "cloudtaser.io/policies": '["baseline", "strict"]',
        "cloudtaser.io/violations": '{"baseline": 1, "strict": 4}',
        "cloudtaser.io/backend": "tracepoint",
    }
    labels = lease["metadata"]["labels"]
    # The operator finds the Leases by this selector: it must match the labels written.
    assert dict(pair.split("=") for pair in reports.SELECTOR.split(",")) == labels
    assert labels["app.kubernetes.io/component"] == "agent-report"


def test_malformed_annotations_read_as_nothing_reported() -> None:
    def notes(policies: str, violations: str) -> Report:
        return decode(
            {
                "metadata": {
                    "annotations": {reports.POLICIES: policies, reports.VIOLATIONS: violations}
                },
                "spec": {"renewTime": RENEWED},
            }
        )

    assert notes("{not json", "{}").policies == []
    assert (
        notes('"baseline"', '{"x": 1}').policies,
        notes('"baseline"', '{"x": 1}').violations,
    ) == ([], {})  # a policy list that is not a list voids the whole report
    kept = notes('["ok", 3]', '{"ok": -3, "y": "many", "z": 2}')
    assert (kept.policies, kept.violations) == (["ok"], {"z": 2})
    assert notes("[]", "[]").violations == {}


def test_missing_or_odd_spec_fields() -> None:
    empty = decode({})
    assert empty == Report(node="", renewed=None, duration=reports.DURATION)
    odd = decode({"spec": {"renewTime": 17, "leaseDurationSeconds": 15, "holderIdentity": 3}})
    assert (odd.renewed, odd.duration, odd.node) == (None, 15.0, "")


def test_lease_names_fit_kubernetes() -> None:
    assert lease_name("worker-1") == "cloudtaser-agent-worker-1"
    assert len(lease_name("n" * 300)) == 253
