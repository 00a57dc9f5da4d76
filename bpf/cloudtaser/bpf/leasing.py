"""The agent's side of the node report: keeping this node's Lease current.

The report's format (the Lease's name, labels and annotations, and what they mean) lives in
the engine, engine/cloudtaser/engine/reports.py, which the operator reads the Leases with
(operator/cloudtaser/operator/listing.py); this module is the Kubernetes I/O: it reads the
Lease back once (a restarted agent continues its counts), then renews it every ``RENEW``
seconds and after every change, from a worker thread that never blocks the agent.
"""

from __future__ import annotations

import datetime
import logging
import threading
from typing import Any

from cloudtaser.bpf.watching import PodPolicies
from cloudtaser.engine import reports
from cloudtaser.kubeapi import ApiError, KubeApi, path

log = logging.getLogger("cloudtaser.bpf.leasing")
RENEW = 20.0
DEBOUNCE = 1.0  # a burst of violations is one write


class NodeReport:
    """Keeps this node's Lease current from a worker thread (never blocks the agent)."""

    def __init__(
        self,
        policies: PodPolicies,
        node: str,
        namespace: str,
        backend: str,
        api: KubeApi,
    ) -> None:
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

    def _leases(self, *name: str) -> str:
        return path(
            "apis", "coordination.k8s.io", "v1", "namespaces", self._namespace, "leases", *name
        )

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
        try:
            lease = self._api.get(self._leases(reports.lease_name(self._node)))
        except ApiError as e:
            if e.status == 404:
                return
            raise
        counts = reports.decode(lease).violations
        with self._lock:
            for name, count in counts.items():
                self._counts[name] = self._counts.get(name, 0) + count

    def body(self) -> dict[str, Any]:
        now = datetime.datetime.now(datetime.UTC)
        policies = sorted(
            {
                name
                for entry in self._policies.snapshot()
                for name in entry.policy.policies or ["default"]
            }
        )
        with self._lock:
            counts = dict(sorted(self._counts.items()))
        return reports.encode(
            reports.Report(
                node=self._node,
                policies=policies,
                violations=counts,
                backend=self._backend,
                renewed=now.strftime(reports.RENEW_TIME_FORMAT),
            ),
            self._namespace,
        )

    def _write(self) -> None:
        api = self._api
        body = self.body()
        try:  # a patch: no resourceVersion needed, and this agent is the only writer
            api.patch(self._leases(reports.lease_name(self._node)), body)
        except ApiError as e:
            if e.status != 404:
                raise
            api.post(self._leases(), body)
