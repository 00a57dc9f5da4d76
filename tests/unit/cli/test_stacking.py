"""`stack down` stops only what `stack up` started (no network, no stack binaries needed)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from pathlib import Path

from cloudtaser.testbed import stacking


def _paths(tmp_path: Path) -> stacking.Paths:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sleep = shutil.which("sleep")
    assert sleep
    (bin_dir / "etcd").symlink_to(sleep)  # our "etcd" is sleep(1)
    return stacking.Paths(state=tmp_path / "state", bin=bin_dir)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    return state != "Z"


def test_down_stops_our_process_and_leaves_a_recycled_pid_alone(tmp_path: Path) -> None:
    paths = _paths(tmp_path)
    etcd = next(c for c in stacking.COMPONENTS if c.name == "etcd")
    ours = subprocess.Popen([str(paths.binary("etcd")), "300"], start_new_session=True)
    stranger = subprocess.Popen(["cat"], stdin=subprocess.PIPE)  # another binary
    try:
        paths.pidfile("etcd").parent.mkdir(parents=True)
        paths.pidfile("etcd").write_text(f"{stranger.pid}\n")
        assert stacking.running_pid(paths, etcd) is None
        stacking.down(paths, lambda m: None)
        assert _alive(stranger.pid) and not paths.pidfile("etcd").exists()

        paths.pidfile("etcd").write_text(f"{ours.pid}\n")
        assert stacking.running_pid(paths, etcd) == ours.pid
        stacking.down(paths, lambda m: None)
        ours.wait(timeout=5)
        assert not paths.pidfile("etcd").exists()
    finally:
        stranger.kill()
        stranger.communicate()
        if ours.poll() is None:
            ours.kill()
            ours.wait()


def test_missing_binaries_are_named_with_the_fix(tmp_path: Path) -> None:
    paths = _paths(tmp_path)
    try:
        stacking.check_binaries(paths)
    except stacking.StackError as e:
        assert "kube-apiserver" in str(e) and "scripts/build-stack" in str(e)
    else:
        raise AssertionError("expected StackError")


def test_openbao_health_names_sealed_and_uninitialised() -> None:
    """The bodies OpenBao's /v1/sys/health answers with (e2e: a real sealed server)."""
    reason = stacking.bao_health_reason
    assert reason(200, '{"initialized":true,"sealed":false,"standby":false}') is None
    assert reason(501, '{"initialized":false,"sealed":true,"standby":true}') == "not initialised"
    assert reason(503, '{"initialized":true,"sealed":true,"standby":true}') == "sealed"
    assert reason(200, '{"initialized":true,"sealed":true}') == "sealed"  # ?sealedcode=200
    assert reason(503, "<html>proxy error</html>") == "sealed"
    assert reason(429, '{"initialized":true,"sealed":false,"standby":true}') == "standby"
    assert reason(500, "boom") == "HTTP 500: boom"


def test_down_stops_what_up_started_after_bin_current_moved_on(tmp_path: Path) -> None:
    """A rebuild re-points bin/current (and --prune deletes the old build) while the stack
    runs: `down` still stops the process `up` started, by the executable it recorded."""
    paths = _paths(tmp_path)
    old_build = tmp_path / "old-build"
    old_build.mkdir()
    sleep = shutil.which("sleep")
    assert sleep
    shutil.copy(sleep, old_build / "etcd")
    (paths.bin / "etcd").unlink()
    (paths.bin / "etcd").symlink_to(old_build / "etcd")
    etcd = dataclasses.replace(
        stacking.component("etcd"), argv=lambda p: [str(p.binary("etcd")), "300"]
    )
    pid = stacking._start(paths, etcd)
    try:
        (paths.bin / "etcd").unlink()
        (paths.bin / "etcd").symlink_to(sleep)  # the "new build"
        shutil.rmtree(old_build)  # pruned: /proc/PID/exe now ends in " (deleted)"
        assert stacking.running_pid(paths, etcd) == pid
        stacking.stop(paths, etcd, lambda m: None, timeout=5)
        assert not _alive(pid) and not paths.pidfile("etcd").exists()
    finally:
        if _alive(pid):
            os.kill(pid, 9)
