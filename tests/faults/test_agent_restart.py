"""The node agent SIGKILLed and restarted while an attacker keeps reading /proc/PID/environ of a
protected process: enforcement has no gap, because the programs' links and maps are pinned
(the kernel keeps enforcing with no agent at all) and a new agent attaches its links before it
replaces the pinned ones.

The attacker is a loop of separate ``cat /proc/PID/environ`` processes (each one is killed by
the kernel at its open, so one process cannot loop by itself), timestamped so the test can
show it covered every phase: agent up, agent dead, a new agent loading, and up again.
tests/kernel/test_bpf_protect.py::test_restart_keeps_protection checks the rest of a restart
(the same entries, one set of links, events kept in the pinned ring buffer) with single probes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cloudtaser.bpf.programs import ensure_bpffs, unpin
from tests.harness.agents import INTERPRETER, Victim

pytestmark = pytest.mark.kernel
CAT = "/usr/bin/cat"


@dataclass
class Attempt:
    at: float
    returncode: int
    leaked: bool  # the secret was in what it read
    read_anything: bool


@dataclass
class Attacker:
    """``cat /proc/PID/environ`` in a loop until stopped."""

    target: int
    secret: bytes
    attempts: list[Attempt] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            at = time.monotonic()
            r = subprocess.run(
                [CAT, f"/proc/{self.target}/environ"], capture_output=True, timeout=10
            )
            self.attempts.append(Attempt(at, r.returncode, self.secret in r.stdout, bool(r.stdout)))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="attacker", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=20)

    def between(self, start: float, end: float) -> list[Attempt]:
        return [a for a in self.attempts if start <= a.at < end]


class AgentProcess:
    """The real agent (`python -m cloudtaser.bpf.agent`) as its own process, like the DaemonSet."""

    def __init__(self, socket: Path, pin_dir: Path, bpf_object: Path) -> None:
        self.argv = [
            sys.executable,
            "-m",
            "cloudtaser.bpf.agent",
            "--socket",
            str(socket),
            "--pin-dir",
            str(pin_dir),
            "--object",
            str(bpf_object),
            "--allow-bpf-loader",
            INTERPRETER,  # other test sessions' agents
            "--io-uring",
            "allow",
        ]  # this machine's sysctl stays as it is
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith("ready: "), f"the agent did not start (rc {self.proc.poll()})"

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        assert self.proc.returncode == -signal.SIGKILL

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def agent_process(bpf_object: Path, tmp_path: Path) -> Iterator[AgentProcess]:
    ensure_bpffs()
    pin_dir = Path(f"/sys/fs/bpf/cloudtaser-fault-{uuid.uuid4().hex[:12]}")
    agent = AgentProcess(tmp_path / "agent.sock", pin_dir, bpf_object)
    try:
        yield agent
    finally:
        agent.stop()
        unpin(pin_dir)


def test_agent_killed_and_restarted_while_an_attacker_loops_on_environ(
    agent_process: AgentProcess,
    spawn_victim: Callable[..., Victim],
    tmp_path: Path,
) -> None:
    agent_process.start()
    victim = spawn_victim(tmp_path / "agent.sock")
    assert victim.info["backend"] == "tracepoint"
    attacker = Attacker(victim.pid, victim.secret.encode())
    attacker.start()
    try:
        t_start = time.monotonic()
        time.sleep(1.0)
        t_kill = time.monotonic()
        agent_process.kill()  # no cleanup of any kind
        time.sleep(2.0)
        t_restart = time.monotonic()
        agent_process.start()  # load, attach, replace the pinned links, serve
        t_ready = time.monotonic()
        time.sleep(1.0)
    finally:
        attacker.stop()
    t_end = time.monotonic()

    phases = {
        "agent up": attacker.between(t_start, t_kill),
        "agent dead": attacker.between(t_kill, t_restart),
        "new agent loading": attacker.between(t_restart, t_ready),
        "agent up again": attacker.between(t_ready, t_end),
    }
    table = ", ".join(f"{name}: {len(a)} attempts" for name, a in phases.items())
    print(
        f"\nagent SIGKILLed and restarted (load {t_ready - t_restart:.2f}s); {table}; "
        f"successful reads: {sum(a.read_anything for a in attacker.attempts)}"
    )
    assert not [a for a in attacker.attempts if a.leaked], "the secret was read"
    assert not [a for a in attacker.attempts if a.read_anything], "environ was read"
    assert {a.returncode for a in attacker.attempts} == {-9}, "an attempt was not killed"
    for name, attempts in phases.items():
        assert len(attempts) >= 3, f"the attacker barely ran while {name}: {table}"
    assert victim.alive() and victim.state() in ("S", "R")
    assert os.path.exists(f"/proc/{victim.pid}")
