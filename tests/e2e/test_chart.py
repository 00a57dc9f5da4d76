"""The chart against the real API server: `helm install` creates every object (the server
validates each one; no kubelet or controller-manager runs here, so no pod is ever created or
run), the operator's ServiceAccount may do exactly what its RBAC says, and `helm uninstall`
removes every release object plus the operator-made webhook configuration, through the
pre-delete hook Job that this test runs in place of the missing kubelet. CRDs stay: Helm never
deletes what it installed from crds/ (deleting a CRD deletes every SecretBinding with it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml

from cloudtaser import stacking
from cloudtaser.bpf.leasing import NodeReport
from cloudtaser.bpf.watching import PodPolicies
from cloudtaser.engine.webhooks import WEBHOOK_CONFIGURATION
from cloudtaser.errors import CloudtaserError
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
NS = "cloudtaser-chart-e2e"  # created once and left: namespaces never finish deleting here
RELEASE = "ct-e2e"
CLEANUP = f"{RELEASE}-cloudtaser-cleanup"
# Drops `privileged: true` (and the Bidirectional mount propagation that requires it) for a
# kube-apiserver started without --allow-privileged=true.
STRIP_PRIVILEGED = """import sys, yaml
docs = [d for d in yaml.safe_load_all(sys.stdin) if d]
for d in docs:
    for c in ((d.get("spec") or {}).get("template") or {}).get("spec", {}).get("containers", []):
        (c.get("securityContext") or {}).pop("privileged", None)
        for m in c.get("volumeMounts", []):
            m.pop("mountPropagation", None)
sys.stdout.write(yaml.safe_dump_all(docs))
"""


def wait_for_chart(check: Any, timeout: float = 60, what: str = "condition") -> Any:
    return wait_for(check, timeout, what, tolerate=(CloudtaserError,))


@pytest.fixture(scope="module")
def helm(stack: stacking.Paths, tmp_path_factory: pytest.TempPathFactory) -> Any:
    home = tmp_path_factory.mktemp("helm")
    env = {**os.environ, **stacking.environment(stack), "HELM_CACHE_HOME": str(home / "cache"),
           "HELM_CONFIG_HOME": str(home / "config"), "HELM_DATA_HOME": str(home / "data")}

    def run(*args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([str(stack.binary("helm")), *args], env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def check(*args: str) -> str:
        proc = run(*args)
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"helm {' '.join(args)}:\n{err}"
        return out

    run.check = check  # type: ignore[attr-defined]
    return run


def privileged_allowed(kubectl: Any) -> bool:
    labels = {"probe": "privileged"}
    probe = {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "probe", "namespace": NS},
             "spec": {"selector": {"matchLabels": labels}, "template": {
                 "metadata": {"labels": labels},
                 "spec": {"containers": [{"name": "c", "image": "x",
                                          "securityContext": {"privileged": True}}]}}}}
    try:
        kubectl("create", "--dry-run=server", "-f", "-", stdin=json.dumps(probe))
    except CloudtaserError as e:
        assert "disallowed by cluster policy" in str(e), e
        return False
    return True


@pytest.fixture(scope="module")
def installed(stack: stacking.Paths, kubectl: Any, helm: Any,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[dict[str, Any]]]:
    if json.loads(kubectl("get", "ns", "-o", "json", "--field-selector", f"metadata.name={NS}"))["items"] == []:
        kubectl("create", "namespace", NS)
    if RELEASE in helm.check("list", "-n", NS, "-a", "-q").split():  # an earlier run died
        helm.check("uninstall", RELEASE, "-n", NS, "--no-hooks", "--wait=false")
    extra: list[str] = []
    if not privileged_allowed(kubectl):
        # The local stack's kube-apiserver runs without --allow-privileged=true; every real
        # cluster allows it. Install the same chart minus that one field, and say so.
        script = tmp_path_factory.mktemp("post-render") / "strip-privileged"
        script.write_text(f"#!{sys.executable}\n{STRIP_PRIVILEGED}")
        script.chmod(0o700)
        extra = ["--post-renderer", str(script)]
        print("kube-apiserver disallows privileged containers: agent installed unprivileged")
    helm.check("install", RELEASE, str(REPO / "chart"), "-n", NS, *extra)
    manifest = helm.check("get", "manifest", RELEASE, "-n", NS)
    yield [d for d in yaml.safe_load_all(manifest) if d]
    if RELEASE in helm.check("list", "-n", NS, "-a", "-q").split():  # a test failed midway
        helm.check("uninstall", RELEASE, "-n", NS, "--no-hooks")
    for kind in ("job", "serviceaccount"):
        kubectl("delete", kind, CLEANUP, "-n", NS, "--ignore-not-found")
    for kind in ("clusterrole", "clusterrolebinding"):
        kubectl("delete", kind, CLEANUP, "--ignore-not-found")


def exists(kubectl: Any, obj: dict[str, Any]) -> bool:
    meta = obj["metadata"]
    args = ["get", f"{obj['kind'].lower()}.{obj['apiVersion'].split('/')[0]}"
            if "/" in obj["apiVersion"] else obj["kind"].lower(), meta["name"], "--ignore-not-found", "-o", "name"]
    if meta.get("namespace"):
        args += ["-n", meta["namespace"]]
    return bool(kubectl(*args).strip())


def test_install_creates_every_object(installed: list[dict[str, Any]], kubectl: Any) -> None:
    kinds = {o["kind"] for o in installed}
    assert kinds == {"ServiceAccount", "Secret", "ConfigMap", "ClusterRole", "ClusterRoleBinding",
                     "Role", "RoleBinding", "Service", "DaemonSet", "Deployment", "PodDisruptionBudget",
                     "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}
    for obj in installed:
        assert exists(kubectl, obj), f"{obj['kind']}/{obj['metadata']['name']} missing"
    for crd in ("secretbindings.cloudtaser.io", "enforcementpolicies.cloudtaser.io"):
        kubectl("get", "crd", crd)
    # no controller-manager/kubelet: the Deployment and DaemonSet exist, their pods never do
    assert kubectl("get", "pods", "-n", NS, "-o", "name").strip() == ""


@pytest.mark.parametrize(("verb", "resource", "allowed"), [
    ("list", "secretbindings.cloudtaser.io", True),
    ("watch", "enforcementpolicies.cloudtaser.io", True),
    ("patch", "secretbindings.cloudtaser.io --subresource=status", True),
    ("update", "secretbindings.cloudtaser.io", False),
    ("patch", "secretbindings.cloudtaser.io", False),
    ("watch", "pods", True),
    ("create", "pods", False),
    ("list", "namespaces", True),
    ("create", "events", True),
    ("get", "secrets", True),  # imagePullSecrets, by name (operator.readImagePullSecrets)
    ("list", "secrets", False),
    ("watch", "secrets", False),
    ("create", "mutatingwebhookconfigurations", True),
    ("update", f"mutatingwebhookconfigurations/{WEBHOOK_CONFIGURATION}", True),
    ("delete", f"mutatingwebhookconfigurations/{WEBHOOK_CONFIGURATION}", True),
    ("delete", "mutatingwebhookconfigurations/someone-elses", False),
    ("create", "tokenreviews.authentication.k8s.io", False),
])
def test_operator_may_do_what_its_rbac_says(installed: Any, stack: stacking.Paths, verb: str,
                                            resource: str, allowed: bool) -> None:
    who = f"system:serviceaccount:{NS}:{RELEASE}-cloudtaser-operator"
    proc = subprocess.run([str(stack.binary("kubectl")), "auth", "can-i", verb, *resource.split(),
                           "--as", who, "-A"], capture_output=True, text=True, timeout=60,
                          check=False, env={**os.environ, **stacking.environment(stack)})
    assert proc.stdout.strip() == ("yes" if allowed else "no"), (verb, resource, proc.stdout, proc.stderr)


def as_token(stack: stacking.Paths, kubectl: Any, workdir: Path, token: str) -> Any:
    """kubectl as the bearer of ``token`` only (no admin certificate)."""
    config = yaml.safe_load(kubectl("config", "view", "--raw", "--minify"))
    config["users"][0]["user"] = {"token": token}
    path = workdir / f"kubeconfig-{len(list(workdir.iterdir()))}"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)

    def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(stack.binary("kubectl")), "--kubeconfig", str(path), *args],
                              input=stdin, capture_output=True, text=True, timeout=60, check=False)
    return run


def coordination_api(stack: stacking.Paths, token: str) -> Any:
    import kubernetes

    config = kubernetes.client.Configuration()
    config.host = f"https://{stacking.HOST}:{stacking.APISERVER_PORT}"
    config.ssl_ca_cert = str(stack.ca)
    config.api_key = {"authorization": f"Bearer {token}"}
    return kubernetes.client.CoordinationV1Api(kubernetes.client.ApiClient(config))


def lease(name: str) -> str:
    return json.dumps({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                       "metadata": {"name": name, "namespace": NS},
                       "spec": {"holderIdentity": "test"}})


def test_an_agent_writes_only_its_own_nodes_report(installed: Any, stack: stacking.Paths,
                                                   kubectl: Any, tmp_path: Path) -> None:
    """The ValidatingAdmissionPolicy: RBAC lets the agent's ServiceAccount write any Lease in
    the namespace; with a token bound to a pod on node A it may write cloudtaser-agent-A, and
    not another node's report nor the operator's leader-election Lease."""
    account = f"{RELEASE}-cloudtaser-agent"
    node, pod = "ct-e2e-node-a", "ct-e2e-agent-on-a"
    kubectl("apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "Node",
                                                  "metadata": {"name": node}}))
    # No kubelet confirms a bound pod's termination here: delete it at once.
    gone = ("delete", "pod", pod, "-n", NS, "--ignore-not-found", "--grace-period=0", "--force")
    kubectl(*gone)
    made = json.loads(kubectl("create", "-o", "json", "-f", "-", stdin=json.dumps({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod, "namespace": NS},
        "spec": {"nodeName": node, "serviceAccountName": account,
                 "containers": [{"name": "agent", "image": "agent:1", "command": ["/agent"]}]}})))
    names = [f"cloudtaser-agent-{node}", "cloudtaser-agent-ct-e2e-node-b", "cloudtaser-operator"]
    try:
        for name in names:
            kubectl("delete", "lease", name, "-n", NS, "--ignore-not-found")
        kubectl("create", "-f", "-", stdin=lease("cloudtaser-operator"))  # as the operator would
        bound = kubectl("create", "token", account, "-n", NS, "--bound-object-kind", "Pod",
                        "--bound-object-name", pod, "--bound-object-uid", made["metadata"]["uid"]).strip()
        # The agent's own code, with the chart's RBAC and that token: create, then renew.
        report = NodeReport(PodPolicies(lambda: {}), node, NS, "tracepoint",
                            api=coordination_api(stack, bound))
        report._write()
        report._write()  # the renewal is a merge patch
        written = json.loads(kubectl("get", "lease", names[0], "-n", NS, "-o", "json"))
        assert written["spec"]["holderIdentity"] == node
        agent = as_token(stack, kubectl, tmp_path, bound)
        for name, verb in ((names[1], "create"), (names[2], "annotate")):
            args = (["create", "-f", "-"] if verb == "create"
                    else ["annotate", "lease", name, "-n", NS, "hijacked=1"])
            refused = agent(*args, stdin=lease(name) if verb == "create" else None)
            assert refused.returncode != 0, (name, refused.stdout)
            assert "may write only its own node's report Lease" in refused.stderr, refused.stderr
        # RBAC alone would allow it: the same account with a token bound to no pod is refused too
        unbound = as_token(stack, kubectl, tmp_path,
                           kubectl("create", "token", account, "-n", NS).strip())
        refused = unbound("create", "-f", "-", stdin=lease(f"cloudtaser-agent-{node}-x"))
        assert refused.returncode != 0 and "may write only its own node's report Lease" in refused.stderr
    finally:
        for name in names:
            kubectl("delete", "lease", name, "-n", NS, "--ignore-not-found")
        kubectl(*gone)
        kubectl("delete", "node", node, "--ignore-not-found")


def run_hook_job(stack: stacking.Paths, kubectl: Any, workdir: Path) -> list[str]:
    """Play kubelet + job controller for the pre-delete Job: run its command locally with its
    own ServiceAccount's token (so its RBAC is what is tested), then mark the Job Complete."""
    job = wait_for_chart(lambda: json.loads(kubectl("get", "job", CLEANUP, "-n", NS, "-o", "json")),
                   what="the pre-delete hook Job")
    pod = job["spec"]["template"]["spec"]
    command: list[str] = pod["containers"][0]["command"]
    assert command[0] == "kubectl"
    token = kubectl("create", "token", pod["serviceAccountName"], "-n", NS).strip()
    proc = as_token(stack, kubectl, workdir, token)(*command[1:])  # the hook's identity only
    assert proc.returncode == 0, proc.stderr
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    done = [{"type": t, "status": "True", "lastProbeTime": now, "lastTransitionTime": now}
            for t in ("SuccessCriteriaMet", "Complete")]
    kubectl("patch", "job", CLEANUP, "-n", NS, "--subresource=status", "--type=merge", "-p",
            json.dumps({"status": {"startTime": now, "completionTime": now, "succeeded": 1,
                                   "conditions": done}}))
    return command


def test_uninstall_removes_everything_and_the_webhook(installed: list[dict[str, Any]], kubectl: Any,
                                                      helm: Any, stack: stacking.Paths,
                                                      tmp_path: Path) -> None:
    # what the operator would have made: harmless (matches no namespace, Ignore), same name
    kubectl("apply", "-f", "-", stdin=json.dumps({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": WEBHOOK_CONFIGURATION,
                     "labels": {"app.kubernetes.io/managed-by": "cloudtaser"}},
        "webhooks": [{"name": "inject.cloudtaser.io", "admissionReviewVersions": ["v1"],
                      "sideEffects": "None", "failurePolicy": "Ignore",
                      "clientConfig": {"url": "https://127.0.0.1:1/mutate-v1-pod"},
                      "namespaceSelector": {"matchLabels": {"cloudtaser-chart-e2e": "never"}},
                      "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                                 "resources": ["pods"]}]}]}))
    uninstall = helm("uninstall", RELEASE, "-n", NS, "--timeout", "2m")
    result: list[Any] = []
    runner = threading.Thread(target=lambda: result.append(run_hook_job(stack, kubectl, tmp_path)))
    runner.start()
    out, err = uninstall.communicate(timeout=180)
    runner.join(timeout=60)
    assert uninstall.returncode == 0, err
    assert result and result[0][1:4] == ["delete", "mutatingwebhookconfiguration", WEBHOOK_CONFIGURATION]
    assert kubectl("get", "mutatingwebhookconfiguration", WEBHOOK_CONFIGURATION,
                   "--ignore-not-found", "-o", "name").strip() == ""
    for obj in installed:
        wait_for_chart(lambda o=obj: not exists(kubectl, o), timeout=30,
                 what=f"{obj['kind']}/{obj['metadata']['name']} to be deleted")
    # the hook's own objects go too (hook-delete-policy hook-succeeded)
    for kind, namespaced in (("job", True), ("serviceaccount", True), ("clusterrole", False),
                             ("clusterrolebinding", False)):
        args = ["get", kind, CLEANUP, "--ignore-not-found", "-o", "name"] + (["-n", NS] if namespaced else [])
        wait_for_chart(lambda a=args: kubectl(*a).strip() == "", timeout=30, what=f"hook {kind} deleted")
    assert RELEASE not in helm.check("list", "-n", NS, "-a", "-q").split()
    # CRDs stay (Helm's policy for crds/): the bindings of other installs survive
    for crd in ("secretbindings.cloudtaser.io", "enforcementpolicies.cloudtaser.io"):
        kubectl("get", "crd", crd)

