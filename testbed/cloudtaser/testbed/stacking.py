"""The local real stack: etcd, kube-apiserver, OpenBao, OPA and an image registry as
processes on loopback (the node that runs pods is noding.py).

``up`` starts what is not running (PID files in the state directory), waits for each
component's health endpoint, then provisions (see provisioning.py). A running component whose
command line changed, or whose certificate was re-issued since it started, is restarted (a
newer cloudtaser needs new API server flags; a certificate gained a name). ``down`` stops only
processes whose PID file it wrote *and* whose executable is still the binary it started, so a
recycled PID is never killed. Everything listens on 127.0.0.1 only; everything but etcd
(reachable only by the API server on loopback) and the registry (plain HTTP, as registries on
loopback are) speaks TLS with certificates generated here.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import requests
import yaml

from cloudtaser.errors import PermanentError, TemporaryError
from cloudtaser.testbed.certificates import CertificateAuthority, Pair, service_account_keys

HOST = "127.0.0.1"
ETCD_PORT, ETCD_PEER_PORT = 23790, 23800
APISERVER_PORT = 16443
BAO_PORT = 18200
OPA_PORT = 18181
REGISTRY_PORT = 15000
REGISTRY = f"{HOST}:{REGISTRY_PORT}"
KUBELET_PORT = 10250
# The Service network. Its first address is the API server's Service (``kubernetes``); the node
# gives the stack's bridge the addresses of the Services that stand for host processes
# (noding.py), so pods reach them; nothing else routes there.
SERVICE_CIDR = "10.96.0.0/24"
KUBERNETES_SERVICE_IP = "10.96.0.1"
OPENBAO_SERVICE_IP = "10.96.0.2"
OPENBAO_SERVICE_PORT = 8200
# What a pod dials for OpenBao: the stack's openbao Service (provisioning.py creates it).
OPENBAO_SERVICE_ADDRESS = f"https://{OPENBAO_SERVICE_IP}:{OPENBAO_SERVICE_PORT}"
NODE_NAME = "localhost"  # the API server dials the kubelet by this name (noding.py says why)
BINARIES = (
    "etcd",
    "kube-apiserver",
    "kubectl",
    "bao",
    "opa",
    "helm",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "containerd",
    "containerd-shim-runc-v2",
    "ctr",
    "bridge",
    "host-local",
    "loopback",
)
# Debian's docker-registry (scripts/system-deps), not built here.
REGISTRY_BINARY = "/usr/bin/docker-registry"
REPO = Path(__file__).resolve().parents[3]  # testbed/cloudtaser/testbed/stacking.py


# Components this process started: kept so they are reaped by ``down`` (no zombies in a long
# test session) and not garbage-collected while they run. A later `cloudtaser stack down` in
# another process finds them by PID file instead.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


class StackError(PermanentError):
    """The stack cannot be brought to the asked state; the message says why."""


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(os.environ.get("CLOUDTASER_STATE", Path(base) / "cloudtaser" / "stack"))


def default_bin_dir() -> Path:
    cache = os.environ.get("CLOUDTASER_CACHE") or str(Path.home() / ".cache" / "cloudtaser")
    return Path(os.environ.get("CLOUDTASER_BIN", Path(cache) / "bin" / "current"))


@dataclass(frozen=True)
class Paths:
    """Where the stack keeps its files."""

    state: Path
    bin: Path

    @property
    def pki(self) -> Path:
        return self.state / "pki"

    @property
    def kubeconfig(self) -> Path:
        return self.state / "kubeconfig"

    @property
    def bao_init(self) -> Path:
        return self.state / "bao" / "init.json"

    def log(self, name: str) -> Path:
        return self.state / "logs" / f"{name}.log"

    def pidfile(self, name: str) -> Path:
        return self.state / "run" / f"{name}.pid"

    def binary(self, name: str) -> Path:
        """A stack binary by name, or a program by absolute path (Debian's, the interpreter)."""
        return Path(name) if name.startswith("/") else self.bin / name

    def cert(self, name: str) -> Pair:
        return Pair(self.pki / f"{name}.crt", self.pki / f"{name}.key")

    @property
    def ca(self) -> Path:
        return self.pki / "ca.crt"


@dataclass(frozen=True)
class Component:
    name: str
    binary: str
    address: str
    argv: Callable[[Paths], list[str]]
    health: Callable[[Paths], str | None]  # None when healthy, else what is wrong
    # What ``up`` waits for, when less than healthy: None once it answers well enough for
    # ``up`` and provisioning to finish the job (OpenBao: sealed or not initialised counts).
    answering: Callable[[Paths], str | None] | None = None
    # Restart a running instance whose command line differs from ``argv`` or that started
    # before one of these files changed (its certificates, its config).
    inputs: Callable[[Paths], list[Path]] | None = None
    # Extra environment (e.g. PATH for containerd, which runs its shim from PATH).
    env: Callable[[Paths], dict[str, str]] | None = None
    # How long ``up`` waits for it to answer.
    timeout: float = 120.0


def _get(url: str, paths: Paths, client: str | None = None) -> requests.Response:
    cert = None
    if client is not None:
        pair = paths.cert(client)
        cert = (str(pair.cert), str(pair.key))
    verify: str | bool = str(paths.ca) if url.startswith("https") else True
    return requests.get(url, cert=cert, verify=verify, timeout=2)


def _probe(
    check: Callable[[], requests.Response], ok: Callable[[requests.Response], bool]
) -> str | None:
    try:
        response = check()
    except requests.RequestException as e:
        return f"not answering ({type(e).__name__})"
    if ok(response):
        return None
    return f"HTTP {response.status_code}: {response.text[:120].strip()}"


def _etcd_argv(p: Paths) -> list[str]:
    data = p.state / "etcd"
    return [
        str(p.binary("etcd")),
        "--name",
        "local",
        "--data-dir",
        str(data),
        "--listen-client-urls",
        f"http://{HOST}:{ETCD_PORT}",
        "--advertise-client-urls",
        f"http://{HOST}:{ETCD_PORT}",
        "--listen-peer-urls",
        f"http://{HOST}:{ETCD_PEER_PORT}",
        "--initial-advertise-peer-urls",
        f"http://{HOST}:{ETCD_PEER_PORT}",
        "--initial-cluster",
        f"local=http://{HOST}:{ETCD_PEER_PORT}",
        "--log-level",
        "warn",
        "--quota-backend-bytes",
        str(2 * 1024**3),
    ]


def _apiserver_argv(p: Paths) -> list[str]:
    serving, sa = p.cert("apiserver"), service_account_keys(p.pki)
    issuer = f"https://{HOST}:{APISERVER_PORT}"
    return [
        str(p.binary("kube-apiserver")),
        f"--etcd-servers=http://{HOST}:{ETCD_PORT}",
        f"--bind-address={HOST}",
        f"--advertise-address={HOST}",
        f"--secure-port={APISERVER_PORT}",
        f"--tls-cert-file={serving.cert}",
        f"--tls-private-key-file={serving.key}",
        f"--client-ca-file={p.ca}",
        # Node: the kubelet (system:node:localhost) may touch only its node and its pods.
        "--authorization-mode=Node,RBAC",
        # logs/exec: the API server shows the kubelet this client certificate.
        f"--kubelet-client-certificate={p.cert('apiserver-kubelet-client').cert}",
        f"--kubelet-client-key={p.cert('apiserver-kubelet-client').key}",
        # Webhooks behind a Service are called at a ready endpoint's (pod's) address: there is
        # no kube-proxy to make ClusterIPs work, and the host routes to the pod network.
        "--enable-aggregator-routing=true",
        f"--service-account-issuer={issuer}",
        f"--service-account-key-file={sa.cert}",
        f"--service-account-signing-key-file={sa.key}",
        f"--api-audiences={issuer}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--endpoint-reconciler-type=none",  # no Service endpoints for a loopback address
        "--allow-privileged=true",  # the node agent's DaemonSet (chart e2e) is privileged
        "--enable-priority-and-fairness=false",
        "--profiling=false",
        "--v=0",
    ]


def _opa_argv(p: Paths) -> list[str]:
    rego = sorted(
        str(f) for f in (REPO / "policies").glob("*.rego") if not f.name.endswith("_test.rego")
    )
    return [
        str(p.binary("opa")),
        "run",
        "--server",
        "--addr",
        f"{HOST}:{OPA_PORT}",
        "--log-level",
        "error",
        *rego,
    ]


def bao_config(p: Paths) -> str:
    """OpenBao's server config as JSON (OpenBao reads HCL or JSON; JSON is built, not templated)."""
    serving = p.cert("openbao")
    config = {
        "storage": {"file": {"path": str(p.state / "bao" / "data")}},
        "listener": [
            {
                "tcp": {
                    "address": f"{HOST}:{BAO_PORT}",
                    "tls_cert_file": str(serving.cert),
                    "tls_key_file": str(serving.key),
                    "tls_client_ca_file": str(p.ca),
                    "tls_require_and_verify_client_cert": True,
                }
            }
        ],
        "api_addr": f"https://{HOST}:{BAO_PORT}",
        "disable_mlock": True,
        "ui": False,
        "log_level": "warn",
    }
    return json.dumps(config, indent=2)


def _bao_argv(p: Paths) -> list[str]:
    config = p.state / "bao" / "config.json"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(bao_config(p))
    return [str(p.binary("bao")), "server", f"-config={config}"]


BAO_SEALED, BAO_UNINITIALISED = "sealed", "not initialised"


def bao_health_reason(status_code: int, body: str) -> str | None:
    """What /v1/sys/health says is wrong with OpenBao (None: initialised, unsealed, active).
    OpenBao answers 200 active, 429 standby, 501 not initialised, 503 sealed, with a JSON
    body saying the same; the body wins when it parses."""
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        doc = {}
    if doc.get("initialized") is False or (not doc and status_code == 501):
        return BAO_UNINITIALISED
    if doc.get("sealed") is True or (not doc and status_code == 503):
        return BAO_SEALED
    if status_code == 200:
        return None
    if status_code == 429 or doc.get("standby") is True:
        return "standby"
    return f"HTTP {status_code}: {body[:120].strip()}"


def bao_health(
    p: Paths, address: str = f"https://{HOST}:{BAO_PORT}", *, answering: bool = False
) -> str | None:
    """None when the OpenBao at ``address`` is initialised, unsealed and active, else what is
    wrong. With ``answering``, sealed and not initialised count as well: ``up`` only waits
    for the server to answer, and provisioning initialises and unseals it."""
    try:
        response = _get(f"{address}/v1/sys/health", p, "admin")
    except requests.RequestException as e:
        return f"not answering ({type(e).__name__})"
    reason = bao_health_reason(response.status_code, response.text)
    if answering and reason in (BAO_SEALED, BAO_UNINITIALISED):
        return None
    return reason


def registry_config(p: Paths) -> Path:
    """Debian's docker-registry (distribution 2.8) on loopback, plain HTTP, no auth: where
    scripts/build-images --push puts the images and the node's containerd pulls them."""
    config = p.state / "registry" / "config.yml"
    if not config.exists():  # the secret only signs upload state; kept across restarts
        config.parent.mkdir(parents=True, exist_ok=True)
        body = {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": {
                "filesystem": {"rootdirectory": str(p.state / "registry" / "data")},
                "delete": {"enabled": True},
            },
            "http": {"addr": REGISTRY, "secret": os.urandom(16).hex()},
        }
        config.write_text(yaml.safe_dump(body, sort_keys=False))
        config.chmod(0o600)
    return config


COMPONENTS = [
    Component(
        "etcd",
        "etcd",
        f"http://{HOST}:{ETCD_PORT}",
        _etcd_argv,
        lambda p: _probe(
            lambda: _get(f"http://{HOST}:{ETCD_PORT}/health", p),
            lambda r: r.ok and r.json().get("health") == "true",
        ),
    ),
    Component(
        "kube-apiserver",
        "kube-apiserver",
        f"https://{HOST}:{APISERVER_PORT}",
        _apiserver_argv,
        lambda p: _probe(
            lambda: _get(f"https://{HOST}:{APISERVER_PORT}/readyz", p, "admin"), lambda r: r.ok
        ),
        inputs=lambda p: [p.cert("apiserver").cert, p.cert("apiserver-kubelet-client").cert],
    ),
    Component(
        "openbao",
        "bao",
        f"https://{HOST}:{BAO_PORT}",
        _bao_argv,
        bao_health,
        answering=lambda p: bao_health(p, answering=True),
        inputs=lambda p: [p.cert("openbao").cert],
    ),
    Component(
        "opa",
        "opa",
        f"http://{HOST}:{OPA_PORT}",
        _opa_argv,
        lambda p: _probe(lambda: _get(f"http://{HOST}:{OPA_PORT}/health", p), lambda r: r.ok),
    ),
    Component(
        "registry",
        REGISTRY_BINARY,
        f"http://{REGISTRY}",
        lambda p: [REGISTRY_BINARY, "serve", str(registry_config(p))],
        lambda p: _probe(lambda: _get(f"http://{REGISTRY}/v2/", p), lambda r: r.ok),
        inputs=lambda p: [registry_config(p)],
    ),
]


def ensure_pki(p: Paths) -> None:
    ca = CertificateAuthority(p.pki)
    ca.issue(
        "apiserver",
        "kube-apiserver",
        server=True,
        hosts=(
            HOST,
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "10.96.0.1",
        ),
    )
    ca.issue("admin", "cloudtaser-admin", organization="system:masters", client=True)
    # Also under its Service's address and name: pods reach it there (noding.py).
    ca.issue(
        "openbao",
        "openbao",
        server=True,
        hosts=(HOST, "localhost", OPENBAO_SERVICE_IP, "openbao.cloudtaser-system.svc"),
    )
    # The API server's client certificate towards the kubelet (logs, exec, port-forward).
    ca.issue(
        "apiserver-kubelet-client",
        "kube-apiserver-kubelet-client",
        organization="system:masters",
        client=True,
    )
    # The node's kubelet: the Node authorizer knows it by this name and group.
    ca.issue("kubelet", f"system:node:{NODE_NAME}", organization="system:nodes", client=True)
    # The wrapper's client certificate for the demo (mTLS to OpenBao).
    ca.issue("wrapper-demo", "cloudtaser-wrapper-demo", client=True)
    service_account_keys(p.pki)


def write_kubeconfig(p: Paths) -> None:
    admin = p.cert("admin")
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "cloudtaser-local",
                "cluster": {
                    "server": f"https://{HOST}:{APISERVER_PORT}",
                    "certificate-authority": str(p.ca),
                },
            }
        ],
        "users": [
            {
                "name": "cloudtaser-admin",
                "user": {"client-certificate": str(admin.cert), "client-key": str(admin.key)},
            }
        ],
        "contexts": [
            {
                "name": "cloudtaser-local",
                "context": {"cluster": "cloudtaser-local", "user": "cloudtaser-admin"},
            }
        ],
        "current-context": "cloudtaser-local",
    }
    p.kubeconfig.write_text(yaml.safe_dump(config, sort_keys=False))
    p.kubeconfig.chmod(0o600)


def executables() -> Iterator[tuple[int, Path]]:
    """Every process of this machine with the executable it runs (as the kernel names it,
    without " (deleted)": a build pruned since still counts); processes gone meanwhile or
    unreadable are left out."""
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                yield int(proc.name), Path(os.readlink(proc / "exe").removesuffix(" (deleted)"))
            except OSError:
                continue


def running_pid(p: Paths, component: Component) -> int | None:
    """The PID from the PID file if that process still runs the executable ``up`` started
    (recorded on the PID file's second line: bin/current may point at a newer build by now,
    or the old build may have been pruned), else None."""
    try:
        pid_line, _, recorded = p.pidfile(component.name).read_text().partition("\n")
        pid = int(pid_line)
        exe = os.readlink(f"/proc/{pid}/exe").removesuffix(" (deleted)")
    except (OSError, ValueError):
        return None
    expected = Path(recorded.strip()) if recorded.strip() else p.binary(component.binary).resolve()
    return pid if Path(exe) == expected else None


def outdated(p: Paths, component: Component, pid: int) -> str | None:
    """Why the running ``pid`` of a component that declares ``inputs`` is not what ``up``
    would start now (None when it is): other flags, or an input changed after it started."""
    if component.inputs is None:
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
        started = p.pidfile(component.name).stat().st_mtime
    except OSError:
        return None
    if [a.decode(errors="replace") for a in cmdline] != component.argv(p):
        return "its command line changed"
    for path in component.inputs(p):
        try:
            if path.stat().st_mtime > started:
                return f"{path.name} changed since it started"
        except OSError:
            continue
    return None


def _start(p: Paths, component: Component) -> int:
    argv = component.argv(p)
    log = p.log(component.name)
    log.parent.mkdir(parents=True, exist_ok=True)
    p.pidfile(component.name).parent.mkdir(parents=True, exist_ok=True)
    env = None if component.env is None else {**os.environ, **component.env(p)}
    with open(log, "ab") as out:
        process = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=p.state,
            start_new_session=True,
            env=env,
        )
    p.pidfile(component.name).write_text(f"{process.pid}\n{Path(argv[0]).resolve()}\n")
    _CHILDREN[process.pid] = process
    return process.pid


def wait_healthy(p: Paths, component: Component, timeout: float | None = None) -> None:
    timeout = component.timeout if timeout is None else timeout
    deadline = time.monotonic() + timeout
    reason: str | None = "not started"
    while time.monotonic() < deadline:
        if running_pid(p, component) is None:
            tail = _tail(p.log(component.name))
            raise StackError(
                f"{component.name} exited during start (log: {p.log(component.name)}); "
                f"last log lines:\n{tail}"
            )
        reason = (component.answering or component.health)(p)
        if reason is None:
            return
        time.sleep(0.25)
    raise TemporaryError(
        f"{component.name} not healthy after {timeout:.0f}s: {reason} "
        f"(log: {p.log(component.name)})"
    )


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def check_binaries(p: Paths) -> None:
    missing = [b for b in BINARIES if not p.binary(b).exists()]
    missing += (
        [] if Path(REGISTRY_BINARY).exists() else [f"{REGISTRY_BINARY} (scripts/system-deps)"]
    )
    if missing:
        raise StackError(
            f"missing binaries in {p.bin}: {', '.join(missing)}; build them with "
            "scripts/build-stack (or point CLOUDTASER_BIN at a directory that has them)"
        )


def up(p: Paths, log: Callable[[str], None]) -> None:
    check_binaries(p)
    p.state.mkdir(parents=True, exist_ok=True)
    ensure_pki(p)
    write_kubeconfig(p)
    start_all(p, COMPONENTS, log)


def start_all(p: Paths, components: list[Component], log: Callable[[str], None]) -> None:
    """Start each component that is not running (restart an outdated one), in order, each
    healthy before the next."""
    for component in components:
        pid = running_pid(p, component)
        why = None if pid is None else outdated(p, component, pid)
        if why is not None:
            log(f"{component.name}: restarting (pid {pid}): {why}")
            stop(p, component, log)
            pid = None
        if pid is None:
            started = time.monotonic()
            pid = _start(p, component)
            wait_healthy(p, component)
            log(f"{component.name}: started (pid {pid}) in {time.monotonic() - started:.1f}s")
        else:
            wait_healthy(p, component, timeout=30)
            log(f"{component.name}: already running (pid {pid})")


def component(name: str) -> Component:
    """The component called ``name``; StackError naming the known ones otherwise."""
    from cloudtaser.testbed import noding  # the node's components (noding imports this module)

    for c in [*COMPONENTS, *noding.COMPONENTS]:
        if c.name == name:
            return c
    raise StackError(
        f"no stack component {name!r}; known: "
        f"{', '.join(c.name for c in [*COMPONENTS, *noding.COMPONENTS])}"
    )


def stop(p: Paths, component: Component, log: Callable[[str], None], timeout: float = 15.0) -> None:
    """Stop one component by its PID file (SIGTERM, SIGKILL after ``timeout``); ``up``
    starts it again. Fault tests use this to take one piece away for a moment."""
    pid = running_pid(p, component)
    pidfile = p.pidfile(component.name)
    if pid is None:
        if pidfile.exists():
            pidfile.unlink()
            log(f"{component.name}: stale PID file removed (process not ours or gone)")
        return
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:  # exited between the check and the signal
        pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and running_pid(p, component) is not None:
        time.sleep(0.1)
    if running_pid(p, component) is not None:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        log(f"{component.name}: killed (pid {pid}) after {timeout:.0f}s")
    else:
        log(f"{component.name}: stopped (pid {pid})")
    pidfile.unlink(missing_ok=True)
    child = _CHILDREN.pop(pid, None)
    if child is not None:
        child.wait(timeout=timeout)


def down(p: Paths, log: Callable[[str], None], timeout: float = 15.0) -> None:
    """The node first (its pods leave while the API server answers), then the rest."""
    from cloudtaser.testbed import noding  # noding imports this module

    noding.down(p, log)
    for c in reversed(COMPONENTS):
        stop(p, c, log, timeout)


def status(p: Paths, components: list[Component] | None = None) -> list[dict[str, str]]:
    """One row per component; health is "healthy", "stopped" or what is wrong (OpenBao:
    "sealed", "not initialised")."""
    rows = []
    for component in COMPONENTS if components is None else components:
        pid = running_pid(p, component)
        health = "stopped" if pid is None else (component.health(p) or "healthy")
        rows.append(
            {
                "component": component.name,
                "pid": str(pid or "-"),
                "address": component.address,
                "health": health,
            }
        )
    return rows


def environment(p: Paths) -> dict[str, str]:
    client = p.cert("wrapper-demo")
    return {
        "KUBECONFIG": str(p.kubeconfig),
        "BAO_ADDR": f"https://{HOST}:{BAO_PORT}",
        "BAO_CACERT": str(p.ca),
        "BAO_CLIENT_CERT": str(client.cert),
        "BAO_CLIENT_KEY": str(client.key),
        "OPA_ADDR": f"http://{HOST}:{OPA_PORT}",
        "CLOUDTASER_STATE": str(p.state),
        "CLOUDTASER_BIN": str(p.bin),
        "PATH": f"{p.bin}:{os.environ.get('PATH', '')}",
    }
