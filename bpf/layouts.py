"""ctypes mirrors of the structs shared with protect.bpf.c (checked against its BTF by tests)."""

from __future__ import annotations

import ctypes
import enum


class ProtectedEntry(ctypes.Structure):
    """Value of the ``protected`` map (key: tgid, u32)."""

    _fields_ = [
        ("start_time", ctypes.c_uint64),  # clock ticks since boot, /proc/PID/stat field 22
        ("flags", ctypes.c_uint32),  # ProtectionFlag bits
        ("accessors", ctypes.c_uint32),  # id of its allow-list in the ``accessors`` map; 0: none
    ]


class Event(ctypes.Structure):
    """A record of the ``events`` ring buffer."""

    _fields_ = [
        ("timestamp_ns", ctypes.c_uint64),
        ("kind", ctypes.c_uint32),
        ("action", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("target_tgid", ctypes.c_uint32),
        ("opener_tgid", ctypes.c_uint32),
        ("opener_pid", ctypes.c_uint32),
        ("opener_uid", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
        ("comm", ctypes.c_char * 16),
        ("exe", ctypes.c_char * 64),  # basename of the opener's executable (mm->exe_file)
    ]


class FileKey(ctypes.Structure):
    """Key of the ``protected_files`` map: a secret file's inode."""

    _fields_ = [
        ("ino", ctypes.c_uint64),
        ("dev", ctypes.c_uint32),  # kernel dev_t (major << 20 | minor), not st_dev's encoding
        ("pad", ctypes.c_uint32),
    ]


class FileOwner(ctypes.Structure):
    """Value of the ``protected_files`` map: the tgid of the protected process owning it."""

    _fields_ = [
        ("tgid", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
    ]


ALLOWED_ANY_UID = 0xFFFFFFFF


class AccessorKey(ctypes.Structure):
    """Key of the ``accessors`` map (value: u32 1): an executable allow-list ``list`` allows,
    for one uid or any."""

    _fields_ = [
        ("ino", ctypes.c_uint64),
        ("dev", ctypes.c_uint32),  # kernel dev_t (major << 20 | minor)
        ("uid", ctypes.c_uint32),  # ALLOWED_ANY_UID for any uid
        ("list", ctypes.c_uint32),  # the allow-list's id (ProtectedEntry.accessors), never 0
        ("pad", ctypes.c_uint32),
    ]


class EventKind(enum.IntEnum):
    ENVIRON = 1
    MEM = 2
    PTRACE = 3
    PROCESS_VM_READV = 4
    PROCESS_VM_WRITEV = 5
    PIDFD_GETFD = 6
    FD = 7  # /proc/PID/fd/N or /proc/PID/map_files/... of a secret file
    COREDUMP = 8  # a core-dumping signal reached a protected process (no dump taken)


class Action(enum.IntEnum):
    AUDITED = 0
    KILLED = 1
    DENIED = 2  # LSM backend: the call failed with EPERM, the offender lives


# C struct name -> its mirror; the layout test walks this.
MIRRORS: dict[str, type[ctypes.Structure]] = {
    "protected_entry": ProtectedEntry,
    "event": Event,
    "file_key": FileKey,
    "file_owner": FileOwner,
    "accessor_key": AccessorKey,
}
