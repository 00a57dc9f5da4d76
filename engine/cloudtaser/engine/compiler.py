"""compile(ClusterState) -> Plan, and the incremental compiler both paths share.

``compile_state`` is ``IncrementalCompiler(state).plan()``: a full compile is an incremental
compiler fed everything at once, so the operator's incremental path and the CLI's one-shot
path cannot drift apart (a test checks they give the same bytes).

Cost model: each binding is compiled once (its WrapperSource and volumes); pods are found
through a per-namespace label index, so a binding with matchLabels touches only candidate
pods; a pod plan is recomputed only when one of its inputs changes. Every figure the Plan
reports (pods per binding and policy, problems, policy overlaps) is kept current by the
change that moves it, and the Plan's lists are kept in key order (engine.ordered), so
``plan()`` after a change copies lists instead of re-deriving and re-sorting everything.
"""

from __future__ import annotations

import bisect
import hashlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from pydantic import Field

from cloudtaser.engine.kube import LabelSelector, Model, Namespace, Pod
from cloudtaser.engine.ordered import OrderedMap
from cloudtaser.engine.plans import (
    AGENT_CSI_DRIVER,
    INIT_CONTAINER,
    INJECT_ANNOTATION,
    INJECTED_ANNOTATION,
    NAMESPACE_NAME_LABEL,
    POD_SECURITY_ENFORCE_LABEL,
    AgentSettings,
    BindingSummary,
    BpfEntry,
    ContainerPlan,
    EffectivePolicy,
    InjectorSettings,
    MutationRule,
    Plan,
    PodPlan,
    PolicySummary,
    Problem,
    ProtectionFlag,
    VolumePlan,
    WebhookScope,
    WrapperConfig,
    WrapperSource,
)
from cloudtaser.engine.resources import (
    EnforcementPolicy,
    SecretBinding,
    duration_seconds,
)

M = TypeVar("M", bound=Model)
BUNDLE_VOLUME = "cloudtaser-bundle"
AGENT_VOLUME = "cloudtaser-agent"
TOKEN_VOLUME = "cloudtaser-token"
AGENT_MOUNT = "/run/cloudtaser"
# Not under /var/run/cloudtaser: in most images /var/run links to /run, which would nest these
# mounts inside the agent's volume mount at /run/cloudtaser (and create their mount points
# in the host's agent directory). Beside the service-account token's /var/run/secrets/...
SECRET_MOUNT_ROOT = "/var/run/secrets/cloudtaser"
TOKEN_MOUNT = f"{SECRET_MOUNT_ROOT}/token"
_PROTECTION_BITS = {
    "environ": ProtectionFlag.ENVIRON,
    "mem": ProtectionFlag.MEM,
    "fds": ProtectionFlag.FDS,
    "ptrace": ProtectionFlag.PTRACE,
    "pidfd_getfd": ProtectionFlag.PIDFD_GETFD,
    "core_dump": ProtectionFlag.CORE_DUMP,
}
_DELIVERY_WORDS = {"env": "environment variable", "file": "file", "sdk": "SDK name"}


class ClusterState(Model):
    """The compile input: the objects as the operator's indices (or files) hold them."""

    bindings: list[SecretBinding] = Field(default_factory=list)
    policies: list[EnforcementPolicy] = Field(default_factory=list)
    pods: list[Pod] = Field(default_factory=list)
    namespaces: list[Namespace] = Field(default_factory=list)
    settings: InjectorSettings = Field(default_factory=InjectorSettings)
    problems: list[Problem] = Field(
        default_factory=list, description="Problems of objects that failed to parse."
    )


def compile_state(state: ClusterState) -> Plan:
    """The Plan for a whole cluster state.

    A caller compiling a large state at once may pause the garbage collector around this
    (cloudtaser/gcpause.py says why); the engine leaves process state alone.
    """
    return IncrementalCompiler(state).plan()


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def _binding_problem(binding: SecretBinding, path: str, message: str, severity: str) -> Problem:
    return Problem.model_validate(
        {
            "kind": "SecretBinding",
            "namespace": binding.metadata.namespace or "default",
            "name": binding.metadata.name,
            "path": path,
            "message": message,
            "severity": severity,
        }
    )


@dataclass(frozen=True, slots=True)
class Delivery:
    """One env var / file / SDK name a binding delivers, and where it is declared."""

    field: str
    value: str
    path: str
    source_index: int
    key_index: int


@dataclass(slots=True)
class CompiledBinding:
    """What a binding means independently of any pod."""

    binding: SecretBinding
    ref: str
    namespace: str
    source: WrapperSource
    volumes: list[VolumePlan]
    deliveries: list[Delivery]
    secrets: int
    refresh_seconds: int | None
    problems: list[Problem] = field(default_factory=list)


def compile_binding(binding: SecretBinding) -> CompiledBinding:
    """Compile one binding on its own: its wrapper source and the volumes it needs."""
    namespace = binding.metadata.namespace or "default"
    ref = f"{namespace}/{binding.metadata.name}"
    spec = binding.spec
    tls = spec.vault.tls
    tag = _short_hash(ref)
    volumes: list[VolumePlan] = []
    ca_file = tls.ca_file
    if tls.ca_config_map is not None:
        mount = f"{SECRET_MOUNT_ROOT}/ca/{tag}"
        volumes.append(
            VolumePlan(
                name=f"cloudtaser-ca-{tag}",
                mount_path=mount,
                source={
                    "configMap": {
                        "name": tls.ca_config_map.name,
                        "items": [{"key": tls.ca_config_map.key, "path": "ca.crt"}],
                    }
                },
            )
        )
        ca_file = f"{mount}/ca.crt"
    cert = tls.client_certificate
    cert_file, key_file = cert.cert_file, cert.key_file
    if cert.source in ("secret", "csi"):
        mount = f"{SECRET_MOUNT_ROOT}/tls/{tag}"
        if cert.source == "secret":
            source: dict[str, object] = {"secret": {"secretName": cert.secret_name}}
        else:
            source = {
                "csi": {
                    "driver": cert.csi_driver,
                    "readOnly": True,
                    "volumeAttributes": dict(sorted(cert.csi_attributes.items())),
                }
            }
        volumes.append(VolumePlan(name=f"cloudtaser-tls-{tag}", mount_path=mount, source=source))
        cert_file, key_file = f"{mount}/tls.crt", f"{mount}/tls.key"
    deliveries: list[Delivery] = []
    secrets: list[dict[str, object]] = []
    for i, src in enumerate(spec.secrets):
        keys = []
        for j, key in enumerate(src.keys):
            keys.append({"key": key.key, "env": key.env, "file": key.file, "sdk": key.sdk})
            for name in ("env", "file", "sdk"):
                value = getattr(key, name)
                if value is not None:
                    path = f"spec.secrets[{i}].keys[{j}].{name}"
                    deliveries.append(Delivery(name, value, path, i, j))
        secrets.append({"mount": src.mount, "path": src.path, "keys": keys})
    problems = []
    if spec.refresh_interval:
        for d in deliveries:
            if d.field == "env":
                problems.append(
                    _binding_problem(
                        binding,
                        d.path,
                        f"environment variable {d.value} is not refreshed: a process's "
                        "environment cannot change after it starts (use file or sdk delivery "
                        "for values that rotate)",
                        "warning",
                    )
                )
    if spec.selector.is_empty():
        problems.append(
            _binding_problem(
                binding,
                "spec.selector",
                f"empty selector: every pod in namespace {namespace} annotated "
                f'{INJECT_ANNOTATION}: "true" receives these secrets',
                "warning",
            )
        )
    return CompiledBinding(
        binding=binding,
        ref=ref,
        namespace=namespace,
        # One validation of the nested dict: pydantic-core builds it faster than
        # constructing each level from Python (benchmarks/compile.py).
        source=WrapperSource.model_validate(
            {
                "binding": ref,
                "address": spec.vault.address,
                "auth_mount": spec.vault.auth_mount,
                "role": spec.vault.role,
                "ca_file": ca_file,
                "server_name": tls.server_name,
                "client_cert_file": cert_file,
                "client_key_file": key_file,
                "secrets": secrets,
            }
        ),
        volumes=volumes,
        deliveries=deliveries,
        secrets=sum(len(s.keys) for s in spec.secrets),
        refresh_seconds=(
            duration_seconds(spec.refresh_interval) if spec.refresh_interval else None
        ),
        problems=problems,
    )


def _accessor_key(executable: str, uid: int | None) -> str:
    return executable if uid is None else f"{executable}:{uid}"


def effective_policy(policies: list[EnforcementPolicy]) -> EffectivePolicy:
    """Combine the policies selecting one pod: the stricter setting wins everywhere.

    With no policy the pod gets the built-in default: enforce every protection, no kill.
    """
    if not policies:
        flags = 0
        for bit in _PROTECTION_BITS.values():
            flags |= bit
        return EffectivePolicy(
            policies=[],
            mode="enforce",
            flags=flags,
            protections=sorted(_PROTECTION_BITS),
            allowed_accessors=[],
            kill_on_violation=False,
            require_confidential_node=False,
        )
    mode = "enforce" if any(p.spec.mode == "enforce" for p in policies) else "audit"
    names: set[str] = set()
    for policy in policies:
        for name in _PROTECTION_BITS:
            if getattr(policy.spec.protections, name):
                names.add(name)
    # An accessor is allowed only when every policy allows it (intersection = stricter).
    allowed: set[str] | None = None
    for policy in policies:
        keys = {_accessor_key(a.executable, a.uid) for a in policy.spec.allowed_accessors}
        allowed = keys if allowed is None else allowed & keys
    kill = any(p.spec.kill_on_violation for p in policies)
    flags = 0
    for name in names:
        flags |= _PROTECTION_BITS[name]
    if mode == "audit":
        flags |= ProtectionFlag.AUDIT_ONLY
    if kill:
        flags |= ProtectionFlag.KILL
    return EffectivePolicy(
        policies=sorted(p.metadata.name for p in policies),
        mode=mode,
        flags=int(flags),
        protections=sorted(names),
        allowed_accessors=sorted(allowed or ()),
        kill_on_violation=kill,
        require_confidential_node=any(p.spec.require_confidential_node for p in policies),
        # One backend can be required today, so "required by any" is the stricter setting.
        require_backend="lsm" if any(p.spec.require_backend == "lsm" for p in policies) else None,
    )


def _pins_nodes(policy: EnforcementPolicy) -> bool:
    """The policy keeps its pods on particular nodes (its status lists them)."""
    return policy.spec.require_confidential_node or policy.spec.require_backend is not None


def _filter_source(source: WrapperSource, dropped: set[tuple[int, int, str]]) -> WrapperSource:
    """The source without the (secret, key, field) deliveries lost to a conflict."""
    secrets = []
    for i, secret in enumerate(source.secrets):
        keys = []
        for j, key in enumerate(secret.keys):
            update = {f: None for (si, kj, f) in dropped if si == i and kj == j}
            kept = key.model_copy(update=update) if update else key
            if kept.env or kept.file or kept.sdk:
                keys.append(kept)
        if keys:
            secrets.append(secret.model_copy(update={"keys": keys}))
    return source.model_copy(update={"secrets": secrets})


# How the wrapper's one-line failure reason starts: it writes the line to stderr and as the
# container's termination message (wrapper/cmd/cloudtaser-wrapper), which the kubelet reports
# in the pod's status. Such a line names paths and OpenBao's answer, never a secret value.
WRAPPER_PREFIX = "cloudtaser-wrapper:"
DELIVERED, FAILING, PENDING = "delivered", "failing", "pending"
FAILURE_MAX = 300


def delivery(pod: Pod) -> tuple[str, str]:
    """(state, reason) of an injected pod's delivery, from its container statuses: ``failing``
    when a wrapper ended with its reason (now, or in the run before a restart back-off), else
    ``delivered`` when every app container runs, else ``pending`` (created, pulling, starting)."""
    statuses = (pod.status.container_statuses if pod.status else None) or []
    for status in statuses:
        ended = status.state.terminated
        if ended is None and status.state.waiting is not None:
            ended = status.last_state.terminated
        message = ((ended.message if ended else None) or "").strip()
        if message.startswith(WRAPPER_PREFIX):
            line = message.splitlines()[-1].strip()
            return FAILING, f"container {status.name}: {line[:FAILURE_MAX]}"
    names = {c.name for c in pod.spec.containers}
    running = {s.name for s in statuses if s.state.running is not None}
    return (DELIVERED, "") if names and names <= running else (PENDING, "")


@dataclass(slots=True)
class _PodEntry:
    pod: Pod
    namespace: str
    key: tuple[str, str]
    injected: bool = False
    delivery: tuple[str, str] = (PENDING, "")
    bindings: set[str] = field(default_factory=set)
    plan: PodPlan | None = None
    # What this pod's plan adds to the per-policy figures, kept so a replan can take it back.
    policies: tuple[str, ...] = ()
    constrained: tuple[str, ...] = ()
    overlaps: tuple[tuple[str, str], ...] = ()


ProblemKey = tuple[str, str, str, str, str, str]


def _problem_key(problem: Problem) -> ProblemKey:
    return (*problem.sort_key(), problem.severity)


class _Problems:
    """Problems from many sources, counted: a source takes back exactly what it added, and
    one problem reported by two sources is listed once."""

    def __init__(self) -> None:
        self._counts: dict[ProblemKey, int] = {}
        self.ordered: OrderedMap[ProblemKey, Problem] = OrderedMap()

    def add(self, problems: Iterable[Problem]) -> None:
        for problem in problems:
            key = _problem_key(problem)
            count = self._counts.get(key, 0)
            self._counts[key] = count + 1
            if not count:
                self.ordered.put(key, problem)

    def remove(self, problems: Iterable[Problem]) -> None:
        for problem in problems:
            key = _problem_key(problem)
            count = self._counts[key] - 1
            if count:
                self._counts[key] = count
            else:
                del self._counts[key]
                self.ordered.pop(key)

    def listed(self, extra: Iterable[Problem]) -> list[Problem]:
        """All problems in order, with ``extra`` (derived at assembly time) merged in."""
        fresh = {k: p for p in extra if (k := _problem_key(p)) not in self._counts}
        if not fresh:
            return self.ordered.values()
        keys, values = self.ordered.keys(), self.ordered.values()
        for key in sorted(fresh):
            at = bisect.bisect_left(keys, key)
            keys.insert(at, key)
            values.insert(at, fresh[key])
        return values


def _pod_key(pod: Pod) -> tuple[str, str]:
    return (pod.metadata.namespace or "default", pod.metadata.name)


def is_injected(pod: Pod) -> bool:
    """The webhook's work is on the pod: its marker *and* its init container. The marker alone
    is not trusted — whoever creates a pod can write annotations."""
    return INJECTED_ANNOTATION in pod.metadata.annotations and any(
        c.name == INIT_CONTAINER for c in pod.spec.init_containers or ()
    )


def _wants_injection(pod: Pod) -> bool:
    return pod.metadata.annotations.get(INJECT_ANNOTATION) == "true"


class IncrementalCompiler:
    """Keeps the compiled pieces of a cluster state and recompiles only what a change touches.

    Pure like the rest of the engine: the same sequence of calls gives the same Plan.
    """

    def __init__(self, state: ClusterState) -> None:
        self.settings = state.settings
        self._excluded = frozenset(
            {self.settings.operator_namespace, *self.settings.excluded_namespaces}
        )
        self._parse_problems = list(state.problems)
        self._bindings: dict[str, CompiledBinding] = {}
        self._by_namespace: dict[str, set[str]] = defaultdict(set)
        self._policies: dict[str, EnforcementPolicy] = {}
        self._namespace_labels: dict[str, dict[str, str]] = {}
        self._pods: dict[tuple[str, str], _PodEntry] = {}
        # namespace -> (label key, value) -> pod keys; the candidate index for matchLabels.
        self._label_index: dict[str, dict[tuple[str, str], set[tuple[str, str]]]] = defaultdict(
            lambda: defaultdict(set)
        )
        self._ns_pods: dict[str, set[tuple[str, str]]] = defaultdict(set)
        # namespace -> first matchLabels pair -> binding refs (bindings without matchLabels
        # under None): the candidate index for pods, as the admission path needs it.
        self._binding_index: dict[str, dict[tuple[str, str] | None, set[str]]] = defaultdict(
            lambda: defaultdict(set)
        )
        # Parts every pod plan shares (plan models are never mutated after construction).
        # The wrapper's program (not secret) on the node's disk: a Memory emptyDir would
        # charge every pod the RAM of its own copy (unreclaimable tmpfs pages); on disk the copy
        # is page cache, reclaimable. ~6 MiB: the static wrapper and its interposers.
        self._bundle_volume = VolumePlan(
            name=BUNDLE_VOLUME,
            mount_path=self.settings.bundle_dir,
            source={"emptyDir": {"sizeLimit": "32Mi"}},
        )
        self._agent_volume = VolumePlan(
            name=AGENT_VOLUME,
            mount_path=AGENT_MOUNT,
            source={"csi": {"driver": AGENT_CSI_DRIVER, "readOnly": True}},
        )
        # The wrapper logs in with its own short-lived token bound to the OpenBao audience,
        # never with the default token (whose audience is the API server).
        self._token_volume = VolumePlan(
            name=TOKEN_VOLUME,
            mount_path=TOKEN_MOUNT,
            source={"projected": {"sources": [{"serviceAccountToken": {
                "audience": self.settings.token_audience,
                "expirationSeconds": self.settings.token_expiration_seconds,
                "path": "token",
            }}]}},
        )
        self._agent_settings = {
            required: AgentSettings(socket=f"{AGENT_MOUNT}/agent.sock", required=required)
            for required in (False, True)
        }
        # Derived caches, dropped whenever a policy or namespace changes.
        self._ns_policies: dict[str, list[EnforcementPolicy]] = {}
        self._effective: dict[tuple[str, ...], EffectivePolicy] = {}
        # The Plan's parts, kept current by each change (see the module docstring).
        self._rules: OrderedMap[str, MutationRule] = OrderedMap()
        self._binding_problems: dict[str, list[Problem]] = {}
        self._matched: dict[str, int] = defaultdict(int)
        self._injected_pods: dict[str, int] = defaultdict(int)
        self._delivered: dict[str, int] = defaultdict(int)
        self._failing: dict[str, dict[tuple[str, str], str]] = defaultdict(dict)
        self._summaries: OrderedMap[str, BindingSummary] = OrderedMap()
        self._stale_summaries: set[str] = set()
        self._pod_plans: OrderedMap[tuple[str, str], PodPlan] = OrderedMap()
        self._bpf: OrderedMap[tuple[str, str], BpfEntry] = OrderedMap()
        self._policy_pods: dict[str, int] = defaultdict(int)
        self._constrained: dict[str, set[tuple[str, str]]] = defaultdict(set)
        self._overlaps: dict[tuple[str, str], int] = defaultdict(int)
        self._policy_summaries: dict[str, PolicySummary] = {}
        self._problems = _Problems()
        self._scope: WebhookScope | None = None
        for ordered in (self._rules, self._summaries, self._pod_plans, self._bpf,
                        self._problems.ordered):
            ordered.unsort()  # a bulk load follows: sorted once, by the first plan()
        namespaces = self._unique("Namespace", state.namespaces, lambda n: ("", n.metadata.name))
        policies = self._unique("EnforcementPolicy", state.policies, lambda p: ("", p.metadata.name))
        pods = self._unique("Pod", state.pods, _pod_key)
        bindings = self._unique("SecretBinding", state.bindings,
                                lambda b: (b.metadata.namespace or "default", b.metadata.name))
        for ns in namespaces:
            self._namespace_labels[ns.metadata.name] = dict(ns.metadata.labels)
        for policy in policies:
            self._policies[policy.metadata.name] = policy
        self._problems.add(self._parse_problems)
        self._stale_summaries.update(self._invalid_refs(self._parse_problems))
        for pod in pods:
            self._add_pod(pod)
        for binding in bindings:
            compiled = compile_binding(binding)
            self._put_binding(compiled)
            for key in self._select(compiled):
                self._link(self._pods[key], compiled.ref)
        for entry in self._pods.values():
            self._replan(entry)

    def _unique(self, kind: str, items: Sequence[M], identity: Callable[[M], tuple[str, str]]) -> list[M]:
        """One object per identity. A cluster never holds two; files can. Which one is used
        must not depend on input order: the smallest serialisation wins, and it is reported."""
        chosen: dict[tuple[str, str], M] = {}
        for item in items:
            key = identity(item)
            if key in chosen:
                self._parse_problems.append(Problem(
                    kind=kind, namespace=key[0] or None, name=key[1], path="metadata.name",
                    message="defined more than once; one definition was used"))
                if item.model_dump_json() < chosen[key].model_dump_json():
                    chosen[key] = item
            else:
                chosen[key] = item
        return [chosen[k] for k in sorted(chosen)]

    # --- changes ------------------------------------------------------------------------

    def set_binding(self, binding: SecretBinding) -> list[PodPlan]:
        """Add or replace one binding; returns the plans of the pods it affects."""
        compiled = compile_binding(binding)
        old = self._drop_binding(compiled.ref)
        affected = set(self._select(old)) if old else set()
        self._put_binding(compiled)
        now = set(self._select(compiled))
        for key in affected - now:
            self._unlink(self._pods[key], compiled.ref)
        for key in now:
            self._link(self._pods[key], compiled.ref)
        return self._replan_keys(affected | now)

    def remove_binding(self, ref: str) -> list[PodPlan]:
        """Drop one binding (namespace/name); returns the plans of the pods it affected."""
        old = self._drop_binding(ref)
        if old is None:
            return []
        affected = set(self._select(old))
        for key in affected:
            self._unlink(self._pods[key], ref)
        self._matched.pop(ref, None)
        self._injected_pods.pop(ref, None)
        self._delivered.pop(ref, None)
        self._failing.pop(ref, None)
        return self._replan_keys(affected)

    def set_policy(self, policy: EnforcementPolicy) -> list[PodPlan]:
        self._policies[policy.metadata.name] = policy
        self._ns_policies.clear()
        self._effective.clear()
        self._policy_summaries.clear()
        return self._replan_keys(set(self._pods))

    def remove_policy(self, name: str) -> list[PodPlan]:
        if self._policies.pop(name, None) is None:
            return []
        self._ns_policies.clear()
        self._effective.clear()
        self._policy_summaries.clear()
        return self._replan_keys(set(self._pods))

    def set_namespace(self, namespace: Namespace) -> list[PodPlan]:
        self._namespace_labels[namespace.metadata.name] = dict(namespace.metadata.labels)
        self._ns_policies.pop(namespace.metadata.name, None)
        return self._replan_keys(set(self._ns_pods.get(namespace.metadata.name, ())))

    def remove_namespace(self, name: str) -> list[PodPlan]:
        """A namespace is gone: its labels no longer select policies."""
        if self._namespace_labels.pop(name, None) is None:
            return []
        self._ns_policies.pop(name, None)
        return self._replan_keys(set(self._ns_pods.get(name, ())))

    def set_parse_problems(self, problems: Iterable[Problem]) -> None:
        """Replace the problems of objects that failed to parse (the operator re-parses only
        what changed, so it hands over the whole current list)."""
        new = list(problems)
        if new == self._parse_problems:
            return
        self._stale_summaries.update(self._invalid_refs(self._parse_problems))
        self._problems.remove(self._parse_problems)
        self._parse_problems = new
        self._problems.add(new)
        self._stale_summaries.update(self._invalid_refs(new))

    def set_pod(self, pod: Pod) -> PodPlan | None:
        self.remove_pod(*_pod_key(pod))
        entry = self._add_pod(pod)
        for ref in self._bindings_for(entry.namespace, pod):
            self._link(entry, ref)
        self._replan(entry)
        return entry.plan

    def remove_pod(self, namespace: str, name: str) -> None:
        entry = self._pods.pop((namespace, name), None)
        if entry is None:
            return
        self._uncount(entry)
        for ref in list(entry.bindings):
            self._unlink(entry, ref)
        self._ns_pods[namespace].discard(entry.key)
        for item in entry.pod.metadata.labels.items():
            self._label_index[namespace][item].discard(entry.key)

    # --- queries ------------------------------------------------------------------------

    def plan_pod(self, pod: Pod) -> PodPlan | None:
        """The plan for a pod not (yet) in the state, e.g. one under admission."""
        namespace = pod.metadata.namespace or "default"
        entry = _PodEntry(pod=pod, namespace=namespace, key=_pod_key(pod))
        entry.bindings.update(self._bindings_for(namespace, pod))
        return self._build_plan(entry)

    def plan(self) -> Plan:
        """The whole Plan: lists in key order, figures as the last change left them."""
        invalid = self._invalid_refs(self._parse_problems) if self._stale_summaries else set()
        for ref in self._stale_summaries:
            compiled = self._bindings.get(ref)
            if compiled is not None:
                failing = self._failing.get(ref, {})
                first = min(failing) if failing else None
                self._summaries.put(ref, BindingSummary(
                    binding=ref, valid=True, matched_pods=self._matched.get(ref, 0),
                    injected_pods=self._injected_pods.get(ref, 0), secrets=compiled.secrets,
                    delivered_pods=self._delivered.get(ref, 0), failing_pods=len(failing),
                    failure=f"{first[0]}/{first[1]}: {failing[first]}" if first else ""))
            elif ref in invalid:
                self._summaries.put(ref, BindingSummary(
                    binding=ref, valid=False, matched_pods=0, injected_pods=0, secrets=0))
            else:
                self._summaries.pop(ref)
        self._stale_summaries.clear()
        policies = []
        for name in sorted(self._policies):
            summary = self._policy_summaries.get(name)
            if summary is None:
                summary = self._policy_summaries[name] = PolicySummary(
                    policy=name, matched_pods=self._policy_pods.get(name, 0),
                    constrained_pods=[f"{ns}/{pod}" for ns, pod in
                                      sorted(self._constrained.get(name, ()))])
            policies.append(summary)
        # Built without re-validation: every part is a model this compiler made and checked.
        return Plan.model_construct(
            rules=self._rules.values(),
            pods=self._pod_plans.values(),
            bpf=self._bpf.values(),
            webhook=self._webhook_scope(),
            bindings=self._summaries.values(),
            policies=policies,
            problems=self._problems.listed(self._policy_overlaps()),
        )

    # --- internals ----------------------------------------------------------------------

    def _add_pod(self, pod: Pod) -> _PodEntry:
        key = _pod_key(pod)
        injected = is_injected(pod)
        entry = _PodEntry(pod=pod, namespace=key[0], key=key, injected=injected,
                          delivery=delivery(pod) if injected else (PENDING, ""))
        self._pods[key] = entry
        self._ns_pods[key[0]].add(key)
        for item in pod.metadata.labels.items():
            self._label_index[key[0]][item].add(key)
        return entry

    @staticmethod
    def _index_key(compiled: CompiledBinding) -> tuple[str, str] | None:
        labels = compiled.binding.spec.selector.match_labels
        return min(labels.items()) if labels else None

    def _index_binding(self, compiled: CompiledBinding) -> None:
        self._binding_index[compiled.namespace][self._index_key(compiled)].add(compiled.ref)

    def _unindex_binding(self, compiled: CompiledBinding) -> None:
        self._binding_index[compiled.namespace][self._index_key(compiled)].discard(compiled.ref)

    def _bindings_for(self, namespace: str, pod: Pod) -> list[str]:
        """Refs of the bindings selecting ``pod``: candidates from the index, then checked."""
        if not _wants_injection(pod):
            return []
        index = self._binding_index.get(namespace)
        if not index:
            return []
        candidates = set(index.get(None, ()))
        for item in pod.metadata.labels.items():
            candidates.update(index.get(item, ()))
        return [ref for ref in candidates if self._selects(self._bindings[ref], pod)]

    def _selects(self, compiled: CompiledBinding, pod: Pod) -> bool:
        return _wants_injection(pod) and compiled.binding.spec.selector.matches(
            pod.metadata.labels
        )

    def _select(self, compiled: CompiledBinding) -> list[tuple[str, str]]:
        """Keys of the known pods a binding selects, through the label index."""
        selector = compiled.binding.spec.selector
        index = self._label_index.get(compiled.namespace)
        if index is None:
            return []
        candidates: set[tuple[str, str]] | None = None
        for item in selector.match_labels.items():
            found = index.get(item, set())
            candidates = set(found) if candidates is None else candidates & found
            if not candidates:
                return []
        if candidates is None:
            candidates = self._ns_pods.get(compiled.namespace, set())
        return [k for k in candidates if self._selects(compiled, self._pods[k].pod)]

    def _replan_keys(self, keys: set[tuple[str, str]]) -> list[PodPlan]:
        plans = []
        for key in sorted(keys):
            entry = self._pods.get(key)
            if entry is not None:
                self._replan(entry)
                if entry.plan is not None:
                    plans.append(entry.plan)
        return plans

    def _replan(self, entry: _PodEntry) -> None:
        """Rebuild one pod's plan and move the figures it contributes to."""
        self._uncount(entry)
        plan = entry.plan = self._build_plan(entry)
        if plan is None:
            return
        key = entry.key
        self._pod_plans.put(key, plan)
        if entry.injected:
            self._bpf.put(key, BpfEntry(namespace=entry.namespace, pod=entry.pod.metadata.name,
                                        uid=entry.pod.metadata.uid, node=entry.pod.spec.node_name,
                                        policy=plan.policy))
        names = tuple(plan.policy.policies)
        modes = {n: self._policies[n].spec.mode for n in names}
        entry.policies = names
        entry.constrained = tuple(n for n in names if _pins_nodes(self._policies[n]))
        entry.overlaps = tuple(
            (audit, enforce) for audit in names if modes[audit] == "audit"
            for enforce in names if modes[enforce] == "enforce"
        ) if plan.policy.mode == "enforce" else ()
        for name in names:
            self._policy_pods[name] += 1
            self._policy_summaries.pop(name, None)
        for name in entry.constrained:
            self._constrained[name].add(key)
        for pair in entry.overlaps:
            self._overlaps[pair] += 1
        self._problems.add(plan.problems)

    def _uncount(self, entry: _PodEntry) -> None:
        """Take back what one pod's plan contributed (before a replan or its removal)."""
        plan = entry.plan
        if plan is None:
            return
        key = entry.key
        self._pod_plans.pop(key)
        self._bpf.pop(key)
        for name in entry.policies:
            self._policy_pods[name] -= 1
            self._policy_summaries.pop(name, None)
        for name in entry.constrained:
            self._constrained[name].discard(key)
        for pair in entry.overlaps:
            self._overlaps[pair] -= 1
            if not self._overlaps[pair]:
                del self._overlaps[pair]
        self._problems.remove(plan.problems)
        entry.plan, entry.policies, entry.constrained, entry.overlaps = None, (), (), ()

    def _link(self, entry: _PodEntry, ref: str) -> None:
        """Binding ``ref`` selects this pod (counted for the binding's status)."""
        if ref in entry.bindings:
            return
        entry.bindings.add(ref)
        self._matched[ref] += 1
        if entry.injected:
            self._injected_pods[ref] += 1
            state, reason = entry.delivery
            if state == DELIVERED:
                self._delivered[ref] += 1
            elif state == FAILING:
                self._failing[ref][entry.key] = reason
        self._stale_summaries.add(ref)

    def _unlink(self, entry: _PodEntry, ref: str) -> None:
        if ref not in entry.bindings:
            return
        entry.bindings.discard(ref)
        self._matched[ref] -= 1
        if entry.injected:
            self._injected_pods[ref] -= 1
            state = entry.delivery[0]
            if state == DELIVERED:
                self._delivered[ref] -= 1
            elif state == FAILING:
                self._failing[ref].pop(entry.key, None)
        self._stale_summaries.add(ref)

    def _put_binding(self, compiled: CompiledBinding) -> None:
        """Index a compiled binding (any old one with its ref was dropped first)."""
        ref = compiled.ref
        self._bindings[ref] = compiled
        refs = self._by_namespace[compiled.namespace]
        if not refs:
            self._scope = None
        refs.add(ref)
        self._index_binding(compiled)
        self._rules.put(ref, MutationRule(
            binding=ref, namespace=compiled.namespace, selector=compiled.binding.spec.selector,
            containers=sorted(compiled.binding.spec.containers)))
        problems = list(compiled.problems)
        if compiled.namespace in self._excluded_namespaces():
            problems.append(_binding_problem(
                compiled.binding, "metadata.namespace",
                f"namespace {compiled.namespace} is excluded from injection "
                "(the operator's own namespace and kube-system never are)", "error"))
        if problems:
            self._binding_problems[ref] = problems
            self._problems.add(problems)
        self._stale_summaries.add(ref)

    def _drop_binding(self, ref: str) -> CompiledBinding | None:
        """Unindex a binding; the pods it selected stay linked (the caller decides)."""
        old = self._bindings.pop(ref, None)
        if old is None:
            return None
        refs = self._by_namespace[old.namespace]
        refs.discard(ref)
        if not refs:
            self._scope = None
        self._unindex_binding(old)
        self._rules.pop(ref)
        self._problems.remove(self._binding_problems.pop(ref, ()))
        self._stale_summaries.add(ref)
        return old

    @staticmethod
    def _invalid_refs(problems: Iterable[Problem]) -> set[str]:
        """Bindings that failed to parse: listed in the Plan as invalid (if no valid one)."""
        return {f"{p.namespace or 'default'}/{p.name}" for p in problems
                if p.kind == "SecretBinding" and p.severity == "error"}

    def _namespace_labels_of(self, namespace: str) -> dict[str, str]:
        labels = self._namespace_labels.get(namespace)
        if labels is None:
            return {NAMESPACE_NAME_LABEL: namespace}
        return {NAMESPACE_NAME_LABEL: namespace, **labels}

    def _effective_policy(self, namespace: str, pod: Pod) -> EffectivePolicy:
        in_namespace = self._ns_policies.get(namespace)
        if in_namespace is None:
            ns_labels = self._namespace_labels_of(namespace)
            in_namespace = [
                self._policies[name]
                for name in sorted(self._policies)
                if self._policies[name].spec.namespace_selector.matches(ns_labels)
            ]
            self._ns_policies[namespace] = in_namespace
        labels = pod.metadata.labels
        chosen = [p for p in in_namespace if p.spec.pod_selector.matches(labels)]
        key = tuple(p.metadata.name for p in chosen)
        policy = self._effective.get(key)
        if policy is None:
            policy = self._effective[key] = effective_policy(chosen)
        return policy

    def _build_plan(self, entry: _PodEntry) -> PodPlan | None:
        if not entry.bindings or entry.namespace in self._excluded_namespaces():
            return None
        pod = entry.pod
        pod_name = pod.metadata.display_name
        policy = self._effective_policy(entry.namespace, pod)
        problems: list[Problem] = []
        bindings = [self._bindings[ref] for ref in sorted(entry.bindings)]
        names = [c.name for c in pod.spec.containers]
        for compiled in bindings:
            for name in compiled.binding.spec.containers:
                if name not in names:
                    problems.append(
                        _binding_problem(
                            compiled.binding,
                            "spec.containers",
                            f"container '{name}' is not in every selected pod "
                            f"(missing from pod {entry.namespace}/{pod_name})",
                            "warning",
                        )
                    )
        volumes: dict[str, VolumePlan] = {}
        containers = []
        for container in pod.spec.containers:
            chosen = [
                c
                for c in bindings
                if not c.binding.spec.containers or container.name in c.binding.spec.containers
            ]
            if not chosen:
                continue
            sources, mounted = self._container_sources(container.name, chosen, problems)
            for c in chosen:
                for volume in c.volumes:
                    volumes[volume.name] = volume
            refresh = [c.refresh_seconds for c in chosen if c.refresh_seconds]
            config = WrapperConfig(
                namespace=entry.namespace,
                container=container.name,
                token_path=f"{TOKEN_MOUNT}/token",
                sources=sources,
                refresh_seconds=min(refresh) if refresh else None,
                require_secret_mem=any(c.binding.spec.require_secret_mem for c in chosen),
                agent=self._agent_settings[policy.mode == "enforce"],
            )
            containers.append(
                ContainerPlan(
                    name=container.name,
                    bindings=[c.ref for c in chosen],
                    config=config,
                    volumes=sorted({BUNDLE_VOLUME, AGENT_VOLUME, TOKEN_VOLUME, *mounted}),
                    ipc_lock=any(c.binding.spec.ipc_lock for c in chosen),
                )
            )
        volumes[BUNDLE_VOLUME] = self._bundle_volume
        volumes[AGENT_VOLUME] = self._agent_volume
        volumes[TOKEN_VOLUME] = self._token_volume
        return PodPlan(
            namespace=entry.namespace,
            name=pod_name,
            containers=containers,
            volumes=[volumes[k] for k in sorted(volumes)],
            policy=policy,
            problems=sorted(problems, key=Problem.sort_key),
            pod_security=self._namespace_labels_of(entry.namespace).get(POD_SECURITY_ENFORCE_LABEL),
        )

    def _container_sources(
        self, container: str, chosen: list[CompiledBinding], problems: list[Problem]
    ) -> tuple[list[WrapperSource], list[str]]:
        """Sources for one container; a delivery that an earlier binding (by name) already
        claims is dropped from the later one and reported on it."""
        claimed: dict[tuple[str, str], str] = {}
        sources: list[WrapperSource] = []
        mounted: list[str] = []
        for compiled in chosen:
            dropped: set[tuple[int, int, str]] = set()
            for d in compiled.deliveries:
                owner = claimed.get((d.field, d.value))
                if owner is None:
                    claimed[(d.field, d.value)] = compiled.ref
                    continue
                dropped.add((d.source_index, d.key_index, d.field))
                problems.append(
                    _binding_problem(
                        compiled.binding,
                        d.path,
                        f"conflict: {_DELIVERY_WORDS[d.field]} '{d.value}' of container "
                        f"'{container}' is also delivered by SecretBinding {owner}, which "
                        "wins (first by name); this delivery is skipped",
                        "error",
                    )
                )
            source = _filter_source(compiled.source, dropped) if dropped else compiled.source
            if source.secrets:
                sources.append(source)
                mounted.extend(v.name for v in compiled.volumes)
        return sources, mounted

    def _policy_overlaps(self) -> list[Problem]:
        """Report audit policies overridden by enforce policies on the same pods (counted
        by _replan)."""
        return [
            Problem(
                kind="EnforcementPolicy",
                name=audit,
                path="spec.mode",
                message=f"audit mode is overridden on {count} pod(s) also selected by "
                f"EnforcementPolicy {enforce} (mode enforce); the stricter mode wins",
                severity="warning",
            )
            for (audit, enforce), count in sorted(self._overlaps.items())
        ]

    def _excluded_namespaces(self) -> frozenset[str]:
        return self._excluded

    def _webhook_scope(self) -> WebhookScope:
        if self._scope is None:
            self._scope = self._derive_scope()
        return self._scope

    def _derive_scope(self) -> WebhookScope:
        excluded = self._excluded_namespaces()
        namespaces = sorted(
            ns for ns, refs in self._by_namespace.items() if refs and ns not in excluded
        )
        selector = LabelSelector.model_validate(
            {
                "matchExpressions": [
                    {"key": NAMESPACE_NAME_LABEL, "operator": "In", "values": namespaces}
                ]
                if namespaces
                else [{"key": NAMESPACE_NAME_LABEL, "operator": "DoesNotExist"}]
            }
        )
        return WebhookScope(
            namespaces=namespaces,
            namespace_selector=selector.model_dump(by_alias=True, exclude_defaults=True),
        )
