"""A pod's whole life with the real parts: admitted by the real API server, mutated by the real
operator's webhook, bound to a node, run (by tests/harness/kubelet.py, standing in for the
kubelet this machine lacks) with the wrapper bundle installed by the real init container, its
secrets fetched from the real OpenBao with a real TokenRequest token, and its phase reported
back. The app prints only sha256 digests of what it received; no secret is ever printed.

Policies: no node agent runs here, and enforce mode refuses to start an app without one. The
stack's ``baseline`` policy enforces on every pod, and the stricter mode wins, so for the
duration of this module ``baseline`` leaves out pods carrying RUN_LABEL (restored afterwards)
and two policies of this module decide instead: audit for RUN_LABEL=audit (the app starts)
and enforce for RUN_LABEL=enforce (the wrapper refuses, the pod fails).
"""

from __future__ import annotations

import functools
import json
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cloudtaser import provisioning, stacking
from cloudtaser.certificates import CertificateAuthority
from cloudtaser.engine.compiler import AGENT_MOUNT, TOKEN_MOUNT
from cloudtaser.engine.patches import INIT_CONTAINER
from cloudtaser.engine.plans import CONFIG_ENV, INJECTED_ANNOTATION, InjectorSettings, WrapperConfig
from cloudtaser.engine.webhooks import WEBHOOK_CONFIGURATION
from tests.e2e.conftest import sha
from tests.e2e.test_operator import stop
from tests.harness.waiting import wait_for
from tests.harness import kubelet

pytestmark = pytest.mark.e2e
PORT = 18446
NS = provisioning.DEMO_NAMESPACE
URL = f"https://127.0.0.1:{PORT}/mutate-v1-pod"
RUN_LABEL = "cloudtaser.io/e2e-pod-lifecycle"
POLICIES = {"audit": "e2e-pod-lifecycle-audit", "enforce": "e2e-pod-lifecycle-enforce"}
SETTINGS = InjectorSettings()
PYTHON = Path(sys.executable)  # the app runs on this host's filesystem: the venv has the SDK
APP_SCRIPT = "\n".join([
    'printf %s "$DEMO_PASSWORD" | sha256sum',
    "cat /etc/demo/password | sha256sum",
    f"{PYTHON} -c 'import hashlib; from cloudtaser.sdk import get_secret; "
    'print(hashlib.sha256(get_secret("demo-password")).hexdigest(), "-")\'',
    "grep '^0::' /proc/self/cgroup",
    "sleep 3",  # long enough for the attacker in the agent test to find the app
])
HASH_LINE = re.compile(r"([0-9a-f]{64})\s+-")


@pytest.fixture(scope="module")
def bundle() -> Path:
    """The wrapper bundle: the init container's image, mapped to /bundle."""
    result = subprocess.run([str(stacking.REPO / "scripts" / "build-bundle")],
                            capture_output=True, text=True, timeout=1800, check=False)
    assert result.returncode == 0, f"scripts/build-bundle failed:\n{result.stderr}"
    return Path(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def operator(stack: stacking.Paths, kubectl: Any,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[subprocess.Popen[str]]:
    """The real operator on its own port; ready when the webhook configuration calls it for
    the demo namespace."""
    pair = CertificateAuthority(stack.pki).issue("operator", "cloudtaser-operator", server=True,
                                                 hosts=("127.0.0.1",))
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    with log.open("w") as err:
        process = subprocess.Popen(
            [str(PYTHON.parent / "cloudtaser"), "operator", "--tls-cert", str(pair.cert),
             "--tls-key", str(pair.key), "--ca-file", str(stack.ca), "--port", str(PORT),
             "--opa-url", f"http://127.0.0.1:{stacking.OPA_PORT}"],
            env={**os.environ, **stacking.environment(stack)}, stdout=subprocess.DEVNULL,
            stderr=err, text=True)

    def ours() -> bool:
        hook = json.loads(kubectl("get", "mutatingwebhookconfiguration", WEBHOOK_CONFIGURATION,
                                  "-o", "json"))["webhooks"][0]
        return bool(hook["clientConfig"].get("url") == URL
                    and NS in hook["namespaceSelector"]["matchExpressions"][0]["values"])

    try:
        wait_for(ours, timeout=60, what=f"the webhook configuration pointing at {URL}")
        yield process
    finally:
        stop(process)
        if _webhook_url(kubectl) == URL:  # a dead URL with failurePolicy Fail blocks pods
            kubectl("delete", "mutatingwebhookconfiguration", WEBHOOK_CONFIGURATION,
                    "--ignore-not-found")
        text = log.read_text()
        assert "Traceback" not in text, text[-3000:]


def _webhook_url(kubectl: Any) -> str | None:
    found = kubectl("get", "mutatingwebhookconfiguration", "-o",
                    f"jsonpath={{.items[?(@.metadata.name=='{WEBHOOK_CONFIGURATION}')]"
                    ".webhooks[0].clientConfig.url}")
    return found or None


def _policy(name: str, mode: str) -> dict[str, Any]:
    return {"apiVersion": "cloudtaser.io/v1alpha1", "kind": "EnforcementPolicy",
            "metadata": {"name": name},
            "spec": {"mode": mode,
                     "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": NS}},
                     "podSelector": {"matchLabels": {"app": "demo", RUN_LABEL: mode}}}}


def _observed(kubectl: Any, name: str) -> bool:
    body = json.loads(kubectl("get", "ctep", name, "-o", "json"))
    return bool(body.get("status", {}).get("observedGeneration") == body["metadata"]["generation"])


@pytest.fixture(scope="module")
def policies(operator: Any, kubectl: Any) -> Iterator[None]:
    """This module's audit and enforce policies, and ``baseline`` leaving RUN_LABEL pods to
    them; the operator has compiled all three before a test creates a pod."""
    baseline = json.loads(kubectl("get", "ctep", "baseline", "-o", "json"))
    original = baseline["spec"].get("podSelector", {})
    excluded = {**original, "matchExpressions": [*original.get("matchExpressions", []),
                                                 {"key": RUN_LABEL, "operator": "DoesNotExist"}]}
    kubectl("delete", "ctep", *POLICIES.values(), "--ignore-not-found")
    try:
        kubectl("patch", "ctep", "baseline", "--type=merge", "-p",
                json.dumps({"spec": {"podSelector": excluded}}))
        kubectl("create", "-f", "-", stdin=yaml.safe_dump_all(
            [_policy(name, mode) for mode, name in POLICIES.items()]))
        for name in ["baseline", *POLICIES.values()]:
            wait_for(functools.partial(_observed, kubectl, name),
                     what=f"the operator compiling {name}")
        yield
    finally:
        kubectl("delete", "ctep", *POLICIES.values(), "--ignore-not-found")
        kubectl("patch", "ctep", "baseline", "--type=json", "-p", json.dumps(
            [{"op": "replace", "path": "/spec/podSelector", "value": original}]))


def _create_pod(kubectl: Any, mode: str) -> str:
    name = f"lifecycle-{mode}-{secrets.token_hex(3)}"
    kubectl("create", "-f", "-", stdin=yaml.safe_dump({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS,
                     "labels": {"app": "demo", RUN_LABEL: mode},
                     "annotations": {"cloudtaser.io/inject": "true"}},
        "spec": {"serviceAccountName": provisioning.DEMO_ACCOUNT, "restartPolicy": "Never",
                 # the default API token volume needs kube-root-ca.crt (no controller here)
                 "automountServiceAccountToken": False,
                 "containers": [{"name": "app", "image": "host",
                                 "command": ["/bin/sh", "-c", APP_SCRIPT]}]},
    }))
    return name


@pytest.fixture
def pod(policies: None, kubectl: Any) -> Iterator[Any]:
    """Creates pods (by mode) and deletes them afterwards."""
    made: list[str] = []

    def create(mode: str) -> tuple[str, dict[str, Any]]:
        made.append(_create_pod(kubectl, mode))
        body = json.loads(kubectl("get", "pod", made[-1], "-n", NS, "-o", "json"))
        return made[-1], body

    yield create
    for name in made:
        kubectl("delete", "pod", name, "-n", NS, "--ignore-not-found", "--grace-period=0",
                "--force")


def _assert_mutated(body: dict[str, Any], required_agent: bool) -> WrapperConfig:
    """What the webhook added (engine/patches.py); returns the container's WrapperConfig."""
    assert INJECTED_ANNOTATION in body["metadata"]["annotations"]
    spec = body["spec"]
    init = spec["initContainers"][0]
    assert init["name"] == INIT_CONTAINER and init["image"] == SETTINGS.wrapper_image
    assert init["command"] == ["/bundle/install", SETTINGS.bundle_dir]
    assert init["volumeMounts"] == [{"name": "cloudtaser-bundle", "mountPath": "/cloudtaser"}]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["cloudtaser-bundle"]["emptyDir"]["medium"] == "Memory"
    assert volumes["cloudtaser-agent"]["hostPath"]["path"] == SETTINGS.agent_socket_dir
    token = volumes["cloudtaser-token"]["projected"]["sources"][0]["serviceAccountToken"]
    assert token["audience"] == "openbao" and token["path"] == "token"
    app = spec["containers"][0]
    assert app["command"] == ["/cloudtaser/wrapper", "--", "/bin/sh", "-c", APP_SCRIPT]
    assert {m["name"]: m["mountPath"] for m in app["volumeMounts"]} == {
        "cloudtaser-bundle": "/cloudtaser", "cloudtaser-agent": AGENT_MOUNT,
        "cloudtaser-token": TOKEN_MOUNT}
    assert "IPC_LOCK" in app["securityContext"]["capabilities"]["add"]
    env = {e["name"]: e.get("value") for e in app["env"]}
    config = WrapperConfig.model_validate_json(env[CONFIG_ENV])
    assert config.token_path == f"{TOKEN_MOUNT}/token"
    assert config.agent.required is required_agent, "the operator compiled another policy"
    return config


def _run(kubectl: Any, name: str, bundle: Path, tmp_path: Path) -> kubelet.PodResult:
    agent_dir = tmp_path / "agent"  # this node's /run/cloudtaser: no agent listens there
    agent_dir.mkdir()
    return kubelet.run_pod(kubectl, NS, name, images={SETTINGS.wrapper_image: {"/bundle": bundle}},
                           host_paths={SETTINGS.agent_socket_dir: agent_dir}, timeout=120)


def _assert_no_secret(result: kubelet.PodResult, secret: dict[str, str]) -> None:
    for run in result.init_containers + result.containers:
        for value in secret.values():
            assert value not in run.stdout + run.stderr, f"{run.name} printed a secret value"


def _assert_cleaned_up(body: dict[str, Any]) -> None:
    uid = body["metadata"]["uid"].replace("-", "_")
    assert not kubelet.pod_cgroup(body).exists(), "the pod's cgroup was left behind"
    assert f"pod{uid}" not in Path("/proc/self/mountinfo").read_text()
    assert body["metadata"]["name"] not in Path("/proc/self/mountinfo").read_text()


def test_injected_pod_runs_and_gets_its_secrets(pod: Any, kubectl: Any, bundle: Path,
                                                demo_secret: dict[str, str],
                                                tmp_path: Path) -> None:
    name, body = pod("audit")
    _assert_mutated(body, required_agent=False)
    result = _run(kubectl, name, bundle, tmp_path)
    _assert_no_secret(result, demo_secret)
    app, init = result.container("app"), result.container(INIT_CONTAINER)
    assert init.exit_code == 0, init.stderr
    assert "wrapper bundle installed in /cloudtaser" in init.stderr
    assert app.exit_code == 0 and result.phase == "Succeeded", app.stderr
    hashes = [m.group(1) for m in map(HASH_LINE.fullmatch, app.stdout.splitlines()) if m]
    assert hashes == [sha(demo_secret["password"])] * 3, app.stdout  # env, file, SDK
    uid = body["metadata"]["uid"].replace("-", "_")
    assert re.search(rf"^0::/kubepods\.slice/kubepods-besteffort\.slice/kubepods-besteffort-"
                     rf"pod{uid}\.slice/cri-containerd-{app.id}\.scope$", app.stdout, re.M), \
        app.stdout
    assert "audit mode" in app.stderr, app.stderr

    after = json.loads(kubectl("get", "pod", name, "-n", NS, "-o", "json"))
    assert after["spec"]["nodeName"] == result.node == kubelet.node_name()
    assert after["status"]["phase"] == "Succeeded"
    terminated = after["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 0 and terminated["reason"] == "Completed"
    node = json.loads(kubectl("get", "node", result.node, "-o", "json"))
    assert {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"] == "True"
    _assert_cleaned_up(after)


def test_enforced_pod_without_agent_fails_with_one_line(pod: Any, kubectl: Any, bundle: Path,
                                                        demo_secret: dict[str, str],
                                                        tmp_path: Path) -> None:
    name, body = pod("enforce")
    _assert_mutated(body, required_agent=True)
    result = _run(kubectl, name, bundle, tmp_path)
    _assert_no_secret(result, demo_secret)
    app = result.container("app")
    assert result.phase == "Failed" and app.exit_code not in (0, None), app.stderr
    assert app.stdout == "", "the app must not have started"
    lines = app.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("cloudtaser-wrapper: node agent not reachable")
    assert lines[0].endswith("so the app is not started without the agent"), app.stderr
    after = json.loads(kubectl("get", "pod", name, "-n", NS, "-o", "json"))
    assert after["status"]["phase"] == "Failed"
    terminated = after["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == app.exit_code and terminated["reason"] == "Error"
    _assert_cleaned_up(after)


ATTACK = r"""
import sys
with open(sys.argv[1], "rb") as f:
    sys.stdout.buffer.write(f.read())
"""


def _attack_pod(pod_cgroup: Path, secret: str, stop_at: float, results: list[tuple[int, int, bool]]) -> None:
    """As root on the node: read /proc/PID/environ of every process of the pod's containers."""
    import time as clock

    while clock.monotonic() < stop_at and not results:
        for procs in pod_cgroup.glob("cri-containerd-*.scope/cgroup.procs"):
            try:
                pids = [int(p) for p in procs.read_text().split()]
            except OSError:
                continue
            for pid in sorted(pids):  # the app's main shell first (its pipeline children are short-lived)
                try:  # the app's shell once the wrapper has exec'ed it: not the wrapper
                    # (same command line, before exec), nor the harness's setup shell (a sh
                    # whose command line holds the app's and writes cgroup.procs), nor the
                    # init container's install script
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                    if (Path(f"/proc/{pid}/exe").resolve().name not in ("sh", "dash", "bash")
                            or b"sha256sum" not in cmdline or b"cgroup.procs" in cmdline):
                        continue
                except OSError:
                    continue
                attacker = subprocess.run([sys.executable, "-c", ATTACK, f"/proc/{pid}/environ"],
                                          capture_output=True, timeout=20, check=False)
                results.append((pid, attacker.returncode, secret.encode() in attacker.stdout))
        clock.sleep(0.05)


def test_enforced_pod_with_the_agent_runs_and_root_cannot_read_it(
        pod: Any, kubectl: Any, bundle: Path, demo_secret: dict[str, str], tmp_path: Path,
        stack: stacking.Paths, monkeypatch: pytest.MonkeyPatch) -> None:
    """All the pieces: the node agent compiles the pod's policy from the API server, the
    wrapper registers (enforce mode requires it) and starts the app, and a root process on the
    node that reads the app's environment is killed and gets nothing."""
    import threading
    import time as clock

    from cloudtaser.bpf.agent import Agent
    from cloudtaser.bpf.loading import ensure_bpffs, unpin
    from cloudtaser.bpf.reporting import REASON, EventReporter
    from cloudtaser.bpf.watching import PodPolicies, kubernetes_lister

    if os.geteuid() != 0 or not Path("/sys/kernel/btf/vmlinux").exists():
        pytest.skip("the node agent needs root and BTF")
    built = subprocess.run([str(stacking.REPO / "scripts" / "build-bpf")], capture_output=True,
                           text=True, check=True)
    monkeypatch.setenv("KUBECONFIG", str(stack.kubeconfig))
    agent_dir = tmp_path / "agent"
    agent_dir.mkdir()
    pin_dir = Path(f"/sys/fs/bpf/cloudtaser-e2e-{secrets.token_hex(4)}")
    ensure_bpffs()
    policies = PodPolicies(kubernetes_lister(kubelet.node_name()))
    reporter = EventReporter(policies, kubelet.node_name())
    agent = Agent(agent_dir / "agent.sock", Path(built.stdout.strip().splitlines()[-1]),
                  pin_dir=pin_dir, pod_policies=policies, on_violation=reporter.report)
    agent.start()
    try:
        name, body = pod("enforce")
        _assert_mutated(body, required_agent=True)
        results: list[tuple[int, int, bool]] = []
        attacker = threading.Thread(target=_attack_pod, args=(
            kubelet.pod_cgroup(body), demo_secret["password"], clock.monotonic() + 60, results))
        attacker.start()
        result = kubelet.run_pod(kubectl, NS, name,
                                 images={SETTINGS.wrapper_image: {"/bundle": bundle}},
                                 host_paths={SETTINGS.agent_socket_dir: agent_dir}, timeout=120)
        attacker.join()
    finally:
        agent.stop()
        reporter.close()
        unpin(pin_dir)
    _assert_no_secret(result, demo_secret)
    events = kubectl("get", "events", "-n", NS, "--field-selector",
                     f"involvedObject.name={name},reason={REASON}", "-o", "json")
    messages = [e["message"] for e in json.loads(events)["items"]]
    assert any(m.startswith("environ access to pid ") and m.endswith(": killed") for m in messages), (messages, results)
    assert all(demo_secret["password"] not in m for m in messages)
    app = result.container("app")
    assert "registered with the node agent (tracepoint backend)" in app.stderr, app.stderr
    assert results, "the attacker never found the app's process"
    pid, returncode, leaked = results[0]
    assert returncode == -9 and not leaked, f"attacker on pid {pid}: rc {returncode}, leaked {leaked}"
    assert app.exit_code == 0 and result.phase == "Succeeded", app.stderr
