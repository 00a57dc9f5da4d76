"""Truthful delivery status: a binding whose OpenBao role refuses the pod's service account
says so in `kubectl get sb` and `kubectl describe sb` (the wrapper's one line, from the pod's
termination message), READY is False, and the pod's status holds the reason, never a value."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from cloudtaser.testbed import installing
from tests.harness.nodes import IMAGE, NS, Pods, binding_ready
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.e2e
BINDING = "e2e-refused"
REFUSAL = (
    "(role demo): permission denied (the service account or its namespace is not bound to the role)"
)


def test_a_refused_login_shows_in_get_and_describe(
    product: None, pods: Pods, kubectl: Any, demo_secret: dict[str, str]
) -> None:
    doc = next(
        d
        for d in yaml.safe_load_all((installing.REPO / "examples" / "demo-app.yaml").read_text())
        if d["kind"] == "SecretBinding"
    )
    doc["metadata"]["name"] = BINDING
    doc["spec"]["selector"] = {"matchLabels": {"app": BINDING}}
    kubectl("apply", "-f", "-", stdin=yaml.safe_dump(doc))
    try:
        wait_for(binding_ready(kubectl, BINDING), 60, f"the operator compiling {BINDING}")
        # the namespace's default service account: the OpenBao role binds only "demo"
        name = pods.create(
            "refused",
            IMAGE["demo-app"],
            ["python3.11", "/app/demo-app.py"],
            labels={"app": BINDING},
            account="default",
        )

        def refused() -> dict[str, Any] | None:
            status: dict[str, Any] = json.loads(
                kubectl("get", "sb", BINDING, "-n", NS, "-o", "json")
            )["status"]
            return status if status.get("failingPods") == 1 else None

        status = wait_for(refused, 120, "the binding counting the refused pod")
        conditions = {c["type"]: c for c in status["conditions"]}
        assert (
            conditions["Ready"]["status"] == "False"
            and conditions["Ready"]["reason"] == "WrapperFailed"
        )
        assert conditions["Delivered"]["status"] == "False"
        assert REFUSAL in conditions["Delivered"]["message"]
        assert (
            f"{NS}/{name}: container app: cloudtaser-wrapper: binding {NS}/{BINDING}: "
            "login to https://10.96.0.2:8200 " in conditions["Delivered"]["message"]
        )
        table = kubectl("get", "sb", BINDING, "-n", NS)
        assert (
            table.split("\n")[1].split()[:4] == [BINDING, "False", "1", "0"] and REFUSAL in table
        ), table
        described = kubectl("describe", "sb", BINDING, "-n", NS)
        assert REFUSAL in " ".join(described.split()), described
        ended = [
            s.get("lastState", {}).get("terminated") or s["state"].get("terminated")
            for s in pods.get(name)["status"]["containerStatuses"]
        ]
        assert (
            ended[0]
            and ended[0]["message"].startswith("cloudtaser-wrapper: ")
            and REFUSAL in ended[0]["message"]
        )
        for text in (json.dumps(status), table, described, json.dumps(ended)):
            assert demo_secret["password"] not in text
    finally:
        kubectl("delete", "sb", BINDING, "-n", NS, "--ignore-not-found")
