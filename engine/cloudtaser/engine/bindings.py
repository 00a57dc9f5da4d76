"""What one SecretBinding means, compiled once and then used for every pod it selects.

- ``compile_binding``: its WrapperSource, the volumes its TLS material needs, the deliveries
  (env var, file, SDK name) it declares, and the problems visible without any pod.
- Selection: which pods it selects (``selects``), and the label pair the compiler indexes it
  under (``index_key``).
- Deliveries into one container from several bindings: the first binding by name keeps a
  contested name, the later ones lose it and are told (``container_sources``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from pydantic_core import to_json

from cloudtaser.engine.kube import LabelSelector, Pod
from cloudtaser.engine.plans import (
    INJECT_ANNOTATION,
    ContainerPlan,
    Problem,
    VolumePlan,
    WrapperSource,
)
from cloudtaser.engine.problems import binding_problem
from cloudtaser.engine.resources import SecretBinding, duration_seconds

# Not under /var/run/cloudtaser: in most images /var/run links to /run, which would nest these
# mounts inside the agent's volume mount at /run/cloudtaser (engine.pods.AGENT_MOUNT) and create
# their mount points in the host's agent directory. Beside the service-account token's
# /var/run/secrets/...
SECRET_MOUNT_ROOT = "/var/run/secrets/cloudtaser"
_DELIVERY_WORDS = {"env": "environment variable", "file": "file", "sdk": "SDK name"}


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:10]


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
    """What a binding means independently of any pod.

    The operator holds one of these for every binding of the cluster (10k: issue 17), and
    only a few bindings select a pod at any time, so it is kept lean: tuples, not lists, and
    the wrapper source as its compact JSON (``source_json``), read back (``source()``) when a
    container plan is built, which engine.pods then keeps (``container_plans``)."""

    ref: str
    namespace: str
    name: str
    # What selection and pod plans read of the spec; the parsed SecretBinding itself is not
    # kept.
    selector: LabelSelector
    containers: tuple[str, ...]
    require_secret_mem: bool
    ipc_lock: bool
    source_json: bytes  # WrapperSource, validated, as JSON
    volumes: tuple[VolumePlan, ...]
    deliveries: tuple[Delivery, ...]
    secrets: int
    refresh_seconds: int | None
    problems: tuple[Problem, ...] = ()
    # The ContainerPlans of containers this binding alone selects, by (container, agent
    # required): built by engine.pods on first use. It lives and dies with this object, which a
    # change to the binding replaces (compile_binding), so no plan outlives the spec it was
    # made from. Bounded: container names come from pods, which anyone may create.
    container_plans: dict[tuple[str, bool], ContainerPlan] = field(
        default_factory=dict, compare=False, repr=False
    )

    def source(self) -> WrapperSource:
        """The binding's wrapper source (a new model on each call: the caller may keep it)."""
        return WrapperSource.model_validate_json(self.source_json)


def compile_binding(binding: SecretBinding) -> CompiledBinding:
    """Compile one binding on its own: its wrapper source and the volumes it needs."""
    namespace = binding.metadata.namespace_or_default
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
            volume: dict[str, object] = {"secret": {"secretName": cert.secret_name}}
        else:
            volume = {
                "csi": {
                    "driver": cert.csi_driver,
                    "readOnly": True,
                    "volumeAttributes": dict(sorted(cert.csi_attributes.items())),
                }
            }
        volumes.append(VolumePlan(name=f"cloudtaser-tls-{tag}", mount_path=mount, source=volume))
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
                    binding_problem(
                        (namespace, binding.metadata.name),
                        d.path,
                        f"environment variable {d.value} is not refreshed: a process's "
                        "environment cannot change after it starts (use file or sdk delivery "
                        "for values that rotate)",
                        "warning",
                    )
                )
    if spec.selector.is_empty():
        problems.append(
            binding_problem(
                (namespace, binding.metadata.name),
                "spec.selector",
                f"empty selector: every pod in namespace {namespace} annotated "
                f'{INJECT_ANNOTATION}: "true" receives these secrets',
                "warning",
            )
        )
    # Not validated here: every value comes from the validated SecretBinding. Field names,
    # not aliases (WrapperSource takes both); read back by CompiledBinding.source().
    source = {
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
    return CompiledBinding(
        ref=ref,
        namespace=namespace,
        name=binding.metadata.name,
        selector=spec.selector,
        containers=tuple(spec.containers),
        require_secret_mem=spec.require_secret_mem,
        ipc_lock=spec.ipc_lock,
        source_json=to_json(source),
        volumes=tuple(volumes),
        deliveries=tuple(deliveries),
        secrets=sum(len(s.keys) for s in spec.secrets),
        refresh_seconds=(
            duration_seconds(spec.refresh_interval) if spec.refresh_interval else None
        ),
        problems=tuple(problems),
    )


# --- selection --------------------------------------------------------------------------


def wants_injection(pod: Pod) -> bool:
    """The pod opted in: only such pods are ever selected."""
    return pod.metadata.annotations.get(INJECT_ANNOTATION) == "true"


def selects(compiled: CompiledBinding, pod: Pod) -> bool:
    """The binding selects the pod (a pod of its namespace: the caller's index sees to it)."""
    return wants_injection(pod) and compiled.selector.matches(pod.metadata.labels)


def index_key(compiled: CompiledBinding) -> tuple[str, str] | None:
    """The label pair a pod must carry to be selected (the smallest of matchLabels), or None
    when the selector has no matchLabels: the key a candidate index files the binding under."""
    labels = compiled.selector.match_labels
    return min(labels.items()) if labels else None


# --- deliveries into one container --------------------------------------------------------


def filter_source(source: WrapperSource, dropped: set[tuple[int, int, str]]) -> WrapperSource:
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


def container_sources(
    container: str, chosen: list[CompiledBinding], problems: list[Problem]
) -> tuple[list[WrapperSource], list[str]]:
    """Sources for one container, and the names of the binding volumes they need; a delivery
    that an earlier binding (by name) already claims is dropped from the later one and
    reported on it (appended to ``problems``)."""
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
                binding_problem(
                    (compiled.namespace, compiled.name),
                    d.path,
                    f"conflict: {_DELIVERY_WORDS[d.field]} '{d.value}' of container "
                    f"'{container}' is also delivered by SecretBinding {owner}, which "
                    "wins (first by name); this delivery is skipped",
                    "error",
                )
            )
        source = compiled.source()
        if dropped:
            source = filter_source(source, dropped)
        if source.secrets:
            sources.append(source)
            mounted.extend(v.name for v in compiled.volumes)
    return sources, mounted
