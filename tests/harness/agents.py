"""The BPF agent under test: a built object, a running agent, victims and attackers.

A pytest plugin (tests/conftest.py loads it) for the kernel tests, the fault tests (an agent
restarted) and the attack matrix; ``bpf_object_path`` is the unit tests' object (layouts,
backends), which skips where the object cannot be built.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest

from cloudtaser.bpf.agent import Agent
from cloudtaser.bpf.programs import (
    LSM,
    BpfError,
    check_kallsyms,
    ensure_bpffs,
    ensure_tracefs,
    unpin,
)
from cloudtaser.bpf.violations import Violation
from cloudtaser.engine.plans import ProtectionFlag

REPO = Path(__file__).resolve().parents[2]
# Test agents let this interpreter load tracing BPF programs while they protect something, as
# an operator lets another node agent (--allow-bpf-loader): other test sessions on this machine
# start their agents with it. The attackers are the static tests/harness/attacker.c, not it.
INTERPRETER = os.path.realpath(sys.executable)
# What the tests protect with unless they test FDS or CORE_DUMP, which they add (and test
# without): every protection but those two.
PROTECT_BASE = int(ProtectionFlag.ALL & ~(ProtectionFlag.FDS | ProtectionFlag.CORE_DUMP))


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (CAP_BPF, CAP_PERFMON, CAP_SYSLOG, CAP_KILL)"
    if not Path("/sys/kernel/btf/vmlinux").exists():
        return "kernel has no BTF (/sys/kernel/btf/vmlinux; CONFIG_DEBUG_INFO_BTF)"
    try:
        ensure_tracefs()  # as the agent does: a fresh machine may not have it mounted
    except BpfError as e:
        return f"cannot mount tracefs: {e}"
    if not any(
        Path(p, "events/syscalls/sys_exit_openat").exists()
        for p in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
    ):
        return (
            "kernel has no syscall tracepoints (CONFIG_FTRACE_SYSCALLS) or tracefs is not mounted"
        )
    for tool, package in (("clang", "clang"), ("bpftool", "bpftool")):
        if shutil.which(tool) is None and not os.environ.get("CLOUDTASER_BPF_OBJECT"):
            return f"{tool} not installed (Debian package {package})"
    try:
        check_kallsyms()
    except BpfError as e:
        return str(e)
    return None


@pytest.fixture(scope="session")
def bpf_object() -> Iterator[Path]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    prebuilt = os.environ.get("CLOUDTASER_BPF_OBJECT")  # the KVM guest: built on the host
    if prebuilt:
        yield Path(prebuilt)
        return
    out = subprocess.run(
        [str(REPO / "scripts/build-bpf")], check=True, capture_output=True, text=True
    )
    yield Path(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def bpf_object_path() -> Path:
    """The unit tests' object (layouts, backends): built by scripts/build-bpf (cached); skips,
    saying why, where it cannot be built. Needs no root, unlike ``bpf_object``."""
    for tool, package in (("clang", "clang"), ("bpftool", "bpftool")):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (Debian package {package})")
    if not Path("/sys/kernel/btf/vmlinux").exists():
        pytest.skip("no kernel BTF at /sys/kernel/btf/vmlinux (needed to generate vmlinux.h)")
    out = subprocess.run(
        [str(REPO / "scripts/build-bpf")], check=True, capture_output=True, text=True
    )
    return Path(out.stdout.strip().splitlines()[-1])


@dataclass
class AgentRun:
    socket_path: Path
    pin_dir: Path
    bpf_object: Path
    violations: list[Violation] = field(default_factory=list)
    agent: Agent | None = None

    def start(self, flags: int = PROTECT_BASE, io_uring: str = "allow") -> Agent:
        """The agent in this process. io_uring stays allowed unless asked: the attack rows
        exercise the per-request checks, and this machine's sysctl stays as it is."""
        self.agent = Agent(
            self.socket_path,
            self.bpf_object,
            flags,
            self.pin_dir,
            self.violations.append,
            io_uring=io_uring,
        )
        self.agent.start()
        self.agent.allow_bpf_loader(INTERPRETER)
        # The KVM guest (scripts/run-guest-tests) must really run the LSM backend.
        expected = os.environ.get("CLOUDTASER_EXPECT_BACKEND")
        assert expected in (None, self.agent.backend), (
            f"backend {self.agent.backend}, expected {expected}: {self.agent.backend_reason}"
        )
        return self.agent

    @property
    def backend(self) -> str:
        assert self.agent is not None, "agent not started"
        return self.agent.backend

    @property
    def blocked(self) -> str:
        """The action an enforced violation reports: denied (LSM) or killed (tracepoint)."""
        return "denied" if self.backend == LSM else "killed"

    def stop(self) -> None:
        if self.agent is not None:
            self.agent.stop()
            self.agent = None

    def wait_violation(self, pred: Callable[[Violation], bool], timeout: float = 3.0) -> Violation:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for v in list(self.violations):
                if pred(v):
                    return v
            time.sleep(0.02)
        raise AssertionError(f"no matching violation reported; got {self.violations}")


@pytest.fixture
def agent_run(bpf_object: Path, tmp_path: Path) -> Iterator[AgentRun]:
    ensure_bpffs()
    run = AgentRun(
        tmp_path / "agent.sock",
        Path(f"/sys/fs/bpf/cloudtaser-test-{uuid.uuid4().hex[:12]}"),
        bpf_object,
    )
    try:
        yield run
    finally:
        run.stop()
        unpin(run.pin_dir)


@dataclass
class Victim:
    proc: subprocess.Popen[str]
    secret: str
    info: dict[str, str]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def state(self, pid: int | None = None) -> str:
        stat = Path(f"/proc/{pid or self.pid}/stat").read_bytes()
        return stat.rsplit(b")", 1)[1].split()[0].decode()


VICTIM = r"""
import ctypes, os, sys, time, threading
from cloudtaser.bpf.protocol import register
secret = os.environ["CT_SECRET"]
buf = ctypes.create_string_buffer(secret.encode())
out = {"addr": str(ctypes.addressof(buf)), "len": str(len(secret))}
if sys.argv[1] == "1":
    out["backend"] = register(sys.argv[2]).backend
fd = os.memfd_create("held")
os.write(fd, secret.encode())
out["fd"] = str(fd)
if sys.argv[3] == "1":  # fork a child after registration
    child = os.fork()
    if child == 0:
        time.sleep(120)
        os._exit(0)
    out["child"] = str(child)
t = threading.Thread(target=time.sleep, args=(120,), daemon=True)
t.start()
out["tid"] = str(t.native_id)
for path in ("/proc/self/environ", f"/proc/self/task/{t.native_id}/environ"):
    with open(path, "rb") as f:
        out["self_read"] = str(secret.encode() in f.read())
print(" ".join(f"{k}={v}" for k, v in out.items()), flush=True)
time.sleep(120)
"""


def spawn_in(cgroup: Path | None, socket_path: Path) -> tuple[subprocess.Popen[str], str]:
    """A VICTIM that registers on ``socket_path`` from inside ``cgroup`` (a pod's, found by
    the agent through it); it is the caller's to kill. The process and its secret."""
    secret = "s3cr3t-" + secrets.token_hex(16)
    enter = f'echo $$ > "{cgroup}/cgroup.procs"; ' if cgroup else ""
    proc = subprocess.Popen(
        [
            "sh",
            "-c",
            enter + 'exec "$0" -c "$1" 1 "$2" 0',
            sys.executable,
            VICTIM,
            str(socket_path),
        ],
        env={**os.environ, "CT_SECRET": secret},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    return proc, secret


V = TypeVar("V", bound=Victim)


def launch(kind: type[V], script: str, *args: str) -> V:
    """Run a victim ``script`` with a random secret in its environment; it prints one line of
    ``key=value`` facts (addresses, fds) once it is ready."""
    secret = "s3cr3t-" + secrets.token_hex(16)
    proc = subprocess.Popen(
        [sys.executable, "-c", script, *args],
        env={**os.environ, "CT_SECRET": secret},
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    victim = kind(proc, secret, dict(kv.split("=", 1) for kv in line.split()))
    assert victim.info, f"victim failed to start (rc {proc.poll()})"
    return victim


class Launched:
    """launch(), remembering every victim so that the test's end kills and reaps it."""

    def __init__(self) -> None:
        self.victims: list[Victim] = []

    def __call__(self, kind: type[V], script: str, *args: str) -> V:
        victim = launch(kind, script, *args)
        self.victims.append(victim)
        return victim

    def reap(self) -> None:
        for v in self.victims:
            v.proc.kill()
            v.proc.wait()
            if v.proc.stdout:
                v.proc.stdout.close()


@pytest.fixture
def launched() -> Iterator[Launched]:
    victims = Launched()
    yield victims
    victims.reap()


@pytest.fixture
def spawn_victim(launched: Launched) -> Iterator[Callable[..., Victim]]:
    def spawn(socket_path: Path | None, fork_child: bool = False) -> Victim:
        return launched(
            Victim,
            VICTIM,
            "1" if socket_path else "0",
            str(socket_path or ""),
            "1" if fork_child else "0",
        )

    yield spawn
    for v in launched.victims:  # their forked children; `launched` reaps the victims after
        child = v.info.get("child")
        if child:
            try:
                os.kill(int(child), 9)
            except ProcessLookupError:
                pass


# An attacker's code (argv: a path): it prints what it read.
READ_FILE = r"""
import sys
with open(sys.argv[1], "rb") as f:
    data = f.read()
sys.stdout.buffer.write(data)
"""


@dataclass
class Attack:
    returncode: int
    stdout: bytes
    stderr: bytes = b""


def attack(code: str, *args: str, cwd: str | None = None) -> Attack:
    """Run ``code`` as a separate root process; it writes what it read to stdout (a failed
    call raises OSError: exit status 1, the errno on stderr)."""
    r = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, timeout=20, cwd=cwd
    )
    return Attack(r.returncode, r.stdout, r.stderr)


def assert_blocked(
    result: Attack | subprocess.CompletedProcess[bytes], backend: str, victim: Victim | None = None
) -> None:
    """The attacker read nothing. LSM backend: its call failed with EPERM and it lived on
    (it exits 1 from the uncaught PermissionError/OSError); tracepoint backend: SIGKILL before
    the call returned (-9). The victim is unaffected."""
    assert result.stdout == b"", f"the attacker read something: {result}"
    if backend == LSM:
        denied = (
            result.returncode == 1
            and b"[Errno 1] Operation not permitted" in result.stderr
            or result.returncode == 3
            and b"Operation not permitted" in result.stderr
        )  # C
        assert denied, f"attacker not denied with EPERM: {result}"
    else:
        assert result.returncode == -9, f"attacker not killed: {result}"
    if victim is not None:
        assert victim.secret.encode() not in result.stderr
        time.sleep(0.1)
        assert victim.alive(), "the protected process was affected"
        assert victim.state() in ("S", "R"), f"victim left in state {victim.state()}"
