"""The operator: watches the cluster (kopf), compiles, and makes the cluster say so.

kopf event handlers only record the latest body of every SecretBinding, EnforcementPolicy,
Pod, Namespace and our MutatingWebhookConfiguration and wake the reconciler; the reconciler
(debounced) asks OPA about each binding, compiles everything with the engine, hands the new
compiler to the webhook, writes each CR's status when it changed, posts Events when a
binding's problems change, and keeps the webhook configuration equal to the Plan's (repairing
drift). Nothing is kept that the cluster cannot rebuild: a restart re-lists everything and
derives the same statuses and configuration.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime
import hashlib
import json
import logging
import os
import ssl
import threading
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit
from typing import Any

import kopf
import kubernetes
import requests
import urllib3

from cloudtaser.bpf import leasing
from cloudtaser.engine.compiler import ClusterState, IncrementalCompiler
from cloudtaser.engine.documents import parse_objects
from cloudtaser.engine.plans import Plan, Problem
from cloudtaser.engine.resources import GROUP, VERSION, SecretBinding
from cloudtaser.engine.webhooks import WEBHOOK_CONFIGURATION, webhook_configuration
from cloudtaser.errors import CloudtaserError
from cloudtaser.gcpause import gc_paused
from cloudtaser.injector import serving
from cloudtaser.injector.resolving import RegistryCredential, credentials_from_dockerconfigjson

log = logging.getLogger("cloudtaser.operator")
DEBOUNCE = 0.2
OPA_TIMEOUT = 2.0
OPA_PACKAGE = "cloudtaser.binding"  # policies/binding.rego: package cloudtaser.binding, rule deny
# How often the operator looks for a new OPA policy (its modules and bundle revisions): two
# small requests, never a question per binding. Bindings are asked again only when their spec
# or that policy revision changed (env CLOUDTASER_OPA_RECHECK: seconds, for tests).
OPA_TTL = float(os.environ.get("CLOUDTASER_OPA_RECHECK", "60"))
ERROR_BACKOFFS = (0.5, 1.0, 1.0, 2.0, 2.0) + (3.0,) * 100  # kopf's API retries (seconds)
REPORT_PERIOD = 10.0
CERT_POLL = 5.0


@dataclass
class Decision:
    allowed: bool | None  # None: OPA could not be asked and nothing was known before
    reasons: list[str]


@dataclass
class Parsed:
    """One object as the compiler last saw it: its version, model or parse problems."""

    version: str
    model: Any | None
    problems: list[Problem]


KINDS = ("SecretBinding", "EnforcementPolicy", "Pod", "Namespace")


def version_of(kind: str, body: dict[str, Any]) -> str:
    """What must change for the compiler to look again. Our own status writes bump a CR's
    resourceVersion but not its generation, so CRs are keyed on uid + generation (labels and
    annotations of CRs do not affect the compile); pods and namespaces on resourceVersion."""
    meta = body.get("metadata", {})
    if kind in ("SecretBinding", "EnforcementPolicy"):
        return f"{meta.get('uid')}/{meta.get('generation')}"
    return str(meta.get("resourceVersion") or hashlib.sha256(
        json.dumps(body, sort_keys=True, default=str).encode()).hexdigest())


LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


def trimmed(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    """Drop what the compiler never reads (managedFields, kubectl's last-applied copy of the
    whole object, all of a pod's status but how each container runs or ended): the operator
    holds every binding and pod of the cluster."""
    meta = {k: v for k, v in body.get("metadata", {}).items() if k != "managedFields"}
    if LAST_APPLIED in meta.get("annotations", {}):
        meta["annotations"] = {k: v for k, v in meta["annotations"].items() if k != LAST_APPLIED}
    out = {**body, "metadata": meta}
    if kind == "Pod":
        statuses = (out.pop("status", None) or {}).get("containerStatuses") or []
        out["status"] = {"containerStatuses": [
            {k: s[k] for k in ("name", "state", "lastState") if k in s} for s in statuses
            if isinstance(s, dict)]}
    return out


def slim(body: dict[str, Any]) -> dict[str, Any]:
    """What is kept of a body once it is parsed (the model lives in the compiler): the
    identity its version and status writes need, and the old conditions."""
    meta = body.get("metadata", {})
    out: dict[str, Any] = {"metadata": {k: meta[k] for k in (
        "name", "namespace", "uid", "generation", "resourceVersion") if k in meta}, "slim": True}
    if "status" in body:
        out["status"] = body["status"]
    return out


@dataclass
class Operator:
    client_config: dict[str, Any]
    opa_url: str | None
    holder: serving.Holder
    ca_file: str | None = None  # the caBundle's source, re-read when it rotates
    opa: Any = None  # opa_client.opa.OpaClient, made on first use
    bodies: dict[str, dict[str, dict[str, Any]]] = field(default_factory=lambda: {k: {} for k in KINDS})
    # (kind, namespace/name) -> the parse of the body version the compiler was last given.
    parsed: dict[tuple[str, str], Parsed] = field(default_factory=dict)
    # (kind, namespace/name) -> version the compiler holds (bindings: only allowed ones).
    applied: dict[tuple[str, str], str] = field(default_factory=dict)
    # binding -> (spec version, decision, OPA policy revision): re-asked when either changes,
    # so a changed Rego policy reaches existing bindings without an edit.
    decisions: dict[str, tuple[str, Decision, str | None]] = field(default_factory=dict)
    opa_requests: int = 0  # questions and revision checks sent to OPA (benchmarks, tests)
    written: dict[str, str] = field(default_factory=dict)  # object -> digest of the last status
    announced: dict[str, str] = field(default_factory=dict)  # binding -> digest of its problems
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    listed: bool = False  # the initial lists of every kind are in self.bodies
    ready: bool = False  # ... and were compiled: the webhook answers from a complete state
    leading: bool = True  # only the leader writes statuses and the webhook configuration
    tombstones: set[tuple[str, str]] | None = None  # deletions seen while listing
    # policy -> (nodes enforcing, violations), from the agents' node reports (bpf/cloudtaser/bpf/leasing.py)
    reports: dict[str, tuple[int, int]] = field(default_factory=dict)

    # --- inputs ------------------------------------------------------------------------

    def observe(self, kind: str, event_type: str | None, body: dict[str, Any]) -> None:
        meta = body.get("metadata", {})
        key = f"{meta.get('namespace') or ''}/{meta.get('name')}"
        if event_type == "DELETED":
            self.bodies[kind].pop(key, None)
            if self.tombstones is not None:
                self.tombstones.add((kind, key))
        else:
            self.bodies[kind][key] = trimmed(kind, body)
        self.changed.set()

    async def list_all(self) -> None:
        """The initial state, listed before the first compile so that readiness means "every
        binding and policy that existed at start is compiled". kopf's watch events keep the
        bodies current; what they delivered (or deleted) meanwhile wins over the list."""
        self.tombstones = set()
        listed = await asyncio.to_thread(_list_all)
        for kind, items in listed.items():
            for body in items:
                meta = body.get("metadata", {})
                key = f"{meta.get('namespace') or ''}/{meta.get('name')}"
                if (kind, key) not in self.tombstones:
                    self.bodies[kind].setdefault(key, trimmed(kind, body))
        self.tombstones = None
        self.listed = True
        self.changed.set()

    def lead(self, leading: bool) -> None:
        """Leader election moved (called on the event loop)."""
        self.leading = leading
        if leading:  # another replica may have written since: write everything once
            self.written.clear()
            self.changed.set()

    # --- the loop ----------------------------------------------------------------------

    async def run(self) -> None:
        while not self.listed:
            try:
                await self.list_all()
            except Exception as e:  # the API server away (urllib3 errors, HTTP 5xx): retry
                log.warning("initial list failed (%s); retrying", type(e).__name__)
                await asyncio.sleep(2)
        while True:
            try:  # on every change, and every OPA_TTL (a new OPA policy revision is asked again)
                await asyncio.wait_for(self.changed.wait(), timeout=OPA_TTL)
            except TimeoutError:
                pass
            await asyncio.sleep(DEBOUNCE)
            self.changed.clear()
            try:
                await self.reconcile()
                self.ready = True
            except (kubernetes.client.ApiException, urllib3.exceptions.HTTPError) as e:
                # The API server away or restarting: one line, keep serving the last good
                # compile, retry.
                log.warning("reconcile failed: %s%s; retrying", type(e).__name__,
                            f" (HTTP {e.status})" if isinstance(e, kubernetes.client.ApiException) else "")
                await asyncio.sleep(1)
                self.changed.set()
            except Exception:  # a bug: the traceback, and retry on the next change
                log.exception("reconcile failed")
                await asyncio.sleep(1)
                self.changed.set()

    async def watch_certificates(self, cert: str, key: str, ca_file: str) -> None:
        """Serve a rotated certificate without a restart: cert-manager renewing the Secret, or
        `helm upgrade` generating a new one, changes the mounted files; the new pair is loaded
        into the serving context (new connections get it) and the new CA becomes the webhook's
        caBundle. A half-written pair (key not matching) is retried on the next poll."""
        paths = [Path(cert), Path(key), Path(ca_file)]

        def stamp() -> list[tuple[int, int]]:
            return [(p.stat().st_mtime_ns, p.stat().st_size) for p in paths]

        last = stamp()
        while True:
            await asyncio.sleep(CERT_POLL)
            try:
                now = stamp()
                if now == last:
                    continue
                if self.holder.tls is not None:
                    self.holder.tls.load_cert_chain(cert, key)
                ca = base64.b64encode(Path(ca_file).read_bytes()).decode()
            except (OSError, ssl.SSLError) as e:
                log.warning("rotated certificate not loaded yet: %s", type(e).__name__)
                continue
            last = now
            if self.client_config.get("caBundle") != ca:
                self.client_config = {**self.client_config, "caBundle": ca}
                self.changed.set()
            log.info("serving certificate reloaded from %s", cert)

    async def watch_reports(self) -> None:
        """Poll the agents' node reports (Leases in the operator's namespace); a change in
        what they say (not a mere renewal) triggers a reconcile, which writes the policies'
        nodesEnforcing and violations."""
        namespace = self.holder.settings.operator_namespace
        while True:
            try:
                leases = await asyncio.to_thread(_list_reports, namespace)
                reports = aggregate_reports(leases, datetime.datetime.now(datetime.timezone.utc))
                if reports != self.reports:
                    self.reports = reports
                    self.changed.set()
            except Exception as e:  # the API server away: keep the last known figures
                log.warning("node reports not read: %s", type(e).__name__)
            await asyncio.sleep(REPORT_PERIOD)

    def _parse(self, snapshot: dict[str, dict[str, dict[str, Any]]]) -> None:
        """Parse what is new or changed since the last reconcile; forget what is gone."""
        seen = set()
        for kind, bodies in snapshot.items():
            for key, body in bodies.items():
                seen.add((kind, key))
                version = version_of(kind, body)
                known = self.parsed.get((kind, key))
                if known is not None and known.version == version:
                    continue
                out = parse_objects({kind: [body]})
                models = out.bindings or out.policies or out.pods or out.namespaces
                self.parsed[(kind, key)] = Parsed(version, models[0] if models else None, out.problems)
        for gone in set(self.parsed) - seen:
            del self.parsed[gone]

    def _models(self, kind: str) -> dict[str, tuple[str, Any]]:
        return {key: (p.version, p.model) for (k, key), p in self.parsed.items()
                if k == kind and p.model is not None}

    def _update(self, compiler: IncrementalCompiler, kind: str, wanted: dict[str, tuple[str, Any]]) -> None:
        """Hand the compiler what changed of one kind since the last reconcile."""
        have = {key: v for (k, key), v in self.applied.items() if k == kind}
        for key in sorted(set(have) - set(wanted)):
            namespace, name = key.split("/", 1)
            if kind == "SecretBinding":
                compiler.remove_binding(key)
            elif kind == "EnforcementPolicy":
                compiler.remove_policy(name)
            elif kind == "Pod":
                compiler.remove_pod(namespace, name)
            else:
                compiler.remove_namespace(name)
            del self.applied[(kind, key)]
        for key in sorted(wanted):
            version, model = wanted[key]
            if have.get(key) == version:
                continue
            if kind == "SecretBinding":
                compiler.set_binding(model)
            elif kind == "EnforcementPolicy":
                compiler.set_policy(model)
            elif kind == "Pod":
                compiler.set_pod(model)
            else:
                compiler.set_namespace(model)
            self.applied[(kind, key)] = version

    async def reconcile(self) -> None:
        # A snapshot: kopf handlers keep updating self.bodies on the loop while the status
        # writes below run in a thread.
        snapshot = {kind: dict(bodies) for kind, bodies in self.bodies.items()}
        self._parse(snapshot)
        for kind, bodies in snapshot.items():  # parsed: keep only what statuses need
            for key, body in bodies.items():
                if "slim" not in body and self.bodies[kind].get(key) is body:
                    self.bodies[kind][key] = slim(body)
        bindings = self._models("SecretBinding")
        revision = await asyncio.to_thread(self._policy_revision)
        decisions = await asyncio.to_thread(
            lambda: {m.ref: self._decide(m, v, revision) for v, m in bindings.values()})
        self.decisions = {ref: v for ref, v in self.decisions.items() if ref in decisions}
        allowed = {key: (f"{v}/{decisions[m.ref].allowed}", m) for key, (v, m) in bindings.items()
                   if decisions[m.ref].allowed}
        problems = [p for parsed in self.parsed.values() for p in parsed.problems]
        compiler = self.holder.compiler
        # Incremental on the event loop thread, which is also where the webhook reads the
        # compiler (serving.py), so no admission ever sees a half-applied change.
        if compiler is None:
            compiler = IncrementalCompiler(ClusterState(settings=self.holder.settings))
        # The first reconcile hands over the whole cluster; the collector's rescans of the
        # parsed objects made that 3.5x slower (10k bindings, benchmarks/compile.py).
        with gc_paused():
            for kind, wanted in (("Namespace", self._models("Namespace")),
                                 ("EnforcementPolicy", self._models("EnforcementPolicy")),
                                 ("SecretBinding", allowed), ("Pod", self._models("Pod"))):
                self._update(compiler, kind, wanted)
            compiler.set_parse_problems(problems)
            self.holder.compiler = compiler
            plan = compiler.plan()
        if not self.leading:
            return
        await asyncio.to_thread(self._write_statuses, plan, decisions, snapshot)
        if not await asyncio.to_thread(self._apply_webhook, plan):
            await asyncio.sleep(0.5)
            self.changed.set()

    # --- OPA ---------------------------------------------------------------------------

    def _opa(self) -> Any:
        """The OPA client (opa-python-client), made once; no retries of its own: a binding
        OPA cannot answer keeps its last decision and is asked again on the next round."""
        if self.opa is None:
            from opa_client.opa import OpaClient

            url = urlsplit(self.opa_url or "")
            https = url.scheme == "https"
            self.opa = OpaClient(host=url.hostname or "localhost", port=url.port or (443 if https else 8181),
                                 ssl=https, timeout=OPA_TIMEOUT, retries=0)
        return self.opa

    def _policy_revision(self) -> str | None:
        """A digest of what OPA decides with: its policy modules and its bundles' manifests
        (revisions). None: no OPA, or OPA did not answer (then known decisions stand)."""
        if self.opa_url is None:
            return None
        base = self.opa_url.rstrip("/")
        digest = hashlib.sha256()
        try:
            for path in ("/v1/policies", "/v1/data/system/bundles"):
                self.opa_requests += 1
                answer = requests.get(base + path, timeout=OPA_TIMEOUT,
                                      verify=True)
                answer.raise_for_status()
                result = answer.json().get("result")
                if path == "/v1/policies" and isinstance(result, list):
                    result = sorted((m.get("id"), m.get("raw")) for m in result if isinstance(m, dict))
                digest.update(json.dumps(result, sort_keys=True).encode())
        except (requests.RequestException, ValueError, AttributeError, TypeError):
            return None
        return digest.hexdigest()

    def _decide(self, binding: SecretBinding, digest: str, revision: str | None) -> Decision:
        """``digest``: the binding's spec version (uid/generation); ``revision``: OPA's
        policy revision now (``_policy_revision``). Asked only when either changed."""
        known = self.decisions.get(binding.ref)
        if known and known[0] == digest and (revision is None or known[2] == revision):
            return known[1]
        if self.opa_url is None:
            decision = Decision(True, [])
        else:
            body = binding.model_dump(mode="json", by_alias=True, exclude_none=True, exclude={"status"})
            try:
                self.opa_requests += 1
                answer = self._opa().query_rule(body, OPA_PACKAGE, "deny")
                reasons = sorted(answer.get("result") or [])
                decision = Decision(not reasons, reasons)
            except (requests.RequestException, ValueError, AttributeError) as e:
                # Fail closed for what OPA never saw: a new binding, or an edited spec. An
                # unchanged spec keeps its last decision until OPA answers again.
                if known and known[0] == digest:
                    return known[1]
                reason = f"OPA unreachable at {self.opa_url} ({type(e).__name__})"
                return Decision(None, [reason])
        self.decisions[binding.ref] = (digest, decision, revision)
        return decision

    # --- status ------------------------------------------------------------------------

    def _write_statuses(self, plan: Plan, decisions: dict[str, Decision],
                        snapshot: dict[str, dict[str, dict[str, Any]]]) -> None:
        api = kubernetes.client.CustomObjectsApi()
        summaries = {s.binding: s for s in plan.bindings}
        # Problems by object, in one pass (each binding scanning every problem was
        # bindings x problems: 10^8 comparisons per reconcile at 10k warned bindings).
        by_binding: dict[str, list[Problem]] = defaultdict(list)
        by_policy: dict[str, list[Problem]] = defaultdict(list)
        for problem in plan.problems:
            if problem.kind == "SecretBinding":
                by_binding[f"{problem.namespace}/{problem.name}"].append(problem)
            elif problem.kind == "EnforcementPolicy":
                by_policy[problem.name].append(problem)
        for key, body in snapshot["SecretBinding"].items():
            namespace, name = key.split("/", 1)
            ref = f"{namespace}/{name}"
            mine = by_binding.get(ref, [])
            summary = summaries.get(ref)
            decision = decisions.get(ref)
            status = _binding_status(body, mine, summary, decision)
            self._patch(api, "secretbindings", namespace, name, body, status)
            self._announce(ref, body, mine, decision)
        matched = {p.policy: p.matched_pods for p in plan.policies}
        constrained = {p.policy: p.constrained_pods for p in plan.policies}
        for key, body in snapshot["EnforcementPolicy"].items():
            name = key.split("/", 1)[1]
            mine = by_policy.get(name, [])
            old = body.get("status") or {}
            status = {
                "observedGeneration": body.get("metadata", {}).get("generation"),
                "matchedPods": matched.get(name, 0),
                "nodesEnforcing": self.reports.get(name, (0, 0))[0],
                "violations": self.reports.get(name, (0, 0))[1],
                "constrainedPods": constrained.get(name, [])[:100],
                "problems": [_problem(p) for p in mine],
                "conditions": _conditions(old, [("Compiled", not any(
                    p.severity == "error" for p in mine), "Compiled", "Invalid",
                    "; ".join(p.message for p in mine) or "compiled")]),
            }
            self._patch(api, "enforcementpolicies", None, name, body, status)

    def _patch(self, api: Any, plural: str, namespace: str | None, name: str,
               body: dict[str, Any], status: dict[str, Any]) -> None:
        digest = hashlib.sha256(json.dumps(status, sort_keys=True).encode()).hexdigest()
        key = f"{plural}/{namespace or ''}/{name}"
        if self.written.get(key) == digest:
            return
        try:
            if namespace is None:
                api.patch_cluster_custom_object_status(GROUP, VERSION, plural, name, {"status": status})
            else:
                api.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, plural, name,
                                                          {"status": status})
            self.written[key] = digest
        except kubernetes.client.ApiException as e:
            if e.status != 404:  # deleted meanwhile: nothing to say
                log.warning("status of %s %s/%s not written: HTTP %s", plural, namespace, name, e.status)

    def _announce(self, ref: str, body: dict[str, Any], problems: list[Problem],
                  decision: Decision | None) -> None:
        """A Kubernetes Event when a binding's problems or OPA denial change."""
        lines = [f"{p.path}: {p.message}" for p in problems if p.severity == "error"]
        if decision is not None and decision.allowed is False:
            lines += [f"denied by policy: {r}" for r in decision.reasons]
        digest = hashlib.sha256("\n".join(lines).encode()).hexdigest()
        if self.announced.get(ref, "") == digest or (not lines and ref not in self.announced):
            self.announced[ref] = digest
            return
        self.announced[ref] = digest
        meta = body.get("metadata", {})
        now = datetime.datetime.now(datetime.timezone.utc)
        event = kubernetes.client.CoreV1Event(
            metadata=kubernetes.client.V1ObjectMeta(generate_name=f"{meta.get('name')}.",
                                                    namespace=meta.get("namespace")),
            involved_object=kubernetes.client.V1ObjectReference(
                api_version=f"{GROUP}/{VERSION}", kind="SecretBinding", name=meta.get("name"),
                namespace=meta.get("namespace"), uid=meta.get("uid")),
            type="Warning" if lines else "Normal",
            reason="CompileProblems" if lines else "Compiled",
            message=("; ".join(lines) or "all problems resolved")[:1000],
            first_timestamp=now, last_timestamp=now, count=1,
            source=kubernetes.client.V1EventSource(component="cloudtaser-operator"),
        )
        try:
            kubernetes.client.CoreV1Api().create_namespaced_event(meta.get("namespace"), event)
        except kubernetes.client.ApiException as e:
            log.warning("event for %s not posted: HTTP %s", ref, e.status)

    # --- webhook configuration -----------------------------------------------------------

    def _apply_webhook(self, plan: Plan) -> bool:
        """Make the configuration equal to the Plan's; False: someone else wrote it between
        our read and write (409), so the caller re-derives it on the next round."""
        api = kubernetes.client.AdmissionregistrationV1Api()
        wanted = webhook_configuration(plan, self.client_config)
        try:
            try:
                current = api.read_mutating_webhook_configuration(WEBHOOK_CONFIGURATION)
            except kubernetes.client.ApiException as e:
                if e.status != 404:
                    raise
                api.create_mutating_webhook_configuration(wanted)  # type: ignore[arg-type]  # dicts serialise as is
                log.info("webhook configuration created (namespaces: %s)", plan.webhook.namespaces)
                return True
            client = kubernetes.client.ApiClient()
            have = client.sanitize_for_serialization(current)
            if _same_webhooks(have, wanted):
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


PULL_SECRET_KEYS = {"kubernetes.io/dockerconfigjson": ".dockerconfigjson",
                    "kubernetes.io/dockercfg": ".dockercfg"}


def read_pull_secrets(namespace: str, names: list[str]) -> list[RegistryCredential]:
    """The registry credentials in a pod's imagePullSecrets, read by name when a registry
    lookup needs them (``get`` only: no list or watch of Secrets) and never kept: they live
    for one resolve. A missing, forbidden or malformed Secret is skipped with a warning that
    names it, as the kubelet would fail to pull with it; nothing of its content is logged."""
    api = kubernetes.client.CoreV1Api()
    found: list[RegistryCredential] = []
    for name in names:
        try:
            secret = api.read_namespaced_secret(name, namespace)
        except kubernetes.client.ApiException as e:
            log.warning("imagePullSecret %s/%s not read: HTTP %s", namespace, name, e.status)
            continue
        key = PULL_SECRET_KEYS.get(secret.type or "")
        data = secret.data or {}
        if key is None or key not in data:
            log.warning("imagePullSecret %s/%s: type %s has no registry credentials", namespace,
                        name, secret.type)
            continue
        try:
            found += credentials_from_dockerconfigjson(base64.b64decode(data[key]))
        except (CloudtaserError, ValueError) as e:
            log.warning("imagePullSecret %s/%s: %s", namespace, name,
                        e if isinstance(e, CloudtaserError) else "data is not base64")
    return found


def _list_reports(namespace: str) -> list[dict[str, Any]]:
    leases = kubernetes.client.CoordinationV1Api().list_namespaced_lease(
        namespace, label_selector=leasing.SELECTOR)
    found: list[dict[str, Any]] = kubernetes.client.ApiClient().sanitize_for_serialization(leases.items)
    return found


def aggregate_reports(leases: list[dict[str, Any]], now: datetime.datetime) -> dict[str, tuple[int, int]]:
    """policy -> (nodes whose live agent protects a pod under it, violations on all nodes).
    Violations count from expired reports too: they happened."""
    nodes: dict[str, int] = {}
    violations: dict[str, int] = {}
    for lease in leases:
        policies, counts = leasing.reported(lease)
        if leasing.fresh(lease, now):
            for name in set(policies):
                nodes[name] = nodes.get(name, 0) + 1
        for name, count in counts.items():
            violations[name] = violations.get(name, 0) + count
    return {name: (nodes.get(name, 0), violations.get(name, 0)) for name in sorted({*nodes, *violations})}


def _list_all() -> dict[str, list[dict[str, Any]]]:
    custom = kubernetes.client.CustomObjectsApi()
    core = kubernetes.client.CoreV1Api()
    client = kubernetes.client.ApiClient()
    bindings: Any = custom.list_cluster_custom_object(GROUP, VERSION, "secretbindings")
    policies: Any = custom.list_cluster_custom_object(GROUP, VERSION, "enforcementpolicies")
    return {
        "SecretBinding": bindings["items"],
        "EnforcementPolicy": policies["items"],
        "Pod": client.sanitize_for_serialization(core.list_pod_for_all_namespaces().items),
        "Namespace": client.sanitize_for_serialization(core.list_namespace().items),
    }


def _same_webhooks(have: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """Compare what we set; the API server adds defaults we do not manage."""
    def pick(config: dict[str, Any]) -> Any:
        return [{k: w.get(k) for k in wanted["webhooks"][0]} for w in config.get("webhooks", [])]
    return bool(pick(have) == pick(wanted)) and (
        have["metadata"].get("labels", {}).items() >= wanted["metadata"]["labels"].items())


def _problem(p: Problem) -> dict[str, str]:
    return {"path": p.path, "message": p.message, "severity": p.severity}


def _conditions(old: dict[str, Any], wanted: list[tuple[str, bool | None, str, str, str]],
                generation: int | None = None) -> list[dict[str, Any]]:
    """Conditions; lastTransitionTime moves only when a condition's status changes."""
    previous = {c.get("type"): c for c in old.get("conditions", []) if isinstance(c, dict)}
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    out = []
    for kind, ok, good, bad, message in wanted:
        status = "Unknown" if ok is None else ("True" if ok else "False")
        before = previous.get(kind, {})
        out.append({
            "type": kind, "status": status, "reason": good if ok else bad, "message": message[:1000],
            "lastTransitionTime": before.get("lastTransitionTime", now)
            if before.get("status") == status else now,
            **({"observedGeneration": generation} if generation is not None else {}),
        })
    return out


def _binding_status(body: dict[str, Any], problems: list[Problem], summary: Any,
                    decision: Decision | None) -> dict[str, Any]:
    generation = body.get("metadata", {}).get("generation")
    errors = [p for p in problems if p.severity == "error"]
    invalid = summary is None and decision is None
    if invalid:
        compiled = (False, "InvalidSpec", "; ".join(f"{p.path}: {p.message}" for p in errors))
    elif errors:
        compiled = (False, "Conflict", "; ".join(f"{p.path}: {p.message}" for p in errors))
    else:
        compiled = (True, "Compiled", "compiled without errors")
    if decision is None:
        allowed: tuple[bool | None, str, str] = (None, "NotEvaluated", "the spec is invalid")
    elif decision.allowed is None:
        allowed = (None, "OPAUnavailable", "; ".join(decision.reasons))
    elif decision.allowed:
        allowed = (True, "Allowed", "; ".join(decision.reasons) or "allowed by policy")
    else:
        allowed = (False, "Denied", "; ".join(decision.reasons))
    delivered = _delivered(summary)
    # Ready never claims delivery while the wrappers of the selected pods only fail.
    ready = compiled[0] is True and allowed[0] is True and delivered[0] is not False
    not_ready = compiled if compiled[0] is not True else allowed if allowed[0] is not True \
        else delivered
    return {
        "observedGeneration": generation,
        "matchedPods": summary.matched_pods if summary else 0,
        "injectedPods": summary.injected_pods if summary else 0,
        "deliveredPods": summary.delivered_pods if summary else 0,
        "failingPods": summary.failing_pods if summary else 0,
        "secrets": summary.secrets if summary else 0,
        "problems": [_problem(p) for p in problems],
        "conditions": _conditions({"conditions": (body.get("status") or {}).get("conditions", [])}, [
            ("Compiled", compiled[0], "Compiled", compiled[1], compiled[2]),
            ("PolicyAllowed", allowed[0], "Allowed", allowed[1], allowed[2]),
            ("Delivered", delivered[0], "Delivered", delivered[1], delivered[2]),
            ("Ready", ready, "Ready", str(not_ready[1]),
             str(delivered[2]) if ready else str(not_ready[2])),
        ], generation),
    }


def _delivered(summary: Any) -> tuple[bool | None, str, str]:
    """The Delivered condition from the pods' own statuses (the wrappers' termination
    messages): False while any injected pod's wrapper fails, naming the first reason."""
    injected = summary.injected_pods if summary else 0
    if not injected:
        return None, "NoPods", "no selected pod is injected yet"
    if summary.failing_pods:
        return (False, "WrapperFailed", f"{summary.failing_pods} of {injected} injected pod(s) "
                f"failing, {summary.delivered_pods} delivered; {summary.failure}")
    if summary.delivered_pods == injected:
        return True, "Delivered", f"{injected} of {injected} injected pod(s) received their secrets"
    return (None, "Pending", f"{summary.delivered_pods} of {injected} injected pod(s) received "
            "their secrets; the others are starting")


def in_cluster_server(info: Any, environ: Mapping[str, str] = os.environ) -> Any:
    """kopf's service-account login with the API server's address the way client-go (and the
    agent's kubernetes client) takes it: the kubelet's KUBERNETES_SERVICE_HOST/PORT. kopf
    names https://kubernetes.default.svc instead, which needs cluster DNS (the local stack's
    node has none, nor has a pod with dnsPolicy Default)."""
    host = environ.get("KUBERNETES_SERVICE_HOST")
    if not host:
        return info
    host = f"[{host}]" if ":" in host else host
    return dataclasses.replace(info, server=f"https://{host}:{environ.get('KUBERNETES_SERVICE_PORT', '443')}")


LEASE = "cloudtaser-operator"


def elect(op: Operator, loop: asyncio.AbstractEventLoop, namespace: str, identity: str) -> None:
    """Leader election on a coordination.k8s.io Lease (runs in a daemon thread). Every replica
    watches, compiles and serves the webhook; only the leader writes statuses, Events and the
    webhook configuration. Losing the lease stops the writes at once and re-enters the
    election."""
    from kubernetes.leaderelection import electionconfig, leaderelection
    from kubernetes.leaderelection.resourcelock.leaselock import LeaseLock

    logging.getLogger("leaderelection").setLevel(logging.WARNING)  # a line per retry otherwise
    while True:
        config = electionconfig.Config(
            LeaseLock(LEASE, namespace, identity), lease_duration=15, renew_deadline=10,
            retry_period=2,
            onstarted_leading=lambda: loop.call_soon_threadsafe(op.lead, True),
            onstopped_leading=lambda: loop.call_soon_threadsafe(op.lead, False))
        try:
            leaderelection.LeaderElection(config).run()  # returns when the lease is lost
        except Exception as e:  # the API server away: a follower until it is back
            loop.call_soon_threadsafe(op.lead, False)
            log.warning("leader election: %s; retrying", type(e).__name__)
        time.sleep(2)


def registry(op: Operator, host: str, port: int, cert: str, key: str,
             election: tuple[str, str] | None = None) -> kopf.OperatorRegistry:
    """kopf handlers bound to one Operator (no module-level decorators: testable, explicit)."""
    reg = kopf.OperatorRegistry()
    tasks: list[asyncio.Task[None]] = []

    @kopf.on.startup(registry=reg)
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.enabled = False
        settings.watching.server_timeout = 300
        # kopf's default backoffs (1, 1, 2, ... 21 s, then giving up) leave a watch asleep for
        # up to 21 s after a restarted API server answers again — its CRD endpoints say 503/429
        # for a while after it starts — so convergence took 80-90 s. Retry at most every 3 s,
        # for about 5 minutes, before kopf escalates.
        settings.networking.error_backoffs = ERROR_BACKOFFS
        # No cluster-wide scan of CRDs and namespaces: the four kinds are known (the chart
        # installs the CRDs first), and the RBAC grants no read of CRDs (seen failing on the
        # local node: kopf retried the forbidden list forever).
        settings.scanning.disabled = True
        try:  # in a pod: the service account; elsewhere: $KUBECONFIG
            kubernetes.config.load_incluster_config()
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
        await serving.start(op.holder, host, port, cert, key)
        tasks.append(asyncio.create_task(op.run()))
        tasks.append(asyncio.create_task(op.watch_reports()))
        if op.ca_file is not None:
            tasks.append(asyncio.create_task(op.watch_certificates(cert, key, op.ca_file)))
        if election is not None:
            op.leading = False
            threading.Thread(target=elect, args=(op, asyncio.get_running_loop(), *election),
                             name="leader-election", daemon=True).start()

    @kopf.on.login(registry=reg)
    def login(**kwargs: Any) -> Any:
        # In a pod: the service account; elsewhere: $KUBECONFIG (kopf's own reader).
        info = kopf.login_with_service_account(**kwargs)
        if info is None:
            return kopf.login_with_kubeconfig(**kwargs)
        return in_cluster_server(info)

    @kopf.on.cleanup(registry=reg)
    async def cleanup(**_: Any) -> None:
        for task in tasks:
            task.cancel()

    @kopf.on.probe(id="compiled", registry=reg)
    def compiled(**_: Any) -> bool:
        return op.ready

    for kind, resource in (("SecretBinding", (GROUP, VERSION, "secretbindings")),
                           ("EnforcementPolicy", (GROUP, VERSION, "enforcementpolicies")),
                           ("Pod", ("", "v1", "pods")), ("Namespace", ("", "v1", "namespaces"))):
        def handler(body: Any, type: str | None, _kind: str = kind, **_: Any) -> None:
            op.observe(_kind, type, dict(body))
        kopf.on.event(*resource, registry=reg, id=f"observe-{kind.lower()}")(handler)

    def webhook_changed(**_: Any) -> None:
        op.changed.set()  # someone edited or deleted our configuration: re-derive it

    kopf.on.event("admissionregistration.k8s.io", "v1", "mutatingwebhookconfigurations",
                  field="metadata.name", value=WEBHOOK_CONFIGURATION, registry=reg,
                  id="webhook-drift")(webhook_changed)
    return reg


def run(op: Operator, host: str, port: int, cert: str, key: str, liveness: str | None,
        election: tuple[str, str] | None = None) -> None:
    """``election``: (namespace, identity) to run leader election with, or None (one replica)."""
    asyncio.run(kopf.operator(registry=registry(op, host, port, cert, key, election), clusterwide=True,
                              standalone=True, liveness_endpoint=liveness))

