"""Python SDK: read secrets the cloudtaser wrapper delivered with ``sdk: NAME``.

    from cloudtaser.sdk import get_secret
    password = get_secret("db-password")   # bytes

The wrapper hands the app one memory fd per secret (memfd_secret where the kernel has it)
and lists them in CLOUDTASER_FDS as lines ``KIND FD NAME``. memfd_secret cannot be read()
(ESPIPE), so each call maps the fd and copies its current contents — a refresher may have
rewritten it in place. The returned bytes are ordinary Python memory: keep them short-lived.
"""

from __future__ import annotations

import mmap
import os

from cloudtaser.errors import PermanentError

FDS_ENV = "CLOUDTASER_FDS"


class SecretNotFound(PermanentError):
    """No secret of that name was delivered to this process."""


def _entries(kind: str) -> dict[str, int]:
    manifest = os.environ.get(FDS_ENV)
    if manifest is None:
        raise SecretNotFound(f"{FDS_ENV} is not set: this process was not started by the "
                             "cloudtaser wrapper")
    found: dict[str, int] = {}
    for number, line in enumerate(manifest.split("\n"), start=1):
        if not line:
            continue
        parts = line.split(" ", 2)
        if len(parts) != 3 or not parts[1].isdigit():
            raise PermanentError(f"{FDS_ENV} line {number} is malformed")
        if parts[0] == kind:
            found[parts[2]] = int(parts[1])
    return found


def secrets() -> list[str]:
    """Names of the secrets delivered to this process for the SDK."""
    return sorted(_entries("sdk"))


def get_secret(name: str) -> bytes:
    """The current value of the secret ``name``."""
    entries = _entries("sdk")
    if name not in entries:
        known = ", ".join(sorted(entries)) or "none"
        raise SecretNotFound(f"no secret named '{name}' (delivered: {known})")
    fd = entries[name]
    size = os.fstat(fd).st_size
    if size == 0:
        return b""
    with mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ) as region:
        return region[:]
