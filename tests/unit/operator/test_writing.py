"""The operator's writes (operator/cloudtaser/operator/writing.py) through its API client against
a fake API server over HTTPS: a status is a merge patch of the status subresource and only when
it changed, an Event when a binding's problems change, and the MutatingWebhookConfiguration
created, left alone or replaced (conditionally) to equal the Plan's. (Against the real API
server: tests/e2e/test_operator.py.)"""

from __future__ import annotations

import copy
import logging
from typing import Any

import pytest

from cloudtaser.engine.compiler import ClusterState, compile_state
from cloudtaser.engine.plans import Plan, Problem
from cloudtaser.engine.resources import SecretBinding
from cloudtaser.engine.webhooks import WEBHOOK_CONFIGURATION, webhook_configuration
from cloudtaser.kubeapi import ApiError, KubeApi
from cloudtaser.operator.reconciling import api_failure
from cloudtaser.operator.statuses import Decision
from cloudtaser.operator.writing import Writer
from tests.harness.documents import binding_doc
from tests.harness.fake_apiserver import FakeApiServer

STATUS = "/apis/cloudtaser.io/v1alpha1/namespaces/team/secretbindings/app/status"
WEBHOOKS = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
CLIENT_CONFIG = {"url": "https://127.0.0.1:8443/mutate-v1-pod", "caBundle": "Q0E="}


def plan() -> Plan:
    return compile_state(
        ClusterState(bindings=[SecretBinding.model_validate(binding_doc("app", "team"))])
    )


def test_a_status_is_patched_once_until_it_changes(
    fake_api: FakeApiServer, fake_api_client: KubeApi
) -> None:
    writer = Writer(fake_api_client)
    fake_api.answer = {}
    writer.patch("secretbindings", "team", "app", {"x": 1})
    writer.patch("secretbindings", "team", "app", {"x": 1})  # written already: no request
    writer.patch("enforcementpolicies", None, "strict", {"y": 2})
    first, cluster = fake_api.requests
    assert (first.method, first.path, first.body) == ("PATCH", STATUS, {"status": {"x": 1}})
    assert first.headers["Content-Type"] == "application/merge-patch+json"
    assert cluster.path == "/apis/cloudtaser.io/v1alpha1/enforcementpolicies/strict/status"
    writer.forget()  # a new leader: everything once more
    writer.patch("secretbindings", "team", "app", {"x": 1})
    assert len(fake_api.requests) == 3


def test_a_status_not_written_is_tried_again_and_a_deleted_object_is_no_news(
    fake_api: FakeApiServer, fake_api_client: KubeApi, caplog: pytest.LogCaptureFixture
) -> None:
    writer = Writer(fake_api_client)
    with caplog.at_level(logging.WARNING, logger="cloudtaser.operator"):
        fake_api.status = 404
        writer.patch("secretbindings", "team", "app", {"x": 1})
        fake_api.status = 422
        writer.patch("secretbindings", "team", "app", {"x": 1})
    assert [r.getMessage() for r in caplog.records] == [
        "status of secretbindings team/app not written: HTTP 422"
    ]
    fake_api.status = 200
    writer.patch("secretbindings", "team", "app", {"x": 1})
    assert len(fake_api.requests) == 3  # nothing was remembered as written


def test_an_event_is_posted_when_a_binding_s_problems_change(
    fake_api: FakeApiServer, fake_api_client: KubeApi
) -> None:
    writer = Writer(fake_api_client)
    body = binding_doc("app", "team")
    body["metadata"]["uid"] = "u-1"
    problem = Problem(
        kind="SecretBinding", namespace="team", name="app", path="spec.secrets", message="conflict"
    )
    fake_api.answer = {"metadata": {"name": "app.x"}}
    writer.announce("team/app", body, [], Decision(True, []))  # fine from the start: silent
    writer.announce("team/app", body, [problem], Decision(True, []))
    writer.announce("team/app", body, [problem], Decision(True, []))  # unchanged: silent
    writer.announce("team/app", body, [], Decision(True, []))  # resolved
    warning, resolved = fake_api.requests
    assert (warning.method, warning.path) == ("POST", "/api/v1/namespaces/team/events")
    event = warning.body
    assert event["involvedObject"] == {
        "apiVersion": "cloudtaser.io/v1alpha1",
        "kind": "SecretBinding",
        "name": "app",
        "namespace": "team",
        "uid": "u-1",
    }
    assert (event["type"], event["reason"], event["message"]) == (
        "Warning",
        "CompileProblems",
        "spec.secrets: conflict",
    )
    assert event["metadata"] == {"generateName": "app.", "namespace": "team"}
    assert event["source"] == {"component": "cloudtaser-operator"} and event["count"] == 1
    assert event["firstTimestamp"] == event["lastTimestamp"]
    assert (resolved.body["type"], resolved.body["reason"], resolved.body["message"]) == (
        "Normal",
        "Compiled",
        "all problems resolved",
    )


class Webhooks:
    """The API server's one MutatingWebhookConfiguration (None: not there), with defaults it
    adds and a resourceVersion; ``conflict``: the next write answers 409."""

    def __init__(self, stored: dict[str, Any] | None) -> None:
        self.stored = stored
        self.conflict = False

    def __call__(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        named = f"{WEBHOOKS}/{WEBHOOK_CONFIGURATION}"
        if method == "GET" and path == named:
            return (200, self.stored) if self.stored else (404, {"kind": "Status", "code": 404})
        assert (method, path) in (("POST", WEBHOOKS), ("PUT", named))
        if self.conflict:
            return 409, {"kind": "Status", "code": 409}
        self.stored = with_defaults(body)
        return 200, self.stored


def with_defaults(config: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(config)
    out["metadata"]["resourceVersion"] = "42"
    out["metadata"]["labels"]["added-by-someone"] = "else"
    for webhook in out["webhooks"]:
        webhook["objectSelector"] = {}  # a default the operator does not manage
    return out


def test_the_webhook_configuration_is_created_then_left_alone_while_it_is_the_plan_s(
    fake_api: FakeApiServer, fake_api_client: KubeApi
) -> None:
    writer = Writer(fake_api_client)
    fake_api.handler = Webhooks(None)
    assert writer.apply_webhook(plan(), CLIENT_CONFIG)
    assert writer.apply_webhook(plan(), CLIENT_CONFIG)
    assert [(r.method, r.path) for r in fake_api.requests] == [
        ("GET", f"{WEBHOOKS}/{WEBHOOK_CONFIGURATION}"),
        ("POST", WEBHOOKS),
        ("GET", f"{WEBHOOKS}/{WEBHOOK_CONFIGURATION}"),
    ]
    assert fake_api.requests[1].body == webhook_configuration(plan(), CLIENT_CONFIG)


def test_drift_is_replaced_conditionally_and_a_conflict_says_derive_again(
    fake_api: FakeApiServer, fake_api_client: KubeApi
) -> None:
    writer = Writer(fake_api_client)
    drifted = with_defaults(webhook_configuration(plan(), CLIENT_CONFIG))
    drifted["webhooks"][0]["timeoutSeconds"] = 30  # edited by hand
    webhooks = Webhooks(drifted)
    fake_api.handler = webhooks
    webhooks.conflict = True
    assert not writer.apply_webhook(plan(), CLIENT_CONFIG)  # someone wrote meanwhile
    webhooks.conflict = False
    assert writer.apply_webhook(plan(), CLIENT_CONFIG)
    replace = fake_api.requests[-1]
    wanted = webhook_configuration(plan(), CLIENT_CONFIG)
    wanted["metadata"]["resourceVersion"] = "42"
    assert (replace.method, replace.body) == ("PUT", wanted)


def test_any_other_refusal_of_the_webhook_configuration_is_raised(
    fake_api: FakeApiServer, fake_api_client: KubeApi
) -> None:
    """The reconcile loop says it in one line and tries again (reconciling.py)."""
    fake_api.status, fake_api.answer = 403, {"kind": "Status", "message": "no, because"}
    with pytest.raises(ApiError) as refused:
        Writer(fake_api_client).apply_webhook(plan(), CLIENT_CONFIG)
    assert api_failure(refused.value) == "HTTP 403 Forbidden"  # the line, not the answer
