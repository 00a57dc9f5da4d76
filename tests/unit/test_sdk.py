"""The Python SDK over real secret fds, and the fd-manifest contract's vectors."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cloudtaser import sdk

REPO = Path(__file__).resolve().parents[2]
VECTORS = json.loads((REPO / "contracts" / "wrapper-contract.json").read_text())["manifest"]


def _memfd(value: bytes) -> int:
    fd = os.memfd_create("test-secret", 0)  # inheritable, like the wrapper's
    os.write(fd, value)
    return fd


def test_get_secret_reads_each_named_fd(monkeypatch: pytest.MonkeyPatch) -> None:
    values = {"one": secrets.token_bytes(32), "empty": b"", "big": secrets.token_bytes(1 << 20)}
    fds = {name: _memfd(v) for name, v in values.items()}
    try:
        manifest = "\n".join(f"sdk {fd} {name}" for name, fd in fds.items()) + "\nfile 99 /etc/x\n"
        monkeypatch.setenv("CLOUDTASER_FDS", manifest)
        assert sdk.secrets() == ["big", "empty", "one"]
        for name, value in values.items():
            assert sdk.get_secret(name) == value
        with pytest.raises(
            sdk.SecretNotFound, match=r"no secret named 'nope' \(delivered: big, empty, one\)"
        ):
            sdk.get_secret("nope")
    finally:
        for fd in fds.values():
            os.close(fd)


def test_outside_the_wrapper_the_error_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLOUDTASER_FDS", raising=False)
    with pytest.raises(sdk.SecretNotFound, match="not started by the cloudtaser wrapper"):
        sdk.get_secret("x")


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_manifest_vector(vector: dict[str, Any]) -> None:
    if vector["valid"]:
        got = [e._asdict() for e in sdk.parse_manifest(vector["text"])]
        assert got == vector["entries"]
        return
    with pytest.raises(sdk.MalformedManifest) as raised:
        sdk.parse_manifest(vector["text"])
    message = str(raised.value)
    assert f"line {vector['error_line']} is malformed" in message
    reason = message.split(" is malformed: ", 1)[1]
    for line in vector["text"].split("\n"):  # names are never echoed
        name = line.split(" ", 2)[-1]
        assert len(name) < 3 or name not in reason


def test_a_malformed_manifest_fails_get_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOUDTASER_FDS", "sdk 5 a\nfile 6 relative/hunter2")
    with pytest.raises(sdk.MalformedManifest, match="line 2") as raised:
        sdk.get_secret("a")
    assert "hunter2" not in str(raised.value)


def test_importing_the_sdk_makes_the_process_non_dumpable() -> None:
    program = (
        "import ctypes; libc = ctypes.CDLL(None); before = libc.prctl(3, 0, 0, 0, 0); "
        "import cloudtaser.sdk; print(before, libc.prctl(3, 0, 0, 0, 0))"
    )  # PR_GET_DUMPABLE
    out = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == ["1", "0"]
