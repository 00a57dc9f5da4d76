"""Violation Events are rate-limited (bpf/reporting.py) through the real API server.

A real Pod object (never scheduled: no kubelet here), a process in a cgroup named after its
UID the way the kubelet names pod cgroups, the agent protecting that process, and a root
attacker loop of 200 reads of its /proc/PID/environ, each killed by the kernel. The API
server must end up with a handful of Events (one per pod+vector+offender series) whose count
sums to the 200 attempts; the metric counts all 200 too.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloudtaser import provisioning, stacking
from cloudtaser.bpf.agent import Violation
from cloudtaser.bpf.reporting import REASON, EventReporter
from cloudtaser.bpf.watching import PodPolicies
from cloudtaser.engine.plans import BpfEntry, EffectivePolicy
from tests.harness import kubelet
from tests.kernel.conftest import PROTECT_ALL, AgentRun, bpf_object

pytestmark = [pytest.mark.e2e, pytest.mark.kernel]
NS = provisioning.DEMO_NAMESPACE  # has a service account (no controller-manager makes "default")
ATTEMPTS = 200
__all__ = ["bpf_object"]  # the kernel tests' fixture: the built BPF object


class OnePod(PodPolicies):
    """The compiled policy of one pod (the subject here is the Events, not the compile)."""

    def __init__(self, entry: BpfEntry) -> None:
        super().__init__(lambda: {})
        self._one = entry

    def entry(self, uid: str) -> BpfEntry | None:
        return self._one if uid == self._one.uid else None


@pytest.fixture
def pod(kubectl: Any) -> Iterator[dict[str, Any]]:
    name = f"ratelimit-{secrets.token_hex(4)}"
    body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS},
            "spec": {"serviceAccountName": provisioning.DEMO_ACCOUNT,
                     "containers": [{"name": "app", "image": "example.invalid/app:1"}]}}
    created = json.loads(kubectl("create", "-f", "-", "-o", "json", stdin=json.dumps(body)))
    try:
        yield created
    finally:
        kubectl("delete", "pod", "-n", NS, name, "--wait=false")


@pytest.fixture
def victim_in_pod(pod: dict[str, Any]) -> Iterator[subprocess.Popen[str]]:
    """A process in the pod's cgroup (as the kubelet's systemd driver names it)."""
    cgroup = kubelet.pod_cgroup(pod)
    cgroup.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", "import time; print('ready', flush=True); "
                             "time.sleep(300)"], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "CT_SECRET": "s3cr3t-" + secrets.token_hex(16)})
    try:
        (cgroup / "cgroup.procs").write_text(str(proc.pid))
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        yield proc
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout:
            proc.stdout.close()
        time.sleep(0.1)
        for d in (cgroup, cgroup.parent, cgroup.parent.parent):
            try:
                d.rmdir()
            except OSError:
                break  # not empty: another pod's (or the harness's) cgroups live there


def test_attack_loop_gives_a_handful_of_events_counting_every_attempt(
    pod: dict[str, Any], victim_in_pod: subprocess.Popen[str], bpf_object: Path,
    stack: stacking.Paths, kubectl: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(stack.kubeconfig))
    meta = pod["metadata"]
    entry = BpfEntry(namespace=NS, pod=meta["name"], uid=meta["uid"], node="test-node",
                     policy=EffectivePolicy(policies=[], mode="enforce", flags=PROTECT_ALL,
                                            protections=["environ"], allowed_accessors=[],
                                            kill_on_violation=True,
                                            require_confidential_node=False))
    import kubernetes

    kubernetes.config.load_kube_config(str(stack.kubeconfig))  # type: ignore[no-untyped-call]
    reporter = EventReporter(OnePod(entry), "test-node", interval=1.0)
    run = AgentRun(tmp_path / "agent.sock", Path(f"/sys/fs/bpf/cloudtaser-ev-{uuid.uuid4().hex[:8]}"),
                   bpf_object)
    from cloudtaser.bpf.loading import ensure_bpffs, unpin

    ensure_bpffs()
    agent = run.start()

    def on_violation(v: Violation) -> None:
        run.violations.append(v)
        reporter.report(v)

    agent.on_violation = on_violation
    try:
        agent.protect(victim_in_pod.pid)
        codes = [subprocess.run(["cat", f"/proc/{victim_in_pod.pid}/environ"],
                                capture_output=True, timeout=20, check=False).returncode
                 for _ in range(ATTEMPTS)]
        assert codes == [-9] * ATTEMPTS
        deadline = time.monotonic() + 10
        while len(run.violations) < ATTEMPTS and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(run.violations) == ATTEMPTS
        assert (f'cloudtaser_violations_total{{action="killed",vector="environ"}} {ATTEMPTS}.0'
                in agent.metrics.text())
    finally:
        run.stop()
        reporter.close()  # posts the last count
        unpin(run.pin_dir)
    events = json.loads(kubectl("get", "events", "-n", NS, "--field-selector",
                                f"involvedObject.uid={meta['uid']},reason={REASON}", "-o", "json"))
    items = events["items"]
    counts = [e["count"] for e in items]
    print(f"{ATTEMPTS} attempts -> {len(items)} Event(s), counts {counts}")
    assert 1 <= len(items) <= 5
    assert sum(counts) == ATTEMPTS
    assert all(e["message"].startswith("environ access to pid ") for e in items)
    assert all("comm 'cat', exe 'cat'" in e["message"] for e in items)  # the offender's executable
    assert all("s3cr3t-" not in e["message"] for e in items)
