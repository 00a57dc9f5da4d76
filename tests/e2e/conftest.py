"""The local real stack for e2e tests: brought up once per run, or reused when running.

When this session started the stack it also stops it, and then checks that no process of
the stack's binaries is left. Set CLOUDTASER_KEEP_STACK=1 to leave it running.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudtaser import provisioning, stacking


def _stack_processes(paths: stacking.Paths) -> list[str]:
    ours = {paths.binary(b).resolve() for b in stacking.BINARIES if paths.binary(b).exists()}
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                exe = Path(os.readlink(proc / "exe"))
            except OSError:
                continue
            if exe in ours:
                found.append(f"{proc.name} {exe}")
    return found


def _cli(*args: str) -> None:
    """Run the real `cloudtaser stack ...` command, as a user would; its processes then
    belong to no test process (they outlive the CLI like they do for a user)."""
    exe = Path(sys.executable).parent / "cloudtaser"
    proc = subprocess.run([str(exe), "stack", *args], capture_output=True, text=True,
                          timeout=300, check=False)
    print(proc.stderr)
    assert proc.returncode == 0, f"cloudtaser stack {' '.join(args)} failed:\n{proc.stderr}"


@pytest.fixture(scope="session")
def stack() -> Iterator[stacking.Paths]:
    paths = stacking.Paths(state=stacking.default_state_dir(), bin=stacking.default_bin_dir())
    stacking.check_binaries(paths)  # a missing build fails loudly: never a silent skip
    started = any(row["health"] != "healthy" for row in stacking.status(paths))
    _cli("up")
    yield paths
    if started and os.environ.get("CLOUDTASER_KEEP_STACK") != "1":
        _cli("down")
        left = _stack_processes(paths)
        assert left == [], f"stack down left processes behind: {left}"


@pytest.fixture(scope="session")
def kubectl(stack: stacking.Paths):  # type: ignore[no-untyped-def]
    def run(*args: str, stdin: str | None = None) -> str:
        return provisioning.kubectl(stack, *args, stdin=stdin)

    return run
