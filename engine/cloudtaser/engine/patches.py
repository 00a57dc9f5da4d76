"""A PodPlan as RFC 6902 JSON-patch operations: what the admission webhook returns.

Each operation comes from a small function; JSON-pointer escaping happens in ``pointer`` only.
The patch is idempotent by construction: a pod that already carries the marker annotation gets
no operations, so mutate(mutate(pod)) == mutate(pod).

Entrypoint rule (Kubernetes semantics): setting ``command`` in a pod spec makes the runtime
ignore both the image ENTRYPOINT and CMD. So when the pod has no ``command``, the wrapper's
command is followed by the image ENTRYPOINT, and when the pod has no ``args`` either, the
image CMD becomes ``args``. The webhook resolves ENTRYPOINT/CMD from the registry and passes
them in; without them such a container is a problem and the pod must be refused.
"""

from __future__ import annotations

import hashlib
from typing import Any

from pydantic import Field
from pydantic_core import to_json

from cloudtaser.engine.kube import Container, Model, Pod
from cloudtaser.engine.plans import (
    AGENT_BACKEND_LABEL,
    CONFIG_ENV,
    INIT_CONTAINER,
    INJECTED_ANNOTATION,
    POD_SECURITY_ENFORCE_LABEL,
    ContainerPlan,
    InjectorSettings,
    PodPlan,
    Problem,
)
from cloudtaser.engine.pods import BUNDLE_VOLUME, is_injected

Operation = dict[str, Any]


class ImageEntrypoint(Model):
    """ENTRYPOINT and CMD of an image, as its config in the registry states them."""

    entrypoint: list[str] = Field(default_factory=list)
    cmd: list[str] = Field(default_factory=list)


class PatchResult(Model):
    """The operations for one pod, or the problems that forbid patching it."""

    operations: list[dict[str, Any]]
    problems: list[Problem]


def pointer(*parts: str | int) -> str:
    """An RFC 6901 JSON pointer; the one place where '~' and '/' are escaped."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


# The pointers every patch uses, escaped once (by ``pointer``) rather than per review.
_CONTAINERS = pointer("spec", "containers")
_ANNOTATIONS = pointer("metadata", "annotations")
_MARKER = pointer("metadata", "annotations", INJECTED_ANNOTATION)
_VOLUMES = pointer("spec", "volumes")
_INIT_CONTAINERS = pointer("spec", "initContainers")
_FIRST_INIT_CONTAINER = pointer("spec", "initContainers", 0)


def _add(path: str, value: object) -> Operation:
    return {"op": "add", "path": path, "value": value}


def _replace(path: str, value: object) -> Operation:
    return {"op": "replace", "path": path, "value": value}


def marker_value(plan: PodPlan) -> str:
    """Marker annotation value: a digest of what was injected (not of any secret): of
    ``plan.model_dump_json()``, with the containers' part taken from their cached dumps (the
    same bytes: namespace and name come first, then containers, in PodPlan's field order)."""
    head = b'{"namespace":%s,"name":%s,' % (to_json(plan.namespace), to_json(plan.name))
    rest = plan.model_dump_json(exclude={"containers"}).encode()
    if not rest.startswith(head):  # not reached while the field order holds; stay correct
        return hashlib.sha256(plan.model_dump_json().encode()).hexdigest()[:16]
    containers = ",".join(c.plan_json for c in plan.containers).encode()
    text = b'%s"containers":[%s],%s' % (head, containers, rest[len(head) :])
    return hashlib.sha256(text).hexdigest()[:16]


def _append_all(base: str, existing: list[Any] | None, items: list[Any]) -> list[Operation]:
    if not items:
        return []
    if existing is None:
        return [_add(base, items)]
    return [_add(base + "/-", item) for item in items]


# The wrapper image's user (scripts/images/wrapper-bundle.Containerfile). Set on the init
# container itself, so a pod-level runAsUser (even 0) does not make runAsNonRoot refuse it.
WRAPPER_IMAGE_USER = 65532


def _init_container(settings: InjectorSettings, pod_seccomp: bool) -> dict[str, object]:
    """Pod Security "restricted" as it stands: non-root, no privilege escalation, no
    capability, the runtime's default seccomp profile unless the pod chose one, read-only root."""
    security: dict[str, object] = {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": WRAPPER_IMAGE_USER,
        "runAsGroup": WRAPPER_IMAGE_USER,
        "capabilities": {"drop": ["ALL"]},
    }
    if not pod_seccomp:
        security["seccompProfile"] = {"type": "RuntimeDefault"}
    return {
        "name": INIT_CONTAINER,
        "image": settings.wrapper_image,
        # The static wrapper copies itself and the interposers next to it (no shell needed).
        "command": ["/bundle/wrapper", "install", settings.bundle_dir],
        "volumeMounts": [{"name": BUNDLE_VOLUME, "mountPath": settings.bundle_dir}],
        "securityContext": security,
    }


def _command_ops(
    base: str,
    container: Container,
    wrapper: list[str],
    entrypoint: ImageEntrypoint | None,
) -> tuple[list[Operation], str | None]:
    if container.command:
        return [_replace(base + "/command", wrapper + container.command)], None
    if entrypoint is None:
        return [], (
            "has no command and its image entrypoint could not be resolved; set "
            "spec.containers[].command so the wrapper knows what to start"
        )
    op = _add if container.command is None else _replace
    ops = [op(base + "/command", wrapper + entrypoint.entrypoint)]
    if container.args is None:
        if not entrypoint.cmd and not entrypoint.entrypoint:
            return [], "has no command, and its image defines neither ENTRYPOINT nor CMD"
        if entrypoint.cmd:
            ops.append(_add(base + "/args", entrypoint.cmd))
    return ops, None


def _security_ops(
    base: str, container: Container, pod_seccomp: bool, ipc_lock: bool
) -> list[Operation]:
    """No privilege escalation and the runtime's default seccomp profile, where the container
    (or, for seccomp, the pod) has not chosen; IPC_LOCK only when a binding asks (ipcLock).
    What the user set is kept: the wrapper needs no capability, so nothing they drop (ALL
    included) is taken back, and a pod that passes Pod Security passes it injected."""
    sc = container.security_context
    if sc is None:
        value: dict[str, object] = {"allowPrivilegeEscalation": False}
        if not pod_seccomp:
            value["seccompProfile"] = {"type": "RuntimeDefault"}
        if ipc_lock:
            value["capabilities"] = {"add": ["IPC_LOCK"]}
        return [_add(base + "/securityContext", value)]
    ops = []
    caps = sc.get("capabilities")
    added = caps.get("add") if isinstance(caps, dict) else None
    # The API server refuses allowPrivilegeEscalation: false beside privileged or CAP_SYS_ADMIN.
    escalates = sc.get("privileged") is True or (isinstance(added, list) and "SYS_ADMIN" in added)
    if "allowPrivilegeEscalation" not in sc and not escalates:
        ops.append(_add(base + "/securityContext/allowPrivilegeEscalation", False))
    if "seccompProfile" not in sc and not pod_seccomp:
        ops.append(_add(base + "/securityContext/seccompProfile", {"type": "RuntimeDefault"}))
    if not ipc_lock:
        return ops
    if not isinstance(caps, dict):
        ops.append(_add(base + "/securityContext/capabilities", {"add": ["IPC_LOCK"]}))
    elif not isinstance(caps.get("add"), list):
        ops.append(_add(base + "/securityContext/capabilities/add", ["IPC_LOCK"]))
    elif "IPC_LOCK" not in caps["add"]:
        ops.append(_add(base + "/securityContext/capabilities/add/-", "IPC_LOCK"))
    return ops


def _ipc_lock_problem(plan: PodPlan, cplan: ContainerPlan) -> str | None:
    """IPC_LOCK is a capability Pod Security baseline and restricted refuse: say so here,
    naming the binding field, rather than let admission blame a capability the user never
    wrote."""
    if not cplan.ipc_lock or plan.pod_security not in ("baseline", "restricted"):
        return None
    return (
        f"is selected by a SecretBinding with ipcLock: true ({', '.join(cplan.bindings)}), "
        f"which adds the IPC_LOCK capability, but namespace {plan.namespace} enforces Pod "
        f"Security {plan.pod_security!r} ({POD_SECURITY_ENFORCE_LABEL}), which refuses it; "
        "remove ipcLock (secrets then count against the container's RLIMIT_MEMLOCK)"
    )


def _required_node_labels(plan: PodPlan, settings: InjectorSettings) -> dict[str, tuple[str, str]]:
    """The node labels the pod's policy requires, each with the policy field that asks."""
    labels: dict[str, tuple[str, str]] = {}
    if plan.policy.require_confidential_node:
        for key, value in settings.confidential_node_selector.items():
            labels[key] = (value, "requireConfidentialNode")
    if plan.policy.require_backend is not None:
        labels[AGENT_BACKEND_LABEL] = (plan.policy.require_backend, "requireBackend")
    return labels


def _node_ops(
    pod: Pod, plan: PodPlan, settings: InjectorSettings
) -> tuple[list[Operation], list[str]]:
    """Keep pods whose policy requires particular nodes on them: the required labels merged
    into the pod's own nodeSelector. A value the pod set differently is never overwritten (that
    would silently change what its author asked for): it is a conflict, and the pod is refused."""
    wanted = _required_node_labels(plan, settings)
    required = {key: value for key, (value, _) in wanted.items()}
    own = pod.spec.node_selector
    conflicts = [
        f"{key} is {own[key]!r}, but the pod's EnforcementPolicies "
        f"({', '.join(plan.policy.policies)}) require {value!r} there ({field}); remove that entry"
        for key, (value, field) in wanted.items()
        if own is not None and own.get(key, value) != value
    ]
    ops: list[Operation] = []
    if own is None:
        if required:
            ops.append(_add(pointer("spec", "nodeSelector"), required))
    else:
        ops.extend(
            _add(pointer("spec", "nodeSelector", key), value)
            for key, value in required.items()
            if key not in own
        )
    if (
        plan.policy.require_confidential_node
        and settings.confidential_runtime_class
        and pod.spec.runtime_class_name is None
    ):
        ops.append(_add(pointer("spec", "runtimeClassName"), settings.confidential_runtime_class))
    return ops, conflicts


def pod_patch(
    pod: Pod,
    plan: PodPlan,
    settings: InjectorSettings,
    entrypoints: dict[str, ImageEntrypoint] | None = None,
) -> PatchResult:
    """The JSON patch that injects ``plan`` into ``pod`` (``entrypoints`` by container name)."""
    if is_injected(pod):
        return PatchResult(operations=[], problems=[])
    entrypoints = entrypoints or {}
    problems: list[Problem] = []
    ops: list[Operation] = []
    pod_name = pod.metadata.display_name
    namespace = pod.metadata.namespace_or_default
    wrapper = [f"{settings.bundle_dir}/wrapper", "--"]
    pod_seccomp = "seccompProfile" in (pod.spec.security_context or {})
    volumes = {v.name: v for v in plan.volumes}
    planned = {c.name: c for c in plan.containers}
    for index, container in enumerate(pod.spec.containers):
        cplan = planned.get(container.name)
        if cplan is None:
            continue
        base = f"{_CONTAINERS}/{index}"
        command_ops, error = _command_ops(base, container, wrapper, entrypoints.get(container.name))
        env_names = {e.get("name") for e in container.env or []}
        if error is None and CONFIG_ENV in env_names:
            error = f"already sets {CONFIG_ENV}; remove it, the injector owns that variable"
        if error is None:
            error = _ipc_lock_problem(plan, cplan)
        if error is not None:
            problems.append(
                Problem(
                    kind="Pod",
                    namespace=namespace,
                    name=pod_name,
                    path=f"spec.containers[{index}]",
                    message=f"container '{container.name}' {error}",
                )
            )
            continue
        ops.extend(command_ops)
        env = [{"name": CONFIG_ENV, "value": cplan.config_json}]
        ops.extend(_append_all(base + "/env", container.env, env))
        mounts = [
            {
                "name": name,
                "mountPath": volumes[name].mount_path,
                "readOnly": volumes[name].read_only,
            }
            for name in cplan.volumes
        ]
        ops.extend(_append_all(base + "/volumeMounts", container.volume_mounts, mounts))
        ops.extend(_security_ops(base, container, pod_seccomp, cplan.ipc_lock))
    node_ops, conflicts = _node_ops(pod, plan, settings)
    problems.extend(
        Problem(
            kind="Pod",
            namespace=namespace,
            name=pod_name,
            path="spec.nodeSelector",
            message=message,
        )
        for message in conflicts
    )
    if problems:
        return PatchResult(operations=[], problems=problems)
    pod_volumes = [{"name": v.name, **v.source} for v in plan.volumes]
    head: list[Operation] = []
    if pod.metadata.annotations:
        head.append(_add(_MARKER, marker_value(plan)))
    else:
        head.append(_add(_ANNOTATIONS, {INJECTED_ANNOTATION: marker_value(plan)}))
    head.extend(_append_all(_VOLUMES, pod.spec.volumes, pod_volumes))
    head.extend(node_ops)
    if pod.spec.init_containers is None:
        head.append(_add(_INIT_CONTAINERS, [_init_container(settings, pod_seccomp)]))
    else:
        head.append(_add(_FIRST_INIT_CONTAINER, _init_container(settings, pod_seccomp)))
    # Built from checked parts: validating would only copy every operation again.
    return PatchResult.model_construct(operations=head + ops, problems=[])
