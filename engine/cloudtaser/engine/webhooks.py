"""The MutatingWebhookConfiguration a Plan derives.

Only pod CREATEs in namespaces that hold bindings reach the webhook (the Plan's scope already
leaves out kube-system and the operator's namespace), and of those only pods annotated
``cloudtaser.io/inject: "true"`` (a CEL match condition, evaluated by the API server), so a pod
that asked for nothing never depends on the operator being up, and `failurePolicy: Fail` — a
pod that should get secrets is never started without them — applies only to pods that asked.
Pure: the operator applies the result and repairs drift.
"""

from __future__ import annotations

from typing import Any

from cloudtaser.engine.plans import INJECT_ANNOTATION, Plan

WEBHOOK_CONFIGURATION = "cloudtaser-injector"
WEBHOOK_NAME = "inject.cloudtaser.io"
WEBHOOK_PATH = "/mutate-v1-pod"
# The same test as the engine's (compiler._wants_injection), in CEL.
MATCH_CONDITIONS = [
    {
        "name": "asks-for-injection",
        "expression": f"has(object.metadata.annotations) && '{INJECT_ANNOTATION}' in "
        f"object.metadata.annotations && "
        f"object.metadata.annotations['{INJECT_ANNOTATION}'] == 'true'",
    }
]


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
                "matchConditions": MATCH_CONDITIONS,
            }
        ],
    }
