"""The attack matrix: a root attacker against an app the real wrapper started.

The app gets the demo secret from the real OpenBao (mTLS, a TokenRequest token) by env, by
file (the interposer) and by SDK, registers with the node agent through the wrapper, keeps the
SDK's secret fd mapped, a copy in ordinary memory, a thread and a child forked after
registration. Each vector runs as a separate root process; the result row says whether the
attacker was killed, how many bytes of the secret it obtained (the whole value, its first 8
bytes for one ptrace word, or 0) and what the agent reported (vector and action).
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cloudtaser.bpf.agent import Violation
from cloudtaser.engine.plans import CONFIG_ENV, ProtectionFlag, WrapperConfig
from cloudtaser.rendering import table
from tests.kernel.conftest import REPO, AgentRun, attack
from tests.kernel.test_bpf_protect import PROCESS_VM_READV, PTRACE, READ_FILE, READ_MEM

# What a default EnforcementPolicy (every protection on) compiles to.
ALL_PROTECTIONS = int(
    ProtectionFlag.ENVIRON | ProtectionFlag.MEM | ProtectionFlag.FDS | ProtectionFlag.PTRACE
    | ProtectionFlag.PIDFD_GETFD | ProtectionFlag.CORE_DUMP
)

# Runs as the app, exec'ed by the wrapper. Prints one line of facts (never the secret).
APP = r"""
import ctypes, mmap, os, threading, time
from cloudtaser.sdk import get_secret
env_value = os.environ["DEMO_PASSWORD"].encode()
kept = open("/etc/demo/password", "rb")  # the interposer's memfd copy, kept open
file_value = kept.read()
sdk_value = get_secret("demo-password")
manifest = [l.split(" ", 2) for l in os.environ["CLOUDTASER_FDS"].split("\n") if l]
fd = next(int(n) for kind, n, name in manifest if kind == "sdk" and name == "demo-password")
held = mmap.mmap(fd, os.fstat(fd).st_size, mmap.MAP_SHARED, mmap.PROT_READ)
copy = ctypes.create_string_buffer(sdk_value)
with open("/proc/self/maps") as maps:
    mapped = next(l.split()[0] for l in maps if "secretmem" in l or "/memfd:" in l)
child = os.fork()
if child == 0:
    time.sleep(300)
    os._exit(0)
t = threading.Thread(target=time.sleep, args=(300,), daemon=True)
t.start()
ok = env_value == file_value == sdk_value == held[:] and len(env_value) >= 8
print(f"pid={os.getpid()} child={child} tid={t.native_id} addr={ctypes.addressof(copy)} "
      f"len={len(sdk_value)} fd={fd} copyfd={kept.fileno()} map={mapped} same={ok}", flush=True)
time.sleep(300)
"""

# Opens argv[1] and maps it (memfd_secret has no read()); an open the kernel refuses prints
# "errno=N" instead.
READ_MAPPED = r"""
import mmap, os, sys
try:
    fd = os.open(sys.argv[1], os.O_RDONLY)
except OSError as e:
    sys.stdout.write(f"errno={e.errno}")
    sys.exit(3)
m = mmap.mmap(fd, os.fstat(fd).st_size, mmap.MAP_SHARED, mmap.PROT_READ)
sys.stdout.buffer.write(m[:])
"""

PIDFD_GETFD_MMAP = r"""
import ctypes, mmap, os, sys
libc = ctypes.CDLL(None, use_errno=True)
pidfd = os.pidfd_open(int(sys.argv[1]))
fd = libc.syscall(438, pidfd, int(sys.argv[2]), 0)
if fd >= 0:
    m = mmap.mmap(fd, os.fstat(fd).st_size, mmap.MAP_SHARED, mmap.PROT_READ)
    sys.stdout.buffer.write(m[:])
"""


@dataclass
class App:
    proc: subprocess.Popen[str]
    secret: str
    info: dict[str, str]

    @property
    def pid(self) -> int:
        return int(self.info["pid"])

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> str:
        """Kill the app and its child; the wrapper's stderr (its log lines)."""
        child = self.info.get("child")
        if child:
            try:
                os.kill(int(child), signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.kill()
        _out, err = self.proc.communicate(timeout=30)
        return err


def start_app(config: WrapperConfig, socket_path: Path, secret: str) -> App:
    """The app, started by the real wrapper (``python -m cloudtaser.wrapper``)."""
    config = config.model_copy(update={
        "agent": config.agent.model_copy(update={"socket": str(socket_path)})})
    env = {**os.environ, CONFIG_ENV: config.model_dump_json(exclude_none=True)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cloudtaser.wrapper", "--deadline", "20", "--",
         sys.executable, "-c", APP],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        _out, err = proc.communicate(timeout=30)
        raise AssertionError(f"the wrapper did not start the app (rc {proc.returncode}): {err}")
    info = dict(kv.split("=", 1) for kv in line.split())
    assert info["same"] == "True", "env, file and SDK deliveries disagree"
    return App(proc, secret, info)


@dataclass
class Outcome:
    returncode: int | None
    output: bytes
    note: str = ""


@dataclass
class Vector:
    name: str
    kind: str | None  # the vector the agent reports (None: nothing to report)
    run: Callable[[App, Path], Outcome]
    target: str = "pid"  # which process of the app is attacked: "pid" or "child"


def _script(code: str, *args: str, cwd: str | None = None) -> Outcome:
    r = attack(code, *args, cwd=cwd)
    return Outcome(r.returncode, r.stdout)


def _symlinked(app: App, tmp: Path) -> Outcome:
    link = tmp / f"environ-link-{app.pid}"
    link.symlink_to(f"/proc/{app.pid}/environ")
    return _script(READ_FILE, str(link))


def _second_procfs(app: App, tmp: Path) -> Outcome:
    mnt = tmp / f"proc2-{app.pid}"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "proc", "proc", str(mnt)], check=True)
    try:
        return _script(READ_FILE, f"{mnt}/{app.pid}/environ")
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def _gcore(app: App, tmp: Path) -> Outcome:
    prefix = tmp / f"gcore-{app.pid}"
    r = subprocess.run(["gcore", "-o", str(prefix), str(app.pid)], capture_output=True,
                       timeout=120, check=False)
    cores = list(tmp.glob(f"gcore-{app.pid}*"))
    data = b"".join(p.read_bytes() for p in cores)
    return Outcome(r.returncode, data, f"{len(cores)} core file(s)")


def _strace(app: App, tmp: Path) -> Outcome:
    try:
        r = subprocess.run(["strace", "-p", str(app.pid), "-e", "trace=none"],
                           capture_output=True, timeout=5, check=False)
        return Outcome(r.returncode, r.stdout + r.stderr)
    except subprocess.TimeoutExpired as e:  # attached and tracing: not killed
        return Outcome(None, (e.stdout or b"") + (e.stderr or b""), "still tracing after 5 s")


def _kill_segv(app: App, tmp: Path) -> Outcome:
    """Last: the app dies. core_pattern points at tmp (the caller sets it). In audit mode an
    earlier PTRACE_ATTACH by a tracer that then exited leaves the app stopped, as it would
    without the agent: the harness (not the attacker) resumes it first."""
    os.kill(app.pid, signal.SIGCONT)
    r = subprocess.run(["kill", "-SEGV", str(app.pid)], capture_output=True, timeout=20, check=False)
    try:
        app.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    time.sleep(0.5)
    cores = list(tmp.glob(f"core.{app.pid}*"))
    data = b"".join(p.read_bytes() for p in cores)
    return Outcome(r.returncode, data, f"app exit {app.proc.returncode}, {len(cores)} core file(s)")


VECTORS: list[Vector] = [
    Vector("environ: /proc/PID/environ", "environ",
           lambda a, t: _script(READ_FILE, f"/proc/{a.pid}/environ")),
    Vector("environ: via a symlink", "environ", _symlinked),
    Vector("environ: relative, cwd /proc/PID", "environ",
           lambda a, t: _script(READ_FILE, "environ", cwd=f"/proc/{a.pid}")),
    Vector("environ: second procfs mount", "environ", _second_procfs),
    Vector("environ: /proc/PID/task/TID/environ", "environ",
           lambda a, t: _script(READ_FILE, f"/proc/{a.pid}/task/{a.info['tid']}/environ")),
    Vector("mem: /proc/PID/mem", "mem",
           lambda a, t: _script(READ_MEM, f"/proc/{a.pid}/mem", a.info["addr"], a.info["len"])),
    Vector("fd: /proc/PID/fd/N (memfd_secret) + mmap", "fd",
           lambda a, t: _script(READ_MAPPED, f"/proc/{a.pid}/fd/{a.info['fd']}")),
    Vector("fd: /proc/PID/map_files/RANGE (memfd_secret) + mmap", "fd",
           lambda a, t: _script(READ_MAPPED, f"/proc/{a.pid}/map_files/{a.info['map']}")),
    Vector("fd: /proc/PID/fd/N (interposer's memfd copy) + mmap", "fd",
           lambda a, t: _script(READ_MAPPED, f"/proc/{a.pid}/fd/{a.info['copyfd']}")),
    Vector("ptrace: PTRACE_ATTACH + PEEKDATA", "ptrace",
           lambda a, t: _script(PTRACE, str(a.pid), "16", a.info["addr"])),
    Vector("ptrace: PTRACE_SEIZE + PEEKDATA", "ptrace",
           lambda a, t: _script(PTRACE, str(a.pid), str(0x4206), a.info["addr"])),
    Vector("ptrace: strace -p", "ptrace", _strace),
    Vector("process_vm_readv", "process_vm_readv",
           lambda a, t: _script(PROCESS_VM_READV, str(a.pid), a.info["addr"], a.info["len"])),
    Vector("pidfd_getfd (secret fd) + mmap", "pidfd_getfd",
           lambda a, t: _script(PIDFD_GETFD_MMAP, str(a.pid), a.info["fd"])),
    Vector("core dump: gcore (gdb, ptrace)", "ptrace", _gcore),
    Vector("child forked after registration: environ", "environ",
           lambda a, t: _script(READ_FILE, f"/proc/{a.info['child']}/environ"), target="child"),
    Vector("core dump: kill -SEGV", "coredump", _kill_segv),  # last: the app dies
]


@dataclass
class Row:
    vector: str
    mode: str
    attacker: str
    obtained: int
    reported: str
    ok: bool
    note: str = ""


RESULTS: list[Row] = []


def obtained(secret: str, output: bytes) -> int:
    """Bytes of the secret in ``output``: all of it, one ptrace word of it, or none."""
    value = secret.encode()
    if value in output:
        return len(value)
    return 8 if value[:8] in output else 0


def refused(outcome: Outcome) -> str | None:
    """The errno name when the kernel refused the attacker's open (READ_MAPPED's exit 3)."""
    if outcome.returncode == 3 and outcome.output.startswith(b"errno="):
        return errno.errorcode.get(int(outcome.output[6:]), outcome.output[6:].decode())
    return None


def describe(outcome: Outcome) -> str:
    rc = outcome.returncode
    if rc is None:
        return "running"
    if rc < 0:
        return f"killed ({signal.Signals(-rc).name})"
    why = refused(outcome)
    return f"open refused ({why})" if why else f"exit {rc}"


def wait_report(run: AgentRun, since: int, pred: Callable[[Violation], bool],
                timeout: float = 3.0) -> Violation | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for v in run.violations[since:]:
            if pred(v):
                return v
        time.sleep(0.02)
    return None


def attempt(vector: Vector, app: App, run: AgentRun, tmp: Path, mode: str) -> Row:
    since = len(run.violations)
    outcome = vector.run(app, tmp)
    target = app.pid if vector.target == "pid" else int(app.info["child"])
    got = obtained(app.secret, outcome.output)
    v = wait_report(run, since, lambda v: v.target_tgid == target and v.kind == vector.kind)
    reported = f"{v.kind}/{v.action}" if v else "-"
    note = outcome.note
    if refused(outcome):  # memfd_secret: no reopen through /proc, for anyone (nothing to report)
        ok = got == 0 and v is None
        note = note or "the kernel refuses it, registered or not"
    elif mode == "enforce":
        ok = got == 0 and v is not None and v.action == "killed"
    else:
        ok = v is not None and v.action == "audited"
    row = Row(vector.name, mode, describe(outcome), got, reported, ok, note)
    RESULTS.append(row)
    return row


@dataclass
class FileScan:
    scanned: int = 0
    skipped: int = 0
    hits: list[str] = field(default_factory=list)
    older: list[str] = field(default_factory=list)


def grep_files(roots: list[Path], secret: str, since: float = 0.0,
               max_bytes: int = 64 << 20) -> FileScan:
    """Every regular file under ``roots`` (symlinks not followed) searched for the secret;
    ``hits`` are files modified at ``since`` or later, ``older`` the rest (written before the
    run, so not by what it ran: e.g. another test's log)."""
    value = secret.encode()
    scan = FileScan()
    for root in roots:
        for dirpath, _dirs, files in os.walk(root, followlinks=False):
            for name in files:
                path = Path(dirpath, name)
                try:
                    st = path.lstat()
                    if not path.is_file() or path.is_symlink() or st.st_size > max_bytes:
                        scan.skipped += 1
                        continue
                    data = path.read_bytes()
                except OSError:
                    scan.skipped += 1
                    continue
                scan.scanned += 1
                if value in data or value.hex().encode() in data:
                    (scan.hits if st.st_mtime >= since else scan.older).append(str(path))
    return scan


def render(rows: list[Row]) -> str:
    return table(
        ["vector", "mode", "attacker", "secret bytes obtained", "reported", "result", "note"],
        [(r.vector, r.mode, r.attacker, r.obtained, r.reported, "ok" if r.ok else "FAIL", r.note)
         for r in rows])
