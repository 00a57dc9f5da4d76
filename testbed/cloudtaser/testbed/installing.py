"""The chart on the local stack: ``helm upgrade --install`` with the images of the stack's
loopback registry, pinned by digest, and the few values this node needs.

The images are the ones ``scripts/build-images --push 127.0.0.1:15000/cloudtaser local``
pushed (tag = this version); each is pinned by the digest the registry reports, so a pod runs
exactly what was built. Values that differ from the chart's defaults, and why:

- ``images.*``: the stack's registry (also for OPA and kubectl: the stack's own static builds
  packed by scripts/build-images, since nothing here can pull from the internet).
- ``injector.agentSocketDir`` / ``agent.pinDir``: directories of their own
  (``/run/cloudtaser-stack``, ``/sys/fs/bpf/cloudtaser-stack``), so a test agent or a
  wrapper run on this host never meets the stack's agent, and ``stack down`` removes them.
- ``operator.nodeSelector``, ``agent.nodeSelector``: the stack's node (``localhost``): a Node
  object made by hand (a test's) has no kubelet, and a pod scheduled there would never run.
- ``agent.bpffsMountPropagation: None``: no systemd here, so the host's /sys/fs/bpf is a
  private mount, which Bidirectional refuses ("is not a shared mount"); bpffs is mounted.
- ``agent.allowBpfLoaders``: the host's Python (the interpreter of the test suite and of every
  test agent; the chart mounts it into the agent, whose inode the kernel compares). While the stack's agent protects a pod it kills any process
  that loads a tracing BPF program; this keeps the kernel tests, the attack matrix and other
  sessions' test agents on this machine alive meanwhile.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
import yaml

from cloudtaser.bpf.iouring import lift_io_uring_restriction
from cloudtaser.bpf.programs import unpin
from cloudtaser.engine.plans import AGENT_CSI_DRIVER
from cloudtaser.engine.webhooks import WEBHOOK_CONFIGURATION
from cloudtaser.testbed.noding import AGENT_PIN_DIR, AGENT_SOCKET_DIR, kubelet_root
from cloudtaser.testbed.provisioning import SYSTEM_NAMESPACE, kubectl
from cloudtaser.testbed.stacking import NODE_NAME, REGISTRY, REPO, Paths, StackError, environment
from cloudtaser.version import __version__

RELEASE = "cloudtaser"
NAMESPACE = SYSTEM_NAMESPACE
PREFIX = f"{REGISTRY}/cloudtaser"
# chart values key -> image name in the registry (scripts/build-images)
IMAGES = {
    "operator": "operator",
    "agent": "bpf-agent",
    "wrapper": "wrapper-bundle",
    "opa": "opa",
    "kubectl": "kubectl",
}
MANIFEST_TYPES = ", ".join(
    (
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    )
)
BUILD_HINT = f"scripts/build-images --push {PREFIX} local"
# Only the stack's node runs pods: a Node object made by hand (a test's) has no kubelet.
ON_THE_NODE = {"kubernetes.io/hostname": NODE_NAME}


def registry_digest(name: str, tag: str = __version__) -> str:
    """The digest the stack's registry holds for cloudtaser/NAME:TAG; StackError saying what
    to build when it holds none."""
    url = f"http://{REGISTRY}/v2/cloudtaser/{name}/manifests/{tag}"
    try:
        response = requests.head(url, headers={"Accept": MANIFEST_TYPES}, timeout=5)
    except requests.RequestException as e:
        raise StackError(
            f"the stack's registry at {REGISTRY} does not answer ({type(e).__name__}); "
            "run cloudtaser stack up"
        ) from e
    digest = response.headers.get("Docker-Content-Digest", "")
    if response.status_code == 404 or not digest:
        raise StackError(
            f"{PREFIX}/{name}:{tag} is not in the stack's registry; build and push it: {BUILD_HINT}"
        )
    if not response.ok:
        raise StackError(f"{url}: HTTP {response.status_code}")
    return digest


def host_interpreter() -> str:
    return os.path.realpath(sys.executable)


def values(p: Paths, digests: dict[str, str]) -> dict[str, Any]:
    return {
        "images": {
            key: {"repository": f"{PREFIX}/{name}", "tag": __version__, "digest": digests[key]}
            for key, name in IMAGES.items()
        },
        "injector": {"agentSocketDir": str(AGENT_SOCKET_DIR)},
        "operator": {"nodeSelector": ON_THE_NODE},
        "agent": {
            "pinDir": str(AGENT_PIN_DIR),
            "bpffsMountPropagation": "None",
            "kubeletDir": str(kubelet_root(p)),
            "allowBpfLoaders": [host_interpreter()],
            "nodeSelector": ON_THE_NODE,
        },
    }


def _errors(stderr: str) -> str:
    """helm's error lines (it also warns about the chart's symlinks on every run)."""
    lines = [line for line in stderr.splitlines() if not line.startswith("walk.go:")]
    return " ".join(line.strip() for line in lines if line.strip() and "symbolic link" not in line)


def _helm(p: Paths, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **environment(p)}
    return subprocess.run(
        [str(p.binary("helm")), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


def install(
    p: Paths, log: Callable[[str], None], images_file: Path | None = None, timeout: str = "5m"
) -> None:
    if images_file is not None:
        built = {
            line.split()[0]: line.split()[1]
            for line in images_file.read_text().splitlines()
            if len(line.split()) == 3
        }
        missing = [name for name in IMAGES.values() if name not in built]
        if missing:
            raise StackError(f"{images_file} names no digest for {', '.join(missing)}")
        digests = {key: built[name] for key, name in IMAGES.items()}
    else:
        digests = {key: registry_digest(name) for key, name in IMAGES.items()}
    file = p.state / "chart" / "values.yaml"
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(yaml.safe_dump(values(p, digests), sort_keys=False))
    _recover_interrupted(p, log)
    log(f"helm: installing {RELEASE} in {NAMESPACE} with {file} (images from {PREFIX}) ...")
    proc = _helm(
        p,
        "upgrade",
        "--install",
        RELEASE,
        str(REPO / "chart"),
        "--namespace",
        NAMESPACE,
        "--create-namespace",
        "--values",
        str(file),
        "--wait",
        "--timeout",
        timeout,
    )
    if proc.returncode != 0:
        raise StackError(
            f"helm upgrade --install {RELEASE}: {_errors(proc.stderr)} (see "
            f"kubectl get pods -n {NAMESPACE}; kubectl describe pod -n {NAMESPACE})"
        )
    # helm --wait lets a DaemonSet be short of maxUnavailable: wait for every agent
    rollout = subprocess.run(
        [
            str(p.binary("kubectl")),
            "rollout",
            "status",
            "daemonset",
            f"{RELEASE}-agent",
            "-n",
            NAMESPACE,
            "--timeout=300s",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, **environment(p)},
        timeout=330,
        check=False,
    )
    if rollout.returncode != 0:
        raise StackError(
            f"the agent DaemonSet is not ready: {rollout.stderr.strip()} (kubectl logs "
            f"-n {NAMESPACE} ds/{RELEASE}-agent)"
        )
    _wait_for_webhook(p, timeout=120)
    log(f"helm: {RELEASE} installed; its pods are ready and the webhook is configured")


def _recover_interrupted(p: Paths, log: Callable[[str], None]) -> None:
    """A helm killed midway leaves the release pending-install/-upgrade/-rollback, and every
    later helm command fails with "another operation is in progress". An install that never
    completed is removed; an interrupted upgrade or rollback is rolled back to the last
    deployed revision. Nothing else is touched."""
    proc = _helm(p, "status", RELEASE, "--namespace", NAMESPACE, "-o", "json")
    if proc.returncode != 0:  # no such release
        return
    status = json.loads(proc.stdout).get("info", {}).get("status", "")
    if not status.startswith("pending-"):
        return
    if status == "pending-install":
        log(f"helm: {RELEASE} was left {status} by an interrupted helm; uninstalling it first")
        fix = _helm(p, "uninstall", RELEASE, "--namespace", NAMESPACE, "--wait")
    else:
        log(f"helm: {RELEASE} was left {status} by an interrupted helm; rolling back first")
        fix = _helm(p, "rollback", RELEASE, "--namespace", NAMESPACE, "--wait")
    if fix.returncode != 0:
        raise StackError(
            f"helm: {RELEASE} is {status} (an interrupted helm) and could not be "
            f"recovered: {_errors(fix.stderr)}"
        )


def _wait_for_webhook(p: Paths, timeout: float) -> None:
    """Until the operator's leader wrote the webhook configuration for this release, with the
    CA of the serving certificate this install made: before that, a pod is admitted without
    the webhook, or (after an upgrade, which generates a new certificate) refused with "x509:
    certificate signed by unknown authority" (helm --wait only waits for readiness)."""
    deadline = time.monotonic() + timeout

    def get(*args: str) -> dict[str, Any] | None:
        proc = subprocess.run(
            [str(p.binary("kubectl")), "get", *args, "-o", "json"],
            capture_output=True,
            text=True,
            env={**os.environ, **environment(p)},
            timeout=30,
            check=False,
        )
        found: dict[str, Any] | None = json.loads(proc.stdout) if proc.returncode == 0 else None
        return found

    while True:
        configuration = get("mutatingwebhookconfiguration", WEBHOOK_CONFIGURATION)
        tls = get("secret", f"{RELEASE}-webhook-tls", "-n", NAMESPACE)
        if configuration is not None and tls is not None:
            webhooks = configuration.get("webhooks") or [{}]
            client = webhooks[0].get("clientConfig", {})
            if (client.get("service") or {}).get("namespace") == NAMESPACE and client.get(
                "caBundle"
            ) == tls.get("data", {}).get("ca.crt"):
                return
        if time.monotonic() > deadline:
            raise StackError(
                f"the operator wrote no webhook configuration {WEBHOOK_CONFIGURATION} with "
                f"the CA of secret {RELEASE}-webhook-tls "
                f"within {timeout:.0f}s (kubectl logs -n {NAMESPACE} "
                f"deploy/{RELEASE}-operator -c operator)"
            )
        time.sleep(1)


def _delete_injected_pods(p: Paths, log: Callable[[str], None], timeout: float = 100) -> None:
    """The injected pods on the stack's node, deleted while the agent's CSI plugin still runs:
    the kubelet tears a csi.cloudtaser.io volume down through it, so a pod deleted after the
    uninstall would stay Terminating (and, with the agent gone, nothing protects it anyway)."""
    listed = kubectl(p, "get", "pods", "-A", "-o", "json")
    injected = [
        (pod["metadata"]["namespace"], pod["metadata"]["name"])
        for pod in json.loads(listed)["items"]
        if any(
            v.get("csi", {}).get("driver") == AGENT_CSI_DRIVER
            for v in pod["spec"].get("volumes", [])
        )
    ]
    if not injected:
        return
    log(
        f"deleting {len(injected)} injected pod(s) before the agent goes: "
        f"{' '.join(f'{ns}/{name}' for ns, name in injected)}"
    )
    for ns, name in injected:
        kubectl(p, "delete", "pod", name, "-n", ns, "--ignore-not-found", "--wait=false")
    for ns, name in injected:
        kubectl(p, "wait", "--for=delete", f"pod/{name}", "-n", ns, f"--timeout={timeout:.0f}s")


def uninstall(p: Paths, log: Callable[[str], None]) -> None:
    """helm uninstall (its post-delete hook removes the operator's webhook configuration),
    then the agent's pins: its programs keep enforcing from them after the agent is gone, by
    design (an agent restart must not open a gap), so an uninstall removes them."""
    _delete_injected_pods(p, log)
    proc = _helm(p, "uninstall", RELEASE, "--namespace", NAMESPACE, "--wait", "--ignore-not-found")
    if proc.returncode != 0:
        raise StackError(f"helm uninstall {RELEASE}: {_errors(proc.stderr)}")
    if AGENT_PIN_DIR.exists():
        unpin(AGENT_PIN_DIR)
        log(f"helm: {RELEASE} uninstalled; the agent's pins in {AGENT_PIN_DIR} removed")
    else:
        log(f"helm: {RELEASE} uninstalled")
    # the agent leaves io_uring restricted while a protected pod lives; with its pins gone
    # nothing is protected
    lifted = lift_io_uring_restriction(AGENT_SOCKET_DIR)
    if lifted is not None:
        log(f"kernel.io_uring_disabled restored to {lifted} (the agent had restricted io_uring)")
