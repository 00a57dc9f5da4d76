"""Leader election among the operator's replicas, on the coordination.k8s.io Lease
``cloudtaser-operator`` in the operator's namespace.

Every replica watches, compiles and serves the webhook; only the leader writes statuses,
Events and the webhook configuration. Losing the lease stops the writes at once and re-enters
the election.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

log = logging.getLogger("cloudtaser.operator")
LEASE = "cloudtaser-operator"


def elect(
    lead: Callable[[bool], None], loop: asyncio.AbstractEventLoop, namespace: str, identity: str
) -> None:
    """Run the election forever (in a daemon thread); ``lead`` (called on ``loop``) is told
    whenever this replica starts or stops leading."""
    from kubernetes.leaderelection import electionconfig, leaderelection
    from kubernetes.leaderelection.resourcelock.leaselock import LeaseLock

    logging.getLogger("leaderelection").setLevel(logging.WARNING)  # a line per retry otherwise
    while True:
        config = electionconfig.Config(
            LeaseLock(LEASE, namespace, identity),
            lease_duration=15,
            renew_deadline=10,
            retry_period=2,
            onstarted_leading=lambda: loop.call_soon_threadsafe(lead, True),
            onstopped_leading=lambda: loop.call_soon_threadsafe(lead, False),
        )
        try:
            leaderelection.LeaderElection(config).run()  # returns when the lease is lost
        except Exception as e:  # the API server away: a follower until it is back
            loop.call_soon_threadsafe(lead, False)
            log.warning("leader election: %s; retrying", type(e).__name__)
        time.sleep(2)
