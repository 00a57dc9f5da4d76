"""Wrapper benchmark: what one wrapped start of the Go wrapper costs, against the local OpenBao
over mTLS.

Run: .venv/bin/python benchmarks/wrapper.py [--runs 50] [--json]
Needs the local stack (it runs `cloudtaser stack up`, which is a no-op when it is running), and
root for the per-pod memory figure (a memory cgroup per "pod").

Figures (issue 13):
- size: the Go binary (amd64, arm64; and the interposers next to it). Target <= 10 MiB, goal
  <= 8 MiB.
- start -> exec: wall time from spawning the wrapper to the app's first instruction; the app is
  `date +%s.%N` (~1 ms of its own); the demo binding's compiled config, env delivery only, a
  TokenRequest token: TLS + login + KV read + exec. Target p50 <= 30 ms.
- CPU per start: user + system time of the wrapper and its app over all runs, less the same
  number of `date` runs alone. Target <= 20 ms.
- per-pod memory: a "pod" is a memory cgroup; the init container's step (`wrapper install DIR`
  into a directory on disk, as the disk emptyDir is) and the app container (wrapper -> `sleep`)
  run in it; the figure is its memory usage (and the anon/file/shmem parts) once the app runs,
  less a pod that runs `sleep` alone. Page cache of the copied program (file) is reclaimable;
  anon and shmem are not. Target <= 2 MiB.

The Python wrapper these figures replaced, measured side by side in one run before it was
removed (same machine, 2 cores): frozen bundle 26.2 MiB; start -> exec p50 414 ms; CPU per start
413 ms; per-pod memory 40.9 MiB (26.3 unreclaimable, its copy in a Memory emptyDir) and 54.4
MiB with a refresher; 500 starts at once p99 129 s (benchmarks/load.py).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.figures import add_json_flag, emit, percentile  # noqa: E402
from cloudtaser.engine.plans import CONFIG_ENV, WrapperConfig  # noqa: E402
from cloudtaser.testbed import (  # noqa: E402
    provisioning,
    stacking,
)
from tests.harness import wrapper as go_wrapper  # noqa: E402
from tests.harness.loading import MemoryCgroup  # noqa: E402
from tests.harness.stack import compiled_config  # noqa: E402

MIB = 1024 * 1024
Row = tuple[str, str, str, str]


def tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def env_only(config: WrapperConfig) -> WrapperConfig:
    """The config with its env deliveries only (the interposer's own cost is
    benchmarks/interposer's)."""
    source = config.sources[0]
    secrets = [
        s.model_copy(
            update={
                "keys": [k.model_copy(update={"file": None, "sdk": None}) for k in s.keys if k.env]
            }
        )
        for s in source.secrets
    ]
    return config.model_copy(update={"sources": [source.model_copy(update={"secrets": secrets})]})


def without_files(config: WrapperConfig) -> WrapperConfig:
    """The config less its file deliveries (env and SDK: a refresher keeps the SDK value)."""
    source = config.sources[0]
    secrets = [
        s.model_copy(
            update={"keys": [k.model_copy(update={"file": None}) for k in s.keys if k.env or k.sdk]}
        )
        for s in source.secrets
    ]
    return config.model_copy(update={"sources": [source.model_copy(update={"secrets": secrets})]})


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Starts:
    latencies_ms: list[float]
    cpu_ms: float  # per start, the app's own cost taken out


def starts(config: WrapperConfig, runs: int) -> Starts:
    env = {**os.environ, CONFIG_ENV: config.model_dump_json(exclude_none=True)}
    command = [str(go_wrapper.binary()), "--", "date", "+%s.%N"]
    subprocess.run(command, env=env, capture_output=True, check=True)  # warm the page cache
    samples = []
    cpu = children_cpu()
    for _ in range(runs):
        start = time.time()
        out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
        samples.append((float(out) - start) * 1000)
    wrapped = children_cpu() - cpu
    cpu = children_cpu()
    for _ in range(runs):
        subprocess.run(["date", "+%s.%N"], capture_output=True, check=True)
    alone = children_cpu() - cpu
    return Starts(samples, (wrapped - alone) / runs * 1000)


# --- per-pod memory ------------------------------------------------------------------------------


@dataclass
class PodMemory:
    usage: int
    rss: int
    cache: int
    shmem: int


def _stat(cgroup: MemoryCgroup) -> PodMemory:
    assert cgroup.path is not None
    if cgroup.version == 2:
        usage = int((cgroup.path / "memory.current").read_text())
        names = {"rss": "anon", "cache": "file", "shmem": "shmem"}
    else:
        usage = int((cgroup.path / "memory.usage_in_bytes").read_text())
        names = {"rss": "rss", "cache": "cache", "shmem": "shmem"}
    stat = dict(line.split() for line in (cgroup.path / "memory.stat").read_text().splitlines())
    return PodMemory(usage, *(int(stat.get(names[k], 0)) for k in ("rss", "cache", "shmem")))


@contextlib.contextmanager
def _volume() -> Iterator[Path]:
    """The pod's emptyDir: a directory on disk (/var/tmp, not a tmpfs)."""
    base = Path(tempfile.mkdtemp(prefix="cloudtaser-pod-", dir="/var/tmp"))
    volume = base / "volume"
    volume.mkdir()
    try:
        yield volume
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _in(cgroup: MemoryCgroup, command: list[str]) -> list[str]:
    assert cgroup.path is not None
    return ["sh", "-c", f'echo $$ > {cgroup.path}/cgroup.procs && exec "$@"', "sh", *command]


def pod_memory(wrapped: bool, config: WrapperConfig) -> PodMemory:
    """One pod's memory once its app runs, wrapped or alone."""
    cgroup = MemoryCgroup.create(1 << 30)
    if cgroup.path is None:
        raise RuntimeError(cgroup.reason)
    try:
        with _volume() as volume:
            command = ["sleep", "120"]
            if wrapped:
                subprocess.run(
                    _in(cgroup, [str(go_wrapper.binary()), "install", str(volume)]),
                    check=True,
                    capture_output=True,
                )
                command = [str(volume / "wrapper"), "--", *command]
            env = {
                "PATH": os.environ["PATH"],
                CONFIG_ENV: config.model_dump_json(exclude_none=True),
            }
            app = subprocess.Popen(
                _in(cgroup, command), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
            try:
                deadline = time.monotonic() + 60
                while Path(f"/proc/{app.pid}/comm").read_text().strip() != "sleep":
                    assert time.monotonic() < deadline and app.poll() is None, "the app never ran"
                    time.sleep(0.05)
                time.sleep(2)  # a refresher settles; nothing else runs
                return _stat(cgroup)
            finally:  # everything in the pod gone, before its volume goes
                app.kill()
                app.wait()
                procs = cgroup.path / "cgroup.procs"
                deadline = time.monotonic() + 10
                while (pids := procs.read_text().split()) and time.monotonic() < deadline:
                    for pid in pids:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(int(pid), 9)
                    time.sleep(0.05)
    finally:
        cgroup.remove()


def memory_rows(config: WrapperConfig) -> list[Row]:
    rows: list[Row] = []
    for refresh in (None, 3600):
        configured = config.model_copy(update={"refresh_seconds": refresh})
        base = pod_memory(False, configured)
        pod = pod_memory(True, configured)
        total = (pod.usage - base.usage) / MIB
        unreclaimable = (pod.rss + pod.shmem - base.rss - base.shmem) / MIB
        label = "with a refresher" if refresh else "no refresher"
        rows.append(
            (
                f"per-pod memory, {label} (pod cgroup usage - app alone)",
                "<= 2 MiB",
                f"{total:.1f} MiB: anon+shmem {unreclaimable:+.1f}, page cache "
                f"{(pod.cache - pod.shmem - base.cache + base.shmem) / MIB:+.1f}",
                f"{unreclaimable / 2:.2f} of target (unreclaimable)",
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--no-memory", action="store_true", help="skip the per-pod memory figure")
    add_json_flag(parser)
    args = parser.parse_args()
    subprocess.run(
        [str(Path(sys.executable).parent / "cloudtaser"), "stack", "up"],
        check=True,
        capture_output=True,
    )
    paths = stacking.Paths(state=stacking.default_state_dir(), bin=stacking.default_bin_dir())
    notes: list[str] = []
    built, arm = go_wrapper.directory(), go_wrapper.directory("arm64")
    size = (built / "wrapper").stat().st_size / MIB
    libs = sorted(built.glob("libcloudtaser-*.so"))
    rows: list[Row] = [
        (
            "binary size (amd64 / arm64)",
            "<= 10 MiB (goal 8)",
            f"{size:.1f} / {(arm / 'wrapper').stat().st_size / MIB:.1f} MiB",
            f"{size / 10:.2f} of target",
        ),
        (
            "with the interposers (what install copies)",
            "-",
            f"{tree_size(built) / MIB:.1f} MiB ({len(libs)} interposers)",
            "-",
        ),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        token = Path(tmp) / "token"
        token.write_text(
            provisioning.kubectl(
                paths,
                "create",
                "token",
                provisioning.DEMO_ACCOUNT,
                "-n",
                provisioning.DEMO_NAMESPACE,
                "--audience",
                "openbao",
            )
        )
        full = compiled_config(paths, token)
        s = starts(env_only(full), args.runs)
        p50 = statistics.median(s.latencies_ms)
        rows += [
            (
                f"start -> exec, p50 of {args.runs}",
                "<= 30 ms",
                f"{p50:.1f} ms",
                f"{p50 / 30:.2f} of target",
            ),
            (
                f"start -> exec, p95 of {args.runs}",
                "-",
                f"{percentile(s.latencies_ms, 0.95):.1f} ms",
                "-",
            ),
            (
                "CPU per start (user + system, app's own taken out)",
                "<= 20 ms",
                f"{s.cpu_ms:.1f} ms",
                f"{s.cpu_ms / 20:.2f} of target",
            ),
        ]
        if not args.no_memory and os.geteuid() == 0:
            rows += memory_rows(without_files(full))
        elif not args.no_memory:
            notes.append("per-pod memory: needs root (a memory cgroup per pod)")
    emit("wrapper", rows, args.json, notes)


if __name__ == "__main__":
    main()
