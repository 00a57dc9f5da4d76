"""A fake Kubernetes API server over HTTPS on loopback, for the unit tests of what talks to the
API through cloudtaser/kubeapi.py (the client itself, the operator's reads and writes): real
TLS with a CA of the test's own, every request recorded, answers set by the test.

Only the wire (paths, methods, bodies, content types, statuses) is faked; what the real API
server makes of them is the e2e tests' job (tests/e2e). A pytest plugin (tests/conftest.py
loads it): ``api_ca``, ``fake_api`` (the server, client certificates required) and
``fake_api_client`` (a KubeApi of it with such a certificate)."""

from __future__ import annotations

import contextlib
import http.server
import json
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import yaml

from cloudtaser.kubeapi import KubeApi
from cloudtaser.testbed.certificates import CertificateAuthority


class Request(NamedTuple):
    method: str
    path: str  # with the query
    headers: dict[str, str]
    body: Any  # parsed JSON, or None


# (method, path with query, parsed body) -> (status, JSON answer)
Handler = Callable[[str, str, Any], tuple[int, Any]]


class FakeApiServer:
    """HTTPS on 127.0.0.1 requiring a client certificate of ``ca`` (``mtls``) or none.

    Answers ``handler``'s (status, answer) when a test sets one; else ``status`` with the next
    of ``pages`` or ``answer``. ``delay`` (seconds) is waited before answering. Every request
    is recorded in ``requests``."""

    def __init__(self, ca: CertificateAuthority, mtls: bool = True) -> None:
        self.requests: list[Request] = []
        self.status, self.answer = 200, {"kind": "Status"}
        self.pages: list[dict[str, Any]] = []
        self.handler: Handler | None = None
        self.delay = 0.0
        self.reason: str | None = None  # the status line's phrase (None: the standard one)
        server = self

        class Answer(http.server.BaseHTTPRequestHandler):
            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                server.requests.append(Request(self.command, self.path, dict(self.headers), body))
                time.sleep(server.delay)
                status, answer = server._answer(self.command, self.path, body)
                data = json.dumps(answer).encode()
                self.send_response(status, server.reason)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _any

            def log_message(self, *_: Any) -> None:
                pass

        pair = ca.issue("server", "apiserver", hosts=("127.0.0.1",), server=True)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(pair.cert), str(pair.key))
        if mtls:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(str(ca.pair.cert))
        self.http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer)
        self.http.daemon_threads = True
        self.http.socket = context.wrap_socket(self.http.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def _answer(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        if self.handler is not None:
            return self.handler(method, path, body)
        return self.status, self.pages.pop(0) if self.pages else self.answer

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


@contextlib.contextmanager
def fake_api_server(ca: CertificateAuthority, mtls: bool = True) -> Iterator[FakeApiServer]:
    running = FakeApiServer(ca, mtls)
    try:
        yield running
    finally:
        running.close()


def kubeconfig(directory: Path, server: str, cluster: dict[str, Any], user: dict[str, Any]) -> str:
    """A kubeconfig file in ``directory`` whose current context is ``server`` with the
    ``cluster`` and ``user`` sections given; its path."""
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


def certificate_client(directory: Path, ca: CertificateAuthority, server: FakeApiServer) -> KubeApi:
    """A client of ``server`` from a kubeconfig naming the CA and a client certificate of
    ``ca`` as files."""
    client = ca.issue("admin", "admin", client=True)
    return KubeApi.from_kubeconfig(
        kubeconfig(
            directory,
            server.url,
            {"certificate-authority": str(ca.pair.cert)},
            {"client-certificate": str(client.cert), "client-key": str(client.key)},
        )
    )


@pytest.fixture
def api_ca(tmp_path: Path) -> CertificateAuthority:
    """The CA of the fake API server's certificate and of its clients'."""
    return CertificateAuthority(tmp_path / "pki")


@pytest.fixture
def fake_api(api_ca: CertificateAuthority) -> Iterator[FakeApiServer]:
    with fake_api_server(api_ca, mtls=True) as running:
        yield running


@pytest.fixture
def fake_api_client(
    tmp_path: Path, api_ca: CertificateAuthority, fake_api: FakeApiServer
) -> KubeApi:
    return certificate_client(tmp_path, api_ca, fake_api)
