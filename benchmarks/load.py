"""Load benchmark: N wrapper starts at once against the local OpenBao, and the operator's webhook
at a fixed rate with 10k bindings in the API server while the operator's and agent's RSS are
sampled.

Run: .venv/bin/python benchmarks/load.py [--wrappers 500] [--duration 300] [--rate 200]
                                         [--bindings 1000,10000] [--only starts|webhook|agent]
                                         [--json]
Needs the local stack (it runs `cloudtaser stack up`, a no-op when it is running; with
--only agent it only checks `cloudtaser stack status`).
The runs themselves are tests/harness/loading.py's (tests/e2e/test_load.py runs short ones).

Wrapper starts: N real wrappers (the Go binary, tests/harness/wrapper.py, with the demo
binding's compiled config, env + file + SDK delivery, each with its own TokenRequest token) are
spawned behind a FIFO, moved into a memory cgroup of their own (so that running out of memory
kills wrappers, never the shared stack), and released at once by closing the FIFO. Each app is `date +%s.%N`:
start latency = its clock reading minus the release time. Retries are the wrapper's own
"retrying after ..." lines (transient errors, bounded by --deadline); logins are counted by
OpenBao itself (its route metric for the kubernetes auth mount, /v1/sys/metrics); memory is
the cgroup's peak usage. When the node agent can run (root, BPF), one agent serves the
registrations of all N wrappers. (The Python wrapper, measured side by side in one run before it
was removed: p50 125 s, p99 129 s, 479 ms CPU and 24.9 MiB per start; the Go one: p99 8.1 s,
20 ms CPU with the agent's canary, 1.2 MiB.)

Webhook: --bindings SecretBindings (created in parallel in the namespace cloudtaser-load,
deleted afterwards) in the API server; `cloudtaser operator` runs as a follower replica (its
leader-election Lease is held by this benchmark, so it lists, compiles and serves the webhook
but never writes the cluster's shared MutatingWebhookConfiguration or statuses); the same
AdmissionReview (a pod one binding selects) is sent straight to its HTTPS endpoint at --rate
for --duration, over kept-alive connections as the API server does. The operator's RSS and,
when it can run, the node agent's (--node: it lists and compiles the same 10k bindings) are
sampled every second. Targets (issue 8): 0 failures; operator <= 128 MiB, agent <= 64 MiB.

Agent (--only agent; not part of the default run): the webhook run's agent lists the pods of
this host's node, and none of them is in cloudtaser-load, so it never lists those bindings.
This run puts --bindings (0 too) in the namespace of a pod bound to the agent's --node (a
node name no kubelet has) and samples the agent's RSS every second from ready, through its
first relist (tests/harness/loading.py agent_footprint); its high-water mark includes the
start-up (BPF load, first list) before ready. Target (issue 17): <= 64 MiB at 10k bindings.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.figures import add_json_flag, emit, percentile  # noqa: E402
from cloudtaser.testbed import stacking  # noqa: E402
from tests.harness.loading import (  # noqa: E402
    AgentFootprint,
    Starts,
    WebhookLoad,
    agent_footprint,
    webhook_load,
    wrapper_starts,
)

MIB = 1024 * 1024
OPERATOR_TARGET_MIB, AGENT_TARGET_MIB = 128, 64


def starts_rows(s: Starts) -> list[tuple[str, str, str, str]]:
    n = s.count
    ok = len(s.latencies_ms)
    rows = [
        (
            f"wrapper starts at once: failures of {n}",
            "0",
            str(len(s.failures)),
            "ok" if not s.failures else "FAIL",
        )
    ]
    if s.latencies_ms:
        p99 = percentile(s.latencies_ms, 0.99)
        rows += [
            (
                f"start -> app running, p50 of {ok}",
                "-",
                f"{statistics.median(s.latencies_ms):.0f} ms",
                "-",
            ),
            (
                f"start -> app running, p99 of {ok}",
                "<= 10 s",
                f"{p99:.0f} ms",
                f"{p99 / 10_000:.2f} of target",
            ),
            (
                "start -> app running, first / last",
                "-",
                f"{min(s.latencies_ms):.0f} / {max(s.latencies_ms):.0f} ms",
                "-",
            ),
        ]
    rows.append(
        (
            "CPU per wrapper start (user + system, all processes)",
            "<= 20 ms",
            f"{s.cpu_s / n * 1000:.0f} ms ({s.cpu_s:.0f} s on {os.cpu_count()} cores)",
            "-",
        )
    )
    total, worst = sum(s.retries), max(s.retries, default=0)
    rows.append(
        (
            "retries (transient errors; bounded by --deadline)",
            "bounded",
            f"{total} total, max {worst} per wrapper",
            "-",
        )
    )
    if s.logins is not None and s.window_s > 0:
        rows.append(
            (
                "OpenBao logins/s (OpenBao's count / release -> last app start)",
                "-",
                f"{s.logins / s.window_s:.1f}/s ({s.logins} in {s.window_s:.1f} s)",
                "-",
            )
        )
        rows.append(
            (
                "OpenBao logins in its busiest 10 s interval",
                "-",
                f"{s.logins_peak_interval} ({(s.logins_peak_interval or 0) / 10:.1f}/s)",
                "-",
            )
        )
    else:
        rows.append(("OpenBao logins/s", "-", "metrics unavailable", "-"))
    if s.memory_peak is not None:
        rows.append(
            (
                f"peak memory of the {n} wrappers (their cgroup)",
                "-",
                f"{s.memory_peak / MIB:.0f} MiB ({s.memory_peak / MIB / n:.1f} MiB each; "
                f"limit {s.memory_limit / MIB:.0f} MiB, OOM kills {s.oom_kills})",
                "-",
            )
        )
    else:
        rows.append((f"peak memory of the {n} wrappers", "-", s.memory_note, "-"))
    agent = f"{s.registered}/{n} registered" if s.agent == "running" else f"not running: {s.agent}"
    rows.append(("node agent registrations", "-", agent[:120], "-"))
    if s.agent_rss:
        rows.append(
            (
                "agent RSS during the starts, peak",
                f"<= {AGENT_TARGET_MIB} MiB",
                f"{max(s.agent_rss) / MIB:.1f} MiB",
                f"{max(s.agent_rss) / MIB / AGENT_TARGET_MIB:.2f} of target",
            )
        )
    return rows


def webhook_rows(w: WebhookLoad) -> list[tuple[str, str, str, str]]:
    label = f"{w.rate:.0f}/s for {w.duration:.0f} s, {w.bindings} bindings"
    distinct = sorted(set(w.errors))
    rows = [
        (
            f"webhook requests / failures ({label})",
            "0 failures",
            f"{len(w.latencies_ms)} / {len(w.errors)}"
            + (f" ({distinct[0][:80]})" if distinct else ""),
            "ok" if not w.errors else "FAIL",
        ),
    ]
    if w.latencies_ms:
        rows += [
            (
                "webhook HTTPS p50 (operator process)",
                "-",
                f"{statistics.median(w.latencies_ms):.2f} ms",
                "-",
            ),
            (
                "webhook HTTPS p99 (operator process)",
                "-",
                f"{percentile(w.latencies_ms, 0.99):.2f} ms",
                "-",
            ),
            (
                "webhook requests over 100 ms / slowest",
                "-",
                f"{sum(x > 100 for x in w.latencies_ms)} / {max(w.latencies_ms):.0f} ms",
                "-",
            ),
        ]
        if w.slow:  # when the stalls happened: periodic ones point at a periodic task
            stalls: list[list[float]] = []
            for offset, latency in sorted(w.slow):
                if not stalls or offset - stalls[-1][0] > 5:
                    stalls.append([offset, latency])
                else:
                    stalls[-1][1] = max(stalls[-1][1], latency)
            rows.append(
                (
                    "webhook stalls (s into the run: slowest ms)",
                    "-",
                    ", ".join(f"{o:.0f}: {lat:.0f}" for o, lat in stalls[:12]),
                    "-",
                )
            )
    rows.append(
        (
            f"OPA requests per minute during the run ({w.edits} binding edits: a reconcile each)",
            "-",
            f"{w.opa_requests * 60 / w.duration:.0f}",
            "-",
        )
    )
    rows.append(
        (
            "bindings created / operator ready (all compiled)",
            "-",
            f"{w.create_s:.1f} s / {w.ready_s:.1f} s",
            "-",
        )
    )
    if w.operator_rss:
        peak = max(w.operator_rss) / MIB
        rows.append(
            (
                f"operator RSS ({w.bindings} bindings), peak of samples",
                f"<= {OPERATOR_TARGET_MIB} MiB",
                f"{peak:.1f} MiB",
                f"{peak / OPERATOR_TARGET_MIB:.2f} of target",
            )
        )
        rows.append(
            (
                "operator RSS, first / median / last sample",
                "-",
                f"{w.operator_rss[0] / MIB:.1f} / {statistics.median(w.operator_rss) / MIB:.1f} / "
                f"{w.operator_rss[-1] / MIB:.1f} MiB ({len(w.operator_rss)} samples)",
                "-",
            )
        )
    if w.agent_rss:
        peak = max(w.agent_rss) / MIB
        rows.append(
            (
                f"agent RSS (--node, {w.bindings} bindings), peak",
                f"<= {AGENT_TARGET_MIB} MiB",
                f"{peak:.1f} MiB",
                f"{peak / AGENT_TARGET_MIB:.2f} of target",
            )
        )
        rows.append(
            (
                "agent RSS, first / median / last sample",
                "-",
                f"{w.agent_rss[0] / MIB:.1f} / {statistics.median(w.agent_rss) / MIB:.1f} / "
                f"{w.agent_rss[-1] / MIB:.1f} MiB",
                "-",
            )
        )
    else:
        rows.append(
            ("agent RSS", f"<= {AGENT_TARGET_MIB} MiB", f"not running: {w.agent}"[:120], "-")
        )
    return rows


def agent_rows(f: AgentFootprint) -> list[tuple[str, str, str, str]]:
    label = f"agent RSS (--node, {f.bindings} bindings in its pod's namespace)"
    if not f.rss:
        return [(label, f"<= {AGENT_TARGET_MIB} MiB", f"not running: {f.agent}"[:120], "FAIL")]
    peak = max(f.rss) / MIB
    return [
        (
            f"{label}, peak",
            f"<= {AGENT_TARGET_MIB} MiB",
            f"{peak:.1f} MiB",
            f"{peak / AGENT_TARGET_MIB:.2f} of target",
        ),
        (
            "agent RSS, first / last sample; its high-water mark (start-up included)",
            "-",
            f"{f.rss[0] / MIB:.1f} / {f.rss[-1] / MIB:.1f} MiB ({len(f.rss)} samples); "
            + (f"{f.high_water / MIB:.1f} MiB" if f.high_water else "-"),
            "-",
        ),
        (
            "protected pods the agent compiled (its pod: 1 once a binding selects it)",
            "-",
            str(f.protected),
            "-",
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wrappers", type=int, default=500, help="wrappers started at once")
    parser.add_argument(
        "--deadline",
        type=float,
        default=120,
        help="each wrapper's --deadline: how long it retries transient errors",
    )
    parser.add_argument(
        "--memory-limit-mib",
        type=int,
        default=None,
        help="memory limit of the wrappers' cgroup (default: MemAvailable - 4 GiB, at most 16 GiB)",
    )
    parser.add_argument("--duration", type=float, default=300, help="seconds of webhook load")
    parser.add_argument("--rate", type=float, default=200, help="webhook requests per second")
    parser.add_argument(
        "--bindings",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[1_000, 10_000],
        help="SecretBindings in the API server: one webhook run per count (default 1000,10000)",
    )
    parser.add_argument("--no-agent", action="store_true", help="do not start the node agent")
    parser.add_argument("--only", choices=("starts", "webhook", "agent"), default=None)
    add_json_flag(parser)
    args = parser.parse_args()
    exe = str(Path(sys.executable).parent / "cloudtaser")
    subprocess.run(
        [exe, "stack", "status" if args.only == "agent" else "up"], check=True, capture_output=True
    )
    paths = stacking.Paths(state=stacking.default_state_dir(), bin=stacking.default_bin_dir())
    rows: list[tuple[str, str, str, str]] = []
    notes: list[str] = []
    failed = False
    if args.only in (None, "starts"):
        limit = args.memory_limit_mib * MIB if args.memory_limit_mib else None
        starts = wrapper_starts(paths, args.wrappers, args.deadline, not args.no_agent, limit)
        rows += starts_rows(starts)
        notes += starts.failures[:10]
        notes += [
            f"wrapper stderr, {n} x: {line}"
            for line, n in sorted(starts.messages.items(), key=lambda kv: -kv[1])
        ]
        failed |= bool(starts.failures)
    if args.only in (None, "webhook"):
        for count in args.bindings:
            try:
                load = webhook_load(paths, count, args.rate, args.duration, not args.no_agent)
                rows += webhook_rows(load)
                failed |= bool(load.errors)
            except RuntimeError as e:
                rows.append((f"webhook, {count} bindings", "-", f"not run: {e}"[:200], "FAIL"))
                failed = True
    if args.only == "agent":
        for footprint in agent_footprint(paths, args.bindings):
            rows += agent_rows(footprint)
            failed |= not footprint.rss or (footprint.bindings > 0 and footprint.protected != 1)
    emit("load", rows, args.json, notes, failed)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
