"""The wrapper's parts that need no OpenBao: config errors, the app's environment."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cloudtaser.engine.plans import WrapperConfig
from cloudtaser.wrapper import fetching, launching, storing

CONFIG = {
    "version": 1, "namespace": "ns", "container": "app", "tokenPath": "/t",
    "sources": [{"binding": "ns/b", "address": "https://bao:8200", "authMount": "kubernetes",
                 "role": "r", "clientCertFile": "/c", "clientKeyFile": "/k",
                 "secrets": [{"mount": "secret", "path": "p", "keys": [
                     {"key": "a", "env": "A"}, {"key": "b", "sdk": "bee", "env": "B"}]}]}],
    "requireSecretMem": False, "agent": {"socket": "/nope", "required": False},
}


def test_bad_config_is_one_line_naming_the_field() -> None:
    env = {**os.environ, "CLOUDTASER_CONFIG": '{"version": 2}'}
    result = subprocess.run([sys.executable, "-m", "cloudtaser.wrapper", "--", "true"],
                            env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 78
    assert result.stderr == ("cloudtaser-wrapper: CLOUDTASER_CONFIG is not a valid wrapper "
                             "config: version: input should be 1\n")


def test_missing_config_and_missing_command() -> None:
    env = {k: v for k, v in os.environ.items() if k != "CLOUDTASER_CONFIG"}
    result = subprocess.run([sys.executable, "-m", "cloudtaser.wrapper", "--", "true"],
                            env=env, capture_output=True, text=True, check=False)
    assert "CLOUDTASER_CONFIG is not set" in result.stderr and result.returncode == 78
    result = subprocess.run([sys.executable, "-m", "cloudtaser.wrapper"],
                            env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 2 and "no command" in result.stderr


def test_prepare_builds_env_and_fd_manifest() -> None:
    config = WrapperConfig.model_validate(CONFIG)
    fetched = fetching.Fetched(values={
        ("ns/b", "secret", "p", "a"): bytearray(b"value-a"),
        ("ns/b", "secret", "p", "b"): bytearray(b"value-b"),
    })
    prepared = launching.prepare(config, fetched, {"PATH": "/bin", "CLOUDTASER_CONFIG": "x"})
    env = prepared.env
    assert env["A"] == "value-a" and env["B"] == "value-b"
    assert "CLOUDTASER_CONFIG" not in env and "LD_PRELOAD" not in env  # no file delivery
    kind, fd, name = env["CLOUDTASER_FDS"].split(" ")
    try:
        assert (kind, name) == ("sdk", "bee")
        assert storing.read(int(fd)) == b"value-b"
        assert prepared.fds == {("ns/b", "secret", "p", "b"): int(fd)}
    finally:
        os.close(int(fd))


def test_file_delivery_without_interposer_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = {**CONFIG}
    raw["sources"] = [{**CONFIG["sources"][0], "secrets": [  # type: ignore[dict-item]
        {"mount": "secret", "path": "p", "keys": [{"key": "a", "file": "/etc/a"}]}]}]
    config = WrapperConfig.model_validate(raw)
    fetched = fetching.Fetched(values={("ns/b", "secret", "p", "a"): bytearray(b"v")})
    monkeypatch.setenv("CLOUDTASER_INTERPOSER", "/nonexistent.so")
    with pytest.raises(launching.WrapperError, match="needs the interposer library"):
        launching.prepare(config, fetched, {})
