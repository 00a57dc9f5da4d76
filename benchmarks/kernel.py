"""Kernel benchmark: what the node agent costs processes it does NOT protect.

Run (root): .venv/bin/python benchmarks/kernel.py [--rounds 5] [--iterations 100000] [--object O]

Builds kernel_loop.c (next to this file) and times, in that C loop, open()/read()/close() of
/etc/hostname and of /proc/self/status, and pread()/write() on an fd held (ext4, tmpfs,
/dev/null: the read-path checks), with the agent running and nothing protected on the node
(its syscall programs detached: the target), with the agent protecting another process (they
are attached: what every process on such a node pays), and without the agent, in
interleaved rounds (the loop's CPU time, best of --rounds kept per side: other tenants of the
machine only ever add time). The agent runs as its own process (`python -m cloudtaser.bpf.agent`) with its maps and
links pinned in a temporary bpffs directory, unpinned (detached) between rounds. Also: the
agent's RSS once ready, its load+attach time (its own log line) and its start-to-ready time,
and the fd scan a registration runs (bpf/cloudtaser/bpf/scanning.py) over this machine's /proc, and again
with 200 extra processes holding 64 fds each.
A floor row times the same loops with only a no-op program on sys_exit_openat: what the
syscall-tracepoint mechanism itself costs (the perf-event path of syscall tracepoints, and the
slow syscall entry/exit every task takes once one is enabled), whatever the program does.
Targets (issue 6): ratio <= 1.02, agent RSS <= 64 MiB.
Another agent's programs attached during the run (a concurrent test's pins under
/sys/fs/bpf/cloudtaser*) would count as "without": the run says so and marks the ratios.

LSM backend: .venv/bin/python benchmarks/kernel.py --guest [--rounds 4] [--iterations 40000]
boots the BPF LSM guest once (scripts/run-guest-tests --run; the loop is built static on the
host and copied in) and runs the same rounds there with the agent on `--backend lsm`: without
it, nothing protected, another process protected (no floor row, no fd scan). Here the guest is
emulated (TCG): absolute times mean nothing, only the ratios of one guest run count, and the
output says so. The guest's CPU-time clock ticks at HZ and runs on while a busy host
deschedules the vCPU, so there each loop is timed in 100 chunks on CLOCK_MONOTONIC and the
fastest chunk kept (--chunks), 3 s after each change (--settle); each round's raw figures go
to stderr and each ratio is also given as the median of the rounds' own ratios.
TCG figures, three runs of `--guest --rounds 4 --iterations 40000` (busy 2-core host,
indicative): nothing protected hostname 1.20/1.08/1.11, status 1.04/0.92/1.00, pread ext4
1.49/1.46/1.42, pread tmpfs 1.70/1.61/1.54, write /dev/null 2.38/2.68/2.40; another process
protected 1.17/1.21/1.12, 1.05/1.14/1.05, 1.51/1.51/1.51, 1.76/1.72/1.72, 2.52/2.71/2.69.
The LSM programs (file_open, file_permission, mmap_file...) stay attached while nothing is
protected (only HOT_PROGRAMS are detached), so every read and write on such a node runs
file_permission's program: far above the 1.02 target.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))  # run as a script: `benchmarks` importable

from benchmarks.figures import add_json_flag, emit  # noqa: E402
from cloudtaser.bpf import scanning  # noqa: E402
from cloudtaser.bpf.programs import ensure_bpffs, load, unpin  # noqa: E402

RATIO_TARGET = 1.02
RSS_TARGET_MIB = 64.0


def build(tmp: Path, static: bool = False) -> Path:
    """kernel_loop.c compiled into tmp (static: for the guest, which has no compiler)."""
    out = tmp / "kernel_loop"
    subprocess.run(
        [
            "gcc",
            "-O2",
            "-Wall",
            "-Wextra",
            "-Werror",
            *(["-static"] if static else []),
            "-o",
            str(out),
            str(HERE / "kernel_loop.c"),
        ],
        check=True,
    )
    return out


NOOP = """
#define SEC(name) __attribute__((section(name), used))
char LICENSE[] SEC("license") = "GPL";
SEC("tracepoint/syscalls/sys_exit_openat")
int noop(void *ctx) { return 0; }
"""


def build_noop(tmp: Path) -> Path:
    src, out = tmp / "noop.bpf.c", tmp / "noop.bpf.o"
    src.write_text(NOOP)
    subprocess.run(["clang", "-O2", "-target", "bpf", "-c", str(src), "-o", str(out)], check=True)
    return out


def loop(program: Path, mode: str, iterations: int, chunks: int = 1) -> float:
    """Mean ns per iteration (of the fastest of `chunks` chunks: kernel_loop.c)."""
    out = subprocess.run(
        [str(program), mode, str(iterations), str(chunks)],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    return float(out.stdout)


# A process that registers with the agent and waits: something protected on the node.
PROTECTED = """
import sys, time
from cloudtaser.bpf.protocol import register
register(sys.argv[1])
print("registered", flush=True)
time.sleep(3600)
"""


class AgentProcess:
    """The agent as a separate process, ready once it printed its socket."""

    def protect_one(self) -> subprocess.Popen[str]:
        """A process registered with this agent (the caller kills it)."""
        proc = subprocess.Popen(
            [sys.executable, "-c", PROTECTED, str(self.socket)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "registered":
            proc.kill()
            raise SystemExit("the protected process did not register")
        return proc

    def __init__(self, tmp: Path, obj: Path, backend: str = "auto") -> None:
        self.socket = tmp / "agent.sock"
        self.pin_dir = Path(f"/sys/fs/bpf/cloudtaser-bench-{uuid.uuid4().hex[:8]}")
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cloudtaser.bpf.agent",
                "--socket",
                str(self.socket),
                "--object",
                str(obj),
                "--pin-dir",
                str(self.pin_dir),
                "--backend",
                backend,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        line = self.proc.stdout.readline()
        if not line.startswith("ready:"):
            raise SystemExit(f"agent did not start: {self.proc.stderr.read()[-500:]}")
        self.ready_seconds = time.monotonic() - t0
        self.load_seconds = float("nan")
        self.backend = "?"
        while True:  # the agent logs its load time and backend before printing "ready"
            err = self.proc.stderr.readline()
            m = re.search(r"loaded \d+ programs .* in ([0-9.]+) s \(backend (\w+)", err)
            if m:
                self.load_seconds = float(m.group(1))
                self.backend = m.group(2)
                break
            if not err:
                break

    def rss_mib(self) -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        kib = next(
            int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")
        )
        return kib / 1024

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream:
                stream.close()
        unpin(self.pin_dir)  # links detach: "without" from here on


def other_agents(own: set[Path]) -> set[Path]:
    """Pin directories of other agents with attached links (they make "without" not clean)."""
    return {p.parent.parent for p in Path("/sys/fs/bpf").glob("cloudtaser*/links/*")} - own


def scan_ms(repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        scanning.find_holders(os.getpid())
        best = min(best, time.perf_counter() - t0)
    return best * 1000


def fd_count() -> int:
    total = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                total += len(os.listdir(f"/proc/{entry.name}/fd"))
            except OSError:
                pass
    return total


def scan_figures() -> list[tuple[str, str, str, str]]:
    procs_now = sum(1 for e in os.scandir("/proc") if e.name.isdigit())
    rows = [
        (
            f"registration fd scan, this machine ({procs_now} processes, {fd_count()} fds)",
            "-",
            f"{scan_ms():.1f} ms",
            "-",
        )
    ]
    holders = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import os, sys, time\n"
                "fds = [os.open('/etc/hostname', os.O_RDONLY) for _ in range(64)]\n"
                "print('ok', flush=True); time.sleep(300)",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(200)
    ]
    try:
        for p in holders:
            assert p.stdout is not None and p.stdout.readline() == "ok\n"
        procs = sum(1 for e in os.scandir("/proc") if e.name.isdigit())
        rows.append(
            (
                f"registration fd scan, {procs} processes, {fd_count()} fds",
                "-",
                f"{scan_ms():.1f} ms",
                "-",
            )
        )
    finally:
        for p in holders:
            p.kill()
            p.wait()
            if p.stdout:
                p.stdout.close()
    return rows


MODES = (
    ("hostname", "open/read/close /etc/hostname"),
    ("status", "open/read/close /proc/self/status"),
    ("pread-ext4", "pread 64 B of a /var/tmp file (ext4)"),
    ("pread-tmpfs", "pread 64 B of a /dev/shm file (tmpfs)"),
    ("write-null", "write 64 B to /dev/null"),
)
# Where the guest finds what scripts/run-guest-tests copied in (--copy) and the BPF object.
GUEST_RESULTS = Path("/results")
TCG_NOTE = (
    "TCG figures: the guest is emulated (qemu TCG, no KVM here), so its absolute times are "
    "meaningless; the ratios, taken in one guest run, are what counts"
)


def iterations(base: int) -> dict[str, int]:
    return {
        "hostname": base,
        "status": max(base // 4, 1000),
        "pread-ext4": base * 4,
        "pread-tmpfs": base * 4,
        "write-null": base * 4,
    }


def measure(
    args: argparse.Namespace, program: Path, obj: Path, noop: Path | None
) -> tuple[list[tuple[str, str, str, str]], list[str]]:
    """Interleaved rounds of without / with the agent (nothing protected, another process
    protected) / the no-op floor (when noop is given); best of rounds per side."""
    modes = iterations(args.iterations)
    inf = float("inf")
    without: dict[str, float] = {m: inf for m in modes}
    # each round's with/without ratios (its sides adjacent in time), for their median
    per_round: dict[str, list[tuple[float, float]]] = {m: [] for m in modes}
    with_agent: dict[str, float] = {m: inf for m in modes}
    with_protected: dict[str, float] = {m: inf for m in modes}
    with_noop: dict[str, float] = {m: inf for m in modes}
    rss: list[float] = []
    loads: list[float] = []
    foreign: set[Path] = set()
    readies: list[float] = []
    backends: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="cloudtaser-bench-") as tmp_name:
        tmp = Path(tmp_name)
        for mode, n in modes.items():  # warm-up (page cache, CPU frequency)
            loop(program, mode, n // 10, args.chunks)
        for round_no in range(args.rounds):
            foreign |= other_agents(set())
            here: dict[str, list[float]] = {m: [] for m in modes}
            time.sleep(args.settle)
            for mode, n in modes.items():
                here[mode].append(loop(program, mode, n, args.chunks))
            agent = AgentProcess(tmp, obj, args.backend)
            try:
                backends.add(agent.backend)
                time.sleep(args.settle)
                for mode, n in modes.items():
                    here[mode].append(loop(program, mode, n, args.chunks))
                protected = agent.protect_one()
                try:
                    time.sleep(args.settle)
                    for mode, n in modes.items():
                        here[mode].append(loop(program, mode, n, args.chunks))
                finally:
                    protected.kill()
                    protected.wait()
                rss.append(agent.rss_mib())
                loads.append(agent.load_seconds)
                readies.append(agent.ready_seconds)
            finally:
                agent.stop()
            for mode, (off, idle, busy) in here.items():
                without[mode] = min(without[mode], off)
                with_agent[mode] = min(with_agent[mode], idle)
                with_protected[mode] = min(with_protected[mode], busy)
                per_round[mode].append((idle / off, busy / off))
            print(
                f"round {round_no + 1}: "
                + ", ".join(f"{m} {o:.0f}/{i:.0f}/{b:.0f} ns" for m, (o, i, b) in here.items()),
                file=sys.stderr,
                flush=True,
            )
            if noop is None:
                continue
            loaded = load(noop, pin_dir=None)
            try:
                for mode, n in modes.items():
                    with_noop[mode] = min(with_noop[mode], loop(program, mode, n, args.chunks))
            finally:
                loaded.close()
    mark = "?" if foreign else ""
    backend = "/".join(sorted(backends))
    rows: list[tuple[str, str, str, str]] = []
    for mode, label in MODES:
        ratio = with_agent[mode] / without[mode]
        idle_median = statistics.median(r[0] for r in per_round[mode])
        busy_median = statistics.median(r[1] for r in per_round[mode])
        rows.append((f"{label}, without agent", "-", f"{without[mode] / 1000:.3f} us", "-"))
        rows.append(
            (
                f"{label}, with agent ({backend}), nothing protected on the node (with/without)",
                f"<= {RATIO_TARGET}",
                f"{with_agent[mode] / 1000:.3f} us ({ratio:.3f}{mark}; "
                f"rounds' median {idle_median:.3f})",
                f"{(ratio - 1) / (RATIO_TARGET - 1):.2f} of target overhead",
            )
        )
        busy = with_protected[mode] / without[mode]
        rows.append(
            (
                f"{label}, with agent ({backend}), another process protected (with/without)",
                "-",
                f"{with_protected[mode] / 1000:.3f} us ({busy:.3f}{mark}; "
                f"rounds' median {busy_median:.3f})",
                "-",
            )
        )
        if noop is not None:
            floor = with_noop[mode] / without[mode]
            rows.append(
                (
                    f"{label}, floor: no-op sys_exit_openat program",
                    "-",
                    f"{with_noop[mode] / 1000:.3f} us ({floor:.3f})",
                    "-",
                )
            )
    peak = max(rss)
    rows.append(
        (
            "agent RSS once ready (max of rounds)",
            f"<= {RSS_TARGET_MIB:.0f} MiB",
            f"{peak:.1f} MiB",
            f"{peak / RSS_TARGET_MIB:.2f} of target",
        )
    )
    rows.append(("agent load+attach+pin (its log, best)", "-", f"{min(loads):.3f} s", "-"))
    rows.append(
        ("agent start to ready, incl. Python start (best)", "-", f"{min(readies):.3f} s", "-")
    )
    notes = []
    if foreign:
        notes.append(
            f"? not a clean 'without': other agents had programs attached during the "
            f"run ({', '.join(sorted(map(str, foreign)))})"
        )
    return rows, notes


def in_guest(args: argparse.Namespace) -> None:
    """The guest's half of --guest: the loop and the object are the ones the host copied in."""
    rows, notes = measure(
        args,
        GUEST_RESULTS / "kernel_loop",
        Path(os.environ.get("CLOUDTASER_BPF_OBJECT") or GUEST_RESULTS / "protect.bpf.o"),
        None,
    )
    emit("kernel", rows, args.json, [TCG_NOTE, *notes])


def guest(args: argparse.Namespace) -> None:
    """Boot the guest (scripts/run-guest-tests --run) and run this benchmark there."""
    with tempfile.TemporaryDirectory(prefix="cloudtaser-bench-") as tmp_name:
        program = build(Path(tmp_name), static=True)
        command = [
            str(REPO / "scripts" / "run-guest-tests"),
            "--copy",
            str(program),
            "--run",
            "python",
            "benchmarks/kernel.py",
            "--in-guest",
            "--json",
            "--rounds",
            str(args.rounds),
            "--iterations",
            str(args.iterations),
            "--backend",
            args.backend,
            "--settle",
            str(args.settle),
            "--chunks",
            str(args.chunks),
        ]
        # stderr (the script's progress) goes through; stdout is the guest's output
        r = subprocess.run(command, stdout=subprocess.PIPE, text=True, timeout=7200)
    lines = r.stdout.splitlines()
    found = [line for line in lines if line.startswith('{"benchmark"')]
    for line in lines:  # the guest's progress (rounds), kept out of --json's stdout
        if not line.startswith('{"benchmark"'):
            print(line, file=sys.stderr)
    if r.returncode != 0 or not found:
        emit(
            "kernel",
            [("guest run", "-", f"failed (exit status {r.returncode})", "-")],
            args.json,
            [],
            failed=True,
        )
        raise SystemExit(1)
    result = json.loads(found[-1])
    guest_line = next((line for line in lines if line.startswith("guest: kernel")), "")
    rows = [
        (f"{row['figure']} [guest, TCG]", row["target"], row["measured"], row["ratio"])
        for row in result["rows"]
    ]
    emit("kernel", rows, args.json, [*result["notes"], guest_line.removeprefix("guest: ")])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (best kept)")
    parser.add_argument(
        "--iterations",
        type=int,
        default=100_000,
        help="loop iterations per /etc/hostname run (/proc/self/status: a quarter)",
    )
    parser.add_argument(
        "--object",
        type=Path,
        default=None,
        help="protect.bpf.o to measure (default: scripts/build-bpf's)",
    )
    parser.add_argument(
        "--backend",
        choices=("auto", "lsm", "tracepoint"),
        default=None,
        help="the agent's --backend (default: auto; with --guest: lsm)",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=None,
        help="seconds to wait after each change (agent started, process protected, agent "
        "stopped) before timing (default 0.2; with --guest: 3)",
    )
    parser.add_argument(
        "--chunks",
        type=int,
        default=None,
        help="time each loop in this many chunks and keep the fastest (default 1; with "
        "--guest: 100, against the TCG guest's clock running on while the host is busy)",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--guest",
        action="store_true",
        help="measure in the BPF LSM guest (scripts/run-guest-tests; TCG here): one boot, "
        "the same interleaved rounds, no floor row, no fd scan",
    )
    where.add_argument("--in-guest", action="store_true", help=argparse.SUPPRESS)
    add_json_flag(parser)
    args = parser.parse_args()
    in_a_guest = args.guest or args.in_guest
    if args.backend is None:
        args.backend = "lsm" if in_a_guest else "auto"
    if args.chunks is None:
        args.chunks = 100 if in_a_guest else 1
    if args.settle is None:
        args.settle = 3.0 if in_a_guest else 0.2
    if args.guest:
        guest(args)
        return
    if os.geteuid() != 0:
        raise SystemExit("benchmarks/kernel.py needs root (it loads the agent's BPF programs)")
    ensure_bpffs()
    if args.in_guest:
        in_guest(args)
        return
    obj = args.object or Path(
        subprocess.run(
            [str(REPO / "scripts" / "build-bpf")], capture_output=True, text=True, check=True
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    with tempfile.TemporaryDirectory(prefix="cloudtaser-bench-") as tmp_name:
        tmp = Path(tmp_name)
        rows, notes = measure(args, build(tmp), obj, build_noop(tmp))
    rows.extend(scan_figures())
    emit("kernel", rows, args.json, notes)


if __name__ == "__main__":
    main()
