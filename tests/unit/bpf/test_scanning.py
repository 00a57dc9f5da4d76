"""The fd scan's path matching (bpf/scanning.py); the scan itself runs in tests/kernel."""

from __future__ import annotations

import os
from pathlib import Path

from cloudtaser.bpf import scanning


def test_links_naming_environ_or_mem_of_the_process_or_its_threads() -> None:
    tids = {100, 101}
    assert scanning.match("/proc/100/environ", tids) == "environ"
    assert scanning.match("/proc/101/mem", tids) == "mem"
    assert scanning.match("/proc/100/task/101/environ", tids) == "environ"
    assert scanning.match("/mnt/other-procfs/100/mem", tids) == "mem"
    assert scanning.match("/proc/100/task/999/environ", tids) is None  # not its thread
    assert scanning.match("/proc/1000/environ", tids) is None
    assert scanning.match("/proc/100/status", tids) is None
    assert scanning.match("/proc/100/environ (deleted)", tids) is None


def test_procfs_devices_of_a_mount_namespace(tmp_path: Path) -> None:
    pid_dir = tmp_path / "42"
    pid_dir.mkdir()
    (pid_dir / "mountinfo").write_text(
        "22 1 0:21 / /proc rw,nosuid shared:5 - proc proc rw\n"
        "23 1 0:22 / /sys rw - sysfs sysfs rw\n"
        "90 1 0:77 / /mnt/p2 rw - proc proc rw\n"
        "91 1 8:1 / /mnt/proc-lookalike rw - ext4 /dev/sda1 rw\n")
    assert scanning.procfs_devices(42, proc=tmp_path) == {os.makedev(0, 21), os.makedev(0, 77)}


def test_own_process_has_no_holders_and_real_procfs_is_recognised() -> None:
    assert scanning.find_holders(os.getpid()) == []
    assert os.stat("/proc/self/environ").st_dev in scanning.procfs_devices(os.getpid())
