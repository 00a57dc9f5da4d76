"""The wrapper's deadline bounds the whole fetch, not only its retries (no OpenBao needed: a
TCP server that accepts and never answers stands in for one too slow to be of use)."""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudtaser.certificates import CertificateAuthority
from cloudtaser.engine.plans import WrapperConfig
from cloudtaser.wrapper import fetching


@pytest.fixture
def silent_server() -> Iterator[int]:
    """Accepts connections and never says a word (a TLS handshake waits forever)."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    done = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not done.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        done.set()
        thread.join(timeout=5)
        for conn in held:
            conn.close()
        server.close()


def config(port: int, tmp_path: Path) -> WrapperConfig:
    ca = CertificateAuthority(tmp_path / "ca")
    client = ca.issue("client", "wrapper", client=True)
    return WrapperConfig.model_validate({
        "namespace": "ns", "container": "app", "tokenPath": "/t",
        "sources": [{"binding": "ns/b", "address": f"https://127.0.0.1:{port}",
                     "authMount": "kubernetes", "role": "r", "caFile": str(ca.pair.cert),
                     "clientCertFile": str(client.cert), "clientKeyFile": str(client.key),
                     "secrets": [{"mount": "secret", "path": "p", "keys": [{"key": "a", "env": "A"}]}]}],
        "agent": {"socket": "/nope", "required": False},
    })


def test_a_server_that_never_answers_fails_at_the_deadline(silent_server: int, tmp_path: Path) -> None:
    """Without the total deadline this waits for the 5 s socket timeout, then retries."""
    previous = signal.getsignal(signal.SIGALRM)
    started = time.monotonic()
    with pytest.raises(fetching.TransientFetchError) as raised:
        fetching.fetch_all(config(silent_server, tmp_path), "jwt", 1.0, lambda m: None)
    took = time.monotonic() - started
    assert str(raised.value) == (
        f"binding ns/b: login to https://127.0.0.1:{silent_server} (role r): no complete answer "
        "within the 1s deadline (too slow) after 1 attempt(s)")
    assert took < fetching.REQUEST_TIMEOUT - 1, f"took {took:.1f}s"
    # The alarm is off again and the previous handler back.
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    assert signal.getsignal(signal.SIGALRM) == previous
