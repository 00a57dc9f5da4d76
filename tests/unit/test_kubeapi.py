"""The API client (cloudtaser/kubeapi.py) against a real HTTPS server on loopback with a CA of
its own: the kubeconfig's credentials are used as kubectl uses them, TLS is verified, and
errors keep their status and body. (Against the real API server: the kernel and e2e tests of
the agent's node watching, tests/kernel/test_pod_policies.py, tests/e2e/test_operator.py.)"""

from __future__ import annotations

import base64
import http.server
import json
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cloudtaser.errors import PermanentError, TemporaryError
from cloudtaser.kubeapi import KubeApi, PermanentApiError, TemporaryApiError
from cloudtaser.testbed.certificates import CertificateAuthority, Pair


class Server:
    """HTTPS on 127.0.0.1 requiring a client certificate of ``ca`` or none (``mtls``); answers
    ``status`` with ``answer`` (or the next of ``pages``), records each request (method, path,
    headers, body)."""

    def __init__(self, ca: CertificateAuthority, pair: Pair, mtls: bool) -> None:
        self.requests: list[tuple[str, str, dict[str, str], Any]] = []
        self.status, self.answer = 200, {"kind": "Status"}
        self.pages: list[dict[str, Any]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                server.requests.append((self.command, self.path, dict(self.headers), body))
                data = json.dumps(server.pages.pop(0) if server.pages else server.answer)
                data = data.encode()
                self.send_response(server.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = _any

            def log_message(self, *_: Any) -> None:
                pass

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(pair.cert), str(pair.key))
        if mtls:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(str(ca.pair.cert))
        self.http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.http.socket = context.wrap_socket(self.http.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority(tmp_path / "pki")


@pytest.fixture
def server(ca: CertificateAuthority) -> Iterator[Server]:
    pair = ca.issue("server", "apiserver", hosts=("127.0.0.1",), server=True)
    running = Server(ca, pair, mtls=True)
    yield running
    running.http.shutdown()
    running.http.server_close()


def kubeconfig(directory: Path, server: str, cluster: dict[str, Any], user: dict[str, Any]) -> str:
    path = directory / "kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": server, **cluster}}],
                "users": [{"name": "u", "user": user}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    return str(path)


def test_client_certificate_as_data_and_ca_as_a_relative_file(
    tmp_path: Path, ca: CertificateAuthority, server: Server
) -> None:
    client = ca.issue("admin", "admin", client=True)
    config = kubeconfig(
        tmp_path,
        server.url,
        {"certificate-authority": "pki/ca.crt"},  # relative to the kubeconfig's directory
        {
            "client-certificate-data": base64.b64encode(client.cert.read_bytes()).decode(),
            "client-key-data": base64.b64encode(client.key.read_bytes()).decode(),
        },
    )
    api = KubeApi.from_kubeconfig(config)
    server.answer = {"items": [{"metadata": {"name": "a"}}]}
    assert api.get("/api/v1/pods", {"fieldSelector": "spec.nodeName=n 1"}) == server.answer
    api.patch("/api/v1/nodes/n1", {"metadata": {"labels": {"k": None}}})
    (get, path, headers, _), (patch, _, patch_headers, body) = server.requests
    assert (get, path) == ("GET", "/api/v1/pods?fieldSelector=spec.nodeName%3Dn+1")
    assert "Authorization" not in headers  # the certificate is the credential
    assert patch == "PATCH" and body == {"metadata": {"labels": {"k": None}}}
    # what the kubernetes client sent for a dict body on built-in kinds
    assert patch_headers["Content-Type"] == "application/strategic-merge-patch+json"


def test_a_token_file_is_read_again_for_every_request(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    pair = ca.issue("server", "apiserver", hosts=("127.0.0.1",), server=True)
    server = Server(ca, pair, mtls=False)
    token = tmp_path / "token"
    token.write_text("first\n")
    api = KubeApi.from_kubeconfig(
        kubeconfig(
            tmp_path,
            server.url,
            {"certificate-authority-data": base64.b64encode(ca.pair.cert.read_bytes()).decode()},
            {"tokenFile": "token"},
        )
    )
    api.get("/api/v1/namespaces/a")
    token.write_text("rotated\n")  # the kubelet renews a projected token
    api.post("/api/v1/namespaces/a/events", {"count": 1})
    assert [r[2]["Authorization"] for r in server.requests] == ["Bearer first", "Bearer rotated"]
    assert server.requests[1][2]["Content-Type"] == "application/json"
    server.http.shutdown()
    server.http.server_close()


def test_a_server_of_another_ca_is_refused(tmp_path: Path, server: Server) -> None:
    other = CertificateAuthority(tmp_path / "other")
    api = KubeApi.from_kubeconfig(
        kubeconfig(tmp_path, server.url, {"certificate-authority": str(other.pair.cert)}, {})
    )
    with pytest.raises(PermanentError, match="TLS with the API server failed") as refused:
        api.get("/api/v1/pods")
    assert "CERTIFICATE_VERIFY_FAILED" in str(refused.value)
    assert server.requests == []


def certificate_client(tmp_path: Path, ca: CertificateAuthority, server: Server) -> KubeApi:
    """A client of ``server`` from a kubeconfig naming the CA and a client certificate as
    files."""
    client = ca.issue("admin", "admin", client=True)
    return KubeApi.from_kubeconfig(
        kubeconfig(
            tmp_path,
            server.url,
            {"certificate-authority": str(ca.pair.cert)},
            {"client-certificate": str(client.cert), "client-key": str(client.key)},
        )
    )


def test_error_statuses_keep_status_and_body_and_say_whether_to_retry(
    tmp_path: Path, ca: CertificateAuthority, server: Server
) -> None:
    api = certificate_client(tmp_path, ca, server)
    server.status, server.answer = 404, {"kind": "Status", "message": 'nodes "n1" not found'}
    with pytest.raises(PermanentApiError) as missing:
        api.get("/api/v1/nodes/n1")
    assert missing.value.status == 404 and 'nodes \\"n1\\" not found' in missing.value.body
    server.status = 503
    with pytest.raises(TemporaryApiError) as busy:
        api.get("/api/v1/nodes/n1")
    assert busy.value.status == 503


def test_nothing_listens_is_temporary(tmp_path: Path, ca: CertificateAuthority) -> None:
    api = KubeApi("https://127.0.0.1:1", ssl.create_default_context(cafile=str(ca.pair.cert)))
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
    tmp_path: Path, ca: CertificateAuthority, server: Server
) -> None:
    api = certificate_client(tmp_path, ca, server)
    server.pages = [
        {"items": [{"n": 1}, {"n": 2}], "metadata": {"continue": "next/1"}},
        {"items": [{"n": 3}], "metadata": {}},
    ]
    items = api.items("/apis/g/v1/namespaces/a/things", {"fieldSelector": "x=y"}, page=2)
    assert next(items) == {"n": 1}
    assert len(server.requests) == 1  # the second page only when the first is used up
    assert list(items) == [{"n": 2}, {"n": 3}]
    assert [r[1] for r in server.requests] == [
        "/apis/g/v1/namespaces/a/things?fieldSelector=x%3Dy&limit=2",
        "/apis/g/v1/namespaces/a/things?fieldSelector=x%3Dy&limit=2&continue=next%2F1",
    ]
