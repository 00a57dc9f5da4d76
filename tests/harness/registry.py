"""Debian's docker-registry on a loopback port for the e2e tests: the injector's resolver
(tests/e2e/test_registry.py) and the image builds (tests/e2e/test_images.py) push to it."""

from __future__ import annotations

import contextlib
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.harness.processes import stop

REGISTRY = Path("/usr/bin/docker-registry")
INSTALL_HINT = "apt-get update && apt-get install -y docker-registry apache2-utils"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_ready(proc: subprocess.Popen[bytes], host: str, log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(
                f"docker-registry exited with {proc.returncode}:\n{log.read_text()[-2000:]}"
            )
        try:
            if requests.get(f"http://{host}/v2/", timeout=1).status_code in (200, 401):
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.05)
    pytest.fail(f"docker-registry did not answer on {host}:\n{log.read_text()[-2000:]}")


@contextlib.contextmanager
def running_registry(tmp: Path, auth: tuple[str, str] | None = None) -> Iterator[str]:
    """Debian's docker-registry on a free loopback port, plain HTTP, with htpasswd (bcrypt)
    auth when ``auth`` is given; yields host:port and leaves no process behind."""
    if not REGISTRY.exists():
        pytest.fail(f"{REGISTRY} is missing; install it: {INSTALL_HINT}")
    host = f"127.0.0.1:{free_port()}"
    auth_section = ""
    if auth is not None:
        htpasswd = shutil.which("htpasswd")
        assert htpasswd, "auth needs htpasswd (apache2-utils)"
        line = subprocess.run(
            [htpasswd, "-Bbn", *auth], capture_output=True, check=True, timeout=30
        )
        (tmp / "htpasswd").write_bytes(line.stdout)
        auth_section = (
            f"auth:\n  htpasswd:\n    realm: cloudtaser-test\n    path: {tmp / 'htpasswd'}\n"
        )
    config = tmp / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {tmp / 'data'}\n  delete:\n    enabled: false\n"
        f"http:\n  addr: {host}\n  secret: {secrets.token_hex(16)}\n" + auth_section
    )
    log = tmp / "registry.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(REGISTRY), "serve", str(config)], stdout=out, stderr=subprocess.STDOUT, cwd=tmp
        )
    try:
        _wait_ready(proc, host, log)
        yield host
    finally:
        stop(proc)
        assert proc.returncode is not None  # no registry process left behind
