"""CORE_DUMP: a protected process never dumps core, whatever core_pattern says.

The wrapper's RLIMIT_CORE=0 does not stop a piped core_pattern (the kernel ignores the limit
for pipes) and the app may raise it again; PR_SET_DUMPABLE is reset by execve. So the agent
kills a protected process that is about to dump (signal_deliver of a core-dumping signal with
the default action): the dump is abandoned. Each test also runs an unregistered control
victim, which must dump, so that a test cannot pass because dumps are off on this machine.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cloudtaser.engine.plans import ProtectionFlag
from tests.harness.agents import PROTECT_BASE, AgentRun, Launched, Victim

pytestmark = pytest.mark.kernel

CORE_FLAGS = PROTECT_BASE | int(ProtectionFlag.CORE_DUMP)
CORE_PATTERN = Path("/proc/sys/kernel/core_pattern")

# argv: register (0/1), socket path, RLIMIT_CORE ("inf" or "0"), fault ("1": SIGSEGV by a
# NULL read once ready, instead of waiting for a signal from outside).
VICTIM = r"""
import ctypes, os, resource, signal, sys, time
from cloudtaser.bpf.protocol import register
# Default actions, whatever was inherited: a shell running a job in the background without
# job control starts it with SIGQUIT ignored, and that reaches this process through exec.
for sig in (signal.SIGQUIT, signal.SIGABRT, signal.SIGSEGV):
    signal.signal(sig, signal.SIG_DFL)
limit = resource.RLIM_INFINITY if sys.argv[3] == "inf" else 0
resource.setrlimit(resource.RLIMIT_CORE, (limit, limit))
# Headers and notes only (60 KB, not 11 MB): whether a core file appears is the question.
with open("/proc/self/coredump_filter", "w") as f:
    f.write("0")
out = {"pid": os.getpid()}
if sys.argv[1] == "1":
    out["backend"] = register(sys.argv[2]).backend
print(" ".join(f"{k}={v}" for k, v in out.items()), flush=True)
if sys.argv[4] == "1":
    ctypes.string_at(0)
time.sleep(120)
"""

PIPE_HELPER = """#!/bin/sh
# core_pattern pipe helper of a test: records that the kernel started it, and for which pid.
cat > "{dir}/piped.$1"
"""


@pytest.fixture
def core_pattern() -> Iterator[Callable[[str], None]]:
    """Set kernel.core_pattern for one test; the old value is restored afterwards."""
    old = CORE_PATTERN.read_text()

    def set_pattern(pattern: str) -> None:
        CORE_PATTERN.write_text(pattern)
        assert CORE_PATTERN.read_text().strip() == pattern

    try:
        yield set_pattern
    finally:
        CORE_PATTERN.write_text(old)


@pytest.fixture
def victims(launched: Launched) -> Callable[..., Victim]:
    def spawn(socket_path: Path | None, limit: str = "inf", fault: bool = False) -> Victim:
        return launched(
            Victim,
            VICTIM,
            "1" if socket_path else "0",
            str(socket_path or ""),
            limit,
            "1" if fault else "0",
        )

    return spawn


def die(victim: Victim, sig: signal.Signals) -> int:
    os.kill(victim.pid, sig)
    rc = victim.proc.wait(timeout=30)
    time.sleep(0.3)  # a core_pattern pipe helper runs asynchronously
    return rc


def cores(directory: Path, pid: int) -> list[Path]:
    return [p for p in directory.iterdir() if p.name.split(".")[1] == str(pid)]


@pytest.mark.parametrize("sig", [signal.SIGSEGV, signal.SIGABRT, signal.SIGQUIT])
def test_no_core_file(
    sig: signal.Signals,
    agent_run: AgentRun,
    victims: Callable[..., Victim],
    core_pattern: Callable[[str], None],
    tmp_path: Path,
) -> None:
    agent_run.start(flags=CORE_FLAGS)
    dumps = tmp_path / "cores"
    dumps.mkdir()
    core_pattern(f"{dumps}/core.%p")
    control = victims(None)
    assert die(control, sig) == -sig
    assert cores(dumps, control.pid), "control did not dump: the test proves nothing"
    victim = victims(agent_run.socket_path)
    assert victim.info["backend"] == agent_run.backend  # the same program in both backends
    assert die(victim, sig) == -signal.SIGKILL
    assert cores(dumps, victim.pid) == []
    v = agent_run.wait_violation(lambda v: v.target_tgid == victim.pid and v.kind == "coredump")
    assert v.action == "killed"
    # Sent by this test process (kill from outside): the offender is the sender.
    assert v.opener_tgid == os.getpid() and v.opener_uid == 0
    assert agent_run.agent is not None
    assert (
        'cloudtaser_violations_total{action="killed",vector="coredump"} 1.0'
        in agent_run.agent.metrics.text()
    )


def test_no_pipe_helper_even_with_rlimit_zero(
    agent_run: AgentRun,
    victims: Callable[..., Victim],
    core_pattern: Callable[[str], None],
    tmp_path: Path,
) -> None:
    """A piped core_pattern ignores RLIMIT_CORE=0 (the control shows it); the agent does not."""
    agent_run.start(flags=CORE_FLAGS)
    dumps = tmp_path / "cores"
    dumps.mkdir()
    helper = tmp_path / "helper.sh"
    helper.write_text(PIPE_HELPER.format(dir=dumps))
    helper.chmod(0o755)
    core_pattern(f"|{helper} %p")
    control = victims(None, limit="0")
    assert die(control, signal.SIGSEGV) == -signal.SIGSEGV
    assert cores(dumps, control.pid), "the pipe helper did not run for the control"
    victim = victims(agent_run.socket_path, limit="0")
    assert die(victim, signal.SIGSEGV) == -signal.SIGKILL
    assert cores(dumps, victim.pid) == [], "the pipe helper ran for a protected process"


def test_real_fault_is_not_dumped(
    agent_run: AgentRun,
    victims: Callable[..., Victim],
    core_pattern: Callable[[str], None],
    tmp_path: Path,
) -> None:
    """A genuine crash (a NULL read) of the protected process: killed, no dump; the
    offender reported is the process itself."""
    agent_run.start(flags=CORE_FLAGS)
    dumps = tmp_path / "cores"
    dumps.mkdir()
    core_pattern(f"{dumps}/core.%p")
    victim = victims(agent_run.socket_path, fault=True)
    rc = victim.proc.wait(timeout=30)
    time.sleep(0.3)
    assert rc == -signal.SIGKILL
    assert cores(dumps, victim.pid) == []
    v = agent_run.wait_violation(lambda v: v.target_tgid == victim.pid and v.kind == "coredump")
    assert v.opener_tgid == victim.pid and v.action == "killed"


def test_audit_mode_reports_and_dumps(
    agent_run: AgentRun,
    victims: Callable[..., Victim],
    core_pattern: Callable[[str], None],
    tmp_path: Path,
) -> None:
    agent_run.start(flags=CORE_FLAGS | int(ProtectionFlag.AUDIT_ONLY))
    dumps = tmp_path / "cores"
    dumps.mkdir()
    core_pattern(f"{dumps}/core.%p")
    victim = victims(agent_run.socket_path)
    assert die(victim, signal.SIGABRT) == -signal.SIGABRT
    assert cores(dumps, victim.pid)
    v = agent_run.wait_violation(lambda v: v.target_tgid == victim.pid and v.kind == "coredump")
    assert v.action == "audited"


def test_without_the_flag_dumps_as_usual(
    agent_run: AgentRun,
    victims: Callable[..., Victim],
    core_pattern: Callable[[str], None],
    tmp_path: Path,
) -> None:
    agent_run.start(flags=PROTECT_BASE)
    dumps = tmp_path / "cores"
    dumps.mkdir()
    core_pattern(f"{dumps}/core.%p")
    victim = victims(agent_run.socket_path)
    assert die(victim, signal.SIGSEGV) == -signal.SIGSEGV
    assert cores(dumps, victim.pid)


def test_handled_signal_is_left_alone(
    agent_run: AgentRun, core_pattern: Callable[[str], None], tmp_path: Path
) -> None:
    """A process that handles SIGQUIT itself is not killed for receiving it."""
    agent_run.start(flags=CORE_FLAGS)
    code = (
        "import os, signal, sys, time\n"
        "from cloudtaser.bpf.protocol import register\n"
        # os.write, not print: the signal may land while print('ready') is still flushing,
        # and a buffered writer refuses a reentrant call
        "signal.signal(signal.SIGQUIT, lambda *a: os.write(1, b'handled\\n'))\n"
        "register(sys.argv[1]); print('ready', flush=True); time.sleep(120)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(agent_run.socket_path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        os.kill(proc.pid, signal.SIGQUIT)
        assert proc.stdout.readline() == "handled\n"
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout:
            proc.stdout.close()
