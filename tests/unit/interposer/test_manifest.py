"""The interposer's manifest parser against every `manifest` vector of the contract.

Twice: manifest_check.c compiles wrapper/interposer/manifest.h (the code the library
compiles) with each build's compiler, statically, and runs all vectors in one process (on
arm64 under qemu-user: char is unsigned there); and the real host library, preloaded into a
real program with each vector as its CLOUDTASER_FDS, accepts (the program runs) or rejects
(exit 78 before main, the line number on stderr) exactly as the vector says.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.harness.interposer import (
    PROGRAMS,
    ROOT,
    TIMEOUT,
    Served,
    Target,
    facts,
    new_secret_fd,
    secret_value,
)

VECTORS: list[dict[str, Any]] = json.loads(
    (ROOT / "contracts" / "wrapper-contract.json").read_text()
)["manifest"]


def expected(vector: dict[str, Any]) -> str:
    if not vector["valid"]:
        return f"error {vector['error_line']}"
    return "ok" + "".join(
        f" {e['kind']}:{e['fd']}:{e['name'].encode().hex()}" for e in vector["entries"]
    )


def test_the_contract_has_vectors_of_both_outcomes() -> None:
    assert sum(v["valid"] for v in VECTORS) >= 10
    assert sum(not v["valid"] for v in VECTORS) >= 10


def test_every_vector_through_the_c_parser(target: Target) -> None:
    checker = target.compile(PROGRAMS / "manifest_check.c", "manifest_check", "-static")
    stdin = b"".join(f"{len(v['text'].encode())}\n".encode() + v["text"].encode() for v in VECTORS)
    result = target.run([checker], env={}, stdin=stdin)
    assert result.returncode == 0 and result.stderr == b"", result.stderr
    got = result.stdout.decode().splitlines()
    assert len(got) == len(VECTORS)
    for vector, line in zip(VECTORS, got):
        assert line == expected(vector), vector["name"]


def _env_fds(text: str) -> list[int]:
    return sorted({int(fd) for fd in re.findall(r"^env (\d+) ", text, re.MULTILINE)})


@pytest.mark.parametrize(
    "vector", [v for v in VECTORS if "\0" not in v["text"]], ids=lambda v: str(v["name"])
)
def test_every_vector_through_the_library(
    served: Served, deliver_native: str, vector: dict[str, Any]
) -> None:
    """A NUL cannot be in an environment variable: that vector is the C parser's alone."""
    text = vector["text"]
    value = secret_value()
    served.remember(value)
    # each env line's fd number holds a value: the vector's numbers are fixed
    source = new_secret_fd(value)
    env_fds = _env_fds(text) if vector["valid"] else []

    def place() -> None:
        for fd in env_fds:
            os.dup2(source, fd)

    try:
        result = subprocess.run(
            [deliver_native, "report", "-", "-"],
            env=served.environ(text),
            preexec_fn=place,
            close_fds=False,
            capture_output=True,
            timeout=TIMEOUT,
            check=False,
        )
    finally:
        os.close(source)
    served.check_stderr(result.stderr)
    if vector["valid"]:
        assert result.returncode == 0 and result.stderr == b"", result.stderr
        rest = "\n".join(
            f"{e['kind']} {e['fd']} {e['name']}" for e in vector["entries"] if e["kind"] != "env"
        )
        if env_fds:  # rewritten without the env lines
            assert bytes.fromhex(facts(result.stdout)["manifest"]).decode() == rest
    else:
        assert result.returncode == 78 and result.stdout == b""
        assert re.fullmatch(
            rb"cloudtaser interposer: CLOUDTASER_FDS line (\d+): [^\n]+\n", result.stderr
        )
        assert result.stderr.split(b" ")[4] == f"{vector['error_line']}:".encode()


@pytest.fixture(scope="module")
def deliver_native(library: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("deliver") / "deliver"
    subprocess.run(
        ["gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(out), str(PROGRAMS / "deliver.c")],
        check=True,
        capture_output=True,
        timeout=TIMEOUT,
    )
    return str(out)
