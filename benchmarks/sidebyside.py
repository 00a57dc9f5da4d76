"""Side by side: HashiCorp's vault-k8s injector and ours, the same AdmissionReviews over HTTPS on
loopback, at the same rate, in one run.

Run: .venv/bin/python benchmarks/sidebyside.py [--seconds 60] [--rate 200] [--bindings 1000]
                                               [--shared-client] [--json]
Needs the local stack (vault-k8s wants a Kubernetes API server: it watches
MutatingWebhookConfigurations) and Go (scripts/build-stack vault-k8s builds it from the module
proxy, pinned there, cached under ~/.cache/cloudtaser/bin/).

Ours: `cloudtaser injector serve` (the handler the operator serves) with --bindings bindings
in one namespace, from files. vault-k8s: `vault-k8s agent-inject` with a serving certificate
from files. It only runs "in cluster", so it is started in a private mount namespace (unshare)
where a tmpfs on /run holds a service-account token (a TokenRequest for a ServiceAccount this
benchmark creates, allowed to read webhook configurations) and the stack's CA, with
KUBERNETES_SERVICE_HOST/PORT pointing at the local API server; nothing outside that process
sees them. One AdmissionReview body goes to both: a pod carrying both injectors' annotations
(vault.hashicorp.com/agent-inject + role + one secret; cloudtaser.io/inject, selected by one
binding) and the service-account token volume the API server adds before webhooks run. Each
server gets --rate requests/s concurrently, over kept-alive connections, from a client process
of its own (--shared-client: one process for both, as before; see _both); latency is from send
to parsed response, and a response without a patch counts as an error.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import multiprocessing
import os
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import kubernetes  # noqa: E402
import yaml  # noqa: E402

from benchmarks.figures import add_json_flag, emit, percentile  # noqa: E402
from cloudtaser.testbed import stacking  # noqa: E402
from cloudtaser.testbed.certificates import CertificateAuthority  # noqa: E402
from tests.harness.documents import binding_doc, pod_doc  # noqa: E402
from tests.harness.loading import api_client, drive, rss_bytes  # noqa: E402
from tests.harness.processes import stop  # noqa: E402

NAMESPACE = "cloudtaser-load"
BENCH_NAMESPACE = "bench"  # the namespace of the reviewed pod (and of our bindings)
ACCOUNT = "vault-k8s-bench"
ROLE = "cloudtaser-bench-vault-k8s"
OURS_PORT, VAULT_K8S_PORT = 18470, 18471


def build_vault_k8s() -> tuple[Path, str]:
    """The binary, and what scripts/build-stack said (built in N s, or cached)."""
    proc = subprocess.run(
        [str(REPO / "scripts" / "build-stack"), "vault-k8s"],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"scripts/build-stack vault-k8s failed: {proc.stderr.strip()[-800:]}")
    line = next(
        (
            ln
            for ln in proc.stderr.splitlines()
            if "vault-k8s v" in ln and (" built in " in ln or "cached" in ln)
        ),
        "",
    )
    directory = subprocess.run(
        [str(REPO / "scripts" / "build-stack"), "--print-dir"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return Path(directory) / "vault-k8s", line.removeprefix("build-stack: ").split(" [")[0]


def review() -> bytes:
    pod = pod_doc("app-500-x", BENCH_NAMESPACE, labels={"app": "app-500"})
    del pod["metadata"]["namespace"]
    pod["metadata"]["annotations"].update(
        {
            "vault.hashicorp.com/agent-inject": "true",
            "vault.hashicorp.com/role": "app-500",
            "vault.hashicorp.com/agent-inject-secret-password": f"secret/data/{BENCH_NAMESPACE}/app-500",
        }
    )
    pod["spec"]["serviceAccountName"] = "app"
    # What the API server's ServiceAccount admission adds before mutating webhooks run.
    pod["spec"]["volumes"] = [
        {
            "name": "kube-api-access-x",
            "projected": {
                "sources": [
                    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                    {
                        "configMap": {
                            "name": "kube-root-ca.crt",
                            "items": [{"key": "ca.crt", "path": "ca.crt"}],
                        }
                    },
                    {
                        "downwardAPI": {
                            "items": [
                                {
                                    "path": "namespace",
                                    "fieldRef": {
                                        "apiVersion": "v1",
                                        "fieldPath": "metadata.namespace",
                                    },
                                }
                            ]
                        }
                    },
                ]
            },
        }
    ]
    for container in pod["spec"]["containers"]:
        container["volumeMounts"] = [
            {
                "name": "kube-api-access-x",
                "readOnly": True,
                "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
            }
        ]
    return json.dumps(
        {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "u",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "operation": "CREATE",
                "namespace": BENCH_NAMESPACE,
                "object": pod,
            },
        }
    ).encode()


def rbac(paths: stacking.Paths, create: bool) -> str:
    """Create (and return a token of) or delete the ServiceAccount vault-k8s runs as."""
    client = api_client(paths)
    core, authz = (
        kubernetes.client.CoreV1Api(client),
        kubernetes.client.RbacAuthorizationV1Api(client),
    )
    if not create:
        deletions: list[Callable[[], object]] = [
            lambda: authz.delete_cluster_role_binding(ROLE),
            lambda: authz.delete_cluster_role(ROLE),
            lambda: core.delete_namespaced_service_account(ACCOUNT, NAMESPACE),
        ]
        for call in deletions:
            try:
                call()
            except kubernetes.client.ApiException as e:
                if e.status != 404:
                    raise
        return ""
    objects: list[tuple[Any, dict[str, Any]]] = [
        (lambda b: core.create_namespace(b), {"metadata": {"name": NAMESPACE}}),
        (
            lambda b: core.create_namespaced_service_account(NAMESPACE, b),
            {"metadata": {"name": ACCOUNT}},
        ),
        (
            lambda b: authz.create_cluster_role(b),
            {
                "metadata": {"name": ROLE},
                "rules": [
                    {
                        "apiGroups": ["admissionregistration.k8s.io"],
                        "resources": ["mutatingwebhookconfigurations"],
                        "verbs": ["get", "list", "watch"],
                    }
                ],
            },
        ),
        (
            lambda b: authz.create_cluster_role_binding(b),
            {
                "metadata": {"name": ROLE},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": ROLE,
                },
                "subjects": [{"kind": "ServiceAccount", "name": ACCOUNT, "namespace": NAMESPACE}],
            },
        ),
    ]
    for create_one, body in objects:
        try:
            create_one(body)
        except kubernetes.client.ApiException as e:
            if e.status != 409:
                raise
    answer = core.create_namespaced_service_account_token(
        ACCOUNT,
        NAMESPACE,
        kubernetes.client.AuthenticationV1TokenRequest(
            spec=kubernetes.client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600)
        ),
    )
    assert answer.status is not None
    return str(answer.status.token)


def wait_https(
    port: int, context: ssl.SSLContext, process: subprocess.Popen[Any], what: str, log: Path
) -> None:
    import socket

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited: {log.read_text()[-1500:]}")
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=1) as raw,
                context.wrap_socket(raw, server_hostname="127.0.0.1"),
            ):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(
        f"{what} not serving on 127.0.0.1:{port} after 60 s: {log.read_text()[-1500:]}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--rate", type=float, default=200, help="requests/s to each injector")
    parser.add_argument("--bindings", type=int, default=1000, help="bindings our injector holds")
    parser.add_argument(
        "--shared-client", action="store_true", help="one client process for both injectors"
    )
    add_json_flag(parser)
    args = parser.parse_args()
    try:
        rows, notes = run(args.seconds, args.rate, args.bindings, args.shared_client)
        failed = any(r[3] == "FAIL" for r in rows)
    except RuntimeError as e:
        rows, notes, failed = (
            [("side by side with vault-k8s", "-", "not run", "FAIL")],
            [str(e)],
            True,
        )
    emit("sidebyside", rows, args.json, notes, failed)
    sys.exit(1 if failed else 0)


def run(
    seconds: float, rate: float, bindings: int, shared_client: bool = False
) -> tuple[list[tuple[str, str, str, str]], list[str]]:
    if shutil.which("unshare") is None:
        raise RuntimeError(
            "unshare (util-linux) not found: vault-k8s runs in a private mount namespace"
        )
    if os.geteuid() != 0:
        raise RuntimeError(
            "not root: vault-k8s's in-cluster config is mounted in a private mount namespace"
        )
    binary, build_line = build_vault_k8s()
    subprocess.run(
        [str(Path(sys.executable).parent / "cloudtaser"), "stack", "up"],
        check=True,
        capture_output=True,
    )
    paths = stacking.Paths(state=stacking.default_state_dir(), bin=stacking.default_bin_dir())
    body = review()
    with tempfile.TemporaryDirectory(prefix="cloudtaser-sidebyside-") as tmpdir:
        tmp = Path(tmpdir)
        ca = CertificateAuthority(tmp)
        pair = ca.issue("webhook", "sidebyside", server=True, hosts=("127.0.0.1",))
        context = ssl.create_default_context(cafile=str(ca.pair.cert))
        docs = [binding_doc(f"app-{i}", BENCH_NAMESPACE) for i in range(bindings)]
        (tmp / "bindings.yaml").write_text(yaml.safe_dump_all(docs))
        token = rbac(paths, create=True)
        sa = tmp / "sa"
        sa.mkdir()
        (sa / "token").write_text(token)
        shutil.copy(paths.ca, sa / "ca.crt")
        (sa / "namespace").write_text(NAMESPACE)
        target = "/run/secrets/kubernetes.io/serviceaccount"
        launcher = (
            f"mount -t tmpfs -o mode=0755 cloudtaser-sidebyside /run && mkdir -p {target} && "
            f'cp "$0"/token "$0"/ca.crt "$0"/namespace {target}/ && exec "$@"'
        )
        ours_log, theirs_log = tmp / "ours.log", tmp / "vault-k8s.log"
        procs: list[subprocess.Popen[Any]] = []
        try:
            with open(ours_log, "w") as out:
                ours = subprocess.Popen(
                    [
                        str(Path(sys.executable).parent / "cloudtaser"),
                        "injector",
                        "serve",
                        str(tmp / "bindings.yaml"),
                        "--tls-cert",
                        str(pair.cert),
                        "--tls-key",
                        str(pair.key),
                        "--port",
                        str(OURS_PORT),
                    ],
                    stdout=out,
                    stderr=out,
                )
            procs.append(ours)
            with open(theirs_log, "w") as out:
                theirs = subprocess.Popen(
                    [
                        "unshare",
                        "--mount",
                        "--propagation",
                        "private",
                        "sh",
                        "-c",
                        launcher,
                        str(sa),
                        str(binary),
                        "agent-inject",
                        "-listen",
                        f"127.0.0.1:{VAULT_K8S_PORT}",
                        "-tls-cert-file",
                        str(pair.cert),
                        "-tls-key-file",
                        str(pair.key),
                        "-vault-address",
                        f"https://127.0.0.1:{stacking.BAO_PORT}",
                        "-log-level",
                        "error",
                    ],
                    env={
                        **os.environ,
                        "KUBERNETES_SERVICE_HOST": "127.0.0.1",
                        "KUBERNETES_SERVICE_PORT": str(stacking.APISERVER_PORT),
                        "NAMESPACE": NAMESPACE,
                    },
                    stdout=out,
                    stderr=out,
                )
            procs.append(theirs)
            wait_https(OURS_PORT, context, ours, "cloudtaser injector serve", ours_log)
            wait_https(VAULT_K8S_PORT, context, theirs, "vault-k8s agent-inject", theirs_log)
            urls = {
                "cloudtaser": f"https://127.0.0.1:{OURS_PORT}/mutate-v1-pod",
                "vault-k8s": f"https://127.0.0.1:{VAULT_K8S_PORT}/mutate",
            }
            for name, url in urls.items():  # one warm-up request each, checked
                _, errors = asyncio.run(drive(url, body, 1, 1, context))
                if errors:
                    raise RuntimeError(f"{name} did not inject the review pod: {errors[0]}")
            results = _both(urls, body, rate, seconds, str(ca.pair.cert), shared_client)
            rss = {"cloudtaser": rss_bytes(ours.pid), "vault-k8s": _tree_rss(theirs.pid)}
        finally:
            for proc in procs:
                stop(proc)
            rbac(paths, create=False)
    (ours_l, _), (theirs_l, _) = results["cloudtaser"], results["vault-k8s"]
    rows = [("vault-k8s build (scripts/build-stack vault-k8s)", "-", build_line or "?", "-")]
    for name, (lat, err) in results.items():
        distinct = sorted(set(err))
        rows.append(
            (
                f"{name}: requests / errors ({rate:.0f}/s for {seconds:.0f} s)",
                "0 errors",
                f"{len(lat)} / {len(err)}" + (f" ({distinct[0][:60]})" if distinct else ""),
                "ok" if not err else "FAIL",
            )
        )
    for q, label in ((0.5, "p50"), (0.99, "p99")):
        mine = statistics.median(ours_l) if q == 0.5 else percentile(ours_l, q)
        other = statistics.median(theirs_l) if q == 0.5 else percentile(theirs_l, q)
        rows.append(
            (
                f"HTTPS {label}: cloudtaser ({bindings} bindings) / vault-k8s",
                "-",
                f"{mine:.2f} ms / {other:.2f} ms",
                f"{mine / other:.2f}x vault-k8s",
            )
        )
    for name, value in rss.items():
        rows.append(
            (
                f"{name}: RSS after the run",
                "-",
                f"{value / 1024 / 1024:.1f} MiB" if value else "?",
                "-",
            )
        )
    return rows, []


def _tree_rss(pid: int) -> int | None:
    """RSS of the process at the end of the unshare -> sh -> exec chain (vault-k8s itself)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return None
    return _tree_rss(int(children[0])) if children else rss_bytes(pid)


def _drive_from(
    at: float, url: str, body: bytes, rate: float, seconds: float, cafile: str
) -> tuple[list[float], list[str]]:
    """One injector's client, in a process of its own, starting at the wall-clock time ``at``."""
    time.sleep(max(0.0, at - time.time()))
    return asyncio.run(drive(url, body, rate, seconds, ssl.create_default_context(cafile=cafile)))


def _both(
    urls: dict[str, str], body: bytes, rate: float, seconds: float, cafile: str, shared: bool
) -> dict[str, tuple[list[float], list[str]]]:
    """Both injectors driven at once: by default each from a client process of its own. With
    one client (``shared``) its event loop handled both injectors' answers, each tick's two
    requests sent at the same instant, so whichever answer the loop took second waited for the
    first one's parsing: the client's own time, charged to one side."""
    names = list(urls)
    if shared:
        context = ssl.create_default_context(cafile=cafile)

        async def together() -> list[tuple[list[float], list[str]]]:
            return await asyncio.gather(
                *(drive(urls[n], body, rate, seconds, context) for n in names)
            )

        return dict(zip(names, asyncio.run(together()), strict=True))
    at = time.time() + 2  # both processes forked and waiting by then
    with concurrent.futures.ProcessPoolExecutor(
        len(names), mp_context=multiprocessing.get_context("fork")
    ) as pool:
        futures = [
            pool.submit(_drive_from, at, urls[n], body, rate, seconds, cafile) for n in names
        ]
        return dict(zip(names, [f.result() for f in futures], strict=True))


if __name__ == "__main__":
    main()
