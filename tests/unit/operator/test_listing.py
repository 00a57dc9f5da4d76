"""The operator's reads (operator/cloudtaser/operator/listing.py) through its API client against
a fake API server over HTTPS: lists a page at a time as raw JSON, the agents' node reports, and
image pull Secrets read by name with nothing of their content in any log line. (Against the
real API server: tests/e2e/test_operator.py, tests/e2e/test_registry.py.)"""

from __future__ import annotations

import base64
import json
import logging
import ssl
from typing import Any

import pytest

from cloudtaser.engine import reports
from cloudtaser.errors import TemporaryError
from cloudtaser.kubeapi import KubeApi
from cloudtaser.operator.listing import list_pages, list_reports, read_pull_secrets
from cloudtaser.testbed.certificates import CertificateAuthority
from tests.harness.fake_apiserver import FakeApiServer

PASSWORD = "s3cr3t-pull-password"


def answer_from(table: dict[str, tuple[int, Any]]) -> Any:
    """A handler answering GETs by path (without the query); 404 for any other path."""

    def handler(method: str, path: str, body: Any) -> tuple[int, Any]:
        assert method == "GET"
        return table.get(path.split("?")[0], (404, {"kind": "Status", "code": 404}))

    return handler


def test_every_kind_is_listed_a_page_at_a_time_as_raw_json(
    fake_api: FakeApiServer, fake_api_client: KubeApi
) -> None:
    def handler(method: str, path: str, body: Any) -> tuple[int, Any]:
        if path == "/apis/cloudtaser.io/v1alpha1/secretbindings?limit=500":
            return 200, {"items": [{"metadata": {"name": "a"}}], "metadata": {"continue": "x"}}
        if path == "/apis/cloudtaser.io/v1alpha1/secretbindings?limit=500&continue=x":
            return 200, {"items": [{"metadata": {"name": "b"}}], "metadata": {}}
        return 200, {"items": [], "metadata": {}}

    fake_api.handler = handler
    pages = list(list_pages(fake_api_client))
    assert pages == [
        ("SecretBinding", [{"metadata": {"name": "a"}}]),
        ("SecretBinding", [{"metadata": {"name": "b"}}]),
        ("EnforcementPolicy", []),
        ("Pod", []),
        ("Namespace", []),
    ]
    assert [r.path for r in fake_api.requests][2:] == [
        "/apis/cloudtaser.io/v1alpha1/enforcementpolicies?limit=500",
        "/api/v1/pods?limit=500",
        "/api/v1/namespaces?limit=500",
    ]


def test_node_reports_are_the_labelled_leases_of_the_operator_s_namespace(
    fake_api: FakeApiServer, fake_api_client: KubeApi
) -> None:
    lease = reports.encode(
        reports.Report(node="n1", policies=["strict"], violations={"strict": 2}),
        "cloudtaser-system",
    )
    fake_api.handler = answer_from(
        {
            "/apis/coordination.k8s.io/v1/namespaces/cloudtaser-system/leases": (
                200,
                {"items": [json.loads(json.dumps(lease))], "metadata": {}},
            )
        }
    )
    (found,) = list_reports(fake_api_client, "cloudtaser-system")
    assert (found.node, found.policies, found.violations) == ("n1", ["strict"], {"strict": 2})
    (request,) = fake_api.requests
    assert "labelSelector=" in request.path


def pull_secret(kind: str, data: dict[str, str]) -> dict[str, Any]:
    return {"kind": "Secret", "type": kind, "data": data}


def encoded(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


def test_pull_secrets_are_read_by_name_and_their_content_is_never_logged(
    fake_api: FakeApiServer, fake_api_client: KubeApi, caplog: pytest.LogCaptureFixture
) -> None:
    auth = encoded(f"robot:{PASSWORD}")
    config = json.dumps({"auths": {"registry.example": {"auth": auth}}})
    fake_api.handler = answer_from(
        {
            "/api/v1/namespaces/team/secrets/good": (
                200,
                pull_secret(
                    "kubernetes.io/dockerconfigjson", {".dockerconfigjson": encoded(config)}
                ),
            ),
            "/api/v1/namespaces/team/secrets/opaque": (
                200,
                pull_secret("Opaque", {"password": encoded(PASSWORD)}),
            ),
            "/api/v1/namespaces/team/secrets/not-base64": (
                200,
                pull_secret(
                    "kubernetes.io/dockerconfigjson", {".dockerconfigjson": "%" + PASSWORD}
                ),
            ),
            "/api/v1/namespaces/team/secrets/not-json": (
                200,
                pull_secret(
                    "kubernetes.io/dockerconfigjson", {".dockerconfigjson": encoded(PASSWORD)}
                ),
            ),
            "/api/v1/namespaces/team/secrets/forbidden": (
                403,
                {"kind": "Status", "code": 403, "message": f"no {PASSWORD}"},
            ),
            "/api/v1/namespaces/team/secrets/deep": (
                200,
                pull_secret(
                    "kubernetes.io/dockerconfigjson",
                    {".dockerconfigjson": encoded("[" * 100_000 + PASSWORD)},
                ),
            ),
            "/api/v1/namespaces/team/secrets/a-list": (200, [PASSWORD]),
        }
    )
    names = ["missing", "forbidden", "opaque", "not-base64", "not-json", "deep", "a-list", "."]
    names += ["good"]
    with caplog.at_level(logging.WARNING, logger="cloudtaser.operator"):
        found = read_pull_secrets(fake_api_client, "team", names)
    assert [(c.username, c.password) for c in found] == [("robot", PASSWORD)]
    # get by name, never a list ("." would have been one)
    assert [r.method for r in fake_api.requests] == ["GET"] * (len(names) - 1)
    assert all(r.path != "/api/v1/namespaces/team/secrets/" for r in fake_api.requests)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "imagePullSecret team/missing not read: HTTP 404",
        "imagePullSecret team/forbidden not read: HTTP 403",
        "imagePullSecret team/opaque: type Opaque has no registry credentials",
        "imagePullSecret team/not-base64: data is not base64",
        "imagePullSecret team/not-json: image pull secret: .dockerconfigjson is not JSON",
        "imagePullSecret team/deep: image pull secret: .dockerconfigjson is not JSON",
        "imagePullSecret team/a-list not read: the answer is not an object",
        "imagePullSecret '.' not read: not an API object name: '.'",
    ]
    for line in lines:
        assert PASSWORD not in line and encoded(PASSWORD) not in line


def test_an_unreachable_api_server_fails_the_read(api_ca: CertificateAuthority) -> None:
    """Not a skipped Secret (as one the API server refuses is): the webhook's request fails,
    and the API server's failure policy decides, rather than denying the pod as if it named
    no credentials."""
    api = KubeApi("https://127.0.0.1:1", ssl.create_default_context(cafile=str(api_ca.pair.cert)))
    with pytest.raises(TemporaryError, match="API server unreachable"):
        read_pull_secrets(api, "team", ["good"])
