"""How the operator adds up the agents' node reports into each policy's nodesEnforcing and
violations."""

from __future__ import annotations

import datetime
import json
from typing import Any

from cloudtaser.engine import reports
from cloudtaser.engine.reports import Report, decode, encode
from cloudtaser.operator.statuses import aggregate_reports, fresh

NOW = datetime.datetime(2026, 11, 27, 12, 0, tzinfo=datetime.UTC)


def lease(node: str, policies: list[str], violations: dict[str, int], age: float) -> Report:
    """A node's Lease as the agent writes it and the API returns it, decoded."""
    renewed = (NOW - datetime.timedelta(seconds=age)).strftime(reports.RENEW_TIME_FORMAT)
    body = encode(
        Report(node=node, policies=policies, violations=violations, backend="lsm", renewed=renewed),
        "cloudtaser-system",
    )
    return decode(json.loads(json.dumps(body)))


def test_live_nodes_count_and_all_violations_add_up() -> None:
    leases = [
        lease("a", ["baseline", "strict"], {"baseline": 2}, 5),
        lease("b", ["baseline"], {"baseline": 1, "strict": 4}, 30),
        lease("c", ["baseline"], {"baseline": 10}, 600),
    ]  # expired: not enforcing, counted
    assert aggregate_reports(leases, NOW) == {"baseline": (2, 13), "strict": (1, 4)}
    assert list(aggregate_reports(leases, NOW)) == ["baseline", "strict"]  # sorted


def test_malformed_reports_count_as_nothing() -> None:
    def raw(notes: dict[str, Any], spec: dict[str, Any]) -> Report:
        return decode({"metadata": {"annotations": notes}, "spec": spec})

    renewed = {"renewTime": NOW.strftime(reports.RENEW_TIME_FORMAT)}
    broken = [
        raw({reports.POLICIES: '"baseline"', reports.VIOLATIONS: '{"x": 1}'}, renewed),
        raw({reports.POLICIES: '["ok"]', reports.VIOLATIONS: '{"ok": -3, "y": "many"}'}, renewed),
        raw({reports.POLICIES: "{not json"}, {}),
        raw({}, {"renewTime": "yesterday"}),
    ]
    assert aggregate_reports(broken, NOW) == {"ok": (1, 0)}


def test_a_report_is_fresh_within_its_own_duration() -> None:
    renewed = (NOW - datetime.timedelta(seconds=45)).strftime(reports.RENEW_TIME_FORMAT)
    assert fresh(Report(node="n", renewed=renewed, duration=60), NOW)
    assert not fresh(Report(node="n", renewed=renewed, duration=30), NOW)
    assert fresh(Report(node="n", renewed=renewed.replace(".000000Z", "+00:00")), NOW)
    assert not fresh(Report(node="n", renewed=None), NOW)
    assert not fresh(Report(node="n", renewed="yesterday"), NOW)
    assert not fresh(decode({"spec": {}}), NOW)
