"""What compile() returns: the Plan and its parts, each consumed by one runtime piece.

- ``WrapperConfig``: what the wrapper in one container fetches and how it delivers it. It goes
  into the pod spec as JSON, so it holds addresses, paths and names only, never a secret.
- ``PodPlan``: for one pod, the wrapper config of each injected container and the volumes the
  injector adds; ``engine.patches`` turns it into RFC 6902 operations.
- ``BpfEntry``: the effective policy of one protected pod, as flags the node agent writes to
  its kernel maps.
- ``WebhookScope``: the namespaces the admission webhook must see.
- ``Problem``: what is wrong, on which object, at which field path.

All lists are sorted so that the Plan serialises to the same bytes for the same input.
"""

from __future__ import annotations

import enum
from functools import cached_property
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field
from pydantic.dataclasses import dataclass

from cloudtaser.engine.kube import WIRE, LabelSelector, Model
from cloudtaser.errors import PermanentError

INJECT_ANNOTATION = "cloudtaser.io/inject"
INJECTED_ANNOTATION = "cloudtaser.io/injected"
INIT_CONTAINER = "cloudtaser-init"
# The node agent's CSI driver (bpf/csi, chart/templates/csidriver.yaml): injected pods get the
# agent's socket directory through an ephemeral inline volume of it, read-only, which every Pod
# Security level allows (hostPath is refused by baseline and restricted).
AGENT_CSI_DRIVER = "csi.cloudtaser.io"
POD_SECURITY_ENFORCE_LABEL = "pod-security.kubernetes.io/enforce"
CONFIG_ENV = "CLOUDTASER_CONFIG"
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
# The Node label an agent run with --node (as the chart runs it) keeps while it runs: its
# backend, lsm or tracepoint, removed when it stops (bpf/cloudtaser/bpf/labelling.py). The
# webhook adds it to the nodeSelector of a pod whose policy has requireBackend (patches.py).
# The chart's ValidatingAdmissionPolicy <agent>-node-label (chart/templates/agent.yaml) lets an
# agent change only this label, only to lsm or tracepoint, only on the node its token names.
AGENT_BACKEND_LABEL = "cloudtaser.io/agent-backend"


class ProtectionFlag(enum.IntFlag):
    """Bits of a protected pod's policy word in the agent's maps: the one definition of the
    protections, their names and their set (C: enum protection_flag in bpf/protect.h, which
    tests/unit/bpf/test_layouts.py compares with this). A protection's name is its member's
    name in lower case, as in EnforcementPolicy's ``protections`` and the agent's answer."""

    ENVIRON = 1 << 0
    MEM = 1 << 1
    FDS = 1 << 2
    PTRACE = 1 << 3
    PIDFD_GETFD = 1 << 4
    CORE_DUMP = 1 << 5
    AUDIT_ONLY = 1 << 8  # a mode, not a protection: report, do not stop
    KILL = 1 << 9  # a mode: kill the offender where the backend would only deny
    # Every protection (no mode bit): what the default policy compiles to. An alias, so
    # iterating the class still yields the single bits only.
    ALL = ENVIRON | MEM | FDS | PTRACE | PIDFD_GETFD | CORE_DUMP

    @classmethod
    def protections(cls) -> dict[str, ProtectionFlag]:
        """Each protection by its name (``environ``, ..., ``core_dump``), in bit order."""
        return {(flag.name or "").lower(): flag for flag in cls if flag & cls.ALL}

    def names(self) -> list[str]:
        """The names of the protections set in these bits, in bit order."""
        return [name for name, flag in self.protections().items() if self & flag]

    @classmethod
    def parse(cls, text: str) -> ProtectionFlag:
        """``environ,mem,ptrace`` (member names, any case; ``all`` for every protection,
        ``audit_only`` and ``kill`` for the modes) or a number (``0x103``). Unknown names and
        bits are refused."""
        try:
            value = int(text, 0)
        except ValueError:
            value = 0
            for name in filter(None, (p.strip() for p in text.split(","))):
                try:
                    value |= cls[name.upper()]
                except KeyError:
                    raise PermanentError(f"unknown protection {name!r}") from None
        unknown = value & ~cls.known()
        if unknown or value < 0:
            raise PermanentError(f"unknown protection flag bits: {unknown or value:#x}")
        return cls(value)

    @classmethod
    def known(cls) -> int:
        """Every bit the kernel side knows: the protections and the modes."""
        return int(sum(cls))


class InjectorSettings(Model):
    """Installation settings that shape the pod patch (from the chart's values)."""

    wrapper_image: str = Field(
        default="ghcr.io/cloudtaser/wrapper-bundle:0.1.0",
        description="Image of the init container that carries the wrapper (the static "
        "program and its interposers, in /bundle).",
    )
    bundle_dir: str = Field(
        default="/cloudtaser", description="Where the bundle emptyDir is mounted in containers."
    )
    agent_socket_dir: str = Field(
        default="/run/cloudtaser",
        description="Host directory of the node agent's socket (the agent and its CSI plugin "
        "use it; pods reach it through the csi.cloudtaser.io volume, never a hostPath).",
    )
    operator_namespace: str = Field(
        default="cloudtaser-system", description="The operator's namespace (never injected)."
    )
    excluded_namespaces: list[str] = Field(
        default_factory=lambda: ["kube-system"],
        description="Namespaces the webhook never sees besides the operator's own.",
    )
    confidential_node_selector: dict[str, str] = Field(
        default_factory=lambda: {"cloudtaser.io/confidential-node": "true"},
        description="Added to pods whose policy requires a confidential-computing node.",
    )
    confidential_runtime_class: str | None = Field(
        default=None,
        description="RuntimeClass for those pods (e.g. a Kata/CoCo class); unset: none added.",
    )
    token_audience: str = Field(
        default="openbao",
        description="Audience of the projected service-account token the wrapper logs in "
        "with; the OpenBao/Vault role should require it.",
    )
    token_expiration_seconds: int = Field(
        default=600, ge=600, description="Lifetime of that token (the kubelet rotates it)."
    )


class KeyPlan(Model):
    """One key to deliver."""

    key: str
    env: str | None = None
    file: str | None = None
    sdk: str | None = None


class SecretPlan(Model):
    """One KV v2 secret to read."""

    mount: str
    path: str
    keys: list[KeyPlan]


class WrapperSource(Model):
    """One binding's OpenBao/Vault connection and what to fetch through it."""

    binding: str = Field(description="namespace/name of the SecretBinding.")
    address: str
    auth_mount: str
    role: str
    ca_file: str | None = None
    server_name: str | None = None
    client_cert_file: str
    client_key_file: str
    secrets: list[SecretPlan]


class AgentSettings(Model):
    """How the wrapper registers with the node agent."""

    socket: str
    required: bool = Field(description="Refuse to start the app when the agent is absent.")


def _exactly_one(value: object) -> object:
    """JSON ``true`` and ``1.0`` equal 1 in Python, and a Literal takes them; the contract
    (contracts/README.md) does not: the version is the integer 1."""
    if type(value) is not int or value != 1:
        raise ValueError("input should be 1")
    return value


class WrapperConfig(Model):
    """The wrapper's whole configuration for one container (paths and names only).

    On the wire it is the contract ``config.schema`` of contracts/wrapper-contract.json
    (generated from this model, ``cloudtaser contract --write``); ``parse_wrapper_config``
    reads it exactly as the Go wrapper does."""

    version: Annotated[Literal[1], BeforeValidator(_exactly_one)] = 1
    namespace: str
    container: str
    token_path: str
    sources: list[WrapperSource]
    refresh_seconds: int | None = Field(default=None, ge=1)
    require_secret_mem: bool = False
    agent: AgentSettings


def parse_wrapper_config(raw: str | bytes) -> WrapperConfig:
    """A wrapper config as the contract defines it: JSON types as they are (no coercion of
    ``"10"`` to 10), and only the wire (camelCase) names."""
    return WrapperConfig.model_validate_json(raw, strict=True, by_name=False)


class VolumePlan(Model):
    """A volume the injector adds to the pod and mounts into injected containers."""

    name: str
    mount_path: str
    source: dict[str, object] = Field(description="The volume source, as in a pod spec.")
    read_only: bool = True


class ContainerPlan(Model):
    """An injected container: its bindings and its wrapper config."""

    name: str
    bindings: list[str]
    config: WrapperConfig
    ipc_lock: bool = Field(default=False, description="A binding asks for IPC_LOCK (ipcLock).")
    volumes: list[str] = Field(description="Names of the plan volumes mounted into it.")

    # Serialised once per plan object: a ContainerPlan is never mutated after construction, and
    # the planner shares one across the admissions of a binding (engine.pods), so each review
    # pays for neither dump again. Not fields: no dump or comparison sees them.

    @cached_property
    def config_json(self) -> str:
        """The WrapperConfig env value: compact JSON, fields in model order (deterministic)."""
        return self.config.model_dump_json(exclude_none=True)

    @cached_property
    def plan_json(self) -> str:
        """This plan as PodPlan.model_dump_json() writes it inside ``containers``."""
        return self.model_dump_json()


class Problem(Model):
    """A problem in the input, located by object and field path."""

    kind: str
    namespace: str | None = None
    name: str
    path: str
    message: str
    severity: Literal["error", "warning"] = "error"

    def sort_key(self) -> tuple[str, str, str, str, str]:
        return (self.kind, self.namespace or "", self.name, self.path, self.message)


class EffectivePolicy(Model):
    """The combined EnforcementPolicies of one pod (stricter wins)."""

    policies: list[str] = Field(description="Names of the contributing policies; [] = default.")
    mode: Literal["enforce", "audit"]
    flags: int = Field(description="ProtectionFlag bits, as written to the kernel maps.")
    protections: list[str] = Field(description="Names of the set protection bits.")
    allowed_accessors: list[str] = Field(description="exe[:uid] entries allowed to access.")
    kill_on_violation: bool
    require_confidential_node: bool
    require_backend: Literal["lsm"] | None = Field(
        default=None,
        description="The agent backend the pod's node must report (label "
        f"{AGENT_BACKEND_LABEL}); None: any.",
    )


class PodPlan(Model):
    """What the injector does to one pod, and the protection it gets."""

    namespace: str
    name: str
    containers: list[ContainerPlan]
    volumes: list[VolumePlan]
    policy: EffectivePolicy
    problems: list[Problem] = Field(default_factory=list)
    pod_security: str | None = Field(
        default=None,
        description="The namespace's Pod Security enforce level (its "
        "pod-security.kubernetes.io/enforce label), if it has one.",
    )


class BpfEntry(Model):
    """One protected pod for the node agent: written to its maps once the PID registers."""

    namespace: str
    pod: str
    uid: str | None
    node: str | None
    policy: EffectivePolicy


# The Plan's per-binding records: the operator keeps one of each for every binding of the
# cluster, so they are slotted, frozen (validated) dataclasses, not models: a model instance
# carries a __dict__ and a set of its set fields, ~0.9 KiB more each (10k bindings: issue 17).
# On the wire they are the same camelCase objects (kube.WIRE).


@dataclass(slots=True, frozen=True, config=WIRE)
class MutationRule:
    """One binding's pod selection, for the webhook's fast pre-filter."""

    binding: str
    namespace: str
    selector: LabelSelector
    containers: list[str]


class WebhookScope(Model):
    """What the MutatingWebhookConfiguration must select."""

    namespaces: list[str] = Field(description="Namespaces holding valid bindings.")
    namespace_selector: dict[str, object] = Field(description="For the webhook configuration.")
    failure_policy: Literal["Fail"] = "Fail"


@dataclass(slots=True, frozen=True, config=WIRE)
class BindingSummary:
    """Per binding: what its status should say."""

    binding: str
    valid: bool
    matched_pods: int
    injected_pods: int
    secrets: int
    # Of the injected pods: those whose app containers all run (the wrapper execs the app only
    # after every secret was fetched), and those where a wrapper exited with its one-line
    # reason; the first of those reasons (by pod) as "namespace/pod: reason".
    delivered_pods: int = 0
    failing_pods: int = 0
    failure: str = ""


class PolicySummary(Model):
    """Per policy: what its status should say."""

    policy: str
    matched_pods: int
    constrained_pods: list[str] = Field(
        default_factory=list,
        description="namespace/name of the pods this policy pins to particular nodes "
        "(confidential computing, an agent backend).",
    )


class Plan(Model):
    """Everything the runtime pieces need, derived from the cluster state alone."""

    rules: list[MutationRule]
    pods: list[PodPlan]
    bpf: list[BpfEntry]
    webhook: WebhookScope
    bindings: list[BindingSummary]
    policies: list[PolicySummary]
    problems: list[Problem]

    def to_json(self) -> str:
        return self.model_dump_json(indent=2, exclude_none=True) + "\n"
