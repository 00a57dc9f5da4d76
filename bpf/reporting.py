"""Violations as Kubernetes Events on the protected pod.

The ring buffer says which process was accessed (target tgid), how, and by whom; the target's
cgroup names its pod, and the compiled policy (bpf/watching.py) knows the pod's namespace and
name. Events are posted from a worker thread so the ring-buffer poll never waits on the API
server. An Event carries the vector, the action and the offender's pid/uid/comm — never any
memory contents (the kernel side reports none).
"""

from __future__ import annotations

import datetime
import logging
import queue
import threading
from typing import TYPE_CHECKING, Any

from cloudtaser.bpf.cgroups import pod_uid
from cloudtaser.bpf.watching import PodPolicies

if TYPE_CHECKING:
    from cloudtaser.bpf.agent import Violation

log = logging.getLogger("cloudtaser.bpf.reporting")
REASON = "ProtectedProcessAccess"


def event_message(v: Violation) -> str:
    return (f"{v.kind} access to pid {v.target_tgid} by pid {v.opener_pid} "
            f"(uid {v.opener_uid}, comm {v.opener_comm!r}): {v.action}")


class EventReporter:
    def __init__(self, policies: PodPolicies, node: str, core_api: Any | None = None) -> None:
        self._policies = policies
        self._node = node
        self._api = core_api
        self._queue: queue.Queue[tuple[Violation, str | None] | None] = queue.Queue(maxsize=1000)
        self._thread = threading.Thread(target=self._run, name="agent-events-api", daemon=True)
        self._thread.start()

    def report(self, violation: Violation) -> None:
        # The pod now, while the target surely lives (a short-lived child may be gone by the
        # time the worker posts); reading /proc/PID/cgroup is cheap enough for the poll loop.
        try:
            self._queue.put_nowait((violation, pod_uid(violation.target_tgid)))
        except queue.Full:
            log.warning("event queue full: a violation was logged but not posted")

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            try:
                self._post(*item)
            except Exception as e:  # the API server being away must not stop the agent
                log.warning("event for a violation not posted: %s", type(e).__name__)

    def _post(self, v: Violation, uid: str | None) -> None:
        import kubernetes

        entry = self._policies.entry(uid) if uid else None
        if entry is None:
            log.warning("violation on pid %d, which is in no known pod", v.target_tgid)
            return
        api = self._api or kubernetes.client.CoreV1Api()
        now = datetime.datetime.now(datetime.timezone.utc)
        api.create_namespaced_event(entry.namespace, kubernetes.client.CoreV1Event(
            metadata=kubernetes.client.V1ObjectMeta(generate_name=f"{entry.pod}.",
                                                    namespace=entry.namespace),
            involved_object=kubernetes.client.V1ObjectReference(
                api_version="v1", kind="Pod", name=entry.pod, namespace=entry.namespace,
                uid=entry.uid),
            type="Warning", reason=REASON, message=event_message(v),
            first_timestamp=now, last_timestamp=now, count=1,
            source=kubernetes.client.V1EventSource(component="cloudtaser-agent", host=self._node),
        ))
