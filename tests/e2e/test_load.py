"""The short version of benchmarks/load.py (its runs: tests/harness/loading.py) against the real
stack: wrappers started at once all get their secrets, and the operator's webhook answers every
AdmissionReview of a fixed-rate run with bindings in the API server. Failures are asserted,
never timings (those are figures of the benchmark)."""

from __future__ import annotations

import pytest

from cloudtaser.testbed import stacking
from tests.harness.loading import webhook_load, wrapper_starts

pytestmark = pytest.mark.e2e


def test_wrappers_started_at_once_all_get_their_secrets(stack: stacking.Paths) -> None:
    starts = wrapper_starts(stack, 20, deadline=60)
    assert starts.failures == [], starts.failures
    assert len(starts.latencies_ms) == 20
    assert max(starts.retries) <= 10, starts.messages  # bounded by the deadline's backoff
    assert starts.oom_kills == 0
    # One message per wrapper says it fetched; nothing else but the agent's line.
    assert (
        starts.messages.get("cloudtaser-wrapper: N secret(s) fetched in N ms; starting date") == 20
    )


def test_webhook_under_load_answers_every_review(stack: stacking.Paths) -> None:
    result = webhook_load(stack, bindings=100, rate=200, duration=10)
    assert result.errors == [], sorted(set(result.errors))[:5]
    assert len(result.latencies_ms) == 2000
    assert result.operator_rss, "the operator's RSS was never sampled"
