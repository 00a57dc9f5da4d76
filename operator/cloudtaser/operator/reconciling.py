"""The operator's state and its loop: watch the cluster, compile, and make the cluster say so.

kopf event handlers (running.py) parse the latest body of every SecretBinding,
EnforcementPolicy, Pod and Namespace on arrival, keep that parse and what statuses need of the
body, and wake the reconciler (so does a change of our MutatingWebhookConfiguration); the
reconciler (debounced) asks OPA about each binding (opa.py), compiles
everything with the engine, hands the new compiler to the webhook, writes each CR's status
when it changed, posts Events when a binding's problems change, and keeps the webhook
configuration equal to the Plan's (writing.py, statuses.py). Nothing is kept that the cluster
cannot rebuild: a restart re-lists everything (listing.py) and derives the same statuses and
configuration.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import json
import logging
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloudtaser.engine.compiler import ClusterState, IncrementalCompiler
from cloudtaser.engine.documents import parse_objects
from cloudtaser.engine.plans import Problem
from cloudtaser.engine.resources import SecretBinding
from cloudtaser.errors import TemporaryError
from cloudtaser.gcpause import exempt_survivors, gc_paused
from cloudtaser.heap import release_freed_memory
from cloudtaser.injector import serving
from cloudtaser.kubeapi import ApiError, KubeApi
from cloudtaser.operator import listing
from cloudtaser.operator.opa import OPA_TTL, Opa
from cloudtaser.operator.statuses import aggregate_reports
from cloudtaser.operator.writing import Writer

log = logging.getLogger("cloudtaser.operator")
DEBOUNCE = 0.2
REPORT_PERIOD = 10.0
CERT_POLL = 5.0


@dataclass(slots=True)
class Parsed:
    """One object as the compiler last saw it: its version, model or parse problems.

    A SecretBinding's model is dropped as soon as it is parsed (``lean``): the operator
    holds every binding of the cluster, and a parsed model is ~6 KiB where its compact JSON,
    which OPA is asked about and the model is read back from when the compiler takes it, is
    a fraction."""

    version: str
    model: Any | None
    problems: tuple[Problem, ...]
    dump: bytes | None = None  # SecretBinding: compact JSON of the model, without status

    @classmethod
    def of(cls, kind: str, version: str, body: dict[str, Any]) -> Parsed:
        """Parse one body of ``kind``."""
        out = parse_objects({kind: [body]})
        models = out.bindings or out.policies or out.pods or out.namespaces
        model = models[0] if models else None
        dump = None
        if isinstance(model, SecretBinding):
            dump = model.model_dump_json(by_alias=True, exclude_none=True, exclude={"status"})
        return cls(version, model, tuple(out.problems), dump.encode() if dump is not None else None)

    def current(self) -> Any | None:
        """The model: kept, or read back from ``dump`` (it validated once: it does again)."""
        if self.model is None and self.dump is not None:
            return SecretBinding.model_validate_json(self.dump)
        return self.model

    def lean(self) -> None:
        if self.dump is not None:
            self.model = None


def version_of(kind: str, body: dict[str, Any]) -> str:
    """What must change for the compiler to look again. Our own status writes bump a CR's
    resourceVersion but not its generation, so CRs are keyed on uid + generation (labels and
    annotations of CRs do not affect the compile); pods and namespaces on resourceVersion."""
    meta = body.get("metadata", {})
    if kind in ("SecretBinding", "EnforcementPolicy"):
        return f"{meta.get('uid')}/{meta.get('generation')}"
    return str(
        meta.get("resourceVersion")
        or hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()
    )


def api_failure(e: Exception) -> str:
    """A failed call to the API server in one line: its status line, or why there was no
    answer (the API client's errors never carry what was answered); else the error's type."""
    return str(e) if isinstance(e, (ApiError, TemporaryError)) else type(e).__name__


@dataclass
class Operator:
    """One operator replica: what it knows of the cluster, and the loop that acts on it."""

    api: KubeApi  # its reads and writes that kopf's watches do not cover
    client_config: dict[str, Any]
    opa_url: str | None
    holder: serving.Holder
    ca_file: str | None = None  # the caBundle's source, re-read when it rotates
    opa: Opa = field(init=False)  # asks OPA about each binding (opa_url)
    writer: Writer = field(init=False)  # statuses, Events, webhook configuration
    bodies: dict[str, dict[str, dict[str, Any]]] = field(
        default_factory=lambda: {k: {} for k in listing.KINDS}
    )
    # kind -> namespace/name -> the parse of the body version the compiler was last given.
    # By kind, so that a reconcile walks only the kinds it hands over (10k bindings beside
    # few policies: issue 17).
    parsed: dict[str, dict[str, Parsed]] = field(
        default_factory=lambda: {k: {} for k in listing.KINDS}
    )
    # kind -> namespace/name -> version the compiler holds (bindings: only allowed ones).
    applied: dict[str, dict[str, str]] = field(
        default_factory=lambda: {k: {} for k in listing.KINDS}
    )
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    listed: bool = False  # the initial lists of every kind are in self.bodies
    ready: bool = False  # ... and were compiled: the webhook answers from a complete state
    leading: bool = True  # only the leader writes statuses and the webhook configuration
    tombstones: set[tuple[str, str]] | None = None  # deletions seen while listing
    # policy -> (nodes enforcing, violations), from the agents' node reports
    # (engine/cloudtaser/engine/reports.py)
    reports: dict[str, tuple[int, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.opa = Opa(self.opa_url)
        self.writer = Writer(self.api)

    # --- inputs ------------------------------------------------------------------------

    def observe(self, kind: str, event_type: str | None, body: dict[str, Any]) -> None:
        """A watch event (kopf): keep the body's parse, or forget the body when deleted."""
        meta = body.get("metadata", {})
        key = f"{meta.get('namespace') or ''}/{meta.get('name')}"
        if event_type == "DELETED":
            self.bodies[kind].pop(key, None)
            if self.tombstones is not None:
                self.tombstones.add((kind, key))
        else:
            self._keep(kind, key, listing.trimmed(kind, body))
        self.changed.set()

    def _keep(self, kind: str, key: str, body: dict[str, Any]) -> None:
        """Parse a body on arrival (unless this version is parsed already) and keep only what
        the statuses need of it (``listing.slim``): the operator never holds the cluster's
        full bodies, nor its bindings' models, all at once (10k bindings: issue 17)."""
        version = version_of(kind, body)
        known = self.parsed[kind].get(key)
        if known is None or known.version != version:
            parsed = Parsed.of(kind, version, body)
            parsed.lean()  # the compiler reads it back (Parsed.current) when it takes it
            self.parsed[kind][key] = parsed
        self.bodies[kind][key] = listing.slim(body)

    async def list_all(self) -> None:
        """The initial state, listed before the first compile so that readiness means "every
        binding and policy that existed at start is compiled". kopf's watch events keep the
        bodies current; what they delivered (or deleted) meanwhile wins over the list. Listed
        and parsed a page at a time (listing.list_pages), so that a page, not the cluster, is
        the peak."""
        self.tombstones = set()
        pages = listing.list_pages(self.api)
        while (page := await asyncio.to_thread(next, pages, None)) is not None:
            kind, items = page
            for body in items:
                meta = body.get("metadata", {})
                key = f"{meta.get('namespace') or ''}/{meta.get('name')}"
                if (kind, key) not in self.tombstones and key not in self.bodies[kind]:
                    self._keep(kind, key, listing.trimmed(kind, body))
        self.tombstones = None
        self.listed = True
        self.changed.set()

    def lead(self, leading: bool) -> None:
        """Leader election moved (called on the event loop)."""
        self.leading = leading
        if leading:  # another replica may have written since: write everything once
            self.writer.forget()
            self.changed.set()

    # --- the loop ----------------------------------------------------------------------

    async def run(self) -> None:
        """List, then reconcile on every change (debounced) until cancelled."""
        while not self.listed:
            try:
                await self.list_all()
            except Exception as e:  # the API server away (unreachable, HTTP 5xx): retry
                log.warning("initial list failed (%s); retrying", api_failure(e))
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
                if not self.ready:  # the whole cluster is compiled: its state is long-lived
                    exempt_survivors()
                self.ready = True
                release_freed_memory()  # what the round built and dropped (cloudtaser/heap.py)
            except (ApiError, TemporaryError) as e:
                # The API server away, restarting or refusing: one line (the status line or
                # why it is unreachable, never an answer), keep serving the last good compile,
                # retry.
                log.warning("reconcile failed: %s; retrying", api_failure(e))
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
                leases = await asyncio.to_thread(listing.list_reports, self.api, namespace)
                reports = aggregate_reports(leases, datetime.datetime.now(datetime.UTC))
                if reports != self.reports:
                    self.reports = reports
                    self.changed.set()
            except Exception as e:  # the API server away: keep the last known figures
                log.warning("node reports not read: %s", api_failure(e))
            await asyncio.sleep(REPORT_PERIOD)

    def _forget(self, snapshot: dict[str, dict[str, dict[str, Any]]]) -> None:
        """Forget the parses of objects that are gone (bodies are parsed on arrival)."""
        for kind, parses in self.parsed.items():
            for gone in [key for key in parses if key not in snapshot[kind]]:
                del parses[gone]

    def _models(self, kind: str) -> dict[str, tuple[str, Parsed]]:
        """The objects of ``kind`` that parsed: version and parse (``Parsed.current``)."""
        return {
            key: (p.version, p)
            for key, p in self.parsed[kind].items()
            if p.model is not None or p.dump is not None
        }

    def _bindings(self) -> dict[str, tuple[str, bytes, Parsed]]:
        """The parsed SecretBindings: version, compact JSON, and the parse (its model may have
        been dropped: ``Parsed.current``)."""
        return {
            key: (p.version, p.dump, p)
            for key, p in self.parsed["SecretBinding"].items()
            if p.dump is not None
        }

    def _update(
        self, compiler: IncrementalCompiler, kind: str, wanted: dict[str, tuple[str, Parsed]]
    ) -> None:
        """Hand the compiler what changed of one kind since the last reconcile."""
        have = self.applied[kind]
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
            del have[key]
        changed = [key for key, (version, _) in wanted.items() if have.get(key) != version]
        for key in sorted(changed):
            version, parsed = wanted[key]
            model = parsed.current()
            assert model is not None  # _models keeps only what parsed
            if kind == "SecretBinding":
                compiler.set_binding(model)
            elif kind == "EnforcementPolicy":
                compiler.set_policy(model)
            elif kind == "Pod":
                compiler.set_pod(model)
            else:
                compiler.set_namespace(model)
            have[key] = version

    async def reconcile(self) -> None:
        """One round: parse what changed, ask OPA, compile, and (the leader) write."""
        # A snapshot: kopf handlers keep updating self.bodies on the loop while the status
        # writes below run in a thread.
        snapshot = {kind: dict(bodies) for kind, bodies in self.bodies.items()}
        self._forget(snapshot)
        bindings = self._bindings()
        revision = await asyncio.to_thread(self.opa.revision)
        decisions = await asyncio.to_thread(
            lambda: {
                key: self.opa.decide(key, dump, v, revision)
                for key, (v, dump, _) in bindings.items()
            }
        )
        self.opa.forget_all_but(decisions)
        allowed: dict[str, tuple[str, Parsed]] = {
            key: (f"{v}/{decisions[key].allowed}", p)
            for key, (v, _, p) in bindings.items()
            if decisions[key].allowed
        }
        problems = [
            p
            for parses in self.parsed.values()
            for parsed in parses.values()
            for p in parsed.problems
        ]
        compiler = self.holder.compiler
        # Incremental on the event loop thread, which is also where the webhook reads the
        # compiler (serving.py), so no admission ever sees a half-applied change.
        if compiler is None:
            compiler = IncrementalCompiler(ClusterState(settings=self.holder.settings))
        # The first reconcile hands over the whole cluster; the collector's rescans of the
        # parsed objects made that 3.5x slower (10k bindings, benchmarks/compile.py).
        with gc_paused():
            for kind, wanted in (
                ("Namespace", self._models("Namespace")),
                ("EnforcementPolicy", self._models("EnforcementPolicy")),
                ("SecretBinding", allowed),
                ("Pod", self._models("Pod")),
            ):
                self._update(compiler, kind, wanted)
            compiler.set_parse_problems(problems)
            self.holder.compiler = compiler
            plan = compiler.plan()
        if not self.leading:
            return
        await asyncio.to_thread(self.writer.write_statuses, plan, decisions, snapshot, self.reports)
        if not await asyncio.to_thread(self.writer.apply_webhook, plan, self.client_config):
            await asyncio.sleep(0.5)
            self.changed.set()
