"""A kubelet stand-in for end-to-end tests: runs an admitted pod as local processes.

Why this exists: this machine has the real API server and the real webhook, but no kubelet
and no container engine, so a pod is admitted (and mutated) and then never runs. Tests only:
``run_pod`` takes such a pod from the API server and does what a kubelet would do with it,
closely enough that the injected wrapper meets what it meets in a cluster:

- registers this machine as a Node (Ready, via the status subresource) and binds the pod to it
  through the pod's ``binding`` subresource, so ``spec.nodeName`` is set by the API server;
- prepares the volumes in a per-pod tmpfs: emptyDir (its own tmpfs when ``medium: Memory``),
  projected serviceAccountToken (a real TokenRequest token, bound to the pod, with the
  audience and lifetime asked), configMap/secret (read through kubectl), hostPath;
- runs the init containers one by one, then the containers together, each in its own mount
  namespace with its volumes bind-mounted at their mountPaths (mounts sorted by depth, as
  containerd does), with command+args ($(VAR) expanded), env (plain ``value`` only) and
  workingDir, in a cgroup v2 directory named like the kubelet's systemd driver names it
  (``kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid>.slice/cri-containerd-<id>.scope``)
  so PID -> cgroup -> pod works as on a node;
- reports the phase and container states through the pod's ``status`` subresource.

What it does not do: pull images (the "image" is this host's filesystem; a pod must set
``command``; ``images`` maps an image to host directories bind-mounted into it, e.g. the wrapper
bundle at /bundle), apply securityContext (users, capabilities, read-only root: everything
runs as the test's user), network or PID namespaces, probes, restarts (every container runs
once, as with ``restartPolicy: Never``), resource limits, token rotation, env ``valueFrom``,
downwardAPI volumes.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

HOST_IP = "127.0.0.1"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
KILLED = 137  # what a runtime reports for a container it had to kill


class HarnessError(Exception):
    """The pod asks for something this stand-in cannot do (or the host refused it)."""


class Kubectl(Protocol):
    """Runs kubectl against the stack and returns stdout (raising on failure)."""

    def __call__(self, *args: str, stdin: str | None = None) -> str: ...


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _run(*argv: str) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise HarnessError(f"{' '.join(argv)}: {proc.stderr.strip()}")


# --- node and binding --------------------------------------------------------------------------


def node_name() -> str:
    return socket.gethostname().lower()


def ensure_node(kubectl: Kubectl) -> str:
    """This machine as a Node (created when absent), marked Ready through the status
    subresource; returns its name."""
    name = node_name()
    existing = kubectl("get", "nodes", "-o", "name")
    if f"node/{name}" not in existing.split():
        kubectl("create", "-f", "-", stdin=json.dumps({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {
                "kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}},
        }))
    ready = {"type": "Ready", "status": "True", "reason": "KubeletReady",
             "message": "test harness stand-in", "lastHeartbeatTime": _now(),
             "lastTransitionTime": _now()}
    kubectl("patch", "node", name, "--subresource=status", "--type=merge", "-p", json.dumps({
        "status": {"conditions": [ready],
                   "addresses": [{"type": "InternalIP", "address": HOST_IP},
                                 {"type": "Hostname", "address": name}]}}))
    return name


def bind_pod(kubectl: Kubectl, pod: dict[str, Any], node: str) -> None:
    """POST pods/NAME/binding, as the scheduler does (skipped when already bound)."""
    meta = pod["metadata"]
    if pod["spec"].get("nodeName"):
        if pod["spec"]["nodeName"] != node:
            raise HarnessError(f"pod {meta['name']} is bound to {pod['spec']['nodeName']}")
        return
    binding = {"apiVersion": "v1", "kind": "Binding",
               "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
               "target": {"apiVersion": "v1", "kind": "Node", "name": node}}
    kubectl("create", "--raw",
            f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/binding",
            "-f", "-", stdin=json.dumps(binding))


# --- the pod's sandbox: a tmpfs directory, its mounts, its cgroup -------------------------------


def cgroup2_root() -> Path:
    """Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup, or .../unified on hybrid)."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        if right.split()[0] == "cgroup2":
            return Path(left.split()[4])
    raise HarnessError("no cgroup v2 hierarchy is mounted on this machine")


def pod_cgroup(pod: dict[str, Any]) -> Path:
    """The pod's cgroup as the kubelet's systemd cgroup driver names it."""
    uid = pod["metadata"]["uid"].replace("-", "_")
    qos = pod.get("status", {}).get("qosClass", "BestEffort")
    top = cgroup2_root() / "kubepods.slice"
    if qos == "Guaranteed":
        return top / f"kubepods-pod{uid}.slice"
    tier = qos.lower()
    return top / f"kubepods-{tier}.slice" / f"kubepods-{tier}-pod{uid}.slice"


@dataclass
class Sandbox:
    """What the pod owns on this host; ``close`` undoes all of it, in reverse."""

    root: Path
    cgroup: Path
    mounts: list[Path] = field(default_factory=list)  # host mounts, in mount order
    created: list[Path] = field(default_factory=list)  # host mountpoints made for containers

    def tmpfs(self, path: Path, size: str | None = None) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        options = "mode=0755" + (f",size={size}" if size else "")
        _run("mount", "-t", "tmpfs", "-o", options, "cloudtaser-harness", str(path))
        self.mounts.append(path)
        return path

    def close(self) -> None:
        try:
            remove_cgroup(self.cgroup)
        finally:
            for path in reversed(self.mounts):
                subprocess.run(["umount", "--lazy", str(path)], capture_output=True, check=False)
            for path in reversed(self.created):
                with _ignoring(OSError):
                    if path.is_dir():
                        path.rmdir()
                    else:
                        path.unlink()
            shutil.rmtree(self.root, ignore_errors=True)


@contextmanager
def _ignoring(*errors: type[BaseException]) -> Iterator[None]:
    try:
        yield
    except errors:
        pass


def remove_cgroup(cgroup: Path) -> None:
    """Kill what is left in the pod's cgroup, remove it, its children and empty parents."""
    if not cgroup.is_dir():
        return
    if (cgroup / "cgroup.kill").exists():
        (cgroup / "cgroup.kill").write_text("1")
    deadline = time.monotonic() + 10
    for child in sorted(cgroup.glob("*.scope")) + [cgroup]:
        while True:
            try:
                child.rmdir()
                break
            except OSError:  # EBUSY while killed processes are being reaped
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    for parent in (cgroup.parent, cgroup.parent.parent):
        if parent.name.startswith("kubepods"):
            with _ignoring(OSError):  # still used by another pod
                parent.rmdir()


@contextmanager
def sandbox_for(pod: dict[str, Any]) -> Iterator[Sandbox]:
    root = Path(tempfile.mkdtemp(prefix=f"harness-{pod['metadata']['name']}-"))
    box = Sandbox(root=root, cgroup=pod_cgroup(pod))
    try:
        box.tmpfs(root)  # tokens, secrets and logs stay in memory, like the kubelet's
        box.cgroup.mkdir(parents=True, exist_ok=False)
        yield box
    finally:
        box.close()


# --- volumes -----------------------------------------------------------------------------------


def _tmpfs_size(quantity: str | None) -> str | None:
    """A Kubernetes quantity (64Mi, 1G, 1000) as a tmpfs size in bytes."""
    if not quantity:
        return None
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 10**3, "M": 10**6, "G": 10**9}
    number = re.fullmatch(r"(\d+)([KMG]i|[kMG])?", quantity)
    if number is None:
        raise HarnessError(f"unsupported quantity {quantity!r}")
    return str(int(number.group(1)) * units.get(number.group(2) or "", 1))


def _write(directory: Path, files: Mapping[str, bytes], mode: int = 0o644) -> None:
    for rel, content in files.items():
        target = directory / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        target.chmod(mode)


def _object_data(kubectl: Kubectl, kind: str, namespace: str, name: str,
                 items: list[dict[str, Any]] | None) -> dict[str, bytes]:
    """A ConfigMap's or Secret's keys as files (``items`` picks and renames keys)."""
    body = json.loads(kubectl("get", kind, name, "-n", namespace, "-o", "json"))
    data = {k: v.encode() for k, v in body.get("data", {}).items()} if kind == "configmap" \
        else {k: base64.b64decode(v) for k, v in body.get("data", {}).items()}
    data.update({k: base64.b64decode(v) for k, v in body.get("binaryData", {}).items()})
    if items:
        return {item["path"]: data[item["key"]] for item in items}
    return data


def _token(kubectl: Kubectl, pod: dict[str, Any], source: dict[str, Any]) -> bytes:
    """A TokenRequest token for the pod's service account, bound to the pod."""
    meta = pod["metadata"]
    args = ["create", "token", pod["spec"].get("serviceAccountName", "default"),
            "-n", meta["namespace"], "--duration", f"{source.get('expirationSeconds', 3600)}s",
            "--bound-object-kind", "Pod", "--bound-object-name", meta["name"],
            "--bound-object-uid", meta["uid"]]
    if source.get("audience"):
        args += ["--audience", source["audience"]]
    return kubectl(*args).strip().encode()


def _projected(kubectl: Kubectl, pod: dict[str, Any], spec: dict[str, Any],
               directory: Path) -> None:
    namespace = pod["metadata"]["namespace"]
    for source in spec.get("sources", []):
        if "serviceAccountToken" in source:
            token = source["serviceAccountToken"]
            _write(directory, {token["path"]: _token(kubectl, pod, token)}, 0o600)
        elif "configMap" in source or "secret" in source:
            kind = "configmap" if "configMap" in source else "secret"
            ref = source.get("configMap") or source["secret"]
            _write(directory, _object_data(kubectl, kind, namespace, ref["name"],
                                           ref.get("items")))
        else:
            raise HarnessError(f"projected source {sorted(source)} is not supported")


def _host_path(spec: dict[str, Any], host_paths: Mapping[str, Path]) -> Path:
    """The hostPath (or the test's stand-in for it), checked like the kubelet checks types."""
    path = Path(host_paths.get(spec["path"], spec["path"]))
    kind = spec.get("type", "")
    if kind == "DirectoryOrCreate":
        path.mkdir(parents=True, exist_ok=True)
    elif kind == "Directory" and not path.is_dir():
        raise HarnessError(f"hostPath type check failed: {spec['path']} is not a directory")
    elif kind == "File" and not path.is_file():
        raise HarnessError(f"hostPath type check failed: {spec['path']} is not a file")
    return path


def prepare_volumes(kubectl: Kubectl, pod: dict[str, Any], box: Sandbox,
                    host_paths: Mapping[str, Path]) -> dict[str, Path]:
    """Each pod volume as a host path (by volume name)."""
    found: dict[str, Path] = {}
    namespace = pod["metadata"]["namespace"]
    for volume in pod["spec"].get("volumes", []):
        name, here = volume["name"], box.root / "volumes" / volume["name"]
        if "emptyDir" in volume:
            spec = volume["emptyDir"] or {}
            if spec.get("medium") == "Memory":
                box.tmpfs(here, _tmpfs_size(spec.get("sizeLimit")))
            here.mkdir(parents=True, exist_ok=True)
            here.chmod(0o777)
        elif "projected" in volume:
            _projected(kubectl, pod, volume["projected"], box.tmpfs(here))
        elif "configMap" in volume or "secret" in volume:
            kind = "configmap" if "configMap" in volume else "secret"
            ref = volume.get("configMap") or volume["secret"]
            ref_name = ref.get("name") or ref["secretName"]
            _write(box.tmpfs(here), _object_data(kubectl, kind, namespace, ref_name,
                                                 ref.get("items")))
        elif "hostPath" in volume:
            here = _host_path(volume["hostPath"], host_paths)
        else:
            raise HarnessError(f"volume {name}: type {sorted(volume)} is not supported")
        found[name] = here
    return found


# --- containers --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mount:
    source: Path  # on the host
    target: str  # inside the container
    read_only: bool = False


_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in command, args and env values ($$ escapes)."""
    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))
    return _REFERENCE.sub(one, value)


def container_env(spec: dict[str, Any], pod_name: str) -> dict[str, str]:
    """The "image" env (this host's PATH), then the spec's plain values; valueFrom skipped."""
    env = {"PATH": DEFAULT_PATH, "HOSTNAME": pod_name, "HOME": "/root"}
    for entry in spec.get("env") or []:
        if "value" in entry or "valueFrom" not in entry:
            env[entry["name"]] = expand(entry.get("value", ""), env)
    return env


def container_argv(spec: dict[str, Any], env: Mapping[str, str]) -> list[str]:
    if not spec.get("command"):
        raise HarnessError(f"container {spec['name']}: no command (no image entrypoints here)")
    return [expand(arg, env) for arg in spec["command"] + list(spec.get("args") or [])]


def container_mounts(spec: dict[str, Any], volumes: Mapping[str, Path],
                     image: Mapping[str, Path]) -> list[Mount]:
    """The image's mapped directories, then the volumeMounts, shallowest target first."""
    mounts = [Mount(src, target, read_only=True) for target, src in image.items()]
    for vm in spec.get("volumeMounts") or []:
        source = volumes[vm["name"]] / vm.get("subPath", "")
        mounts.append(Mount(source, vm["mountPath"], bool(vm.get("readOnly"))))
    return sorted(mounts, key=lambda m: len(Path(os.path.normpath(m.target)).parts))


def _host_mountpoint(mount: Mount, earlier: list[Mount]) -> Path | None:
    """Where ``mount.target`` is on the host as seen before the container's earlier mounts
    (following symlinks such as /var/run -> /run): inside an earlier mount's source, or
    ``None`` when it is on the host's own filesystem."""
    real = Path(os.path.realpath(mount.target))
    for prior in reversed(earlier):
        base = Path(os.path.realpath(prior.target))
        if real.is_relative_to(base):
            return prior.source / real.relative_to(base)
    return None


def make_mountpoints(mounts: list[Mount], box: Sandbox) -> None:
    """Create missing mountpoints; those on the host's filesystem are removed afterwards."""
    for index, mount in enumerate(mounts):
        inside = _host_mountpoint(mount, mounts[:index])
        path = inside or Path(os.path.realpath(mount.target))
        missing = [p for p in [path, *path.parents] if not p.exists()]
        if not missing:
            continue
        if mount.source.is_dir():
            path.mkdir(parents=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
        if inside is None:
            box.created.extend(reversed(missing))


@dataclass
class ContainerRun:
    """One container of the pod, run as a local process."""

    name: str
    image: str
    init: bool
    argv: list[str]
    env: dict[str, str]
    workdir: str
    mounts: list[Mount]
    id: str = field(default_factory=lambda: secrets.token_hex(32))
    process: subprocess.Popen[bytes] | None = None
    started_at: str | None = None
    finished_at: str | None = None
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""

    def scope(self, box: Sandbox) -> Path:
        return box.cgroup / f"cri-containerd-{self.id}.scope"

    def setup_script(self, box: Sandbox) -> str:
        """Runs as the container's PID in its new mount namespace, then execs the command."""
        q = shlex.quote
        lines = ["set -e", f"echo $$ > {q(str(self.scope(box) / 'cgroup.procs'))}"]
        for m in self.mounts:
            lines.append(f"mount --bind {q(str(m.source))} {q(m.target)}")
            if m.read_only:
                lines.append(f"mount -o remount,bind,ro {q(m.target)}")
        lines += [f"cd {q(self.workdir)}", 'exec "$@"']
        return "\n".join(lines)

    def start(self, box: Sandbox) -> None:
        self.scope(box).mkdir()
        logs = box.root / "logs"
        logs.mkdir(exist_ok=True)
        argv = ["unshare", "--mount", "--propagation", "private", "--",
                "/bin/sh", "-c", self.setup_script(box), self.name, *self.argv]
        with open(logs / f"{self.name}.out", "wb") as out, \
                open(logs / f"{self.name}.err", "wb") as err:
            self.process = subprocess.Popen(
                [shutil.which(argv[0]) or argv[0], *argv[1:]], env=self.env,
                stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True)
        self.started_at = _now()

    def wait(self, box: Sandbox, deadline: float) -> int:
        assert self.process is not None
        try:
            self.exit_code = self.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            (self.scope(box) / "cgroup.kill").write_text("1")
            self.process.wait()
            self.exit_code = KILLED
        self.finished_at = _now()
        logs = box.root / "logs"
        self.stdout = (logs / f"{self.name}.out").read_text(errors="replace")
        self.stderr = (logs / f"{self.name}.err").read_text(errors="replace")
        return self.exit_code  # the scope goes with the pod's cgroup (with any leftovers)

    def kill(self, box: Sandbox) -> None:
        """Stop a container that is still running (the harness is failing)."""
        if self.process is not None and self.process.poll() is None:
            (self.scope(box) / "cgroup.kill").write_text("1")
            self.process.wait()

    def status(self) -> dict[str, Any]:
        """This container's entry in initContainerStatuses / containerStatuses."""
        if self.exit_code is not None:
            state: dict[str, Any] = {"terminated": {
                "exitCode": self.exit_code, "reason": "Completed" if self.exit_code == 0
                else "Error", "startedAt": self.started_at, "finishedAt": self.finished_at,
                "containerID": f"containerd://{self.id}"}}
        elif self.process is not None:
            state = {"running": {"startedAt": self.started_at}}
        else:
            state = {"waiting": {"reason": "PodInitializing"}}
        return {"name": self.name, "image": self.image, "imageID": "", "restartCount": 0,
                "containerID": f"containerd://{self.id}", "state": state,
                "ready": "running" in state, "started": "running" in state}


def container_runs(pod: dict[str, Any], volumes: Mapping[str, Path],
                   images: Mapping[str, Mapping[str, Path]], init: bool) -> list[ContainerRun]:
    runs = []
    for spec in pod["spec"].get("initContainers" if init else "containers") or []:
        env = container_env(spec, pod["metadata"]["name"])
        runs.append(ContainerRun(
            name=spec["name"], image=spec.get("image", ""), init=init,
            argv=container_argv(spec, env), env=env, workdir=spec.get("workingDir") or "/",
            mounts=container_mounts(spec, volumes, images.get(spec.get("image", ""), {}))))
    return runs


# --- status and the whole pod ------------------------------------------------------------------


def report_status(kubectl: Kubectl, pod: dict[str, Any], phase: str,
                  inits: list[ContainerRun], apps: list[ContainerRun]) -> None:
    """The pod's phase and container states, through the status subresource."""
    running = phase == "Running" and all(a.exit_code is None for a in apps)
    initialized = all(i.exit_code == 0 for i in inits)
    conditions = [{"type": t, "status": "True" if ok else "False", "lastTransitionTime": _now()}
                  for t, ok in (("PodScheduled", True), ("Initialized", initialized),
                                ("ContainersReady", running), ("Ready", running))]
    status = {"phase": phase, "hostIP": HOST_IP, "hostIPs": [{"ip": HOST_IP}],
              "startTime": inits[0].started_at if inits and inits[0].started_at else _now(),
              "conditions": conditions,
              "initContainerStatuses": [i.status() for i in inits],
              "containerStatuses": [a.status() for a in apps]}
    meta = pod["metadata"]
    kubectl("patch", "pod", meta["name"], "-n", meta["namespace"], "--subresource=status",
            "--type=merge", "-p", json.dumps({"status": status}))


@dataclass
class PodResult:
    node: str
    phase: str
    init_containers: list[ContainerRun]
    containers: list[ContainerRun]

    def container(self, name: str) -> ContainerRun:
        return next(c for c in self.init_containers + self.containers if c.name == name)


def _run_containers(kubectl: Kubectl, pod: dict[str, Any], box: Sandbox,
                    inits: list[ContainerRun], apps: list[ContainerRun],
                    deadline: float) -> str:
    """Init containers one by one (the first failure fails the pod), then all containers."""
    for init in inits:
        make_mountpoints(init.mounts, box)
        init.start(box)
        if init.wait(box, deadline) != 0:
            return "Failed"
    for app in apps:
        make_mountpoints(app.mounts, box)
        app.start(box)
    report_status(kubectl, pod, "Running", inits, apps)
    codes = [app.wait(box, deadline) for app in apps]
    return "Succeeded" if all(code == 0 for code in codes) else "Failed"


def run_pod(kubectl: Kubectl, namespace: str, name: str, *,
            images: Mapping[str, Mapping[str, Path]] | None = None,
            host_paths: Mapping[str, Path] | None = None, timeout: float = 120) -> PodResult:
    """Bind the admitted pod ``namespace/name`` to this node and run it to completion.

    ``images`` maps an image name to {path in the container: host directory}; ``host_paths``
    maps a hostPath to the host directory standing in for it."""
    pod = json.loads(kubectl("get", "pod", name, "-n", namespace, "-o", "json"))
    node = ensure_node(kubectl)
    bind_pod(kubectl, pod, node)
    deadline = time.monotonic() + timeout
    with sandbox_for(pod) as box:
        volumes = prepare_volumes(kubectl, pod, box, host_paths or {})
        inits = container_runs(pod, volumes, images or {}, init=True)
        apps = container_runs(pod, volumes, images or {}, init=False)
        report_status(kubectl, pod, "Pending", inits, apps)
        try:
            phase = _run_containers(kubectl, pod, box, inits, apps, deadline)
        except BaseException:
            for run in inits + apps:
                run.kill(box)
            report_status(kubectl, pod, "Failed", inits, apps)
            raise
        report_status(kubectl, pod, phase, inits, apps)
    return PodResult(node=node, phase=phase, init_containers=inits, containers=apps)
