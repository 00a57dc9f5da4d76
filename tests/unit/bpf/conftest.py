"""The compiled protect.bpf.o for the unit tests that read it (layouts, backends)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def bpf_object_path() -> Path:
    """Built by scripts/build-bpf (cached); skips, saying why, where it cannot be built."""
    for tool, package in (("clang", "clang"), ("bpftool", "bpftool")):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (Debian package {package})")
    if not Path("/sys/kernel/btf/vmlinux").exists():
        pytest.skip("no kernel BTF at /sys/kernel/btf/vmlinux (needed to generate vmlinux.h)")
    out = subprocess.run([str(REPO / "scripts/build-bpf")], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip().splitlines()[-1])
