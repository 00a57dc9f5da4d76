"""Registered processes cannot be read by others, with whichever backend the agent picked.

Each attacker is a separate root process. Tracepoint backend (this host): the kernel delivered
SIGKILL from the BPF program before the read returned to user space (returncode -9, nothing
printed). LSM backend (the KVM guest, scripts/run-guest-tests): the call failed with EPERM and
the attacker lived on (tests/harness/agents.py, assert_blocked).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cloudtaser.bpf.programs import HOT_PROGRAMS, TRACEPOINT_ONLY, bpf_lsm_listed
from cloudtaser.engine.plans import ProtectionFlag
from tests.harness.agents import (
    PROTECT_BASE,
    READ_FILE,
    AgentRun,
    Attack,
    Victim,
    assert_blocked,
    attack,
)

pytestmark = pytest.mark.kernel

READ_MEM = r"""
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
sys.stdout.buffer.write(os.pread(fd, int(sys.argv[3]), int(sys.argv[2])))
"""

PROCESS_VM_READV = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
class iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
n = int(sys.argv[3])
buf = ctypes.create_string_buffer(n)
local = iovec(ctypes.addressof(buf), n)
remote = iovec(int(sys.argv[2]), n)
got = libc.process_vm_readv(int(sys.argv[1]), ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
if got < 0:
    raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
sys.stdout.buffer.write(buf.raw[:got])
"""

# argv: pid, address, bytes to write there (the secret itself: the victim's buffer is unchanged).
PROCESS_VM_WRITEV = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
class iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
data = sys.argv[3].encode()
buf = ctypes.create_string_buffer(data, len(data))
local = iovec(ctypes.addressof(buf), len(data))
remote = iovec(int(sys.argv[2]), len(data))
got = libc.process_vm_writev(int(sys.argv[1]), ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
if got < 0:
    raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
sys.stdout.write(f"wrote {got}")
"""

PTRACE = r"""
import ctypes, sys, os, time
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
libc.ptrace.restype = ctypes.c_long
pid = int(sys.argv[1])
request = int(sys.argv[2])
rc = libc.ptrace(request, pid, None, None)
if rc != 0:
    raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
time.sleep(0.2)
word = libc.ptrace(2, pid, ctypes.c_void_p(int(sys.argv[3])), None)  # PTRACE_PEEKDATA
sys.stdout.buffer.write(word.to_bytes(8, "little", signed=True))
"""

PIDFD_GETFD = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
pidfd = os.pidfd_open(int(sys.argv[1]))
fd = libc.syscall(438, pidfd, int(sys.argv[2]), 0)
if fd < 0:
    raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
sys.stdout.buffer.write(os.pread(fd, 4096, 0))
"""


VECTORS: dict[str, Callable[[Victim, Path], tuple[str, list[str], str | None]]] = {
    "environ": lambda v, tmp: (READ_FILE, [f"/proc/{v.pid}/environ"], None),
    "environ-symlink": lambda v, tmp: (
        READ_FILE,
        [str(_symlink(tmp / "link", f"/proc/{v.pid}/environ"))],
        None,
    ),
    "environ-relative": lambda v, tmp: (READ_FILE, ["environ"], f"/proc/{v.pid}"),
    "task-environ": lambda v, tmp: (
        READ_FILE,
        [f"/proc/{v.pid}/task/{v.info['tid']}/environ"],
        None,
    ),
    "task-main-environ": lambda v, tmp: (READ_FILE, [f"/proc/{v.pid}/task/{v.pid}/environ"], None),
    "mem": lambda v, tmp: (READ_MEM, [f"/proc/{v.pid}/mem", v.info["addr"], v.info["len"]], None),
    "process_vm_readv": lambda v, tmp: (
        PROCESS_VM_READV,
        [str(v.pid), v.info["addr"], v.info["len"]],
        None,
    ),
    "process_vm_writev": lambda v, tmp: (
        PROCESS_VM_WRITEV,
        [str(v.pid), v.info["addr"], v.secret],
        None,
    ),
    "ptrace-attach": lambda v, tmp: (PTRACE, [str(v.pid), "16", v.info["addr"]], None),
    "ptrace-seize": lambda v, tmp: (PTRACE, [str(v.pid), str(0x4206), v.info["addr"]], None),
    "pidfd_getfd": lambda v, tmp: (PIDFD_GETFD, [str(v.pid), v.info["fd"]], None),
}
KIND = {
    "environ": "environ",
    "environ-symlink": "environ",
    "environ-relative": "environ",
    "task-environ": "environ",
    "task-main-environ": "environ",
    "mem": "mem",
    "process_vm_readv": "process_vm_readv",
    "process_vm_writev": "process_vm_writev",
    "ptrace-attach": "ptrace",
    "ptrace-seize": "ptrace",
    "pidfd_getfd": "pidfd_getfd",
}


def _symlink(link: Path, target: str) -> Path:
    link.symlink_to(target)
    return link


def run_vector(name: str, victim: Victim, tmp_path: Path) -> Attack:
    code, args, cwd = VECTORS[name](victim, tmp_path)
    return attack(code, *args, cwd=cwd)


@pytest.mark.parametrize("vector", sorted(VECTORS))
def test_attacker_is_stopped_and_reads_nothing(
    vector: str, agent_run: AgentRun, spawn_victim: Callable[..., Victim], tmp_path: Path
) -> None:
    agent_run.start()
    victim = spawn_victim(agent_run.socket_path)
    assert victim.info["backend"] == agent_run.backend
    result = run_vector(vector, victim, tmp_path)
    assert_blocked(result, agent_run.backend, victim)
    v = agent_run.wait_violation(lambda v: v.target_tgid == victim.pid and v.kind == KIND[vector])
    assert v.action == agent_run.blocked and v.opener_uid == 0
    assert agent_run.agent is not None
    metrics = agent_run.agent.metrics.text()
    assert f'cloudtaser_violations_total{{action="{v.action}",vector="{v.kind}"}} 1.0' in metrics
    assert 'cloudtaser_registrations_total{result="ok"} 1.0' in metrics


def test_unprotected_vectors_really_leak(
    spawn_victim: Callable[..., Victim], tmp_path: Path, bpf_object: Path
) -> None:
    """Control: without registration, every vector reads the secret (so the kills above matter)."""
    victim = spawn_victim(None)
    for vector in ("environ", "mem", "process_vm_readv", "pidfd_getfd"):
        result = run_vector(vector, victim, tmp_path)
        assert result.returncode == 0, (vector, result)
        assert victim.secret.encode() in result.stdout, vector
    result = run_vector("process_vm_writev", victim, tmp_path)
    assert result.returncode == 0 and result.stdout == f"wrote {len(victim.secret)}".encode()


def test_not_registered_is_not_protected(
    agent_run: AgentRun, spawn_victim: Callable[..., Victim], tmp_path: Path
) -> None:
    agent_run.start()
    protected = spawn_victim(agent_run.socket_path)
    other = spawn_victim(None)
    result = run_vector("environ", other, tmp_path)
    assert result.returncode == 0 and other.secret.encode() in result.stdout
    assert agent_run.agent is not None and agent_run.agent.entry(other.pid) is None
    assert protected.alive()


def test_protected_process_reads_itself(
    agent_run: AgentRun, spawn_victim: Callable[..., Victim]
) -> None:
    agent_run.start()
    victim = spawn_victim(agent_run.socket_path)
    assert victim.info["self_read"] == "True"  # /proc/self/environ and its own thread's
    time.sleep(0.1)
    assert victim.alive()
    assert not [v for v in agent_run.violations if v.target_tgid == victim.pid]


def test_audit_mode_reports_without_killing(
    agent_run: AgentRun, spawn_victim: Callable[..., Victim], tmp_path: Path
) -> None:
    agent_run.start(flags=PROTECT_BASE | int(ProtectionFlag.AUDIT_ONLY))
    victim = spawn_victim(agent_run.socket_path)
    for vector in sorted(VECTORS):
        if vector.startswith("ptrace"):
            continue  # reads through an attach need the victim stopped: below
        result = run_vector(vector, victim, tmp_path)
        leaked = f"wrote {len(victim.secret)}" if vector == "process_vm_writev" else victim.secret
        assert result.returncode == 0 and leaked.encode() in result.stdout, (vector, result)
        v = agent_run.wait_violation(
            lambda v, vector=vector: v.target_tgid == victim.pid and v.kind == KIND[vector]
        )
        assert v.action == "audited"
    assert victim.alive()


@pytest.mark.parametrize("vector", ["ptrace-attach", "ptrace-seize"])
def test_audit_mode_lets_ptrace_through(
    vector: str, agent_run: AgentRun, spawn_victim: Callable[..., Victim], tmp_path: Path
) -> None:
    agent_run.start(flags=PROTECT_BASE | int(ProtectionFlag.AUDIT_ONLY))
    victim = spawn_victim(agent_run.socket_path)
    result = run_vector(vector, victim, tmp_path)
    assert result.returncode == 0, result
    if vector == "ptrace-attach":  # stopped by the attach: PEEKDATA read the secret's first word
        assert result.stdout == victim.secret.encode()[:8]
        os.kill(victim.pid, signal.SIGCONT)  # the tracer's exit leaves it group-stopped
    v = agent_run.wait_violation(lambda v: v.target_tgid == victim.pid and v.kind == "ptrace")
    assert v.action == "audited"
    assert victim.alive()


def test_flags_select_protections(
    agent_run: AgentRun, spawn_victim: Callable[..., Victim], tmp_path: Path
) -> None:
    agent_run.start(flags=int(ProtectionFlag.ENVIRON))
    victim = spawn_victim(agent_run.socket_path)
    assert_blocked(run_vector("environ", victim, tmp_path), agent_run.backend, victim)
    result = run_vector("mem", victim, tmp_path)
    assert result.returncode == 0 and victim.secret.encode() in result.stdout


def test_child_forked_after_registration_is_protected(
    agent_run: AgentRun, spawn_victim: Callable[..., Victim], tmp_path: Path
) -> None:
    agent = agent_run.start()
    victim = spawn_victim(agent_run.socket_path, fork_child=True)
    child = int(victim.info["child"])
    entry = agent.entry(child)
    assert entry is not None and entry.flags == PROTECT_BASE
    assert_blocked(attack(READ_FILE, f"/proc/{child}/environ"), agent_run.backend)
    assert victim.alive() and Path(f"/proc/{child}").exists()


def test_entry_removed_when_the_process_exits(
    agent_run: AgentRun, spawn_victim: Callable[..., Victim]
) -> None:
    agent = agent_run.start()
    victim = spawn_victim(agent_run.socket_path)
    entry = agent.entry(victim.pid)
    assert entry is not None and entry.start_time > 0
    victim.proc.kill()
    victim.proc.wait()
    time.sleep(0.1)
    assert agent.entry(victim.pid) is None


def test_restart_keeps_protection(
    agent_run: AgentRun, spawn_victim: Callable[..., Victim], tmp_path: Path
) -> None:
    agent_run.start()
    backend = agent_run.backend
    victim = spawn_victim(agent_run.socket_path)
    agent_run.stop()
    assert not agent_run.socket_path.exists()
    # Agent down: the pinned links and maps keep enforcing.
    assert_blocked(run_vector("environ", victim, tmp_path), backend, victim)
    agent = agent_run.start()
    entry = agent.entry(victim.pid)
    assert entry is not None and entry.flags == PROTECT_BASE
    assert_blocked(run_vector("mem", victim, tmp_path), agent_run.backend, victim)
    agent_run.wait_violation(lambda v: v.target_tgid == victim.pid and v.kind == "mem")
    # The event raised while the agent was down waited in the pinned ring buffer.
    agent_run.wait_violation(lambda v: v.target_tgid == victim.pid and v.kind == "environ")
    # Only one set of programs is attached: links were replaced, not added.
    links = sorted(p.name for p in (agent_run.pin_dir / "links").iterdir())
    assert links == sorted(agent.loaded.programs)  # type: ignore[union-attr]


def test_register_refused_for_nothing_but_self(agent_run: AgentRun) -> None:
    """A message naming another pid registers the caller (this test process), not that pid."""
    import json
    import socket

    agent = agent_run.start()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(agent_run.socket_path))
        s.sendall(json.dumps({"op": "register", "version": 1, "pid": 1}).encode() + b"\n")
        reply = json.loads(s.makefile("rb").readline())
    assert reply == {
        "ok": True,
        "backend": agent.backend,
        "mode": "enforce",
        "protections": ["environ", "mem", "ptrace", "pidfd_getfd"],
    }
    assert agent.entry(1) is None
    assert agent.entry(os.getpid()) is not None
    assert agent.loaded is not None
    import ctypes

    agent.loaded.map("protected").delete(ctypes.c_uint32(os.getpid()))


def test_backend_choice_is_probed_and_logged(
    agent_run: AgentRun, caplog: pytest.LogCaptureFixture
) -> None:
    """auto: LSM only where its programs load; otherwise tracepoint, with the reason logged
    (this host lists bpf as an LSM but refuses to load its programs: EPERM)."""
    caplog.set_level(logging.INFO, logger="cloudtaser.bpf.agent")
    agent = agent_run.start()
    listed, _ = bpf_lsm_listed()
    assert agent.backend in ("lsm", "tracepoint") and agent.backend_reason
    assert f"backend {agent.backend}: {agent.backend_reason}" in caplog.text
    if agent.backend == "tracepoint":
        assert not listed or "BPF LSM programs do not load here" in agent.backend_reason
    assert agent.loaded is not None
    programs = set(agent.loaded.programs)
    # the syscall-tracepoint programs: attached by start(), then detached (nothing protected)
    assert not programs & HOT_PROGRAMS
    if agent.backend == "lsm":
        assert {"lsm_file_open", "lsm_ptrace_access_check"} <= programs
        assert set(agent.loaded.hot_programs) == HOT_PROGRAMS - TRACEPOINT_ONLY
    else:
        assert set(agent.loaded.hot_programs) == HOT_PROGRAMS
        assert not any(p.startswith("lsm_") for p in programs)


def test_syscall_programs_run_only_while_something_is_protected(
    agent_run: AgentRun, spawn_victim: Callable[..., Victim], tmp_path: Path
) -> None:
    """The programs on syscall tracepoints (what every process on the node pays for: the
    tracepoint backend's and, on either backend, the memfd ones) are attached while a
    protected process lives, and only then: the first
    registration attaches them before its entry exists (no gap), the agent detaches them
    within COOL_EVERY once the last protected process is gone, and the next registration
    attaches them again before its process is protected."""
    agent = agent_run.start()
    assert agent.loaded is not None
    links = agent_run.pin_dir / "links"
    hot = set(agent.loaded.hot_programs)
    assert hot == (
        HOT_PROGRAMS if agent.backend == "tracepoint" else HOT_PROGRAMS - TRACEPOINT_ONLY
    )

    def attached() -> set[str]:
        return HOT_PROGRAMS & {p.name for p in links.iterdir()}

    assert not agent.loaded.hot and attached() == set()
    for _ in range(2):
        victim = spawn_victim(agent_run.socket_path)
        assert agent.loaded.hot and attached() == hot
        assert_blocked(run_vector("environ", victim, tmp_path), agent.backend, victim)
        victim.proc.kill()
        victim.proc.wait()
        deadline = time.monotonic() + 10
        while agent.loaded.hot and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not agent.loaded.hot and attached() == set()
