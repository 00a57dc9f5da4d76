"""Violation records and how the agent logs, counts and forwards them (violations.py)."""

from __future__ import annotations

import os

from cloudtaser.bpf import layouts, violations


def violation(**fields: object) -> violations.Violation:
    base: dict[str, object] = dict(
        kind="mem",
        action="killed",
        target_tgid=10,
        opener_tgid=20,
        opener_pid=21,
        opener_uid=0,
        opener_comm="cat",
        flags=3,
    )
    base.update(fields)
    return violations.Violation(**base)  # type: ignore[arg-type]


def test_unknown_values_are_named_not_dropped() -> None:
    ev = layouts.Event(kind=99, action=7, via=42, note=layouts.Note.NODE_WIDE)
    v = violations.Violation.from_record(bytes(ev)[:-8])  # a shorter record is padded
    assert (v.kind, v.action, v.via) == ("unknown-99", "unknown-7", "unknown-42")
    assert not v.canary


def test_violations_are_counted_and_forwarded_canaries_are_not() -> None:
    seen: list[violations.Violation] = []
    metrics = violations.Metrics()
    log = violations.ViolationLog(metrics, seen.append)
    log.report(violation(note=int(layouts.Note.CANARY)))
    log.report(violation(kind="agent", action="audited", via="agent_op", opener_tgid=os.getpid()))
    assert seen == [] and "cloudtaser_violations_total{" not in metrics.text()
    log.report(violation())
    log.report(violation(kind="agent", action="audited", via="signal"))  # the holder exited
    assert [v.kind for v in seen] == ["mem", "agent"]
    assert 'cloudtaser_violations_total{action="killed",vector="mem"} 1.0' in metrics.text()


def test_a_ring_buffer_record_is_reported() -> None:
    seen: list[violations.Violation] = []
    log = violations.ViolationLog(violations.Metrics(), seen.append)
    log.record(
        bytes(
            layouts.Event(
                kind=layouts.EventKind.PTRACE, action=layouts.Action.DENIED, via=layouts.Via.SYSCALL
            )
        )
    )
    assert [(v.kind, v.action, v.via) for v in seen] == [("ptrace", "denied", "syscall")]
