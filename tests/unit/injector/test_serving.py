"""The webhook's HTTPS server on loopback: routes, limits, malformed HTTP, keep-alive and
pipelining (answers in request order), and a rotated certificate reaching new connections."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from cloudtaser.engine.compiler import ClusterState, IncrementalCompiler
from cloudtaser.engine.patches import ImageEntrypoint
from cloudtaser.engine.resources import SecretBinding
from cloudtaser.injector import serving
from cloudtaser.injector.admitting import MAX_BODY
from cloudtaser.testbed.certificates import CertificateAuthority
from tests.harness.documents import binding_doc, pod_doc

COMPILER = IncrementalCompiler(
    ClusterState(bindings=[SecretBinding.model_validate(binding_doc("app"))])
)


def review(uid: str, containers: list[dict[str, Any]] | None = None) -> bytes:
    pod = pod_doc("app-x", "team", labels={"app": "app"}, containers=containers)
    del pod["metadata"]["namespace"]
    return json.dumps(
        {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": uid,
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "operation": "CREATE",
                "namespace": "team",
                "object": pod,
            },
        }
    ).encode()


def post(path: str, body: bytes, extra: str = "") -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    return head.encode() + body


async def answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    status_line, *lines = head.decode().split("\r\n")[:-2]
    headers = {k.lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(status_line.split()[1]), headers, body


_RUNNING: dict[int, serving.Server] = {}  # the server behind each started() holder


def running_connections(holder: serving.Holder) -> set[serving._Connection]:
    return _RUNNING[id(holder)].connections


async def last_answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """An answer after which the server closes the connection: its status and body."""
    status, headers, body = await answer(reader)
    assert headers["connection"] == "close", (status, headers)
    assert await reader.read() == b""  # closed
    return status, body


Connect = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


@contextlib.asynccontextmanager
async def started(tmp: Path) -> AsyncIterator[tuple[serving.Holder, Connect]]:
    ca = CertificateAuthority(tmp)
    pair = ca.issue("webhook", "unit", server=True, hosts=("127.0.0.1",))
    holder = serving.Holder()
    running = await serving.start(holder, "127.0.0.1", 0, str(pair.cert), str(pair.key))
    _RUNNING[id(holder)] = running
    assert running._listener is not None
    port = running._listener.sockets[0].getsockname()[1]
    client = ssl.create_default_context(cafile=str(ca.pair.cert))

    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", port, ssl=client)

    try:
        yield holder, connect
    finally:
        await running.cleanup()


def on_server(tmp: Path, test: Callable[[serving.Holder, Connect], Awaitable[None]]) -> None:
    async def go() -> None:
        async with started(tmp) as (holder, connect):
            await test(holder, connect)

    asyncio.run(go())


async def _health(holder: serving.Holder, connect: Connect) -> None:
    reader, writer = await connect()
    for path in ("/healthz", "/readyz"):
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert await answer(reader) == (
            503,
            {"content-type": "text/plain", "content-length": "9"},
            b"not ready",
        )
    holder.compiler = COMPILER
    writer.write(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await answer(reader))[::2] == (200, b"ok")
    writer.write(b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200 OK\r\n")
    writer.write(post("/mutate-v1-pod", review("u")))  # nothing after HEAD's headers
    status, _, body = await answer(reader)
    assert status == 200 and json.loads(body)["response"]["uid"] == "u"
    writer.close()


def test_health_follows_the_compiler(tmp_path: Path) -> None:
    on_server(tmp_path, _health)


def test_reviews_pipelined_on_one_connection_are_answered_in_order(tmp_path: Path) -> None:
    async def test(holder: serving.Holder, connect: Connect) -> None:
        holder.compiler = COMPILER
        reader, writer = await connect()
        writer.write(
            post("/mutate-v1-pod?timeout=10s", review("first"))
            + post("/mutate-v1-pod", b"not json")
            + post("/mutate-v1-pod", review("third"))
        )
        first, second, third = [await answer(reader) for _ in range(3)]
        assert first[0] == 200 and first[1]["content-type"] == "application/json"
        response = json.loads(first[2])["response"]
        assert response["uid"] == "first" and response["allowed"] is True
        assert json.loads(base64.b64decode(response["patch"]))  # injected
        assert second[0] == 400 and json.loads(second[2])["error"].startswith("body is not JSON")
        assert third[0] == 200 and json.loads(third[2])["response"]["uid"] == "third"
        writer.close()

    on_server(tmp_path, test)


def test_not_ready_unknown_path_and_wrong_method(tmp_path: Path) -> None:
    async def test(holder: serving.Holder, connect: Connect) -> None:
        reader, writer = await connect()
        writer.write(post("/mutate-v1-pod", review("u")))
        status, _, body = await answer(reader)
        assert (status, json.loads(body)) == (503, {"error": "not ready: no compiled state yet"})
        holder.compiler = COMPILER
        writer.write(b"GET /mutate-v1-pod HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, _ = await answer(reader)
        assert (status, headers["allow"]) == (405, "POST")
        writer.write(post("/healthz", b""))
        assert (await answer(reader))[0] == 405
        writer.write(b"GET /mutate HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await answer(reader))[0] == 404
        writer.close()

    on_server(tmp_path, test)


def test_a_body_over_the_limit_is_refused_before_it_is_read(tmp_path: Path) -> None:
    async def test(holder: serving.Holder, connect: Connect) -> None:
        holder.compiler = COMPILER
        reader, writer = await connect()
        writer.write(
            f"POST /mutate-v1-pod HTTP/1.1\r\nHost: x\r\nContent-Length: {MAX_BODY + 1}\r\n\r\n".encode()
            + b"x" * (MAX_BODY // 2)
        )
        writer.write(b"x" * (MAX_BODY // 2 + 100))  # crosses the limit; the rest is never sent
        status, body = await last_answer(reader)
        assert status == 413
        assert json.loads(body) == {"error": f"request body over {MAX_BODY} bytes"}
        # At the limit exactly: read, and answered (400: zeros are not JSON).
        reader, writer = await connect()
        writer.write(post("/mutate-v1-pod", b"0" * MAX_BODY))
        assert (await answer(reader))[0] == 400
        writer.close()

    on_server(tmp_path, test)


def test_malformed_http_is_a_400_and_the_connection_closes(tmp_path: Path) -> None:
    async def test(holder: serving.Holder, connect: Connect) -> None:
        reader, writer = await connect()
        writer.write(b"NONSENSE\r\n\r\n")
        assert (await last_answer(reader))[0] == 400

    on_server(tmp_path, test)


def test_connection_close_is_honoured(tmp_path: Path) -> None:
    async def test(holder: serving.Holder, connect: Connect) -> None:
        holder.compiler = COMPILER
        reader, writer = await connect()
        writer.write(post("/mutate-v1-pod", review("u"), "Connection: close\r\n"))
        assert (await last_answer(reader))[0] == 200

    on_server(tmp_path, test)


def test_a_rotated_certificate_reaches_new_connections_only(tmp_path: Path) -> None:
    async def test(holder: serving.Holder, connect: Connect) -> None:
        holder.compiler = COMPILER
        reader, writer = await connect()
        before = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        pair = CertificateAuthority(tmp_path).issue(
            "webhook-2", "unit", server=True, hosts=("127.0.0.1",)
        )
        assert holder.tls is not None
        holder.tls.load_cert_chain(str(pair.cert), str(pair.key))
        writer.write(post("/mutate-v1-pod", review("old")))  # the open connection goes on
        assert (await answer(reader))[0] == 200
        reader2, writer2 = await connect()
        after = writer2.get_extra_info("ssl_object").getpeercert(binary_form=True)
        assert after != before and after == ssl.PEM_cert_to_DER_cert(pair.cert.read_text())
        writer2.write(post("/mutate-v1-pod", review("new")))
        assert (await answer(reader2))[0] == 200
        writer.close()
        writer2.close()

    on_server(tmp_path, test)


class SlowResolver:
    """Nothing cached: every image is fetched (in a thread), after a pause."""

    def __init__(self) -> None:
        self.fetched: list[str] = []

    def cached(self, image: str) -> ImageEntrypoint | None:
        return None

    def resolve(self, image: str, credentials: object) -> ImageEntrypoint:
        time.sleep(0.2)
        self.fetched.append(image)
        return ImageEntrypoint(entrypoint=["/entry"], cmd=["serve"])


def test_an_answer_waiting_for_the_registry_keeps_the_order(tmp_path: Path) -> None:
    resolver = SlowResolver()

    async def test(holder: serving.Holder, connect: Connect) -> None:
        holder.compiler = COMPILER
        holder.resolver = resolver  # type: ignore[assignment]
        no_command = review("fetched", containers=[{"name": "app", "image": "app:2"}])
        reader, writer = await connect()
        writer.write(post("/mutate-v1-pod", no_command) + post("/mutate-v1-pod", b"{}"))
        first, second = [await answer(reader) for _ in range(2)]
        assert first[0] == 200 and json.loads(first[2])["response"]["uid"] == "fetched"
        patch = json.loads(base64.b64decode(json.loads(first[2])["response"]["patch"]))
        assert "/entry" in json.dumps(patch)
        assert second[0] == 400  # answered after the first, though ready at once
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")  # reading resumed
        assert (await answer(reader))[0] == 200
        writer.close()

    on_server(tmp_path, test)
    assert resolver.fetched == ["app:2"]


# --- what any client that reaches the port may hold (an outside review's findings) ----------


def test_a_head_over_the_limit_is_refused_before_it_is_buffered(tmp_path: Path) -> None:
    async def test(holder: serving.Holder, connect: Connect) -> None:
        for head in (
            b"GET /" + b"a" * (serving.MAX_HEAD + 1),  # a request line without an end
            b"GET /healthz HTTP/1.1\r\nX: " + b"v" * (serving.MAX_HEAD + 1),  # one header
        ):
            reader, writer = await connect()
            for i in range(0, len(head), 4096):  # as a trickle, many reads
                writer.write(head[i : i + 4096])
                await writer.drain()
            assert (await last_answer(reader))[0] == 431
        reader, writer = await connect()  # a head within the limit is served
        writer.write(b"GET /healthz HTTP/1.1\r\nX: " + b"v" * 8000 + b"\r\n\r\n")
        assert (await answer(reader))[0] == 503
        writer.close()

    on_server(tmp_path, test)


def test_a_request_trickled_past_its_deadline_is_cut_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(serving, "REQUEST_DEADLINE", 1.2)

    async def test(holder: serving.Holder, connect: Connect) -> None:
        reader, writer = await connect()
        writer.write(b"POST /mutate-v1-pod HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
        cut = asyncio.create_task(last_answer(reader))
        started = time.monotonic()
        while not cut.done() and time.monotonic() - started < 10:
            writer.write(b"{")  # a byte at a time: never idle, never complete
            await asyncio.sleep(0.1)
        assert (await cut)[0] == 408
        # while a kept-alive connection between requests is only idle, not cut off
        reader, writer = await connect()
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await answer(reader))[0] == 503
        await asyncio.sleep(2.5)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await answer(reader))[0] == 503
        writer.close()

    on_server(tmp_path, test)


def test_a_client_that_never_reads_its_answers_is_not_read_either(tmp_path: Path) -> None:
    """Pipelined requests from a client that reads nothing: the server stops reading once
    its answers back up, so they cannot fill its memory."""

    async def test(holder: serving.Holder, connect: Connect) -> None:
        reader, writer = await connect()
        request = b"GET /nothing-here HTTP/1.1\r\nHost: x\r\n\r\n"
        with contextlib.suppress(TimeoutError):
            for _ in range(400):  # 16 MB of requests, about 80 MB of answers
                writer.write(request * 1000)
                await asyncio.wait_for(writer.drain(), 3)
        (connection,) = running_connections(holder)
        transport = connection._transport
        assert transport is not None and not transport.is_reading()
        assert transport.get_write_buffer_size() < 4 * 1024 * 1024
        writer.transport.abort()

    on_server(tmp_path, test)


def test_answers_waiting_on_one_connection_are_bounded(tmp_path: Path) -> None:
    resolver = SlowResolver()

    async def test(holder: serving.Holder, connect: Connect) -> None:
        holder.compiler = COMPILER
        holder.resolver = resolver  # type: ignore[assignment]
        no_command = review("fetched", containers=[{"name": "app", "image": "app:2"}])
        reader, writer = await connect()
        # one read holding many reviews that all wait on the registry
        writer.write(post("/mutate-v1-pod", no_command) * (serving.MAX_PIPELINED + 4))
        answers = []
        with contextlib.suppress(asyncio.IncompleteReadError):
            while True:
                answers.append((await answer(reader))[0])
        assert answers[-1] == 503 and len(answers) <= serving.MAX_PIPELINED + 1, answers

    on_server(tmp_path, test)


def test_a_forged_review_naming_two_namespaces_is_refused(tmp_path: Path) -> None:
    async def test(holder: serving.Holder, connect: Connect) -> None:
        holder.compiler = COMPILER
        forged = json.loads(review("forged"))
        forged["request"]["object"]["metadata"]["namespace"] = "team"
        forged["request"]["namespace"] = "kube-system"
        reader, writer = await connect()
        writer.write(post("/mutate-v1-pod", json.dumps(forged).encode()))
        status, _, body = await answer(reader)
        assert status == 400 and "differ" in json.loads(body)["error"], body
        writer.close()

    on_server(tmp_path, test)


def test_pull_secrets_are_read_in_the_namespace_the_pod_was_planned_in() -> None:
    body = json.loads(review("u"))
    body["request"]["object"]["metadata"]["namespace"] = "team"
    body["request"]["namespace"] = "team"
    body["request"]["object"]["spec"]["imagePullSecrets"] = [{"name": "reg"}]
    assert serving._pull_secret_names(json.dumps(body).encode()) == ("team", ["reg"])
    del body["request"]["object"]["metadata"]["namespace"]  # at CREATE: the request's
    assert serving._pull_secret_names(json.dumps(body).encode()) == ("team", ["reg"])
