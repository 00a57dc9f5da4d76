"""Pod Security "restricted" on the real API server and node: the demo namespace enforces it,
an injected pod is admitted and runs there with its secrets (the agent's socket comes through
the agent's CSI volume, read-only; no hostPath, no added capability), a pod the user wrote
with a hostPath is still refused (nothing was loosened), a binding asking for IPC_LOCK is
refused with a message naming its field, and the kubelet unmounts the CSI volume when the pod
goes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from cloudtaser.engine.compiler import AGENT_MOUNT
from cloudtaser.engine.plans import AGENT_CSI_DRIVER, POD_SECURITY_ENFORCE_LABEL
from cloudtaser.errors import CloudtaserError
from cloudtaser.testbed import installing, noding, provisioning, stacking
from tests.harness.nodes import IMAGE, LABEL, NS, Pods, binding_ready
from tests.harness.stack import sha
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.e2e
BINDING = "e2e-restricted"


def _binding(name: str, **spec: Any) -> dict[str, Any]:
    doc: dict[str, Any] = next(
        d
        for d in yaml.safe_load_all((installing.REPO / "examples" / "demo-app.yaml").read_text())
        if d["kind"] == "SecretBinding"
    )
    doc["metadata"]["name"] = name
    doc["spec"]["selector"] = {"matchLabels": {"app": name}}
    doc["spec"].update(spec)
    return doc


@pytest.fixture(scope="module")
def binding(product: None, kubectl: Any) -> Any:
    kubectl("apply", "-f", "-", stdin=yaml.safe_dump(_binding(BINDING)))
    wait_for(binding_ready(kubectl, BINDING), 60, f"the operator compiling {BINDING}")
    yield
    kubectl("delete", "sb", BINDING, "-n", NS, "--ignore-not-found")


def _mounts(stack: stacking.Paths, uid: str) -> list[str]:
    """The pod's CSI volume mounts on the host, as the kubelet's pods directory holds them."""
    root = f"{noding.kubelet_root(stack)}/pods/{uid}/volumes/kubernetes.io~csi/"
    return [
        f.split()[4]
        for f in Path("/proc/self/mountinfo").read_text().splitlines()
        if f.split()[4].startswith(root)
    ]


def test_an_injected_pod_runs_in_a_restricted_namespace(
    binding: None, pods: Pods, kubectl: Any, stack: stacking.Paths, demo_secret: dict[str, str]
) -> None:
    labels = json.loads(kubectl("get", "namespace", NS, "-o", "json"))["metadata"]["labels"]
    assert labels[POD_SECURITY_ENFORCE_LABEL] == "restricted"
    name = pods.create(
        "restricted", IMAGE["demo-app"], ["python3.11", "/app/demo-app.py"], labels={"app": BINDING}
    )
    line = pods.log_line(name, "received")
    assert f"sha256 {sha(demo_secret['password'])[:16]}..." in line
    body = pods.get(name)
    volumes = {v["name"]: v for v in body["spec"]["volumes"]}
    assert volumes["cloudtaser-agent"]["csi"] == {"driver": AGENT_CSI_DRIVER, "readOnly": True}
    for container in body["spec"]["initContainers"] + body["spec"]["containers"]:
        assert "add" not in container["securityContext"].get("capabilities", {}), container
    assert "cloudtaser-wrapper: registered with the node agent (" in pods.logs(name)
    # the volume: the agent's socket, read-only, nothing else writable
    listing = kubectl(
        "exec",
        "-n",
        NS,
        name,
        "-c",
        "app",
        "--",
        "python3.11",
        "-c",
        f"import os; print(sorted(os.listdir('{AGENT_MOUNT}')))\n"
        f"try:\n open('{AGENT_MOUNT}/planted', 'w')\nexcept OSError as e: print(e.strerror)",
    )
    assert "'agent.sock'" in listing and "Read-only file system" in listing, listing
    uid = body["metadata"]["uid"]
    assert len(_mounts(stack, uid)) == 1, _mounts(stack, uid)
    kubectl("delete", "pod", name, "-n", NS, "--wait=true", "--timeout=120s")
    assert _mounts(stack, uid) == []  # NodeUnpublishVolume ran


def _refusal(kubectl: Any, pod: dict[str, Any]) -> str:
    with pytest.raises(CloudtaserError) as refused:
        kubectl("create", "-f", "-", stdin=yaml.safe_dump(pod))
    return " ".join(str(refused.value).split())


def _pod(name: str, app: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": NS,
            "labels": {LABEL: "true", "app": app},
            "annotations": {"cloudtaser.io/inject": "true"},
        },
        "spec": {
            "serviceAccountName": provisioning.DEMO_ACCOUNT,
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {
                    "name": "app",
                    "image": IMAGE["demo-app"],
                    "command": ["sleep", "1"],
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }
            ],
            **spec,
        },
    }


def test_a_pod_with_a_host_path_is_still_refused(binding: None, kubectl: Any) -> None:
    pod = _pod("hostpath", BINDING, volumes=[{"name": "host", "hostPath": {"path": "/run"}}])
    message = _refusal(kubectl, pod)
    assert 'violates PodSecurity "restricted:latest"' in message and "hostPath" in message, message


def test_a_binding_asking_for_ipc_lock_is_refused_with_its_field(
    product: None, kubectl: Any
) -> None:
    name = "e2e-ipclock"
    kubectl("apply", "-f", "-", stdin=yaml.safe_dump(_binding(name, ipcLock=True)))
    try:
        wait_for(binding_ready(kubectl, name), 60, f"the operator compiling {name}")
        message = _refusal(kubectl, _pod("ipclock", name))
        assert (
            "cloudtaser: spec.containers[0]: container 'app' is selected by a SecretBinding with "
            f"ipcLock: true ({NS}/{name})" in message
        ), message
        assert f"enforces Pod Security 'restricted' ({POD_SECURITY_ENFORCE_LABEL})" in message, (
            message
        )
    finally:
        kubectl("delete", "sb", name, "-n", NS, "--ignore-not-found")


def test_a_pod_that_mounts_the_agent_volume_itself_cannot_register(
    product: None, kubectl: Any
) -> None:
    """Any pod may name the driver (threat model row 25): it reaches the socket, read-only, and
    the agent refuses it, because the Plan protects no such pod on this node."""
    script = (
        "import json, socket; s = socket.socket(socket.AF_UNIX); "
        f"s.connect('{AGENT_MOUNT}/agent.sock'); "
        "s.sendall(json.dumps({'op': 'register', 'version': 2, 'exec_environ': 'clean'}).encode() + b'\\n'); "
        "print(s.makefile().readline().strip())"
    )
    pod = _pod(
        "self-mount",
        "e2e-self-mount",
        restartPolicy="Never",
        volumes=[{"name": "agent", "csi": {"driver": AGENT_CSI_DRIVER, "readOnly": True}}],
    )
    pod["metadata"]["annotations"] = {}
    container = pod["spec"]["containers"][0]
    container["command"] = ["python3.11", "-c", script]
    container["volumeMounts"] = [{"name": "agent", "mountPath": AGENT_MOUNT, "readOnly": True}]
    kubectl("create", "-f", "-", stdin=yaml.safe_dump(pod))
    try:

        def answered() -> str | None:
            phase = json.loads(kubectl("get", "pod", "self-mount", "-n", NS, "-o", "json"))[
                "status"
            ].get("phase")
            return (
                str(kubectl("logs", "-n", NS, "self-mount"))
                if phase in ("Succeeded", "Failed")
                else None
            )

        reply = json.loads(wait_for(answered, 120, "the self-mounting pod's answer"))
        assert (
            reply["ok"] is False and "has no cloudtaser protection on this node" in reply["error"]
        ), reply
    finally:
        kubectl("delete", "pod", "self-mount", "-n", NS, "--ignore-not-found", "--wait=true")
