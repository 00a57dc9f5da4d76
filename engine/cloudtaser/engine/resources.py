"""The cloudtaser custom resources: SecretBinding and EnforcementPolicy (cloudtaser.io/v1alpha1).

These models are the single source of truth: ``crds/*.yaml`` is generated from them
(engine.crds) and a test fails when the committed YAML drifts. Field-level checks that the API
server can enforce also appear in the generated schema (patterns, enums, minimums); checks that
need several fields at once live in model validators and run in ``cloudtaser validate``, the
operator and the webhook alike. Every field has a description: it is what ``kubectl explain``
shows.
"""

from __future__ import annotations

import posixpath
import re
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BeforeValidator, Field, WithJsonSchema, model_validator
from pydantic_core import PydanticCustomError

from cloudtaser.engine.kube import (
    DnsLabel,
    DnsSubdomain,
    LabelSelector,
    Model,
    ObjectMeta,
    regex_check,
)

GROUP = "cloudtaser.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
SDK_NAME = r"^[a-z0-9]([a-z0-9_.-]*[a-z0-9])?$"
DURATION = r"^([0-9]+h)?([0-9]+m)?([0-9]+s)?$"
MIN_REFRESH_SECONDS = 10
# Paths a secret file may never shadow: the interposer serves open() of these paths, and
# shadowing kernel or runtime interfaces would break the app or the protections.
_FORBIDDEN_FILE_ROOTS = ("/proc", "/sys", "/dev")
_DURATION_RE = re.compile(DURATION)
_ENV_RE = re.compile(ENV_NAME)
_SDK_RE = re.compile(SDK_NAME)


_check_env_name = regex_check(
    "env_name", _ENV_RE, "'{value}' is not a valid environment variable name"
)
_check_sdk_name = regex_check(
    "sdk_name",
    _SDK_RE,
    "'{value}' is not a valid SDK name: lower-case letters, digits, '_', '.' and '-'",
)


def _check_abs_path(value: str) -> str:
    if (
        not value.startswith("/")
        or any(ord(c) < 32 or ord(c) == 127 for c in value)
        or posixpath.normpath(value) != value
        or value == "/"
    ):
        raise PydanticCustomError(
            "abs_path",
            "'{value}' is not a clean absolute file path (no '..', '//', trailing '/' or "
            "control characters)",
            {"value": value},
        )
    return value


def _check_secret_file(value: str) -> str:
    _check_abs_path(value)
    for root in _FORBIDDEN_FILE_ROOTS:
        if value == root or value.startswith(root + "/"):
            raise PydanticCustomError(
                "secret_file",
                "'{value}' is under {root}: a secret file may not shadow kernel interfaces",
                {"value": value, "root": root},
            )
    return value


def _check_kv_path(value: str) -> str:
    parts = value.split("/")
    if not value or value.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise PydanticCustomError(
            "kv_path",
            "'{value}' is not a valid KV path: relative, '/'-separated, no empty, '.' or '..' "
            "segments",
            {"value": value},
        )
    return value


def _check_https_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme != "https" or not parts.hostname:
        raise PydanticCustomError(
            "https_url",
            "'{value}' must be an https:// URL: the wrapper talks to OpenBao only over TLS",
            {"value": value},
        )
    if parts.query or parts.fragment or parts.username or parts.password:
        raise PydanticCustomError(
            "https_url",
            "'{value}' must not carry credentials, a query or a fragment",
            {"value": value},
        )
    return value


def duration_seconds(value: str) -> int:
    """Seconds in a duration such as ``90s``, ``5m`` or ``1h30m`` (validated beforehand)."""
    match = _DURATION_RE.match(value)
    if not match or not value:
        raise ValueError(f"'{value}' is not a duration")
    hours, minutes, seconds = (int(g[:-1]) if g else 0 for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds


def _check_duration(value: str) -> str:
    if not value or not _DURATION_RE.match(value):
        raise PydanticCustomError(
            "duration", "'{value}' is not a duration such as 30s, 5m or 1h30m", {"value": value}
        )
    if duration_seconds(value) < MIN_REFRESH_SECONDS:
        raise PydanticCustomError(
            "duration",
            "'{value}' is shorter than the minimum refresh interval of {min}s",
            {"value": value, "min": MIN_REFRESH_SECONDS},
        )
    return value


REQUIRABLE_BACKENDS = ("lsm",)


def _check_required_backend(value: object) -> object:
    """Before the Literal's own check, for a message that says why only lsm."""
    if value in REQUIRABLE_BACKENDS:
        return value
    hint = (
        ": the tracepoint backend is the fallback, no stronger than any agent"
        if value == "tracepoint"
        else ""
    )
    raise PydanticCustomError(
        "backend",
        "'{value}' is not a backend a policy can require (only 'lsm'){hint}",
        {"value": value, "hint": hint},
    )


def _pattern(regex: str) -> WithJsonSchema:
    return WithJsonSchema({"type": "string", "pattern": regex})


EnvName = Annotated[str, AfterValidator(_check_env_name), _pattern(ENV_NAME)]
SdkName = Annotated[str, AfterValidator(_check_sdk_name), _pattern(SDK_NAME)]
SecretFile = Annotated[str, AfterValidator(_check_secret_file), _pattern(r"^/.+")]
AbsPath = Annotated[str, AfterValidator(_check_abs_path), _pattern(r"^/.+")]
KvPath = Annotated[
    str, AfterValidator(_check_kv_path), WithJsonSchema({"type": "string", "minLength": 1})
]
HttpsUrl = Annotated[str, AfterValidator(_check_https_url), _pattern(r"^https://.+")]
Duration = Annotated[str, AfterValidator(_check_duration), _pattern(DURATION)]
NonEmpty = Annotated[str, Field(min_length=1)]
RequiredBackend = Annotated[Literal["lsm"], BeforeValidator(_check_required_backend)]


# --- SecretBinding -------------------------------------------------------------------------


class KeyDelivery(Model):
    """One key of a KV v2 secret and how it reaches the app (one or more of env, file, sdk)."""

    key: NonEmpty = Field(description="Key inside the KV v2 secret's data.")
    env: EnvName | None = Field(
        default=None,
        description="Deliver as this environment variable of the app process. Note: the "
        "environment is readable through /proc/PID/environ unless an EnforcementPolicy "
        "protects it.",
    )
    file: SecretFile | None = Field(
        default=None,
        description="Deliver as this absolute file path, served from memory by the LD_PRELOAD "
        "interposer; nothing is written to disk.",
    )
    sdk: SdkName | None = Field(
        default=None,
        description="Deliver under this name to the cloudtaser Go/Python SDKs, which read the "
        "secret memory directly.",
    )

    @model_validator(mode="after")
    def _some_delivery(self) -> KeyDelivery:
        if self.env is None and self.file is None and self.sdk is None:
            raise PydanticCustomError(
                "delivery", "key '{key}' has no delivery: set env, file or sdk", {"key": self.key}
            )
        return self


class SecretSource(Model):
    """One KV v2 secret in OpenBao/Vault and the keys taken from it."""

    mount: DnsLabel = Field(default="secret", description="Mount path of the KV v2 engine.")
    path: KvPath = Field(description="Path of the secret inside the KV v2 mount, e.g. app/db.")
    keys: list[KeyDelivery] = Field(
        min_length=1, description="Keys of the secret to deliver, each with its delivery."
    )


class ConfigMapKeyRef(Model):
    """A key of a ConfigMap in the binding's namespace (for public material such as a CA)."""

    name: DnsSubdomain = Field(description="ConfigMap name.")
    key: NonEmpty = Field(default="ca.crt", description="Key in the ConfigMap.")


class ClientCertificate(Model):
    """Where the wrapper finds its TLS client certificate and key for mutual TLS."""

    source: Literal["file", "secret", "csi"] = Field(
        default="file",
        description="file: certFile/keyFile already exist in the container (e.g. mounted by "
        "the app's own volume); secret: the injector mounts the kubernetes.io/tls Secret "
        "secretName; csi: the injector mounts a CSI volume (e.g. cert-manager's csi-driver) "
        "from csiDriver with csiAttributes.",
    )
    cert_file: AbsPath = Field(
        default="/var/run/secrets/cloudtaser/tls/tls.crt",
        description="Path of the PEM client certificate inside the container (source file).",
    )
    key_file: AbsPath = Field(
        default="/var/run/secrets/cloudtaser/tls/tls.key",
        description="Path of the PEM private key inside the container (source file).",
    )
    secret_name: DnsSubdomain | None = Field(
        default=None, description="kubernetes.io/tls Secret to mount (source secret)."
    )
    csi_driver: NonEmpty | None = Field(
        default=None, description="CSI driver that issues the certificate (source csi)."
    )
    csi_attributes: dict[str, str] = Field(
        default_factory=dict, description="Volume attributes passed to the CSI driver."
    )

    @model_validator(mode="after")
    def _source_fields(self) -> ClientCertificate:
        if self.source == "secret" and not self.secret_name:
            raise PydanticCustomError("cert_source", "source 'secret' needs secretName", {})
        if self.source == "csi" and not self.csi_driver:
            raise PydanticCustomError("cert_source", "source 'csi' needs csiDriver", {})
        if self.source != "secret" and self.secret_name:
            raise PydanticCustomError(
                "cert_source", "secretName is only used with source 'secret'", {}
            )
        if self.source != "csi" and (self.csi_driver or self.csi_attributes):
            raise PydanticCustomError(
                "cert_source", "csiDriver/csiAttributes are only used with source 'csi'", {}
            )
        return self


class VaultTLS(Model):
    """TLS towards OpenBao/Vault: the CA to trust and the client certificate (mTLS)."""

    ca_file: AbsPath | None = Field(
        default=None,
        description="PEM CA bundle inside the container. Unset with no caConfigMap: the "
        "system trust store.",
    )
    ca_config_map: ConfigMapKeyRef | None = Field(
        default=None, description="ConfigMap holding the PEM CA; the injector mounts it."
    )
    server_name: NonEmpty | None = Field(
        default=None, description="TLS server name to verify, when it differs from the address."
    )
    client_certificate: ClientCertificate = Field(
        default_factory=ClientCertificate,
        description="Client certificate for mutual TLS; OpenBao should require it.",
    )

    @model_validator(mode="after")
    def _one_ca(self) -> VaultTLS:
        if self.ca_file and self.ca_config_map:
            raise PydanticCustomError("ca_source", "set caFile or caConfigMap, not both", {})
        return self


class VaultConnection(Model):
    """How the wrapper reaches and logs in to OpenBao/Vault."""

    address: HttpsUrl = Field(description="https:// address of OpenBao/Vault.")
    auth_mount: DnsLabel = Field(
        default="kubernetes", description="Mount path of the Kubernetes auth method."
    )
    role: NonEmpty = Field(description="Role of the Kubernetes auth method to log in with.")
    tls: VaultTLS = Field(default_factory=VaultTLS, description="TLS settings (mTLS).")


class SecretBindingSpec(Model):
    """Which pods receive which secrets, and from where."""

    selector: LabelSelector = Field(
        description="Pods of this namespace that receive the secrets (they must also carry "
        'the annotation cloudtaser.io/inject: "true").'
    )
    containers: list[NonEmpty] = Field(
        default_factory=list,
        description="Names of the containers to inject; empty means every app container.",
    )
    vault: VaultConnection = Field(description="OpenBao/Vault connection and login.")
    secrets: list[SecretSource] = Field(
        min_length=1, description="KV v2 secrets to fetch and the keys to deliver."
    )
    refresh_interval: Duration | None = Field(
        default=None,
        description="Re-fetch the secrets this often (e.g. 5m) and update file/SDK deliveries "
        "in place; unset means fetch once at start. Env deliveries never change after start.",
    )
    require_secret_mem: bool = Field(
        default=False,
        description="Refuse to start the app when memfd_secret is unavailable, instead of "
        "falling back to a sealed memfd with a warning.",
    )
    ipc_lock: bool = Field(
        default=False,
        description="Add the IPC_LOCK capability to the selected containers, so secret memory "
        "(memfd_secret, the wrapper's locked buffers) is not bounded by RLIMIT_MEMLOCK. Off by "
        "default: the container runtime's limit (8 MiB on most nodes) holds typical secrets, "
        "and Pod Security baseline and restricted refuse an added capability (a pod in such a "
        "namespace is refused with a message naming this field).",
    )

    @model_validator(mode="after")
    def _unique_deliveries(self) -> SecretBindingSpec:
        _refuse_duplicates(self, "env", "environment variable")
        _refuse_duplicates(self, "file", "file path")
        _refuse_duplicates(self, "sdk", "SDK name")
        if len(set(self.containers)) != len(self.containers):
            raise PydanticCustomError("duplicate", "containers lists a name twice", {})
        return self


def _refuse_duplicates(spec: SecretBindingSpec, field: str, what: str) -> None:
    seen: dict[str, str] = {}
    for i, source in enumerate(spec.secrets):
        for j, key in enumerate(source.keys):
            value = getattr(key, field)
            if value is None:
                continue
            here = f"spec.secrets[{i}].keys[{j}].{field}"
            if value in seen:
                raise PydanticCustomError(
                    "duplicate",
                    "{what} '{value}' is delivered twice ({first} and {here})",
                    {"what": what, "value": value, "first": seen[value], "here": here},
                )
            seen[value] = here


class Condition(Model):
    """A Kubernetes-style status condition."""

    type: NonEmpty = Field(description="Condition type, e.g. Ready, Compiled, PolicyAllowed.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(default="", description="One CamelCase word for machines.")
    message: str = Field(default="", description="What a person should know.")
    last_transition_time: str | None = Field(
        default=None, description="When status last changed (RFC 3339)."
    )
    observed_generation: int | None = Field(
        default=None, description="The generation this condition was computed for."
    )


class StatusProblem(Model):
    """A problem found while compiling, with the field it concerns."""

    path: str = Field(description="Field path, e.g. spec.secrets[0].keys[1].env.")
    message: str = Field(description="What is wrong and, for conflicts, with which object.")
    severity: Literal["error", "warning"] = Field(default="error", description="error or warning.")


class ResourceStatus(Model):
    """What the status of every cloudtaser resource has."""

    observed_generation: int | None = Field(
        default=None, description="The spec generation the status describes."
    )
    conditions: list[Condition] = Field(default_factory=list, description="Conditions.")
    matched_pods: int = Field(default=0, ge=0, description="Pods the object selects now.")
    problems: list[StatusProblem] = Field(
        default_factory=list, description="Compile problems, conflicts and overlaps."
    )


class SecretBindingStatus(ResourceStatus):
    """Observed state of a SecretBinding, written by the operator (conditions: Compiled,
    PolicyAllowed, Delivered, Ready)."""

    injected_pods: int = Field(default=0, ge=0, description="Matched pods running the wrapper.")
    delivered_pods: int = Field(
        default=0,
        ge=0,
        description="Injected pods whose app containers run: their wrapper fetched every secret.",
    )
    failing_pods: int = Field(
        default=0,
        ge=0,
        description="Injected pods whose wrapper exited with a reason (condition Delivered).",
    )
    secrets: int = Field(default=0, ge=0, description="Number of keys delivered to each pod.")


class SecretBinding(Model):
    """Delivers secrets from OpenBao/Vault into the memory of selected pods' processes."""

    api_version: Literal["cloudtaser.io/v1alpha1"] = Field(description="cloudtaser.io/v1alpha1")
    kind: Literal["SecretBinding"] = Field(description="SecretBinding")
    metadata: ObjectMeta = Field(description="Standard object metadata.")
    spec: SecretBindingSpec = Field(description="Desired delivery.")
    status: SecretBindingStatus | None = Field(default=None, description="Observed state.")

    @property
    def ref(self) -> str:
        return f"{self.metadata.namespace or 'default'}/{self.metadata.name}"


# --- EnforcementPolicy ---------------------------------------------------------------------


class Protections(Model):
    """Which access paths to a protected process the kernel guards."""

    environ: bool = Field(default=True, description="/proc/PID/environ, however reached.")
    mem: bool = Field(default=True, description="/proc/PID/mem, however reached.")
    fds: bool = Field(
        default=True, description="/proc/PID/fd/N and /proc/PID/map_files/* of the process."
    )
    ptrace: bool = Field(
        default=True, description="ptrace attach/seize and process_vm_readv/process_vm_writev."
    )
    pidfd_getfd: bool = Field(default=True, description="pidfd_getfd on the process.")
    core_dump: bool = Field(default=True, description="Core dumps of the process.")


class Accessor(Model):
    """A process allowed to access protected processes despite the protections."""

    executable: AbsPath = Field(description="Absolute path of the accessor's executable.")
    uid: int | None = Field(
        default=None, ge=0, description="Only when running as this uid; unset means any uid."
    )


class EnforcementPolicySpec(Model):
    """How the kernel guards the processes of selected pods."""

    mode: Literal["enforce", "audit"] = Field(
        default="enforce",
        description="enforce: deny (or kill, see killOnViolation) and report; audit: only "
        "report. Where two policies select one pod, enforce wins.",
    )
    namespace_selector: LabelSelector = Field(
        default_factory=LabelSelector,
        description="Namespaces the policy applies to; empty means all.",
    )
    pod_selector: LabelSelector = Field(
        default_factory=LabelSelector,
        description="Pods (with injected secrets) the policy applies to; empty means all.",
    )
    protections: Protections = Field(
        default_factory=Protections, description="Access paths to guard."
    )
    allowed_accessors: list[Accessor] = Field(
        default_factory=list, description="Processes exempt from the protections."
    )
    kill_on_violation: bool = Field(
        default=False,
        description="Kill the offending process. Where the kernel lacks BPF LSM (tracepoint "
        "backend), killing is the only way to stop an access in enforce mode.",
    )
    require_confidential_node: bool = Field(
        default=False,
        description="Only run selected pods on confidential-computing nodes (SEV-SNP, TDX).",
    )
    require_backend: RequiredBackend | None = Field(
        default=None,
        description="Only run selected pods on nodes whose cloudtaser agent reports this "
        "enforcement backend (the node label cloudtaser.io/agent-backend, which each agent "
        "keeps). lsm: every access the policy guards fails with EPERM; the tracepoint backend "
        "can only kill the offender afterwards, which leaves documented races. Unset: any "
        "node with an agent.",
    )


class EnforcementPolicyStatus(ResourceStatus):
    """Observed state of an EnforcementPolicy."""

    nodes_enforcing: int = Field(
        default=0, ge=0, description="Nodes whose agent enforces this policy."
    )
    violations: int = Field(default=0, ge=0, description="Violations reported by the agents.")
    constrained_pods: list[str] = Field(
        default_factory=list,
        description="Pods this policy pins to particular nodes (requireConfidentialNode, "
        "requireBackend), namespace/name, sorted; at most 100 are listed.",
    )


class EnforcementPolicy(Model):
    """Tells the node agents how to guard the processes that hold secrets."""

    api_version: Literal["cloudtaser.io/v1alpha1"] = Field(description="cloudtaser.io/v1alpha1")
    kind: Literal["EnforcementPolicy"] = Field(description="EnforcementPolicy")
    metadata: ObjectMeta = Field(description="Standard object metadata.")
    spec: EnforcementPolicySpec = Field(
        default_factory=EnforcementPolicySpec, description="Desired enforcement."
    )
    status: EnforcementPolicyStatus | None = Field(default=None, description="Observed state.")

    @property
    def ref(self) -> str:
        return self.metadata.name
