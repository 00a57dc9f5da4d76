"""Audit mode blocks nothing, ptrace included: a debugger that attaches sees the stop it
expects (enforce mode's SIGCONT for the victim of a killed tracer must not run in audit mode,
or gdb/gcore wait forever for a SIGSTOP the SIGCONT cancelled)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from cloudtaser.engine.plans import ProtectionFlag
from tests.harness.agents import PROTECT_BASE, AgentRun, Victim, attack

pytestmark = pytest.mark.kernel

# PTRACE_ATTACH, then wait (at most 5 s) for the attach's SIGSTOP, then detach.
ATTACH_AND_WAIT = r"""
import ctypes, os, signal, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
pid = int(sys.argv[1])
assert libc.ptrace(16, pid, None, None) == 0, ctypes.get_errno()
signal.alarm(5)
_, status = os.waitpid(pid, 0x40000000)  # __WALL
print("stopped" if os.WIFSTOPPED(status) and os.WSTOPSIG(status) == signal.SIGSTOP else status)
libc.ptrace(17, pid, None, None)  # PTRACE_DETACH
"""


def test_debugger_attach_completes_in_audit_mode(
    agent_run: AgentRun, spawn_victim: Callable[..., Victim]
) -> None:
    agent_run.start(flags=PROTECT_BASE | int(ProtectionFlag.AUDIT_ONLY))
    victim = spawn_victim(agent_run.socket_path)
    result = attack(ATTACH_AND_WAIT, str(victim.pid))
    assert result.returncode == 0 and result.stdout == b"stopped\n", result
    v = agent_run.wait_violation(lambda v: v.target_tgid == victim.pid and v.kind == "ptrace")
    assert v.action == "audited"
    assert victim.alive() and victim.state() in ("S", "R")
