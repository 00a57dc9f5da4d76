"""The wrapper's parts that need no OpenBao: config errors, the app's environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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


def _file_and_sdk_config(require_secret_mem: bool = False) -> WrapperConfig:
    raw = {**CONFIG, "requireSecretMem": require_secret_mem}
    raw["sources"] = [{**CONFIG["sources"][0], "secrets": [  # type: ignore[dict-item]
        {"mount": "secret", "path": "p", "keys": [{"key": "a", "file": "/etc/a", "sdk": "a"}]}]}]
    return WrapperConfig.model_validate(raw)


def test_file_delivery_prepends_the_interposer_to_ld_preload(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    library = str(tmp_path / "libcloudtaser_interposer.so")
    Path(library).touch()
    monkeypatch.setenv("CLOUDTASER_INTERPOSER", library)
    fetched = fetching.Fetched(values={("ns/b", "secret", "p", "a"): bytearray(b"value-a")})
    prepared = launching.prepare(_file_and_sdk_config(), fetched, {"LD_PRELOAD": "/opt/app.so"})
    fd = prepared.fds[("ns/b", "secret", "p", "a")]
    try:
        assert prepared.env["LD_PRELOAD"] == f"{library}:/opt/app.so"
        # one fd serves both deliveries of the value, and it is inherited across exec
        assert prepared.env["CLOUDTASER_FDS"] == f"file {fd} /etc/a\nsdk {fd} a"
        assert os.get_inheritable(fd) and storing.read(fd) == b"value-a"
    finally:
        os.close(fd)


def test_without_memfd_secret_a_sealed_memfd_is_used_with_a_warning_or_refused(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(storing, "_memfd_secret", lambda: None)  # as on a kernel without it
    monkeypatch.setenv("CLOUDTASER_INTERPOSER", sys.executable)  # any existing file
    fetched = fetching.Fetched(values={("ns/b", "secret", "p", "a"): bytearray(b"value-a")})
    prepared = launching.prepare(_file_and_sdk_config(), fetched, {})
    fd = prepared.fds[("ns/b", "secret", "p", "a")]
    try:
        assert os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:cloudtaser-secret")
        with pytest.raises(PermissionError):
            os.write(fd, b"x")  # sealed
    finally:
        os.close(fd)
    assert capsys.readouterr().err == (
        "cloudtaser-wrapper: warning: memfd_secret unavailable, secret/p key a is in a sealed "
        "memfd (root can read it unless the node agent protects this process)\n")
    with pytest.raises(storing.SecretMemoryError, match="the binding sets requireSecretMem"):
        launching.prepare(_file_and_sdk_config(require_secret_mem=True), fetched, {})
    assert capsys.readouterr().err == ""
