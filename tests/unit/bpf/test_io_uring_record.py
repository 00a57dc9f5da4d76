"""lift_io_uring_restriction: what `cloudtaser stack uninstall` does once the agent's pins are
gone (the sysctl file is a stand-in here; the agent's own raising and lowering of the real one
is tested in tests/kernel)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloudtaser.bpf import agent


def test_the_recorded_value_is_put_back_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sysctl = tmp_path / "io_uring_disabled"
    sysctl.write_text("2\n")
    monkeypatch.setattr(agent, "IO_URING_SYSCTL", sysctl)
    agent.io_uring_record(tmp_path).write_text("1\n")
    assert agent.lift_io_uring_restriction(tmp_path) == "1"
    assert sysctl.read_text() == "1\n" and not agent.io_uring_record(tmp_path).exists()
    sysctl.write_text("2\n")  # raised by someone else since: not ours to lower
    assert agent.lift_io_uring_restriction(tmp_path) is None
    assert sysctl.read_text() == "2\n"
