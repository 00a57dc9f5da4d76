"""Registration with the node agent over its unix socket.

Protocol (version 1; the agent side is the bpf agent's): the wrapper connects and sends one
JSON line ``{"op": "register", "version": 1}``; the agent takes the caller's PID from
SO_PEERCRED — never from the message — so a process can register only itself, and answers one
JSON line ``{"ok": true, "backend": "lsm" | "tracepoint"}`` or ``{"ok": false, "error": "..."}``.
The PID stays the same across the wrapper's exec, so the app is protected from its first
instruction.
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass

from cloudtaser.errors import PermanentError

TIMEOUT = 5.0


class AgentUnavailable(PermanentError):
    """No agent answered at the socket (absent, or not ready)."""


class AgentRefused(PermanentError):
    """The agent answered and refused the registration."""


@dataclass(frozen=True)
class Registration:
    backend: str


def register(path: str) -> Registration:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(TIMEOUT)
            sock.connect(path)
            sock.sendall(json.dumps({"op": "register", "version": 1}).encode() + b"\n")
            reply = sock.makefile("rb").readline(4096)
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
