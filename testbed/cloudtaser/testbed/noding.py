"""The local stack's node: containerd + Debian's runc + bridge CNI, a kubelet, and the
kube-scheduler and kube-controller-manager that turn Deployments and DaemonSets into pods.

Facts of this kind of machine that shape it (measured; see docs/ARCHITECTURE.md, "The local
node"): cgroup v1 hybrid without systemd (kubelet with the cgroupfs driver and
``failCgroupV1: false``; it adds ``kubepods`` to each hierarchy, nothing is remounted), no
CAP_SYS_RESOURCE (containerd must ``restrict_oom_score_adj``), nothing routes off the machine.

Everything it owns lives under ``<state>/node`` and a few names: the bridge ``cloudtaser0``
(pods on 10.244.0.0/24, the host at 10.244.0.1, plus the addresses of the Services that stand
for host processes, see forwarding.py), ``/run/cloudtaser-node`` (containerd's shim sockets:
their paths must stay under 108 bytes). What the kubelet and containerd create outside it no
matter their config (``/var/lib/kubelet/device-plugins``, ``/var/log/containers``,
``/var/lib/cni``), the ``kubepods`` cgroups and the sysctls the kubelet (and the chart's agent) set are recorded
before ``up`` and restored by ``down``, which also drains the node while the kubelet still runs
(so CNI DEL and volume teardown happen), then unmounts and removes what is left.

The node is called ``localhost``: the API server dials a kubelet by its Hostname address, the
kubelet listens on 127.0.0.1 only, and the kubelet refuses a loopback InternalIP.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
import urllib3
import yaml

from cloudtaser import rendering
from cloudtaser.testbed.stacking import (
    APISERVER_PORT,
    BAO_PORT,
    HOST,
    KUBELET_PORT,
    KUBERNETES_SERVICE_IP,
    NODE_NAME,
    OPENBAO_SERVICE_IP,
    OPENBAO_SERVICE_PORT,
    REGISTRY,
    SERVICE_CIDR,
    Component,
    Paths,
    StackError,
    executables,
    running_pid,
    start_all,
    stop,
)
from cloudtaser.version import __version__

BRIDGE = "cloudtaser0"
POD_CIDR = "10.244.0.0/24"
GATEWAY = "10.244.0.1"
SHIM_DIR = Path("/run/cloudtaser-node")
# Host directories of the chart's agent as the local stack installs it (values in
# provisioning.py): its own, so a test agent or wrapper on this host never meets it.
AGENT_SOCKET_DIR = Path("/run/cloudtaser-stack")
AGENT_PIN_DIR = Path("/sys/fs/bpf/cloudtaser-stack")
# Each Service address on the bridge -> the loopback listener behind it.
FORWARDS = {
    (KUBERNETES_SERVICE_IP, 443): (HOST, APISERVER_PORT),
    (OPENBAO_SERVICE_IP, OPENBAO_SERVICE_PORT): (HOST, BAO_PORT),
}
CONTROLLER_MANAGER_PORT, SCHEDULER_PORT, KUBELET_HEALTH_PORT = 10257, 10259, 10248
SANDBOX_IMAGE = f"{REGISTRY}/cloudtaser/pause:{__version__}"
# Set by the kubelet (its "kernel defaults") or by the chart's agent (io_uring restricted while
# the node protects a pod, bpf/cloudtaser/bpf/iouring.py); restored by ``down``.
SYSCTLS = (
    "vm.overcommit_memory",
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.io_uring_disabled",
)
# Created by the kubelet, containerd or libcni whatever their configured roots.
HOST_PATHS = (
    "/var/lib/kubelet",
    "/var/log/pods",
    "/var/log/containers",
    "/var/lib/cni",
    "/run/containerd",
    "/var/run/netns",
    "/opt/containerd",
    "/etc/cni",
    "/opt/cni",
    "/run/nri",
    "/usr/libexec/kubernetes",
    str(SHIM_DIR),
    str(AGENT_SOCKET_DIR),
    str(AGENT_PIN_DIR),
)
CGROUP_ROOT = Path("/sys/fs/cgroup")
# Cgroups the kubelet makes (kubepods) and containerd makes for a sandbox without a parent.
CGROUP_NAMES = ("kubepods", "k8s.io")


def work(p: Paths) -> Path:
    return p.state / "node"


def kubelet_root(p: Paths) -> Path:
    """The kubelet's --root-dir (pods, plugins, plugins_registry): the chart's agent.kubeletDir."""
    return work(p) / "kubelet" / "root"


def _sock(p: Paths) -> Path:
    return work(p) / "containerd" / "containerd.sock"


def runc() -> str:
    found = shutil.which("runc") or shutil.which("runc", path="/usr/sbin:/usr/bin")
    if found is None:
        raise StackError(
            "runc not found: the node runs containers with Debian's runc "
            "(scripts/system-deps installs it)"
        )
    return found


# --- configs (typed, dumped) --------------------------------------------------------------------


def containerd_config(p: Paths) -> dict[str, Any]:
    """containerd 2.x (config version 4), everything it owns under <state>/node/containerd."""
    c = work(p) / "containerd"
    runtime = "io.containerd.cri.v1.runtime"
    return {
        "version": 4,
        "root": str(c / "root"),
        "state": str(c / "state"),
        "imports": [],  # not /etc/containerd/conf.d of the host
        "plugins": {
            "io.containerd.server.v1.grpc": {"address": str(_sock(p))},
            "io.containerd.server.v1.ttrpc": {"address": f"{_sock(p)}.ttrpc"},
            "io.containerd.shim.v1.manager": {"socket_dir": str(SHIM_DIR / "s")},
            "io.containerd.internal.v1.opt": {"path": str(c / "opt")},
            "io.containerd.nri.v1.nri": {"disable": True},  # else /var/run/nri/nri.sock
            "io.containerd.image-verifier.v1.bindir": {"bin_dir": str(c / "image-verifier")},
            "io.containerd.cri.v1.images": {
                "snapshotter": "overlayfs",
                # the sandbox image comes from the loopback registry like every other image
                "pinned_images": {"sandbox": SANDBOX_IMAGE},
                # hosts.toml per registry: the loopback registry speaks plain HTTP
                "registry": {"config_path": str(c / "certs.d")},
            },
            runtime: {
                # Without CAP_SYS_RESOURCE runc cannot lower oom_score_adj below its own;
                # otherwise every sandbox fails ("can't get final child's PID from pipe").
                "restrict_oom_score_adj": True,
                "netns_mounts_under_state_dir": True,  # pod netns not under /var/run/netns
                "enable_selinux": False,
                "cdi_spec_dirs": [],
                "containerd": {
                    "default_runtime_name": "runc",
                    "runtimes": {
                        "runc": {
                            "runtime_type": "io.containerd.runc.v2",
                            "options": {
                                "BinaryName": runc(),
                                "Root": str(c / "runc"),
                                "SystemdCgroup": False,
                            },
                        }
                    },
                },
                "cni": {
                    "bin_dirs": [str(work(p) / "cni" / "bin")],
                    "conf_dir": str(work(p) / "cni" / "net.d"),
                    "max_conf_num": 1,
                },
            },
            "io.containerd.grpc.v1.cri": {
                # exec/attach/port-forward streams that the kubelet proxies: loopback only
                "stream_server_address": HOST,
                "stream_server_port": "0",
            },
        },
    }


def registry_hosts() -> dict[str, Any]:
    return {
        "server": f"http://{REGISTRY}",
        "host": {f"http://{REGISTRY}": {"capabilities": ["pull", "resolve"]}},
    }


def cni_config(p: Paths) -> dict[str, Any]:
    """One bridge; the host holds the gateway address itself (``isGateway: false`` leaves
    ip_forward alone), pods get a route to the Service network only: no default route, so
    nothing leaves the machine."""
    return {
        "cniVersion": "1.0.0",
        "name": "cloudtaser",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": False,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "dataDir": str(work(p) / "cni" / "ipam"),  # not /var/lib/cni/networks
                    "ranges": [[{"subnet": POD_CIDR, "gateway": GATEWAY}]],
                    "routes": [{"dst": SERVICE_CIDR, "gw": GATEWAY}],
                },
            }
        ],
    }


def kubelet_config(p: Paths) -> dict[str, Any]:
    k = work(p) / "kubelet"
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "containerRuntimeEndpoint": f"unix://{_sock(p)}",
        "cgroupDriver": "cgroupfs",  # no systemd here
        "failCgroupV1": False,  # Kubernetes >= 1.35 refuses cgroup v1 unless told
        "failSwapOn": False,
        "cgroupsPerQOS": True,
        "enforceNodeAllocatable": ["pods"],
        "protectKernelDefaults": False,
        "address": HOST,  # the API server reaches it as https://localhost:10250
        "port": KUBELET_PORT,
        "readOnlyPort": 0,
        "healthzBindAddress": HOST,
        "healthzPort": KUBELET_HEALTH_PORT,
        # Clients with a certificate of the stack's CA (the API server's kubelet-client one).
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": False},
            "x509": {"clientCAFile": str(p.ca)},
        },
        "authorization": {"mode": "AlwaysAllow"},
        "podLogsDir": str(k / "pod-logs"),  # else /var/log/pods
        "volumePluginDir": str(k / "volume-plugins"),  # else /usr/libexec/kubernetes/...
        "resolvConf": str(k / "resolv.conf"),  # pods have no DNS: nothing to resolve off-host
        "clusterDomain": "cluster.local",
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
        },  # developer disks fill up
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False,
    }


def _kubeconfig(p: Paths, name: str, user: str) -> dict[str, Any]:
    pair = p.cert(name)
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "local",
                "cluster": {
                    "server": f"https://{HOST}:{APISERVER_PORT}",
                    "certificate-authority": str(p.ca),
                },
            }
        ],
        "users": [
            {
                "name": user,
                "user": {"client-certificate": str(pair.cert), "client-key": str(pair.key)},
            }
        ],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": user}}],
        "current-context": "local",
    }


def _write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:  # mtime moves only on change
        path.write_text(text)
    path.chmod(mode)
    return path


def write_configs(p: Paths) -> None:
    w = work(p)
    _write(w / "containerd" / "config.toml", rendering.toml(containerd_config(p)))
    _write(w / "containerd" / "certs.d" / REGISTRY / "hosts.toml", rendering.toml(registry_hosts()))
    _write(
        w / "cni" / "net.d" / "10-cloudtaser.conflist", json.dumps(cni_config(p), indent=2) + "\n"
    )
    (w / "cni" / "bin").mkdir(parents=True, exist_ok=True)
    for plugin in ("bridge", "host-local", "loopback"):
        target = w / "cni" / "bin" / plugin
        if not target.exists() or target.resolve() != p.binary(plugin).resolve():
            target.unlink(missing_ok=True)
            target.symlink_to(p.binary(plugin).resolve())
    _write(w / "kubelet" / "config.yaml", yaml.safe_dump(kubelet_config(p), sort_keys=False))
    _write(
        w / "kubelet" / "kubeconfig",
        yaml.safe_dump(_kubeconfig(p, "kubelet", f"system:node:{NODE_NAME}"), sort_keys=False),
        0o600,
    )
    _write(w / "kubelet" / "resolv.conf", "nameserver 127.0.0.1\n")
    for d in ("root", "certs", "pod-logs", "volume-plugins"):
        (w / "kubelet" / d).mkdir(parents=True, exist_ok=True)


# --- components -----------------------------------------------------------------------------------


def _https_ok(url: str) -> str | None:
    try:  # self-signed serving certificates of the node's own components, on loopback
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)
            r = requests.get(url, verify=False, timeout=2)
    except requests.RequestException as e:
        return f"not answering ({type(e).__name__})"
    return None if r.ok else f"HTTP {r.status_code}: {r.text[:120].strip()}"


def _tcp_ok(address: tuple[str, int]) -> str | None:
    try:
        with socket.create_connection(address, timeout=2):
            return None
    except OSError as e:
        return f"not accepting on {address[0]}:{address[1]} ({e.strerror or type(e).__name__})"


def _containerd_ok(p: Paths) -> str | None:
    if not _sock(p).exists():
        return f"no socket {_sock(p)}"
    proc = subprocess.run(
        [str(p.binary("ctr")), "--address", str(_sock(p)), "version"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    return (
        None if proc.returncode == 0 else (proc.stderr.strip().splitlines() or ["ctr failed"])[-1]
    )


def _forwarder_argv(p: Paths) -> list[str]:
    rules = [f"{a}:{b}={c}:{d}" for (a, b), (c, d) in FORWARDS.items()]
    # the venv's interpreter by its own path (resolved, it would lose the venv)
    return [sys.executable, "-m", "cloudtaser.testbed.forwarding", *rules]


def _controller_manager_argv(p: Paths) -> list[str]:
    kubeconfig = str(p.kubeconfig)
    return [
        str(p.binary("kube-controller-manager")),
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        f"--bind-address={HOST}",
        f"--secure-port={CONTROLLER_MANAGER_PORT}",
        f"--cert-dir={work(p) / 'controller-manager'}",
        "--leader-elect=false",
        # kube-root-ca.crt in every namespace (pods' kube-api-access volume)
        f"--root-ca-file={p.ca}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--cluster-name=cloudtaser-local",
        "--v=1",
    ]


def _scheduler_argv(p: Paths) -> list[str]:
    kubeconfig = str(p.kubeconfig)
    return [
        str(p.binary("kube-scheduler")),
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        f"--bind-address={HOST}",
        f"--secure-port={SCHEDULER_PORT}",
        f"--cert-dir={work(p) / 'scheduler'}",
        "--leader-elect=false",
        "--v=1",
    ]


def _kubelet_argv(p: Paths) -> list[str]:
    k = work(p) / "kubelet"
    return [
        str(p.binary("kubelet")),
        f"--config={k / 'config.yaml'}",
        f"--kubeconfig={k / 'kubeconfig'}",
        f"--root-dir={kubelet_root(p)}",
        f"--cert-dir={k / 'certs'}",
        f"--hostname-override={NODE_NAME}",
        "--v=1",
    ]


def _path_env(p: Paths) -> dict[str, str]:
    # containerd runs containerd-shim-runc-v2 from PATH: ours first.
    return {"PATH": f"{p.bin}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"}


COMPONENTS = [
    Component(
        "forwarder",
        sys.executable,
        ", ".join(f"{a}:{b}" for a, b in FORWARDS),
        _forwarder_argv,
        lambda p: _tcp_ok((KUBERNETES_SERVICE_IP, 443)),
        inputs=lambda p: [],
        timeout=30,
    ),
    Component(
        "containerd",
        "containerd",
        "unix://{state}/node/containerd/containerd.sock",
        lambda p: [
            str(p.binary("containerd")),
            "--config",
            str(work(p) / "containerd" / "config.toml"),
        ],
        _containerd_ok,
        env=_path_env,
        timeout=60,
        inputs=lambda p: [work(p) / "containerd" / "config.toml"],
    ),
    Component(
        "kube-controller-manager",
        "kube-controller-manager",
        f"https://{HOST}:{CONTROLLER_MANAGER_PORT}",
        _controller_manager_argv,
        lambda p: _https_ok(f"https://{HOST}:{CONTROLLER_MANAGER_PORT}/healthz"),
        inputs=lambda p: [p.cert("admin").cert],
    ),
    Component(
        "kube-scheduler",
        "kube-scheduler",
        f"https://{HOST}:{SCHEDULER_PORT}",
        _scheduler_argv,
        lambda p: _https_ok(f"https://{HOST}:{SCHEDULER_PORT}/healthz"),
        inputs=lambda p: [p.cert("admin").cert],
    ),
    Component(
        "kubelet",
        "kubelet",
        f"https://{HOST}:{KUBELET_PORT}",
        _kubelet_argv,
        lambda p: _https_ok(f"http://{HOST}:{KUBELET_HEALTH_PORT}/healthz"),
        env=_path_env,
        inputs=lambda p: [work(p) / "kubelet" / "config.yaml", p.cert("kubelet").cert],
    ),
]


# --- the host's side --------------------------------------------------------------------------------


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=False)
    if check and proc.returncode != 0:
        raise StackError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc


def _sysctl(key: str) -> str:
    return Path("/proc/sys", *key.split(".")).read_text().strip()


def record_host(p: Paths) -> None:
    """What the host looked like before the node's first ``up`` (``down`` restores it)."""
    before = work(p) / "host-before.json"
    if before.exists():
        return
    record = {
        "sysctls": {key: _sysctl(key) for key in SYSCTLS},
        "paths": [path for path in HOST_PATHS if os.path.lexists(path)],
        "cgroups": [str(c) for c in _cgroups()],
    }
    _write(before, json.dumps(record, indent=2) + "\n")


def _host_before(p: Paths) -> dict[str, Any]:
    try:
        record: dict[str, Any] = json.loads((work(p) / "host-before.json").read_text())
    except (OSError, ValueError):
        return {"sysctls": {}, "paths": list(HOST_PATHS), "cgroups": []}  # touch nothing
    return record


def _cgroups() -> list[Path]:
    return [
        d / name
        for d in sorted(CGROUP_ROOT.iterdir())
        if d.is_dir()
        for name in CGROUP_NAMES
        if (d / name).is_dir()
    ]


def ensure_network() -> None:
    """The bridge with the host's gateway address and the Service addresses forwarded here."""
    if _ip("link", "show", BRIDGE, check=False).returncode != 0:
        _ip("link", "add", BRIDGE, "type", "bridge")
    _ip("addr", "replace", f"{GATEWAY}/24", "dev", BRIDGE)
    for address, _port in FORWARDS:
        _ip("addr", "replace", f"{address}/32", "dev", BRIDGE)
    _ip("link", "set", BRIDGE, "up")


def check_host() -> None:
    if os.geteuid() != 0:
        raise StackError(
            "the node needs root (kubelet, containerd and runc manage cgroups, "
            "mounts and network namespaces); run as root or use --no-node"
        )
    runc()
    if "overlay" not in Path("/proc/filesystems").read_text():
        raise StackError("the node's containerd needs overlayfs, which this kernel lacks")
    if shutil.which("ip") is None:
        raise StackError("ip (iproute2) not found: the node configures its bridge with it")


def _kubectl(p: Paths, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(p.binary("kubectl")), f"--kubeconfig={p.kubeconfig}", "--request-timeout=10s", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def node_ready(p: Paths) -> str | None:
    """None when the Node is Ready, else what its Ready condition (or its absence) says."""
    proc = _kubectl(p, "get", "node", NODE_NAME, "-o", "json")
    if proc.returncode != 0:
        return "not registered"
    for c in json.loads(proc.stdout).get("status", {}).get("conditions", []):
        if c.get("type") == "Ready":
            return None if c.get("status") == "True" else f"NotReady: {c.get('message', '')}"
    return "no Ready condition yet"


def up(p: Paths, log: Callable[[str], None], timeout: float = 120.0) -> None:
    """Start the node (the control plane must be up): Node ``localhost`` Ready."""
    check_host()
    record_host(p)
    ensure_network()
    SHIM_DIR.mkdir(parents=True, exist_ok=True)
    write_configs(p)
    start_all(p, COMPONENTS, log)
    started, reason = time.monotonic(), node_ready(p)
    while reason is not None and time.monotonic() - started < timeout:
        time.sleep(0.5)
        reason = node_ready(p)
    if reason is not None:
        raise StackError(
            f"node {NODE_NAME} not Ready after {timeout:.0f}s: {reason} (log: {p.log('kubelet')})"
        )
    log(f"node {NODE_NAME}: Ready")


def status(p: Paths) -> list[dict[str, str]]:
    rows = []
    for c in COMPONENTS:
        pid = running_pid(p, c)
        health = "stopped" if pid is None else (c.health(p) or "healthy")
        rows.append(
            {
                "component": c.name,
                "pid": str(pid or "-"),
                "address": c.address.replace("{state}", str(p.state)),
                "health": health,
            }
        )
    if running_pid(p, COMPONENTS[-1]) is not None:
        rows.append(
            {
                "component": f"node/{NODE_NAME}",
                "pid": "-",
                "address": "-",
                "health": node_ready(p) or "healthy",
            }
        )
    return rows


# --- down -----------------------------------------------------------------------------------------


def _api_up(p: Paths) -> bool:
    return (
        p.kubeconfig.exists() and _kubectl(p, "get", "--raw", "/readyz", timeout=15).returncode == 0
    )


def drain(p: Paths, log: Callable[[str], None], timeout: float = 60.0) -> None:
    """Delete every pod bound to the node while the kubelet runs (it stops the containers,
    calls CNI DEL, unmounts the volumes), then force-delete what is left, then the Node and
    its Lease. The controllers are stopped first, so nothing makes new pods meanwhile."""
    selector = f"spec.nodeName={NODE_NAME}"
    _kubectl(p, "delete", "pods", "-A", "--field-selector", selector, "--wait=false")
    deadline = time.monotonic() + timeout
    left = "?"
    while time.monotonic() < deadline:
        proc = _kubectl(p, "get", "pods", "-A", "--field-selector", selector, "-o", "name")
        left = proc.stdout.strip()
        if proc.returncode == 0 and not left:
            break
        time.sleep(1)
    if left:
        log(f"node: pods not gone after {timeout:.0f}s, force-deleting: {' '.join(left.split())}")
        _kubectl(
            p, "delete", "pods", "-A", "--field-selector", selector, "--force", "--grace-period=0"
        )
    _kubectl(p, "delete", "node", NODE_NAME, "--ignore-not-found")
    _kubectl(p, "delete", "lease", NODE_NAME, "-n", "kube-node-lease", "--ignore-not-found")


def _ctr(p: Paths, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(p.binary("ctr")), "--address", str(_sock(p)), "-n", "k8s.io", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def _remove_containers(p: Paths) -> None:
    """What the kubelet left (it was gone or did not finish): kill and delete every task and
    container through containerd itself."""
    tasks = _ctr(p, "tasks", "ls", "-q").stdout.split()
    for task in tasks:
        _ctr(p, "tasks", "kill", "-s", "SIGKILL", task)
    for task in tasks:
        _ctr(p, "tasks", "delete", "-f", task)
    for container in _ctr(p, "containers", "ls", "-q").stdout.split():
        _ctr(p, "containers", "delete", container)


def _kill_shims(p: Paths, log: Callable[[str], None]) -> None:
    """Shims outlive containerd; ours are the processes running our shim binary (and, after a
    SIGKILL of a shim, the container processes it leaves are in kubepods cgroups: below)."""
    shim = p.binary("containerd-shim-runc-v2").resolve()
    for pid, exe in executables():
        if exe == shim:
            log(f"node: leftover shim (pid {pid}) killed")
            os.kill(pid, 9)


def _kill_cgroup_members(path: Path) -> None:
    for procs in path.rglob("cgroup.procs"):
        for pid in procs.read_text().split():
            try:
                os.kill(int(pid), 9)
            except ProcessLookupError:
                pass


def _unmount_all(root: Path) -> list[str]:
    """Unmount every mount under ``root``, deepest first (overlay rootfs, shm, netns, volume
    tmpfs); returns those that stayed."""
    prefix = str(root) + "/"
    left: list[str] = []
    for _ in range(3):
        mounts = sorted(
            {
                line.split()[4]
                for line in Path("/proc/self/mountinfo").read_text().splitlines()
                if line.split()[4].startswith(prefix)
            },
            reverse=True,
        )
        if not mounts:
            return []
        for m in mounts:
            if subprocess.run(["umount", m], capture_output=True, check=False).returncode != 0:
                subprocess.run(["umount", "-l", m], capture_output=True, check=False)
        left = mounts
    return left


def down(p: Paths, log: Callable[[str], None]) -> None:
    """Stop the node and remove everything it made (the checklist is the module docstring)."""
    by_name = {c.name: c for c in COMPONENTS}
    api = _api_up(p)
    for name in ("kube-controller-manager", "kube-scheduler"):  # nothing recreates pods now
        stop(p, by_name[name], log)
    if api and running_pid(p, by_name["kubelet"]) is not None:
        drain(p, log)
    elif api:
        _kubectl(
            p,
            "delete",
            "pods",
            "-A",
            "--field-selector",
            f"spec.nodeName={NODE_NAME}",
            "--force",
            "--grace-period=0",
        )
        _kubectl(p, "delete", "node", NODE_NAME, "--ignore-not-found")
    stop(p, by_name["kubelet"], log, timeout=20)
    if running_pid(p, by_name["containerd"]) is not None:
        _remove_containers(p)
    stop(p, by_name["containerd"], log, timeout=20)
    if not (work(p) / "host-before.json").exists():
        stop(p, by_name["forwarder"], log)
        return  # this state directory never started a node: nothing of it on the host
    _kill_shims(p, log)
    before = _host_before(p)
    for c in _cgroups():  # container processes a killed shim left behind
        if str(c) not in before["cgroups"]:
            _kill_cgroup_members(c)
    left = _unmount_all(work(p))
    if left:
        log(f"node: could not unmount: {' '.join(left)}")
    if _ip("link", "show", BRIDGE, check=False).returncode == 0:
        _ip("link", "del", BRIDGE)
    stop(p, by_name["forwarder"], log)
    for c in _cgroups():
        if str(c) not in before["cgroups"]:
            try:
                for d in sorted(
                    [x for x in c.rglob("*") if x.is_dir()], key=lambda d: -len(d.parts)
                ):
                    d.rmdir()
                c.rmdir()
            except OSError as e:
                log(f"node: could not remove cgroup {c}: {e.strerror}")
    for key, value in before["sysctls"].items():
        if _sysctl(key) != value:
            Path("/proc/sys", *key.split(".")).write_text(value)
            log(f"node: restored {key}={value}")
    for path in HOST_PATHS:
        if os.path.lexists(path) and path not in before["paths"]:
            _remove(Path(path))
            log(f"node: removed {path}")
    for name in ("containerd", "kubelet", "cni", "controller-manager", "scheduler"):
        shutil.rmtree(work(p) / name, ignore_errors=True)
    (work(p) / "host-before.json").unlink(missing_ok=True)


def _remove(path: Path) -> None:
    """A host path the node made; a bpffs pin directory is emptied pin by pin (unlink)."""
    if path.is_dir() and not path.is_symlink():
        for child in sorted(path.rglob("*"), key=lambda c: -len(c.parts)):
            if child.is_dir() and not child.is_symlink():
                child.rmdir()
            else:
                child.unlink()
        path.rmdir()
    else:
        path.unlink()
