"""Registration with the node agent over its unix socket.

Protocol (version 1; the agent side is the bpf agent's): the wrapper connects and sends one
JSON line ``{"op": "register", "version": 1}``; the agent takes the caller's PID from
SO_PEERCRED — never from the message — so a process can register only itself, and answers one
JSON line ``{"ok": true, "backend": "lsm" | "tracepoint"}`` or ``{"ok": false, "error": "..."}``.
The PID stays the same across the wrapper's exec, so the app is protected from its first
instruction.
"""

from __future__ import annotations

import errno
import json
import socket
import time
from dataclasses import dataclass

import tenacity

from cloudtaser.errors import PermanentError

TIMEOUT = 30.0  # a node starting hundreds of pods at once keeps its agent busy for seconds


class AgentUnavailable(PermanentError):
    """No agent answered at the socket (absent, or not ready)."""


class AgentRefused(PermanentError):
    """The agent answered and refused the registration."""


@dataclass(frozen=True)
class Registration:
    backend: str


def _busy(error: BaseException) -> bool:
    """The agent's accept queue is full (a burst of pods starting): EAGAIN on a unix-socket
    connect. Worth retrying; an absent agent (ENOENT, ECONNREFUSED) is not."""
    return isinstance(error, OSError) and error.errno in (errno.EAGAIN, errno.EWOULDBLOCK)


def _exchange(path: str, deadline: float) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        sock.connect(path)
        sock.sendall(json.dumps({"op": "register", "version": 1}).encode() + b"\n")
        reply: bytes = sock.makefile("rb").readline(4096)
        return reply


def register(path: str, timeout: float = TIMEOUT) -> Registration:
    """Register this process; ``timeout`` bounds the whole exchange, retries included (a busy
    agent is retried with jittered backoff until then)."""
    deadline = time.monotonic() + timeout
    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(_busy),
        wait=tenacity.wait_random_exponential(multiplier=0.02, max=1.0),
        stop=tenacity.stop_before_delay(timeout),
        reraise=True,
    )
    try:
        reply = retrying(_exchange, path, deadline)
    except OSError as e:
        raise AgentUnavailable(f"node agent not reachable at {path}: {e.strerror or e}") from None
    try:
        answer = json.loads(reply)
    except ValueError:
        raise AgentRefused(f"node agent at {path} sent an unreadable reply") from None
    if not isinstance(answer, dict) or answer.get("ok") is not True:
        error = answer.get("error", "no reason given") if isinstance(answer, dict) else "bad reply"
        raise AgentRefused(f"node agent refused the registration: {str(error)[:200]}")
    return Registration(backend=str(answer.get("backend", "unknown")))
