"""The accessor allow-list: an executable the policy allows (by inode, optionally for one uid)
reads a protected process; everything else is still stopped (killed or denied)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import AgentRun, Victim, assert_blocked

pytestmark = pytest.mark.kernel

READ_FILE = r"""
import sys
with open(sys.argv[1], "rb") as f:
    sys.stdout.buffer.write(f.read())
"""


def run_with(python: Path, path: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(python), "-c", READ_FILE, path], capture_output=True, timeout=20)


@pytest.fixture
def python_copies(tmp_path: Path) -> tuple[Path, Path]:
    real = Path(os.path.realpath(sys.executable))
    allowed = tmp_path / "allowed" / real.name
    other = tmp_path / "other" / real.name
    for copy in (allowed, other):
        copy.parent.mkdir()
        shutil.copy2(real, copy)
    return allowed, other


def test_allowed_executable_reads_and_others_are_stopped(
    agent_run: AgentRun, spawn_victim: Callable[..., Victim], python_copies: tuple[Path, Path]
) -> None:
    allowed, other = python_copies
    agent = agent_run.start()
    agent.allow(allowed)
    victim = spawn_victim(agent_run.socket_path)
    environ = f"/proc/{victim.pid}/environ"
    ok = run_with(allowed, environ)
    assert ok.returncode == 0 and victim.secret.encode() in ok.stdout
    assert_blocked(run_with(other, environ), agent_run.backend)
    assert victim.alive()
    assert [v.opener_comm for v in agent_run.violations if v.target_tgid == victim.pid]
    # Removing it from the list closes it again.
    assert agent.disallow(allowed)
    assert_blocked(run_with(allowed, environ), agent_run.backend)


def test_allowed_for_another_uid_only(
    agent_run: AgentRun, spawn_victim: Callable[..., Victim], python_copies: tuple[Path, Path]
) -> None:
    allowed, _ = python_copies
    agent = agent_run.start()
    agent.allow(allowed, uid=12345)  # not root: root running it is still killed
    victim = spawn_victim(agent_run.socket_path)
    assert_blocked(run_with(allowed, f"/proc/{victim.pid}/mem"), agent_run.backend)
    agent.allow(allowed, uid=0)
    result = run_with(allowed, f"/proc/{victim.pid}/environ")
    assert result.returncode == 0 and victim.secret.encode() in result.stdout
