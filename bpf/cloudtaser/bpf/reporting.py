"""Violations as Kubernetes Events on the protected pod, rate-limited.

The ring buffer says which process was accessed (target tgid), how, and by whom; the target's
cgroup names its pod, and the compiled policy (bpf/cloudtaser/bpf/watching.py) knows the pod's namespace and
name. Events are posted from a worker thread so the ring-buffer poll never waits on the API
server. An Event carries the vector, the action and the offender's pid/uid/comm and executable
(its basename, read by the kernel side: the offender may be killed before user space could look)
— never any memory contents (the kernel side reports none).

An attacker in a loop must not flood the API server: violations are aggregated per series
(pod, vector, offender comm). The first of a series is posted at once as a new Event; later
ones only raise the series' count, which is written into that same Event (``count``,
``lastTimestamp``, the latest message) at most once per ``interval`` seconds. A series idle for
``idle`` seconds ends, and the next violation starts a new Event. The agent's metric and log
still count every attempt.
"""

from __future__ import annotations

import datetime
import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cloudtaser.bpf.cgroups import pod_uid
from cloudtaser.bpf.watching import PodPolicies
from cloudtaser.kubeapi import KubeApi, path

if TYPE_CHECKING:
    from cloudtaser.bpf.violations import Violation

log = logging.getLogger("cloudtaser.bpf.reporting")
REASON = "ProtectedProcessAccess"
INTERVAL_SECONDS = 10.0
IDLE_SECONDS = 600.0
MAX_SERIES = 4096


def event_message(v: Violation) -> str:
    return (
        f"{v.kind} access to pid {v.target_tgid} by pid {v.opener_pid} "
        f"(uid {v.opener_uid}, comm {v.opener_comm!r}, exe {v.opener_exe!r}): {v.action}"
    )


@dataclass
class Series:
    count: int  # violations seen
    posted: int  # the count the API server has (0: not created yet)
    last_post: float
    last_seen: float
    handle: Any = None  # the posted Event (namespace, name), set by the poster
    sample: Any = None  # the latest violation (its message goes into the update)


class EventLimiter:
    """The aggregation, without the API server (times come from the caller).

    ``record`` says whether a violation starts a series (post a new Event now); ``due`` lists
    the series whose count moved since their last post at least ``interval`` ago (or, with
    ``flush``, at all) and marks them posted. ``sample`` (the latest violation) is kept with
    its series. At most ``max_series`` series are kept: the
    oldest one is dropped (its last count may go unposted; the metric still has it).
    """

    def __init__(
        self,
        interval: float = INTERVAL_SECONDS,
        idle: float = IDLE_SECONDS,
        max_series: int = MAX_SERIES,
    ) -> None:
        self.interval = interval
        self.idle = idle
        self.max_series = max_series
        self._series: OrderedDict[Hashable, Series] = OrderedDict()
        self._lock = threading.Lock()

    def record(self, key: Hashable, now: float, sample: Any = None) -> bool:
        with self._lock:
            s = self._series.get(key)
            if s is not None and now - s.last_seen <= self.idle:
                s.count += 1
                s.last_seen = now
                s.sample = sample
                self._series.move_to_end(key)
                return False
            self._series[key] = Series(
                count=1, posted=0, last_post=now, last_seen=now, sample=sample
            )
            self._series.move_to_end(key)
            while len(self._series) > self.max_series:
                self._series.popitem(last=False)
            return True

    def created(self, key: Hashable, handle: Any, now: float) -> None:
        """The first Event of ``key``'s series was posted with the count it had then."""
        with self._lock:
            s = self._series.get(key)
            if s is not None and s.handle is None:
                s.handle = handle
                s.posted = 1
                s.last_post = now

    def due(self, now: float, flush: bool = False) -> list[tuple[Any, int, Any]]:
        """(handle, count, sample) of the series to update now; marked as posted."""
        out: list[tuple[Any, int, Any]] = []
        with self._lock:
            for s in self._series.values():
                if s.handle is None or s.count == s.posted:
                    continue
                if flush or now - s.last_post >= self.interval:
                    out.append((s.handle, s.count, s.sample))
                    s.posted = s.count
                    s.last_post = now
            for key in [
                k
                for k, s in self._series.items()
                if now - s.last_seen > self.idle and s.count == s.posted
            ]:
                del self._series[key]
        return out

    def count(self, key: Hashable) -> int:
        with self._lock:
            s = self._series.get(key)
            return s.count if s else 0


class EventReporter:
    def __init__(
        self,
        policies: PodPolicies,
        node: str,
        api: KubeApi,
        interval: float = INTERVAL_SECONDS,
        idle: float = IDLE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._policies = policies
        self._node = node
        self._api = api
        self._clock = clock
        self.limiter = EventLimiter(interval, idle)
        # Only series starts are queued (at most one per series per idle period).
        self._queue: queue.Queue[tuple[Hashable, Violation, str | None] | None] = queue.Queue(
            maxsize=1000
        )
        self._thread = threading.Thread(target=self._run, name="agent-events-api", daemon=True)
        self._thread.start()

    def report(self, violation: Violation) -> None:
        # The pod now, while the target surely lives (a short-lived child may be gone by the
        # time the worker posts); reading /proc/PID/cgroup is cheap enough for the poll loop.
        uid = pod_uid(violation.target_tgid)
        key = (uid, violation.kind, violation.opener_comm)
        if not self.limiter.record(key, self._clock(), violation):
            return
        try:
            self._queue.put_nowait((key, violation, uid))
        except queue.Full:
            log.warning("event queue full: a violation was logged but not posted")

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        tick = min(1.0, self.limiter.interval / 2) or 0.05
        while True:
            try:
                item = self._queue.get(timeout=tick)
            except queue.Empty:
                self._update(flush=False)
                continue
            if item is None:
                self._update(flush=True)
                return
            key, v, uid = item
            try:
                handle = self._post(v, uid)
            except Exception as e:  # the API server being away must not stop the agent
                log.warning("event for a violation not posted: %s", type(e).__name__)
                handle = None
            if handle is not None:
                self.limiter.created(key, handle, self._clock())
            self._update(flush=False)

    def _update(self, flush: bool) -> None:
        for handle, count, sample in self.limiter.due(self._clock(), flush):
            try:
                self._patch(handle, count, sample)
            except Exception as e:
                log.warning("event update for a violation not posted: %s", type(e).__name__)

    def _post(self, v: Violation, uid: str | None) -> tuple[str, str] | None:
        entry = self._policies.entry(uid) if uid else None
        if entry is None:
            log.warning("violation on pid %d, which is in no known pod", v.target_tgid)
            return None
        now = datetime.datetime.now(datetime.UTC).isoformat()
        created = self._api.post(
            path("api", "v1", "namespaces", entry.namespace, "events"),
            {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"generateName": f"{entry.pod}.", "namespace": entry.namespace},
                "involvedObject": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": entry.pod,
                    "namespace": entry.namespace,
                    "uid": entry.uid,
                },
                "type": "Warning",
                "reason": REASON,
                "message": event_message(v),
                "firstTimestamp": now,
                "lastTimestamp": now,
                "count": 1,
                "source": {"component": "cloudtaser-agent", "host": self._node},
            },
        )
        return entry.namespace, str(created["metadata"]["name"])

    def _patch(self, handle: tuple[str, str], count: int, latest: Violation | None) -> None:
        namespace, name = handle
        now = datetime.datetime.now(datetime.UTC)
        body: dict[str, Any] = {"count": count, "lastTimestamp": now.isoformat()}
        if latest is not None:
            body["message"] = event_message(latest)
        self._api.patch(path("api", "v1", "namespaces", namespace, "events", name), body)
