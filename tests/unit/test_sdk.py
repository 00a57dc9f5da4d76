"""The Python SDK over real secret fds."""

from __future__ import annotations

import os
import secrets

import pytest

from cloudtaser import sdk
from cloudtaser.wrapper import storing


def test_get_secret_reads_each_named_fd(monkeypatch: pytest.MonkeyPatch) -> None:
    values = {"one": secrets.token_bytes(32), "empty": b"", "big": secrets.token_bytes(1 << 20)}
    fds = {name: storing.store(bytearray(v), require_secret_mem=False).fd for name, v in values.items()}
    try:
        manifest = "\n".join(f"sdk {fd} {name}" for name, fd in fds.items()) + "\nfile 99 /etc/x\n"
        monkeypatch.setenv("CLOUDTASER_FDS", manifest)
        assert sdk.secrets() == ["big", "empty", "one"]
        for name, value in values.items():
            assert sdk.get_secret(name) == value
        with pytest.raises(sdk.SecretNotFound, match=r"no secret named 'nope' \(delivered: big, empty, one\)"):
            sdk.get_secret("nope")
    finally:
        for fd in fds.values():
            os.close(fd)


def test_outside_the_wrapper_the_error_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLOUDTASER_FDS", raising=False)
    with pytest.raises(sdk.SecretNotFound, match="not started by the cloudtaser wrapper"):
        sdk.get_secret("x")
