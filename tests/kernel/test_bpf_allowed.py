"""The accessor allow-list: an executable the policy allows (by inode, optionally for one uid)
reads a protected process of that policy's pods; everything else is still stopped (killed or
denied). Violations name the offender's executable."""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cloudtaser.bpf import layouts, programs
from cloudtaser.bpf.allowlists import DEFAULT_LIST, RESERVED_LISTS
from cloudtaser.bpf.reporting import event_message
from cloudtaser.bpf.watching import PodPolicies
from tests.harness.agents import AgentRun, Victim, assert_blocked, spawn_in
from tests.harness.documents import binding_doc, pod_doc, policy_doc
from tests.harness.kubelet import cgroup2_root

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
    # the violation arrives through the ring buffer, polled every 200 ms
    assert agent_run.wait_violation(lambda v: v.target_tgid == victim.pid).opener_comm
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


POD_A = "1a2b3c4d-0000-4000-8000-00000000000a"
POD_B = "1a2b3c4d-0000-4000-8000-00000000000b"


def two_pods(allowed_a: list[str], allowed_b: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Pods a and b on this node, each selected by its own policy (environ only) allowing
    ``allowed_a`` / ``allowed_b`` (executable paths)."""
    docs: dict[str, list[dict[str, Any]]] = {
        "Pod": [],
        "SecretBinding": [],
        "EnforcementPolicy": [],
        "Namespace": [],
    }
    only_environ = {
        "mem": False,
        "fds": False,
        "ptrace": False,
        "pidfdGetfd": False,
        "coreDump": False,
    }
    for name, uid, allowed in (("a", POD_A, allowed_a), ("b", POD_B, allowed_b)):
        pod = pod_doc(f"app-{name}", "team", labels={"app": name}, injected=True)
        pod["metadata"]["uid"] = uid
        policy = policy_doc(
            f"for-{name}",
            podSelector={"matchLabels": {"app": name}},
            protections=only_environ,
            allowedAccessors=[{"executable": path} for path in allowed],
        )
        for kind, doc in (
            ("Pod", pod),
            ("SecretBinding", binding_doc(name, "team")),
            ("EnforcementPolicy", policy),
        ):
            doc.pop("apiVersion")
            doc.pop("kind")
            docs[kind].append(doc)
    return docs


@contextlib.contextmanager
def pod_cgroups(*uids: str) -> Iterator[list[Path]]:
    made: list[Path] = []
    try:
        for uid in uids:
            path = (
                cgroup2_root()
                / "kubepods.slice"
                / "kubepods-besteffort.slice"
                / f"kubepods-besteffort-pod{uid.replace('-', '_')}.slice"
                / f"cri-test-{uuid.uuid4().hex[:8]}.scope"
            )
            path.mkdir(parents=True)
            made.append(path)
        yield made
    finally:
        for path in made:
            for p in (path, path.parent, path.parent.parent, path.parent.parent.parent):
                try:
                    p.rmdir()
                except OSError:
                    break


def test_allowed_accessor_is_per_pod(agent_run: AgentRun, python_copies: tuple[Path, Path]) -> None:
    """An executable pod a's policy allows reads pod a's process and is stopped on pod b's, on
    the same node (and the other way round); a policy change moves a running process to its
    new list, and lists nobody uses leave the kernel map."""
    copy_a, copy_b = python_copies
    current = {"b": [str(copy_b)]}
    policies = PodPolicies(lambda: two_pods([str(copy_a)], current["b"]))
    agent = agent_run.start()
    agent.pod_policies = policies
    policies.listeners.append(agent.reapply)
    with pod_cgroups(POD_A, POD_B) as (cgroup_a, cgroup_b):
        (victim_a, secret_a), (victim_b, secret_b) = (
            spawn_in(cgroup_a, agent_run.socket_path),
            spawn_in(cgroup_b, agent_run.socket_path),
        )
        try:
            for victim in (victim_a, victim_b):
                assert victim.stdout is not None
                line = victim.stdout.readline()
                assert f"backend={agent_run.backend}" in line, (
                    victim.stderr.read() if victim.stderr else ""
                )
            entry_a, entry_b = agent.entry(victim_a.pid), agent.entry(victim_b.pid)
            assert entry_a is not None and entry_b is not None
            assert {entry_a.accessors, entry_b.accessors}.isdisjoint({0, DEFAULT_LIST})
            assert entry_a.accessors != entry_b.accessors
            env_a, env_b = f"/proc/{victim_a.pid}/environ", f"/proc/{victim_b.pid}/environ"
            ok = run_with(copy_a, env_a)
            assert ok.returncode == 0 and secret_a.encode() in ok.stdout
            ok = run_with(copy_b, env_b)
            assert ok.returncode == 0 and secret_b.encode() in ok.stdout
            assert_blocked(run_with(copy_a, env_b), agent_run.backend)
            assert_blocked(run_with(copy_b, env_a), agent_run.backend)
            agent_run.wait_violation(lambda v: v.target_tgid == victim_b.pid)
            assert victim_a.poll() is None and victim_b.poll() is None

            # Pod b's policy now allows nobody: its process moves to "no list", its old list
            # is removed from the kernel map, pod a's stays.
            current["b"] = []
            policies.refresh()
            entry_b = agent.entry(victim_b.pid)
            assert entry_b is not None and entry_b.accessors == 0
            assert agent.loaded is not None
            lists = {k.list for k in agent.loaded.map("accessors").keys(layouts.AccessorKey)}
            assert entry_a.accessors in lists and len(lists - {DEFAULT_LIST} - RESERVED_LISTS) == 1
            assert_blocked(run_with(copy_b, env_b), agent_run.backend)
            ok = run_with(copy_a, env_a)
            assert ok.returncode == 0 and secret_a.encode() in ok.stdout
        finally:
            for victim in (victim_a, victim_b):
                victim.kill()
                victim.communicate()


def test_violation_names_the_offenders_executable(
    agent_run: AgentRun, spawn_victim: Callable[..., Victim], tmp_path: Path
) -> None:
    """The kernel side records the basename of the offender's executable (not its 15-char
    comm) before the tracepoint backend kills it; the Event message and log line carry it."""
    thief = tmp_path / "cloudtaser-test-thief-python"
    shutil.copy2(os.path.realpath(sys.executable), thief)
    agent_run.start()
    victim = spawn_victim(agent_run.socket_path)
    assert_blocked(run_with(thief, f"/proc/{victim.pid}/environ"), agent_run.backend)
    v = agent_run.wait_violation(lambda v: v.target_tgid == victim.pid and v.kind == "environ")
    assert v.opener_exe == thief.name
    assert v.opener_comm == thief.name[:15]
    assert f"exe '{thief.name}'" in event_message(v)


def test_node_wide_map_of_an_earlier_version_is_unpinned(agent_run: AgentRun) -> None:
    """An upgrade from the node-wide ``allowed`` map: the new agent pins ``accessors`` and
    drops the old pin (nothing uses it once the new programs' links replaced the old)."""
    maps = agent_run.pin_dir / "maps"
    maps.mkdir(parents=True)
    libbpf = ctypes.CDLL("libbpf.so.1", use_errno=True)  # own handle: own argtypes
    libbpf.bpf_map_create.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint32,
        ctypes.c_uint32,
        ctypes.c_uint32,
        ctypes.c_void_p,
    ]
    libbpf.bpf_obj_pin.argtypes = [ctypes.c_int, ctypes.c_char_p]
    fd = libbpf.bpf_map_create(1, b"allowed", 16, 4, 1024, None)  # BPF_MAP_TYPE_HASH, as before
    assert fd >= 0, os.strerror(ctypes.get_errno())
    try:
        assert libbpf.bpf_obj_pin(fd, str(maps / "allowed").encode()) == 0
    finally:
        os.close(fd)
    agent_run.start()
    assert sorted(p.name for p in maps.iterdir()) == sorted(list(programs.PINNED_MAPS))
