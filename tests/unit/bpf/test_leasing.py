"""Node reports: what an agent's Lease says and how the operator adds them up."""

from __future__ import annotations

import datetime
import json
from typing import Any

from cloudtaser.bpf import leasing
from cloudtaser.operator.operating import aggregate_reports

NOW = datetime.datetime(2026, 11, 27, 12, 0, tzinfo=datetime.timezone.utc)


def lease(policies: Any, violations: Any, age: float) -> dict[str, Any]:
    renewed = (NOW - datetime.timedelta(seconds=age)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {"metadata": {"annotations": {leasing.POLICIES: json.dumps(policies),
                                         leasing.VIOLATIONS: json.dumps(violations)}},
            "spec": {"renewTime": renewed, "leaseDurationSeconds": 60}}


def test_live_nodes_count_and_all_violations_add_up() -> None:
    leases = [lease(["baseline", "strict"], {"baseline": 2}, 5),
              lease(["baseline"], {"baseline": 1, "strict": 4}, 30),
              lease(["baseline"], {"baseline": 10}, 600)]  # expired: not enforcing, counts stay
    assert aggregate_reports(leases, NOW) == {"baseline": (2, 13), "strict": (1, 4)}


def test_malformed_reports_count_as_nothing() -> None:
    broken = [lease("baseline", {"x": 1}, 1), lease(["ok"], {"ok": -3, "y": "many"}, 1),
              {"metadata": {"annotations": {leasing.POLICIES: "{not json"}}, "spec": {}},
              {"metadata": {}, "spec": {"renewTime": "yesterday"}}]
    assert aggregate_reports(broken, NOW) == {"ok": (1, 0)}
    assert not leasing.fresh({"spec": {}}, NOW)
