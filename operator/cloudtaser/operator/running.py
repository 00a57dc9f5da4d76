"""How ``cloudtaser operator`` runs (cloudtaser/cli.py): kopf's handlers bound to one Operator,
the webhook server, the background tasks and leader election, in one kopf process.

The CLI builds an ``Operator`` (reconciling.py) with its API client (cloudtaser/kubeapi.py,
in-cluster or $KUBECONFIG, as kopf logs in on its own) and the webhook's ``read_pull_secrets``
(listing.py) from here, then calls ``run``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import threading
from collections.abc import Mapping
from typing import Any

import kopf

from cloudtaser.engine.resources import GROUP, VERSION
from cloudtaser.engine.webhooks import WEBHOOK_CONFIGURATION
from cloudtaser.injector import serving
from cloudtaser.operator import listing
from cloudtaser.operator.election import elect
from cloudtaser.operator.listing import read_pull_secrets
from cloudtaser.operator.reconciling import Operator

__all__ = [
    "ERROR_BACKOFFS",
    "Operator",
    "in_cluster_server",
    "read_pull_secrets",
    "registry",
    "run",
]
ERROR_BACKOFFS = (0.5, 1.0, 1.0, 2.0, 2.0) + (3.0,) * 100  # kopf's API retries (seconds)


def in_cluster_server(info: Any, environ: Mapping[str, str] = os.environ) -> Any:
    """kopf's service-account login with the API server's address the way client-go (and our
    API client, cloudtaser/kubeapi.py) takes it: the kubelet's KUBERNETES_SERVICE_HOST/PORT.
    kopf names https://kubernetes.default.svc instead, which needs cluster DNS (the local
    stack's node has none, nor has a pod with dnsPolicy Default)."""
    host = environ.get("KUBERNETES_SERVICE_HOST")
    if not host:
        return info
    host = f"[{host}]" if ":" in host else host
    port = environ.get("KUBERNETES_SERVICE_PORT", "443")
    return dataclasses.replace(info, server=f"https://{host}:{port}")


def registry(
    op: Operator, host: str, port: int, cert: str, key: str, election: tuple[str, str] | None = None
) -> kopf.OperatorRegistry:
    """kopf handlers bound to one Operator (no module-level decorators: testable, explicit)."""
    reg = kopf.OperatorRegistry()
    tasks: list[asyncio.Task[None]] = []

    @kopf.on.startup(registry=reg)
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.enabled = False
        settings.watching.server_timeout = 300
        # kopf's default backoffs (1, 1, 2, ... 21 s, then giving up) leave a watch asleep for
        # up to 21 s after a restarted API server answers again — its CRD endpoints say 503/429
        # for a while after it starts — so convergence took 80-90 s. Retry at most every 3 s,
        # for about 5 minutes, before kopf escalates.
        settings.networking.error_backoffs = ERROR_BACKOFFS
        # No cluster-wide scan of CRDs and namespaces: the four kinds are known (the chart
        # installs the CRDs first), and the RBAC grants no read of CRDs (seen failing on the
        # local node: kopf retried the forbidden list forever).
        settings.scanning.disabled = True
        # kopf lists every kind before it watches: a page at a time, not 10k bindings in one
        # response (issue 17).
        settings.watching.chunk_size = listing.PAGE
        # kopf keeps a worker task per object until it has been idle this long (default 5 s):
        # the initial list of 10k bindings kept 10k of them alive at once. Ours only record
        # the body (Operator.observe), so they may go at once.
        settings.batching.idle_timeout = 0.2
        await serving.start(op.holder, host, port, cert, key)
        tasks.append(asyncio.create_task(op.run()))
        tasks.append(asyncio.create_task(op.watch_reports()))
        if op.ca_file is not None:
            tasks.append(asyncio.create_task(op.watch_certificates(cert, key, op.ca_file)))
        if election is not None:
            op.leading = False
            threading.Thread(
                target=elect,
                args=(op.lead, asyncio.get_running_loop(), op.api, *election),
                name="leader-election",
                daemon=True,
            ).start()

    @kopf.on.login(registry=reg)
    def login(**kwargs: Any) -> Any:
        # In a pod: the service account; elsewhere: $KUBECONFIG (kopf's own reader).
        info = kopf.login_with_service_account(**kwargs)
        if info is None:
            return kopf.login_with_kubeconfig(**kwargs)
        return in_cluster_server(info)

    @kopf.on.cleanup(registry=reg)
    async def cleanup(**_: Any) -> None:
        for task in tasks:
            task.cancel()

    @kopf.on.probe(id="compiled", registry=reg)
    def compiled(**_: Any) -> bool:
        return op.ready

    for kind, resource in (
        ("SecretBinding", (GROUP, VERSION, "secretbindings")),
        ("EnforcementPolicy", (GROUP, VERSION, "enforcementpolicies")),
        ("Pod", ("", "v1", "pods")),
        ("Namespace", ("", "v1", "namespaces")),
    ):
        # async: kopf runs a sync handler in its thread pool, where it would race the
        # reconciler over the Operator's dicts (and each thread allocates from a malloc arena
        # of its own); on the event loop a handler runs between the reconciler's awaits.
        async def handler(body: Any, type: str | None, _kind: str = kind, **_: Any) -> None:
            op.observe(_kind, type, dict(body))

        kopf.on.event(*resource, registry=reg, id=f"observe-{kind.lower()}")(handler)

    async def webhook_changed(**_: Any) -> None:
        op.changed.set()  # someone edited or deleted our configuration: re-derive it

    kopf.on.event(
        "admissionregistration.k8s.io",
        "v1",
        "mutatingwebhookconfigurations",
        field="metadata.name",
        value=WEBHOOK_CONFIGURATION,
        registry=reg,
        id="webhook-drift",
    )(webhook_changed)
    return reg


def run(
    op: Operator,
    host: str,
    port: int,
    cert: str,
    key: str,
    liveness: str | None,
    election: tuple[str, str] | None = None,
) -> None:
    """Run the operator until the process is stopped. ``election``: (namespace, identity) to
    run leader election with, or None (one replica)."""
    asyncio.run(
        kopf.operator(
            registry=registry(op, host, port, cert, key, election),
            clusterwide=True,
            standalone=True,
            liveness_endpoint=liveness,
        )
    )
