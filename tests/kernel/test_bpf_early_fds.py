"""An fd on /proc/PID/environ or /proc/PID/mem opened BEFORE the process registered.

The kernel side checks opens, not reads, so the agent scans every fd table at registration
(bpf/cloudtaser/bpf/scanning.py): in enforce mode the holder is killed before the registration is answered,
so the read it tries afterwards never happens; audit mode reports it and lets it read.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cloudtaser.bpf import scanning
from cloudtaser.bpf.programs import LSM
from cloudtaser.engine.plans import ProtectionFlag
from tests.harness.agents import PROTECT_BASE, REPO, AgentRun, Victim, launch

pytestmark = pytest.mark.kernel

# argv: socket path, trigger file: registers once the trigger file exists.
VICTIM = r"""
import ctypes, os, sys, threading, time
from cloudtaser.bpf.protocol import register
secret = os.environ["CT_SECRET"]
buf = ctypes.create_string_buffer(secret.encode())
t = threading.Thread(target=time.sleep, args=(120,), daemon=True)
t.start()
print(f"addr={ctypes.addressof(buf)} len={len(secret)} tid={t.native_id}", flush=True)
while not os.path.exists(sys.argv[2]):
    time.sleep(0.01)
print("backend=" + register(sys.argv[1]).backend, flush=True)
time.sleep(120)
"""

# argv: path, offset, length. Opens first, says so, reads when told to (a line on stdin).
ATTACKER = r"""
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
print("opened", flush=True)
sys.stdin.readline()
data = os.pread(fd, int(sys.argv[3]), int(sys.argv[2])) if sys.argv[2] != "-" else os.read(fd, 65536)
sys.stdout.write(data.hex() + "\n")
"""


class Scenario:
    def __init__(self, run: AgentRun, tmp_path: Path) -> None:
        self.run = run
        self.tmp = tmp_path
        self.procs: list[subprocess.Popen[str]] = []

    def victim(self) -> tuple[Victim, Path]:
        trigger = self.tmp / "register-now"
        v = launch(Victim, VICTIM, str(self.run.socket_path), str(trigger))
        self.procs.append(v.proc)
        return v, trigger

    def attacker(self, path: str, offset: str = "-", length: str = "0") -> subprocess.Popen[str]:
        p = subprocess.Popen(
            [sys.executable, "-c", ATTACKER, path, offset, length],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        self.procs.append(p)
        assert p.stdout is not None and p.stdout.readline() == "opened\n"
        return p

    def register(self, v: Victim, trigger: Path) -> None:
        trigger.touch()
        assert v.proc.stdout is not None
        assert v.proc.stdout.readline() == f"backend={self.run.backend}\n"

    @staticmethod
    def finish(p: subprocess.Popen[str]) -> tuple[int, bytes]:
        try:
            out, _ = p.communicate("go\n", timeout=20)
        except BrokenPipeError:  # killed before it could be told
            out = p.stdout.read() if p.stdout else ""
            p.wait(timeout=20)
        return p.returncode, bytes.fromhex(out.strip()) if out.strip() else b""

    def close(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait()
            for stream in (p.stdin, p.stdout):
                if stream:
                    stream.close()


@pytest.fixture
def scenario(agent_run: AgentRun, tmp_path: Path) -> Iterator[Scenario]:
    s = Scenario(agent_run, tmp_path)
    yield s
    s.close()


@pytest.fixture
def second_procfs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "proc2"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "proc", "proc", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


PATHS: dict[str, Callable[[Victim, Path], tuple[str, str, str]]] = {
    "environ": lambda v, mnt: (f"/proc/{v.pid}/environ", "-", "0"),
    "task-environ": lambda v, mnt: (f"/proc/{v.pid}/task/{v.info['tid']}/environ", "-", "0"),
    "second-procfs-environ": lambda v, mnt: (f"{mnt}/{v.pid}/environ", "-", "0"),
    "mem": lambda v, mnt: (f"/proc/{v.pid}/mem", v.info["addr"], v.info["len"]),
    "thread-mem": lambda v, mnt: (f"/proc/{v.info['tid']}/mem", v.info["addr"], v.info["len"]),
}


@pytest.mark.parametrize("name", sorted(PATHS))
def test_holder_killed_at_registration(
    name: str, scenario: Scenario, agent_run: AgentRun, second_procfs: Path
) -> None:
    agent = agent_run.start()
    v, trigger = scenario.victim()
    path, offset, length = PATHS[name](v, second_procfs)
    attacker = scenario.attacker(path, offset, length)
    scenario.register(v, trigger)
    rc, data = scenario.finish(attacker)
    # LSM backend: no scan; the read itself fails (file_permission, EPERM) and the holder lives.
    assert rc == (1 if agent_run.backend == LSM else -9), f"holder not stopped (rc {rc})"
    assert data == b"" and v.secret.encode() not in data
    assert v.alive()
    vector = "mem" if name.endswith("mem") else "environ"
    got = agent_run.wait_violation(lambda x: x.target_tgid == v.pid and x.kind == vector)
    assert (
        got.action == agent_run.blocked and got.opener_tgid == attacker.pid and got.opener_uid == 0
    )
    assert got.opener_comm == "python3" or got.opener_comm.startswith("python")
    assert (
        f'cloudtaser_violations_total{{action="{agent_run.blocked}",vector="{vector}"}} 1.0'
        in agent.metrics.text()
    )
    print(f"{name}: fd scan at registration took {agent.last_scan_seconds * 1000:.1f} ms")


def test_control_without_registration_the_early_fd_leaks(
    scenario: Scenario, agent_run: AgentRun
) -> None:
    """The scan is what stops it: without registering, the same early fd reads the secret."""
    agent_run.start()
    v, _trigger = scenario.victim()
    attacker = scenario.attacker(f"/proc/{v.pid}/environ")
    rc, data = scenario.finish(attacker)
    assert rc == 0 and v.secret.encode() in data


def test_audit_mode_reports_and_lets_it_read(scenario: Scenario, agent_run: AgentRun) -> None:
    agent_run.start(flags=PROTECT_BASE | int(ProtectionFlag.AUDIT_ONLY))
    v, trigger = scenario.victim()
    attacker = scenario.attacker(f"/proc/{v.pid}/environ")
    scenario.register(v, trigger)
    rc, data = scenario.finish(attacker)
    assert rc == 0 and v.secret.encode() in data
    got = agent_run.wait_violation(lambda x: x.target_tgid == v.pid and x.kind == "environ")
    assert got.action == "audited" and got.opener_tgid == attacker.pid


def test_lookalike_regular_file_is_not_a_hit(
    scenario: Scenario, agent_run: AgentRun, tmp_path: Path
) -> None:
    agent_run.start()
    v, trigger = scenario.victim()
    fake = tmp_path / str(v.pid) / "environ"
    fake.parent.mkdir()
    fake.write_bytes(b"harmless")
    holder = scenario.attacker(str(fake))
    assert [h.pid for h in scanning.find_holders(v.pid)] == []
    scenario.register(v, trigger)
    rc, data = scenario.finish(holder)
    assert rc == 0 and data == b"harmless"


def test_allowed_accessor_keeps_its_fd(scenario: Scenario, agent_run: AgentRun) -> None:
    agent = agent_run.start()
    agent.allow(Path(sys.executable).resolve())
    v, trigger = scenario.victim()
    holder = scenario.attacker(f"/proc/{v.pid}/environ")
    found = scanning.find_holders(v.pid)
    assert [(h.pid, h.vector) for h in found] == [(holder.pid, "environ")]
    scenario.register(v, trigger)
    rc, data = scenario.finish(holder)
    assert rc == 0 and v.secret.encode() in data
    time.sleep(0.1)
    assert not [x for x in agent_run.violations if x.target_tgid == v.pid]
    agent.disallow(Path(sys.executable).resolve())
