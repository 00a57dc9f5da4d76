"""Which failures the wrapper retries and which it reports at once, and what the line says.

The errors are OpenBao's own answers, copied from a dev OpenBao 2.4 server whose
kubernetes_host pointed at a dead port (see fetching._login_forbidden); the retry tests run
the real fetch_all (hvac, requests, tenacity) against a scripted HTTP server.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import hvac.exceptions
import pytest
import requests

from cloudtaser.engine.plans import WrapperConfig
from cloudtaser.wrapper import fetching

WHERE = "binding ns/b: login to https://bao:8200 (role r)"
# Verbatim from the dev server (the host is the dead kubernetes_host).
NAMESPACE_UNREACHABLE = ('namespace not authorized err=Get "https://127.0.0.1:1/api/v1/namespaces/'
                         'cloudtaser-demo": dial tcp 127.0.0.1:1: connect: connection refused')
NAMESPACE_RBAC = ('namespace not authorized err=failed to get namespace (code 403 status namespaces '
                  '"cloudtaser-demo" is forbidden: User "system:serviceaccount:cloudtaser-system:'
                  'openbao-token-reviewer" cannot get resource "namespaces" in API group "" in the '
                  'namespace "cloudtaser-demo")')


def forbidden(*errors: str) -> hvac.exceptions.Forbidden:
    return hvac.exceptions.Forbidden(errors=list(errors), method="post", url="https://bao:8200/v1/x")


LOGIN_403 = {
    # TokenReview failed: bad token, or the API server unreachable — OpenBao says only this.
    "review-failed-or-api-down": (forbidden("permission denied"), fetching.FetchError,
                                  "permission denied (the token was refused; OpenBao answers the "
                                  "same when it cannot reach the Kubernetes API"),
    "namespace-selector-api-down": (forbidden(NAMESPACE_UNREACHABLE), fetching.TransientFetchError,
                                    "could not reach the Kubernetes API to check the role's "
                                    "namespace selector"),
    "namespace-selector-rbac": (forbidden(NAMESPACE_RBAC), fetching.FetchError,
                                "can its token reviewer read namespaces?"),
    "expired-token": (forbidden("invalid expiration time (exp) claim: token is expired"),
                      fetching.FetchError, "(the service-account token has expired)"),
    "wrong-service-account": (forbidden("service account name not authorized"), fetching.FetchError,
                              "is not bound to the role"),
}


@pytest.mark.parametrize("case", sorted(LOGIN_403))
def test_login_403_is_explained_and_only_an_outage_is_retried(case: str) -> None:
    error, kind, phrase = LOGIN_403[case]
    result = fetching._classify(error, WHERE, login=True)
    assert type(result) is kind
    assert str(result).startswith(f"{WHERE}: permission denied") and phrase in str(result)
    # The server's text is matched, never echoed (it names hosts, URLs and users).
    for leaked in ("127.0.0.1", "https://", "system:serviceaccount", "dial tcp"):
        assert leaked not in str(result).replace(WHERE, "")


OTHERS = [
    (forbidden("permission denied"), fetching.FetchError, "permission denied"),  # a KV read
    (forbidden(NAMESPACE_UNREACHABLE), fetching.FetchError, "permission denied"),  # not a login
    (hvac.exceptions.InvalidPath(errors=[]), fetching.FetchError, "no secret at this path"),
    (hvac.exceptions.InvalidRequest(errors=["x"]), fetching.FetchError,
     "request refused (HTTP 400; check role and auth mount)"),
    (hvac.exceptions.InternalServerError(errors=["x"]), fetching.TransientFetchError,
     "server unavailable (InternalServerError)"),
    (hvac.exceptions.VaultDown(errors=["Vault is sealed"]), fetching.TransientFetchError,
     "server unavailable (VaultDown)"),
    (hvac.exceptions.BadGateway(errors=["x"]), fetching.TransientFetchError,
     "server unavailable (BadGateway)"),
    (hvac.exceptions.RateLimitExceeded(errors=["x"]), fetching.TransientFetchError,
     "server unavailable (RateLimitExceeded)"),
    (requests.exceptions.ConnectionError("refused"), fetching.TransientFetchError,
     "unreachable (ConnectionError)"),
    (requests.exceptions.ReadTimeout("slow"), fetching.TransientFetchError,
     "unreachable (ReadTimeout)"),
    (requests.exceptions.SSLError("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed"),
     fetching.FetchError, "TLS failure (certificate verify failed)"),
]


@pytest.mark.parametrize(("error", "kind", "text"), OTHERS,
                         ids=[f"{type(e).__name__}-{i}" for i, (e, _, _) in enumerate(OTHERS)])
def test_transient_and_permanent_failures(error: Exception, kind: type, text: str) -> None:
    where = "binding ns/b: secret/p"
    result = fetching._classify(error, where)
    assert type(result) is kind and str(result) == f"{where}: {text}"


# ---- the retry policy, end to end through hvac against a scripted server ------------------

LOGIN_OK = {"auth": {"client_token": "s.test", "accessor": "a", "policies": [],
                     "lease_duration": 60, "renewable": False}}
READ_OK = {"data": {"data": {"a": "value-of-a"},
                    "metadata": {"version": 1, "deletion_time": "", "destroyed": False}}}


class Script:
    """Answers per endpoint ("login", "read"), taken in order; the last one repeats."""

    def __init__(self, login: list[tuple[int, object]], read: list[tuple[int, object]]) -> None:
        self.answers = {"login": login, "read": read}
        self.calls = {"login": 0, "read": 0}

    def next(self, endpoint: str) -> tuple[int, object]:
        answers = self.answers[endpoint]
        answer = answers[min(self.calls[endpoint], len(answers) - 1)]
        self.calls[endpoint] += 1
        return answer


@pytest.fixture
def server() -> Iterator[tuple[ThreadingHTTPServer, list[Script]]]:
    current: list[Script] = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            endpoint = "login" if self.path.endswith("/login") else "read"
            status, body = current[0].next(endpoint)
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = _answer

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd, current
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _config(port: int, tmp_path: Path) -> WrapperConfig:
    for name in ("tls.crt", "tls.key"):
        (tmp_path / name).write_text("unused over plain HTTP\n")
    return WrapperConfig.model_validate({
        "namespace": "ns", "container": "app", "tokenPath": "/t",
        "sources": [{"binding": "ns/b", "address": f"http://127.0.0.1:{port}",
                     "authMount": "kubernetes", "role": "r",
                     "clientCertFile": str(tmp_path / "tls.crt"),
                     "clientKeyFile": str(tmp_path / "tls.key"),
                     "secrets": [{"mount": "secret", "path": "p", "keys": [{"key": "a", "env": "A"}]}]}],
        "agent": {"socket": "/nope", "required": False},
    })


def _fetch(server: tuple[ThreadingHTTPServer, list[Script]], script: Script, tmp_path: Path,
           deadline: float = 20.0) -> tuple[fetching.Fetched | Exception, list[str], float]:
    httpd, current = server
    current[:] = [script]
    logged: list[str] = []
    started = time.monotonic()
    try:
        result: fetching.Fetched | Exception = fetching.fetch_all(
            _config(httpd.server_address[1], tmp_path), "jwt", deadline, logged.append)
    except (fetching.FetchError, fetching.TransientFetchError) as e:
        result = e
    return result, logged, time.monotonic() - started


def test_5xx_is_retried_until_it_succeeds(server: tuple[ThreadingHTTPServer, list[Script]],
                                          tmp_path: Path) -> None:
    script = Script(login=[(503, {"errors": ["Vault is sealed"]}), (500, {"errors": ["boom"]}),
                           (200, LOGIN_OK)],
                    read=[(502, {"errors": ["bad gateway"]}), (200, READ_OK)])
    result, logged, _ = _fetch(server, script, tmp_path)
    assert isinstance(result, fetching.Fetched), result
    assert result.values == {("ns/b", "secret", "p", "a"): bytearray(b"value-of-a")}
    assert result.attempts == 4 and script.calls == {"login": 4, "read": 2}
    assert [line.split(": ")[-1] for line in logged] == [
        "server unavailable (VaultDown)", "server unavailable (InternalServerError)",
        "server unavailable (BadGateway)"]


@pytest.mark.parametrize(("login", "read", "message"), [
    ((403, {"errors": ["permission denied"]}), (200, READ_OK), "permission denied (the token"),
    ((200, LOGIN_OK), (403, {"errors": ["permission denied"]}), "secret/p: permission denied"),
    ((200, LOGIN_OK), (404, {"errors": []}), "secret/p: no secret at this path"),
    ((400, {"errors": ["invalid role name"]}), (200, READ_OK), "request refused (HTTP 400"),
], ids=["login-403", "read-403", "read-404", "login-400"])
def test_permanent_failures_are_not_retried(server: tuple[ThreadingHTTPServer, list[Script]],
                                            tmp_path: Path, login: tuple[int, object],
                                            read: tuple[int, object], message: str) -> None:
    script = Script(login=[login], read=[read])
    result, logged, took = _fetch(server, script, tmp_path)
    assert isinstance(result, fetching.FetchError) and message in str(result)
    assert script.calls["login"] == 1 and logged == [] and took < 5


def test_an_api_server_outage_behind_a_namespace_selector_is_retried_until_the_deadline(
        server: tuple[ThreadingHTTPServer, list[Script]], tmp_path: Path) -> None:
    script = Script(login=[(403, {"errors": [NAMESPACE_UNREACHABLE]})], read=[(200, READ_OK)])
    result, logged, took = _fetch(server, script, tmp_path, deadline=2.0)
    assert isinstance(result, fetching.TransientFetchError), result
    assert script.calls["login"] >= 2 and len(logged) == script.calls["login"] - 1
    assert "could not reach the Kubernetes API" in str(result) and "gave up after" in str(result)
    assert took < 2.0 + fetching.REQUEST_TIMEOUT


def test_an_outage_that_ends_within_the_deadline_is_ridden_out(
        server: tuple[ThreadingHTTPServer, list[Script]], tmp_path: Path) -> None:
    script = Script(login=[(403, {"errors": [NAMESPACE_UNREACHABLE]})] * 2 + [(200, LOGIN_OK)],
                    read=[(200, READ_OK)])
    result, _, _ = _fetch(server, script, tmp_path)
    assert isinstance(result, fetching.Fetched) and result.attempts == 3
