"""Provisioning the local stack: OpenBao initialised and configured, the product installed.

OpenBao: initialised once (one unseal key; the key and root token stay in the state directory,
mode 0600 — a local test bed, not a production pattern), unsealed on every start, KV v2 at
``secret/``, the Kubernetes auth method checking tokens against this API server through a
reviewer service account bound to ``system:auth-delegator``, and a demo role whose tokens
must carry the audience ``openbao``. The demo secret's value is generated here and written
only to OpenBao; nothing prints it.

Kubernetes: the generated CRDs, the demo namespace and service account, the examples (but
their Pods: ``kubectl apply -f examples/`` after ``cloudtaser stack install`` creates those,
once the webhook exists), the policies, a demo SecretBinding that points at this OpenBao from
this host (tests run wrappers as host processes), and what a pod needs to reach the same
OpenBao from the node: the ``openbao`` Service whose address the node forwards to it, and in
the demo namespace its CA (ConfigMap ``openbao-ca``) and the wrapper's client certificate
(Secret ``openbao-client``; a credential for mutual TLS, never a delivered secret).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hvac
import hvac.exceptions
import requests
import yaml

from cloudtaser.engine.resources import SecretBinding
from cloudtaser.errors import PermanentError, TemporaryError
from cloudtaser.testbed.stacking import (
    APISERVER_PORT,
    BAO_PORT,
    HOST,
    OPENBAO_SERVICE_IP,
    OPENBAO_SERVICE_PORT,
    REPO,
    Paths,
    StackError,
    environment,
)

DEMO_NAMESPACE = "cloudtaser-demo"
DEMO_POD_SECURITY = {
    f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "warn", "audit")
}
DEMO_ACCOUNT = "demo"
DEMO_ROLE = "demo"
# The demo's app team: may manage SecretBindings in the demo namespace, nothing cluster-wide
# (EnforcementPolicies are cluster-scoped and stay with the platform team).
DEMO_TEAM_GROUP = "cloudtaser-demo:app-team"
DEMO_TEAM_ROLE = "cloudtaser-secretbinding-editor"
DEMO_SECRET_PATH = "cloudtaser-demo/app"
# What examples/demo-app.yaml's binding names: the stack provisions both in the demo namespace.
OPENBAO_CA_CONFIGMAP = "openbao-ca"
OPENBAO_CLIENT_SECRET = "openbao-client"
SYSTEM_NAMESPACE = "cloudtaser-system"
REVIEWER = "openbao-token-reviewer"
AUDIENCE = "openbao"


def kubectl(p: Paths, *args: str, stdin: str | None = None) -> str:
    """Run kubectl against the stack; errors carry kubectl's own message."""
    env = {**os.environ, **environment(p)}
    proc = subprocess.run(
        [str(p.binary("kubectl")), *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    if proc.returncode != 0:
        raise StackError(f"kubectl {' '.join(args[:3])}: {proc.stderr.strip()}")
    return proc.stdout


def apply_objects(p: Paths, objects: list[dict[str, Any]]) -> None:
    kubectl(p, "apply", "-f", "-", stdin=yaml.safe_dump_all(objects, sort_keys=False))


def bao_client(p: Paths, token: str | None = None, client_cert: str = "admin") -> hvac.Client:
    pair = p.cert(client_cert)
    return hvac.Client(
        url=f"https://{HOST}:{BAO_PORT}",
        token=token,
        cert=(str(pair.cert), str(pair.key)),
        verify=str(p.ca),
        timeout=10,
    )


def _init_and_unseal(p: Paths) -> str:
    client = bao_client(p)
    if not client.sys.is_initialized():
        result = client.sys.initialize(secret_shares=1, secret_threshold=1)
        p.bao_init.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(p.bao_init, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(
                {"unseal_key": result["keys_base64"][0], "root_token": result["root_token"]}, f
            )
    try:
        init = json.loads(p.bao_init.read_text())
    except (OSError, ValueError) as e:
        raise StackError(
            f"OpenBao is initialised but {p.bao_init} is unreadable ({e}); "
            f"remove {p.state} and run `cloudtaser stack up` again"
        ) from e
    if client.sys.is_sealed():
        client.sys.submit_unseal_key(init["unseal_key"])
    token: str = init["root_token"]
    return token


def _reviewer_token(p: Paths) -> str:
    apply_objects(
        p,
        [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": SYSTEM_NAMESPACE}},
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": REVIEWER, "namespace": SYSTEM_NAMESPACE},
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": f"{REVIEWER}-auth-delegator"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": "system:auth-delegator",
                },
                "subjects": [
                    {"kind": "ServiceAccount", "name": REVIEWER, "namespace": SYSTEM_NAMESPACE}
                ],
            },
        ],
    )
    return kubectl(
        p, "create", "token", REVIEWER, "-n", SYSTEM_NAMESPACE, "--duration", "48h"
    ).strip()


def configure_openbao(p: Paths, log: Callable[[str], None]) -> None:
    try:
        root = _init_and_unseal(p)
        client = bao_client(p, root)
        if "secret/" not in client.sys.list_mounted_secrets_engines()["data"]:
            client.sys.enable_secrets_engine("kv", path="secret", options={"version": "2"})
        if "kubernetes/" not in client.sys.list_auth_methods()["data"]:
            client.sys.enable_auth_method("kubernetes", path="kubernetes")
        client.auth.kubernetes.configure(
            kubernetes_host=f"https://{HOST}:{APISERVER_PORT}",
            kubernetes_ca_cert=p.ca.read_text(),
            token_reviewer_jwt=_reviewer_token(p),
            disable_local_ca_jwt=True,
            mount_point="kubernetes",
        )
        client.sys.create_or_update_policy(
            name=DEMO_ROLE,
            policy=json.dumps(
                {"path": {f"secret/data/{DEMO_NAMESPACE}/*": {"capabilities": ["read"]}}}
            ),
        )
        client.auth.kubernetes.create_role(
            name=DEMO_ROLE,
            bound_service_account_names=[DEMO_ACCOUNT],
            bound_service_account_namespaces=[DEMO_NAMESPACE],
            audience=AUDIENCE,
            policies=[DEMO_ROLE],
            ttl="10m",
            mount_point="kubernetes",
        )
        try:
            client.secrets.kv.v2.read_secret_version(
                DEMO_SECRET_PATH, mount_point="secret", raise_on_deleted_version=True
            )
            log("openbao: demo secret already present (kept)")
        except hvac.exceptions.InvalidPath:
            client.secrets.kv.v2.create_or_update_secret(
                DEMO_SECRET_PATH,
                mount_point="secret",
                secret={"username": "demo", "password": secrets.token_urlsafe(24)},
            )
            log(f"openbao: generated demo secret at secret/{DEMO_SECRET_PATH}")
    except requests.RequestException as e:
        raise TemporaryError(f"OpenBao at https://{HOST}:{BAO_PORT} unreachable: {e}") from e
    except hvac.exceptions.VaultError as e:
        raise PermanentError(f"OpenBao refused provisioning: {e}") from e
    log("openbao: kv-v2 at secret/, kubernetes auth, role demo (audience openbao) configured")


def demo_binding(p: Paths) -> SecretBinding:
    """The demo SecretBinding: the demo secret into pods labelled app=demo, via this OpenBao."""
    client = p.cert("wrapper-demo")
    return SecretBinding.model_validate(
        {
            "apiVersion": "cloudtaser.io/v1alpha1",
            "kind": "SecretBinding",
            "metadata": {"name": "demo", "namespace": DEMO_NAMESPACE},
            "spec": {
                "selector": {"matchLabels": {"app": "demo"}},
                "vault": {
                    "address": f"https://{HOST}:{BAO_PORT}",
                    "role": DEMO_ROLE,
                    "tls": {
                        "caFile": str(p.ca),
                        "clientCertificate": {
                            "source": "file",
                            "certFile": str(client.cert),
                            "keyFile": str(client.key),
                        },
                    },
                },
                "secrets": [
                    {
                        "path": DEMO_SECRET_PATH,
                        "keys": [
                            {
                                "key": "password",
                                "env": "DEMO_PASSWORD",
                                "file": "/etc/demo/password",
                                "sdk": "demo-password",
                            },
                            {"key": "username", "env": "DEMO_USER"},
                        ],
                    }
                ],
            },
        }
    )


def install_product(p: Paths, log: Callable[[str], None]) -> None:
    kubectl(p, "apply", "-f", str(REPO / "crds"))
    kubectl(
        p,
        "wait",
        "--for",
        "condition=established",
        "--timeout",
        "60s",
        "crd/secretbindings.cloudtaser.io",
        "crd/enforcementpolicies.cloudtaser.io",
    )
    apply_objects(
        p,
        [
            # Pod Security "restricted", as a hardened cluster sets it: the demo's app runs there
            # injected (the patch adds no hostPath and no capability).
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": DEMO_NAMESPACE, "labels": DEMO_POD_SECURITY},
            },
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": DEMO_ACCOUNT, "namespace": DEMO_NAMESPACE},
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": DEMO_TEAM_ROLE, "namespace": DEMO_NAMESPACE},
                "rules": [
                    {
                        "apiGroups": ["cloudtaser.io"],
                        "resources": ["secretbindings"],
                        "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"],
                    },
                    {
                        "apiGroups": ["cloudtaser.io"],
                        "resources": ["secretbindings/status"],
                        "verbs": ["get"],
                    },
                    {
                        "apiGroups": [""],
                        "resources": ["pods", "events"],
                        "verbs": ["get", "list", "watch"],
                    },
                ],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": DEMO_TEAM_ROLE, "namespace": DEMO_NAMESPACE},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Role",
                    "name": DEMO_TEAM_ROLE,
                },
                "subjects": [
                    {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "Group",
                        "name": DEMO_TEAM_GROUP,
                    }
                ],
            },
        ],
    )
    binding = demo_binding(p).model_dump(mode="json", by_alias=True, exclude_none=True)
    demo_file = p.state / "demo" / "secretbinding.yaml"
    demo_file.parent.mkdir(parents=True, exist_ok=True)
    demo_file.write_text(yaml.safe_dump(binding, sort_keys=False))
    kubectl(p, "apply", "-f", str(demo_file))
    access = pod_access(p)
    apply_objects(p, [o for o in access if o["kind"] != "Secret"])
    # server-side: client-side apply would copy the key into an annotation
    kubectl(
        p,
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        "-",
        stdin=yaml.safe_dump_all([o for o in access if o["kind"] == "Secret"]),
    )
    # The examples without their Pods: an annotated Pod created before the chart's webhook
    # exists would start without its secrets (the demo applies examples/ after the install).
    examples = [
        doc
        for f in sorted((REPO / "examples").glob("*.yaml"))
        for doc in yaml.safe_load_all(f.read_text())
        if doc and doc.get("kind") != "Pod"
    ]
    apply_objects(p, examples)
    kubectl(p, "apply", "-f", str(REPO / "policies"))
    log(
        f"kubernetes: CRDs, {DEMO_NAMESPACE}/{DEMO_ACCOUNT}, the app team's Role "
        f"(group {DEMO_TEAM_GROUP}), examples, policies and "
        f"the demo binding ({demo_file}) applied"
    )


def pod_access(p: Paths) -> list[dict[str, Any]]:
    """How a pod on the node reaches this OpenBao: the selectorless ``openbao`` Service (its
    ClusterIP is an address of the node's bridge, forwarded to OpenBao on loopback; the
    certificate names it), the CA and the wrapper's client certificate in the demo namespace."""
    client = p.cert("wrapper-demo")
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "openbao", "namespace": SYSTEM_NAMESPACE},
            "spec": {
                "clusterIP": OPENBAO_SERVICE_IP,
                "ports": [{"name": "https", "port": OPENBAO_SERVICE_PORT, "protocol": "TCP"}],
            },
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": OPENBAO_CA_CONFIGMAP, "namespace": DEMO_NAMESPACE},
            "data": {"ca.crt": p.ca.read_text()},
        },
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/tls",
            "metadata": {"name": OPENBAO_CLIENT_SECRET, "namespace": DEMO_NAMESPACE},
            "stringData": {"tls.crt": client.cert.read_text(), "tls.key": client.key.read_text()},
        },
    ]


def provision(p: Paths, log: Callable[[str], None]) -> None:
    configure_openbao(p, log)
    install_product(p, log)


def bao_root_token(p: Path) -> str:
    token: str = json.loads((p / "bao" / "init.json").read_text())["root_token"]
    return token
