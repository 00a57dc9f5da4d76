"""Parts of the agent that need no kernel support: parsing, checks, protocol refusals."""

from __future__ import annotations

import argparse
import ctypes
import os
from pathlib import Path

import pytest

from cloudtaser.bpf import agent, allowlists, layouts, programs, violations
from cloudtaser.engine.plans import ProtectionFlag


def test_start_time_is_field_22_of_own_stat() -> None:
    with open("/proc/self/stat", "rb") as f:
        expected = int(f.read().rsplit(b")", 1)[1].split()[19])
    assert agent.start_time_ticks(os.getpid()) == expected


def test_flags_by_names_or_number() -> None:
    assert agent.parse_flags("environ, MEM,ptrace") == int(
        ProtectionFlag.ENVIRON | ProtectionFlag.MEM | ProtectionFlag.PTRACE
    )
    assert agent.parse_flags("0x103") == 0x103
    assert agent.parse_flags("all") == agent.DEFAULT_FLAGS == ProtectionFlag.ALL
    with pytest.raises(argparse.ArgumentTypeError, match="unknown protection"):
        agent.parse_flags("environ,bogus")


def test_unknown_flag_bits_are_refused() -> None:
    with pytest.raises(agent.PermanentError, match="unknown protection flag bits"):
        agent.Agent("/nonexistent.sock", flags=1 << 20)


def test_violation_from_record() -> None:
    ev = layouts.Event(
        kind=layouts.EventKind.MEM,
        action=layouts.Action.KILLED,
        flags=3,
        target_tgid=10,
        opener_tgid=20,
        opener_pid=21,
        opener_uid=0,
        comm=b"cat",
        exe=b"cat-copy",
    )
    v = violations.Violation.from_record(bytes(ev))
    assert (v.kind, v.action, v.target_tgid, v.opener_pid, v.opener_comm, v.opener_exe) == (
        "mem",
        "killed",
        10,
        21,
        "cat",
        "cat-copy",
    )


def test_zero_kallsyms_addresses_refuse_to_start(tmp_path: Path) -> None:
    fake = tmp_path / "kallsyms"
    fake.write_text("0000000000000000 t mem_open\n0000000000000000 t environ_open\n")
    with pytest.raises(programs.BpfError, match="zero addresses"):
        programs.check_kallsyms(kallsyms=str(fake))
    fake.write_text("ffffffff81780700 t mem_open\n")
    with pytest.raises(programs.BpfError, match="missing.*environ_open"):
        programs.check_kallsyms(kallsyms=str(fake))
    fake.write_text("ffffffff81780700 t mem_open\nffffffff817807c0 t environ_open\n")
    programs.check_kallsyms(kallsyms=str(fake))


def test_layout_sizes() -> None:
    assert ctypes.sizeof(layouts.ProtectedEntry) == 16
    assert ctypes.sizeof(layouts.Event) == 120
    assert ctypes.sizeof(layouts.AccessorKey) == 24


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("/usr/bin/x", ("/usr/bin/x", None)),
        ("/usr/bin/x:1000", ("/usr/bin/x", 1000)),
        ("/opt/a:b/tool", ("/opt/a:b/tool", None)),
    ],
)
def test_parse_accessor(spec: str, expected: tuple[str, int | None]) -> None:
    assert allowlists.parse_accessor(spec) == expected


def test_secret_file_key_uses_the_kernel_dev_encoding() -> None:
    st = os.stat("/proc/self/exe")
    key = agent.secret_file_key(st)
    assert key.ino == st.st_ino
    assert key.dev == (os.major(st.st_dev) << 20) | os.minor(st.st_dev)
