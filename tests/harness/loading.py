"""The local stack under load, for benchmarks/load.py (its figures) and tests/e2e/test_load.py
(its short version: failures asserted, never timings).

``wrapper_starts``: N real wrappers (the Go binary, tests/harness/wrapper.py, with the demo
binding's compiled config, env + file + SDK delivery, each with its own TokenRequest token) are
spawned behind a FIFO, moved into a memory cgroup of their own (so that running out of memory
kills wrappers, never the shared stack), and released at once by closing the FIFO. Each app is
`date +%s.%N`: start latency = its clock reading minus the release time. Retries are the
wrapper's own "retrying after ..." lines (transient errors, bounded by --deadline); logins are
counted by OpenBao itself (its route metric for the kubernetes auth mount, /v1/sys/metrics);
memory is the cgroup's peak usage. When the node agent can run (root, BPF), one agent serves the
registrations of all N wrappers.

``webhook_load``: SecretBindings (created in parallel in the namespace cloudtaser-load, deleted
afterwards) in the API server; `cloudtaser operator` runs as a follower replica (its
leader-election Lease is held here, so it lists, compiles and serves the webhook but never
writes the cluster's shared MutatingWebhookConfiguration or statuses); the same AdmissionReview
(a pod one binding selects) is sent straight to its HTTPS endpoint at a fixed rate, over
kept-alive connections as the API server does. The operator's RSS and, when it can run, the
node agent's (--node: it lists and compiles the same bindings) are sampled every second.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import datetime
import json
import os
import re
import resource
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import kubernetes

from cloudtaser.engine.plans import CONFIG_ENV
from cloudtaser.engine.reports import lease_name
from cloudtaser.engine.resources import GROUP, VERSION
from cloudtaser.testbed import provisioning, stacking
from cloudtaser.testbed.certificates import CertificateAuthority
from tests.harness import wrapper as go_wrapper
from tests.harness.documents import binding_doc, pod_doc
from tests.harness.processes import stop
from tests.harness.stack import compiled_config

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "cloudtaser-load"
LEASE = "cloudtaser-operator"  # operator/cloudtaser/operator/election.py
OPERATOR_PORT, PROBE_PORT = 18460, 18461
CGROUP_ROOT = Path("/sys/fs/cgroup/memory")  # cgroup v1 here; v2 handled too


async def paced(rate: float, seconds: float, one: Callable[[float], Awaitable[None]]) -> None:
    """Start ``one(begin)`` ``rate`` times a second for ``seconds``, open loop (a slow answer
    does not delay the next request, as with real admission traffic), then wait for all.
    ``begin`` is the run's perf_counter start, for timelines."""
    tasks = []
    begin = time.perf_counter()
    for i in range(int(seconds * rate)):
        delay = begin + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(begin)))
    await asyncio.gather(*tasks)


def rss_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def api_client(paths: stacking.Paths) -> kubernetes.client.ApiClient:
    client: kubernetes.client.ApiClient = kubernetes.config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(paths.kubeconfig)
    )
    return client


# --- the node agent ----------------------------------------------------------------------------


@dataclass
class Agent:
    process: subprocess.Popen[str] | None
    socket: Path
    pin_dir: Path
    reason: str = ""  # why it is not running
    drains: list[threading.Thread] = field(default_factory=list)
    log: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=1000))

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process, timeout=20)
            for thread in self.drains:
                thread.join(timeout=5)
            for stream in (self.process.stdout, self.process.stderr):
                if stream is not None:
                    stream.close()
        from cloudtaser.bpf.programs import unpin

        unpin(self.pin_dir)


def start_agent(tmp: Path, paths: stacking.Paths, node: str | None) -> Agent:
    """The real node agent with its own socket and pin dir; not running (with the reason) when
    this machine cannot load it."""
    sock = tmp / f"agent-{uuid.uuid4().hex[:8]}.sock"
    pin_dir = Path(f"/sys/fs/bpf/cloudtaser-load-{uuid.uuid4().hex[:12]}")
    if os.geteuid() != 0:
        return Agent(None, sock, pin_dir, "not root: the agent loads BPF programs")
    build = subprocess.run(
        [str(REPO / "scripts" / "build-bpf")], capture_output=True, text=True, check=False
    )
    if build.returncode != 0:
        return Agent(
            None, sock, pin_dir, f"scripts/build-bpf failed: {build.stderr.strip()[-200:]}"
        )
    # This interpreter may load tracing programs while the agent protects the load's wrappers:
    # an agent started by tests running beside the benchmark uses it.
    command = [
        sys.executable,
        "-m",
        "cloudtaser.bpf.agent",
        "--socket",
        str(sock),
        "--pin-dir",
        str(pin_dir),
        "--object",
        build.stdout.strip().splitlines()[-1],
        "--allow-bpf-loader",
        os.path.realpath(sys.executable),
        "--io-uring",
        "allow",
    ]
    if node:
        command += ["--node", node]
    process = subprocess.Popen(
        command,
        env={**os.environ, **stacking.environment(paths)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()  # "ready: SOCKET", or EOF when it failed
    if not line.startswith("ready:"):
        _, err = process.communicate(timeout=20)
        return Agent(None, sock, pin_dir, f"agent did not start: {err.strip()[-300:]}")
    # Drain its logs (a line per registration) so that it never blocks on a full pipe; the
    # latest lines are kept.
    agent = Agent(process, sock, pin_dir)
    agent.drains = [
        threading.Thread(target=agent.log.extend, args=(stream,), daemon=True)
        for stream in (process.stdout, process.stderr)
    ]
    for thread in agent.drains:
        thread.start()
    return agent


# --- sampling -------------------------------------------------------------------------------


@dataclass
class Sampler:
    """RSS of named processes every `interval` seconds, in a thread."""

    pids: dict[str, int]
    interval: float = 1.0
    samples: dict[str, list[int]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Sampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()

    def _run(self) -> None:
        while True:
            for name, pid in self.pids.items():
                value = rss_bytes(pid)
                if value is not None:
                    self.samples.setdefault(name, []).append(value)
            if self._stop.wait(self.interval):
                return


def _stamp(text: str) -> datetime.datetime:
    """OpenBao's interval timestamp, e.g. '2026-11-27 05:53:10 +0000 UTC'."""
    try:
        return datetime.datetime.strptime(text.removesuffix(" UTC"), "%Y-%m-%d %H:%M:%S %z")
    except ValueError:
        return datetime.datetime.min.replace(tzinfo=datetime.UTC)


class BaoLogins:
    """OpenBao's own count of logins on an auth mount, polled from /v1/sys/metrics (the
    in-memory sink keeps 10 s intervals: the highest count seen per interval is summed)."""

    def __init__(self, paths: stacking.Paths, mount: str) -> None:
        self.client = provisioning.bao_client(paths, provisioning.bao_root_token(paths.state))
        self.name = f"vault.route.update.auth-{mount.strip('/').replace('/', '-')}-"
        self.per_interval: dict[str, int] = {}
        self.baseline: dict[str, int] = {}
        self.error = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def poll(self) -> None:
        try:
            data = self.client.adapter.get("/v1/sys/metrics")
        except Exception as e:  # reported as the figure's absence, never fatal
            self.error = type(e).__name__
            return
        count = sum(
            int(s.get("Count", 0)) for s in data.get("Samples", []) if s.get("Name") == self.name
        )
        stamp = str(data.get("Timestamp"))
        self.per_interval[stamp] = max(self.per_interval.get(stamp, 0), count)

    def start(self) -> None:
        self.poll()
        self.baseline = dict(self.per_interval)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.poll()

    def stop(self) -> tuple[int, int]:
        """(logins during the run, most in one 10 s interval)."""
        self._stop.set()
        self._thread.join()
        # The sink shows the last complete interval: wait until one that began after the
        # run's end is shown (at most ~25 s), so that the run's last logins are counted.
        end = datetime.datetime.now(datetime.UTC)
        for _ in range(50):
            self.poll()
            if any(_stamp(k) > end for k in self.per_interval) or self.error:
                break
            time.sleep(0.5)
        counts = {k: v - self.baseline.get(k, 0) for k, v in self.per_interval.items()}
        return sum(counts.values()), max(counts.values(), default=0)


# --- memory cgroup ------------------------------------------------------------------------------


@dataclass
class MemoryCgroup:
    """A memory cgroup (v1 or v2) for the wrappers: their peak usage, and a limit so that
    running out of memory kills a wrapper, not the shared stack."""

    path: Path | None
    version: int
    reason: str = ""

    @classmethod
    def create(cls, limit: int) -> MemoryCgroup:
        name = f"cloudtaser-load-{os.getpid()}"
        v2 = Path("/sys/fs/cgroup/cgroup.controllers")
        try:
            if v2.exists() and "memory" in v2.read_text().split():
                path = Path("/sys/fs/cgroup") / name
                path.mkdir()
                (path / "memory.max").write_text(str(limit))
                return cls(path, 2)
            if CGROUP_ROOT.is_dir():
                path = CGROUP_ROOT / name
                path.mkdir()
                (path / "memory.limit_in_bytes").write_text(str(limit))
                return cls(path, 1)
        except OSError as e:
            return cls(None, 0, f"no memory cgroup ({e.strerror})")
        return cls(None, 0, "no memory cgroup controller")

    def add(self, pid: int) -> None:
        if self.path is not None:
            with contextlib.suppress(OSError):  # exited already
                (self.path / "cgroup.procs").write_text(str(pid))

    def peak(self) -> int | None:
        if self.path is None:
            return None
        name = "memory.peak" if self.version == 2 else "memory.max_usage_in_bytes"
        try:
            return int((self.path / name).read_text())
        except (OSError, ValueError):
            return None

    def oom_kills(self) -> int:
        if self.path is None:
            return 0
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        with contextlib.suppress(OSError):
            for line in (self.path / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        return 0

    def remove(self) -> None:
        if self.path is not None:
            for _ in range(50):
                try:
                    self.path.rmdir()
                    return
                except OSError:
                    time.sleep(0.1)


# --- wrapper starts ------------------------------------------------------------------------------


@dataclass
class Starts:
    count: int
    latencies_ms: list[float]
    failures: list[str]  # one line each: which wrapper, how it ended
    retries: list[int]  # per wrapper
    registered: int  # wrappers the node agent registered
    agent: str  # how the agent ran
    logins: int | None
    logins_peak_interval: int | None
    window_s: float  # release -> last app start
    memory_peak: int | None
    memory_limit: int
    memory_note: str
    oom_kills: int
    cpu_s: float  # user + system time of the wrappers (and their sh/date), all together
    messages: dict[str, int] = field(default_factory=dict)  # wrapper stderr lines, digits as N
    agent_rss: list[int] = field(default_factory=list)


def tokens(paths: stacking.Paths, count: int) -> list[str]:
    """One TokenRequest token per wrapper (one pod each), for the OpenBao audience."""
    core = kubernetes.client.CoreV1Api(api_client(paths))
    body = kubernetes.client.AuthenticationV1TokenRequest(
        spec=kubernetes.client.V1TokenRequestSpec(audiences=["openbao"], expiration_seconds=3600)
    )

    def one(_: int) -> str:
        answer = core.create_namespaced_service_account_token(
            provisioning.DEMO_ACCOUNT, provisioning.DEMO_NAMESPACE, body
        )
        assert answer.status is not None
        return str(answer.status.token)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(count)))


def _blocked_on_fifo(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/wchan").read_text().strip().endswith(("pipe_read", "pipe_wait"))
    except OSError:
        return False


def wrapper_starts(
    paths: stacking.Paths,
    count: int,
    deadline: float = 120,
    use_agent: bool = True,
    memory_limit: int | None = None,
) -> Starts:
    """`count` wrappers released at once; see the module docstring."""
    with tempfile.TemporaryDirectory(prefix="cloudtaser-load-") as tmpdir:
        tmp = Path(tmpdir)
        agent = (
            start_agent(tmp, paths, node=None)
            if use_agent
            else Agent(None, tmp / "no-agent.sock", tmp / "none", "not requested")
        )
        try:
            return _starts(paths, tmp, count, deadline, agent, memory_limit)
        finally:
            agent.stop()


def _starts(
    paths: stacking.Paths,
    tmp: Path,
    count: int,
    deadline: float,
    agent: Agent,
    memory_limit: int | None,
) -> Starts:
    base = compiled_config(paths, tmp / "token-0")
    base = base.model_copy(
        update={"agent": base.agent.model_copy(update={"socket": str(agent.socket)})}
    )
    for i, token in enumerate(tokens(paths, count)):
        (tmp / f"token-{i}").write_text(token)
    available = (
        int(
            next(
                line.split()[1]
                for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemAvailable:")
            )
        )
        * 1024
    )
    limit = memory_limit or max(1 << 30, min(16 << 30, available - (4 << 30)))
    cgroup = MemoryCgroup.create(limit)
    fifo = tmp / "release"
    os.mkfifo(fifo)
    # Held open read-write: the wrappers' open() returns at once and their read() blocks
    # until this last writer closes (EOF) — the release.
    gate = os.open(fifo, os.O_RDWR)
    launcher = 'echo 1000 > /proc/self/oom_score_adj; read _ < "$0"; exec "$@"'
    bao = BaoLogins(paths, base.sources[0].auth_mount)
    procs: list[subprocess.Popen[bytes]] = []
    sampler = Sampler({"agent": agent.process.pid} if agent.process else {}, interval=0.5)
    try:
        for i in range(count):
            config = base.model_copy(update={"token_path": str(tmp / f"token-{i}")})
            env = {**os.environ, CONFIG_ENV: config.model_dump_json(exclude_none=True)}
            with open(tmp / f"{i}.out", "wb") as out, open(tmp / f"{i}.err", "wb") as err:
                proc = subprocess.Popen(
                    [
                        "sh",
                        "-c",
                        launcher,
                        str(fifo),
                        str(go_wrapper.binary()),
                        "--deadline",
                        str(deadline),
                        "--",
                        "date",
                        "+%s.%N",
                    ],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                )
            cgroup.add(proc.pid)
            procs.append(proc)
        waited = time.monotonic()
        while time.monotonic() - waited < 60 and not all(_blocked_on_fifo(p.pid) for p in procs):
            time.sleep(0.1)
        bao.start()
        cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
        with sampler:
            released = time.time()
            os.close(gate)
            gate = -1
            end = time.monotonic() + deadline + 120
            for proc in procs:
                try:
                    proc.wait(timeout=max(1.0, end - time.monotonic()))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu_s = (after.ru_utime + after.ru_stime) - (cpu.ru_utime + cpu.ru_stime)
        logins, peak_interval = bao.stop()
    finally:
        if gate >= 0:
            os.close(gate)
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        memory_peak, oom_kills = cgroup.peak(), cgroup.oom_kills()
        cgroup.remove()

    latencies: list[float] = []
    failures: list[str] = []
    retries: list[int] = []
    registered, last = 0, released
    messages: dict[str, int] = {}
    for i, proc in enumerate(procs):
        stdout = (tmp / f"{i}.out").read_text().strip()
        stderr = (tmp / f"{i}.err").read_text()
        retries.append(stderr.count("retrying after"))
        registered += "registered with the node agent" in stderr
        for line in stderr.splitlines():
            key = re.sub(r"\d+", "N", line.replace(str(agent.socket), "SOCKET"))[:160]
            messages[key] = messages.get(key, 0) + 1
        try:
            started = float(stdout)
        except ValueError:
            lines = stderr.strip().splitlines() or [f"exit {proc.returncode}, no output"]
            failures.append(f"wrapper {i}: exit {proc.returncode}: {lines[-1][:200]}")
            continue
        if proc.returncode != 0:
            failures.append(f"wrapper {i}: exit {proc.returncode}")
            continue
        latencies.append((started - released) * 1000)
        last = max(last, started)
    return Starts(
        count=count,
        latencies_ms=latencies,
        failures=failures,
        retries=retries,
        registered=registered,
        agent="running" if agent.process else agent.reason,
        logins=logins if not bao.error else None,
        logins_peak_interval=peak_interval if not bao.error else None,
        window_s=last - released,
        memory_peak=memory_peak,
        memory_limit=limit,
        memory_note=cgroup.reason,
        oom_kills=oom_kills,
        cpu_s=cpu_s,
        messages=messages,
        agent_rss=sampler.samples.get("agent", []),
    )


# --- webhook under load ------------------------------------------------------------------------


@dataclass
class WebhookLoad:
    bindings: int
    rate: float
    duration: float
    latencies_ms: list[float]
    errors: list[str]
    operator_rss: list[int]
    agent_rss: list[int]
    agent: str
    ready_s: float  # operator start -> every binding compiled
    create_s: float  # creating the bindings
    slow: list[tuple[float, float]] = field(default_factory=list)  # (s into the run, ms)
    opa_requests: int = 0  # what the operator asked OPA during the run (CountingProxy)
    edits: int = 0  # binding spec edits during the run: a reconcile each


class CountingProxy:
    """An HTTP proxy on loopback in front of OPA that counts the requests it forwards: how
    often the operator asks OPA, seen from outside the operator."""

    def __init__(self, upstream: str) -> None:
        import http.server
        import urllib.error
        import urllib.request

        self.count = 0
        lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _forward(self) -> None:
                with lock:
                    proxy.count += 1
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                request = urllib.request.Request(
                    upstream.rstrip("/") + self.path,
                    data=body,
                    method=self.command,
                    headers={"Content-Type": self.headers.get("Content-Type", "application/json")},
                )
                try:
                    with urllib.request.urlopen(request, timeout=10) as answer:
                        status, data = answer.status, answer.read()
                except urllib.error.HTTPError as e:
                    status, data = e.code, e.read()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _forward

            def log_message(self, *_: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def edit_bindings(paths: stacking.Paths, stop_event: threading.Event, every: float) -> int:
    """Edit one binding's spec every ``every`` seconds until ``stop_event`` (a new generation:
    the operator reconciles and asks OPA about it again); the number of edits."""
    custom = kubernetes.client.CustomObjectsApi(api_client(paths))
    edits = 0
    while not stop_event.wait(every):
        env = "PASSWORD" if edits % 2 else "PASSWORD_EDITED"
        patch = {
            "spec": {
                "secrets": [
                    {"path": f"{NAMESPACE}/app-0", "keys": [{"key": "password", "env": env}]}
                ]
            }
        }
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, "secretbindings", "app-0", patch
        )
        edits += 1
    return edits


def _ensure_namespace(core: Any) -> None:
    try:
        core.create_namespace(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
        )
    except kubernetes.client.ApiException as e:
        if e.status != 409:
            raise


def create_bindings(paths: stacking.Paths, count: int) -> float:
    """`count` SecretBindings in NAMESPACE, created by 8 parallel clients; seconds taken."""
    client = api_client(paths)
    _ensure_namespace(kubernetes.client.CoreV1Api(client))
    custom = kubernetes.client.CustomObjectsApi(client)
    start = time.monotonic()

    def one(i: int) -> None:
        try:
            custom.create_namespaced_custom_object(
                GROUP, VERSION, NAMESPACE, "secretbindings", binding_doc(f"app-{i}", NAMESPACE)
            )
        except kubernetes.client.ApiException as e:
            if e.status != 409:  # left from an interrupted run: same content
                raise

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(count)))
    return time.monotonic() - start


def delete_bindings(paths: stacking.Paths) -> None:
    custom = kubernetes.client.CustomObjectsApi(api_client(paths))
    custom.delete_collection_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "secretbindings")


@contextlib.contextmanager
def held_lease(paths: stacking.Paths, identity: str) -> Iterator[None]:
    """Hold the operator's leader Lease in NAMESPACE (renewed every 3 s) so that the operator
    under test stays a follower."""
    coordination = kubernetes.client.CoordinationV1Api(api_client(paths))

    def now() -> str:
        return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    body = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": LEASE, "namespace": NAMESPACE},
        "spec": {
            "holderIdentity": identity,
            "leaseDurationSeconds": 15,
            "acquireTime": now(),
            "renewTime": now(),
            "leaseTransitions": 0,
        },
    }
    with contextlib.suppress(kubernetes.client.ApiException):
        coordination.delete_namespaced_lease(LEASE, NAMESPACE)
    coordination.create_namespaced_lease(NAMESPACE, body)  # type: ignore[arg-type]  # dicts serialise as is
    done = threading.Event()

    def renew() -> None:
        while not done.wait(3):
            with contextlib.suppress(Exception):
                coordination.patch_namespaced_lease(
                    LEASE, NAMESPACE, {"spec": {"renewTime": now()}}
                )

    thread = threading.Thread(target=renew, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        with contextlib.suppress(kubernetes.client.ApiException):
            coordination.delete_namespaced_lease(LEASE, NAMESPACE)


def review(index: int) -> bytes:
    pod = pod_doc(f"app-{index}-x", NAMESPACE, labels={"app": f"app-{index}"})
    del pod["metadata"]["namespace"]
    return json.dumps(
        {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "u",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "operation": "CREATE",
                "namespace": NAMESPACE,
                "object": pod,
            },
        }
    ).encode()


def admission_ok(status: int, answer: Any) -> str:
    """'' when the webhook admitted the pod with a patch, else what went wrong."""
    if status != 200:
        return f"HTTP {status}"
    response = answer.get("response") if isinstance(answer, dict) else None
    if not isinstance(response, dict) or not response.get("allowed"):
        return f"not allowed: {json.dumps(response)[:200]}"
    if "patch" not in response:
        return "allowed without a patch (binding not compiled?)"
    return ""


async def drive(
    url: str,
    body: bytes,
    rate: float,
    seconds: float,
    context: ssl.SSLContext,
    slow: list[tuple[float, float]] | None = None,
) -> tuple[list[float], list[str]]:
    """`rate` requests/s for `seconds` over kept-alive connections; latency and errors.
    `slow` collects (seconds into the run, latency ms) of requests over 100 ms."""
    latencies: list[float] = []
    errors: list[str] = []
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=context, limit=16), timeout=timeout
    ) as session:

        async def one(begin: float) -> None:
            start = time.perf_counter()
            try:
                async with session.post(
                    url, data=body, headers={"Content-Type": "application/json"}
                ) as r:
                    answer = await r.json(content_type=None)
                    problem = admission_ok(r.status, answer)
            except (aiohttp.ClientError, TimeoutError, ValueError) as e:
                problem = type(e).__name__
            latency = (time.perf_counter() - start) * 1000
            latencies.append(latency)
            if slow is not None and latency > 100:
                slow.append((start - begin, latency))
            if problem:
                errors.append(problem)

        await paced(rate, seconds, one)
    return latencies, errors


def _probe(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return bool(json.loads(r.read()).get("compiled"))
    except (OSError, ValueError):
        return False


def operator_available() -> str:
    """'' when `cloudtaser operator` can run as a follower replica, else why not."""
    exe = Path(sys.executable).parent / "cloudtaser"
    out = subprocess.run(
        [str(exe), "operator", "--help"], capture_output=True, text=True, check=False
    )
    if "--leader-elect" not in out.stdout:
        return "`cloudtaser operator` has no --leader-elect: it would rewrite the shared webhook configuration"
    return ""


def webhook_load(
    paths: stacking.Paths,
    bindings: int,
    rate: float,
    duration: float,
    use_agent: bool = True,
    ready_timeout: float = 600,
    edit_every: float = 5.0,
) -> WebhookLoad:
    """The operator's webhook at ``rate`` for ``duration`` with ``bindings`` in the API
    server, one of them edited every ``edit_every`` seconds meanwhile (reconciles during the
    load), its requests to OPA counted on the way (CountingProxy)."""
    missing = operator_available()
    if missing:
        raise RuntimeError(missing)
    with tempfile.TemporaryDirectory(prefix="cloudtaser-load-") as tmpdir:
        tmp = Path(tmpdir)
        ca = CertificateAuthority(tmp)
        pair = ca.issue("operator", "cloudtaser-load-operator", server=True, hosts=("127.0.0.1",))
        agent = Agent(None, tmp / "none", tmp / "none", "not requested")
        operator: subprocess.Popen[str] | None = None
        log = open(tmp / "operator.log", "w")
        opa = CountingProxy(f"http://127.0.0.1:{stacking.OPA_PORT}")
        opa_requests = edits = 0
        try:
            create_s = create_bindings(paths, bindings)
            with held_lease(paths, "benchmarks/load.py"):
                exe = Path(sys.executable).parent / "cloudtaser"
                started = time.monotonic()
                operator = subprocess.Popen(
                    [
                        str(exe),
                        "operator",
                        "--tls-cert",
                        str(pair.cert),
                        "--tls-key",
                        str(pair.key),
                        "--ca-file",
                        str(ca.pair.cert),
                        "--port",
                        str(OPERATOR_PORT),
                        "--opa-url",
                        opa.url,
                        "--liveness",
                        f"http://127.0.0.1:{PROBE_PORT}/healthz",
                        "--leader-elect",
                        "--leader-namespace",
                        NAMESPACE,
                        "--identity",
                        "load-follower",
                    ],
                    env={**os.environ, **stacking.environment(paths)},
                    stdout=log,
                    stderr=log,
                    text=True,
                )
                if use_agent:
                    agent = start_agent(tmp, paths, node=socket.gethostname())
                url = f"https://127.0.0.1:{OPERATOR_PORT}/mutate-v1-pod"
                context = ssl.create_default_context(cafile=str(ca.pair.cert))
                last = review(bindings - 1)  # selected by the last binding created
                while True:
                    if operator.poll() is not None:
                        raise RuntimeError(
                            f"operator exited: {(tmp / 'operator.log').read_text()[-2000:]}"
                        )
                    if time.monotonic() - started > ready_timeout:
                        raise RuntimeError(
                            f"operator not ready with {bindings} bindings "
                            f"after {ready_timeout:.0f} s"
                        )
                    if _probe(f"http://127.0.0.1:{PROBE_PORT}/healthz"):
                        _, errors = asyncio.run(drive(url, last, 1, 1, context))
                        if not errors:
                            break
                    time.sleep(1)
                ready_s = time.monotonic() - started
                pids = {"operator": operator.pid}
                if agent.process:
                    pids["agent"] = agent.process.pid
                slow: list[tuple[float, float]] = []
                stop_edits = threading.Event()
                with (
                    Sampler(pids) as sampler,
                    concurrent.futures.ThreadPoolExecutor(1) as editor,
                ):
                    asked = opa.count
                    edited = editor.submit(edit_bindings, paths, stop_edits, edit_every)
                    try:
                        latencies, errors = asyncio.run(
                            drive(url, review(bindings // 2), rate, duration, context, slow)
                        )
                    finally:
                        stop_edits.set()
                    edits = edited.result()
                    opa_requests = opa.count - asked
                if operator.poll() is not None:
                    errors.append(f"operator exited with {operator.returncode}")
        finally:
            if operator is not None:
                stop(operator, timeout=30)
            agent.stop()
            delete_bindings(paths)
            log.close()
            opa.close()
        err = (tmp / "operator.log").read_text()
        if "Traceback" in err:
            errors.append("operator logged a traceback: " + err[err.index("Traceback") :][:500])
    return WebhookLoad(
        bindings=bindings,
        rate=rate,
        duration=duration,
        latencies_ms=latencies,
        errors=errors,
        operator_rss=sampler.samples.get("operator", []),
        agent_rss=sampler.samples.get("agent", []),
        agent="running" if agent.process else agent.reason,
        ready_s=ready_s,
        create_s=create_s,
        slow=slow,
        opa_requests=opa_requests,
        edits=edits,
    )


# --- the node agent's footprint -------------------------------------------------------------


FOOTPRINT_NAMESPACE = "cloudtaser-agent-rss"
FOOTPRINT_NODE = "cloudtaser-agent-rss-node"  # no such Node: no kubelet runs the pod


@dataclass
class AgentFootprint:
    bindings: int  # SecretBindings in the namespace of the agent's pod
    rss: list[int]  # sampled every second from ready, across one relist
    protected: int | None  # pods the agent compiled as protected (its log line), None: no line
    agent: str  # how the agent ran
    high_water: int | None = None  # VmHWM at the end: start-up (BPF load, first list) included


def agent_footprint(
    paths: stacking.Paths, counts: list[int], seconds: float = 35
) -> list[AgentFootprint]:
    """The node agent's RSS (--node) with each of ``counts`` SecretBindings in the namespace of
    a pod bound to its node: FOOTPRINT_NODE, a node name no kubelet has, so the pod (injected,
    selected by binding app-0) is listed by the agent and run by nobody. The controller
    manager's pod GC deletes a pod of a missing node after some 40 s, so the pod is created
    afresh for each agent, which runs ``seconds`` from ready: its first relist (30 s after its
    first list) included. Bindings are added between runs (counts
    ascending); the namespace and the agent's node report (a Lease in cloudtaser-system) are
    deleted afterwards."""
    client = api_client(paths)
    core = kubernetes.client.CoreV1Api(client)
    custom = kubernetes.client.CustomObjectsApi(client)
    deadline = time.monotonic() + 300
    while True:  # an earlier run's namespace may still be terminating: wait it out
        try:
            core.create_namespace({"metadata": {"name": FOOTPRINT_NAMESPACE}})
            break
        except kubernetes.client.ApiException as e:
            if e.status != 409:
                raise
        phase = core.read_namespace(FOOTPRINT_NAMESPACE).status.phase
        if phase != "Terminating":
            break  # left by an interrupted run: reused
        if time.monotonic() > deadline:
            raise RuntimeError(f"namespace {FOOTPRINT_NAMESPACE} still terminating")
        time.sleep(2)
    # an interrupted run's bindings would count in the first row
    custom.delete_collection_namespaced_custom_object(
        GROUP, VERSION, FOOTPRINT_NAMESPACE, "secretbindings"
    )
    pod = pod_doc("agent-rss", FOOTPRINT_NAMESPACE, labels={"app": "app-0"}, injected=True)
    pod["spec"]["nodeName"] = FOOTPRINT_NODE

    def one(i: int) -> None:
        with contextlib.suppress(kubernetes.client.ApiException):  # 409: there already
            custom.create_namespaced_custom_object(
                GROUP,
                VERSION,
                FOOTPRINT_NAMESPACE,
                "secretbindings",
                binding_doc(f"app-{i}", FOOTPRINT_NAMESPACE),
            )

    results: list[AgentFootprint] = []
    created = 0
    try:
        for count in sorted(counts):
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                list(pool.map(one, range(created, count)))
            created = max(created, count)
            with contextlib.suppress(kubernetes.client.ApiException):  # 404: collected
                core.delete_namespaced_pod("agent-rss", FOOTPRINT_NAMESPACE, grace_period_seconds=0)
            core.create_namespaced_pod(FOOTPRINT_NAMESPACE, pod)
            with tempfile.TemporaryDirectory(prefix="cloudtaser-agent-rss-") as tmpdir:
                agent = start_agent(Path(tmpdir), paths, node=FOOTPRINT_NODE)
                high_water = None
                try:
                    samples: list[int] = []
                    if agent.process is not None:
                        with Sampler({"agent": agent.process.pid}) as sampler:
                            time.sleep(seconds)
                        samples = sampler.samples.get("agent", [])
                        status = Path(f"/proc/{agent.process.pid}/status").read_text()
                        found = re.search(r"VmHWM:\s+(\d+) kB", status)
                        high_water = int(found.group(1)) * 1024 if found else None
                finally:
                    agent.stop()
                protected = [
                    int(m.group(1))
                    for line in agent.log.copy()
                    if (m := re.search(r"(\d+) protected pod\(s\) on this node", line))
                ]
                results.append(
                    AgentFootprint(
                        bindings=count,
                        rss=samples,
                        protected=protected[0] if protected else None,
                        agent="running" if agent.process else agent.reason,
                        high_water=high_water,
                    )
                )
    finally:
        with contextlib.suppress(kubernetes.client.ApiException):
            core.delete_namespaced_pod("agent-rss", FOOTPRINT_NAMESPACE, grace_period_seconds=0)
        with contextlib.suppress(kubernetes.client.ApiException):
            custom.delete_collection_namespaced_custom_object(
                GROUP, VERSION, FOOTPRINT_NAMESPACE, "secretbindings"
            )
        with contextlib.suppress(kubernetes.client.ApiException):
            core.delete_namespace(FOOTPRINT_NAMESPACE)
        with contextlib.suppress(kubernetes.client.ApiException):
            kubernetes.client.CoordinationV1Api(client).delete_namespaced_lease(
                lease_name(FOOTPRINT_NODE), "cloudtaser-system"
            )
    return results
