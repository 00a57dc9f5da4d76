"""Which pod a process belongs to, from its cgroup, as the kubelet names pod cgroups.

The kernel, not the caller, says where a process runs: /proc/PID/cgroup. The kubelet names a
pod's cgroup after the pod UID — systemd driver: ``kubepods-<qos>-pod<uid with _>.slice``,
cgroupfs driver: ``/kubepods/<qos>/pod<uid>/``. A process outside any pod cgroup has no pod.
"""

from __future__ import annotations

import re
from pathlib import Path

_POD = re.compile(
    r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})(?:\.slice)?(?:/|$)"
)


def pod_uid_from_cgroups(text: str) -> str | None:
    """The pod UID in /proc/PID/cgroup content, or None."""
    for line in text.splitlines():
        path = line.split(":", 2)[-1]
        match = _POD.search(path)
        if match:
            return match.group(1).replace("_", "-")
    return None


def pod_uid(pid: int, proc: Path = Path("/proc")) -> str | None:
    try:
        return pod_uid_from_cgroups((proc / str(pid) / "cgroup").read_text())
    except OSError:
        return None
