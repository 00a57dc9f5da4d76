"""The Event rate limiter of the agent (bpf/reporting.EventLimiter), with a fake clock.

The API-server side (one Event per series, count patched) is proved end to end in
tests/e2e/node/test_delivery.py (the chart's agent on the real node).
"""

from __future__ import annotations

from cloudtaser.bpf.reporting import EventLimiter

KEY = ("pod-uid", "environ", "cat")


def test_first_violation_starts_a_series_the_rest_only_count() -> None:
    limiter = EventLimiter(interval=10, idle=600)
    assert limiter.record(KEY, 0.0) is True
    assert [limiter.record(KEY, 0.001 * i) for i in range(1, 200)] == [False] * 199
    assert limiter.count(KEY) == 200


def test_updates_at_most_once_per_interval_with_the_running_count() -> None:
    limiter = EventLimiter(interval=10, idle=600)
    limiter.record(KEY, 0.0, "v1")
    assert limiter.due(5.0) == []  # not created yet: nothing to update
    limiter.created(KEY, "event-1", 0.1)
    for t in range(1, 50):
        limiter.record(KEY, t * 0.1, f"v{t + 1}")
    assert limiter.due(5.0) == []  # inside the interval
    assert limiter.due(10.1) == [("event-1", 50, "v50")]
    assert limiter.due(10.2) == []  # posted; no news
    limiter.record(KEY, 11.0, "v51")
    assert limiter.due(15.0) == []
    assert limiter.due(20.1) == [("event-1", 51, "v51")]


def test_flush_posts_what_is_pending_at_once() -> None:
    limiter = EventLimiter(interval=10, idle=600)
    limiter.record(KEY, 0.0)
    limiter.created(KEY, "e", 0.0)
    limiter.record(KEY, 1.0)
    assert limiter.due(2.0, flush=True) == [("e", 2, None)]
    assert limiter.due(3.0, flush=True) == []


def test_series_are_per_pod_vector_and_offender() -> None:
    limiter = EventLimiter()
    keys = [
        ("a", "environ", "cat"),
        ("a", "mem", "cat"),
        ("a", "environ", "gdb"),
        ("b", "environ", "cat"),
    ]
    assert [limiter.record(k, 0.0) for k in keys] == [True] * 4
    assert [limiter.record(k, 1.0) for k in keys] == [False] * 4


def test_an_idle_series_ends_and_the_next_violation_starts_a_new_event() -> None:
    limiter = EventLimiter(interval=10, idle=60)
    limiter.record(KEY, 0.0)
    limiter.created(KEY, "old", 0.0)
    assert limiter.record(KEY, 59.0) is False
    assert limiter.due(100.0) == [("old", 2, None)]
    assert limiter.due(200.0) == []  # posted and idle: forgotten
    assert limiter.record(KEY, 200.0) is True
    assert limiter.count(KEY) == 1


def test_series_count_is_bounded() -> None:
    limiter = EventLimiter(max_series=3)
    for i in range(10):
        assert limiter.record(("pod", "environ", f"comm{i}"), float(i)) is True
    assert limiter.count(("pod", "environ", "comm9")) == 1
    assert limiter.count(("pod", "environ", "comm0")) == 0  # the oldest were dropped
