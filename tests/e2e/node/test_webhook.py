"""Only pods annotated cloudtaser.io/inject=true are sent to the webhook (a CEL match
condition): with the operator stopped, such a pod is refused with the API server's reason and
a plain pod in the same namespace is created."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from cloudtaser.errors import CloudtaserError
from cloudtaser.testbed import installing
from tests.harness.nodes import IMAGE, NS, SYSTEM
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.e2e
OPERATOR = f"deploy/{installing.RELEASE}-operator"


def _pod(name: str, annotated: bool) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": NS,
                "labels": {"app": "demo-app"},
                "annotations": {"cloudtaser.io/inject": "true"} if annotated else {},
            },
            "spec": {  # Pod Security "restricted", which the demo namespace enforces
                "securityContext": {
                    "runAsNonRoot": True,
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "containers": [
                    {
                        "name": "app",
                        "image": IMAGE["demo-app"],
                        "command": ["true"],
                        "securityContext": {
                            "allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]},
                        },
                    }
                ],
            },
        }
    )


def test_with_the_operator_stopped_only_annotated_pods_are_refused(
    product: None, kubectl: Any
) -> None:
    kubectl("scale", OPERATOR, "-n", SYSTEM, "--replicas=0")
    try:
        wait_for(
            lambda: (
                not json.loads(
                    kubectl(
                        "get",
                        "pods",
                        "-n",
                        SYSTEM,
                        "-l",
                        "app.kubernetes.io/component=operator",
                        "-o",
                        "json",
                    )
                )["items"]
            ),
            120,
            "the operator's pods gone",
        )
        with pytest.raises(CloudtaserError) as refused:
            kubectl("create", "--dry-run=server", "-f", "-", stdin=_pod("annotated", True))
        message = str(refused.value)
        assert 'failed calling webhook "inject.cloudtaser.io"' in message, message
        assert f'no endpoints available for service "{installing.RELEASE}-operator"' in message, (
            message
        )
        created = kubectl("create", "--dry-run=server", "-f", "-", stdin=_pod("plain", False))
        assert "pod/plain created" in created
    finally:
        kubectl("scale", OPERATOR, "-n", SYSTEM, "--replicas=2")
        kubectl("rollout", "status", OPERATOR, "-n", SYSTEM, "--timeout=180s")
    # the webhook answers again: an annotated pod is admitted (and injected)
    admitted = wait_for(
        lambda: kubectl(
            "create", "--dry-run=server", "-o", "json", "-f", "-", stdin=_pod("annotated", True)
        ),
        60,
        "the webhook answering again",
    )
    assert "cloudtaser.io/injected" in json.loads(admitted)["metadata"]["annotations"]
