"""This node's enforcement backend as a Node label, for the scheduler.

Why a label: a policy with ``requireBackend: lsm`` keeps its pods off nodes that can only kill
offenders after the fact, through a nodeSelector on ``cloudtaser.io/agent-backend``
(engine/cloudtaser/engine/patches.py). Only the agent knows which backend loaded here, so the agent keeps the
label: ``lsm`` or ``tracepoint`` once its programs are loaded, gone when it stops (no agent, no
new registrations, whatever the pinned programs still enforce). A started agent overwrites
what an earlier one left (say, a SIGKILLed agent of another backend).

The chart lets the agent's ServiceAccount get and patch nodes; its ValidatingAdmissionPolicy
admits only this label key, on the node named in the agent's pod-bound token.

Never fatal: a label that cannot be written costs only the pods that require it (they wait,
Pending); each failed attempt is one warning line and is retried with backoff, and the label is
checked again every RECHECK seconds (someone may have removed it).
"""

from __future__ import annotations

import json
import logging
import threading
import time

from cloudtaser.engine.plans import AGENT_BACKEND_LABEL
from cloudtaser.kubeapi import KubeApi, path

log = logging.getLogger("cloudtaser.bpf.labelling")
RECHECK = 60.0  # seconds between checks of a written label
RETRY = 2.0  # first retry after a failure; doubled up to MAX_RETRY
MAX_RETRY = 60.0
CLOSE_ATTEMPTS = 3  # removing the label at stop: bounded, the pod is being terminated


class NodeLabel:
    """Keeps ``cloudtaser.io/agent-backend`` on the Node ``node`` equal to the running backend,
    from a worker thread (never blocks the agent)."""

    def __init__(
        self,
        node: str,
        api: KubeApi,
        recheck: float = RECHECK,
        retry: float = RETRY,
    ) -> None:
        self._node = node
        self._api = api
        self._recheck = recheck
        self._retry = retry
        self._backend: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="agent-node-label", daemon=True)

    def start(self, backend: str) -> None:
        """Label the node with ``backend`` (what the agent loaded) and keep it so."""
        self._backend = backend
        self._thread.start()

    def close(self) -> None:
        """Stop keeping the label, and remove it."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self.remove()

    def remove(self) -> bool:
        """Remove the label: a few attempts, each failure one warning line (the agent is
        stopping, or failed to start and must not leave an earlier agent's label behind)."""
        for attempt in range(1, CLOSE_ATTEMPTS + 1):
            try:
                self.apply(None)
                return True
            except Exception as e:  # the API server away must not hang the agent's exit
                last = attempt == CLOSE_ATTEMPTS
                self._warn(None, e, "giving up" if last else "retrying")
                if not last:
                    time.sleep(self._retry)
        return False

    def apply(self, value: str | None) -> bool:
        """Make the label ``value`` (None: absent); True when it had to be written."""
        api = self._api
        node = api.get(path("api", "v1", "nodes", self._node))
        current = (node.get("metadata", {}).get("labels") or {}).get(AGENT_BACKEND_LABEL)
        if current == value:
            return False
        # A strategic merge patch of this one key (null deletes it): no resourceVersion
        # needed, and the node's other labels, written by others, are left alone.
        api.patch(
            path("api", "v1", "nodes", self._node),
            {"metadata": {"labels": {AGENT_BACKEND_LABEL: value}}},
        )
        if value is None:
            log.info("node %s: label %s removed (was %s)", self._node, AGENT_BACKEND_LABEL, current)
        else:
            log.info(
                "node %s: label %s=%s (was %s)",
                self._node,
                AGENT_BACKEND_LABEL,
                value,
                current or "unset",
            )
        return True

    # --- the worker ----------------------------------------------------------------------

    def _run(self) -> None:
        delay = self._retry
        while not self._stop.is_set():
            try:
                self.apply(self._backend)
                delay, wait = self._retry, self._recheck
            except Exception as e:  # the API server away must not stop the agent
                self._warn(self._backend, e, f"retrying in {delay:g} s")
                wait, delay = delay, min(delay * 2, MAX_RETRY)
            self._stop.wait(wait)

    def _warn(self, value: str | None, error: Exception, then: str) -> None:
        what = f"{AGENT_BACKEND_LABEL}={value}" if value else f"removal of {AGENT_BACKEND_LABEL}"
        log.warning(
            "node %s: label %s not written (%s); %s", self._node, what, _reason(error), then
        )


def _reason(error: Exception) -> str:
    """An API error's status and the server's message (an admission policy's explanation, say),
    truncated; any other error by its type only (one short line, never a payload)."""
    status = getattr(error, "status", None)
    if not status:
        return type(error).__name__
    try:
        message = str(json.loads(getattr(error, "body", None) or "{}").get("message", ""))
    except (ValueError, AttributeError):
        message = ""
    if len(message) > 200:  # the explanation is at the end: "... denied request: <why>"
        message = "..." + message[-200:]
    return f"HTTP {status}: {message}" if message else f"HTTP {status}"
