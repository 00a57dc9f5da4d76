"""The operator's writes to the API: each CR's status (when it changed), an Event when a
binding's problems or OPA's denial change, and the MutatingWebhookConfiguration kept equal to
the Plan's (repairing drift).

Only the leader writes (reconciling.py). What was written is remembered by digest, so an
unchanged status costs no request; a new leader forgets it and writes everything once.
Blocking calls of the API client (cloudtaser/kubeapi.py): the operator runs them in a thread.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from cloudtaser.engine.plans import Plan, Problem
from cloudtaser.engine.resources import GROUP, VERSION
from cloudtaser.engine.webhooks import WEBHOOK_CONFIGURATION, webhook_configuration
from cloudtaser.kubeapi import MERGE_PATCH, ApiError, KubeApi, path
from cloudtaser.operator import statuses
from cloudtaser.operator.statuses import Decision

log = logging.getLogger("cloudtaser.operator")
WEBHOOKS = ("apis", "admissionregistration.k8s.io", "v1", "mutatingwebhookconfigurations")


@dataclass
class Writer:
    """Writes statuses, Events and the webhook configuration, each only when it changed."""

    api: KubeApi
    written: dict[str, str] = field(default_factory=dict)  # object -> digest of the last status
    announced: dict[str, str] = field(default_factory=dict)  # binding -> digest of its problems

    def forget(self) -> None:
        """Another replica may have written since: write every status once more."""
        self.written.clear()

    def write_statuses(
        self,
        plan: Plan,
        decisions: dict[str, Decision],
        snapshot: dict[str, dict[str, dict[str, Any]]],
        reports: dict[str, tuple[int, int]],
    ) -> None:
        """The status of every SecretBinding and EnforcementPolicy in ``snapshot`` (kind ->
        namespace/name -> body), from the Plan, OPA's ``decisions`` and the node ``reports``
        (policy -> (nodes enforcing, violations))."""
        now = statuses.timestamp(datetime.datetime.now(datetime.UTC))
        summaries = {s.binding: s for s in plan.bindings}
        by_binding, by_policy = statuses.problems_by_object(plan.problems)
        for key, body in snapshot["SecretBinding"].items():
            namespace, name = key.split("/", 1)
            ref = f"{namespace}/{name}"
            mine = by_binding.get(ref, [])
            decision = decisions.get(ref)
            status = statuses.binding_status(body, mine, summaries.get(ref), decision, now)
            self.patch("secretbindings", namespace, name, status)
            self.announce(ref, body, mine, decision)
        matched = {p.policy: p.matched_pods for p in plan.policies}
        constrained = {p.policy: p.constrained_pods for p in plan.policies}
        for key, body in snapshot["EnforcementPolicy"].items():
            name = key.split("/", 1)[1]
            status = statuses.policy_status(
                body,
                by_policy.get(name, []),
                matched.get(name, 0),
                constrained.get(name, []),
                reports.get(name, (0, 0)),
                now,
            )
            self.patch("enforcementpolicies", None, name, status)

    def patch(self, plural: str, namespace: str | None, name: str, status: dict[str, Any]) -> None:
        """Write one object's status (a merge patch of its status subresource, the one write
        the RBAC grants on it) unless it is the one last written."""
        digest = hashlib.sha256(json.dumps(status, sort_keys=True).encode()).hexdigest()
        key = f"{plural}/{namespace or ''}/{name}"
        if self.written.get(key) == digest:
            return
        scope = ("namespaces", namespace) if namespace is not None else ()
        try:
            self.api.patch(
                path("apis", GROUP, VERSION, *scope, plural, name, "status"),
                {"status": status},
                MERGE_PATCH,
            )
            self.written[key] = digest
        except ApiError as e:
            if e.status != 404:  # deleted meanwhile: nothing to say
                log.warning(
                    "status of %s %s/%s not written: HTTP %s", plural, namespace, name, e.status
                )

    def announce(
        self, ref: str, body: dict[str, Any], problems: list[Problem], decision: Decision | None
    ) -> None:
        """A Kubernetes Event when a binding's problems or OPA denial change."""
        lines = statuses.announcement(problems, decision)
        digest = hashlib.sha256("\n".join(lines).encode()).hexdigest()
        if self.announced.get(ref, "") == digest or (not lines and ref not in self.announced):
            self.announced[ref] = digest
            return
        self.announced[ref] = digest
        meta = body.get("metadata", {})
        namespace = str(meta.get("namespace"))
        event = binding_event(meta, lines, datetime.datetime.now(datetime.UTC))
        try:
            self.api.post(path("api", "v1", "namespaces", namespace, "events"), event)
        except ApiError as e:
            log.warning("event for %s not posted: HTTP %s", ref, e.status)

    def apply_webhook(self, plan: Plan, client_config: dict[str, Any]) -> bool:
        """Make the configuration equal to the Plan's; False: someone else wrote it between
        our read and write (409), so the caller re-derives it on the next round."""
        wanted = webhook_configuration(plan, client_config)
        try:
            try:
                have = self.api.get(path(*WEBHOOKS, WEBHOOK_CONFIGURATION))
            except ApiError as e:
                if e.status != 404:
                    raise
                self.api.post(path(*WEBHOOKS), wanted)
                log.info("webhook configuration created (namespaces: %s)", plan.webhook.namespaces)
                return True
            if same_webhooks(have, wanted):
                return True
            wanted["metadata"]["resourceVersion"] = have["metadata"]["resourceVersion"]
            self.api.put(path(*WEBHOOKS, WEBHOOK_CONFIGURATION), wanted)
        except ApiError as e:
            if e.status != 409:  # 409: created or changed meanwhile
                raise
            log.info("webhook configuration changed while we wrote it; deriving it again")
            return False
        log.info("webhook configuration updated (namespaces: %s)", plan.webhook.namespaces)
        return True


def binding_event(meta: dict[str, Any], lines: list[str], now: datetime.datetime) -> dict[str, Any]:
    """A core/v1 Event on the SecretBinding of ``meta`` saying its problems (``lines``; none:
    they are resolved), as the kubernetes client serialised the one it was given."""
    stamp = now.isoformat()
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta.get('name')}.", "namespace": meta.get("namespace")},
        "involvedObject": {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "SecretBinding",
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
        },
        "type": "Warning" if lines else "Normal",
        "reason": "CompileProblems" if lines else "Compiled",
        "message": ("; ".join(lines) or "all problems resolved")[:1000],
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
        "source": {"component": "cloudtaser-operator"},
    }


def same_webhooks(have: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """Compare what we set; the API server adds defaults we do not manage."""

    def pick(config: dict[str, Any]) -> Any:
        return [{k: w.get(k) for k in wanted["webhooks"][0]} for w in config.get("webhooks", [])]

    return bool(pick(have) == pick(wanted)) and (
        have["metadata"].get("labels", {}).items() >= wanted["metadata"]["labels"].items()
    )
