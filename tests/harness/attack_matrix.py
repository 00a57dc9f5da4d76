"""The attack matrix: one row per vector class of docs/THREAT-MODEL.md, per attacker.

The target is a protected app in its own pid and mount namespaces (like a container's), holding
the secret where a wrapped app holds it: in its environment (static apps, env delivery), in a
memfd_secret region (SDK delivery), in a memfd copy (what the interposer serves for a file
delivery), in ordinary heap memory (the app's own copy), plus a thread and a child forked after
registration. The attackers, each a separate process (tests/harness/attacker.c):

- ``pod``: in the app's namespaces with a container's default capabilities, as ``kubectl
  exec`` gives (``pod+seccomp``: also under the runtime's default seccomp profile);
- ``pod+ptrace``: the same with CAP_SYS_PTRACE added;
- ``root``: node root, outside the pod.

A row records how the attacker ended (killed, refused by the kernel, exit), how many bytes of
the secret it obtained (the whole value, one 8-byte word of it, or 0) and what the agent
reported. It passes when: enforce, 0 bytes and the attempt stopped (killed or denied, and
reported) or refused by the kernel itself; audit, every attempt the kernel does not refuse is
reported. A residual row (the threat model names its limitation, per backend) records what the
attacker obtained and must still be reported.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cloudtaser.bpf.violations import Violation
from cloudtaser.rendering import table
from tests.harness.attacking import Attack, run_attacker

ROOT, POD, POD_SECCOMP, POD_PTRACE = "root", "pod", "pod+seccomp", "pod+ptrace"
ALL_ATTACKERS = (POD, POD_SECCOMP, POD_PTRACE, ROOT)
NODE = (POD_PTRACE, ROOT)  # node-wide vectors: the pod's own capabilities refuse the rest
# Reports of an attempt name the attacker, or the io_uring worker thread doing its work.
ATTACKER_COMMS = ("attacker", "iou-wrk-", "iou-sqp-")


@dataclass
class Target:
    """The protected app as attackers see it (``ns``: pids in its own pid namespace)."""

    pid: int  # host pid
    ns_pid: int  # pid in its namespace
    secret: str
    addr: int  # a heap copy of the secret
    length: int
    scratch: int  # where code injection attempts write (the heap copy stays intact)
    secret_fd: int  # memfd_secret (SDK delivery)
    copy_fd: int  # a memfd copy (the interposer's file delivery)
    map_range: str  # /proc/PID/map_files/RANGE of the memfd_secret mapping
    tid: int  # a thread's tid (host) ...
    ns_tid: int  # ... and in the namespace
    child: int  # a child forked after registration (host pid)
    ns_child: int
    environ_clean: bool  # its environment area holds no value (interposer env delivery)
    agent_pins: Path  # the agent's pin dir, for the vectors against the agent
    agent_pid: int  # the agent (in these tests, the test process itself)
    agent_socket: Path  # the agent's registration socket (mounted into the pod)
    token: str  # the pod's credential (a projected token's path, in the app's mount namespace)
    credentials: tuple[bytes, ...] = ()  # what the credential files hold: as good as the secret
    env: dict[str, str] | None = None  # the container's environment (its spec's), for `exec`
    stdin: subprocess.Popen[str] | None = None  # the app (to resume a stopped one, to stop it)

    def proc(self, attacker: str, pid: int | None = None) -> str:
        """/proc/PID of the app (or ``pid``, a host pid) as ``attacker`` spells it."""
        host = pid or self.pid
        if attacker == ROOT:
            return f"/proc/{host}"
        ns = {self.pid: self.ns_pid, self.tid: self.ns_tid, self.child: self.ns_child}[host]
        return f"/proc/{ns}"

    def pid_for(self, attacker: str) -> str:
        return str(self.pid if attacker == ROOT else self.ns_pid)


Args = Callable[[Target, str], list[str]]


@dataclass
class Vector:
    name: str
    cls: str  # the threat model's class
    kind: str | None  # what the agent reports (None: nothing is to be reported)
    args: Args  # attacker subcommand and arguments
    attackers: tuple[str, ...] = ALL_ATTACKERS
    residual: dict[str, str] = field(default_factory=dict)  # backend -> the limitation
    target: str = "pid"  # "pid", "child" (the child forked after registration) or "agent"
    always: bool = False  # enforced in audit mode too (the agent's own protection)


def _v(name: str, cls: str, kind: str | None, args: Args, **kw: object) -> Vector:
    return Vector(name, cls, kind, args, **kw)  # type: ignore[arg-type]


VECTORS: list[Vector] = [
    _v(
        "environ: /proc/PID/environ",
        "environ",
        "environ",
        lambda t, a: ["read", f"{t.proc(a)}/environ"],
    ),
    _v(
        "environ: /proc/PID/task/TID/environ",
        "environ",
        "environ",
        lambda t, a: ["read", f"{t.proc(a)}/task/{t.proc(a, t.tid).rsplit('/', 1)[1]}/environ"],
    ),
    _v(
        "mem: pread /proc/PID/mem",
        "mem",
        "mem",
        lambda t, a: ["mem", f"{t.proc(a)}/mem", str(t.addr), str(t.length)],
    ),
    _v(
        "mem: creat() /proc/PID/mem, write (code injection)",
        "mem",
        "mem",
        lambda t, a: ["creat-mem", t.pid_for(a), str(t.scratch)],
    ),
    _v(
        "fd: /proc/PID/fd/N of memfd_secret + mmap",
        "fd",
        None,
        lambda t, a: ["map", f"{t.proc(a)}/fd/{t.secret_fd}"],
    ),
    _v(
        "fd: /proc/PID/map_files of memfd_secret + mmap",
        "fd",
        None,
        lambda t, a: ["map", f"{t.proc(a)}/map_files/{t.map_range}"],
    ),
    _v(
        "fd: /proc/PID/fd/N of a memfd copy",
        "fd",
        "fd",
        lambda t, a: ["read", f"{t.proc(a)}/fd/{t.copy_fd}"],
    ),
    _v(
        "fd: open_by_handle_at of a memfd copy",
        "fd",
        "fd",
        lambda t, a: ["handle", f"{t.proc(a)}/fd/{t.copy_fd}"],
    ),
    _v(
        "fd: pidfd_getfd of memfd_secret + mmap",
        "fd",
        "pidfd_getfd",
        lambda t, a: ["getfd-map", t.pid_for(a), str(t.secret_fd)],
    ),
    _v(
        "shared fd table: environ read after its opener died",
        "use",
        "environ",
        lambda t, a: ["shared-read", f"{t.proc(a)}/environ"],
    ),
    _v(
        "shared fd table: mem pread after its opener died",
        "use",
        "mem",
        lambda t, a: ["shared-pread", f"{t.proc(a)}/mem", str(t.addr), str(t.length)],
    ),
    _v(
        "shared fd table: pidfd_getfd'd memfd_secret, mmap",
        "use",
        "pidfd_getfd",
        lambda t, a: ["shared-getfd-map", t.pid_for(a), str(t.secret_fd)],
    ),
    _v(
        "shared memory: memfd copy read into a CLONE_VM accomplice's memory",
        "use",
        "fd",
        lambda t, a: ["vm-read", f"{t.proc(a)}/fd/{t.copy_fd}"],
    ),
    _v(
        "shared memory: racing read of a memfd copy into a MAP_SHARED buffer",
        "use",
        "fd",
        lambda t, a: ["shm-race", f"{t.proc(a)}/fd/{t.copy_fd}"],
        residual={
            "tracepoint": "kill-based: a reader sharing the opener's fd table that reads "
            "in the microseconds before its kill lands gets a memfd copy's "
            "pages into a MAP_SHARED buffer another process sees"
        },
    ),
    _v(
        "shared memory: memfd_secret mapped for a CLONE_VM accomplice",
        "use",
        "pidfd_getfd",
        lambda t, a: ["vm-getfd-map", t.pid_for(a), str(t.secret_fd)],
    ),
    _v(
        "ia32 syscalls: environ (open, read)",
        "compat",
        "environ",
        lambda t, a: ["ia32-read", f"{t.proc(a)}/environ"],
    ),
    _v(
        "ia32 syscalls: mem (open, _llseek, read)",
        "compat",
        "mem",
        lambda t, a: ["ia32-mem", f"{t.proc(a)}/mem", str(t.addr), str(t.length)],
    ),
    _v(
        "ia32 syscalls: pidfd_getfd of memfd_secret + mmap2",
        "compat",
        "pidfd_getfd",
        lambda t, a: ["ia32-getfd-map", t.pid_for(a), str(t.secret_fd)],
    ),
    _v(
        "ia32 syscalls: PTRACE_SEIZE, then PEEKDATA",
        "compat",
        "ptrace",
        lambda t, a: ["ia32-ptrace", t.pid_for(a), str(t.addr)],
    ),
    _v(
        "io_uring: OPENAT + READ of environ",
        "io_uring",
        "environ",
        lambda t, a: ["uring-read", f"{t.proc(a)}/environ"],
    ),
    _v(
        "io_uring: fixed file READ of environ",
        "io_uring",
        "environ",
        lambda t, a: ["uring-fixed", f"{t.proc(a)}/environ"],
    ),
    _v(
        "io_uring: SPLICE from a fixed file (a memfd copy)",
        "io_uring",
        "fd",
        lambda t, a: ["uring-splice", f"{t.proc(a)}/fd/{t.copy_fd}"],
    ),
    _v(
        "io_uring: OPENAT into an empty fixed slot linked to a READ of it (mem)",
        "io_uring",
        "mem",
        lambda t, a: ["uring-linked", f"{t.proc(a)}/mem", str(t.addr)],
    ),
    _v(
        "io_uring: fixed file READ of a memfd copy",
        "io_uring",
        "fd",
        lambda t, a: ["uring-fixed", f"{t.proc(a)}/fd/{t.copy_fd}"],
    ),
    _v(
        "ptrace: PTRACE_SEIZE + PEEKDATA",
        "ptrace",
        "ptrace",
        lambda t, a: ["ptrace", t.pid_for(a), str(t.addr)],
    ),
    _v(
        "process_vm_readv",
        "ptrace",
        "process_vm_readv",
        lambda t, a: ["vm-readv", t.pid_for(a), str(t.addr), str(t.length)],
    ),
    _v(
        "perf_event_open: user stacks of the app",
        "perf",
        "perf",
        lambda t, a: ["perf", t.pid_for(a)],
    ),
    _v(
        "perf_event_open: node-wide user stack sampling",
        "perf",
        "perf",
        lambda t, a: ["perf", "-1"],
        attackers=NODE,
    ),
    _v(
        "process_madvise (pages out to swap)",
        "ptrace",
        "process_madvise",
        lambda t, a: ["madvise", t.pid_for(a), str(t.addr), str(t.length)],
    ),
    _v("BPF: load a tracing program", "bpf", "bpf", lambda t, a: ["bpf-load"], attackers=NODE),
    _v(
        "tracefs: define a uprobe",
        "bpf",
        "tracefs",
        lambda t, a: ["uprobe", "/bin/true"],
        attackers=NODE,
    ),
    _v(
        "agent: delete the app from the pinned map (bpftool map delete)",
        "agent",
        "bpf",
        lambda t, a: ["map-delete", str(t.agent_pins / "maps" / "protected"), str(t.pid)],
        attackers=(ROOT,),
        always=True,
    ),
    _v(
        "agent: run its agent_op program as if the agent",
        "agent",
        "agent",
        lambda t, a: ["agent-op", str(t.agent_pins / "progs" / "agent_op"), str(t.pid)],
        attackers=(ROOT,),
        always=True,
    ),
    _v(
        "agent: read its memory (/proc/AGENT/mem)",
        "agent",
        "mem",
        lambda t, a: ["mem", f"/proc/{t.agent_pid}/mem", "4096", "8"],
        attackers=(ROOT,),
        always=True,
        target="agent",
    ),
    _v(
        "agent: ptrace it",
        "agent",
        "ptrace",
        lambda t, a: ["ptrace", str(t.agent_pid), "4096"],
        attackers=(ROOT,),
        always=True,
        target="agent",
    ),
    _v(
        "credentials: read the pod's token (its projected volume)",
        "credentials",
        "credentials",
        lambda t, a: ["read", t.token if a != ROOT else f"/proc/{t.pid}/root{t.token}"],
    ),
    _v(
        "credentials: a second wrapper in the pod registers, then reads the token",
        "credentials",
        "credentials",
        lambda t, a: ["register-read", str(t.agent_socket), t.token],
        attackers=(POD, POD_SECCOMP, POD_PTRACE),
    ),
    _v(
        "child forked after registration: environ",
        "environ",
        "environ",
        lambda t, a: ["read", f"{t.proc(a, t.child)}/environ"],
        target="child",
    ),
]


@dataclass
class Row:
    app: str
    vector: str
    attacker: str
    mode: str
    result: str  # killed, refused (the kernel's errno), denied, exit N
    obtained: int
    reported: str
    ok: bool
    note: str = ""


RESULTS: list[Row] = []


def obtained(secret: str, output: bytes) -> int:
    """Bytes of the secret in ``output``: all of it, one ptrace word of it, or none."""
    value = secret.encode()
    if value in output:
        return len(value)
    return 8 if value[:8] in output else 0


def _settled(violations: list[Violation], quiet: float = 0.1) -> int:
    """The number of reports once none arrived for ``quiet`` seconds: a row's late reports
    (an attacker's second syscall, say) are never taken for the next row's."""
    count = len(violations)
    while True:
        time.sleep(quiet)
        if len(violations) == count:
            return count
        count = len(violations)


def wait_report(
    violations: list[Violation], since: int, pred: Callable[[Violation], bool], timeout: float
) -> Violation | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for v in violations[since:]:
            if pred(v):
                return v
        time.sleep(0.02)
    return None


def _describe(r: Attack) -> str:
    if r.returncode < 0:
        return f"killed ({signal.Signals(-r.returncode).name})"
    if r.refused:
        return f"refused ({r.refused.split(': ', 1)[-1]})"
    return f"exit {r.returncode}"


def attempt(
    app: str,
    vector: Vector,
    attacker: str,
    target: Target,
    violations: list[Violation],
    mode: str,
    backend: str,
) -> Row:
    """One vector by one attacker; the row (also appended to RESULTS)."""
    since = _settled(violations)
    r = run_attacker(
        *vector.args(target, attacker),
        in_pod=attacker != ROOT,
        ptrace=attacker == POD_PTRACE,
        seccomp=attacker == POD_SECCOMP,
        enter=None if attacker == ROOT else target.pid,
    )
    victim = {"pid": target.pid, "child": target.child, "agent": target.agent_pid}[vector.target]
    got = obtained(target.secret, r.stdout)
    if not got and any(c and c in r.stdout for c in target.credentials):
        got = len(target.secret)  # a login as the pod: the whole secret
    # Whatever the agent reported of this attempt: the target, or the node (target 0).
    v = wait_report(
        violations,
        since,
        lambda v: (
            v.opener_comm.startswith(ATTACKER_COMMS)
            and (v.target_tgid in (victim, 0) or v.kind == "agent")
        ),
        timeout=0.3 if r.refused else 3.0,
    )
    reported = f"{v.kind}/{v.via}/{v.action}" if v else "-"
    residual = vector.residual.get(backend)
    stopped = v is not None and v.action in ("killed", "denied")
    if vector.kind is None or (r.refused and not v):
        # The kernel refused it by itself (non-dumpable app, no capability, memfd_secret cannot
        # be reopened): nothing to report, nothing obtained.
        ok, note = got == 0 and r.refused is not None, "the kernel refuses it"
    elif mode == "audit" and not vector.always:
        ok, note = v is not None and v.action == "audited", ""
    elif residual:
        ok, note = v is not None, f"RESIDUAL: {residual}"
    else:
        ok, note = got == 0 and stopped, ""
    if vector.kind == "environ" and target.environ_clean and got == 0 and not v:
        ok, note = True, "its environment holds no value: no violation"
    result = "denied (EPERM)" if v and v.action == "denied" and r.refused else _describe(r)
    row = Row(app, vector.name, attacker, mode, result, got, reported, ok, note)
    RESULTS.append(row)
    return row


def render(rows: list[Row]) -> str:
    return table(
        ["app", "vector", "attacker", "mode", "result", "secret bytes", "reported", "ok", "note"],
        [
            (
                r.app,
                r.vector,
                r.attacker,
                r.mode,
                r.result,
                r.obtained,
                r.reported,
                "ok" if r.ok else "FAIL",
                r.note,
            )
            for r in rows
        ],
    )


def resume(target: Target) -> None:
    """An audit-mode PTRACE_SEIZE + interrupt by a tracer that then exited leaves the app
    stopped, as it would without the agent: the harness (not the attacker) resumes it."""
    for pid in (target.pid, target.child):
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
