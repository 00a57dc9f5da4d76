"""Protected pods' credential volumes (the projected service-account token, a Secret volume):
the agent puts the tmpfs a wrapper names at registration into the ``protected_mounts`` map,
under its owner's tgid and flags, which keep applying after the owner died until the volume
is unmounted (its dev_t is then reused by the next tmpfs, so the entry goes)."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from pathlib import Path

from cloudtaser.bpf import layouts
from cloudtaser.bpf.programs import Map

TMPFS_MAGIC = 0x01021994
_LIBC = ctypes.CDLL(None, use_errno=True)


def mountinfo_dev(line: str) -> int:
    """The kernel dev_t (major << 20 | minor) of one /proc/PID/mountinfo line (field 3)."""
    try:
        major, minor = line.split()[2].split(":")
        return (int(major) << 20) | int(minor)
    except (IndexError, ValueError):
        return -1


def cgroup_of(pid: int) -> str:
    """/proc/PID/cgroup: a container's identity on this node ("" when unreadable)."""
    try:
        return Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return ""


def fs_type(path: str) -> int:
    """statfs(2)'s f_type of ``path`` (Python's statvfs has none)."""
    buf = ctypes.create_string_buffer(256)
    if _LIBC.statfs(path.encode(), buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


class CredentialVolumes:
    """``mounts``: the ``protected_mounts`` map; ``protected(tgid)``: that process holds an
    entry in ``protected`` (a live owner keeps its volumes)."""

    def __init__(self, mounts: Callable[[], Map], protected: Callable[[int], bool]) -> None:
        self._mounts = mounts
        self._protected = protected
        self._owners: dict[int, str] = {}  # volume dev -> its owner's cgroups

    def protect(self, pid: int, flags: int, paths: tuple[str, ...]) -> list[str]:
        """Protect the filesystems of ``paths`` (as ``pid`` sees them) for ``pid`` and its
        family, with ``flags`` (which still apply when it died: the volume is nobody's until
        free() sees it unmounted): tmpfs volumes only (the projected token, a Secret
        volume); an owner still alive keeps them. Returns one line per path it could not
        protect."""
        problems: list[str] = []
        if not paths:
            return problems
        mounts = self._mounts()
        cgroup = cgroup_of(pid)
        owner = layouts.FileOwner()
        for path in paths:
            where = f"/proc/{pid}/root{path}"
            try:
                st = os.stat(where)
                magic = fs_type(where)
            except OSError as e:
                problems.append(f"{path}: {e.strerror}")
                continue
            if magic != TMPFS_MAGIC:
                problems.append(f"{path}: not on a tmpfs volume (its filesystem is not protected)")
                continue
            key = ctypes.c_uint32((os.major(st.st_dev) << 20) | os.minor(st.st_dev))
            if mounts.lookup(key, owner) and owner.tgid != pid:
                if self._protected(owner.tgid):
                    continue  # its owner, still protected, keeps it (a second wrapper is no owner)
                if self._owners.get(key.value) == cgroup:
                    # Its owner died, but this caller runs in the same container: a restarted
                    # container has a cgroup of its own; this is a process that outlived (or
                    # killed) the app, and it is no owner.
                    problems.append(
                        f"{path}: its volume stays its dead owner's (pid {owner.tgid}, "
                        "same container)"
                    )
                    continue
            mounts.update(key, layouts.FileOwner(tgid=pid, flags=flags))
            self._owners[key.value] = cgroup
        return problems

    def free(self, mountinfo: str = "/proc/1/mountinfo") -> int:
        """Forget the credential volumes no longer mounted on the node whose owner died (a
        tmpfs's dev_t is reused by the next one): run at every relist. Returns how many."""
        try:
            mounted = {mountinfo_dev(line) for line in Path(mountinfo).read_text().splitlines()}
        except OSError:
            return 0
        mounts = self._mounts()
        owner = layouts.FileOwner()
        freed = 0
        for key in list(mounts.keys_u32()):
            if key in mounted or not mounts.lookup(ctypes.c_uint32(key), owner):
                continue
            if not self._protected(owner.tgid) and mounts.delete(ctypes.c_uint32(key)):
                self._owners.pop(key, None)
                freed += 1
        return freed
