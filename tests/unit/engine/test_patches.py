"""Pod patches: valid RFC 6902 against the pod, entrypoint rules, idempotence."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import jsonpatch
import pytest

from cloudtaser.engine.compiler import ClusterState, IncrementalCompiler
from cloudtaser.engine.kube import Pod
from cloudtaser.engine.patches import (
    ImageEntrypoint,
    PatchResult,
    marker_value,
    pod_patch,
    pointer,
)
from cloudtaser.engine.plans import (
    AGENT_BACKEND_LABEL,
    CONFIG_ENV,
    INJECTED_ANNOTATION,
    InjectorSettings,
    WrapperConfig,
)
from cloudtaser.engine.resources import EnforcementPolicy, SecretBinding
from tests.harness.documents import binding_doc, pod_doc, policy_doc

SETTINGS = InjectorSettings()


def patch(
    pod: dict[str, Any],
    entrypoints: dict[str, ImageEntrypoint] | None = None,
    binding: dict[str, Any] | None = None,
) -> PatchResult:
    compiler = IncrementalCompiler(
        ClusterState(bindings=[SecretBinding.model_validate(binding or binding_doc("app"))])
    )
    model = Pod.model_validate(pod)
    plan = compiler.plan_pod(model)
    assert plan is not None
    return pod_patch(model, plan, SETTINGS, entrypoints)


def apply(pod: dict[str, Any], result: PatchResult) -> dict[str, Any]:
    assert result.problems == []
    patched: dict[str, Any] = jsonpatch.apply_patch(pod, result.operations)
    return patched


def test_pointer_escapes_tilde_and_slash_once() -> None:
    assert pointer("metadata", "annotations", "cloudtaser.io/inject") == (
        "/metadata/annotations/cloudtaser.io~1inject"
    )
    assert pointer("a~b", 0) == "/a~0b/0"


def test_patch_wraps_command_and_adds_everything_the_wrapper_needs() -> None:
    pod = pod_doc(
        labels={"app": "app"},
        containers=[
            {
                "name": "app",
                "image": "app:1",
                "command": ["/app", "-v"],
                "args": ["x"],
                "env": [{"name": "KEEP", "value": "1"}],
                "securityContext": {"capabilities": {"drop": ["ALL"]}},
            },
            {"name": "side", "image": "side:1"},
        ],
        injected=False,
    )
    patched = apply(pod, patch(pod, binding=binding_doc("app", containers=["app"])))
    app, side = patched["spec"]["containers"]
    assert app["command"] == ["/cloudtaser/wrapper", "--", "/app", "-v"]
    assert app["args"] == ["x"]
    assert app["env"][0] == {"name": "KEEP", "value": "1"}
    config = WrapperConfig.model_validate_json(app["env"][1]["value"])
    assert app["env"][1]["name"] == CONFIG_ENV and config.container == "app"
    assert app["securityContext"]["capabilities"] == {"drop": ["ALL"]}  # kept; nothing added
    assert app["securityContext"]["allowPrivilegeEscalation"] is False
    assert {m["name"] for m in app["volumeMounts"]} == {
        "cloudtaser-agent",
        "cloudtaser-bundle",
        "cloudtaser-token",
    }
    token = next(v for v in patched["spec"]["volumes"] if v["name"] == "cloudtaser-token")
    assert token["projected"]["sources"][0]["serviceAccountToken"]["audience"] == "openbao"
    assert config.token_path == "/var/run/secrets/cloudtaser/token/token"
    assert side == {"name": "side", "image": "side:1"}  # not selected: untouched
    assert patched["spec"]["initContainers"][0]["name"] == "cloudtaser-init"
    assert patched["metadata"]["annotations"][INJECTED_ANNOTATION]


# What Pod Security "restricted" checks (the API server's own rules, restricted:latest),
# applied to the patched pod: the patch adds nothing that level refuses.
RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    spec = pod["spec"]
    pod_sc = spec.get("securityContext", {})
    found = [
        f"volume {v['name']}"
        for v in spec.get("volumes", [])
        if not set(v) - {"name"} <= RESTRICTED_VOLUMES
    ]
    for c in spec.get("initContainers", []) + spec["containers"]:
        sc = c.get("securityContext", {})
        if sc.get("allowPrivilegeEscalation") is not False:
            found.append(f"{c['name']}: allowPrivilegeEscalation")
        if "ALL" not in sc.get("capabilities", {}).get("drop", []):
            found.append(f"{c['name']}: capabilities.drop")
        if set(sc.get("capabilities", {}).get("add", [])) - {"NET_BIND_SERVICE"}:
            found.append(f"{c['name']}: capabilities.add")
        if not sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")):
            found.append(f"{c['name']}: runAsNonRoot")
        if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
            found.append(f"{c['name']}: runAsUser 0")
        seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            found.append(f"{c['name']}: seccompProfile")
    return found


@pytest.mark.parametrize("seccomp_on", ["pod", "container"])
def test_a_restricted_pod_stays_restricted_when_injected(seccomp_on: str) -> None:
    seccomp = {"seccompProfile": {"type": "RuntimeDefault"}}
    pod = pod_doc(
        labels={"app": "app"},
        containers=[
            {
                "name": "app",
                "image": "app:1",
                "command": ["/app"],
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "capabilities": {"drop": ["ALL"]},
                    **(seccomp if seccomp_on == "container" else {}),
                },
            }
        ],
    )
    pod["spec"]["securityContext"] = {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        **(seccomp if seccomp_on == "pod" else {}),
    }
    assert restricted_violations(pod) == []
    patched = apply(pod, patch(pod))
    assert restricted_violations(patched) == []
    init = patched["spec"]["initContainers"][0]["securityContext"]
    assert init["runAsUser"] == 65532  # not the pod's user: the wrapper image's
    assert ("seccompProfile" in init) == (seccomp_on == "container")  # the pod's, when it set one


def test_the_patch_loosens_nothing_the_user_set() -> None:
    strict = {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "Localhost", "localhostProfile": "app.json"},
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
    }
    pod = pod_doc(
        labels={"app": "app"},
        containers=[
            {"name": "app", "image": "app:1", "command": ["/app"], "securityContext": dict(strict)}
        ],
    )
    patched = apply(pod, patch(pod))
    assert patched["spec"]["containers"][0]["securityContext"] == strict


def test_ipc_lock_only_when_a_binding_asks() -> None:
    pod = pod_doc(labels={"app": "app"})
    asked = binding_doc("app")
    asked["spec"]["ipcLock"] = True
    patched = apply(pod, patch(pod, binding=asked))
    assert patched["spec"]["containers"][0]["securityContext"]["capabilities"] == {
        "add": ["IPC_LOCK"]
    }
    plain = apply(pod, patch(pod))
    assert "capabilities" not in plain["spec"]["containers"][0]["securityContext"]


def test_mutate_twice_equals_mutate_once() -> None:
    pod = pod_doc(labels={"app": "app"}, injected=False)
    once = apply(pod, patch(pod))
    again = patch(once)
    assert again.operations == [] and again.problems == []
    assert apply(once, again) == once


def test_patch_appends_to_existing_lists() -> None:
    pod = pod_doc(labels={"app": "app"})
    pod["spec"]["volumes"] = [{"name": "data", "emptyDir": {}}]
    pod["spec"]["initContainers"] = [{"name": "migrate", "image": "m"}]
    pod["spec"]["containers"][0]["volumeMounts"] = [{"name": "data", "mountPath": "/data"}]
    patched = apply(pod, patch(pod))
    assert [v["name"] for v in patched["spec"]["volumes"]][0] == "data"
    assert [c["name"] for c in patched["spec"]["initContainers"]] == ["cloudtaser-init", "migrate"]
    assert patched["spec"]["containers"][0]["volumeMounts"][0]["name"] == "data"


@pytest.mark.parametrize(
    ("container", "image", "command", "args"),
    [
        ({}, ImageEntrypoint(entrypoint=["/ep"], cmd=["c1"]), ["/ep"], ["c1"]),
        ({"args": ["mine"]}, ImageEntrypoint(entrypoint=["/ep"], cmd=["c1"]), ["/ep"], ["mine"]),
        ({}, ImageEntrypoint(cmd=["/bin/sh", "-c", "run"]), [], ["/bin/sh", "-c", "run"]),
        ({}, ImageEntrypoint(entrypoint=["/ep"]), ["/ep"], None),
    ],
)
def test_missing_command_uses_the_image_entrypoint_and_cmd(
    container: dict[str, Any], image: ImageEntrypoint, command: list[str], args: list[str] | None
) -> None:
    pod = pod_doc(labels={"app": "app"}, containers=[{"name": "app", "image": "i", **container}])
    patched = apply(pod, patch(pod, {"app": image}))["spec"]["containers"][0]
    assert patched["command"] == ["/cloudtaser/wrapper", "--", *command]
    assert patched.get("args") == args


def test_unresolvable_entrypoint_refuses_with_a_message_naming_the_container() -> None:
    pod = pod_doc(labels={"app": "app"}, containers=[{"name": "app", "image": "i"}])
    result = patch(pod)
    assert result.operations == []
    [problem] = result.problems
    assert problem.path == "spec.containers[0]"
    assert "container 'app' has no command" in problem.message and "set" in problem.message


def test_config_env_never_holds_more_than_names_and_paths() -> None:
    pod = pod_doc(labels={"app": "app"})
    ops = patch(pod).operations
    env = next(op for op in ops if op["path"].endswith("/env/-") or op["path"].endswith("/env"))
    value = env["value"][0]["value"] if isinstance(env["value"], list) else env["value"]["value"]
    config = json.loads(value)
    assert set(config) == {
        "version",
        "namespace",
        "container",
        "tokenPath",
        "sources",
        "requireSecretMem",
        "agent",
    }
    assert set(config["sources"][0]) == {
        "binding",
        "address",
        "authMount",
        "role",
        "clientCertFile",
        "clientKeyFile",
        "secrets",
    }


def test_a_forged_marker_does_not_skip_injection() -> None:
    """Whoever creates a pod can write the marker annotation; without the webhook's init
    container the pod is injected all the same (and not counted as injected)."""
    pod = pod_doc(labels={"app": "app"})
    pod["metadata"]["annotations"][INJECTED_ANNOTATION] = "forged"
    patched = apply(pod, patch(pod))
    assert patched["spec"]["containers"][0]["command"][:2] == ["/cloudtaser/wrapper", "--"]
    assert patched["metadata"]["annotations"][INJECTED_ANNOTATION] != "forged"
    plan = IncrementalCompiler(
        ClusterState(
            bindings=[SecretBinding.model_validate(binding_doc("app"))],
            pods=[Pod.model_validate(pod)],
        )
    ).plan()
    assert plan.bindings[0].injected_pods == 0 and plan.bpf == []


def backend_patch(pod: dict[str, Any], confidential: bool = False) -> PatchResult:
    """The patch under a policy requiring the LSM backend (and, if asked, a confidential node)."""
    spec: dict[str, Any] = {"requireBackend": "lsm"}
    if confidential:
        spec["requireConfidentialNode"] = True
    compiler = IncrementalCompiler(
        ClusterState(
            bindings=[SecretBinding.model_validate(binding_doc("app"))],
            policies=[EnforcementPolicy.model_validate(policy_doc("lsm-only", **spec))],
        )
    )
    model = Pod.model_validate(pod)
    plan = compiler.plan_pod(model)
    assert plan is not None and plan.policy.require_backend == "lsm"
    return pod_patch(model, plan, SETTINGS)


def test_a_required_backend_adds_the_agents_node_label() -> None:
    pod = pod_doc(labels={"app": "app"})
    assert "nodeSelector" not in pod["spec"]
    patched = apply(pod, backend_patch(pod))
    assert patched["spec"]["nodeSelector"] == {AGENT_BACKEND_LABEL: "lsm"}
    assert apply(pod, patch(pod))["spec"].get("nodeSelector") is None  # no policy: any node


def test_a_required_backend_merges_with_the_pods_own_node_selector() -> None:
    pod = pod_doc(labels={"app": "app"})
    pod["spec"]["nodeSelector"] = {"disk": "ssd"}
    assert apply(pod, backend_patch(pod))["spec"]["nodeSelector"] == {
        "disk": "ssd",
        AGENT_BACKEND_LABEL: "lsm",
    }
    pod["spec"]["nodeSelector"] = {AGENT_BACKEND_LABEL: "lsm"}  # already asks: nothing to add
    result = backend_patch(pod)
    assert not any(op["path"].startswith("/spec/nodeSelector") for op in result.operations)
    assert apply(pod, result)["spec"]["nodeSelector"] == {AGENT_BACKEND_LABEL: "lsm"}


def test_backend_and_confidential_node_share_one_new_node_selector() -> None:
    """Two "add /spec/nodeSelector" operations would replace each other: one carries both."""
    pod = pod_doc(labels={"app": "app"})
    result = backend_patch(pod, confidential=True)
    assert [op["path"] for op in result.operations].count("/spec/nodeSelector") == 1
    assert apply(pod, result)["spec"]["nodeSelector"] == {
        AGENT_BACKEND_LABEL: "lsm",
        **SETTINGS.confidential_node_selector,
    }


@pytest.mark.parametrize("key", [AGENT_BACKEND_LABEL, "cloudtaser.io/confidential-node"])
def test_a_conflicting_node_selector_is_refused_never_overwritten(key: str) -> None:
    pod = pod_doc(labels={"app": "app"})
    pod["spec"]["nodeSelector"] = {key: "other", "disk": "ssd"}
    result = backend_patch(pod, confidential=True)
    assert result.operations == []
    [problem] = result.problems
    field = "requireBackend" if key == AGENT_BACKEND_LABEL else "requireConfidentialNode"
    wanted = "lsm" if key == AGENT_BACKEND_LABEL else "true"
    assert (problem.name, problem.path) == ("app-1", "spec.nodeSelector")
    assert problem.message == (
        f"{key} is 'other', but the pod's EnforcementPolicies (lsm-only) "
        f"require '{wanted}' there ({field}); remove that entry"
    )


@pytest.mark.parametrize(
    "security", [{"privileged": True}, {"capabilities": {"add": ["SYS_ADMIN"]}}]
)
def test_no_privilege_escalation_flag_where_the_api_server_refuses_it(
    security: dict[str, Any],
) -> None:
    pod = pod_doc(
        labels={"app": "app"},
        containers=[
            {
                "name": "app",
                "image": "app:1",
                "command": ["/app"],
                "securityContext": dict(security),
            }
        ],
    )
    patched = apply(pod, patch(pod))["spec"]["containers"][0]["securityContext"]
    assert "allowPrivilegeEscalation" not in patched


def config_of(result: PatchResult) -> dict[str, Any]:
    env = [op for op in result.operations if op["path"].endswith("/env")][0]["value"]
    found: dict[str, Any] = json.loads(env[0]["value"])
    return found


def marker_of(result: PatchResult) -> object:
    return [op for op in result.operations if op["path"].startswith("/metadata/annotations")]


def test_an_edited_binding_changes_the_next_patch() -> None:
    """The plans a binding keeps for its containers (engine.pods) go with the binding: after
    an edit, the next admission carries the new config, never the one built before it."""
    compiler = IncrementalCompiler(
        ClusterState(bindings=[SecretBinding.model_validate(binding_doc("app"))])
    )
    pod = Pod.model_validate(pod_doc(labels={"app": "app"}))

    def now() -> PatchResult:
        plan = compiler.plan_pod(pod)
        assert plan is not None
        return pod_patch(pod, plan, SETTINGS)

    first = now()
    assert config_of(first)["sources"][0]["role"] == "app"
    assert now().operations == first.operations  # the kept plan gives the same patch
    edited = binding_doc("app")
    edited["spec"]["vault"]["role"] = "edited"
    compiler.set_binding(SecretBinding.model_validate(edited))
    second = now()
    assert config_of(second)["sources"][0]["role"] == "edited"
    assert marker_of(second) != marker_of(first)
    compiler.set_policy(EnforcementPolicy.model_validate(policy_doc(mode="audit")))
    assert config_of(now())["agent"]["required"] is False
    compiler.remove_binding("team/app")
    assert compiler.plan_pod(pod) is None


@pytest.mark.parametrize("name", ["app-1", 'q"uo\\te', "ünï/cödé~\u2028", ""])
def test_the_marker_is_the_digest_of_the_whole_plan_dump(name: str) -> None:
    """marker_value splices the containers' kept dumps into the plan's: the same bytes as
    dumping the plan whole, whatever the names hold."""
    doc = pod_doc(labels={"app": "app"})
    doc["metadata"]["name"] = name
    if not name:
        doc["metadata"]["generateName"] = "app-"
    doc["spec"]["containers"].append({"name": "sidecar", "image": "busybox", "command": ["sh"]})
    model = Pod.model_validate(doc)
    compiler = IncrementalCompiler(
        ClusterState(bindings=[SecretBinding.model_validate(binding_doc("app"))])
    )
    plan = compiler.plan_pod(model)
    assert plan is not None and len(plan.containers) == 2
    whole = plan.model_dump_json()
    assert marker_value(plan) == hashlib.sha256(whole.encode()).hexdigest()[:16]
    for container in plan.containers:
        assert container.config_json == container.config.model_dump_json(exclude_none=True)


def test_a_binding_keeps_a_bounded_number_of_container_plans() -> None:
    compiler = IncrementalCompiler(
        ClusterState(bindings=[SecretBinding.model_validate(binding_doc("app"))])
    )
    for i in range(200):
        doc = pod_doc(labels={"app": "app"})
        doc["spec"]["containers"][0]["name"] = f"c{i}"
        assert compiler.plan_pod(Pod.model_validate(doc)) is not None
    compiler_bindings = compiler._ledger.bindings  # the cache under test
    assert 0 < len(compiler_bindings["team/app"].container_plans) <= 64
