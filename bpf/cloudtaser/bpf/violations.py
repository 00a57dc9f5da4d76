"""What the kernel side reports, as the agent logs and counts it: ``Violation`` records from
the ring buffer, the agent's own finds (fds opened before a registration), and the agent's
Prometheus metrics. A violation never carries secret data."""

from __future__ import annotations

import ctypes
import enum
import logging
import os
import signal
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import prometheus_client

from cloudtaser.bpf import layouts, scanning

log = logging.getLogger("cloudtaser.bpf.agent")  # the agent's records, whichever part logs them


@dataclass(frozen=True)
class Violation:
    kind: str
    action: str
    target_tgid: int
    opener_tgid: int
    opener_pid: int
    opener_uid: int
    opener_comm: str
    flags: int
    opener_exe: str = ""  # basename of the offender's executable, recorded by the kernel side
    via: str = "open"  # how: open, read, write, mmap, transfer, io_uring, syscall, signal, agent_op
    note: int = 0  # layouts.Note bits

    @property
    def canary(self) -> bool:
        """The wrapper's canary probe (contracts/README.md): proof of protection, no attack."""
        return bool(self.note & layouts.Note.CANARY)

    @classmethod
    def from_record(cls, data: bytes) -> Violation:
        size = ctypes.sizeof(layouts.Event)
        ev = layouts.Event.from_buffer_copy(data[:size].ljust(size, b"\0"))
        return cls(
            kind=enum_name(layouts.EventKind, ev.kind),
            action=enum_name(layouts.Action, ev.action),
            target_tgid=ev.target_tgid,
            opener_tgid=ev.opener_tgid,
            opener_pid=ev.opener_pid,
            opener_uid=ev.opener_uid,
            opener_comm=ev.comm.decode(errors="replace"),
            flags=ev.flags,
            opener_exe=ev.exe.decode(errors="replace"),
            via=enum_name(layouts.Via, ev.via),
            note=ev.note,
        )


def enum_name(kind: type[enum.IntEnum], value: int) -> str:
    """``kind(value)``'s name in lower case, or ``unknown-VALUE``."""
    try:
        return kind(value).name.lower()
    except ValueError:
        return f"unknown-{value}"


def exe_basename(pid: int) -> str:
    """The basename of ``pid``'s executable, as the kernel side reports it ("" if unknown)."""
    try:
        target = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""
    return os.path.basename(target.removesuffix(" (deleted)"))


class Metrics:
    """Prometheus metrics of one agent (its own registry: several agents in one test process)."""

    def __init__(self) -> None:
        self.registry = prometheus_client.CollectorRegistry()
        self.violations = prometheus_client.Counter(
            "cloudtaser_violations",
            "Accesses to protected processes, by vector and action.",
            ["vector", "action"],
            registry=self.registry,
        )
        self.registrations = prometheus_client.Counter(
            "cloudtaser_registrations",
            "Processes registered for protection.",
            ["result"],
            registry=self.registry,
        )

    def text(self) -> str:
        return prometheus_client.generate_latest(self.registry).decode()


class ViolationLog:
    """Logs and counts each violation, then hands it to ``on_violation`` (the agent's
    reporters); canaries and the agent role's own claims are logged only."""

    def __init__(
        self, metrics: Metrics, on_violation: Callable[[Violation], None] | None = None
    ) -> None:
        self.metrics = metrics
        self.on_violation = on_violation

    def record(self, data: bytes) -> None:
        """A record of the ``events`` ring buffer."""
        self.report(Violation.from_record(data))

    def report(self, v: Violation) -> None:
        if v.canary:
            log.debug(
                "canary of pid %d stopped (%s via %s: %s)", v.target_tgid, v.kind, v.via, v.action
            )
            return
        if v.kind == "agent" and v.action == "audited":
            if v.via == "agent_op":  # a claim: the first agent, a successor, or an impostor
                mine = v.opener_tgid == os.getpid()
                (log.info if mine else log.warning)(
                    "the agent role was claimed by pid %d (comm %r, exe %r)%s",
                    v.opener_tgid,
                    v.opener_comm,
                    v.opener_exe,
                    " (this agent)" if mine else "",
                )
                return
            log.warning(
                "the agent role's holder (pid %d) exited; a successor may claim it", v.target_tgid
            )
        target = "the node" if v.note & layouts.Note.NODE_WIDE else f"pid {v.target_tgid}"
        log.warning(
            "violation: %s of %s via %s by pid %d (tgid %d, uid %d, comm %r, exe %r): %s",
            v.kind,
            target,
            v.via,
            v.opener_pid,
            v.opener_tgid,
            v.opener_uid,
            v.opener_comm,
            v.opener_exe,
            v.action,
        )
        self.metrics.violations.labels(vector=v.kind, action=v.action).inc()
        if self.on_violation is not None:
            self.on_violation(v)


def deal_with_early_holders(
    holders: Iterable[scanning.Holder],
    pid: int,
    flags: int,
    kill: bool,
    allowed: Callable[[int, int], bool],
    report: Callable[[Violation], None],
) -> None:
    """Processes that opened ``pid``'s environ/mem before its entry was written (the kernel
    side checks opens, not reads; bpf/cloudtaser/bpf/scanning.py found them): each one whose
    executable ``allowed(pid, uid)`` does not allow is killed when ``kill``, and reported
    either way."""
    for h in holders:
        comm, uid = scanning.comm_and_uid(h.pid)
        if allowed(h.pid, uid):
            continue
        if kill:
            try:
                pidfd = os.pidfd_open(h.pid)
            except OSError:
                continue  # gone already
            try:
                if not scanning.still_holds(h):
                    continue
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            except ProcessLookupError:
                continue
            finally:
                os.close(pidfd)
        report(
            Violation(
                kind=h.vector,
                action="killed" if kill else "audited",
                target_tgid=pid,
                opener_tgid=h.pid,
                opener_pid=h.pid,
                opener_uid=uid,
                opener_comm=comm,
                flags=flags,
                opener_exe=exe_basename(h.pid),
            )
        )
