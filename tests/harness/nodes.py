"""The e2e tests on the local stack's real node (tests/e2e/node): their images, the label of
their pods, and helpers that create those pods and read what they did.

A pod of these tests is created in the demo namespace (its service account has the OpenBao
role) with the label ``cloudtaser.io/e2e-node``; ``delete_test_pods`` removes every such pod.
The package's fixtures (``product``: the chart installed for the package; ``pods``) stay in
tests/e2e/node/conftest.py, which bounds their package scope.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cloudtaser.testbed import installing, provisioning, stacking
from cloudtaser.version import __version__
from tests.harness.waiting import wait_for

NS = provisioning.DEMO_NAMESPACE
LABEL = "cloudtaser.io/e2e-node"
REGISTRY = f"{stacking.REGISTRY}/cloudtaser"
IMAGE = {name: f"{REGISTRY}/{name}:{__version__}" for name in ("demo-app", "demo-sdk")}
SYSTEM = installing.NAMESPACE


def delete_test_pods(kubectl: Any) -> None:
    """Delete every pod of these tests (by their label) and wait until they are gone."""
    kubectl("delete", "pods", "-n", NS, "-l", LABEL, "--ignore-not-found", "--wait=false")

    def gone() -> bool:
        left = kubectl("get", "pods", "-n", NS, "-l", LABEL, "-o", "name").split()
        if left:
            print(f"waiting for {len(left)} pod(s) to go: {' '.join(left)}")
        return not left

    wait_for(gone, 240, "this package's pods deleted")


@dataclass
class Pods:
    """Creates this package's pods (deleted with the package) and reads what they did."""

    kubectl: Any

    def create(
        self,
        name: str,
        image: str,
        command: list[str] | None = None,
        *,
        labels: dict[str, str] | None = None,
        inject: bool = True,
        account: str = provisioning.DEMO_ACCOUNT,
        restart: str = "Always",
    ) -> str:
        name = f"{name}-{secrets.token_hex(3)}"
        # Pod Security "restricted" (the demo namespace enforces it): as a user writes it.
        container: dict[str, Any] = {
            "name": "app",
            "image": image,
            "securityContext": {
                "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"]},
            },
        }
        if command is not None:
            container["command"] = command
        self.kubectl(
            "create",
            "-f",
            "-",
            stdin=yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {
                        "name": name,
                        "namespace": NS,
                        "labels": {LABEL: "true", **(labels or {})},
                        "annotations": {"cloudtaser.io/inject": "true"} if inject else {},
                    },
                    "spec": {
                        "serviceAccountName": account,
                        "restartPolicy": restart,
                        "securityContext": {
                            "runAsNonRoot": True,
                            "seccompProfile": {"type": "RuntimeDefault"},
                        },
                        "terminationGracePeriodSeconds": 2,
                        "containers": [container],
                    },
                }
            ),
        )
        return name

    def get(self, name: str) -> dict[str, Any]:
        found: dict[str, Any] = json.loads(self.kubectl("get", "pod", name, "-n", NS, "-o", "json"))
        return found

    def logs(self, name: str, container: str = "app") -> str:
        try:
            return str(self.kubectl("logs", "-n", NS, name, "-c", container))
        except stacking.StackError:
            return ""

    def log_line(self, name: str, text: str, timeout: float = 120) -> str:
        """The first line of the app container's log holding ``text`` (waits for it)."""

        def found() -> str | None:
            return next((line for line in self.logs(name).splitlines() if text in line), None)

        line: str = wait_for(found, timeout, f"{text!r} in the log of pod {name}")
        return line

    def host_pid(self, name: str, container: str = "app") -> int:
        """The container's first process as this host sees it: the kubelet's cgroupfs path
        /kubepods/<qos>/pod<uid>/<container id>, found in /proc/PID/cgroup."""
        body = self.get(name)
        uid = body["metadata"]["uid"]
        cid = next(
            s["containerID"] for s in body["status"]["containerStatuses"] if s["name"] == container
        ).removeprefix("containerd://")
        pids = Path("/sys/fs/cgroup/pids/kubepods")
        procs = [
            *pids.glob(f"*/pod{uid}/{cid}/cgroup.procs"),
            *pids.glob(f"pod{uid}/{cid}/cgroup.procs"),
        ]
        assert procs, f"no cgroup of container {container} of pod {name} under {pids}"
        return int(procs[0].read_text().split()[0])


@contextmanager
def pod_security(kubectl: Any, level: str) -> Iterator[None]:
    """The demo namespace enforcing ``level`` instead of "restricted" for a while: what a
    cluster admin does to run a privileged debug container there."""
    key = "pod-security.kubernetes.io/enforce"
    kubectl("label", "namespace", NS, f"{key}={level}", "--overwrite")
    try:
        yield
    finally:
        kubectl(
            "label", "namespace", NS, f"{key}={provisioning.DEMO_POD_SECURITY[key]}", "--overwrite"
        )


def binding_ready(kubectl: Any, name: str) -> Callable[[], bool]:
    """The operator compiled the binding's current generation (so the webhook knows it)."""

    def ready() -> bool:
        body = json.loads(kubectl("get", "sb", name, "-n", NS, "-o", "json"))
        return bool(
            body.get("status", {}).get("observedGeneration") == body["metadata"]["generation"]
        )

    return ready
