"""The registration socket's parts that need no kernel maps (bpf/cloudtaser/bpf/serving.py)."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from cloudtaser.bpf import protocol, serving
from cloudtaser.bpf.cgroups import pod_uid
from cloudtaser.engine.plans import ProtectionFlag


def test_pod_slots_cap_each_pod_alone() -> None:
    slots = serving.PodSlots(limit=2)
    assert slots.take("a") and slots.take("a")
    assert not slots.take("a")
    assert slots.take("b")  # another pod is not held up by a
    slots.give_back("a")
    assert slots.taken("a") == 1 and slots.take("a")
    slots.give_back("a"), slots.give_back("a")
    assert slots.taken("a") == 0


def test_the_request_line_has_one_deadline_in_all() -> None:
    server, client = socket.socketpair()
    with server, client:
        client.sendall(b'{"op"')
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            serving.request_line(server, deadline_seconds=0.3)
        assert time.monotonic() - t0 < 2


def test_the_request_line_stops_at_newline_and_size() -> None:
    server, client = socket.socketpair()
    with server, client:
        client.sendall(b"one\ntwo\n")
        assert serving.request_line(server) == b"one\n"
    server, client = socket.socketpair()
    with server, client:
        client.sendall(b"x" * (protocol.MAX_MESSAGE + 10))
        assert serving.request_line(server) == b"x" * protocol.MAX_MESSAGE
    server, client = socket.socketpair()
    with server, client:
        client.sendall(b"no newline")
        client.shutdown(socket.SHUT_WR)
        assert serving.request_line(server) == b"no newline"


def test_accepted_names_the_protections_and_the_mode() -> None:
    flags = ProtectionFlag.MEM | ProtectionFlag.PTRACE | ProtectionFlag.AUDIT_ONLY | (1 << 16)
    assert serving.accepted("lsm", flags) == {
        "ok": True,
        "backend": "lsm",
        "mode": "audit",
        "protections": ["mem", "ptrace"],
    }
    assert serving.accepted("tracepoint", ProtectionFlag.ALL)["mode"] == "enforce"


def test_peer_credentials_are_the_kernel_s() -> None:
    server, client = socket.socketpair()
    with server, client:
        assert serving.peer_credentials(server) == (os.getpid(), os.getuid(), os.getgid())


def test_the_server_answers_and_survives_a_failing_handler(tmp_path: Path) -> None:
    calls: list[str | None] = []

    def register(conn: socket.socket, pod: str | None) -> serving.Answer:
        calls.append(pod)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return serving.refused("no")

    server = serving.SocketServer(tmp_path / "s" / "agent.sock", register)
    server.start()
    try:
        assert (tmp_path / "s" / "agent.sock").stat().st_mode & 0o777 == 0o666
        answers = []
        for _ in range(2):
            with socket.socket(socket.AF_UNIX) as c:
                c.connect(str(server.path))
                answers.append(json.loads(c.makefile().readline()))
        assert answers == [{"ok": False, "error": "internal error"}, {"ok": False, "error": "no"}]
        assert calls == [pod_uid(os.getpid())] * 2  # the caller's pod, read by the server
    finally:
        server.stop()
    assert not server.path.exists()
    assert not [t for t in threading.enumerate() if t.name == "agent-socket"]
