"""Secret memory: one memfd_secret region per secret, inherited by the app across exec.

memfd_secret (Linux 5.14+, syscall 447) pages are removed from the kernel's direct map and
are unevictable (never swapped, charged to RLIMIT_MEMLOCK); the kernel maps every mapping of
them VM_LOCKED|VM_DONTDUMP, i.e. mlocked and left out of core dumps, whoever maps them (the
wrapper while it writes, the SDKs and the interposer in the app; a unit test reads smaps).
Other processes, root included, get EIO through /proc/PID/mem. Such an fd cannot be read()
(ESPIPE): readers mmap it. Where the kernel lacks it, a sealed ordinary memfd is the
fallback — readable through /proc/PID/mem by root unless the node agent blocks that, and its
shmem pages can reach swap (cloudtaser doctor checks swap) — so the wrapper warns, or refuses
when the binding says requireSecretMem.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
from dataclasses import dataclass

from cloudtaser.errors import PermanentError

SYS_MEMFD_SECRET = 447  # x86_64 and arm64
PR_SET_DUMPABLE = 4
_SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
_libc = ctypes.CDLL(None, use_errno=True)


class SecretMemoryError(PermanentError):
    """Secret memory could not be created as required."""


@dataclass(frozen=True)
class SecretFd:
    fd: int
    kind: str  # "memfd_secret" or "memfd"


def wipe(buffer: bytearray) -> None:
    """Overwrite a buffer in place (ctypes.memset: no copy is made on the way)."""
    if buffer:
        ctypes.memset((ctypes.c_char * len(buffer)).from_buffer(buffer), 0, len(buffer))


def _memfd_secret() -> int | None:
    fd = _libc.syscall(SYS_MEMFD_SECRET, 0)
    if fd >= 0:
        return int(fd)
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EPERM, errno.EOPNOTSUPP):
        return None  # no secretmem in this kernel, or blocked by seccomp
    raise SecretMemoryError(f"memfd_secret failed: {os.strerror(err)}")


def _fill(fd: int, value: bytearray) -> None:
    os.ftruncate(fd, len(value))
    if not value:
        return
    region = mmap.mmap(fd, len(value), flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    try:
        region.madvise(mmap.MADV_DONTDUMP)
        region[:] = value
    finally:
        region.close()


def store(value: bytearray, require_secret_mem: bool, sealed: bool = True) -> SecretFd:
    """Copy ``value`` into a new inheritable secret fd; the caller wipes ``value`` after.

    ``sealed`` applies to the memfd fallback only (a refresher needs to rewrite in place).
    """
    fd = _memfd_secret()
    if fd is not None:
        try:
            _fill(fd, value)
        except OSError as e:
            os.close(fd)
            if e.errno == errno.EAGAIN:
                raise SecretMemoryError(
                    f"memfd_secret needs {len(value)} more bytes of RLIMIT_MEMLOCK "
                    "(grant CAP_IPC_LOCK or raise the limit)"
                ) from e
            raise SecretMemoryError(f"memfd_secret could not be filled: {e.strerror}") from e
        os.set_inheritable(fd, True)
        return SecretFd(fd, "memfd_secret")
    if require_secret_mem:
        raise SecretMemoryError(
            "memfd_secret is unavailable on this node (kernel without CONFIG_SECRETMEM or "
            "secretmem.enable=0) and the binding sets requireSecretMem"
        )
    fd = os.memfd_create("cloudtaser-secret", os.MFD_ALLOW_SEALING)
    _fill(fd, value)
    if sealed:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
    os.set_inheritable(fd, True)
    return SecretFd(fd, "memfd")


def rewrite(fd: int, value: bytearray) -> None:
    """Replace a secret fd's contents in place (the refresher; readers map it per read).

    memfd_secret cannot be resized once sized (ftruncate gives EINVAL, measured on 6.18),
    and the app knows its fds only by number, so a value of another length cannot be
    swapped in: that needs a restart of the pod.
    """
    size = os.fstat(fd).st_size
    if size != len(value):
        raise SecretMemoryError(
            f"the new value is {len(value)} bytes but the secret memory holds {size}: "
            "secret memory cannot be resized; restart the pod to pick up the new value"
        )
    if not value:
        return
    with mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE) as region:
        region[:] = value


def read(fd: int) -> bytes:
    """The current contents of a secret fd (mmap: memfd_secret cannot be read())."""
    size = os.fstat(fd).st_size
    if size == 0:
        return b""
    with mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ) as region:
        return region[:]


def harden_process() -> None:
    """No core dumps of this process or of the app it becomes (rlimits survive exec), and
    this process non-dumpable while it holds secrets in ordinary memory."""
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if _libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise SecretMemoryError(f"prctl(PR_SET_DUMPABLE): {os.strerror(ctypes.get_errno())}")
