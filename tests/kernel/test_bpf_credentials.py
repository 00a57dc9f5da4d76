"""The pod's credential volumes (projected token, client key) belong to the registered wrapper's
family: anyone else reading them could log in to OpenBao as the pod."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.agents import REPO, AgentRun, assert_blocked
from tests.harness.attacking import run_attacker

pytestmark = pytest.mark.kernel

# Registers naming argv[2] as its credential, prints its pid, then (once told) reads it.
HOLDER = r"""
import os, sys
from cloudtaser.bpf.protocol import register
register(sys.argv[1], credentials=(sys.argv[2],))
print(os.getpid(), flush=True)
sys.stdin.readline()
if len(sys.argv) > 3:  # a child of the holder reads it: its family
    if os.fork() == 0:
        sys.stdout.write(open(sys.argv[2]).read()); sys.stdout.flush(); os._exit(0)
    os.wait()
else:
    sys.stdout.write(open(sys.argv[2]).read())
"""


@pytest.fixture
def volume(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs holding a token, as the kubelet mounts a projected volume."""
    mnt = tmp_path / "token-volume"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(mnt)], check=True)
    (mnt / "token").write_text("eyJhbGciOi-the-pods-token")
    yield mnt / "token"
    subprocess.run(["umount", "-l", str(mnt)], check=True)


def holder(socket: Path, token: Path, *extra: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(socket), str(token), *extra],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip().isdigit()
    return proc


def test_only_the_owners_family_reads_the_volume(agent_run: AgentRun, volume: Path) -> None:
    agent_run.start()
    owner = holder(agent_run.socket_path, volume, "child")
    try:
        r = run_attacker("read", str(volume))  # node root, or a process of the pod
        assert_blocked(r, agent_run.backend)
        agent_run.wait_violation(lambda v: v.kind == "credentials" and v.target_tgid == owner.pid)
        out, _ = owner.communicate("go\n", timeout=30)  # its child reads it
        assert out == "eyJhbGciOi-the-pods-token"
    finally:
        owner.kill()
        owner.communicate()


def test_a_second_registration_is_no_owner(agent_run: AgentRun, volume: Path) -> None:
    """A second wrapper run in the pod registers too, but reads nothing; nor after the first
    one died, in the same container (its cgroup): a restarted container has a new one."""
    agent_run.start()
    first = holder(agent_run.socket_path, volume)
    second = holder(agent_run.socket_path, volume)
    second.communicate("go\n", timeout=30)
    assert second.returncode == (-9 if agent_run.backend != "lsm" else 1)
    first.communicate("go\n", timeout=30)
    assert first.returncode == 0  # the owner reads its own
    third = holder(agent_run.socket_path, volume)  # the first is gone; same cgroup
    out, _ = third.communicate("go\n", timeout=30)
    assert out == "" and third.returncode != 0


def test_a_dead_owners_volume_is_freed_once_unmounted(agent_run: AgentRun, tmp_path: Path) -> None:
    """A tmpfs's dev_t is reused by the next one: the entry of a volume that is no longer
    mounted, whose owner died, is removed (the agent does it at every relist)."""
    agent = agent_run.start()
    mnt = tmp_path / "gone"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(mnt)], check=True)
    try:
        (mnt / "token").write_text("t")
        owner = holder(agent_run.socket_path, mnt / "token")
        owner.communicate("go\n", timeout=30)
        assert agent.free_credentials() == 0  # still mounted: still guarded
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)
    assert agent.free_credentials() == 1
    assert agent.free_credentials() == 0


def test_the_kubelets_teardown_lists_and_unmounts_a_dead_owners_volume(
    agent_run: AgentRun, tmp_path: Path
) -> None:
    """After the pod's processes died, its volume is still guarded (its files), but the
    directory is not: the kubelet's umount(8) opens the mount point and was killed for it on the
    real node (the pod then never finished terminating)."""
    agent_run.start()
    mnt = tmp_path / "ended"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(mnt)], check=True)
    try:
        (mnt / "token").write_text("eyJhbGciOi-the-pods-token")
        owner = holder(agent_run.socket_path, mnt / "token")
        owner.communicate("go\n", timeout=30)  # the pod's last process ends
        assert_blocked(run_attacker("read", str(mnt / "token")), agent_run.backend)
        listing = subprocess.run(
            ["ls", "-a", str(mnt)], capture_output=True, text=True, timeout=30, check=False
        )
        assert listing.returncode == 0 and "token" in listing.stdout.split(), listing
        unmounted = subprocess.run(
            ["umount", str(mnt)], capture_output=True, text=True, timeout=30, check=False
        )
        assert unmounted.returncode == 0, (unmounted.returncode, unmounted.stderr)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)
