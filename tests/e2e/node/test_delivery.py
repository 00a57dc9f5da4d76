"""The main job on the real node: an injected pod receives its secrets (env and file through
the glibc interposer, the SDK in a static app on no base), the binding counts it delivered,
and attackers in the pod and as root on the node are stopped, reported as Events and counted
on the policy. The apps print digests; no test prints or compares a value in the clear."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from cloudtaser.bpf.reporting import REASON
from cloudtaser.engine.compiler import AGENT_MOUNT, TOKEN_MOUNT
from cloudtaser.engine.patches import INIT_CONTAINER
from cloudtaser.engine.plans import AGENT_CSI_DRIVER, INJECTED_ANNOTATION
from cloudtaser.errors import CloudtaserError
from cloudtaser.testbed import installing
from tests.harness.nodes import IMAGE, NS, REGISTRY, Pods, binding_ready, pod_security
from tests.harness.stack import sha
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.e2e
BINDING = "e2e-node"
CAP_IPC_LOCK = 14


@pytest.fixture(scope="module")
def binding(product: None, kubectl: Any) -> Any:
    """examples/demo-app.yaml's binding under another name, selecting this module's pods."""
    doc = next(
        d
        for d in yaml.safe_load_all((installing.REPO / "examples" / "demo-app.yaml").read_text())
        if d["kind"] == "SecretBinding"
    )
    doc["metadata"]["name"] = BINDING
    doc["spec"]["selector"] = {"matchLabels": {"app": BINDING}}
    kubectl("apply", "-f", "-", stdin=yaml.safe_dump(doc))
    wait_for(binding_ready(kubectl, BINDING), 60, f"the operator compiling {BINDING}")
    yield doc
    kubectl("delete", "sb", BINDING, "-n", NS, "--ignore-not-found")


@pytest.fixture(scope="module")
def app(binding: Any, kubectl: Any) -> tuple[str, int]:
    """The glibc demo app, running with its secrets: (pod name, its PID on this host)."""
    pods = Pods(kubectl)
    name = pods.create(
        "app", IMAGE["demo-app"], ["python3.11", "/app/demo-app.py"], labels={"app": BINDING}
    )
    pods.log_line(name, "received")
    return name, pods.host_pid(name)


def test_the_injected_pod_gets_its_secrets_and_the_binding_counts_it(
    app: tuple[str, int], pods: Pods, kubectl: Any, demo_secret: dict[str, str]
) -> None:
    name, pid = app
    body = pods.get(name)
    assert INJECTED_ANNOTATION in body["metadata"]["annotations"]
    init = body["spec"]["initContainers"][0]
    assert init["name"] == INIT_CONTAINER and init["image"].startswith(
        f"{REGISTRY}/wrapper-bundle@sha256:"
    )
    volumes = {v["name"]: v for v in body["spec"]["volumes"]}
    assert "medium" not in volumes["cloudtaser-bundle"]["emptyDir"]  # disk, not RAM
    assert volumes["cloudtaser-agent"]["csi"] == {"driver": AGENT_CSI_DRIVER, "readOnly": True}
    assert not any("hostPath" in v for v in volumes.values())
    token = volumes["cloudtaser-token"]["projected"]["sources"][0]["serviceAccountToken"]
    assert token["audience"] == "openbao"
    container = body["spec"]["containers"][0]
    assert container["command"][:2] == ["/cloudtaser/wrapper", "--"]
    assert {m["mountPath"] for m in container["volumeMounts"]} >= {
        "/cloudtaser",
        AGENT_MOUNT,
        TOKEN_MOUNT,
    }
    logs = pods.logs(name)
    assert "cloudtaser-wrapper: registered with the node agent (" in logs, logs
    digest = sha(demo_secret["password"])[:16]
    assert (
        f"DEMO_PASSWORD received (sha256 {digest}...); /etc/demo/password holds the same value"
        in logs
    )
    assert demo_secret["password"] not in logs  # ("demo", the username, is in every line)
    assert "installed in /cloudtaser" in pods.logs(name, INIT_CONTAINER)

    # the binding's status counts it (the operator read the pod's status)
    def counted() -> dict[str, Any] | None:
        status: dict[str, Any] = json.loads(kubectl("get", "sb", BINDING, "-n", NS, "-o", "json"))[
            "status"
        ]
        return status if status.get("deliveredPods") == 1 else None

    status = wait_for(counted, 60, "the binding counting the pod")
    assert (status["injectedPods"], status["failingPods"]) == (1, 0)
    assert {c["type"]: c["status"] for c in status["conditions"]}["Delivered"] == "True"
    table = kubectl("get", "sb", BINDING, "-n", NS)
    assert table.split("\n")[1].split()[:4] == [BINDING, "True", "1", "1"], table


def test_what_the_container_really_runs_with(app: tuple[str, int]) -> None:
    """The runtime's defaults, measured: no IPC_LOCK (the injector adds no capability), the
    RuntimeDefault seccomp filter on, RLIMIT_MEMLOCK as containerd gives it, and within it the
    values in secret memory: containerd's default profile allows memfd_secret."""
    _, pid = app
    status = dict(
        line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    assert not int(status["CapBnd"], 16) >> CAP_IPC_LOCK & 1, status["CapBnd"]
    assert int(status["CapEff"], 16) == 0, status["CapEff"]  # drop ALL, non-root
    assert status["Seccomp"] == "2", status["Seccomp"]  # a filter: RuntimeDefault
    assert status["NoNewPrivs"] == "1"
    assert status["Uid"].split()[0] == "65532"  # the image's user
    memlock = next(
        line
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines()
        if line.startswith("Max locked memory")
    )
    print(f"app pid {pid}: {memlock}; VmLck {status['VmLck'].strip()}")
    fds = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]  # readlink: no open
    assert "/secretmem (deleted)" in fds, fds  # memfd_secret, not the sealed-memfd fallback


def test_an_in_pod_attacker_is_refused_by_the_kernel(app: tuple[str, int], kubectl: Any) -> None:
    """kubectl exec runs as the app's user; the wrapper left the app non-dumpable."""
    name, _ = app
    for path in ("/proc/1/environ", "/proc/1/mem"):
        with pytest.raises(CloudtaserError) as refused:
            kubectl("exec", "-n", NS, name, "-c", "app", "--", "cat", path)
        assert f"cat: {path}: Permission denied" in str(refused.value)


def test_root_attackers_in_the_pod_and_on_the_node_are_killed_and_reported(
    app: tuple[str, int], pods: Pods, kubectl: Any, demo_secret: dict[str, str]
) -> None:
    name, pid = app
    before = _violations(kubectl)
    assert before is not None
    # in the pod: a debug container as root with CAP_SYS_PTRACE in the app's PID namespace.
    # Pod Security "restricted" refuses it (test_pod_security.py); an admin lifts that first.
    custom = json.dumps(
        {"securityContext": {"runAsUser": 0, "runAsGroup": 0, "runAsNonRoot": False}}
    )
    with pod_security(kubectl, "privileged"):
        kubectl(
            "debug",
            "-n",
            NS,
            name,
            f"--image={IMAGE['demo-app']}",
            "--target=app",
            "--profile=sysadmin",
            "--custom=/dev/stdin",
            "--",
            "python3.11",
            "-c",
            "open('/proc/1/mem', 'rb').read(1)",
            stdin=custom,
        )
    debugger = pods.get(name)["spec"]["ephemeralContainers"][-1]["name"]

    def ended() -> int | None:
        for s in pods.get(name)["status"].get("ephemeralContainerStatuses", []):
            if s["name"] == debugger and "terminated" in s["state"]:
                return int(s["state"]["terminated"]["exitCode"])
        return None

    assert wait_for(ended, 120, f"debug container {debugger} ending") == 137  # SIGKILL
    # on the node: root reads the app's environ (no value there), then its memory (killed)
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert b"DEMO_PASSWORD=" in environ and demo_secret["password"].encode() not in b"\0".join(
        environ
    )

    attacker = subprocess.run(
        [sys.executable, "-c", f"open('/proc/{pid}/mem', 'rb').read(1)"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert attacker.returncode == -9, attacker.stderr
    events = wait_for(lambda: _events(kubectl, name, at_least=2), 60, "both violations as Events")
    assert any("(uid 0, comm 'python3.11', exe 'python3.11'): killed" in m for m in events), events
    assert all(m.startswith("mem access to pid ") for m in events), events
    assert all(demo_secret["password"] not in m for m in events)
    # the agent's node report reaches the policy: NODES and VIOLATIONS
    after = wait_for(
        lambda: _violations(kubectl, at_least=before[1] + 2),
        90,
        "ctep baseline counting the violations",
    )
    assert after[0] >= 1


def test_a_static_app_on_no_base_gets_its_secret_through_the_sdk(
    binding: Any, pods: Pods, demo_secret: dict[str, str]
) -> None:
    name = pods.create(
        "sdk", IMAGE["demo-sdk"], ["/demo-sdk", "demo-password"], labels={"app": BINDING}
    )
    line = pods.log_line(name, "received")
    value = demo_secret["password"].encode()
    assert line.endswith(f"len={len(value)} sha256={sha(value)[:16]}"), line


def _events(kubectl: Any, pod: str, at_least: int = 0) -> list[str] | None:
    found = json.loads(
        kubectl(
            "get",
            "events",
            "-n",
            NS,
            "--field-selector",
            f"involvedObject.name={pod},reason={REASON}",
            "-o",
            "json",
        )
    )["items"]
    return [e["message"] for e in found] if len(found) >= at_least else None


def _violations(kubectl: Any, at_least: int = 0) -> tuple[int, int] | None:
    status = json.loads(kubectl("get", "ctep", "baseline", "-o", "json")).get("status", {})
    figures = int(status.get("nodesEnforcing", 0)), int(status.get("violations", 0))
    return figures if figures[1] >= at_least else None


def test_an_attack_loop_gives_a_handful_of_events_counting_every_attempt(
    app: tuple[str, int], kubectl: Any, demo_secret: dict[str, str]
) -> None:
    """Violation Events are rate-limited per pod + vector + offender (bpf/cloudtaser/bpf/reporting.py): a loop
    of root reads of the app's memory on the node ends as a few Events whose counts add up to
    every attempt, and the agent's metric counts them all."""
    name, pid = app
    attempts = 30
    codes = [
        subprocess.run(
            ["cat", f"/proc/{pid}/mem"], capture_output=True, timeout=20, check=False
        ).returncode
        for _ in range(attempts)
    ]
    assert codes == [-9] * attempts

    def counted() -> list[dict[str, Any]] | None:
        found = json.loads(
            kubectl(
                "get",
                "events",
                "-n",
                NS,
                "--field-selector",
                f"involvedObject.name={name},reason={REASON}",
                "-o",
                "json",
            )
        )["items"]
        cats = [e for e in found if "comm 'cat', exe 'cat'" in e["message"]]
        return cats if sum(e.get("count", 1) for e in cats) == attempts else None

    events = wait_for(
        counted, 90, f"Events counting {attempts} attempts"
    )  # the agent flushes every 10 s
    print(
        f"{attempts} attempts -> {len(events)} Event(s), counts {[e.get('count', 1) for e in events]}"
    )
    assert 1 <= len(events) <= 5
    assert all(demo_secret["password"] not in e["message"] for e in events)
    agent = json.loads(
        kubectl(
            "get",
            "pods",
            "-n",
            installing.NAMESPACE,
            "-l",
            "app.kubernetes.io/component=agent",
            "-o",
            "json",
        )
    )["items"][0]
    metrics = requests.get(f"http://{agent['status']['podIP']}:9462/metrics", timeout=10).text
    killed = [
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith('cloudtaser_violations_total{action="killed",vector="mem"}')
    ]
    assert killed and killed[0] >= attempts, metrics[-2000:]
