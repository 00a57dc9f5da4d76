"""Delivery status from the pods' own statuses: a wrapper's termination message counts its pod
as failing (with the reason), running app containers as delivered; the binding's summary
follows pods as the kubelet reports them, and takes back what a removed pod added."""

from __future__ import annotations

from typing import Any

from cloudtaser.engine.compiler import (
    DELIVERED,
    FAILING,
    PENDING,
    ClusterState,
    IncrementalCompiler,
    delivery,
)
from cloudtaser.engine.kube import Pod
from cloudtaser.engine.resources import SecretBinding
from tests.harness.documents import binding_doc, pod_doc

REFUSED = (
    "cloudtaser-wrapper: binding team/app: login to OpenBao at https://bao.example:8200 "
    "refused: permission denied"
)


def terminated(message: str, code: int = 78) -> dict[str, Any]:
    return {"terminated": {"exitCode": code, "reason": "Error", "message": message}}


def pod(name: str = "app-1", **statuses: dict[str, Any]) -> Pod:
    doc = pod_doc(name, labels={"app": "app"}, injected=True)
    doc["status"] = {
        "containerStatuses": [
            {"name": c, "state": s.get("state", {}), "lastState": s.get("lastState", {})}
            for c, s in statuses.items()
        ]
    }
    return Pod.model_validate(doc)


def test_a_wrapper_reason_makes_the_pod_failing_now_and_in_back_off() -> None:
    assert delivery(pod(app={"state": terminated(REFUSED)})) == (
        FAILING,
        f"container app: {REFUSED}",
    )
    back_off = {
        "state": {"waiting": {"reason": "CrashLoopBackOff"}},
        "lastState": terminated(REFUSED),
    }
    assert delivery(pod(app=back_off)) == (FAILING, f"container app: {REFUSED}")


def test_running_app_containers_are_delivered_and_an_app_crash_is_not_a_delivery_failure() -> None:
    assert delivery(pod(app={"state": {"running": {"startedAt": "t"}}})) == (DELIVERED, "")
    # running again after an earlier failed attempt: the wrapper got through this time
    again = {"state": {"running": {}}, "lastState": terminated(REFUSED)}
    assert delivery(pod(app=again)) == (DELIVERED, "")
    crashed = {
        "state": {"waiting": {"reason": "CrashLoopBackOff"}},
        "lastState": terminated("panic: app bug", code=2),
    }
    assert delivery(pod(app=crashed)) == (PENDING, "")
    assert delivery(pod()) == (PENDING, "")  # no status yet
    assert delivery(pod(app={"state": {"waiting": {"reason": "ContainerCreating"}}})) == (
        PENDING,
        "",
    )


def test_binding_summary_counts_delivered_and_failing_pods_with_the_first_reason() -> None:
    compiler = IncrementalCompiler(
        ClusterState(bindings=[SecretBinding.model_validate(binding_doc("app"))])
    )
    compiler.set_pod(pod("app-2", app={"state": terminated(REFUSED)}))
    compiler.set_pod(pod("app-1", app={"state": {"running": {}}}))
    summary = compiler.plan().bindings[0]
    assert (summary.injected_pods, summary.delivered_pods, summary.failing_pods) == (2, 1, 1)
    assert summary.failure == f"team/app-2: container app: {REFUSED}"

    compiler.set_pod(pod("app-2", app={"state": {"running": {}}}))  # the role was fixed
    summary = compiler.plan().bindings[0]
    assert (summary.delivered_pods, summary.failing_pods, summary.failure) == (2, 0, "")
    compiler.remove_pod("team", "app-1")
    compiler.remove_pod("team", "app-2")
    summary = compiler.plan().bindings[0]
    assert (summary.injected_pods, summary.delivered_pods, summary.failing_pods) == (0, 0, 0)


def test_a_pod_not_injected_counts_for_nothing_but_matching() -> None:
    compiler = IncrementalCompiler(
        ClusterState(bindings=[SecretBinding.model_validate(binding_doc("app"))])
    )
    doc = pod_doc("app-1", labels={"app": "app"})
    doc["status"] = {"containerStatuses": [{"name": "app", "state": terminated(REFUSED)}]}
    compiler.set_pod(Pod.model_validate(doc))
    summary = compiler.plan().bindings[0]
    assert (summary.matched_pods, summary.injected_pods, summary.failing_pods) == (1, 0, 0)
