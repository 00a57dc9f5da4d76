"""The operator's leader election (operator/cloudtaser/operator/election.py) on an in-memory Lease
with a clock of the test's own: who takes the lease and when, renewal, stepping down at the
renew deadline, and what is logged. The algorithm needs no real API server for this (its
requests are the API client's, tested in tests/unit/test_kubeapi.py); two real replicas
electing on the real one: tests/e2e/test_operator_ha.py."""

from __future__ import annotations

import copy
import datetime
import logging
from typing import Any

import pytest

from cloudtaser.errors import TemporaryError
from cloudtaser.kubeapi import api_error
from cloudtaser.operator.election import (
    LEASE_DURATION,
    RENEW_DEADLINE,
    RETRY_PERIOD,
    Election,
)

NS = "cloudtaser-system"
LEASES = f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases"
NAMED = f"{LEASES}/cloudtaser-operator"


class Clock:
    """Monotonic seconds and a wall clock that only move when a test (or a sleep) says."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def wall(self) -> datetime.datetime:
        return datetime.datetime(2026, 12, 4, tzinfo=datetime.UTC) + datetime.timedelta(
            seconds=self.now
        )


class Leases:
    """The API server's Lease ``cloudtaser-operator`` (None: absent): get, create and a
    replace that fails with 409 when the resourceVersion sent is not the stored one.
    ``failing``: the error every request raises meanwhile."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.version = 0
        self.failing: Exception | None = None
        self.calls: list[tuple[str, str, float]] = []  # method, path, timeout

    def _check(self, method: str, path: str, timeout: float) -> None:
        self.calls.append((method, path, timeout))
        if self.failing is not None:
            raise self.failing

    def _store(self, body: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        self.lease = copy.deepcopy(body)
        self.lease["metadata"]["resourceVersion"] = str(self.version)
        return copy.deepcopy(self.lease)

    def get(self, path: str, timeout: float) -> dict[str, Any]:
        self._check("GET", path, timeout)
        assert path == NAMED
        if self.lease is None:
            raise api_error(404, "Not Found", "{}")
        return copy.deepcopy(self.lease)

    def post(self, path: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        self._check("POST", path, timeout)
        assert path == LEASES
        if self.lease is not None:
            raise api_error(409, "Conflict", "{}")
        return self._store(body)

    def put(self, path: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        self._check("PUT", path, timeout)
        assert path == NAMED and self.lease is not None
        if body["metadata"].get("resourceVersion") != self.lease["metadata"]["resourceVersion"]:
            raise api_error(409, "Conflict", "{}")
        return self._store(body)

    def holder(self) -> str | None:
        assert self.lease is not None
        found: str | None = self.lease["spec"].get("holderIdentity")
        return found


def candidate(leases: Leases, clock: Clock, identity: str) -> Election:
    return Election(leases, NS, identity, clock=clock, sleep=clock.sleep, wall=clock.wall)


def test_the_first_candidate_creates_the_lease_and_leads() -> None:
    leases, clock = Leases(), Clock()
    assert candidate(leases, clock, "a").attempt(clock() + 10)
    assert leases.lease is not None
    spec = leases.lease["spec"]
    assert spec == {
        "holderIdentity": "a",
        "leaseDurationSeconds": 15,
        "acquireTime": "2026-12-04T00:16:40.000000Z",
        "renewTime": "2026-12-04T00:16:40.000000Z",
        "leaseTransitions": 0,
    }
    assert leases.lease["metadata"]["name"] == "cloudtaser-operator"


def test_a_held_lease_is_taken_only_once_it_went_unrenewed_for_the_lease_duration() -> None:
    leases, clock = Leases(), Clock()
    leader, follower = candidate(leases, clock, "a"), candidate(leases, clock, "b")
    assert leader.attempt(clock() + 10)
    for _ in range(10):  # renewed every RETRY_PERIOD: the follower never takes it
        clock.sleep(RETRY_PERIOD)
        assert leader.attempt(clock() + 10)
        assert not follower.attempt(clock() + 10)
    # The leader stops renewing: the follower waits LEASE_DURATION from when it last saw
    # the lease change (its own clock), then takes it.
    seen = clock()
    while not follower.attempt(clock() + 10):
        clock.sleep(RETRY_PERIOD)
    assert clock() - seen >= LEASE_DURATION
    assert clock() - seen < LEASE_DURATION + RETRY_PERIOD
    assert leases.lease is not None
    spec = leases.lease["spec"]
    assert (spec["holderIdentity"], spec["leaseTransitions"]) == ("b", 1)
    assert spec["acquireTime"] == spec["renewTime"]  # a new holder's own acquisition


def test_renewing_keeps_the_acquire_time_and_writes_conditionally() -> None:
    leases, clock = Leases(), Clock()
    leader = candidate(leases, clock, "a")
    assert leader.attempt(clock() + 10)
    assert leases.lease is not None
    acquired = leases.lease["spec"]["acquireTime"]
    clock.sleep(RETRY_PERIOD)
    assert leader.attempt(clock() + 10)
    spec = leases.lease["spec"]
    assert spec["acquireTime"] == acquired and spec["renewTime"] != acquired
    assert spec["leaseTransitions"] == 0
    assert [method for method, _, _ in leases.calls] == ["GET", "POST", "GET", "PUT"]


def test_of_two_candidates_racing_for_a_free_lease_one_wins() -> None:
    leases, clock = Leases(), Clock()
    a, b = candidate(leases, clock, "a"), candidate(leases, clock, "b")
    leases.lease = {
        "metadata": {"name": "cloudtaser-operator", "resourceVersion": "7"},
        "spec": {},  # released: no holder, free to take at once
    }
    read_by_b = leases.get(NAMED, 1)
    assert a.attempt(clock() + 10)  # a takes it; b's write is based on what it read before
    leases.get = lambda path, timeout: copy.deepcopy(read_by_b)  # type: ignore[method-assign]
    assert not b.attempt(clock() + 10)  # 409: the resourceVersion moved on
    assert leases.holder() == "a"


def test_the_leader_steps_down_when_renewals_fail_for_the_renew_deadline() -> None:
    leases, clock = Leases(), Clock()
    leader = candidate(leases, clock, "a")
    told: list[bool] = []

    def fail_later(seconds: float) -> None:
        clock.sleep(seconds)
        if clock() >= 1000 + 3 * RETRY_PERIOD:
            leases.failing = api_error(503, "Service Unavailable", "{}")

    leader.sleep = fail_later
    leader.term(told.append)
    last_renewal = 1000 + 2 * RETRY_PERIOD
    assert told == [True, False]
    # Stepped down RENEW_DEADLINE after the first failed renewal, well before another
    # replica may take the lease (LEASE_DURATION after it last saw it change).
    assert clock() - (last_renewal + RETRY_PERIOD) == RENEW_DEADLINE
    assert clock() < last_renewal + LEASE_DURATION


def test_failures_shorter_than_the_renew_deadline_keep_the_lead() -> None:
    leases, clock = Leases(), Clock()
    leader = candidate(leases, clock, "a")
    assert leader.attempt(clock() + 10)
    outage = (1000 + 4.0, 1000 + 4.0 + RENEW_DEADLINE - 2 * RETRY_PERIOD)
    rounds = 0

    def flaky(seconds: float) -> None:
        nonlocal rounds
        clock.sleep(seconds)
        rounds += 1
        failing = outage[0] <= clock() < outage[1]
        leases.failing = (
            TemporaryError("API server unreachable: ProtocolError") if failing else None
        )
        if rounds > 20:
            raise SystemExit  # out of keep(): it would renew forever

    leader.sleep = flaky
    with pytest.raises(SystemExit):
        leader.keep()
    assert leases.holder() == "a" and leases.failing is None


def test_the_lease_taken_by_another_ends_the_term_by_the_renew_deadline() -> None:
    leases, clock = Leases(), Clock()
    leader = candidate(leases, clock, "a")
    assert leader.attempt(clock() + 10)
    assert leases.lease is not None
    leases.lease["spec"]["holderIdentity"] = "b"  # b took it while a was stopped (SIGSTOP)
    started = clock()
    leader.keep()
    assert clock() - started == RETRY_PERIOD + RENEW_DEADLINE
    assert leases.holder() == "b"


def test_only_an_api_server_that_does_not_answer_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """As before: a line per try while the API server cannot be reached, nothing for an HTTP
    error (a 409 is the protocol), and no line per renewal."""
    leases, clock = Leases(), Clock()
    election = candidate(leases, clock, "a")
    with caplog.at_level(logging.INFO, logger="cloudtaser.operator"):
        assert election.attempt(clock() + 10)
        assert election.attempt(clock() + 10)
        leases.failing = api_error(409, "Conflict", "{}")
        assert not election.attempt(clock() + 10)
        leases.failing = TemporaryError("API server unreachable: NewConnectionError")
        assert not election.attempt(clock() + 10)
    assert [r.getMessage() for r in caplog.records] == [
        "leader election: API server unreachable: NewConnectionError; retrying"
    ]


def test_a_leader_s_requests_time_out_at_its_renew_deadline() -> None:
    leases, clock = Leases(), Clock()
    election = candidate(leases, clock, "a")
    assert election.attempt(clock() + 10)
    assert election.attempt(clock() + 1.5)
    assert [round(t, 3) for _, _, t in leases.calls] == [10, 10, 1.5, 1.5]


def test_a_bug_ends_the_term_and_says_so_in_one_line(caplog: pytest.LogCaptureFixture) -> None:
    leases, clock = Leases(), Clock()
    leases.failing = RuntimeError("a bug")
    told: list[bool] = []
    with caplog.at_level(logging.INFO, logger="cloudtaser.operator"):
        candidate(leases, clock, "a").term(told.append)
    assert told == [False]  # as before: told it does not lead, though it never did
    assert [r.getMessage() for r in caplog.records] == ["leader election: RuntimeError; retrying"]
