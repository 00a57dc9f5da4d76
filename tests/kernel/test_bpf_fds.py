"""FDS: a protected process's secret files (memfd, memfd_secret) cannot be opened by others
through /proc/PID/fd/N or /proc/PID/map_files/..., whatever path leads there."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from cloudtaser.engine.plans import ProtectionFlag
from tests.harness.agents import PROTECT_BASE, AgentRun, Launched, Victim, assert_blocked, attack

pytestmark = pytest.mark.kernel

FDS_FLAGS = PROTECT_BASE | int(ProtectionFlag.FDS)

# argv: register (0/1), socket path. A memfd created before registration (found by the
# agent's scan), then a memfd_secret and a memfd created after it (recorded by the BPF side).
VICTIM = r"""
import ctypes, mmap, os, sys, time
from cloudtaser.bpf.protocol import register
secret = os.environ["CT_SECRET"].encode()
libc = ctypes.CDLL(None, use_errno=True)
out = {}
early = os.memfd_create("early")
os.write(early, secret)
os.ftruncate(early, 4096)
if sys.argv[1] == "1":
    out["backend"] = register(sys.argv[2]).backend
sfd = libc.syscall(447, 0)
assert sfd >= 0, ctypes.get_errno()
os.ftruncate(sfd, 4096)
smap = mmap.mmap(sfd, 4096, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
smap[: len(secret)] = secret
late = os.memfd_create("late")
os.ftruncate(late, 4096)
lmap = mmap.mmap(late, 4096, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
lmap[: len(secret)] = secret
out.update(early=early, secretmem=sfd, late=late, len=len(secret))
with open("/proc/self/maps") as f:
    maps = f.readlines()
out["secret_map"] = next(l.split()[0] for l in maps if "secretmem" in l)
out["late_map"] = next(l.split()[0] for l in maps if "memfd:late" in l)
# The owner itself opens its own memfds through /proc/self/fd/N and map_files.
ok = True
for path in (f"/proc/self/fd/{early}", f"/proc/self/fd/{late}", f"/proc/self/map_files/{out['late_map']}"):
    g = os.open(path, os.O_RDWR)
    ok = ok and mmap.mmap(g, 4096, mmap.MAP_SHARED, mmap.PROT_READ)[: len(secret)] == secret
    os.close(g)
out["self_read"] = ok
print(" ".join(f"{k}={v}" for k, v in out.items()), flush=True)
time.sleep(120)
"""

# Opens argv[1] and reads the first argv[2] bytes through a shared mapping (memfd_secret has
# no read()), writing them to stdout.
READ_MAPPED = r"""
import mmap, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
m = mmap.mmap(fd, 4096, mmap.MAP_SHARED, mmap.PROT_READ)
sys.stdout.buffer.write(m[: int(sys.argv[2])])
"""


class FdVictim(Victim):
    def paths(self) -> dict[str, str]:
        return {
            "fd-early-memfd": f"/proc/{self.pid}/fd/{self.info['early']}",
            "fd-late-memfd": f"/proc/{self.pid}/fd/{self.info['late']}",
            "map_files-late-memfd": f"/proc/{self.pid}/map_files/{self.info['late_map']}",
        }

    def secretmem_paths(self) -> dict[str, str]:
        return {
            "fd-memfd_secret": f"/proc/{self.pid}/fd/{self.info['secretmem']}",
            "map_files-memfd_secret": f"/proc/{self.pid}/map_files/{self.info['secret_map']}",
        }


@pytest.fixture
def fd_victim(launched: Launched) -> Callable[[Path | None], FdVictim]:
    def spawn(socket_path: Path | None) -> FdVictim:
        return launched(FdVictim, VICTIM, "1" if socket_path else "0", str(socket_path or ""))

    return spawn


Spawn = Callable[[Path | None], FdVictim]
VECTORS = ("fd-early-memfd", "fd-late-memfd", "map_files-late-memfd")


@pytest.mark.parametrize("vector", VECTORS)
def test_fd_opener_is_stopped_and_reads_nothing(
    vector: str, agent_run: AgentRun, fd_victim: Spawn
) -> None:
    agent_run.start(flags=FDS_FLAGS)
    victim = fd_victim(agent_run.socket_path)
    assert victim.info["backend"] == agent_run.backend
    assert victim.info["self_read"] == "True"  # the owner opens its own /proc/self/fd/N
    result = attack(READ_MAPPED, victim.paths()[vector], victim.info["len"])
    assert_blocked(result, agent_run.backend, victim)
    v = agent_run.wait_violation(lambda v: v.target_tgid == victim.pid and v.kind == "fd")
    assert v.action == agent_run.blocked and v.opener_uid == 0
    assert not [v for v in agent_run.violations if v.opener_tgid == victim.pid]


def test_fd_vectors_leak_without_registration(fd_victim: Spawn, bpf_object: Path) -> None:
    """Control: without registration every path reads the secret."""
    victim = fd_victim(None)
    assert victim.info["self_read"] == "True"
    for vector, path in victim.paths().items():
        result = attack(READ_MAPPED, path, victim.info["len"])
        assert result.returncode == 0, vector
        assert victim.secret.encode() in result.stdout, vector


def test_memfd_secret_cannot_be_reopened_through_proc(fd_victim: Spawn, bpf_object: Path) -> None:
    """Measured on 6.18: the kernel itself refuses to reopen a memfd_secret through
    /proc/PID/fd/N or map_files (ENXIO), even for root and without registration; its theft
    vectors are pidfd_getfd and fd inheritance, not these paths."""
    victim = fd_victim(None)
    for vector, path in victim.secretmem_paths().items():
        result = attack(READ_MAPPED, path, victim.info["len"])
        assert result.returncode == 1 and result.stdout == b"", vector


def test_fd_audit_mode_reports_without_killing(agent_run: AgentRun, fd_victim: Spawn) -> None:
    agent_run.start(flags=FDS_FLAGS | int(ProtectionFlag.AUDIT_ONLY))
    victim = fd_victim(agent_run.socket_path)
    result = attack(READ_MAPPED, victim.paths()["map_files-late-memfd"], victim.info["len"])
    assert result.returncode == 0 and victim.secret.encode() in result.stdout
    v = agent_run.wait_violation(lambda v: v.target_tgid == victim.pid and v.kind == "fd")
    assert v.action == "audited"


def test_fds_flag_not_set_leaves_fds_open(agent_run: AgentRun, fd_victim: Spawn) -> None:
    agent_run.start(flags=PROTECT_BASE)
    victim = fd_victim(agent_run.socket_path)
    result = attack(READ_MAPPED, victim.paths()["fd-late-memfd"], victim.info["len"])
    assert result.returncode == 0 and victim.secret.encode() in result.stdout
