"""ctypes and enum mirrors of bpf/protect.h, the contract with protect.bpf.c.

tests/unit/bpf/test_layouts.py checks every struct and enum here against the compiled
object's BTF (and ProtectionFlag against engine.plans), so a change on one side alone fails.
"""

from __future__ import annotations

import ctypes
import enum


class ProtectedEntry(ctypes.Structure):
    """Value of the ``protected`` map (key: tgid, u32)."""

    _fields_ = [
        ("start_time", ctypes.c_uint64),  # clock ticks since boot, /proc/PID/stat field 22
        ("flags", ctypes.c_uint32),  # ProtectionFlag | EntryState bits
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
        ("via", ctypes.c_uint16),  # Via
        ("note", ctypes.c_uint16),  # Note bits
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
        ("flags", ctypes.c_uint32),  # protected_mounts: the owner's flags, kept after it died
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


class NodeState(ctypes.Structure):
    """The ``node`` map's one value: which process holds the agent role."""

    _fields_ = [
        ("agent_tgid", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
        ("agent_start", ctypes.c_uint64),
    ]


AGENT_OP_BYTES = 32


class AgentOp(ctypes.Structure):
    """The agent_op program's context (in and out)."""

    _fields_ = [
        ("op", ctypes.c_uint32),  # AgentOpCode
        ("map", ctypes.c_uint32),  # AgentMap
        ("flags", ctypes.c_uint64),
        ("key", ctypes.c_uint8 * AGENT_OP_BYTES),
        ("value", ctypes.c_uint8 * AGENT_OP_BYTES),
        ("result", ctypes.c_int32),  # 0 or -errno
        ("pad", ctypes.c_uint32),
    ]


class EntryState(enum.IntFlag):
    """Per-process state bits beside the policy in ProtectedEntry.flags (C: entry_state)."""

    ENVIRON_CLEAN = 1 << 16  # its environment area holds no secret value
    EXEC_KEEPS_CLEAN = 1 << 17  # ... and keeps that across its next execve


class EventKind(enum.IntEnum):
    ENVIRON = 1
    MEM = 2
    PTRACE = 3
    PROCESS_VM_READV = 4
    PROCESS_VM_WRITEV = 5
    PIDFD_GETFD = 6
    FD = 7  # a protected process's secret file, however the fd was obtained
    COREDUMP = 8  # a core-dumping signal reached a protected process (no dump taken)
    PERF = 9  # perf_event_open on a protected process, or node-wide user sampling
    BPF = 10  # a tracing BPF program loaded while the node protects something
    TRACEFS = 11  # a uprobe/kprobe definition written through tracefs
    PROCESS_MADVISE = 12
    AGENT = 13  # the agent role: a claim, a refused claim or write, or the agent exited
    CREDENTIALS = 14  # a file of a protected pod's credential volume (token, client key)


class Via(enum.IntEnum):
    """How the access was made (C: access_via)."""

    OPEN = 0
    READ = 1
    WRITE = 2
    MMAP = 3
    TRANSFER = 4  # sendfile, splice, copy_file_range
    IO_URING = 5
    SYSCALL = 6
    SIGNAL = 7
    AGENT_OP = 8


class Note(enum.IntFlag):
    """Event.note bits (C: event_note)."""

    CANARY = 1 << 0  # the wrapper's canary probe: not a violation
    NODE_WIDE = 1 << 1  # no single target (target_tgid 0)
    REFUSED = 1 << 2  # the kernel refused the call itself


class Action(enum.IntEnum):
    AUDITED = 0
    KILLED = 1
    DENIED = 2  # the call failed with EPERM, the offender lives


class AgentOpCode(enum.IntEnum):
    CLAIM = 1
    UPDATE = 2
    DELETE = 3


class AgentMap(enum.IntEnum):
    PROTECTED = 1
    PROTECTED_FILES = 2
    ACCESSORS = 3
    PROTECTED_MOUNTS = 4


# C struct name -> its mirror; the layout test walks this.
MIRRORS: dict[str, type[ctypes.Structure]] = {
    "protected_entry": ProtectedEntry,
    "event": Event,
    "file_key": FileKey,
    "file_owner": FileOwner,
    "accessor_key": AccessorKey,
    "node_state": NodeState,
    "agent_op": AgentOp,
}

# C enum name -> (its mirror, the prefix of its enumerators in C); the layout test walks this.
ENUMS: dict[str, tuple[type[enum.IntEnum] | type[enum.IntFlag], str]] = {
    "entry_state": (EntryState, "ES_"),
    "event_kind": (EventKind, "EV_"),
    "access_via": (Via, "VIA_"),
    "event_note": (Note, "NOTE_"),
    "action": (Action, "ACT_"),
    "agent_op_code": (AgentOpCode, "AGENT_OP_"),
    "agent_map": (AgentMap, "AM_"),
}
