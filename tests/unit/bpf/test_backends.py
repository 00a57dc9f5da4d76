"""Which programs each backend attaches, and how the agent reads the LSM list."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloudtaser.bpf import programs


@pytest.fixture(scope="module")
def sections(bpf_object_path: Path) -> dict[str, str]:
    """Program name -> ELF section of the compiled protect.bpf.o (opened, not loaded)."""
    lib = programs.lib()
    obj = lib.bpf_object__open_file(str(bpf_object_path).encode(), None)
    assert obj
    try:
        found = {}
        prog = lib.bpf_object__next_program(obj, None)
        while prog:
            found[lib.bpf_program__name(prog).decode()] = lib.bpf_program__section_name(
                prog
            ).decode()
            prog = lib.bpf_object__next_program(obj, prog)
        return found
    finally:
        lib.bpf_object__close(obj)


def test_tracepoint_only_programs_exist(sections: dict[str, str]) -> None:
    """A renamed program would silently run under the LSM backend too (killing as well)."""
    assert programs.TRACEPOINT_ONLY <= sections.keys()
    assert all(
        sections[n].startswith(("tp_btf/sys_", "tp_btf/io_uring_"))
        for n in programs.TRACEPOINT_ONLY
    )


def test_every_killing_tracepoint_is_tracepoint_only(sections: dict[str, str]) -> None:
    """Every syscall or io_uring tracepoint program kills; only the memfd ones, which record
    secret files, serve the LSM backend too."""
    hooks = {
        n
        for n, s in sections.items()
        if s.startswith(("tracepoint/syscalls/", "tp_btf/sys_", "tp_btf/io_uring_"))
    }
    assert hooks - programs.TRACEPOINT_ONLY == {"exit_memfd_create", "exit_memfd_secret"}


def test_lsm_programs_cover_every_vector(sections: dict[str, str]) -> None:
    lsm = {s for s in sections.values() if s.startswith("lsm/")}
    assert lsm == {
        "lsm/file_open",
        "lsm/file_permission",
        "lsm/mmap_file",
        "lsm/ptrace_access_check",
        "lsm/perf_event_open",
        "lsm/bpf",
    }


def test_shared_programs_run_with_both_backends(sections: dict[str, str]) -> None:
    shared = {
        n
        for n, s in sections.items()
        if not s.startswith("lsm/") and n not in programs.TRACEPOINT_ONLY
    }
    # fork inheritance, exec state, exit cleanup, secret-file recording, core dumps, and the
    # agent's only way to write its frozen maps
    assert shared == {
        "on_fork",
        "on_exec",
        "on_exit",
        "exit_memfd_create",
        "exit_memfd_secret",
        "on_signal_deliver",
        programs.AGENT_OP,
    }
    assert sections[programs.AGENT_OP] == "syscall"


@pytest.mark.parametrize(
    ("text", "listed"),
    [
        ("lockdown,capability,landlock,yama,apparmor,bpf\n", True),
        ("capability,bpf", True),
        ("lockdown,capability,landlock,yama,apparmor", False),
        ("lockdown,capability,bpfx", False),
    ],
)
def test_bpf_lsm_listed(tmp_path: Path, text: str, listed: bool) -> None:
    path = tmp_path / "lsm"
    path.write_text(text)
    ok, detail = programs.bpf_lsm_listed(path)
    assert ok is listed
    assert text.strip() in detail
    if not listed:
        assert "lsm=...,bpf" in detail


def test_unreadable_lsm_list_names_the_file(tmp_path: Path) -> None:
    ok, detail = programs.bpf_lsm_listed(tmp_path / "missing")
    assert not ok and str(tmp_path / "missing") in detail


def test_unknown_backend_is_refused(tmp_path: Path) -> None:
    with pytest.raises(programs.BpfError, match="unknown backend 'kprobe'"):
        programs.load(tmp_path / "x.o", pin_dir=None, backend="kprobe")
