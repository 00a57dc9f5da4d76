"""The local real stack for the e2e, fault and attack tests: brought up once per run, or
reused when running. A pytest plugin (tests/conftest.py loads it); the benchmarks use
``compiled_config``.

When this session started the stack it also stops it, and then checks that no process of
the stack's binaries is left. Set CLOUDTASER_KEEP_STACK=1 to leave it running.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloudtaser.engine.compiler import ClusterState, IncrementalCompiler
from cloudtaser.engine.kube import Pod
from cloudtaser.engine.plans import WrapperConfig
from cloudtaser.engine.resources import EnforcementPolicy
from cloudtaser.testbed import provisioning, stacking


def _stack_processes(paths: stacking.Paths) -> list[str]:
    """Processes running any cached build of a stack binary (the current one, an older one
    bin/current moved on from, or one deleted since)."""
    builds = paths.bin.resolve().parent  # bin/current -> bin/<component>-<version>-<hash>
    names = set(stacking.BINARIES)
    return [
        f"{pid} {exe}"
        for pid, exe in stacking.executables()
        if exe.name in names and exe.parent.parent == builds
    ]


def _cli(*args: str) -> None:
    """Run the real `cloudtaser stack ...` command, as a user would; its processes then
    belong to no test process (they outlive the CLI like they do for a user)."""
    exe = Path(sys.executable).parent / "cloudtaser"
    proc = subprocess.run(
        [str(exe), "stack", *args], capture_output=True, text=True, timeout=300, check=False
    )
    print(proc.stderr)
    assert proc.returncode == 0, f"cloudtaser stack {' '.join(args)} failed:\n{proc.stderr}"


# What `stack up` provisions (the examples' namespaces included): everything else a test made.
KEPT_NAMESPACES = {
    "default",
    "kube-system",
    "kube-public",
    "kube-node-lease",
    provisioning.DEMO_NAMESPACE,
    provisioning.SYSTEM_NAMESPACE,
    "payments",
}


def remove_test_objects(paths: stacking.Paths) -> list[str]:
    """Delete the namespaces and Nodes the tests made (an interrupted run leaves them; a
    finished one must not) and wait until they are gone; what was removed. Pods in them are
    force-deleted: one bound to a hand-made Node has no kubelet to confirm its end."""

    def kubectl(*args: str) -> str:
        return provisioning.kubectl(paths, *args)

    names = kubectl("get", "namespaces", "-o", "jsonpath={.items[*].metadata.name}").split()
    extra = [n for n in names if n not in KEPT_NAMESPACES]
    nodes = [
        n
        for n in kubectl("get", "nodes", "-o", "jsonpath={.items[*].metadata.name}").split()
        if n != stacking.NODE_NAME
    ]
    for ns in extra:
        kubectl(
            "delete", "pods", "--all", "-n", ns, "--force", "--grace-period=0", "--ignore-not-found"
        )
        kubectl("delete", "namespace", ns, "--ignore-not-found", "--wait=false")
    for node in nodes:
        kubectl("delete", "node", node, "--ignore-not-found")
    if extra:
        kubectl("wait", "--for=delete", "--timeout=180s", *(f"namespace/{ns}" for ns in extra))
    return extra + [f"node/{n}" for n in nodes]


@pytest.fixture(scope="session")
def stack() -> Iterator[stacking.Paths]:
    paths = stacking.Paths(state=stacking.default_state_dir(), bin=stacking.default_bin_dir())
    stacking.check_binaries(paths)  # a missing build fails loudly: never a silent skip
    started = any(row["health"] != "healthy" for row in stacking.status(paths))
    _cli("up")
    left = remove_test_objects(paths)
    if left:
        print(f"removed what an earlier run left: {', '.join(left)}")
    yield paths
    left = remove_test_objects(paths)
    if left:
        print(f"removed what the tests left: {', '.join(left)}")
    if started and os.environ.get("CLOUDTASER_KEEP_STACK") != "1":
        _cli("down")
        left = _stack_processes(paths)
        assert left == [], f"stack down left processes behind: {left}"


@pytest.fixture(scope="session")
def kubectl(stack: stacking.Paths):  # type: ignore[no-untyped-def]
    def run(*args: str, stdin: str | None = None) -> str:
        return provisioning.kubectl(stack, *args, stdin=stdin)

    return run


def sha(value: str | bytes) -> str:
    return hashlib.sha256(value.encode() if isinstance(value, str) else value).hexdigest()


def compiled_config(stack: stacking.Paths, token: str | Path, mode: str = "audit") -> WrapperConfig:
    """The demo container's WrapperConfig exactly as the engine compiles it for an admitted
    pod, with the token path pointing where the test put the TokenRequest token. Audit mode by
    default: no node agent runs here, and enforce mode refuses to start without one."""
    policy = EnforcementPolicy.model_validate(
        {
            "apiVersion": "cloudtaser.io/v1alpha1",
            "kind": "EnforcementPolicy",
            "metadata": {"name": mode},
            "spec": {"mode": mode},
        }
    )
    pod = Pod.model_validate(
        {
            "metadata": {
                "name": "demo-1",
                "namespace": provisioning.DEMO_NAMESPACE,
                "labels": {"app": "demo"},
                "annotations": {"cloudtaser.io/inject": "true"},
            },
            "spec": {
                "serviceAccountName": "demo",
                "containers": [{"name": "app", "image": "demo", "command": ["/app"]}],
            },
        }
    )
    state = ClusterState(bindings=[provisioning.demo_binding(stack)], policies=[policy])
    plan = IncrementalCompiler(state).plan_pod(pod)
    assert plan is not None
    return plan.containers[0].config.model_copy(update={"token_path": str(token)})


@pytest.fixture(scope="module")
def token(stack: stacking.Paths, kubectl: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TokenRequest token of the demo service account for the OpenBao audience."""
    path = tmp_path_factory.mktemp("token") / "token"
    path.write_text(demo_token(kubectl))
    return path


def demo_token(kubectl: Any) -> str:
    """A fresh TokenRequest token of the demo service account, audience openbao."""
    return str(
        kubectl(
            "create",
            "token",
            provisioning.DEMO_ACCOUNT,
            "-n",
            provisioning.DEMO_NAMESPACE,
            "--audience",
            "openbao",
        )
    )


@pytest.fixture(scope="module")
def demo_secret(stack: stacking.Paths) -> dict[str, str]:
    """The demo secret as OpenBao holds it (read with the root token), for comparisons."""
    root = provisioning.bao_client(stack, provisioning.bao_root_token(stack.state))
    data: dict[str, str] = root.secrets.kv.v2.read_secret_version(
        provisioning.DEMO_SECRET_PATH, mount_point="secret", raise_on_deleted_version=True
    )["data"]["data"]
    return data
