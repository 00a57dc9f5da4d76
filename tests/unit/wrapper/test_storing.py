"""Secret memory on this kernel: memfd_secret regions that only mmap can read."""

from __future__ import annotations

import errno
import os
import secrets
from pathlib import Path

import pytest

from cloudtaser.wrapper import storing


@pytest.mark.kernel
def test_store_puts_the_value_in_memfd_secret_and_wipes_nothing_else() -> None:
    value = bytearray(secrets.token_bytes(100))
    held = storing.store(value, require_secret_mem=True)
    try:
        if held.kind != "memfd_secret":
            pytest.skip("kernel lacks memfd_secret")
        assert os.readlink(f"/proc/self/fd/{held.fd}").startswith("/secretmem")
        assert os.get_inheritable(held.fd)
        assert storing.read(held.fd) == bytes(value)
        with pytest.raises(OSError) as e:
            os.read(held.fd, 10)
        assert e.value.errno in (errno.EINVAL, errno.ESPIPE)  # why readers mmap
    finally:
        os.close(held.fd)


@pytest.mark.kernel
def test_every_mapping_of_the_secret_is_locked_and_left_out_of_core_dumps() -> None:
    """The issue's "mlocked, MADV_DONTDUMP": secretmem maps every mapping of the fd (the
    wrapper's while it writes, the SDK's and interposer's in the app) VM_LOCKED|VM_DONTDUMP
    itself, so the pages never reach swap or a core file whoever maps them."""
    import mmap
    import re

    value = bytearray(secrets.token_bytes(4096))
    held = storing.store(value, require_secret_mem=True)
    try:
        if held.kind != "memfd_secret":
            pytest.skip("kernel lacks memfd_secret")
        with mmap.mmap(held.fd, len(value), flags=mmap.MAP_SHARED, prot=mmap.PROT_READ) as region:
            assert region[:16] == bytes(value[:16])  # fault the page in
            smaps = Path("/proc/self/smaps").read_text()
            block = next(b for b in re.split(r"\n(?=[0-9a-f]+-[0-9a-f]+ )", smaps)
                         if "/secretmem" in b.splitlines()[0])
            flags = re.search(r"^VmFlags: (.*)$", block, re.M)
            locked = re.search(r"^Locked:\s+(\d+) kB$", block, re.M)
            assert flags and {"lo", "dd"} <= set(flags.group(1).split()), block
            assert locked and int(locked.group(1)) >= 4, block
    finally:
        os.close(held.fd)


def test_empty_value_is_an_empty_region() -> None:
    held = storing.store(bytearray(), require_secret_mem=False)
    try:
        assert storing.read(held.fd) == b""
    finally:
        os.close(held.fd)


def test_wipe_zeroes_in_place() -> None:
    value = bytearray(b"not a real secret")
    view = memoryview(value)
    storing.wipe(value)
    assert bytes(view) == bytes(len(value))


def test_fallback_memfd_is_sealed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storing, "_memfd_secret", lambda: None)  # as on a kernel without it
    held = storing.store(bytearray(b"abc"), require_secret_mem=False)
    try:
        assert held.kind == "memfd"
        assert storing.read(held.fd) == b"abc"
        with pytest.raises(PermissionError):
            os.write(held.fd, b"x")  # F_SEAL_WRITE
    finally:
        os.close(held.fd)
    with pytest.raises(storing.SecretMemoryError, match="requireSecretMem"):
        storing.store(bytearray(b"abc"), require_secret_mem=True)


def test_rewrite_in_place_keeps_the_fd_and_refuses_a_new_length() -> None:
    held = storing.store(bytearray(b"old-value"), require_secret_mem=False, sealed=False)
    try:
        storing.rewrite(held.fd, bytearray(b"new-value"))
        assert storing.read(held.fd) == b"new-value"
        with pytest.raises(storing.SecretMemoryError, match="cannot be resized; restart the pod"):
            storing.rewrite(held.fd, bytearray(b"longer-value"))
        assert storing.read(held.fd) == b"new-value"
    finally:
        os.close(held.fd)
