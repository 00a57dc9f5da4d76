"""The agent registration protocol, against a real unix socket that checks SO_PEERCRED."""

from __future__ import annotations

import json
import os
import socket
import struct
import threading
from pathlib import Path

import pytest

from cloudtaser.wrapper import registering


def _serve_once(path: Path, reply: bytes, seen: list[object]) -> threading.Thread:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def run() -> None:
        with server:
            conn, _ = server.accept()
            with conn:
                creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
                pid, _, _ = struct.unpack("3i", creds)
                seen.append(pid)
                seen.append(json.loads(conn.makefile("rb").readline()))
                conn.sendall(reply)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_register_sends_the_request_and_the_kernel_names_the_caller(tmp_path: Path) -> None:
    seen: list[object] = []
    thread = _serve_once(tmp_path / "agent.sock", b'{"ok": true, "backend": "tracepoint"}\n', seen)
    registration = registering.register(str(tmp_path / "agent.sock"))
    thread.join()
    assert registration.backend == "tracepoint"
    assert seen == [os.getpid(), {"op": "register", "version": 1}]


def test_refusal_and_absence_are_distinct_errors(tmp_path: Path) -> None:
    seen: list[object] = []
    thread = _serve_once(tmp_path / "agent.sock", b'{"ok": false, "error": "not in a pod"}\n', seen)
    with pytest.raises(registering.AgentRefused, match="not in a pod"):
        registering.register(str(tmp_path / "agent.sock"))
    thread.join()
    with pytest.raises(registering.AgentUnavailable, match="not reachable at"):
        registering.register(str(tmp_path / "absent.sock"))


def test_a_busy_agent_is_retried_until_it_accepts(tmp_path: Path) -> None:
    """A burst of pods fills the agent's accept queue: connect() then fails with EAGAIN at
    once. The wrapper retries until its timeout instead of calling the agent absent."""
    import errno
    import time

    path = tmp_path / "agent.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(0)
    fillers = []
    for _ in range(8):  # fill the queue; a timeout-mode connect past it gets EAGAIN
        filler = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        filler.setblocking(False)
        try:
            filler.connect(str(path))
        except BlockingIOError:
            filler.close()
            break
        fillers.append(filler)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1)
    with pytest.raises(OSError) as busy:
        probe.connect(str(path))
    probe.close()
    assert busy.value.errno == errno.EAGAIN  # the condition the load benchmark hit

    def drain_then_answer() -> None:
        time.sleep(0.5)
        with server:
            while True:
                conn, _ = server.accept()
                with conn:
                    line = conn.makefile("rb").readline()
                    if line:  # the fillers send nothing
                        conn.sendall(b'{"ok": true, "backend": "tracepoint"}\n')
                        return

    thread = threading.Thread(target=drain_then_answer)
    thread.start()
    try:
        for filler in fillers:
            filler.close()  # closed before accept: the agent reads EOF from them
        assert registering.register(str(path), timeout=10).backend == "tracepoint"
    finally:
        thread.join(timeout=10)
