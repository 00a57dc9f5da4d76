"""The chart against the real API server and node: `helm install` (with the images of the
stack's loopback registry, as `cloudtaser stack install` sets them) creates every object and
its Deployment and DaemonSet run as pods, the operator's ServiceAccount may do exactly what its
RBAC says, and `helm uninstall` removes every release object plus the operator-made webhook
configuration, through the post-delete hook Job that the node runs. CRDs stay: Helm never
deletes what it installed from crds/ (deleting a CRD deletes every SecretBinding with it).

It installs a release of its own, in its own namespace: run it while no other release of the
chart runs (the webhook configuration has one cluster-wide name; tests/e2e/node uninstalls
its release when it ends)."""

from __future__ import annotations

import json
import logging
import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cloudtaser.bpf.iouring import lift_io_uring_restriction
from cloudtaser.bpf.labelling import NodeLabel
from cloudtaser.bpf.leasing import NodeReport
from cloudtaser.bpf.programs import unpin
from cloudtaser.bpf.watching import PodPolicies
from cloudtaser.engine.plans import AGENT_BACKEND_LABEL
from cloudtaser.engine.webhooks import WEBHOOK_CONFIGURATION
from cloudtaser.errors import CloudtaserError
from cloudtaser.kubeapi import ApiError, KubeApi
from cloudtaser.testbed import installing, stacking
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
    env = {
        **os.environ,
        **stacking.environment(stack),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }

    def run(*args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [str(stack.binary("helm")), *args],
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def check(*args: str) -> str:
        proc = run(*args)
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"helm {' '.join(args)}:\n{err}"
        return out

    run.check = check  # type: ignore[attr-defined]
    return run


def privileged_allowed(kubectl: Any) -> bool:
    labels = {"probe": "privileged"}
    probe = {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "probe", "namespace": NS},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {"name": "c", "image": "x", "securityContext": {"privileged": True}}
                    ]
                },
            },
        },
    }
    try:
        kubectl("create", "--dry-run=server", "-f", "-", stdin=json.dumps(probe))
    except CloudtaserError as e:
        assert "disallowed by cluster policy" in str(e), e
        return False
    return True


@pytest.fixture(scope="module")
def installed(
    stack: stacking.Paths, kubectl: Any, helm: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[dict[str, Any]]]:
    if (
        json.loads(kubectl("get", "ns", "-o", "json", "--field-selector", f"metadata.name={NS}"))[
            "items"
        ]
        == []
    ):
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
    built = subprocess.run(
        [str(REPO / "scripts" / "build-images"), "--push", installing.PREFIX, "local"],
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    values = tmp_path_factory.mktemp("values") / "values.yaml"
    values.write_text(
        yaml.safe_dump(
            installing.values(
                stack,
                {key: installing.registry_digest(name) for key, name in installing.IMAGES.items()},
            )
        )
    )
    helm.check(
        "install",
        RELEASE,
        str(REPO / "chart"),
        "-n",
        NS,
        "--values",
        str(values),
        "--wait",
        "--timeout",
        "5m",
        *extra,
    )
    manifest = helm.check("get", "manifest", RELEASE, "-n", NS)
    try:
        yield [d for d in yaml.safe_load_all(manifest) if d]
    finally:
        if RELEASE in helm.check("list", "-n", NS, "-a", "-q").split():  # a test failed midway
            helm.check("uninstall", RELEASE, "-n", NS, "--wait")
        for kind in ("job", "serviceaccount"):
            kubectl("delete", kind, CLEANUP, "-n", NS, "--ignore-not-found")
        for kind in ("clusterrole", "clusterrolebinding"):
            kubectl("delete", kind, CLEANUP, "--ignore-not-found")
        unpin(installing.AGENT_PIN_DIR)  # the agent's programs outlive it by design
        lift_io_uring_restriction(installing.AGENT_SOCKET_DIR)  # as `stack uninstall` does


def exists(kubectl: Any, obj: dict[str, Any]) -> bool:
    meta = obj["metadata"]
    args = [
        "get",
        f"{obj['kind'].lower()}.{obj['apiVersion'].split('/')[0]}"
        if "/" in obj["apiVersion"]
        else obj["kind"].lower(),
        meta["name"],
        "--ignore-not-found",
        "-o",
        "name",
    ]
    if meta.get("namespace"):
        args += ["-n", meta["namespace"]]
    return bool(kubectl(*args).strip())


def test_install_creates_every_object(installed: list[dict[str, Any]], kubectl: Any) -> None:
    kinds = {o["kind"] for o in installed}
    assert kinds == {
        "ServiceAccount",
        "Secret",
        "ConfigMap",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Service",
        "DaemonSet",
        "Deployment",
        "PodDisruptionBudget",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
        "CSIDriver",
    }
    for obj in installed:
        assert exists(kubectl, obj), f"{obj['kind']}/{obj['metadata']['name']} missing"
    for crd in ("secretbindings.cloudtaser.io", "enforcementpolicies.cloudtaser.io"):
        kubectl("get", "crd", crd)
    # the node runs them: two operator replicas and the agent, from the loopback registry
    pods = json.loads(kubectl("get", "pods", "-n", NS, "-o", "json"))["items"]
    running = sorted(
        p["metadata"]["labels"].get("app.kubernetes.io/component", "")
        for p in pods
        if p["status"].get("phase") == "Running"
    )
    assert running == ["agent", "operator", "operator"], [p["metadata"]["name"] for p in pods]
    assert all(
        c["image"].startswith(installing.PREFIX + "/")
        for p in pods
        for c in p["spec"]["containers"]
    )


@pytest.mark.parametrize(
    ("verb", "resource", "allowed"),
    [
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
    ],
)
def test_operator_may_do_what_its_rbac_says(
    installed: Any, stack: stacking.Paths, verb: str, resource: str, allowed: bool
) -> None:
    who = f"system:serviceaccount:{NS}:{RELEASE}-cloudtaser-operator"
    proc = subprocess.run(
        [str(stack.binary("kubectl")), "auth", "can-i", verb, *resource.split(), "--as", who, "-A"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **stacking.environment(stack)},
    )
    assert proc.stdout.strip() == ("yes" if allowed else "no"), (
        verb,
        resource,
        proc.stdout,
        proc.stderr,
    )


def as_token(stack: stacking.Paths, kubectl: Any, workdir: Path, token: str) -> Any:
    """kubectl as the bearer of ``token`` only (no admin certificate)."""
    config = yaml.safe_load(kubectl("config", "view", "--raw", "--minify"))
    config["users"][0]["user"] = {"token": token}
    path = workdir / f"kubeconfig-{len(list(workdir.iterdir()))}"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)

    def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(stack.binary("kubectl")), "--kubeconfig", str(path), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    return run


def agent_api(stack: stacking.Paths, token: str) -> KubeApi:
    """The agent's own client (cloudtaser/kubeapi.py) as the bearer of ``token``."""
    return KubeApi(
        f"https://{stacking.HOST}:{stacking.APISERVER_PORT}",
        ssl.create_default_context(cafile=str(stack.ca)),
        token=token,
    )


def lease(name: str) -> str:
    return json.dumps(
        {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"holderIdentity": "test"},
        }
    )


def test_an_agent_writes_only_its_own_nodes_report(
    installed: Any, stack: stacking.Paths, kubectl: Any, tmp_path: Path
) -> None:
    """The ValidatingAdmissionPolicy: RBAC lets the agent's ServiceAccount write any Lease in
    the namespace; with a token bound to a pod on node A it may write cloudtaser-agent-A, and
    not another node's report nor the operator's leader-election Lease."""
    account = f"{RELEASE}-cloudtaser-agent"
    node, pod = "ct-e2e-node-a", "ct-e2e-agent-on-a"
    kubectl(
        "apply",
        "-f",
        "-",
        stdin=json.dumps({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}}),
    )
    # No kubelet confirms a bound pod's termination here: delete it at once.
    gone = ("delete", "pod", pod, "-n", NS, "--ignore-not-found", "--grace-period=0", "--force")
    kubectl(*gone)
    made = json.loads(
        kubectl(
            "create",
            "-o",
            "json",
            "-f",
            "-",
            stdin=json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": pod, "namespace": NS},
                    "spec": {
                        "nodeName": node,
                        "serviceAccountName": account,
                        "containers": [
                            {"name": "agent", "image": "agent:1", "command": ["/agent"]}
                        ],
                    },
                }
            ),
        )
    )
    names = [f"cloudtaser-agent-{node}", "cloudtaser-agent-ct-e2e-node-b", "cloudtaser-operator"]
    try:
        for name in names:
            kubectl("delete", "lease", name, "-n", NS, "--ignore-not-found")
        kubectl("create", "-f", "-", stdin=lease("cloudtaser-operator"))  # as the operator would
        bound = kubectl(
            "create",
            "token",
            account,
            "-n",
            NS,
            "--bound-object-kind",
            "Pod",
            "--bound-object-name",
            pod,
            "--bound-object-uid",
            made["metadata"]["uid"],
        ).strip()
        # The agent's own code, with the chart's RBAC and that token: create, then renew.
        report = NodeReport(
            PodPolicies(lambda: {}), node, NS, "tracepoint", api=agent_api(stack, bound)
        )
        report._write()
        report._write()  # the renewal is a merge patch
        written = json.loads(kubectl("get", "lease", names[0], "-n", NS, "-o", "json"))
        assert written["spec"]["holderIdentity"] == node
        agent = as_token(stack, kubectl, tmp_path, bound)
        for name, verb in ((names[1], "create"), (names[2], "annotate")):
            args = (
                ["create", "-f", "-"]
                if verb == "create"
                else ["annotate", "lease", name, "-n", NS, "hijacked=1"]
            )
            refused = agent(*args, stdin=lease(name) if verb == "create" else None)
            assert refused.returncode != 0, (name, refused.stdout)
            assert "may write only its own node's report Lease" in refused.stderr, refused.stderr
        # RBAC alone would allow it: the same account with a token bound to no pod is refused too
        unbound = as_token(
            stack, kubectl, tmp_path, kubectl("create", "token", account, "-n", NS).strip()
        )
        refused = unbound("create", "-f", "-", stdin=lease(f"cloudtaser-agent-{node}-x"))
        assert (
            refused.returncode != 0
            and "may write only its own node's report Lease" in refused.stderr
        )
    finally:
        for name in names:
            kubectl("delete", "lease", name, "-n", NS, "--ignore-not-found")
        kubectl(*gone)
        kubectl("delete", "node", node, "--ignore-not-found")


def test_an_agent_labels_only_its_own_node_and_only_with_its_backend(
    installed: Any,
    stack: stacking.Paths,
    kubectl: Any,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """RBAC lets the agent's ServiceAccount get and patch every node; the -node-label
    ValidatingAdmissionPolicy admits only cloudtaser.io/agent-backend=lsm|tracepoint, on the node
    of the pod its token is bound to. The agent's own code (bpf/cloudtaser/bpf/labelling.py) with such tokens:
    agent A labels node A and removes the label at close; agent B is refused on node A, which
    costs it warning lines, never an exception."""
    account = f"{RELEASE}-cloudtaser-agent"
    nodes = {"a": "ct-e2e-label-a", "b": "ct-e2e-label-b"}
    pods = {side: f"ct-e2e-agent-label-{side}" for side in nodes}

    def labels(side: str) -> dict[str, str]:
        found: dict[str, str] = json.loads(kubectl("get", "node", nodes[side], "-o", "json"))[
            "metadata"
        ].get("labels", {})
        return found

    def gone(side: str) -> tuple[str, ...]:
        return (
            "delete",
            "pod",
            pods[side],
            "-n",
            NS,
            "--ignore-not-found",
            "--grace-period=0",
            "--force",
        )

    tokens = {}
    try:
        for side, node in nodes.items():
            kubectl("delete", "node", node, "--ignore-not-found")
            kubectl(
                "create",
                "-f",
                "-",
                stdin=json.dumps(
                    {
                        "apiVersion": "v1",
                        "kind": "Node",
                        "metadata": {"name": node, "labels": {"keep": "me"}},
                    }
                ),
            )
            kubectl(*gone(side))
            made = json.loads(
                kubectl(
                    "create",
                    "-o",
                    "json",
                    "-f",
                    "-",
                    stdin=json.dumps(
                        {
                            "apiVersion": "v1",
                            "kind": "Pod",
                            "metadata": {"name": pods[side], "namespace": NS},
                            "spec": {
                                "nodeName": node,
                                "serviceAccountName": account,
                                "containers": [
                                    {"name": "agent", "image": "agent:1", "command": ["/agent"]}
                                ],
                            },
                        }
                    ),
                )
            )
            tokens[side] = kubectl(
                "create",
                "token",
                account,
                "-n",
                NS,
                "--bound-object-kind",
                "Pod",
                "--bound-object-name",
                pods[side],
                "--bound-object-uid",
                made["metadata"]["uid"],
            ).strip()
        # Agent A's worker labels its node; the node's other labels stay.
        label_a = NodeLabel(nodes["a"], api=agent_api(stack, tokens["a"]), retry=0.1)
        label_a.start("lsm")
        wait_for_chart(
            lambda: labels("a").get(AGENT_BACKEND_LABEL) == "lsm", what="node A labelled"
        )
        assert labels("a")["keep"] == "me"
        # Agent B may label its own node, not node A: its worker warns, retries, never raises.
        assert NodeLabel(nodes["b"], api=agent_api(stack, tokens["b"])).apply("tracepoint")
        assert labels("b")[AGENT_BACKEND_LABEL] == "tracepoint"
        with pytest.raises(ApiError) as refused:
            NodeLabel(nodes["a"], api=agent_api(stack, tokens["b"])).apply("tracepoint")
        assert refused.value.status == 403
        assert "a cloudtaser agent may label only its own node" in refused.value.body
        caplog.set_level(logging.WARNING, logger="cloudtaser.bpf.labelling")
        intruder = NodeLabel(nodes["a"], api=agent_api(stack, tokens["b"]), retry=0.05)
        intruder.start("tracepoint")
        wait_for_chart(lambda: len(caplog.records) >= 2, what="two refused attempts")
        intruder.close()  # its removal is refused too: three warnings, then it gives up
        lines = [r.getMessage() for r in caplog.records]
        assert all(
            f"node {nodes['a']}: label " in line
            and "not written (HTTP 403: " in line
            and "may label only its own node" in line
            for line in lines
        ), lines
        assert lines[-1].endswith("; giving up") and "retrying in" in lines[0], lines
        assert labels("a").get(AGENT_BACKEND_LABEL) == "lsm"
        # Agent A itself may change nothing else on its node.
        agent_a = as_token(stack, kubectl, tmp_path, tokens["a"])
        for args, message in (
            (
                ["label", "node", nodes["a"], "keep=you", "--overwrite"],
                "may change only its node's label",
            ),
            (
                ["label", "node", nodes["a"], f"{AGENT_BACKEND_LABEL}=yes", "--overwrite"],
                "is lsm or tracepoint",
            ),
            (["annotate", "node", nodes["a"], "x=1"], "may change only its node's label"),
            (
                ["patch", "node", nodes["a"], "-p", '{"spec":{"unschedulable":true}}'],
                "may change only its node's label",
            ),
            (["delete", "node", nodes["a"]], "cannot delete resource"),  # RBAC
            (
                [
                    "patch",
                    "node",
                    nodes["a"],
                    "--subresource=status",
                    "-p",
                    '{"status":{"phase":"x"}}',
                ],
                'resource "nodes/status"',
            ),  # RBAC: nodes, never nodes/status
        ):
            result = agent_a(*args)
            assert result.returncode != 0 and message in result.stderr, (args, result.stderr)
        # RBAC alone would allow it: the same account with a token bound to no pod is refused
        unbound = as_token(
            stack, kubectl, tmp_path, kubectl("create", "token", account, "-n", NS).strip()
        )
        result = unbound(
            "label", "node", nodes["a"], f"{AGENT_BACKEND_LABEL}=tracepoint", "--overwrite"
        )
        assert result.returncode != 0 and "may label only its own node" in result.stderr, (
            result.stderr
        )
        # Stopping removes the label, and only it.
        label_a.close()
        assert labels("a") == {"keep": "me"}
    finally:
        for side, node in nodes.items():
            kubectl(*gone(side))
            kubectl("delete", "node", node, "--ignore-not-found")


def test_uninstall_removes_everything_and_the_webhook(
    installed: list[dict[str, Any]], kubectl: Any, helm: Any, stack: stacking.Paths, tmp_path: Path
) -> None:
    # the configuration the operator's leader made, pointing at this release's Service
    def ours() -> bool:
        found = kubectl(
            "get",
            "mutatingwebhookconfiguration",
            WEBHOOK_CONFIGURATION,
            "--ignore-not-found",
            "-o",
            "jsonpath={.webhooks[0].clientConfig.service.namespace}",
        )
        return bool(found.strip() == NS)

    wait_for_chart(ours, timeout=120, what="the operator's webhook configuration")
    # the post-delete hook Job runs on the node (kubectl from the loopback registry, as its own
    # ServiceAccount): after the release's objects, so the operator cannot re-create it
    uninstall = helm("uninstall", RELEASE, "-n", NS, "--wait", "--timeout", "3m")
    out, err = uninstall.communicate(timeout=240)
    assert uninstall.returncode == 0, err
    assert (
        kubectl(
            "get",
            "mutatingwebhookconfiguration",
            WEBHOOK_CONFIGURATION,
            "--ignore-not-found",
            "-o",
            "name",
        ).strip()
        == ""
    )
    for obj in installed:
        wait_for_chart(
            lambda o=obj: not exists(kubectl, o),
            timeout=30,
            what=f"{obj['kind']}/{obj['metadata']['name']} to be deleted",
        )
    # the hook's own objects go too (hook-delete-policy hook-succeeded)
    for kind, namespaced in (
        ("job", True),
        ("serviceaccount", True),
        ("clusterrole", False),
        ("clusterrolebinding", False),
    ):
        args = ["get", kind, CLEANUP, "--ignore-not-found", "-o", "name"] + (
            ["-n", NS] if namespaced else []
        )
        wait_for_chart(
            lambda a=args: kubectl(*a).strip() == "", timeout=30, what=f"hook {kind} deleted"
        )
    assert RELEASE not in helm.check("list", "-n", NS, "-a", "-q").split()
    # CRDs stay (Helm's policy for crds/): the bindings of other installs survive
    for crd in ("secretbindings.cloudtaser.io", "enforcementpolicies.cloudtaser.io"):
        kubectl("get", "crd", crd)
