"""io_uring restricted node-wide while the node protects something (--io-uring restrict, the
tracepoint backend's default): no new ring anywhere, then the sysctl as it was."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cloudtaser.bpf.iouring import IO_URING_SYSCTL
from tests.harness.agents import AgentRun, Victim
from tests.harness.attacking import run_attacker

pytestmark = pytest.mark.kernel


@pytest.fixture
def sysctl_kept() -> Iterator[str]:
    """The machine's io_uring_disabled, put back whatever the test did."""
    if not IO_URING_SYSCTL.exists():
        pytest.skip(f"no {IO_URING_SYSCTL} (kernel without io_uring, or older than 6.6)")
    before = IO_URING_SYSCTL.read_text().strip()
    if before == "2":
        pytest.skip("io_uring is already disabled on this machine")
    yield before
    IO_URING_SYSCTL.write_text(before + "\n")


def test_restricted_while_protecting_then_restored(
    agent_run: AgentRun, sysctl_kept: str, spawn_victim: Callable[..., Victim]
) -> None:
    assert run_attacker("uring-read", "/etc/hostname").returncode == 0  # allowed before
    agent_run.start(io_uring="restrict")
    assert IO_URING_SYSCTL.read_text().strip() == sysctl_kept  # nothing protected yet
    victim = spawn_victim(agent_run.socket_path)
    assert IO_URING_SYSCTL.read_text().strip() == "2"
    r = run_attacker("uring-read", "/etc/hostname")
    assert r.refused == "io_uring_setup: Operation not permitted", r
    agent_run.stop()  # the victim still lives: the restriction stays with its protection
    assert IO_URING_SYSCTL.read_text().strip() == "2"
    victim.proc.kill()
    victim.proc.wait()
    agent_run.start(io_uring="restrict")
    agent_run.stop()  # nothing protected any more: restored
    assert IO_URING_SYSCTL.read_text().strip() == sysctl_kept


def test_allow_leaves_the_sysctl(
    agent_run: AgentRun, sysctl_kept: str, spawn_victim: Callable[..., Victim], tmp_path: Path
) -> None:
    agent_run.start(io_uring="allow")
    spawn_victim(agent_run.socket_path)
    assert IO_URING_SYSCTL.read_text().strip() == sysctl_kept
