"""The node's report to the operator: one coordination.k8s.io Lease per node.

Why a Lease: the operator needs "which nodes enforce policy P" and "how many violations of P",
and many agents must never write one shared status (lost updates, conflicts). Each agent owns
``cloudtaser-agent-<node>`` in the operator's namespace, renews it (a dead agent's report
expires with the Lease), and writes two annotations:

- ``cloudtaser.io/policies``: the EnforcementPolicies that protect at least one pod on this node
  (JSON list, sorted);
- ``cloudtaser.io/violations``: violations per policy since the Lease was created (JSON object).
  A restarted agent continues the counts it reads back, so they never go backwards.

The operator (operator/cloudtaser/operator/operating.py) lists these Leases and writes each policy's
``nodesEnforcing`` and ``violations``. Nothing secret is reported: names and counts only.
"""

from __future__ import annotations

import datetime
import json
import logging
import threading
from typing import Any

from cloudtaser.bpf.watching import PodPolicies

log = logging.getLogger("cloudtaser.bpf.leasing")
PREFIX = "cloudtaser-agent-"
LABELS = {"app.kubernetes.io/name": "cloudtaser", "app.kubernetes.io/component": "agent-report"}
SELECTOR = ",".join(f"{k}={v}" for k, v in LABELS.items())
POLICIES = "cloudtaser.io/policies"
VIOLATIONS = "cloudtaser.io/violations"
BACKEND = "cloudtaser.io/backend"
DURATION = 60  # seconds a report stays valid without renewal
RENEW = 20.0
DEBOUNCE = 1.0  # a burst of violations is one write


def lease_name(node: str) -> str:
    return f"{PREFIX}{node}"[:253]


def fresh(lease: dict[str, Any], now: datetime.datetime) -> bool:
    """Renewed within its duration (a report from a live agent)."""
    spec = lease.get("spec") or {}
    renewed = spec.get("renewTime")
    if not isinstance(renewed, str):
        return False
    try:
        at = datetime.datetime.fromisoformat(renewed.replace("Z", "+00:00"))
    except ValueError:
        return False
    return (now - at).total_seconds() <= float(spec.get("leaseDurationSeconds") or DURATION)


def reported(lease: dict[str, Any]) -> tuple[list[str], dict[str, int]]:
    """(policies enforced, violations by policy) from a Lease; malformed annotations read as
    nothing reported (one broken agent must not break every policy's status)."""
    notes = (lease.get("metadata") or {}).get("annotations") or {}
    try:
        policies = json.loads(notes.get(POLICIES, "[]"))
        violations = json.loads(notes.get(VIOLATIONS, "{}"))
    except ValueError:
        return [], {}
    if not isinstance(policies, list) or not isinstance(violations, dict):
        return [], {}
    return ([p for p in policies if isinstance(p, str)],
            {k: v for k, v in violations.items() if isinstance(k, str) and isinstance(v, int) and v >= 0})


class NodeReport:
    """Keeps this node's Lease current from a worker thread (never blocks the agent)."""

    def __init__(self, policies: PodPolicies, node: str, namespace: str, backend: str,
                 api: Any | None = None) -> None:
        self._policies = policies
        self._node = node
        self._namespace = namespace
        self._backend = backend
        self._api = api
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._dirty = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="agent-node-report", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._policies.listeners.append(self._dirty.set)  # pods came or went

    def close(self) -> None:
        self._stop.set()
        self._dirty.set()
        self._thread.join(timeout=10)

    def record(self, uid: str | None) -> None:
        """One violation against the pod ``uid`` (counted under each of its policies)."""
        entry = self._policies.known(uid) if uid else None
        if entry is None:
            return
        with self._lock:
            for name in entry.policy.policies or ["default"]:
                self._counts[name] = self._counts.get(name, 0) + 1
        self._dirty.set()

    # --- the worker ----------------------------------------------------------------------

    def _client(self) -> Any:
        import kubernetes

        return self._api or kubernetes.client.CoordinationV1Api()

    def _run(self) -> None:
        loaded = False
        while not self._stop.is_set():
            try:
                if not loaded:
                    self._load()
                    loaded = True
                self._write()
            except Exception as e:  # the API server away must not stop the agent
                log.warning("node report not written: %s", type(e).__name__)
            self._dirty.wait(timeout=RENEW)
            if self._stop.is_set():
                break
            self._stop.wait(DEBOUNCE)
            self._dirty.clear()

    def _load(self) -> None:
        """Continue the counts a previous agent on this node wrote."""
        import kubernetes

        try:
            lease = self._client().read_namespaced_lease(lease_name(self._node), self._namespace)
        except kubernetes.client.ApiException as e:
            if e.status == 404:
                return
            raise
        body = kubernetes.client.ApiClient().sanitize_for_serialization(lease)
        _, counts = reported(body)
        with self._lock:
            for name, count in counts.items():
                self._counts[name] = self._counts.get(name, 0) + count

    def body(self) -> dict[str, Any]:
        now = datetime.datetime.now(datetime.timezone.utc)
        policies = sorted({name for entry in self._policies.snapshot()
                           for name in entry.policy.policies or ["default"]})
        with self._lock:
            counts = dict(sorted(self._counts.items()))
        return {
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": lease_name(self._node), "namespace": self._namespace,
                         "labels": LABELS, "annotations": {
                             POLICIES: json.dumps(policies), VIOLATIONS: json.dumps(counts),
                             BACKEND: self._backend}},
            "spec": {"holderIdentity": self._node, "leaseDurationSeconds": DURATION,
                     "renewTime": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")},
        }

    def _write(self) -> None:
        import kubernetes

        api = self._client()
        body = self.body()
        try:  # a merge patch: no resourceVersion needed, and this agent is the only writer
            api.patch_namespaced_lease(lease_name(self._node), self._namespace, body)
        except kubernetes.client.ApiException as e:
            if e.status != 404:
                raise
            api.create_namespaced_lease(self._namespace, body)
