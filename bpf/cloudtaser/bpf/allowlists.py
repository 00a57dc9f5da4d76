"""The agent's accessor allow-lists: which executables (by inode, optionally for one uid) may
access the processes protected with a given list id, as entries of the ``accessors`` map.

Each distinct list among the pods of a node gets its own id (an executable one pod's policy
allows reaches no other pod's processes); the ids a protected entry names are in use, the
others are collected. Two reserved lists are node-wide: the executables that may load tracing
BPF programs and those that may read protected credential volumes (the kubelet)."""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from cloudtaser.bpf import layouts
from cloudtaser.bpf.programs import Map

log = logging.getLogger("cloudtaser.bpf.agent")  # the agent's records, whichever part logs them

NO_ACCESSORS = 0  # allow-list id of a policy that allows nobody: no map lookup at all
DEFAULT_LIST = 1  # allow-list of processes registered without pod policies (Agent.allow)
BPF_LOADERS_LIST = 0xFFFFFFFE  # executables that may load tracing BPF programs (protect.bpf.c)
CREDENTIAL_READERS_LIST = 0xFFFFFFFD  # executables that may read credential volumes: the kubelet
RESERVED_LISTS = {BPF_LOADERS_LIST, CREDENTIAL_READERS_LIST}  # never a pod's list, never collected

Ident = tuple[int, int, int]  # (inode, kernel dev_t, uid or ALLOWED_ANY_UID)


def parse_accessor(spec: str) -> tuple[str, int | None]:
    """``/usr/bin/x`` -> (path, None); ``/usr/bin/x:1000`` -> (path, 1000)."""
    path, sep, uid = spec.rpartition(":")
    if sep and uid.isdigit():
        return path, int(uid)
    return spec, None


def accessor_ident(path: str | Path, uid: int | None) -> Ident:
    """(inode, kernel dev_t, uid or ALLOWED_ANY_UID) of an accessor."""
    st = os.stat(path)
    dev = (os.major(st.st_dev) << 20) | os.minor(st.st_dev)
    return st.st_ino, dev, layouts.ALLOWED_ANY_UID if uid is None else uid


def accessor_key(ident: Ident, list_id: int) -> layouts.AccessorKey:
    ino, dev, uid = ident
    return layouts.AccessorKey(ino=ino, dev=dev, uid=uid, list=list_id)


class AllowLists:
    """The lists this agent wrote: the specs of each distinct list -> its id, and the keys
    written under each id. ``lock`` spans list writes, the protected entries written with a
    list id (the agent holds it around both) and collect()."""

    def __init__(
        self, accessors: Callable[[], Map], ids_in_use: Callable[[], Iterable[int]]
    ) -> None:
        """``accessors``: the ``accessors`` map; ``ids_in_use``: the list ids the
        ``protected`` map's entries name."""
        self._map = accessors
        self._ids_in_use = ids_in_use
        self._lists: dict[frozenset[str], int] = {}
        self._keys: dict[int, set[Ident]] = {}
        self.lock = threading.RLock()
        self._next = DEFAULT_LIST + 1

    def allow(
        self, path: str | Path, uid: int | None = None, list_id: int = DEFAULT_LIST
    ) -> layouts.AccessorKey:
        """Let the executable at ``path`` (as run by ``uid``, or by anyone) access the processes
        protected with allow-list ``list_id``. By inode, so a copy or a replaced file is not
        allowed, and a rename of the same file still is."""
        ident = accessor_ident(path, uid)
        with self.lock:
            self._map().update(accessor_key(ident, list_id), ctypes.c_uint32(1))
            self._keys.setdefault(list_id, set()).add(ident)
        log.info(
            "allowed accessor %s (uid %s) on list %d", path, "any" if uid is None else uid, list_id
        )
        return accessor_key(ident, list_id)

    def disallow(
        self, path: str | Path, uid: int | None = None, list_id: int = DEFAULT_LIST
    ) -> bool:
        ident = accessor_ident(path, uid)
        with self.lock:
            self._keys.get(list_id, set()).discard(ident)
            return self._map().delete(accessor_key(ident, list_id))

    def allows(self, pid: int, uid: int, list_id: int) -> bool:
        """``pid`` (running as ``uid``) runs an executable allow-list ``list_id`` allows, as
        the BPF side decides."""
        if list_id == NO_ACCESSORS:
            return False
        try:
            st = os.stat(f"/proc/{pid}/exe")
        except OSError:
            return False
        dev = (os.major(st.st_dev) << 20) | os.minor(st.st_dev)
        accessors = self._map()
        value = ctypes.c_uint32()
        return any(
            accessors.lookup(accessor_key((st.st_ino, dev, u), list_id), value)
            for u in (uid, layouts.ALLOWED_ANY_UID)
        )

    def list_for(self, specs: Iterable[str]) -> int:
        """The id of the allow-list ``specs`` (a policy's "exe" or "exe:uid" entries), its
        executables (re)written into the ``accessors`` map under that id; NO_ACCESSORS when it
        is empty. A path that does not exist on this node is skipped with a warning; paths are
        resolved to inodes again on every call (registration, relist)."""
        wanted_specs = frozenset(specs)
        if not wanted_specs:
            return NO_ACCESSORS
        wanted: set[Ident] = set()
        for spec in sorted(wanted_specs):
            path, uid = parse_accessor(spec)
            try:
                wanted.add(accessor_ident(path, uid))
            except OSError as e:
                log.warning("allowed accessor %s not applied: %s", spec, e.strerror)
        accessors = self._map()
        with self.lock:
            list_id = self._lists.get(wanted_specs)
            if list_id is None:
                list_id = self._next
                self._next += 1
                self._lists[wanted_specs] = list_id
                log.info("allow-list %d: %s", list_id, ", ".join(sorted(wanted_specs)))
            written = self._keys.setdefault(list_id, set())
            for ident in wanted - written:
                accessors.update(accessor_key(ident, list_id), ctypes.c_uint32(1))
            for ident in written - wanted:
                accessors.delete(accessor_key(ident, list_id))
            self._keys[list_id] = wanted
        return list_id

    def adopt(self) -> None:
        """After (re)start: new ids above every id the pinned maps hold (an earlier agent's
        lists stay with the processes that use them), and the unused ones removed."""
        with self.lock:
            used = set(self._ids_in_use())
            used.update(k.list for k in self._map().keys(layouts.AccessorKey))
            self._next = max((used | {DEFAULT_LIST}) - RESERVED_LISTS) + 1
            self.collect()

    def collect(self) -> int:
        """Remove the allow-lists no protected process uses any more (forked children keep
        theirs); the default and reserved lists stay. Returns how many map entries were
        removed."""
        accessors = self._map()
        removed = 0
        with self.lock:
            keep = set(self._ids_in_use()) | {DEFAULT_LIST} | RESERVED_LISTS
            for key in list(accessors.keys(layouts.AccessorKey)):
                if key.list not in keep and accessors.delete(key):
                    removed += 1
            for specs, list_id in list(self._lists.items()):
                if list_id not in keep:
                    del self._lists[specs]
                    self._keys.pop(list_id, None)
        return removed


def running_kubelets(proc: Path = Path("/proc")) -> list[Path]:
    """The ``exe`` links of every running kubelet (by comm) in ``proc``."""
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() == "kubelet":
                found.append(entry / "exe")
        except OSError:
            continue
    return found
