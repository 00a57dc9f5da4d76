"""The fd scan's path matching (bpf/cloudtaser/bpf/scanning.py); the scan itself runs in tests/kernel."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
        "91 1 8:1 / /mnt/proc-lookalike rw - ext4 /dev/sda1 rw\n"
    )
    assert scanning.procfs_devices(42, proc=tmp_path) == {os.makedev(0, 21), os.makedev(0, 77)}


def test_own_process_has_no_holders_and_real_procfs_is_recognised() -> None:
    assert scanning.find_holders(os.getpid()) == []
    assert os.stat("/proc/self/environ").st_dev in scanning.procfs_devices(os.getpid())


def test_a_burst_of_registrations_shares_scans_and_each_gets_its_own_holders() -> None:
    import threading
    import time

    scans: list[set[int]] = []

    def slow_scan(tgids: set[int]) -> dict[int, list[scanning.Holder]]:
        scans.append(set(tgids))
        time.sleep(0.2)
        return {t: [scanning.Holder(t + 1000, 3, "environ", f"/proc/{t}/environ")] for t in tgids}

    coalescer = scanning.Coalescer(slow_scan)
    got: dict[int, list[scanning.Holder]] = {}
    workers = [
        threading.Thread(target=lambda t=t: got.__setitem__(t, coalescer.holders(t)))
        for t in range(1, 41)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join(10)
    assert {t: [h.pid for h in hs] for t, hs in got.items()} == {
        t: [t + 1000] for t in range(1, 41)
    }
    assert len(scans) <= 3, scans  # 40 registrations, not 40 scans


def test_a_failed_scan_is_retried_by_the_next_caller() -> None:
    calls: list[int] = []

    def flaky(tgids: set[int]) -> dict[int, list[scanning.Holder]]:
        calls.append(1)
        if len(calls) == 1:
            raise OSError("proc went away")
        return {t: [] for t in tgids}

    coalescer = scanning.Coalescer(flaky)
    with pytest.raises(OSError):
        coalescer.holders(7)
    assert coalescer.holders(7) == [] and len(calls) == 2
