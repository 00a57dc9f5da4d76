"""The agent protects a process with its pod's compiled policy, found through its cgroup."""

from __future__ import annotations

import json
import select
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudtaser.bpf.protocol import AgentRefused, register
from cloudtaser.bpf.serving import MAX_PER_POD, REQUEST_DEADLINE
from cloudtaser.bpf.watching import PodPolicies
from cloudtaser.engine.plans import ProtectionFlag
from tests.harness.agents import READ_FILE, AgentRun, assert_blocked, attack, spawn_in
from tests.harness.kubelet import cgroup2_root
from tests.harness.pod_policies import UID, objects

pytestmark = pytest.mark.kernel


@pytest.fixture
def pod_cgroup() -> Iterator[Path]:
    path = (
        cgroup2_root()
        / "kubepods.slice"
        / "kubepods-besteffort.slice"
        / f"kubepods-besteffort-pod{UID.replace('-', '_')}.slice"
        / f"cri-test-{uuid.uuid4().hex[:8]}.scope"
    )
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        for p in (path, path.parent, path.parent.parent, path.parent.parent.parent):
            try:
                p.rmdir()
            except OSError:
                break


def test_pod_flags_reach_the_kernel(agent_run: AgentRun, pod_cgroup: Path) -> None:
    policies = PodPolicies(lambda: objects())
    agent_run.start()
    assert agent_run.agent is not None
    agent_run.agent.pod_policies = policies
    victim, secret = spawn_in(pod_cgroup, agent_run.socket_path)
    try:
        assert victim.stdout is not None
        line = victim.stdout.readline()
        assert f"backend={agent_run.backend}" in line, victim.stderr.read() if victim.stderr else ""
        entry = agent_run.agent.entry(victim.pid)
        assert entry is not None and entry.flags == ProtectionFlag.ENVIRON  # the pod's policy
        assert_blocked(attack(READ_FILE, f"/proc/{victim.pid}/environ"), agent_run.backend)
    finally:
        victim.kill()
        victim.communicate()


def test_process_in_no_protected_pod_is_refused(agent_run: AgentRun) -> None:
    agent_run.start()
    assert agent_run.agent is not None
    agent_run.agent.pod_policies = PodPolicies(lambda: objects())
    victim, _ = spawn_in(None, agent_run.socket_path)
    _, err = victim.communicate(timeout=30)
    assert victim.returncode != 0
    assert "node agent refused the registration: the caller runs in no pod cgroup" in err


def test_policy_change_reaches_a_running_process(agent_run: AgentRun, pod_cgroup: Path) -> None:
    """enforce -> audit after registration: the relist rewrites the flags in the kernel map,
    and the next reader is reported instead of stopped."""
    current = {"mode": "enforce"}
    policies = PodPolicies(lambda: objects(current["mode"]))
    agent_run.start()
    assert agent_run.agent is not None
    agent_run.agent.pod_policies = policies
    policies.listeners.append(agent_run.agent.reapply)
    victim, secret = spawn_in(pod_cgroup, agent_run.socket_path)
    try:
        assert (
            victim.stdout is not None and f"backend={agent_run.backend}" in victim.stdout.readline()
        )
        assert_blocked(attack(READ_FILE, f"/proc/{victim.pid}/environ"), agent_run.backend)
        current["mode"] = "audit"
        policies.refresh()
        entry = agent_run.agent.entry(victim.pid)
        assert (
            entry is not None and entry.flags == ProtectionFlag.ENVIRON | ProtectionFlag.AUDIT_ONLY
        )
        result = attack(READ_FILE, f"/proc/{victim.pid}/environ")
        assert result.returncode == 0  # audit: reported, not killed
        agent_run.wait_violation(lambda v: v.target_tgid == victim.pid and v.action == "audited")
    finally:
        victim.kill()
        victim.communicate()


def test_a_restarted_agent_moves_earlier_registrations_to_the_current_policy(
    agent_run: AgentRun, pod_cgroup: Path
) -> None:
    """A process registered under enforce keeps running while the agent restarts and its
    pod's policy turns to audit meanwhile: the new agent adopts it from the pinned map and
    rewrites its flags (before, it kept the old ones until it exited)."""
    from cloudtaser.bpf.agent import Agent
    from tests.harness.agents import PROTECT_BASE

    current = {"mode": "enforce"}
    policies = PodPolicies(lambda: objects(current["mode"]))
    agent_run.start()
    assert agent_run.agent is not None
    agent_run.agent.pod_policies = policies
    victim, _ = spawn_in(pod_cgroup, agent_run.socket_path)
    try:
        assert (
            victim.stdout is not None and f"backend={agent_run.backend}" in victim.stdout.readline()
        )
        before = agent_run.agent.entry(victim.pid)
        assert before is not None and before.flags == ProtectionFlag.ENVIRON
        agent_run.stop()  # the pinned maps, and the protection, stay
        current["mode"] = "audit"
        policies.refresh()  # main() lists before it starts the agent
        agent_run.agent = Agent(
            agent_run.socket_path,
            agent_run.bpf_object,
            PROTECT_BASE,
            agent_run.pin_dir,
            agent_run.violations.append,
            pod_policies=policies,
            io_uring="allow",
        )
        agent_run.agent.start()
        after = agent_run.agent.entry(victim.pid)
        assert after is not None and after.start_time == before.start_time
        assert after.flags == ProtectionFlag.ENVIRON | ProtectionFlag.AUDIT_ONLY
        current["mode"] = "enforce"
        policies.listeners.append(agent_run.agent.reapply)
        policies.refresh()  # and it keeps following the policy, like a fresh registration
        again = agent_run.agent.entry(victim.pid)
        assert again is not None and again.flags == ProtectionFlag.ENVIRON
    finally:
        victim.kill()
        victim.communicate()


HOLDER = """
import json, socket, sys, time
path = sys.argv[1]
held = []
for _ in range(int(sys.argv[2])):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    s.sendall(b"{")  # a request that trickles in, never complete
    held.append(s)
time.sleep(0.3)
extra = socket.socket(socket.AF_UNIX)
extra.connect(path)
print(json.dumps({"extra": json.loads(extra.makefile().readline())}), flush=True)
started = time.monotonic()
answers = [s.makefile().readline().strip() for s in held]  # until the agent gives up on each
print(json.dumps({"held": answers, "seconds": round(time.monotonic() - started, 1)}), flush=True)
"""


def test_one_pod_cannot_hold_the_agents_socket(agent_run: AgentRun, pod_cgroup: Path) -> None:
    """Any pod may reach the socket (its CSI volume is allowed at every Pod Security level): a
    pod holding connections open gets at most MAX_PER_POD at once, each for REQUEST_DEADLINE in
    all however slowly it sends, while other callers are answered meanwhile."""
    agent_run.start()
    assert agent_run.agent is not None
    agent_run.agent.pod_policies = PodPolicies(lambda: objects())
    enter = f'echo $$ > "{pod_cgroup}/cgroup.procs"; '
    holder = subprocess.Popen(
        [
            "sh",
            "-c",
            enter + 'exec "$0" -c "$1" "$2" "$3"',
            sys.executable,
            HOLDER,
            str(agent_run.socket_path),
            str(MAX_PER_POD),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        extra = json.loads(holder.stdout.readline())["extra"]
        assert extra == {
            "ok": False,
            "error": f"more than {MAX_PER_POD} connections at once from pod {UID}",
        }
        # Meanwhile a caller outside that pod is answered (here: refused, no pod) while the
        # pod's connections are still held: the holder has not yet had its answers. The caller
        # is this process, not a new interpreter, so a slow (emulated) machine cannot turn
        # start-up time into a false failure.
        with pytest.raises(AgentRefused, match="the caller runs in no pod cgroup"):
            register(str(agent_run.socket_path), timeout=REQUEST_DEADLINE)
        still_held, _, _ = select.select([holder.stdout], [], [], 0)
        assert not still_held, "the pod's connections were let go before the other caller's answer"
        held = json.loads(holder.stdout.readline())
        assert held["held"] == ['{"ok": false, "error": "internal error"}'] * MAX_PER_POD, held
        # Each is let go after REQUEST_DEADLINE (slack for a loaded, emulated machine: the
        # point is that the hold ends, where without the deadline it would last for ever)
        assert held["seconds"] <= 3 * REQUEST_DEADLINE, held
    finally:
        holder.kill()
        holder.communicate()
