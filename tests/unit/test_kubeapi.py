"""The API client (cloudtaser/kubeapi.py) against a real HTTPS server on loopback with a CA of
its own: the kubeconfig's credentials are used as kubectl uses them, TLS is verified, and
errors keep their status and body. (Against the real API server: the kernel and e2e tests of
the agent's node watching, tests/kernel/test_pod_policies.py, tests/e2e/test_operator.py.)"""

from __future__ import annotations

import base64
import ssl
import time
from pathlib import Path
from typing import Any

import pytest

from cloudtaser.errors import PermanentError, TemporaryError
from cloudtaser.kubeapi import MERGE_PATCH, KubeApi, PermanentApiError, TemporaryApiError, path
from cloudtaser.testbed.certificates import CertificateAuthority
from tests.harness.fake_apiserver import (
    FakeApiServer,
    certificate_client,
    fake_api_server,
    kubeconfig,
)


def test_client_certificate_as_data_and_ca_as_a_relative_file(
    tmp_path: Path, api_ca: CertificateAuthority, fake_api: FakeApiServer
) -> None:
    client = api_ca.issue("admin", "admin", client=True)
    config = kubeconfig(
        tmp_path,
        fake_api.url,
        {"certificate-authority": "pki/ca.crt"},  # relative to the kubeconfig's directory
        {
            "client-certificate-data": base64.b64encode(client.cert.read_bytes()).decode(),
            "client-key-data": base64.b64encode(client.key.read_bytes()).decode(),
        },
    )
    api = KubeApi.from_kubeconfig(config)
    fake_api.answer = {"items": [{"metadata": {"name": "a"}}]}
    assert api.get("/api/v1/pods", {"fieldSelector": "spec.nodeName=n 1"}) == fake_api.answer
    api.patch("/api/v1/nodes/n1", {"metadata": {"labels": {"k": None}}})
    (get, path, headers, _), (patch, _, patch_headers, body) = fake_api.requests
    assert (get, path) == ("GET", "/api/v1/pods?fieldSelector=spec.nodeName%3Dn+1")
    assert "Authorization" not in headers  # the certificate is the credential
    assert patch == "PATCH" and body == {"metadata": {"labels": {"k": None}}}
    # what the kubernetes client sent for a dict body on built-in kinds
    assert patch_headers["Content-Type"] == "application/strategic-merge-patch+json"


def test_a_token_file_is_read_again_for_every_request(
    tmp_path: Path, api_ca: CertificateAuthority
) -> None:
    token = tmp_path / "token"
    token.write_text("first\n")
    with fake_api_server(api_ca, mtls=False) as server:
        api = KubeApi.from_kubeconfig(
            kubeconfig(
                tmp_path,
                server.url,
                {
                    "certificate-authority-data": base64.b64encode(
                        api_ca.pair.cert.read_bytes()
                    ).decode()
                },
                {"tokenFile": "token"},
            )
        )
        api.get("/api/v1/namespaces/a")
        token.write_text("rotated\n")  # the kubelet renews a projected token
        api.post("/api/v1/namespaces/a/events", {"count": 1})
    assert [r.headers["Authorization"] for r in server.requests] == [
        "Bearer first",
        "Bearer rotated",
    ]
    assert server.requests[1].headers["Content-Type"] == "application/json"


def test_a_server_of_another_ca_is_refused(tmp_path: Path, fake_api: FakeApiServer) -> None:
    other = CertificateAuthority(tmp_path / "other")
    api = KubeApi.from_kubeconfig(
        kubeconfig(tmp_path, fake_api.url, {"certificate-authority": str(other.pair.cert)}, {})
    )
    with pytest.raises(PermanentError, match="TLS with the API server failed") as refused:
        api.get("/api/v1/pods")
    assert "CERTIFICATE_VERIFY_FAILED" in str(refused.value)
    assert fake_api.requests == []


def test_error_statuses_keep_status_and_body_and_say_whether_to_retry(
    tmp_path: Path, api_ca: CertificateAuthority, fake_api: FakeApiServer
) -> None:
    api = certificate_client(tmp_path, api_ca, fake_api)
    fake_api.status, fake_api.answer = 404, {"kind": "Status", "message": 'nodes "n1" not found'}
    with pytest.raises(PermanentApiError) as missing:
        api.get("/api/v1/nodes/n1")
    assert missing.value.status == 404 and 'nodes \\"n1\\" not found' in missing.value.body
    fake_api.status = 503
    with pytest.raises(TemporaryApiError) as busy:
        api.get("/api/v1/nodes/n1")
    assert busy.value.status == 503


def test_nothing_listens_is_temporary(tmp_path: Path, api_ca: CertificateAuthority) -> None:
    api = KubeApi("https://127.0.0.1:1", ssl.create_default_context(cafile=str(api_ca.pair.cert)))
    with pytest.raises(TemporaryError, match="API server unreachable"):
        api.get("/api/v1/pods")


@pytest.mark.parametrize(
    ("cluster", "user", "refusal"),
    [
        ({"insecure-skip-tls-verify": True}, {"token": "t"}, "insecure-skip-tls-verify"),
        ({}, {"exec": {"command": "aws"}}, "exec is not supported"),
        ({}, {"username": "a", "password": "b"}, "username is not supported"),
        ({}, {"client-certificate": "c.crt"}, "a certificate needs a key"),
    ],
)
def test_credentials_it_cannot_honour_fully_are_refused(
    tmp_path: Path, cluster: dict[str, Any], user: dict[str, Any], refusal: str
) -> None:
    with pytest.raises(PermanentError, match=refusal):
        KubeApi.from_kubeconfig(kubeconfig(tmp_path, "https://127.0.0.1:1", cluster, user))


def test_plain_http_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PermanentError, match="must be https"):
        KubeApi.from_kubeconfig(kubeconfig(tmp_path, "http://127.0.0.1:8080", {}, {}))


def test_a_list_is_read_a_page_at_a_time(
    tmp_path: Path, api_ca: CertificateAuthority, fake_api: FakeApiServer
) -> None:
    api = certificate_client(tmp_path, api_ca, fake_api)
    fake_api.pages = [
        {"items": [{"n": 1}, {"n": 2}], "metadata": {"continue": "next/1"}},
        {"items": [{"n": 3}], "metadata": {}},
    ]
    items = api.items("/apis/g/v1/namespaces/a/things", {"fieldSelector": "x=y"}, page=2)
    assert next(items) == {"n": 1}
    assert len(fake_api.requests) == 1  # the second page only when the first is used up
    assert list(items) == [{"n": 2}, {"n": 3}]
    assert [r.path for r in fake_api.requests] == [
        "/apis/g/v1/namespaces/a/things?fieldSelector=x%3Dy&limit=2",
        "/apis/g/v1/namespaces/a/things?fieldSelector=x%3Dy&limit=2&continue=next%2F1",
    ]


def test_pages_hand_out_each_answer_s_items_as_one_list(
    tmp_path: Path, api_ca: CertificateAuthority, fake_api: FakeApiServer
) -> None:
    api = certificate_client(tmp_path, api_ca, fake_api)
    fake_api.pages = [
        {"items": [{"n": 1}, {"n": 2}], "metadata": {"continue": "c"}},
        {"items": None, "metadata": {"continue": "d"}},  # the API server may say null
        {"items": [{"n": 3}], "metadata": {"continue": ""}},
    ]
    assert list(api.pages("/api/v1/pods", page=2)) == [[{"n": 1}, {"n": 2}], [], [{"n": 3}]]
    assert [r.path for r in fake_api.requests] == [
        "/api/v1/pods?limit=2",
        "/api/v1/pods?limit=2&continue=c",
        "/api/v1/pods?limit=2&continue=d",
    ]


def test_replace_and_merge_patch_send_what_the_api_server_expects(
    tmp_path: Path, api_ca: CertificateAuthority, fake_api: FakeApiServer
) -> None:
    """PUT for a replace (its resourceVersion makes it conditional); a merge patch, the one
    patch a custom resource's status takes."""
    api = certificate_client(tmp_path, api_ca, fake_api)
    lease = {"metadata": {"name": "l", "resourceVersion": "7"}, "spec": {}}
    api.put("/apis/coordination.k8s.io/v1/namespaces/a/leases/l", lease)
    api.patch("/apis/g/v1/namespaces/a/things/t/status", {"status": {"x": 1}}, MERGE_PATCH)
    (put, patch) = fake_api.requests
    assert (put.method, put.body, put.headers["Content-Type"]) == (
        "PUT",
        lease,
        "application/json",
    )
    assert (patch.method, patch.path, patch.headers["Content-Type"]) == (
        "PATCH",
        "/apis/g/v1/namespaces/a/things/t/status",
        "application/merge-patch+json",
    )


def test_a_caller_s_timeout_bounds_the_wait_for_an_answer(
    tmp_path: Path, api_ca: CertificateAuthority, fake_api: FakeApiServer
) -> None:
    api = certificate_client(tmp_path, api_ca, fake_api)
    fake_api.delay = 1.0
    started = time.monotonic()
    with pytest.raises(TemporaryError, match="API server unreachable: ReadTimeoutError"):
        api.get("/apis/coordination.k8s.io/v1/namespaces/a/leases/l", timeout=0.2)
    assert time.monotonic() - started < 0.9


def test_an_error_says_its_status_line_and_nothing_of_what_was_answered(
    tmp_path: Path, api_ca: CertificateAuthority, fake_api: FakeApiServer
) -> None:
    """The operator reads Secrets: an error's text is the status line, never a body."""
    api = certificate_client(tmp_path, api_ca, fake_api)
    fake_api.status, fake_api.answer = 403, {"kind": "Status", "message": "hunter2"}
    with pytest.raises(PermanentApiError) as forbidden:
        api.get("/api/v1/namespaces/a/secrets/pull")
    assert str(forbidden.value) == "HTTP 403 Forbidden"


def test_an_error_s_reason_is_the_standard_phrase_not_the_server_s(
    tmp_path: Path, api_ca: CertificateAuthority, fake_api: FakeApiServer
) -> None:
    """A server or proxy that echoes what it was sent in its reason phrase (the bearer token)
    does not get it into our error's text, and so into a log line."""
    api = certificate_client(tmp_path, api_ca, fake_api)
    fake_api.status, fake_api.reason = 418, "I am Bearer SUPERSECRET-TOKEN"
    with pytest.raises(PermanentApiError) as teapot:
        api.get("/api/v1/namespaces/a/secrets/pull")
    assert str(teapot.value) == "HTTP 418 I'm a Teapot" and teapot.value.reason == "I'm a Teapot"


def test_a_redirect_is_an_error_not_an_answer(
    tmp_path: Path, api_ca: CertificateAuthority, fake_api: FakeApiServer
) -> None:
    """Redirects are not followed (the token would go along), and a 3xx's body is not the list
    asked for: an empty list read from it would drop every object."""
    api = certificate_client(tmp_path, api_ca, fake_api)
    fake_api.status, fake_api.answer = 302, {"kind": "List", "items": []}
    with pytest.raises(PermanentApiError, match="HTTP 302 Found"):
        api.get("/apis/cloudtaser.io/v1alpha1/secretbindings")
    assert len(fake_api.requests) == 1


@pytest.mark.parametrize("name", ["", ".", ".."])
def test_a_path_refuses_segments_that_would_name_another_object(name: str) -> None:
    with pytest.raises(PermanentError, match="not an API object name"):
        path("api", "v1", "namespaces", "team", "secrets", name)
    assert path("api", "v1", "namespaces", "team", "secrets", "a.b..c") == (
        "/api/v1/namespaces/team/secrets/a.b..c"
    )
