"""Compile benchmark: full compile of 1k and 10k bindings (+100 policies), incremental update.

Run: .venv/bin/python benchmarks/compile.py [--repeat N]

The synthetic cluster: 100 bindings per namespace, one opted-in pod per binding (selected by
an `app` label), namespaces labelled with one of 20 teams, and 100 EnforcementPolicies that
each select one team's namespaces (a fifth in audit mode, some with a pod selector). Object
parsing is not timed: the operator holds parsed models in its indices.
Targets (issue 2): 10k <= 1 s, incremental <= 5 ms, ratio 10k/1k <= 11.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.figures import add_json_flag, emit  # noqa: E402
from cloudtaser.engine.compiler import (  # noqa: E402
    ClusterState,
    IncrementalCompiler,
    compile_state,
)
from cloudtaser.engine.kube import Namespace, Pod  # noqa: E402
from cloudtaser.engine.resources import EnforcementPolicy, SecretBinding  # noqa: E402
from cloudtaser.gcpause import gc_paused  # noqa: E402

PER_NAMESPACE = 100
TEAMS = 20


def binding(ns: str, i: int, env_prefix: str = "SECRET") -> dict[str, Any]:
    return {
        "apiVersion": "cloudtaser.io/v1alpha1",
        "kind": "SecretBinding",
        "metadata": {"name": f"app-{i}", "namespace": ns},
        "spec": {
            "selector": {"matchLabels": {"app": f"app-{i}"}},
            "vault": {
                "address": "https://bao.example:8200",
                "role": f"app-{i}",
                "tls": {"caFile": "/etc/ca.pem"},
            },
            "secrets": [
                {
                    "path": f"{ns}/app-{i}",
                    "keys": [
                        {"key": "password", "env": f"{env_prefix}_PASSWORD"},
                        {"key": "tls.key", "file": "/etc/app/tls.key"},
                    ],
                }
            ],
            "refreshInterval": "5m",
        },
    }


def cluster(bindings: int) -> ClusterState:
    namespaces = [f"ns-{n}" for n in range(bindings // PER_NAMESPACE)]
    state = ClusterState(
        namespaces=[
            Namespace.model_validate(
                {"metadata": {"name": ns, "labels": {"team": f"t{n % TEAMS}"}}}
            )
            for n, ns in enumerate(namespaces)
        ],
        bindings=[
            SecretBinding.model_validate(binding(ns, i))
            for ns in namespaces
            for i in range(PER_NAMESPACE)
        ],
        pods=[
            Pod.model_validate(
                {
                    "metadata": {
                        "name": f"app-{i}-0",
                        "namespace": ns,
                        "uid": f"{ns}-{i}",
                        "labels": {"app": f"app-{i}", "tier": "backend" if i % 2 else "web"},
                        "annotations": {
                            "cloudtaser.io/inject": "true",
                            "cloudtaser.io/injected": "x",
                        },
                    },
                    "spec": {
                        "nodeName": f"node-{i % 50}",
                        "initContainers": [{"name": "cloudtaser-init", "image": "bundle"}],
                        "containers": [{"name": "app", "image": "app:1", "command": ["/app"]}],
                    },
                }
            )
            for ns in namespaces
            for i in range(PER_NAMESPACE)
        ],
        policies=[
            EnforcementPolicy.model_validate(
                {
                    "apiVersion": "cloudtaser.io/v1alpha1",
                    "kind": "EnforcementPolicy",
                    "metadata": {"name": f"policy-{p}"},
                    "spec": {
                        "mode": "audit" if p % 5 == 0 else "enforce",
                        "namespaceSelector": {"matchLabels": {"team": f"t{p % TEAMS}"}},
                        "podSelector": {"matchLabels": {"tier": "backend"}} if p % 3 == 0 else {},
                        "killOnViolation": p % 7 == 0,
                    },
                }
            )
            for p in range(100)
        ],
    )
    return state


def best(fn: Any, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def one_by_one(state: ClusterState) -> None:
    """The operator's first reconcile: an empty compiler handed every object by a set_*
    call, in its order (namespaces, policies, bindings, pods; each kind sorted by key)."""
    compiler = IncrementalCompiler(ClusterState())
    for namespace in state.namespaces:
        compiler.set_namespace(namespace)
    for policy in state.policies:
        compiler.set_policy(policy)
    for binding in sorted(state.bindings, key=lambda b: (b.metadata.namespace, b.metadata.name)):
        compiler.set_binding(binding)
    for pod in sorted(state.pods, key=lambda p: (p.metadata.namespace, p.metadata.name)):
        compiler.set_pod(pod)
    compiler.plan()


def held_per_binding(count: int) -> float:
    """Bytes per binding that an operator-like compiler keeps live once the parsed bindings
    are gone (tracemalloc: Python's own allocations, not RSS): the part of the operator's
    memory that grows with the cluster (issue 17)."""
    import gc
    import tracemalloc

    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        state = cluster(count)
        compiler = IncrementalCompiler(ClusterState(bindings=state.bindings))
        compiler.plan()
        del state
        gc.collect()
        return (tracemalloc.get_traced_memory()[0] - before) / count
    finally:
        tracemalloc.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (best is kept)")
    add_json_flag(parser)
    args = parser.parse_args()
    small, large = cluster(1_000), cluster(10_000)

    def full_compile(state: ClusterState) -> None:
        with gc_paused():  # as the node agent's flags_by_pod (bpf/cloudtaser/bpf/watching.py)
            compile_state(state)

    t_small = best(lambda: full_compile(small), args.repeat)
    t_large = best(lambda: full_compile(large), args.repeat)

    def first_reconcile(state: ClusterState) -> None:
        with gc_paused():  # as reconciling.Operator.reconcile does
            one_by_one(state)

    t_first = best(lambda: first_reconcile(large), args.repeat)
    t_first_gc = best(lambda: one_by_one(large), 1)

    compiler = IncrementalCompiler(large)
    compiler.plan()
    changes = [
        SecretBinding.model_validate(binding("ns-42", i, env_prefix=f"V{i % 2}"))
        for i in range(200)
    ]
    samples = []
    for change in changes:
        # what the operator does per change: hand it over, then take the whole new Plan
        start = time.perf_counter()
        compiler.set_binding(change)
        compiler.plan()
        samples.append(time.perf_counter() - start)
    incremental_ms = statistics.median(samples) * 1000
    held = held_per_binding(10_000)
    p99_ms = sorted(samples)[int(len(samples) * 0.99) - 1] * 1000
    ratio = t_large / t_small

    rows = [
        ("full compile, 1k bindings + 100 policies", "-", f"{t_small:.3f} s", "-"),
        (
            "full compile, 10k bindings + 100 policies",
            "<= 1 s",
            f"{t_large:.3f} s",
            f"{t_large / 1.0:.2f} of target",
        ),
        (
            "incremental recompile + whole Plan, one binding changed (median of 200)",
            "<= 5 ms",
            f"{incremental_ms:.3f} ms",
            f"{incremental_ms / 5.0:.2f} of target",
        ),
        ("incremental recompile, p99", "-", f"{p99_ms:.3f} ms", "-"),
        ("operator's first reconcile, 10k objects one by one", "-", f"{t_first:.3f} s", "-"),
        (
            "  the same with the garbage collector running",
            "-",
            f"{t_first_gc:.3f} s",
            f"{t_first_gc / t_first:.2f}x slower",
        ),
        ("ratio 10k / 1k", "<= 11", f"{ratio:.2f}", f"{ratio / 11:.2f} of target"),
        (
            "memory the compiler and its Plan hold, 10k bindings (parsed models dropped)",
            "-",
            f"{held * 10_000 / 2**20:.1f} MiB ({held / 1024:.2f} KiB per binding)",
            "-",
        ),
    ]
    emit("compile", rows, args.json)


if __name__ == "__main__":
    main()
