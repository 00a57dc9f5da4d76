"""The local stack proves what later issues stand on: CRDs in a real API server, TokenRequest
tokens that log in to a real OpenBao over mTLS, and a real OPA answering from policies/."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import hvac
import hvac.exceptions
import pytest
import requests
import yaml

from cloudtaser import provisioning, stacking
from cloudtaser.errors import CloudtaserError
from tests.conftest import binding_doc

pytestmark = pytest.mark.e2e


def test_status_reports_every_component_healthy(stack: stacking.Paths) -> None:
    rows = stacking.status(stack)
    assert [r["component"] for r in rows] == ["etcd", "kube-apiserver", "openbao", "opa"]
    assert all(r["health"] == "healthy" for r in rows), rows


def test_examples_are_accepted_by_the_api_server(kubectl: Any) -> None:
    out = kubectl("apply", "-f", str(stacking.REPO / "examples"), "-f", str(stacking.REPO / "policies"))
    assert "secretbinding.cloudtaser.io/orders-db" in out
    assert "enforcementpolicy.cloudtaser.io/baseline" in out


def test_structurally_invalid_binding_is_refused_with_the_api_servers_error(kubectl: Any) -> None:
    doc = binding_doc("broken", "cloudtaser-demo")
    doc["spec"]["secrets"][0]["keys"][0]["env"] = "lower-case"
    del doc["spec"]["vault"]["role"]
    with pytest.raises(CloudtaserError) as caught:
        kubectl("apply", "-f", "-", stdin=yaml.safe_dump(doc))
    message = str(caught.value)
    assert 'The SecretBinding "broken" is invalid' in message
    assert "spec.secrets[0].keys[0].env" in message and "should match" in message
    assert "spec.vault.role: Required value" in message


def test_get_sb_shows_the_printer_columns(kubectl: Any) -> None:
    header = kubectl("get", "sb", "-A").splitlines()[0].split()
    assert header == ["NAMESPACE", "NAME", "READY", "PODS", "SECRETS", "AGE"]
    # `ep` is taken by core Endpoints in kubectl's resolution; `ctep` is ours alone.
    for name in ("enforcementpolicies", "ctep"):
        assert kubectl("get", name).splitlines()[0].split() == [
            "NAME", "MODE", "NODES", "VIOLATIONS", "AGE"]
    assert "orders-db" in kubectl("get", "cloudtaser", "-A")  # the category
    assert "demo" in kubectl("get", "secretbindings", "-n", provisioning.DEMO_NAMESPACE)


def _token(kubectl: Any, audience: str | None) -> str:
    args = ["create", "token", provisioning.DEMO_ACCOUNT, "-n", provisioning.DEMO_NAMESPACE]
    if audience:
        args += ["--audience", audience]
    token: str = kubectl(*args).strip()
    return token


def test_token_request_logs_in_over_mtls_and_reads_the_demo_secret(
    stack: stacking.Paths, kubectl: Any
) -> None:
    client = provisioning.bao_client(stack, client_cert="wrapper-demo")
    client.auth.kubernetes.login(provisioning.DEMO_ROLE, _token(kubectl, "openbao"))
    read = client.secrets.kv.v2.read_secret_version(
        provisioning.DEMO_SECRET_PATH, mount_point="secret", raise_on_deleted_version=True
    )["data"]["data"]
    root = provisioning.bao_client(stack, provisioning.bao_root_token(stack.state))
    expected = root.secrets.kv.v2.read_secret_version(
        provisioning.DEMO_SECRET_PATH, mount_point="secret", raise_on_deleted_version=True
    )["data"]["data"]
    assert read == expected and len(read["password"]) >= 24


def test_token_for_another_audience_is_refused(stack: stacking.Paths, kubectl: Any) -> None:
    client = provisioning.bao_client(stack, client_cert="wrapper-demo")
    with pytest.raises(hvac.exceptions.Forbidden):
        client.auth.kubernetes.login(provisioning.DEMO_ROLE, _token(kubectl, None))


def test_login_without_client_certificate_is_refused(stack: stacking.Paths, kubectl: Any) -> None:
    client = hvac.Client(url=f"https://{stacking.HOST}:{stacking.BAO_PORT}", verify=str(stack.ca))
    with pytest.raises(requests.exceptions.ConnectionError):  # TLS handshake fails (SSLError)
        client.auth.kubernetes.login(provisioning.DEMO_ROLE, _token(kubectl, "openbao"))


def _opa(stack: stacking.Paths, rule: str, doc: dict[str, Any]) -> Any:
    response = requests.post(
        f"http://{stacking.HOST}:{stacking.OPA_PORT}/v1/data/cloudtaser/binding/{rule}",
        json={"input": doc}, timeout=5,
    )
    response.raise_for_status()
    return response.json().get("result")


def test_opa_answers_from_policies(stack: stacking.Paths) -> None:
    assert _opa(stack, "allow", binding_doc()) is True
    assert _opa(stack, "deny", binding_doc()) == []
    bad = binding_doc()
    bad["spec"]["secrets"][0]["keys"][0]["env"] = "LD_PRELOAD"
    assert _opa(stack, "allow", bad) is None  # undefined: not allowed
    assert _opa(stack, "deny", bad) == [
        "spec.secrets[0].keys[0].env: LD_PRELOAD changes how programs start; deliver the value "
        "under another name"
    ]


def test_rego_unit_tests_pass(stack: stacking.Paths) -> None:
    rego = sorted(str(p) for p in (stacking.REPO / "policies").glob("*.rego"))
    proc = subprocess.run([str(stack.binary("opa")), "test", "-v", *rego],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASS: 4/4" in proc.stdout


def test_env_exports_point_at_the_stack(stack: stacking.Paths) -> None:
    env = stacking.environment(stack)
    assert env["BAO_ADDR"] == f"https://127.0.0.1:{stacking.BAO_PORT}"
    assert yaml.safe_load(Path(env["KUBECONFIG"]).read_text())["clusters"][0]["cluster"]["server"].startswith(
        "https://127.0.0.1:")
    assert json.loads((stack.state / "bao" / "init.json").read_text())  # present, 0600 below
    assert (stack.state / "bao" / "init.json").stat().st_mode & 0o077 == 0
