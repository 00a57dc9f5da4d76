"""Fds on /proc/PID/environ or /proc/PID/mem that were opened before PID registered.

The tracepoint backend checks opens, not reads (a check on every read() would tax every
process on the node): an fd opened while the process was not yet protected would go on
reading it. So at registration, after the map entry is written (every later open is checked
by the kernel), the agent looks for such fds in every process and deals with their holders.

An fd is a hit when its link text ends in ``/N/environ``, ``/N/mem``, ``/N/task/T/environ`` or
``/N/task/T/mem`` (any procfs mount: the text is the path as the holder reached it), N (and T)
name the registering process or one of its threads, and the file's st_dev is that of a procfs
mount in the holder's mount namespace (so a regular file at a look-alike path is no hit). The
files are only stat()ed, never opened: opening them would read the victim (and trip the BPF
program on the agent itself).

Not found by a scan (documented limits): an fd in flight in a unix socket (SCM_RIGHTS, in no
fd table until received), an io_uring fixed file, a procfs mounted in another pid namespace
(numbers differ), and a thread of the holder that unshared its fd table (CLONE_FILES off).
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
LINK = re.compile(r"/(\d+)/(?:task/(\d+)/)?(environ|mem)$")


@dataclass(frozen=True)
class Holder:
    """Process ``pid`` (a tgid) holds ``fd`` on the ``vector`` file of the protected process."""

    pid: int
    fd: int
    vector: str  # "environ" | "mem"
    link: str


def threads(tgid: int, proc: Path = PROC) -> set[int]:
    try:
        return {int(t) for t in os.listdir(proc / str(tgid) / "task")} | {tgid}
    except OSError:
        return {tgid}


def procfs_devices(pid: int, proc: Path = PROC) -> set[int]:
    """st_dev of every procfs mount in the mount namespace of ``pid``."""
    devices: set[int] = set()
    try:
        text = (proc / str(pid) / "mountinfo").read_text()
    except OSError:
        return devices
    for line in text.splitlines():
        # ID PARENT MAJOR:MINOR ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER
        left, sep, right = line.partition(" - ")
        if not sep or right.split(" ", 1)[0] != "proc":
            continue
        major, _, minor = left.split(" ")[2].partition(":")
        devices.add(os.makedev(int(major), int(minor)))
    return devices


def match(link: str, tids: set[int]) -> str | None:
    """The vector when ``link`` names the environ or mem file of one of ``tids``."""
    m = LINK.search(link)
    if m is None or int(m.group(1)) not in tids:
        return None
    if m.group(2) is not None and int(m.group(2)) not in tids:
        return None
    return m.group(3)


def is_procfs_file(
    holder: int, fd: int, devices_of: dict[str, set[int]], proc: Path = PROC
) -> bool:
    """The file behind ``holder``'s ``fd`` lies on a procfs (stat follows the fd's link)."""
    try:
        st = os.stat(proc / str(holder) / "fd" / str(fd))
        namespace = os.readlink(proc / str(holder) / "ns" / "mnt")
    except OSError:
        return False
    if namespace not in devices_of:
        devices_of[namespace] = procfs_devices(holder, proc)
    return st.st_dev in devices_of[namespace]


def find_holders(tgid: int, proc: Path = PROC) -> list[Holder]:
    """Every other process's fd on the environ or mem file of ``tgid`` (or its threads)."""
    return find_holders_of({tgid}, proc)[tgid]


def find_holders_of(tgids: set[int], proc: Path = PROC) -> dict[int, list[Holder]]:
    """``find_holders`` for several processes in one pass over every fd table: a burst of
    registrations costs one scan, not one each."""
    owner = {tid: tgid for tgid in tgids for tid in threads(tgid, proc)}
    devices_of: dict[str, set[int]] = {}
    found: dict[int, list[Holder]] = {tgid: [] for tgid in tgids}
    for entry in os.scandir(proc):
        if not entry.name.isdigit():
            continue
        fd_dir = f"{proc}/{entry.name}/fd"
        try:
            names = os.listdir(fd_dir)
        except OSError:  # exited, or a kernel thread
            continue
        for name in names:
            try:
                link = os.readlink(f"{fd_dir}/{name}")
            except OSError:
                continue
            if not link.endswith(("/environ", "/mem")):
                continue
            m = LINK.search(link)
            target = owner.get(int(m.group(1))) if m else None
            if target is None or target == int(entry.name):  # not ours, or its own fd
                continue
            vector = match(link, {t for t, g in owner.items() if g == target})
            if vector is None:
                continue
            holder, fd = int(entry.name), int(name)
            if is_procfs_file(holder, fd, devices_of, proc):
                found[target].append(Holder(holder, fd, vector, link))
    return found


class Coalescer:
    """Registrations arriving together share one scan: each waits for a scan that started
    after it asked (so after its map entry was written) and takes its part of the result."""

    def __init__(
        self, scan: Callable[[set[int]], dict[int, list[Holder]]] = find_holders_of
    ) -> None:
        self._scan = scan
        self._cond = threading.Condition()
        self._pending: set[int] = set()
        self._results: dict[int, list[Holder]] = {}
        self._busy = False

    def holders(self, tgid: int) -> list[Holder]:
        with self._cond:
            self._pending.add(tgid)
            while tgid not in self._results:
                if self._busy:
                    self._cond.wait()
                    continue
                batch, self._pending, self._busy = self._pending, set(), True
                self._cond.release()
                try:
                    found = self._scan(batch)
                except BaseException:
                    self._cond.acquire()
                    self._busy = False
                    self._pending |= batch  # the next caller scans for them again
                    self._cond.notify_all()
                    raise
                self._cond.acquire()
                self._busy = False
                for pid in batch:
                    self._results[pid] = found.get(pid, [])
                self._cond.notify_all()
            return self._results.pop(tgid)


def still_holds(holder: Holder, proc: Path = PROC) -> bool:
    """After a pidfd was taken: the fd still names the same file (the pid was not reused)."""
    try:
        return os.readlink(f"{proc}/{holder.pid}/fd/{holder.fd}") == holder.link
    except OSError:
        return False


def comm_and_uid(pid: int, proc: Path = PROC) -> tuple[str, int]:
    """The comm and real uid of ``pid`` (as the BPF side reports an opener's)."""
    try:
        comm = (proc / str(pid) / "comm").read_text().strip()
        status = (proc / str(pid) / "status").read_text()
    except OSError:
        return "?", 0xFFFFFFFF
    uid = next((line.split()[1] for line in status.splitlines() if line.startswith("Uid:")), "")
    return comm, int(uid) if uid.isdigit() else 0xFFFFFFFF
