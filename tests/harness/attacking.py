"""The attacker program (tests/harness/attacker.c): built once per source, run per vector.

Shared by the kernel tests and the attack matrix; benchmarks import nothing from here.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

SOURCE = Path(__file__).with_name("attacker.c")


def _cache() -> Path:
    return Path(os.environ.get("CLOUDTASER_CACHE") or Path.home() / ".cache" / "cloudtaser")


def attacker_binary() -> Path:
    """The static attacker for this source, built with gcc into the cache if needed
    ($CLOUDTASER_ATTACKER: one built elsewhere, e.g. by the host for the KVM guest)."""
    prebuilt = os.environ.get("CLOUDTASER_ATTACKER")
    if prebuilt:
        return Path(prebuilt)
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]
    path = _cache() / "attacker" / digest / "attacker"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        subprocess.run(
            ["gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-static", "-o", str(tmp), str(SOURCE)],
            check=True,
            capture_output=True,
            text=True,
        )
        tmp.rename(path)
    return path


@dataclass
class Attack:
    returncode: int
    stdout: bytes
    stderr: bytes = b""

    @property
    def refused(self) -> str | None:
        """What the kernel refused ("open: Permission denied"), when it refused the attacker."""
        if self.returncode != 3:
            return None
        for line in self.stderr.decode(errors="replace").splitlines():
            if line.startswith("refused: "):
                return line.removeprefix("refused: ")
        return None


def run_attacker(
    *args: str,
    in_pod: bool = False,
    ptrace: bool = False,
    seccomp: bool = False,
    enter: int | None = None,
    stdin: bytes | None = None,
    timeout: float = 20,
    env: dict[str, str] | None = None,
) -> Attack:
    """Run one vector as a separate process: node root, or (``in_pod``) with a container's
    default capabilities (``ptrace``: plus CAP_SYS_PTRACE) and (``seccomp``) its filter, in the
    pid and mount namespaces of the process ``enter`` (nsenter, before dropping anything)."""
    flags = [
        *(["--in-pod"] if in_pod else []),
        *(["--ptrace"] if ptrace else []),
        *(["--seccomp"] if seccomp else []),
    ]
    prefix = ["nsenter", "-t", str(enter), "-p", "-m", "--"] if enter else []
    r = subprocess.run(
        [*prefix, str(attacker_binary()), *flags, *args],
        input=stdin,
        capture_output=True,
        timeout=timeout,
        check=False,
        env=env,
    )
    return Attack(r.returncode, r.stdout, r.stderr)
