"""Polling for eventual conditions in e2e tests (the API server, the operator, OPA)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_for(
    check: Callable[[], Any],
    timeout: float = 30,
    what: str = "condition",
    tolerate: tuple[type[BaseException], ...] = (Exception,),
) -> Any:
    """The first truthy result of ``check``; exceptions of ``tolerate`` count as not yet."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except tolerate as e:  # e.g. the object does not exist yet
            last = e
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}; last: {last}")
