"""The webhook's HTTPS server (aiohttp, the same event loop kopf runs the operator on).

`POST /mutate-v1-pod` hands the body to admitting.admit; `GET /healthz` answers once a
compiler is loaded. The compiler is read through a holder so the operator can swap in a new
one (or update it in place) without restarting the server. TLS only.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field

from aiohttp import web

from cloudtaser.engine.compiler import IncrementalCompiler
from cloudtaser.engine.plans import InjectorSettings
from cloudtaser.engine.webhooks import WEBHOOK_PATH
from cloudtaser.injector.admitting import MAX_BODY, admit
from cloudtaser.injector.resolving import Resolver


@dataclass
class Holder:
    """What the handler reads: the current compiler and the installation settings."""

    compiler: IncrementalCompiler | None = None
    settings: InjectorSettings = field(default_factory=InjectorSettings)
    # Reads ENTRYPOINT/CMD from the registry for containers without a command (anonymous
    # pulls; imagePullSecrets support comes with the operator's Secret reader).
    resolver: Resolver | None = None


def application(holder: Holder) -> web.Application:
    async def mutate(request: web.Request) -> web.Response:
        if holder.compiler is None:
            return web.json_response({"error": "not ready: no compiled state yet"}, status=503)
        body = await request.read()
        if holder.resolver is None:
            answer = admit(body, holder.compiler, holder.settings)
        else:  # registry I/O blocks: off the event loop
            resolver = holder.resolver
            answer = await asyncio.to_thread(admit, body, holder.compiler, holder.settings,
                                             None, lambda image: resolver.resolve(image))
        return web.json_response(answer.body, status=answer.status)

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok" if holder.compiler is not None else "not ready",
                            status=200 if holder.compiler is not None else 503)

    app = web.Application(client_max_size=MAX_BODY)
    app.router.add_post(WEBHOOK_PATH, mutate)
    app.router.add_get("/healthz", healthz)
    return app


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


async def start(holder: Holder, host: str, port: int, cert: str, key: str) -> web.AppRunner:
    runner = web.AppRunner(application(holder), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port, ssl_context=tls_context(cert, key)).start()
    return runner
