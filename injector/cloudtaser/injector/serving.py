"""The webhook's HTTPS server (aiohttp, the same event loop kopf runs the operator on).

`POST /mutate-v1-pod` hands the body to admitting.admit; `GET /healthz` (and `/readyz`)
answers 200 once a compiler is loaded — for the operator, once the initial lists of every kind
were compiled. The compiler is read through a holder so the operator can swap in a new
one (or update it in place) without restarting the server. TLS only.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

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
    request = json.loads(body)["request"]
    pod = request.get("object") or {}
    namespace = request.get("namespace") or namespace_of(pod)
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


def application(holder: Holder) -> web.Application:
    async def mutate(request: web.Request) -> web.Response:
        if holder.compiler is None:
            return web.json_response({"error": "not ready: no compiled state yet"}, status=503)
        body = await request.read()
        resolver = holder.resolver
        if resolver is None:
            answer = admit(body, holder.compiler, holder.settings)
            return web.json_response(answer.body, status=answer.status)
        # Every compiler read happens here on the event loop, where the operator also
        # updates the compiler in place; only registry and Secret I/O goes to a thread.
        missing: list[str] = []

        def from_cache(image: str) -> ImageEntrypoint:
            found = resolver.cached(image)
            if found is None:
                missing.append(image)
                raise _NotCached(image)
            return found

        answer = admit(body, holder.compiler, holder.settings, None, from_cache)
        if missing:
            fetched = await asyncio.to_thread(_fetch, holder, resolver, body, sorted(set(missing)))

            def from_fetched(image: str) -> ImageEntrypoint:
                found = fetched.get(image) or resolver.cached(image)
                if found is None:
                    raise _NotCached(image)
                if isinstance(found, ResolveError):
                    raise found
                return found

            assert holder.compiler is not None
            answer = admit(body, holder.compiler, holder.settings, None, from_fetched)
        return web.json_response(answer.body, status=answer.status)

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(
            text="ok" if holder.compiler is not None else "not ready",
            status=200 if holder.compiler is not None else 503,
        )

    app = web.Application(client_max_size=MAX_BODY)
    app.router.add_post(WEBHOOK_PATH, mutate)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", healthz)  # ready = the initial lists are compiled
    return app


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


async def start(holder: Holder, host: str, port: int, cert: str, key: str) -> web.AppRunner:
    holder.tls = tls_context(cert, key)
    runner = web.AppRunner(application(holder), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port, ssl_context=holder.tls).start()
    return runner
