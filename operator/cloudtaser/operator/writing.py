"""The operator's writes to the API: each CR's status (when it changed), an Event when a
binding's problems or OPA's denial change, and the MutatingWebhookConfiguration kept equal to
the Plan's (repairing drift).

Only the leader writes (reconciling.py). What was written is remembered by digest, so an
unchanged status costs no request; a new leader forgets it and writes everything once.
Blocking calls of the kubernetes client: the operator runs them in a thread.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any

import kubernetes

from cloudtaser.engine.plans import Plan, Problem
from cloudtaser.engine.resources import GROUP, VERSION
from cloudtaser.engine.webhooks import WEBHOOK_CONFIGURATION, webhook_configuration
from cloudtaser.operator import statuses
from cloudtaser.operator.statuses import Decision

log = logging.getLogger("cloudtaser.operator")


@dataclass
class Writer:
    """Writes statuses, Events and the webhook configuration, each only when it changed."""

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
        api = kubernetes.client.CustomObjectsApi()
        now = statuses.timestamp(datetime.datetime.now(datetime.UTC))
        summaries = {s.binding: s for s in plan.bindings}
        by_binding, by_policy = statuses.problems_by_object(plan.problems)
        for key, body in snapshot["SecretBinding"].items():
            namespace, name = key.split("/", 1)
            ref = f"{namespace}/{name}"
            mine = by_binding.get(ref, [])
            decision = decisions.get(ref)
            status = statuses.binding_status(body, mine, summaries.get(ref), decision, now)
            self.patch(api, "secretbindings", namespace, name, status)
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
            self.patch(api, "enforcementpolicies", None, name, status)

    def patch(
        self, api: Any, plural: str, namespace: str | None, name: str, status: dict[str, Any]
    ) -> None:
        """Write one object's status unless it is the one last written."""
        digest = hashlib.sha256(json.dumps(status, sort_keys=True).encode()).hexdigest()
        key = f"{plural}/{namespace or ''}/{name}"
        if self.written.get(key) == digest:
            return
        try:
            if namespace is None:
                api.patch_cluster_custom_object_status(
                    GROUP, VERSION, plural, name, {"status": status}
                )
            else:
                api.patch_namespaced_custom_object_status(
                    GROUP, VERSION, namespace, plural, name, {"status": status}
                )
            self.written[key] = digest
        except kubernetes.client.ApiException as e:
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
        now = datetime.datetime.now(datetime.UTC)
        event = kubernetes.client.CoreV1Event(
            metadata=kubernetes.client.V1ObjectMeta(
                generate_name=f"{meta.get('name')}.", namespace=meta.get("namespace")
            ),
            involved_object=kubernetes.client.V1ObjectReference(
                api_version=f"{GROUP}/{VERSION}",
                kind="SecretBinding",
                name=meta.get("name"),
                namespace=meta.get("namespace"),
                uid=meta.get("uid"),
            ),
            type="Warning" if lines else "Normal",
            reason="CompileProblems" if lines else "Compiled",
            message=("; ".join(lines) or "all problems resolved")[:1000],
            first_timestamp=now,
            last_timestamp=now,
            count=1,
            source=kubernetes.client.V1EventSource(component="cloudtaser-operator"),
        )
        try:
            kubernetes.client.CoreV1Api().create_namespaced_event(meta.get("namespace"), event)
        except kubernetes.client.ApiException as e:
            log.warning("event for %s not posted: HTTP %s", ref, e.status)

    def apply_webhook(self, plan: Plan, client_config: dict[str, Any]) -> bool:
        """Make the configuration equal to the Plan's; False: someone else wrote it between
        our read and write (409), so the caller re-derives it on the next round."""
        api = kubernetes.client.AdmissionregistrationV1Api()
        wanted = webhook_configuration(plan, client_config)
        try:
            try:
                current = api.read_mutating_webhook_configuration(WEBHOOK_CONFIGURATION)
            except kubernetes.client.ApiException as e:
                if e.status != 404:
                    raise
                # The client wants its model classes; dicts serialise as they are.
                api.create_mutating_webhook_configuration(wanted)  # type: ignore[arg-type]
                log.info("webhook configuration created (namespaces: %s)", plan.webhook.namespaces)
                return True
            client = kubernetes.client.ApiClient()
            have = client.sanitize_for_serialization(current)
            if same_webhooks(have, wanted):
                return True
            wanted["metadata"]["resourceVersion"] = have["metadata"]["resourceVersion"]
            api.replace_mutating_webhook_configuration(WEBHOOK_CONFIGURATION, wanted)  # type: ignore[arg-type]
        except kubernetes.client.ApiException as e:
            if e.status != 409:  # 409: created or changed meanwhile
                raise
            log.info("webhook configuration changed while we wrote it; deriving it again")
            return False
        log.info("webhook configuration updated (namespaces: %s)", plan.webhook.namespaces)
        return True


def same_webhooks(have: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """Compare what we set; the API server adds defaults we do not manage."""

    def pick(config: dict[str, Any]) -> Any:
        return [{k: w.get(k) for k in wanted["webhooks"][0]} for w in config.get("webhooks", [])]

    return bool(pick(have) == pick(wanted)) and (
        have["metadata"].get("labels", {}).items() >= wanted["metadata"]["labels"].items()
    )
