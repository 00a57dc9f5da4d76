"""The webhook's HTTPS server (asyncio, on the event loop kopf runs the operator on).

`POST /mutate-v1-pod` hands the body to admitting.admit; `GET /healthz` (and `/readyz`)
answers 200 once a compiler is loaded — for the operator, once the initial lists of every kind
were compiled. The compiler is read through a holder so the operator can swap in a new
one (or update it in place) without restarting the server: every read happens on the loop.
TLS only.

HTTP/1.1 is parsed by httptools (llhttp, the parser Node.js uses) in a bare asyncio.Protocol,
not by a web framework: the answer is one write straight from the parser's message-complete
callback. Profiled at 200 reviews/s (benchmarks/sidebyside.py), aiohttp's request and response
objects, router and writer took as much time per review as admit itself.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import ssl
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import httptools
import orjson

from cloudtaser.engine.compiler import IncrementalCompiler
from cloudtaser.engine.kube import namespace_of
from cloudtaser.engine.patches import ImageEntrypoint
from cloudtaser.engine.plans import InjectorSettings
from cloudtaser.engine.webhooks import WEBHOOK_PATH
from cloudtaser.injector.admitting import MAX_BODY, admit
from cloudtaser.injector.resolving import RegistryCredential, ResolveError, Resolver

# (namespace, imagePullSecrets names) -> the registry credentials in those Secrets. Blocking
# (API server reads); the operator provides one, reading each Secret by name when needed.
PullSecretReader = Callable[[str, list[str]], list[RegistryCredential]]


@dataclass
class Holder:
    """What the handler reads: the current compiler and the installation settings."""

    compiler: IncrementalCompiler | None = None
    settings: InjectorSettings = field(default_factory=InjectorSettings)
    # Reads ENTRYPOINT/CMD from the registry for containers without a command.
    resolver: Resolver | None = None
    pull_secrets: PullSecretReader | None = None
    # The serving context: load_cert_chain on it again serves a rotated certificate to every
    # new connection without a restart (reconciling.Operator.watch_certificates).
    tls: ssl.SSLContext | None = None


class _NotCached(ResolveError):
    def __init__(self, image: str) -> None:
        super().__init__(image, "not cached")


def _pull_secret_names(body: bytes) -> tuple[str, list[str]]:
    """Namespace and imagePullSecrets names of the pod under review (admit already accepted
    the body, so the shape is known to be an AdmissionReview with a pod object)."""
    request = orjson.loads(body)["request"]
    pod = request.get("object") or {}
    # The namespace admit planned the pod in: its own, else the request's (admit refuses a
    # review where both are given and differ), so a forged review cannot have the Secrets of
    # another namespace read
    own = (pod.get("metadata") or {}).get("namespace")
    namespace = own or request.get("namespace") or namespace_of(pod)
    refs = (pod.get("spec") or {}).get("imagePullSecrets") or []
    return namespace, [
        r["name"] for r in refs if isinstance(r, dict) and isinstance(r.get("name"), str)
    ]


def _fetch(
    holder: Holder, resolver: Resolver, body: bytes, images: list[str]
) -> dict[str, ImageEntrypoint | ResolveError]:
    """Registry I/O for the images the cache could not answer (runs in a thread)."""
    credentials: list[RegistryCredential] = []
    if holder.pull_secrets is not None:
        namespace, names = _pull_secret_names(body)
        if names:
            credentials = holder.pull_secrets(namespace, names)
    out: dict[str, ImageEntrypoint | ResolveError] = {}
    for image in images:
        try:
            out[image] = resolver.resolve(image, credentials)
        except ResolveError as e:
            out[image] = e
    return out


# A kept-alive connection with no request for this long is closed (aiohttp's default, which
# this server replaced); the API server reopens one when it needs it.
KEEPALIVE = 75.0
# Limits on what any client that reaches the port may hold (the Service is reachable from
# every pod; the API server itself stays far inside them):
MAX_HEAD = 32 * 1024  # request line and headers, in all (aiohttp allowed 8 KiB per line)
REQUEST_DEADLINE = 30.0  # seconds from a request's first byte to its last (the API server's
# webhook timeout is at most 30 s): a request trickled in a byte at a time is cut off
MAX_CONNECTIONS = 1024
MAX_PIPELINED = 16  # answers a connection may have waiting (registry I/O) before it is cut off
log = logging.getLogger("cloudtaser.injector")

_REASONS = {
    100: b"Continue",
    200: b"OK",
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
    413: b"Payload Too Large",
    431: b"Request Header Fields Too Large",
    408: b"Request Timeout",
    500: b"Internal Server Error",
    503: b"Service Unavailable",
}
_HEALTH = (b"/healthz", b"/readyz")  # ready = the initial lists are compiled
_MUTATE = WEBHOOK_PATH.encode()


@dataclass(frozen=True)
class _Reply:
    status: int
    body: bytes
    content_type: bytes = b"application/json"
    allow: bytes = b""  # the Allow header of a 405


def _json(status: int, body: object) -> _Reply:
    return _Reply(status, orjson.dumps(body))


def _error(status: int, message: str) -> _Reply:
    return _json(status, {"error": message})


async def _resolve_then_admit(
    holder: Holder, resolver: Resolver, body: bytes, images: list[str]
) -> _Reply:
    """The images the cache could not answer, fetched in a thread; then admit again, on the
    loop (where the operator updates the compiler in place)."""
    fetched = await asyncio.to_thread(_fetch, holder, resolver, body, images)

    def from_fetched(image: str) -> ImageEntrypoint:
        found = fetched.get(image) or resolver.cached(image)
        if found is None:
            raise _NotCached(image)
        if isinstance(found, ResolveError):
            raise found
        return found

    if holder.compiler is None:
        return _error(503, "not ready: no compiled state yet")
    answer = admit(body, holder.compiler, holder.settings, None, from_fetched)
    return _json(answer.status, answer.body)


def _mutate(holder: Holder, body: bytes) -> _Reply | Coroutine[Any, Any, _Reply]:
    """The answer, or (when an image's entrypoint is not cached) a coroutine that finds it."""
    compiler = holder.compiler
    if compiler is None:
        return _error(503, "not ready: no compiled state yet")
    resolver = holder.resolver
    if resolver is None:
        answer = admit(body, compiler, holder.settings)
        return _json(answer.status, answer.body)
    missing: list[str] = []

    def from_cache(image: str) -> ImageEntrypoint:
        found = resolver.cached(image)
        if found is None:
            missing.append(image)
            raise _NotCached(image)
        return found

    answer = admit(body, compiler, holder.settings, None, from_cache)
    if missing:
        return _resolve_then_admit(holder, resolver, body, sorted(set(missing)))
    return _json(answer.status, answer.body)


def _route(
    holder: Holder, method: bytes, path: bytes, body: bytes
) -> _Reply | Coroutine[Any, Any, _Reply]:
    if path == _MUTATE:
        if method != b"POST":
            return _Reply(405, b'{"error": "method not allowed"}', allow=b"POST")
        return _mutate(holder, body)
    if path in _HEALTH:
        if method not in (b"GET", b"HEAD"):
            return _Reply(405, b'{"error": "method not allowed"}', allow=b"GET, HEAD")
        ready = holder.compiler is not None
        return _Reply(200 if ready else 503, b"ok" if ready else b"not ready", b"text/plain")
    return _error(404, "not found")


class _Connection(asyncio.Protocol):
    """One TLS connection: HTTP/1.1 requests in, answers out in the same order."""

    def __init__(self, server: Server) -> None:
        self._server = server
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._body = bytearray()
        self._size = 0
        self._continue = False
        self._keep_alive = True
        self._head = 0  # bytes of the current request's line and headers so far (MAX_HEAD)
        self._in_head = False
        self.started: float | None = None  # when the request being read began (its deadline)
        # The answers still being worked on (registry I/O), chained so they leave in order;
        # all of them, to be cancelled when the client goes.
        self._pending: asyncio.Task[None] | None = None
        self._tasks: dict[asyncio.Task[None], _Reply | Coroutine[Any, Any, _Reply]] = {}
        self._write_paused = False
        self.last_seen = server.loop.time()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        if len(self._server.connections) >= MAX_CONNECTIONS:
            transport.abort()
            return
        self._transport = transport
        self._server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._server.connections.discard(self)
        for task, work in self._tasks.items():  # nobody is left to answer: no registry I/O
            task.cancel()
            if inspect.iscoroutine(work) and inspect.getcoroutinestate(work) == "CORO_CREATED":
                work.close()  # never started: closed, not left for the collector to warn about

    # A client that does not read its answers: stop reading its requests until it does, so
    # that answers never pile up in memory.
    def pause_writing(self) -> None:
        self._write_paused = True
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._pending is None and self._transport is not None:
            self._transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        self.last_seen = self._server.loop.time()
        if self.started is None:
            self.started = self.last_seen
            self._in_head = True
        if self._in_head:
            self._head += len(data)  # reset when the head is complete (this read may end it)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(400, "protocol upgrades are not supported")
        except httptools.HttpParserError:
            self._refuse(400, "malformed HTTP request")
        # Still in the head after this read: all of it was head. Refused here, httptools
        # (which copies a growing header on every read) never holds more than one read past
        # the limit.
        if self._in_head and self._head > MAX_HEAD:
            self._refuse(431, f"request line and headers over {MAX_HEAD} bytes")

    # httptools callbacks (no exception may leave them: the parser would report it as malformed)

    def on_message_begin(self) -> None:
        self._url = b""
        self._body = bytearray()
        self._size = 0
        self._continue = False
        self._in_head = True
        self.started = self._server.loop.time()

    def on_url(self, url: bytes) -> None:
        if len(self._url) + len(url) > MAX_HEAD:
            self._refuse(431, f"request line and headers over {MAX_HEAD} bytes")
        else:
            self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) == 6 and name.lower() == b"expect":
            self._continue = value.lower() == b"100-continue"

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head = 0
        if self._transport is None or self._transport.is_closing():
            return
        self._keep_alive = self._parser.should_keep_alive()
        if self._continue and self._transport is not None:
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size <= MAX_BODY:
            self._body += body
        elif self._body:  # refused at once, the rest unread
            self._body = bytearray()
            self._refuse(413, f"request body over {MAX_BODY} bytes")

    def on_message_complete(self) -> None:
        keep_alive = self._keep_alive
        self.started = None
        self._in_head = False
        self._head = 0
        if self._transport is None or self._transport.is_closing():
            return  # refused (or gone) while the body came in
        method = self._parser.get_method()
        path = self._url.partition(b"?")[0]
        try:
            work = _route(self._server.holder, method, path, bytes(self._body))
        except Exception:
            log.exception("webhook request %r %r failed", method, path[:200])
            work = _error(500, "internal error")
        if isinstance(work, _Reply) and self._pending is None:
            self._send(work, keep_alive, method == b"HEAD")
            return
        if len(self._tasks) >= MAX_PIPELINED:
            if not isinstance(work, _Reply):
                work.close()  # never awaited: no registry I/O
            self._refuse(503, f"more than {MAX_PIPELINED} answers waiting on one connection")
            return
        previous = self._pending
        self._pending = task = self._server.loop.create_task(
            self._in_order(previous, work, keep_alive, method == b"HEAD")
        )
        self._tasks[task] = work
        task.add_done_callback(self._settled)
        if self._transport is not None:
            self._transport.pause_reading()  # one request at a time while one waits

    # answers

    async def _in_order(
        self,
        previous: asyncio.Task[None] | None,
        work: _Reply | Coroutine[Any, Any, _Reply],
        keep_alive: bool,
        head: bool,
    ) -> None:
        if previous is not None:
            await asyncio.wait([previous])
        if isinstance(work, _Reply):
            reply = work
        else:
            try:
                reply = await work
            except Exception:
                log.exception("webhook request failed")
                reply = _error(500, "internal error")
        self._send(reply, keep_alive, head)

    def _settled(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)
        if self._pending is task:
            self._pending = None
            transport = self._transport
            if transport is not None and not transport.is_closing() and not self._write_paused:
                transport.resume_reading()

    def _send(self, reply: _Reply, keep_alive: bool, head: bool = False) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        lines = [
            b"HTTP/1.1 %d %s" % (reply.status, _REASONS.get(reply.status, b"")),
            b"Content-Type: " + reply.content_type,
            b"Content-Length: %d" % len(reply.body),
        ]
        if reply.allow:
            lines.append(b"Allow: " + reply.allow)
        if not keep_alive:
            lines.append(b"Connection: close")
        lines.append(b"\r\n" if head else b"\r\n" + reply.body)
        transport.write(b"\r\n".join(lines))
        self.last_seen = self._server.loop.time()
        if not keep_alive:
            transport.close()

    def _refuse(self, status: int, message: str) -> None:
        """An answer after which the rest of the connection's bytes cannot be trusted."""
        self._send(_error(status, message), keep_alive=False)
        if self._transport is not None:
            self._transport.close()

    def close_if_idle(self, since: float, request_since: float) -> None:
        """Closes the connection when idle since ``since``, or when the request being read
        began before ``request_since`` (a trickle keeps it from being idle)."""
        if self._transport is None:
            return
        if self.started is not None and self.started < request_since:
            self._refuse(408, f"request not complete within {REQUEST_DEADLINE:g} s")
        elif self._pending is None and self.last_seen < since:
            self._transport.close()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class Server:
    """The running server (start returns it); cleanup() stops it and closes its connections."""

    def __init__(self, holder: Holder, loop: asyncio.AbstractEventLoop) -> None:
        self.holder = holder
        self.loop = loop
        self.connections: set[_Connection] = set()
        self._listener: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def listen(self, host: str, port: int, tls: ssl.SSLContext) -> None:
        self._listener = await self.loop.create_server(
            lambda: _Connection(self), host, port, ssl=tls, reuse_address=True
        )
        self._sweeper = self.loop.create_task(self._sweep())

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(min(KEEPALIVE, REQUEST_DEADLINE) / 6)
            now = self.loop.time()
            for connection in list(self.connections):
                connection.close_if_idle(now - KEEPALIVE, now - REQUEST_DEADLINE)

    async def cleanup(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._listener is not None:
            self._listener.close()
        for connection in list(self.connections):
            connection.close()
        if self._listener is not None:
            await self._listener.wait_closed()


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


async def start(holder: Holder, host: str, port: int, cert: str, key: str) -> Server:
    holder.tls = tls_context(cert, key)
    server = Server(holder, asyncio.get_running_loop())
    await server.listen(host, port, holder.tls)
    return server
