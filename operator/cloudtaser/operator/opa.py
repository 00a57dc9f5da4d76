"""Questions to OPA: is this SecretBinding allowed (policies/binding.rego), and has OPA's
policy changed since it was last asked.

A binding is asked again only when its spec or OPA's policy revision changed, so a changed
Rego policy reaches existing bindings without an edit and a quiet cluster costs two small
requests per ``OPA_TTL``. Fails closed: a binding OPA never answered for is not allowed.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Container
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests

from cloudtaser.operator.statuses import ALLOWED, Decision

OPA_TIMEOUT = 2.0
OPA_PACKAGE = "cloudtaser.binding"  # policies/binding.rego: package cloudtaser.binding, rule deny
# How often the operator looks for a new OPA policy (its modules and bundle revisions): two
# small requests, never a question per binding. Bindings are asked again only when their spec
# or that policy revision changed (env CLOUDTASER_OPA_RECHECK: seconds, for tests).
OPA_TTL = float(os.environ.get("CLOUDTASER_OPA_RECHECK", "60"))


@dataclass
class Opa:
    """The OPA at ``url`` (None: no OPA, every binding is allowed) and what it decided."""

    url: str | None
    client: Any = None  # opa_client.opa.OpaClient, made on first use
    # binding -> (spec version, decision, OPA policy revision): re-asked when either changes.
    decisions: dict[str, tuple[str, Decision, str | None]] = field(default_factory=dict)
    sent: int = 0  # questions and revision checks sent to OPA (benchmarks, tests)
    # The last revision OPA gave: stands in while OPA does not answer the revision check
    # (busy answering a start-up's 10k questions, say), so that what is decided meanwhile is
    # not all asked again once the check answers with that same revision.
    last_revision: str | None = None

    def _client(self) -> Any:
        """The OPA client (opa-python-client), made once; no retries of its own: a binding
        OPA cannot answer keeps its last decision and is asked again on the next round."""
        if self.client is None:
            from opa_client.opa import OpaClient

            url = urlsplit(self.url or "")
            https = url.scheme == "https"
            self.client = OpaClient(
                host=url.hostname or "localhost",
                port=url.port or (443 if https else 8181),
                ssl=https,
                timeout=OPA_TIMEOUT,
                retries=0,
            )
        return self.client

    def revision(self) -> str | None:
        """A digest of what OPA decides with: its policy modules and its bundles' manifests
        (revisions). When OPA does not answer, the last digest it gave (known decisions
        stand); None: no OPA, or it never answered."""
        if self.url is None:
            return None
        base = self.url.rstrip("/")
        digest = hashlib.sha256()
        try:
            for path in ("/v1/policies", "/v1/data/system/bundles"):
                self.sent += 1
                answer = requests.get(base + path, timeout=OPA_TIMEOUT, verify=True)
                answer.raise_for_status()
                result = answer.json().get("result")
                if path == "/v1/policies" and isinstance(result, list):
                    result = sorted(
                        (m.get("id"), m.get("raw")) for m in result if isinstance(m, dict)
                    )
                digest.update(json.dumps(result, sort_keys=True).encode())
        except (requests.RequestException, ValueError, AttributeError, TypeError):
            return self.last_revision
        self.last_revision = digest.hexdigest()
        return self.last_revision

    def decide(self, ref: str, binding: bytes, digest: str, revision: str | None) -> Decision:
        """``binding``: the SecretBinding ``ref`` (namespace/name) as compact JSON without
        its status (what OPA's input is); ``digest``: its spec version (uid/generation);
        ``revision``: OPA's policy revision now (``revision()``). Asked only when either
        changed."""
        known = self.decisions.get(ref)
        if known and known[0] == digest and (revision is None or known[2] == revision):
            return known[1]
        if self.url is None:
            decision = ALLOWED
        else:
            body = json.loads(binding)
            try:
                self.sent += 1
                answer = self._client().query_rule(body, OPA_PACKAGE, "deny")
                reasons = sorted(answer.get("result") or [])
                decision = Decision(False, tuple(reasons)) if reasons else ALLOWED
            except (requests.RequestException, ValueError, AttributeError) as e:
                # Fail closed for what OPA never saw: a new binding, or an edited spec. An
                # unchanged spec keeps its last decision until OPA answers again.
                if known and known[0] == digest:
                    return known[1]
                reason = f"OPA unreachable at {self.url} ({type(e).__name__})"
                return Decision(None, (reason,))
        self.decisions[ref] = (digest, decision, revision)
        return decision

    def forget_all_but(self, refs: Container[str]) -> None:
        """Drop the decisions of bindings that are gone."""
        self.decisions = {ref: v for ref, v in self.decisions.items() if ref in refs}
