"""Faults around the operator, against the real API server: the API server restarted while the
operator works, and the operator SIGKILLed in the middle of a reconcile. Afterwards statuses
and the MutatingWebhookConfiguration must be what they should be — checked against the facts
(Ready, observedGeneration, the webhook's namespace scope) and against what a fresh operator
derives from the same cluster (identical statuses, byte-identical webhook configuration, not
even rewritten).

Figures (convergence time after the API server is back, bindings written before the kill) are
printed; run with ``-s`` to see them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import requests
import yaml

from cloudtaser.engine.resources import GROUP, VERSION
from cloudtaser.engine.webhooks import WEBHOOK_CONFIGURATION
from cloudtaser.testbed import stacking
from cloudtaser.testbed.certificates import CertificateAuthority
from tests.harness.documents import binding_doc
from tests.harness.faults import Outage
from tests.harness.operators import stop
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.e2e
NS = "faults-operator"
NS2 = "faults-operator-b"
PORT, LIVENESS = 18480, 18481  # no other test or benchmark uses these (they may run meanwhile)


def start_operator(stack: stacking.Paths) -> subprocess.Popen[str]:
    """The real `cloudtaser operator`, returned once its readiness probe says compiled (the
    initial lists of every kind were compiled): a replacement that never got going cannot
    pass for one that agrees."""
    pair = CertificateAuthority(stack.pki).issue(
        "operator", "cloudtaser-operator", server=True, hosts=("127.0.0.1",)
    )
    process = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "cloudtaser"),
            "operator",
            "--tls-cert",
            str(pair.cert),
            "--tls-key",
            str(pair.key),
            "--ca-file",
            str(stack.ca),
            "--port",
            str(PORT),
            "--opa-url",
            f"http://127.0.0.1:{stacking.OPA_PORT}",
            "--liveness",
            f"http://127.0.0.1:{LIVENESS}/healthz",
        ],
        env={**os.environ, **stacking.environment(stack)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )

    def ready() -> bool:
        assert process.poll() is None, f"the operator exited: {stop(process)[-2000:]}"
        answer = requests.get(f"http://127.0.0.1:{LIVENESS}/healthz", timeout=2)
        return answer.ok and answer.json().get("compiled") is True

    wait_for(
        ready,
        timeout=180,
        what="the operator's readiness (compiled)",
        tolerate=(requests.RequestException, ValueError),
    )
    return process


@pytest.fixture
def cluster(stack: stacking.Paths, kubectl: Any) -> Iterator[Any]:
    """Namespaces for this module (kept: there is no controller-manager to delete them), an
    API client, and afterwards no bindings of ours and no webhook configuration left."""
    kubectl(
        "apply",
        "-f",
        "-",
        stdin=yaml.safe_dump_all(
            [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}} for n in (NS, NS2)]
        ),
    )
    api = kubernetes.client.CustomObjectsApi(
        kubernetes.config.new_client_from_config(config_file=str(stack.kubeconfig))
    )
    try:
        yield api
    finally:
        for n in (NS, NS2):
            kubectl("delete", "sb", "--all", "-n", n, "--wait=false")
        kubectl(
            "delete", "mutatingwebhookconfiguration", WEBHOOK_CONFIGURATION, "--ignore-not-found"
        )


@pytest.fixture
def operators(stack: stacking.Paths) -> Iterator[Callable[[], subprocess.Popen[str]]]:
    """Start operators; each is stopped (or reaped, if killed) afterwards, and none may have
    printed a traceback."""
    started: list[subprocess.Popen[str]] = []

    def start() -> subprocess.Popen[str]:
        process = start_operator(stack)
        started.append(process)
        return process

    yield start
    errors = [stop(p) for p in started]
    for err in errors:
        assert "Traceback" not in err, err[-3000:]


def apply(kubectl: Any, docs: list[dict[str, Any]]) -> None:
    kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(docs))


def bindings(api: Any, namespace: str) -> dict[str, dict[str, Any]]:
    items = api.list_namespaced_custom_object(GROUP, VERSION, namespace, "secretbindings")["items"]
    return {i["metadata"]["name"]: i for i in items}


def settled(body: dict[str, Any]) -> bool:
    """Status written for the current spec, and Ready."""
    status = body.get("status") or {}
    ready = {c["type"]: c["status"] for c in status.get("conditions", [])}.get("Ready")
    return status.get("observedGeneration") == body["metadata"]["generation"] and ready == "True"


def webhook(kubectl: Any) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(
        kubectl("get", "mutatingwebhookconfiguration", WEBHOOK_CONFIGURATION, "-o", "json")
    )
    return found


def scope(config: dict[str, Any]) -> list[str]:
    values: list[str] = config["webhooks"][0]["namespaceSelector"]["matchExpressions"][0].get(
        "values", []
    )
    return values


def as_bytes(config: dict[str, Any]) -> bytes:
    """The configuration as stored, in canonical bytes (resourceVersion included: an operator
    that finds it right must not even rewrite it)."""
    return json.dumps(config, sort_keys=True, separators=(",", ":")).encode()


def statuses(api: Any, names: dict[str, list[str]]) -> dict[str, Any]:
    found = {}
    for namespace, wanted in names.items():
        have = bindings(api, namespace)
        for name in wanted:
            found[f"{namespace}/{name}"] = have[name].get("status")
    return found


def inventory(kubectl: Any) -> list[str]:
    """What the webhook scope derives from, cluster-wide: every binding's and policy's spec
    version, and the namespaces (other sessions share this API server)."""
    found = json.loads(kubectl("get", "sb,ctep,ns", "-A", "-o", "json"))["items"]
    return sorted(
        f"{i['kind']}/{i['metadata'].get('namespace', '')}/{i['metadata']['name']}/"
        f"{i['metadata']['uid']}/{i['metadata'].get('generation')}"
        for i in found
    )


def fresh_operator_agrees(
    api: Any,
    kubectl: Any,
    running: subprocess.Popen[str],
    start: Callable[[], subprocess.Popen[str]],
    names: dict[str, list[str]],
) -> subprocess.Popen[str]:
    """Replace the running operator by a fresh one: it derives the same statuses and leaves the
    webhook configuration byte for byte as it was. Only when another session changed bindings
    or policies meanwhile (the stack is shared) is a difference excused, and tried once more."""
    for attempt in (1, 2):
        before = inventory(kubectl)
        want_status = statuses(api, names)
        want_config = webhook(kubectl)
        stop(running)
        running = start()
        time.sleep(3)  # compiled (start waits for that); a disagreement would be written by now
        have_status = statuses(api, names)
        have_config = webhook(kubectl)
        if (have_status, as_bytes(have_config)) == (want_status, as_bytes(want_config)):
            return running
        if attempt == 1 and inventory(kubectl) != before:
            continue
        assert have_status == want_status, "\n".join(differences(want_status, have_status))
        assert as_bytes(have_config) == as_bytes(want_config), "\n".join(
            differences(want_config, have_config)
        )
    return running


def differences(want: Any, have: Any, path: str = "") -> list[str]:
    """Where two JSON values differ, as ``path: want -> have`` lines (for failure messages)."""
    if isinstance(want, dict) and isinstance(have, dict):
        return [
            line
            for key in sorted(set(want) | set(have))
            for line in differences(want.get(key), have.get(key), f"{path}.{key}")
        ]
    if isinstance(want, list) and isinstance(have, list) and len(want) == len(have):
        return [
            line
            for i, (w, h) in enumerate(zip(want, have))
            for line in differences(w, h, f"{path}[{i}]")
        ]
    return [] if want == have else [f"{path}: {json.dumps(want)[:300]} -> {json.dumps(have)[:300]}"]


def test_api_server_restart_during_operator_work_converges(
    stack: stacking.Paths,
    kubectl: Any,
    cluster: Any,
    operators: Callable[[], subprocess.Popen[str]],
    outage: Callable[[str], Outage],
) -> None:
    api = cluster
    operator = operators()
    apply(kubectl, [binding_doc(f"r{i}", NS) for i in range(5)])
    wait_for(
        lambda: all(settled(b) for b in bindings(api, NS).values()) and len(bindings(api, NS)) == 5,
        timeout=60,
        what="5 bindings Ready before the fault",
    )
    # Work in flight: a batch lands just before the API server goes away.
    apply(kubectl, [binding_doc(f"r{i}", NS) for i in range(5, 10)])
    down = outage("kube-apiserver")
    time.sleep(2)  # the operator's watches and writes fail meanwhile
    down.restore()
    back = time.monotonic()
    # ... and more right after it is back: a spec change, a deletion, a new namespace in scope.
    changed = binding_doc("r0", NS, selector={"matchLabels": {"app": "r0-changed"}})
    apply(kubectl, [changed, binding_doc("n0", NS2)])
    kubectl("delete", "sb", "r1", "-n", NS)
    expected = {NS: [f"r{i}" for i in range(10) if i != 1], NS2: ["n0"]}

    def converged() -> bool:
        have = {n: bindings(api, n) for n in (NS, NS2)}
        config = webhook(kubectl)
        return (
            all(sorted(have[n]) == sorted(expected[n]) for n in expected)
            and all(settled(b) for n in have for b in have[n].values())
            and NS in scope(config)
            and NS2 in scope(config)
        )

    wait_for(converged, timeout=90, what="statuses and webhook scope after the API server restart")
    took = time.monotonic() - back
    r0 = bindings(api, NS)["r0"]
    assert r0["status"]["observedGeneration"] == r0["metadata"]["generation"] == 2
    assert operator.poll() is None, "the operator died with the API server"
    print(
        f"\nkube-apiserver restart: outage {down.restored_after:.1f}s (stack up {down.up_seconds:.1f}s); "
        f"statuses and webhook converged {took:.1f}s after it was back"
    )
    fresh_operator_agrees(api, kubectl, operator, operators, expected)

    # Deleting the last binding of NS2 takes it out of scope again (the watch still works).
    kubectl("delete", "sb", "n0", "-n", NS2)
    wait_for(lambda: NS2 not in scope(webhook(kubectl)), timeout=30, what=f"{NS2} out of scope")


def test_operator_killed_mid_reconcile_converges_to_the_same(
    stack: stacking.Paths,
    kubectl: Any,
    cluster: Any,
    operators: Callable[[], subprocess.Popen[str]],
) -> None:
    api = cluster
    names = [f"k{i:02d}" for i in range(60)]
    first = operators()  # ready and idle: what follows is one burst of work
    apply(kubectl, [binding_doc(n, NS) for n in names])
    written = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        written = sum(1 for b in bindings(api, NS).values() if b.get("status"))
        if written:
            break
        time.sleep(0.01)
    first.send_signal(signal.SIGKILL)  # no cleanup, no final writes
    first.wait(timeout=10)
    assert 0 < written < len(names), (
        f"not mid-reconcile: {written} of {len(names)} statuses written"
    )
    # Statuses written before the kill must not change under the killed operator any more.
    partial = sum(1 for b in bindings(api, NS).values() if b.get("status"))
    assert partial < len(names), "every status was written before the kill took effect"

    started = time.monotonic()
    second = operators()
    wait_for(
        lambda: (
            len(bindings(api, NS)) == len(names)
            and all(settled(b) for b in bindings(api, NS).values())
            and NS in scope(webhook(kubectl))
        ),
        timeout=90,
        what="every binding Ready after the restart",
    )
    took = time.monotonic() - started
    print(
        f"\noperator SIGKILLed with {partial}/{len(names)} statuses written; the restarted "
        f"operator (start included) converged in {took:.1f}s"
    )
    fresh_operator_agrees(api, kubectl, second, operators, {NS: names})
