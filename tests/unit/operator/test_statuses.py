"""What the operator writes into each CR's status, from a real compile: conditions and their
transition times, a binding's Compiled / PolicyAllowed / Ready, a policy's figures, and the
lines of a binding's Event."""

from __future__ import annotations

import datetime
from typing import Any

from cloudtaser.engine.compiler import ClusterState, compile_state
from cloudtaser.engine.kube import Pod
from cloudtaser.engine.plans import Plan, Problem
from cloudtaser.engine.resources import EnforcementPolicy, SecretBinding
from cloudtaser.operator.statuses import (
    Decision,
    announcement,
    binding_status,
    conditions,
    policy_status,
    problems_by_object,
    timestamp,
)
from tests.harness.documents import binding_doc, pod_doc, policy_doc

EARLIER, NOW = "2026-11-27T11:00:00Z", "2026-11-27T12:00:00Z"


def conflicting() -> tuple[Plan, dict[str, dict[str, Any]]]:
    """Bindings a and b deliver PASSWORD to the same pod (b loses and is told); an audit
    policy is overridden by an enforcing one (a warning on the audit policy)."""
    a = binding_doc("a", selector={"matchLabels": {"app": "x"}})
    b = binding_doc("b", selector={"matchLabels": {"app": "x"}})
    for doc, uid in ((a, "uid-a"), (b, "uid-b")):
        doc["metadata"].update(uid=uid, generation=3)
    audit = policy_doc("audit", mode="audit", protections={"mem": False})
    audit["metadata"]["generation"] = 2
    plan = compile_state(
        ClusterState(
            bindings=[SecretBinding.model_validate(d) for d in (a, b)],
            policies=[EnforcementPolicy.model_validate(d) for d in (audit, policy_doc("enforce"))],
            pods=[Pod.model_validate(pod_doc(labels={"app": "x"}, injected=True))],
        )
    )
    return plan, {"team/a": a, "team/b": b, "audit": audit}


def by_type(status: dict[str, Any]) -> dict[str, tuple[str, str, str]]:
    return {c["type"]: (c["status"], c["reason"], c["message"]) for c in status["conditions"]}


def binding(plan: Plan, body: dict[str, Any], decision: Decision | None) -> dict[str, Any]:
    ref = f"{body['metadata']['namespace']}/{body['metadata']['name']}"
    summary = {s.binding: s for s in plan.bindings}.get(ref)
    return binding_status(
        body, problems_by_object(plan.problems)[0].get(ref, []), summary, decision, NOW
    )


def test_problems_land_on_their_own_object() -> None:
    plan, _ = conflicting()
    bindings, policies = problems_by_object(plan.problems)
    assert set(bindings) == {"team/b"} and set(policies) == {"audit"}
    assert [p.path for p in bindings["team/b"]] == ["spec.secrets[0].keys[0].env"]
    assert sum(map(len, bindings.values())) + sum(map(len, policies.values())) == len(plan.problems)


def test_the_winner_is_ready_and_the_loser_says_why_not() -> None:
    plan, bodies = conflicting()
    winner = binding(plan, bodies["team/a"], Decision(True, ()))
    assert by_type(winner)["Compiled"] == ("True", "Compiled", "compiled without errors")
    assert by_type(winner)["PolicyAllowed"] == ("True", "Allowed", "allowed by policy")
    assert by_type(winner)["Ready"][0] == "True"
    assert (winner["matchedPods"], winner["injectedPods"], winner["problems"]) == (1, 1, [])
    assert {c["observedGeneration"] for c in winner["conditions"]} == {3}
    loser = binding(plan, bodies["team/b"], Decision(True, ()))
    compiled = by_type(loser)["Compiled"]
    assert compiled[:2] == ("False", "Conflict")
    assert compiled[2].startswith("spec.secrets[0].keys[0].env: ")
    assert "also delivered by SecretBinding team/a" in compiled[2]
    assert by_type(loser)["Ready"] == ("False", "Conflict", compiled[2])
    assert loser["problems"][0]["severity"] == "error" and loser["observedGeneration"] == 3


def test_opa_denial_unavailability_and_an_invalid_spec() -> None:
    plan, bodies = conflicting()
    denied = by_type(binding(plan, bodies["team/a"], Decision(False, ("no prod paths", "no root"))))
    assert denied["PolicyAllowed"] == ("False", "Denied", "no prod paths; no root")
    assert denied["Ready"] == ("False", "Denied", "no prod paths; no root")
    away = by_type(binding(plan, bodies["team/a"], Decision(None, ("OPA unreachable",))))
    assert away["PolicyAllowed"] == ("Unknown", "OPAUnavailable", "OPA unreachable")
    assert away["Ready"][:2] == ("False", "OPAUnavailable")
    parse = Problem(
        kind="SecretBinding",
        namespace="team",
        name="c",
        path="spec.vault",
        message="field required",
    )
    invalid = binding_status({"metadata": {"generation": 1}}, [parse], None, None, NOW)
    assert by_type(invalid)["Compiled"] == ("False", "InvalidSpec", "spec.vault: field required")
    assert by_type(invalid)["PolicyAllowed"] == ("Unknown", "NotEvaluated", "the spec is invalid")
    assert by_type(invalid)["Ready"][:2] == ("False", "InvalidSpec")
    assert (invalid["matchedPods"], invalid["secrets"]) == (0, 0)


def test_a_policy_reports_its_pods_nodes_violations_and_warnings() -> None:
    plan, bodies = conflicting()
    summary = {p.policy: p for p in plan.policies}["audit"]
    status = policy_status(
        bodies["audit"],
        problems_by_object(plan.problems)[1]["audit"],
        summary.matched_pods,
        summary.constrained_pods,
        (2, 7),
        NOW,
    )
    assert (status["matchedPods"], status["nodesEnforcing"], status["violations"]) == (1, 2, 7)
    assert status["observedGeneration"] == 2
    [warning] = status["problems"]
    assert warning["severity"] == "warning"
    # A warning is not an error: still compiled, and the condition says what was warned.
    assert by_type(status)["Compiled"] == ("True", "Compiled", warning["message"])
    error = Problem(kind="EnforcementPolicy", name="p", path="spec.mode", message="bad mode")
    broken = policy_status({}, [error], 0, [f"team/p{i}" for i in range(150)], (0, 0), NOW)
    assert by_type(broken)["Compiled"] == ("False", "Invalid", "bad mode")
    assert len(broken["constrainedPods"]) == 100 and broken["observedGeneration"] is None


def test_transition_time_moves_only_when_the_status_changes() -> None:
    old = {
        "conditions": [
            {"type": "Compiled", "status": "True", "lastTransitionTime": EARLIER},
            {"type": "Ready", "status": "True", "lastTransitionTime": EARLIER},
        ]
    }
    out = conditions(
        old,
        [
            ("Compiled", True, "Compiled", "Invalid", "ok"),
            ("Ready", False, "Ready", "Denied", "x" * 5000),
            ("Delivered", None, "Delivered", "Pending", "starting"),
        ],
        NOW,
        4,
    )
    times = {c["type"]: c["lastTransitionTime"] for c in out}
    assert times == {"Compiled": EARLIER, "Ready": NOW, "Delivered": NOW}
    assert [(c["status"], c["reason"]) for c in out] == [
        ("True", "Compiled"),
        ("False", "Denied"),
        ("Unknown", "Pending"),
    ]
    assert len(out[1]["message"]) == 1000 and all(c["observedGeneration"] == 4 for c in out)
    assert "observedGeneration" not in conditions({}, [("Compiled", True, "a", "b", "m")], NOW)[0]


def test_timestamps_are_utc() -> None:
    berlin = datetime.timezone(datetime.timedelta(hours=1))
    later = datetime.datetime(2026, 11, 27, 13, 0, 5, 999, tzinfo=berlin)
    assert timestamp(later) == "2026-11-27T12:00:05Z"


def test_an_event_names_errors_and_denials_but_not_warnings() -> None:
    plan, _ = conflicting()
    [line] = announcement(problems_by_object(plan.problems)[0]["team/b"], Decision(True, ()))
    assert line.startswith("spec.secrets[0].keys[0].env: ")
    warnings = problems_by_object(plan.problems)[1]["audit"]
    assert announcement(warnings, None) == []
    assert announcement([], Decision(False, ("no root",))) == ["denied by policy: no root"]
    assert announcement([], Decision(None, ("OPA unreachable",))) == []
