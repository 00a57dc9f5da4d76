"""The stack's node itself: Ready with containerd 2.x and the control plane's Kubernetes, the
chart's pods running from loopback-registry images, a missing image's real ErrImagePull, and
the cgroupfs paths through which the agent maps a process to its pod."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cloudtaser.bpf.cgroups import pod_uid
from cloudtaser.testbed import installing, stacking
from tests.harness.nodes import IMAGE, REGISTRY, SYSTEM, Pods
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.e2e


def test_the_node_is_ready_with_containerd_2_and_the_control_planes_kubernetes(
    product: None, kubectl: Any
) -> None:
    node = json.loads(kubectl("get", "node", stacking.NODE_NAME, "-o", "json"))
    assert {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"] == "True"
    info = node["status"]["nodeInfo"]
    assert info["containerRuntimeVersion"] == "containerd://2.4.2"
    server = json.loads(kubectl("version", "-o", "json"))["serverVersion"]["gitVersion"]
    assert info["kubeletVersion"] == server


def test_the_chart_runs_as_pods_from_the_loopback_registry(product: None, kubectl: Any) -> None:
    pods = json.loads(kubectl("get", "pods", "-n", SYSTEM, "-o", "json"))["items"]
    running = {p["metadata"]["name"]: p for p in pods if p["status"].get("phase") == "Running"}
    components = sorted(
        p["metadata"]["labels"].get("app.kubernetes.io/component", "") for p in running.values()
    )
    assert components == ["agent", "operator", "operator"], list(running)
    for pod in running.values():
        assert all(s["ready"] for s in pod["status"]["containerStatuses"]), pod["metadata"]["name"]
        for c in pod["spec"]["containers"] + pod["spec"].get("initContainers", []):
            assert c["image"].startswith(f"{REGISTRY}/") and "@sha256:" in c["image"], c["image"]
        for s in pod["status"]["containerStatuses"]:
            assert s["imageID"].startswith(f"{REGISTRY}/"), s["imageID"]

    # leader election among the two replicas (a replica of an earlier rollout may hold the lease
    # until it expires)
    def leader() -> str | None:
        lease = json.loads(
            kubectl("get", "lease", "cloudtaser-operator", "-n", SYSTEM, "-o", "json")
        )
        holder = lease["spec"].get("holderIdentity")
        return holder if holder in running else None

    wait_for(leader, 90, "a running operator replica holding the leader lease")
    agent = next(n for n, p in running.items() if "agent" in n)
    log = kubectl("logs", "-n", SYSTEM, agent, "-c", "agent")
    assert " programs from /usr/lib/cloudtaser/bpf/protect.bpf.o " in log, log[-2000:]
    assert f"ready: {installing.AGENT_SOCKET_DIR}/agent.sock" in log, log[-2000:]

    # its CSI node plugin registered with the real kubelet, which lists the driver on the node
    def registered() -> bool:
        return "registered with the kubelet as csi.cloudtaser.io" in kubectl(
            "logs", "-n", SYSTEM, agent, "-c", "csi"
        )

    wait_for(registered, 60, "the agent's CSI plugin registered with the kubelet")
    node = json.loads(kubectl("get", "csinode", stacking.NODE_NAME, "-o", "json"))
    assert [d["name"] for d in node["spec"]["drivers"]] == ["csi.cloudtaser.io"], node


def test_the_operator_logs_no_line_per_liveness_probe(product: None, kubectl: Any) -> None:
    """The kubelet probes the operator's --liveness endpoint (kopf serves it through aiohttp)
    10 s after start and every 20 s after: no access-log line per probe reaches its log."""
    pods = json.loads(
        kubectl(
            "get", "pods", "-n", SYSTEM, "-l", "app.kubernetes.io/component=operator", "-o", "json"
        )
    )["items"]
    assert pods
    for pod in pods:
        status = next(s for s in pod["status"]["containerStatuses"] if s["name"] == "operator")
        started = datetime.fromisoformat(status["state"]["running"]["startedAt"])
        probed = started + timedelta(seconds=12)  # initialDelaySeconds 10, and the probe's time
        time.sleep(max(0.0, (probed - datetime.now(UTC)).total_seconds()))
        log = kubectl("logs", "-n", SYSTEM, pod["metadata"]["name"], "-c", "operator")
        assert "/healthz" not in log, log[-2000:]


def test_a_missing_image_is_the_pods_real_err_image_pull(pods: Pods) -> None:
    name = pods.create("missing", f"{REGISTRY}/absent:0", ["/absent"], inject=False)

    def waiting() -> str | None:
        statuses = pods.get(name)["status"].get("containerStatuses") or [{}]
        reason = statuses[0].get("state", {}).get("waiting", {})
        return (
            reason.get("message")
            if reason.get("reason") in ("ErrImagePull", "ImagePullBackOff")
            else None
        )

    message = wait_for(waiting, 120, "ErrImagePull")
    assert "not found" in message and f"{REGISTRY}/absent:0" in message, message


def test_a_containers_process_is_in_the_kubelets_cgroupfs_path_the_agent_maps(pods: Pods) -> None:
    name = pods.create(
        "cgroups",
        IMAGE["demo-app"],
        ["python3.11", "-c", "import time; time.sleep(600)"],
        inject=False,
    )
    wait_for(lambda: pods.get(name)["status"].get("phase") == "Running", 120, f"pod {name} running")
    body = pods.get(name)
    pid = pods.host_pid(name)
    uid, cid = body["metadata"]["uid"], body["status"]["containerStatuses"][0]["containerID"]
    lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    path = f"/kubepods/besteffort/pod{uid}/{cid.removeprefix('containerd://')}"
    assert f"0::{path}" in lines and any(line.endswith(f":pids:{path}") for line in lines), lines
    assert pod_uid(pid) == uid  # what the agent asks when a wrapper registers
