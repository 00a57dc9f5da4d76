"""Leader election among the operator's replicas, on the coordination.k8s.io Lease
``cloudtaser-operator`` in the operator's namespace.

Every replica watches, compiles and serves the webhook; only the leader writes statuses,
Events and the webhook configuration. Losing the lease stops the writes at once and re-enters
the election.

The algorithm and timing of the kubernetes client's leaderelection, which the operator ran
until that client's import cost too much memory (issue 17), on our API client
(cloudtaser/kubeapi.py) and the verbs the chart's Role grants (get, create, update):

- Every ``RETRY_PERIOD`` a follower reads the Lease. It creates it when there is none, takes
  it when it names no holder or when its record has not changed for ``LEASE_DURATION`` as
  this replica observed it (its own monotonic clock: clocks of different nodes are never
  compared), and otherwise waits. Taking is a replace conditional on the resourceVersion
  read (and creating fails when another created first), so two replicas never both win.
- The leader renews every ``RETRY_PERIOD`` (keeping acquireTime). When no renewal succeeded
  for ``RENEW_DEADLINE`` it stops leading, before any other replica may take the lease
  (``LEASE_DURATION`` after it last saw it change); its requests time out at that deadline.
- A failed try, whatever the API server said or whether it answered at all, is retried on
  the next period. Only an answer's status line or why there was none is logged, and only
  when there was none (an HTTP error is part of the protocol: a 409 means another replica
  wrote first).

Unlike the kubernetes client's implementation, a connection error while leading counts as a
failed renewal (retried until the deadline, as client-go does) rather than ending the term at
once: our client does not retry a request, so a dropped keep-alive connection would
otherwise cost a term, and a new term rewrites every status (reconciling.Operator.lead).
leaseTransitions counts changes of holder, as client-go counts them.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cloudtaser.errors import CloudtaserError
from cloudtaser.kubeapi import ApiError, KubeApi, path

log = logging.getLogger("cloudtaser.operator")
LEASE = "cloudtaser-operator"
LEASE_DURATION = 15.0  # seconds a lease holds without renewal, as its followers observe it
RENEW_DEADLINE = 10.0  # seconds the leader keeps trying to renew before it stops leading
RETRY_PERIOD = 2.0  # seconds between tries
REQUEST_TIMEOUT = RENEW_DEADLINE  # a follower's request (a leader's is cut at its deadline)
MICRO_TIME = "%Y-%m-%dT%H:%M:%S.%fZ"  # a Lease's acquireTime and renewTime (MicroTime)


def elect(
    lead: Callable[[bool], None],
    loop: asyncio.AbstractEventLoop,
    api: KubeApi,
    namespace: str,
    identity: str,
) -> None:
    """Run the election forever (in a daemon thread); ``lead`` (called on ``loop``) is told
    whenever this replica starts or stops leading."""

    def tell(leading: bool) -> None:
        loop.call_soon_threadsafe(lead, leading)

    while True:
        Election(api, namespace, identity).term(tell)
        time.sleep(RETRY_PERIOD)


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclass
class Election:
    """One term of this replica in the election: a follower until it takes the lease, then
    the leader until it cannot renew it. ``clock``, ``sleep`` and ``wall`` (the time written
    into the Lease) are the process's own but for tests."""

    api: Any  # KubeApi (get, post, put)
    namespace: str
    identity: str
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    wall: Callable[[], datetime.datetime] = _utc_now
    # The Lease's (holder, duration, acquireTime, renewTime) as last read, and when it was
    # seen to change (``clock``).
    observed: tuple[Any, ...] | None = field(default=None, init=False)
    observed_at: float = field(default=0.0, init=False)

    def term(self, tell: Callable[[bool], None]) -> None:
        """Wait to lead, lead until the lease is lost, and say so: ``tell(True)`` on taking
        the lease, ``tell(False)`` when the term ends (however it ends)."""
        try:
            self.acquire()
            tell(True)
            self.keep()
        except Exception as e:  # a bug: out of this term, into the next
            log.warning("leader election: %s; retrying", type(e).__name__)
        tell(False)

    def acquire(self) -> None:
        """Return once this replica holds the lease."""
        while not self.attempt(self.clock() + REQUEST_TIMEOUT):
            self.sleep(RETRY_PERIOD)

    def keep(self) -> None:
        """Renew every RETRY_PERIOD; return when no renewal succeeded for RENEW_DEADLINE."""
        while True:
            self.sleep(RETRY_PERIOD)
            deadline = self.clock() + RENEW_DEADLINE
            while not self.attempt(deadline):
                self.sleep(RETRY_PERIOD)
                if self.clock() >= deadline:
                    return

    # --- one try ---------------------------------------------------------------------------

    def _lease(self, *name: str) -> str:
        return path(
            "apis", "coordination.k8s.io", "v1", "namespaces", self.namespace, "leases", *name
        )

    def attempt(self, deadline: float) -> bool:
        """One try to take or renew the lease, its requests cut at ``deadline``; False: not
        now (held by another, written by another meanwhile, or the API server failed)."""
        try:
            return self._take_or_renew(deadline)
        except ApiError as e:  # 409: another replica wrote first; 5xx: try again
            log.debug("leader election: %s", e)
        except CloudtaserError as e:  # no answer: one line, as an outage deserves
            log.warning("leader election: %s; retrying", e)
        return False

    def _take_or_renew(self, deadline: float) -> bool:
        def timeout() -> float:
            return max(0.1, deadline - self.clock())

        now = self.wall().strftime(MICRO_TIME)
        try:
            lease = self.api.get(self._lease(LEASE), timeout=timeout())
        except ApiError as e:
            if e.status != 404:
                raise
            created = self._new_lease(now)
            self.api.post(self._lease(), created, timeout=timeout())  # 409 if another did
            self._observe(self._record(created["spec"]))
            return True
        spec = lease.get("spec") or {}
        if self._held_by_another(self._record(spec)):
            return False
        lease["spec"] = self._claimed(spec, now)
        self.api.put(self._lease(LEASE), lease, timeout=timeout())  # 409 if it changed
        self._observe(self._record(lease["spec"]))
        return True

    def _held_by_another(self, record: tuple[Any, ...]) -> bool:
        """Held by another replica, renewed within LEASE_DURATION as this replica observed
        it; a lease without a complete record (released, or never held) is free."""
        if not all(record):
            return False
        if record != self.observed:
            self._observe(record)
        return record[0] != self.identity and self.clock() < self.observed_at + LEASE_DURATION

    def _claimed(self, spec: dict[str, Any], now: str) -> dict[str, Any]:
        """``spec`` held by this replica from ``now``: renewed when it held it already (its
        acquireTime kept), else taken over (one more transition)."""
        mine = spec.get("holderIdentity") == self.identity
        return {
            **spec,
            "holderIdentity": self.identity,
            "leaseDurationSeconds": int(LEASE_DURATION),
            "acquireTime": (spec.get("acquireTime") if mine else None) or now,
            "renewTime": now,
            "leaseTransitions": int(spec.get("leaseTransitions") or 0) + (0 if mine else 1),
        }

    def _observe(self, record: tuple[Any, ...]) -> None:
        self.observed, self.observed_at = record, self.clock()

    @staticmethod
    def _record(spec: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(
            spec.get(k) or None
            for k in ("holderIdentity", "leaseDurationSeconds", "acquireTime", "renewTime")
        )

    def _new_lease(self, now: str) -> dict[str, Any]:
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": LEASE, "namespace": self.namespace},
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": int(LEASE_DURATION),
                "acquireTime": now,
                "renewTime": now,
                "leaseTransitions": 0,
            },
        }
