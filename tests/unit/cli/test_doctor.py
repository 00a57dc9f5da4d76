"""`cloudtaser doctor` against this node's real kernel."""

from __future__ import annotations

import ctypes
import errno
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cloudtaser import probing
from cloudtaser.cli import main


def test_json_report_lists_every_check_with_a_known_status() -> None:
    result = CliRunner().invoke(main, ["doctor", "-o", "json"])
    report = json.loads(result.stdout)
    names = [c["name"] for c in report["checks"]]
    for needed in (
        "memfd_secret",
        "bpf-lsm",
        "btf",
        "rlimit-memlock",
        "cap-ipc-lock",
        "swap",
        "confidential-computing",
        "io_uring",
        "lockdown",
        "environ",
    ):
        assert needed in names
    assert {c["status"] for c in report["checks"]} <= {"ok", "warn", "fail"}
    assert all(c["detail"] and c["meaning"] for c in report["checks"])
    assert result.exit_code == (1 if report["summary"]["fail"] else 0)


def test_table_report_for_people() -> None:
    result = CliRunner().invoke(main, ["doctor"])
    assert result.stdout.splitlines()[1].split()[:3] == ["CHECK", "STATUS", "DETAIL"]


def _kernel_has_memfd_secret() -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.syscall(probing.SYS_MEMFD_SECRET, 0)
    if fd >= 0:
        libc.close(fd)
        return True
    return ctypes.get_errno() != errno.ENOSYS


@pytest.mark.kernel
@pytest.mark.skipif(not _kernel_has_memfd_secret(), reason="kernel lacks memfd_secret")
def test_memfd_secret_probe_maps_and_reads_back_on_this_kernel() -> None:
    check = probing.probe_memfd_secret()
    assert (check.status, check.detail) == ("ok", "created, mapped and read back one page")


def written(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_swap_says_which_pages_can_reach_it(tmp_path: Path) -> None:
    header = "Filename\tType\tSize\tUsed\tPriority\n"
    assert probing.probe_swap(written(tmp_path, "none", header)).status == "ok"
    check = probing.probe_swap(written(tmp_path, "some", header + "/dev/vda2 partition 1 0 -2\n"))
    assert (check.status, check.detail) == ("warn", "swap on /dev/vda2")
    assert "memfd_secret pages are never swapped" in check.meaning
    assert "environment, heap and memfd-copy pages" in check.meaning


@pytest.mark.parametrize(
    ("value", "detail"),
    [
        ("0", "kernel.io_uring_disabled=0: io_uring is open to every process"),
        (
            "1",
            "kernel.io_uring_disabled=1: io_uring only for members of kernel.io_uring_group and "
            "CAP_SYS_ADMIN",
        ),
        ("2", "kernel.io_uring_disabled=2: io_uring is disabled for every process"),
        (
            None,
            "no kernel.io_uring_disabled (kernels before 6.6): io_uring is open to every process",
        ),
    ],
)
def test_io_uring_row_reads_the_sysctl(tmp_path: Path, value: str | None, detail: str) -> None:
    path = written(tmp_path, "io_uring_disabled", f"{value}\n") if value else tmp_path / "absent"
    check = probing.probe_io_uring(path)
    assert (check.name, check.status, check.detail) == ("io_uring", "ok", detail)
    assert "through io_uring's own tracepoints" in check.meaning
    assert "kernel.io_uring_disabled=2 is a further, node-wide restriction" in check.meaning


@pytest.mark.parametrize(
    ("text", "status", "says"),
    [
        ("[none] integrity confidentiality\n", "warn", "node root can read any process's memory"),
        ("none [integrity] confidentiality\n", "warn", "root cannot change the running kernel"),
        (
            "none integrity [confidentiality]\n",
            "ok",
            "root can neither change nor read kernel memory",
        ),
        ("garbage\n", "warn", "treat as lockdown none"),
    ],
)
def test_lockdown_row_names_the_active_mode(
    tmp_path: Path, text: str, status: str, says: str
) -> None:
    check = probing.probe_lockdown(written(tmp_path, "lockdown", text))
    assert (check.name, check.status) == ("lockdown", status) and says in check.meaning, check
    if status == "warn":
        assert "/proc/kcore" in check.meaning


def test_lockdown_row_without_the_lockdown_lsm(tmp_path: Path) -> None:
    check = probing.probe_lockdown(tmp_path / "lockdown")
    assert check.status == "warn" and check.meaning.startswith("as with lockdown none")


def test_environ_row_explains_ps_and_names_allowed_accessors() -> None:
    check = probing.probe_environ(lambda name: f"/opt/procps/bin/{name}")
    assert check.name == "environ" and "exec_environ: clean" in check.detail
    assert "kills the reader on the tracepoint backend (EPERM on the LSM backend)" in check.meaning
    assert check.meaning.endswith("allowedAccessors, e.g. [{executable: /opt/procps/bin/ps}]")
    assert probing.probe_environ(lambda name: None).meaning.endswith("[{executable: /usr/bin/ps}]")
