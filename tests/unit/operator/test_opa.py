"""The operator's OPA questions (operator/cloudtaser/operator/opa.py) against a small HTTP
server on loopback that answers as OPA's REST API does and counts what it is asked."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from cloudtaser.operator.opa import Opa


class FakeOpa(ThreadingHTTPServer):
    """GET /v1/policies and /v1/data/system/bundles (the revision check); POST
    /v1/data/cloudtaser/binding/deny (a question: deny when the binding's name starts with
    "bad"). ``checks_fail`` makes the revision check answer 503, as a busy OPA times out."""

    module = "package cloudtaser.binding\n"
    checks_fail = False
    questions = 0


class Handler(BaseHTTPRequestHandler):
    server: FakeOpa

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.server.checks_fail:
            self._answer(503, {"code": "unavailable"})
        elif self.path == "/v1/policies":
            self._answer(200, {"result": [{"id": "binding.rego", "raw": self.server.module}]})
        elif self.path == "/v1/data/system/bundles":
            self._answer(200, {"result": {}})
        else:
            self._answer(404, {})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.questions += 1
        name = body["input"]["metadata"]["name"]
        self._answer(200, {"result": ["named bad"] if name.startswith("bad") else []})


@pytest.fixture
def fake() -> Iterator[FakeOpa]:
    server = FakeOpa(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def binding(name: str) -> bytes:
    return json.dumps({"metadata": {"name": name, "namespace": "ns"}, "spec": {}}).encode()


def test_asked_once_per_spec_and_policy_revision(fake: FakeOpa) -> None:
    opa = Opa(f"http://127.0.0.1:{fake.server_address[1]}")
    revision = opa.revision()
    assert revision is not None
    assert opa.decide("ns/a", binding("a"), "uid/1", revision).allowed is True
    assert opa.decide("ns/bad", binding("bad"), "uid/1", revision).allowed is False
    assert opa.decide("ns/a", binding("a"), "uid/1", opa.revision()).allowed is True
    assert fake.questions == 2  # the same spec under the same policy: not asked again
    opa.decide("ns/a", binding("a"), "uid/2", revision)  # an edited spec
    assert fake.questions == 3
    fake.module = "package cloudtaser.binding\n# changed\n"
    changed = opa.revision()
    assert changed not in (None, revision)
    opa.decide("ns/a", binding("a"), "uid/2", changed)  # a new policy reaches it unedited
    assert fake.questions == 4


def test_what_is_decided_while_the_revision_check_fails_is_not_asked_again(
    fake: FakeOpa,
) -> None:
    """A busy OPA (a start-up asking about 10k bindings) may time out the revision check:
    the bindings decided meanwhile count as decided under the last revision OPA gave, not
    under no revision, so the next round does not ask about all of them again."""
    opa = Opa(f"http://127.0.0.1:{fake.server_address[1]}")
    revision = opa.revision()
    opa.decide("ns/a", binding("a"), "uid/1", revision)
    fake.checks_fail = True
    during = opa.revision()
    assert during == revision  # the last one OPA gave stands in
    for name in ("b", "c", "bad"):
        opa.decide(f"ns/{name}", binding(name), "uid/1", during)
    assert fake.questions == 4
    fake.checks_fail = False
    after = opa.revision()
    assert after == revision
    decisions = {n: opa.decide(f"ns/{n}", binding(n), "uid/1", after) for n in "abc"}
    assert all(d.allowed for d in decisions.values())
    assert fake.questions == 4  # nothing asked again


def test_a_revision_check_that_never_answered_is_none(fake: FakeOpa) -> None:
    fake.checks_fail = True
    assert Opa(f"http://127.0.0.1:{fake.server_address[1]}").revision() is None
    assert Opa(None).revision() is None
