"""`cloudtaser doctor` against this node's real kernel."""

from __future__ import annotations

import ctypes
import errno
import json

import pytest
from click.testing import CliRunner

from cloudtaser import probing
from cloudtaser.cli import main


def test_json_report_lists_every_check_with_a_known_status() -> None:
    result = CliRunner().invoke(main, ["doctor", "-o", "json"])
    report = json.loads(result.stdout)
    names = [c["name"] for c in report["checks"]]
    for needed in ("memfd_secret", "bpf-lsm", "btf", "rlimit-memlock", "cap-ipc-lock", "swap",
                   "confidential-computing"):
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
