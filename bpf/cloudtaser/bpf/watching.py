"""The protection flags of each pod on this node, derived by the engine from the cluster.

The agent lists the pods bound to its node, the SecretBindings and Namespaces of the namespaces
those pods are in, and the EnforcementPolicies, compiles them with the same engine the operator and the webhook use,
and keeps each injected pod's EffectivePolicy flags by pod UID. A registration whose pod is not
known yet triggers one relist (the pod may have been bound a moment ago); a process in no
known pod is refused, so the wrapper does not start the app unprotected.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from cloudtaser.engine.bindings import wants_injection
from cloudtaser.engine.compiler import ClusterState, compile_state
from cloudtaser.engine.documents import RESOURCE_KINDS, parse_document, parse_objects
from cloudtaser.engine.kube import DEFAULT_NAMESPACE, Pod, namespace_of
from cloudtaser.engine.plans import BpfEntry, InjectorSettings
from cloudtaser.engine.resources import API_VERSION, GROUP, VERSION, SecretBinding
from cloudtaser.gcpause import gc_paused
from cloudtaser.kubeapi import ApiError, KubeApi, path

log = logging.getLogger("cloudtaser.bpf.watching")
Lister = Callable[[], dict[str, list[dict[str, Any]]]]


def flags_by_pod(
    objects: dict[str, list[dict[str, Any]]], settings: InjectorSettings | None = None
) -> dict[str, BpfEntry]:
    """Pod UID -> BpfEntry, from raw objects by kind (pure: the engine does the work)."""
    parsed = parse_objects(objects)
    with gc_paused():  # a bulk compile (cloudtaser/gcpause.py)
        plan = compile_state(
            ClusterState(
                bindings=parsed.bindings,
                policies=parsed.policies,
                pods=parsed.pods,
                namespaces=parsed.namespaces,
                problems=parsed.problems,
                settings=settings or InjectorSettings(),
            )
        )
    return {entry.uid: entry for entry in plan.bpf if entry.uid}


def selecting(bindings: Iterable[dict[str, Any]], pods: list[Pod]) -> Iterator[dict[str, Any]]:
    """The bindings (raw, as listed) that select one of ``pods`` (parsed: this node's pods of
    their namespace). Only these can change a BpfEntry here: a pod's plan is compiled from
    the bindings selecting it (engine/cloudtaser/engine/ledger.py bindings_for: the pod wants
    injection and the binding's selector matches its labels), and one that fails to parse
    selects nothing (its problem is the operator's to report). The rest, most of 10k in a
    busy namespace, is dropped as it is read, never held (issue 17)."""
    candidates = [pod for pod in pods if wants_injection(pod)]
    if not candidates:
        return  # nothing here can be selected: the list is not even read
    for body in bindings:
        model, _ = parse_document(
            {**body, "apiVersion": API_VERSION, "kind": "SecretBinding"}, RESOURCE_KINDS
        )
        if isinstance(model, SecretBinding) and any(
            model.spec.selector.matches(pod.metadata.labels) for pod in candidates
        ):
            yield body


def kubernetes_lister(node: str, api: KubeApi | None = None) -> Lister:
    """List the objects the agent compiles from, through the agent's client (cloudtaser/kubeapi.py:
    in-cluster or $KUBECONFIG, read now)."""
    client = api or KubeApi.from_environment()
    group = ("apis", GROUP, VERSION)

    def list_all() -> dict[str, list[dict[str, Any]]]:
        # Only what this node's pods can be selected by: the bindings and namespaces of the
        # namespaces that have pods here (a cluster's 10k bindings are mostly elsewhere), and
        # of those bindings only the ones that select a pod here (selecting(): a namespace
        # may hold 10k too). Policies are cluster-wide and few.
        pods: list[dict[str, Any]] = client.get(
            "/api/v1/pods", {"fieldSelector": f"spec.nodeName={node}"}
        )["items"]
        parsed: dict[str, list[Pod]] = {}
        for pod in parse_objects({"Pod": pods}).pods:
            parsed.setdefault(pod.metadata.namespace or DEFAULT_NAMESPACE, []).append(pod)
        namespaces = sorted({namespace_of(p) for p in pods})
        bindings: list[dict[str, Any]] = []
        found: list[dict[str, Any]] = []
        for namespace in namespaces:
            bindings += selecting(
                client.items(path(*group, "namespaces", namespace, "secretbindings")),
                parsed.get(namespace, []),
            )
            try:
                found.append(client.get(path("api", "v1", "namespaces", namespace)))
            except ApiError as e:
                if e.status != 404:  # deleted meanwhile: its pods are going too
                    raise
        return {
            "SecretBinding": bindings,
            "EnforcementPolicy": list(client.items(path(*group, "enforcementpolicies"))),
            "Namespace": found,
            "Pod": pods,
        }

    return list_all


class PodPolicies:
    """Flags by pod UID, refreshed on demand and by the caller's timer."""

    MIN_RELIST_SECONDS = 1.0  # a burst of unknown callers costs one relist

    def __init__(
        self,
        lister: Lister,
        clock: Callable[[], float] = time.monotonic,
        settings: InjectorSettings | None = None,
    ) -> None:
        self._lister = lister
        self.settings = settings  # the operator's, so both compile the same Plan
        self._entries: dict[str, BpfEntry] = {}
        self._lock = threading.Lock()
        self._refreshing = threading.RLock()  # held for a whole relist
        self._clock = clock
        self._last_list = float("-inf")
        self.listeners: list[Callable[[], None]] = []  # called after every refresh
        self.listed = False  # a relist has succeeded: "no entry" now means "not protected"

    def refresh(self) -> None:
        with self._refreshing:
            self._last_list = self._clock()
            entries = flags_by_pod(self._lister(), self.settings)
            with self._lock:
                self._entries = entries
            self.listed = True
        log.info("%d protected pod(s) on this node", len(entries))
        for listener in self.listeners:
            listener()

    def snapshot(self) -> list[BpfEntry]:
        """Every protected pod on this node, as last listed."""
        with self._lock:
            return list(self._entries.values())

    def known(self, uid: str) -> BpfEntry | None:
        """The cached entry, without relisting."""
        with self._lock:
            return self._entries.get(uid)

    def entry(self, uid: str) -> BpfEntry | None:
        with self._lock:
            found = self._entries.get(uid)
        if found is not None:
            return found
        # Unknown: bound a moment ago? One relist at a time; a caller that waited for
        # another's relist (a burst of pods registering) looks again before deciding, rather
        # than being refused because that relist had just started.
        with self._refreshing:
            with self._lock:
                found = self._entries.get(uid)
            if found is None and self._clock() - self._last_list >= self.MIN_RELIST_SECONDS:
                self.refresh()
                with self._lock:
                    found = self._entries.get(uid)
        return found
