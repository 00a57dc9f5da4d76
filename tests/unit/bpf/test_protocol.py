"""The agent's side of registration: contracts/wrapper-contract.json's request vectors."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest

from cloudtaser.bpf import agent, iouring, protocol

REPO = Path(__file__).resolve().parents[3]
VECTORS: list[dict[str, Any]] = json.loads(
    (REPO / "contracts" / "wrapper-contract.json").read_text()
)["registration"]


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_request_vectors(vector: dict[str, Any]) -> None:
    line = vector["request"].encode() + b"\n"
    if vector["valid"]:
        request = protocol.parse_request(line)
        assert request.exec_environ == vector["exec_environ"]
        assert list(request.credentials) == vector.get("credentials", [])
    else:
        with pytest.raises(protocol.ProtocolError) as e:
            protocol.parse_request(line)
        assert str(e.value) == vector["error"]


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_the_agent_answers_each_vector(
    vector: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The caller's own SO_PEERCRED pid is registered, whatever the message says; a clean
    environment marks the entry; a registration restricts io_uring (tracepoint backend); a
    refusal writes nothing and says why. The sysctl is a stand-in: run as root, the real one
    would stay raised with its record in a directory of no agent."""
    sysctl = tmp_path / "io_uring_disabled"
    sysctl.write_text("0\n")
    monkeypatch.setattr(iouring, "IO_URING_SYSCTL", sysctl)
    a = agent.Agent(tmp_path / "agent.sock")
    written: list[tuple[int, int]] = []
    monkeypatch.setattr(
        a, "protect", lambda pid, flags=None, accessors=1: written.append((pid, flags)) or 1
    )
    named: list[tuple[str, ...]] = []
    monkeypatch.setattr(
        a, "_protect_credentials", lambda pid, flags, paths: named.append(paths) or []
    )
    a.loaded = object()  # type: ignore[assignment]
    server, client = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with server, client:
        client.sendall(vector["request"].encode() + b"\n")
        answer = a._register(server)
    json.dumps(answer)
    if not vector["valid"]:
        assert answer == {"ok": False, "error": vector["error"]}
        assert written == [] and sysctl.read_text() == "0\n"
        return
    assert sysctl.read_text() == "2\n" and iouring.io_uring_record(tmp_path).read_text() == "0\n"
    assert answer == {
        "ok": True,
        "backend": "tracepoint",
        "mode": "enforce",
        "protections": ["environ", "mem", "fds", "ptrace", "pidfd_getfd", "core_dump"],
    }
    [(pid, flags)] = written
    assert pid == os.getpid()
    clean = agent.layouts.EntryState.ENVIRON_CLEAN | agent.layouts.EntryState.EXEC_KEEPS_CLEAN
    assert flags & ~clean == agent.DEFAULT_FLAGS
    assert bool(flags & clean) is (vector["exec_environ"] == "clean")
    assert named == [tuple(vector.get("credentials", []))]
