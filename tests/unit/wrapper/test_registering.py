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
