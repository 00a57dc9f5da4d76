"""ctypes mirrors of the structs shared with protect.bpf.c (checked against its BTF by tests)."""

from __future__ import annotations

import ctypes
import enum


class ProtectedEntry(ctypes.Structure):
    """Value of the ``protected`` map (key: tgid, u32)."""

    _fields_ = [
        ("start_time", ctypes.c_uint64),  # clock ticks since boot, /proc/PID/stat field 22
        ("flags", ctypes.c_uint32),  # ProtectionFlag bits
        ("pad", ctypes.c_uint32),
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
    ]


class EventKind(enum.IntEnum):
    ENVIRON = 1
    MEM = 2
    PTRACE = 3
    PROCESS_VM_READV = 4
    PROCESS_VM_WRITEV = 5
    PIDFD_GETFD = 6


class Action(enum.IntEnum):
    AUDITED = 0
    KILLED = 1


# C struct name -> its mirror; the layout test walks this.
MIRRORS: dict[str, type[ctypes.Structure]] = {
    "protected_entry": ProtectedEntry,
    "event": Event,
}
