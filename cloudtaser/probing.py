"""Probes of this node's kernel and limits, for ``cloudtaser doctor``.

Each probe does the real thing where it can (memfd_secret is created, sized, mapped, written
and read back) and says what its result means for the protection a pod gets on this node.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import platform
import resource
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

SYS_MEMFD_SECRET = 447  # x86_64 and arm64
CAP_IPC_LOCK = 14
CAP_SYSLOG = 34
SECURITYFS = Path("/sys/kernel/security")
RECOMMENDED_MEMLOCK = 8 * 1024 * 1024
TRACEPOINT_MEANING = (
    "offenders are killed (SIGKILL) after the fact rather than denied, which "
    "leaves races; policies with requireBackend: lsm do not schedule here"
)


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok | warn | fail
    detail: str
    meaning: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def probe_memfd_secret() -> Check:
    name = "memfd_secret"
    fd = _libc().syscall(SYS_MEMFD_SECRET, 0)
    if fd < 0:
        err = ctypes.get_errno()
        hint = {
            errno.ENOSYS: "kernel lacks memfd_secret (CONFIG_SECRETMEM) or it is disabled "
            "(secretmem.enable=0)",
            errno.EPERM: "blocked by seccomp or an LSM",
        }.get(err, os.strerror(err))
        return Check(
            name,
            "fail",
            hint,
            "wrappers fall back to a sealed memfd (readable by root via /proc/PID/mem unless "
            "the agent blocks it), or refuse where requireSecretMem is set",
        )
    try:
        os.ftruncate(fd, mmap.PAGESIZE)
        region = mmap.mmap(fd, mmap.PAGESIZE, flags=mmap.MAP_SHARED)
        try:
            probe = os.urandom(16)
            region[:16] = probe
            same = region[:16] == probe
            region[:16] = bytes(16)
        finally:
            region.close()
    except OSError as e:
        return Check(
            name,
            "fail",
            f"created, but sizing or mapping failed: {e.strerror}",
            "raise RLIMIT_MEMLOCK or grant CAP_IPC_LOCK; secrets cannot be stored",
        )
    finally:
        os.close(fd)
    if not same:
        return Check(name, "fail", "mapped page did not read back", "kernel bug; do not deploy")
    return Check(
        name,
        "ok",
        "created, mapped and read back one page",
        "secret pages are removed from the kernel's direct map",
    )


def _mount_if_missing(probe: Path, fstype: str, target: str) -> None:
    """As root, mount a kernel pseudo-filesystem the agent's DaemonSet would mount too."""
    if not probe.exists() and os.geteuid() == 0:
        subprocess.run(["mount", "-t", fstype, fstype, target], check=False, capture_output=True)


def _lsm_list() -> tuple[list[str] | None, str]:
    lsm = SECURITYFS / "lsm"
    _mount_if_missing(lsm, "securityfs", str(SECURITYFS))
    try:
        return lsm.read_text().strip().split(","), ""
    except OSError as e:
        return None, e.strerror or str(e)


def probe_bpf_lsm() -> Check:
    lsms, error = _lsm_list()
    if lsms is None:
        return Check(
            "bpf-lsm",
            "warn",
            f"cannot read {SECURITYFS}/lsm: {error}",
            "run as root so securityfs can be mounted",
        )
    active = ",".join(lsms)
    if "bpf" in lsms:
        return Check(
            "bpf-lsm",
            "ok",
            f"active LSMs: {active}",
            "the agent can deny accesses with EPERM if its LSM programs load "
            "(the agent probes that at start)",
        )
    return Check(
        "bpf-lsm",
        "warn",
        f"bpf not among active LSMs: {active}",
        "the agent uses syscall tracepoints and stops offenders by SIGKILL; "
        "boot with lsm=...,bpf to deny instead",
    )


def probe_agent_backend() -> Check:
    """The backend the node agent would choose here: its LSM programs are test-loaded and
    attached (unpinned, with empty maps, detached at once), as the agent does at start."""
    from cloudtaser.bpf import programs
    from cloudtaser.bpf.agent import default_object
    from cloudtaser.errors import PermanentError

    name = "agent-backend"
    _lsm_list()  # mounts securityfs when missing (root)
    listed, detail = programs.bpf_lsm_listed()
    if not listed:
        return Check(name, "warn", f"tracepoint: {detail}", TRACEPOINT_MEANING)
    if os.geteuid() != 0:
        return Check(
            name,
            "warn",
            f"not tested: {detail}, but loading BPF needs root",
            "run doctor as root to see whether the LSM programs load",
        )
    try:
        env = os.environ.get("CLOUDTASER_BPF_OBJECT")
        loaded, reason = programs.load_backend(Path(env) if env else default_object(), pin_dir=None)
    except PermanentError as e:
        return Check(name, "warn", f"not tested: {e}", "the agent probes again at start")
    backend = loaded.backend
    loaded.close()
    if backend == programs.LSM:
        return Check(
            name,
            "ok",
            f"lsm: {reason}",
            "an offending call fails with EPERM and the offender lives",
        )
    return Check(name, "warn", f"tracepoint: {reason}", TRACEPOINT_MEANING)


def probe_btf() -> Check:
    btf = Path("/sys/kernel/btf/vmlinux")
    if btf.exists():
        return Check("btf", "ok", f"{btf} present", "CO-RE BPF programs relocate on this kernel")
    return Check(
        "btf",
        "fail",
        f"{btf} missing",
        "CO-RE programs cannot load: no kernel enforcement on this node",
    )


def probe_memlock() -> Check:
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)

    def fmt(v: int) -> str:
        return "unlimited" if v == resource.RLIM_INFINITY else f"{v // 1024} KiB"

    detail = f"soft {fmt(soft)}, hard {fmt(hard)}"
    if soft == resource.RLIM_INFINITY or soft >= RECOMMENDED_MEMLOCK:
        return Check("rlimit-memlock", "ok", detail, "room for secret pages (charged here)")
    return Check(
        "rlimit-memlock",
        "warn",
        detail,
        "memfd_secret pages count against this limit; without CAP_IPC_LOCK secrets "
        f"above {fmt(soft)} fail with EAGAIN",
    )


def _capabilities() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def probe_ipc_lock() -> Check:
    if _capabilities() & (1 << CAP_IPC_LOCK):
        return Check(
            "cap-ipc-lock", "ok", "CAP_IPC_LOCK effective", "mlock is not bounded by RLIMIT_MEMLOCK"
        )
    return Check(
        "cap-ipc-lock",
        "warn",
        "CAP_IPC_LOCK not effective for this process",
        "the injector adds it to wrapped containers; non-root containers rely on "
        "RLIMIT_MEMLOCK instead",
    )


def probe_swap(swaps: Path = Path("/proc/swaps")) -> Check:
    lines = swaps.read_text().splitlines()[1:]
    if not lines:
        return Check("swap", "ok", "no swap", "no memory of any process reaches a swap device")
    devices = ", ".join(line.split()[0] for line in lines)
    return Check(
        "swap",
        "warn",
        f"swap on {devices}",
        "memfd_secret pages are never swapped; a protected process's environment, "
        "heap and memfd-copy pages can reach the swap device, where root reads them "
        "offline and no agent guards them: use encrypted swap or none",
    )


def probe_confidential() -> Check:
    flags = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = line
            break
    found = []
    if "sev_snp" in flags.split() or Path("/dev/sev-guest").exists():
        found.append("AMD SEV-SNP")
    if "tdx_guest" in flags.split() or Path("/dev/tdx_guest").exists():
        found.append("Intel TDX")
    if Path("/dev/nsm").exists():  # the Nitro Security Module device of a Nitro enclave
        found.append("AWS Nitro Enclaves")
    if found:
        return Check(
            "confidential-computing",
            "ok",
            ", ".join(found),
            "memory is encrypted against the host and hypervisor",
        )
    return Check(
        "confidential-computing",
        "warn",
        "no SEV-SNP, TDX or Nitro guest found",
        "the host or hypervisor can read this VM's memory; policies with "
        "requireConfidentialNode will not schedule here",
    )


def probe_tracepoints() -> Check:
    _mount_if_missing(Path("/sys/kernel/tracing/events"), "tracefs", "/sys/kernel/tracing")
    for root in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing"):
        if Path(root, "events", "syscalls").is_dir():
            return Check(
                "syscall-tracepoints",
                "ok",
                f"{root}/events/syscalls",
                "the tracepoint backend can attach",
            )
    return Check(
        "syscall-tracepoints",
        "warn",
        "tracefs syscall events not visible",
        "mount tracefs (the agent's DaemonSet does) or the fallback backend cannot attach",
    )


def probe_kallsyms() -> Check:
    try:
        with open("/proc/kallsyms") as f:
            first = f.readline().split()
    except OSError as e:
        return Check("kallsyms", "fail", f"unreadable: {e.strerror}", "the agent cannot start")
    if first and int(first[0], 16) != 0:
        return Check(
            "kallsyms",
            "ok",
            "kernel symbol addresses visible",
            "the agent can resolve procfs file operations",
        )
    return Check(
        "kallsyms",
        "warn",
        "addresses read as zero (no CAP_SYSLOG here)",
        "the agent needs CAP_SYSLOG; it refuses to start without it",
    )


IO_URING_SETTINGS = {
    "0": "io_uring is open to every process",
    "1": "io_uring only for members of kernel.io_uring_group and CAP_SYS_ADMIN",
    "2": "io_uring is disabled for every process",
}


def probe_io_uring(sysctl: Path = Path("/proc/sys/kernel/io_uring_disabled")) -> Check:
    """Informational: the agent checks io_uring's work itself; the sysctl is the operator's
    further choice, not a precondition."""
    meaning = (
        "the tracepoint backend checks io_uring requests through io_uring's own "
        "tracepoints (the LSM backend's hooks see them like syscalls); "
        "sysctl kernel.io_uring_disabled=2 is a further, node-wide restriction an "
        "operator may choose"
    )
    try:
        value = sysctl.read_text().strip()
    except FileNotFoundError:
        return Check(
            "io_uring",
            "ok",
            "no kernel.io_uring_disabled (kernels before 6.6): io_uring is open to every process",
            meaning,
        )
    setting = IO_URING_SETTINGS.get(value, "an unknown setting")
    return Check("io_uring", "ok", f"kernel.io_uring_disabled={value}: {setting}", meaning)


KCORE_NOTE = (
    "/proc/kcore, whose direct map holds every process's pages but memfd_secret's "
    "(their addresses from /proc/PID/pagemap)"
)


def probe_lockdown(lockdown: Path = SECURITYFS / "lockdown") -> Check:
    """The kernel lockdown LSM: what node root can still do to the kernel, and through it to
    every process's memory, which no agent can stop."""
    name = "lockdown"
    none = (
        "node root can read any process's memory through the kernel (a kernel module, "
        f"kexec, {KCORE_NOTE}), which no agent can stop"
    )
    if lockdown.is_relative_to(SECURITYFS):
        _mount_if_missing(lockdown, "securityfs", str(SECURITYFS))
    try:
        text = lockdown.read_text()
    except OSError as e:
        return Check(
            name,
            "warn",
            f"cannot read {lockdown}: {e.strerror} (no lockdown LSM?)",
            f"as with lockdown none: {none}",
        )
    active = next((w[1:-1] for w in text.split() if w.startswith("[")), None)
    if active == "none":
        return Check(
            name,
            "warn",
            "lockdown none",
            f"{none}; boot with lockdown=integrity or confidentiality",
        )
    if active == "integrity":
        return Check(
            name,
            "warn",
            "lockdown integrity",
            "root cannot change the running kernel (/dev/mem, kexec, unsigned modules) "
            f"but can still read its memory: {KCORE_NOTE}; only confidentiality closes "
            "that",
        )
    if active == "confidentiality":
        return Check(
            name,
            "ok",
            "lockdown confidentiality",
            "root can neither change nor read kernel memory (/dev/mem, kexec, unsigned "
            "modules, /proc/kcore, perf, kprobes); BPF programs lose "
            "bpf_probe_read_kernel, which the agent's programs use: see agent-backend",
        )
    return Check(
        name,
        "warn",
        f"unexpected contents of {lockdown}: {text.strip()[:60]}",
        f"treat as lockdown none: {none}",
    )


def probe_environ(which: Callable[[str], str | None] = shutil.which) -> Check:
    """Why `ps` and monitoring agents keep working, and when they do not (issue 12, point 6)."""
    ps = which("ps") or "/usr/bin/ps"
    return Check(
        "environ",
        "ok",
        "a dynamic app's environment holds no value: the interposer delivers env values in "
        "heap memory (registration exec_environ: clean), so ps, top and monitoring agents "
        "read /proc/PID/environ and keep working",
        "environments that hold values (a static app with env delivery, any child after an "
        "execve) are protected: in enforce mode, reading one kills the reader on the tracepoint "
        "backend (EPERM on the LSM backend); exempt a named tool with allowedAccessors, e.g. "
        f"[{{executable: {ps}}}]",
    )


PROBES: list[Callable[[], Check]] = [
    probe_memfd_secret,
    probe_bpf_lsm,
    probe_agent_backend,
    probe_btf,
    probe_memlock,
    probe_ipc_lock,
    probe_swap,
    probe_confidential,
    probe_tracepoints,
    probe_kallsyms,
    probe_io_uring,
    probe_lockdown,
    probe_environ,
]


def run_probes() -> list[Check]:
    checks = []
    for probe in PROBES:
        try:
            checks.append(probe())
        except OSError as e:  # an unexpected kernel answer is a finding, not a crash
            checks.append(
                Check(
                    probe.__name__.removeprefix("probe_"),
                    "fail",
                    f"probe failed: {e}",
                    "investigate this node",
                )
            )
    return checks


def kernel() -> str:
    return platform.release()
