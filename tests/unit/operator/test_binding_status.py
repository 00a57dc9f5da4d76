"""The status the operator writes for a binding: Delivered from the pods, and Ready that never
says secrets are delivered while the selected pods' wrappers only fail."""

from __future__ import annotations

import dataclasses
from typing import Any

from cloudtaser.engine.plans import BindingSummary
from cloudtaser.operator.listing import slim, trimmed
from cloudtaser.operator.running import in_cluster_server
from cloudtaser.operator.statuses import Decision, binding_status

NOW = "2026-11-27T12:00:00Z"
REASON = "team/app-1: container app: cloudtaser-wrapper: binding team/app: permission denied"


def status(**figures: Any) -> dict[str, Any]:
    summary = BindingSummary(
        binding="team/app",
        valid=True,
        matched_pods=figures.get("matched", 1),
        injected_pods=figures.get("injected", 1),
        secrets=1,
        delivered_pods=figures.get("delivered", 0),
        failing_pods=figures.get("failing", 0),
        failure=figures.get("failure", ""),
    )
    return binding_status({"metadata": {"generation": 1}}, [], summary, Decision(True, ()), NOW)


def conditions(s: dict[str, Any]) -> dict[str, tuple[str, str, str]]:
    return {c["type"]: (c["status"], c["reason"], c["message"]) for c in s["conditions"]}


def test_every_wrapper_failing_is_not_ready_and_says_why() -> None:
    s = status(failing=1, failure=REASON)
    c = conditions(s)
    assert c["Delivered"][:2] == ("False", "WrapperFailed") and REASON in c["Delivered"][2]
    assert c["Ready"][:2] == ("False", "WrapperFailed") and REASON in c["Ready"][2]
    assert (s["deliveredPods"], s["failingPods"]) == (0, 1)


def test_delivered_and_pending_pods() -> None:
    c = conditions(status(delivered=1))
    assert c["Delivered"][0] == "True" and c["Ready"] == ("True", "Ready", c["Delivered"][2])
    c = conditions(status(injected=2, delivered=1))
    assert c["Delivered"][:2] == ("Unknown", "Pending") and c["Ready"][0] == "True"
    c = conditions(status(injected=0, matched=0))
    assert c["Delivered"][:2] == ("Unknown", "NoPods") and c["Ready"][0] == "True"


def test_a_pod_keeps_only_its_containers_run_states() -> None:
    body = {
        "metadata": {"name": "p", "managedFields": [{}]},
        "spec": {"containers": []},
        "status": {
            "phase": "Running",
            "podIP": "10.0.0.1",
            "containerStatuses": [
                {
                    "name": "app",
                    "image": "x",
                    "state": {"running": {}},
                    "lastState": {},
                    "ready": True,
                }
            ],
        },
    }
    assert trimmed("Pod", body)["status"] == {
        "containerStatuses": [{"name": "app", "state": {"running": {}}, "lastState": {}}]
    }


@dataclasses.dataclass(frozen=True)
class ConnectionInfo:  # as kopf's: a frozen dataclass; only `server` changes
    server: str
    token: str = "t"


def test_in_cluster_login_takes_the_kubelet_given_address() -> None:
    info = ConnectionInfo(server="https://kubernetes.default.svc")
    assert (
        in_cluster_server(
            info, {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
        ).server
        == "https://10.96.0.1:443"
    )
    assert (
        in_cluster_server(info, {"KUBERNETES_SERVICE_HOST": "fd00::1"}).server
        == "https://[fd00::1]:443"
    )
    assert in_cluster_server(info, {}) is info


def test_a_slim_body_keeps_what_the_next_status_needs() -> None:
    """The operator keeps each binding's body slimmed (listing.slim): the next status written
    from the slim body equals the one written from the full body, transition times included,
    while the old messages and figures are not kept."""
    first = binding_status(
        {"metadata": {"generation": 1}}, [], None, Decision(False, ("no",)), "2026-11-27T11:00:00Z"
    )
    body = {
        "metadata": {"name": "app", "namespace": "team", "uid": "u1", "generation": 2},
        "spec": {"selector": {}},
        "status": first,
    }
    kept = slim(body)
    assert kept["status"] == {
        "conditions": [
            {k: c[k] for k in ("type", "status", "lastTransitionTime")} for c in first["conditions"]
        ]
    }
    assert "spec" not in kept and kept["metadata"] == body["metadata"]
    for decision in (Decision(False, ("no",)), Decision(True, ())):
        assert binding_status(kept, [], None, decision, NOW) == binding_status(
            body, [], None, decision, NOW
        )
    assert slim({"metadata": {"name": "x"}, "status": None}) == {"metadata": {"name": "x"}}
