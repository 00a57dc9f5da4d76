"""The webhook's decision, in-process: every outcome and every kind of malformed input."""

from __future__ import annotations

import base64
import json
import logging
import random
from typing import Any

import jsonpatch
import pytest

from cloudtaser import logs
from cloudtaser.engine.compiler import ClusterState, IncrementalCompiler
from cloudtaser.engine.plans import INJECTED_ANNOTATION, InjectorSettings
from cloudtaser.engine.resources import SecretBinding
from cloudtaser.injector.admitting import admit
from tests.harness.documents import binding_doc, json_paths, pod_doc

SETTINGS = InjectorSettings()
COMPILER = IncrementalCompiler(
    ClusterState(bindings=[SecretBinding.model_validate(binding_doc("app"))])
)


def review(pod: dict[str, Any], operation: str = "CREATE") -> dict[str, Any]:
    namespace = pod["metadata"].pop("namespace", "team")
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "abc-123",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "operation": operation,
            "namespace": namespace,
            "object": pod,
        },
    }


def decide(body: dict[str, Any] | bytes) -> tuple[int, dict[str, Any]]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    answer = admit(raw, COMPILER, SETTINGS)
    return answer.status, answer.body


def test_selected_pod_is_patched_and_the_patch_applies() -> None:
    pod = pod_doc(labels={"app": "app"})
    status, body = decide(review(json.loads(json.dumps(pod))))
    response = body["response"]
    assert status == 200 and response["uid"] == "abc-123" and response["allowed"] is True
    assert response["patchType"] == "JSONPatch"
    patched = jsonpatch.apply_patch(pod, json.loads(base64.b64decode(response["patch"])))
    assert patched["spec"]["containers"][0]["command"][:2] == ["/cloudtaser/wrapper", "--"]
    assert INJECTED_ANNOTATION in patched["metadata"]["annotations"]
    # re-invocation (reinvocationPolicy: IfNeeded) or re-submission: nothing more to do
    status, body = decide(review(patched))
    assert status == 200 and body["response"] == {"uid": "abc-123", "allowed": True}


@pytest.mark.parametrize(
    "pod",
    [
        pod_doc(labels={"app": "other"}),
        pod_doc(labels={"app": "app"}, inject=False),
        pod_doc(namespace="elsewhere", labels={"app": "app"}),
    ],
)
def test_pods_no_binding_selects_pass_unchanged(pod: dict[str, Any]) -> None:
    assert decide(review(pod)) == (
        200,
        {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "response": {"uid": "abc-123", "allowed": True},
        },
    )


def test_updates_are_not_touched() -> None:
    status, body = decide(review(pod_doc(labels={"app": "app"}), operation="UPDATE"))
    assert body["response"] == {"uid": "abc-123", "allowed": True}


def test_unresolvable_entrypoint_denies_with_the_fix() -> None:
    pod = pod_doc(labels={"app": "app"}, containers=[{"name": "app", "image": "nginx"}])
    status, body = decide(review(pod))
    response = body["response"]
    assert status == 200 and response["allowed"] is False and response["status"]["code"] == 403
    assert "container 'app' has no command" in response["status"]["message"]
    assert "set spec.containers[].command" in response["status"]["message"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "not JSON"),
        (b"{", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[]", "not an AdmissionReview"),
        (
            b'{"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1beta1"}',
            "only admission.k8s.io/v1",
        ),
        (b'{"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1"}', "no request.uid"),
        (
            b'{"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1", "request": '
            b'{"uid": "u", "operation": "CREATE", "kind": {"kind": "Pod"}}}',
            "no request.object",
        ),
    ],
)
def test_malformed_reviews_get_400_with_a_message(body: bytes, message: str) -> None:
    status, answer = decide(body)
    assert status == 400 and message in answer["error"]


def test_invalid_pod_object_is_denied_naming_the_field() -> None:
    pod = pod_doc(labels={"app": "app"})
    pod["spec"]["containers"] = "nope"
    status, body = decide(review(pod))
    assert status == 200 and body["response"]["allowed"] is False
    assert body["response"]["status"]["message"].startswith("spec.containers:")


def test_truncated_and_mutated_reviews_never_raise() -> None:
    rng = random.Random(5)
    valid = json.dumps(review(pod_doc(labels={"app": "app"}))).encode()
    for _ in range(2000):
        cut = valid[: rng.randrange(len(valid))]
        noisy = bytearray(valid)
        for _ in range(rng.randrange(1, 4)):
            noisy[rng.randrange(len(noisy))] = rng.randrange(256)
        for body in (cut, bytes(noisy)):
            status, answer = decide(body)
            assert status in (200, 400)
            assert "Traceback" not in json.dumps(answer)


def test_any_field_of_any_type_never_raises() -> None:
    valid = review(pod_doc(labels={"app": "app"}))
    for path in json_paths(valid)[1:]:
        for replacement in (None, 5, "x", [], {}, True):
            broken = json.loads(json.dumps(valid))
            node = broken
            for part in path[:-1]:
                node = node[part]
            node[path[-1]] = replacement
            status, answer = decide(broken)
            assert status in (200, 400), (path, replacement)


def test_entrypoint_comes_from_the_resolver_or_the_pod_is_denied_with_its_reason() -> None:
    from cloudtaser.engine.patches import ImageEntrypoint
    from cloudtaser.injector.resolving import PermanentResolveError

    pod = pod_doc(
        labels={"app": "app"}, containers=[{"name": "app", "image": "registry.test/app:1"}]
    )
    images: list[str] = []

    def resolve(image: str) -> ImageEntrypoint:
        images.append(image)
        return ImageEntrypoint(entrypoint=["/entry"], cmd=["serve"])

    answer = admit(
        json.dumps(review(json.loads(json.dumps(pod)))).encode(),
        COMPILER,
        SETTINGS,
        resolve=resolve,
    )
    patched = jsonpatch.apply_patch(
        pod, json.loads(base64.b64decode(answer.body["response"]["patch"]))
    )
    assert images == ["registry.test/app:1"]
    assert patched["spec"]["containers"][0]["command"] == ["/cloudtaser/wrapper", "--", "/entry"]
    assert patched["spec"]["containers"][0]["args"] == ["serve"]

    def unreachable(image: str) -> ImageEntrypoint:
        raise PermanentResolveError(image, "manifest unknown (HTTP 404)")

    answer = admit(json.dumps(review(pod)).encode(), COMPILER, SETTINGS, resolve=unreachable)
    assert answer.body["response"]["allowed"] is False
    assert answer.body["response"]["status"]["message"] == (
        "cloudtaser: spec.containers[0]: could not resolve the entrypoint of registry.test/app:1: "
        "manifest unknown (HTTP 404); set command so the wrapper knows what to start"
    )


def test_info_logs_one_line_per_decision_that_changed_something(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An injected or refused pod: one INFO line with names and reasons; a pod passed unchanged:
    DEBUG only. No line holds an env value the pod spec carried."""
    planted = "plaintext-" + "x" * 20
    pod = pod_doc(labels={"app": "app"})
    pod["spec"]["containers"][0]["env"] = [{"name": "OTHER", "value": planted}]
    refused = pod_doc(labels={"app": "app"}, containers=[{"name": "app", "image": "nginx"}])
    with caplog.at_level(logging.DEBUG, logger="cloudtaser.injector"):
        decide(review(json.loads(json.dumps(pod))))
        decide(review(refused))
        decide(review(pod_doc(labels={"app": "other"})))
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert len(info) == 2, info
    assert info[0].startswith("pod team/") and ": injected into app (bindings team/app; " in info[0]
    assert ": refused: spec.containers[0]: container 'app' has no command" in info[1]
    assert len(debug) == 1 and "no binding selects it; admitted unchanged" in debug[0]
    assert planted not in caplog.text


def test_json_log_lines_are_one_object_each(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("json", "info")
    try:
        logging.getLogger("cloudtaser.injector").info("pod %s/%s: injected", "team", "web")
        try:
            raise ValueError("bad")
        except ValueError:
            logging.getLogger("cloudtaser.operator").exception("reconcile failed")
    finally:
        logs.configure("text", "info")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(d["level"], d["logger"], d["message"]) for d in lines] == [
        ("info", "cloudtaser.injector", "pod team/web: injected"),
        ("error", "cloudtaser.operator", "reconcile failed"),
    ]
    assert lines[1]["error"] == "ValueError: bad" and "Traceback" not in json.dumps(lines)
    with pytest.raises(ValueError, match="log format must be one of text, json"):
        logs.configure("yaml")
