"""The operator against the real API server and OPA: status that tells the truth, the OPA gate,
the webhook configuration kept equal to the Plan (drift repaired), and a restart that derives
the same statuses and configuration."""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import yaml

from cloudtaser.engine.plans import CONFIG_ENV
from cloudtaser.engine.webhooks import WEBHOOK_CONFIGURATION
from cloudtaser.testbed import stacking
from cloudtaser.testbed.stacking import StackError
from tests.harness.documents import binding_doc, pod_doc
from tests.harness.operators import OPA_RECHECK, conditions, start_operator, stop
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.e2e
OPA = f"http://127.0.0.1:{stacking.OPA_PORT}"
NS = "operator-e2e"


@pytest.fixture(scope="module")
def operator(stack: stacking.Paths, kubectl: Any) -> Iterator[subprocess.Popen[str]]:
    kubectl(
        "apply",
        "-f",
        "-",
        stdin=yaml.safe_dump_all(
            [
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}},
                {
                    "apiVersion": "v1",
                    "kind": "ServiceAccount",
                    "metadata": {"name": "app", "namespace": NS},
                },
            ]
        ),
    )
    process = start_operator(stack)
    try:
        yield process
    finally:
        err = stop(process)
        kubectl("delete", "sb", "--all", "-n", NS, "--wait=false")
        kubectl(
            "delete", "mutatingwebhookconfiguration", WEBHOOK_CONFIGURATION, "--ignore-not-found"
        )
        assert "Traceback" not in err, err[-3000:]


def sb(kubectl: Any, name: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(kubectl("get", "sb", name, "-n", NS, "-o", "json"))
    return found


def test_ready_binding_status_counts_and_webhook_scope(operator: Any, kubectl: Any) -> None:
    doc = binding_doc("shop", NS)
    kubectl("apply", "-f", "-", stdin=yaml.safe_dump(doc))
    body = wait_for(
        lambda: (
            (b := sb(kubectl, "shop")) and conditions(b).get("Ready") == ("True", "Ready") and b
        ),
        what="Ready=True",
    )
    assert conditions(body)["PolicyAllowed"] == ("True", "Allowed")
    assert body["status"]["observedGeneration"] == body["metadata"]["generation"]
    assert body["status"]["secrets"] == 1 and body["status"]["matchedPods"] == 0
    hook = wait_for(
        lambda: json.loads(
            kubectl("get", "mutatingwebhookconfiguration", WEBHOOK_CONFIGURATION, "-o", "json")
        ),
        what="webhook",
    )
    selector = hook["webhooks"][0]["namespaceSelector"]["matchExpressions"][0]
    assert NS in selector["values"] and "kube-system" not in selector["values"]
    # a matching pod, injected by the operator's own webhook, is counted
    pod = pod_doc(f"shop-{secrets.token_hex(3)}", NS, labels={"app": "shop"})
    pod["spec"]["serviceAccountName"] = "app"
    kubectl("create", "-f", "-", stdin=yaml.safe_dump(pod))
    body = wait_for(
        lambda: (b := sb(kubectl, "shop"))["status"]["matchedPods"] == 1 and b, what="matchedPods=1"
    )
    assert body["status"]["injectedPods"] == 1
    header = kubectl("get", "sb", "shop", "-n", NS).splitlines()
    # NAME READY PODS DELIVERED: injected, but its image does not exist, so nothing delivered
    assert header[1].split()[:4] == ["shop", "True", "1", "0"]
    kubectl("delete", "pod", pod["metadata"]["name"], "-n", NS, "--wait=false")
    wait_for(lambda: sb(kubectl, "shop")["status"]["matchedPods"] == 0, what="matchedPods=0")


def test_opa_denial_is_a_condition_and_keeps_the_binding_out(operator: Any, kubectl: Any) -> None:
    doc = binding_doc("preload", NS, selector={"matchLabels": {"app": "preload"}})
    doc["spec"]["secrets"][0]["keys"][0]["env"] = "LD_PRELOAD"
    kubectl("apply", "-f", "-", stdin=yaml.safe_dump(doc))
    body = wait_for(
        lambda: (
            (b := sb(kubectl, "preload"))
            and conditions(b).get("PolicyAllowed", ("",))[0] == "False"
            and b
        ),
        what="PolicyAllowed=False",
    )
    allowed = next(c for c in body["status"]["conditions"] if c["type"] == "PolicyAllowed")
    assert (
        allowed["reason"] == "Denied"
        and "LD_PRELOAD changes how programs start" in allowed["message"]
    )
    assert conditions(body)["Ready"] == ("False", "Denied")
    wait_for(
        lambda: (
            "denied by policy"
            in kubectl("get", "events", "-n", NS, "--field-selector", "involvedObject.name=preload")
        ),
        what="a Warning event on the binding",
    )


def _opa_questions() -> int:
    """Decisions OPA was asked for (POST /v1/data), from its own Prometheus metrics."""
    metrics = requests.get(f"{OPA}/metrics", timeout=5).text
    return sum(
        int(float(line.rsplit(" ", 1)[1]))
        for line in metrics.splitlines()
        if line.startswith("http_request_duration_seconds_count{")
        and 'handler="v1/data"' in line
        and 'method="post"' in line.lower()
    )


def test_opa_is_asked_again_only_when_a_binding_or_the_policy_changes(
    operator: Any, kubectl: Any
) -> None:
    """No question per binding per minute (10k bindings made 10k requests a minute): a settled
    operator only checks OPA's policy revision; a new Rego module reaches an existing binding
    without an edit, and its removal lets it in again."""
    kubectl(
        "apply",
        "-f",
        "-",
        stdin=yaml.safe_dump(binding_doc("late", NS, selector={"matchLabels": {"app": "late"}})),
    )
    wait_for(
        lambda: conditions(sb(kubectl, "late")).get("PolicyAllowed", ("",))[0] == "True",
        what="PolicyAllowed=True",
    )
    asked = _opa_questions()
    time.sleep(4 * OPA_RECHECK)  # several revision checks, and no change
    assert _opa_questions() == asked
    module = (
        "package cloudtaser.binding\n\ndeny contains msg if {\n"
        '\tinput.metadata.name == "late"\n\tmsg := "e2e: late bindings are refused"\n}\n'
    )
    requests.put(f"{OPA}/v1/policies/e2e-late", data=module, timeout=5).raise_for_status()
    try:
        body = wait_for(
            lambda: (
                (b := sb(kubectl, "late"))
                and conditions(b).get("PolicyAllowed", ("",))[0] == "False"
                and b
            ),
            what="PolicyAllowed=False after the policy changed",
        )
        allowed = next(c for c in body["status"]["conditions"] if c["type"] == "PolicyAllowed")
        assert "e2e: late bindings are refused" in allowed["message"]
    finally:
        requests.delete(f"{OPA}/v1/policies/e2e-late", timeout=5).raise_for_status()
    wait_for(
        lambda: conditions(sb(kubectl, "late")).get("PolicyAllowed", ("",))[0] == "True",
        what="PolicyAllowed=True after the module went",
    )
    kubectl("delete", "sb", "late", "-n", NS, "--ignore-not-found")


def test_an_edited_binding_changes_the_next_admission(operator: Any, kubectl: Any) -> None:
    """The operator updates its compiler in place; the plans kept per binding for admissions
    (engine.pods) must follow: once the edit's status is written, a new pod gets the new
    config, never the one built before it."""

    def injected_role(name: str) -> str:
        pod = pod_doc(f"{name}-{secrets.token_hex(3)}", NS, labels={"app": name})
        pod["spec"]["serviceAccountName"] = "app"
        kubectl("create", "-f", "-", stdin=yaml.safe_dump(pod))
        try:
            stored = json.loads(
                kubectl("get", "pod", pod["metadata"]["name"], "-n", NS, "-o", "json")
            )
        finally:
            kubectl("delete", "pod", pod["metadata"]["name"], "-n", NS, "--wait=false")
        env = {e["name"]: e.get("value") for e in stored["spec"]["containers"][0]["env"]}
        role: str = json.loads(env[CONFIG_ENV])["sources"][0]["role"]
        return role

    def settled() -> bool:
        """The operator compiled the binding's current generation (statuses are written
        after the compile, reconciling.py)."""
        body = sb(kubectl, "edit")
        return body.get("status", {}).get("observedGeneration") == body["metadata"][
            "generation"
        ] and conditions(body).get("Ready") == ("True", "Ready")

    doc = binding_doc("edit", NS)
    kubectl("apply", "-f", "-", stdin=yaml.safe_dump(doc))
    wait_for(settled, what="edit Ready")
    assert injected_role("edit") == "edit"
    doc["spec"]["vault"]["role"] = "edited"
    kubectl("apply", "-f", "-", stdin=yaml.safe_dump(doc))
    wait_for(settled, what="the edit compiled")
    assert injected_role("edit") == "edited"
    kubectl("delete", "sb", "edit", "-n", NS)


def test_conflict_names_the_other_binding(operator: Any, kubectl: Any) -> None:
    for name in ("alpha", "beta"):
        kubectl(
            "apply",
            "-f",
            "-",
            stdin=yaml.safe_dump(binding_doc(name, NS, selector={"matchLabels": {"app": "dup"}})),
        )
    pod = pod_doc(f"dup-{secrets.token_hex(3)}", NS, labels={"app": "dup"})
    pod["spec"]["serviceAccountName"] = "app"
    kubectl("create", "-f", "-", stdin=yaml.safe_dump(pod))
    body = wait_for(
        lambda: (b := sb(kubectl, "beta")) and b["status"].get("problems") and b,
        what="problems on beta",
    )
    problem = body["status"]["problems"][0]
    assert problem["path"] == "spec.secrets[0].keys[0].env"
    assert f"SecretBinding {NS}/alpha" in problem["message"]
    assert conditions(body)["Compiled"] == ("False", "Conflict")
    kubectl("delete", "pod", pod["metadata"]["name"], "-n", NS, "--wait=false")


def test_deleting_a_binding_takes_its_namespace_out_of_scope(operator: Any, kubectl: Any) -> None:
    other = f"{NS}-scope"
    kubectl(
        "apply",
        "-f",
        "-",
        stdin=yaml.safe_dump(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": other}}
        ),
    )

    def scope() -> list[str]:
        hook = json.loads(
            kubectl("get", "mutatingwebhookconfiguration", WEBHOOK_CONFIGURATION, "-o", "json")
        )
        values: list[str] = hook["webhooks"][0]["namespaceSelector"]["matchExpressions"][0].get(
            "values", []
        )
        return values

    kubectl("apply", "-f", "-", stdin=yaml.safe_dump(binding_doc("lonely", other)))
    wait_for(lambda: other in scope(), what=f"{other} in the webhook scope")
    kubectl("delete", "sb", "lonely", "-n", other)
    wait_for(lambda: other not in scope() and NS in scope(), what=f"{other} out of the scope")


def test_node_reports_become_policy_nodes_and_violations(
    operator: Any, kubectl: Any, stack: stacking.Paths, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An agent's node report (bpf/leasing.NodeReport, the Lease the agent keeps) is what the
    operator writes into each EnforcementPolicy's nodesEnforcing and violations."""
    from cloudtaser.bpf.leasing import NodeReport
    from cloudtaser.bpf.watching import PodPolicies, kubernetes_lister
    from cloudtaser.engine.reports import lease_name
    from cloudtaser.kubeapi import KubeApi

    monkeypatch.setenv("KUBECONFIG", str(stack.kubeconfig))
    kubectl("apply", "-f", "-", stdin=yaml.safe_dump(binding_doc("reported", NS)))
    node = f"report-node-{secrets.token_hex(3)}"
    pod = pod_doc(f"reported-{secrets.token_hex(3)}", NS, labels={"app": "reported"}, injected=True)
    pod["spec"]["nodeName"] = node
    pod["spec"]["serviceAccountName"] = "app"
    kubectl("create", "-f", "-", stdin=yaml.safe_dump(pod))
    policies = PodPolicies(kubernetes_lister(node))
    policies.refresh()
    entries = policies.snapshot()
    assert len(entries) == 1 and entries[0].policy.policies, entries
    names = entries[0].policy.policies

    def policy_status() -> dict[str, dict[str, Any]]:
        return {
            n: json.loads(kubectl("get", "ctep", n, "-o", "json")).get("status", {}) for n in names
        }

    before = policy_status()
    report = NodeReport(
        policies, node, "cloudtaser-system", "tracepoint", api=KubeApi.from_environment()
    )
    report.start()
    try:
        for _ in range(3):
            report.record(entries[0].uid)
        wait_for(
            lambda: all(
                s.get("nodesEnforcing", 0) >= before[n].get("nodesEnforcing", 0) + 1
                and s.get("violations", 0) == before[n].get("violations", 0) + 3
                for n, s in policy_status().items()
            ),
            timeout=45,
            what="nodes enforcing +1 and violations +3 on the pod's policies",
        )
        header = kubectl("get", "ctep", names[0]).splitlines()
        assert header[0].split()[:4] == ["NAME", "MODE", "NODES", "VIOLATIONS"]
    finally:
        report.close()
        kubectl(
            "delete", "lease", lease_name(node), "-n", "cloudtaser-system", "--ignore-not-found"
        )
        kubectl("delete", "pod", pod["metadata"]["name"], "-n", NS, "--wait=false")
    wait_for(
        lambda: all(
            s.get("violations", 0) == before[n].get("violations", 0)
            for n, s in policy_status().items()
        ),
        timeout=45,
        what="the report gone, its counts gone",
    )


def test_confidential_policy_pins_the_pod_and_says_so(operator: Any, kubectl: Any) -> None:
    """A policy requiring a confidential node: the operator's webhook adds the node selector,
    and the policy's status lists the pod it constrains. An audit policy on the same pod is
    overridden, and its status says so (a policy's own problems reach its status)."""
    name = f"e2e-confidential-{secrets.token_hex(3)}"
    policy = {
        "apiVersion": "cloudtaser.io/v1alpha1",
        "kind": "EnforcementPolicy",
        "metadata": {"name": name},
        "spec": {
            "mode": "enforce",
            "requireConfidentialNode": True,
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": NS}},
            "podSelector": {"matchLabels": {"app": "conf"}},
        },
    }
    audit = {
        **policy,
        "metadata": {"name": f"{name}-audit"},
        "spec": {**policy["spec"], "mode": "audit", "requireConfidentialNode": False},
    }
    kubectl(
        "apply",
        "-f",
        "-",
        stdin=yaml.safe_dump_all(
            [policy, audit, binding_doc("conf", NS, selector={"matchLabels": {"app": "conf"}})]
        ),
    )
    pod = pod_doc(f"conf-{secrets.token_hex(3)}", NS, labels={"app": "conf"})
    pod["spec"]["serviceAccountName"] = "app"
    try:
        wait_for(
            lambda: conditions(sb(kubectl, "conf")).get("Ready") == ("True", "Ready"),
            what="conf Ready",
        )
        time.sleep(1)  # the policy in the operator's compile too
        kubectl("create", "-f", "-", stdin=yaml.safe_dump(pod))
        stored = json.loads(kubectl("get", "pod", pod["metadata"]["name"], "-n", NS, "-o", "json"))
        assert stored["spec"]["nodeSelector"] == {"cloudtaser.io/confidential-node": "true"}
        wait_for(
            lambda: (
                json.loads(kubectl("get", "ctep", name, "-o", "json"))
                .get("status", {})
                .get("constrainedPods")
                == [f"{NS}/{pod['metadata']['name']}"]
            ),
            what="constrainedPods lists the pod",
        )
        overridden = wait_for(
            lambda: (
                json.loads(kubectl("get", "ctep", f"{name}-audit", "-o", "json"))
                .get("status", {})
                .get("problems")
            ),
            what="the audit policy's status names the override",
        )
        assert any(
            p["path"] == "spec.mode"
            and f"overridden on 1 pod(s) also selected by EnforcementPolicy {name} " in p["message"]
            for p in overridden
        ), overridden
    finally:
        kubectl(
            "delete", "pod", pod["metadata"]["name"], "-n", NS, "--wait=false", "--ignore-not-found"
        )
        kubectl("delete", "ctep", name, f"{name}-audit")


def test_lsm_policy_pins_the_pod_and_refuses_a_conflicting_one(operator: Any, kubectl: Any) -> None:
    """A policy requiring the LSM backend: the operator's webhook merges the agents' node label
    into the pod's nodeSelector, refuses a pod whose nodeSelector asks for another backend (the
    API server answers with the webhook's message), and the policy's status lists the pod."""
    name = f"e2e-lsm-{secrets.token_hex(3)}"
    policy = {
        "apiVersion": "cloudtaser.io/v1alpha1",
        "kind": "EnforcementPolicy",
        "metadata": {"name": name},
        "spec": {
            "requireBackend": "lsm",
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": NS}},
            "podSelector": {"matchLabels": {"app": "lsm"}},
        },
    }
    kubectl(
        "apply",
        "-f",
        "-",
        stdin=yaml.safe_dump_all(
            [policy, binding_doc("lsm", NS, selector={"matchLabels": {"app": "lsm"}})]
        ),
    )
    pods = []
    for suffix, selector in (
        ("ok", {"disk": "ssd"}),
        ("conflict", {"cloudtaser.io/agent-backend": "tracepoint"}),
    ):
        pod = pod_doc(f"lsm-{suffix}-{secrets.token_hex(3)}", NS, labels={"app": "lsm"})
        pod["spec"]["serviceAccountName"] = "app"
        pod["spec"]["nodeSelector"] = selector
        pods.append(pod)
    try:
        wait_for(
            lambda: conditions(sb(kubectl, "lsm")).get("Ready") == ("True", "Ready"),
            what="lsm Ready",
        )
        wait_for(
            lambda: (
                json.loads(kubectl("get", "ctep", name, "-o", "json"))["spec"].get("requireBackend")
                == "lsm"
            ),
            what="the CRD keeps requireBackend",
        )
        time.sleep(1)  # the policy in the operator's compile too
        kubectl("create", "-f", "-", stdin=yaml.safe_dump(pods[0]))
        stored = json.loads(
            kubectl("get", "pod", pods[0]["metadata"]["name"], "-n", NS, "-o", "json")
        )
        assert stored["spec"]["nodeSelector"] == {
            "disk": "ssd",
            "cloudtaser.io/agent-backend": "lsm",
        }
        with pytest.raises(StackError) as refused:  # the webhook's denial, as kubectl prints it
            kubectl("create", "-f", "-", stdin=yaml.safe_dump(pods[1]))
        message = str(refused.value)
        # The pod's policies: this one, and whichever others on the shared stack select it.
        found = re.search(
            r"denied the request: cloudtaser: spec\.nodeSelector: cloudtaser\.io/"
            r"agent-backend is 'tracepoint', but the pod's EnforcementPolicies "
            r"\(([^)]*)\) require 'lsm' there \(requireBackend\); remove that entry",
            message,
        )
        assert found and name in found.group(1).split(", "), message
        wait_for(
            lambda: (
                json.loads(kubectl("get", "ctep", name, "-o", "json"))
                .get("status", {})
                .get("constrainedPods")
                == [f"{NS}/{pods[0]['metadata']['name']}"]
            ),
            what="constrainedPods lists the pod",
        )
    finally:
        for pod in pods:
            kubectl(
                "delete",
                "pod",
                pod["metadata"]["name"],
                "-n",
                NS,
                "--wait=false",
                "--ignore-not-found",
            )
        kubectl("delete", "ctep", name)
        kubectl("delete", "sb", "lsm", "-n", NS, "--ignore-not-found")


# Last: it stops the module's operator.
def test_drift_is_repaired_and_restart_derives_the_same(
    stack: stacking.Paths, operator: Any, kubectl: Any
) -> None:
    def config() -> dict[str, Any]:
        found: dict[str, Any] = json.loads(
            kubectl("get", "mutatingwebhookconfiguration", WEBHOOK_CONFIGURATION, "-o", "json")
        )
        return found

    before = wait_for(config, what="webhook")["webhooks"]
    kubectl(
        "patch",
        "mutatingwebhookconfiguration",
        WEBHOOK_CONFIGURATION,
        "--type=json",
        "-p",
        json.dumps([{"op": "replace", "path": "/webhooks/0/failurePolicy", "value": "Ignore"}]),
    )
    wait_for(lambda: config()["webhooks"][0]["failurePolicy"] == "Fail", what="drift repaired")
    statuses = {n: sb(kubectl, n)["status"] for n in ("shop", "preload", "alpha", "beta")}
    stop(operator)
    restarted = start_operator(stack)
    try:
        time.sleep(3)
        wait_for(
            lambda: all(sb(kubectl, n)["status"] == statuses[n] for n in statuses),
            what="identical statuses after restart",
        )
        assert config()["webhooks"] == before
    finally:
        stop(restarted)
