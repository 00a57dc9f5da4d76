"""Reads from the cluster that kopf's watches do not bring: the initial lists (paged), the agents'
node reports, and a pod's image pull secrets; and what the operator keeps of every body it
reads (the operator holds every binding and pod of the cluster, so as little as it can).

Blocking calls of the kubernetes client: the operator runs them in a thread.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import kubernetes

from cloudtaser.engine import reports
from cloudtaser.engine.resources import GROUP, VERSION
from cloudtaser.errors import CloudtaserError
from cloudtaser.injector.resolving import RegistryCredential, credentials_from_dockerconfigjson

log = logging.getLogger("cloudtaser.operator")
KINDS = ("SecretBinding", "EnforcementPolicy", "Pod", "Namespace")
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
CONDITION_KEPT = ("type", "status", "lastTransitionTime")  # slim: what statuses.conditions reads
PULL_SECRET_KEYS = {
    "kubernetes.io/dockerconfigjson": ".dockerconfigjson",
    "kubernetes.io/dockercfg": ".dockercfg",
}


PAGE = 500  # objects per list request: one page's JSON is in memory at a time


def list_pages() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """Every object of the four ``KINDS`` as the API serialises them, a page at a time: (kind,
    items). Each page is read with limit/continue and parsed from its own JSON body (not
    into the client's models), so 10k bindings are never one response in memory."""
    client = kubernetes.client.ApiClient()
    custom = kubernetes.client.CustomObjectsApi(client)
    core = kubernetes.client.CoreV1Api(client)
    calls: dict[str, Callable[..., Any]] = {
        "SecretBinding": partial(
            custom.list_cluster_custom_object, GROUP, VERSION, "secretbindings"
        ),
        "EnforcementPolicy": partial(
            custom.list_cluster_custom_object, GROUP, VERSION, "enforcementpolicies"
        ),
        "Pod": core.list_pod_for_all_namespaces,
        "Namespace": core.list_namespace,
    }
    for kind, call in calls.items():
        token: str = ""
        while True:
            more: dict[str, str] = {"_continue": token} if token else {}
            answer: Any = call(limit=PAGE, _preload_content=False, **more)
            page: dict[str, Any] = json.loads(answer.data)
            yield kind, page.get("items") or []
            token = str((page.get("metadata") or {}).get("continue") or "")
            if not token:
                break


def list_reports(namespace: str) -> list[reports.Report]:
    """The agents' node reports: their Leases in the operator's namespace
    (engine/cloudtaser/engine/reports.py)."""
    leases = kubernetes.client.CoordinationV1Api().list_namespaced_lease(
        namespace, label_selector=reports.SELECTOR
    )
    found: list[dict[str, Any]] = kubernetes.client.ApiClient().sanitize_for_serialization(
        leases.items
    )
    return [reports.decode(lease) for lease in found]


def read_pull_secrets(namespace: str, names: list[str]) -> list[RegistryCredential]:
    """The registry credentials in a pod's imagePullSecrets, read by name when a registry
    lookup needs them (``get`` only: no list or watch of Secrets) and never kept: they live
    for one resolve. A missing, forbidden or malformed Secret is skipped with a warning that
    names it, as the kubelet would fail to pull with it; nothing of its content is logged."""
    api = kubernetes.client.CoreV1Api()
    found: list[RegistryCredential] = []
    for name in names:
        try:
            secret = api.read_namespaced_secret(name, namespace)
        except kubernetes.client.ApiException as e:
            log.warning("imagePullSecret %s/%s not read: HTTP %s", namespace, name, e.status)
            continue
        key = PULL_SECRET_KEYS.get(secret.type or "")
        data = secret.data or {}
        if key is None or key not in data:
            log.warning(
                "imagePullSecret %s/%s: type %s has no registry credentials",
                namespace,
                name,
                secret.type,
            )
            continue
        try:
            found += credentials_from_dockerconfigjson(base64.b64decode(data[key]))
        except (CloudtaserError, ValueError) as e:
            log.warning(
                "imagePullSecret %s/%s: %s",
                namespace,
                name,
                e if isinstance(e, CloudtaserError) else "data is not base64",
            )
    return found


def trimmed(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    """Drop what the compiler never reads (managedFields, kubectl's last-applied copy of the
    whole object, all of a pod's status but how each container runs or ended): the operator
    holds every binding and pod of the cluster."""
    meta = {k: v for k, v in body.get("metadata", {}).items() if k != "managedFields"}
    if LAST_APPLIED in meta.get("annotations", {}):
        meta["annotations"] = {k: v for k, v in meta["annotations"].items() if k != LAST_APPLIED}
    out = {**body, "metadata": meta}
    if kind == "Pod":
        statuses = (out.pop("status", None) or {}).get("containerStatuses") or []
        out["status"] = {
            "containerStatuses": [
                {k: s[k] for k in ("name", "state", "lastState") if k in s}
                for s in statuses
                if isinstance(s, dict)
            ]
        }
    return out


def slim(body: dict[str, Any]) -> dict[str, Any]:
    """What is kept of a body once it is parsed (on arrival: the parse lives in the operator,
    the model in the compiler): the identity its version and status writes need, and of the
    old conditions what keeps their lastTransitionTime (statuses.conditions), not the
    messages and figures the leader wrote (some 2 KiB a binding: issue 17)."""
    meta = body.get("metadata", {})
    out: dict[str, Any] = {
        "metadata": {
            k: meta[k]
            for k in ("name", "namespace", "uid", "generation", "resourceVersion")
            if k in meta
        },
    }
    status = body.get("status")
    if isinstance(status, dict):
        out["status"] = {
            "conditions": [
                {k: c[k] for k in CONDITION_KEPT if k in c}
                for c in status.get("conditions") or []
                if isinstance(c, dict)
            ]
        }
    return out
