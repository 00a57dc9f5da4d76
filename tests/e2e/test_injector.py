"""The real API server calls the webhook over HTTPS: pods come back mutated, and the scope
keeps pods outside it away from the webhook even when it is down."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from cloudtaser.engine.plans import CONFIG_ENV, INJECTED_ANNOTATION, WrapperConfig
from cloudtaser.engine.webhooks import WEBHOOK_CONFIGURATION
from cloudtaser.testbed import stacking
from cloudtaser.testbed.certificates import CertificateAuthority

pytestmark = pytest.mark.e2e
PORT = 18443
URL = f"https://127.0.0.1:{PORT}/mutate-v1-pod"
REPO = stacking.REPO
STATE = [str(REPO / "examples"), str(REPO / "policies")]


def _pod(name: str, namespace: str = "payments", inject: bool = True) -> dict[str, Any]:
    pod: dict[str, Any] = yaml.safe_load(
        (REPO / "examples" / "pods" / "postgres-pod.yaml").read_text()
    )
    pod["metadata"].update(name=name, namespace=namespace)
    if not inject:
        pod["metadata"]["annotations"] = {}
    return pod


@pytest.fixture(scope="module")
def webhook(stack: stacking.Paths, kubectl: Any) -> Iterator[subprocess.Popen[str]]:
    pair = CertificateAuthority(stack.pki).issue(
        "injector", "cloudtaser-injector", server=True, hosts=("127.0.0.1",)
    )
    exe = Path(sys.executable).parent / "cloudtaser"
    server = subprocess.Popen(
        [
            str(exe),
            "injector",
            "serve",
            *STATE,
            "--tls-cert",
            str(pair.cert),
            "--tls-key",
            str(pair.key),
            "--port",
            str(PORT),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if requests.get(
                f"https://127.0.0.1:{PORT}/healthz", verify=str(stack.ca), timeout=1
            ).ok:
                break
        except requests.RequestException:
            time.sleep(0.2)
    config = subprocess.run(
        [str(exe), "injector", "webhook-config", *STATE, "--url", URL, "--ca-file", str(stack.ca)],
        capture_output=True,
        text=True,
        check=True,
    )
    kubectl("apply", "-f", "-", stdin=config.stdout)
    kubectl(
        "apply",
        "-f",
        "-",
        stdin=yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": "orders", "namespace": "payments"},
            }
        ),
    )
    try:
        yield server
    finally:
        kubectl(
            "delete", "mutatingwebhookconfiguration", WEBHOOK_CONFIGURATION, "--ignore-not-found"
        )
        kubectl("delete", "pods", "-n", "payments", "-l", "app=orders", "--wait=false")
        server.terminate()
        server.communicate(timeout=10)


def _create(kubectl: Any, pod: dict[str, Any]) -> dict[str, Any]:
    kubectl("create", "-f", "-", stdin=yaml.safe_dump(pod))
    created: dict[str, Any] = json.loads(
        kubectl(
            "get", "pod", pod["metadata"]["name"], "-n", pod["metadata"]["namespace"], "-o", "json"
        )
    )
    return created


def test_selected_pod_is_stored_mutated(webhook: Any, kubectl: Any) -> None:
    pod = _create(kubectl, _pod(f"orders-{secrets.token_hex(3)}"))
    assert INJECTED_ANNOTATION in pod["metadata"]["annotations"]
    orders, metrics = pod["spec"]["containers"]
    assert orders["command"] == ["/cloudtaser/wrapper", "--", "/usr/local/bin/orders"]
    config = WrapperConfig.model_validate_json(
        next(e["value"] for e in orders["env"] if e["name"] == CONFIG_ENV)
    )
    assert config.sources[0].binding == "payments/orders-db"
    assert "capabilities" not in orders["securityContext"]  # no capability added (Pod Security)
    assert orders["securityContext"]["allowPrivilegeEscalation"] is False
    assert metrics["command"] == ["/exporter"]  # the binding names only "orders"
    assert pod["spec"]["initContainers"][0]["name"] == "cloudtaser-init"
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert "medium" not in volumes["cloudtaser-bundle"]["emptyDir"]  # disk: no RAM per pod
    token = volumes["cloudtaser-token"]["projected"]["sources"][0]["serviceAccountToken"]
    assert token["audience"] == "openbao"


def test_pod_without_the_annotation_is_untouched(webhook: Any, kubectl: Any) -> None:
    pod = _create(kubectl, _pod(f"orders-{secrets.token_hex(3)}", inject=False))
    assert INJECTED_ANNOTATION not in pod["metadata"].get("annotations", {})
    assert pod["spec"]["containers"][0]["command"] == ["/usr/local/bin/orders"]


def test_webhook_down_refuses_only_pods_in_scope(
    webhook: subprocess.Popen[str], kubectl: Any
) -> None:
    webhook.terminate()
    webhook.communicate(timeout=10)
    with pytest.raises(Exception, match="failed calling webhook"):
        kubectl("create", "-f", "-", stdin=yaml.safe_dump(_pod(f"orders-{secrets.token_hex(3)}")))
    outside = _pod(f"plain-{secrets.token_hex(3)}", namespace="default")
    outside["spec"]["serviceAccountName"] = "default"
    # STATE holds bindings for payments and cloudtaser-demo only: default is outside the
    # webhook's scope (annotated or not)
    created = _create(kubectl, outside)
    assert created["metadata"]["name"] == outside["metadata"]["name"]
    kubectl("delete", "pod", outside["metadata"]["name"], "-n", "default", "--wait=false")
