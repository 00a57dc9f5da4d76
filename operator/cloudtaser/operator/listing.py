"""Reads from the cluster that kopf's watches do not bring: the initial lists (paged), the agents'
node reports, and a pod's image pull secrets; and what the operator keeps of every body it
reads (the operator holds every binding and pod of the cluster, so as little as it can).

Blocking calls of the API client (cloudtaser/kubeapi.py): the operator runs them in a thread.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterator
from typing import Any

from cloudtaser.engine import reports
from cloudtaser.engine.resources import GROUP, VERSION
from cloudtaser.errors import CloudtaserError, PermanentError
from cloudtaser.injector.resolving import RegistryCredential, credentials_from_dockerconfigjson
from cloudtaser.kubeapi import ApiError, KubeApi, path

log = logging.getLogger("cloudtaser.operator")
KINDS = ("SecretBinding", "EnforcementPolicy", "Pod", "Namespace")
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
CONDITION_KEPT = ("type", "status", "lastTransitionTime")  # slim: what statuses.conditions reads
PULL_SECRET_KEYS = {
    "kubernetes.io/dockerconfigjson": ".dockerconfigjson",
    "kubernetes.io/dockercfg": ".dockercfg",
}
# Each kind's list across the cluster.
COLLECTIONS = {
    "SecretBinding": path("apis", GROUP, VERSION, "secretbindings"),
    "EnforcementPolicy": path("apis", GROUP, VERSION, "enforcementpolicies"),
    "Pod": path("api", "v1", "pods"),
    "Namespace": path("api", "v1", "namespaces"),
}


PAGE = 500  # objects per list request: one page's JSON is in memory at a time


def list_pages(api: KubeApi) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """Every object of the four ``KINDS`` as the API serialises them, a page at a time: (kind,
    items). Each page is read with limit/continue, so 10k bindings are never one response in
    memory."""
    for kind in KINDS:
        for items in api.pages(COLLECTIONS[kind], page=PAGE):
            yield kind, items


def list_reports(api: KubeApi, namespace: str) -> list[reports.Report]:
    """The agents' node reports: their Leases in the operator's namespace
    (engine/cloudtaser/engine/reports.py)."""
    leases = path("apis", "coordination.k8s.io", "v1", "namespaces", namespace, "leases")
    return [
        reports.decode(lease) for lease in api.items(leases, {"labelSelector": reports.SELECTOR})
    ]


def read_pull_secrets(api: KubeApi, namespace: str, names: list[str]) -> list[RegistryCredential]:
    """The registry credentials in a pod's imagePullSecrets, read by name when a registry
    lookup needs them (``get`` only: no list or watch of Secrets) and never kept: they live
    for one resolve. A missing, forbidden or malformed Secret is skipped with a warning that
    names it, as the kubelet would fail to pull with it; nothing of its content is logged (nor
    is the API server's answer: an error's text is its status line)."""
    found: list[RegistryCredential] = []
    for name in names:
        try:
            secret = api.get(path("api", "v1", "namespaces", namespace, "secrets", name))
        except ApiError as e:  # an API server away is not skipped: the webhook fails
            log.warning("imagePullSecret %s/%s not read: HTTP %s", namespace, name, e.status)
            continue
        except PermanentError as e:  # a name that is no name (the pod is not validated yet)
            log.warning("imagePullSecret %r not read: %s", name[:100], e)
            continue
        if not isinstance(secret, dict):
            log.warning(
                "imagePullSecret %s/%s not read: the answer is not an object", namespace, name
            )
            continue
        found += _registry_credentials(namespace, name, secret)
    return found


def _registry_credentials(
    namespace: str, name: str, secret: dict[str, Any]
) -> list[RegistryCredential]:
    """The credentials in one pull Secret as the API serialises it (its data base64), or none
    with a warning that names the Secret and its type, never its data."""
    kind = secret.get("type")
    key = PULL_SECRET_KEYS.get(kind if isinstance(kind, str) else "")
    data = secret.get("data") or {}
    if key is None or not isinstance(data, dict) or key not in data:
        log.warning(
            "imagePullSecret %s/%s: type %s has no registry credentials", namespace, name, kind
        )
        return []
    try:
        return credentials_from_dockerconfigjson(base64.b64decode(data[key]))
    except (CloudtaserError, ValueError, TypeError) as e:  # binascii.Error is a ValueError
        reason = e if isinstance(e, CloudtaserError) else "data is not base64"
        log.warning("imagePullSecret %s/%s: %s", namespace, name, reason)
        return []


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
