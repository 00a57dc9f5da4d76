"""The local stack proves what later issues stand on: CRDs in a real API server, TokenRequest
tokens that log in to a real OpenBao over mTLS, and a real OPA answering from policies/."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shlex
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hvac
import hvac.exceptions
import pytest
import requests
import yaml

from cloudtaser.errors import CloudtaserError
from cloudtaser.testbed import noding, provisioning, stacking
from tests.harness.documents import binding_doc

pytestmark = pytest.mark.e2e


def test_status_reports_every_component_healthy(stack: stacking.Paths) -> None:
    rows = stacking.status(stack) + noding.status(stack)
    assert [r["component"] for r in rows] == [
        "etcd",
        "kube-apiserver",
        "openbao",
        "opa",
        "registry",
        "forwarder",
        "containerd",
        "kube-controller-manager",
        "kube-scheduler",
        "kubelet",
        f"node/{stacking.NODE_NAME}",
    ]
    assert all(r["health"] == "healthy" for r in rows), rows


def test_examples_are_accepted_by_the_api_server(kubectl: Any) -> None:
    """Applied for real, except the examples' Pods (checked by the server, not created: on the
    node one would run without the chart, as `kubectl apply -f examples/` before the install)."""
    out = kubectl(
        "apply",
        "-f",
        str(stacking.REPO / "examples"),
        "-f",
        str(stacking.REPO / "policies"),
        "--dry-run=server",
    )
    assert "pod/demo-app created (server dry run)" in out
    docs = [
        d
        for f in sorted((stacking.REPO / "examples").glob("*.yaml"))
        for d in yaml.safe_load_all(f.read_text())
        if d and d["kind"] != "Pod"
    ]
    out = kubectl(
        "apply", "-f", "-", "-f", str(stacking.REPO / "policies"), stdin=yaml.safe_dump_all(docs)
    )
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
    assert header == [
        "NAMESPACE",
        "NAME",
        "READY",
        "PODS",
        "DELIVERED",
        "SECRETS",
        "AGE",
        "MESSAGE",
    ]
    # `ep` is taken by core Endpoints in kubectl's resolution; `ctep` is ours alone.
    for name in ("enforcementpolicies", "ctep"):
        assert kubectl("get", name).splitlines()[0].split() == [
            "NAME",
            "MODE",
            "NODES",
            "VIOLATIONS",
            "AGE",
        ]
    assert "orders-db" in kubectl("get", "cloudtaser", "-A")  # the category
    assert "demo" in kubectl("get", "secretbindings", "-n", provisioning.DEMO_NAMESPACE)


def test_the_demo_app_team_manages_bindings_in_its_namespace_only(stack: stacking.Paths) -> None:
    """RBAC of the demo: the app team's group may manage SecretBindings in the demo namespace,
    not elsewhere, and may not touch the cluster-scoped EnforcementPolicies."""

    def can(*args: str) -> bool:
        proc = subprocess.run(  # kubectl exits 1 for "no": read the answer, not the code
            [
                str(stack.binary("kubectl")),
                "auth",
                "can-i",
                *args,
                "--as",
                "alice",
                "--as-group",
                provisioning.DEMO_TEAM_GROUP,
            ],
            env={**os.environ, **stacking.environment(stack)},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.stdout.strip() in ("yes", "no"), proc.stderr
        return proc.stdout.strip() == "yes"

    assert can("create", "secretbindings.cloudtaser.io", "-n", provisioning.DEMO_NAMESPACE)
    assert can("delete", "secretbindings.cloudtaser.io", "-n", provisioning.DEMO_NAMESPACE)
    assert can("list", "pods", "-n", provisioning.DEMO_NAMESPACE)
    assert not can("create", "secretbindings.cloudtaser.io", "-n", "payments")
    assert not can("create", "enforcementpolicies.cloudtaser.io")
    assert not can(
        "patch",
        "secretbindings.cloudtaser.io",
        "--subresource",
        "status",
        "-n",
        provisioning.DEMO_NAMESPACE,
    )
    assert not can("get", "secrets", "-n", provisioning.DEMO_NAMESPACE)


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
        json={"input": doc},
        timeout=5,
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
    proc = subprocess.run(
        [str(stack.binary("opa")), "test", "-v", *rego], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASS: 4/4" in proc.stdout


def test_env_exports_point_at_the_stack(stack: stacking.Paths) -> None:
    env = stacking.environment(stack)
    assert env["BAO_ADDR"] == f"https://127.0.0.1:{stacking.BAO_PORT}"
    assert yaml.safe_load(Path(env["KUBECONFIG"]).read_text())["clusters"][0]["cluster"][
        "server"
    ].startswith("https://127.0.0.1:")
    assert json.loads((stack.state / "bao" / "init.json").read_text())  # present, 0600 below
    assert (stack.state / "bao" / "init.json").stat().st_mode & 0o077 == 0


def _cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "cloudtaser"
    return subprocess.run(
        [str(exe), "stack", *args], capture_output=True, text=True, timeout=60, check=check
    )


def test_status_exits_zero_only_when_all_are_healthy(stack: stacking.Paths, tmp_path: Path) -> None:
    running = _cli("status", "-o", "json")
    assert {r["health"] for r in json.loads(running.stdout)} == {"healthy"}
    # The same command against a state directory where nothing runs: every row says so, exit 1.
    stopped = _cli("status", "--state-dir", str(tmp_path / "none"), "-o", "json", check=False)
    assert stopped.returncode == 1, stopped.stderr
    assert [(r["component"], r["health"]) for r in json.loads(stopped.stdout)] == [
        (name, "stopped")
        for name in (
            "etcd",
            "kube-apiserver",
            "openbao",
            "opa",
            "registry",
            "forwarder",
            "containerd",
            "kube-controller-manager",
            "kube-scheduler",
            "kubelet",
        )
    ]


def test_env_prints_exports_a_shell_can_use(stack: stacking.Paths) -> None:
    """`eval "$(cloudtaser stack env)"` in a clean shell: kubectl and bao find the stack (bao
    over mTLS with the printed client certificate), and OPA_ADDR answers."""
    exports = _cli("env").stdout
    assert all(line.startswith("export ") for line in exports.splitlines()), exports
    script = (
        f"eval {shlex.quote(exports)} && kubectl get namespace {provisioning.DEMO_NAMESPACE} -o name"
        ' && bao status -format=json && curl -sf "$OPA_ADDR/health"'
    )
    proc = subprocess.run(
        ["bash", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"HOME": os.environ.get("HOME", "/"), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"namespace/{provisioning.DEMO_NAMESPACE}"
    status = json.loads("\n".join(lines[1:-1]))
    assert status["initialized"] is True and status["sealed"] is False
    assert json.loads(lines[-1]) == {}


@pytest.fixture
def throwaway_bao(tmp_path: Path) -> Iterator[tuple[stacking.Paths, stacking.Component]]:
    """A second, uninitialised OpenBao from the stack's own binary and config, on a free port
    in a temporary state directory, as the ``openbao`` component of that directory."""
    paths = stacking.Paths(state=tmp_path / "state", bin=stacking.default_bin_dir())
    assert paths.binary("bao").exists(), f"no bao in {paths.bin}: run scripts/build-stack"
    stacking.ensure_pki(paths)
    with socket.socket() as s:
        s.bind((stacking.HOST, 0))
        port = s.getsockname()[1]
    address = f"https://{stacking.HOST}:{port}"
    config = json.loads(stacking.bao_config(paths))
    config["listener"][0]["tcp"]["address"] = f"{stacking.HOST}:{port}"
    config["api_addr"] = address
    (paths.state / "bao").mkdir(parents=True, exist_ok=True)
    (paths.state / "bao" / "config.json").write_text(json.dumps(config))
    real = stacking.component("openbao")
    component = dataclasses.replace(
        real,
        address=address,
        argv=lambda p: [
            str(p.binary("bao")),
            "server",
            f"-config={p.state / 'bao' / 'config.json'}",
        ],
        health=functools.partial(stacking.bao_health, address=address),
        answering=functools.partial(stacking.bao_health, address=address, answering=True),
    )
    stacking._start(paths, component)
    try:
        yield paths, component
    finally:
        stacking.stop(paths, component, lambda m: None, timeout=5)
        assert stacking.running_pid(paths, component) is None


def test_status_says_sealed_and_not_initialised_while_up_still_waits_for_them(
    throwaway_bao: tuple[stacking.Paths, stacking.Component],
) -> None:
    paths, component = throwaway_bao
    # up() waits only until it answers: an uninitialised server is good enough to provision.
    stacking.wait_healthy(paths, component, timeout=60)
    assert stacking.status(paths, [component])[0]["health"] == "not initialised"
    client = hvac.Client(
        url=component.address,
        verify=str(paths.ca),
        cert=(str(paths.cert("admin").cert), str(paths.cert("admin").key)),
    )
    key = client.sys.initialize(secret_shares=1, secret_threshold=1)["keys_base64"][0]
    assert stacking.status(paths, [component])[0]["health"] == "sealed"
    stacking.wait_healthy(paths, component, timeout=10)  # still answering for up()
    client.sys.submit_unseal_key(key)
    assert stacking.status(paths, [component])[0]["health"] == "healthy"


def test_the_stacks_openbao_is_checked_strictly_and_waited_for_leniently() -> None:
    """The wiring of the real component: status uses the strict check, up() the lenient one
    (both are exercised against a real server above)."""
    real = stacking.component("openbao")
    assert real.health is stacking.bao_health and real.answering is not None
