"""Two operator replicas with leader election on a Lease: both compile and serve the webhook
(ready only after the initial lists are compiled), only the leader writes statuses, and the
follower takes over when the leader stops renewing. And a rotated serving certificate.

Its own module: test_operator's replica runs without election and would write statuses too."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from cloudtaser.engine.webhooks import WEBHOOK_CONFIGURATION
from cloudtaser.testbed import stacking
from tests.harness.documents import binding_doc
from tests.harness.operators import conditions, start_operator, stop
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.e2e
NS = "operator-ha-e2e"
PORTS = {"replica-a": 18445, "replica-b": 18446}


@pytest.fixture
def replicas(stack: stacking.Paths, kubectl: Any) -> Iterator[dict[str, Any]]:
    kubectl(
        "apply",
        "-f",
        "-",
        stdin=yaml.safe_dump({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}),
    )
    kubectl("delete", "lease", "cloudtaser-operator", "-n", NS, "--ignore-not-found")
    running = {
        name: start_operator(
            stack, "--leader-elect", "--leader-namespace", NS, "--identity", name, port=port
        )
        for name, port in PORTS.items()
    }
    try:
        yield running
    finally:
        errors = {name: stop(process) for name, process in running.items()}
        kubectl("delete", "sb", "--all", "-n", NS, "--wait=false")
        kubectl("delete", "lease", "cloudtaser-operator", "-n", NS, "--ignore-not-found")
        kubectl(
            "delete", "mutatingwebhookconfiguration", WEBHOOK_CONFIGURATION, "--ignore-not-found"
        )
        for name, err in errors.items():
            assert "Traceback" not in err, f"{name}: {err[-3000:]}"


def status(kubectl: Any, name: str) -> dict[str, Any]:
    body = json.loads(kubectl("get", "sb", name, "-n", NS, "-o", "json"))
    found: dict[str, Any] = body.get("status") or {}
    return found


def test_only_the_leader_writes_and_the_follower_takes_over(
    replicas: dict[str, Any], kubectl: Any, stack: stacking.Paths
) -> None:
    for port in PORTS.values():  # every replica serves, once its initial compile is done
        wait_for(
            lambda port=port: (
                requests.get(
                    f"https://127.0.0.1:{port}/readyz", verify=str(stack.ca), timeout=10
                ).status_code
                == 200
            ),
            timeout=60,
            what=f"ready on {port}",
        )
    leader = wait_for(
        lambda: json.loads(kubectl("get", "lease", "cloudtaser-operator", "-n", NS, "-o", "json"))[
            "spec"
        ].get("holderIdentity"),
        what="a leader",
    )
    assert leader in PORTS
    follower = next(name for name in PORTS if name != leader)
    kubectl("apply", "-f", "-", stdin=yaml.safe_dump(binding_doc("first", NS)))
    wait_for(
        lambda: conditions({"status": status(kubectl, "first")}).get("Ready") == ("True", "Ready"),
        what="the leader writes first's status",
    )

    # The leader stops (not dead: its lease stays valid until it expires). The follower has
    # compiled the new binding (it serves the webhook) but must not write its status.
    os.kill(replicas[leader].pid, signal.SIGSTOP)
    try:
        kubectl("apply", "-f", "-", stdin=yaml.safe_dump(binding_doc("second", NS)))
        time.sleep(4)  # well inside the 15 s lease the stopped leader still holds
        assert status(kubectl, "second") == {}, "the follower wrote a status while not leading"
        wait_for(
            lambda: (
                json.loads(kubectl("get", "lease", "cloudtaser-operator", "-n", NS, "-o", "json"))[
                    "spec"
                ]["holderIdentity"]
                == follower
            ),
            timeout=45,
            what=f"{follower} takes the lease",
        )
        wait_for(
            lambda: (
                conditions({"status": status(kubectl, "second")}).get("Ready") == ("True", "Ready")
            ),
            what="the new leader writes second's status",
        )
    finally:
        os.kill(replicas[leader].pid, signal.SIGCONT)


def test_rotated_certificate_is_served_and_becomes_the_ca_bundle(
    stack: stacking.Paths, kubectl: Any, tmp_path: Path
) -> None:
    """cert-manager renewing the serving Secret (or `helm upgrade` generating a new one) swaps
    the mounted files: the running operator serves the new certificate and writes the new CA
    into the webhook's caBundle, without a restart."""
    import base64
    import shutil
    import subprocess
    import sys

    from cloudtaser.testbed.certificates import CertificateAuthority

    tls = tmp_path / "tls"
    tls.mkdir()

    def install(generation: str) -> Path:
        ca = CertificateAuthority(tmp_path / generation, common_name=f"webhook CA {generation}")
        pair = ca.issue("serving", "cloudtaser-operator", server=True, hosts=("127.0.0.1",))
        for source, name in (
            (pair.cert, "tls.crt"),
            (pair.key, "tls.key"),
            (ca.pair.cert, "ca.crt"),
        ):
            shutil.copy(source, tls / f".{name}")
            os.replace(tls / f".{name}", tls / name)  # each file atomically, as kubelet swaps
        return ca.pair.cert

    def bundle() -> str:
        hook = json.loads(
            kubectl("get", "mutatingwebhookconfiguration", WEBHOOK_CONFIGURATION, "-o", "json")
        )
        value: str = hook["webhooks"][0]["clientConfig"]["caBundle"]
        return value

    first = install("one")
    port = 18447
    process = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "cloudtaser"),
            "operator",
            "--tls-cert",
            str(tls / "tls.crt"),
            "--tls-key",
            str(tls / "tls.key"),
            "--ca-file",
            str(tls / "ca.crt"),
            "--port",
            str(port),
        ],
        env={**os.environ, **stacking.environment(stack)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"https://127.0.0.1:{port}/readyz"
    try:
        wait_for(
            lambda: requests.get(url, verify=str(first), timeout=10).status_code == 200,
            timeout=60,
            what="ready",
        )
        wait_for(
            lambda: bundle() == base64.b64encode(first.read_bytes()).decode(), what="first caBundle"
        )
        second = install("two")
        wait_for(
            lambda: bundle() == base64.b64encode(second.read_bytes()).decode(),
            what="the rotated CA in the caBundle",
        )
        assert requests.get(url, verify=str(second), timeout=2).status_code == 200
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(url, verify=str(first), timeout=2)
    finally:
        err = stop(process)
        kubectl(
            "delete", "mutatingwebhookconfiguration", WEBHOOK_CONFIGURATION, "--ignore-not-found"
        )
    assert "Traceback" not in err, err[-3000:]
    assert "serving certificate reloaded" in err


def test_opa_unreachable_fails_closed_for_a_new_binding(
    stack: stacking.Paths, kubectl: Any
) -> None:
    """OPA away: a binding it never judged is not compiled into the webhook scope, and its
    conditions say why (PolicyAllowed=Unknown, OPAUnavailable)."""
    kubectl(
        "apply",
        "-f",
        "-",
        stdin=yaml.safe_dump({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}),
    )
    process = start_operator(stack, "--opa-url", "http://127.0.0.1:1", port=18449)
    try:
        kubectl("apply", "-f", "-", stdin=yaml.safe_dump(binding_doc("unjudged", NS)))
        wait_for(
            lambda: (
                conditions({"status": status(kubectl, "unjudged")}).get("PolicyAllowed")
                == ("Unknown", "OPAUnavailable")
            ),
            what="PolicyAllowed=Unknown",
        )
        found = {c["type"]: c for c in status(kubectl, "unjudged")["conditions"]}
        assert "OPA unreachable at http://127.0.0.1:1" in found["PolicyAllowed"]["message"]
        assert found["Ready"]["status"] == "False"
        # the operator writes its webhook configuration once it leads (not yet, under load)
        hook = wait_for(
            lambda: json.loads(
                kubectl(
                    "get",
                    "mutatingwebhookconfiguration",
                    WEBHOOK_CONFIGURATION,
                    "--ignore-not-found",
                    "-o",
                    "json",
                )
                or "null"
            ),
            what="the operator's webhook configuration",
        )
        assert NS not in hook["webhooks"][0]["namespaceSelector"]["matchExpressions"][0].get(
            "values", []
        )
    finally:
        err = stop(process)
        kubectl("delete", "sb", "unjudged", "-n", NS, "--ignore-not-found")
        kubectl(
            "delete", "mutatingwebhookconfiguration", WEBHOOK_CONFIGURATION, "--ignore-not-found"
        )
    assert "Traceback" not in err, err[-3000:]
