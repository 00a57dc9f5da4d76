"""The refresher is protected like the app: it registers its own PID with the node agent (a
real unix socket that reads SO_PEERCRED stands in for the agent) and dies with the app."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

from cloudtaser.engine.plans import WrapperConfig

STARTER = """
import sys, time
from cloudtaser.engine.plans import WrapperConfig
from cloudtaser.wrapper import refreshing
config = WrapperConfig.model_validate_json(sys.argv[1])
print(refreshing.start(config, {}, 5.0), flush=True)
sys.stdin.readline()  # "the app" runs until the test says so
"""


def _agent(path: Path, seen: list[int], stop: threading.Event) -> threading.Thread:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(4)
    server.settimeout(0.1)

    def run() -> None:
        with server:
            while not stop.is_set():
                try:
                    conn, _ = server.accept()
                except TimeoutError:
                    continue
                with conn:
                    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
                    seen.append(struct.unpack("3i", creds)[0])
                    assert json.loads(conn.makefile("rb").readline())["op"] == "register"
                    conn.sendall(b'{"ok": true, "backend": "lsm"}\n')

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_the_refresher_registers_its_own_pid_and_dies_with_the_app(tmp_path: Path) -> None:
    sock = tmp_path / "agent.sock"
    seen: list[int] = []
    stop = threading.Event()
    thread = _agent(sock, seen, stop)
    config = WrapperConfig.model_validate({
        "namespace": "ns", "container": "app", "tokenPath": "/t", "sources": [],
        "refreshSeconds": 3600, "agent": {"socket": str(sock), "required": True},
    })
    with subprocess.Popen([sys.executable, "-c", STARTER, config.model_dump_json()],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as app:
        try:
            _check(app, seen)
        finally:
            stop.set()
            if app.poll() is None:
                app.kill()
            thread.join(timeout=5)


def _check(app: subprocess.Popen[str], seen: list[int]) -> None:
    assert app.stdout is not None and app.stdin is not None
    refresher = int(app.stdout.readline())
    deadline = time.monotonic() + 10
    while not seen and time.monotonic() < deadline:
        time.sleep(0.05)
    assert seen == [refresher] and refresher != app.pid  # the kernel names the refresher
    status = Path(f"/proc/{refresher}/status").read_text()
    assert f"PPid:\t{app.pid}\n" in status
    app.stdin.write("\n")
    app.stdin.flush()
    app.wait(timeout=10)
    deadline = time.monotonic() + 10
    while _alive(refresher) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(refresher), "the refresher outlived the app"
