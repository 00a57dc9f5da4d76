"""The MutatingWebhookConfiguration a Plan derives.

Only pod CREATEs in namespaces that hold bindings reach the webhook (the Plan's scope already
leaves out kube-system and the operator's namespace), so a pod no binding could select is
never sent to it, and `failurePolicy: Fail` — a pod that should get secrets is never started
without them — applies only there. Pure: the operator applies the result and repairs drift.
"""

from __future__ import annotations

from typing import Any

from cloudtaser.engine.plans import Plan

WEBHOOK_CONFIGURATION = "cloudtaser-injector"
WEBHOOK_NAME = "inject.cloudtaser.io"
WEBHOOK_PATH = "/mutate-v1-pod"


def webhook_configuration(
    plan: Plan,
    client_config: dict[str, Any],
    timeout_seconds: int = 10,
) -> dict[str, Any]:
    """``client_config`` is the webhook's clientConfig: {url|service, caBundle}."""
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {
            "name": WEBHOOK_CONFIGURATION,
            "labels": {"app.kubernetes.io/managed-by": "cloudtaser"},
        },
        "webhooks": [
            {
                "name": WEBHOOK_NAME,
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "failurePolicy": plan.webhook.failure_policy,
                "reinvocationPolicy": "IfNeeded",
                "matchPolicy": "Equivalent",
                "timeoutSeconds": timeout_seconds,
                "clientConfig": client_config,
                "rules": [
                    {
                        "operations": ["CREATE"],
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "resources": ["pods"],
                        "scope": "Namespaced",
                    }
                ],
                "namespaceSelector": plan.webhook.namespace_selector,
            }
        ],
    }
