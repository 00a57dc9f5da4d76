"""`cloudtaser operator` as a process of this test session, for the e2e and fault tests: started
against the local stack with a serving certificate of the stack's CA, stopped with its stderr
returned (a test asserts it holds no traceback)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from cloudtaser.testbed import stacking
from cloudtaser.testbed.certificates import CertificateAuthority

PORT = 18444
OPA_RECHECK = 2  # seconds between the operator's looks at OPA's policy revision


def start_operator(stack: stacking.Paths, *extra: str, port: int = PORT) -> subprocess.Popen[str]:
    """The operator on ``port`` (HTTPS webhook), asking the stack's OPA; ``extra`` options
    added. Its stderr is a pipe: ``stop`` reads it."""
    pair = CertificateAuthority(stack.pki).issue(
        "operator", "cloudtaser-operator", server=True, hosts=("127.0.0.1",)
    )
    exe = Path(sys.executable).parent / "cloudtaser"
    env = stacking.environment(stack)
    return subprocess.Popen(
        [
            str(exe),
            "operator",
            "--tls-cert",
            str(pair.cert),
            "--tls-key",
            str(pair.key),
            "--ca-file",
            str(stack.ca),
            "--port",
            str(port),
            "--opa-url",
            f"http://127.0.0.1:{stacking.OPA_PORT}",
            *extra,
        ],
        env={**os.environ, **env, "CLOUDTASER_OPA_RECHECK": str(OPA_RECHECK)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop(process: subprocess.Popen[str]) -> str:
    """SIGTERM, then SIGKILL after 20 s; what the operator wrote to stderr."""
    process.terminate()
    try:
        _, err = process.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        _, err = process.communicate()
    return err


def conditions(body: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """A SecretBinding's status conditions: type -> (status, reason)."""
    return {
        c["type"]: (c["status"], c["reason"]) for c in body.get("status", {}).get("conditions", [])
    }
