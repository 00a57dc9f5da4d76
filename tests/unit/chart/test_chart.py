"""The Helm chart, offline: lint, render, every object valid against the Kubernetes 1.37
OpenAPI schemas (kubernetes-validate), the values schema refusing wrong values with its own
message, the CRDs being the very files in crds/, least-privilege RBAC, and the settings the
chart hands the operator matching the engine's InjectorSettings model."""

from __future__ import annotations

import filecmp
import json
import os
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]  # no py.typed
import pytest
import yaml

from cloudtaser.bpf.agent import parse_flags
from cloudtaser.cli import operator as operator_command
from cloudtaser.engine.plans import AGENT_BACKEND_LABEL, AGENT_CSI_DRIVER, InjectorSettings
from cloudtaser.engine.webhooks import WEBHOOK_CONFIGURATION
from cloudtaser.testbed import stacking

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "chart"
KUBERNETES = "1.37.0"  # the stack's kube-apiserver is v1.37.2 (scripts/build-stack)
NAMESPACE = "cloudtaser-system"
# Kinds with no schema in kubernetes-validate (cert-manager's CRDs are not installed here).
FOREIGN = {"cert-manager.io/v1"}


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    exe = stacking.default_bin_dir() / "helm"
    assert exe.exists(), f"{exe} missing: build it with scripts/build-stack helm"
    proc = subprocess.run(
        [str(exe), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={
            **os.environ,
            "HELM_CACHE_HOME": "/tmp/helm-cache",
            "HELM_CONFIG_HOME": "/tmp/helm-config",
            "HELM_DATA_HOME": "/tmp/helm-data",
        },
    )
    if check:
        assert proc.returncode == 0, f"helm {' '.join(args)}:\n{proc.stderr}"
    return proc


def render(*values: str, crds: bool = False) -> list[dict[str, Any]]:
    args = ["template", "ct", str(CHART), "-n", NAMESPACE, *values]
    if crds:
        args.append("--include-crds")
    return [d for d in yaml.safe_load_all(helm(*args).stdout) if d]


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[dict[str, Any]], kind: str, suffix: str = "") -> dict[str, Any]:
    found = [o for o in by_kind(objects, kind) if o["metadata"]["name"].endswith(suffix)]
    assert len(found) == 1, f"{kind} *{suffix}: {[o['metadata']['name'] for o in found]}"
    return found[0]


VARIANTS = {
    "defaults": [],
    "cert-manager": ["--set", "webhook.tls.mode=certManager"],
    "cert-manager-issuer": [
        "--set",
        "webhook.tls.mode=certManager",
        "--set",
        "webhook.tls.certManager.issuerRef.name=corp",
        "--set",
        "webhook.tls.certManager.issuerRef.kind=ClusterIssuer",
    ],
    "own-secret": ["--set", "webhook.tls.mode=secret", "--set", "webhook.tls.secretName=my-tls"],
    "opa-external": ["--set", "opa.mode=external", "--set", "opa.url=http://opa.opa:8181"],
    "opa-none-audit": ["--set", "opa.mode=none", "--set", "mode=audit"],
    "confidential": [
        "--set-string",
        "confidentialNodes.nodeSelector.confidential=true",
        "--set",
        "confidentialNodes.runtimeClassName=kata-cc",
        "--set",
        "images.operator.digest=sha256:" + "a" * 64,
        "--set",
        "imagePullSecrets[0].name=regcred",
        "--set",
        "operator.podDisruptionBudget.enabled=false",
        "--set",
        "cleanupHook.enabled=false",
    ],
}


@pytest.fixture(scope="module")
def default() -> list[dict[str, Any]]:
    return render()


def test_lint_is_clean() -> None:
    proc = helm("lint", "--strict", str(CHART))
    # The only remark helm makes is "[INFO] Chart.yaml: icon is recommended" (no icon exists yet).
    remarks = [line for line in proc.stdout.splitlines() if line.startswith("[")]
    assert remarks == ["[INFO] Chart.yaml: icon is recommended"], proc.stdout


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_object_is_valid_kubernetes(variant: str) -> None:
    objects = render(*VARIANTS[variant], crds=True)
    kinds = {o["kind"] for o in objects}
    assert {
        "CustomResourceDefinition",
        "Deployment",
        "DaemonSet",
        "Service",
        "ClusterRole",
        "ClusterRoleBinding",
        "ServiceAccount",
        "ConfigMap",
    } <= kinds
    for obj in objects:
        if obj["apiVersion"] in FOREIGN:
            assert obj["kind"] in {"Issuer", "Certificate"}
            continue
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        try:
            kubernetes_validate.validate(obj, KUBERNETES, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{variant}: {where}: {e.message} at {list(e.path)}")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["--set", "mode=block"], "at '/mode': value must be one of 'enforce', 'audit'"),
        (["--set", "operator.replicas=two"], "at '/operator/replicas': got string, want integer"),
        (["--set", "operator.replicas=0"], "at '/operator/replicas': minimum: got 0, want 1"),
        (
            ["--set", "webhook.failurePolicy=Ignore"],
            "at '/webhook/failurePolicy': value must be 'Fail'",
        ),
        (["--set", "webhook.tls.mode=vault"], "at '/webhook/tls/mode': value must be one of"),
        (
            ["--set", "webhook.tls.mode=secret"],
            "at '/webhook/tls/secretName': minLength: got 0, want 1",
        ),
        (["--set", "opa.mode=external"], "at '/opa/url': minLength: got 0, want 1"),
        (["--set", "images.agent.pullPolicy=Sometimes"], "at '/images/agent/pullPolicy'"),
        (
            ["--set", "injector.tokenExpirationSeconds=60"],
            "at '/injector/tokenExpirationSeconds': minimum",
        ),
        (["--set", "operatr.replicas=1"], "additional properties 'operatr' not allowed"),
        (["--set", "agent.flags=environ;rm"], "at '/agent/flags'"),
    ],
)
def test_wrong_values_fail_with_the_schema_message(values: list[str], message: str) -> None:
    for command in (["template", "ct"], ["lint"]):
        proc = helm(*command, str(CHART), *values, check=False)
        assert proc.returncode != 0
        assert "values don't meet the specifications of the schema" in proc.stdout + proc.stderr
        assert message in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def test_crds_are_the_generated_files(tmp_path: Path) -> None:
    link = CHART / "crds"
    assert link.is_symlink() and link.resolve() == (REPO / "crds").resolve()
    files = sorted(p.name for p in (REPO / "crds").glob("*.yaml"))
    assert files
    # what a user installs: the packaged chart carries them byte for byte
    helm("package", str(CHART), "-d", str(tmp_path))
    with tarfile.open(tmp_path / "cloudtaser-0.1.0.tgz") as tar:
        tar.extractall(tmp_path, filter="data")
    packaged = tmp_path / "cloudtaser" / "crds"
    assert sorted(p.name for p in packaged.iterdir()) == files
    match, mismatch, errors = filecmp.cmpfiles(packaged, REPO / "crds", files, shallow=False)
    assert (mismatch, errors) == ([], [])
    rego = tmp_path / "cloudtaser" / "files" / "binding.rego"
    assert rego.read_bytes() == (REPO / "policies" / "binding.rego").read_bytes()
    # and --include-crds renders exactly them
    rendered = by_kind(render(crds=True), "CustomResourceDefinition")
    assert sorted(rendered, key=lambda c: c["metadata"]["name"]) == [
        yaml.safe_load((REPO / "crds" / f).read_text()) for f in files
    ]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_rbac_has_no_wildcards(variant: str) -> None:
    for role in by_kind(render(*VARIANTS[variant]), "ClusterRole") + by_kind(
        render(*VARIANTS[variant]), "Role"
    ):
        for rule in role["rules"]:
            for field in ("verbs", "resources", "apiGroups", "resourceNames", "nonResourceURLs"):
                assert "*" not in "".join(rule.get(field, [])), (role["metadata"]["name"], rule)


def rules(role: dict[str, Any]) -> set[tuple[str, str, str, str]]:
    return {
        (g, r, v, ",".join(rule.get("resourceNames", [])))
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }


def test_operator_rbac_is_exactly_what_it_uses(default: list[dict[str, Any]]) -> None:
    got = rules(one(default, "ClusterRole", "-operator"))
    ct, ar = "cloudtaser.io", "admissionregistration.k8s.io"
    expected = {
        (ct, r, v, "")
        for r in ("secretbindings", "enforcementpolicies")
        for v in ("get", "list", "watch")
    }
    expected |= {
        (ct, f"{r}/status", "patch", "") for r in ("secretbindings", "enforcementpolicies")
    }
    expected |= {("", r, v, "") for r in ("pods", "namespaces") for v in ("get", "list", "watch")}
    expected |= {("", "events", "create", "")}
    expected |= {
        (ar, "mutatingwebhookconfigurations", v, WEBHOOK_CONFIGURATION)
        for v in ("get", "update", "patch", "delete")
    }
    expected |= {(ar, "mutatingwebhookconfigurations", v, "") for v in ("create", "list", "watch")}
    expected |= {("", "secrets", "get", "")}  # imagePullSecrets, by name
    assert got == expected
    private = rules(
        one(render("--set", "operator.readImagePullSecrets=false"), "ClusterRole", "-operator")
    )
    assert private == expected - {("", "secrets", "get", "")}
    leader = rules(one(default, "Role", "-operator-leader"))
    assert leader == {
        ("coordination.k8s.io", "leases", v, "cloudtaser-operator") for v in ("get", "update")
    } | {("coordination.k8s.io", "leases", v, "") for v in ("create", "list")}
    reports = rules(one(default, "Role", "-agent-report"))
    # NodeReport reads its Lease once, then creates or merge-patches it (bpf/cloudtaser/bpf/leasing.py)
    assert reports == {("coordination.k8s.io", "leases", v, "") for v in ("get", "create", "patch")}
    agent = rules(one(default, "ClusterRole", "-agent"))
    # the agent compiles pods, namespaces, policies and bindings; posts violation Events; keeps
    # its node's backend label (bpf/cloudtaser/bpf/labelling.py: read, then patch)
    assert agent == {
        ("", r, v, "") for r in ("pods", "namespaces") for v in ("get", "list", "watch")
    } | {
        (ct, r, v, "")
        for r in ("enforcementpolicies", "secretbindings")
        for v in ("get", "list", "watch")
    } | {("", "events", v, "") for v in ("create", "patch")} | {
        ("", "nodes", v, "") for v in ("get", "patch")
    }
    cleanup = rules(one(default, "ClusterRole", "-cleanup"))
    assert cleanup == {
        (ar, "mutatingwebhookconfigurations", v, WEBHOOK_CONFIGURATION) for v in ("get", "delete")
    }
    for binding in by_kind(default, "ClusterRoleBinding"):
        assert [s["namespace"] for s in binding["subjects"]] == [NAMESPACE]


def test_the_node_label_policy_names_the_engines_label_key(default: list[dict[str, Any]]) -> None:
    """The key is written once in Python (engine/cloudtaser/engine/plans.py); the chart's admission policy, which
    lets an agent write only that key, must spell it the same."""
    policy = one(default, "ValidatingAdmissionPolicy", "-node-label")["spec"]
    variables = {v["name"]: v["expression"] for v in policy["variables"]}
    assert variables["key"] == f"'{AGENT_BACKEND_LABEL}'"
    assert policy["matchConstraints"]["resourceRules"] == [
        {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["UPDATE"], "resources": ["nodes"]}
    ]
    name = one(default, "ValidatingAdmissionPolicy", "-node-label")["metadata"]["name"]
    binding = one(default, "ValidatingAdmissionPolicyBinding", "-node-label")["spec"]
    assert binding == {"policyName": name, "validationActions": ["Deny"]}


def test_the_chart_ships_no_webhook_configuration_but_removes_it(
    default: list[dict[str, Any]],
) -> None:
    assert not by_kind(default, "MutatingWebhookConfiguration")
    job = one(default, "Job", "-cleanup")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-delete"
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command == [
        "kubectl",
        "delete",
        "mutatingwebhookconfiguration",
        WEBHOOK_CONFIGURATION,
        "--ignore-not-found",
    ]
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == job["metadata"]["name"]
    assert not by_kind(render("--set", "cleanupHook.enabled=false"), "Job")


def test_settings_match_the_engine(default: list[dict[str, Any]]) -> None:
    data = one(default, "ConfigMap", "-settings")["data"]
    settings = InjectorSettings.model_validate(json.loads(data["injector.json"]))
    # installed into cloudtaser-system with default values: exactly the engine's defaults
    assert settings == InjectorSettings()
    assert data["mode"] == "enforce" and data["failurePolicy"] == "Fail"
    custom = one(
        render("--set", "images.wrapper.tag=9.9.9", "--set", "injector.agentSocketDir=/run/ct"),
        "ConfigMap",
        "-settings",
    )["data"]
    parsed = InjectorSettings.model_validate(json.loads(custom["injector.json"]))
    assert parsed.wrapper_image == "ghcr.io/cloudtaser/wrapper-bundle:9.9.9"
    assert parsed.agent_socket_dir == "/run/ct"


def test_operator_deployment(default: list[dict[str, Any]]) -> None:
    deployment = one(default, "Deployment", "-operator")
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "ghcr.io/cloudtaser/operator:0.1.0"
    assert container["command"] == ["cloudtaser", "operator"]
    known = {opt for param in operator_command.params for opt in param.opts}
    flags = {arg.split("=", 1)[0] for arg in container["args"]}
    assert flags <= known, flags - known
    args = dict((arg.split("=", 1) + [""])[:2] for arg in container["args"])
    assert "--leader-elect" in args and args["--leader-namespace"] == NAMESPACE
    assert {e["name"] for e in container["env"]} >= {"POD_NAME"}
    assert container["readinessProbe"]["httpGet"] == {
        "path": "/readyz",
        "port": "webhook",
        "scheme": "HTTPS",
    }
    private = one(render("--set", "operator.readImagePullSecrets=false"), "Deployment", "-operator")
    assert "--no-image-pull-secrets" in private["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args["--webhook-service"] == f"{NAMESPACE}/ct-cloudtaser-operator:443"
    assert args["--opa-url"] == "http://127.0.0.1:8181"
    assert args["--port"] == str(container["ports"][0]["containerPort"])
    service = one(default, "Service", "-operator")
    assert service["spec"]["ports"] == [
        {"name": "https", "port": 443, "targetPort": "webhook", "protocol": "TCP"}
    ]
    assert (
        service["spec"]["selector"].items()
        <= deployment["spec"]["template"]["metadata"]["labels"].items()
    )
    pdb = one(default, "PodDisruptionBudget", "-operator")
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    # OPA sidecar serving the repository's own policy
    opa = [c for c in pod["containers"] if c["name"] == "opa"]
    assert len(opa) == 1
    policies = one(default, "ConfigMap", "-policies")["data"]["binding.rego"]
    assert policies == (REPO / "policies" / "binding.rego").read_text()
    external = one(
        render("--set", "opa.mode=external", "--set", "opa.url=http://opa:8181"),
        "Deployment",
        "-operator",
    )["spec"]["template"]["spec"]
    assert [c["name"] for c in external["containers"]] == ["operator"]
    assert "--opa-url=http://opa:8181" in external["containers"][0]["args"]
    none = one(render("--set", "opa.mode=none"), "Deployment", "-operator")["spec"]["template"][
        "spec"
    ]
    assert not [a for a in none["containers"][0]["args"] if a.startswith("--opa-url")]


def test_generated_tls_is_a_chain_for_the_service(default: list[dict[str, Any]]) -> None:
    import base64

    from cryptography import x509

    secret = one(default, "Secret", "-webhook-tls")
    assert secret["type"] == "kubernetes.io/tls"
    cert = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    ca = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["ca.crt"]))
    cert.verify_directly_issued_by(ca)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert f"ct-cloudtaser-operator.{NAMESPACE}.svc" in names.get_values_for_type(x509.DNSName)
    # user-provided Secret and cert-manager: no generated Secret, the Deployment mounts theirs
    own = render("--set", "webhook.tls.mode=secret", "--set", "webhook.tls.secretName=my-tls")
    assert not by_kind(own, "Secret")
    volumes = one(own, "Deployment", "-operator")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "tls", "secret": {"secretName": "my-tls"}} in volumes
    managed = render("--set", "webhook.tls.mode=certManager")
    certificate = [c for c in by_kind(managed, "Certificate") if not c["spec"].get("isCA")]
    assert [c["spec"]["secretName"] for c in certificate] == ["ct-cloudtaser-webhook-tls"]


def test_agent_daemonset(default: list[dict[str, Any]]) -> None:
    daemonset = one(default, "DaemonSet", "-agent")
    pod = daemonset["spec"]["template"]["spec"]
    assert pod["hostPID"] is True
    assert pod["priorityClassName"] == "system-node-critical"
    assert pod["tolerations"] == [{"operator": "Exists"}]
    container = pod["containers"][0]
    assert container["securityContext"]["privileged"] is True
    assert container["command"] == ["python", "-m", "cloudtaser.bpf.agent"]
    args = dict(arg.split("=", 1) for arg in container["args"])
    assert args["--socket"] == "/run/cloudtaser/agent.sock"
    parse_flags(args["--flags"])  # the agent's own parser accepts it
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    host = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    kubelet = "/var/lib/kubelet"
    assert host == {
        "bpffs": "/sys/fs/bpf",
        "securityfs": "/sys/kernel/security",
        "tracefs": "/sys/kernel/tracing",
        "btf": "/sys/kernel/btf",
        "socket-dir": "/run/cloudtaser",
        "kubelet-pods": f"{kubelet}/pods",
        "csi-plugin-dir": f"{kubelet}/plugins/{AGENT_CSI_DRIVER}",
        "csi-registration-dir": f"{kubelet}/plugins_registry",
    }
    assert mounts["btf"]["readOnly"] is True
    agent_paths = {
        "/sys/fs/bpf",
        "/sys/kernel/security",
        "/sys/kernel/tracing",
        "/sys/kernel/btf",
        "/run/cloudtaser",
    }
    assert {m["mountPath"] for m in mounts.values()} == agent_paths | {"/etc/cloudtaser/settings"}
    # the CSI node plugin: the socket directory it publishes, the kubelet's directories at the
    # same paths (the endpoint it registers is the kubelet's path), pods/ Bidirectional
    csi = next(c for c in pod["containers"] if c["name"] == "csi")
    assert csi["image"] == container["image"] and csi["command"] == [
        "/usr/lib/cloudtaser/cloudtaser-csi"
    ]
    csi_args = dict(arg.split("=", 1) for arg in csi["args"])
    assert csi_args == {
        "--kubelet-dir": kubelet,
        "--source": "/run/cloudtaser",
        "--node": "$(NODE_NAME)",
    }
    csi_mounts = {m["name"]: m for m in csi["volumeMounts"]}
    assert {n: m["mountPath"] for n, m in csi_mounts.items()} == {
        n: host[n] for n in ("socket-dir", "kubelet-pods", "csi-plugin-dir", "csi-registration-dir")
    }
    assert csi_mounts["kubelet-pods"]["mountPropagation"] == "Bidirectional"
    assert csi_mounts["socket-dir"]["readOnly"] is True  # it binds from it, never writes
    driver = one(default, "CSIDriver", AGENT_CSI_DRIVER)
    assert driver["metadata"]["name"] == AGENT_CSI_DRIVER
    assert (
        driver["spec"]["volumeLifecycleModes"] == ["Ephemeral"]
        and driver["spec"]["attachRequired"] is False
    )
    go = (REPO / "bpf" / "csi" / "plugin.go").read_text()
    assert f'const Driver = "{AGENT_CSI_DRIVER}"' in go  # one name: engine, chart, plugin
    assert {e["name"]: e.get("value") for e in container["env"]}["CLOUDTASER_SETTINGS"] == (
        "/etc/cloudtaser/settings/injector.json"
    )  # the operator's settings: one Plan
    confidential = one(render(*VARIANTS["confidential"]), "DaemonSet", "-agent")["spec"][
        "template"
    ]["spec"]
    assert confidential["nodeSelector"] == {"confidential": "true"}
