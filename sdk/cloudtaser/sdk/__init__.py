"""Python SDK: read secrets the cloudtaser wrapper delivered with ``sdk: NAME``.

    from cloudtaser.sdk import get_secret
    password = get_secret("db-password")   # bytes

The wrapper hands the app one memory fd per secret (memfd_secret where the kernel has it)
and lists them in CLOUDTASER_FDS as lines ``KIND FD NAME`` (contracts/README.md; every line is
validated, of every kind). memfd_secret cannot be read()
(ESPIPE), so each call maps the fd and copies its current contents — a refresher may have
rewritten it in place. The returned bytes are ordinary Python memory: keep them short-lived.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import re
from typing import NamedTuple

from cloudtaser.errors import PermanentError

FDS_ENV = "CLOUDTASER_FDS"
KINDS = ("file", "sdk", "env")
MAX_FD = 2**31 - 1
_FD = re.compile(r"[0-9]{1,10}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
PR_SET_DUMPABLE = 4


def _not_dumpable() -> None:
    """Importing the SDK makes the process non-dumpable (issue 12 point 2): no core dump, and
    the kernel refuses ptrace and /proc/PID/{mem,environ} to same-uid processes without
    CAP_SYS_PTRACE. execve had made the app dumpable again."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: nothing to do
        pass


_not_dumpable()


class SecretNotFound(PermanentError):
    """No secret of that name was delivered to this process."""


class MalformedManifest(PermanentError):
    """CLOUDTASER_FDS breaks the contract (contracts/README.md); the line is named, never shown."""


class Entry(NamedTuple):
    kind: str
    fd: int
    name: str


def _problem(line: str) -> str | None:
    """What is wrong with one manifest line (None: nothing), without echoing it."""
    parts = line.split(" ", 2)
    if len(parts) != 3:
        return 'want "KIND FD NAME"'
    kind, fd, name = parts
    if not _FD.fullmatch(fd) or int(fd) > MAX_FD:
        return f"fd must be a decimal number in 0..{MAX_FD}"
    if kind not in KINDS:
        return "kind must be file, sdk or env"
    if not name:
        return "empty name"
    if "\0" in name:
        return "the name holds a NUL"
    if kind == "file" and not name.startswith("/"):
        return "a file name must be an absolute path"
    if kind == "env" and not _ENV_NAME.fullmatch(name):
        return "an env name must match [A-Za-z_][A-Za-z0-9_]*"
    if kind == "env" and name == FDS_ENV:  # the interposer rewrites that variable itself
        return "an env line cannot set the manifest's own variable"
    return None


def parse_manifest(text: str) -> list[Entry]:
    """The entries of a manifest; every line is checked, of every kind.

    Python's one parser of the fd manifest as contracts/README.md defines it ("The fd
    manifest"); tests/unit/test_sdk.py runs it over every ``manifest`` vector of
    contracts/wrapper-contract.json."""
    text = text.removesuffix("\n")
    if not text:
        return []
    entries: list[Entry] = []
    seen: set[tuple[str, str]] = set()
    for number, line in enumerate(text.split("\n"), start=1):
        problem = _problem(line)
        kind, fd, name = line.split(" ", 2) if problem is None else ("", "", "")
        if problem is None and (kind, name) in seen:
            problem = f"duplicate {kind} name"
        if problem is not None:
            raise MalformedManifest(f"{FDS_ENV} line {number} is malformed: {problem}")
        seen.add((kind, name))
        entries.append(Entry(kind, int(fd), name))
    return entries


def _sdk_entries() -> dict[str, int]:
    manifest = os.environ.get(FDS_ENV)
    if manifest is None:
        raise SecretNotFound(
            f"{FDS_ENV} is not set: this process was not started by the cloudtaser wrapper"
        )
    return {e.name: e.fd for e in parse_manifest(manifest) if e.kind == "sdk"}


def secrets() -> list[str]:
    """Names of the secrets delivered to this process for the SDK."""
    return sorted(_sdk_entries())


def get_secret(name: str) -> bytes:
    """The current value of the secret ``name``."""
    entries = _sdk_entries()
    if name not in entries:
        known = ", ".join(sorted(entries)) or "none"
        raise SecretNotFound(f"no secret named '{name}' (delivered: {known})")
    fd = entries[name]
    size = os.fstat(fd).st_size
    if size == 0:
        return b""
    with mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ) as region:
        return region[:]
