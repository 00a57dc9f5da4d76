"""The io_uring restriction (bpf/cloudtaser/bpf/iouring.py) against a stand-in sysctl file:
lift_io_uring_restriction, what `cloudtaser stack uninstall` does once the agent's pins are
gone, and an agent's raising and lowering (the real sysctl is tested in tests/kernel)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloudtaser.bpf import iouring
from cloudtaser.bpf.programs import LSM, TRACEPOINT


@pytest.fixture
def sysctl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "io_uring_disabled"
    path.write_text("0\n")
    monkeypatch.setattr(iouring, "IO_URING_SYSCTL", path)
    return path


def test_the_recorded_value_is_put_back_once(tmp_path: Path, sysctl: Path) -> None:
    sysctl.write_text("2\n")
    iouring.io_uring_record(tmp_path).write_text("1\n")
    assert iouring.lift_io_uring_restriction(tmp_path) == "1"
    assert sysctl.read_text() == "1\n" and not iouring.io_uring_record(tmp_path).exists()
    sysctl.write_text("2\n")  # raised by someone else since: not ours to lower
    assert iouring.lift_io_uring_restriction(tmp_path) is None
    assert sysctl.read_text() == "2\n"


def test_restrict_records_and_relax_restores(tmp_path: Path, sysctl: Path) -> None:
    alive: list[int] = [42]
    r = iouring.IoUringRestriction("auto", tmp_path, lambda: alive[0] if alive else None)
    r.restrict(LSM)  # auto: the LSM backend denies each request itself
    assert sysctl.read_text() == "0\n" and not r.raised
    r.restrict(TRACEPOINT)
    assert sysctl.read_text() == "2\n" and r.raised
    assert iouring.io_uring_record(tmp_path).read_text() == "0\n"
    r.relax()  # pid 42 still protected: stays
    assert sysctl.read_text() == "2\n" and iouring.io_uring_record(tmp_path).exists()
    alive.clear()
    r.relax()
    assert sysctl.read_text() == "0\n" and not iouring.io_uring_record(tmp_path).exists()


def test_an_earlier_record_is_the_value_to_restore(tmp_path: Path, sysctl: Path) -> None:
    """A restarted agent finds the sysctl at 2 and its predecessor's record: it keeps that."""
    sysctl.write_text("2\n")
    iouring.io_uring_record(tmp_path).write_text("1\n")
    r = iouring.IoUringRestriction("restrict", tmp_path, lambda: None)
    r.restrict(LSM)  # restrict: whatever the backend
    assert r.raised and iouring.io_uring_record(tmp_path).read_text() == "1\n"
    r.relax()
    assert sysctl.read_text() == "1\n"


def test_allow_never_touches_it(tmp_path: Path, sysctl: Path) -> None:
    r = iouring.IoUringRestriction("allow", tmp_path, lambda: None)
    r.restrict(TRACEPOINT)
    assert sysctl.read_text() == "0\n" and not iouring.io_uring_record(tmp_path).exists()
