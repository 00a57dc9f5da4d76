"""For the fault tests: take a piece of the shared stack away for a moment (and always bring it
back), and put a latency-injecting TCP proxy in front of OpenBao. A pytest plugin
(tests/conftest.py loads it); the stack's fixtures are tests/harness/stack.py's.

The stack is shared with other sessions, so every outage is short and restored in a
``finally``: a component is stopped by its PID file (``stacking.stop``) and started again with
the real ``cloudtaser stack up``, which starts only what is down, waits until it answers, and
provisions (for OpenBao: unseals it with the key in the state directory — a restarted OpenBao
comes up sealed — and re-applies its configuration idempotently).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cloudtaser.testbed import stacking


@dataclass
class Outage:
    """One component taken down; ``restore`` brings it back (idempotent)."""

    paths: stacking.Paths
    name: str
    stopped_at: float = 0.0
    stopped_pid: int | None = None
    restored_after: float | None = None  # seconds from stop to healthy again
    up_seconds: float | None = None  # how long `cloudtaser stack up` took

    def stop(self) -> None:
        component = stacking.component(self.name)
        self.stopped_pid = stacking.running_pid(self.paths, component)
        assert self.stopped_pid is not None, f"{self.name} is not running"
        self.stopped_at = time.monotonic()
        # It stops listening at once; the API server then drains long requests for longer
        # than an outage should last (it was still there after 15 s): SIGKILL after 3 s.
        stacking.stop(self.paths, component, lambda m: None, timeout=3)
        assert stacking.running_pid(self.paths, component) is None

    def restore(self) -> None:
        if self.restored_after is not None:
            return
        started = time.monotonic()
        exe = Path(sys.executable).parent / "cloudtaser"
        proc = subprocess.run(
            [str(exe), "stack", "up"], capture_output=True, text=True, timeout=300, check=False
        )
        self.up_seconds = time.monotonic() - started
        self.restored_after = time.monotonic() - self.stopped_at
        assert proc.returncode == 0, f"cloudtaser stack up failed:\n{proc.stderr}"
        # `up` restarts only what was down: every other component says "already running".
        for other in stacking.COMPONENTS:
            if other.name != self.name:
                assert f"{other.name}: already running" in proc.stderr, proc.stderr
        # Started by this `up` — or already by another session's `stack up` (the stack is
        # shared): either way a new process, not the stopped one.
        pid = stacking.running_pid(self.paths, stacking.component(self.name))
        assert pid is not None and pid != self.stopped_pid, proc.stderr
        assert all(r["health"] == "healthy" for r in stacking.status(self.paths))


@pytest.fixture
def outage(stack: stacking.Paths) -> Iterator[Callable[[str], Outage]]:
    """``outage("openbao")`` stops that component now; it is always restored afterwards."""
    taken: list[Outage] = []

    def take(name: str) -> Outage:
        o = Outage(stack, name)
        taken.append(o)
        o.stop()
        return o

    try:
        yield take
    finally:
        for o in taken:
            o.restore()


@dataclass
class LatencyProxy:
    """A TCP proxy that holds every chunk for ``delay`` seconds before passing it on, in both
    directions. It never looks inside: TLS runs end to end between client and upstream, so
    certificate and hostname verification are the client's, against the upstream's cert."""

    upstream: tuple[str, int]
    host: str = "127.0.0.1"
    delay: float = 0.0
    port: int = 0
    connections: int = 0
    _loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    _thread: threading.Thread | None = None
    _server: asyncio.base_events.Server | None = None

    @property
    def address(self) -> str:
        return f"https://{self.host}:{self.port}"

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                if self.delay:
                    await asyncio.sleep(self.delay)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))

    def start(self) -> LatencyProxy:
        async def serve() -> None:
            self._server = await asyncio.start_server(self._client, self.host, 0)
            self.port = self._server.sockets[0].getsockname()[1]

        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="proxy")
        self._thread.start()
        asyncio.run_coroutine_threadsafe(serve(), self._loop).result(timeout=5)
        return self

    def close(self) -> None:
        async def shutdown() -> None:
            assert self._server is not None
            self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout=5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        assert self._thread is not None
        self._thread.join(timeout=5)
        self._loop.close()


@contextmanager
def latency_proxy(host: str = "127.0.0.1") -> Iterator[LatencyProxy]:
    proxy = LatencyProxy((stacking.HOST, stacking.BAO_PORT), host=host).start()
    try:
        yield proxy
    finally:
        proxy.close()


@pytest.fixture
def bao_proxy() -> Iterator[LatencyProxy]:
    with latency_proxy() as proxy:
        yield proxy
