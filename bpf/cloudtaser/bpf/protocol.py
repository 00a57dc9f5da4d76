"""The agent's registration protocol (contracts/README.md, "Agent registration"): the request
parser the agent uses, and a client for Python callers (tests, tools; the wrapper is Go).

One JSON line each way on a unix stream socket; the caller's PID comes from SO_PEERCRED,
never from the message, so a process can register only itself.
"""

from __future__ import annotations

import errno
import json
import socket
import time
from dataclasses import dataclass
from typing import Literal

import tenacity

from cloudtaser.errors import PermanentError

MAX_MESSAGE = 4096
TIMEOUT = 30.0  # a node starting hundreds of pods at once keeps its agent busy for seconds
ExecEnviron = Literal["clean", "secret"]


class ProtocolError(PermanentError):
    """A request the agent does not accept; the message is the reply's one-line error."""


MAX_CREDENTIALS = 8


@dataclass(frozen=True)
class Request:
    version: int
    exec_environ: ExecEnviron  # does the next execve's environment area hold a value?
    credentials: tuple[str, ...] = ()  # files on the pod's credential volumes (the caller's view)


def parse_request(line: bytes) -> Request:
    """The agent's side: a request line, or ProtocolError saying what is wrong."""
    try:
        msg = json.loads(line)
    except ValueError:
        raise ProtocolError("request is not one JSON line") from None
    if not isinstance(msg, dict) or msg.get("op") != "register":
        raise ProtocolError("unknown op (expected register)")
    version = msg.get("version")
    if version == 1:
        return Request(1, "secret")
    if version != 2:
        raise ProtocolError("unsupported protocol version (expected 1 or 2)")
    exec_environ = msg.get("exec_environ")
    if exec_environ not in ("clean", "secret"):
        raise ProtocolError('exec_environ must be "clean" or "secret"')
    credentials = msg.get("credentials", [])
    if (
        not isinstance(credentials, list)
        or len(credentials) > MAX_CREDENTIALS
        or not all(
            isinstance(c, str) and c.startswith("/") and 1 < len(c) <= 4096 and "\0" not in c
            for c in credentials
        )
    ):
        raise ProtocolError(
            f"credentials must be a list of at most {MAX_CREDENTIALS} absolute paths"
        )
    return Request(2, exec_environ, tuple(credentials))


class AgentUnavailable(PermanentError):
    """No agent answered at the socket (absent, or not ready)."""


class AgentRefused(PermanentError):
    """The agent answered and refused the registration."""


@dataclass(frozen=True)
class Registration:
    backend: str
    mode: str
    protections: tuple[str, ...]


def _busy(error: BaseException) -> bool:
    """The agent's accept queue is full (a burst of pods starting): EAGAIN on a unix-socket
    connect. Worth retrying; an absent agent (ENOENT, ECONNREFUSED) is not."""
    return isinstance(error, OSError) and error.errno in (errno.EAGAIN, errno.EWOULDBLOCK)


def _exchange(path: str, request: bytes, deadline: float) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        sock.connect(path)
        sock.sendall(request)
        reply: bytes = sock.makefile("rb").readline(MAX_MESSAGE)
        return reply


def register(
    path: str,
    exec_environ: ExecEnviron = "secret",
    timeout: float = TIMEOUT,
    credentials: tuple[str, ...] = (),
) -> Registration:
    """Register the calling process; ``timeout`` bounds the whole exchange, retries included (a
    busy agent is retried with jittered backoff until then)."""
    message: dict[str, object] = {"op": "register", "version": 2, "exec_environ": exec_environ}
    if credentials:
        message["credentials"] = list(credentials)
    request = json.dumps(message).encode() + b"\n"
    deadline = time.monotonic() + timeout
    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(_busy),
        wait=tenacity.wait_random_exponential(multiplier=0.02, max=1.0),
        stop=tenacity.stop_before_delay(timeout),
        reraise=True,
    )
    try:
        reply = retrying(_exchange, path, request, deadline)
    except OSError as e:
        raise AgentUnavailable(f"node agent not reachable at {path}: {e.strerror or e}") from None
    try:
        answer = json.loads(reply)
    except ValueError:
        raise AgentRefused(f"node agent at {path} sent an unreadable reply") from None
    if not isinstance(answer, dict) or answer.get("ok") is not True:
        error = answer.get("error", "no reason given") if isinstance(answer, dict) else "bad reply"
        raise AgentRefused(f"node agent refused the registration: {str(error)[:200]}")
    return Registration(
        backend=str(answer.get("backend", "unknown")),
        mode=str(answer.get("mode", "unknown")),
        protections=tuple(str(p) for p in answer.get("protections", ())),
    )
