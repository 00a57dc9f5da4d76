"""The BPF LSM backend on a kernel where it loads: the kernel tests and the attack matrix,
run in a guest.

scripts/run-guest-tests boots Debian's stock kernel (bookworm, 6.1) with lsm=...,bpf in qemu
(KVM where /dev/kvm is hardware KVM, else TCG) from the cached root filesystem
scripts/build-guest makes, shares this repository and the venv into it, and runs the kernel
tests there with CLOUDTASER_EXPECT_BACKEND=lsm: every agent the tests start must have chosen
the LSM backend, and every vector must end in EPERM with the offender alive (conftest
.assert_blocked), or pass through reported in audit mode.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.guest

REPO = Path(__file__).resolve().parents[2]
# Every vector of issue 6 in enforce and audit mode, plus fork inheritance and unregistration.
MUST_PASS = (
    "test_bpf_protect.py::test_attacker_is_stopped_and_reads_nothing[environ]",
    "test_bpf_protect.py::test_attacker_is_stopped_and_reads_nothing[environ-relative]",
    "test_bpf_protect.py::test_attacker_is_stopped_and_reads_nothing[environ-symlink]",
    "test_bpf_protect.py::test_attacker_is_stopped_and_reads_nothing[task-environ]",
    "test_bpf_protect.py::test_attacker_is_stopped_and_reads_nothing[mem]",
    "test_bpf_protect.py::test_attacker_is_stopped_and_reads_nothing[process_vm_readv]",
    "test_bpf_protect.py::test_attacker_is_stopped_and_reads_nothing[process_vm_writev]",
    "test_bpf_protect.py::test_attacker_is_stopped_and_reads_nothing[ptrace-attach]",
    "test_bpf_protect.py::test_attacker_is_stopped_and_reads_nothing[ptrace-seize]",
    "test_bpf_protect.py::test_attacker_is_stopped_and_reads_nothing[pidfd_getfd]",
    "test_bpf_protect.py::test_audit_mode_reports_without_killing",
    "test_bpf_protect.py::test_audit_mode_lets_ptrace_through[ptrace-attach]",
    "test_bpf_protect.py::test_child_forked_after_registration_is_protected",
    "test_bpf_protect.py::test_entry_removed_when_the_process_exits",
    "test_bpf_protect.py::test_restart_keeps_protection",
    "test_bpf_protect.py::test_backend_choice_is_probed_and_logged",
    "test_bpf_fds.py::test_fd_opener_is_stopped_and_reads_nothing[fd-early-memfd]",
    "test_bpf_fds.py::test_fd_opener_is_stopped_and_reads_nothing[map_files-late-memfd]",
    "test_bpf_fds.py::test_fd_audit_mode_reports_without_killing",
    "test_bpf_allowed.py::test_allowed_executable_reads_and_others_are_stopped",
    "test_bpf_allowed.py::test_allowed_accessor_is_per_pod",
    "test_bpf_allowed.py::test_violation_names_the_offenders_executable",
    "test_attack_matrix.py::test_matrix[dynamic-enforce]",
    "test_attack_matrix.py::test_matrix[dynamic-audit]",
    "test_attack_matrix.py::test_matrix[static-enforce]",
    "test_attack_matrix.py::test_matrix[static-audit]",
    "test_attack_matrix.py::test_ps_and_top_survive_on_a_node_protecting_a_dynamic_app",
    "test_attack_matrix.py::test_ps_is_stopped_where_the_environment_holds_a_value",
)


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (builds the guest's root filesystem with mmdebstrap)"
    for tool, package in (("qemu-system-x86_64", "qemu-system-x86"), ("mmdebstrap", "mmdebstrap")):
        if shutil.which(tool) is None:
            return f"{tool} not installed (Debian package {package}; scripts/system-deps)"
    return None


def test_kernel_tests_pass_on_the_lsm_backend_in_a_guest() -> None:
    reason = _missing()
    if reason:
        pytest.skip(reason)
    r = subprocess.run(
        [
            str(REPO / "scripts/run-guest-tests"),
            "tests/kernel",
            "tests/attacks",
            "-m",
            "kernel and not e2e",
            "-v",
        ],
        capture_output=True,
        text=True,
        timeout=3000,
        env={**os.environ, "CLOUDTASER_GUEST_TIMEOUT": "2700"},
    )
    out = r.stdout
    print(out[-20000:])  # shown with -s or on failure: the guest's pytest output
    assert r.returncode == 0, (
        f"guest pytest exit status {r.returncode}:\n{out[-4000:]}\n{r.stderr[-2000:]}"
    )
    assert "LSMs lockdown,capability,landlock,yama,apparmor,bpf" in out
    summary = out.strip().splitlines()[-1]
    assert re.search(r"\d+ passed", summary) and "failed" not in summary, summary
    passed = set(re.findall(r"tests/(?:kernel|attacks)/(\S+) PASSED", out))
    missing = [t for t in MUST_PASS if t not in passed]
    assert not missing, f"not run or not passed in the guest: {missing}"
