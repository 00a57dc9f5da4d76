"""What is left of the kubelet stand-in: the cgroup v2 root of this machine.

The stand-in that ran admitted pods as local processes is gone: the local stack has a real
node (kubelet, containerd, runc; testbed/cloudtaser/testbed/noding.py) and the e2e tests run their pods there
(tests/e2e/node). The kernel tests (tests/kernel) still make cgroups of their own to stand in
for a pod's, because they test the BPF programs and the agent without any cluster: for that
they need only to know where the cgroup v2 hierarchy is mounted.
"""

from __future__ import annotations

from pathlib import Path


class HarnessError(Exception):
    """This machine lacks what a test needs."""


def cgroup2_root() -> Path:
    """Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup, or .../unified on hybrid)."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        if right.split()[0] == "cgroup2":
            return Path(left.split()[4])
    raise HarnessError("no cgroup v2 hierarchy is mounted on this machine")
