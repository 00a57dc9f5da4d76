"""The agent's registration socket: accepting connections, the caps that keep one pod from
exhausting the agent (connections answered at once, in all and per pod), reading one request
line within a deadline, the caller's identity from the connection (SO_PEERCRED, its pidfd),
and the answer's shape (contracts/README.md; the request's parser is protocol.py). What a
registration writes is the agent's (``Agent._register``), handed in as ``register``."""

from __future__ import annotations

import json
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

from cloudtaser.bpf import protocol
from cloudtaser.bpf.cgroups import pod_uid
from cloudtaser.engine.plans import ProtectionFlag

log = logging.getLogger("cloudtaser.bpf.agent")  # the agent's records, whichever part logs them

SO_PEERPIDFD = 77  # Linux >= 6.5; absent from Python 3.11's socket module
DEFAULT_SOCKET = "/run/cloudtaser/agent.sock"
MAX_ANSWERING = 128  # connections answered at once; more wait in the listen backlog
MAX_PER_POD = 4  # a wrapper makes one; a pod's containers start at most a few at once
REQUEST_DEADLINE = 2.0  # seconds for a whole request line, however slowly it trickles in

Answer = dict[str, object]
Register = Callable[[socket.socket, "str | None"], Answer]


def accepted(backend: str, flags: int) -> Answer:
    """The answer to a registration that wrote ``flags`` on ``backend``."""
    return {
        "ok": True,
        "backend": backend,
        "mode": "audit" if flags & ProtectionFlag.AUDIT_ONLY else "enforce",
        "protections": ProtectionFlag(flags).names(),
    }


def refused(error: str) -> Answer:
    return {"ok": False, "error": error}


def peer_credentials(conn: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end, from the kernel (SO_PEERCRED)."""
    pid, uid, gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    return pid, uid, gid


def peer_pidfd(conn: socket.socket) -> int | None:
    """A pidfd of the peer taken when it connected (SO_PEERPIDFD), None where unsupported."""
    try:
        fd: int = struct.unpack("i", conn.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD, 4))[0]
        return fd
    except OSError:
        return None


def caller_pod(conn: socket.socket) -> str | None:
    """The caller's pod UID (None: a process outside any pod, e.g. on the host)."""
    try:
        pid = peer_credentials(conn)[0]
        return pod_uid(pid) if pid > 0 else None
    except OSError:
        return None


def request_line(conn: socket.socket, deadline_seconds: float = REQUEST_DEADLINE) -> bytes:
    """One request line within ``deadline_seconds`` in all (not per read: a caller sending a
    byte at a time cannot hold the connection); at most protocol.MAX_MESSAGE bytes."""
    deadline = time.monotonic() + deadline_seconds
    data = b""
    while b"\n" not in data and len(data) < protocol.MAX_MESSAGE:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("request line not complete within the deadline")
        conn.settimeout(left)
        chunk = conn.recv(protocol.MAX_MESSAGE - len(data))
        if not chunk:
            break
        data += chunk
    return data.split(b"\n", 1)[0] + (b"\n" if b"\n" in data else b"")


def send_answer(conn: socket.socket, answer: Answer) -> None:
    """One JSON line; a caller that went away is no error."""
    try:
        conn.sendall(json.dumps(answer).encode() + b"\n")
    except OSError:
        pass


class PodSlots:
    """Connections being answered per pod, at most ``limit`` each: any pod may reach the socket
    (the CSI volume is allowed at every Pod Security level), and one pod holding connections
    open must not delay other pods."""

    def __init__(self, limit: int = MAX_PER_POD) -> None:
        self.limit = limit
        self._taken: dict[str, int] = {}
        self._lock = threading.Lock()

    def take(self, pod: str) -> bool:
        with self._lock:
            if self._taken.get(pod, 0) >= self.limit:
                return False
            self._taken[pod] = self._taken.get(pod, 0) + 1
            return True

    def give_back(self, pod: str) -> None:
        with self._lock:
            left = self._taken.get(pod, 1) - 1
            if left > 0:
                self._taken[pod] = left
            else:
                self._taken.pop(pod, None)

    def taken(self, pod: str) -> int:
        with self._lock:
            return self._taken.get(pod, 0)


class SocketServer:
    """Serves ``register`` on a unix socket at ``path`` (mode 0666: identity comes from
    SO_PEERCRED, not from access), one thread per connection, bounded in all and per pod."""

    def __init__(self, path: Path, register: Register) -> None:
        self.path = path
        self.register = register
        self._answering = threading.BoundedSemaphore(MAX_ANSWERING)
        self.slots = PodSlots()
        self._server: socket.socket | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_socket():
            self.path.unlink()
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(self.path))
        os.chmod(self.path, 0o666)  # identity comes from SO_PEERCRED, not from access
        # bursts of pods starting at once (capped by net.core.somaxconn)
        server.listen(socket.SOMAXCONN)
        server.settimeout(0.2)
        self._server = server
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, name="agent-socket", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._server is not None:
            self._server.close()
            self._server = None
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass

    def _serve(self) -> None:
        assert self._server is not None
        while not self._stop.is_set():
            if not self._answering.acquire(timeout=0.2):
                continue  # all busy: new callers wait in the backlog
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                self._answering.release()
                continue
            except OSError:
                self._answering.release()
                if self._stop.is_set():
                    return
                raise
            key = caller_pod(conn)
            if key is not None and not self.slots.take(key):
                self._answering.release()
                self._refuse(conn, f"more than {MAX_PER_POD} connections at once from pod {key}")
                continue
            # One thread per connection (bounded above): a client that holds its connection
            # open must not stall other wrappers' registrations.
            try:
                threading.Thread(
                    target=self._answer, args=(conn, key), name="agent-register", daemon=True
                ).start()
            except RuntimeError as e:  # no thread to be had: refuse this one, keep serving
                self._release(key)
                self._refuse(conn, "the agent is out of threads")
                log.warning("registration refused: %s", e)
                time.sleep(0.05)

    def _release(self, key: str | None) -> None:
        if key is not None:
            self.slots.give_back(key)
        self._answering.release()

    @staticmethod
    def _refuse(conn: socket.socket, error: str) -> None:
        with conn:
            conn.settimeout(0.1)
            send_answer(conn, refused(error))

    def _answer(self, conn: socket.socket, key: str | None = None) -> None:
        try:
            with conn:
                try:
                    answer = self.register(conn, key)
                except Exception as e:  # a bad client must not take the agent down
                    log.warning("registration failed: %s", type(e).__name__)
                    answer = refused("internal error")
                send_answer(conn, answer)
        finally:
            self._release(key)
