"""Credential volumes in the ``protected_mounts`` map (bpf/cloudtaser/bpf/credentials.py), on a
stand-in map: the parts that need no BPF."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import cast

import pytest

from cloudtaser.bpf import credentials, layouts
from cloudtaser.bpf.programs import Map


class FakeMounts:
    def __init__(self) -> None:
        self.entries: dict[int, tuple[int, int]] = {}

    def lookup(self, key: ctypes.c_uint32, value: layouts.FileOwner) -> bool:
        if key.value not in self.entries:
            return False
        value.tgid, value.flags = self.entries[key.value]
        return True

    def update(self, key: ctypes.c_uint32, value: layouts.FileOwner) -> None:
        self.entries[key.value] = (value.tgid, value.flags)

    def delete(self, key: ctypes.c_uint32) -> bool:
        return self.entries.pop(key.value, None) is not None

    def keys_u32(self) -> list[int]:
        return list(self.entries)


def test_mountinfo_dev_is_the_kernel_encoding() -> None:
    line = "36 35 0:27 / /run/secrets rw,nosuid shared:5 - tmpfs tmpfs rw"
    assert credentials.mountinfo_dev(line) == 27
    assert credentials.mountinfo_dev("36 35 8:1 / / rw - ext4 /dev/sda1 rw") == (8 << 20) | 1
    assert credentials.mountinfo_dev("garbage") == -1


def tmpfs_dir() -> Path:
    shm = Path("/dev/shm")
    if not shm.is_dir() or credentials.fs_type(str(shm)) != credentials.TMPFS_MAGIC:
        pytest.skip("no tmpfs at /dev/shm")
    return shm


def test_only_tmpfs_volumes_and_a_live_owner_keeps_them(tmp_path: Path) -> None:
    shm = tmpfs_dir()
    fake = FakeMounts()
    alive = {os.getpid()}
    volumes = credentials.CredentialVolumes(lambda: cast(Map, fake), alive.__contains__)
    problems = volumes.protect(os.getpid(), 3, (str(shm), "/nonexistent-credential"))
    assert [p.split(":")[0] for p in problems] == ["/nonexistent-credential"]
    [(dev, (tgid, flags))] = fake.entries.items()
    assert (tgid, flags) == (os.getpid(), 3)
    other = os.getppid()  # alive, and sees the same /dev/shm
    assert volumes.protect(other, 1, (str(shm),)) == []  # the live owner keeps it
    assert fake.entries[dev] == (os.getpid(), 3)
    if credentials.fs_type(str(tmp_path)) != credentials.TMPFS_MAGIC:
        assert "not on a tmpfs volume" in volumes.protect(os.getpid(), 3, (str(tmp_path),))[0]


def test_free_forgets_unmounted_volumes_of_dead_owners(tmp_path: Path) -> None:
    fake = FakeMounts()
    alive: set[int] = {1}
    volumes = credentials.CredentialVolumes(lambda: cast(Map, fake), alive.__contains__)
    fake.entries = {27: (1, 3), 28: (2, 3), 29: (3, 3)}  # owners: live, dead, dead
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text("36 35 0:29 / /x rw - tmpfs tmpfs rw\n")
    assert volumes.free(str(mountinfo)) == 1
    assert sorted(fake.entries) == [27, 29]  # live owner; still mounted
