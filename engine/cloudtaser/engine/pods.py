"""A pod's side of the compile: whether the webhook injected it, how its delivery is going,
and its PodPlan from the bindings and the effective policy that apply to it.

``PodPlanner`` builds PodPlans; it holds the parts every plan shares (the wrapper bundle,
agent and token volumes), made once from the installation settings, and reuses the
ContainerPlan a single binding gives a container (kept on the CompiledBinding, so replacing
the binding drops it). Plan models are never mutated after construction, so sharing them is
safe.
"""

from __future__ import annotations

from cloudtaser.engine.bindings import SECRET_MOUNT_ROOT, CompiledBinding, container_sources
from cloudtaser.engine.kube import Pod
from cloudtaser.engine.plans import (
    AGENT_CSI_DRIVER,
    INIT_CONTAINER,
    INJECTED_ANNOTATION,
    AgentSettings,
    ContainerPlan,
    EffectivePolicy,
    InjectorSettings,
    PodPlan,
    Problem,
    VolumePlan,
    WrapperConfig,
)
from cloudtaser.engine.problems import binding_problem

BUNDLE_VOLUME = "cloudtaser-bundle"
AGENT_VOLUME = "cloudtaser-agent"
TOKEN_VOLUME = "cloudtaser-token"
AGENT_MOUNT = "/run/cloudtaser"
TOKEN_MOUNT = f"{SECRET_MOUNT_ROOT}/token"

# How the wrapper's one-line failure reason starts: it writes the line to stderr and as the
# container's termination message (wrapper/cmd/cloudtaser-wrapper), which the kubelet reports
# in the pod's status. Such a line names paths and OpenBao's answer, never a secret value.
WRAPPER_PREFIX = "cloudtaser-wrapper:"
DELIVERED, FAILING, PENDING = "delivered", "failing", "pending"
FAILURE_MAX = 300
# ContainerPlans a compiled binding keeps (one per container name it selects, twice over:
# audit and enforce); past that it starts over.
CONTAINER_PLANS_KEPT = 64


def pod_key(pod: Pod) -> tuple[str, str]:
    """(namespace, name): how the compiler knows a pod."""
    return (pod.metadata.namespace_or_default, pod.metadata.name)


def is_injected(pod: Pod) -> bool:
    """The webhook's work is on the pod: its marker *and* its init container. The marker alone
    is not trusted — whoever creates a pod can write annotations."""
    return INJECTED_ANNOTATION in pod.metadata.annotations and any(
        c.name == INIT_CONTAINER for c in pod.spec.init_containers or ()
    )


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


class PodPlanner:
    """Builds the PodPlan of a pod from the bindings selecting it and its effective policy."""

    def __init__(self, settings: InjectorSettings) -> None:
        # The wrapper's program (not secret) on the node's disk: a Memory emptyDir would
        # charge every pod the RAM of its own copy (unreclaimable tmpfs pages); on disk the copy
        # is page cache, reclaimable. ~6 MiB: the static wrapper and its interposers.
        self._bundle_volume = VolumePlan(
            name=BUNDLE_VOLUME,
            mount_path=settings.bundle_dir,
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
            source={
                "projected": {
                    "sources": [
                        {
                            "serviceAccountToken": {
                                "audience": settings.token_audience,
                                "expirationSeconds": settings.token_expiration_seconds,
                                "path": "token",
                            }
                        }
                    ]
                }
            },
        )
        self._agent_settings = {
            required: AgentSettings(socket=f"{AGENT_MOUNT}/agent.sock", required=required)
            for required in (False, True)
        }

    def _container_plan(
        self,
        name: str,
        namespace: str,
        chosen: list[CompiledBinding],
        required: bool,
        problems: list[Problem],
    ) -> ContainerPlan:
        """The plan of container ``name`` selected by ``chosen`` (conflicts between them are
        appended to ``problems``; one binding has none)."""
        sources, mounted = container_sources(name, chosen, problems)
        refresh = [c.refresh_seconds for c in chosen if c.refresh_seconds]
        config = WrapperConfig(
            namespace=namespace,
            container=name,
            token_path=f"{TOKEN_MOUNT}/token",
            sources=sources,
            refresh_seconds=min(refresh) if refresh else None,
            require_secret_mem=any(c.require_secret_mem for c in chosen),
            agent=self._agent_settings[required],
        )
        return ContainerPlan(
            name=name,
            bindings=[c.ref for c in chosen],
            config=config,
            volumes=sorted({BUNDLE_VOLUME, AGENT_VOLUME, TOKEN_VOLUME, *mounted}),
            ipc_lock=any(c.ipc_lock for c in chosen),
        )

    def plan(
        self,
        pod: Pod,
        namespace: str,
        bindings: list[CompiledBinding],
        policy: EffectivePolicy,
        pod_security: str | None,
    ) -> PodPlan:
        """The plan of ``pod``, selected by ``bindings`` (in ref order), under ``policy``;
        ``pod_security``: the Pod Security level its namespace enforces, if any."""
        pod_name = pod.metadata.display_name
        problems: list[Problem] = []
        names = [c.name for c in pod.spec.containers]
        for compiled in bindings:
            for name in compiled.containers:
                if name not in names:
                    problems.append(
                        binding_problem(
                            (compiled.namespace, compiled.name),
                            "spec.containers",
                            f"container '{name}' is not in every selected pod "
                            f"(missing from pod {namespace}/{pod_name})",
                            "warning",
                        )
                    )
        volumes: dict[str, VolumePlan] = {}
        containers = []
        for container in pod.spec.containers:
            chosen = [c for c in bindings if not c.containers or container.name in c.containers]
            if not chosen:
                continue
            for c in chosen:
                for volume in c.volumes:
                    volumes[volume.name] = volume
            required = policy.mode == "enforce"
            if len(chosen) == 1 and chosen[0].namespace == namespace:
                # One binding (the usual case): its plan for this container depends on nothing
                # else, so it is built once and kept on the compiled binding.
                cache = chosen[0].container_plans
                cplan = cache.get((container.name, required))
                if cplan is None:
                    cplan = self._container_plan(container.name, namespace, chosen, required, [])
                    if len(cache) >= CONTAINER_PLANS_KEPT:
                        cache.clear()
                    cache[(container.name, required)] = cplan
            else:
                cplan = self._container_plan(container.name, namespace, chosen, required, problems)
            containers.append(cplan)
        volumes[BUNDLE_VOLUME] = self._bundle_volume
        volumes[AGENT_VOLUME] = self._agent_volume
        volumes[TOKEN_VOLUME] = self._token_volume
        return PodPlan(
            namespace=namespace,
            name=pod_name,
            containers=containers,
            volumes=[volumes[k] for k in sorted(volumes)],
            policy=policy,
            problems=sorted(problems, key=Problem.sort_key),
            pod_security=pod_security,
        )
